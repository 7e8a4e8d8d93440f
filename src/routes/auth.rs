//! `/auth/*`: thin handlers that parse input into domain types and call
//! [`crate::auth::service`].

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::{Form, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::users::UserProfile;
use super::{docs, schema};
use crate::auth::device::Device;
use crate::auth::service::{self, IssuedTokens, LogoutScope};
use crate::auth::AuthUser;
use crate::domain::{DisplayName, Email, Password, RequestablePurpose};
use crate::error::{ApiError, ApiResult, ErrorBody, FieldError, ValidationErrorBody};
use crate::extract::{body_bytes, content_type, form_error, is_json, parse_json, ApiJson};
use crate::limits::ClientIp;
use crate::startup::AppState;

pub fn router(state: AppState) -> OpenApiRouter<AppState> {
    let public = OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(send_verification_code))
        .routes(routes!(send_otp))
        .routes(routes!(verify_otp))
        .routes(routes!(login))
        .routes(routes!(reset_password))
        .routes(routes!(refresh_token))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            rate_limit_per_ip,
        ));
    OpenApiRouter::new()
        .merge(super::docs::rate_limited(
            public,
            "Too many requests from this client address (`AUTH_RATE_LIMIT_PER_MINUTE`, \
             shared by the unauthenticated auth routes); or, on login, too many failed \
             attempts for this address",
        ))
        .routes(routes!(verify_token))
        .routes(routes!(logout))
}

/// Per-client-IP budget on the unauthenticated auth routes (SECURITY.md 21). The client
/// IP is left in the request extensions for the handlers ([`ClientIp`]).
async fn rate_limit_per_ip(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    mut request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let ip = crate::limits::client_ip(peer.ip(), request.headers(), &state.config.trusted_proxies);
    match state.limits.check_auth(ip).await {
        Ok(()) => {
            request.extensions_mut().insert(ClientIp(ip));
            next.run(request).await
        }
        Err(e) => {
            tracing::info!(%ip, "auth rate limit reached");
            axum::response::IntoResponse::into_response(e)
        }
    }
}

/// Other spellings serde accepts, declared in the document (see `docs::finish`).
pub const ALIASES: docs::Aliases = &[
    ("RegisterRequest", &[("displayName", "display_name")]),
    ("VerifyOtpRequest", &[("otp", "code")]),
    (
        "ResetPasswordRequest",
        &[("otp", "code"), ("newPassword", "new_password")],
    ),
    ("RefreshRequest", &[("refreshToken", "refresh_token")]),
];

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(schema_with = schema::email)]
    pub email: String,
    #[schema(schema_with = schema::new_password)]
    pub password: String,
    #[serde(default, alias = "displayName")]
    #[schema(schema_with = schema::display_name)]
    pub display_name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendCodeRequest {
    #[schema(schema_with = schema::email)]
    pub email: String,
    /// `verify_email` (default) or `reset_password`.
    #[serde(default)]
    pub purpose: Option<RequestablePurpose>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyOtpRequest {
    #[schema(schema_with = schema::email)]
    pub email: String,
    #[serde(alias = "otp")]
    #[schema(schema_with = schema::code)]
    pub code: String,
}

/// JSON login: `email` (or `username`, as the OAuth2 form calls it) and `password`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginJson {
    pub email: Option<String>,
    pub username: Option<String>,
    pub password: String,
}

/// OAuth2 password-flow form (what Swagger UI's "Authorize" sends).
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginForm {
    /// The email address.
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub grant_type: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetPasswordRequest {
    #[schema(schema_with = schema::email)]
    pub email: String,
    #[serde(alias = "otp")]
    #[schema(schema_with = schema::code)]
    pub code: String,
    #[serde(alias = "newPassword")]
    #[schema(schema_with = schema::new_password)]
    pub new_password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[serde(alias = "refreshToken")]
    pub refresh_token: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    /// `local` (default): this session; `global`: every session; `others`: every
    /// session but this one.
    #[serde(default)]
    pub scope: Option<LogoutScope>,
}

/// A new token pair.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// JWT (HS512), sent as `Authorization: Bearer ...`.
    pub access_token: String,
    /// Opaque; exchange it at `/auth/refresh-token` (each use rotates it).
    pub refresh_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub user: UserProfile,
}

impl From<IssuedTokens> for TokenResponse {
    fn from(tokens: IssuedTokens) -> Self {
        Self {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            token_type: "bearer".to_owned(),
            expires_in: tokens.expires_in,
            user: tokens.user.into(),
        }
    }
}

/// An acknowledgement that says nothing about whether the account exists.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageResponse {
    pub detail: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyTokenResponse {
    pub valid: bool,
    pub user: UserProfile,
    /// When the presented access token expires.
    #[serde(serialize_with = "crate::domain::timestamp::serialize")]
    pub expires_at: DateTime<Utc>,
}

/// One 422 listing every field that failed to parse.
fn all_errors<const N: usize>(errors: [Option<FieldError>; N]) -> ApiError {
    ApiError::Validation(errors.into_iter().flatten().collect())
}

fn message(detail: &str) -> Json<MessageResponse> {
    Json(MessageResponse {
        detail: detail.to_owned(),
    })
}

/// Register a new account; a verification code is mailed.
///
/// Answers 202 with the same body whether or not the address already has an account
/// (its owner gets a "someone tried to sign up" mail instead).
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 202, description = "Accepted; check your mail", body = MessageResponse),
        (status = 422, description = "Invalid input", body = ValidationErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    client: ClientIp,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<MessageResponse>)> {
    let parsed = (
        Email::parse(&req.email, "email"),
        Password::parse(&req.password, "password"),
        req.display_name
            .as_deref()
            .map(|raw| DisplayName::parse(raw, "display_name"))
            .transpose(),
    );
    let (email, password, display_name) = match parsed {
        (Ok(email), Ok(password), Ok(display_name)) => (email, password, display_name),
        (email, password, display_name) => {
            return Err(all_errors([
                email.err(),
                password.err(),
                display_name.err(),
            ]))
        }
    };
    service::register(&state, client, email, password, display_name).await?;
    Ok((
        StatusCode::ACCEPTED,
        message("If this address can be registered, a verification code is on its way."),
    ))
}

/// Send a one-time code by mail (`purpose`: `verify_email` or `reset_password`).
///
/// Always 202 with the same body: unknown addresses, addresses inside their cooldown and
/// addresses over their hourly budget get the same answer, and no mail.
#[utoipa::path(post, path = "/auth/send-verification-code", tag = "auth", request_body = SendCodeRequest,
    responses(
        (status = 202, description = "Accepted", body = MessageResponse),
        (status = 422, description = "Invalid input", body = ValidationErrorBody),
    ))]
pub async fn send_verification_code(
    State(state): State<AppState>,
    client: ClientIp,
    ApiJson(req): ApiJson<SendCodeRequest>,
) -> ApiResult<(StatusCode, Json<MessageResponse>)> {
    let email = Email::parse(&req.email, "email").map_err(ApiError::validation)?;
    service::request_code(&state, client, email, req.purpose.unwrap_or_default());
    Ok((
        StatusCode::ACCEPTED,
        message("If an account exists for this address, a code is on its way."),
    ))
}

/// The old service's name for `/auth/send-verification-code`; identical behaviour.
#[utoipa::path(post, path = "/auth/send-otp", tag = "auth", request_body = SendCodeRequest,
    operation_id = "send_otp",
    responses(
        (status = 202, description = "Accepted", body = MessageResponse),
        (status = 422, description = "Invalid input", body = ValidationErrorBody),
    ))]
pub async fn send_otp(
    state: State<AppState>,
    client: ClientIp,
    body: ApiJson<SendCodeRequest>,
) -> ApiResult<(StatusCode, Json<MessageResponse>)> {
    send_verification_code(state, client, body).await
}

/// Verify the email address with the mailed code; logs in.
#[utoipa::path(post, path = "/auth/verify-otp", tag = "auth", request_body = VerifyOtpRequest,
    responses(
        (status = 200, description = "Verified; a new session", body = TokenResponse),
        (status = 400, description = "Invalid or expired verification code", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ValidationErrorBody),
    ))]
pub async fn verify_otp(
    State(state): State<AppState>,
    device: Device,
    ApiJson(req): ApiJson<VerifyOtpRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let email = Email::parse(&req.email, "email").map_err(ApiError::validation)?;
    let tokens = service::verify_email(&state, &device, email, &req.code).await?;
    Ok(Json(tokens.into()))
}

/// Log in with email and password: OAuth2 password form (`username`, `password`) or
/// JSON (`email` or `username`, `password`).
#[utoipa::path(post, path = "/auth/login", tag = "auth",
    request_body(content(
        (LoginForm = "application/x-www-form-urlencoded"),
        (LoginJson = "application/json"),
    )),
    responses(
        (status = 200, description = "A new session", body = TokenResponse),
        (status = 401, description = "Incorrect email or password", body = ErrorBody),
        (status = 403, description = "Email not verified (only after a correct password)", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ValidationErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    device: Device,
    req: Request,
) -> ApiResult<Json<TokenResponse>> {
    let form = content_type(&req).is_some_and(|ct| {
        ct.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let (email, password) = if form {
        let Form(form) = Form::<LoginForm>::from_request(req, &state)
            .await
            .map_err(form_error)?;
        (form.username, form.password)
    } else if is_json(&req) {
        let body: LoginJson = parse_json(&body_bytes(req).await?)?;
        let email = match (body.email, body.username) {
            (Some(email), _) | (None, Some(email)) => email,
            (None, None) => {
                return Err(ApiError::validation(FieldError::body(
                    "email",
                    "field required (email or username)",
                    "missing",
                )))
            }
        };
        (email, body.password)
    } else {
        return Err(ApiError::UnsupportedMediaType);
    };
    let tokens = service::login(&state, &device, &email, &password).await?;
    Ok(Json(tokens.into()))
}

/// Set a new password with a `reset_password` code. Revokes every session; does not log in.
#[utoipa::path(post, path = "/auth/reset-password", tag = "auth", request_body = ResetPasswordRequest,
    responses(
        (status = 200, description = "Password changed", body = MessageResponse),
        (status = 400, description = "Invalid or expired verification code", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ValidationErrorBody),
    ))]
pub async fn reset_password(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ResetPasswordRequest>,
) -> ApiResult<Json<MessageResponse>> {
    let (email, password) = match (
        Email::parse(&req.email, "email"),
        Password::parse(&req.new_password, "new_password"),
    ) {
        (Ok(email), Ok(password)) => (email, password),
        (email, password) => return Err(all_errors([email.err(), password.err()])),
    };
    service::reset_password(&state, email, &req.code, password).await?;
    Ok(message(
        "Password has been reset and every session signed out. Log in with your new password.",
    ))
}

/// Exchange a refresh token for a new pair. Each token works once (a 10 s grace covers
/// two tabs refreshing together); a later reuse revokes the whole session.
#[utoipa::path(post, path = "/auth/refresh-token", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair", body = TokenResponse),
        (status = 401, description = "Invalid, expired or reused refresh token", body = ErrorBody),
    ))]
pub async fn refresh_token(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let tokens = service::refresh(&state, &req.refresh_token).await?;
    Ok(Json(tokens.into()))
}

/// Check the bearer token; returns the user and the token's expiry.
#[utoipa::path(get, path = "/auth/verify-token", tag = "auth",
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 200, description = "The token is valid", body = VerifyTokenResponse),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = ErrorBody),
    ))]
pub async fn verify_token(auth: AuthUser) -> ApiResult<Json<VerifyTokenResponse>> {
    Ok(Json(VerifyTokenResponse {
        valid: true,
        expires_at: auth.expires_at,
        user: auth.user.into(),
    }))
}

/// End this session (`local`, the default), every session (`global`), or every other
/// session (`others`). The access token stops working at once.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", request_body(content = Option<LogoutRequest>),
    security(("bearer" = []), ("oauth2" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Missing, invalid, expired or revoked token", body = ErrorBody),
    ))]
pub async fn logout(
    State(state): State<AppState>,
    auth: AuthUser,
    req: Request,
) -> ApiResult<StatusCode> {
    let has_type = content_type(&req).is_some();
    let json = is_json(&req);
    let bytes = body_bytes(req).await?;
    // No body, or JSON `null` (as FastAPI's optional bodies allow): the defaults.
    let body: LogoutRequest =
        if bytes.iter().all(u8::is_ascii_whitespace) || (json && bytes.trim_ascii() == b"null") {
            LogoutRequest::default()
        } else if json || !has_type {
            parse_json(&bytes)?
        } else {
            return Err(ApiError::UnsupportedMediaType);
        };
    service::logout(&state, &auth, body.scope.unwrap_or_default()).await?;
    Ok(StatusCode::NO_CONTENT)
}
