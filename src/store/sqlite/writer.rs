//! The one SQLite write connection, owned by a dedicated thread that commits in groups.
//!
//! Callers queue jobs ([`Writer::submit`]); the thread takes everything waiting (up to
//! [`MAX_BATCH`]), opens one `BEGIN IMMEDIATE` transaction, runs each job inside its own
//! `SAVEPOINT` (released when the job succeeds, rolled back when it fails or panics, so one
//! job's error never undoes another's work), then `COMMIT`s once and only then answers
//! every caller. If the group cannot begin or commit, every job in it hears the error and
//! none of them was applied. Jobs run in queue order, so the serial order of writes is
//! the order they reached the writer, as with one transaction per write.
//!
//! Why: one write per transaction paid, for every record, the lock round trip, a WAL
//! commit of the same few hot pages (a user's row, its running totals) and a hand-off to
//! the blocking pool; grouped, those costs are shared by every write that arrived while
//! the previous group ran. Durability is unchanged: an answered write was committed
//! (`synchronous = NORMAL` in WAL mode: it is in the WAL file and survives `kill -9` of
//! the process; see docs/decisions.md).
//!
//! A job is claimed when the thread takes it from the queue; a caller that stopped
//! waiting first (start deadline, or its future was dropped) marks it abandoned and it is
//! skipped, never run later.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::{map_err, FileWatch};
use crate::store::{StoreError, StoreResult};

/// At most this many jobs share one transaction: bounds how long the first caller of a
/// group waits for the last one's work (each job is a few statements).
pub(super) const MAX_BATCH: usize = 64;

const PENDING: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

/// What the writer thread shares with the store.
pub(super) struct Shared {
    pub(super) file: FileWatch,
    /// Set by `SqliteStore::close`: no more writes after the final checkpoint.
    pub(super) closed: AtomicBool,
    /// Transactions committed by the writer (one per group): tests prove grouping by it.
    pub(super) commits: AtomicU64,
}

impl Shared {
    /// Whether writes may run now (the store is open and its file is the opened one).
    fn ready(&self) -> StoreResult<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(anyhow::anyhow!(
                "the SQLite store is closed (the service is stopping)"
            )));
        }
        self.file.check()
    }
}

/// A queued write, type-erased.
trait Job: Send {
    /// Moves the job from pending to started; `false` if its caller gave up first.
    fn claim(&self) -> bool;
    /// Runs the job on the writer (inside the group's transaction, in its savepoint);
    /// `true` if it succeeded. The outcome is kept until the group commits.
    fn run(&mut self, conn: &mut Connection) -> bool;
    /// Answers the caller: its own outcome, or `group`'s error if the group did not commit.
    fn answer(self: Box<Self>, group: Result<(), &StoreError>);
}

struct Queued<T, F> {
    work: Option<F>,
    state: Arc<AtomicU8>,
    outcome: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for Queued<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
{
    fn claim(&self) -> bool {
        self.state
            .compare_exchange(PENDING, STARTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    fn run(&mut self, conn: &mut Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| work(conn)))
            .unwrap_or_else(|panic| Err(panicked(&*panic)));
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn answer(self: Box<Self>, group: Result<(), &StoreError>) {
        let outcome = match (self.outcome, group) {
            (Some(Err(own)), _) => Err(own),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(group)) => Err(same_error(group)),
            (None, Ok(())) => Err(StoreError::Other(anyhow::anyhow!(
                "the SQLite write was not run"
            ))),
        };
        // The caller may have stopped listening (its request was dropped): nothing to do.
        let _ = self.reply.send(outcome);
    }
}

/// One error for every member of a group that failed as a whole.
fn same_error(err: &StoreError) -> StoreError {
    match err {
        StoreError::Conflict(what) => StoreError::Conflict(what.clone()),
        StoreError::Unavailable(e) => StoreError::Unavailable(anyhow::anyhow!("{e:#}")),
        StoreError::Corrupt { record, id, reason } => StoreError::Corrupt {
            record,
            id: id.clone(),
            reason: reason.clone(),
        },
        StoreError::Other(e) => StoreError::Other(anyhow::anyhow!("{e:#}")),
    }
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> StoreError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    StoreError::Other(anyhow::anyhow!("SQLite write panicked: {message}"))
}

enum Message {
    Job(Box<dyn Job>),
    /// Runs outside any transaction, after everything queued before it (the final
    /// checkpoint).
    Alone(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// Marks a job abandoned if its caller stops waiting before the writer claimed it.
struct AbandonUnlessStarted(Arc<AtomicU8>);

impl AbandonUnlessStarted {
    /// `true` if the job was still pending and now never runs.
    fn abandon(&self) -> bool {
        self.0
            .compare_exchange(PENDING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

impl Drop for AbandonUnlessStarted {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// The handle of the writer thread; dropping it stops the thread (after the group it is
/// running) and closes the connection.
pub(super) struct Writer {
    queue: Option<mpsc::UnboundedSender<Message>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub(super) fn start(conn: Connection, shared: Arc<Shared>) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, jobs, &shared))?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    fn send(&self, message: Message) -> StoreResult<()> {
        self.queue
            .as_ref()
            .and_then(|queue| queue.send(message).ok())
            .ok_or_else(|| {
                StoreError::Unavailable(anyhow::anyhow!("the SQLite writer has stopped"))
            })
    }

    /// Queues `work` and waits for its outcome. If the writer has not claimed it within
    /// `start_within` (or the returned future is dropped first), it never runs; once
    /// claimed, it is waited for to the end.
    pub(super) async fn submit<T, F>(&self, start_within: Duration, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let state = Arc::new(AtomicU8::new(PENDING));
        let (reply, mut outcome) = oneshot::channel();
        self.send(Message::Job(Box::new(Queued {
            work: Some(work),
            state: Arc::clone(&state),
            outcome: None,
            reply,
        })))?;
        let guard = AbandonUnlessStarted(state);
        let answered = match tokio::time::timeout(start_within, &mut outcome).await {
            Ok(answered) => answered,
            Err(_) if guard.abandon() => {
                return Err(StoreError::Unavailable(anyhow::anyhow!(
                    "the SQLite writer stayed busy for {start_within:?}; the write was abandoned before it started"
                )))
            }
            Err(_) => outcome.await,
        };
        answered.unwrap_or_else(|_| {
            Err(StoreError::Other(anyhow::anyhow!(
                "the SQLite writer stopped before answering"
            )))
        })
    }

    /// Runs `work` on the connection outside any transaction once every write queued
    /// before it has been answered; `None` if it did not finish within `within`.
    pub(super) async fn alone<T, F>(&self, within: Duration, work: F) -> StoreResult<Option<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> T + Send + 'static,
    {
        let (reply, outcome) = oneshot::channel();
        self.send(Message::Alone(Box::new(move |conn| {
            let _ = reply.send(work(conn));
        })))?;
        match tokio::time::timeout(within, outcome).await {
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(_)) => Err(StoreError::Other(anyhow::anyhow!(
                "the SQLite writer stopped before answering"
            ))),
            Err(_) => Ok(None),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop; waiting for it means the connection
        // is closed when the store is gone (a reopen finds no other writer).
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

fn writer_loop(mut conn: Connection, mut jobs: mpsc::UnboundedReceiver<Message>, shared: &Shared) {
    while let Some(first) = jobs.blocking_recv() {
        let mut group: Vec<Box<dyn Job>> = Vec::new();
        let mut after = None;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                // A caller that gave up is skipped: its job never runs.
                Message::Job(job) => {
                    if job.claim() {
                        group.push(job);
                    }
                }
                Message::Alone(work) => {
                    after = Some(work);
                    break;
                }
            }
            if group.len() < MAX_BATCH {
                next = jobs.try_recv().ok();
            }
        }
        if !group.is_empty() {
            run_group(&mut conn, shared, group);
        }
        if let Some(work) = after {
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| work(&mut conn))) {
                tracing::error!(error = %panicked(&*panic), "SQLite writer task panicked");
            }
        }
    }
}

/// One transaction for `group`; every job answered after the outcome of its `COMMIT`.
fn run_group(conn: &mut Connection, shared: &Shared, mut group: Vec<Box<dyn Job>>) {
    let statement = |conn: &Connection, sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .map_err(map_err)
    };
    let mut outcome = shared
        .ready()
        .and_then(|()| statement(conn, "BEGIN IMMEDIATE"));
    if outcome.is_ok() {
        for job in &mut group {
            let step = statement(conn, "SAVEPOINT job").and_then(|()| {
                if job.run(conn) {
                    statement(conn, "RELEASE job")
                } else {
                    statement(conn, "ROLLBACK TO job").and_then(|()| statement(conn, "RELEASE job"))
                }
            });
            if let Err(e) = step {
                outcome = Err(e);
                break;
            }
        }
        if outcome.is_ok() {
            outcome = statement(conn, "COMMIT");
        }
        if outcome.is_err() && !conn.is_autocommit() {
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "SQLite writer could not roll back a failed group");
            }
        }
        if outcome.is_ok() {
            shared.commits.fetch_add(1, Ordering::Relaxed);
        }
    }
    for job in group {
        job.answer(outcome.as_ref().map(|_| ()));
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use crate::store::sqlite::SqliteStore;
    use crate::store::{StoreError, StoreResult};

    async fn store(timeout: Duration) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("writer.db"), timeout)
            .await
            .unwrap();
        store
            .write(|conn| conn.execute_batch("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
            .await
            .unwrap();
        (dir, store)
    }

    /// Keeps the writer thread busy in a job of its own until `release` is sent (or
    /// dropped): whatever is queued meanwhile waits for the next group.
    async fn hold_writer(
        store: &SqliteStore,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<StoreResult<()>>,
    ) {
        let (running, is_running) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = store.clone();
        let held = tokio::spawn(async move {
            holder
                .write(move |_| {
                    let _ = running.send(());
                    let _ = released.recv_timeout(Duration::from_secs(30));
                    Ok(())
                })
                .await
        });
        tokio::time::timeout(Duration::from_secs(10), is_running)
            .await
            .expect("the holding job did not start")
            .unwrap();
        (release, held)
    }

    async fn rows(store: &SqliteStore) -> Vec<i64> {
        store
            .read(|conn| {
                conn.prepare("SELECT x FROM t ORDER BY x")?
                    .query_map([], |row| row.get(0))?
                    .collect()
            })
            .await
            .unwrap()
    }

    type Pending = Pin<Box<dyn Future<Output = StoreResult<()>> + Send>>;

    fn insert(store: &SqliteStore, values: &'static [i64]) -> Pending {
        let store = store.clone();
        Box::pin(async move {
            store
                .write(move |conn| {
                    for x in values {
                        conn.execute("INSERT INTO t (x) VALUES (?1)", [x])?;
                    }
                    Ok(())
                })
                .await
        })
    }

    /// Polls `write` once: it is queued, and waits.
    async fn queue(mut write: Pending) -> Pending {
        assert!(futures::poll!(write.as_mut()).is_pending());
        write
    }

    #[tokio::test]
    async fn writes_queued_together_commit_once_and_a_failing_one_undoes_only_itself() {
        let (_dir, store) = store(Duration::from_secs(10)).await;
        let (release, held) = hold_writer(&store).await;
        let commits = store.inner.shared.commits.load(Ordering::SeqCst);

        let first = queue(insert(&store, &[1])).await;
        // Writes its own row, then fails on a row of the job before it (same group).
        let duplicate = queue(insert(&store, &[100, 1])).await;
        let panics = queue({
            let store = store.clone();
            Box::pin(async move {
                store
                    .write(|conn| {
                        conn.execute("INSERT INTO t (x) VALUES (200)", [])?;
                        panic!("a job that panics half-way");
                    })
                    .await
            })
        })
        .await;
        let abandoned = queue(insert(&store, &[300])).await;
        let last = queue(insert(&store, &[2, 3])).await;
        // Its caller goes away before the writer took it: it must never run.
        drop(abandoned);

        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        first.await.unwrap();
        assert!(matches!(duplicate.await, Err(StoreError::Conflict(_))));
        assert!(matches!(panics.await, Err(StoreError::Other(_))));
        last.await.unwrap();

        assert_eq!(rows(&store).await, [1, 2, 3]);
        assert_eq!(
            store.inner.shared.commits.load(Ordering::SeqCst) - commits,
            2,
            "the holding job's commit, then one commit for everything queued behind it"
        );
        // The writer goes on after a panic.
        insert(&store, &[4]).await.unwrap();
        assert_eq!(rows(&store).await, [1, 2, 3, 4]);
    }

    /// A write closure runs inside its group's transaction: `BEGIN` there fails ("cannot
    /// start a transaction within a transaction"), so aggregates open a savepoint.
    #[test]
    fn write_closures_open_savepoints_not_transactions() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/sqlite");
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            // mod.rs migrates on the connection before the writer thread owns it; this
            // file opens the groups.
            if path
                .file_name()
                .is_some_and(|name| name == "mod.rs" || name == "writer.rs")
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for needle in [".transaction(", ".transaction_with_behavior(", "\"BEGIN"] {
                assert!(
                    !text.contains(needle),
                    "{} calls {needle}: use `conn.savepoint()` (writes run inside the \
                     writer's group transaction)",
                    path.display()
                );
            }
        }
    }

    #[tokio::test]
    async fn a_write_not_started_by_its_deadline_answers_unavailable_and_never_runs() {
        // Start deadline: half of one second.
        let (_dir, store) = store(Duration::from_secs(1)).await;
        let (release, held) = hold_writer(&store).await;
        let late = insert(&store, &[7]).await;
        assert!(matches!(late, Err(StoreError::Unavailable(_))), "{late:?}");
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        insert(&store, &[8]).await.unwrap();
        assert_eq!(rows(&store).await, [8]);
    }

    #[tokio::test]
    async fn close_waits_for_the_running_write_then_checkpoints_and_refuses_the_rest() {
        let (_dir, store) = store(Duration::from_secs(10)).await;
        insert(&store, &[1]).await.unwrap();
        let (release, held) = hold_writer(&store).await;
        let mut closing = Box::pin(store.close());
        assert!(
            futures::poll!(closing.as_mut()).is_pending(),
            "close did not wait for the running write"
        );
        // Queued behind the running job, after close began: refused, never applied.
        let refused = queue(insert(&store, &[2])).await;
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        closing.await.unwrap();
        assert!(matches!(refused.await, Err(StoreError::Unavailable(_))));
        assert_eq!(rows(&store).await, [1]);
    }
}
