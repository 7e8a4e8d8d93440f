//! In-process budgets: per client IP on the auth routes and on every password check, per
//! caller on `/users/lookup` (governor, GCRA), failed password checks per account, mails
//! per (client, address), and one hashing slot per account (SECURITY.md 21, 26, 27, 30).
//!
//! Memory never grows with attacker-chosen input (SECURITY.md 32):
//! - every key has a fixed size: a client is its IPv4 address or the /64 prefix of its
//!   IPv6 address ([`ClientKey`]: whoever holds a /64 can mint 2^64 addresses, and gets one
//!   budget for all of them), and accounts, callers and (client, address) pairs are
//!   16 bytes of SHA-256 over the normalised value ([`Key`]); raw input is never kept;
//! - every table holds at most [`MAX_TRACKED_KEYS`] keys and forgets a key once its
//!   window has passed. A full GCRA table sweeps stale keys (at most once a second), and
//!   a client it still has no room for shares one overflow budget with every other such
//!   client; a full sliding-window table drops expired records, then the least recently
//!   active eighth of its keys.
//!
//! Budgets are reserved before the work they pay for, never counted after it
//! (SECURITY.md 26): a password check takes its slot before bcrypt runs and gives it back
//! only when the password was right; a mail takes its (client, address) slot before the
//! store's per-address budget and gives it back when the store refuses.
//!
//! They are per instance: behind a load balancer with N instances a client gets up to N
//! times the budget. Failed logins are counted per address whether or not an account
//! exists, so the throttle reveals nothing. The per-(client, address) mail budget sits
//! behind [`Limits::take_mail_slot`] and [`Limits::give_back_mail_slot`] so that it can move
//! into the shared store without touching its callers.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use chrono::{DateTime, Duration, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};

use crate::domain::Email;
use crate::error::{ApiError, ApiResult};
use crate::startup::AppState;

/// `/users/lookup` calls allowed per caller per minute (SECURITY.md 11).
pub const LOOKUPS_PER_MINUTE: u32 = 30;
/// `/users/me/export` calls allowed per user per hour (a burst of this many, then one
/// more every 60 / this minutes).
pub const EXPORTS_PER_HOUR: u32 = 5;
/// Failed password checks allowed per account in [`FAILED_LOGIN_WINDOW_MINUTES`].
pub const MAX_FAILED_LOGINS: usize = 10;
pub const FAILED_LOGIN_WINDOW_MINUTES: i64 = 15;
/// Mails one client may cause to one address per [`MAIL_SENDER_WINDOW_MINUTES`]
/// (SECURITY.md 30): of the address's five an hour, one client spends at most two.
pub const MAILS_PER_CLIENT_AND_ADDRESS: usize = 2;
pub const MAIL_SENDER_WINDOW_MINUTES: i64 = 60;
/// Most keys any one table keeps (about 200 bytes each at most: ~13 MiB per table).
pub const MAX_TRACKED_KEYS: usize = 65_536;
/// A full GCRA table sweeps stale keys at most this often.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn too_many(wait: std::time::Duration) -> ApiError {
    ApiError::TooManyRequests {
        retry_after_secs: wait.as_secs() + 1,
    }
}

/// A fixed-size key: 16 bytes of SHA-256 over a label and length-prefixed parts, so that
/// whatever a client sends, a table entry costs the same.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Key([u8; 16]);

impl Key {
    pub fn derive(label: &str, parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(label.as_bytes());
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        Self(key)
    }
}

/// The account a password check is about, as the failed-login budget keys it: the
/// normalised address (trimmed, lowercased, as [`Email::parse`] does), hashed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AccountKey(Key);

impl AccountKey {
    /// The key of an address as typed at login, valid or not (an unparseable input is
    /// throttled like an unknown address, and kept only as its hash).
    pub fn for_login_input(raw: &str) -> Self {
        Self::of_normalised(&raw.trim().to_lowercase())
    }

    /// The key of a stored (already normalised) address.
    pub fn of_normalised(email: &str) -> Self {
        Self(Key::derive("introgy/account", &[email.as_bytes()]))
    }

    pub fn of(email: &Email) -> Self {
        Self::of_normalised(email.as_str())
    }
}

/// A client as the per-IP budgets see it: an IPv4 address (IPv4-mapped IPv6 included), or
/// the /64 prefix of an IPv6 address, the smallest block a home or cloud host gets.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }

    /// The shared key of clients a full table has no room for (no real client has it).
    fn overflow() -> Self {
        Self(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    }

    fn bytes(&self) -> Vec<u8> {
        match self.0 {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }
    }
}

/// The client's address, as the per-IP budgets use it: the TCP peer, or the nearest
/// untrusted `X-Forwarded-For` hop when the peer is a trusted proxy ([`client_ip`]).
/// The auth routes' middleware computes it once and leaves it in the request
/// extensions; elsewhere the extractor computes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    pub fn key(self) -> ClientKey {
        ClientKey::of(self.0)
    }
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(ip) = parts.extensions.get::<ClientIp>() {
            return Ok(*ip);
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!(
                    "the server was started without peer addresses (ConnectInfo)"
                ))
            })?;
        Ok(Self(client_ip(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

/// governor's DashMap store with a cap: a key it has no room for is measured against one
/// shared overflow key instead of getting a fresh (free) budget.
struct BoundedStore<K: Hash + Eq + Clone> {
    map: DashMapStateStore<K>,
    cap: usize,
    overflow: K,
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let key = if self.map.len() >= self.cap && !self.map.contains_key(key) {
            &self.overflow
        } else {
            key
        };
        StateStore::measure_and_replace(&self.map, key, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.map, drop_below);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A keyed GCRA limiter over a [`BoundedStore`].
struct Governed<K: Hash + Eq + Clone> {
    limiter: RateLimiter<K, BoundedStore<K>, DefaultClock>,
    last_sweep: Mutex<Instant>,
}

impl<K: Hash + Eq + Clone> Governed<K> {
    fn new(quota: Quota, cap: usize, overflow: K) -> Self {
        let store = BoundedStore {
            map: DashMapStateStore::default(),
            cap,
            overflow,
        };
        Self {
            limiter: RateLimiter::new(quota, store, DefaultClock::default()),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    fn check(&self, key: &K, cap: usize) -> ApiResult<()> {
        if self.limiter.len() >= cap {
            self.sweep_if_due();
        }
        let clock = self.limiter.clock();
        self.limiter
            .check_key(key)
            .map_err(|not_until| too_many(not_until.wait_time_from(clock.now())))
    }

    fn sweep_if_due(&self) {
        let mut last = lock(&self.last_sweep);
        if last.elapsed() >= SWEEP_INTERVAL {
            *last = Instant::now();
            drop(last);
            self.limiter.retain_recent();
        }
    }

    fn retain_recent(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.limiter.len()
    }
}

/// A slot taken from a sliding-window budget; giving it back undoes the reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    key: Key,
    taken_at: DateTime<Utc>,
}

/// At most `limit` slots per key in any `window`, reserved before the work they pay for.
struct WindowBudget {
    limit: usize,
    window: Duration,
    cap: usize,
    slots: Mutex<HashMap<Key, Vec<DateTime<Utc>>>>,
}

impl WindowBudget {
    fn new(limit: usize, window: Duration, cap: usize) -> Self {
        Self {
            limit,
            window,
            cap: cap.max(8),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot, or says how long until one frees up.
    fn take(&self, key: Key, now: DateTime<Utc>) -> Result<Slot, std::time::Duration> {
        let mut map = lock(&self.slots);
        if map.len() >= self.cap && !map.contains_key(&key) {
            self.make_room(&mut map, now);
        }
        let stamps = map.entry(key).or_default();
        let since = now - self.window;
        stamps.retain(|at| *at > since);
        if stamps.len() >= self.limit {
            let oldest = stamps.iter().min().copied().unwrap_or(now);
            return Err((oldest + self.window - now).to_std().unwrap_or_default());
        }
        stamps.push(now);
        Ok(Slot { key, taken_at: now })
    }

    fn give_back(&self, slot: Slot) {
        let mut map = lock(&self.slots);
        if let Some(stamps) = map.get_mut(&slot.key) {
            if let Some(i) = stamps.iter().position(|at| *at == slot.taken_at) {
                stamps.swap_remove(i);
            }
            if stamps.is_empty() {
                map.remove(&slot.key);
            }
        }
    }

    /// Drops expired records; if the table is still full, forgets the least recently
    /// active eighth of its keys (one O(n) pass pays for n/8 new keys).
    fn make_room(&self, map: &mut HashMap<Key, Vec<DateTime<Utc>>>, now: DateTime<Utc>) {
        self.retain_live(map, now);
        if map.len() < self.cap {
            return;
        }
        let mut by_recency: Vec<(DateTime<Utc>, Key)> = map
            .iter()
            .map(|(key, stamps)| (stamps.iter().max().copied().unwrap_or(now), *key))
            .collect();
        let forget = (self.cap / 8).max(1);
        by_recency.select_nth_unstable(forget - 1);
        for (_, key) in &by_recency[..forget] {
            map.remove(key);
        }
        tracing::warn!(
            forgotten = forget,
            "a budget table was full of live keys; the least recently active were dropped"
        );
    }

    fn retain_live(&self, map: &mut HashMap<Key, Vec<DateTime<Utc>>>, now: DateTime<Utc>) {
        let since = now - self.window;
        map.retain(|_, stamps| {
            stamps.retain(|at| *at > since);
            !stamps.is_empty()
        });
    }

    fn retain_recent(&self, now: DateTime<Utc>) {
        let mut map = lock(&self.slots);
        self.retain_live(&mut map, now);
        map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        lock(&self.slots).len()
    }
}

/// One account's turn at the hasher; dropping it lets the next check of that account run.
pub struct AccountGate {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    key: AccountKey,
    gates: Arc<Mutex<HashMap<AccountKey, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Drop for AccountGate {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut gates = lock(&self.gates);
        // Only the table holds it: nobody is waiting, forget the account.
        if gates
            .get(&self.key)
            .is_some_and(|gate| Arc::strong_count(gate) == 1)
        {
            gates.remove(&self.key);
        }
    }
}

/// How many keys each table holds (for tests and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStats {
    pub clients: usize,
    pub lookup_callers: usize,
    pub accounts: usize,
    pub mail_senders: usize,
    pub hashing_accounts: usize,
}

pub struct Limits {
    auth: Governed<ClientKey>,
    lookup: Governed<Key>,
    exports: Governed<Key>,
    password_checks: WindowBudget,
    mail_senders: WindowBudget,
    gates: Arc<Mutex<HashMap<AccountKey, Arc<tokio::sync::Mutex<()>>>>>,
    cap: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(60)
    }
}

impl Limits {
    pub fn new(auth_per_minute: u32) -> Self {
        Self::with_cap(auth_per_minute, MAX_TRACKED_KEYS)
    }

    /// With another cap on every table (tests of the cap).
    pub fn with_cap(auth_per_minute: u32, cap: usize) -> Self {
        let per_minute = NonZeroU32::new(LOOKUPS_PER_MINUTE).expect("non-zero");
        let auth_per_minute = NonZeroU32::new(auth_per_minute.max(1)).expect("non-zero");
        Self {
            auth: Governed::new(
                Quota::per_minute(auth_per_minute),
                cap,
                ClientKey::overflow(),
            ),
            lookup: Governed::new(Quota::per_minute(per_minute), cap, Key([0; 16])),
            exports: Governed::new(
                Quota::per_hour(NonZeroU32::new(EXPORTS_PER_HOUR).expect("non-zero")),
                cap,
                Key([0; 16]),
            ),
            password_checks: WindowBudget::new(
                MAX_FAILED_LOGINS,
                Duration::minutes(FAILED_LOGIN_WINDOW_MINUTES),
                cap,
            ),
            mail_senders: WindowBudget::new(
                MAILS_PER_CLIENT_AND_ADDRESS,
                Duration::minutes(MAIL_SENDER_WINDOW_MINUTES),
                cap,
            ),
            gates: Arc::default(),
            cap,
        }
    }

    /// 429 with `Retry-After` once a client has used up its auth budget.
    pub fn check_auth(&self, ip: IpAddr) -> ApiResult<()> {
        self.auth
            .check(&ClientKey::of(ip), self.cap)
            .inspect_err(|_| crate::metrics::metrics().rate_limited("auth_ip"))
    }

    /// 429 with `Retry-After` once the caller has used up its lookups.
    pub fn check_lookup(&self, user_id: &str) -> ApiResult<()> {
        self.lookup
            .check(
                &Key::derive("introgy/lookup", &[user_id.as_bytes()]),
                self.cap,
            )
            .inspect_err(|_| crate::metrics::metrics().rate_limited("lookup"))
    }

    /// 429 with `Retry-After` once the user has used up their exports.
    pub fn check_export(&self, user_id: &str) -> ApiResult<()> {
        self.exports
            .check(
                &Key::derive("introgy/export", &[user_id.as_bytes()]),
                self.cap,
            )
            .inspect_err(|_| crate::metrics::metrics().rate_limited("export"))
    }

    /// Reserves one of the account's password checks (SECURITY.md 26): 429 with
    /// `Retry-After`, before any hashing, once [`MAX_FAILED_LOGINS`] are held in the window.
    pub fn begin_password_check(&self, account: AccountKey, now: DateTime<Utc>) -> ApiResult<Slot> {
        self.password_checks.take(account.0, now).map_err(|wait| {
            crate::metrics::metrics().rate_limited("failed_logins");
            too_many(wait)
        })
    }

    /// Returns a password check's slot: the password was right, so it was no failure.
    pub fn give_back_password_check(&self, slot: Slot) {
        self.password_checks.give_back(slot);
    }

    /// Waits for the account's one hashing slot (SECURITY.md 27): checks of one account
    /// run one after another, so one account never holds more than one bcrypt thread.
    pub async fn account_gate(&self, account: AccountKey) -> AccountGate {
        let gate = Arc::clone(lock(&self.gates).entry(account).or_default());
        let guard = gate.lock_owned().await;
        AccountGate {
            guard: Some(guard),
            key: account,
            gates: Arc::clone(&self.gates),
        }
    }

    /// Takes one of the client's mails to `email` (SECURITY.md 30); `None` when the
    /// client has caused [`MAILS_PER_CLIENT_AND_ADDRESS`] in the window.
    pub fn take_mail_slot(
        &self,
        client: ClientIp,
        email: &Email,
        now: DateTime<Utc>,
    ) -> Option<Slot> {
        let key = Key::derive(
            "introgy/mail-sender",
            &[&client.key().bytes(), email.as_str().as_bytes()],
        );
        self.mail_senders.take(key, now).ok()
    }

    /// Returns a mail slot whose mail was not sent (the address's own budget said no).
    pub fn give_back_mail_slot(&self, slot: Slot) {
        self.mail_senders.give_back(slot);
    }

    /// Forgets what no budget needs any more (keeps memory bounded).
    pub fn retain_recent(&self, now: DateTime<Utc>) {
        self.lookup.retain_recent();
        self.exports.retain_recent();
        self.auth.retain_recent();
        self.password_checks.retain_recent(now);
        self.mail_senders.retain_recent(now);
    }

    pub fn stats(&self) -> LimitStats {
        LimitStats {
            clients: self.auth.len(),
            lookup_callers: self.lookup.len(),
            accounts: self.password_checks.len(),
            mail_senders: self.mail_senders.len(),
            hashing_accounts: lock(&self.gates).len(),
        }
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the nearest
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", xff.parse().unwrap());
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let proxy = ip("127.0.0.1");
        let stranger = ip("203.0.113.9");
        assert_eq!(
            client_ip(stranger, &headers("1.2.3.4"), &trusted),
            stranger,
            "spoofed header from a client"
        );
        assert_eq!(
            client_ip(proxy, &headers("198.51.100.7"), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(proxy, &headers("6.6.6.6, 198.51.100.7, 10.1.2.3"), &trusted),
            ip("198.51.100.7"),
            "the client cannot prepend its own entries"
        );
        assert_eq!(
            client_ip(proxy, &axum::http::HeaderMap::new(), &trusted),
            proxy
        );
        assert_eq!(
            client_ip(proxy, &headers("garbage"), &[]),
            proxy,
            "no trusted proxies: the peer"
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_slash_64() {
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2:aaaa::1")),
            ClientKey::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:192.0.2.7")),
            ClientKey::of(ip("192.0.2.7")),
            "IPv4-mapped addresses are the IPv4 client"
        );
        assert_ne!(
            ClientKey::of(ip("192.0.2.7")),
            ClientKey::of(ip("192.0.2.8"))
        );
    }

    #[test]
    fn failed_password_checks_lock_an_account_for_the_window() {
        let limits = Limits::new(60);
        let now = Utc::now();
        let a = AccountKey::for_login_input("a@example.com");
        for _ in 0..MAX_FAILED_LOGINS {
            limits.begin_password_check(a, now).unwrap();
        }
        assert!(limits.begin_password_check(a, now).is_err());
        assert!(limits
            .begin_password_check(AccountKey::for_login_input("b@example.com"), now)
            .is_ok());
        assert_eq!(
            AccountKey::for_login_input("  A@Example.COM "),
            a,
            "case and spaces do not make a new budget"
        );
        let later = now + Duration::minutes(FAILED_LOGIN_WINDOW_MINUTES) + Duration::seconds(1);
        assert!(limits.begin_password_check(a, later).is_ok());
    }

    #[test]
    fn a_slot_given_back_is_free_again() {
        let limits = Limits::new(60);
        let now = Utc::now();
        let a = AccountKey::for_login_input("a@example.com");
        for _ in 0..MAX_FAILED_LOGINS - 1 {
            limits.begin_password_check(a, now).unwrap();
        }
        for _ in 0..5 {
            let slot = limits.begin_password_check(a, now).unwrap();
            limits.give_back_password_check(slot);
        }
        limits.begin_password_check(a, now).unwrap();
        assert!(limits.begin_password_check(a, now).is_err());
    }

    #[test]
    fn sliding_window_tables_stay_within_their_cap() {
        let cap = 64;
        let limits = Limits::with_cap(60, cap);
        let now = Utc::now();
        for n in 0..10 * cap {
            let key = AccountKey::for_login_input(&format!("user-{n}@example.com"));
            limits.begin_password_check(key, now).unwrap();
            assert!(limits.stats().accounts <= cap, "after {n} keys");
        }
        // The newest keys survived; the least recently active went first.
        let newest = AccountKey::for_login_input(&format!("user-{}@example.com", 10 * cap - 1));
        for _ in 1..MAX_FAILED_LOGINS {
            limits.begin_password_check(newest, now).unwrap();
        }
        assert!(limits.begin_password_check(newest, now).is_err());
    }

    #[test]
    fn a_full_client_table_puts_new_clients_in_one_shared_budget() {
        let cap = 16;
        let limits = Limits::with_cap(2, cap);
        for n in 0..cap {
            limits.check_auth(ip(&format!("192.0.2.{n}"))).unwrap();
        }
        // Known clients keep their own budget.
        limits.check_auth(ip("192.0.2.0")).unwrap();
        assert!(limits.check_auth(ip("192.0.2.0")).is_err());
        // New clients share the overflow budget (2 a minute here).
        limits.check_auth(ip("198.51.100.1")).unwrap();
        limits.check_auth(ip("198.51.100.2")).unwrap();
        assert!(limits.check_auth(ip("198.51.100.3")).is_err());
        assert!(limits.stats().clients <= cap + 1, "{:?}", limits.stats());
    }

    #[test]
    fn one_client_spends_at_most_two_mails_per_address_and_hour() {
        let limits = Limits::new(60);
        let now = Utc::now();
        let owner = ClientIp(ip("192.0.2.1"));
        let stranger = ClientIp(ip("2001:db8::1"));
        let same_stranger = ClientIp(ip("2001:db8::2"));
        let email = Email::parse("ada@example.com", "email").unwrap();
        assert!(limits.take_mail_slot(stranger, &email, now).is_some());
        let slot = limits.take_mail_slot(same_stranger, &email, now).unwrap();
        assert!(limits.take_mail_slot(stranger, &email, now).is_none());
        assert!(limits.take_mail_slot(owner, &email, now).is_some());
        limits.give_back_mail_slot(slot);
        assert!(limits.take_mail_slot(stranger, &email, now).is_some());
        let later = now + Duration::minutes(MAIL_SENDER_WINDOW_MINUTES) + Duration::seconds(1);
        assert!(limits.take_mail_slot(stranger, &email, later).is_some());
    }

    #[tokio::test]
    async fn account_gates_serialise_one_account_and_are_forgotten_after() {
        let limits = Arc::new(Limits::new(60));
        let a = AccountKey::for_login_input("a@example.com");
        let first = limits.account_gate(a).await;
        let waiting = {
            let limits = Arc::clone(&limits);
            tokio::spawn(async move { limits.account_gate(a).await })
        };
        // Another account is not held up.
        let other = limits
            .account_gate(AccountKey::for_login_input("b@example.com"))
            .await;
        drop(other);
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "second check of one account ran at once"
        );
        drop(first);
        let second = waiting.await.unwrap();
        drop(second);
        assert_eq!(limits.stats().hashing_accounts, 0);
    }
}
