//! The accounts aggregate: a user, their profile, and the account-wide operations
//! (sign up, verify, reset password, delete account) that reach into the other aggregates.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{OneTimeCode, OutboxMail, SendLimits, StoreResult};

/// A user account as stored. Field names follow the old service's `IntrogyUsers`
/// documents (`email`, `hashed_password`, `display_name`, `is_verified`, `created_at`).
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    /// Trimmed and lowercased.
    pub email: String,
    pub hashed_password: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub bio: Option<String>,
    pub timezone: Option<String>,
    pub introvert_level: Option<i32>,
    pub is_verified: bool,
    pub onboarding_completed: bool,
    pub onboarding_completed_at: Option<DateTime<Utc>>,
    pub preferences: serde_json::Map<String, serde_json::Value>,
    pub battery_level: i32,
    /// When the battery last changed (`None`: never since sign-up).
    pub battery_updated_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What registration writes.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub email: String,
    pub hashed_password: String,
    pub display_name: Option<String>,
    pub battery_level: i32,
    pub now: DateTime<Utc>,
}

impl User {
    /// The account a [`NewUser`] becomes: unverified, everything else at its default.
    pub fn new(new: &NewUser) -> Self {
        Self {
            id: new.id.clone(),
            email: new.email.clone(),
            hashed_password: new.hashed_password.clone(),
            display_name: new.display_name.clone(),
            avatar_url: None,
            bio: None,
            timezone: None,
            introvert_level: None,
            is_verified: false,
            onboarding_completed: false,
            onboarding_completed_at: None,
            preferences: serde_json::Map::new(),
            battery_level: new.battery_level,
            battery_updated_at: None,
            created_at: new.now,
            updated_at: new.now,
        }
    }
}

/// One registration attempt (`POST /auth/register`), everything prepared, for
/// [`UserStore::sign_up`] to apply according to what the address has.
#[derive(Debug, Clone)]
pub struct SignupAttempt {
    /// The account to create if the address has none; its id is the one `code` is bound
    /// to (the existing account's id when the caller saw one).
    pub user: NewUser,
    /// Whether the caller saw an account with `user.id` for this address.
    pub existing: bool,
    /// The attempt's code, carrying its password and display name.
    pub code: OneTimeCode,
    /// The code's mail for a new account.
    pub first_mail: OutboxMail,
    /// The code's mail for another attempt of an unverified account ("use this code only
    /// if you just signed up").
    pub repeat_mail: OutboxMail,
    /// "Someone tried to sign up with your address", for a verified account.
    pub notice_mail: OutboxMail,
    pub limits: SendLimits,
    /// Most live attempts per address.
    pub max_pending: u32,
    /// The guess budget shared by the live attempts.
    pub max_attempts: u32,
}

/// What [`UserStore::sign_up`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignupOutcome {
    /// A new unverified account, its attempt and the code's mail.
    Created,
    /// Another attempt of an unverified account, with its mail.
    AttemptAdded,
    /// The account is verified: only the notice was queued.
    Notified,
    /// The address's mail budget refused: nothing changed.
    MailRefused,
    /// `max_pending` attempts are live: no attempt, no mail (the mail budget was spent).
    TooManyPending,
    /// The address's account is not the one the attempt was prepared for (created or
    /// deleted meanwhile): nothing changed.
    Raced,
}

impl SignupOutcome {
    /// Whether a mail was queued.
    pub fn mailed(self) -> bool {
        matches!(self, Self::Created | Self::AttemptAdded | Self::Notified)
    }
}

/// A partial profile update: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct ProfilePatch {
    pub display_name: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub bio: Option<Option<String>>,
    pub timezone: Option<Option<String>>,
    pub introvert_level: Option<Option<i32>>,
    pub onboarding_completed: Option<bool>,
    pub onboarding_completed_at: Option<Option<DateTime<Utc>>>,
    /// Preference keys to set (shallow merge).
    pub preferences_set: serde_json::Map<String, serde_json::Value>,
    /// Preference keys to remove (given as `null`).
    pub preferences_unset: Vec<String>,
}

/// The new value of one profile field, for a backend to store.
#[derive(Debug, Clone, PartialEq)]
pub enum ProfileValue<'a> {
    Text(Option<&'a str>),
    Int(Option<i32>),
    Bool(bool),
    Time(Option<DateTime<Utc>>),
}

impl ProfilePatch {
    /// The fields this patch sets, by their stored names (the same column and field
    /// names in both backends); `preferences` apart, as each backend merges it its way.
    pub fn changes(&self) -> Vec<(&'static str, ProfileValue<'_>)> {
        let mut changes = Vec::new();
        let texts = [
            ("display_name", &self.display_name),
            ("avatar_url", &self.avatar_url),
            ("bio", &self.bio),
            ("timezone", &self.timezone),
        ];
        for (field, value) in texts {
            if let Some(v) = value {
                changes.push((field, ProfileValue::Text(v.as_deref())));
            }
        }
        if let Some(v) = self.introvert_level {
            changes.push(("introvert_level", ProfileValue::Int(v)));
        }
        if let Some(v) = self.onboarding_completed {
            changes.push(("onboarding_completed", ProfileValue::Bool(v)));
        }
        if let Some(v) = self.onboarding_completed_at {
            changes.push(("onboarding_completed_at", ProfileValue::Time(v)));
        }
        changes
    }
}

/// Users and their profiles.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Inserts a user; [`StoreError::Conflict`](super::StoreError::Conflict) when the
    /// email is taken.
    async fn insert_user(&self, user: &NewUser) -> StoreResult<User>;
    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>>;
    /// `email` must already be normalised (see [`crate::domain::Email`]).
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    /// A verified user by exact (normalised) email, for `/users/lookup`.
    async fn verified_user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        Ok(self.user_by_email(email).await?.filter(|u| u.is_verified))
    }
    /// Applies a registration attempt in one step (one transaction on SQLite), after
    /// taking a mail of the address's budget (SECURITY.md 5): creates the account if the
    /// address has none, adds the attempt's code to an unverified account's live ones
    /// (never replacing one, see [`Admission`](super::Admission)), or, for a verified
    /// account, changes nothing and queues the notice. Every outcome costs the same store
    /// work whatever the address has (SECURITY.md 29): on MongoDB the same commands run
    /// in every case, a no-op where there is nothing to write.
    async fn sign_up(&self, attempt: &SignupAttempt) -> StoreResult<SignupOutcome>;
    /// Redeems the `verify_email` code with `code_hash`: atomically takes the challenge
    /// holding it (every code of it goes; one winner among parallel callers), puts its
    /// attempt's password and display name in force if it has one (only while the account
    /// is unverified: otherwise the code is spent and `None` returned), and marks the address
    /// verified. `None` when no such code is outstanding.
    async fn complete_verification(
        &self,
        user_id: &str,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<User>>;
    async fn mark_verified(&self, user_id: &str, now: DateTime<Utc>) -> StoreResult<()>;
    /// Sets a new password hash, marks the address verified, deletes every session (and
    /// so every refresh token) and every outstanding code of the user.
    async fn reset_password(
        &self,
        user_id: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Applies a partial update; `None` when the user does not exist.
    async fn update_profile(
        &self,
        user_id: &str,
        patch: &ProfilePatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<User>>;
    /// Deletes the user and everything that belongs to them (sessions, refresh tokens,
    /// codes, battery history and totals, idempotency keys); `false` if already gone.
    async fn delete_user(&self, user_id: &str) -> StoreResult<bool>;
}
