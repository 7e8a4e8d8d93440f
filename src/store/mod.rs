//! Storage: the [`Store`] trait every backend implements, and the records it deals in.
//!
//! Handlers and services see only this module's types. Each backend maps its own
//! duplicate-key error to [`StoreError::Conflict`] and its connectivity failures to
//! [`StoreError::Unavailable`] (answered with 503). Operations that must be atomic
//! (consuming a code, counting a guess, rotating a refresh token, reserving a mail send)
//! are single store calls with a precondition, so they stay atomic on a backend without
//! multi-document transactions.

pub mod mongo;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::battery::{BatteryLevel, Interaction, InteractionKind};
use crate::domain::OtpPurpose;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint was hit (for example an email that is already registered).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached right now; callers answer 503.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

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

/// An interaction to record, before the store applies it to the current level.
#[derive(Debug, Clone)]
pub struct NewBatteryEvent {
    pub id: String,
    pub interaction: Interaction,
    pub name: Option<String>,
    pub duration_minutes: i32,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub notes: Option<String>,
    pub people_count: Option<i32>,
    pub interaction_type: Option<String>,
}

/// A recorded interaction: what was asked and what it did to the level.
#[derive(Debug, Clone, PartialEq)]
pub struct BatteryEvent {
    pub id: String,
    pub user_id: String,
    /// Acceptance order within the user's history (1, 2, 3, ...).
    pub seq: i64,
    pub interaction: Interaction,
    pub name: Option<String>,
    pub energy_delta: i32,
    pub level_before: BatteryLevel,
    pub level_after: BatteryLevel,
    pub duration_minutes: i32,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub notes: Option<String>,
    pub people_count: Option<i32>,
    pub interaction_type: Option<String>,
}

/// A client's `Idempotency-Key` for one record request.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    /// SHA-256 of the canonical request body.
    pub request_hash: String,
    /// Keys created before this instant have expired and are ignored.
    pub not_before: DateTime<Utc>,
}

/// What `record_interaction` did.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    Recorded(BatteryEvent),
    /// The same key and body were seen before: the original event, nothing changed.
    Replayed(BatteryEvent),
    /// The key was used before with a different body: nothing changed.
    KeyReused,
    /// The user does not exist (any more).
    UserMissing,
}

/// A queued mail (see [`crate::email::outbox`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMail {
    /// Also the mail's `Message-ID`.
    pub id: String,
    pub recipient: String,
    /// The mail's kind and data as JSON, one-time codes sealed.
    pub payload: String,
    /// Tries so far (including the current one after [`Store::claim_mail`]).
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    /// Mail carrying a code is not sent after the code expired.
    pub expires_at: Option<DateTime<Utc>>,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum MailResult {
    Sent,
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    Dead {
        error: String,
    },
    /// The code it carried expired first.
    Expired,
}

/// The outbox backlog, for `/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: u64,
    pub dead: u64,
}

/// Record counts, for the migration's final check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub users: u64,
    pub battery_events: u64,
}

/// Filters of a history query; `before_seq` is the keyset cursor.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub kind: Option<InteractionKind>,
}

/// Totals over a filtered history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatterySummary {
    pub count: i64,
    pub recharge_count: i64,
    pub depletion_count: i64,
    /// Sum of the positive `energy_delta`s.
    pub total_recharged: i64,
    /// Sum of the magnitudes of the negative `energy_delta`s.
    pub total_depleted: i64,
    /// Mean `level_after`; `None` when nothing matched.
    pub average_level: Option<f64>,
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

/// An outstanding one-time code, stored as a keyed hash only.
#[derive(Debug, Clone, PartialEq)]
pub struct OneTimeCode {
    pub user_id: String,
    pub purpose: OtpPurpose,
    pub code_hash: String,
    /// Submissions counted so far (including the current one after
    /// [`Store::take_code_attempt`]).
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Per-address mail budget (SECURITY.md 5).
#[derive(Debug, Clone, Copy)]
pub struct SendLimits {
    pub min_interval: Duration,
    pub per_hour: u32,
}

/// The storage interface. One behaviour, several backends.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `mongodb`.
    fn backend(&self) -> &'static str;

    /// Cheap round trip proving the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// What this store's choke point recorded about recent operations (whether writes
    /// are failing), for `/health`; `None` for a store that records nothing.
    fn observer(&self) -> Option<&crate::metrics::StoreObserver> {
        None
    }

    // ---- users ----
    /// Inserts a user; [`StoreError::Conflict`] when the email is taken.
    async fn insert_user(&self, user: &NewUser) -> StoreResult<User>;
    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>>;
    /// `email` must already be normalised (see [`crate::domain::Email`]).
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    async fn set_password_hash(
        &self,
        user_id: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    async fn mark_verified(&self, user_id: &str, now: DateTime<Utc>) -> StoreResult<()>;
    /// Sets a new password hash, marks the address verified, deletes every session and
    /// every outstanding code of the user.
    async fn reset_password(
        &self,
        user_id: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    // ---- one-time codes ----
    /// Stores a code for `(user, purpose)`, replacing any previous one.
    async fn put_code(&self, code: &OneTimeCode) -> StoreResult<()>;
    /// Atomically counts one submission against the live code of `(user, purpose)`
    /// and returns it, or `None` when there is no live code (none, expired, or
    /// `max_attempts` already used).
    async fn take_code_attempt(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<OneTimeCode>>;
    /// Atomically deletes the code if it is still the one with `code_hash`; `true` for
    /// exactly one caller.
    async fn consume_code(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        code_hash: &str,
    ) -> StoreResult<bool>;
    /// Stores a code and queues the mail that carries it, in one step (one transaction
    /// on SQLite; on MongoDB the code is written first, so an interruption can lose the
    /// mail, never send a code that does not exist).
    async fn put_code_and_mail(&self, code: &OneTimeCode, mail: &OutboxMail) -> StoreResult<()>;
    /// Queues a mail.
    async fn enqueue_mail(&self, mail: &OutboxMail) -> StoreResult<()>;
    /// Claims up to `limit` due mails: counts a try and makes each due again at
    /// `lease_until` (if its worker vanishes, it is retried then).
    async fn claim_mail(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<OutboxMail>>;
    /// Records how a try ended; a finished mail's payload (its sealed code) is erased.
    async fn finish_mail(
        &self,
        id: &str,
        result: &MailResult,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    async fn outbox_stats(&self) -> StoreResult<OutboxStats>;
    /// Records a mail to `email` if the per-address budget allows it; `false` otherwise.
    async fn reserve_mail_send(
        &self,
        email: &str,
        now: DateTime<Utc>,
        limits: SendLimits,
    ) -> StoreResult<bool>;

    // ---- sessions ----
    async fn insert_session(&self, session: &Session, first: &RefreshToken) -> StoreResult<()>;
    async fn session(&self, id: &str) -> StoreResult<Option<Session>>;
    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>>;
    /// Marks a token rotated if nobody did yet; `true` for exactly one caller.
    async fn mark_refresh_rotated(&self, token_hash: &str, now: DateTime<Utc>)
        -> StoreResult<bool>;
    /// Adds a token to an existing session and records the refresh time;
    /// [`StoreError::Conflict`] if the session is gone.
    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()>;
    async fn delete_session(&self, id: &str) -> StoreResult<()>;
    /// Deletes every session of the user except `except`; returns how many went.
    async fn delete_user_sessions(&self, user_id: &str, except: Option<&str>) -> StoreResult<u64>;

    // ---- profile ----
    /// Applies a partial update; `None` when the user does not exist.
    async fn update_profile(
        &self,
        user_id: &str,
        patch: &ProfilePatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<User>>;
    /// Deletes the user and everything that belongs to them; `false` if already gone.
    async fn delete_user(&self, user_id: &str) -> StoreResult<bool>;
    /// A verified user by exact (normalised) email, for `/users/lookup`.
    async fn verified_user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        Ok(self.user_by_email(email).await?.filter(|u| u.is_verified))
    }

    // ---- battery ----
    /// Applies an interaction to the user's current level and appends it to the
    /// history, atomically: concurrent records never lose an update. With a key, a
    /// repeat of the same request within its lifetime changes nothing.
    async fn record_interaction(
        &self,
        user_id: &str,
        event: &NewBatteryEvent,
        key: Option<&IdempotencyKey>,
    ) -> StoreResult<RecordOutcome>;
    /// One page of history, newest first: events with `seq < before_seq`.
    async fn battery_history(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
        before_seq: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>>;
    async fn battery_summary(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
    ) -> StoreResult<BatterySummary>;

    // ---- moving between stores (`introgy migrate`) ----
    /// Users with an id greater than `after`, in id order.
    async fn export_users(&self, after: Option<&str>, limit: u32) -> StoreResult<Vec<User>>;
    /// Writes a user as given (insert or replace by id), battery totals excluded.
    async fn import_user(&self, user: &User) -> StoreResult<()>;
    /// A user's events with `seq > after_seq`, oldest first.
    async fn export_events(
        &self,
        user_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>>;
    /// Writes events as given (insert or replace by id).
    async fn import_events(&self, events: &[BatteryEvent]) -> StoreResult<()>;
    /// Sets the battery position of an imported user and recomputes its running totals
    /// from the imported history.
    async fn finish_battery_import(
        &self,
        user_id: &str,
        level: i32,
        seq: i64,
        updated_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()>;
    /// The outstanding codes of a user.
    async fn codes_of(&self, user_id: &str) -> StoreResult<Vec<OneTimeCode>>;
    /// How many users and battery events the store holds.
    async fn counts(&self) -> StoreResult<StoreCounts>;

    // ---- housekeeping ----
    /// Deletes expired codes and sessions, mail-send records older than an hour and
    /// idempotency keys older than a day.
    async fn purge_expired(&self, now: DateTime<Utc>) -> StoreResult<u64>;
}

/// Opens the store the configuration names.
pub async fn connect(config: &crate::config::Config) -> anyhow::Result<Arc<dyn Store>> {
    open(&config.database, config.store_timeout).await
}

/// Opens the store at `database` (also used by `introgy migrate` for both ends).
pub async fn open(
    database: &crate::config::DatabaseConfig,
    timeout: Duration,
) -> anyhow::Result<Arc<dyn Store>> {
    match database {
        crate::config::DatabaseConfig::Sqlite { path } => {
            Ok(Arc::new(sqlite::SqliteStore::open(path, timeout).await?))
        }
        crate::config::DatabaseConfig::Mongo { url, db } => {
            let store =
                mongo::MongoStore::connect(secrecy::ExposeSecret::expose_secret(url), db, timeout)
                    .await?;
            Ok(Arc::new(store))
        }
    }
}
