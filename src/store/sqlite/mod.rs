//! The embedded SQLite store: one file, WAL mode, migrations compiled into the binary
//! and applied on open.
//!
//! SQLite allows one writer at a time, so writes go through a single connection behind a
//! mutex: every write (and every multi-statement transaction) is therefore serialised,
//! which is what makes "count a guess", "consume a code" and "rotate a token" atomic.
//! Reads use a small pool of read-only connections and run concurrently with the writer
//! (WAL). All database work runs on tokio's blocking pool, never on the async workers.
//!
//! This file owns the connections, the migrations, error mapping and reading values out
//! of a row ([`Fields`]); each aggregate's SQL and row mapping lives in its own file.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::types::FromSql;
use rusqlite::{Connection, OpenFlags, Row, TransactionBehavior};

use super::{StoreError, StoreResult};

mod battery;
mod codes;
mod housekeeping;
mod mail;
mod migration;
mod sessions;
mod users;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_accounts.sql"),
    include_str!("../migrations/0002_battery.sql"),
    include_str!("../migrations/0003_outbox.sql"),
    include_str!("../migrations/0005_signup_attempts.sql"),
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

/// A time as stored: Unix milliseconds.
fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// A row that cannot be read, on its way through rusqlite's error type to
/// [`StoreError::Corrupt`] (see [`map_err`]).
#[derive(Debug, thiserror::Error)]
#[error("unreadable {record} record {id}: {reason}")]
struct Unreadable {
    record: &'static str,
    id: String,
    reason: String,
}

impl Unreadable {
    /// The unreadable record behind `err`, or `err` as it was.
    fn of(err: rusqlite::Error) -> Result<Unreadable, rusqlite::Error> {
        match err {
            rusqlite::Error::FromSqlConversionFailure(index, kind, cause) => {
                match cause.downcast::<Unreadable>() {
                    Ok(unreadable) => Ok(*unreadable),
                    Err(cause) => Err(rusqlite::Error::FromSqlConversionFailure(
                        index, kind, cause,
                    )),
                }
            }
            other => Err(other),
        }
    }
}

/// The error for a value of `record` that cannot be read.
fn unreadable(
    record: &'static str,
    id: impl Into<String>,
    reason: impl std::fmt::Display,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Null,
        Box::new(Unreadable {
            record,
            id: id.into(),
            reason: reason.to_string(),
        }),
    )
}

/// How a row names its record in errors; worked out only when a value is unreadable, so
/// reading a good row costs nothing extra.
#[derive(Clone, Copy)]
enum Key<'k> {
    /// The text of one column (the record's id).
    Column(usize),
    /// `a:b` of two columns (a composite key).
    Columns(usize, usize),
    /// A prefix and one column, e.g. a refresh token named by its session.
    Prefixed(&'static str, usize),
    /// Given by the caller (an aggregate over several rows).
    Text(&'k str),
}

/// Reads the values of one row of `record`, turning any value that does not fit its type
/// (a bad name, an out-of-range number, a non-time) into an error naming the record.
struct Fields<'a, 'r> {
    row: &'a Row<'r>,
    record: &'static str,
    key: Key<'a>,
}

impl<'a, 'r> Fields<'a, 'r> {
    fn new(row: &'a Row<'r>, record: &'static str, key: Key<'a>) -> Self {
        Self { row, record, key }
    }

    fn id(&self) -> String {
        let text = |index: usize| {
            self.row
                .get::<_, String>(index)
                .unwrap_or_else(|_| "(unreadable key)".to_owned())
        };
        match self.key {
            Key::Column(index) => text(index),
            Key::Columns(a, b) => format!("{}:{}", text(a), text(b)),
            Key::Prefixed(prefix, index) => format!("{prefix}{}", text(index)),
            Key::Text(id) => id.to_owned(),
        }
    }

    fn corrupt(&self, reason: impl std::fmt::Display) -> rusqlite::Error {
        unreadable(self.record, self.id(), reason)
    }

    fn column(&self, index: usize) -> String {
        self.row
            .as_ref()
            .column_name(index)
            .map_or_else(|_| format!("column {index}"), str::to_owned)
    }

    fn get<T: FromSql>(&self, index: usize) -> rusqlite::Result<T> {
        self.row
            .get(index)
            .map_err(|e| self.corrupt(format_args!("{}: {e}", self.column(index))))
    }

    /// A value stored by its name (`as_str`), read back with `FromStr`.
    fn parse<T>(&self, index: usize) -> rusqlite::Result<T>
    where
        T: std::str::FromStr<Err = String>,
    {
        let raw: String = self.get(index)?;
        raw.parse()
            .map_err(|e| self.corrupt(format_args!("{}: {e}", self.column(index))))
    }

    fn parse_opt<T>(&self, index: usize) -> rusqlite::Result<Option<T>>
    where
        T: std::str::FromStr<Err = String>,
    {
        match self.get::<Option<String>>(index)? {
            None => Ok(None),
            Some(raw) => raw
                .parse()
                .map(Some)
                .map_err(|e| self.corrupt(format_args!("{}: {e}", self.column(index)))),
        }
    }

    fn time(&self, index: usize) -> rusqlite::Result<DateTime<Utc>> {
        let ms: i64 = self.get(index)?;
        self.time_of(index, ms)
    }

    fn time_opt(&self, index: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
        self.get::<Option<i64>>(index)?
            .map(|ms| self.time_of(index, ms))
            .transpose()
    }

    fn time_of(&self, index: usize, ms: i64) -> rusqlite::Result<DateTime<Utc>> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .ok_or_else(|| self.corrupt(format_args!("{}: {ms} is not a time", self.column(index))))
    }

    /// Checks a value read with [`get`](Self::get) (a range, a shape).
    fn check<T>(&self, index: usize, value: Result<T, String>) -> rusqlite::Result<T> {
        value.map_err(|e| self.corrupt(format_args!("{}: {e}", self.column(index))))
    }
}

fn map_err(err: rusqlite::Error) -> StoreError {
    use rusqlite::ffi;
    let err = match Unreadable::of(err) {
        Ok(Unreadable { record, id, reason }) => return StoreError::Corrupt { record, id, reason },
        Err(other) => other,
    };
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
