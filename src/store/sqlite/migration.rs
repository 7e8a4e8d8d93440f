//! Export and import for `introgy migrate`, through the same row mappings as the rest of
//! the store.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;

use super::battery::{event_from_row, upsert_event, EVENT_COLUMNS, KIND_TOTALS};
use super::users::{upsert_user, user_from_row, USER_COLUMNS};
use super::{millis, SqliteStore};
use crate::store::{BatteryEvent, MigrationStore, StoreCounts, StoreResult, User};

#[async_trait]
impl MigrationStore for SqliteStore {
    async fn export_users(&self, after: Option<&str>, limit: u32) -> StoreResult<Vec<User>> {
        let after = after.unwrap_or("").to_owned();
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?;
            let rows = statement.query_map(params![after, limit], user_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn import_user(&self, user: &User) -> StoreResult<()> {
        let user = user.clone();
        self.write(move |conn| upsert_user(conn, &user)).await
    }

    async fn export_events(
        &self,
        user_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM battery_events WHERE user_id = ?1 AND seq > ?2 \
                 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = statement.query_map(params![user_id, after_seq, limit], event_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn import_events(&self, events: &[BatteryEvent]) -> StoreResult<()> {
        let events = events.to_vec();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            for event in &events {
                upsert_event(&tx, event)?;
            }
            tx.commit()
        })
        .await
    }

    async fn finish_battery_import(
        &self,
        user_id: &str,
        level: i32,
        seq: i64,
        updated_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        let user_id = user_id.to_owned();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            tx.execute(
                "UPDATE users SET battery_level = ?2, battery_seq = ?3, battery_updated_at = ?4 WHERE id = ?1",
                params![user_id, level, seq, updated_at.map(millis)],
            )?;
            tx.execute("DELETE FROM battery_stats WHERE user_id = ?1", [&user_id])?;
            tx.execute(
                &format!(
                    "INSERT INTO battery_stats (user_id, kind, count, total_positive, total_negative, level_sum) \
                     SELECT user_id, kind, {KIND_TOTALS} FROM battery_events WHERE user_id = ?1 GROUP BY kind"
                ),
                [&user_id],
            )?;
            super::insights::recompute_user(&tx, &user_id)?;
            tx.commit()
        })
        .await
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        self.read(|conn| {
            Ok(StoreCounts {
                users: conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?,
                battery_events: conn
                    .query_row("SELECT COUNT(*) FROM battery_events", [], |r| r.get(0))?,
            })
        })
        .await
    }
}
