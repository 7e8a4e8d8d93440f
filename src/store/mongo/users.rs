//! Users and profiles in `IntrogyUsers`, as [`UserDoc`]s: the old Python service's
//! documents plus our fields.
//!
//! Legacy documents lack most of our fields; each such field has one documented default
//! (docs/mongodb.md): `display_name`, `avatar_url`, `bio`, `timezone`, `introvert_level`,
//! `onboarding_completed_at`, `battery_updated_at` → none; `is_verified`,
//! `onboarding_completed` → false; `preferences` → `{}`; `updated_at` → `created_at`;
//! `battery_level` → the legacy `social_battery_level` → 70; `battery_seq` → 0. A field
//! that is present with the wrong type or out of range is an error, never a default.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::action::Action;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ReturnDocument;
use serde::{Deserialize, Serialize};

use super::mail::MailDoc;
use super::{
    bdt, read, user_filter, user_key, utc, MongoStore, BUCKETS, CODES, EVENTS, IDEMPOTENCY,
};
use super::{OUTBOX, REFRESH_TOKENS, SESSIONS, USERS};
use crate::battery::{BatteryLevel, INITIAL_LEVEL};
use crate::store::battery::stored_level;
use crate::store::{
    MailStore, NewUser, ProfilePatch, ProfileValue, SignupAttempt, SignupOutcome, StoreError,
    StoreResult, User, UserStore,
};

/// A document of `IntrogyUsers`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct UserDoc {
    /// ObjectId (ours and the old service's) or a string.
    #[serde(rename = "_id")]
    pub id: Bson,
    pub email: String,
    pub hashed_password: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub bio: Option<String>,
    pub timezone: Option<String>,
    pub introvert_level: Option<i32>,
    pub is_verified: Option<bool>,
    pub onboarding_completed: Option<bool>,
    pub onboarding_completed_at: Option<mongodb::bson::DateTime>,
    pub preferences: Option<Document>,
    pub battery_level: Option<i32>,
    /// The old service's name for the level; read when `battery_level` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub social_battery_level: Option<Bson>,
    /// The battery's step; written by the battery code, not by profile writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_seq: Option<i64>,
    /// Advanced by every correction of the history (battery.rs); written by the battery
    /// code only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_version: Option<i64>,
    pub battery_updated_at: Option<mongodb::bson::DateTime>,
    pub created_at: mongodb::bson::DateTime,
    pub updated_at: Option<mongodb::bson::DateTime>,
}

/// The level of a user document: `battery_level`, else the legacy
/// `social_battery_level`, else the initial level.
pub(super) fn level_of(
    battery_level: Option<i32>,
    social_battery_level: Option<&Bson>,
) -> Result<BatteryLevel, String> {
    match (battery_level, social_battery_level) {
        (Some(level), _) => stored_level(level.into()).map_err(|e| format!("battery_level: {e}")),
        (None, None | Some(Bson::Null)) => Ok(INITIAL_LEVEL),
        (None, Some(legacy)) => {
            let raw = match legacy {
                Bson::Int32(n) => i64::from(*n),
                Bson::Int64(n) => *n,
                // Python wrote numbers as it had them; a whole float is a level too.
                Bson::Double(f) if f.fract() == 0.0 => *f as i64,
                other => return Err(format!("social_battery_level: {other} is not a level")),
            };
            stored_level(raw).map_err(|e| format!("social_battery_level: {e}"))
        }
    }
}

pub(super) fn id_text(id: &Bson) -> Result<String, String> {
    match id {
        Bson::ObjectId(oid) => Ok(oid.to_hex()),
        Bson::String(s) => Ok(s.clone()),
        other => Err(format!("_id {other} is neither an ObjectId nor a string")),
    }
}

impl UserDoc {
    /// The one [`User`] → document mapping. The battery's step and totals are not
    /// part of it (see `battery.rs`).
    pub(super) fn of(user: &User) -> StoreResult<Self> {
        let preferences = mongodb::bson::to_document(&user.preferences)
            .map_err(|e| StoreError::Other(e.into()))?;
        Ok(Self {
            id: user_key(&user.id),
            email: user.email.clone(),
            hashed_password: user.hashed_password.clone(),
            display_name: user.display_name.clone(),
            avatar_url: user.avatar_url.clone(),
            bio: user.bio.clone(),
            timezone: user.timezone.clone(),
            introvert_level: user.introvert_level,
            is_verified: Some(user.is_verified),
            onboarding_completed: Some(user.onboarding_completed),
            onboarding_completed_at: user.onboarding_completed_at.map(bdt),
            preferences: Some(preferences),
            battery_level: Some(user.battery_level),
            social_battery_level: None,
            battery_seq: None,
            battery_version: None,
            battery_updated_at: user.battery_updated_at.map(bdt),
            created_at: bdt(user.created_at),
            updated_at: Some(bdt(user.updated_at)),
        })
    }

    /// The one document → [`User`] mapping, legacy defaults included.
    pub(super) fn into_user(self) -> Result<User, String> {
        let created_at = utc(self.created_at).map_err(|e| format!("created_at: {e}"))?;
        let time = |field: &str, at: Option<mongodb::bson::DateTime>| {
            at.map(utc).transpose().map_err(|e| format!("{field}: {e}"))
        };
        let preferences = match self.preferences {
            None => serde_json::Map::new(),
            Some(d) => match Bson::Document(d).into_relaxed_extjson() {
                serde_json::Value::Object(map) => map,
                _ => return Err("preferences: not an object".into()),
            },
        };
        Ok(User {
            id: id_text(&self.id)?,
            email: self.email,
            hashed_password: self.hashed_password,
            display_name: self.display_name,
            avatar_url: self.avatar_url,
            bio: self.bio,
            timezone: self.timezone,
            introvert_level: self.introvert_level,
            is_verified: self.is_verified.unwrap_or(false),
            onboarding_completed: self.onboarding_completed.unwrap_or(false),
            onboarding_completed_at: time("onboarding_completed_at", self.onboarding_completed_at)?,
            preferences,
            battery_level: level_of(self.battery_level, self.social_battery_level.as_ref())?
                .value(),
            battery_updated_at: time("battery_updated_at", self.battery_updated_at)?,
            updated_at: time("updated_at", self.updated_at)?.unwrap_or(created_at),
            created_at,
        })
    }
}

impl MongoStore {
    async fn user_where(&self, filter: Document) -> StoreResult<Option<User>> {
        let found = self.run(self.raw(USERS).find_one(filter)).await?;
        found
            .map(|raw| read(USERS, &raw, UserDoc::into_user))
            .transpose()
    }
}

#[async_trait]
impl UserStore for MongoStore {
    #[tracing::instrument(skip_all)]
    async fn insert_user(&self, user: &NewUser) -> StoreResult<User> {
        let created = User::new(user);
        let mut document = UserDoc::of(&created)?;
        document.battery_seq = Some(0);
        self.run(self.typed::<UserDoc>(USERS).insert_one(&document))
            .await?;
        Ok(created)
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>> {
        self.user_where(user_filter(id)).await
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        self.user_where(doc! { "email": email }).await
    }

    #[tracing::instrument(skip_all)]
    async fn sign_up(&self, attempt: &SignupAttempt) -> StoreResult<SignupOutcome> {
        // Budget, account, then code and mail (see below), in the order that never mails
        // a code that does not exist. The same four steps run whatever the address
        // has (a no-op where there is nothing to write), so the answer takes as long for
        // a new address as for a known one (SECURITY.md 29).
        let new = &attempt.user;
        if !self
            .reserve_mail_send(&new.email, new.now, attempt.limits)
            .await?
        {
            return Ok(SignupOutcome::MailRefused);
        }
        let mut fields = mongodb::bson::to_document(&UserDoc::of(&User::new(new))?)
            .map_err(|e| StoreError::Other(e.into()))?;
        // The filter's address is the one written on insert.
        fields.remove("email");
        fields.insert("battery_seq", 0_i64);
        let users = self.raw(USERS);
        let upsert = || {
            users
                .find_one_and_update(
                    doc! { "email": &new.email },
                    doc! { "$setOnInsert": fields.clone() },
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
        };
        // Two upserts of one new address: one inserts, the other meets the unique index
        // and then finds that account.
        let found = match self.run(upsert()).await {
            Err(StoreError::Conflict(_)) => self.run(upsert()).await?,
            other => other?,
        };
        let Some(raw) = found else {
            return Err(StoreError::Other(anyhow::anyhow!(
                "an upsert returned no document"
            )));
        };
        let user = read(USERS, &raw, UserDoc::into_user)?;
        // Our ids are random, so the account is the one just inserted exactly when the
        // caller saw none and it carries the prepared id.
        let created = !attempt.existing && user.id == new.id;
        if user.id != new.id {
            return Ok(SignupOutcome::Raced);
        }
        // The code and its mail: one transaction where the server has them
        // (topology.rs); without, the code first, so an interruption never mails a code
        // that does not exist.
        let context = (self, attempt, user.is_verified, created);
        self.several_writes("sign_up_code", context, |session, context| {
            let (store, attempt, verified, created) = *context;
            Box::pin(async move {
                let mut session = session;
                let added = store
                    .add_signup_code(
                        &attempt.code,
                        attempt.max_pending,
                        attempt.max_attempts,
                        !verified,
                        session.as_deref_mut(),
                    )
                    .await?;
                let (mail, outcome) = match (verified, added, created) {
                    (true, _, _) => (&attempt.notice_mail, SignupOutcome::Notified),
                    (false, false, _) => return Ok(SignupOutcome::TooManyPending),
                    (false, true, true) => (&attempt.first_mail, SignupOutcome::Created),
                    (false, true, false) => (&attempt.repeat_mail, SignupOutcome::AttemptAdded),
                };
                store
                    .typed::<MailDoc>(OUTBOX)
                    .insert_one(MailDoc::of(mail))
                    .optional(session, |write, s| write.session(s))
                    .await?;
                Ok(outcome)
            })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn complete_verification(
        &self,
        user_id: &str,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<User>> {
        // The code goes first (the one winner); an interruption before the second write
        // leaves the address unverified and the code spent, never another password.
        let Some(code) = self.take_verification_code(user_id, code_hash).await? else {
            return Ok(None);
        };
        let mut set = doc! { "is_verified": true, "updated_at": bdt(now) };
        let mut filter = user_filter(user_id);
        if let Some(choice) = &code.signup {
            // A registration attempt's password only ever replaces the one of an account
            // nobody verified yet: an attempt that slipped in while the owner's code was
            // being redeemed (these steps are not one transaction) is void.
            filter.insert("is_verified", false);
            set.insert("hashed_password", &choice.password_hash);
            set.insert(
                "display_name",
                choice
                    .display_name
                    .as_deref()
                    .map_or(Bson::Null, Bson::from),
            );
        }
        let updated = self
            .run(
                self.raw(USERS)
                    .find_one_and_update(filter, doc! { "$set": set })
                    .return_document(ReturnDocument::After),
            )
            .await?;
        updated
            .map(|raw| read(USERS, &raw, UserDoc::into_user))
            .transpose()
    }

    async fn mark_verified(&self, user_id: &str, now: DateTime<Utc>) -> StoreResult<()> {
        self.run(self.c(USERS).update_one(
            user_filter(user_id),
            doc! { "$set": { "is_verified": true, "updated_at": bdt(now) } },
        ))
        .await
        .map(drop)
    }

    #[tracing::instrument(skip_all)]
    async fn reset_password(
        &self,
        user_id: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        // One transaction where the server has them (topology.rs). Without, the password
        // changes first: an interruption leaves old sessions to a later reset or their
        // expiry, never the old password working.
        let context = (self, user_id, hash, now);
        self.several_writes("reset_password", context, |session, context| {
            let (store, user_id, hash, now) = *context;
            Box::pin(async move {
                let mut session = session;
                store
                    .c(USERS)
                    .update_one(
                        user_filter(user_id),
                        doc! { "$set": {
                            "hashed_password": hash, "is_verified": true, "updated_at": bdt(now),
                        } },
                    )
                    .optional(session.as_deref_mut(), |write, s| write.session(s))
                    .await?;
                for collection in [SESSIONS, REFRESH_TOKENS, CODES] {
                    store
                        .c(collection)
                        .delete_many(doc! { "user_id": user_id })
                        .optional(session.as_deref_mut(), |write, s| write.session(s))
                        .await?;
                }
                Ok(())
            })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn update_profile(
        &self,
        user_id: &str,
        patch: &ProfilePatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<User>> {
        let mut set = doc! { "updated_at": bdt(now) };
        let mut unset = Document::new();
        for (field, value) in patch.changes() {
            let value = match value {
                ProfileValue::Text(v) => v.map_or(Bson::Null, Bson::from),
                ProfileValue::Int(v) => v.map_or(Bson::Null, Bson::Int32),
                ProfileValue::Bool(v) => Bson::Boolean(v),
                ProfileValue::Time(v) => v.map_or(Bson::Null, |t| Bson::DateTime(bdt(t))),
            };
            set.insert(field, value);
        }
        for (key, value) in &patch.preferences_set {
            let value = mongodb::bson::to_bson(value).map_err(|e| StoreError::Other(e.into()))?;
            set.insert(format!("preferences.{key}"), value);
        }
        for key in &patch.preferences_unset {
            unset.insert(format!("preferences.{key}"), "");
        }
        let mut update = doc! { "$set": set };
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        let updated = self
            .run(
                self.raw(USERS)
                    .find_one_and_update(user_filter(user_id), update)
                    .return_document(ReturnDocument::After),
            )
            .await?;
        updated
            .map(|raw| read(USERS, &raw, UserDoc::into_user))
            .transpose()
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<bool> {
        // One transaction where the server has them (topology.rs). Without, the user goes
        // first: an interruption leaves orphans that nothing can reach (no login, no
        // token check passes without the user), removed by a retry.
        self.several_writes("delete_user", (self, user_id), |session, context| {
            let (store, user_id) = *context;
            Box::pin(async move {
                let mut session = session;
                let deleted = store
                    .c(USERS)
                    .delete_one(user_filter(user_id))
                    .optional(session.as_deref_mut(), |write, s| write.session(s))
                    .await?;
                for collection in [
                    SESSIONS,
                    REFRESH_TOKENS,
                    CODES,
                    EVENTS,
                    BUCKETS,
                    IDEMPOTENCY,
                ] {
                    store
                        .c(collection)
                        .delete_many(doc! { "user_id": user_id })
                        .optional(session.as_deref_mut(), |write, s| write.session(s))
                        .await?;
                }
                Ok(deleted.deleted_count == 1)
            })
        })
        .await
    }
}
