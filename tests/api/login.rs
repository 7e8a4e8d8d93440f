//! Login: SECURITY.md 10 and 13, and both request shapes.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{json_of, spawn_app, spawn_app_with, unique_email, PASSWORD};

#[tokio::test]
async fn login_with_json_returns_a_token_pair_and_the_user() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let body = json_of(app.login(&user.email, PASSWORD).await, StatusCode::OK).await;
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 900);
    assert!(body["access_token"].as_str().unwrap().split('.').count() == 3);
    assert!(body["refresh_token"].as_str().unwrap().len() >= 32);
    assert_eq!(body["user"]["email"], user.email);
    assert!(body["user"].get("hashed_password").is_none());
}

#[tokio::test]
async fn login_with_the_oauth2_form_and_with_username_in_json() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let body = json_of(app.login_form(&user.email, PASSWORD).await, StatusCode::OK).await;
    assert_eq!(body["token_type"], "bearer");
    let response = app
        .post_json(
            "/api/auth/login",
            &json!({"username": user.email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn login_matches_emails_case_insensitively() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let response = app
        .login(&format!(" {} ", user.email.to_uppercase()), PASSWORD)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_one_401_body() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let wrong = app.login(&user.email, "not the password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    let wrong_body = wrong.text().await.unwrap();
    let unknown = app.login(&unique_email(), "not the password").await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.text().await.unwrap(), wrong_body);
    let malformed = app.login("not-an-email", "not the password").await;
    assert_eq!(malformed.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(malformed.text().await.unwrap(), wrong_body);
    assert!(wrong_body.contains("invalid_credentials"));
}

#[tokio::test]
async fn an_unknown_email_costs_a_bcrypt_verification_like_a_wrong_password() {
    // Cost 10 makes one verification take tens of milliseconds, far above the noise of
    // a local request; without the dummy verification an unknown email answers in ~1 ms.
    let app = spawn_app_with(&["--bcrypt-cost", "10"]).await;
    let user = app.signup().await;
    // Warm up (the dummy hash is computed once).
    app.login(&unique_email(), "warm up password").await;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        app.login(&user.email, "not the password").await;
        known.push(started.elapsed());
        let started = Instant::now();
        app.login(&unique_email(), "not the password").await;
        unknown.push(started.elapsed());
    }
    known.sort();
    unknown.sort();
    let (known, unknown) = (known[3], unknown[3]);
    assert!(
        known > Duration::from_millis(10),
        "bcrypt too fast to compare: {known:?}"
    );
    // Without the dummy verification the ratio is about a hundred; a factor of three
    // leaves room for the other tests' hashing on a loaded 2-core machine (the fine
    // comparison is `cargo bench --bench timing`).
    assert!(
        unknown * 3 > known && known * 3 > unknown,
        "median timings differ: wrong password {known:?}, unknown email {unknown:?}"
    );
}

#[tokio::test]
async fn email_not_verified_is_said_only_after_a_correct_password() {
    let app = spawn_app().await;
    let email = unique_email();
    app.register(&email, PASSWORD).await;
    let wrong = app.login(&email, "not the password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let body = json_of(app.login(&email, PASSWORD).await, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "email_not_verified");
}

#[tokio::test]
async fn a_hash_made_by_passlib_logs_in() {
    let app = spawn_app().await;
    // `passlib.hash.bcrypt.using(rounds=12).hash("correct horse battery staple")`.
    let passlib = "$2b$12$rvehJXvoFwQr0usN5/URn.wnKeC5/85Ye1LjiIHDwdqKew9fhEX72";
    let email = unique_email();
    app.state
        .store
        .insert_user(&introgy::store::NewUser {
            id: introgy::auth::new_object_id(),
            email: email.clone(),
            hashed_password: passlib.to_owned(),
            display_name: None,
            battery_level: 70,
            now: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let user = app
        .state
        .store
        .user_by_email(&email)
        .await
        .unwrap()
        .unwrap();
    app.state
        .store
        .mark_verified(&user.id, chrono::Utc::now())
        .await
        .unwrap();
    let response = app.login(&email, "correct horse battery staple").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        app.login(&email, "correct horse battery stapler")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn login_needs_a_password_and_a_supported_body() {
    let app = spawn_app().await;
    let body = json_of(
        app.post_json("/auth/login", &json!({"email": "a@example.com"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "password"]));
    let body = json_of(
        app.post_json("/auth/login", &json!({"password": "whatever123"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["detail"][0]["type"], "missing");
    let response = app
        .client
        .post(app.url("/auth/login"))
        .header("content-type", "text/plain")
        .body("username=a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let response = app
        .client
        .post(app.url("/auth/login"))
        .form(&[("username", "a@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}
