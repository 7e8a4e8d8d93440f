//! Refresh rotation, reuse detection, logout and session lifetime: SECURITY.md 18–20.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{json_of, spawn_app, spawn_app_with, PASSWORD};

#[tokio::test]
async fn every_refresh_rotates_the_token() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let body = json_of(app.refresh(&user.refresh_token).await, StatusCode::OK).await;
    let next = body["refresh_token"].as_str().unwrap();
    assert_ne!(next, user.refresh_token);
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["user"]["id"], user.id.as_str());
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(app.verify_token(access).await.status(), StatusCode::OK);
    // The new token rotates in turn.
    assert_eq!(app.refresh(next).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn two_tabs_refreshing_at_once_both_succeed_within_the_grace_window() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let (a, b) = tokio::join!(
        app.refresh(&user.refresh_token),
        app.refresh(&user.refresh_token)
    );
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(b.status(), StatusCode::OK);
    let a: Value = a.json().await.unwrap();
    let b: Value = b.json().await.unwrap();
    // Both tabs carry on.
    assert_eq!(
        app.refresh(a["refresh_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.refresh(b["refresh_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn reusing_a_rotated_token_after_the_grace_window_revokes_the_session() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let body = json_of(app.refresh(&user.refresh_token).await, StatusCode::OK).await;
    let next = body["refresh_token"].as_str().unwrap().to_owned();
    let access = body["access_token"].as_str().unwrap().to_owned();
    // Eleven seconds pass.
    app.advance(11);
    let body = json_of(
        app.refresh(&user.refresh_token).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["code"], "refresh_token_reused");
    // The whole session is gone: its newest refresh token and its access tokens too.
    assert_eq!(app.refresh(&next).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.verify_token(&access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.verify_token(&user.access_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Other sessions of the user are untouched.
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_refresh_tokens_are_refused() {
    let app = spawn_app().await;
    for token in ["", "nonsense", &"x".repeat(5000)] {
        let body = json_of(app.refresh(token).await, StatusCode::UNAUTHORIZED).await;
        assert_eq!(body["code"], "invalid_refresh_token");
    }
}

#[tokio::test]
async fn logout_ends_the_session_and_its_access_token_at_once() {
    let app = spawn_app().await;
    let user = app.signup().await;
    assert_eq!(
        app.verify_token(&user.access_token).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.logout(&user.access_token, None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.session_works(&user.access_token, &user.refresh_token)
            .await,
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        app.logout(&user.access_token, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn second_session(app: &crate::helpers::TestApp, email: &str) -> String {
    let body = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn logout_local_keeps_other_sessions() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let other = second_session(&app, &user.email).await;
    assert_eq!(
        app.logout(&user.access_token, Some("local")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.verify_token(&user.access_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.verify_token(&other).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn logout_global_ends_every_session() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let other = second_session(&app, &user.email).await;
    assert_eq!(
        app.logout(&user.access_token, Some("global"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.verify_token(&user.access_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.verify_token(&other).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn logout_others_keeps_only_this_session() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let other = second_session(&app, &user.email).await;
    let third = second_session(&app, &user.email).await;
    assert_eq!(
        app.logout(&user.access_token, Some("others"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.verify_token(&user.access_token).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.verify_token(&other).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.verify_token(&third).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn logout_refuses_an_unknown_scope() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let response = app.logout(&user.access_token, Some("everything")).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.verify_token(&user.access_token).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn sessions_have_an_absolute_lifetime() {
    let app = spawn_app_with(&["--refresh-token-ttl-seconds", "3600"]).await;
    let user = app.signup().await;
    // Refreshing does not extend it: refresh at 30 minutes...
    app.advance(1800);
    let body = json_of(app.refresh(&user.refresh_token).await, StatusCode::OK).await;
    let next = body["refresh_token"].as_str().unwrap();
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(app.verify_token(access).await.status(), StatusCode::OK);
    // ...and at 60 minutes and a second, neither the refresh nor the access token works.
    app.advance(1801);
    assert_eq!(app.refresh(next).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.verify_token(access).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn access_tokens_never_outlive_their_session() {
    let app = spawn_app_with(&[
        "--refresh-token-ttl-seconds",
        "60",
        "--access-token-ttl-seconds",
        "900",
    ])
    .await;
    let user = app.signup().await;
    let body = json_of(app.refresh(&user.refresh_token).await, StatusCode::OK).await;
    assert!(body["expires_in"].as_u64().unwrap() <= 60);
}

// The grace window hands out the child already issued (SECURITY.md 28).

#[tokio::test]
async fn twenty_parallel_refreshes_of_one_token_leave_one_live_chain() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let tokens_before = app.count("refresh_tokens").await;

    let responses =
        futures::future::join_all((0..20).map(|_| app.refresh(&user.refresh_token))).await;

    let mut children = std::collections::HashSet::new();
    for response in responses {
        let body = json_of(response, StatusCode::OK).await;
        children.insert(body["refresh_token"].as_str().unwrap().to_owned());
        let access = body["access_token"].as_str().unwrap().to_owned();
        assert_eq!(app.verify_token(&access).await.status(), StatusCode::OK);
    }
    assert_eq!(
        children.len(),
        1,
        "the chain forked into {}",
        children.len()
    );
    // One token was added: the child. No other token of the session can be refreshed.
    assert_eq!(app.count("refresh_tokens").await, tokens_before + 1);
    let child = children.into_iter().next().unwrap();
    let next = json_of(app.refresh(&child).await, StatusCode::OK).await;
    // After the window, presenting the first token again is reuse: the session goes,
    // and with it the only chain.
    app.advance(11);
    let body = json_of(
        app.refresh(&user.refresh_token).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["code"], "refresh_token_reused");
    assert_eq!(
        app.refresh(next["refresh_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_replay_inside_the_grace_window_gets_the_same_child() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let first = json_of(app.refresh(&user.refresh_token).await, StatusCode::OK).await;
    app.advance(9);

    let replay = json_of(app.refresh(&user.refresh_token).await, StatusCode::OK).await;

    assert_eq!(replay["refresh_token"], first["refresh_token"]);
    // Its access token is a fresh one for the same session.
    assert_eq!(
        app.verify_token(replay["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
    // The child still rotates once: the chain goes on from it.
    let child = first["refresh_token"].as_str().unwrap();
    let next = json_of(app.refresh(child).await, StatusCode::OK).await;
    assert_ne!(next["refresh_token"], first["refresh_token"]);
}

#[tokio::test]
async fn the_child_is_kept_sealed_and_erased_after_the_grace_window() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let first = json_of(app.refresh(&user.refresh_token).await, StatusCode::OK).await;
    let child = first["refresh_token"].as_str().unwrap();
    let parent_hash = introgy::auth::sha256_hex(&user.refresh_token);
    let stored = app
        .state
        .store
        .refresh_token(&parent_hash)
        .await
        .unwrap()
        .unwrap();
    let sealed = stored
        .child_sealed
        .expect("the child is kept for the window");
    assert!(!sealed.contains(child), "the child is stored in clear");

    app.advance(11);
    introgy::startup::housekeeping(&app.state).await;

    let stored = app
        .state
        .store
        .refresh_token(&parent_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.child_sealed, None);
}
