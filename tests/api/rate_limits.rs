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

// ---------------------------------------------------------------------------------------
// Budgets under concurrency (SECURITY.md 26), every password check counts (27), one
// client cannot spend an owner's mail (30), IPv6 clients by /64 (32).
// ---------------------------------------------------------------------------------------

async fn delete_me(app: &TestApp, token: &str, password: &str) -> reqwest::Response {
    app.client
        .delete(app.url("/users/me"))
        .bearer_auth(token)
        .json(&json!({"password": password}))
        .send()
        .await
        .unwrap()
}

fn tally(statuses: &[StatusCode]) -> std::collections::BTreeMap<u16, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for status in statuses {
        *counts.entry(status.as_u16()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_parallel_wrong_passwords_get_ten_bcrypt_verifications_and_thirty_429s() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let unknown = unique_email();
    for email in [user.email.as_str(), unknown.as_str()] {
        let before = app.state.hasher.verifications();
        let statuses: Vec<StatusCode> = futures::future::join_all((0..40).map(|n| {
            let app = &app;
            async move { app.login(email, &format!("wrong password {n}")).await }
        }))
        .await
        .iter()
        .map(|r| r.status())
        .collect();
        let hashed = app.state.hasher.verifications() - before;
        assert_eq!(
            tally(&statuses),
            [(401, 10), (429, 30)].into(),
            "{email}: the budget is reserved before hashing"
        );
        assert!(hashed <= 10, "{email}: {hashed} bcrypt verifications");
    }
    // The right password waits like every other attempt, and costs nothing.
    let before = app.state.hasher.verifications();
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(app.state.hasher.verifications(), before);
}

#[tokio::test]
async fn a_right_password_gives_its_slot_back() {
    let app = spawn_app().await;
    let user = app.signup().await;
    for _ in 0..9 {
        assert_eq!(
            app.login(&user.email, "not the password").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Nine failures held; right passwords do not add to them.
    for _ in 0..5 {
        assert_eq!(
            app.login(&user.email, PASSWORD).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        app.login(&user.email, "not the password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn wrong_passwords_on_delete_spend_the_accounts_login_budget() {
    let app = spawn_app().await;
    let user = app.signup().await;
    for _ in 0..10 {
        let response = delete_me(&app, &user.access_token, "not the password").await;
        assert_eq!(
            json_of(response, StatusCode::FORBIDDEN).await["code"],
            "invalid_password"
        );
    }
    // The budget is spent: the right password waits too, on every route that checks it.
    let locked = delete_me(&app, &user.access_token, PASSWORD).await;
    assert!(locked.headers().contains_key("retry-after"));
    assert_eq!(
        json_of(locked, StatusCode::TOO_MANY_REQUESTS).await["code"],
        "rate_limited"
    );
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        app.get_authed("/users/me", &user.access_token)
            .await
            .status(),
        StatusCode::OK,
        "the account is still there"
    );
    app.advance(15 * 60 + 1);
    assert_eq!(
        delete_me(&app, &user.access_token, PASSWORD).await.status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_deletes_are_budgeted_and_hash_one_at_a_time() {
    // Cost 8 makes each verification long enough (~20 ms) that parallel checks would
    // overlap on four hashing threads if the account were not held to one.
    let app = spawn_app_with(&["--bcrypt-cost", "8", "--hash-concurrency", "4"]).await;
    let user = app.signup().await;
    let before = app.state.hasher.verifications();
    let statuses: Vec<StatusCode> = futures::future::join_all((0..40).map(|n| {
        let (app, token) = (&app, &user.access_token);
        async move { delete_me(app, token, &format!("wrong {n}")).await }
    }))
    .await
    .iter()
    .map(|r| r.status())
    .collect();
    assert_eq!(tally(&statuses), [(403, 10), (429, 30)].into());
    assert!(app.state.hasher.verifications() - before <= 10);
    assert_eq!(
        app.state.hasher.peak_concurrent_verifications(),
        1,
        "one account held more than one hashing thread"
    );
    assert_eq!(app.state.limits.stats().await.unwrap().hashing_accounts, 0);
}

#[tokio::test]
async fn password_confirmations_spend_the_clients_auth_budget() {
    let app = spawn_app_with(&["--auth-rate-limit-per-minute", "4"]).await;
    let user = app.signup().await; // register + verify-otp: two of the four
    for _ in 0..2 {
        assert_eq!(
            delete_me(&app, &user.access_token, "not the password")
                .await
                .status(),
            StatusCode::FORBIDDEN
        );
    }
    let limited = delete_me(&app, &user.access_token, "not the password").await;
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        login_from(&app, None).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "one budget for logins and confirmations"
    );
}

#[tokio::test]
async fn ipv6_clients_share_one_budget_per_slash_64() {
    let app = spawn_app_with(&[
        "--auth-rate-limit-per-minute",
        "3",
        "--trusted-proxies",
        "127.0.0.1/32",
    ])
    .await;
    for address in [
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "2001:db8:1:2:dead:beef:0:1",
    ] {
        let response = login_from(&app, Some(address)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{address}");
    }
    // A fresh address in the same /64 is the same client.
    assert_eq!(
        login_from(&app, Some("2001:db8:1:2:ffff:ffff:ffff:fffe"))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The next /64 is another client.
    assert_eq!(
        login_from(&app, Some("2001:db8:1:3::1")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.state.limits.stats().await.unwrap().clients, 2);
}

fn as_client(
    app: &TestApp,
    ip: &str,
    path: &str,
    body: serde_json::Value,
) -> reqwest::RequestBuilder {
    app.client
        .post(app.url(path))
        .header("x-forwarded-for", ip)
        .json(&body)
}

#[tokio::test]
async fn one_client_spends_at_most_two_of_an_addresses_mails() {
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let user = app.signup().await; // from 127.0.0.1: one verification mail
    let attacker = "203.0.113.66";
    for _ in 0..4 {
        app.advance(61);
        let response = as_client(
            &app,
            attacker,
            "/auth/send-verification-code",
            json!({"email": user.email, "purpose": "reset_password"}),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        app.settle().await;
    }
    assert_eq!(app.mails(&user.email, "reset_code").len(), 2);
    // Nor can the attacker's "someone tried to sign up" notices spend more.
    app.advance(61);
    let response = as_client(
        &app,
        attacker,
        "/auth/register",
        json!({"email": user.email, "password": "another passphrase"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.settle().await;
    assert!(app.mails(&user.email, "signup_attempt").is_empty());
    // The owner's own request still gets a code.
    app.advance(61);
    app.send_code(&user.email, "reset_password").await;
    let code = app.code_from_mail(&user.email, "reset_code", 3).await;
    assert_eq!(
        app.reset_password(&user.email, &code, "a brand new passphrase")
            .await
            .status(),
        StatusCode::OK
    );
}
