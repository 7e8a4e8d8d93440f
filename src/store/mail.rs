//! The mail aggregate: the durable outbox (see [`crate::email::outbox`]) and the
//! per-address mail budget.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StoreResult;

/// A queued mail.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMail {
    /// Also the mail's `Message-ID`.
    pub id: String,
    pub recipient: String,
    /// The mail's kind and data as JSON, one-time codes sealed.
    pub payload: String,
    /// Tries so far (including the current one after [`MailStore::claim_mail`]).
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    /// Mail carrying a code is not sent after the code expired.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Where a mail of the outbox stands. Stored as its [`as_str`](Self::as_str) text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailStatus {
    /// Waiting for (another) try; a claimed mail stays pending under its lease.
    Pending,
    Sent,
    /// Gave up: the provider refused it or the tries ran out. Kept for inspection.
    Dead,
    /// The code it carried expired before it could be sent.
    Expired,
}

impl MailStatus {
    pub const ALL: [MailStatus; 4] = [Self::Pending, Self::Sent, Self::Dead, Self::Expired];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Dead => "dead",
            Self::Expired => "expired",
        }
    }
}

impl std::str::FromStr for MailStatus {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| format!("unknown mail status {raw:?}"))
    }
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

impl MailResult {
    /// The status a mail ends in (`Pending` again for a retry).
    pub fn status(&self) -> MailStatus {
        match self {
            Self::Sent => MailStatus::Sent,
            Self::Retry { .. } => MailStatus::Pending,
            Self::Dead { .. } => MailStatus::Dead,
            Self::Expired => MailStatus::Expired,
        }
    }

    /// The provider's error, if the try ended with one.
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Retry { error, .. } | Self::Dead { error } => Some(error),
            Self::Sent | Self::Expired => None,
        }
    }
}

/// The outbox backlog, for `/health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: u64,
    pub dead: u64,
}

/// Per-address mail budget (SECURITY.md 5).
#[derive(Debug, Clone, Copy)]
pub struct SendLimits {
    pub min_interval: Duration,
    pub per_hour: u32,
}

/// How long a delivered or expired mail is kept for inspection before a purge.
pub const FINISHED_MAIL_KEPT: chrono::TimeDelta = chrono::TimeDelta::days(7);
/// The window of the per-address hourly budget.
pub const SEND_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// The outbox and the mail budget.
#[async_trait]
pub trait MailStore: Send + Sync {
    /// Queues a mail.
    async fn enqueue_mail(&self, mail: &OutboxMail) -> StoreResult<()>;
    /// Claims up to `limit` due mails: counts a try and makes each due again at
    /// `lease_until` (if its worker vanishes, it is retried then). A due mail is claimed
    /// by exactly one of any number of parallel claimers. A claimed mail that cannot be
    /// read is not returned: it is set aside as dead with the reason as its last error
    /// (logged once, naming it), so one bad record never stalls the queue.
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
    /// Parallel reservations never exceed the budget.
    async fn reserve_mail_send(
        &self,
        email: &str,
        now: DateTime<Utc>,
        limits: SendLimits,
    ) -> StoreResult<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_has_one_name_for_serde_and_the_stores() {
        for status in MailStatus::ALL {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::from(status.as_str())
            );
            assert_eq!(status.as_str().parse::<MailStatus>(), Ok(status));
        }
        assert!("Pending".parse::<MailStatus>().is_err());
    }
}
