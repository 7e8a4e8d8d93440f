//! The accounts aggregate: a user, their profile, and the account-wide operations
//! (reset password, delete account) that reach into the other aggregates.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreResult;

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
    async fn set_password_hash(
        &self,
        user_id: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
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
