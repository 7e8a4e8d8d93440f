//! Request extractors whose rejections are [`ApiError`]s, so malformed input gets our
//! JSON envelope (422 with `{loc, msg, type}` entries, 413, 415) and never a plain-text
//! axum rejection.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, FieldError};

/// `Json<T>` with our error envelope. Also requires `Content-Type: application/json`.
pub struct ApiJson<T>(pub T);

/// True when the request declares a JSON body (`application/json`, `...+json`).
pub fn is_json(req: &Request) -> bool {
    content_type(req).is_some_and(|ct| {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    })
}

pub fn content_type(req: &Request) -> Option<&str> {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// Reads the whole body within the configured limit.
pub async fn body_bytes(req: Request) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::bad_request("body_unreadable", "The request body could not be read")
        }
    })
}

/// Parses JSON into `T`, turning serde's complaint into a FastAPI-shaped 422 entry.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        ApiError::Validation(vec![describe(&path, err.inner())])
    })?;
    // Reject trailing garbage after the JSON value.
    de.end()
        .map_err(|e| ApiError::Validation(vec![describe("", &e)]))?;
    Ok(value)
}

fn describe(path: &str, err: &serde_json::Error) -> FieldError {
    use serde_json::error::Category;
    let mut loc: Vec<serde_json::Value> = vec!["body".into()];
    loc.extend(
        path.split('.')
            .filter(|s| !s.is_empty() && *s != "?")
            .map(|s| serde_json::Value::from(s.to_owned())),
    );
    let message = err.to_string();
    // serde_json appends " at line L column C"; the location is in `loc` already.
    let msg = message
        .rsplit_once(" at line ")
        .map(|(head, _)| head.to_owned())
        .unwrap_or(message.clone());
    let field_in = |prefix: &str| {
        msg.strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    let kind = match err.classify() {
        // A syntax complaint at a located value (e.g. a number where an enum name is
        // expected) is about that value, not about the document.
        Category::Syntax if loc.len() > 1 => "value_error",
        Category::Syntax | Category::Eof => "json_invalid",
        Category::Io => "json_invalid",
        Category::Data => {
            if let Some(field) = field_in("missing field `") {
                loc.push(field.into());
                "missing"
            } else if let Some(field) = field_in("unknown field `") {
                // The path already ends at the unknown field; name it once.
                if loc.last() != Some(&serde_json::Value::from(field.clone())) {
                    loc.push(field.into());
                }
                "extra_forbidden"
            } else if msg.starts_with("invalid type") {
                "type_error"
            } else {
                "value_error"
            }
        }
    };
    FieldError {
        loc,
        msg,
        kind: kind.to_owned(),
    }
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        if !is_json(&req) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = body_bytes(req).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        email: String,
        count: u8,
    }

    fn error_of(body: &str) -> FieldError {
        match parse_json::<Sample>(body.as_bytes()) {
            Err(ApiError::Validation(mut errors)) => errors.remove(0),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn bad_bodies_become_located_validation_errors() {
        let cases = [
            ("{", vec!["body"], "json_invalid"),
            ("not json", vec!["body"], "json_invalid"),
            (r#"{"email":"a@b.co"}"#, vec!["body", "count"], "missing"),
            (
                r#"{"email":"a@b.co","count":1,"admin":true}"#,
                vec!["body", "admin"],
                "extra_forbidden",
            ),
            (
                r#"{"email":5,"count":1}"#,
                vec!["body", "email"],
                "type_error",
            ),
            (
                r#"{"email":"a@b.co","count":300}"#,
                vec!["body", "count"],
                "value_error",
            ),
            (
                r#"{"email":"a@b.co","count":1} trailing"#,
                vec!["body"],
                "json_invalid",
            ),
        ];
        for (body, loc, kind) in cases {
            let err = error_of(body);
            assert_eq!(
                err.loc,
                loc.iter()
                    .map(|s| serde_json::Value::from(*s))
                    .collect::<Vec<_>>(),
                "loc for {body}"
            );
            assert_eq!(err.kind, kind, "type for {body}");
            assert!(!err.msg.contains(" at line "), "{}", err.msg);
        }
    }
}
