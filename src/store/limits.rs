//! The limits aggregate: the budgets that throttle clients and accounts (SECURITY.md 11,
//! 21, 26, 27, 30), kept where every instance of the service that shares the store sees
//! the same ones.
//!
//! Two kinds of budget:
//! - a **rate** ([`Rate`], GCRA): `burst` requests at once, then one every
//!   `period / burst` (the per-IP auth budget, lookups per caller);
//! - a **window** ([`Window`]): at most `limit` slots held in any `window`, a slot taken
//!   *before* the work it pays for and given back when that work turns out not to count
//!   (failed password checks per account, a client's share of an address's mail).
//!
//! Keys are [`LimitKey`]s: 16 bytes of SHA-256 over the normalised value, so whatever a
//! client sends, a key costs the same (SECURITY.md 32). SQLite serves one machine and
//! keeps the budgets in process (`sqlite/limits.rs`); MongoDB keeps them in the
//! `limits` collection, one document per key updated by a single `findOneAndUpdate`, so
//! N instances share one budget (`mongo/limits.rs`). `tests/store/limits.rs` holds both
//! to the promises below.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreResult;

/// Which budget a key belongs to: one table (SQLite) or `_id` prefix (MongoDB) each.
/// Stored as its [`as_str`](Self::as_str) text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// Requests per client address on the auth routes and password confirmations.
    AuthClient,
    /// `/users/lookup` calls per caller.
    Lookup,
    /// Failed password checks per account (by normalised address).
    FailedLogins,
    /// Mails one client causes to one address.
    MailShare,
    /// `/users/me/export` calls per user.
    Export,
}

impl Budget {
    pub const ALL: [Budget; 5] = [
        Self::AuthClient,
        Self::Lookup,
        Self::FailedLogins,
        Self::MailShare,
        Self::Export,
    ];

    /// The stored name (a MongoDB `_id` prefix, a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthClient => "auth_client",
            Self::Lookup => "lookup",
            Self::FailedLogins => "failed_logins",
            Self::MailShare => "mail_share",
            Self::Export => "export",
        }
    }

    /// Position in [`Budget::ALL`] (a table index for the in-process backend).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::str::FromStr for Budget {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == raw)
            .ok_or_else(|| format!("unknown budget {raw:?}"))
    }
}

/// A fixed-size key: 16 bytes of SHA-256 over a label and length-prefixed parts, so that
/// whatever a client sends, a budget entry costs the same.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct LimitKey(pub [u8; 16]);

impl LimitKey {
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

    /// The key as stored: 32 hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A GCRA budget: `burst` requests at once, then one every `period / burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub period: std::time::Duration,
}

impl Rate {
    /// `n` a minute (at least one).
    pub fn per_minute(n: u32) -> Self {
        Self {
            burst: n.max(1),
            period: std::time::Duration::from_secs(60),
        }
    }

    /// `n` an hour (at least one).
    pub fn per_hour(n: u32) -> Self {
        Self {
            burst: n.max(1),
            period: std::time::Duration::from_secs(3600),
        }
    }

    /// The time one request costs (GCRA's emission interval), in whole milliseconds (at
    /// least one).
    pub fn interval_ms(&self) -> i64 {
        (self.period.as_millis() as i64 / i64::from(self.burst.max(1))).max(1)
    }

    /// How far GCRA's theoretical arrival time may run ahead of now: a full burst.
    pub fn tolerance_ms(&self) -> i64 {
        self.interval_ms() * i64::from(self.burst.max(1))
    }
}

/// A sliding-window budget: at most `limit` slots held in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u32,
    pub window: TimeDelta,
}

/// A slot taken from a [`Window`] budget. Giving it back undoes the reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub budget: Budget,
    pub key: LimitKey,
    pub taken_at: DateTime<Utc>,
    /// Tells this slot from others of the key taken in the same millisecond.
    pub id: u64,
}

/// A budget said no: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: std::time::Duration,
}

impl Refused {
    /// From milliseconds to wait (negative or zero: a moment).
    pub fn after_ms(ms: i64) -> Self {
        Self {
            retry_after: std::time::Duration::from_millis(ms.max(0) as u64),
        }
    }
}

/// The budgets. Every check is one atomic step: parallel callers (in one process or in
/// several sharing the store) never get more than the budget between them.
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Spends one request of `key`'s `rate` budget, or says how long until one is free.
    async fn take_rate(
        &self,
        budget: Budget,
        key: LimitKey,
        rate: Rate,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<(), Refused>>;
    /// Takes a slot of `key`'s `window` budget (slots older than the window are free
    /// again), or says how long until the oldest held slot frees up.
    async fn take_slot(
        &self,
        budget: Budget,
        key: LimitKey,
        window: Window,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<Slot, Refused>>;
    /// Gives a slot back (it did not pay for anything after all); a slot already gone
    /// (given back, or out of the window) changes nothing.
    async fn give_back_slot(&self, slot: &Slot) -> StoreResult<()>;
    /// How many keys `budget` tracks now (memory and tests).
    async fn limit_keys(&self, budget: Budget, now: DateTime<Utc>) -> StoreResult<u64>;
    /// Forgets what no budget needs any more (spent windows, refilled rates).
    async fn forget_spent_limits(&self, now: DateTime<Utc>) -> StoreResult<u64>;
}

/// The wait until a window budget with these slot times (all within the window) frees
/// its oldest slot.
pub fn window_wait(
    oldest: Option<DateTime<Utc>>,
    window: TimeDelta,
    now: DateTime<Utc>,
) -> Refused {
    let free_at = oldest.unwrap_or(now) + window;
    Refused::after_ms((free_at - now).num_milliseconds())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_budget_has_one_name() {
        for budget in Budget::ALL {
            assert_eq!(budget.as_str().parse::<Budget>(), Ok(budget));
            assert_eq!(
                serde_json::to_value(budget).unwrap(),
                serde_json::Value::from(budget.as_str())
            );
            assert_eq!(Budget::ALL[budget.index()], budget);
        }
    }

    #[test]
    fn keys_are_sixteen_bytes_whatever_the_input() {
        let long = "x".repeat(100_000);
        let a = LimitKey::derive("introgy/test", &[long.as_bytes()]);
        assert_eq!(a.hex().len(), 32);
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            LimitKey::derive("l", &[b"ab", b"c"]),
            LimitKey::derive("l", &[b"a", b"bc"])
        );
    }

    #[test]
    fn a_rate_costs_its_period_over_its_burst() {
        assert_eq!(Rate::per_minute(60).interval_ms(), 1_000);
        assert_eq!(Rate::per_minute(0).burst, 1);
        assert_eq!(Rate::per_minute(1_000_000).interval_ms(), 1);
    }
}
