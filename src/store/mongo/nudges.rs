//! Nudge claims in `nudge_claims` ([`ClaimDoc`]: `_id` is `<list>:<period>:<user id>`,
//! so the unique `_id` is the claim; TTL-indexed on `expires_at`), recipients found by
//! `preferences.notifications.<list>` in the users collection.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::action::Action;
use mongodb::bson::{doc, Bson};
use serde::{Deserialize, Serialize};

use super::mail::MailDoc;
use super::users::id_text;
use super::{bdt, user_filter, user_key, MongoStore, NUDGE_CLAIMS, OUTBOX, USERS};
use crate::store::{
    NudgeClaim, NudgeList, NudgeRecipient, NudgeStore, OutboxMail, StoreError, StoreResult,
};

/// A document of `nudge_claims`.
#[derive(Debug, Serialize, Deserialize)]
struct ClaimDoc {
    #[serde(rename = "_id")]
    id: String,
    user_id: String,
    list: String,
    period: String,
    claimed_at: mongodb::bson::DateTime,
    expires_at: mongodb::bson::DateTime,
}

/// The projection of a user document a recipient needs.
#[derive(Debug, Deserialize)]
struct RecipientDoc {
    #[serde(rename = "_id")]
    id: Bson,
    email: String,
}

impl RecipientDoc {
    fn into_recipient(self) -> Result<NudgeRecipient, String> {
        Ok(NudgeRecipient {
            user_id: id_text(&self.id)?,
            email: self.email,
        })
    }
}

#[async_trait]
impl NudgeStore for MongoStore {
    async fn claim_nudge(&self, claim: &NudgeClaim, mail: &OutboxMail) -> StoreResult<bool> {
        let document = ClaimDoc {
            id: format!("{}:{}:{}", claim.list.as_str(), claim.period, claim.user_id),
            user_id: claim.user_id.clone(),
            list: claim.list.as_str().to_owned(),
            period: claim.period.clone(),
            claimed_at: bdt(claim.claimed_at),
            expires_at: bdt(claim.expires_at),
        };
        // The insert is the claim: the unique `_id` lets exactly one of parallel claims
        // in. Claim and mail are one transaction where the server has them
        // (topology.rs); without, the claim first, so an interruption between the two
        // loses this nudge (at most once, never twice).
        let queued = MailDoc::of(mail);
        let claimed = self
            .several_writes(
                "claim_nudge",
                (self, &document, &queued),
                |session, context| {
                    let (store, claim, mail) = *context;
                    Box::pin(async move {
                        let mut session = session;
                        store
                            .typed::<ClaimDoc>(NUDGE_CLAIMS)
                            .insert_one(claim)
                            .optional(session.as_deref_mut(), |write, s| write.session(s))
                            .await?;
                        store
                            .typed::<MailDoc>(OUTBOX)
                            .insert_one(mail)
                            .optional(session, |write, s| write.session(s))
                            .await?;
                        Ok(())
                    })
                },
            )
            .await;
        match claimed {
            Ok(()) => Ok(true),
            // The claim was taken already (the mail ids are random), unless the mail's
            // id is what was taken: that is an error, not a lost race.
            Err(StoreError::Conflict(reason)) => {
                let mail_taken = self
                    .run(self.c(OUTBOX).count_documents(doc! { "_id": &mail.id }))
                    .await?
                    > 0;
                if mail_taken {
                    Err(StoreError::Conflict(reason))
                } else {
                    Ok(false)
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn nudge_recipients(
        &self,
        list: NudgeList,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<NudgeRecipient>> {
        let mut filter = doc! {
            format!("preferences.notifications.{}", list.as_str()): true,
            "is_verified": true,
        };
        if let Some(after) = after {
            filter.insert("_id", doc! { "$gt": user_key(after) });
        }
        let cursor = self
            .run(
                self.raw(USERS)
                    .find(filter)
                    .projection(doc! { "email": 1 })
                    .sort(doc! { "_id": 1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        self.read_all(USERS, cursor, RecipientDoc::into_recipient)
            .await
    }

    async fn unsubscribe(
        &self,
        user_id: &str,
        list: NudgeList,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let users = self.c(USERS);
        // A dotted `$set` creates `notifications` when it is missing and keeps the other
        // preferences; it cannot go through a `notifications` that is not an object, so
        // such a value (legacy data) is replaced as a whole.
        let mut filter = user_filter(user_id);
        filter.insert(
            "$or",
            vec![
                Bson::Document(doc! { "preferences.notifications": { "$type": "object" } }),
                Bson::Document(doc! { "preferences.notifications": { "$exists": false } }),
            ],
        );
        let nested = self
            .run(users.update_one(
                filter,
                doc! { "$set": {
                    format!("preferences.notifications.{}", list.as_str()): false,
                    "updated_at": bdt(now),
                } },
            ))
            .await?;
        if nested.matched_count == 1 {
            return Ok(true);
        }
        let replaced = self
            .run(users.update_one(
                user_filter(user_id),
                doc! { "$set": {
                    "preferences.notifications": { list.as_str(): false },
                    "updated_at": bdt(now),
                } },
            ))
            .await?;
        Ok(replaced.matched_count == 1)
    }

    async fn purge_nudge_claims(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        // The TTL index removes them too, within a minute or so of expiring.
        let deleted = self
            .run(
                self.c(NUDGE_CLAIMS)
                    .delete_many(doc! { "expires_at": { "$lte": bdt(now) } }),
            )
            .await?;
        Ok(deleted.deleted_count)
    }
}
