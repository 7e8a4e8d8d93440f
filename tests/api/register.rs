use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{json_of, spawn_app, spawn_app_with, unique_email, PASSWORD};

#[tokio::test]
async fn register_answers_202_and_mails_a_verification_code() {
    let app = spawn_app().await;
    let email = unique_email();
    let body = json_of(app.register(&email, PASSWORD).await, StatusCode::ACCEPTED).await;
    assert!(body["detail"].is_string());
    let code = app.code_from_mail(&email, "verification_code", 1).await;
    assert_eq!(code.len(), 6);
}

#[tokio::test]
async fn register_answers_the_same_for_an_existing_address_and_warns_its_owner() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let fresh = unique_email();
    // Past the per-address cooldown that the signup's own code started.
    app.advance(61);

    let new_response = app.register(&fresh, PASSWORD).await;
    let new_status = new_response.status();
    let new_body = new_response.text().await.unwrap();
    let existing_response = app
        .register(&user.email.to_uppercase(), "another password 1")
        .await;
    let existing_status = existing_response.status();
    let existing_body = existing_response.text().await.unwrap();

    assert_eq!(new_status, StatusCode::ACCEPTED);
    assert_eq!(existing_status, new_status);
    assert_eq!(existing_body, new_body);
    app.settle().await;
    assert_eq!(app.mails(&user.email, "signup_attempt").len(), 1);
    // Only the signup code, no new verification code for the existing account.
    assert_eq!(app.mails(&user.email, "verification_code").len(), 1);
    // And its password is unchanged.
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn emails_are_stored_trimmed_and_lowercased() {
    let app = spawn_app().await;
    let email = unique_email();
    app.register(&format!("  {}  ", email.to_uppercase()), PASSWORD)
        .await;
    let code = app.code_from_mail(&email, "verification_code", 1).await;
    let body = json_of(
        app.verify_otp(&email.to_uppercase(), &code).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["user"]["email"], email);
}

#[tokio::test]
async fn a_new_user_starts_unverified_with_a_battery_of_70() {
    let app = spawn_app().await;
    let email = unique_email();
    app.post_json(
        "/auth/register",
        &json!({"email": email, "password": PASSWORD, "displayName": "Ada"}),
    )
    .await;
    let code = app.code_from_mail(&email, "verification_code", 1).await;
    let body = json_of(app.verify_otp(&email, &code).await, StatusCode::OK).await;
    let user = &body["user"];
    assert_eq!(user["is_verified"], true);
    assert_eq!(user["display_name"], "Ada");
    assert_eq!(user["social_battery_level"], 70);
    assert_eq!(user["id"].as_str().unwrap().len(), 24);
}

#[tokio::test]
async fn passwords_are_hashed_with_bcrypt_cost_12() {
    let app = spawn_app_with(&["--bcrypt-cost", "12"]).await;
    let email = unique_email();
    app.register(&email, PASSWORD).await;
    let hash = app
        .state
        .store
        .user_by_email(&email)
        .await
        .unwrap()
        .unwrap()
        .hashed_password;
    assert!(hash.starts_with("$2b$12$"), "{hash}");
    assert!(!hash.contains(PASSWORD));
}

#[tokio::test]
async fn weak_and_overlong_passwords_are_refused_with_422() {
    let app = spawn_app().await;
    let cases = [
        ("short1!", "too_short", "fewer than 8 characters"),
        ("password123", "common", "a common password"),
        ("12345678", "common", "a common password"),
        (
            &"a".repeat(73) as &str,
            "too_long",
            "73 bytes (bcrypt would truncate)",
        ),
        (
            &"é".repeat(37) as &str,
            "too_long",
            "74 bytes in 37 characters",
        ),
    ];
    for (password, kind, why) in cases {
        let body = json_of(
            app.register(&unique_email(), password).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        let entry = &body["detail"][0];
        assert_eq!(entry["loc"], json!(["body", "password"]), "{why}");
        assert!(
            entry["type"].as_str().unwrap().ends_with(kind),
            "{why}: {entry}"
        );
    }
    // No composition rules: a long passphrase of lowercase words is fine.
    assert_eq!(
        app.register(&unique_email(), "purple monkey dishwasher")
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    // Exactly 72 bytes is fine.
    assert_eq!(
        app.register(&unique_email(), &"ab".repeat(36))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn register_reports_every_invalid_field_at_once() {
    let app = spawn_app().await;
    let body = json_of(
        app.post_json(
            "/auth/register",
            &json!({"email": "not-an-email", "password": "short", "display_name": "x".repeat(101)}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let locs: Vec<_> = body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["loc"][1].clone())
        .collect();
    assert_eq!(
        locs,
        vec![json!("email"), json!("password"), json!("display_name")]
    );
}

#[tokio::test]
async fn parallel_registrations_of_one_address_create_one_account() {
    let app = spawn_app().await;
    let email = unique_email();
    let responses = futures::future::join_all((0..8).map(|_| app.register(&email, PASSWORD))).await;
    assert!(responses.iter().all(|r| r.status() == StatusCode::ACCEPTED));
    assert_eq!(app.count("users").await, 1);
}
