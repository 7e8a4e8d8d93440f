//! The user resource as clients see it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::User;

/// A user's own profile (`GET /users/me`, and the `user` of every token response).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserProfile {
    pub id: String,
    pub email: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub bio: Option<String>,
    pub timezone: Option<String>,
    /// 1–10.
    pub introvert_level: Option<i32>,
    pub is_verified: bool,
    pub onboarding_completed: bool,
    pub onboarding_completed_at: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
    pub preferences: serde_json::Map<String, serde_json::Value>,
    /// Current social battery level, 0–100.
    pub social_battery_level: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<User> for UserProfile {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            email: user.email,
            display_name: user.display_name,
            avatar_url: user.avatar_url,
            bio: user.bio,
            timezone: user.timezone,
            introvert_level: user.introvert_level,
            is_verified: user.is_verified,
            onboarding_completed: user.onboarding_completed,
            onboarding_completed_at: user.onboarding_completed_at,
            preferences: user.preferences,
            social_battery_level: user.battery_level,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}
