//! The sessions aggregate: a login session and the chain of refresh tokens it issued.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreResult;

/// A login session: the unit that logout and reuse detection revoke.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub created_at: DateTime<Utc>,
    /// Absolute end of the session (`REFRESH_TOKEN_TTL_SECONDS` after login).
    pub expires_at: DateTime<Utc>,
    pub refreshed_at: DateTime<Utc>,
}

/// One refresh token of a session, stored by the SHA-256 of its value.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshToken {
    pub token_hash: String,
    pub session_id: String,
    pub issued_at: DateTime<Utc>,
    /// Set when the token was exchanged for a new one.
    pub rotated_at: Option<DateTime<Utc>>,
}

/// Sessions and refresh tokens.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session with its first refresh token.
    async fn insert_session(&self, session: &Session, first: &RefreshToken) -> StoreResult<()>;
    async fn session(&self, id: &str) -> StoreResult<Option<Session>>;
    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>>;
    /// Marks a token rotated if nobody did yet; `true` for exactly one of any number of
    /// parallel callers.
    async fn mark_refresh_rotated(&self, token_hash: &str, now: DateTime<Utc>)
        -> StoreResult<bool>;
    /// Adds a token to an existing session and records the refresh time;
    /// [`StoreError::Conflict`](super::StoreError::Conflict) if the session is gone.
    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()>;
    /// Deletes a session and its refresh tokens.
    async fn delete_session(&self, id: &str) -> StoreResult<()>;
    /// Deletes every session of the user except `except`; returns how many went.
    async fn delete_user_sessions(&self, user_id: &str, except: Option<&str>) -> StoreResult<u64>;
}
