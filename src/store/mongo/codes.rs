//! One-time codes in `one_time_codes`: one [`CodeDoc`] per challenge, keyed
//! `user_id:purpose`, holding the shared guess count and the codes. Every operation is one
//! atomic update of that document; adding a registration attempt's code is an update
//! pipeline that states the [`Admission`](crate::store::Admission) rule.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::action::Action;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ReturnDocument;
use mongodb::ClientSession;
use serde::{Deserialize, Serialize};

use super::mail::MailDoc;
use super::{bdt, read, utc, MongoStore, CODES, OUTBOX};
use crate::domain::OtpPurpose;
use crate::store::{
    CodeChallenge, CodeStore, MailStore, OneTimeCode, OutboxMail, SendLimits, SignupChoice,
    StoreResult,
};

/// A document of `one_time_codes`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CodeDoc {
    /// `user_id:purpose`: one challenge per user and purpose.
    #[serde(rename = "_id")]
    id: String,
    user_id: String,
    purpose: OtpPurpose,
    attempts: i64,
    /// Oldest first.
    #[serde(default)]
    codes: Vec<CodeEntryDoc>,
    /// The latest code's expiry, TTL-indexed: the challenge lives while any code does.
    expires_at: mongodb::bson::DateTime,
    /// A code stored before challenges held several (one code per document): read as
    /// the challenge's only code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<mongodb::bson::DateTime>,
}

/// One code of a challenge.
#[derive(Debug, Serialize, Deserialize)]
struct CodeEntryDoc {
    code_hash: String,
    /// Present exactly for a registration attempt's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    display_name: Option<String>,
    /// Present exactly for an email change's code: the address it switches to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    new_email: Option<String>,
    created_at: mongodb::bson::DateTime,
    expires_at: mongodb::bson::DateTime,
}

pub(super) fn code_id(user_id: &str, purpose: OtpPurpose) -> String {
    format!("{user_id}:{}", purpose.as_str())
}

impl CodeEntryDoc {
    fn of(code: &OneTimeCode) -> Self {
        Self {
            code_hash: code.code_hash.clone(),
            password_hash: code.signup.as_ref().map(|s| s.password_hash.clone()),
            display_name: code.signup.as_ref().and_then(|s| s.display_name.clone()),
            new_email: code.new_email.clone(),
            created_at: bdt(code.created_at),
            expires_at: bdt(code.expires_at),
        }
    }

    fn into_code(self, user_id: &str, purpose: OtpPurpose) -> Result<OneTimeCode, String> {
        Ok(OneTimeCode {
            user_id: user_id.to_owned(),
            purpose,
            code_hash: self.code_hash,
            signup: self.password_hash.map(|password_hash| SignupChoice {
                password_hash,
                display_name: self.display_name,
            }),
            new_email: self.new_email,
            created_at: utc(self.created_at).map_err(|e| format!("codes.created_at: {e}"))?,
            expires_at: utc(self.expires_at).map_err(|e| format!("codes.expires_at: {e}"))?,
        })
    }
}

impl CodeDoc {
    /// The one [`CodeChallenge`] → document mapping.
    fn of(challenge: &CodeChallenge) -> Self {
        let expires_at = challenge
            .codes
            .iter()
            .map(|c| c.expires_at)
            .max()
            .unwrap_or_default();
        Self {
            id: code_id(&challenge.user_id, challenge.purpose),
            user_id: challenge.user_id.clone(),
            purpose: challenge.purpose,
            attempts: i64::from(challenge.attempts),
            codes: challenge.codes.iter().map(CodeEntryDoc::of).collect(),
            expires_at: bdt(expires_at),
            code_hash: None,
            created_at: None,
        }
    }

    /// The one document → [`CodeChallenge`] mapping (every code, expired ones included).
    pub(super) fn into_challenge(self) -> Result<CodeChallenge, String> {
        let mut codes = Vec::with_capacity(self.codes.len().max(1));
        for entry in self.codes {
            codes.push(entry.into_code(&self.user_id, self.purpose)?);
        }
        if let (true, Some(code_hash), Some(created_at)) =
            (codes.is_empty(), self.code_hash, self.created_at)
        {
            codes.push(OneTimeCode {
                user_id: self.user_id.clone(),
                purpose: self.purpose,
                code_hash,
                signup: None,
                new_email: None,
                created_at: utc(created_at).map_err(|e| format!("created_at: {e}"))?,
                expires_at: utc(self.expires_at).map_err(|e| format!("expires_at: {e}"))?,
            });
        }
        Ok(CodeChallenge {
            user_id: self.user_id,
            purpose: self.purpose,
            attempts: u32::try_from(self.attempts)
                .map_err(|_| format!("attempts: {} out of range", self.attempts))?,
            codes,
        })
    }
}

/// A filter matching the challenge of `(user, purpose)` if it holds `code_hash` (in
/// either shape).
fn holding(user_id: &str, purpose: OtpPurpose, code_hash: &str) -> Document {
    doc! {
        "_id": code_id(user_id, purpose),
        "$or": [{ "codes.code_hash": code_hash }, { "code_hash": code_hash }],
    }
}

impl MongoStore {
    /// Adds a registration attempt's code by the admission rule, in one atomic update
    /// (a pipeline, upserting); `false` when the challenge is full. With `apply` false
    /// the same command runs as a no-op (a verified account's registration attempt costs
    /// what an unverified one's does, SECURITY.md 29).
    pub(super) async fn add_signup_code(
        &self,
        code: &OneTimeCode,
        max_pending: u32,
        max_attempts: u32,
        apply: bool,
        session: Option<&mut ClientSession>,
    ) -> mongodb::error::Result<bool> {
        let id = code_id(&code.user_id, code.purpose);
        if !apply {
            self.raw(CODES)
                .find_one_and_update(
                    doc! { "_id": &id },
                    vec![doc! { "$set": { "attempts": "$attempts" } }],
                )
                .optional(session, |update, s| update.session(s))
                .await?;
            return Ok(false);
        }
        let now = bdt(code.created_at);
        let entry = mongodb::bson::to_bson(&CodeEntryDoc::of(code))?;
        // Inside a pipeline a string starting with `$` is a field path: a bcrypt hash
        // ("$2b$...") or a display name must go in as a literal.
        let literal = doc! { "$literal": entry };
        let pipeline = vec![
            doc! { "$set": { "_live": { "$filter": {
                "input": { "$ifNull": ["$codes", []] },
                "cond": { "$gt": ["$$this.expires_at", now] },
            } } } },
            doc! { "$set": { "_alive": { "$and": [
                { "$lt": [{ "$ifNull": ["$attempts", 0] }, i64::from(max_attempts)] },
                { "$gt": [{ "$size": "$_live" }, 0] },
            ] } } },
            doc! { "$set": { "_room": { "$or": [
                { "$not": ["$_alive"] },
                { "$and": [
                    { "$lt": [{ "$size": "$_live" }, i64::from(max_pending)] },
                    { "$eq": [{ "$size": { "$filter": {
                        "input": "$_live",
                        "cond": { "$eq": ["$$this.code_hash", { "$literal": &code.code_hash }] },
                    } } }, 0] },
                ] },
            ] } } },
            doc! { "$set": {
                "user_id": &code.user_id,
                "purpose": code.purpose.as_str(),
                "attempts": { "$cond": ["$_alive", "$attempts", 0_i64] },
                "codes": { "$cond": [
                    "$_alive",
                    { "$cond": ["$_room", { "$concatArrays": ["$_live", [&literal]] }, "$_live"] },
                    [&literal],
                ] },
            } },
            // (`$$this.field` rather than `$codes.field`: SecantusDB, the CI's server, does
            // not read a field path through an array inside an expression.)
            doc! { "$set": { "expires_at": { "$reduce": {
                "input": "$codes",
                "initialValue": now,
                "in": { "$max": ["$$value", "$$this.expires_at"] },
            } } } },
            doc! { "$unset": ["_live", "_alive", "_room", "code_hash", "created_at"] },
        ];
        let after = self
            .raw(CODES)
            .find_one_and_update(doc! { "_id": &id }, pipeline)
            .upsert(true)
            .return_document(ReturnDocument::After)
            .optional(session, |update, s| update.session(s))
            .await?;
        let Some(after) = after else {
            return Err(mongodb::error::Error::custom(
                "an upsert of a code challenge returned no document".to_owned(),
            ));
        };
        let challenge = read(CODES, &after, CodeDoc::into_challenge)
            .map_err(|e| mongodb::error::Error::custom(e.to_string()))?;
        // Added exactly when this attempt's code (its hash and its password hash, which
        // bcrypt's salt makes unique) is in the challenge now.
        Ok(challenge
            .codes
            .iter()
            .any(|c| c.code_hash == code.code_hash && c.signup == code.signup))
    }

    /// Takes the `verify_email` challenge holding `code_hash`, returning that code.
    pub(super) async fn take_verification_code(
        &self,
        user_id: &str,
        code_hash: &str,
    ) -> StoreResult<Option<OneTimeCode>> {
        self.take_code(user_id, OtpPurpose::VerifyEmail, code_hash)
            .await
    }

    /// Takes (deletes) the challenge of `(user, purpose)` holding `code_hash`, returning
    /// that code: one winner among parallel callers.
    pub(super) async fn take_code(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        code_hash: &str,
    ) -> StoreResult<Option<OneTimeCode>> {
        let taken = self
            .run(
                self.raw(CODES)
                    .find_one_and_delete(holding(user_id, purpose, code_hash)),
            )
            .await?;
        let Some(raw) = taken else {
            return Ok(None);
        };
        let challenge = read(CODES, &raw, CodeDoc::into_challenge)?;
        Ok(challenge
            .codes
            .into_iter()
            .find(|c| c.code_hash == code_hash))
    }
}

#[async_trait]
impl CodeStore for MongoStore {
    async fn put_challenge(&self, challenge: &CodeChallenge) -> StoreResult<()> {
        let document = CodeDoc::of(challenge);
        self.run(
            self.typed::<CodeDoc>(CODES)
                .replace_one(doc! { "_id": &document.id }, &document)
                .upsert(true),
        )
        .await
        .map(drop)
    }

    async fn issue_code(
        &self,
        email: &str,
        limits: SendLimits,
        code: &OneTimeCode,
        mail: &OutboxMail,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        // The budget first (its own atomic update). Then the code and its mail: one
        // transaction where the server has them (topology.rs); without, the code first,
        // so an interruption can spend a mail of the budget or lose a mail (the user asks
        // again), never mail a code that does not exist.
        if !self.reserve_mail_send(email, now, limits).await? {
            return Ok(false);
        }
        let (code, mail) = (CodeDoc::of(&CodeChallenge::of(code)), MailDoc::of(mail));
        self.several_writes("issue_code", (self, &code, &mail), |session, context| {
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
        })
        .await?;
        Ok(true)
    }

    async fn take_code_attempt(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CodeChallenge>> {
        // One conditional update: the count and the check cannot interleave. The
        // document's `expires_at` is its latest code's, so "live" means some code is.
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
        let Some(raw) = updated else {
            return Ok(None);
        };
        let mut challenge = read(CODES, &raw, CodeDoc::into_challenge)?;
        challenge.codes.retain(|c| c.expires_at > now);
        Ok(Some(challenge))
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
                    .delete_one(holding(user_id, purpose, code_hash)),
            )
            .await?;
        Ok(deleted.deleted_count == 1)
    }

    async fn codes_of(&self, user_id: &str) -> StoreResult<Vec<CodeChallenge>> {
        let cursor = self
            .run(
                self.raw(CODES)
                    .find(doc! { "user_id": user_id })
                    .sort(doc! { "_id": 1 }),
            )
            .await?;
        self.read_all(CODES, cursor, CodeDoc::into_challenge).await
    }
}

/// The challenges of the users `user_ids` that still have a live code.
pub(super) fn live_challenge_filter(user_ids: &[String], now: DateTime<Utc>) -> Document {
    doc! {
        "user_id": { "$in": user_ids.iter().map(|id| Bson::String(id.clone())).collect::<Vec<_>>() },
        "expires_at": { "$gt": bdt(now) },
    }
}
