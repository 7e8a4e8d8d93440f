//! The one-time codes aggregate: a keyed hash per `(user, purpose)`, its guess count,
//! and its expiry.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{OutboxMail, StoreResult};
use crate::domain::OtpPurpose;

/// An outstanding one-time code, stored as a keyed hash only.
#[derive(Debug, Clone, PartialEq)]
pub struct OneTimeCode {
    pub user_id: String,
    pub purpose: OtpPurpose,
    pub code_hash: String,
    /// Submissions counted so far (including the current one after
    /// [`CodeStore::take_code_attempt`]).
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One-time codes.
#[async_trait]
pub trait CodeStore: Send + Sync {
    /// Stores a code for `(user, purpose)`, replacing any previous one (and its count).
    async fn put_code(&self, code: &OneTimeCode) -> StoreResult<()>;
    /// Stores a code and queues the mail that carries it, in one step (one transaction
    /// on SQLite; on MongoDB the code is written first, so an interruption can lose the
    /// mail, never send a code that does not exist).
    async fn put_code_and_mail(&self, code: &OneTimeCode, mail: &OutboxMail) -> StoreResult<()>;
    /// Atomically counts one submission against the live code of `(user, purpose)`
    /// and returns it, or `None` when there is no live code (none, expired, or
    /// `max_attempts` already used). Parallel submissions are each counted once: at
    /// most `max_attempts` of them ever get the code back.
    async fn take_code_attempt(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<OneTimeCode>>;
    /// Atomically deletes the code if it is still the one with `code_hash`; `true` for
    /// exactly one of any number of parallel callers.
    async fn consume_code(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        code_hash: &str,
    ) -> StoreResult<bool>;
    /// The outstanding codes of a user (for `introgy migrate --with-codes`).
    async fn codes_of(&self, user_id: &str) -> StoreResult<Vec<OneTimeCode>>;
}
