//! The account flows: register, one-time codes, login, refresh rotation, logout and
//! password reset. Handlers parse input into domain types and call these; these talk to
//! the [`Store`](crate::store::Store), the hasher, the token keys and the mailer.
//!
//! Enumeration resistance (SECURITY.md 8–10) is decided here: every flow answers an
//! unknown address exactly as it answers a known one, and everything whose cost differs
//! between the two (sending mail, issuing codes) runs after the response, on a task.

use chrono::{DateTime, Duration as ChronoDuration, Utc};

use super::confirm::PasswordCheck;
use super::device::Device;
use super::otp::MAX_CODE_ATTEMPTS;
use super::{random_hex, random_token, sha256_hex, AuthUser};
use crate::domain::{DisplayName, Email, OtpCode, OtpPurpose, Password};
use crate::email::MailKind;
use crate::error::{ApiError, ApiResult};
use crate::limits::{AccountKey, ClientIp};
use crate::startup::AppState;
use crate::store::{NewUser, OneTimeCode, RefreshToken, SendLimits, Session, StoreError, User};

/// A rotated refresh token may be presented again for this long (two tabs refreshing
/// at once) before reuse revokes the session (SECURITY.md 18).
pub const REFRESH_REUSE_GRACE_SECONDS: i64 = 10;
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

fn to_chrono(d: std::time::Duration) -> ChronoDuration {
    ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX)
}

/// `POST /auth/register`. Same answer for new and existing addresses; the mail differs.
#[tracing::instrument(skip_all, fields(email = %email.masked()))]
pub async fn register(
    state: &AppState,
    client: ClientIp,
    email: Email,
    password: Password,
    display_name: Option<DisplayName>,
) -> ApiResult<()> {
    // Hash first, whatever happens next, so that both branches cost one bcrypt.
    let hash = state.hasher.hash(&password).await?;
    let now = state.clock.now();
    let existing = state.store.user_by_email(email.as_str()).await?;
    let user = match existing {
        Some(user) if user.is_verified => {
            tracing::info!("registration attempt for an existing account");
            spawn_mail_if_budget(state, client, email, MailKind::SignupAttempt);
            return Ok(());
        }
        Some(user) => {
            // An unverified account: the newest registration's password wins (only the
            // owner of the mailbox can complete it by entering the code).
            state.store.set_password_hash(&user.id, &hash, now).await?;
            user
        }
        None => {
            let new_user = NewUser {
                id: super::new_object_id(),
                email: email.as_str().to_owned(),
                hashed_password: hash,
                display_name: display_name.map(DisplayName::into_inner),
                battery_level: crate::battery::INITIAL_LEVEL.value(),
                now,
            };
            match state.store.insert_user(&new_user).await {
                Ok(user) => user,
                // A concurrent registration of the same address won; answer the same.
                Err(StoreError::Conflict(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    };
    spawn_code(
        state.clone(),
        client,
        email,
        OtpPurpose::VerifyEmail,
        Some(user),
    );
    Ok(())
}

/// `POST /auth/send-verification-code`: all work happens after the response.
pub fn request_code(state: &AppState, client: ClientIp, email: Email, purpose: OtpPurpose) {
    spawn_code(state.clone(), client, email, purpose, None);
}

fn spawn_code(
    state: AppState,
    client: ClientIp,
    email: Email,
    purpose: OtpPurpose,
    user: Option<User>,
) {
    let background = state.background.clone();
    background.spawn(async move {
        if let Err(e) = issue_code(&state, client, &email, purpose, user).await {
            tracing::error!(error = %e, email = %email.masked(), "failed to issue a one-time code");
        }
    });
}

/// Takes one mail of the address's budget for `client`: first the client's own share
/// (SECURITY.md 30: one client spends at most two of an address's hourly mails), then the
/// address's budget in the store (SECURITY.md 5); a refusal by the store returns the
/// client's share, since no mail goes out.
async fn reserve_mail(state: &AppState, client: ClientIp, email: &Email) -> anyhow::Result<bool> {
    let now = state.clock.now();
    let Some(slot) = state.limits.take_mail_slot(client, email, now) else {
        tracing::info!("this client's share of the address's mail budget is spent");
        return Ok(false);
    };
    let reserved = state
        .store
        .reserve_mail_send(email.as_str(), now, SEND_LIMITS)
        .await;
    if !matches!(reserved, Ok(true)) {
        state.limits.give_back_mail_slot(slot);
    }
    Ok(reserved?)
}

/// Sends a notice if the address's mail budget allows.
fn spawn_mail_if_budget(state: &AppState, client: ClientIp, email: Email, kind: MailKind) {
    let state = state.clone();
    let background = state.background.clone();
    background.spawn(async move {
        match reserve_mail(&state, client, &email).await {
            Ok(true) => {
                if let Err(e) = state.outbox.enqueue(&email, &kind).await {
                    tracing::error!(error = %e, "failed to queue a mail");
                }
            }
            Ok(false) => {
                tracing::info!(email = %email.masked(), "mail budget exhausted; notice not sent")
            }
            Err(e) => tracing::error!(error = %e, "failed to reserve a mail send"),
        }
    });
}

/// Creates, stores and mails a code, within the per-address budget.
#[tracing::instrument(skip_all, fields(email = %email.masked(), purpose = purpose.as_str()))]
async fn issue_code(
    state: &AppState,
    client: ClientIp,
    email: &Email,
    purpose: OtpPurpose,
    user: Option<User>,
) -> anyhow::Result<()> {
    let user = match user {
        Some(user) => Some(user),
        None => state.store.user_by_email(email.as_str()).await?,
    };
    let Some(user) = user else {
        tracing::info!("code requested for an address without an account; nothing sent");
        return Ok(());
    };
    let now = state.clock.now();
    // The budget is checked before a code is created, so a refused send never replaces
    // (and never refreshes the guess budget of) the outstanding code.
    if !reserve_mail(state, client, email).await? {
        tracing::info!("mail budget exhausted; no new code");
        return Ok(());
    }
    let code = state.otp.generate();
    let record = OneTimeCode {
        user_id: user.id.clone(),
        purpose,
        code_hash: state.otp.hash(purpose, &user.id, &code),
        attempts: 0,
        created_at: now,
        expires_at: now + to_chrono(state.config.otp_ttl),
    };
    let valid_minutes = state.config.otp_ttl.as_secs().div_ceil(60);
    let kind = match purpose {
        OtpPurpose::VerifyEmail => MailKind::VerificationCode {
            code: code.as_str().to_owned(),
            valid_minutes,
        },
        OtpPurpose::ResetPassword => MailKind::ResetCode {
            code: code.as_str().to_owned(),
            valid_minutes,
        },
    };
    // The code and the mail that carries it are stored together.
    state
        .outbox
        .put_code_and_mail(&record, email, &kind)
        .await?;
    Ok(())
}

/// Checks and consumes a code: one counted submission, constant-time comparison,
/// single use. Every failure is the same [`invalid_code`] error.
async fn redeem_code(
    state: &AppState,
    user: &User,
    purpose: OtpPurpose,
    code: &str,
) -> ApiResult<()> {
    let Some(code) = OtpCode::parse(code) else {
        return Err(invalid_code());
    };
    let Some(record) = state
        .store
        .take_code_attempt(&user.id, purpose, MAX_CODE_ATTEMPTS, state.clock.now())
        .await?
    else {
        return Err(invalid_code());
    };
    if !state
        .otp
        .matches(&record.code_hash, purpose, &user.id, &code)
    {
        tracing::info!(attempts = record.attempts, "wrong one-time code");
        return Err(invalid_code());
    }
    if !state
        .store
        .consume_code(&user.id, purpose, &record.code_hash)
        .await?
    {
        return Err(invalid_code());
    }
    Ok(())
}

/// `POST /auth/verify-otp`: proves the address, marks it verified, logs in.
#[tracing::instrument(skip_all, fields(email = %email.masked()))]
pub async fn verify_email(
    state: &AppState,
    device: &Device,
    email: Email,
    code: &str,
) -> ApiResult<IssuedTokens> {
    let Some(mut user) = state.store.user_by_email(email.as_str()).await? else {
        return Err(invalid_code());
    };
    redeem_code(state, &user, OtpPurpose::VerifyEmail, code).await?;
    if !user.is_verified {
        state
            .store
            .mark_verified(&user.id, state.clock.now())
            .await?;
        user.is_verified = true;
    }
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
    let check = PasswordCheck::reserve(state, AccountKey::for_login_input(email))?;
    let email = Email::parse(email, "username").ok();
    let found = match &email {
        Some(email) => state.store.user_by_email(email.as_str()).await,
        None => Ok(None),
    };
    let user = match found {
        Ok(user) => user,
        Err(e) => {
            // Nothing was checked: a store outage must not spend the user's budget.
            check.cancel(state);
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
    let rotated_at = match token.rotated_at {
        None if state.store.mark_refresh_rotated(&hash, now).await? => None,
        // Lost a race with a concurrent refresh of the same token: read when it rotated.
        None => state
            .store
            .refresh_token(&hash)
            .await?
            .and_then(|t| t.rotated_at),
        Some(at) => Some(at),
    };
    if let Some(at) = rotated_at {
        if now - at > ChronoDuration::seconds(REFRESH_REUSE_GRACE_SECONDS) {
            state.store.delete_session(&session.id).await?;
            tracing::warn!(session_id = %session.id, user_id = %session.user_id, "refresh token reuse detected; session revoked");
            return Err(ApiError::unauthorized(
                "refresh_token_reused",
                "Refresh token was already used; the session has been revoked",
            ));
        }
    }
    let Some(user) = state.store.user_by_id(&session.user_id).await? else {
        return Err(invalid_refresh_token());
    };
    let refresh_token = random_token(32);
    let next = RefreshToken {
        token_hash: sha256_hex(&refresh_token),
        session_id: session.id.clone(),
        issued_at: now,
        rotated_at: None,
    };
    match state.store.insert_refresh_token(&next).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => return Err(invalid_refresh_token()),
        Err(e) => return Err(e.into()),
    }
    issue_tokens(state, &session, refresh_token, user, now)
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
/// mails a notice, does not log in.
#[tracing::instrument(skip_all, fields(email = %email.masked()))]
pub async fn reset_password(
    state: &AppState,
    email: Email,
    code: &str,
    new_password: Password,
) -> ApiResult<()> {
    let Some(user) = state.store.user_by_email(email.as_str()).await? else {
        return Err(invalid_code());
    };
    redeem_code(state, &user, OtpPurpose::ResetPassword, code).await?;
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
