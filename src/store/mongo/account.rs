//! Devices (the `client` and `ip` fields of a `sessions` document, which the session's
//! own [`SessionStore`](crate::store::SessionStore) code leaves alone) and password
//! changes.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use serde::Deserialize;

use super::{bdt, user_filter, utc, MongoStore, REFRESH_TOKENS, SESSIONS, USERS};
use crate::store::{AccountStore, DeviceSession, OtherSessions, StoreResult};

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
        }
        Ok(true)
    }
}
