//! The authenticated read: two primary-key lookups on one read connection, run on the
//! calling worker (`SqliteStore::quick_read`).

use async_trait::async_trait;
use rusqlite::OptionalExtension;

use super::sessions::session_from_row;
use super::users::{user_from_row, USER_COLUMNS};
use super::{Fields, Key, SqliteStore};
use crate::store::battery::stored_level;
use crate::store::{BatteryPosition, Caller, CallerStore, StoreResult};

#[async_trait]
impl CallerStore for SqliteStore {
    async fn caller(&self, session_id: &str, user_id: &str) -> StoreResult<Option<Caller>> {
        let (session_id, user_id) = (session_id.to_owned(), user_id.to_owned());
        self.quick_read(move |conn| {
            let session = conn
                .prepare_cached(
                    "SELECT id, user_id, created_at, expires_at, refreshed_at FROM sessions \
                     WHERE id = ?1 AND user_id = ?2",
                )?
                .query_row([&session_id, &user_id], session_from_row)
                .optional()?;
            let Some(session) = session else {
                return Ok(None);
            };
            conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS}, battery_seq FROM users WHERE id = ?1"
            ))?
            .query_row([&user_id], |row| {
                let user = user_from_row(row)?;
                let f = Fields::new(row, "users", Key::Column(0));
                let seq: i64 = f.get(16)?;
                let level = f.check(12, stored_level(user.battery_level.into()))?;
                Ok(Caller {
                    session,
                    battery: BatteryPosition {
                        level,
                        seq,
                        updated_at: user.battery_updated_at,
                        version: 0,
                    },
                    user,
                })
            })
            .optional()
        })
        .await
    }
}
