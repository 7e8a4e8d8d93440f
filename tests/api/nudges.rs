//! Nudges by mail (issue 14.3): opt-in through `preferences.notifications`, the
//! low-battery mail (once a UTC day), the weekly summary with its chart (once a week,
//! whatever the number of passes and instances), and the unsubscribe link that works
//! without signing in.

use introgy::email::OutgoingMail;
use introgy::nudges::weekly::send_weekly_summaries;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{json_of, mongo_db_name_for, spawn_app, spawn_app_with, TestApp, TestUser};
use crate::users::put_me;

const DAY: i64 = 86_400;

async fn opt_in(app: &TestApp, user: &TestUser, lists: Value) {
    let response = put_me(
        app,
        &user.access_token,
        &json!({"preferences": {"notifications": lists}}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// Sets the level, then drains it to `to`: one crossing of 20 when `from >= 20 > to`.
async fn drop_level(app: &TestApp, user: &TestUser, from: i64, to: i64) {
    let set = app
        .record(&user.access_token, &json!({"type": "set", "level": from}))
        .await;
    assert_eq!(set.status(), StatusCode::CREATED);
    let drain = app
        .record(
            &user.access_token,
            &json!({"type": "depletion", "name": "Team offsite", "energy_impact": from - to}),
        )
        .await;
    assert_eq!(drain.status(), StatusCode::CREATED);
    let level = json_of(drain, StatusCode::CREATED).await["battery"]["level"].clone();
    assert_eq!(level, json!(to));
}

/// Moves the app's clock to just after the next UTC midnight, so a test about "the same
/// day" never straddles one.
fn start_of_a_day(app: &TestApp) {
    let now = app.state.clock.now();
    let next = (now.date_naive() + chrono::TimeDelta::days(1))
        .and_hms_opt(0, 1, 0)
        .unwrap()
        .and_utc();
    app.advance((next - now).num_seconds());
}

/// The token of a mail's `List-Unsubscribe` URL.
fn token_of(mail: &OutgoingMail) -> String {
    let url = mail
        .list_unsubscribe
        .as_deref()
        .expect("a List-Unsubscribe URL");
    url.split_once("token=").expect("a token").1.to_owned()
}

impl TestApp {
    async fn unsubscribe(&self, method: reqwest::Method, token: &str) -> reqwest::Response {
        self.client
            .request(method, self.url(&format!("/unsubscribe?token={token}")))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn users_who_did_not_opt_in_get_no_nudges() {
    let app = spawn_app().await;
    let user = app.signup().await;
    opt_in(&app, &user, json!({"low_battery": false})).await;
    let quiet = app.signup().await;

    drop_level(&app, &user, 50, 10).await;
    drop_level(&app, &quiet, 50, 10).await;
    app.advance(7 * DAY);
    assert_eq!(send_weekly_summaries(&app.state).await.unwrap(), 0);

    app.settle().await;
    for who in [&user.email, &quiet.email] {
        assert!(app.mails(who, "low_battery").is_empty());
        assert!(app.mails(who, "weekly_summary").is_empty());
    }
}

#[tokio::test]
async fn crossing_20_sends_one_mail_a_day_with_its_unsubscribe_headers() {
    let app = spawn_app().await;
    let user = app.signup().await;
    opt_in(&app, &user, json!({"low_battery": true})).await;
    start_of_a_day(&app);

    // Down to 20 is not low: nothing.
    drop_level(&app, &user, 60, 20).await;
    app.settle().await;
    assert!(app.mails(&user.email, "low_battery").is_empty());

    drop_level(&app, &user, 50, 12).await;
    let mails = app.wait_for_mails(&user.email, "low_battery", 1).await;
    assert!(mails[0].subject.contains("12%"), "{}", mails[0].subject);
    assert!(mails[0].text.contains("12%"));
    let url = mails[0].list_unsubscribe.as_deref().unwrap();
    assert!(url.contains("/unsubscribe?token="), "{url}");
    assert!(mails[0].text.contains(url) && mails[0].html.contains("unsubscribe?token="));

    // A second crossing the same (UTC) day: no second mail.
    drop_level(&app, &user, 80, 3).await;
    app.settle().await;
    assert_eq!(app.mails(&user.email, "low_battery").len(), 1);

    // The next day: falling further while already low is no crossing.
    app.advance(DAY);
    let further = app
        .record(
            &user.access_token,
            &json!({"type": "depletion", "name": "Phone call", "energy_impact": 2}),
        )
        .await;
    assert_eq!(further.status(), StatusCode::CREATED);
    app.settle().await;
    assert_eq!(app.mails(&user.email, "low_battery").len(), 1);
    // A new crossing that day mails again.
    drop_level(&app, &user, 40, 19).await;
    app.wait_for_mails(&user.email, "low_battery", 2).await;
}

#[tokio::test]
async fn parallel_crossings_send_one_mail() {
    let app = spawn_app().await;
    let user = app.signup().await;
    opt_in(&app, &user, json!({"low_battery": true})).await;
    start_of_a_day(&app);
    // Ten records at once, each a set to 50 and a drain: several of them cross 20.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let (client, url, token) = (
                app.client.clone(),
                app.url("/social-battery/me/record"),
                user.access_token.clone(),
            );
            let body = if i % 2 == 0 {
                json!({"type": "set", "level": 50})
            } else {
                json!({"type": "depletion", "name": "Call", "energy_impact": 40})
            };
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::CREATED);
    }
    drop_level(&app, &user, 50, 10).await;
    app.settle().await;
    assert_eq!(app.mails(&user.email, "low_battery").len(), 1);
}

#[tokio::test]
async fn the_weekly_summary_is_sent_once_with_its_chart_however_often_and_wherever_it_runs() {
    let app = spawn_app().await;
    let user = app.signup().await;
    opt_in(&app, &user, json!({"weekly_summary": true})).await;
    let idle = app.signup().await;
    opt_in(&app, &idle, json!({"weekly_summary": true})).await;
    drop_level(&app, &user, 60, 35).await;
    let recharge = app
        .record(
            &user.access_token,
            &json!({"type": "recharge", "name": "Long walk", "energy_impact": 20}),
        )
        .await;
    assert_eq!(recharge.status(), StatusCode::CREATED);

    // During the week nothing is sent for it; once it is over, one pass sends it.
    assert_eq!(send_weekly_summaries(&app.state).await.unwrap(), 0);
    app.advance(7 * DAY);
    assert_eq!(send_weekly_summaries(&app.state).await.unwrap(), 1);
    assert_eq!(
        send_weekly_summaries(&app.state).await.unwrap(),
        0,
        "a second pass"
    );

    // A second instance on the same store, at the same time.
    let database_url = match std::env::var("INTROGY_TEST_MONGO_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(url) => format!(
            "{}/{}",
            url.trim_end_matches('/'),
            mongo_db_name_for(app.dir.path())
        ),
        None => format!("sqlite:{}", app.db_path.display()),
    };
    let other = spawn_app_with(&["--database-url", &database_url]).await;
    other.advance(7 * DAY);
    assert_eq!(
        send_weekly_summaries(&other.state).await.unwrap(),
        0,
        "another instance"
    );

    let mails = app.wait_for_mails(&user.email, "weekly_summary", 1).await;
    app.settle().await;
    other.settle().await;
    assert_eq!(app.mails(&user.email, "weekly_summary").len(), 1);
    assert!(other.mails(&user.email, "weekly_summary").is_empty());
    assert!(
        app.mails(&idle.email, "weekly_summary").is_empty(),
        "nothing recorded, nothing to summarise"
    );

    let mail = &mails[0];
    assert_eq!(mail.inline_images.len(), 1);
    let chart = &mail.inline_images[0];
    assert_eq!(chart.content_type, "image/png");
    assert!(chart.data.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(mail.html.contains(&format!("cid:{}", chart.content_id)));
    assert!(mail.list_unsubscribe.is_some());
    // The numbers, counted as the history's summary counts them (the `set` from 70 to
    // 60 drained 10, the depletion 25, the recharge 20), and the day's closing level.
    assert!(
        mail.text.contains("35 drained, 20 recharged"),
        "{}",
        mail.text
    );
    assert!(mail.text.contains(": 55%"), "{}", mail.text);
}

#[tokio::test]
async fn the_unsubscribe_link_works_without_signing_in_and_stops_that_list() {
    let app = spawn_app().await;
    let user = app.signup().await;
    opt_in(
        &app,
        &user,
        json!({"low_battery": true, "weekly_summary": true}),
    )
    .await;
    drop_level(&app, &user, 50, 10).await;
    let mails = app.wait_for_mails(&user.email, "low_battery", 1).await;
    let token = token_of(&mails[0]);

    // GET shows the confirmation form and changes nothing.
    let page = app.unsubscribe(reqwest::Method::GET, &token).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(
        html.contains("<form method=\"post\"") && html.contains(&token),
        "{html}"
    );
    let me = json_of(
        app.get_authed("/users/me", &user.access_token).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me["preferences"]["notifications"]["low_battery"], true);

    // POST (what the form and RFC 8058 clients do), twice: both 200, without a token.
    for _ in 0..2 {
        let done = app.unsubscribe(reqwest::Method::POST, &token).await;
        assert_eq!(done.status(), StatusCode::OK);
    }
    let me = json_of(
        app.get_authed("/users/me", &user.access_token).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        me["preferences"]["notifications"],
        json!({"low_battery": false, "weekly_summary": true}),
        "only that list is off"
    );

    app.advance(DAY);
    drop_level(&app, &user, 50, 10).await;
    app.settle().await;
    assert_eq!(
        app.mails(&user.email, "low_battery").len(),
        1,
        "no more mails"
    );
}

#[tokio::test]
async fn tampered_foreign_expired_and_unknown_list_tokens_are_refused() {
    let app = spawn_app().await;
    let user = app.signup().await;
    opt_in(&app, &user, json!({"low_battery": true})).await;
    drop_level(&app, &user, 50, 10).await;
    let token = token_of(&app.wait_for_mails(&user.email, "low_battery", 1).await[0]);

    let mut tampered = token.clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let unknown_list = app.state.unsubscribe.sign_payload(&format!(
        "v1:marketing:{}:{}",
        user.id,
        chrono::Utc::now().timestamp() + 3600
    ));
    let cases = [
        (tampered.as_str(), "invalid_unsubscribe_token"),
        (user.access_token.as_str(), "invalid_unsubscribe_token"),
        ("not-a-token", "invalid_unsubscribe_token"),
        (unknown_list.as_str(), "unknown_list"),
    ];
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        for (bad, code) in &cases {
            let response = app.unsubscribe(method.clone(), bad).await;
            let body = json_of(response, StatusCode::BAD_REQUEST).await;
            assert_eq!(body["code"], *code, "{method} {bad}");
        }
        let missing = app
            .client
            .request(method.clone(), app.url("/unsubscribe"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    // Links stop working 60 days after the mail.
    app.advance(61 * DAY);
    let body = json_of(
        app.unsubscribe(reqwest::Method::POST, &token).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body["code"], "expired_unsubscribe_token");
    // (The session has expired too by now: read the profile from the store.)
    let stored = app.state.store.user_by_id(&user.id).await.unwrap().unwrap();
    assert_eq!(
        stored.preferences["notifications"]["low_battery"], true,
        "nothing changed"
    );
}

#[tokio::test]
async fn notification_preferences_must_be_booleans_in_an_object() {
    let app = spawn_app().await;
    let user = app.signup().await;
    for (preferences, loc) in [
        (
            json!({"notifications": {"low_battery": "yes"}}),
            json!(["body", "preferences", "notifications", "low_battery"]),
        ),
        (
            json!({"notifications": true}),
            json!(["body", "preferences", "notifications"]),
        ),
    ] {
        let response = put_me(
            &app,
            &user.access_token,
            &json!({ "preferences": preferences }),
        )
        .await;
        let body = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["detail"][0]["loc"], loc, "{preferences}");
    }
}
