//! The one-time codes aggregate: per `(user, purpose)` a *challenge*, that is the live
//! codes (each a keyed hash; a registration attempt's code also carries the password and
//! display name that entering it puts in force) and one guess count shared by all of them.
//!
//! Two ways a code joins a challenge:
//! - **replacing** ([`CodeStore::issue_code`], [`CodeStore::put_challenge`]): a code asked
//!   for by `send-verification-code` replaces every earlier one and starts a fresh count
//!   (SECURITY.md 6);
//! - **adding** (registration, [`UserStore::sign_up`](super::UserStore::sign_up)): a
//!   registration attempt of an unverified address never replaces an earlier attempt's
//!   code; it joins the live ones (at most `max_pending`) and their shared count
//!   (SECURITY.md 25). A challenge whose codes all expired, or whose count is spent, is
//!   dead: the next attempt starts a new one. So no code ever sees more than
//!   `max_attempts` guesses.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{OutboxMail, SendLimits, StoreResult};
use crate::domain::OtpPurpose;

/// What entering a registration attempt's code puts in force.
#[derive(Clone, PartialEq)]
pub struct SignupChoice {
    /// The bcrypt hash of the password submitted with the attempt.
    pub password_hash: String,
    pub display_name: Option<String>,
}

impl std::fmt::Debug for SignupChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A password hash is a secret too (offline guessing): never in logs or test output.
        f.debug_struct("SignupChoice")
            .field("password_hash", &"<redacted>")
            .field("display_name", &self.display_name)
            .finish()
    }
}

/// One outstanding code, stored as a keyed hash only.
#[derive(Debug, Clone, PartialEq)]
pub struct OneTimeCode {
    pub user_id: String,
    pub purpose: OtpPurpose,
    pub code_hash: String,
    /// Set for a registration attempt's code: the password (and display name) it puts in
    /// force. `None` for every other code.
    pub signup: Option<SignupChoice>,
    /// Set for an email change's code: the (normalised) address entering it switches the
    /// user to. `None` for every other code.
    pub new_email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The codes of one `(user, purpose)` and the submissions counted against them.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeChallenge {
    pub user_id: String,
    pub purpose: OtpPurpose,
    /// Submissions counted so far (including the current one after
    /// [`CodeStore::take_code_attempt`]).
    pub attempts: u32,
    /// Oldest first.
    pub codes: Vec<OneTimeCode>,
}

impl CodeChallenge {
    /// A challenge of one code with a fresh count.
    pub fn of(code: &OneTimeCode) -> Self {
        Self {
            user_id: code.user_id.clone(),
            purpose: code.purpose,
            attempts: 0,
            codes: vec![code.clone()],
        }
    }
}

/// Where a registration attempt's code goes, given the challenge it would join (the one
/// rule both backends follow; MongoDB states it again as an update pipeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// No live challenge (no live code, or its count is spent): the code starts a new one
    /// with a fresh count, and whatever was left of the old one goes.
    Fresh,
    /// The code joins the live codes and their count.
    Join,
    /// `max_pending` codes are live already (or one has the same hash): refused.
    Full,
}

impl Admission {
    /// `attempts` counted so far, and the hashes of the codes that are still live.
    pub fn decide(
        attempts: u32,
        live_hashes: &[&str],
        new_hash: &str,
        max_pending: u32,
        max_attempts: u32,
    ) -> Self {
        if live_hashes.is_empty() || attempts >= max_attempts {
            Self::Fresh
        } else if (live_hashes.len() as u32) < max_pending && !live_hashes.contains(&new_hash) {
            Self::Join
        } else {
            Self::Full
        }
    }
}

/// One-time codes.
#[async_trait]
pub trait CodeStore: Send + Sync {
    /// Stores a challenge, replacing whatever `(user, purpose)` had (used by
    /// `introgy migrate --with-codes`).
    async fn put_challenge(&self, challenge: &CodeChallenge) -> StoreResult<()>;
    /// Stores one code with a fresh count, replacing every earlier code of its
    /// `(user, purpose)`.
    async fn put_code(&self, code: &OneTimeCode) -> StoreResult<()> {
        self.put_challenge(&CodeChallenge::of(code)).await
    }
    /// Takes one of `email`'s mails (the per-address budget, SECURITY.md 5); if granted,
    /// replaces the codes of the code's `(user, purpose)` with it (fresh count) and queues
    /// `mail`, in one step (one transaction on SQLite; on MongoDB budget, code, mail in
    /// that order, so an interruption can lose a mail, never mail a code that does not
    /// exist). `false`: the budget refused, nothing changed.
    async fn issue_code(
        &self,
        email: &str,
        limits: SendLimits,
        code: &OneTimeCode,
        mail: &OutboxMail,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Atomically counts one submission against the live challenge of `(user, purpose)`
    /// and returns it with its live codes, or `None` when there is none (no code, every
    /// code expired, or `max_attempts` already used). Parallel submissions are each
    /// counted once: at most `max_attempts` of them ever get the codes back. An id that
    /// matches nothing costs the same store work as one that does (SECURITY.md 29).
    async fn take_code_attempt(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CodeChallenge>>;
    /// Atomically deletes the challenge of `(user, purpose)` (every code of it) if it still
    /// holds a code with `code_hash`; `true` for exactly one of any number of parallel
    /// callers.
    async fn consume_code(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        code_hash: &str,
    ) -> StoreResult<bool>;
    /// The outstanding challenges of a user, expired codes included (for
    /// `introgy migrate --with-codes`).
    async fn codes_of(&self, user_id: &str) -> StoreResult<Vec<CodeChallenge>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_joins_a_live_challenge_until_it_is_full() {
        assert_eq!(Admission::decide(0, &[], "a", 3, 5), Admission::Fresh);
        assert_eq!(Admission::decide(2, &["a"], "b", 3, 5), Admission::Join);
        assert_eq!(
            Admission::decide(4, &["a", "b"], "c", 3, 5),
            Admission::Join
        );
        assert_eq!(
            Admission::decide(0, &["a", "b", "c"], "d", 3, 5),
            Admission::Full
        );
        assert_eq!(
            Admission::decide(0, &["a"], "a", 3, 5),
            Admission::Full,
            "two live codes with one hash would be ambiguous"
        );
    }

    #[test]
    fn a_spent_or_expired_challenge_gives_way_to_a_fresh_one() {
        assert_eq!(
            Admission::decide(5, &["a", "b", "c"], "d", 3, 5),
            Admission::Fresh
        );
        assert_eq!(Admission::decide(3, &[], "d", 3, 5), Admission::Fresh);
    }

    #[test]
    fn a_signup_choice_never_prints_its_password_hash() {
        let choice = SignupChoice {
            password_hash: "$2b$12$secret".into(),
            display_name: Some("Ada".into()),
        };
        assert!(!format!("{choice:?}").contains("secret"));
    }
}
