//! bcrypt hashing off the async workers, with a bound on how many hashes run at once.
//!
//! Cost 12 takes ~250 ms of one core; running it on a tokio worker would stall every
//! other request on that worker, and a login flood would starve everything else. Hashes
//! therefore run on their own threads (`HASH_CONCURRENCY` of them, default: the CPUs),
//! behind a semaphore, at idle priority (`SCHED_IDLE` on Linux): logins use every idle
//! cycle, and a thread of any other request that wakes takes the CPU from them at once
//! (at nice 10, as before, it could wait out a hashing thread's time slice). Measured
//! from outside on the 2-core VM, other users' p99 under a login flood did not differ
//! measurably between the two. What did matter is how many thread wake-ups a request
//! needs: each takes a CPU from a hashing thread, which costs a virtual machine more than
//! waking an idle CPU, so reads by key now run on the async worker instead of a
//! blocking thread (`SqliteStore::quick_read`; README, "Performance", third pass).
//!
//! Idle priority alone could starve logins on a machine that other work keeps busy. So
//! a hash that has not finished 32 times the fastest hash of its cost after it was
//! handed over (timed per round, so hashes of other costs count; before any, a guess;
//! between [`RESCUE_FLOOR`] and [`RESCUE_CAP`]) also runs on one rescue thread at normal
//! scheduling class, nice 10. The first answer wins, and a copy that has not started
//! yet is skipped. (A thread cannot leave `SCHED_IDLE` again without `CAP_SYS_NICE`,
//! hence a thread of its own.)

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{oneshot, OnceCell, Semaphore};

use crate::domain::Password;

type Job = Box<dyn FnOnce() + Send>;

/// A hash still running after this many times the fastest hash of its cost is rescued.
/// The rescue is for starvation, not for a busy server: under a login flood against
/// saturating reads (`bench/wrk.py --only flood`) idle-priority hashes take ~10 times
/// their quiet time. At a factor of 10, 3–5 hashes per flood were rescued, running at
/// nice 10 beside the reads again; at 32, none were.
const RESCUE_FACTOR: u64 = 32;

/// The latest a hash is rescued, whatever the cost: well inside the 30 s default
/// `REQUEST_TIMEOUT_SECONDS`.
const RESCUE_CAP: Duration = Duration::from_secs(10);

/// The least time a hash waits before the rescue thread runs it too.
const RESCUE_FLOOR: Duration = Duration::from_millis(10);

/// Until a hash has been timed, its time is guessed as 2^cost × this: ~120 ms at cost
/// 12, half of what one core of the 2-core reference machine takes, so a guess errs
/// towards an early rescue rather than a late one.
const GUESS_NS_PER_ROUND: u64 = 30_000;

/// Scheduling of a hashing thread.
#[derive(Clone, Copy)]
enum Priority {
    /// Runs only on a CPU nothing else wants.
    Idle,
    /// The rescue thread: normal class, nice 10.
    Rescue,
}

/// Lowers the calling thread's priority (Linux applies these per thread).
fn lower_priority(priority: Priority) {
    #[cfg(target_os = "linux")]
    // SAFETY: neither call has memory effects; `who = 0`/`pid = 0` is the calling thread,
    // and `param` outlives the call.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
        if let Priority::Idle = priority {
            let param = libc::sched_param { sched_priority: 0 };
            if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                tracing::warn!(
                    error = %std::io::Error::last_os_error(),
                    "cannot run the hashing threads at idle priority; they run at nice 10"
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = priority;
}

/// Starts `threads` hashing threads at `priority`, fed by one queue.
fn start_pool(threads: usize, priority: Priority, name: &str) -> mpsc::Sender<Job> {
    let (sender, receiver) = mpsc::channel::<Job>();
    let receiver = Arc::new(Mutex::new(receiver));
    for n in 0..threads {
        let receiver = Arc::clone(&receiver);
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-{n}"))
            .spawn(move || {
                lower_priority(priority);
                loop {
                    let job = receiver.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => break,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a hashing thread");
        }
    }
    sender
}

#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    permits: Arc<Semaphore>,
    /// The idle-priority threads, one per permit.
    pool: mpsc::Sender<Job>,
    /// The one normal-class thread for hashes the idle threads did not finish in time.
    rescue: mpsc::Sender<Job>,
    /// The fastest hash so far, in nanoseconds per round (2^cost rounds; at first a guess):
    /// stored hashes of another cost (legacy ones) then time the configured cost right.
    fastest_ns_per_round: Arc<AtomicU64>,
    /// A hash of a random password at the configured cost, verified against when the
    /// account does not exist so that "no such user" costs the same time as "wrong
    /// password" (SECURITY.md 10).
    dummy: Arc<OnceCell<String>>,
    /// What the password-check budgets are about, so tests count it instead of timing.
    verifications: Arc<VerifyCounters>,
}

/// Hashes and verifications run so far (real and dummy), and how many verifications ran
/// at once.
#[derive(Default)]
struct VerifyCounters {
    hashes: AtomicU64,
    total: AtomicU64,
    running: AtomicUsize,
    peak: AtomicUsize,
}

/// One verification in progress, counted until dropped (also when its caller goes away).
struct Running<'a>(&'a VerifyCounters);

impl<'a> Running<'a> {
    fn start(counters: &'a VerifyCounters) -> Self {
        counters.total.fetch_add(1, Ordering::Relaxed);
        let running = counters.running.fetch_add(1, Ordering::SeqCst) + 1;
        counters.peak.fetch_max(running, Ordering::SeqCst);
        Self(counters)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One hash, runnable on either pool; the first copy to finish answers, and a copy that
/// finds the answer given (or the caller gone) does not start.
struct Shared<T, F> {
    work: F,
    answer: Mutex<Option<oneshot::Sender<T>>>,
    /// The hash's cost: it runs 2^cost rounds.
    cost: u32,
    fastest_ns_per_round: Arc<AtomicU64>,
}

impl<T, F: Fn() -> T> Shared<T, F> {
    fn run(&self) {
        let wanted = self
            .answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|sender| !sender.is_closed());
        if !wanted {
            return;
        }
        let started = Instant::now();
        let out = (self.work)();
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.fastest_ns_per_round
            .fetch_min(took >> self.cost.min(63), Ordering::Relaxed);
        if let Some(sender) = self.answer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = sender.send(out);
        }
    }
}

impl PasswordHasher {
    pub fn new(cost: u32, concurrency: usize) -> Self {
        Self {
            cost,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            pool: start_pool(concurrency.max(1), Priority::Idle, "introgy-bcrypt"),
            rescue: start_pool(1, Priority::Rescue, "introgy-bcrypt-rescue"),
            fastest_ns_per_round: Arc::new(AtomicU64::new(GUESS_NS_PER_ROUND)),
            dummy: Arc::new(OnceCell::new()),
            verifications: Arc::default(),
        }
    }

    /// How long a hash of `cost` may take on the idle threads before the rescue thread
    /// runs it too.
    fn rescue_after(&self, cost: u32) -> Duration {
        let per_round = self.fastest_ns_per_round.load(Ordering::Relaxed);
        let rounds = 1u64.checked_shl(cost).unwrap_or(u64::MAX);
        Duration::from_nanos(
            per_round
                .saturating_mul(rounds)
                .saturating_mul(RESCUE_FACTOR),
        )
        .clamp(RESCUE_FLOOR, RESCUE_CAP)
    }

    /// Runs `f`, a hash of `cost`, on the hashing threads (see the module's comment).
    async fn blocking<T, F>(&self, cost: u32, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: Fn() -> T + Send + Sync + 'static,
    {
        let waiting = crate::metrics::metrics().hash_waiting();
        let _permit = self
            .permits
            .acquire()
            .await
            .context("Failed to acquire a hashing permit")?;
        drop(waiting);
        let _running = crate::metrics::metrics().hash_running();
        let (done, mut result) = oneshot::channel();
        let shared = Arc::new(Shared {
            work: f,
            answer: Mutex::new(Some(done)),
            cost,
            fastest_ns_per_round: Arc::clone(&self.fastest_ns_per_round),
        });
        let idle = Arc::clone(&shared);
        self.pool
            .send(Box::new(move || idle.run()))
            .map_err(|_| anyhow::anyhow!("the hashing threads are gone"))?;
        tokio::select! {
            answer = &mut result => return answer.context("A hashing thread stopped"),
            () = tokio::time::sleep(self.rescue_after(cost)) => {}
        }
        crate::metrics::metrics().hash_rescued();
        tracing::debug!(
            "a hash got no CPU at idle priority in time; the rescue thread runs it too"
        );
        self.rescue
            .send(Box::new(move || shared.run()))
            .map_err(|_| anyhow::anyhow!("the rescue hashing thread is gone"))?;
        result.await.context("A hashing thread stopped")
    }

    /// Hashes a password that passed the policy (so at most 72 bytes, all of which bcrypt
    /// uses); the result is `$2b$<cost>$...`.
    pub async fn hash(&self, password: &Password) -> anyhow::Result<String> {
        let (plain, cost) = (password.expose().to_owned(), self.cost);
        self.verifications.hashes.fetch_add(1, Ordering::Relaxed);
        self.blocking(cost, move || bcrypt::hash(&plain, cost))
            .await?
            .context("Failed to hash a password")
    }

    /// Checks a candidate against a stored hash. Hashes made by passlib (`$2b$`, `$2a$`)
    /// verify. A candidate over 72 bytes never matches (bcrypt would truncate it).
    pub async fn verify(&self, candidate: &str, hash: &str) -> anyhow::Result<bool> {
        // bcrypt reads at most 72 bytes; a longer candidate would match on its prefix.
        let overlong = candidate.len() > crate::domain::MAX_PASSWORD_BYTES;
        // The stored hash's own cost (legacy hashes may differ); bcrypt refuses a
        // malformed one anyway.
        let cost = hash
            .parse::<bcrypt::HashParts>()
            .map_or(self.cost, |parts| parts.get_cost());
        let (candidate, hash) = (candidate.to_owned(), hash.to_owned());
        // Counted per verification, not per thread run: a rescued one runs twice.
        let _running = Running::start(&self.verifications);
        let outcome = self
            .blocking(cost, move || bcrypt::verify(&candidate, &hash))
            .await?;
        Ok(!overlong && outcome.unwrap_or(false))
    }

    /// How many passwords this hasher has hashed (the dummy hash aside).
    pub fn hashes(&self) -> u64 {
        self.verifications.hashes.load(Ordering::Relaxed)
    }

    /// How many verifications (real and dummy) this hasher has run.
    pub fn verifications(&self) -> u64 {
        self.verifications.total.load(Ordering::Relaxed)
    }

    /// The most verifications that have run at the same moment so far.
    pub fn peak_concurrent_verifications(&self) -> usize {
        self.verifications.peak.load(Ordering::SeqCst)
    }

    /// Spends the time of one verification when there is no user, then answers `false`.
    pub async fn verify_dummy(&self, candidate: &str) -> anyhow::Result<bool> {
        let dummy = self.dummy_hash().await?;
        self.verify(candidate, &dummy).await?;
        Ok(false)
    }

    /// The dummy hash, computed once (also called at start-up, in the background).
    pub async fn dummy_hash(&self) -> anyhow::Result<String> {
        let hash = self
            .dummy
            .get_or_try_init(|| async {
                let random = crate::auth::random_token(24);
                let cost = self.cost;
                self.blocking(cost, move || bcrypt::hash(&random, cost))
                    .await?
                    .context("Failed to compute the dummy hash")
            })
            .await?;
        Ok(hash.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash made by passlib's `bcrypt.hash("correct horse battery staple", rounds=12)`.
    const PASSLIB_HASH: &str = "$2b$12$rvehJXvoFwQr0usN5/URn.wnKeC5/85Ye1LjiIHDwdqKew9fhEX72";

    #[tokio::test]
    async fn hashes_are_bcrypt_2b_with_the_configured_cost() {
        let hasher = PasswordHasher::new(12, 2);
        let password = Password::parse("correct horse battery", "password").unwrap();
        let hash = hasher.hash(&password).await.unwrap();
        assert!(hash.starts_with("$2b$12$"), "{hash}");
        assert!(hasher.verify("correct horse battery", &hash).await.unwrap());
        assert!(!hasher.verify("correct horse batterY", &hash).await.unwrap());
    }

    #[tokio::test]
    async fn passlib_hashes_verify() {
        let hasher = PasswordHasher::new(4, 1);
        assert!(hasher
            .verify("correct horse battery staple", PASSLIB_HASH)
            .await
            .unwrap());
        assert!(!hasher
            .verify("wrong horse battery staple", PASSLIB_HASH)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn overlong_candidates_never_match() {
        let hasher = PasswordHasher::new(4, 1);
        let long = "a".repeat(72);
        let hash = hasher
            .hash(&Password::parse(&long, "p").unwrap())
            .await
            .unwrap();
        assert!(hasher.verify(&long, &hash).await.unwrap());
        assert!(!hasher.verify(&format!("{long}b"), &hash).await.unwrap());
    }

    /// Occupies the idle-priority thread of a one-thread hasher until the sender drops.
    fn stall_idle_thread(hasher: &PasswordHasher) -> std::sync::mpsc::Sender<()> {
        let (release, stalled) = std::sync::mpsc::channel::<()>();
        hasher
            .pool
            .send(Box::new(move || {
                let _ = stalled.recv();
            }))
            .unwrap();
        release
    }

    #[tokio::test]
    async fn a_hash_the_idle_thread_cannot_run_is_run_by_the_rescue_thread_once() {
        let hasher = PasswordHasher::new(4, 1);
        let release = stall_idle_thread(&hasher);
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            hasher.blocking(4, move || counted.fetch_add(1, Ordering::SeqCst) + 1),
        )
        .await
        .expect("the rescue thread did not answer while the idle thread was busy")
        .unwrap();
        assert_eq!(answer, 1);
        // The copy queued on the idle thread finds the answer given and does not run.
        drop(release);
        hasher.blocking(4, || 0).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // A real hash too, then its verification.
        let release = stall_idle_thread(&hasher);
        let password = Password::parse("correct horse battery", "password").unwrap();
        let hash = hasher.hash(&password).await.unwrap();
        assert!(hasher.verify("correct horse battery", &hash).await.unwrap());
        drop(release);
    }

    #[tokio::test]
    async fn the_rescue_waits_32_times_the_fastest_hash_of_its_cost_at_most_ten_seconds() {
        let hasher = PasswordHasher::new(12, 1);
        // Before any hash: a guess (32 × 4096 rounds × 30 µs).
        assert_eq!(
            hasher.rescue_after(12),
            Duration::from_micros(32 * 4096 * 30)
        );
        assert_eq!(hasher.rescue_after(16), RESCUE_CAP);
        assert_eq!(hasher.rescue_after(4), Duration::from_micros(32 * 16 * 30));
        assert_eq!(hasher.rescue_after(1), RESCUE_FLOOR);
        // A 30 ms hash of cost 10 (1,024 rounds) times cost 12 at 120 ms: rescue at 3.84 s.
        hasher
            .fastest_ns_per_round
            .store(u64::MAX, Ordering::Relaxed);
        let pause = Duration::from_millis(30);
        hasher
            .blocking(10, move || std::thread::sleep(pause))
            .await
            .unwrap();
        let after = hasher.rescue_after(12);
        assert!(
            after >= 32 * 4 * pause && after < 32 * 4 * 2 * pause,
            "{after:?}"
        );
        // A slower one does not raise it.
        hasher
            .blocking(10, || std::thread::sleep(Duration::from_millis(90)))
            .await
            .unwrap();
        assert_eq!(hasher.rescue_after(12), after);
    }

    #[tokio::test]
    async fn dummy_verification_is_always_false() {
        let hasher = PasswordHasher::new(4, 1);
        assert!(!hasher.verify_dummy("anything at all").await.unwrap());
    }
}
