//! Liveness and the purge of expired documents across every collection.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Bson, Document};

use super::codes::live_challenge_filter;
use super::USERS;
use super::{bdt, MongoStore, CODES, IDEMPOTENCY, MAIL_SENDS, OUTBOX, REFRESH_TOKENS, SESSIONS};
use crate::store::housekeeping::{IDEMPOTENCY_KEPT, UNVERIFIED_KEPT};
use crate::store::mail::FINISHED_MAIL_KEPT;
use crate::store::sessions::SEALED_CHILD_KEPT;
use crate::store::{Housekeeping, MailStatus, StoreResult};

/// Unverified accounts looked at per batch of the purge.
const UNVERIFIED_BATCH: i64 = 500;

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

    async fn several_writes(&self) -> StoreResult<String> {
        Ok(self.multi_write().await?.to_string())
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
        self.run(self.c(REFRESH_TOKENS).update_many(
            doc! {
                "child_sealed": { "$exists": true },
                "rotated_at": { "$lte": bdt(now - SEALED_CHILD_KEPT) },
            },
            doc! { "$unset": { "child_sealed": "" } },
        ))
        .await?;
        removed += self.purge_unverified(now).await?;
        Ok(removed)
    }
}

impl MongoStore {
    /// Deletes accounts never verified within [`UNVERIFIED_KEPT`] that have no live code,
    /// and what belongs to them. Only `is_verified: false` counts: a legacy document
    /// without the field is left alone. The user goes first, as in `delete_user`.
    async fn purge_unverified(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let mut removed = 0;
        let mut after: Option<Bson> = None;
        loop {
            let mut filter = doc! {
                "is_verified": false,
                "created_at": { "$lte": bdt(now - UNVERIFIED_KEPT) },
            };
            if let Some(last) = &after {
                filter.insert("_id", doc! { "$gt": last.clone() });
            }
            let cursor = self
                .run(
                    self.raw(USERS)
                        .find(filter)
                        .projection(doc! { "_id": 1 })
                        .sort(doc! { "_id": 1 })
                        .limit(UNVERIFIED_BATCH),
                )
                .await?;
            let ids: Vec<Bson> = self
                .read_all(USERS, cursor, |d: Document| {
                    d.get("_id").cloned().ok_or_else(|| "no _id".to_owned())
                })
                .await?;
            let Some(last) = ids.last() else {
                return Ok(removed);
            };
            after = Some(last.clone());
            let texts: Vec<String> = ids.iter().map(id_text).collect();
            let live: Vec<String> = {
                let cursor = self
                    .run(
                        self.raw(CODES)
                            .find(live_challenge_filter(&texts, now))
                            .projection(doc! { "user_id": 1 }),
                    )
                    .await?;
                self.read_all(CODES, cursor, |d: Document| {
                    d.get_str("user_id")
                        .map(str::to_owned)
                        .map_err(|e| e.to_string())
                })
                .await?
            };
            let doomed: Vec<(Bson, String)> = ids
                .into_iter()
                .zip(texts)
                .filter(|(_, text)| !live.contains(text))
                .collect();
            if doomed.is_empty() {
                continue;
            }
            let keys: Vec<Bson> = doomed.iter().map(|(key, _)| key.clone()).collect();
            let texts: Vec<String> = doomed.into_iter().map(|(_, text)| text).collect();
            removed += self
                .run(
                    self.c(USERS)
                        .delete_many(doc! { "_id": { "$in": keys }, "is_verified": false }),
                )
                .await?
                .deleted_count;
            // An unverified account cannot log in: codes are all it can have.
            for collection in [SESSIONS, REFRESH_TOKENS, CODES] {
                self.run(
                    self.c(collection)
                        .delete_many(doc! { "user_id": { "$in": texts.clone() } }),
                )
                .await?;
            }
        }
    }
}

/// A user `_id` as the other collections store it.
fn id_text(id: &Bson) -> String {
    match id {
        Bson::ObjectId(oid) => oid.to_hex(),
        Bson::String(s) => s.clone(),
        other => other.to_string(),
    }
}
