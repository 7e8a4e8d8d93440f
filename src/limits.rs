//! The budgets the service enforces (SECURITY.md 11, 21, 26, 27, 30), asked through one
//! interface: per client IP on the auth routes and on every password check, per caller
//! on `/users/lookup`, failed password checks per account, mails per (client, address),
//! and one hashing slot per account.
//!
//! The budgets themselves live in the store's limits aggregate
//! ([`LimitStore`](crate::store::LimitStore)): in process on SQLite (one machine), in the
//! database on MongoDB, so that N instances behind a load balancer enforce one budget
//! between them (one round trip per check). Only the hashing slot is per process: it
//! bounds how many bcrypt threads one account occupies on each instance, and the shared
//! failed-login budget bounds how many checks there are in all.
//!
//! Keys never keep attacker-chosen input (SECURITY.md 32): a client is its IPv4 address
//! or the /64 prefix of its IPv6 address ([`ClientKey`]: whoever holds a /64 can mint
//! 2^64 addresses, and gets one budget for all of them), and every key is 16 bytes of
//! SHA-256 over the normalised value ([`LimitKey`]).
//!
//! Budgets are reserved before the work they pay for, never counted after it
//! (SECURITY.md 26): a password check takes its slot before bcrypt runs and gives it back
//! only when the password was right; a mail takes its (client, address) slot before the
//! store's per-address budget and gives it back when the store refuses. Failed logins are
//! counted per address whether or not an account exists, so the throttle reveals nothing.
//! A budget that cannot be asked (the database is down) answers like the store does: 503.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use chrono::TimeDelta;

use crate::clock::Clock;
use crate::domain::Email;
use crate::error::{ApiError, ApiResult};
use crate::startup::AppState;
use crate::store::{Budget, LimitKey, Rate, Refused, Store, StoreResult, Window};

/// A reserved slot of a budget (handed back with [`Limits::give_back`]).
pub use crate::store::Slot;

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

const FAILED_LOGINS: Window = Window {
    limit: MAX_FAILED_LOGINS as u32,
    window: TimeDelta::minutes(FAILED_LOGIN_WINDOW_MINUTES),
};
const MAIL_SHARE: Window = Window {
    limit: MAILS_PER_CLIENT_AND_ADDRESS as u32,
    window: TimeDelta::minutes(MAIL_SENDER_WINDOW_MINUTES),
};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn too_many(refused: Refused) -> ApiError {
    ApiError::TooManyRequests {
        retry_after_secs: refused.retry_after.as_secs() + 1,
    }
}

/// The account a password check is about, as the failed-login budget keys it: the
/// normalised address (trimmed, lowercased, as [`Email::parse`] does), hashed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AccountKey(LimitKey);

impl AccountKey {
    /// The key of an address as typed at login, valid or not (an unparseable input is
    /// throttled like an unknown address, and kept only as its hash).
    pub fn for_login_input(raw: &str) -> Self {
        Self::of_normalised(&raw.trim().to_lowercase())
    }

    /// The key of a stored (already normalised) address.
    pub fn of_normalised(email: &str) -> Self {
        Self(LimitKey::derive("introgy/account", &[email.as_bytes()]))
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

    fn bytes(&self) -> Vec<u8> {
        match self.0 {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }
    }

    /// The client's key in the per-IP budget.
    fn limit_key(&self) -> LimitKey {
        LimitKey::derive("introgy/client", &[&self.bytes()])
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

/// How many keys each budget tracks (for tests and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStats {
    pub clients: u64,
    pub lookup_callers: u64,
    pub accounts: u64,
    pub mail_senders: u64,
    /// Accounts holding or waiting for this process's hashing slot.
    pub hashing_accounts: u64,
}

/// The budgets, over the store's limits aggregate.
pub struct Limits {
    store: Arc<dyn Store>,
    clock: Clock,
    auth: Rate,
    lookup: Rate,
    exports: Rate,
    gates: Arc<Mutex<HashMap<AccountKey, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Limits {
    /// `auth_per_minute` requests per client on the auth routes (a burst of that many,
    /// then one every `60 s / auth_per_minute`).
    pub fn new(store: Arc<dyn Store>, clock: Clock, auth_per_minute: u32) -> Self {
        Self {
            store,
            clock,
            auth: Rate::per_minute(auth_per_minute),
            lookup: Rate::per_minute(LOOKUPS_PER_MINUTE),
            exports: Rate::per_hour(EXPORTS_PER_HOUR),
            gates: Arc::default(),
        }
    }

    /// 429 with `Retry-After` once a client has used up its auth budget.
    pub async fn check_auth(&self, ip: IpAddr) -> ApiResult<()> {
        let key = ClientKey::of(ip).limit_key();
        self.take_rate(Budget::AuthClient, key, self.auth, "auth_ip")
            .await
    }

    /// 429 with `Retry-After` once the caller has used up its lookups.
    pub async fn check_lookup(&self, user_id: &str) -> ApiResult<()> {
        let key = LimitKey::derive("introgy/lookup", &[user_id.as_bytes()]);
        self.take_rate(Budget::Lookup, key, self.lookup, "lookup")
            .await
    }

    /// 429 with `Retry-After` once the user has used up their exports.
    pub async fn check_export(&self, user_id: &str) -> ApiResult<()> {
        let key = LimitKey::derive("introgy/export", &[user_id.as_bytes()]);
        self.take_rate(Budget::Export, key, self.exports, "export")
            .await
    }

    /// Takes one request of `key`'s `rate` in `budget`; a refusal is counted under
    /// `metric` and answered 429 with `Retry-After`.
    async fn take_rate(
        &self,
        budget: Budget,
        key: LimitKey,
        rate: Rate,
        metric: &'static str,
    ) -> ApiResult<()> {
        self.store
            .take_rate(budget, key, rate, self.clock.now())
            .await?
            .map_err(|refused| {
                crate::metrics::metrics().rate_limited(metric);
                too_many(refused)
            })
    }

    /// Reserves one of the account's password checks (SECURITY.md 26): 429 with
    /// `Retry-After`, before any hashing, once [`MAX_FAILED_LOGINS`] are held in the window.
    pub async fn begin_password_check(&self, account: AccountKey) -> ApiResult<Slot> {
        self.store
            .take_slot(
                Budget::FailedLogins,
                account.0,
                FAILED_LOGINS,
                self.clock.now(),
            )
            .await?
            .map_err(|refused| {
                crate::metrics::metrics().rate_limited("failed_logins");
                too_many(refused)
            })
    }

    /// Returns a slot: the password was right (no failure), or the mail it paid for was
    /// not sent. A slot that cannot be returned (the store is down) stays held until it
    /// leaves its window: the budget errs on the strict side.
    pub async fn give_back(&self, slot: Slot) {
        if let Err(e) = self.store.give_back_slot(&slot).await {
            tracing::warn!(error = %e, budget = slot.budget.as_str(), "a budget slot could not be given back; it frees up with its window");
        }
    }

    /// Waits for the account's one hashing slot (SECURITY.md 27): checks of one account
    /// run one after another, so one account never holds more than one bcrypt thread of
    /// this process.
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
    pub async fn take_mail_slot(
        &self,
        client: ClientIp,
        email: &Email,
    ) -> StoreResult<Option<Slot>> {
        let key = LimitKey::derive(
            "introgy/mail-sender",
            &[&client.key().bytes(), email.as_str().as_bytes()],
        );
        Ok(self
            .store
            .take_slot(Budget::MailShare, key, MAIL_SHARE, self.clock.now())
            .await?
            .ok())
    }

    /// Forgets what no budget needs any more (keeps memory and the database bounded).
    pub async fn forget_spent(&self) -> StoreResult<u64> {
        self.store.forget_spent_limits(self.clock.now()).await
    }

    pub async fn stats(&self) -> StoreResult<LimitStats> {
        let now = self.clock.now();
        let keys = |budget| self.store.limit_keys(budget, now);
        Ok(LimitStats {
            clients: keys(Budget::AuthClient).await?,
            lookup_callers: keys(Budget::Lookup).await?,
            accounts: keys(Budget::FailedLogins).await?,
            mail_senders: keys(Budget::MailShare).await?,
            hashing_accounts: lock(&self.gates).len() as u64,
        })
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

    async fn limits() -> (Limits, Clock, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(
            &dir.path().join("limits.db"),
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
        let clock = Clock::default();
        (Limits::new(Arc::new(store), clock.clone(), 60), clock, dir)
    }

    #[tokio::test]
    async fn one_client_spends_at_most_two_mails_per_address_and_hour() {
        let (limits, clock, _dir) = limits().await;
        let owner = ClientIp(ip("192.0.2.1"));
        let stranger = ClientIp(ip("2001:db8::1"));
        let same_stranger = ClientIp(ip("2001:db8::2"));
        let email = Email::parse("ada@example.com", "email").unwrap();
        let take = |client| limits.take_mail_slot(client, &email);
        assert!(take(stranger).await.unwrap().is_some());
        let slot = take(same_stranger).await.unwrap().unwrap();
        assert!(
            take(stranger).await.unwrap().is_none(),
            "one /64, one client"
        );
        assert!(take(owner).await.unwrap().is_some());
        limits.give_back(slot).await;
        assert!(take(stranger).await.unwrap().is_some());
        clock.advance(TimeDelta::minutes(MAIL_SENDER_WINDOW_MINUTES) + TimeDelta::seconds(1));
        assert!(take(stranger).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn failed_logins_are_counted_per_normalised_address() {
        let (limits, _clock, _dir) = limits().await;
        let a = AccountKey::for_login_input("a@example.com");
        for _ in 0..MAX_FAILED_LOGINS {
            limits.begin_password_check(a).await.unwrap();
        }
        assert!(limits.begin_password_check(a).await.is_err());
        assert_eq!(
            AccountKey::for_login_input("  A@Example.COM "),
            a,
            "case and spaces do not make a new budget"
        );
        assert!(limits
            .begin_password_check(AccountKey::for_login_input("b@example.com"))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn account_gates_serialise_one_account_and_are_forgotten_after() {
        let (limits, _clock, _dir) = limits().await;
        let limits = Arc::new(limits);
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
        assert_eq!(limits.stats().await.unwrap().hashing_accounts, 0);
    }
}
