//! Moving data between stores (`introgy migrate`): users and battery history out of one
//! store and into another, by id, so a run can be repeated or resumed.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{BatteryEvent, StoreResult, User};

/// Record counts, for the migration's final check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub users: u64,
    pub battery_events: u64,
}

/// Export and import.
#[async_trait]
pub trait MigrationStore: Send + Sync {
    /// Users with an id greater than `after`, in id order.
    async fn export_users(&self, after: Option<&str>, limit: u32) -> StoreResult<Vec<User>>;
    /// Writes a user as given (insert or replace by id), battery totals excluded.
    async fn import_user(&self, user: &User) -> StoreResult<()>;
    /// A user's events with `seq > after_seq`, oldest first.
    async fn export_events(
        &self,
        user_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>>;
    /// Writes events as given (insert or replace by id).
    async fn import_events(&self, events: &[BatteryEvent]) -> StoreResult<()>;
    /// Sets the battery position of an imported user and recomputes its running totals
    /// and insights buckets from the imported history.
    async fn finish_battery_import(
        &self,
        user_id: &str,
        level: i32,
        seq: i64,
        updated_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()>;
    /// How many users and battery events the store holds.
    async fn counts(&self) -> StoreResult<StoreCounts>;
}
