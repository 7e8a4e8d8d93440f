//! The nudges aggregate (issue 14.3): the claims that make "at most one low-battery mail
//! a day" and "one weekly summary a week" hold across instances, the opted-in
//! recipients of a list, and unsubscribing.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{OutboxMail, StoreResult};

/// A mailing list a user opts in to with `preferences.notifications.<name>: true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NudgeList {
    /// A mail when a record takes the level below 20.
    LowBattery,
    /// A summary of the week just ended.
    WeeklySummary,
}

impl NudgeList {
    pub const ALL: [NudgeList; 2] = [Self::LowBattery, Self::WeeklySummary];

    /// Its key under `preferences.notifications`, in tokens and in the stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LowBattery => "low_battery",
            Self::WeeklySummary => "weekly_summary",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|list| list.as_str() == raw)
    }
}

/// One nudge of one list to one user for one period, claimed once.
#[derive(Debug, Clone, PartialEq)]
pub struct NudgeClaim {
    pub user_id: String,
    pub list: NudgeList,
    /// The period the nudge is for: a UTC day (`2026-12-01`) or an ISO week
    /// (`2026-W49`).
    pub period: String,
    pub claimed_at: DateTime<Utc>,
    /// When the claim may be forgotten: after the last moment a nudge for its period
    /// could still be sent.
    pub expires_at: DateTime<Utc>,
}

/// A user to send a list's nudge to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NudgeRecipient {
    pub user_id: String,
    pub email: String,
}

#[async_trait]
pub trait NudgeStore: Send + Sync {
    /// Claims `(user, list, period)` and queues `mail` with it. `false`, and nothing
    /// queued, when the claim was taken already: of any number of parallel claims
    /// (several instances, parallel records), exactly one wins. Claim and mail are one
    /// transaction on SQLite, and on MongoDB where the deployment has transactions;
    /// otherwise the claim is written first, so an interruption between the two loses
    /// that nudge rather than sending it twice.
    async fn claim_nudge(&self, claim: &NudgeClaim, mail: &OutboxMail) -> StoreResult<bool>;
    /// Verified users opted in to `list` (`preferences.notifications.<list>` is `true`),
    /// ordered by id, the first `limit` after `after` (a keyset page).
    async fn nudge_recipients(
        &self,
        list: NudgeList,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<NudgeRecipient>>;
    /// Sets `preferences.notifications.<list>` to `false` (other preferences untouched;
    /// a `notifications` that is not an object is replaced). `false` if there is no
    /// such user.
    async fn unsubscribe(
        &self,
        user_id: &str,
        list: NudgeList,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Forgets claims whose `expires_at` has passed; returns how many.
    async fn purge_nudge_claims(&self, now: DateTime<Utc>) -> StoreResult<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_list_has_one_name() {
        for list in NudgeList::ALL {
            assert_eq!(NudgeList::parse(list.as_str()), Some(list));
        }
        assert_eq!(NudgeList::parse("marketing"), None);
    }
}
