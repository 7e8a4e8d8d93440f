//! The embedded SQLite store: one file, WAL mode, migrations compiled into the binary
//! and applied on open.
//!
//! SQLite allows one writer at a time, so writes go through a single connection owned by
//! one thread ([`Writer`]): every write (and every multi-statement transaction) is
//! serialised, which is what makes "count a guess", "consume a code" and "rotate a token"
//! atomic. The writer commits in groups: it takes every write waiting in its queue (up to
//! [`MAX_BATCH`]), runs them one after the other inside one transaction, each in its own
//! `SAVEPOINT` (a job that fails rolls back only itself), and answers each caller only
//! after the one `COMMIT` succeeded. An answered write is as durable as a write committed
//! alone (WAL, `synchronous = NORMAL`: it survives `kill -9`); under load the
//! per-transaction costs (the lock, the WAL frames of shared pages) are paid once per
//! group. Reads use a small pool of read-only connections and run concurrently with the
//! writer (WAL readers never wait for it), only once they have their connection: a call
//! waiting for the writer or for a reader waits asynchronously and holds no thread.
//! Reads run on tokio's blocking pool, except reads bounded by a key (a few index
//! lookups: the caller of every authenticated request, a user, a session), which run
//! right on the async worker without waiting for any lock ([`SqliteStore::quick_read`]).
//!
//! `STORE_TIMEOUT_SECONDS` bounds a call, and a 503 means "not applied": a write that has
//! not reached the writer within half the timeout is abandoned before it starts (it never
//! runs later; nor does one whose caller went away while it waited); a write that started
//! is always waited for, and its group's wait for SQLite's file lock (another process
//! writing) is bounded by the busy timeout, the other half, so its real outcome is what
//! the caller hears. Reads are simply abandoned at the timeout (a read by key once it
//! has its connection runs to its end on the worker: tens of microseconds).
//!
//! The file that was opened is watched ([`FileWatch`]): deleted, moved or replaced, the
//! store refuses reads and writes with a clear 503 and says so loudly in the log, instead
//! of serving a file that will be gone at the next start. A missing database is created
//! only when asked ([`OpenMode::Create`]: development, `introgy init`).
//!
//! This file owns the connections, the migrations, error mapping, the file watch, the
//! checkpoint on close, online backups, a side-effect-free inspection for `introgy check`,
//! and reading values out of a row ([`Fields`]); each aggregate's SQL and row mapping
//! lives in its own file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::types::FromSql;
use rusqlite::{Connection, OpenFlags, Row, TransactionBehavior};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{OpenMode, StoreError, StoreResult};

mod account;
mod battery;
mod caller;
mod codes;
mod housekeeping;
pub use housekeeping::SEVERAL_WRITES;
mod insights;
mod limits;
mod mail;
mod migration;
mod nudges;
mod sessions;
mod users;
mod writer;

use writer::{Shared, Writer};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_accounts.sql"),
    include_str!("../migrations/0002_battery.sql"),
    include_str!("../migrations/0003_outbox.sql"),
    include_str!("../migrations/0004_history_order.sql"),
    include_str!("../migrations/0005_signup_attempts.sql"),
    include_str!("../migrations/0006_session_devices.sql"),
    include_str!("../migrations/0007_nudge_claims.sql"),
    include_str!("../migrations/0008_email_change.sql"),
    include_str!("../migrations/0009_battery_buckets.sql"),
];

const READERS: usize = 4;
/// How often the database file is compared with the file that was opened (writes also
/// check it before they start, `/health` on every call).
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

struct Inner {
    /// The thread that owns the one write connection.
    writer: Writer,
    /// Idle read connections; a permit of `reader_slots` guarantees one is here.
    readers: Mutex<Vec<Connection>>,
    reader_slots: Arc<Semaphore>,
    /// The file watch and the closed flag, shared with the writer thread.
    shared: Arc<Shared>,
    /// When the running or last `/health` file check started: concurrent probes share
    /// one check instead of taking a blocking thread each.
    file_probe: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// SQLite-backed [`Store`](super::Store).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
    timeout: Duration,
    observer: Arc<crate::metrics::StoreObserver>,
    /// The budgets, in process: an SQLite deployment is one machine (see `limits.rs`).
    limits: Arc<limits::InProcessLimits>,
}

/// The database file a production start-up (or `introgy migrate --from`) needs is not
/// there: nothing was created. The CLI exits 2 on it (a setting or a step is missing).
#[derive(Debug, thiserror::Error)]
#[error(
    "the SQLite database {path} {problem}. Nothing was created. On a first install, create it \
     with `introgy init` (deploy/setup.sh and the Debian package do this once); if it held \
     data, it was deleted or moved: restore it from a backup (docs/deploy.md, \"Backup and \
     restore\") rather than start on an empty one"
)]
pub struct MissingDatabase {
    pub path: PathBuf,
    problem: &'static str,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing is left half-done under these locks, so poisoning is not fatal.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// SQLite's own wait for its file lock: half the store timeout, so that a write that
/// got the writer in the first half ends (done, or refused as busy) within the timeout.
fn busy_timeout(store_timeout: Duration) -> Duration {
    (store_timeout / 2).max(Duration::from_millis(100))
}

fn configure(conn: &Connection, busy: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Page cache per connection, KiB (SQLite's default is 2,000 KiB, so ~10 MiB for the
    // five connections once the file is large). The hot pages (the root-to-leaf paths the
    // writer appends to, the users and sessions rows every request reads) fit many times
    // over, and a reader's cache is emptied whenever another connection wrote anyway; the
    // rest is in the OS page cache (PRODUCT.md §7 memory; README, "Performance").
    conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)?;
    Ok(())
}

/// See [`configure`].
const PAGE_CACHE_KIB: i64 = 512;

/// A file's identity: its device and inode. Another file at the same path (a restore
/// copied over it, a new empty file after `rm`) has another.
#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn identity(_meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// Watches that the path still names the file the connections have open. SQLite keeps
/// working on a deleted file through its open descriptors, so without this a deleted
/// database would answer 201 until the next start, which would then begin empty.
struct FileWatch {
    path: PathBuf,
    identity: Option<(u64, u64)>,
    lost: AtomicBool,
}

impl FileWatch {
    fn new(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("Failed to read the metadata of {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            identity: identity(&meta),
            lost: AtomicBool::new(false),
        })
    }

    /// Compares the path with the opened file (one `stat`); logs when that changes.
    fn check(&self) -> StoreResult<()> {
        let problem = match std::fs::metadata(&self.path) {
            Ok(meta) if identity(&meta) == self.identity => None,
            Ok(_) => Some("was replaced by another file".to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some("was deleted or moved".to_owned())
            }
            Err(e) => Some(format!("cannot be checked ({e})")),
        };
        let was_lost = self.lost.swap(problem.is_some(), Ordering::SeqCst);
        match problem {
            None => {
                if was_lost {
                    tracing::warn!(path = %self.path.display(), "the SQLite database file is back (the same file that was opened); serving again");
                }
                Ok(())
            }
            Some(problem) => {
                if !was_lost {
                    tracing::error!(
                        path = %self.path.display(),
                        problem = %problem,
                        "THE SQLITE DATABASE FILE {problem}: every read and write is refused \
                         (503) from now on. Put the file back (the same file) and the service \
                         goes on by itself; otherwise stop the service and restore a backup \
                         (docs/deploy.md). A restart will not create an empty database over it."
                    );
                }
                Err(self.lost_error(&problem))
            }
        }
    }

    /// The last check's verdict, without a system call (the read path).
    fn last(&self) -> StoreResult<()> {
        if self.lost.load(Ordering::Relaxed) {
            Err(self.lost_error("was deleted, moved or replaced"))
        } else {
            Ok(())
        }
    }

    fn lost_error(&self, problem: &str) -> StoreError {
        StoreError::Unavailable(anyhow::anyhow!(
            "the SQLite database file {} {problem}",
            self.path.display()
        ))
    }
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

    /// A value stored by its name (`as_str`), read back with `FromStr`. The text is
    /// borrowed from the row, not copied (a history page reads several per row).
    fn parse<T>(&self, index: usize) -> rusqlite::Result<T>
    where
        T: std::str::FromStr<Err = String>,
    {
        self.parse_opt(index)?
            .ok_or_else(|| self.corrupt(format_args!("{}: missing (NULL)", self.column(index))))
    }

    fn parse_opt<T>(&self, index: usize) -> rusqlite::Result<Option<T>>
    where
        T: std::str::FromStr<Err = String>,
    {
        let value = self
            .row
            .get_ref(index)
            .map_err(|e| self.corrupt(format_args!("{}: {e}", self.column(index))))?;
        match value
            .as_str_or_null()
            .map_err(|e| self.corrupt(format_args!("{}: {e}", self.column(index))))?
        {
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

/// Which connection a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// A read connection taken from the pool; it goes back when dropped, also when the
/// caller stopped waiting or the query panicked.
struct ReadLease {
    inner: Arc<Inner>,
    conn: Option<Connection>,
    _slot: OwnedSemaphorePermit,
}

impl ReadLease {
    fn take(inner: Arc<Inner>, slot: OwnedSemaphorePermit) -> Self {
        let conn = lock(&inner.readers).pop();
        Self {
            inner,
            conn,
            _slot: slot,
        }
    }

    /// Waits (asynchronously) for an idle read connection.
    async fn wait(inner: Arc<Inner>) -> StoreResult<Self> {
        let slot = Arc::clone(&inner.reader_slots)
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Other(e.into()))?;
        Ok(Self::take(inner, slot))
    }

    fn conn(&mut self) -> StoreResult<&mut Connection> {
        self.conn.as_mut().ok_or_else(|| {
            StoreError::Other(anyhow::anyhow!(
                "no idle SQLite read connection behind a free slot"
            ))
        })
    }

    /// Runs `f` on this connection on a blocking thread; the connection goes back to the
    /// pool when it is done (or panicked).
    async fn on_blocking_thread<T, F>(mut self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        tokio::task::spawn_blocking(move || f(self.conn()?))
            .await
            .unwrap_or_else(|join| Err(panicked(join)))
    }
}

/// A read connection's busy timeout at zero until dropped, then `usual` again, also if
/// the read panicked: the connection never goes back to the pool without it.
struct NoWait<'a> {
    conn: &'a Connection,
    usual: Duration,
}

impl<'a> NoWait<'a> {
    fn new(conn: &'a Connection, usual: Duration) -> rusqlite::Result<Self> {
        conn.busy_timeout(Duration::ZERO)?;
        Ok(Self { conn, usual })
    }
}

impl Drop for NoWait<'_> {
    fn drop(&mut self) {
        // `sqlite3_busy_timeout` cannot fail on an open connection.
        let _ = self.conn.busy_timeout(self.usual);
    }
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            lock(&self.inner.readers).push(conn);
        }
    }
}

/// Creates the database file, readable by its owner only (SQLite gives the `-wal` and
/// `-shm` files the database file's mode), and its folder.
fn create_private_file(path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("Failed to create {}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("Failed to create {}", path.display())),
    }
}

/// `user_version` and the number of schema objects: (0, 0) is an empty file.
fn schema_of(conn: &Connection) -> rusqlite::Result<(usize, i64)> {
    let version = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let objects = conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |row| row.get(0))?;
    Ok((version, objects))
}

fn open_blocking(path: &Path, busy: Duration, mode: OpenMode) -> anyhow::Result<Inner> {
    let exists = path.exists();
    if !exists {
        match mode {
            OpenMode::Create => create_private_file(path)?,
            OpenMode::Existing | OpenMode::Populated => {
                return Err(MissingDatabase {
                    path: path.to_path_buf(),
                    problem: "does not exist",
                }
                .into())
            }
        }
    }
    // Never SQLITE_OPEN_CREATE: a file that vanished since the check above is an error,
    // not a new database.
    let mut writer = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("Failed to open SQLite database {}", path.display()))?;
    if mode != OpenMode::Create && schema_of(&writer)? == (0, 0) {
        return Err(MissingDatabase {
            path: path.to_path_buf(),
            problem: "is an empty file, not an Introgy database",
        }
        .into());
    }
    let journal: String =
        writer.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !journal.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode = %journal, "SQLite did not switch to WAL mode");
    }
    configure(&writer, busy)?;
    migrate(&mut writer)?;
    let readers = (0..READERS)
        .map(|_| {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            configure(&conn, busy)?;
            Ok(conn)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shared = Arc::new(Shared {
        file: FileWatch::new(path)?,
        closed: AtomicBool::new(false),
        commits: AtomicU64::new(0),
    });
    Ok(Inner {
        writer: Writer::start(writer, Arc::clone(&shared))
            .context("Failed to start the SQLite writer thread")?,
        readers: Mutex::new(readers),
        reader_slots: Arc::new(Semaphore::new(READERS)),
        shared,
        file_probe: tokio::sync::Mutex::new(None),
    })
}

impl SqliteStore {
    /// Opens the database file, creating it (and its folder) if needed, and brings its
    /// schema up to date: development and tests.
    pub async fn open(path: &Path, timeout: Duration) -> anyhow::Result<Self> {
        Self::open_with(path, timeout, OpenMode::Create).await
    }

    /// Opens the database file as `mode` allows; with [`OpenMode::Existing`] a missing
    /// or empty file is a [`MissingDatabase`] error and nothing is created.
    pub async fn open_with(path: &Path, timeout: Duration, mode: OpenMode) -> anyhow::Result<Self> {
        let path = path.to_path_buf();
        let busy = busy_timeout(timeout);
        let inner = tokio::task::spawn_blocking(move || open_blocking(&path, busy, mode))
            .await
            .context("SQLite open task failed")??;
        let store = Self {
            inner: Arc::new(inner),
            timeout,
            observer: Arc::new(crate::metrics::StoreObserver::new("sqlite")),
            limits: Arc::default(),
        };
        store.watch_file();
        Ok(store)
    }

    /// Checks the file every [`FILE_CHECK_INTERVAL`] while the store exists, so a lost
    /// file is noticed within a second even without writes.
    fn watch_file(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FILE_CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                // One `stat`, but a stalled file system can block it: off the workers.
                let _ = tokio::task::spawn_blocking(move || inner.shared.file.check()).await;
            }
        });
    }

    /// Compares the database path with the opened file now (`/health`). One check runs
    /// at a time; a caller that waited for another's check uses its verdict when that
    /// check started after the caller asked (it is as fresh as one of its own). Without
    /// this, a burst of probes took a blocking thread each, and the pool grew to its cap.
    async fn check_file(&self) -> StoreResult<()> {
        let asked = std::time::Instant::now();
        let mut last_started = self.inner.file_probe.lock().await;
        if last_started.is_some_and(|started| started >= asked) {
            return self.inner.shared.file.last();
        }
        *last_started = Some(std::time::Instant::now());
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.shared.file.check())
            .await
            .unwrap_or_else(|join| Err(panicked(join)))
    }

    /// The choke point: every store call, timed and recorded by its operation name.
    async fn run<T, F>(&self, access: Access, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        match access {
            Access::Read => self.observed::<F, _>(false, self.run_read(f)).await,
            Access::Write => self.observed::<F, _>(true, self.run_write(f)).await,
        }
    }

    /// Times `work`, a call through closure type `F` (which names the store method, see
    /// metrics.rs), and records it.
    async fn observed<F, T>(
        &self,
        write: bool,
        work: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let (operation, _) = crate::metrics::sqlite_operation(std::any::type_name::<F>());
        let started = std::time::Instant::now();
        let result = work.await;
        self.observer
            .record(operation, write, started.elapsed(), result.as_ref().err());
        result
    }

    /// `work`, a read, abandoned at the store timeout (harmless for a read).
    async fn within_timeout<T>(
        &self,
        work: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(anyhow::anyhow!(
                    "SQLite did not answer a read within {:?}",
                    self.timeout
                )))
            })
    }

    /// A read: waits (asynchronously) for an idle read connection, then runs; abandoned
    /// at the store timeout, which is harmless for a read.
    async fn run_read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.shared.file.last()?;
        self.within_timeout(async {
            ReadLease::wait(Arc::clone(&self.inner))
                .await?
                .on_blocking_thread(f)
                .await
        })
        .await
    }

    /// A write: queued for the writer thread (waiting asynchronously, holding no thread)
    /// until the start deadline, and never run if it was not started by then. Once
    /// started it runs to the end whatever happens to the caller, and the caller hears
    /// how it ended: SQLite's busy timeout bounds its group's wait for another process's
    /// lock.
    async fn run_write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let start_within = self.timeout.saturating_sub(busy_timeout(self.timeout));
        self.inner.writer.submit(start_within, f).await
    }

    /// Runs `f` on one of the read connections.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.run(Access::Read, move |conn| f(conn).map_err(map_err))
            .await
    }

    /// Runs `f`, a read of a few rows by key, on one of the read connections right on
    /// the calling async worker, instead of handing it to a blocking thread and back.
    ///
    /// Why: the hand-off costs two thread wake-ups per read, and on a machine whose CPUs
    /// are also hashing passwords (a login flood: the hashing threads use every idle
    /// cycle) each wake-up has to take a CPU from a hashing thread, which on the 2-core
    /// VM about doubled the slowdown of other users' p99 (README, "Performance", third
    /// pass). Only reads bounded by a key belong here (the caller of
    /// every authenticated request, a user, a session, a refresh token, one record): a
    /// few index lookups on pages that are in memory, tens of microseconds.
    ///
    /// A worker must never wait for a lock, so the attempt runs with SQLite's busy
    /// timeout at zero; if another connection or process holds a lock that blocks it
    /// (WAL recovery, an exclusive lock taken by a tool), the read runs again on a
    /// blocking thread with the usual busy timeout, as [`Self::read`] does.
    async fn quick_read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + Sync + 'static,
    {
        self.observed::<F, _>(false, self.within_timeout(self.run_quick(f)))
            .await
    }

    async fn run_quick<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + Sync + 'static,
    {
        self.inner.shared.file.last()?;
        let mut lease = ReadLease::wait(Arc::clone(&self.inner)).await?;
        let conn = lease.conn()?;
        let first = {
            let _no_wait = NoWait::new(conn, busy_timeout(self.timeout)).map_err(map_err)?;
            // A panic becomes the store error it was on a blocking thread (logged, counted,
            // and a background task that read gets an `Err` instead of dying).
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
                .map_err(|_| StoreError::Other(anyhow::anyhow!("SQLite read panicked")))?
        };
        match first {
            Err(rusqlite::Error::SqliteFailure(failure, _))
                if matches!(
                    failure.code,
                    rusqlite::ffi::ErrorCode::DatabaseBusy
                        | rusqlite::ffi::ErrorCode::DatabaseLocked
                ) => {}
            done => return done.map_err(map_err),
        }
        lease
            .on_blocking_thread(move |conn| f(conn).map_err(map_err))
            .await
    }

    /// Runs `f` on the single write connection.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.run(Access::Write, move |conn| f(conn).map_err(map_err))
            .await
    }

    /// Clean shutdown: refuses further writes, waits for the one in progress, and moves
    /// everything from the WAL into the database file (`wal_checkpoint(TRUNCATE)`), so
    /// that the `.db` file alone is complete once the service has stopped.
    pub async fn close(&self) -> StoreResult<()> {
        self.inner.shared.closed.store(true, Ordering::SeqCst);
        let path = self.inner.shared.file.path.clone();
        let checkpoint = self
            .inner
            .writer
            .alone(self.timeout, move |conn| -> StoreResult<()> {
                let (busy, frames, moved): (i64, i64, i64) = conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .map_err(map_err)?;
                if busy != 0 {
                    return Err(StoreError::Unavailable(anyhow::anyhow!(
                        "the final checkpoint of {} was blocked by another connection \
                         ({moved} of {frames} WAL frames moved); the -wal file still holds the rest",
                        path.display()
                    )));
                }
                tracing::info!(path = %path.display(), "SQLite checkpointed: the database file is complete");
                Ok(())
            })
            .await?;
        checkpoint.unwrap_or_else(|| {
            Err(StoreError::Unavailable(anyhow::anyhow!(
                "the SQLite writer stayed busy at shutdown; the WAL was not checkpointed"
            )))
        })
    }
}

fn panicked(join: tokio::task::JoinError) -> StoreError {
    StoreError::Other(anyhow::Error::new(join).context("SQLite task panicked"))
}

/// What [`backup`] copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub schema_version: usize,
    pub users: i64,
    pub battery_events: i64,
    pub bytes: u64,
}

/// Copies the database at `source` to `target` with SQLite's online backup API: one
/// consistent snapshot even while a server writes (a WAL reader blocks no writer). The
/// copy is written next to `target` (mode 0600), checked (`quick_check`), made a
/// self-contained file (rollback journal, no `-wal` needed), synced, and only then
/// renamed over `target`, so `target` is never a half-written file.
pub fn backup(source: &Path, target: &Path) -> anyhow::Result<BackupReport> {
    if !source.exists() {
        return Err(MissingDatabase {
            path: source.to_path_buf(),
            problem: "does not exist",
        }
        .into());
    }
    let name = target
        .file_name()
        .context("--to must name a file")?
        .to_string_lossy();
    let folder = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    anyhow::ensure!(
        folder.is_dir(),
        "the folder {} does not exist",
        folder.display()
    );
    let partial = folder.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_file(&partial);
    let result = (|| -> anyhow::Result<BackupReport> {
        let src = Connection::open_with_flags(
            source,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("Failed to open {}", source.display()))?;
        src.busy_timeout(Duration::from_secs(30))?;
        create_private_file(&partial)?;
        let mut dst = Connection::open(&partial)
            .with_context(|| format!("Failed to open {}", partial.display()))?;
        {
            // All pages in one step: one read transaction, so one consistent snapshot
            // (smaller steps restart whenever the server writes in between).
            use rusqlite::backup::StepResult;
            let copy = rusqlite::backup::Backup::new(&src, &mut dst)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                match copy.step(-1).context("SQLite backup failed")? {
                    StepResult::Done => break,
                    // More, Busy (another connection holds a lock), Locked: again.
                    _ => {
                        anyhow::ensure!(
                            std::time::Instant::now() < deadline,
                            "the database stayed locked for a minute; nothing was copied"
                        );
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
        let check: String = dst.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
        anyhow::ensure!(
            check == "ok",
            "the copy fails SQLite's quick_check: {check}"
        );
        let mode: String = dst.query_row("PRAGMA journal_mode = DELETE", [], |row| row.get(0))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("delete"),
            "the copy stayed in {mode} mode"
        );
        let (schema_version, _) = schema_of(&dst)?;
        let count = |table: &str| -> rusqlite::Result<i64> {
            dst.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })
        };
        let (users, battery_events) = (count("users")?, count("battery_events")?);
        drop(dst);
        std::fs::File::open(&partial)?.sync_all()?;
        Ok(BackupReport {
            schema_version,
            users,
            battery_events,
            bytes: std::fs::metadata(&partial)?.len(),
        })
    })();
    match result {
        Ok(report) => {
            std::fs::rename(&partial, target)
                .with_context(|| format!("Failed to move the copy to {}", target.display()))?;
            if let Ok(dir) = std::fs::File::open(folder) {
                let _ = dir.sync_all();
            }
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// What `introgy check` says about a SQLite database, found without changing anything:
/// no file, folder, `-wal`/`-shm` or schema is created and no migration runs. `Err` is a
/// problem (missing, empty, unreadable, newer than this binary).
pub fn inspect(path: &Path) -> Result<String, String> {
    if !path.exists() {
        return Err(format!(
            "{} does not exist (`introgy init` creates it; if it held data, restore a backup)",
            path.display()
        ));
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    // Without a -wal file the database file is the whole database: read it as an
    // immutable file, which creates nothing. With one (a server runs, or stopped
    // uncleanly), read through it as SQLite would; the files already exist.
    let immutable = if Path::new(&wal).exists() {
        ""
    } else {
        "&immutable=1"
    };
    let escaped = path
        .to_string_lossy()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23");
    let conn = Connection::open_with_flags(
        format!("file:{escaped}?mode=ro{immutable}"),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("{} cannot be opened: {e}", path.display()))?;
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let (version, objects) =
        schema_of(&conn).map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    let known = MIGRATIONS.len();
    if (version, objects) == (0, 0) {
        Err(format!(
            "{} is empty, not an Introgy database (`introgy init` creates the schema)",
            path.display()
        ))
    } else if version > known {
        Err(format!(
            "{} has schema version {version}, newer than this binary knows ({known}); upgrade introgy",
            path.display()
        ))
    } else if version < known {
        Ok(format!(
            "schema version {version} of {known}: {} migration(s) will run when `introgy serve` starts (not run by check)",
            known - version
        ))
    } else {
        Ok(format!("schema version {version} (current)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("quick.db"), Duration::from_secs(4))
            .await
            .unwrap();
        (dir, store)
    }

    fn busy_ms(conn: &Connection) -> rusqlite::Result<i64> {
        conn.query_row("PRAGMA busy_timeout", [], |row| row.get(0))
    }

    /// Where each call of a read ran, and the busy timeout it ran with.
    type Calls = Arc<Mutex<Vec<(std::thread::ThreadId, i64)>>>;

    /// Notes a call in `calls`; returns how many there have been.
    fn note(calls: &Calls, conn: &Connection) -> rusqlite::Result<usize> {
        let mut calls = lock(calls);
        calls.push((std::thread::current().id(), busy_ms(conn)?));
        Ok(calls.len())
    }

    #[tokio::test]
    async fn a_quick_read_runs_on_the_worker_without_waiting_for_locks() {
        let (_dir, store) = store().await;
        let calls = Calls::default();
        let seen = Arc::clone(&calls);
        let answer = store
            .quick_read(move |conn| note(&seen, conn).map(|_| 7))
            .await
            .unwrap();
        assert_eq!(answer, 7);
        assert_eq!(*lock(&calls), [(std::thread::current().id(), 0)]);
        // The connection went back with the usual busy timeout (half the store timeout).
        let busy = store.read(busy_ms).await.unwrap();
        assert_eq!(busy, 2000);
    }

    #[tokio::test]
    async fn a_quick_read_that_finds_the_file_busy_runs_again_on_a_blocking_thread() {
        let (_dir, store) = store().await;
        let calls = Calls::default();
        let seen = Arc::clone(&calls);
        let answer = store
            .quick_read(move |conn| {
                if note(&seen, conn)? == 1 {
                    return Err(rusqlite::Error::SqliteFailure(
                        ffi::Error::new(ffi::SQLITE_BUSY),
                        None,
                    ));
                }
                Ok(7)
            })
            .await
            .unwrap();
        assert_eq!(answer, 7);
        let calls = lock(&calls).clone();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[0], (std::thread::current().id(), 0));
        assert_ne!(
            calls[1].0,
            std::thread::current().id(),
            "the retry left the worker"
        );
        assert_eq!(calls[1].1, 2000, "the retry waits for locks as a read does");
    }

    #[tokio::test]
    async fn a_quick_read_that_panics_is_a_store_error_and_its_connection_is_as_it_was() {
        let (_dir, store) = store().await;
        let answer = store
            .quick_read(|_: &Connection| -> rusqlite::Result<()> { panic!("a bug") })
            .await;
        assert!(matches!(answer, Err(StoreError::Other(_))), "{answer:?}");
        // The pool hands connections out last in, first out: this is the same one.
        assert_eq!(store.read(busy_ms).await.unwrap(), 2000);
    }

    #[tokio::test]
    async fn a_quick_read_that_fails_otherwise_is_not_run_again() {
        let (_dir, store) = store().await;
        let calls = Calls::default();
        let seen = Arc::clone(&calls);
        let answer = store
            .quick_read(move |conn| -> rusqlite::Result<i64> {
                note(&seen, conn)?;
                conn.query_row("SELECT no_such_column FROM users", [], |row| row.get(0))
            })
            .await;
        assert!(matches!(answer, Err(StoreError::Other(_))), "{answer:?}");
        assert_eq!(lock(&calls).len(), 1);
        assert_eq!(store.read(busy_ms).await.unwrap(), 2000);
    }
}
