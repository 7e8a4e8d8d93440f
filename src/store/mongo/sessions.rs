//! Sessions in `sessions` ([`SessionDoc`]) and refresh tokens in `refresh_tokens`
//! ([`RefreshDoc`], keyed by the token's hash, carrying its session's user and expiry so
//! they can be deleted by user and expire by TTL).

use async_trait::async_trait;
use mongodb::bson::{doc, Bson};
use serde::{Deserialize, Serialize};

use super::{bdt, read, utc, MongoStore, REFRESH_TOKENS, SESSIONS};
use crate::store::sessions::SEALED_CHILD_KEPT;
use crate::store::{RefreshToken, Rotation, Session, SessionStore, StoreResult};

/// A document of `sessions`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SessionDoc {
    #[serde(rename = "_id")]
    id: String,
    user_id: String,
    created_at: mongodb::bson::DateTime,
    /// TTL-indexed.
    expires_at: mongodb::bson::DateTime,
    refreshed_at: mongodb::bson::DateTime,
}

impl SessionDoc {
    fn of(session: &Session) -> Self {
        Self {
            id: session.id.clone(),
            user_id: session.user_id.clone(),
            created_at: bdt(session.created_at),
            expires_at: bdt(session.expires_at),
            refreshed_at: bdt(session.refreshed_at),
        }
    }

    pub(super) fn into_session(self) -> Result<Session, String> {
        Ok(Session {
            id: self.id,
            user_id: self.user_id,
            created_at: utc(self.created_at).map_err(|e| format!("created_at: {e}"))?,
            expires_at: utc(self.expires_at).map_err(|e| format!("expires_at: {e}"))?,
            refreshed_at: utc(self.refreshed_at).map_err(|e| format!("refreshed_at: {e}"))?,
        })
    }
}

/// A document of `refresh_tokens`.
#[derive(Debug, Serialize, Deserialize)]
struct RefreshDoc {
    /// SHA-256 of the token.
    #[serde(rename = "_id")]
    token_hash: String,
    session_id: String,
    user_id: String,
    issued_at: mongodb::bson::DateTime,
    /// `null` until rotated: the precondition of the one rotation.
    rotated_at: Option<mongodb::bson::DateTime>,
    /// The child issued at rotation, sealed; for the grace window only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    child_sealed: Option<String>,
    /// The session's end; TTL-indexed.
    expires_at: mongodb::bson::DateTime,
}

impl RefreshDoc {
    fn of(token: &RefreshToken, session: &Session) -> Self {
        Self {
            token_hash: token.token_hash.clone(),
            session_id: session.id.clone(),
            user_id: session.user_id.clone(),
            issued_at: bdt(token.issued_at),
            rotated_at: token.rotated_at.map(bdt),
            child_sealed: token.child_sealed.clone(),
            expires_at: bdt(session.expires_at),
        }
    }

    fn into_token(self) -> Result<RefreshToken, String> {
        Ok(RefreshToken {
            token_hash: self.token_hash,
            session_id: self.session_id,
            issued_at: utc(self.issued_at).map_err(|e| format!("issued_at: {e}"))?,
            rotated_at: self
                .rotated_at
                .map(utc)
                .transpose()
                .map_err(|e| format!("rotated_at: {e}"))?,
            child_sealed: self.child_sealed,
        })
    }
}

#[async_trait]
impl SessionStore for MongoStore {
    async fn insert_session(&self, session: &Session, first: &RefreshToken) -> StoreResult<()> {
        self.run(
            self.typed::<SessionDoc>(SESSIONS)
                .insert_one(SessionDoc::of(session)),
        )
        .await?;
        self.run(
            self.typed::<RefreshDoc>(REFRESH_TOKENS)
                .insert_one(RefreshDoc::of(first, session)),
        )
        .await
        .map(drop)
    }

    async fn session(&self, id: &str) -> StoreResult<Option<Session>> {
        let found = self
            .run(self.raw(SESSIONS).find_one(doc! { "_id": id }))
            .await?;
        found
            .map(|raw| read(SESSIONS, &raw, SessionDoc::into_session))
            .transpose()
    }

    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        let found = self
            .run(
                self.raw(REFRESH_TOKENS)
                    .find_one(doc! { "_id": token_hash }),
            )
            .await?;
        found
            .map(|raw| read(REFRESH_TOKENS, &raw, RefreshDoc::into_token))
            .transpose()
    }

    async fn rotate_refresh_token(
        &self,
        parent_hash: &str,
        child: &RefreshToken,
        child_sealed: &str,
    ) -> StoreResult<Rotation> {
        let now = child.issued_at;
        // The child first, then the parent's conditional update (the one winner): an
        // interruption in between leaves a child nobody holds and the parent usable, never
        // a parent naming a child that does not exist.
        let session = self
            .run(self.raw(SESSIONS).find_one_and_update(
                doc! { "_id": &child.session_id },
                doc! { "$set": { "refreshed_at": bdt(now) } },
            ))
            .await?
            .map(|raw| read(SESSIONS, &raw, SessionDoc::into_session))
            .transpose()?;
        let Some(session) = session else {
            return Ok(Rotation::Gone);
        };
        self.run(
            self.typed::<RefreshDoc>(REFRESH_TOKENS)
                .insert_one(RefreshDoc::of(child, &session)),
        )
        .await?;
        let won = self
            .run(self.c(REFRESH_TOKENS).update_one(
                doc! { "_id": parent_hash, "rotated_at": Bson::Null },
                doc! { "$set": { "rotated_at": bdt(now), "child_sealed": child_sealed } },
            ))
            .await?;
        if won.modified_count == 1 {
            self.run(self.c(REFRESH_TOKENS).update_many(
                doc! {
                    "session_id": &session.id,
                    "child_sealed": { "$exists": true },
                    "rotated_at": { "$lte": bdt(now - SEALED_CHILD_KEPT) },
                },
                doc! { "$unset": { "child_sealed": "" } },
            ))
            .await?;
            return Ok(Rotation::Rotated);
        }
        // Another call rotated it: this child was never handed out.
        self.run(
            self.c(REFRESH_TOKENS)
                .delete_one(doc! { "_id": &child.token_hash }),
        )
        .await?;
        Ok(match self.refresh_token(parent_hash).await? {
            Some(parent) => Rotation::AlreadyRotated(parent),
            None => Rotation::Gone,
        })
    }

    async fn delete_session(&self, id: &str) -> StoreResult<()> {
        self.run(self.c(SESSIONS).delete_one(doc! { "_id": id }))
            .await?;
        self.run(
            self.c(REFRESH_TOKENS)
                .delete_many(doc! { "session_id": id }),
        )
        .await
        .map(drop)
    }

    async fn delete_user_sessions(&self, user_id: &str, except: Option<&str>) -> StoreResult<u64> {
        let mut filter = doc! { "user_id": user_id };
        let mut token_filter = doc! { "user_id": user_id };
        if let Some(keep) = except {
            filter.insert("_id", doc! { "$ne": keep });
            token_filter.insert("session_id", doc! { "$ne": keep });
        }
        let deleted = self.run(self.c(SESSIONS).delete_many(filter)).await?;
        self.run(self.c(REFRESH_TOKENS).delete_many(token_filter))
            .await?;
        Ok(deleted.deleted_count)
    }
}
