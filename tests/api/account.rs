//! The signed-in account: devices (`/auth/sessions`) and changing the password
//! (`/auth/change-password`), with the abuse cases (another user's session, wrong current
//! password, the shared password budget).

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, TestApp, TestUser, PASSWORD};

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const NEW_PASSWORD: &str = "a brand new passphrase";

/// Logs `user` in again with a User-Agent; returns the new (access, refresh) tokens.
async fn login_with_agent(app: &TestApp, user: &TestUser, agent: &str) -> (String, String) {
    let response = app
        .client
        .post(app.url("/auth/login"))
        .header("user-agent", agent)
        .json(&json!({"email": user.email, "password": user.password}))
        .send()
        .await
        .unwrap();
    let body = json_of(response, StatusCode::OK).await;
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn sessions(app: &TestApp, token: &str) -> Vec<Value> {
    let body = json_of(
        app.get_authed("/auth/sessions", token).await,
        StatusCode::OK,
    )
    .await;
    body["items"].as_array().unwrap().clone()
}

async fn delete_session(app: &TestApp, token: &str, id: &str) -> Response {
    app.client
        .delete(app.url(&format!("/auth/sessions/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn change_password(app: &TestApp, token: &str, body: Value) -> Response {
    app.client
        .post(app.url("/auth/change-password"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn current_id(items: &[Value]) -> String {
    let current: Vec<&Value> = items.iter().filter(|i| i["current"] == true).collect();
    assert_eq!(current.len(), 1, "exactly one current session: {items:?}");
    current[0]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn sessions_list_each_device_with_its_client_network_and_which_is_current() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let (firefox, _) = login_with_agent(&app, &user, FIREFOX).await;

    let items = sessions(&app, &firefox).await;
    assert_eq!(items.len(), 2, "{items:?}");
    let mine = items.iter().find(|i| i["current"] == true).unwrap();
    assert_eq!(mine["client"], "Firefox on Linux");
    assert_eq!(mine["ip"], "127.0.0.0/24");
    assert!(mine["created_at"].is_string() && mine["last_used_at"].is_string());
    let other = items.iter().find(|i| i["current"] == false).unwrap();
    // The sign-up session came from reqwest, which sends no User-Agent.
    assert_eq!(other["client"], "Unknown client");
    // Seen from the other session, the other one is current.
    let from_signup = sessions(&app, &user.access_token).await;
    assert_eq!(current_id(&from_signup), other["id"].as_str().unwrap());
    // Under /api too.
    let api = json_of(
        app.get_authed("/api/auth/sessions", &firefox).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(api["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_refresh_moves_last_used_at_and_nothing_else() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let before = sessions(&app, &user.access_token).await;
    app.advance(120);
    let body = json_of(app.refresh(&user.refresh_token).await, StatusCode::OK).await;
    let after = sessions(&app, body["access_token"].as_str().unwrap()).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["id"], before[0]["id"]);
    assert_eq!(after[0]["created_at"], before[0]["created_at"]);
    let parse = |v: &Value| {
        v.as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    };
    let moved = parse(&after[0]["last_used_at"]) - parse(&before[0]["last_used_at"]);
    assert!(moved >= chrono::Duration::seconds(120), "moved by {moved}");
}

#[tokio::test]
async fn signing_out_a_session_by_id_stops_its_tokens_at_once() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let (laptop, laptop_refresh) = login_with_agent(&app, &user, FIREFOX).await;
    let laptop_id = current_id(&sessions(&app, &laptop).await);

    let response = delete_session(&app, &user.access_token, &laptop_id).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    assert_eq!(
        app.session_works(&laptop, &laptop_refresh).await,
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    let left = sessions(&app, &user.access_token).await;
    assert_eq!(left.len(), 1);
    assert_ne!(left[0]["id"], laptop_id.as_str());
    // Gone is gone: a second delete is 404.
    let again = delete_session(&app, &user.access_token, &laptop_id).await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn another_users_session_id_is_404_and_stays_signed_in() {
    let app = spawn_app().await;
    let (victim, attacker) = (app.signup().await, app.signup().await);
    let victim_session = current_id(&sessions(&app, &victim.access_token).await);

    let response = delete_session(&app, &attacker.access_token, &victim_session).await;
    let body = json_of(response, StatusCode::NOT_FOUND).await;
    assert_eq!(body["code"], "not_found");
    assert_eq!(
        app.verify_token(&victim.access_token).await.status(),
        StatusCode::OK
    );
    // An id that cannot be a session, and one that is no session: the same 404.
    for id in ["nope", "0123456789abcdef0123456789abcdef", &"f".repeat(300)] {
        let response = delete_session(&app, &attacker.access_token, id).await;
        assert_eq!(json_of(response, StatusCode::NOT_FOUND).await, body, "{id}");
    }
}

#[tokio::test]
async fn devices_need_a_token() {
    let app = spawn_app().await;
    assert_eq!(
        app.get("/auth/sessions").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let response = app
        .client
        .delete(app.url("/auth/sessions/0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn changing_the_password_signs_out_other_sessions_keeps_this_one_and_mails_a_notice() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let (other, other_refresh) = login_with_agent(&app, &user, FIREFOX).await;

    let response = change_password(
        &app,
        &user.access_token,
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    assert_eq!(
        app.session_works(&user.access_token, &user.refresh_token)
            .await,
        (StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(
        app.session_works(&other, &other_refresh).await,
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&user.email, NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
    let mail = &app.wait_for_mails(&user.email, "password_updated", 1).await[0];
    assert!(
        mail.text.contains("Every other device was signed out"),
        "{}",
        mail.text
    );
}

#[tokio::test]
async fn keep_other_sessions_keeps_them() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let (other, _) = login_with_agent(&app, &user, FIREFOX).await;

    let response = change_password(
        &app,
        &user.access_token,
        json!({"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD, "keepOtherSessions": true}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.verify_token(&other).await.status(), StatusCode::OK);
    assert_eq!(sessions(&app, &other).await.len(), 2);
    let mail = &app.wait_for_mails(&user.email, "password_updated", 1).await[0];
    assert!(!mail.text.contains("Every other device was signed out"));
}

#[tokio::test]
async fn a_wrong_current_password_is_403_and_changes_nothing() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let (other, _) = login_with_agent(&app, &user, FIREFOX).await;

    let response = change_password(
        &app,
        &user.access_token,
        json!({"current_password": "not the password", "new_password": NEW_PASSWORD}),
    )
    .await;
    let body = json_of(response, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "invalid_password");
    assert_eq!(app.verify_token(&other).await.status(), StatusCode::OK);
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::OK
    );
    app.settle().await;
    assert!(app.mails(&user.email, "password_updated").is_empty());
}

#[tokio::test]
async fn a_weak_new_password_is_422_before_any_password_check() {
    let app = spawn_app().await;
    let user = app.signup().await;
    for (new_password, why) in [("short", "too short"), ("password", "too common")] {
        let response = change_password(
            &app,
            &user.access_token,
            json!({"current_password": "wrong every time", "new_password": new_password}),
        )
        .await;
        let body = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["body", "new_password"]),
            "{why}"
        );
    }
    let missing = change_password(
        &app,
        &user.access_token,
        json!({"new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(missing.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // None of those spent the account's budget: ten wrong guesses are still allowed.
    for _ in 0..introgy::limits::MAX_FAILED_LOGINS {
        let response = change_password(
            &app,
            &user.access_token,
            json!({"current_password": "wrong every time", "new_password": NEW_PASSWORD}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn wrong_current_passwords_spend_the_accounts_login_budget() {
    let app = spawn_app().await;
    let user = app.signup().await;
    for _ in 0..introgy::limits::MAX_FAILED_LOGINS {
        let response = change_password(
            &app,
            &user.access_token,
            json!({"current_password": "wrong every time", "new_password": NEW_PASSWORD}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    // Now even the right password waits, here and at login (one budget per account).
    let response = change_password(
        &app,
        &user.access_token,
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}
