//! Self-service account flows for a signed-in user: the devices they are signed in on,
//! signing one out, and changing the password. Handlers parse input into domain types
//! and call these.

use super::confirm::confirm_password;
use super::AuthUser;
use crate::domain::{Email, Password};
use crate::email::MailKind;
use crate::error::{ApiError, ApiResult};
use crate::limits::ClientIp;
use crate::startup::AppState;
use crate::store::{DeviceSession, OtherSessions, User, MAX_LISTED_SESSIONS};

/// Session ids are 32 hex characters; anything else cannot name one of ours.
const SESSION_ID_LEN: usize = 32;

fn session_not_found() -> ApiError {
    ApiError::NotFound("Session".into())
}

/// The signed-in user's record; a token whose user is gone is no longer valid.
pub async fn current_user(state: &AppState, auth: &AuthUser) -> ApiResult<User> {
    state
        .store
        .user_by_id(&auth.user_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "Could not validate credentials"))
}

/// `GET /auth/sessions`: the caller's live sessions, most recently used first.
pub async fn devices(state: &AppState, auth: &AuthUser) -> ApiResult<Vec<DeviceSession>> {
    Ok(state
        .store
        .user_devices(&auth.user_id, state.clock.now(), MAX_LISTED_SESSIONS)
        .await?)
}

/// `DELETE /auth/sessions/{id}`: signs one of the caller's sessions out (its access tokens
/// stop at once). Another user's session, or none, is 404, the same answer.
#[tracing::instrument(skip_all, fields(user_id = %auth.user_id))]
pub async fn sign_out_device(state: &AppState, auth: &AuthUser, session_id: &str) -> ApiResult<()> {
    let plausible =
        session_id.len() == SESSION_ID_LEN && session_id.bytes().all(|b| b.is_ascii_hexdigit());
    if !plausible
        || !state
            .store
            .delete_user_session(&auth.user_id, session_id)
            .await?
    {
        return Err(session_not_found());
    }
    tracing::info!(session_id, "session signed out by its owner");
    Ok(())
}

/// `POST /auth/change-password`: the current password is confirmed like every password
/// check (SECURITY.md 27), the new one is stored, the other sessions are signed out
/// unless `keep_other_sessions`, and the owner gets a notice.
#[tracing::instrument(skip_all, fields(user_id = %auth.user_id))]
pub async fn change_password(
    state: &AppState,
    auth: &AuthUser,
    client: ClientIp,
    current_password: &str,
    new_password: Password,
    keep_other_sessions: bool,
) -> ApiResult<()> {
    let user = current_user(state, auth).await?;
    confirm_password(state, &user, client, current_password).await?;
    let hash = state.hasher.hash(&new_password).await?;
    let others = if keep_other_sessions {
        OtherSessions::Keep
    } else {
        OtherSessions::SignOut {
            keep: auth.session_id.clone(),
        }
    };
    if !state
        .store
        .change_password(&user.id, &hash, &others, state.clock.now())
        .await?
    {
        // Deleted meanwhile: the token is no longer valid.
        return Err(ApiError::unauthorized(
            "invalid_token",
            "Could not validate credentials",
        ));
    }
    tracing::info!(keep_other_sessions, "password changed");
    // An address stored by the old service that today's rules refuse cannot be mailed;
    // the change itself stands.
    let Ok(email) = Email::parse(&user.email, "email") else {
        tracing::warn!("stored address does not parse; no password-change notice sent");
        return Ok(());
    };
    let kind = MailKind::PasswordUpdated {
        others_signed_out: !keep_other_sessions,
    };
    state.outbox.enqueue(&email, &kind).await?;
    Ok(())
}
