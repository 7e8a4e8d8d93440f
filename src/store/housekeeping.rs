//! What belongs to no one aggregate: which backend this is, whether it answers, and
//! purging what has expired everywhere.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};

use super::StoreResult;

/// How long an `Idempotency-Key` record is kept.
pub const IDEMPOTENCY_KEPT: TimeDelta = TimeDelta::hours(24);
/// How long an account that was never verified is kept after it was created (while no
/// code of a registration attempt is live).
pub const UNVERIFIED_KEPT: TimeDelta = TimeDelta::days(7);

/// Backend identity, liveness, purge.
#[async_trait]
pub trait Housekeeping: Send + Sync {
    /// `sqlite` or `mongodb`.
    fn backend(&self) -> &'static str;
    /// Cheap round trip proving the database answers.
    async fn ping(&self) -> StoreResult<()>;
    /// How flows of several writes (reset password, delete account, a code with its
    /// mail) run: all-or-nothing, or as ordered writes (and why), for `introgy check`.
    async fn several_writes(&self) -> StoreResult<String>;
    /// What this store's choke point recorded about recent operations (whether writes
    /// are failing), for `/health`; `None` for a store that records nothing.
    fn observer(&self) -> Option<&crate::metrics::StoreObserver> {
        None
    }
    /// Deletes expired codes and sessions (with their refresh tokens), accounts never
    /// verified within [`UNVERIFIED_KEPT`] that have no live code (with everything of
    /// theirs), mail-send records older than the budget's window, idempotency keys older
    /// than a day, and delivered or expired mail older than a week (dead mail stays);
    /// erases sealed refresh-token children past the grace window. Returns how many
    /// records went.
    async fn purge_expired(&self, now: DateTime<Utc>) -> StoreResult<u64>;
    /// Clean shutdown, after the last request: SQLite refuses further writes and
    /// checkpoints its WAL into the database file, so the file alone is complete.
    async fn close(&self) -> StoreResult<()> {
        Ok(())
    }
}
