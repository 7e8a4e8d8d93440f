//! One-time codes: SECURITY.md 1–7.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, spawn_app_with, unique_email, TestApp, PASSWORD};

const INVALID: &str = r#"{"detail":"Invalid or expired verification code","code":"invalid_code"}"#;

async fn assert_invalid(response: reqwest::Response, why: &str) {
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{why}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::from_str::<Value>(INVALID).unwrap(),
        "{why}"
    );
}

/// Registers and returns (email, first verification code).
async fn registered(app: &TestApp) -> (String, String) {
    let email = unique_email();
    app.register(&email, PASSWORD).await;
    let code = app.code_from_mail(&email, "verification_code", 1).await;
    (email, code)
}

fn wrong(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

#[tokio::test]
async fn codes_are_stored_only_as_a_keyed_hash() {
    let app = spawn_app().await;
    let (email, code) = registered(&app).await;
    let user_id = app
        .state
        .store
        .user_by_email(&email)
        .await
        .unwrap()
        .unwrap()
        .id;
    // Reading the stored record through the store counts as one submission.
    let (user_id, stored) = (
        user_id.clone(),
        app.state
            .store
            .take_code_attempt(
                &user_id,
                introgy::domain::OtpPurpose::VerifyEmail,
                5,
                app.state.clock.now(),
            )
            .await
            .unwrap()
            .expect("a live code")
            .codes[0]
            .code_hash
            .clone(),
    );
    assert!(!stored.contains(&code));
    assert_eq!(stored.len(), 64, "an HMAC-SHA-256 in hex");
    // An unkeyed hash of the code (what a dump could reverse) is not what is stored.
    assert_ne!(stored, introgy::auth::sha256_hex(&code));
    let parsed = introgy::domain::OtpCode::parse(&code).unwrap();
    assert_eq!(
        stored,
        app.state
            .otp
            .hash(introgy::domain::OtpPurpose::VerifyEmail, &user_id, &parsed)
    );
}

#[tokio::test]
async fn a_code_works_once() {
    let app = spawn_app().await;
    let (email, code) = registered(&app).await;
    assert_eq!(app.verify_otp(&email, &code).await.status(), StatusCode::OK);
    assert_invalid(app.verify_otp(&email, &code).await, "used code").await;
}

#[tokio::test]
async fn exactly_one_of_twenty_parallel_submissions_of_the_right_code_wins() {
    let app = spawn_app().await;
    let (email, code) = registered(&app).await;
    let responses = futures::future::join_all((0..20).map(|_| app.verify_otp(&email, &code))).await;
    let winners = responses
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    let losers = responses
        .iter()
        .filter(|r| r.status() == StatusCode::BAD_REQUEST)
        .count();
    assert_eq!(winners, 1);
    assert_eq!(losers, 19);
}

#[tokio::test]
async fn five_wrong_guesses_kill_the_code_even_for_the_right_digits() {
    let app = spawn_app().await;
    let (email, code) = registered(&app).await;
    for _ in 0..5 {
        assert_invalid(app.verify_otp(&email, &wrong(&code)).await, "wrong code").await;
    }
    assert_invalid(
        app.verify_otp(&email, &code).await,
        "right code after 5 wrong",
    )
    .await;
}

#[tokio::test]
async fn four_wrong_guesses_still_leave_the_right_code_usable() {
    let app = spawn_app().await;
    let (email, code) = registered(&app).await;
    for _ in 0..4 {
        assert_invalid(app.verify_otp(&email, &wrong(&code)).await, "wrong code").await;
    }
    assert_eq!(app.verify_otp(&email, &code).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn parallel_wrong_guesses_are_counted_atomically() {
    let app = spawn_app().await;
    let (email, code) = registered(&app).await;
    let bad = wrong(&code);
    futures::future::join_all((0..30).map(|_| app.verify_otp(&email, &bad))).await;
    assert_invalid(
        app.verify_otp(&email, &code).await,
        "right code after a flood",
    )
    .await;
}

#[tokio::test]
async fn expired_codes_are_refused() {
    let app = spawn_app().await;
    let (email, code) = registered(&app).await;
    app.advance(601);
    assert_invalid(app.verify_otp(&email, &code).await, "expired code").await;
}

#[tokio::test]
async fn codes_expire_after_the_configured_ttl() {
    let app = crate::helpers::spawn_app_with(&["--otp-ttl-seconds", "120"]).await;
    let (email, code) = registered(&app).await;
    let (other, other_code) = registered(&app).await;
    app.advance(119);
    assert_eq!(
        app.verify_otp(&email, &code).await.status(),
        StatusCode::OK,
        "still valid at 119 s"
    );
    app.advance(2);
    assert_invalid(
        app.verify_otp(&other, &other_code).await,
        "expired at 121 s",
    )
    .await;
    let mail = &app.mails(&email, "verification_code")[0];
    assert!(mail.text.contains("2 minutes"), "{}", mail.text);
}

#[tokio::test]
async fn wrong_expired_used_and_unknown_all_answer_identically() {
    let app = spawn_app().await;
    let (email, code) = registered(&app).await;
    assert_invalid(app.verify_otp(&email, &wrong(&code)).await, "wrong").await;
    assert_invalid(
        app.verify_otp(&unique_email(), &code).await,
        "unknown email",
    )
    .await;
    assert_invalid(app.verify_otp(&email, "12ab56").await, "not digits").await;
    assert_eq!(app.verify_otp(&email, &code).await.status(), StatusCode::OK);
    assert_invalid(app.verify_otp(&email, &code).await, "used").await;
}

#[tokio::test]
async fn sending_is_limited_to_one_per_minute_per_address() {
    // Another client for each send: one client alone may cause only two (SECURITY.md 30).
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let user = app.signup().await;
    app.advance(61);
    app.send_code_as("198.51.100.1", &user.email, "verify_email")
        .await;
    app.wait_for_mails(&user.email, "verification_code", 2)
        .await;
    let again = app
        .send_code_as("198.51.100.2", &user.email, "verify_email")
        .await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    app.settle().await;
    assert_eq!(
        app.mails(&user.email, "verification_code").len(),
        2,
        "cooldown sent a mail"
    );
    app.advance(61);
    app.send_code_as("198.51.100.3", &user.email, "verify_email")
        .await;
    app.wait_for_mails(&user.email, "verification_code", 3)
        .await;
}

#[tokio::test]
async fn sending_is_limited_to_five_per_hour_per_address() {
    // Six different clients: one client alone may cause only two (SECURITY.md 30).
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let user = app.signup().await;
    for n in 0..6 {
        app.advance(61);
        let response = app
            .send_code_as(&format!("198.51.100.{n}"), &user.email, "verify_email")
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        app.settle().await;
    }
    // The sign-up's code and four more.
    assert_eq!(app.mails(&user.email, "verification_code").len(), 5);
    // An hour later the budget is back.
    app.advance(3600);
    app.send_code_as("198.51.100.0", &user.email, "verify_email")
        .await;
    app.wait_for_mails(&user.email, "verification_code", 6)
        .await;
}

#[tokio::test]
async fn a_refused_send_does_not_reset_the_guess_budget() {
    let app = spawn_app().await;
    let (email, code) = registered(&app).await;
    for _ in 0..5 {
        app.verify_otp(&email, &wrong(&code)).await;
    }
    // Inside the cooldown: same 202, but no new code replaces the dead one.
    assert_eq!(
        app.send_code(&email, "verify_email").await.status(),
        StatusCode::ACCEPTED
    );
    app.settle().await;
    assert_eq!(app.mails(&email, "verification_code").len(), 1);
    assert_invalid(app.verify_otp(&email, &code).await, "dead code stays dead").await;
}

#[tokio::test]
async fn a_new_code_replaces_the_old_one() {
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let user = app.signup().await;
    app.advance(61);
    app.send_code_as("198.51.100.1", &user.email, "verify_email")
        .await;
    let first = app
        .code_from_mail(&user.email, "verification_code", 2)
        .await;
    app.advance(61);
    app.send_code_as("198.51.100.2", &user.email, "verify_email")
        .await;
    let second = app
        .code_from_mail(&user.email, "verification_code", 3)
        .await;
    if first != second {
        assert_invalid(app.verify_otp(&user.email, &first).await, "replaced code").await;
    }
    assert_eq!(
        app.verify_otp(&user.email, &second).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_unverified_address_gets_no_code_on_request_only_a_pointer_to_sign_up() {
    let app = spawn_app().await;
    let (email, code) = registered(&app).await;
    app.advance(61);

    let response = app.send_code(&email, "verify_email").await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let pointer = app.wait_for_mails(&email, "signup_incomplete", 1).await;
    assert!(
        pointer[0].text.contains("sign up again"),
        "{}",
        pointer[0].text
    );
    app.settle().await;
    assert_eq!(
        app.mails(&email, "verification_code").len(),
        1,
        "a code not bound to a registration attempt was mailed"
    );
    // The attempt's own code still works.
    assert_eq!(app.verify_otp(&email, &code).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_verification_code_does_not_reset_a_password() {
    let app = spawn_app().await;
    let (email, code) = registered(&app).await;
    assert_invalid(
        app.reset_password(&email, &code, "a brand new password")
            .await,
        "verification code used for reset",
    )
    .await;
    // And it is still usable for what it was for.
    assert_eq!(app.verify_otp(&email, &code).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_reset_code_does_not_verify_an_email() {
    let app = spawn_app().await;
    let user = app.signup().await;
    app.advance(61);
    app.send_code(&user.email, "reset_password").await;
    let code = app.code_from_mail(&user.email, "reset_code", 1).await;
    assert_invalid(
        app.verify_otp(&user.email, &code).await,
        "reset code used to verify",
    )
    .await;
}

#[tokio::test]
async fn reset_codes_for_unknown_addresses_answer_the_same_and_send_nothing() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let unknown = unique_email();
    let known = app.send_code(&user.email, "reset_password").await;
    let (known_status, known_body) = (known.status(), known.text().await.unwrap());
    let unknown_response = app.send_code(&unknown, "reset_password").await;
    assert_eq!(unknown_response.status(), known_status);
    assert_eq!(unknown_response.text().await.unwrap(), known_body);
    // Inside the cooldown, too.
    let again = app.send_code(&user.email, "reset_password").await;
    assert_eq!(again.status(), known_status);
    assert_eq!(again.text().await.unwrap(), known_body);
    app.settle().await;
    assert!(app.mail.messages().iter().all(|m| m.to != unknown));
}

#[tokio::test]
async fn the_send_otp_alias_and_an_unknown_purpose() {
    let app = spawn_app().await;
    let user = app.signup().await;
    app.advance(61);
    let response = app
        .post_json("/auth/send-otp", &json!({"email": user.email}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.wait_for_mails(&user.email, "verification_code", 2)
        .await;
    let response = app
        .post_json(
            "/auth/send-otp",
            &json!({"email": user.email, "purpose": "make_admin"}),
        )
        .await;
    let body = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "purpose"]));
}
