//! What a signed-in user does with their account besides the profile: the devices they
//! are signed in on (`/auth/sessions`) and changing the password
//! (`/auth/change-password`), and taking their data with them (`/users/me/export`). Thin handlers over [`crate::auth::account`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::social_battery::ActivityRecord;
use super::users::UserProfile;
use super::{docs, schema};
use crate::auth::export::{self, ExportFormat};
use crate::auth::{account, AuthUser};
use crate::domain::Password;
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
}

/// Other spellings serde accepts, declared in the document (see `docs::finish`).
pub const ALIASES: docs::Aliases = &[(
    "ChangePasswordRequest",
    &[
        ("currentPassword", "current_password"),
        ("newPassword", "new_password"),
        ("keepOtherSessions", "keep_other_sessions"),
    ],
)];

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
