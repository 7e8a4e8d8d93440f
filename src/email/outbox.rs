//! The durable outbox: mail is written to the store (in the same store call as the code it
//! carries) and a background worker delivers it.
//!
//! A crash, a deploy or a provider outage delays mail; it does not lose it. Each mail is
//! sent at least once with a stable `Message-ID` (its outbox id), so a retry after an
//! ambiguous failure is recognisable downstream. Transient failures are retried with
//! exponential backoff and jitter; after [`MAX_ATTEMPTS`] tries, or on a permanent
//! failure, the mail ends `dead` (counted in `/health`). A mail whose code has expired is
//! not sent late. One-time codes in queued mail are sealed (ChaCha20-Poly1305, key derived
//! from the signing secret) and erased from the outbox once the mail is done.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{MailKind, Mailer, SendError};
use crate::auth::seal::Sealer;
use crate::clock::Clock;
use crate::domain::{mask_email, Email};
use crate::store::{MailResult, OutboxMail, Store, StoreResult};

/// Tries before a mail is given up (`dead`).
pub const MAX_ATTEMPTS: u32 = 8;
/// A claimed mail becomes due again after this long if its worker vanished.
pub const LEASE: Duration = Duration::from_secs(60);
/// How often the worker looks for due mail when nobody wakes it.
const POLL: Duration = Duration::from_secs(1);
const BATCH: u32 = 16;
/// Longest pause between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// The worker counts as stuck (`/health/ready`) after this long without progress: longer
/// than its worst bounded step (a claim and a finish at the longest STORE_TIMEOUT_SECONDS,
/// 2 x 120 s, around one delivery at the longest MAIL_TIMEOUT_SECONDS, 300 s).
pub const STALL_AFTER: Duration = Duration::from_secs(600);

/// What is stored for a mail: its kind and data, codes sealed.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Payload {
    VerificationCode {
        sealed_code: String,
        valid_minutes: u64,
        /// Absent in mail queued before repeated attempts had their own wording.
        #[serde(default)]
        repeated: bool,
    },
    ResetCode {
        sealed_code: String,
        valid_minutes: u64,
    },
    SignupAttempt,
    SignupIncomplete,
    PasswordChanged,
    PasswordUpdated {
        others_signed_out: bool,
    },
    /// A nudge: the token in it only turns that list off, so it is stored as is.
    LowBattery {
        level: u8,
        unsubscribe_token: String,
    },
    /// The week's numbers; the chart is drawn from them at delivery, so the outbox keeps
    /// a few hundred bytes rather than the image.
    WeeklySummary {
        summary: crate::nudges::weekly::WeekSummary,
        unsubscribe_token: String,
    },
    EmailChangeCode {
        sealed_code: String,
        valid_minutes: u64,
    },
    EmailChangeTaken,
    EmailChanged {
        /// Masked already.
        new_email: String,
    },
}

struct Inner {
    store: Arc<dyn Store>,
    mailer: Mailer,
    clock: Clock,
    sealer: Sealer,
    wake: Notify,
    /// When the worker last made progress (a pass over due mail, or one delivery), in
    /// milliseconds of the service clock.
    progress_ms: AtomicI64,
}

#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

/// Pause before try `attempt + 1`: 2^attempt seconds, capped, times a random 0.5–1.5.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(1u64 << attempt.min(20)).min(MAX_BACKOFF);
    base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

impl Outbox {
    pub fn new(store: Arc<dyn Store>, mailer: Mailer, clock: Clock, secret: &SecretString) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                mailer,
                sealer: Sealer::new(secret, "introgy/outbox-key/v1"),
                wake: Notify::new(),
                progress_ms: AtomicI64::new(clock.now().timestamp_millis()),
                clock,
            }),
        }
    }

    fn seal(&self, code: &str) -> String {
        self.inner.sealer.seal(code, b"")
    }

    fn unseal(&self, sealed: &str) -> Option<String> {
        self.inner.sealer.open(sealed, b"")
    }

    /// The outbox record of a mail, due now.
    pub fn prepare(
        &self,
        to: &Email,
        kind: &MailKind,
        expires_at: Option<DateTime<Utc>>,
    ) -> OutboxMail {
        let payload = match kind {
            MailKind::VerificationCode {
                code,
                valid_minutes,
                repeated,
            } => Payload::VerificationCode {
                sealed_code: self.seal(code),
                valid_minutes: *valid_minutes,
                repeated: *repeated,
            },
            MailKind::ResetCode {
                code,
                valid_minutes,
            } => Payload::ResetCode {
                sealed_code: self.seal(code),
                valid_minutes: *valid_minutes,
            },
            MailKind::SignupAttempt => Payload::SignupAttempt,
            MailKind::SignupIncomplete => Payload::SignupIncomplete,
            MailKind::PasswordChanged => Payload::PasswordChanged,
            MailKind::PasswordUpdated { others_signed_out } => Payload::PasswordUpdated {
                others_signed_out: *others_signed_out,
            },
            MailKind::LowBattery {
                level,
                unsubscribe_token,
            } => Payload::LowBattery {
                level: *level,
                unsubscribe_token: unsubscribe_token.clone(),
            },
            MailKind::WeeklySummary {
                summary,
                unsubscribe_token,
            } => Payload::WeeklySummary {
                summary: summary.clone(),
                unsubscribe_token: unsubscribe_token.clone(),
            },
            MailKind::EmailChangeCode {
                code,
                valid_minutes,
            } => Payload::EmailChangeCode {
                sealed_code: self.seal(code),
                valid_minutes: *valid_minutes,
            },
            MailKind::EmailChangeTaken => Payload::EmailChangeTaken,
            MailKind::EmailChanged { new_email } => Payload::EmailChanged {
                new_email: new_email.clone(),
            },
        };
        let now = self.inner.clock.now();
        OutboxMail {
            id: crate::auth::random_hex(16),
            recipient: to.as_str().to_owned(),
            payload: serde_json::to_string(&payload).expect("payloads serialise"),
            attempts: 0,
            created_at: now,
            next_attempt_at: now,
            expires_at,
        }
    }

    /// Queues a mail and wakes the worker.
    pub async fn enqueue(&self, to: &Email, kind: &MailKind) -> StoreResult<()> {
        self.inner
            .store
            .enqueue_mail(&self.prepare(to, kind, None))
            .await?;
        self.wake();
        Ok(())
    }

    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    fn progressed(&self) {
        self.inner
            .progress_ms
            .store(self.inner.clock.now().timestamp_millis(), Ordering::Relaxed);
    }

    /// How long the worker has made no progress, when that is longer than
    /// [`STALL_AFTER`] (a wedged or dead worker); `None` while it is moving.
    pub fn stalled(&self) -> Option<Duration> {
        let idle_ms = self.inner.clock.now().timestamp_millis()
            - self.inner.progress_ms.load(Ordering::Relaxed);
        let idle = Duration::from_millis(u64::try_from(idle_ms).unwrap_or(0));
        (idle > STALL_AFTER).then_some(idle)
    }

    /// Delivers due mail until the process ends.
    pub async fn run(self) {
        loop {
            self.progressed();
            match self.deliver_due().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox: cannot read due mail"),
            }
            tokio::select! {
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Claims and delivers one batch of due mail; returns how many were claimed.
    pub async fn deliver_due(&self) -> StoreResult<usize> {
        let now = self.inner.clock.now();
        let lease = chrono::Duration::from_std(LEASE).unwrap_or_default();
        let batch = self.inner.store.claim_mail(now, now + lease, BATCH).await?;
        for mail in &batch {
            let result = self.deliver(mail, now).await;
            crate::metrics::metrics().mail_attempt(
                self.inner.mailer.transport().name(),
                match result {
                    MailResult::Sent => "sent",
                    MailResult::Retry { .. } => "retry",
                    MailResult::Dead { .. } => "dead",
                    MailResult::Expired => "expired",
                },
            );
            self.inner
                .store
                .finish_mail(&mail.id, &result, self.inner.clock.now())
                .await?;
            self.progressed();
        }
        Ok(batch.len())
    }

    async fn deliver(&self, mail: &OutboxMail, now: DateTime<Utc>) -> MailResult {
        let to = mask_email(&mail.recipient);
        if mail.expires_at.is_some_and(|at| at <= now) {
            tracing::warn!(%to, id = %mail.id, "outbox: the code in this mail expired before it could be sent; dropped");
            return MailResult::Expired;
        }
        let kind = match serde_json::from_str::<Payload>(&mail.payload) {
            Ok(Payload::VerificationCode {
                sealed_code,
                valid_minutes,
                repeated,
            }) => self
                .unseal(&sealed_code)
                .map(|code| MailKind::VerificationCode {
                    code,
                    valid_minutes,
                    repeated,
                }),
            Ok(Payload::ResetCode {
                sealed_code,
                valid_minutes,
            }) => self.unseal(&sealed_code).map(|code| MailKind::ResetCode {
                code,
                valid_minutes,
            }),
            Ok(Payload::SignupAttempt) => Some(MailKind::SignupAttempt),
            Ok(Payload::SignupIncomplete) => Some(MailKind::SignupIncomplete),
            Ok(Payload::PasswordChanged) => Some(MailKind::PasswordChanged),
            Ok(Payload::PasswordUpdated { others_signed_out }) => {
                Some(MailKind::PasswordUpdated { others_signed_out })
            }
            Ok(Payload::LowBattery {
                level,
                unsubscribe_token,
            }) => Some(MailKind::LowBattery {
                level,
                unsubscribe_token,
            }),
            Ok(Payload::WeeklySummary {
                summary,
                unsubscribe_token,
            }) => Some(MailKind::WeeklySummary {
                summary,
                unsubscribe_token,
            }),
            Ok(Payload::EmailChangeCode {
                sealed_code,
                valid_minutes,
            }) => self
                .unseal(&sealed_code)
                .map(|code| MailKind::EmailChangeCode {
                    code,
                    valid_minutes,
                }),
            Ok(Payload::EmailChangeTaken) => Some(MailKind::EmailChangeTaken),
            Ok(Payload::EmailChanged { new_email }) => Some(MailKind::EmailChanged { new_email }),
            Err(_) => None,
        };
        let Some(kind) = kind else {
            tracing::error!(%to, id = %mail.id, "outbox: unreadable mail (was the signing secret changed?)");
            return MailResult::Dead {
                error: "unreadable payload".into(),
            };
        };
        let recipient = Email::from_trusted(mail.recipient.clone());
        let mut rendered = match self.inner.mailer.render(&recipient, &kind) {
            Ok(rendered) => rendered,
            Err(e) => {
                return MailResult::Dead {
                    error: format!("render: {e}"),
                }
            }
        };
        rendered.message_id = format!("<{}@introgy>", mail.id);
        let transport = self.inner.mailer.transport();
        match transport.send(self.inner.mailer.from(), &rendered).await {
            Ok(()) => {
                tracing::info!(%to, kind = rendered.kind, attempt = mail.attempts, transport = transport.name(), "mail sent");
                MailResult::Sent
            }
            Err(SendError::Transient(e)) if mail.attempts < MAX_ATTEMPTS => {
                let pause = backoff(mail.attempts);
                tracing::warn!(%to, kind = rendered.kind, attempt = mail.attempts, retry_in_s = pause.as_secs(), error = %e, "mail send failed; will retry");
                MailResult::Retry {
                    at: now + chrono::Duration::from_std(pause).unwrap_or_default(),
                    error: e.to_string(),
                }
            }
            Err(e) => {
                tracing::error!(%to, kind = rendered.kind, attempt = mail.attempts, error = %e, "mail send failed for good");
                MailResult::Dead {
                    error: e.to_string(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for attempt in 0..12 {
            let pause = backoff(attempt);
            let base = Duration::from_secs(1u64 << attempt).min(MAX_BACKOFF);
            assert!(
                pause >= base.mul_f64(0.5) && pause <= base.mul_f64(1.5),
                "{attempt}: {pause:?}"
            );
        }
        assert!(backoff(30) <= MAX_BACKOFF.mul_f64(1.5));
    }
}
