//! Every password check, wherever it happens (login, deleting the account, and the
//! password and email changes to come), spends the same budgets (SECURITY.md 26, 27):
//!
//! 1. one of the account's [`MAX_FAILED_LOGINS`](crate::limits::MAX_FAILED_LOGINS) slots
//!    per 15 minutes is reserved *before* anything is hashed, so parallel guesses cannot
//!    all get past the check (the rest answer 429 without hashing);
//! 2. the account waits for its one hashing slot: its checks run one after another, so one
//!    account never occupies more than one bcrypt thread;
//! 3. a right password gives its slot back (it was no failure); a wrong one keeps it, and
//!    so does a check abandoned mid-hash (its bcrypt may already be running); a check
//!    that could not be made at all (the store was down) gives it back.
//!
//! Login is on the auth routes, whose middleware already spends the client's per-IP
//! budget; [`confirm_password`] spends it itself, because it runs on authenticated routes.

use crate::error::{ApiError, ApiResult};
use crate::limits::{AccountKey, ClientIp, Slot};
use crate::startup::AppState;
use crate::store::User;

/// A reserved password check of one account.
#[must_use = "a reserved check is spent until it is run"]
pub struct PasswordCheck {
    account: AccountKey,
    slot: Slot,
}

impl PasswordCheck {
    /// Reserves a check of `account`: 429 (without hashing) once its failures in the
    /// window fill the budget.
    pub async fn reserve(state: &AppState, account: AccountKey) -> ApiResult<Self> {
        let slot = state.limits.begin_password_check(account).await?;
        Ok(Self { account, slot })
    }

    /// Gives the slot back without checking anything (the check could not be made).
    pub async fn cancel(self, state: &AppState) {
        state.limits.give_back(self.slot).await;
    }

    /// Verifies `candidate` against `hash`, or against the dummy hash when there is no
    /// account (same time, always wrong). A right password gives the slot back.
    pub async fn run(
        self,
        state: &AppState,
        candidate: &str,
        hash: Option<&str>,
    ) -> ApiResult<bool> {
        let _turn = state.limits.account_gate(self.account).await;
        let right = match hash {
            Some(hash) => state.hasher.verify(candidate, hash).await?,
            None => state.hasher.verify_dummy(candidate).await?,
        };
        if right {
            state.limits.give_back(self.slot).await;
        }
        Ok(right)
    }
}

/// 403 `invalid_password`: the signed-in user's password was wrong (401 would tell the
/// client its token is bad).
pub fn invalid_password() -> ApiError {
    ApiError::Forbidden {
        code: "invalid_password",
        detail: "Incorrect password".into(),
    }
}

/// Confirms the signed-in user's password before a sensitive change (deleting the
/// account; changing the password or the email). Spends the client's per-IP auth budget
/// and the account's failed-login budget, then checks in the account's one hashing slot.
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
pub async fn confirm_password(
    state: &AppState,
    user: &User,
    client: ClientIp,
    candidate: &str,
) -> ApiResult<()> {
    state.limits.check_auth(client.0).await?;
    let check = PasswordCheck::reserve(state, AccountKey::of_normalised(&user.email)).await?;
    if check
        .run(state, candidate, Some(&user.hashed_password))
        .await?
    {
        Ok(())
    } else {
        tracing::info!("password confirmation with a wrong password");
        Err(invalid_password())
    }
}
