//! The account flows: register, one-time codes, login, refresh rotation, logout and
//! password reset. Handlers parse input into domain types and call these; these talk to
//! the [`Store`](crate::store::Store), the hasher, the token keys and the mailer.
//!
//! Enumeration resistance (SECURITY.md 8–10, 29) is decided here: every flow answers an
//! unknown address exactly as it answers a known one, with the same store operations and
//! the same hashing (an unknown address's code check runs against an id that matches
//! nothing; registration is one store step whatever the address has), and what cannot
//! be made equal (issuing a code on request) runs after the response, on a task.
//! `tests/api/same_work.rs` compares the work; `cargo bench --bench timing` the time.

use chrono::{DateTime, Duration as ChronoDuration, Utc};

use super::confirm::PasswordCheck;
use super::device::Device;
use super::otp::{OtpHasher, MAX_CODE_ATTEMPTS};
use super::{random_hex, random_token, sha256_hex, AuthUser};
use crate::domain::{DisplayName, Email, OtpCode, OtpPurpose, Password, RequestablePurpose};
use crate::email::MailKind;
use crate::error::{ApiError, ApiResult};
use crate::limits::{AccountKey, ClientIp};
use crate::startup::AppState;
use crate::store::{
    NewUser, OneTimeCode, OutboxMail, RefreshToken, Rotation, SendLimits, Session, SignupAttempt,
    SignupChoice, SignupOutcome, Slot, User,
};

/// A rotated refresh token may be presented again for this long (two tabs refreshing
/// at once) and gets the child it was exchanged for; later, reuse revokes the session
/// (SECURITY.md 18, 28).
pub const REFRESH_REUSE_GRACE_SECONDS: i64 = crate::store::SEALED_CHILD_KEPT.num_seconds();
/// At most this many registration attempts of one unverified address wait for their
/// code at once (SECURITY.md 25).
pub const MAX_PENDING_SIGNUPS: u32 = 3;
/// Refresh tokens are 43 characters; anything much longer is not one of ours.
pub const MAX_REFRESH_TOKEN_LEN: usize = 256;
/// Per-address mail budget (SECURITY.md 5).
pub const SEND_LIMITS: SendLimits = SendLimits {
    min_interval: std::time::Duration::from_secs(60),
    per_hour: 5,
};

/// Tokens handed to a client after login, verification or refresh.
#[derive(Debug)]
pub struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub user: User,
}

/// How far `logout` reaches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogoutScope {
    /// This session only.
    #[default]
    Local,
    /// Every session of the user, this one included.
    Global,
    /// Every session of the user except this one.
    Others,
}

pub fn invalid_code() -> ApiError {
    ApiError::bad_request("invalid_code", "Invalid or expired verification code")
}

pub fn invalid_credentials() -> ApiError {
    ApiError::unauthorized("invalid_credentials", "Incorrect email or password")
}

fn invalid_refresh_token() -> ApiError {
    ApiError::unauthorized("invalid_refresh_token", "Invalid or expired refresh token")
}

pub(super) fn to_chrono(d: std::time::Duration) -> ChronoDuration {
    ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX)
}

/// `POST /auth/register`. Same answer, same work and the same time whether the address
/// is new, has an unverified account or a verified one (SECURITY.md 8, 29); when it
/// answers, the attempt and its mail are committed (the outbox delivers the mail).
///
/// Each attempt keeps its own code, bound to the password and display name sent with it
/// (SECURITY.md 25): entering that code puts exactly them in force. Another attempt of an
/// unverified address never replaces an earlier one's code; its mail says to use it only
/// if you just signed up.
#[tracing::instrument(skip_all, fields(email = %email.masked()))]
pub async fn register(
    state: &AppState,
    client: ClientIp,
    email: Email,
    password: Password,
    display_name: Option<DisplayName>,
) -> ApiResult<()> {
    let hash = state.hasher.hash(&password).await?;
    let existing = state.store.user_by_email(email.as_str()).await?;
    let now = state.clock.now();
    let attempt = signup_attempt(state, &email, existing.as_ref(), hash, display_name, now);
    // One client spends at most two of an address's hourly mails (SECURITY.md 30); the
    // store takes the address's own budget in the same step as the attempt.
    let Some(slot) = state.limits.take_mail_slot(client, &email).await? else {
        tracing::info!("this client's share of the address's mail budget is spent");
        return Ok(());
    };
    let outcome = state.store.sign_up(&attempt).await;
    if !matches!(outcome, Ok(outcome) if outcome.mailed()) {
        state.limits.give_back(slot).await;
    }
    match outcome? {
        SignupOutcome::Created => tracing::info!("new account; code queued"),
        SignupOutcome::AttemptAdded => {
            tracing::info!("another registration attempt of an unverified account; code queued")
        }
        SignupOutcome::Notified => {
            tracing::info!("registration attempt for a verified account; notice queued")
        }
        SignupOutcome::MailRefused => tracing::info!("mail budget exhausted; attempt dropped"),
        SignupOutcome::TooManyPending => {
            tracing::info!(
                "the address has the most registration attempts pending; attempt dropped"
            )
        }
        SignupOutcome::Raced => {
            tracing::info!("the address's account changed meanwhile; attempt dropped")
        }
    }
    state.outbox.wake();
    Ok(())
}

/// Everything a registration attempt may write, prepared alike for every address: the
/// code is bound to the existing account's id, or to the id a new account would get.
fn signup_attempt(
    state: &AppState,
    email: &Email,
    existing: Option<&User>,
    password_hash: String,
    display_name: Option<DisplayName>,
    now: DateTime<Utc>,
) -> SignupAttempt {
    let user_id = existing.map_or_else(super::new_object_id, |u| u.id.clone());
    let display_name = display_name.map(DisplayName::into_inner);
    let code = state.otp.generate();
    let expires_at = now + to_chrono(state.config.otp_ttl);
    let valid_minutes = state.config.otp_ttl.as_secs().div_ceil(60);
    let code_mail = |repeated| {
        state.outbox.prepare(
            email,
            &MailKind::VerificationCode {
                code: code.as_str().to_owned(),
                valid_minutes,
                repeated,
            },
            Some(expires_at),
        )
    };
    SignupAttempt {
        user: NewUser {
            id: user_id.clone(),
            email: email.as_str().to_owned(),
            hashed_password: password_hash.clone(),
            display_name: display_name.clone(),
            battery_level: crate::battery::INITIAL_LEVEL.value(),
            now,
        },
        existing: existing.is_some(),
        code: OneTimeCode {
            code_hash: state.otp.hash(OtpPurpose::VerifyEmail, &user_id, &code),
            user_id,
            purpose: OtpPurpose::VerifyEmail,
            signup: Some(SignupChoice {
                password_hash,
                display_name,
            }),
            new_email: None,
            created_at: now,
            expires_at,
        },
        first_mail: code_mail(false),
        repeat_mail: code_mail(true),
        notice_mail: state.outbox.prepare(email, &MailKind::SignupAttempt, None),
        limits: SEND_LIMITS,
        max_pending: MAX_PENDING_SIGNUPS,
        max_attempts: MAX_CODE_ATTEMPTS,
    }
}

/// `POST /auth/send-verification-code`: all work happens after the response, so the
/// answer takes the same time whatever the address has (SECURITY.md 9, 29). The work
/// itself is one store step (budget, code, mail), so it is never half done.
pub fn request_code(state: &AppState, client: ClientIp, email: Email, purpose: RequestablePurpose) {
    let state = state.clone();
    let background = state.background.clone();
    background.spawn(async move {
        if let Err(e) = issue_code(&state, client, &email, purpose).await {
            tracing::error!(error = %e, email = %email.masked(), "failed to issue a one-time code");
        }
    });
}

/// Creates, stores and mails a code, within the per-address budget.
#[tracing::instrument(skip_all, fields(email = %email.masked(), purpose = OtpPurpose::from(requested).as_str()))]
async fn issue_code(
    state: &AppState,
    client: ClientIp,
    email: &Email,
    requested: RequestablePurpose,
) -> anyhow::Result<()> {
    let purpose = OtpPurpose::from(requested);
    let Some(user) = state.store.user_by_email(email.as_str()).await? else {
        tracing::info!("code requested for an address without an account; nothing sent");
        return Ok(());
    };
    let now = state.clock.now();
    if purpose == OtpPurpose::VerifyEmail && !user.is_verified {
        // A code not bound to a registration attempt would put in force whatever password
        // the account has, which whoever registered the address first chose (SECURITY.md
        // 25): codes for an unverified address come only from signing up again.
        if reserve_mail(state, client, email).await? {
            state
                .outbox
                .enqueue(email, &MailKind::SignupIncomplete)
                .await?;
        }
        return Ok(());
    }
    let Some(slot) = state.limits.take_mail_slot(client, email).await? else {
        tracing::info!("this client's share of the address's mail budget is spent");
        return Ok(());
    };
    let code = state.otp.generate();
    let record = OneTimeCode {
        user_id: user.id.clone(),
        purpose,
        code_hash: state.otp.hash(purpose, &user.id, &code),
        signup: None,
        new_email: None,
        created_at: now,
        expires_at: now + to_chrono(state.config.otp_ttl),
    };
    let valid_minutes = state.config.otp_ttl.as_secs().div_ceil(60);
    let kind = match requested {
        RequestablePurpose::VerifyEmail => MailKind::VerificationCode {
            code: code.as_str().to_owned(),
            valid_minutes,
            repeated: false,
        },
        RequestablePurpose::ResetPassword => MailKind::ResetCode {
            code: code.as_str().to_owned(),
            valid_minutes,
        },
    };
    let mail = state.outbox.prepare(email, &kind, Some(record.expires_at));
    if !issue_within_budget(state, slot, email, &record, &mail, now).await? {
        tracing::info!("mail budget exhausted; no new code");
    }
    Ok(())
}

/// Stores `code` (replacing the codes of its user and purpose) and queues `mail` within
/// `email`'s budget, in one store step: the budget is checked in the same step that
/// stores the code, so a refused send never replaces (and never refreshes the guess
/// budget of) the outstanding code. `slot` is the client's share of the budget
/// (SECURITY.md 30), given back when nothing was sent. `true` when the mail was queued.
pub(super) async fn issue_within_budget(
    state: &AppState,
    slot: Slot,
    email: &Email,
    code: &OneTimeCode,
    mail: &OutboxMail,
    now: DateTime<Utc>,
) -> crate::store::StoreResult<bool> {
    let issued = state
        .store
        .issue_code(email.as_str(), SEND_LIMITS, code, mail, now)
        .await;
    match issued {
        Ok(true) => state.outbox.wake(),
        _ => state.limits.give_back(slot).await,
    }
    issued
}

/// Takes one mail of the address's budget for `client`: first the client's own share
/// (SECURITY.md 30: one client spends at most two of an address's hourly mails), then the
/// address's budget in the store (SECURITY.md 5); a refusal by the store returns the
/// client's share, since no mail goes out.
async fn reserve_mail(state: &AppState, client: ClientIp, email: &Email) -> anyhow::Result<bool> {
    let now = state.clock.now();
    let Some(slot) = state.limits.take_mail_slot(client, email).await? else {
        tracing::info!("this client's share of the address's mail budget is spent");
        return Ok(false);
    };
    let reserved = state
        .store
        .reserve_mail_send(email.as_str(), now, SEND_LIMITS)
        .await;
    if !matches!(reserved, Ok(true)) {
        state.limits.give_back(slot).await;
    }
    Ok(reserved?)
}

/// Counts one submission of `code` against the codes of `(user, purpose)` and returns the
/// hash of the one it matches. Every live code is compared, in constant time, with no
/// early exit. `user_id` may match nothing (an unknown address): the store work is the
/// same (SECURITY.md 29).
pub(super) async fn check_code(
    state: &AppState,
    user_id: &str,
    purpose: OtpPurpose,
    code: &str,
) -> ApiResult<Option<String>> {
    let Some(code) = OtpCode::parse(code) else {
        return Ok(None);
    };
    let candidate = state.otp.hash(purpose, user_id, &code);
    let Some(challenge) = state
        .store
        .take_code_attempt(user_id, purpose, MAX_CODE_ATTEMPTS, state.clock.now())
        .await?
    else {
        return Ok(None);
    };
    let found = OtpHasher::find(
        challenge.codes.iter().map(|c| c.code_hash.as_str()),
        &candidate,
    );
    if found.is_none() {
        tracing::info!(attempts = challenge.attempts, "wrong one-time code");
    }
    Ok(found.map(|i| challenge.codes[i].code_hash.clone()))
}

/// The user the address names, and the id to check codes against: theirs, or a fresh one
/// that matches nothing when there is no such user (the same work either way).
async fn code_owner(state: &AppState, email: &Email) -> ApiResult<(Option<User>, String)> {
    let user = state.store.user_by_email(email.as_str()).await?;
    let id = user
        .as_ref()
        .map_or_else(super::new_object_id, |u| u.id.clone());
    Ok((user, id))
}

/// `POST /auth/verify-otp`: proves the address, puts the code's registration attempt in
/// force (its password and display name; every other attempt is discarded), marks the
/// address verified, logs in.
#[tracing::instrument(skip_all, fields(email = %email.masked()))]
pub async fn verify_email(
    state: &AppState,
    device: &Device,
    email: Email,
    code: &str,
) -> ApiResult<IssuedTokens> {
    let (user, user_id) = code_owner(state, &email).await?;
    let matched = check_code(state, &user_id, OtpPurpose::VerifyEmail, code).await?;
    let (Some(_), Some(code_hash)) = (user, matched) else {
        return Err(invalid_code());
    };
    let Some(user) = state
        .store
        .complete_verification(&user_id, &code_hash, state.clock.now())
        .await?
    else {
        // A parallel submission of the same code won.
        return Err(invalid_code());
    };
    start_session(state, user, device).await
}

/// `POST /auth/login`. Unknown address and wrong password answer the same, in the same
/// time; "not verified" is only said after a correct password.
#[tracing::instrument(skip_all)]
pub async fn login(
    state: &AppState,
    device: &Device,
    email: &str,
    password: &str,
) -> ApiResult<IssuedTokens> {
    let result = login_inner(state, device, email, password).await;
    crate::metrics::metrics().login(match &result {
        Ok(_) => "success",
        Err(ApiError::Unauthorized { .. }) => "invalid_credentials",
        Err(ApiError::Forbidden { .. }) => "unverified",
        Err(ApiError::TooManyRequests { .. }) => "throttled",
        Err(_) => "error",
    });
    result
}

async fn login_inner(
    state: &AppState,
    device: &Device,
    email: &str,
    password: &str,
) -> ApiResult<IssuedTokens> {
    // Failed logins are throttled per address, known or not (SECURITY.md 21), and the
    // slot is taken before anything is looked up or hashed (SECURITY.md 26).
    let check = PasswordCheck::reserve(state, AccountKey::for_login_input(email)).await?;
    let email = Email::parse(email, "username").ok();
    let found = match &email {
        Some(email) => state.store.user_by_email(email.as_str()).await,
        None => Ok(None),
    };
    let user = match found {
        Ok(user) => user,
        Err(e) => {
            // Nothing was checked: a store outage must not spend the user's budget.
            check.cancel(state).await;
            return Err(e.into());
        }
    };
    let hash = user.as_ref().map(|u| u.hashed_password.as_str());
    let right = check.run(state, password, hash).await?;
    let Some(user) = user else {
        return Err(invalid_credentials());
    };
    if !right {
        tracing::info!(user_id = %user.id, "login with a wrong password");
        return Err(invalid_credentials());
    }
    if !user.is_verified {
        return Err(ApiError::Forbidden {
            code: "email_not_verified",
            detail: "Email not verified. Enter the code we sent you, or ask for a new one.".into(),
        });
    }
    start_session(state, user, device).await
}

/// Opens a session, records its device and issues its first token pair.
async fn start_session(state: &AppState, user: User, device: &Device) -> ApiResult<IssuedTokens> {
    let now = state.clock.now();
    let session = Session {
        id: random_hex(16),
        user_id: user.id.clone(),
        created_at: now,
        expires_at: now + to_chrono(state.config.refresh_token_ttl),
        refreshed_at: now,
    };
    let refresh_token = random_token(32);
    let first = RefreshToken {
        token_hash: sha256_hex(&refresh_token),
        session_id: session.id.clone(),
        issued_at: now,
        rotated_at: None,
        child_sealed: None,
    };
    state.store.insert_session(&session, &first).await?;
    // A second write (see docs/decisions.md, "Devices"): sessions.rs stays as it was.
    state
        .store
        .set_session_device(&session.id, &device.client, &device.ip)
        .await?;
    tracing::info!(user_id = %user.id, session_id = %session.id, "session started");
    issue_tokens(state, &session, refresh_token, user, now)
}

fn issue_tokens(
    state: &AppState,
    session: &Session,
    refresh_token: String,
    user: User,
    now: DateTime<Utc>,
) -> ApiResult<IssuedTokens> {
    // An access token never outlives its session.
    let expires_at = (now + to_chrono(state.config.access_token_ttl)).min(session.expires_at);
    let access_token = state.keys.issue(&user.id, &session.id, now, expires_at)?;
    Ok(IssuedTokens {
        access_token,
        refresh_token,
        expires_in: (expires_at - now).num_seconds().max(0) as u64,
        user,
    })
}

/// `POST /auth/refresh-token`: rotation with reuse detection.
///
/// A token is exchanged once: its child is kept sealed on it for the grace window, so the
/// same token presented again within the window (two tabs, a retried request) gets that
/// same child, never a new chain (SECURITY.md 28). After the window, reuse revokes the
/// session.
#[tracing::instrument(skip_all)]
pub async fn refresh(state: &AppState, presented: &str) -> ApiResult<IssuedTokens> {
    if presented.is_empty() || presented.len() > MAX_REFRESH_TOKEN_LEN {
        return Err(invalid_refresh_token());
    }
    let now = state.clock.now();
    let hash = sha256_hex(presented);
    let Some(token) = state.store.refresh_token(&hash).await? else {
        return Err(invalid_refresh_token());
    };
    let Some(session) = state.store.session(&token.session_id).await? else {
        return Err(invalid_refresh_token());
    };
    if session.expires_at <= now {
        state.store.delete_session(&session.id).await?;
        return Err(invalid_refresh_token());
    }
    let Some(user) = state.store.user_by_id(&session.user_id).await? else {
        return Err(invalid_refresh_token());
    };
    let parent = match token.rotated_at {
        Some(_) => token,
        None => {
            let child = random_token(32);
            let record = RefreshToken {
                token_hash: sha256_hex(&child),
                session_id: session.id.clone(),
                issued_at: now,
                rotated_at: None,
                child_sealed: None,
            };
            let sealed = state.refresh_seal.seal(&child, hash.as_bytes());
            match state
                .store
                .rotate_refresh_token(&hash, &record, &sealed)
                .await?
            {
                Rotation::Rotated => return issue_tokens(state, &session, child, user, now),
                Rotation::AlreadyRotated(parent) => parent,
                Rotation::Gone => return Err(invalid_refresh_token()),
            }
        }
    };
    let rotated_at = parent.rotated_at.unwrap_or(now);
    if now - rotated_at > ChronoDuration::seconds(REFRESH_REUSE_GRACE_SECONDS) {
        state.store.delete_session(&session.id).await?;
        tracing::warn!(session_id = %session.id, user_id = %session.user_id, "refresh token reuse detected; session revoked");
        return Err(ApiError::unauthorized(
            "refresh_token_reused",
            "Refresh token was already used; the session has been revoked",
        ));
    }
    // Within the window: the child this token was already exchanged for.
    match parent
        .child_sealed
        .as_deref()
        .and_then(|sealed| state.refresh_seal.open(sealed, hash.as_bytes()))
    {
        Some(child) => issue_tokens(state, &session, child, user, now),
        None => Err(invalid_refresh_token()),
    }
}

/// `POST /auth/logout`.
pub async fn logout(state: &AppState, auth: &AuthUser, scope: LogoutScope) -> ApiResult<u64> {
    let removed = match scope {
        LogoutScope::Local => {
            state.store.delete_session(&auth.session_id).await?;
            1
        }
        LogoutScope::Global => {
            state
                .store
                .delete_user_sessions(&auth.user_id, None)
                .await?
        }
        LogoutScope::Others => {
            state
                .store
                .delete_user_sessions(&auth.user_id, Some(&auth.session_id))
                .await?
        }
    };
    tracing::info!(user_id = %auth.user_id, ?scope, removed, "logged out");
    Ok(removed)
}

/// `POST /auth/reset-password`: needs the emailed code; revokes every session and code,
/// mails a notice, does not log in. An unknown address does the same store work up to the
/// code check (SECURITY.md 29); hashing the new password only follows a right code.
#[tracing::instrument(skip_all, fields(email = %email.masked()))]
pub async fn reset_password(
    state: &AppState,
    email: Email,
    code: &str,
    new_password: Password,
) -> ApiResult<()> {
    let purpose = OtpPurpose::ResetPassword;
    let (user, user_id) = code_owner(state, &email).await?;
    let matched = check_code(state, &user_id, purpose, code).await?;
    let (Some(user), Some(code_hash)) = (user, matched) else {
        return Err(invalid_code());
    };
    if !state
        .store
        .consume_code(&user.id, purpose, &code_hash)
        .await?
    {
        return Err(invalid_code());
    }
    let hash = state.hasher.hash(&new_password).await?;
    state
        .store
        .reset_password(&user.id, &hash, state.clock.now())
        .await?;
    tracing::info!(user_id = %user.id, "password reset; all sessions revoked");
    state
        .outbox
        .enqueue(&email, &MailKind::PasswordChanged)
        .await?;
    Ok(())
}
