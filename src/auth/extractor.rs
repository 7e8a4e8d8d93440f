//! [`AuthUser`]: a handler that takes one is protected.
//!
//! The bearer token must verify (HS512, known `kid`, `aud`, `iss`, `exp`, type
//! `access`) *and* its session must still exist in the store, so logout and reuse
//! revocation take effect on the very next request (SECURITY.md 19). The session check
//! reads the user too ([`CallerStore`](crate::store::CallerStore), one round trip on
//! MongoDB), so a handler that needs the caller's profile or battery reads nothing more.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};

use crate::error::ApiError;
use crate::startup::AppState;
use crate::store::{BatteryPosition, User};

/// The caller, authenticated.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: String,
    pub session_id: String,
    /// When the presented access token expires.
    pub expires_at: DateTime<Utc>,
    /// The caller's account as read with the session check.
    pub user: User,
    /// Where the caller's battery stood at that read.
    pub battery: BatteryPosition,
}

fn unauthorized() -> ApiError {
    ApiError::unauthorized("invalid_token", "Could not validate credentials")
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 4096)
        .then_some(token)
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(unauthorized)?;
        let claims = state.keys.verify(token, state.clock.now()).map_err(|e| {
            tracing::debug!(reason = %e, "access token rejected");
            unauthorized()
        })?;
        let caller = state.store.caller(&claims.sid, &claims.sub).await?;
        match caller {
            Some(c) if c.session.expires_at > state.clock.now() => Ok(Self {
                expires_at: claims.expires_at(),
                user_id: claims.sub,
                session_id: claims.sid,
                user: c.user,
                battery: c.battery,
            }),
            _ => {
                tracing::debug!("access token of a revoked or expired session");
                Err(unauthorized())
            }
        }
    }
}
