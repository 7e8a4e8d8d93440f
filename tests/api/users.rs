//! Profiles: PRODUCT.md §5, SECURITY.md 11 and 22.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, TestApp, PASSWORD};

pub async fn put_me(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    app.client
        .put(app.url("/users/me"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn get_me_returns_every_profile_field() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let me = json_of(
        app.get_authed("/users/me", &user.access_token).await,
        StatusCode::OK,
    )
    .await;
    for field in [
        "id",
        "email",
        "display_name",
        "avatar_url",
        "bio",
        "timezone",
        "introvert_level",
        "is_verified",
        "onboarding_completed",
        "onboarding_completed_at",
        "preferences",
        "social_battery_level",
        "created_at",
        "updated_at",
    ] {
        assert!(me.get(field).is_some(), "{field} missing from {me}");
    }
    assert_eq!(me["id"], user.id.as_str());
    assert_eq!(me["email"], user.email.as_str());
    assert_eq!(me["preferences"], json!({}));
    assert_eq!(me["social_battery_level"], 70);
    assert!(me.get("hashed_password").is_none());
    let api = json_of(
        app.get_authed("/api/users/me", &user.access_token).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(api, me);
}

#[tokio::test]
async fn profile_routes_need_a_token() {
    let app = spawn_app().await;
    assert_eq!(
        app.get("/users/me").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/users/lookup?email=a@example.com").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let put = app
        .client
        .put(app.url("/users/me"))
        .json(&json!({"bio": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn put_me_changes_only_what_it_is_given() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let first = json_of(
        put_me(
            &app,
            &user.access_token,
            &json!({"display_name": "Ada", "bio": "Quiet.", "introvert_level": 8}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(first["display_name"], "Ada");
    assert_eq!(first["bio"], "Quiet.");
    assert_eq!(first["introvert_level"], 8);
    let second = json_of(
        put_me(
            &app,
            &user.access_token,
            &json!({"timezone": "Europe/Berlin"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(second["display_name"], "Ada");
    assert_eq!(second["bio"], "Quiet.");
    assert_eq!(second["introvert_level"], 8);
    assert_eq!(second["timezone"], "Europe/Berlin");
    // null clears a field.
    let third = json_of(
        put_me(&app, &user.access_token, &json!({"bio": null})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(third["bio"], Value::Null);
    assert_eq!(third["display_name"], "Ada");
    // And GET agrees.
    let me = json_of(
        app.get_authed("/users/me", &user.access_token).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me, third);
}

#[tokio::test]
async fn camel_case_aliases_are_accepted() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let body = json_of(
        put_me(
            &app,
            &user.access_token,
            &json!({"displayName": "Grace", "avatarUrl": "https://example.com/a.png", "introvertLevel": 3, "onboardingCompleted": true}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["display_name"], "Grace");
    assert_eq!(body["avatar_url"], "https://example.com/a.png");
    assert_eq!(body["introvert_level"], 3);
    assert_eq!(body["onboarding_completed"], true);
}

#[tokio::test]
async fn onboarding_completed_at_is_set_by_the_server_when_onboarding_completes() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let before = chrono::Utc::now();
    let body = json_of(
        put_me(
            &app,
            &user.access_token,
            &json!({"onboarding_completed": true}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let at =
        chrono::DateTime::parse_from_rfc3339(body["onboarding_completed_at"].as_str().unwrap())
            .unwrap();
    assert!(at >= before - chrono::Duration::seconds(1));
    // Completing again keeps the first time.
    let again = json_of(
        put_me(
            &app,
            &user.access_token,
            &json!({"onboarding_completed": true}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        again["onboarding_completed_at"],
        body["onboarding_completed_at"]
    );
    // A client cannot set it.
    let refused = put_me(
        &app,
        &user.access_token,
        &json!({"onboarding_completed_at": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn preferences_merge_shallowly_and_null_removes_a_key() {
    let app = spawn_app().await;
    let user = app.signup().await;
    put_me(
        &app,
        &user.access_token,
        &json!({"preferences": {"theme": "dark", "notifications": {"email": true}}}),
    )
    .await;
    let body = json_of(
        put_me(
            &app,
            &user.access_token,
            &json!({"preferences": {"language": "de", "notifications": {"push": false}}}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        body["preferences"],
        json!({"theme": "dark", "language": "de", "notifications": {"push": false}})
    );
    let body = json_of(
        put_me(
            &app,
            &user.access_token,
            &json!({"preferences": {"theme": null}}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        body["preferences"],
        json!({"language": "de", "notifications": {"push": false}})
    );
}

#[tokio::test]
async fn preferences_are_limited_to_16_kib() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let big = "x".repeat(9 * 1024);
    assert_eq!(
        put_me(
            &app,
            &user.access_token,
            &json!({"preferences": {"a": big}})
        )
        .await
        .status(),
        StatusCode::OK
    );
    // The merged object would exceed the limit, although this patch alone would not.
    let body = json_of(
        put_me(
            &app,
            &user.access_token,
            &json!({"preferences": {"b": big}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["detail"][0]["loc"], json!(["body", "preferences"]));
    let me = json_of(
        app.get_authed("/users/me", &user.access_token).await,
        StatusCode::OK,
    )
    .await;
    assert!(me["preferences"].get("b").is_none(), "nothing changed");
}

#[tokio::test]
async fn put_me_refuses_email_id_unknown_fields_and_bad_values() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let cases = [
        (json!({"email": "new@example.com"}), "email"),
        (json!({"id": "0123456789abcdef01234567"}), "id"),
        (json!({"is_verified": false}), "is_verified"),
        (json!({"social_battery_level": 100}), "social_battery_level"),
        (json!({"introvert_level": 0}), "introvert_level"),
        (json!({"introvert_level": 11}), "introvert_level"),
        (json!({"introvert_level": "high"}), "introvert_level"),
        (json!({"display_name": "x".repeat(101)}), "display_name"),
        (json!({"display_name": "  "}), "display_name"),
        (json!({"bio": "x".repeat(501)}), "bio"),
        (json!({"avatar_url": "javascript:alert(1)"}), "avatar_url"),
        (json!({"timezone": "Not a zone!"}), "timezone"),
        (json!({"preferences": {"a.b": 1}}), "preferences"),
        (json!({"preferences": "dark"}), "preferences"),
        (
            json!({"onboarding_completed": "yes"}),
            "onboarding_completed",
        ),
    ];
    for (body, field) in cases {
        let response = put_me(&app, &user.access_token, &body).await;
        let json = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(json["detail"][0]["loc"][1], field, "{body}: {json}");
    }
    let me = json_of(
        app.get_authed("/users/me", &user.access_token).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me["email"], user.email.as_str());
    assert_eq!(me["introvert_level"], Value::Null);
    let not_object = put_me(&app, &user.access_token, &json!([1, 2])).await;
    assert_eq!(not_object.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn delete_me_needs_the_password_and_removes_everything() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let other = json_of(app.login(&user.email, PASSWORD).await, StatusCode::OK).await;
    app.client
        .post(app.url("/social-battery/me/record"))
        .bearer_auth(&user.access_token)
        .json(&json!({"type": "depletion", "name": "Party", "energy_impact": 30}))
        .send()
        .await
        .unwrap();

    let delete = |password: &'static str| {
        app.client
            .delete(app.url("/users/me"))
            .bearer_auth(&user.access_token)
            .json(&json!({"password": password}))
            .send()
    };
    let wrong = delete("not my password").await.unwrap();
    let body = json_of(wrong, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "invalid_password");
    assert_eq!(
        app.get_authed("/users/me", &user.access_token)
            .await
            .status(),
        StatusCode::OK
    );

    assert_eq!(
        delete(PASSWORD).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get_authed("/users/me", &user.access_token)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.verify_token(other["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&user.email, PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    for table in [
        "users",
        "sessions",
        "refresh_tokens",
        "one_time_codes",
        "battery_events",
        "idempotency_keys",
    ] {
        assert_eq!(app.count(table).await, 0, "{table} still holds rows");
    }
    // The address can sign up again.
    assert_eq!(
        app.register(&user.email, PASSWORD).await.status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn lookup_finds_a_verified_user_by_exact_email_and_reveals_little() {
    let app = spawn_app().await;
    let alice = app.signup().await;
    let bob = app.signup().await;
    put_me(
        &app,
        &bob.access_token,
        &json!({"display_name": "Bob", "bio": "private"}),
    )
    .await;
    let body = json_of(
        app.get_authed(
            &format!("/users/lookup?email={}", bob.email.to_uppercase()),
            &alice.access_token,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        body,
        json!({"id": bob.id, "display_name": "Bob", "avatar_url": null})
    );
    let missing = app
        .get_authed(
            "/users/lookup?email=nobody@example.com",
            &alice.access_token,
        )
        .await;
    assert_eq!(
        json_of(missing, StatusCode::NOT_FOUND).await["code"],
        "not_found"
    );
    let partial = app
        .get_authed(
            &format!("/users/lookup?email={}", &bob.email[..8]),
            &alice.access_token,
        )
        .await;
    assert_eq!(partial.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let none = app.get_authed("/users/lookup", &alice.access_token).await;
    assert_eq!(
        json_of(none, StatusCode::UNPROCESSABLE_ENTITY).await["detail"][0]["loc"],
        json!(["query", "email"])
    );
}

#[tokio::test]
async fn lookup_does_not_find_unverified_accounts() {
    let app = spawn_app().await;
    let alice = app.signup().await;
    let pending = crate::helpers::unique_email();
    app.register(&pending, PASSWORD).await;
    let response = app
        .get_authed(
            &format!("/users/lookup?email={pending}"),
            &alice.access_token,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lookup_is_rate_limited_per_caller() {
    let app = spawn_app().await;
    let alice = app.signup().await;
    let bob = app.signup().await;
    let mut limited = None;
    let mut admitted = 0;
    let started = std::time::Instant::now();
    // The budget refills one lookup every two seconds of the service clock, which runs
    // with real time: a slow machine may see one more per two seconds it takes.
    for _ in 0..(2 * introgy::limits::LOOKUPS_PER_MINUTE) {
        let response = app
            .get_authed(
                "/users/lookup?email=nobody@example.com",
                &alice.access_token,
            )
            .await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
        admitted += 1;
    }
    let refilled = started.elapsed().as_secs() as u32 / 2 + 1;
    assert!(
        admitted >= introgy::limits::LOOKUPS_PER_MINUTE
            && admitted <= introgy::limits::LOOKUPS_PER_MINUTE + refilled,
        "{admitted} lookups admitted in {:?}",
        started.elapsed()
    );
    let response = limited.expect("no 429 after the per-minute budget");
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        json_of(response, StatusCode::TOO_MANY_REQUESTS).await["code"],
        "rate_limited"
    );
    // Another caller is not affected.
    let other = app
        .get_authed("/users/lookup?email=nobody@example.com", &bob.access_token)
        .await;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}
