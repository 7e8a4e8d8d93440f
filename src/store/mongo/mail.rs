//! The outbox in `mail_outbox` ([`MailDoc`]) and the mail budget in `mail_sends`
//! ([`SendsDoc`]: one document per address with its recent send times and a version
//! for compare-and-set).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use mongodb::options::ReturnDocument;
use serde::{Deserialize, Serialize};

use super::{bdt, decode, is_duplicate, map_err, read, utc, MongoStore};
use super::{MAIL_SENDS, MAX_RETRIES, OUTBOX};
use crate::store::mail::SEND_WINDOW;
use crate::store::{
    MailResult, MailStatus, MailStore, OutboxMail, OutboxStats, SendLimits, StoreError, StoreResult,
};

/// A document of `mail_outbox`.
#[derive(Debug, Serialize, Deserialize)]
struct MailDoc {
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
    fn of(mail: &OutboxMail) -> Self {
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
    /// Unix milliseconds of the sends within the window.
    times: Vec<i64>,
    /// Bumped by every reservation: the compare-and-set's precondition.
    v: i64,
    /// TTL-indexed: an hour after the last send.
    expires_at: mongodb::bson::DateTime,
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
        let sends = self.raw(MAIL_SENDS);
        let now_ms = now.timestamp_millis();
        let window_start = (now - SEND_WINDOW).timestamp_millis();
        let min_interval = limits.min_interval.as_millis() as i64;
        // Optimistic: read the times, decide, write back only if nobody wrote since.
        for _ in 0..MAX_RETRIES {
            let existing: Option<SendsDoc> = self
                .run(sends.find_one(doc! { "_id": email }))
                .await?
                .map(|raw| decode(MAIL_SENDS, &raw))
                .transpose()?;
            let version = existing.as_ref().map_or(0, |d| d.v);
            let mut times = existing.as_ref().map_or_else(Vec::new, |d| d.times.clone());
            times.retain(|t| *t > window_start);
            let too_soon = times
                .iter()
                .max()
                .is_some_and(|last| now_ms - last < min_interval);
            if times.len() as u32 >= limits.per_hour || too_soon {
                return Ok(false);
            }
            times.push(now_ms);
            let next = SendsDoc {
                email: email.to_owned(),
                times,
                v: version + 1,
                expires_at: bdt(now + SEND_WINDOW),
            };
            if existing.is_none() {
                match self.typed::<SendsDoc>(MAIL_SENDS).insert_one(&next).await {
                    Ok(_) => return Ok(true),
                    Err(e) if is_duplicate(&e) => continue,
                    Err(e) => return Err(map_err(e)),
                }
            }
            let replaced = self
                .run(
                    self.typed::<SendsDoc>(MAIL_SENDS)
                        .replace_one(doc! { "_id": email, "v": version }, &next),
                )
                .await?;
            if replaced.matched_count == 1 {
                return Ok(true);
            }
        }
        Err(StoreError::Unavailable(anyhow::anyhow!(
            "mail budget contention"
        )))
    }
}
