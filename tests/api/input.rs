//! Bounded, well-answered input: SECURITY.md 23. Bad input is a 4xx JSON error, never 5xx.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, PASSWORD};

const JSON_ROUTES: &[&str] = &[
    "/auth/register",
    "/auth/send-verification-code",
    "/auth/send-otp",
    "/auth/verify-otp",
    "/auth/login",
    "/auth/reset-password",
    "/auth/refresh-token",
];

async fn send_raw(
    app: &crate::helpers::TestApp,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
    (status, json)
}

#[tokio::test]
async fn malformed_json_is_422_on_every_route() {
    let app = spawn_app().await;
    for path in JSON_ROUTES {
        for body in ["{", "not json", "[]", "null", "{\"email\": }", "{} {}"] {
            let (status, json) = send_raw(&app, path, "application/json", body.into()).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{path} with {body}"
            );
            assert!(json["detail"].is_array(), "{path} with {body}: {json}");
            assert_eq!(json["code"], "validation_error");
        }
    }
}

#[tokio::test]
async fn unknown_fields_and_wrong_types_are_422_with_the_field_named() {
    let app = spawn_app().await;
    let cases = [
        (
            "/auth/register",
            json!({"email": "a@example.com", "password": PASSWORD, "is_admin": true}),
            "is_admin",
            "extra_forbidden",
        ),
        (
            "/auth/register",
            json!({"email": 42, "password": PASSWORD}),
            "email",
            "type_error",
        ),
        (
            "/auth/register",
            json!({"email": "a@example.com"}),
            "password",
            "missing",
        ),
        (
            "/auth/verify-otp",
            json!({"email": "a@example.com", "code": 123456}),
            "code",
            "type_error",
        ),
        (
            "/auth/refresh-token",
            json!({"refresh_token": ["a"]}),
            "refresh_token",
            "type_error",
        ),
        (
            "/auth/send-verification-code",
            json!({"email": "a@example.com", "purpose": 1}),
            "purpose",
            "type_error",
        ),
        (
            "/auth/reset-password",
            json!({"email": "a@example.com", "code": "123456"}),
            "new_password",
            "missing",
        ),
    ];
    for (path, body, field, kind) in cases {
        let (status, json) =
            send_raw(&app, path, "application/json", body.to_string().into()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path} {body}");
        let entry = &json["detail"][0];
        assert_eq!(
            entry["loc"],
            json!(["body", field]),
            "{path} {body}: {json}"
        );
        assert!(
            entry["type"]
                .as_str()
                .unwrap()
                .starts_with(kind.split('_').next().unwrap()),
            "{path} {body}: {entry}"
        );
        assert!(entry["msg"].is_string());
    }
}

#[tokio::test]
async fn overlong_and_malformed_strings_are_422() {
    let app = spawn_app().await;
    let long_email = format!("{}@example.com", "a".repeat(250));
    let cases = [
        json!({"email": long_email, "password": PASSWORD}),
        json!({"email": "no-at-sign", "password": PASSWORD}),
        json!({"email": "a@example.com", "password": PASSWORD, "display_name": "x".repeat(101)}),
        json!({"email": "a@example.com", "password": PASSWORD, "display_name": "   "}),
        json!({"email": "a@example.com", "password": "p".repeat(1000)}),
    ];
    for body in cases {
        let (status, json) = send_raw(
            &app,
            "/auth/register",
            "application/json",
            body.to_string().into(),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {json}");
    }
}

#[tokio::test]
async fn bodies_over_64_kib_are_413_json() {
    let app = spawn_app().await;
    let huge = json!({"email": "a@example.com", "password": "x".repeat(70 * 1024)}).to_string();
    for path in JSON_ROUTES {
        let (status, json) = send_raw(&app, path, "application/json", huge.clone().into()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert_eq!(json["code"], "payload_too_large");
    }
    let (status, _) = send_raw(
        &app,
        "/auth/login",
        "application/x-www-form-urlencoded",
        format!("username=a&password={}", "x".repeat(70 * 1024)).into(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    for path in JSON_ROUTES.iter().filter(|p| **p != "/auth/login") {
        let (status, json) = send_raw(&app, path, "text/plain", b"{}".to_vec()).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path}");
        assert_eq!(json["code"], "unsupported_media_type");
    }
}

#[tokio::test]
async fn invalid_utf8_is_a_clean_422() {
    let app = spawn_app().await;
    let (status, _) = send_raw(
        &app,
        "/auth/register",
        "application/json",
        b"{\"email\": \"\xff\xfe\"}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}
