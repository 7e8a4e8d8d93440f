//! Liveness and the purge of expired rows across every table.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, TransactionBehavior};

use super::{millis, SqliteStore};
use crate::store::housekeeping::{IDEMPOTENCY_KEPT, UNVERIFIED_KEPT};
use crate::store::mail::{FINISHED_MAIL_KEPT, SEND_WINDOW};
use crate::store::sessions::SEALED_CHILD_KEPT;
use crate::store::{Housekeeping, MailStatus, StoreResult};

/// How a flow of several writes runs on SQLite (`introgy check` prints it).
pub const SEVERAL_WRITES: &str = "one SQLite transaction each";

#[async_trait]
impl Housekeeping for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn observer(&self) -> Option<&crate::metrics::StoreObserver> {
        Some(&self.observer)
    }

    async fn ping(&self) -> StoreResult<()> {
        // The file first: a deleted or replaced database still answers through the open
        // descriptors. Then touch the schema, so a broken file is noticed (`SELECT 1`
        // would not).
        self.check_file().await?;
        self.read(|conn| conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(())))
            .await
    }

    async fn several_writes(&self) -> StoreResult<String> {
        Ok(SEVERAL_WRITES.into())
    }

    async fn close(&self) -> StoreResult<()> {
        SqliteStore::close(self).await
    }

    async fn purge_expired(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now_ms = millis(now);
            let mut removed = 0;
            removed += tx.execute(
                "DELETE FROM one_time_codes WHERE expires_at <= ?1",
                [now_ms],
            )?;
            // A challenge without codes is over (its count goes with it).
            removed += tx.execute(
                "DELETE FROM code_challenges WHERE NOT EXISTS (SELECT 1 FROM one_time_codes c                  WHERE c.user_id = code_challenges.user_id AND c.purpose = code_challenges.purpose)",
                [],
            )?;
            // Accounts never verified, a week on, with no live code left: everything of
            // theirs goes by cascade.
            removed += tx.execute(
                "DELETE FROM users WHERE is_verified = 0 AND created_at <= ?1                  AND NOT EXISTS (SELECT 1 FROM code_challenges c WHERE c.user_id = users.id)",
                [millis(now - UNVERIFIED_KEPT)],
            )?;
            // Sealed children are kept for the grace window only.
            tx.execute(
                "UPDATE refresh_tokens SET child_sealed = NULL                  WHERE child_sealed IS NOT NULL AND rotated_at <= ?1",
                [millis(now - SEALED_CHILD_KEPT)],
            )?;
            // Refresh tokens go with their session by cascade.
            removed += tx.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now_ms])?;
            removed += tx.execute(
                "DELETE FROM mail_sends WHERE sent_at <= ?1",
                [millis(now - SEND_WINDOW)],
            )?;
            removed += tx.execute(
                "DELETE FROM idempotency_keys WHERE created_at <= ?1",
                [millis(now - IDEMPOTENCY_KEPT)],
            )?;
            // Delivered and expired mail is kept a week for inspection; dead mail stays.
            removed += tx.execute(
                "DELETE FROM mail_outbox WHERE status IN (?2, ?3) AND finished_at <= ?1",
                params![
                    millis(now - FINISHED_MAIL_KEPT),
                    MailStatus::Sent.as_str(),
                    MailStatus::Expired.as_str()
                ],
            )?;
            tx.commit()?;
            Ok(removed as u64)
        })
        .await
    }
}
