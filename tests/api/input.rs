//! Bounded, well-answered input: SECURITY.md 23. Bad input is a 4xx JSON error, never 5xx.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, PASSWORD};

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

#[tokio::test]
async fn json_arrays_are_refused_where_objects_are_expected_on_every_route() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let routes = [
        (
            "POST",
            "/auth/register",
            r#"["a@b.co", "correct horse battery"]"#,
        ),
        ("POST", "/auth/send-verification-code", r#"["a@b.co"]"#),
        ("POST", "/auth/send-otp", r#"["a@b.co", "verify_email"]"#),
        ("POST", "/auth/verify-otp", r#"["a@b.co", "123456"]"#),
        (
            "POST",
            "/auth/login",
            r#"["a@b.co", null, "correct horse battery"]"#,
        ),
        (
            "POST",
            "/auth/reset-password",
            r#"["a@b.co", "123456", "new pass word"]"#,
        ),
        ("POST", "/auth/refresh-token", r#"["token"]"#),
        ("POST", "/auth/logout", r#"["global"]"#),
        ("PUT", "/users/me", r#"["Ada"]"#),
        ("DELETE", "/users/me", r#"["correct horse battery"]"#),
        (
            "POST",
            "/social-battery/me/record",
            r#"["set", null, null, null, 5]"#,
        ),
        ("POST", "/api/auth/register", r#"[]"#),
    ];
    for (method, path, body) in routes {
        let response = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(&user.access_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let json = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(json["detail"][0]["loc"], json!(["body"]), "{method} {path}");
        assert_eq!(
            json["detail"][0]["type"], "type_error.dict",
            "{method} {path}"
        );
    }
    // Nothing was done: the account still works with its password, the level is 70.
    assert_eq!(
        app.login(&user.email, &user.password).await.status(),
        StatusCode::OK
    );
    let battery = json_of(
        app.get_authed("/social-battery/me", &user.access_token)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(battery["level"], 70);
}

#[tokio::test]
async fn validation_messages_are_for_people_and_loc_and_type_stay_machine_readable() {
    let app = spawn_app().await;
    let user = app.signup().await;
    // (method, path, body, loc, type, words the message uses)
    let cases = [
        (
            "POST",
            "/auth/register",
            json!({"email": null, "password": PASSWORD}),
            json!(["body", "email"]),
            "type_error.str",
            "must be a string, not null",
        ),
        (
            "POST",
            "/auth/register",
            json!({"email": ["a"], "password": PASSWORD}),
            json!(["body", "email"]),
            "type_error.str",
            "must be a string",
        ),
        (
            "POST",
            "/auth/register",
            json!({"email": "a@example.com"}),
            json!(["body", "password"]),
            "missing",
            "field required",
        ),
        (
            "POST",
            "/auth/register",
            json!({"email": "a@example.com", "password": PASSWORD, "admin": true}),
            json!(["body", "admin"]),
            "extra_forbidden",
            "unknown field; expected one of: email, password, displayName, display_name",
        ),
        (
            "POST",
            "/auth/send-verification-code",
            json!({"email": "a@example.com", "purpose": "admin"}),
            json!(["body", "purpose"]),
            "value_error.enum",
            "must be one of: verify_email, reset_password",
        ),
        (
            "POST",
            "/auth/logout",
            json!({"scope": 3}),
            json!(["body", "scope"]),
            "type_error.str",
            "must be a string",
        ),
        (
            "PUT",
            "/users/me",
            json!({"introvert_level": "high"}),
            json!(["body", "introvert_level"]),
            "type_error.integer",
            "must be an integer",
        ),
        (
            "PUT",
            "/users/me",
            json!({"onboarding_completed": "yes"}),
            json!(["body", "onboarding_completed"]),
            "type_error.bool",
            "must be true or false",
        ),
        (
            "PUT",
            "/users/me",
            json!({"preferences": [1]}),
            json!(["body", "preferences"]),
            "type_error.dict",
            "must be a JSON object",
        ),
        (
            "PUT",
            "/users/me",
            json!({"display_name": "A", "displayName": "B"}),
            json!(["body", "display_name"]),
            "value_error.duplicate",
            "given more than once (a field and its camelCase alias count as one)",
        ),
        (
            "POST",
            "/social-battery/me/record",
            json!({"type": "nap"}),
            json!(["body", "type"]),
            "value_error.enum",
            "must be one of: depletion, recharge, sleep, set",
        ),
        (
            "POST",
            "/social-battery/me/record",
            json!({"type": "set", "level": 5, "occurred_at": "yesterday"}),
            json!(["body", "occurred_at"]),
            "value_error.datetime",
            "must be an RFC 3339 date-time such as 2026-01-31T08:00:00Z",
        ),
        (
            "POST",
            "/social-battery/me/record",
            json!({"type": "set", "level": 5.5}),
            json!(["body", "level"]),
            "value_error",
            "must be an integer in range",
        ),
        (
            "POST",
            "/social-battery/me/record",
            json!({"type": "sleep", "sleep_quality": 1}),
            json!(["body", "sleep_quality"]),
            "type_error.str",
            "must be a string",
        ),
    ];
    for (method, path, body, loc, kind, msg) in cases {
        let response = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(&user.access_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let json = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        let entry = &json["detail"][0];
        assert_eq!(entry["loc"], loc, "{method} {path} {body}: {json}");
        assert_eq!(entry["type"], kind, "{method} {path} {body}: {json}");
        assert_eq!(entry["msg"], msg, "{method} {path} {body}: {json}");
    }
    // Query strings and forms speak the same way.
    let lookup = json_of(
        app.get_authed("/users/lookup", &user.access_token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        lookup["detail"][0],
        json!({"loc": ["query", "email"], "msg": "field required", "type": "missing"})
    );
    let form = app
        .client
        .post(app.url("/auth/login"))
        .form(&[("username", "a@example.com")])
        .send()
        .await
        .unwrap();
    let form = json_of(form, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        form["detail"][0],
        json!({"loc": ["body", "password"], "msg": "field required", "type": "missing"})
    );
}

#[tokio::test]
async fn integers_may_be_written_with_a_zero_fraction() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let response = app
        .client
        .post(app.url("/social-battery/me/record"))
        .bearer_auth(&user.access_token)
        .json(&json!({"type": "depletion", "name": "Dinner", "energy_impact": 30.0, "people_count": 4.0}))
        .send()
        .await
        .unwrap();
    let record = json_of(response, StatusCode::CREATED).await;
    assert_eq!(record["energy_impact"], 30);
    assert_eq!(record["people_count"], 4);
    assert_eq!(record["battery"]["level"], 40);
}
