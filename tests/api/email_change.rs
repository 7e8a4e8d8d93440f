//! Changing the address of a signed-in account (`POST /users/me/email`,
//! `POST /users/me/email/confirm`): the code goes to the new address, the switch signs
//! other sessions out and tells the old address, and the abuse cases (wrong password and
//! its budget, guessing, an address someone has, one taken meanwhile, racing changes,
//! unverified and deleted accounts).

use std::net::{IpAddr, Ipv4Addr};

use introgy::auth::{email_change, AuthUser};
use introgy::domain::Email;
use introgy::limits::ClientIp;
use introgy::metrics::store_operations_of;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, unique_email, TestApp, TestUser, PASSWORD};

const CODE_MAIL: &str = "email_change_code";
const TAKEN_MAIL: &str = "email_change_taken";
const CHANGED_MAIL: &str = "email_changed";

async fn ask(app: &TestApp, user: &TestUser, new_email: &str, password: &str) -> Response {
    app.client
        .post(app.url("/users/me/email"))
        .bearer_auth(&user.access_token)
        .json(&json!({"new_email": new_email, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn confirm_at(app: &TestApp, path: &str, token: &str, code: &str) -> Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap()
}

async fn confirm(app: &TestApp, user: &TestUser, code: &str) -> Response {
    confirm_at(app, "/users/me/email/confirm", &user.access_token, code).await
}

/// Asks for `new_email` with the right password and returns the `n`-th code mailed there.
async fn ask_for_code(app: &TestApp, user: &TestUser, new_email: &str, n: usize) -> String {
    let response = ask(app, user, new_email, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.code_from_mail(new_email, CODE_MAIL, n).await
}

/// A code that is not `code`.
fn other_than(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

async fn login_tokens(app: &TestApp, email: &str) -> (String, String) {
    let body = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn the_code_goes_to_the_new_address_and_the_switch_signs_out_others_and_tells_the_old_one() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let (other, other_refresh) = login_tokens(&app, &user.email).await;
    let new_email = unique_email();

    let response = ask(&app, &user, &new_email, PASSWORD).await;
    let body = json_of(response, StatusCode::ACCEPTED).await;
    assert!(body["detail"].as_str().unwrap().contains("code"), "{body}");
    let code = app.code_from_mail(&new_email, CODE_MAIL, 1).await;
    // Nothing has changed yet: the old address still logs in.
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::OK
    );

    let response = confirm_at(
        &app,
        "/api/users/me/email/confirm",
        &user.access_token,
        &code,
    )
    .await;
    let profile = json_of(response, StatusCode::OK).await;
    assert_eq!(profile["email"], new_email.as_str());
    assert_eq!(profile["id"], user.id.as_str());

    // The caller's session stays, every other one is gone.
    assert_eq!(
        app.session_works(&user.access_token, &user.refresh_token)
            .await,
        (StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(
        app.session_works(&other, &other_refresh).await,
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    // The old address is told, with the new one masked.
    let notice = &app.wait_for_mails(&user.email, CHANGED_MAIL, 1).await[0];
    let masked = format!(
        "{}***@{}",
        &new_email[..1],
        new_email.rsplit_once('@').unwrap().1
    );
    assert!(notice.text.contains(&masked), "{}", notice.text);
    assert!(!notice.text.contains(&new_email), "{}", notice.text);
    // Login works with the new address only.
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&new_email, PASSWORD).await.status(),
        StatusCode::OK
    );
    // The code is spent.
    let again = json_of(confirm(&app, &user, &code).await, StatusCode::BAD_REQUEST).await;
    assert_eq!(again["code"], "invalid_code");
    // The old address is free to register (after its one mail a minute).
    app.advance(61);
    assert_eq!(
        app.register(&user.email, "someone else's password")
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let code = app
        .code_from_mail(&user.email, "verification_code", 2)
        .await;
    assert_eq!(
        app.verify_otp(&user.email, &code).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn both_routes_work_under_api_and_accept_camel_case() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let new_email = unique_email();
    let response = app
        .client
        .post(app.url("/api/users/me/email"))
        .bearer_auth(&user.access_token)
        .json(&json!({"newEmail": new_email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let code = app.code_from_mail(&new_email, CODE_MAIL, 1).await;
    let response = confirm(&app, &user, &code).await;
    assert_eq!(json_of(response, StatusCode::OK).await["email"], new_email);
}

#[tokio::test]
async fn a_wrong_password_is_403_and_sends_nothing() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let new_email = unique_email();
    let response = ask(&app, &user, &new_email, "not the password").await;
    let body = json_of(response, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "invalid_password");
    app.settle().await;
    assert!(app.mails(&new_email, CODE_MAIL).is_empty());
    assert_eq!(
        json_of(
            app.get_authed("/users/me", &user.access_token).await,
            StatusCode::OK
        )
        .await["email"],
        user.email.as_str()
    );
}

#[tokio::test]
async fn wrong_passwords_spend_the_accounts_login_budget_then_429() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let new_email = unique_email();
    for _ in 0..introgy::limits::MAX_FAILED_LOGINS {
        let response = ask(&app, &user, &new_email, "wrong every time").await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    // Now even the right password waits, here and at login (one budget per account).
    let response = ask(&app, &user, &new_email, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    app.settle().await;
    assert!(app.mails(&new_email, CODE_MAIL).is_empty());
}

#[tokio::test]
async fn bad_input_is_422_before_any_password_check() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let cases = [
        (
            json!({"new_email": "not an address", "password": "wrong"}),
            "new_email",
            "invalid address",
        ),
        (
            json!({"new_email": user.email.to_uppercase(), "password": "wrong"}),
            "new_email",
            "the account's own address",
        ),
        (json!({"password": "wrong"}), "new_email", "missing address"),
        (
            json!({"new_email": unique_email()}),
            "password",
            "missing password",
        ),
    ];
    for (body, field, why) in cases {
        let response = app
            .client
            .post(app.url("/users/me/email"))
            .bearer_auth(&user.access_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let body = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["detail"][0]["loc"], json!(["body", field]), "{why}");
    }
    // None of those spent the account's budget: ten wrong guesses are still allowed.
    for _ in 0..introgy::limits::MAX_FAILED_LOGINS {
        let response = ask(&app, &user, &unique_email(), "wrong every time").await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn both_routes_need_a_token() {
    let app = spawn_app().await;
    let user = app.signup().await;
    assert_eq!(
        app.logout(&user.access_token, None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        ask(&app, &user, &unique_email(), PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        confirm(&app, &user, "123456").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let anonymous = app
        .post_json("/users/me/email/confirm", &json!({"code": "123456"}))
        .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn five_wrong_codes_kill_the_code_even_for_the_right_digits() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let new_email = unique_email();
    let code = ask_for_code(&app, &user, &new_email, 1).await;
    let wrong = other_than(&code);
    let mut bodies = Vec::new();
    for _ in 0..5 {
        bodies.push(json_of(confirm(&app, &user, &wrong).await, StatusCode::BAD_REQUEST).await);
    }
    let right = json_of(confirm(&app, &user, &code).await, StatusCode::BAD_REQUEST).await;
    // One body for wrong, dead and malformed codes (SECURITY.md 7).
    let malformed = json_of(confirm(&app, &user, "12ab").await, StatusCode::BAD_REQUEST).await;
    for body in bodies.iter().chain([&right, &malformed]) {
        assert_eq!(
            body,
            &json!({"detail": "Invalid or expired verification code", "code": "invalid_code"})
        );
    }
    assert_eq!(
        app.login(&new_email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_expired_code_does_not_switch() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let new_email = unique_email();
    let code = ask_for_code(&app, &user, &new_email, 1).await;
    app.advance(601);
    let body = json_of(confirm(&app, &user, &code).await, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["code"], "invalid_code");
}

#[tokio::test]
async fn an_address_with_a_verified_account_answers_like_a_free_one_and_its_owner_is_told() {
    let app = spawn_app().await;
    let (user, owner) = (app.signup().await, app.signup().await);
    let free = unique_email();
    // The owner's address had its sign-up mail; its budget allows one a minute.
    app.advance(61);

    let to_free = ask(&app, &user, &free, PASSWORD).await;
    let (free_status, free_body) = (to_free.status(), to_free.text().await.unwrap());
    let to_taken = ask(&app, &user, &owner.email, PASSWORD).await;
    let (taken_status, taken_body) = (to_taken.status(), to_taken.text().await.unwrap());

    assert_eq!(free_status, StatusCode::ACCEPTED);
    assert_eq!((taken_status, taken_body), (free_status, free_body));
    app.settle().await;
    assert_eq!(app.mails(&free, CODE_MAIL).len(), 1);
    assert!(app.mails(&owner.email, CODE_MAIL).is_empty());
    let notice = &app.mails(&owner.email, TAKEN_MAIL)[0];
    assert!(
        notice.text.contains("nothing was changed"),
        "{}",
        notice.text
    );
    // The owner's account is untouched; the asker keeps their address.
    assert_eq!(
        app.verify_token(&owner.access_token).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login(&owner.email, PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::OK
    );
    // And the request for the taken address replaced the pending change to the free one
    // (as any newer request does): the free address's code no longer works.
    let code = app.code_from_mail(&free, CODE_MAIL, 1).await;
    let body = json_of(confirm(&app, &user, &code).await, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["code"], "invalid_code");
}

#[tokio::test]
async fn asking_for_a_taken_address_does_the_same_store_work_and_hashing_as_a_free_one() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let taken = app.stored_account(true).await.email;
    // The caller as the extractor reads it.
    let now = app.state.clock.now();
    let session = app
        .state
        .store
        .user_devices(&user.id, now, 1)
        .await
        .unwrap()[0]
        .id
        .clone();
    let caller = app
        .state
        .store
        .caller(&session, &user.id)
        .await
        .unwrap()
        .unwrap();
    let auth = AuthUser {
        user_id: user.id.clone(),
        session_id: session,
        expires_at: now,
        user: caller.user,
        battery: caller.battery,
    };
    let work = |address: String, n: u8| {
        let (state, auth) = (app.state.clone(), auth.clone());
        async move {
            let (hashes, checks) = (state.hasher.hashes(), state.hasher.verifications());
            let client = ClientIp(IpAddr::V4(Ipv4Addr::new(198, 51, 100, n)));
            let email = Email::parse(&address, "new_email").unwrap();
            let (result, operations) = store_operations_of(email_change::request_email_change(
                &state, &auth, client, PASSWORD, email,
            ))
            .await;
            result.unwrap();
            let names: Vec<&str> = operations.iter().map(|op| op.name).collect();
            (
                names,
                state.hasher.hashes() - hashes,
                state.hasher.verifications() - checks,
            )
        }
    };

    let free = work(unique_email(), 1).await;
    let known = work(taken, 2).await;
    assert!(free.0.len() > 2, "{:?}", free.0);
    assert_eq!(known, free);
}

#[tokio::test]
async fn an_unverified_account_holding_the_address_gives_it_up_to_the_mailbox_owner() {
    let app = spawn_app().await;
    let user = app.signup().await;
    // Someone registered the address but never proved it.
    let squatted = unique_email();
    assert_eq!(
        app.register(&squatted, "the squatter's password")
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let squatter_code = app.code_from_mail(&squatted, "verification_code", 1).await;
    app.advance(61);

    let code = ask_for_code(&app, &user, &squatted, 1).await;
    let profile = json_of(confirm(&app, &user, &code).await, StatusCode::OK).await;
    assert_eq!(profile["email"], squatted.as_str());

    // The unverified account and its code are gone; the address is the user's.
    let body = json_of(
        app.verify_otp(&squatted, &squatter_code).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body["code"], "invalid_code");
    assert_eq!(
        app.login(&squatted, "the squatter's password")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let body = json_of(app.login(&squatted, PASSWORD).await, StatusCode::OK).await;
    assert_eq!(body["user"]["id"], user.id.as_str());
}

#[tokio::test]
async fn an_address_taken_meanwhile_is_a_clean_409_and_the_old_address_stays() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let (other, other_refresh) = login_tokens(&app, &user.email).await;
    let wanted = unique_email();
    let code = ask_for_code(&app, &user, &wanted, 1).await;
    // Someone else signs up with the address and proves it before the code is entered.
    app.advance(61);
    assert_eq!(
        app.register(&wanted, "another person's password")
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let theirs = app.code_from_mail(&wanted, "verification_code", 1).await;
    assert_eq!(
        app.verify_otp(&wanted, &theirs).await.status(),
        StatusCode::OK
    );

    let body = json_of(confirm(&app, &user, &code).await, StatusCode::CONFLICT).await;
    assert_eq!(body["code"], "email_taken");
    // Nothing else changed: same address, other sessions alive, no notice.
    let me = json_of(
        app.get_authed("/users/me", &user.access_token).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me["email"], user.email.as_str());
    assert_eq!(app.verify_token(&other).await.status(), StatusCode::OK);
    assert_eq!(app.refresh(&other_refresh).await.status(), StatusCode::OK);
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login(&wanted, "another person's password")
            .await
            .status(),
        StatusCode::OK
    );
    app.settle().await;
    assert!(app.mails(&user.email, CHANGED_MAIL).is_empty());
    // The code was spent by the attempt.
    let again = json_of(confirm(&app, &user, &code).await, StatusCode::BAD_REQUEST).await;
    assert_eq!(again["code"], "invalid_code");
}

#[tokio::test]
async fn a_newer_request_replaces_the_pending_change() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let (first, second) = (unique_email(), unique_email());
    let first_code = ask_for_code(&app, &user, &first, 1).await;
    let second_code = ask_for_code(&app, &user, &second, 1).await;

    let body = json_of(
        confirm(&app, &user, &first_code).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body["code"], "invalid_code");
    let profile = json_of(confirm(&app, &user, &second_code).await, StatusCode::OK).await;
    assert_eq!(profile["email"], second.as_str());
    assert_eq!(
        app.login(&first, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn two_changes_of_one_user_racing_switch_to_the_newer_address_only() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let (first, second) = (unique_email(), unique_email());
    let (a, b) = tokio::join!(
        ask(&app, &user, &first, PASSWORD),
        ask(&app, &user, &second, PASSWORD)
    );
    assert_eq!(
        (a.status(), b.status()),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
    );
    let (code_a, code_b) = tokio::join!(
        app.code_from_mail(&first, CODE_MAIL, 1),
        app.code_from_mail(&second, CODE_MAIL, 1)
    );
    // Whichever request came second replaced the first: exactly one code works.
    let (ra, rb) = tokio::join!(confirm(&app, &user, &code_a), confirm(&app, &user, &code_b));
    let statuses = [ra.status(), rb.status()];
    assert!(
        statuses == [StatusCode::OK, StatusCode::BAD_REQUEST]
            || statuses == [StatusCode::BAD_REQUEST, StatusCode::OK],
        "{statuses:?}"
    );
    let won = if ra.status() == StatusCode::OK {
        &first
    } else {
        &second
    };
    let me = json_of(
        app.get_authed("/users/me", &user.access_token).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me["email"], won.as_str());
}

#[tokio::test]
async fn two_users_racing_for_one_address_exactly_one_wins_the_other_gets_409() {
    let app = spawn_app().await;
    let (alice, bob) = (app.signup().await, app.signup().await);
    let wanted = unique_email();
    let alice_code = ask_for_code(&app, &alice, &wanted, 1).await;
    // The address's mail budget allows one mail a minute.
    app.advance(61);
    let bob_code = ask_for_code(&app, &bob, &wanted, 2).await;

    let (a, b) = tokio::join!(
        confirm(&app, &alice, &alice_code),
        confirm(&app, &bob, &bob_code)
    );
    let (a_status, b_status) = (a.status(), b.status());
    let (a_body, b_body): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    let (winner, loser_body) = match (a_status, b_status) {
        (StatusCode::OK, StatusCode::CONFLICT) => (&alice, b_body),
        (StatusCode::CONFLICT, StatusCode::OK) => (&bob, a_body),
        other => panic!("expected one 200 and one 409, got {other:?}: {a_body} {b_body}"),
    };
    assert_eq!(loser_body["code"], "email_taken");
    let body = json_of(app.login(&wanted, PASSWORD).await, StatusCode::OK).await;
    assert_eq!(body["user"]["id"], winner.id.as_str());
    // The loser still logs in with their own address.
    let loser = if winner.id == alice.id { &bob } else { &alice };
    assert_eq!(
        app.login(&loser.email, PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_new_addresses_mail_budget_holds_and_the_answer_does_not_change() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let new_email = unique_email();
    let code = ask_for_code(&app, &user, &new_email, 1).await;
    // Inside the minute: the same 202, no second mail, and the first code still works.
    let response = ask(&app, &user, &new_email, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.settle().await;
    assert_eq!(app.mails(&new_email, CODE_MAIL).len(), 1);
    let profile = json_of(confirm(&app, &user, &code).await, StatusCode::OK).await;
    assert_eq!(profile["email"], new_email.as_str());
}

#[tokio::test]
async fn a_reset_code_mailed_to_the_old_address_dies_with_the_switch() {
    let app = spawn_app().await;
    let user = app.signup().await;
    app.advance(61);
    assert_eq!(
        app.send_code(&user.email, "reset_password").await.status(),
        StatusCode::ACCEPTED
    );
    let reset_code = app.code_from_mail(&user.email, "reset_code", 1).await;
    let new_email = unique_email();
    let code = ask_for_code(&app, &user, &new_email, 1).await;
    assert_eq!(confirm(&app, &user, &code).await.status(), StatusCode::OK);

    for address in [&user.email, &new_email] {
        let response = app
            .reset_password(address, &reset_code, "whoever has the old mailbox")
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{address}");
    }
    assert_eq!(
        app.login(&new_email, PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_email_change_code_cannot_be_asked_for_through_send_verification_code() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let response = app
        .post_json(
            "/auth/send-verification-code",
            &json!({"email": user.email, "purpose": "change_email"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_deleted_account_cannot_confirm_and_the_address_stays_free() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let new_email = unique_email();
    let code = ask_for_code(&app, &user, &new_email, 1).await;
    let response = app
        .client
        .delete(app.url("/users/me"))
        .bearer_auth(&user.access_token)
        .json(&json!({ "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    assert_eq!(
        confirm(&app, &user, &code).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        ask(&app, &user, &unique_email(), PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The pending change went with the account: the address registers like any other.
    app.advance(61);
    assert_eq!(
        app.register(&new_email, PASSWORD).await.status(),
        StatusCode::ACCEPTED
    );
    let code = app.code_from_mail(&new_email, "verification_code", 1).await;
    assert_eq!(
        app.verify_otp(&new_email, &code).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_unverified_account_cannot_move_even_with_a_session() {
    let app = spawn_app().await;
    // No flow gives an unverified account a token (login answers 403), so make one in
    // the store, as a migrated record could have.
    let unverified = app.stored_account(false).await;
    assert_eq!(
        app.login(&unverified.email, PASSWORD).await.status(),
        StatusCode::FORBIDDEN
    );
    let now = app.state.clock.now();
    let session = introgy::store::Session {
        id: introgy::auth::random_hex(16),
        user_id: unverified.id.clone(),
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
        refreshed_at: now,
    };
    let token = introgy::store::RefreshToken {
        token_hash: introgy::auth::random_hex(32),
        session_id: session.id.clone(),
        issued_at: now,
        rotated_at: None,
        child_sealed: None,
    };
    app.state
        .store
        .insert_session(&session, &token)
        .await
        .unwrap();
    let access = app
        .state
        .keys
        .issue(&unverified.id, &session.id, now, session.expires_at)
        .unwrap();
    let user = TestUser {
        email: unverified.email.clone(),
        password: PASSWORD.into(),
        id: unverified.id.clone(),
        access_token: access,
        refresh_token: String::new(),
    };

    let new_email = unique_email();
    let body = json_of(
        ask(&app, &user, &new_email, PASSWORD).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(body["code"], "email_not_verified");
    app.settle().await;
    assert!(app.mails(&new_email, CODE_MAIL).is_empty());
}

#[tokio::test]
async fn code_guesses_spend_the_clients_auth_budget() {
    let app = crate::helpers::spawn_app_with(&["--auth-rate-limit-per-minute", "5"]).await;
    let user = app.signup().await; // register + verify-otp: two of the five
    for _ in 0..3 {
        let response = confirm(&app, &user, "000000").await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let limited = confirm(&app, &user, "000000").await;
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(
        json_of(limited, StatusCode::TOO_MANY_REQUESTS).await["code"],
        "rate_limited"
    );
    // Asking spends the same budget (confirm_password).
    assert_eq!(
        ask(&app, &user, &unique_email(), PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn the_profile_update_refuses_email_and_points_to_the_route() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let response = app
        .client
        .put(app.url("/users/me"))
        .bearer_auth(&user.access_token)
        .json(&json!({ "email": unique_email() }))
        .send()
        .await
        .unwrap();
    let body = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "email"]));
    assert!(
        body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("POST /users/me/email"),
        "{body}"
    );
}
