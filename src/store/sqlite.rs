//! The embedded SQLite store: one file, WAL mode, migrations compiled into the binary
//! and applied on open.
//!
//! SQLite allows one writer at a time, so writes go through a single connection behind a
//! mutex: every write (and every multi-statement transaction) is therefore serialised,
//! which is what makes "count a guess", "consume a code" and "rotate a token" atomic.
//! Reads use a small pool of read-only connections and run concurrently with the writer
//! (WAL). All database work runs on tokio's blocking pool, never on the async workers.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};

use super::{
    BatteryEvent, BatterySummary, HistoryFilter, IdempotencyKey, NewBatteryEvent, NewUser,
    OneTimeCode, ProfilePatch, RecordOutcome, RefreshToken, SendLimits, Session, Store, StoreError,
    StoreResult, User,
};
use super::{MailResult, OutboxMail, OutboxStats, StoreCounts};
use crate::battery::{self, BatteryLevel, EnergyImpact, Interaction, SleepQuality};
use crate::domain::OtpPurpose;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_accounts.sql"),
    include_str!("migrations/0002_battery.sql"),
    include_str!("migrations/0003_outbox.sql"),
];

const READERS: usize = 4;

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
    timeout: Duration,
    observer: Arc<crate::metrics::StoreObserver>,
}

fn lock(mutex: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock leaves the connection usable (SQLite rolls back an
    // unfinished transaction when it is dropped), so poisoning is not fatal.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > MIGRATIONS.len() {
        anyhow::bail!(
            "the database schema (version {version}) is newer than this binary knows ({}); upgrade introgy",
            MIGRATIONS.len()
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)
            .with_context(|| format!("Failed to apply migration {}", index + 1))?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
        tracing::info!(migration = index + 1, "applied SQLite migration");
    }
    Ok(())
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn map_err(err: rusqlite::Error) -> StoreError {
    use rusqlite::ffi;
    if let rusqlite::Error::SqliteFailure(failure, _) = &err {
        match failure.extended_code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                return StoreError::Conflict("duplicate key".into())
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                return StoreError::Conflict("referenced record is gone".into())
            }
            _ => {}
        }
        if matches!(
            failure.code,
            ffi::ErrorCode::DatabaseBusy
                | ffi::ErrorCode::DatabaseLocked
                | ffi::ErrorCode::CannotOpen
                | ffi::ErrorCode::SystemIoFailure
                | ffi::ErrorCode::DiskFull
                | ffi::ErrorCode::ReadOnly
        ) {
            return StoreError::Unavailable(err.into());
        }
    }
    StoreError::Other(err.into())
}

const USER_COLUMNS: &str = "id, email, hashed_password, display_name, avatar_url, bio, timezone, \
    introvert_level, is_verified, onboarding_completed, onboarding_completed_at, preferences, \
    battery_level, created_at, updated_at, battery_updated_at";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    let preferences: String = row.get(11)?;
    Ok(User {
        id: row.get(0)?,
        email: row.get(1)?,
        hashed_password: row.get(2)?,
        display_name: row.get(3)?,
        avatar_url: row.get(4)?,
        bio: row.get(5)?,
        timezone: row.get(6)?,
        introvert_level: row.get(7)?,
        is_verified: row.get(8)?,
        onboarding_completed: row.get(9)?,
        onboarding_completed_at: row.get::<_, Option<i64>>(10)?.map(from_millis),
        preferences: serde_json::from_str(&preferences).unwrap_or_default(),
        battery_level: row.get(12)?,
        created_at: from_millis(row.get(13)?),
        updated_at: from_millis(row.get(14)?),
        battery_updated_at: row.get::<_, Option<i64>>(15)?.map(from_millis),
    })
}

const EVENT_COLUMNS: &str = "id, user_id, seq, kind, energy_impact, sleep_quality, target_level, \
    name, energy_delta, level_before, level_after, duration_minutes, occurred_at, recorded_at, \
    notes, people_count, interaction_type";

fn level_of(raw: i64) -> BatteryLevel {
    BatteryLevel::clamped(raw)
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<BatteryEvent> {
    let kind: String = row.get(3)?;
    let impact =
        EnergyImpact::new(row.get::<_, Option<i64>>(4)?.unwrap_or(1)).unwrap_or(EnergyImpact::MIN);
    let interaction = match kind.as_str() {
        "depletion" => Interaction::Depletion(impact),
        "recharge" => Interaction::Recharge(impact),
        "sleep" => Interaction::Sleep(match row.get::<_, Option<String>>(5)?.as_deref() {
            Some("good") => SleepQuality::Good,
            Some("bad") => SleepQuality::Bad,
            _ => SleepQuality::Medium,
        }),
        _ => Interaction::Set(level_of(row.get::<_, Option<i64>>(6)?.unwrap_or(0))),
    };
    Ok(BatteryEvent {
        id: row.get(0)?,
        user_id: row.get(1)?,
        seq: row.get(2)?,
        interaction,
        name: row.get(7)?,
        energy_delta: row.get(8)?,
        level_before: level_of(row.get(9)?),
        level_after: level_of(row.get(10)?),
        duration_minutes: row.get(11)?,
        occurred_at: from_millis(row.get(12)?),
        recorded_at: from_millis(row.get(13)?),
        notes: row.get(14)?,
        people_count: row.get(15)?,
        interaction_type: row.get(16)?,
    })
}

/// The columns that describe an interaction's input, for INSERT.
fn interaction_columns(
    interaction: &Interaction,
) -> (Option<i32>, Option<&'static str>, Option<i32>) {
    match interaction {
        Interaction::Depletion(i) | Interaction::Recharge(i) => (Some(i.value()), None, None),
        Interaction::Sleep(q) => (None, Some(q.as_str()), None),
        Interaction::Set(level) => (None, None, Some(level.value())),
    }
}

/// WHERE clause and parameters of a history filter (after `user_id = ?1`).
fn history_conditions(filter: &HistoryFilter) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut sql = String::new();
    let mut params = Vec::new();
    if let Some(kind) = filter.kind {
        params.push(Value::Text(kind.as_str().to_owned()));
        sql.push_str(&format!(" AND kind = ?{}", params.len() + 1));
    }
    if let Some(from) = filter.from {
        params.push(Value::Integer(millis(from)));
        sql.push_str(&format!(" AND occurred_at >= ?{}", params.len() + 1));
    }
    if let Some(to) = filter.to {
        params.push(Value::Integer(millis(to)));
        sql.push_str(&format!(" AND occurred_at <= ?{}", params.len() + 1));
    }
    (sql, params)
}

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: row.get(0)?,
        user_id: row.get(1)?,
        created_at: from_millis(row.get(2)?),
        expires_at: from_millis(row.get(3)?),
        refreshed_at: from_millis(row.get(4)?),
    })
}

fn upsert_code(conn: &Connection, code: &OneTimeCode) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO one_time_codes (user_id, purpose, code_hash, attempts, created_at, expires_at) \
         VALUES (?1, ?2, ?3, 0, ?4, ?5) \
         ON CONFLICT (user_id, purpose) DO UPDATE SET code_hash = excluded.code_hash, \
         attempts = 0, created_at = excluded.created_at, expires_at = excluded.expires_at",
        params![
            code.user_id,
            code.purpose.as_str(),
            code.code_hash,
            millis(code.created_at),
            millis(code.expires_at)
        ],
    )
    .map(drop)
}

fn insert_mail(conn: &Connection, mail: &OutboxMail) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO mail_outbox (id, recipient, payload, attempts, created_at, next_attempt_at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            mail.id,
            mail.recipient,
            mail.payload,
            mail.attempts,
            millis(mail.created_at),
            millis(mail.next_attempt_at),
            mail.expires_at.map(millis)
        ],
    )
    .map(drop)
}

fn purpose_from_str(raw: &str) -> OtpPurpose {
    match raw {
        "reset_password" => OtpPurpose::ResetPassword,
        _ => OtpPurpose::VerifyEmail,
    }
}

fn code_from_row(row: &Row<'_>) -> rusqlite::Result<OneTimeCode> {
    let purpose: String = row.get(1)?;
    Ok(OneTimeCode {
        user_id: row.get(0)?,
        purpose: purpose_from_str(&purpose),
        code_hash: row.get(2)?,
        attempts: row.get(3)?,
        created_at: from_millis(row.get(4)?),
        expires_at: from_millis(row.get(5)?),
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path, timeout: Duration) -> anyhow::Result<Self> {
        let path = path.to_path_buf();
        let inner = tokio::task::spawn_blocking(move || -> anyhow::Result<Inner> {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("Failed to create {}", parent.display()))?;
            }
            let mut writer = Connection::open(&path)
                .with_context(|| format!("Failed to open SQLite database {}", path.display()))?;
            let mode: String =
                writer.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(%mode, "SQLite did not switch to WAL mode");
            }
            configure(&writer)?;
            migrate(&mut writer)?;
            let readers = (0..READERS)
                .map(|_| {
                    let conn = Connection::open_with_flags(
                        &path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )?;
                    configure(&conn)?;
                    Ok(Mutex::new(conn))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Inner {
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
            })
        })
        .await
        .context("SQLite open task failed")??;
        Ok(Self {
            inner: Arc::new(inner),
            timeout,
            observer: Arc::new(crate::metrics::StoreObserver::new("sqlite")),
        })
    }

    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        // The closure's type names the store method and read/write (see metrics.rs).
        let (operation, write) = crate::metrics::sqlite_operation(std::any::type_name::<F>());
        let started = std::time::Instant::now();
        let inner = Arc::clone(&self.inner);
        let task = tokio::task::spawn_blocking(move || f(&inner));
        let result = match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(StoreError::Other(
                anyhow::Error::new(join).context("SQLite task panicked"),
            )),
            Err(_) => Err(StoreError::Unavailable(anyhow::anyhow!(
                "SQLite did not answer within {:?}",
                self.timeout
            ))),
        };
        self.observer
            .record(operation, write, started.elapsed(), result.as_ref().err());
        result
    }

    /// Runs `f` on one of the read connections.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.run(move |inner| {
            let start = inner.next_reader.fetch_add(1, Ordering::Relaxed);
            // Prefer an idle connection; fall back to waiting on the round-robin choice.
            let guard = (0..inner.readers.len())
                .find_map(|i| {
                    inner.readers[(start + i) % inner.readers.len()]
                        .try_lock()
                        .ok()
                })
                .unwrap_or_else(|| lock(&inner.readers[start % inner.readers.len()]));
            f(&guard).map_err(map_err)
        })
        .await
    }

    /// Runs `f` on the single write connection.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.run(move |inner| f(&mut lock(&inner.writer)).map_err(map_err))
            .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn observer(&self) -> Option<&crate::metrics::StoreObserver> {
        Some(&self.observer)
    }

    async fn ping(&self) -> StoreResult<()> {
        // Touch the schema, so a broken or vanished file is noticed (`SELECT 1` would not).
        self.read(|conn| conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(())))
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn insert_user(&self, user: &NewUser) -> StoreResult<User> {
        let user = user.clone();
        self.write(move |conn| {
            conn.query_row(
                &format!(
                    "INSERT INTO users (id, email, hashed_password, display_name, battery_level, \
                     created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) RETURNING {USER_COLUMNS}"
                ),
                params![
                    user.id,
                    user.email,
                    user.hashed_password,
                    user.display_name,
                    user.battery_level,
                    millis(user.now)
                ],
                user_from_row,
            )
        })
        .await
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>> {
        let id = id.to_owned();
        self.read(move |conn| {
            conn.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                [id],
                user_from_row,
            )
            .optional()
        })
        .await
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let email = email.to_owned();
        self.read(move |conn| {
            conn.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE email = ?1"),
                [email],
                user_from_row,
            )
            .optional()
        })
        .await
    }

    async fn set_password_hash(
        &self,
        user_id: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (user_id, hash) = (user_id.to_owned(), hash.to_owned());
        self.write(move |conn| {
            conn.execute(
                "UPDATE users SET hashed_password = ?2, updated_at = ?3 WHERE id = ?1",
                params![user_id, hash, millis(now)],
            )
            .map(drop)
        })
        .await
    }

    async fn mark_verified(&self, user_id: &str, now: DateTime<Utc>) -> StoreResult<()> {
        let user_id = user_id.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE users SET is_verified = 1, updated_at = ?2 WHERE id = ?1 AND is_verified = 0",
                params![user_id, millis(now)],
            )
            .map(drop)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn reset_password(
        &self,
        user_id: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (user_id, hash) = (user_id.to_owned(), hash.to_owned());
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE users SET hashed_password = ?2, is_verified = 1, updated_at = ?3 WHERE id = ?1",
                params![user_id, hash, millis(now)],
            )?;
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", [&user_id])?;
            tx.execute("DELETE FROM one_time_codes WHERE user_id = ?1", [&user_id])?;
            tx.commit()
        })
        .await
    }

    async fn put_code(&self, code: &OneTimeCode) -> StoreResult<()> {
        let code = code.clone();
        self.write(move |conn| upsert_code(conn, &code)).await
    }

    async fn take_code_attempt(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<OneTimeCode>> {
        let user_id = user_id.to_owned();
        self.write(move |conn| {
            conn.query_row(
                "UPDATE one_time_codes SET attempts = attempts + 1 \
                 WHERE user_id = ?1 AND purpose = ?2 AND attempts < ?3 AND expires_at > ?4 \
                 RETURNING user_id, purpose, code_hash, attempts, created_at, expires_at",
                params![user_id, purpose.as_str(), max_attempts, millis(now)],
                code_from_row,
            )
            .optional()
        })
        .await
    }

    async fn consume_code(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        code_hash: &str,
    ) -> StoreResult<bool> {
        let (user_id, code_hash) = (user_id.to_owned(), code_hash.to_owned());
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM one_time_codes WHERE user_id = ?1 AND purpose = ?2 AND code_hash = ?3",
                params![user_id, purpose.as_str(), code_hash],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn put_code_and_mail(&self, code: &OneTimeCode, mail: &OutboxMail) -> StoreResult<()> {
        let (code, mail) = (code.clone(), mail.clone());
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            upsert_code(&tx, &code)?;
            insert_mail(&tx, &mail)?;
            tx.commit()
        })
        .await
    }

    async fn enqueue_mail(&self, mail: &OutboxMail) -> StoreResult<()> {
        let mail = mail.clone();
        self.write(move |conn| insert_mail(conn, &mail)).await
    }

    async fn claim_mail(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<OutboxMail>> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let claimed: Vec<OutboxMail> = tx
                .prepare_cached(
                    "UPDATE mail_outbox SET attempts = attempts + 1, next_attempt_at = ?2 \
                     WHERE id IN (SELECT id FROM mail_outbox WHERE status = 'pending' \
                     AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?3) \
                     RETURNING id, recipient, payload, attempts, created_at, next_attempt_at, expires_at",
                )?
                .query_map(params![millis(now), millis(lease_until), limit], |row| {
                    Ok(OutboxMail {
                        id: row.get(0)?,
                        recipient: row.get(1)?,
                        payload: row.get(2)?,
                        attempts: row.get(3)?,
                        created_at: from_millis(row.get(4)?),
                        next_attempt_at: from_millis(row.get(5)?),
                        expires_at: row.get::<_, Option<i64>>(6)?.map(from_millis),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            tx.commit()?;
            Ok(claimed)
        })
        .await
    }

    async fn finish_mail(
        &self,
        id: &str,
        result: &MailResult,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (id, result) = (id.to_owned(), result.clone());
        self.write(move |conn| {
            match &result {
                MailResult::Retry { at, error } => conn.execute(
                    "UPDATE mail_outbox SET next_attempt_at = ?2, last_error = ?3 WHERE id = ?1",
                    params![id, millis(*at), error],
                ),
                other => {
                    let (status, error) = match other {
                        MailResult::Sent => ("sent", None),
                        MailResult::Dead { error } => ("dead", Some(error.as_str())),
                        _ => ("expired", None),
                    };
                    conn.execute(
                        "UPDATE mail_outbox SET status = ?2, last_error = COALESCE(?3, last_error), \
                         finished_at = ?4, payload = '{}' WHERE id = ?1",
                        params![id, status, error, millis(now)],
                    )
                }
            }
            .map(drop)
        })
        .await
    }

    async fn outbox_stats(&self) -> StoreResult<OutboxStats> {
        self.read(|conn| {
            conn.query_row(
                // Two index lookups on (status, ...), not a scan of a week of sent mail.
                "SELECT (SELECT COUNT(*) FROM mail_outbox WHERE status = 'pending'), \
                        (SELECT COUNT(*) FROM mail_outbox WHERE status = 'dead')",
                [],
                |r| {
                    Ok(OutboxStats {
                        pending: r.get(0)?,
                        dead: r.get(1)?,
                    })
                },
            )
        })
        .await
    }

    async fn reserve_mail_send(
        &self,
        email: &str,
        now: DateTime<Utc>,
        limits: SendLimits,
    ) -> StoreResult<bool> {
        let email = email.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now_ms = millis(now);
            let hour_ago = now_ms - 3_600_000;
            tx.execute(
                "DELETE FROM mail_sends WHERE email = ?1 AND sent_at <= ?2",
                params![email, hour_ago],
            )?;
            let (count, last): (u32, Option<i64>) = tx.query_row(
                "SELECT COUNT(*), MAX(sent_at) FROM mail_sends WHERE email = ?1",
                [&email],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            let min_interval_ms = limits.min_interval.as_millis() as i64;
            let too_soon = last.is_some_and(|last| now_ms - last < min_interval_ms);
            if count >= limits.per_hour || too_soon {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO mail_sends (email, sent_at) VALUES (?1, ?2)",
                params![email, now_ms],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn insert_session(&self, session: &Session, first: &RefreshToken) -> StoreResult<()> {
        let (session, first) = (session.clone(), first.clone());
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO sessions (id, user_id, created_at, expires_at, refreshed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    session.id,
                    session.user_id,
                    millis(session.created_at),
                    millis(session.expires_at),
                    millis(session.refreshed_at)
                ],
            )?;
            tx.execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES (?1, ?2, ?3)",
                params![first.token_hash, first.session_id, millis(first.issued_at)],
            )?;
            tx.commit()
        })
        .await
    }

    async fn session(&self, id: &str) -> StoreResult<Option<Session>> {
        let id = id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, user_id, created_at, expires_at, refreshed_at FROM sessions WHERE id = ?1",
            )?
            .query_row([id], session_from_row)
            .optional()
        })
        .await
    }

    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        let token_hash = token_hash.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT token_hash, session_id, issued_at, rotated_at FROM refresh_tokens WHERE token_hash = ?1",
                [token_hash],
                |row| {
                    Ok(RefreshToken {
                        token_hash: row.get(0)?,
                        session_id: row.get(1)?,
                        issued_at: from_millis(row.get(2)?),
                        rotated_at: row.get::<_, Option<i64>>(3)?.map(from_millis),
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn mark_refresh_rotated(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let token_hash = token_hash.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE refresh_tokens SET rotated_at = ?2 WHERE token_hash = ?1 AND rotated_at IS NULL",
                params![token_hash, millis(now)],
            )
            .map(|n| n == 1)
        })
        .await
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        let token = token.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let touched = tx.execute(
                "UPDATE sessions SET refreshed_at = ?2 WHERE id = ?1",
                params![token.session_id, millis(token.issued_at)],
            )?;
            if touched == 0 {
                // The session was revoked meanwhile: same answer as a foreign-key miss.
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error {
                        code: rusqlite::ffi::ErrorCode::ConstraintViolation,
                        extended_code: rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY,
                    },
                    None,
                ));
            }
            tx.execute(
                "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES (?1, ?2, ?3)",
                params![token.token_hash, token.session_id, millis(token.issued_at)],
            )?;
            tx.commit()
        })
        .await
    }

    async fn delete_session(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.write(move |conn| {
            conn.execute("DELETE FROM sessions WHERE id = ?1", [id])
                .map(drop)
        })
        .await
    }

    async fn delete_user_sessions(&self, user_id: &str, except: Option<&str>) -> StoreResult<u64> {
        let (user_id, except) = (user_id.to_owned(), except.map(str::to_owned));
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM sessions WHERE user_id = ?1 AND (?2 IS NULL OR id <> ?2)",
                params![user_id, except],
            )
            .map(|n| n as u64)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn update_profile(
        &self,
        user_id: &str,
        patch: &ProfilePatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<User>> {
        let (user_id, patch) = (user_id.to_owned(), patch.clone());
        self.write(move |conn| {
            use rusqlite::types::Value;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<String> = tx
                .query_row(
                    "SELECT preferences FROM users WHERE id = ?1",
                    [&user_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(current) = current else {
                return Ok(None);
            };
            let mut sets: Vec<String> = vec!["updated_at = ?2".into()];
            let mut values: Vec<Value> =
                vec![Value::Text(user_id.clone()), Value::Integer(millis(now))];
            let mut push = |column: &str, value: Value| {
                values.push(value);
                sets.push(format!("{column} = ?{}", values.len()));
            };
            let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
            if let Some(v) = &patch.display_name {
                push("display_name", text(v));
            }
            if let Some(v) = &patch.avatar_url {
                push("avatar_url", text(v));
            }
            if let Some(v) = &patch.bio {
                push("bio", text(v));
            }
            if let Some(v) = &patch.timezone {
                push("timezone", text(v));
            }
            if let Some(v) = patch.introvert_level {
                push(
                    "introvert_level",
                    v.map_or(Value::Null, |n| Value::Integer(n.into())),
                );
            }
            if let Some(v) = patch.onboarding_completed {
                push("onboarding_completed", Value::Integer(v.into()));
            }
            if let Some(v) = patch.onboarding_completed_at {
                push(
                    "onboarding_completed_at",
                    v.map_or(Value::Null, |t| Value::Integer(millis(t))),
                );
            }
            if !patch.preferences_set.is_empty() || !patch.preferences_unset.is_empty() {
                let mut preferences: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&current).unwrap_or_default();
                for key in &patch.preferences_unset {
                    preferences.remove(key);
                }
                preferences.extend(patch.preferences_set.clone());
                push(
                    "preferences",
                    Value::Text(serde_json::Value::Object(preferences).to_string()),
                );
            }
            tx.execute(
                &format!("UPDATE users SET {} WHERE id = ?1", sets.join(", ")),
                rusqlite::params_from_iter(values),
            )?;
            let user = tx.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                [&user_id],
                user_from_row,
            )?;
            tx.commit()?;
            Ok(Some(user))
        })
        .await
    }

    async fn delete_user(&self, user_id: &str) -> StoreResult<bool> {
        let user_id = user_id.to_owned();
        // Sessions, codes, history, totals and idempotency keys go by cascade.
        self.write(move |conn| {
            conn.execute("DELETE FROM users WHERE id = ?1", [user_id])
                .map(|n| n == 1)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn record_interaction(
        &self,
        user_id: &str,
        event: &NewBatteryEvent,
        key: Option<&IdempotencyKey>,
    ) -> StoreResult<RecordOutcome> {
        let (user_id, event, key) = (user_id.to_owned(), event.clone(), key.cloned());
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(key) = &key {
                let seen: Option<(String, String)> = tx
                    .query_row(
                        "SELECT request_hash, event_id FROM idempotency_keys \
                         WHERE user_id = ?1 AND key = ?2 AND created_at >= ?3",
                        params![user_id, key.key, millis(key.not_before)],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((hash, event_id)) = seen {
                    if hash != key.request_hash {
                        return Ok(RecordOutcome::KeyReused);
                    }
                    let original = tx
                        .query_row(
                            &format!("SELECT {EVENT_COLUMNS} FROM battery_events WHERE id = ?1"),
                            [event_id],
                            event_from_row,
                        )
                        .optional()?;
                    if let Some(original) = original {
                        return Ok(RecordOutcome::Replayed(original));
                    }
                }
            }
            let current: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT battery_level, battery_seq FROM users WHERE id = ?1",
                    [&user_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((level, seq)) = current else {
                return Ok(RecordOutcome::UserMissing);
            };
            let applied = battery::apply(level_of(level), &event.interaction);
            let seq = seq + 1;
            let (impact, quality, target) = interaction_columns(&event.interaction);
            let kind = event.interaction.kind().as_str();
            tx.execute(
                &format!(
                    "INSERT INTO battery_events ({EVENT_COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
                ),
                params![
                    event.id,
                    user_id,
                    seq,
                    kind,
                    impact,
                    quality,
                    target,
                    event.name,
                    applied.energy_delta,
                    applied.level_before.value(),
                    applied.level_after.value(),
                    event.duration_minutes,
                    millis(event.occurred_at),
                    millis(event.recorded_at),
                    event.notes,
                    event.people_count,
                    event.interaction_type
                ],
            )?;
            tx.execute(
                "UPDATE users SET battery_level = ?2, battery_seq = ?3, battery_updated_at = ?4 WHERE id = ?1",
                params![user_id, applied.level_after.value(), seq, millis(event.recorded_at)],
            )?;
            let delta = i64::from(applied.energy_delta);
            tx.execute(
                "INSERT INTO battery_stats (user_id, kind, count, total_positive, total_negative, level_sum) \
                 VALUES (?1, ?2, 1, ?3, ?4, ?5) \
                 ON CONFLICT (user_id, kind) DO UPDATE SET count = count + 1, \
                 total_positive = total_positive + excluded.total_positive, \
                 total_negative = total_negative + excluded.total_negative, \
                 level_sum = level_sum + excluded.level_sum",
                params![user_id, kind, delta.max(0), (-delta).max(0), applied.level_after.value()],
            )?;
            if let Some(key) = &key {
                tx.execute(
                    "INSERT INTO idempotency_keys (user_id, key, request_hash, event_id, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (user_id, key) DO UPDATE SET \
                     request_hash = excluded.request_hash, event_id = excluded.event_id, \
                     created_at = excluded.created_at",
                    params![user_id, key.key, key.request_hash, event.id, millis(event.recorded_at)],
                )?;
            }
            tx.commit()?;
            Ok(RecordOutcome::Recorded(BatteryEvent {
                id: event.id,
                user_id,
                seq,
                interaction: event.interaction,
                name: event.name,
                energy_delta: applied.energy_delta,
                level_before: applied.level_before,
                level_after: applied.level_after,
                duration_minutes: event.duration_minutes,
                occurred_at: event.occurred_at,
                recorded_at: event.recorded_at,
                notes: event.notes,
                people_count: event.people_count,
                interaction_type: event.interaction_type,
            }))
        })
        .await
    }

    async fn battery_history(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
        before_seq: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>> {
        let (user_id, filter) = (user_id.to_owned(), filter.clone());
        self.read(move |conn| {
            use rusqlite::types::Value;
            let (mut conditions, mut values) = history_conditions(&filter);
            values.insert(0, Value::Text(user_id));
            if let Some(before) = before_seq {
                values.push(Value::Integer(before));
                conditions.push_str(&format!(" AND seq < ?{}", values.len()));
            }
            values.push(Value::Integer(limit.into()));
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM battery_events WHERE user_id = ?1{conditions} \
                 ORDER BY seq DESC LIMIT ?{}",
                values.len()
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let rows = statement.query_map(rusqlite::params_from_iter(values), event_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn battery_summary(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
    ) -> StoreResult<BatterySummary> {
        let (user_id, filter) = (user_id.to_owned(), filter.clone());
        self.read(move |conn| {
            use rusqlite::types::Value;
            let (sum_count, recharge, depletion, positive, negative, level_sum): (i64, i64, i64, i64, i64, i64) =
                if filter.from.is_none() && filter.to.is_none() {
                    // Running totals: O(1) whatever the history's length.
                    let mut sql = "SELECT COALESCE(SUM(count), 0), \
                        COALESCE(SUM(CASE WHEN kind = 'recharge' THEN count END), 0), \
                        COALESCE(SUM(CASE WHEN kind = 'depletion' THEN count END), 0), \
                        COALESCE(SUM(total_positive), 0), COALESCE(SUM(total_negative), 0), \
                        COALESCE(SUM(level_sum), 0) FROM battery_stats WHERE user_id = ?1"
                        .to_owned();
                    let mut values = vec![Value::Text(user_id)];
                    if let Some(kind) = filter.kind {
                        sql.push_str(" AND kind = ?2");
                        values.push(Value::Text(kind.as_str().to_owned()));
                    }
                    conn.query_row(&sql, rusqlite::params_from_iter(values), |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                    })?
                } else {
                    let (conditions, mut values) = history_conditions(&filter);
                    values.insert(0, Value::Text(user_id));
                    let sql = format!(
                        "SELECT COUNT(*), COALESCE(SUM(kind = 'recharge'), 0), \
                         COALESCE(SUM(kind = 'depletion'), 0), \
                         COALESCE(SUM(MAX(energy_delta, 0)), 0), COALESCE(SUM(MAX(-energy_delta, 0)), 0), \
                         COALESCE(SUM(level_after), 0) FROM battery_events WHERE user_id = ?1{conditions}"
                    );
                    conn.query_row(&sql, rusqlite::params_from_iter(values), |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                    })?
                };
            Ok(BatterySummary {
                count: sum_count,
                recharge_count: recharge,
                depletion_count: depletion,
                total_recharged: positive,
                total_depleted: negative,
                average_level: (sum_count > 0)
                    .then(|| (level_sum as f64 / sum_count as f64 * 10.0).round() / 10.0),
            })
        })
        .await
    }

    async fn export_users(&self, after: Option<&str>, limit: u32) -> StoreResult<Vec<User>> {
        let after = after.unwrap_or("").to_owned();
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?;
            let rows = statement.query_map(params![after, limit], user_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn import_user(&self, user: &User) -> StoreResult<()> {
        let user = user.clone();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO users (id, email, hashed_password, display_name, avatar_url, bio, timezone, \
                 introvert_level, is_verified, onboarding_completed, onboarding_completed_at, preferences, \
                 battery_level, created_at, updated_at, battery_updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
                 ON CONFLICT (id) DO UPDATE SET email = excluded.email, \
                 hashed_password = excluded.hashed_password, display_name = excluded.display_name, \
                 avatar_url = excluded.avatar_url, bio = excluded.bio, timezone = excluded.timezone, \
                 introvert_level = excluded.introvert_level, is_verified = excluded.is_verified, \
                 onboarding_completed = excluded.onboarding_completed, \
                 onboarding_completed_at = excluded.onboarding_completed_at, \
                 preferences = excluded.preferences, battery_level = excluded.battery_level, \
                 created_at = excluded.created_at, updated_at = excluded.updated_at, \
                 battery_updated_at = excluded.battery_updated_at",
                params![
                    user.id,
                    user.email,
                    user.hashed_password,
                    user.display_name,
                    user.avatar_url,
                    user.bio,
                    user.timezone,
                    user.introvert_level,
                    user.is_verified,
                    user.onboarding_completed,
                    user.onboarding_completed_at.map(millis),
                    serde_json::Value::Object(user.preferences).to_string(),
                    user.battery_level,
                    millis(user.created_at),
                    millis(user.updated_at),
                    user.battery_updated_at.map(millis)
                ],
            )
            .map(drop)
        })
        .await
    }

    async fn export_events(
        &self,
        user_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM battery_events WHERE user_id = ?1 AND seq > ?2 \
                 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = statement.query_map(params![user_id, after_seq, limit], event_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn import_events(&self, events: &[BatteryEvent]) -> StoreResult<()> {
        let events = events.to_vec();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut insert = tx.prepare_cached(&format!(
                    "INSERT OR REPLACE INTO battery_events ({EVENT_COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
                ))?;
                for event in &events {
                    let (impact, quality, target) = interaction_columns(&event.interaction);
                    insert.execute(params![
                        event.id,
                        event.user_id,
                        event.seq,
                        event.interaction.kind().as_str(),
                        impact,
                        quality,
                        target,
                        event.name,
                        event.energy_delta,
                        event.level_before.value(),
                        event.level_after.value(),
                        event.duration_minutes,
                        millis(event.occurred_at),
                        millis(event.recorded_at),
                        event.notes,
                        event.people_count,
                        event.interaction_type
                    ])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn finish_battery_import(
        &self,
        user_id: &str,
        level: i32,
        seq: i64,
        updated_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        let user_id = user_id.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE users SET battery_level = ?2, battery_seq = ?3, battery_updated_at = ?4 WHERE id = ?1",
                params![user_id, level, seq, updated_at.map(millis)],
            )?;
            tx.execute("DELETE FROM battery_stats WHERE user_id = ?1", [&user_id])?;
            tx.execute(
                "INSERT INTO battery_stats (user_id, kind, count, total_positive, total_negative, level_sum) \
                 SELECT user_id, kind, COUNT(*), SUM(MAX(energy_delta, 0)), SUM(MAX(-energy_delta, 0)), \
                 SUM(level_after) FROM battery_events WHERE user_id = ?1 GROUP BY kind",
                [&user_id],
            )?;
            tx.commit()
        })
        .await
    }

    async fn codes_of(&self, user_id: &str) -> StoreResult<Vec<OneTimeCode>> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT user_id, purpose, code_hash, attempts, created_at, expires_at \
                 FROM one_time_codes WHERE user_id = ?1",
            )?;
            let rows = statement.query_map([user_id], code_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        self.read(|conn| {
            Ok(StoreCounts {
                users: conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?,
                battery_events: conn
                    .query_row("SELECT COUNT(*) FROM battery_events", [], |r| r.get(0))?,
            })
        })
        .await
    }

    async fn purge_expired(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now_ms = millis(now);
            let mut removed = 0;
            removed += tx.execute(
                "DELETE FROM one_time_codes WHERE expires_at <= ?1",
                [now_ms],
            )?;
            removed += tx.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now_ms])?;
            removed += tx.execute(
                "DELETE FROM mail_sends WHERE sent_at <= ?1",
                [now_ms - 3_600_000],
            )?;
            removed += tx.execute(
                "DELETE FROM idempotency_keys WHERE created_at <= ?1",
                [now_ms - 86_400_000],
            )?;
            // Delivered and expired mail is kept a week for inspection; dead mail stays.
            removed += tx.execute(
                "DELETE FROM mail_outbox WHERE status IN ('sent', 'expired') AND finished_at <= ?1",
                [now_ms - 7 * 86_400_000],
            )?;
            tx.commit()?;
            Ok(removed as u64)
        })
        .await
    }
}
