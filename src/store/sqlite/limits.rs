//! The budgets of an SQLite deployment, in process: SQLite serves one machine, so one
//! process holds them all and no round trip is needed. Rates are governor's keyed GCRA;
//! windows are a map of slot times per key.
//!
//! Memory never grows with attacker-chosen input (SECURITY.md 32): every key is a
//! 16-byte [`LimitKey`], and every table holds at most [`MAX_TRACKED_KEYS`] keys and
//! forgets a key once its window has passed. A full rate table sweeps stale keys (at most
//! once a second), and a key it still has no room for shares one overflow budget with
//! every other such key; a full window table drops expired slots, then the least
//! recently active eighth of its keys.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use super::SqliteStore;
use crate::store::limits::window_wait;
use crate::store::{Budget, LimitKey, LimitStore, Rate, Refused, Slot, StoreResult, Window};

/// Most keys any one table keeps (about 200 bytes each at most: ~13 MiB per table).
pub const MAX_TRACKED_KEYS: usize = 65_536;
/// A full rate table sweeps stale keys at most this often.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// The key of requests a full rate table has no room for (no real key is all zeros).
const OVERFLOW: LimitKey = LimitKey([0; 16]);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
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
struct Governed {
    rate: Rate,
    limiter: RateLimiter<LimitKey, BoundedStore<LimitKey>, DefaultClock>,
    cap: usize,
    last_sweep: Mutex<Instant>,
}

impl Governed {
    fn new(rate: Rate, cap: usize) -> Self {
        let burst = NonZeroU32::new(rate.burst.max(1)).expect("non-zero");
        let quota = Quota::with_period(rate.period / burst.get())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        let store = BoundedStore {
            map: DashMapStateStore::default(),
            cap,
            overflow: OVERFLOW,
        };
        Self {
            rate,
            limiter: RateLimiter::new(quota, store, DefaultClock::default()),
            cap,
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    fn check(&self, key: &LimitKey) -> Result<(), Refused> {
        if self.limiter.len() >= self.cap {
            self.sweep_if_due();
        }
        let clock = self.limiter.clock();
        self.limiter.check_key(key).map_err(|not_until| Refused {
            retry_after: not_until.wait_time_from(clock.now()),
        })
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
}

/// The held slots of each key: when each was taken, and its id.
type HeldSlots = HashMap<LimitKey, Vec<(DateTime<Utc>, u64)>>;

/// At most `limit` slots per key in any `window`.
struct WindowTable {
    window: Window,
    cap: usize,
    slots: Mutex<HeldSlots>,
}

impl WindowTable {
    fn new(window: Window, cap: usize) -> Self {
        Self {
            window,
            cap: cap.max(8),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, key: LimitKey, id: u64, now: DateTime<Utc>) -> Result<(), Refused> {
        let mut map = lock(&self.slots);
        if map.len() >= self.cap && !map.contains_key(&key) {
            self.make_room(&mut map, now);
        }
        let stamps = map.entry(key).or_default();
        let since = now - self.window.window;
        stamps.retain(|(at, _)| *at > since);
        if stamps.len() >= self.window.limit as usize {
            let oldest = stamps.iter().map(|(at, _)| *at).min();
            return Err(window_wait(oldest, self.window.window, now));
        }
        stamps.push((now, id));
        Ok(())
    }

    fn give_back(&self, key: &LimitKey, id: u64) {
        let mut map = lock(&self.slots);
        if let Some(stamps) = map.get_mut(key) {
            stamps.retain(|(_, held)| *held != id);
            if stamps.is_empty() {
                map.remove(key);
            }
        }
    }

    /// Drops expired slots; if the table is still full, forgets the least recently
    /// active eighth of its keys (one O(n) pass pays for n/8 new keys).
    fn make_room(&self, map: &mut HeldSlots, now: DateTime<Utc>) {
        self.retain_live(map, now);
        if map.len() < self.cap {
            return;
        }
        let mut by_recency: Vec<(DateTime<Utc>, LimitKey)> = map
            .iter()
            .map(|(key, stamps)| (stamps.iter().map(|(at, _)| *at).max().unwrap_or(now), *key))
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

    fn retain_live(&self, map: &mut HeldSlots, now: DateTime<Utc>) {
        let since = now - self.window.window;
        map.retain(|_, stamps| {
            stamps.retain(|(at, _)| *at > since);
            !stamps.is_empty()
        });
    }

    fn retain_recent(&self, now: DateTime<Utc>) -> u64 {
        let mut map = lock(&self.slots);
        let before = map.len();
        self.retain_live(&mut map, now);
        map.shrink_to_fit();
        (before - map.len()) as u64
    }

    fn len(&self) -> usize {
        lock(&self.slots).len()
    }
}

/// Every budget of one process: a table per [`Budget`], made on its first use with the
/// quota that use names (each budget always names the same one).
pub struct InProcessLimits {
    cap: usize,
    rates: [OnceLock<Governed>; Budget::ALL.len()],
    windows: [OnceLock<WindowTable>; Budget::ALL.len()],
    next_slot: AtomicU64,
}

impl Default for InProcessLimits {
    fn default() -> Self {
        Self::with_cap(MAX_TRACKED_KEYS)
    }
}

impl InProcessLimits {
    /// With another cap on every table (tests of the cap).
    pub fn with_cap(cap: usize) -> Self {
        Self {
            cap,
            rates: Default::default(),
            windows: Default::default(),
            next_slot: AtomicU64::new(1),
        }
    }

    fn rate_table(&self, budget: Budget, rate: Rate) -> &Governed {
        let table = self.rates[budget.index()].get_or_init(|| Governed::new(rate, self.cap));
        debug_assert_eq!(table.rate, rate, "{} named two rates", budget.as_str());
        table
    }

    fn window_table(&self, budget: Budget, window: Window) -> &WindowTable {
        let table = self.windows[budget.index()].get_or_init(|| WindowTable::new(window, self.cap));
        debug_assert_eq!(
            table.window,
            window,
            "{} named two windows",
            budget.as_str()
        );
        table
    }

    pub fn take_rate(&self, budget: Budget, key: LimitKey, rate: Rate) -> Result<(), Refused> {
        self.rate_table(budget, rate).check(&key)
    }

    pub fn take_slot(
        &self,
        budget: Budget,
        key: LimitKey,
        window: Window,
        now: DateTime<Utc>,
    ) -> Result<Slot, Refused> {
        let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
        self.window_table(budget, window).take(key, id, now)?;
        Ok(Slot {
            budget,
            key,
            taken_at: now,
            id,
        })
    }

    pub fn give_back(&self, slot: &Slot) {
        if let Some(table) = self.windows[slot.budget.index()].get() {
            table.give_back(&slot.key, slot.id);
        }
    }

    pub fn keys(&self, budget: Budget) -> usize {
        let rates = self.rates[budget.index()]
            .get()
            .map_or(0, |t| t.limiter.len());
        let windows = self.windows[budget.index()]
            .get()
            .map_or(0, WindowTable::len);
        rates + windows
    }

    pub fn retain_recent(&self, now: DateTime<Utc>) -> u64 {
        let mut forgotten = 0;
        for table in self.rates.iter().filter_map(OnceLock::get) {
            table.retain_recent();
        }
        for table in self.windows.iter().filter_map(OnceLock::get) {
            forgotten += table.retain_recent(now);
        }
        forgotten
    }
}

#[async_trait]
impl LimitStore for SqliteStore {
    async fn take_rate(
        &self,
        budget: Budget,
        key: LimitKey,
        rate: Rate,
        _now: DateTime<Utc>,
    ) -> StoreResult<Result<(), Refused>> {
        // governor keeps its own monotonic clock: a rate refills with real time only.
        Ok(self.limits.take_rate(budget, key, rate))
    }

    async fn take_slot(
        &self,
        budget: Budget,
        key: LimitKey,
        window: Window,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<Slot, Refused>> {
        Ok(self.limits.take_slot(budget, key, window, now))
    }

    async fn give_back_slot(&self, slot: &Slot) -> StoreResult<()> {
        self.limits.give_back(slot);
        Ok(())
    }

    async fn limit_keys(&self, budget: Budget, _now: DateTime<Utc>) -> StoreResult<u64> {
        Ok(self.limits.keys(budget) as u64)
    }

    async fn forget_spent_limits(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        Ok(self.limits.retain_recent(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn key(n: usize) -> LimitKey {
        LimitKey::derive("test", &[n.to_string().as_bytes()])
    }

    const TEN_IN_FIFTEEN: Window = Window {
        limit: 10,
        window: TimeDelta::minutes(15),
    };

    #[test]
    fn window_tables_stay_within_their_cap_and_forget_the_least_recent_first() {
        let cap = 64;
        let limits = InProcessLimits::with_cap(cap);
        let now = Utc::now();
        for n in 0..10 * cap {
            limits
                .take_slot(Budget::FailedLogins, key(n), TEN_IN_FIFTEEN, now)
                .unwrap();
            assert!(limits.keys(Budget::FailedLogins) <= cap, "after {n} keys");
        }
        // The newest keys survived; the least recently active went first.
        let newest = key(10 * cap - 1);
        for _ in 1..10 {
            limits
                .take_slot(Budget::FailedLogins, newest, TEN_IN_FIFTEEN, now)
                .unwrap();
        }
        assert!(limits
            .take_slot(Budget::FailedLogins, newest, TEN_IN_FIFTEEN, now)
            .is_err());
    }

    #[test]
    fn a_full_rate_table_puts_new_keys_in_one_shared_budget() {
        let cap = 16;
        let limits = InProcessLimits::with_cap(cap);
        let rate = Rate::per_minute(2);
        for n in 0..cap {
            limits.take_rate(Budget::AuthClient, key(n), rate).unwrap();
        }
        // Known keys keep their own budget.
        limits.take_rate(Budget::AuthClient, key(0), rate).unwrap();
        assert!(limits.take_rate(Budget::AuthClient, key(0), rate).is_err());
        // New keys share the overflow budget (2 a minute here).
        limits
            .take_rate(Budget::AuthClient, key(1000), rate)
            .unwrap();
        limits
            .take_rate(Budget::AuthClient, key(1001), rate)
            .unwrap();
        assert!(limits
            .take_rate(Budget::AuthClient, key(1002), rate)
            .is_err());
        assert!(limits.keys(Budget::AuthClient) <= cap + 1);
    }

    #[test]
    fn forgetting_spent_windows_empties_the_table() {
        let limits = InProcessLimits::default();
        let now = Utc::now();
        for n in 0..5 {
            limits
                .take_slot(Budget::MailShare, key(n), TEN_IN_FIFTEEN, now)
                .unwrap();
        }
        assert_eq!(limits.retain_recent(now), 0);
        assert_eq!(
            limits.retain_recent(now + TimeDelta::minutes(15) + TimeDelta::seconds(1)),
            5
        );
        assert_eq!(limits.keys(Budget::MailShare), 0);
    }
}
