//! bcrypt hashing off the async workers, with a bound on how many hashes run at once.
//!
//! Cost 12 takes ~200 ms of one core; running it on a tokio worker would stall every
//! other request on that worker, and a login flood would starve everything else. Hashes
//! therefore run on their own threads (`HASH_CONCURRENCY` of them, default: the CPUs),
//! behind a semaphore, and those threads run at a lower scheduling priority (nice 10 on
//! Linux): logins use every idle cycle, but other users' requests win the CPU when both
//! want it (`cargo bench --bench auth` measures both).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::{oneshot, OnceCell, Semaphore};

use crate::domain::Password;

type Job = Box<dyn FnOnce() + Send>;

/// Lowers the calling thread's priority (Linux applies `setpriority` per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory effects; `who = 0` is the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Starts `threads` low-priority hashing threads fed by one queue.
fn start_pool(threads: usize) -> mpsc::Sender<Job> {
    let (sender, receiver) = mpsc::channel::<Job>();
    let receiver = Arc::new(Mutex::new(receiver));
    for n in 0..threads {
        let receiver = Arc::clone(&receiver);
        let spawned = std::thread::Builder::new()
            .name(format!("introgy-bcrypt-{n}"))
            .spawn(move || {
                lower_priority();
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
    pool: mpsc::Sender<Job>,
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

impl PasswordHasher {
    pub fn new(cost: u32, concurrency: usize) -> Self {
        Self {
            cost,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            pool: start_pool(concurrency.max(1)),
            dummy: Arc::new(OnceCell::new()),
            verifications: Arc::default(),
        }
    }

    async fn blocking<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let waiting = crate::metrics::metrics().hash_waiting();
        let _permit = self
            .permits
            .acquire()
            .await
            .context("Failed to acquire a hashing permit")?;
        drop(waiting);
        let _running = crate::metrics::metrics().hash_running();
        let (done, result) = oneshot::channel();
        self.pool
            .send(Box::new(move || {
                let _ = done.send(f());
            }))
            .map_err(|_| anyhow::anyhow!("the hashing threads are gone"))?;
        result.await.context("A hashing thread stopped")
    }

    /// Hashes a password that passed the policy (so at most 72 bytes, all of which bcrypt
    /// uses); the result is `$2b$<cost>$...`.
    pub async fn hash(&self, password: &Password) -> anyhow::Result<String> {
        let (plain, cost) = (password.expose().to_owned(), self.cost);
        self.verifications.hashes.fetch_add(1, Ordering::Relaxed);
        self.blocking(move || bcrypt::hash(plain, cost))
            .await?
            .context("Failed to hash a password")
    }

    /// Checks a candidate against a stored hash. Hashes made by passlib (`$2b$`, `$2a$`)
    /// verify. A candidate over 72 bytes never matches (bcrypt would truncate it).
    pub async fn verify(&self, candidate: &str, hash: &str) -> anyhow::Result<bool> {
        // bcrypt reads at most 72 bytes; a longer candidate would match on its prefix.
        let overlong = candidate.len() > crate::domain::MAX_PASSWORD_BYTES;
        let (candidate, hash) = (candidate.to_owned(), hash.to_owned());
        let counters = Arc::clone(&self.verifications);
        let outcome = self
            .blocking(move || {
                counters.total.fetch_add(1, Ordering::Relaxed);
                let running = counters.running.fetch_add(1, Ordering::SeqCst) + 1;
                counters.peak.fetch_max(running, Ordering::SeqCst);
                let outcome = bcrypt::verify(candidate, &hash);
                counters.running.fetch_sub(1, Ordering::SeqCst);
                outcome
            })
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
                self.blocking(move || bcrypt::hash(random, cost))
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

    #[tokio::test]
    async fn dummy_verification_is_always_false() {
        let hasher = PasswordHasher::new(4, 1);
        assert!(!hasher.verify_dummy("anything at all").await.unwrap());
    }
}
