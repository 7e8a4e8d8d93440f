//! One-time codes in `one_time_codes`, as [`CodeDoc`]s keyed `user_id:purpose`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::action::Action;
use mongodb::bson::doc;
use mongodb::options::ReturnDocument;
use serde::{Deserialize, Serialize};

use super::mail::MailDoc;
use super::{bdt, read, utc, MongoStore, CODES, OUTBOX};
use crate::domain::OtpPurpose;
use crate::store::{CodeStore, OneTimeCode, OutboxMail, StoreResult};

/// A document of `one_time_codes`.
#[derive(Debug, Serialize, Deserialize)]
struct CodeDoc {
    /// `user_id:purpose`: one live code per user and purpose.
    #[serde(rename = "_id")]
    id: String,
    user_id: String,
    purpose: OtpPurpose,
    code_hash: String,
    attempts: i64,
    created_at: mongodb::bson::DateTime,
    /// TTL-indexed.
    expires_at: mongodb::bson::DateTime,
}

fn code_id(user_id: &str, purpose: OtpPurpose) -> String {
    format!("{user_id}:{}", purpose.as_str())
}

impl CodeDoc {
    /// The one [`OneTimeCode`] → document mapping (a stored code starts unguessed).
    fn of(code: &OneTimeCode) -> Self {
        Self {
            id: code_id(&code.user_id, code.purpose),
            user_id: code.user_id.clone(),
            purpose: code.purpose,
            code_hash: code.code_hash.clone(),
            attempts: 0,
            created_at: bdt(code.created_at),
            expires_at: bdt(code.expires_at),
        }
    }

    /// The one document → [`OneTimeCode`] mapping.
    fn into_code(self) -> Result<OneTimeCode, String> {
        Ok(OneTimeCode {
            user_id: self.user_id,
            purpose: self.purpose,
            code_hash: self.code_hash,
            attempts: u32::try_from(self.attempts)
                .map_err(|_| format!("attempts: {} out of range", self.attempts))?,
            created_at: utc(self.created_at).map_err(|e| format!("created_at: {e}"))?,
            expires_at: utc(self.expires_at).map_err(|e| format!("expires_at: {e}"))?,
        })
    }
}

#[async_trait]
impl CodeStore for MongoStore {
    async fn put_code(&self, code: &OneTimeCode) -> StoreResult<()> {
        let document = CodeDoc::of(code);
        self.run(
            self.typed::<CodeDoc>(CODES)
                .replace_one(doc! { "_id": &document.id }, &document)
                .upsert(true),
        )
        .await
        .map(drop)
    }

    async fn put_code_and_mail(&self, code: &OneTimeCode, mail: &OutboxMail) -> StoreResult<()> {
        // One transaction where the server has them (topology.rs). Without, the code
        // first: an interruption between the two writes loses a mail (the user asks
        // again), never mails a code that does not exist.
        let (code, mail) = (CodeDoc::of(code), MailDoc::of(mail));
        self.several_writes(
            "put_code_and_mail",
            (self, &code, &mail),
            |session, context| {
                let (store, code, mail) = *context;
                Box::pin(async move {
                    let mut session = session;
                    store
                        .typed::<CodeDoc>(CODES)
                        .replace_one(doc! { "_id": &code.id }, code)
                        .upsert(true)
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
        .await
    }

    async fn take_code_attempt(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<OneTimeCode>> {
        // One conditional update: the count and the check cannot interleave.
        let updated = self
            .run(
                self.raw(CODES)
                    .find_one_and_update(
                        doc! {
                            "_id": code_id(user_id, purpose),
                            "attempts": { "$lt": i64::from(max_attempts) },
                            "expires_at": { "$gt": bdt(now) },
                        },
                        doc! { "$inc": { "attempts": 1_i64 } },
                    )
                    .return_document(ReturnDocument::After),
            )
            .await?;
        updated
            .map(|raw| read(CODES, &raw, CodeDoc::into_code))
            .transpose()
    }

    async fn consume_code(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        code_hash: &str,
    ) -> StoreResult<bool> {
        let deleted = self
            .run(
                self.c(CODES)
                    .delete_one(doc! { "_id": code_id(user_id, purpose), "code_hash": code_hash }),
            )
            .await?;
        Ok(deleted.deleted_count == 1)
    }

    async fn codes_of(&self, user_id: &str) -> StoreResult<Vec<OneTimeCode>> {
        let cursor = self
            .run(self.raw(CODES).find(doc! { "user_id": user_id }))
            .await?;
        self.read_all(CODES, cursor, CodeDoc::into_code).await
    }
}
