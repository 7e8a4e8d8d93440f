//! Storage: one trait per aggregate, the records each deals in, and the [`Store`] that
//! every backend is.
//!
//! | aggregate | trait | records |
//! |---|---|---|
//! | accounts and profiles | [`UserStore`] | [`User`], [`NewUser`], [`ProfilePatch`], [`SignupAttempt`] |
//! | one-time codes | [`CodeStore`] | [`CodeChallenge`], [`OneTimeCode`], [`SignupChoice`] |
//! | sessions and refresh tokens | [`SessionStore`] | [`Session`], [`RefreshToken`] |
//! | devices, password and email change | [`AccountStore`] | [`DeviceSession`], [`OtherSessions`], [`EmailChange`] |
//! | mail outbox and mail budget | [`MailStore`] | [`OutboxMail`], [`MailResult`], [`MailStatus`] |
//! | mail nudges: claims, recipients, unsubscribing | [`NudgeStore`] | [`NudgeClaim`], [`NudgeList`], [`NudgeRecipient`] |
//! | social battery | [`BatteryStore`] | [`BatteryEvent`], [`NewBatteryEvent`], [`RecordOutcome`] |
//! | battery insights (quarter-hour buckets) | [`InsightStore`] | [`insights::Bucket`] |
//! | the authenticated read (sessions + users + battery) | [`CallerStore`] | [`Caller`] |
//! | rate limits and budgets | [`LimitStore`] | [`Budget`], [`LimitKey`], [`Rate`], [`Window`], [`Slot`] |
//! | moving between stores | [`MigrationStore`] | [`StoreCounts`] |
//! | housekeeping | [`Housekeeping`] | – |
//!
//! Handlers and services see only these types. Each backend (`sqlite/`, `mongo/`, one file
//! per aggregate) maps its duplicate-key error to [`StoreError::Conflict`], its
//! connectivity failures to [`StoreError::Unavailable`] (answered with 503) and a record
//! it cannot read to [`StoreError::Corrupt`] (an opaque 500 naming the record in the log).
//! Operations that must be atomic (consuming a code, counting a guess, rotating a refresh
//! token, reserving a mail send, recording an interaction) are single store calls with a
//! precondition, so they stay atomic on a backend without multi-document transactions;
//! `tests/store/` holds every such promise on both backends.

mod account;
mod battery;
mod caller;
mod codes;
mod housekeeping;
pub mod insights;
pub mod limits;
mod mail;
mod migration;
pub mod mongo;
mod nudges;
mod sessions;
pub mod sqlite;
mod users;

use std::sync::Arc;
use std::time::Duration;

pub use account::{AccountStore, DeviceSession, EmailChange, OtherSessions, MAX_LISTED_SESSIONS};
pub use battery::{
    replay_correction, BatteryEvent, BatteryPosition, BatteryStore, BatterySummary,
    CorrectedFields, Correction, CorrectionOutcome, HistoryCursor, HistoryFilter, IdempotencyKey,
    NewBatteryEvent, RecordOutcome, Replayed,
};
pub use caller::{Caller, CallerStore};
pub use codes::{Admission, CodeChallenge, CodeStore, OneTimeCode, SignupChoice};
pub use housekeeping::Housekeeping;
pub use insights::InsightStore;
pub use limits::{Budget, LimitKey, LimitStore, Rate, Refused, Slot, Window};
pub use mail::{MailResult, MailStatus, MailStore, OutboxMail, OutboxStats, SendLimits};
pub use migration::{MigrationStore, StoreCounts};
pub use nudges::{NudgeClaim, NudgeList, NudgeRecipient, NudgeStore};
pub use sessions::{RefreshToken, Rotation, Session, SessionStore, SEALED_CHILD_KEPT};
pub use users::{
    NewUser, ProfilePatch, ProfileValue, SignupAttempt, SignupOutcome, User, UserStore,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint was hit (for example an email that is already registered).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached right now; callers answer 503.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    /// A stored record cannot be read back (a bad value, a missing field, an unknown
    /// name). Never replaced by a default: callers answer an opaque 500 and the log
    /// names the record. `id` is the record's key, never a secret or a full address.
    #[error("unreadable {record} record {id}: {reason}")]
    Corrupt {
        /// Table or collection.
        record: &'static str,
        id: String,
        reason: String,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl StoreError {
    pub(crate) fn corrupt(
        record: &'static str,
        id: impl Into<String>,
        reason: impl std::fmt::Display,
    ) -> Self {
        Self::Corrupt {
            record,
            id: id.into(),
            reason: reason.to_string(),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Everything a backend provides: the app holds an `Arc<dyn Store>`. Call sites import
/// the aggregate traits whose methods they use.
pub trait Store:
    UserStore
    + CodeStore
    + SessionStore
    + AccountStore
    + MailStore
    + NudgeStore
    + BatteryStore
    + InsightStore
    + CallerStore
    + LimitStore
    + MigrationStore
    + Housekeeping
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: UserStore
        + CodeStore
        + SessionStore
        + AccountStore
        + MailStore
        + NudgeStore
        + BatteryStore
        + InsightStore
        + CallerStore
        + LimitStore
        + MigrationStore
        + Housekeeping
        + Send
        + Sync
        + 'static
{
}

/// What opening a store may do to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create what is missing: the SQLite file (mode 0600) and its folder, the schema,
    /// MongoDB's indexes. Development `serve`, `introgy init`, a migration's target.
    Create,
    /// The database must exist already: a missing or empty SQLite file is an error
    /// ([`sqlite::MissingDatabase`]) and nothing is created, so a deleted database is
    /// never silently replaced by an empty one. Production `serve`, `introgy smoke`.
    /// Migrations and indexes are still brought up to date.
    Existing,
    /// As `Existing`, and on MongoDB the database must hold the users collection and
    /// nothing is created there (no indexes): a migration's source, `introgy check`.
    Populated,
}

/// Opens the store the configuration names: production needs an existing database,
/// development creates one on first start.
pub async fn connect(config: &crate::config::Config) -> anyhow::Result<Arc<dyn Store>> {
    let mode = if config.is_production() {
        OpenMode::Existing
    } else {
        OpenMode::Create
    };
    match &config.database {
        crate::config::DatabaseConfig::Mongo { url, db } => {
            let store = mongo::MongoStore::open_with(
                secrecy::ExposeSecret::expose_secret(url),
                db,
                config.store_timeout,
                mode,
                config.mongo_transactions,
            )
            .await?;
            Ok(Arc::new(store))
        }
        sqlite => open(sqlite, config.store_timeout, mode).await,
    }
}

/// Opens the store at `database` (also used by `introgy migrate` for both ends).
pub async fn open(
    database: &crate::config::DatabaseConfig,
    timeout: Duration,
    mode: OpenMode,
) -> anyhow::Result<Arc<dyn Store>> {
    match database {
        crate::config::DatabaseConfig::Sqlite { path } => Ok(Arc::new(
            sqlite::SqliteStore::open_with(path, timeout, mode).await?,
        )),
        crate::config::DatabaseConfig::Mongo { url, db } => {
            let store = mongo::MongoStore::open(
                secrecy::ExposeSecret::expose_secret(url),
                db,
                timeout,
                mode,
            )
            .await?;
            Ok(Arc::new(store))
        }
    }
}
