//! Rate limits: SECURITY.md 21.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{json_of, spawn_app, spawn_app_with, unique_email, TestApp, PASSWORD};

async fn login_from(app: &TestApp, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/auth/login"))
        .json(&json!({"email": "nobody@example.com", "password": "whatever123"}));
    if let Some(xff) = forwarded_for {
        request = request.header("x-forwarded-for", xff);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn auth_routes_are_rate_limited_per_client_ip() {
    let app = spawn_app_with(&["--auth-rate-limit-per-minute", "5"]).await;
    let user = app.signup().await; // register + verify-otp: two requests of the budget
    for _ in 0..3 {
        assert_eq!(
            login_from(&app, None).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let limited = login_from(&app, None).await;
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(
        json_of(limited, StatusCode::TOO_MANY_REQUESTS).await["code"],
        "rate_limited"
    );
    // Other auth routes share the budget; authenticated routes do not.
    let register = app.register(&unique_email(), PASSWORD).await;
    assert_eq!(register.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        app.verify_token(&user.access_token).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    // No trusted proxies: a client cannot dodge the limit by inventing addresses.
    let app = spawn_app_with(&["--auth-rate-limit-per-minute", "3"]).await;
    for n in 0..3 {
        let response = login_from(&app, Some(&format!("198.51.100.{n}"))).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        login_from(&app, Some("198.51.100.200")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Behind a trusted proxy (nginx on the same host), each client has its own budget.
    let app = spawn_app_with(&[
        "--auth-rate-limit-per-minute",
        "3",
        "--trusted-proxies",
        "127.0.0.1/32,::1/128",
    ])
    .await;
    for _ in 0..3 {
        assert_eq!(
            login_from(&app, Some("198.51.100.1")).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login_from(&app, Some("198.51.100.1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login_from(&app, Some("198.51.100.2")).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account_ten_per_fifteen_minutes() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let other = app.signup().await;
    for _ in 0..10 {
        assert_eq!(
            app.login(&user.email, "not the password").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Now even the right password waits.
    let locked = app.login(&user.email, PASSWORD).await;
    assert!(locked.headers().contains_key("retry-after"));
    assert_eq!(
        json_of(locked, StatusCode::TOO_MANY_REQUESTS).await["code"],
        "rate_limited"
    );
    // Case and spaces do not make a new budget.
    let variant = app
        .login(&format!(" {} ", user.email.to_uppercase()), PASSWORD)
        .await;
    assert_eq!(variant.status(), StatusCode::TOO_MANY_REQUESTS);
    // Other accounts are not affected.
    assert_eq!(
        app.login(&other.email, PASSWORD).await.status(),
        StatusCode::OK
    );
    // Fifteen minutes later the right password works again.
    app.advance(15 * 60 + 1);
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_addresses_are_throttled_the_same_way() {
    let app = spawn_app().await;
    let unknown = unique_email();
    for _ in 0..10 {
        assert_eq!(
            app.login(&unknown, "not the password").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.login(&unknown, "not the password").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}
