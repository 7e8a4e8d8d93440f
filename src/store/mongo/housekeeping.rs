//! Liveness and the purge of expired documents across every collection.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::doc;

use super::{bdt, MongoStore, CODES, IDEMPOTENCY, MAIL_SENDS, OUTBOX, REFRESH_TOKENS, SESSIONS};
use crate::store::housekeeping::IDEMPOTENCY_KEPT;
use crate::store::mail::FINISHED_MAIL_KEPT;
use crate::store::{Housekeeping, MailStatus, StoreResult};

#[async_trait]
impl Housekeeping for MongoStore {
    fn backend(&self) -> &'static str {
        "mongodb"
    }

    fn observer(&self) -> Option<&crate::metrics::StoreObserver> {
        Some(&self.observer)
    }

    async fn ping(&self) -> StoreResult<()> {
        // A write that failed because MongoDB could not be reached is not failing any more
        // once MongoDB answers again (metrics.rs): /health recovers with the connection
        // instead of waiting for that same write to be tried again.
        let started = std::time::Instant::now();
        self.run(self.db.run_command(doc! { "ping": 1 })).await?;
        self.observer.reachable(started);
        Ok(())
    }

    async fn purge_expired(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        // TTL indexes do this on MongoDB; doing it here too keeps servers without a TTL
        // monitor tidy.
        let mut removed = 0;
        for collection in [CODES, SESSIONS, REFRESH_TOKENS, MAIL_SENDS] {
            removed += self
                .run(
                    self.c(collection)
                        .delete_many(doc! { "expires_at": { "$lte": bdt(now) } }),
                )
                .await?
                .deleted_count;
        }
        removed += self
            .run(self.c(OUTBOX).delete_many(doc! {
                "status": { "$in": [MailStatus::Sent.as_str(), MailStatus::Expired.as_str()] },
                "finished_at": { "$lte": bdt(now - FINISHED_MAIL_KEPT) },
            }))
            .await?
            .deleted_count;
        removed += self
            .run(self.c(IDEMPOTENCY).delete_many(doc! {
                "created_at": { "$lte": bdt(now - IDEMPOTENCY_KEPT) }
            }))
            .await?
            .deleted_count;
        Ok(removed)
    }
}
