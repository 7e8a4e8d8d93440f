//! Request extractors whose rejections are [`ApiError`]s, so malformed input gets our
//! JSON envelope (422 with `{loc, msg, type}` entries, 413, 415, 404) and never a
//! plain-text axum rejection; and the translation of serde's complaints into messages
//! an app can show, with `loc` and `type` kept machine-readable (FastAPI's shape).

use axum::body::Bytes;
use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;

use crate::error::{ApiError, FieldError};

/// `Json<T>` with our error envelope. Also requires `Content-Type: application/json`
/// and a JSON object (serde would also read a struct from an array, by position).
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

/// Parses a JSON object into `T`, turning serde's complaint into a FastAPI-shaped 422
/// entry.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    check_json_object(bytes)?;
    parse_json_fields(bytes)
}

/// The 422 for a body that is not JSON, or JSON but not an object.
fn check_json_object(bytes: &[u8]) -> Result<(), ApiError> {
    // Is it JSON at all? Answering this first keeps "not JSON" apart from "JSON of the
    // wrong shape", whatever serde's error category says.
    if let Err(e) = serde_json::from_slice::<IgnoredAny>(bytes) {
        return Err(ApiError::validation(not_json(bytes, &e)));
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::validation(FieldError {
            loc: vec!["body".into()],
            msg: "the request body must be a JSON object".into(),
            kind: "type_error.dict".into(),
        }));
    }
    Ok(())
}

/// Reads the fields of a body [`JsonObject`] has checked into `T`.
pub fn parse_object<T: DeserializeOwned>(JsonObject(bytes): &JsonObject) -> Result<T, ApiError> {
    parse_json_fields(bytes)
}

fn parse_json_fields<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let mut loc: Vec<Value> = vec!["body".into()];
        loc.extend(err.path().iter().filter_map(segment));
        let mut entry = describe(loc, &without_position(&err.inner().to_string()));
        if err.inner().is_syntax() {
            // serde_json reports a number or list where an enum name belongs as a syntax
            // error, although the document is valid: the value is of the wrong type.
            entry.msg = "must be a string".into();
            entry.kind = "type_error.str".into();
        }
        ApiError::validation(entry)
    })
}

fn segment(segment: &serde_path_to_error::Segment) -> Option<Value> {
    use serde_path_to_error::Segment;
    match segment {
        Segment::Map { key } => Some(key.clone().into()),
        Segment::Seq { index } => Some((*index).into()),
        Segment::Enum { variant } => Some(variant.clone().into()),
        Segment::Unknown => None,
    }
}

fn not_json(bytes: &[u8], err: &serde_json::Error) -> FieldError {
    let msg = if bytes.iter().all(u8::is_ascii_whitespace) {
        "the request body is empty; a JSON object is expected".to_owned()
    } else {
        format!(
            "the request body is not valid JSON: {} (line {}, column {})",
            without_position(&err.to_string()),
            err.line(),
            err.column()
        )
    };
    FieldError {
        loc: vec!["body".into()],
        msg,
        kind: "json_invalid".into(),
    }
}

/// serde_json appends " at line L column C"; the location is in `loc` (or said once).
fn without_position(message: &str) -> String {
    message
        .rsplit_once(" at line ")
        .map_or(message, |(head, _)| head)
        .to_owned()
}

/// The names between backticks in a serde message, in order.
fn quoted(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// What a serde "expected ..." means, for people, and the FastAPI-style type of the
/// mismatch.
fn expected_kind(expected: &str) -> (String, &'static str) {
    let integer = [
        "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize",
    ];
    if expected.contains("date") {
        (
            "an RFC 3339 date-time such as 2026-01-31T08:00:00Z".into(),
            "type_error.datetime",
        )
    } else if expected.contains("string") {
        ("a string".into(), "type_error.str")
    } else if integer.contains(&expected) || expected.contains("integer") {
        ("an integer".into(), "type_error.integer")
    } else if expected == "f32" || expected == "f64" || expected.contains("number") {
        ("a number".into(), "type_error.number")
    } else if expected.contains("boolean") {
        ("true or false".into(), "type_error.bool")
    } else if expected.starts_with("struct ") || expected.contains("map") {
        ("a JSON object".into(), "type_error.dict")
    } else if expected.contains("sequence") {
        ("a list".into(), "type_error.list")
    } else {
        (expected.to_owned(), "type_error")
    }
}

/// Messages chrono gives for a string that is not a date-time.
const DATETIME_ERRORS: &[&str] = &[
    "input is out of range",
    "no possible date and time matching input",
    "input is not enough for unique date and time",
    "input contains invalid characters",
    "premature end of input",
    "trailing input",
    "bad or unsupported format string",
];

/// One serde complaint (JSON body, form or query string) as a 422 entry whose `msg` an
/// app can show: no Rust type names, no serde jargon.
pub fn describe(mut loc: Vec<Value>, message: &str) -> FieldError {
    let names = quoted(message);
    let entry = |loc: Vec<Value>, msg: String, kind: &str| FieldError {
        loc,
        msg,
        kind: kind.to_owned(),
    };
    let push_name = |loc: &mut Vec<Value>, name: &str| {
        if loc.last() != Some(&Value::from(name)) {
            loc.push(name.into());
        }
    };
    if let (true, Some(field)) = (message.starts_with("missing field"), names.first()) {
        push_name(&mut loc, field);
        return entry(loc, "field required".into(), "missing");
    }
    if let (true, Some(field)) = (message.starts_with("unknown field"), names.first()) {
        push_name(&mut loc, field);
        let msg = match &names[1..] {
            [] => "unknown field; this object takes no fields".to_owned(),
            known => format!("unknown field; expected one of: {}", known.join(", ")),
        };
        return entry(loc, msg, "extra_forbidden");
    }
    if let (true, Some(field)) = (message.starts_with("duplicate field"), names.first()) {
        push_name(&mut loc, field);
        return entry(
            loc,
            "given more than once (a field and its camelCase alias count as one)".into(),
            "value_error.duplicate",
        );
    }
    if message.starts_with("unknown variant") {
        return entry(
            loc,
            format!("must be one of: {}", names[1..].join(", ")),
            "value_error.enum",
        );
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (unexpected, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let (expected, kind) = expected_kind(expected);
        let msg = if unexpected == "null" {
            format!("must be {expected}, not null")
        } else {
            format!("must be {expected}")
        };
        return entry(loc, msg, kind);
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        let expected = rest.split_once(", expected ").map_or("", |(_, e)| e);
        let (expected, _) = expected_kind(expected);
        return entry(loc, format!("must be {expected} in range"), "value_error");
    }
    if DATETIME_ERRORS.contains(&message) {
        return entry(
            loc,
            "must be an RFC 3339 date-time such as 2026-01-31T08:00:00Z".into(),
            "value_error.datetime",
        );
    }
    if message == "number out of range" {
        return entry(loc, "number out of range".into(), "value_error.number");
    }
    // Our own `Deserialize` impls speak for themselves.
    entry(loc, message.to_owned(), "value_error")
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

/// A JSON object body, checked as [`ApiJson`] checks it (content type, size, JSON, an
/// object) but not yet read into a type: for a handler that must first answer something
/// else (whose resource it is), then reads the fields with [`parse_object`] in one pass.
pub struct JsonObject(Bytes);

impl<S> FromRequest<S> for JsonObject
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        if !is_json(&req) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = body_bytes(req).await?;
        check_json_object(&bytes)?;
        Ok(JsonObject(bytes))
    }
}

/// An axum form or query rejection text (`"Failed to ...: path: message"`) as a 422
/// entry under `root` (`body` or `query`).
fn rejection_entry(root: &str, text: &str) -> FieldError {
    let detail = text.split_once(": ").map_or("", |(_, rest)| rest);
    let (path, message) = match detail.split_once(": ") {
        Some((path, message)) if !path.contains(char::is_whitespace) => (path, message),
        _ => ("", detail),
    };
    let mut loc: Vec<Value> = vec![root.into()];
    loc.extend(
        path.split('.')
            .filter(|s| !s.is_empty())
            .map(|s| Value::from(s.to_owned())),
    );
    let number_errors = [
        "invalid digit found in string",
        "cannot parse integer from empty string",
        "number too large to fit in target type",
        "number too small to fit in target type",
    ];
    if number_errors.contains(&message) {
        return FieldError {
            loc,
            msg: "must be an integer in range".into(),
            kind: "type_error.integer".into(),
        };
    }
    describe(loc, message)
}

/// A form body's rejection in our envelope.
pub fn form_error(rejection: FormRejection) -> ApiError {
    match rejection {
        FormRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge
        }
        FormRejection::InvalidFormContentType(_) => ApiError::UnsupportedMediaType,
        other => ApiError::validation(rejection_entry("body", &other.body_text())),
    }
}

/// Integers as JSON has them: JSON has one number type, so `3.0` is the integer 3 (JSON
/// Schema's `integer` agrees), which serde's `i64` refuses. For
/// `#[serde(default, deserialize_with = "crate::extract::integer::option")]`.
pub mod integer {
    use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};

    struct Integer(i64);

    impl<'de> Deserialize<'de> for Integer {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct IntegerVisitor;
            impl Visitor<'_> for IntegerVisitor {
                type Value = Integer;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an integer")
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Integer, E> {
                    Ok(Integer(v))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Integer, E> {
                    i64::try_from(v)
                        .map(Integer)
                        .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Integer, E> {
                    // Within ±2^53 every integral f64 is exact.
                    if v.fract() == 0.0 && v.abs() <= 9_007_199_254_740_992.0 {
                        Ok(Integer(v as i64))
                    } else {
                        Err(E::invalid_value(Unexpected::Float(v), &self))
                    }
                }
            }
            deserializer.deserialize_any(IntegerVisitor)
        }
    }

    /// An optional integer: absent or `null` is `None`.
    pub fn option<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
        Ok(Option::<Integer>::deserialize(deserializer)?.map(|i| i.0))
    }

    /// A clearable integer: `null` is `Some(None)` (absent stays `None` by `default`).
    pub fn nullable<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<i64>>, D::Error> {
        option(deserializer).map(Some)
    }
}

/// `Query<T>` with our error envelope: `loc` is `["query", field]`.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::validation(rejection_entry(
                "query",
                &rejection.body_text(),
            ))),
        }
    }
}

/// `Path<T>` with our error envelope. A path whose segments cannot be decoded (invalid
/// UTF-8 after percent-decoding, a value of the wrong type) names nothing that exists,
/// so it answers 404 like any unknown path.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => {
                Err(ApiError::NotFound("Route".into()))
            }
            Err(other) => Err(ApiError::Internal(anyhow::anyhow!(
                "path parameters unavailable: {other}"
            ))),
        }
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
        #[serde(default, alias = "whenAt")]
        when_at: Option<chrono::DateTime<chrono::Utc>>,
        #[serde(default)]
        purpose: Option<crate::domain::RequestablePurpose>,
        #[serde(default)]
        flag: Option<bool>,
    }

    fn error_of(body: &str) -> FieldError {
        match parse_json::<Sample>(body.as_bytes()) {
            Err(ApiError::Validation(mut errors)) => errors.remove(0),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn bad_bodies_become_located_validation_errors_with_plain_messages() {
        let cases = [
            ("{", vec!["body"], "json_invalid"),
            ("not json", vec!["body"], "json_invalid"),
            ("", vec!["body"], "json_invalid"),
            ("{} {}", vec!["body"], "json_invalid"),
            (r#"["a@b.co", 1]"#, vec!["body"], "type_error.dict"),
            ("null", vec!["body"], "type_error.dict"),
            ("5", vec!["body"], "type_error.dict"),
            (r#"{"email":"a@b.co"}"#, vec!["body", "count"], "missing"),
            (
                r#"{"email":"a@b.co","count":1,"admin":true}"#,
                vec!["body", "admin"],
                "extra_forbidden",
            ),
            (
                r#"{"email":5,"count":1}"#,
                vec!["body", "email"],
                "type_error.str",
            ),
            (
                r#"{"email":null,"count":1}"#,
                vec!["body", "email"],
                "type_error.str",
            ),
            (
                r#"{"email":"a@b.co","count":"1"}"#,
                vec!["body", "count"],
                "type_error.integer",
            ),
            (
                r#"{"email":"a@b.co","count":300}"#,
                vec!["body", "count"],
                "value_error",
            ),
            (
                r#"{"email":"a@b.co","count":1,"flag":"yes"}"#,
                vec!["body", "flag"],
                "type_error.bool",
            ),
            (
                r#"{"email":"a@b.co","count":1,"when_at":"yesterday"}"#,
                vec!["body", "when_at"],
                "value_error.datetime",
            ),
            (
                r#"{"email":"a@b.co","count":1,"when_at":5}"#,
                vec!["body", "when_at"],
                "type_error.datetime",
            ),
            (
                r#"{"email":"a@b.co","count":1,"purpose":"party"}"#,
                vec!["body", "purpose"],
                "value_error.enum",
            ),
            (
                r#"{"email":"a@b.co","count":1,"purpose":7}"#,
                vec!["body", "purpose"],
                "type_error.str",
            ),
            (
                r#"{"email":"a@b.co","count":1,"when_at":null,"whenAt":null}"#,
                vec!["body", "when_at"],
                "value_error.duplicate",
            ),
        ];
        for (body, loc, kind) in cases {
            let err = error_of(body);
            assert_eq!(
                err.loc,
                loc.iter().map(|s| Value::from(*s)).collect::<Vec<_>>(),
                "loc for {body}: {err:?}"
            );
            assert_eq!(err.kind, kind, "type for {body}: {err:?}");
            for internal in [" at line ", "invalid type", "struct ", "u8", "Sample", "::"] {
                assert!(!err.msg.contains(internal), "{body}: {}", err.msg);
            }
        }
    }

    #[test]
    fn messages_name_what_is_expected() {
        assert_eq!(
            error_of(r#"{"email":null,"count":1}"#).msg,
            "must be a string, not null"
        );
        assert_eq!(
            error_of(r#"{"email":"a@b.co","count":1,"purpose":"party"}"#).msg,
            "must be one of: verify_email, reset_password"
        );
        assert_eq!(
            error_of(r#"{"email":"a@b.co","count":1,"x":1}"#).msg,
            "unknown field; expected one of: email, count, whenAt, when_at, purpose, flag"
        );
        assert_eq!(error_of(r#"{"email":"a@b.co"}"#).msg, "field required");
    }

    #[test]
    fn integers_may_be_written_as_integral_numbers() {
        #[derive(serde::Deserialize)]
        struct Counted {
            #[serde(default, deserialize_with = "integer::option")]
            n: Option<i64>,
        }
        let n = |body: &str| parse_json::<Counted>(body.as_bytes()).map(|c| c.n);
        assert_eq!(n(r#"{"n": 3}"#).unwrap(), Some(3));
        assert_eq!(n(r#"{"n": 3.0}"#).unwrap(), Some(3));
        assert_eq!(n(r#"{"n": -1e2}"#).unwrap(), Some(-100));
        assert_eq!(n(r#"{"n": null}"#).unwrap(), None);
        assert_eq!(n("{}").unwrap(), None);
        for bad in [
            r#"{"n": 3.5}"#,
            r#"{"n": "3"}"#,
            r#"{"n": 1e300}"#,
            r#"{"n": 18446744073709551615}"#,
        ] {
            match n(bad) {
                Err(ApiError::Validation(errors)) => {
                    assert!(
                        errors[0].msg.starts_with("must be an integer"),
                        "{bad}: {errors:?}"
                    )
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn query_and_form_rejections_use_the_same_words() {
        let entry = rejection_entry(
            "query",
            "Failed to deserialize query string: missing field `email`",
        );
        assert_eq!(entry.loc, vec![Value::from("query"), Value::from("email")]);
        assert_eq!(entry.msg, "field required");
        assert_eq!(entry.kind, "missing");
        let entry = rejection_entry(
            "body",
            "Failed to deserialize form body: limit: invalid digit found in string",
        );
        assert_eq!(entry.loc, vec![Value::from("body"), Value::from("limit")]);
        assert_eq!(entry.kind, "type_error.integer");
    }
}
