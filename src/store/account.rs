//! The account aggregate's self-service operations: the devices a user is signed in on
//! (the device fields of their sessions), signing one of them out, changing the
//! password while signed in, and switching to a new address proven by its code. Sessions themselves belong to [`SessionStore`]; this trait
//! reads and changes only what the account pages need.
//!
//! [`SessionStore`]: super::SessionStore

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{StoreResult, User};

/// Most sessions [`AccountStore::user_devices`] lists (the most recently used first).
pub const MAX_LISTED_SESSIONS: u32 = 100;

/// A session as its owner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSession {
    pub id: String,
    pub created_at: DateTime<Utc>,
    /// When the session last signed in or refreshed its tokens.
    pub last_used_at: DateTime<Utc>,
    /// `None` for a session opened before devices were recorded.
    pub client: Option<String>,
    pub ip: Option<String>,
}

/// What a password change does to the user's other sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtherSessions {
    Keep,
    /// Every session but this one is deleted (with its refresh tokens).
    SignOut {
        keep: String,
    },
}

/// What [`AccountStore::change_email`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum EmailChange {
    /// The user's address is the code's address now; `old_email` is the one they had.
    Changed { user: Box<User>, old_email: String },
    /// No live email-change code of the user has that hash (spent by a parallel caller,
    /// replaced by a newer request, expired, or the user is gone): nothing changed.
    NoCode,
    /// A verified account holds the code's address: the code is spent, the user keeps
    /// their address.
    Taken,
}

/// Devices, password and email changes.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Records the device of a session; `false` if the session is gone.
    async fn set_session_device(
        &self,
        session_id: &str,
        client: &str,
        ip: &str,
    ) -> StoreResult<bool>;
    /// The user's live sessions (`expires_at > now`), most recently used first, at most
    /// `limit`.
    async fn user_devices(
        &self,
        user_id: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<DeviceSession>>;
    /// Deletes the session `session_id` with its refresh tokens if it belongs to
    /// `user_id`; `false` (and nothing changes) if it does not exist or is someone else's.
    async fn delete_user_session(&self, user_id: &str, session_id: &str) -> StoreResult<bool>;
    /// Sets a new password hash and, with [`OtherSessions::SignOut`], deletes every other
    /// session of the user. The password changes first, so an interruption never leaves
    /// the old password working. `false` if the user does not exist.
    async fn change_password(
        &self,
        user_id: &str,
        hash: &str,
        others: &OtherSessions,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Redeems the user's `change_email` code with `code_hash` and switches the user to
    /// the address the code carries, atomically with respect to every other caller:
    /// the code is taken first (one winner among parallel callers; it is spent whatever
    /// follows), then the address is checked against the unique index (a verified
    /// holder: [`EmailChange::Taken`]; an unverified account holding it, which nobody
    /// ever proved, is deleted: the caller has just proven the mailbox), then the address
    /// changes and counts as verified (the code proved it, so a racing caller meets a
    /// verified holder and is refused, never deletes the winner), every outstanding code
    /// of the user goes (a reset code mailed to the old
    /// address must not outlive the switch) and every session but `keep_session` is
    /// deleted. One transaction on SQLite; on MongoDB one command per step in that
    /// order, so an interruption leaves other sessions to a retry or their expiry, never
    /// the address half changed.
    async fn change_email(
        &self,
        user_id: &str,
        code_hash: &str,
        keep_session: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<EmailChange>;
}
