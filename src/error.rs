//! The one error type handlers return, and how it becomes an HTTP response.
//!
//! Every error leaves the service as `{"detail": ..., "code": ...}`; validation errors
//! carry `detail` as a list of `{loc, msg, type}` (the shape FastAPI clients parse).
//! A 5xx never carries internals: the cause is logged once, here, with the request span.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// One entry of a 422 body: where, what, and a machine type.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
pub struct FieldError {
    /// Path to the offending value, e.g. `["body", "email"]`.
    #[schema(value_type = Vec<String>)]
    pub loc: Vec<serde_json::Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl FieldError {
    /// An error about one field of the JSON body.
    pub fn body(field: &str, msg: impl Into<String>, kind: &str) -> Self {
        Self {
            loc: vec!["body".into(), field.into()],
            msg: msg.into(),
            kind: kind.to_owned(),
        }
    }

    /// An error about one query parameter.
    pub fn query(field: &str, msg: impl Into<String>, kind: &str) -> Self {
        Self {
            loc: vec!["query".into(), field.into()],
            msg: msg.into(),
            kind: kind.to_owned(),
        }
    }
}

/// Error body for every non-validation error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Human-readable message.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
}

/// Error body for 422 responses.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationErrorBody {
    pub detail: Vec<FieldError>,
    /// Always `validation_error`.
    pub code: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("bad request: {detail}")]
    BadRequest { code: &'static str, detail: String },
    #[error("unauthorized: {detail}")]
    Unauthorized { code: &'static str, detail: String },
    #[error("forbidden: {detail}")]
    Forbidden { code: &'static str, detail: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// A 409 with a code of its own (e.g. `email_taken`), for a conflict the client can
    /// tell its user about.
    #[error("conflict: {detail}")]
    ConflictWith { code: &'static str, detail: String },
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("request target too long")]
    UriTooLong,
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn validation(field: FieldError) -> Self {
        Self::Validation(vec![field])
    }

    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Unauthorized {
            code,
            detail: detail.into(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            detail: detail.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) | Self::ConflictWith { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code_and_detail(&self) -> (&str, String) {
        match self {
            Self::Validation(_) => ("validation_error", String::new()),
            Self::BadRequest { code, detail }
            | Self::Unauthorized { code, detail }
            | Self::Forbidden { code, detail }
            | Self::ConflictWith { code, detail } => (code, detail.clone()),
            Self::NotFound(what) => ("not_found", format!("{what} not found")),
            Self::Conflict(detail) => ("conflict", detail.clone()),
            Self::PayloadTooLarge => (
                "payload_too_large",
                format!(
                    "Request body exceeds the limit of {} bytes",
                    crate::startup::BODY_LIMIT_BYTES
                ),
            ),
            Self::UnsupportedMediaType => (
                "unsupported_media_type",
                "Expected Content-Type: application/json".to_owned(),
            ),
            Self::UriTooLong => (
                "uri_too_long",
                format!(
                    "The request target exceeds {} bytes",
                    crate::startup::MAX_URI_BYTES
                ),
            ),
            Self::HeadersTooLarge => (
                "headers_too_large",
                format!(
                    "The request headers exceed {} bytes or {} fields",
                    crate::startup::MAX_HEADER_BYTES,
                    crate::startup::MAX_HEADER_COUNT
                ),
            ),
            Self::MethodNotAllowed => ("method_not_allowed", "Method not allowed".to_owned()),
            Self::TooManyRequests { .. } => (
                "rate_limited",
                "Too many requests, try again later".to_owned(),
            ),
            Self::Unavailable(_) => (
                "service_unavailable",
                "The service is temporarily unavailable".to_owned(),
            ),
            Self::Internal(_) => ("internal_error", "Internal server error".to_owned()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(what) => Self::Conflict(what),
            StoreError::Unavailable(e) => Self::Unavailable(e),
            // An opaque 500; the log (one line, in `into_response`) names the record.
            corrupt @ StoreError::Corrupt { .. } => Self::Internal(corrupt.into()),
            StoreError::Other(e) => Self::Internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(e) => tracing::error!(error = ?e, "request failed"),
            Self::Unavailable(e) => tracing::warn!(error = %e, "store unavailable"),
            _ => {}
        }
        let unauthorized = matches!(self, Self::Unauthorized { .. });
        let retry_after = match self {
            Self::TooManyRequests { retry_after_secs } => Some(retry_after_secs),
            _ => None,
        };
        let mut response = if let Self::Validation(errors) = self {
            (
                status,
                axum::Json(ValidationErrorBody {
                    detail: errors,
                    code: "validation_error".to_owned(),
                }),
            )
                .into_response()
        } else {
            let (code, detail) = self.code_and_detail();
            let body = ErrorBody {
                detail,
                code: code.to_owned(),
            };
            (status, axum::Json(body)).into_response()
        };
        if unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(retry_after_secs) = retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs.max(1)),
            );
        }
        response
    }
}

/// Handler result type.
pub type ApiResult<T> = Result<T, ApiError>;

/// Collects every field error of a request before answering, so a client sees all of
/// its mistakes in one 422.
#[derive(Default)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// Keeps the value, or records its error.
    pub fn check<T>(&mut self, parsed: Result<T, FieldError>) -> Option<T> {
        parsed.map_err(|e| self.0.push(e)).ok()
    }

    pub fn push(&mut self, error: FieldError) {
        self.0.push(error);
    }

    /// `Err(422)` when anything was recorded.
    pub fn finish(self) -> ApiResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(err: ApiError) -> (StatusCode, serde_json::Value) {
        let response = err.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn each_variant_has_its_status_and_envelope() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (
                ApiError::validation(FieldError::body("email", "bad", "value_error")),
                422,
                "validation_error",
            ),
            (
                ApiError::bad_request("invalid_code", "x"),
                400,
                "invalid_code",
            ),
            (
                ApiError::unauthorized("invalid_token", "x"),
                401,
                "invalid_token",
            ),
            (
                ApiError::Forbidden {
                    code: "email_not_verified",
                    detail: "x".into(),
                },
                403,
                "email_not_verified",
            ),
            (ApiError::NotFound("User".into()), 404, "not_found"),
            (ApiError::Conflict("x".into()), 409, "conflict"),
            (
                ApiError::ConflictWith {
                    code: "email_taken",
                    detail: "x".into(),
                },
                409,
                "email_taken",
            ),
            (ApiError::PayloadTooLarge, 413, "payload_too_large"),
            (
                ApiError::UnsupportedMediaType,
                415,
                "unsupported_media_type",
            ),
            (ApiError::MethodNotAllowed, 405, "method_not_allowed"),
            (ApiError::UriTooLong, 414, "uri_too_long"),
            (ApiError::HeadersTooLarge, 431, "headers_too_large"),
            (
                ApiError::TooManyRequests {
                    retry_after_secs: 3,
                },
                429,
                "rate_limited",
            ),
            (
                ApiError::Unavailable(anyhow::anyhow!("db down")),
                503,
                "service_unavailable",
            ),
            (
                ApiError::Internal(anyhow::anyhow!("secret internals")),
                500,
                "internal_error",
            ),
        ];
        for (err, status, code) in cases {
            let (got_status, body) = body_of(err).await;
            assert_eq!(got_status.as_u16(), status, "status for {code}");
            assert_eq!(body["code"], code, "code for {code}");
            assert!(body.get("detail").is_some(), "detail present for {code}");
        }
    }

    #[tokio::test]
    async fn internal_errors_do_not_leak_their_cause() {
        let (_, body) = body_of(ApiError::Internal(anyhow::anyhow!("password=hunter2"))).await;
        assert!(!body.to_string().contains("hunter2"));
    }

    #[tokio::test]
    async fn an_unreadable_record_is_an_opaque_500() {
        let corrupt =
            crate::store::StoreError::corrupt("users", "64f0c0ffee", "battery_level: 150");
        let (status, body) = body_of(ApiError::from(corrupt)).await;
        assert_eq!(status.as_u16(), 500);
        assert_eq!(body["code"], "internal_error");
        assert!(!body.to_string().contains("64f0c0ffee"), "{body}");
    }

    #[tokio::test]
    async fn rate_limited_responses_carry_retry_after() {
        let response = ApiError::TooManyRequests {
            retry_after_secs: 42,
        }
        .into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "42");
    }
}
