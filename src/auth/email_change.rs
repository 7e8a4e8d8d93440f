//! Changing the address of a signed-in account (issue 13, item 2): `POST /users/me/email`
//! asks, `POST /users/me/email/confirm` switches.
//!
//! - Asking takes the current password through [`confirm_password`] (SECURITY.md 27) and
//!   sends a `change_email` code to the NEW address under the same rules as every code
//!   (SECURITY.md 1–7): a keyed hash, `OTP_TTL_SECONDS`, five guesses, single use, the
//!   address's mail budget (one per 60 s, five per hour) and this client's share of it
//!   (SECURITY.md 30). The code carries the address, so it switches to exactly that one.
//!   A newer request replaces the pending one (its code dies).
//! - An address that a verified account already has answers exactly like a free one
//!   (same status, body and store work: the same lookup and the same budget, code and
//!   mail step); only the mail differs: that address's owner gets a notice that nothing
//!   changed instead of a code, and the code stored for the asker is one nobody ever
//!   sees. An address held by an account never verified counts as free: whoever proves
//!   the mailbox gets it, and that unproven account is removed at the switch.
//! - Confirming counts the guess, then the store switches atomically
//!   ([`AccountStore::change_email`](crate::store::AccountStore::change_email)): the code
//!   is spent, a verified holder that appeared meanwhile is a clean 409 `email_taken`
//!   (the user keeps the old address), every other session and every outstanding code of
//!   the user go, the caller's session stays. The old address then gets a notice naming
//!   the new one masked. No notice goes to the old address when the change is only asked
//!   for: asking needs the password, and the notice that tells the owner something
//!   happened is the one sent when it did (docs/decisions.md, "Email change").

use super::account::current_user;
use super::confirm::confirm_password;
use super::service::{check_code, invalid_code, issue_within_budget, to_chrono};
use super::AuthUser;
use crate::domain::{mask_email, Email, OtpPurpose};
use crate::email::MailKind;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::limits::ClientIp;
use crate::startup::AppState;
use crate::store::{EmailChange, OneTimeCode, User};

/// 409 `email_taken`: another account got the address between the request and the code.
pub fn email_taken() -> ApiError {
    ApiError::ConflictWith {
        code: "email_taken",
        detail: "This address now belongs to another account; yours is unchanged".into(),
    }
}

/// `POST /users/me/email`: confirms the password, then sends a code to `new_email` (or,
/// if a verified account has that address, a notice to its owner), within the address's
/// mail budget. Answers the same in every case once the password is right.
#[tracing::instrument(skip_all, fields(user_id = %auth.user_id, new_email = %new_email.masked()))]
pub async fn request_email_change(
    state: &AppState,
    auth: &AuthUser,
    client: ClientIp,
    password: &str,
    new_email: Email,
) -> ApiResult<()> {
    let user = current_user(state, auth).await?;
    if !user.is_verified {
        // No flow gives an unverified account a session; should one have one anyway (a
        // migrated record), its first address was never proven, so it cannot move.
        return Err(ApiError::Forbidden {
            code: "email_not_verified",
            detail: "Email not verified. Enter the code we sent you first.".into(),
        });
    }
    if new_email.as_str() == user.email {
        // Not a secret: it is the caller's own address. Refused before the password is
        // checked, so it spends nothing.
        return Err(ApiError::validation(FieldError::body(
            "new_email",
            "new_email is already the address of this account",
            "value_error.email",
        )));
    }
    confirm_password(state, &user, client, password).await?;
    let holder = state.store.user_by_email(new_email.as_str()).await?;
    let taken = holder.is_some_and(|h| h.is_verified);
    let now = state.clock.now();
    let Some(slot) = state.limits.take_mail_slot(client, &new_email).await? else {
        tracing::info!("this client's share of the address's mail budget is spent");
        return Ok(());
    };
    let code = state.otp.generate();
    let record = OneTimeCode {
        user_id: user.id.clone(),
        purpose: OtpPurpose::ChangeEmail,
        code_hash: state.otp.hash(OtpPurpose::ChangeEmail, &user.id, &code),
        signup: None,
        new_email: Some(new_email.as_str().to_owned()),
        created_at: now,
        expires_at: now + to_chrono(state.config.otp_ttl),
    };
    let mail = if taken {
        state
            .outbox
            .prepare(&new_email, &MailKind::EmailChangeTaken, None)
    } else {
        let kind = MailKind::EmailChangeCode {
            code: code.as_str().to_owned(),
            valid_minutes: state.config.otp_ttl.as_secs().div_ceil(60),
        };
        state
            .outbox
            .prepare(&new_email, &kind, Some(record.expires_at))
    };
    // A refused send leaves the pending change (and its guess count) as it was.
    if issue_within_budget(state, slot, &new_email, &record, &mail, now).await? {
        tracing::info!(taken, "email change asked for; mail queued");
    } else {
        tracing::info!("mail budget of the new address exhausted; no new code");
    }
    Ok(())
}

/// `POST /users/me/email/confirm`: checks the code (one of its five guesses), switches
/// the address, signs the other sessions out, and mails a notice to the old address.
#[tracing::instrument(skip_all, fields(user_id = %auth.user_id))]
pub async fn confirm_email_change(
    state: &AppState,
    auth: &AuthUser,
    client: ClientIp,
    code: &str,
) -> ApiResult<User> {
    // Guesses are counted per code (five) and, like verify-otp's, per client.
    state.limits.check_auth(client.0).await?;
    let user = current_user(state, auth).await?;
    let Some(code_hash) = check_code(state, &user.id, OtpPurpose::ChangeEmail, code).await? else {
        return Err(invalid_code());
    };
    let change = state
        .store
        .change_email(&user.id, &code_hash, &auth.session_id, state.clock.now())
        .await;
    let (user, old_email) = match change {
        Ok(EmailChange::Changed { user, old_email }) => (*user, old_email),
        // A parallel submission of the same code won, or a newer request replaced it.
        Ok(EmailChange::NoCode) => return Err(invalid_code()),
        Ok(EmailChange::Taken) | Err(crate::store::StoreError::Conflict(_)) => {
            tracing::info!("the new address was taken meanwhile; nothing changed");
            return Err(email_taken());
        }
        Err(e) => return Err(e.into()),
    };
    let new_email = mask_email(&user.email);
    tracing::info!(%new_email, "address changed; other sessions signed out");
    // An address stored by the old service that today's rules refuse cannot be mailed;
    // the change itself stands.
    match Email::parse(&old_email, "email") {
        Ok(old) => {
            state
                .outbox
                .enqueue(&old, &MailKind::EmailChanged { new_email })
                .await?
        }
        Err(_) => tracing::warn!("the old address does not parse; no change notice sent"),
    }
    Ok(user)
}
