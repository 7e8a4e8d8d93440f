//! The read every authenticated request makes: the session its access token names, that
//! session's user, and where the user's battery stands, in one store call (one query on
//! SQLite, one round trip on MongoDB). A read model over the sessions, users and battery
//! aggregates; it writes nothing.

use async_trait::async_trait;

use super::{BatteryPosition, Session, StoreResult, User};

/// The caller of an authenticated request, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub session: Session,
    pub user: User,
    pub battery: BatteryPosition,
}

/// The authenticated read.
#[async_trait]
pub trait CallerStore: Send + Sync {
    /// The session `session_id` if it belongs to `user_id`, with that user; `None` when
    /// either is gone (or the session is someone else's). Expiry is the caller's check.
    async fn caller(&self, session_id: &str, user_id: &str) -> StoreResult<Option<Caller>>;
}
