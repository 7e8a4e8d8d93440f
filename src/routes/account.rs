//! What a signed-in user does with their account besides the profile: the devices they
//! are signed in on (`/auth/sessions`), changing the password (`/auth/change-password`)
//! and the address (`/users/me/email`, `/users/me/email/confirm`), and taking their data
//! with them (`/users/me/export`). Thin handlers over [`crate::auth::account`] and
//! [`crate::auth::email_change`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::MessageResponse;
use super::social_battery::ActivityRecord;
use super::users::UserProfile;
use super::{docs, schema};
use crate::auth::export::{self, ExportFormat};
use crate::auth::{account, email_change, AuthUser};
use crate::domain::{Email, Password};
use crate::error::{ApiResult, ErrorBody, ValidationErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::limits::ClientIp;
use crate::startup::AppState;
use crate::store::DeviceSession;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_sessions))
        .routes(routes!(delete_session))
        .merge(docs::rate_limited(
            OpenApiRouter::new().routes(routes!(export)),
            "More than 5 exports in an hour by this user (a burst of 5, then one every 12 minutes)",
        ))
        .merge(docs::rate_limited(
            OpenApiRouter::new().routes(routes!(change_password)),
            "Too many password checks: this account's failed-password budget (shared with \
             login) or this client's auth budget is spent",
        ))
        .merge(docs::rate_limited(
            OpenApiRouter::new().routes(routes!(change_email)),
            "Too many password checks: this account's failed-password budget (shared with \
             login) or this client's auth budget is spent",
        ))
        .merge(docs::rate_limited(
            OpenApiRouter::new().routes(routes!(confirm_email_change)),
            "This client's auth budget is spent",
        ))
}

/// Other spellings serde accepts, declared in the document (see `docs::finish`).
pub const ALIASES: docs::Aliases = &[
    (
        "ChangePasswordRequest",
        &[
            ("currentPassword", "current_password"),
            ("newPassword", "new_password"),
            ("keepOtherSessions", "keep_other_sessions"),
        ],
    ),
    ("ChangeEmailRequest", &[("newEmail", "new_email")]),
];

/// One session of the caller: a device they are signed in on.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionItem {
    pub id: String,
    pub created_at: DateTime<Utc>,
    /// When the session last signed in or refreshed its tokens (access tokens are not
    /// counted one by one: this is accurate to the access-token lifetime).
    pub last_used_at: DateTime<Utc>,
    /// A short description of the client from its `User-Agent`, e.g. "Firefox on Linux";
    /// `null` for sessions opened before devices were recorded.
    pub client: Option<String>,
    /// The network the session was opened from: IPv4 /24 or IPv6 /48.
    pub ip: Option<String>,
    /// Whether this is the session of the token that asked.
    pub current: bool,
}

/// The caller's live sessions, most recently used first (at most 100).
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub items: Vec<SessionItem>,
}

fn item(session: DeviceSession, current: &str) -> SessionItem {
    SessionItem {
        current: session.id == current,
        id: session.id,
        created_at: session.created_at,
        last_used_at: session.last_used_at,
        client: session.client,
        ip: session.ip,
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    #[serde(alias = "currentPassword")]
    pub current_password: String,
    #[serde(alias = "newPassword")]
    #[schema(schema_with = schema::new_password)]
    pub new_password: String,
    /// `false` (default): every other session is signed out; `true`: they stay.
    #[serde(default, alias = "keepOtherSessions")]
    pub keep_other_sessions: bool,
}

/// The devices the caller is signed in on.
#[utoipa::path(get, path = "/auth/sessions", tag = "auth",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The caller's sessions", body = SessionList),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = ErrorBody),
    ))]
pub async fn list_sessions(
    State(state): State<AppState>,
    auth: AuthUser,
) -> ApiResult<Json<SessionList>> {
    let sessions = account::devices(&state, &auth).await?;
    Ok(Json(SessionList {
        items: sessions
            .into_iter()
            .map(|s| item(s, &auth.session_id))
            .collect(),
    }))
}

/// Sign one of the caller's sessions out; its access tokens stop working at once. The
/// caller's own session may be named too (like `logout`).
#[utoipa::path(delete, path = "/auth/sessions/{id}", tag = "auth",
    params(("id" = String, Path, description = "A session id from `GET /auth/sessions`")),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = ErrorBody),
        (status = 404, description = "No such session of the caller (another user's id included)", body = ErrorBody),
    ))]
pub async fn delete_session(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    account::sign_out_device(&state, &auth, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change the password while signed in: the current password and a new one (same rules
/// as at sign-up). Other sessions are signed out unless `keep_other_sessions`; this one
/// stays. A notice is mailed.
#[utoipa::path(post, path = "/auth/change-password", tag = "auth", request_body = ChangePasswordRequest,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Changed"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = ErrorBody),
        (status = 403, description = "Wrong current password", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ValidationErrorBody),
    ))]
pub async fn change_password(
    State(state): State<AppState>,
    auth: AuthUser,
    client: ClientIp,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> ApiResult<StatusCode> {
    let new_password = Password::parse(&req.new_password, "new_password")
        .map_err(crate::error::ApiError::validation)?;
    account::change_password(
        &state,
        &auth,
        client,
        &req.current_password,
        new_password,
        req.keep_other_sessions,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `json` (default): profile, sessions and history; `csv`: the history.
    #[param(inline)]
    pub format: Option<ExportFormat>,
}

/// What `?format=json` returns (streamed; the history is newest first).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportDocument {
    pub profile: UserProfile,
    pub sessions: Vec<SessionItem>,
    pub history: Vec<ActivityRecord>,
}

/// Download everything the service keeps about you: the data-access right that goes with
/// `DELETE /users/me`. JSON: `{profile, sessions, history}`; CSV: the history, a header
/// line and one line per interaction (free text starting with `= + - @` is prefixed with
/// `'`). Streamed: the size of the history does not matter. A body that ends without its
/// end (no closing `]}`) was cut off by a server error and is incomplete.
#[utoipa::path(get, path = "/users/me/export", tag = "users", params(ExportQuery),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The export, as an attachment",
            content(
                (ExportDocument = "application/json"),
                (String = "text/csv"),
            )),
        (status = 401, description = "Missing, invalid, expired or revoked token (a deleted account has none)", body = ErrorBody),
        (status = 422, description = "Unknown format", body = ValidationErrorBody),
    ))]
pub async fn export(
    State(state): State<AppState>,
    auth: AuthUser,
    query: Result<ApiQuery<ExportQuery>, crate::error::ApiError>,
) -> ApiResult<axum::response::Response> {
    let ApiQuery(query) = query?;
    state.limits.check_export(&auth.user_id).await?;
    let format = query.format.unwrap_or_default();
    let user = account::current_user(&state, &auth).await?;
    let sessions = account::devices(&state, &auth)
        .await?
        .into_iter()
        .map(|s| item(s, &auth.session_id))
        .collect();
    let body = export::body(state, user.id.clone(), format, user.into(), sessions)
        .map_err(|e| crate::error::ApiError::Internal(e.into()))?;
    let (content_type, file) = match format {
        ExportFormat::Json => ("application/json", "introgy-export.json"),
        ExportFormat::Csv => ("text/csv; charset=utf-8", "introgy-history.csv"),
    };
    tracing::info!(user_id = %auth.user_id, ?format, "export started");
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, content_type)
        .header(
            axum::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file}\""),
        )
        .body(body)
        .map_err(|e| crate::error::ApiError::Internal(e.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeEmailRequest {
    /// The address to move to; a code goes there.
    #[serde(alias = "newEmail")]
    #[schema(schema_with = schema::email)]
    pub new_email: String,
    /// The current password, to confirm.
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmEmailChangeRequest {
    #[schema(schema_with = schema::code)]
    pub code: String,
}

/// Ask to change the caller's address: the current password and the new address. A code
/// goes to the new address (valid `OTP_TTL_SECONDS`, five guesses, single use; at most
/// one mail per 60 s and five per hour to an address). A newer request replaces a pending
/// one. The answer is the same whether or not the address can be had: an address that
/// belongs to another account gets a notice instead of a code, and its owner's account
/// is not touched.
#[utoipa::path(post, path = "/users/me/email", tag = "users", request_body = ChangeEmailRequest,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 202, description = "Accepted: if the address can be used, a code is on its way to it", body = MessageResponse),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = ErrorBody),
        (status = 403, description = "Wrong current password", body = ErrorBody),
        (status = 422, description = "Invalid input (including the account's own address)", body = ValidationErrorBody),
    ))]
pub async fn change_email(
    State(state): State<AppState>,
    auth: AuthUser,
    client: ClientIp,
    ApiJson(req): ApiJson<ChangeEmailRequest>,
) -> ApiResult<(StatusCode, Json<MessageResponse>)> {
    let new_email =
        Email::parse(&req.new_email, "new_email").map_err(crate::error::ApiError::validation)?;
    email_change::request_email_change(&state, &auth, client, &req.password, new_email).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(MessageResponse {
            detail: "If this address can be used, a code is on its way to it. Enter it to \
                     confirm the change."
                .into(),
        }),
    ))
}

/// Confirm the change with the code mailed to the new address: the address switches,
/// every other session is signed out (this one stays), every outstanding code of the
/// account dies, and the old address gets a notice. Returns the profile.
#[utoipa::path(post, path = "/users/me/email/confirm", tag = "users", request_body = ConfirmEmailChangeRequest,
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "Changed; the profile with the new address", body = UserProfile),
        (status = 400, description = "Wrong, expired, used or replaced code (`invalid_code`)", body = ErrorBody),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = ErrorBody),
        (status = 409, description = "Another account has the address now (`email_taken`); the address is unchanged and the code spent", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ValidationErrorBody),
    ))]
pub async fn confirm_email_change(
    State(state): State<AppState>,
    auth: AuthUser,
    client: ClientIp,
    ApiJson(req): ApiJson<ConfirmEmailChangeRequest>,
) -> ApiResult<Json<UserProfile>> {
    let user = email_change::confirm_email_change(&state, &auth, client, &req.code).await?;
    Ok(Json(user.into()))
}
