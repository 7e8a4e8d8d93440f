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

// Pre-verification takeover (SECURITY.md 25): each registration attempt keeps its own
// code, bound to the password sent with it.

const OWNER: &str = "the owner's own password";
const ATTACKER: &str = "the attacker's password";

/// An app that believes `X-Forwarded-For` from the test client, so each party of a test
/// is its own client (one client alone may cause two of an address's mails an hour).
async fn app_with_clients() -> crate::helpers::TestApp {
    spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await
}

async fn assert_password_in_force(
    app: &crate::helpers::TestApp,
    email: &str,
    right: &str,
    wrong: &str,
) {
    assert_eq!(
        app.login(email, right).await.status(),
        StatusCode::OK,
        "{right:?} is not in force"
    );
    assert_eq!(
        app.login(email, wrong).await.status(),
        StatusCode::UNAUTHORIZED,
        "{wrong:?} is in force too"
    );
}

async fn assert_code_invalid(app: &crate::helpers::TestApp, email: &str, code: &str) {
    let body = json_of(app.verify_otp(email, code).await, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["code"], "invalid_code");
}

#[tokio::test]
async fn a_later_registration_never_changes_what_the_first_code_does() {
    let app = app_with_clients().await;
    let email = unique_email();
    app.register_as("198.51.100.1", &email, OWNER, "Owner")
        .await;
    let owners_code = app.code_from_mail(&email, "verification_code", 1).await;
    // After the cooldown, the attacker's attempt gets a mail (to the owner) of its own.
    app.advance(61);
    assert_eq!(
        app.register_as("203.0.113.9", &email, ATTACKER, "Attacker")
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let attackers_code = app.code_from_mail(&email, "verification_code", 2).await;

    let body = json_of(app.verify_otp(&email, &owners_code).await, StatusCode::OK).await;

    assert_eq!(body["user"]["display_name"], "Owner");
    assert_password_in_force(&app, &email, OWNER, ATTACKER).await;
    // The other attempt went with it.
    assert_code_invalid(&app, &email, &attackers_code).await;
    assert_password_in_force(&app, &email, OWNER, ATTACKER).await;
}

#[tokio::test]
async fn an_earlier_registration_never_decides_the_password_of_a_later_ones_code() {
    let app = app_with_clients().await;
    let email = unique_email();
    // The attacker registers the owner's address first...
    app.register_as("203.0.113.9", &email, ATTACKER, "Attacker")
        .await;
    let attackers_code = app.code_from_mail(&email, "verification_code", 1).await;
    // ...then the owner signs up, and enters their own code.
    app.advance(61);
    app.register_as("198.51.100.1", &email, OWNER, "Owner")
        .await;
    let owners_code = app.code_from_mail(&email, "verification_code", 2).await;

    let body = json_of(app.verify_otp(&email, &owners_code).await, StatusCode::OK).await;

    assert_eq!(body["user"]["display_name"], "Owner");
    assert_password_in_force(&app, &email, OWNER, ATTACKER).await;
    assert_code_invalid(&app, &email, &attackers_code).await;
}

#[tokio::test]
async fn a_registration_inside_the_cooldown_changes_nothing() {
    let app = app_with_clients().await;
    let email = unique_email();
    app.register_as("198.51.100.1", &email, OWNER, "Owner")
        .await;
    let owners_code = app.code_from_mail(&email, "verification_code", 1).await;

    let response = app
        .register_as("203.0.113.9", &email, ATTACKER, "Attacker")
        .await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.settle().await;
    assert_eq!(app.mails(&email, "verification_code").len(), 1, "no mail");
    let body = json_of(app.verify_otp(&email, &owners_code).await, StatusCode::OK).await;
    assert_eq!(body["user"]["display_name"], "Owner");
    assert_password_in_force(&app, &email, OWNER, ATTACKER).await;
}

#[tokio::test]
async fn a_repeated_attempts_mail_says_to_use_its_code_only_if_you_just_signed_up() {
    let app = app_with_clients().await;
    let email = unique_email();
    app.register_as("198.51.100.1", &email, OWNER, "Owner")
        .await;
    app.advance(61);
    app.register_as("203.0.113.9", &email, ATTACKER, "Attacker")
        .await;

    let mails = app.wait_for_mails(&email, "verification_code", 2).await;

    assert!(!mails[0].text.contains("only if you just signed up"));
    assert!(
        mails[1]
            .text
            .contains("Use this code only if you just signed up"),
        "{}",
        mails[1].text
    );
    assert!(mails[1].subject.contains("only if it was you"));
}

#[tokio::test]
async fn pending_attempts_share_one_budget_of_five_guesses() {
    let app = app_with_clients().await;
    let email = unique_email();
    app.register_as("198.51.100.1", &email, OWNER, "Owner")
        .await;
    let first = app.code_from_mail(&email, "verification_code", 1).await;
    app.advance(61);
    app.register_as("203.0.113.9", &email, ATTACKER, "Attacker")
        .await;
    let second = app.code_from_mail(&email, "verification_code", 2).await;
    let wrong = (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| *c != first && *c != second)
        .unwrap();

    for _ in 0..5 {
        assert_code_invalid(&app, &email, &wrong).await;
    }

    // Five in all: neither code gets guesses of its own.
    assert_code_invalid(&app, &email, &first).await;
    assert_code_invalid(&app, &email, &second).await;
}

#[tokio::test]
async fn at_most_three_registration_attempts_wait_for_their_code() {
    let app = app_with_clients().await;
    let email = unique_email();
    for n in 1..=4 {
        assert_eq!(
            app.register_as(
                &format!("198.51.100.{n}"),
                &email,
                &format!("password number {n}"),
                "N"
            )
            .await
            .status(),
            StatusCode::ACCEPTED
        );
        app.settle().await;
        app.advance(61);
    }

    // Three codes went out; the fourth attempt was dropped.
    let mails = app.wait_for_mails(&email, "verification_code", 3).await;
    assert_eq!(mails.len(), 3);
    let third = crate::helpers::extract_code(&mails[2].text);
    json_of(app.verify_otp(&email, &third).await, StatusCode::OK).await;
    assert_password_in_force(&app, &email, "password number 3", "password number 4").await;
}

#[tokio::test]
async fn two_attackers_racing_the_owner_never_decide_the_password() {
    let app = app_with_clients().await;
    for round in 0..4 {
        let email = unique_email();
        // Rounds 0 and 1: the owner registers first; 2 and 3: the attackers do.
        let owner_first = round < 2;
        let attack = |n: usize| {
            let (app, email) = (&app, email.clone());
            async move {
                app.register_as(
                    &format!("203.0.113.{}", 10 * round + n),
                    &email,
                    &format!("attacker {n} password"),
                    "Attacker",
                )
                .await
                .status()
            }
        };
        if !owner_first {
            let (a, b) = tokio::join!(attack(1), attack(2));
            assert_eq!((a, b), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
            app.advance(61);
        }
        app.register_as(&format!("198.51.100.{round}"), &email, OWNER, "Owner")
            .await;
        let expected = if owner_first { 1 } else { 2 };
        let mails = app
            .wait_for_mails(&email, "verification_code", expected)
            .await;
        assert_eq!(mails.len(), expected, "round {round}");
        let owners_code = crate::helpers::extract_code(&mails.last().unwrap().text);
        app.advance(61);

        // The owner enters their code while both attackers register again.
        let (verified, a, b) =
            tokio::join!(app.verify_otp(&email, &owners_code), attack(3), attack(4));

        assert_eq!(verified.status(), StatusCode::OK, "round {round}");
        assert_eq!((a, b), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
        app.settle().await;
        assert_eq!(
            app.login(&email, OWNER).await.status(),
            StatusCode::OK,
            "round {round}: the owner's password is not in force"
        );
        for n in 1..=4 {
            assert_eq!(
                app.login(&email, &format!("attacker {n} password"))
                    .await
                    .status(),
                StatusCode::UNAUTHORIZED,
                "round {round}: attacker {n}'s password is in force"
            );
        }
        // Whatever the attackers' late attempts mailed cannot be used either: the address
        // is verified, so they only got the "someone tried to sign up" notice.
        for mail in app.mails(&email, "verification_code") {
            let code = crate::helpers::extract_code(&mail.text);
            assert_code_invalid(&app, &email, &code).await;
        }
        assert_eq!(app.login(&email, OWNER).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn the_202_of_register_means_the_code_and_its_mail_are_committed() {
    let app = spawn_app().await;
    let email = unique_email();

    let response = app.register(&email, PASSWORD).await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // Nothing left to do after the answer: the attempt and its mail are stored already.
    assert_eq!(
        app.state.background.pending(),
        0,
        "work left for after the 202"
    );
    assert_eq!(app.count("mail_outbox").await, 1);
    let user = app
        .state
        .store
        .user_by_email(&email)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(app.state.store.codes_of(&user.id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn accounts_never_verified_are_purged_a_week_after_registration() {
    let app = spawn_app().await;
    let verified = app.signup().await;
    let email = unique_email();
    app.register(&email, PASSWORD).await;
    let code = app.code_from_mail(&email, "verification_code", 1).await;
    assert_eq!(app.count("users").await, 2);

    // Six days on, the housekeeping job keeps it.
    app.advance(6 * 86_400);
    introgy::startup::housekeeping(&app.state).await;
    assert_eq!(
        app.login(&email, PASSWORD).await.status(),
        StatusCode::FORBIDDEN,
        "still there, unverified"
    );

    // Seven days and a second after registration, it is gone with its codes.
    app.advance(86_400 + 1);
    introgy::startup::housekeeping(&app.state).await;

    assert_eq!(app.count("users").await, 1);
    assert_eq!(
        app.login(&email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.verify_otp(&email, &code).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.login(&verified.email, PASSWORD).await.status(),
        StatusCode::OK
    );
    // The address can be registered afresh.
    app.register(&email, "a brand new password").await;
    let fresh = app.code_from_mail(&email, "verification_code", 2).await;
    json_of(app.verify_otp(&email, &fresh).await, StatusCode::OK).await;
}
