//! The sessions aggregate: a login session and the chain of refresh tokens it issued.
//!
//! A rotated token keeps its child sealed for [`SEALED_CHILD_KEPT`], so that presenting it
//! again within the grace window hands out the same child instead of forking the chain
//! (SECURITY.md 28); after that the sealed child is erased (at the session's next
//! rotation, or by the purge).

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};

use super::StoreResult;

/// How long a rotated token keeps its sealed child: the refresh grace window.
pub const SEALED_CHILD_KEPT: TimeDelta = TimeDelta::seconds(10);

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
    /// The child issued at rotation, sealed under the server's key (see
    /// [`crate::auth::seal`]); kept for the grace window only.
    pub child_sealed: Option<String>,
}

/// What [`SessionStore::rotate_refresh_token`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Rotation {
    /// This call rotated the token: the child is stored and the parent keeps it sealed.
    Rotated,
    /// The token was rotated already (by a parallel call, or earlier): the parent as
    /// stored, with when it was rotated and its sealed child, if still kept.
    AlreadyRotated(RefreshToken),
    /// The token or its session is gone.
    Gone,
}

/// Sessions and refresh tokens.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session with its first refresh token.
    async fn insert_session(&self, session: &Session, first: &RefreshToken) -> StoreResult<()>;
    async fn session(&self, id: &str) -> StoreResult<Option<Session>>;
    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>>;
    /// Exchanges the token `parent_hash` for `child` (same session, issued now): marks the
    /// parent rotated with `child_sealed` kept on it, adds the child, records the refresh
    /// time, and erases the sealed children of the session's tokens rotated longer than
    /// [`SEALED_CHILD_KEPT`] ago. Exactly one of any number of parallel callers gets
    /// [`Rotation::Rotated`]; the others get the parent as the winner left it, and their
    /// `child` is not kept.
    async fn rotate_refresh_token(
        &self,
        parent_hash: &str,
        child: &RefreshToken,
        child_sealed: &str,
    ) -> StoreResult<Rotation>;
    /// Deletes a session and its refresh tokens.
    async fn delete_session(&self, id: &str) -> StoreResult<()>;
    /// Deletes every session of the user except `except`; returns how many went.
    async fn delete_user_sessions(&self, user_id: &str, except: Option<&str>) -> StoreResult<u64>;
}
