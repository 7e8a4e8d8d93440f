//! `GET /users/me/export`: JSON and CSV, across store pages, spreadsheet-safe, rate
//! limited per user, and nothing for a deleted account.

use introgy::auth::export::EXPORT_PAGE;
use introgy::battery::{EnergyImpact, Interaction};
use introgy::store::NewBatteryEvent;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, TestApp, TestUser, PASSWORD};

async fn export(app: &TestApp, user: &TestUser, query: &str) -> Response {
    app.get_authed(&format!("/users/me/export{query}"), &user.access_token)
        .await
}

async fn record(app: &TestApp, user: &TestUser, body: Value) {
    let response = app
        .client
        .post(app.url("/social-battery/me/record"))
        .bearer_auth(&user.access_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// `n` interactions written straight through the store (fast, for paging).
async fn seed(app: &TestApp, user: &TestUser, n: usize) {
    let now = app.state.clock.now();
    for i in 0..n {
        let event = NewBatteryEvent {
            id: introgy::auth::new_object_id(),
            interaction: Interaction::Recharge(EnergyImpact::new(1).unwrap()),
            name: Some(format!("walk {i}")),
            duration_minutes: 30,
            occurred_at: now,
            recorded_at: now,
            received: std::time::Instant::now(),
            notes: None,
            people_count: None,
            interaction_type: None,
        };
        app.state
            .store
            .record_interaction(&user.id, &event, None)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn json_export_has_the_profile_the_sessions_and_the_whole_history_newest_first() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let stranger = app.signup().await;
    record(
        &app,
        &user,
        json!({"type": "depletion", "name": "party", "energy_impact": 30}),
    )
    .await;
    record(
        &app,
        &user,
        json!({"type": "recharge", "name": "book", "energy_impact": 10}),
    )
    .await;
    record(
        &app,
        &stranger,
        json!({"type": "depletion", "name": "not yours", "energy_impact": 5}),
    )
    .await;

    let response = export(&app, &user, "").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert!(response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["profile"]["email"], user.email.as_str());
    assert_eq!(body["profile"]["social_battery_level"], 50);
    assert_eq!(body["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(body["sessions"][0]["current"], true);
    let names: Vec<&str> = body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["book", "party"]);
    assert_eq!(body["history"][1]["energy_delta"], -30);
    // Under /api, and `format=json` by name, the same.
    let api = app
        .get_authed("/api/users/me/export?format=json", &user.access_token)
        .await;
    let api: Value = json_of(api, StatusCode::OK).await;
    assert_eq!(api["history"], body["history"]);
}

#[tokio::test]
async fn an_export_spans_every_page_of_the_history() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let n = EXPORT_PAGE as usize * 2 + 1;
    seed(&app, &user, n).await;

    let body = json_of(export(&app, &user, "").await, StatusCode::OK).await;
    let history = body["history"].as_array().unwrap();
    assert_eq!(history.len(), n);
    assert_eq!(history[0]["name"], format!("walk {}", n - 1));
    assert_eq!(history[n - 1]["name"], "walk 0");
    let ids: std::collections::HashSet<&str> =
        history.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), n, "no record twice");

    let csv = export(&app, &user, "?format=csv")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(csv.split("\r\n").filter(|l| !l.is_empty()).count(), n + 1);
}

#[tokio::test]
async fn csv_export_is_rfc_4180_and_safe_to_open_in_a_spreadsheet() {
    let app = spawn_app().await;
    let user = app.signup().await;
    record(
        &app,
        &user,
        json!({"type": "depletion", "name": "=HYPERLINK(\"http://evil\")", "energy_impact": 20,
               "notes": "dinner, then \"drinks\"\nlate"}),
    )
    .await;
    record(
        &app,
        &user,
        json!({"type": "sleep", "sleep_quality": "good"}),
    )
    .await;

    let response = export(&app, &user, "?format=csv").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = response.text().await.unwrap();
    let mut lines = text.split("\r\n");
    assert_eq!(
        lines.next().unwrap(),
        introgy::auth::export::CSV_HEADER.trim_end()
    );
    let sleep = lines.next().unwrap();
    assert!(sleep.contains(",sleep,,,good,"), "{sleep}");
    let party = lines.next().unwrap();
    assert!(
        party.contains(",\"'=HYPERLINK(\"\"http://evil\"\")\",20,"),
        "formula neutralised and quoted: {party}"
    );
    assert!(party.contains(",-20,"), "numbers stay numbers: {party}");
    assert!(
        party.contains(",\"dinner, then \"\"drinks\"\"\nlate\","),
        "{party}"
    );
    assert_eq!(lines.next(), Some(""));
    assert_eq!(lines.next(), None);
}

#[tokio::test]
async fn exports_are_rate_limited_per_user() {
    let app = spawn_app().await;
    let (user, other) = (app.signup().await, app.signup().await);
    for _ in 0..introgy::limits::EXPORTS_PER_HOUR {
        assert_eq!(
            export(&app, &user, "?format=csv").await.status(),
            StatusCode::OK
        );
    }
    let response = export(&app, &user, "").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    // Another user is not held up.
    assert_eq!(export(&app, &other, "").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_deleted_account_has_nothing_to_export() {
    let app = spawn_app().await;
    let user = app.signup().await;
    record(
        &app,
        &user,
        json!({"type": "depletion", "name": "party", "energy_impact": 30}),
    )
    .await;
    let response = app
        .client
        .delete(app.url("/users/me"))
        .bearer_auth(&user.access_token)
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let body = json_of(export(&app, &user, "").await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["code"], "invalid_token");
}

#[tokio::test]
async fn an_unknown_format_is_422_and_no_token_is_401() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let body = json_of(
        export(&app, &user, "?format=xml").await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["detail"][0]["loc"][0], "query");
    assert_eq!(
        app.get("/users/me/export").await.status(),
        StatusCode::UNAUTHORIZED
    );
}
