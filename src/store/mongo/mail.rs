//! The outbox in `mail_outbox` ([`MailDoc`]) and the mail budget in `mail_sends`
//! ([`SendsDoc`]: one document per address with its recent send times, changed by one
//! pipeline `findOneAndUpdate` per reservation, so the budget holds across instances in
//! one round trip).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use mongodb::options::ReturnDocument;
use serde::{Deserialize, Serialize};

use super::{bdt, read, utc, MongoStore};
use super::{MAIL_SENDS, OUTBOX};
use crate::store::mail::SEND_WINDOW;
use crate::store::{
    MailResult, MailStatus, MailStore, OutboxMail, OutboxStats, SendLimits, StoreError, StoreResult,
};

/// A document of `mail_outbox`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct MailDoc {
    #[serde(rename = "_id")]
    id: String,
    recipient: String,
    payload: String,
    status: MailStatus,
    attempts: i64,
    created_at: mongodb::bson::DateTime,
    /// Also the lease of a claimed mail.
    next_attempt_at: mongodb::bson::DateTime,
    expires_at: Option<mongodb::bson::DateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_at: Option<mongodb::bson::DateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

impl MailDoc {
    /// The one [`OutboxMail`] → document mapping (a queued mail is pending).
    pub(super) fn of(mail: &OutboxMail) -> Self {
        Self {
            id: mail.id.clone(),
            recipient: mail.recipient.clone(),
            payload: mail.payload.clone(),
            status: MailStatus::Pending,
            attempts: i64::from(mail.attempts),
            created_at: bdt(mail.created_at),
            next_attempt_at: bdt(mail.next_attempt_at),
            expires_at: mail.expires_at.map(bdt),
            finished_at: None,
            last_error: None,
        }
    }

    /// The one document → [`OutboxMail`] mapping.
    fn into_mail(self) -> Result<OutboxMail, String> {
        Ok(OutboxMail {
            id: self.id,
            recipient: self.recipient,
            payload: self.payload,
            attempts: u32::try_from(self.attempts)
                .map_err(|_| format!("attempts: {} out of range", self.attempts))?,
            created_at: utc(self.created_at).map_err(|e| format!("created_at: {e}"))?,
            next_attempt_at: utc(self.next_attempt_at)
                .map_err(|e| format!("next_attempt_at: {e}"))?,
            expires_at: self
                .expires_at
                .map(utc)
                .transpose()
                .map_err(|e| format!("expires_at: {e}"))?,
        })
    }
}

/// A document of `mail_sends`.
#[derive(Debug, Serialize, Deserialize)]
struct SendsDoc {
    /// The address.
    #[serde(rename = "_id")]
    email: String,
    /// The sends within the window.
    sends: Vec<SendDoc>,
    /// Whether the latest reservation was admitted.
    #[serde(default)]
    ok: bool,
    /// TTL-indexed: an hour after the last send.
    expires_at: mongodb::bson::DateTime,
}

/// One send of a [`SendsDoc`]: when (Unix milliseconds), and the reservation's random id
/// (so a reservation can tell it was admitted whoever answers; see
/// `MongoStore::upsert_with_pipeline`).
#[derive(Debug, Serialize, Deserialize)]
struct SendDoc {
    at: i64,
    id: i64,
}

#[async_trait]
impl MailStore for MongoStore {
    async fn enqueue_mail(&self, mail: &OutboxMail) -> StoreResult<()> {
        self.run(self.typed::<MailDoc>(OUTBOX).insert_one(MailDoc::of(mail)))
            .await
            .map(drop)
    }

    async fn claim_mail(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<OutboxMail>> {
        // One conditional update per mail: moving `next_attempt_at` past `now` is the
        // claim, so a parallel claimer cannot match the same mail.
        let mut claimed = Vec::new();
        for _ in 0..limit {
            let next = self
                .run(
                    self.raw(OUTBOX)
                        .find_one_and_update(
                            doc! {
                                "status": MailStatus::Pending.as_str(),
                                "next_attempt_at": { "$lte": bdt(now) },
                            },
                            doc! {
                                "$set": { "next_attempt_at": bdt(lease_until) },
                                "$inc": { "attempts": 1_i64 },
                            },
                        )
                        .sort(doc! { "next_attempt_at": 1 })
                        .return_document(ReturnDocument::After),
                )
                .await?;
            let Some(raw) = next else {
                break;
            };
            match read(OUTBOX, &raw, MailDoc::into_mail) {
                Ok(mail) => claimed.push(mail),
                Err(StoreError::Corrupt { record, id, reason }) => {
                    tracing::error!(record, %id, %reason, "outbox: unreadable mail set aside as dead");
                    self.run(self.c(OUTBOX).update_one(
                        doc! { "_id": &id },
                        doc! { "$set": {
                            "status": MailStatus::Dead.as_str(),
                            "last_error": format!("unreadable record: {reason}"),
                            "finished_at": bdt(now),
                        } },
                    ))
                    .await?;
                }
                Err(other) => return Err(other),
            }
        }
        Ok(claimed)
    }

    async fn finish_mail(
        &self,
        id: &str,
        result: &MailResult,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let update = match result {
            MailResult::Retry { at, error } => {
                doc! { "$set": { "next_attempt_at": bdt(*at), "last_error": error } }
            }
            finished => {
                let mut set = doc! {
                    "status": finished.status().as_str(),
                    "finished_at": bdt(now),
                    "payload": "{}",
                };
                if let Some(error) = finished.error() {
                    set.insert("last_error", error);
                }
                doc! { "$set": set }
            }
        };
        self.run(self.c(OUTBOX).update_one(doc! { "_id": id }, update))
            .await
            .map(drop)
    }

    async fn outbox_stats(&self) -> StoreResult<OutboxStats> {
        let outbox = self.c(OUTBOX);
        let count = |status: MailStatus| {
            self.run(outbox.count_documents(doc! { "status": status.as_str() }))
        };
        Ok(OutboxStats {
            pending: count(MailStatus::Pending).await?,
            dead: count(MailStatus::Dead).await?,
        })
    }

    async fn reserve_mail_send(
        &self,
        email: &str,
        now: DateTime<Utc>,
        limits: SendLimits,
    ) -> StoreResult<bool> {
        // One round trip, atomic: drop the sends that left the window, decide, append.
        let now_ms = now.timestamp_millis();
        let window_start = (now - SEND_WINDOW).timestamp_millis();
        let min_interval = limits.min_interval.as_millis() as i64;
        let until = bdt(now + SEND_WINDOW);
        let id = rand::random::<i64>() & i64::MAX;
        let update = vec![
            // Documents of earlier versions kept bare times (`times`); they become sends.
            doc! { "$set": { "sends": { "$ifNull": ["$sends", { "$map": {
                "input": { "$ifNull": ["$times", []] },
                "in": { "at": "$$this", "id": 0_i64 },
            } }] } } },
            doc! { "$unset": "times" },
            doc! { "$set": { "sends": { "$filter": {
                "input": "$sends",
                "cond": { "$gt": ["$$this.at", window_start] },
            } } } },
            doc! { "$set": { "ok": { "$and": [
                { "$lt": [{ "$size": "$sends" }, i64::from(limits.per_hour)] },
                { "$or": [
                    { "$eq": [{ "$size": "$sends" }, 0] },
                    { "$gte": [
                        { "$subtract": [now_ms, { "$max": { "$map": { "input": "$sends", "in": "$$this.at" } } }] },
                        min_interval,
                    ] },
                ] },
            ] } } },
            doc! { "$set": {
                "sends": { "$cond": [
                    "$ok",
                    { "$concatArrays": ["$sends", [{ "at": now_ms, "id": id }]] },
                    "$sends",
                ] },
                "expires_at": { "$cond": ["$ok", until, { "$ifNull": ["$expires_at", until] }] },
            } },
        ];
        let after = self
            .upsert_with_pipeline::<SendsDoc>(MAIL_SENDS, email, update)
            .await?;
        Ok(after.doc.sends.iter().any(|send| send.id == id))
    }
}
