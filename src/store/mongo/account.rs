//! Devices (the `client` and `ip` fields of a `sessions` document, which the session's
//! own [`SessionStore`](crate::store::SessionStore) code leaves alone), password and
//! email changes.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use mongodb::options::ReturnDocument;
use serde::Deserialize;

use super::users::UserDoc;
use super::{bdt, read, user_filter, user_key, utc, MongoStore, CODES, REFRESH_TOKENS};
use super::{SESSIONS, USERS};
use crate::domain::OtpPurpose;
use crate::store::{
    AccountStore, DeviceSession, EmailChange, OtherSessions, StoreError, StoreResult, UserStore,
};

/// The fields of a `sessions` document that the device list shows.
#[derive(Debug, Deserialize)]
struct DeviceDoc {
    #[serde(rename = "_id")]
    id: String,
    created_at: mongodb::bson::DateTime,
    refreshed_at: mongodb::bson::DateTime,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    ip: Option<String>,
}

impl DeviceDoc {
    fn into_device(self) -> Result<DeviceSession, String> {
        Ok(DeviceSession {
            id: self.id,
            created_at: utc(self.created_at).map_err(|e| format!("created_at: {e}"))?,
            last_used_at: utc(self.refreshed_at).map_err(|e| format!("refreshed_at: {e}"))?,
            client: self.client,
            ip: self.ip,
        })
    }
}

impl MongoStore {
    /// Deletes every session of the user but `keep`, then their refresh tokens.
    async fn sign_out_others(&self, user_id: &str, keep: &str) -> StoreResult<()> {
        self.run(
            self.c(SESSIONS)
                .delete_many(doc! { "user_id": user_id, "_id": { "$ne": keep } }),
        )
        .await?;
        self.run(
            self.c(REFRESH_TOKENS)
                .delete_many(doc! { "user_id": user_id, "session_id": { "$ne": keep } }),
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl AccountStore for MongoStore {
    async fn set_session_device(
        &self,
        session_id: &str,
        client: &str,
        ip: &str,
    ) -> StoreResult<bool> {
        let updated = self
            .run(self.c(SESSIONS).update_one(
                doc! { "_id": session_id },
                doc! { "$set": { "client": client, "ip": ip } },
            ))
            .await?;
        Ok(updated.matched_count == 1)
    }

    async fn user_devices(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<DeviceSession>> {
        let cursor = self
            .run(
                self.raw(SESSIONS)
                    .find(doc! { "user_id": user_id, "expires_at": { "$gt": bdt(now) } })
                    .projection(doc! {
                        "created_at": 1, "refreshed_at": 1, "client": 1, "ip": 1,
                    })
                    .sort(doc! { "refreshed_at": -1, "_id": 1 })
                    .limit(i64::from(limit)),
            )
            .await?;
        self.read_all(SESSIONS, cursor, DeviceDoc::into_device)
            .await
    }

    async fn delete_user_session(&self, user_id: &str, session_id: &str) -> StoreResult<bool> {
        // The session goes first (its access tokens stop at once); its refresh tokens
        // cannot be used without it, and a retry removes any left behind.
        let deleted = self
            .run(
                self.c(SESSIONS)
                    .delete_one(doc! { "_id": session_id, "user_id": user_id }),
            )
            .await?;
        if deleted.deleted_count == 0 {
            return Ok(false);
        }
        self.run(
            self.c(REFRESH_TOKENS)
                .delete_many(doc! { "session_id": session_id, "user_id": user_id }),
        )
        .await?;
        Ok(true)
    }

    async fn change_password(
        &self,
        user_id: &str,
        hash: &str,
        others: &OtherSessions,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        // The password changes first: an interruption leaves other sessions to a retry or
        // their expiry, never the old password working.
        let updated = self
            .run(self.c(USERS).update_one(
                user_filter(user_id),
                doc! { "$set": { "hashed_password": hash, "updated_at": bdt(now) } },
            ))
            .await?;
        if updated.matched_count == 0 {
            return Ok(false);
        }
        if let OtherSessions::SignOut { keep } = others {
            self.sign_out_others(user_id, keep).await?;
        }
        Ok(true)
    }

    async fn change_email(
        &self,
        user_id: &str,
        code_hash: &str,
        keep_session: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<EmailChange> {
        // The code first: one winner, and spent whatever follows.
        let code = self
            .take_code(user_id, OtpPurpose::ChangeEmail, code_hash)
            .await?;
        let Some(new_email) = code
            .filter(|c| c.expires_at > now)
            .and_then(|c| c.new_email)
        else {
            return Ok(EmailChange::NoCode);
        };
        let Some(before) = self.user_by_id(user_id).await? else {
            return Ok(EmailChange::NoCode);
        };
        // An account never verified (`is_verified: false`, as the purge counts it) gives
        // the address up to the one who proved the mailbox; what it has goes with it.
        let unverified = self
            .run(self.raw(USERS).find_one_and_delete(doc! {
                "email": &new_email,
                "is_verified": false,
                "_id": { "$ne": user_key(user_id) },
            }))
            .await?;
        if let Some(raw) = unverified {
            let holder = read(USERS, &raw, UserDoc::into_user)?;
            for collection in [SESSIONS, REFRESH_TOKENS, CODES] {
                self.run(
                    self.c(collection)
                        .delete_many(doc! { "user_id": &holder.id }),
                )
                .await?;
            }
        }
        // The unique index on `email` decides between racing callers.
        let switched = self
            .run(
                self.raw(USERS)
                    .find_one_and_update(
                        user_filter(user_id),
                        doc! { "$set": {
                            "email": &new_email,
                            "is_verified": true,
                            "updated_at": bdt(now),
                        } },
                    )
                    .return_document(ReturnDocument::After),
            )
            .await;
        let user = match switched {
            Ok(Some(raw)) => read(USERS, &raw, UserDoc::into_user)?,
            Ok(None) => return Ok(EmailChange::NoCode),
            Err(StoreError::Conflict(_)) => return Ok(EmailChange::Taken),
            Err(e) => return Err(e),
        };
        self.run(self.c(CODES).delete_many(doc! { "user_id": user_id }))
            .await?;
        self.sign_out_others(user_id, keep_session).await?;
        Ok(EmailChange::Changed {
            user: Box::new(user),
            old_email: before.email,
        })
    }
}
