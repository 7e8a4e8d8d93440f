//! The budgets in `limits`, shared by every instance on the database: one document per
//! key (`_id` = `<budget>:<32 hex digits of the key>`), changed by one `findOneAndUpdate`
//! whose update is an aggregation pipeline, so a check is one round trip and atomic
//! however many instances check at once.
//!
//! - A rate ([`RateDoc`]) keeps GCRA's theoretical arrival time `tat`: a request at `now`
//!   moves it to `max(tat, now) + interval` if that is at most `burst × interval` ahead
//!   of `now`, else it is refused and `tat` stays.
//! - A window ([`WindowDoc`]) keeps the times and ids of its held slots: slots older than
//!   the window are dropped, and a new one is appended if fewer than `limit` remain.
//!   Giving a slot back pulls it by id.
//!
//! Each document says whether its last update admitted the request (`ok`), which the
//! update returns, and carries `expires_at` (TTL-indexed; the purge deletes it too): the
//! moment from which it is the same as no document at all.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::{doc, Document};
use serde::{Deserialize, Serialize};

use super::{bdt, utc, MongoStore, Updated, LIMITS};
use crate::store::limits::window_wait;
use crate::store::{
    Budget, LimitKey, LimitStore, Rate, Refused, Slot, StoreError, StoreResult, Window,
};

/// A rate's document in `limits`.
#[derive(Debug, Serialize, Deserialize)]
struct RateDoc {
    #[serde(rename = "_id")]
    id: String,
    budget: Budget,
    /// GCRA's theoretical arrival time.
    tat: mongodb::bson::DateTime,
    /// Whether the latest request was admitted.
    ok: bool,
    /// How far the latest request overshot the burst (its wait when refused).
    wait_ms: i64,
    /// `tat`: once past, the key is as good as new.
    expires_at: mongodb::bson::DateTime,
}

/// A window's document in `limits`.
#[derive(Debug, Serialize, Deserialize)]
struct WindowDoc {
    #[serde(rename = "_id")]
    id: String,
    budget: Budget,
    slots: Vec<SlotDoc>,
    /// Whether the latest slot was taken.
    ok: bool,
    /// When the newest held slot leaves the window.
    expires_at: Option<mongodb::bson::DateTime>,
}

/// One held slot of a [`WindowDoc`].
#[derive(Debug, Serialize, Deserialize)]
struct SlotDoc {
    at: mongodb::bson::DateTime,
    id: i64,
}

fn key_id(budget: Budget, key: LimitKey) -> String {
    format!("{}:{}", budget.as_str(), key.hex())
}

/// The GCRA step as an update pipeline (see the module's doc).
fn rate_update(budget: Budget, rate: Rate, now: DateTime<Utc>) -> Vec<Document> {
    let now = bdt(now);
    let interval = rate.interval_ms();
    let tolerance = rate.tolerance_ms();
    vec![
        doc! { "$set": {
            "budget": budget.as_str(),
            "next": { "$add": [{ "$max": [{ "$ifNull": ["$tat", now] }, now] }, interval] },
        } },
        doc! { "$set": {
            "ok": { "$lte": [{ "$subtract": ["$next", now] }, tolerance] },
        } },
        doc! { "$set": {
            "tat": { "$cond": ["$ok", "$next", "$tat"] },
            "wait_ms": { "$subtract": [{ "$subtract": ["$next", now] }, tolerance] },
        } },
        doc! { "$set": { "expires_at": "$tat" } },
        doc! { "$unset": "next" },
    ]
}

/// The window step as an update pipeline (see the module's doc).
fn window_update(
    budget: Budget,
    window: Window,
    slot_id: i64,
    now: DateTime<Utc>,
) -> Vec<Document> {
    let since = bdt(now - window.window);
    let window_ms = window.window.num_milliseconds();
    vec![
        doc! { "$set": {
            "budget": budget.as_str(),
            "slots": { "$filter": {
                "input": { "$ifNull": ["$slots", []] },
                "cond": { "$gt": ["$$this.at", since] },
            } },
        } },
        doc! { "$set": { "ok": { "$lt": [{ "$size": "$slots" }, i64::from(window.limit)] } } },
        doc! { "$set": {
            "slots": { "$cond": [
                "$ok",
                { "$concatArrays": ["$slots", [{ "at": bdt(now), "id": slot_id }]] },
                "$slots",
            ] },
        } },
        // `$map`, not the path `$slots.at`: SecantusDB does not resolve array paths in
        // expressions (docs/mongodb.md).
        doc! { "$set": { "expires_at": { "$add": [
            { "$max": { "$map": { "input": "$slots", "in": "$$this.at" } } },
            window_ms,
        ] } } },
    ]
}

#[async_trait]
impl LimitStore for MongoStore {
    async fn take_rate(
        &self,
        budget: Budget,
        key: LimitKey,
        rate: Rate,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<(), Refused>> {
        let after = self
            .upsert_with_pipeline::<RateDoc>(
                LIMITS,
                &key_id(budget, key),
                rate_update(budget, rate, now),
            )
            .await?;
        Ok(match after {
            Updated { doc, own: true } if doc.ok => Ok(()),
            Updated { doc, own: true } => Err(Refused::after_ms(doc.wait_ms)),
            // SecantusDB sometimes answers a racing upsert with no document, so whether
            // this request was admitted is read off the document as it is now: `tat`
            // only grows, so if a whole interval is still free below the tolerance, the
            // update (if it ran) was admitted; otherwise it counts as refused (the strict
            // side).
            Updated { doc, own: false } => {
                let tat =
                    utc(doc.tat).map_err(|e| StoreError::corrupt(LIMITS, doc.id.clone(), e))?;
                let room = (now + chrono::TimeDelta::milliseconds(rate.tolerance_ms()) - tat)
                    .num_milliseconds();
                if room >= rate.interval_ms() {
                    Ok(())
                } else {
                    Err(Refused::after_ms(rate.interval_ms() - room))
                }
            }
        })
    }

    async fn take_slot(
        &self,
        budget: Budget,
        key: LimitKey,
        window: Window,
        now: DateTime<Utc>,
    ) -> StoreResult<Result<Slot, Refused>> {
        // Random, so that slots of one key taken in one millisecond by several instances
        // stay apart; the sign bit is dropped (BSON has no unsigned integers).
        let id = rand::random::<u64>() >> 1;
        let after = self
            .upsert_with_pipeline::<WindowDoc>(
                LIMITS,
                &key_id(budget, key),
                window_update(budget, window, id as i64, now),
            )
            .await?
            .doc;
        // Held slots carry their ids, so whether this one was taken is in the document
        // whoever answered.
        if after.slots.iter().any(|slot| slot.id == id as i64) {
            return Ok(Ok(Slot {
                budget,
                key,
                taken_at: now,
                id,
            }));
        }
        let oldest = after
            .slots
            .iter()
            .map(|s| s.at)
            .min()
            .map(utc)
            .transpose()
            .map_err(|e| StoreError::corrupt(LIMITS, key_id(budget, key), e))?;
        Ok(Err(window_wait(oldest, window.window, now)))
    }

    async fn give_back_slot(&self, slot: &Slot) -> StoreResult<()> {
        self.run(self.c(LIMITS).update_one(
            doc! { "_id": key_id(slot.budget, slot.key) },
            doc! { "$pull": { "slots": { "id": slot.id as i64 } } },
        ))
        .await
        .map(drop)
    }

    async fn limit_keys(&self, budget: Budget, now: DateTime<Utc>) -> StoreResult<u64> {
        self.run(self.c(LIMITS).count_documents(doc! {
            "budget": budget.as_str(),
            "expires_at": { "$gt": bdt(now) },
        }))
        .await
    }

    async fn forget_spent_limits(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        self.run(
            self.c(LIMITS)
                .delete_many(doc! { "expires_at": { "$lte": bdt(now) } }),
        )
        .await
        .map(|r| r.deleted_count)
    }
}
