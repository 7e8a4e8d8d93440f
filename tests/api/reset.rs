//! Password reset: SECURITY.md 14.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{json_of, spawn_app, spawn_app_with, PASSWORD};

const NEW_PASSWORD: &str = "a completely new passphrase";

#[tokio::test]
async fn reset_with_the_mailed_code_changes_the_password_and_revokes_everything() {
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let user = app.signup().await;
    let other = json_of(app.login(&user.email, PASSWORD).await, StatusCode::OK).await;
    app.advance(61);
    app.send_code(&user.email, "reset_password").await;
    let code = app.code_from_mail(&user.email, "reset_code", 1).await;
    // An outstanding verification code, to check it dies too (asked from another
    // network: one client causes at most two mails an hour to one address).
    app.advance(61);
    app.send_code_as("198.51.100.7", &user.email, "verify_email")
        .await;
    let verify_code = app
        .code_from_mail(&user.email, "verification_code", 2)
        .await;

    let body = json_of(
        app.reset_password(&user.email, &code, NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    // It does not log in.
    assert!(body.get("access_token").is_none());
    assert!(body.get("refresh_token").is_none());

    // Every session is revoked.
    for token in [&user.access_token, other["access_token"].as_str().unwrap()] {
        assert_eq!(
            app.verify_token(token).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.refresh(&user.refresh_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Every outstanding code is revoked, the used one included.
    assert_eq!(
        app.verify_otp(&user.email, &verify_code).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.reset_password(&user.email, &code, "yet another passphrase")
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    // Old password out, new password in.
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&user.email, NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
    // A notice is mailed.
    app.wait_for_mails(&user.email, "password_changed", 1).await;
}

#[tokio::test]
async fn reset_needs_the_right_code() {
    let app = spawn_app().await;
    let user = app.signup().await;
    app.advance(61);
    app.send_code(&user.email, "reset_password").await;
    let code = app.code_from_mail(&user.email, "reset_code", 1).await;
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 7) % 1_000_000);
    let body = json_of(
        app.reset_password(&user.email, &wrong, NEW_PASSWORD).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body["code"], "invalid_code");
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn reset_applies_the_password_policy() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let body = json_of(
        app.reset_password(&user.email, "000000", "short").await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["detail"][0]["loc"][1], "new_password");
}

#[tokio::test]
async fn reset_of_an_unknown_address_answers_like_a_wrong_code() {
    let app = spawn_app().await;
    let response = app
        .reset_password(&crate::helpers::unique_email(), "123456", NEW_PASSWORD)
        .await;
    let body: Value = json_of(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["detail"], "Invalid or expired verification code");
}

#[tokio::test]
async fn reset_verifies_an_unverified_address() {
    let app = spawn_app().await;
    let email = crate::helpers::unique_email();
    app.register(&email, PASSWORD).await;
    app.code_from_mail(&email, "verification_code", 1).await;
    app.advance(61);
    app.send_code(&email, "reset_password").await;
    let code = app.code_from_mail(&email, "reset_code", 1).await;
    assert_eq!(
        app.reset_password(&email, &code, NEW_PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login(&email, NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
}
