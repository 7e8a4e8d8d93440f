//! The social battery: PRODUCT.md §4, SECURITY.md 22.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, TestApp, TestUser};

impl TestApp {
    pub async fn record(&self, token: &str, body: &Value) -> reqwest::Response {
        self.record_to("me", token, body, None).await
    }

    pub async fn record_to(
        &self,
        who: &str,
        token: &str,
        body: &Value,
        key: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url(&format!("/social-battery/{who}/record")))
            .bearer_auth(token)
            .json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    pub async fn battery(&self, user: &TestUser) -> Value {
        json_of(
            self.get_authed("/social-battery/me", &user.access_token)
                .await,
            StatusCode::OK,
        )
        .await
    }

    pub async fn activity(&self, user: &TestUser, query: &str) -> reqwest::Response {
        self.get_authed(
            &format!("/social-battery/me/activity{query}"),
            &user.access_token,
        )
        .await
    }
}

fn depletion(impact: i64) -> Value {
    json!({"type": "depletion", "name": "Team meeting", "energy_impact": impact})
}

fn recharge(impact: i64) -> Value {
    json!({"type": "recharge", "name": "Reading", "energy_impact": impact})
}

#[tokio::test]
async fn a_new_user_starts_at_70_and_good() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let battery = app.battery(&user).await;
    assert_eq!(battery["level"], 70);
    assert_eq!(battery["status"], "good");
    assert_eq!(battery["is_low"], false);
    assert_eq!(battery["user_id"], user.id.as_str());
    // Own id works like `me`.
    let own = json_of(
        app.get_authed(&format!("/social-battery/{}", user.id), &user.access_token)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(own["level"], 70);
}

#[tokio::test]
async fn each_interaction_type_applies_its_rule_and_is_stored_with_before_after_and_delta() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let cases = [
        (depletion(30), 70, 40, -30, "moderate"),
        (recharge(20), 40, 60, 20, "good"),
        (
            json!({"type": "sleep", "sleep_quality": "bad"}),
            60,
            55,
            -5,
            "moderate",
        ),
        (
            json!({"type": "sleep", "sleep_quality": "medium"}),
            55,
            65,
            10,
            "good",
        ),
        (
            json!({"type": "sleep", "sleep_quality": "good"}),
            65,
            100,
            35,
            "excellent",
        ),
        (
            json!({"type": "set", "level": 15}),
            100,
            15,
            -85,
            "critical",
        ),
        (depletion(50), 15, 0, -15, "critical"),
        (recharge(100), 0, 100, 100, "excellent"),
    ];
    for (body, before, after, delta, status) in cases {
        let record = json_of(
            app.record(&user.access_token, &body).await,
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(record["level_before"], before, "{body}");
        assert_eq!(record["level_after"], after, "{body}");
        assert_eq!(record["energy_delta"], delta, "{body}");
        assert_eq!(record["battery"]["level"], after, "{body}");
        assert_eq!(record["battery"]["status"], status, "{body}");
        assert_eq!(record["type"], body["type"], "{body}");
        let battery = app.battery(&user).await;
        assert_eq!(battery["level"], after, "{body}");
        assert_eq!(battery["status"], status, "{body}");
        assert_eq!(battery["is_low"], after < 20, "{body}");
    }
}

#[tokio::test]
async fn record_stores_every_field_with_defaults() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let occurred = (chrono::Utc::now() - chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let record = json_of(
        app.record(
            &user.access_token,
            &json!({"type": "depletion", "name": "Dinner party", "energyImpact": 25, "durationMinutes": 180,
                    "occurredAt": occurred, "notes": "Loud.", "peopleCount": 8, "interactionType": "in-person"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(record["name"], "Dinner party");
    assert_eq!(record["energy_impact"], 25);
    assert_eq!(record["duration_minutes"], 180);
    assert_eq!(record["notes"], "Loud.");
    assert_eq!(record["people_count"], 8);
    assert_eq!(record["interaction_type"], "in-person");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(record["occurred_at"].as_str().unwrap()).unwrap(),
        chrono::DateTime::parse_from_rfc3339(&occurred).unwrap()
    );
    let plain = json_of(
        app.record(&user.access_token, &recharge(5)).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(plain["duration_minutes"], 60);
    assert!(plain["occurred_at"].is_string());
    let sleep = json_of(
        app.record(
            &user.access_token,
            &json!({"type": "sleep", "sleep_quality": "good"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(sleep["sleep_quality"], "good");
}

#[tokio::test]
async fn bad_records_are_422_and_change_nothing() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let cases = [
        (
            json!({"type": "depletion", "name": "x", "energy_impact": 0}),
            "energy_impact",
        ),
        (
            json!({"type": "depletion", "name": "x", "energy_impact": 101}),
            "energy_impact",
        ),
        (
            json!({"type": "recharge", "name": "x", "energy_impact": -5}),
            "energy_impact",
        ),
        (json!({"type": "recharge", "name": "x"}), "energy_impact"),
        (json!({"type": "recharge", "energy_impact": 5}), "name"),
        (
            json!({"type": "recharge", "name": "", "energy_impact": 5}),
            "name",
        ),
        (
            json!({"type": "recharge", "name": "x".repeat(201), "energy_impact": 5}),
            "name",
        ),
        (json!({"type": "set", "level": 101}), "level"),
        (json!({"type": "set", "level": -1}), "level"),
        (json!({"type": "set"}), "level"),
        (json!({"type": "sleep"}), "sleep_quality"),
        (
            json!({"type": "sleep", "sleep_quality": "amazing"}),
            "sleep_quality",
        ),
        (
            json!({"type": "sleep", "sleep_quality": "good", "energy_impact": 5}),
            "energy_impact",
        ),
        (
            json!({"type": "teleport", "name": "x", "energy_impact": 5}),
            "type",
        ),
        (json!({"name": "x", "energy_impact": 5}), "type"),
        (
            json!({"type": "depletion", "name": "x", "energy_impact": 5, "occurred_at": future}),
            "occurred_at",
        ),
        (
            json!({"type": "depletion", "name": "x", "energy_impact": 5, "occurred_at": "yesterday"}),
            "occurred_at",
        ),
        (
            json!({"type": "depletion", "name": "x", "energy_impact": 5, "duration_minutes": 0}),
            "duration_minutes",
        ),
        (
            json!({"type": "depletion", "name": "x", "energy_impact": 5, "people_count": -1}),
            "people_count",
        ),
        (
            json!({"type": "depletion", "name": "x", "energy_impact": 5, "interaction_type": "telepathy"}),
            "interaction_type",
        ),
        (
            json!({"type": "depletion", "name": "x", "energy_impact": 5, "mood": "meh"}),
            "mood",
        ),
        (
            json!({"type": "depletion", "name": "x", "energy_impact": "lots"}),
            "energy_impact",
        ),
    ];
    for (body, field) in cases {
        let response = app.record(&user.access_token, &body).await;
        let json = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(
            json["detail"][0]["loc"],
            json!(["body", field]),
            "{body}: {json}"
        );
    }
    assert_eq!(app.battery(&user).await["level"], 70);
    let page = json_of(app.activity(&user, "").await, StatusCode::OK).await;
    assert_eq!(page["items"], json!([]));
}

#[tokio::test]
async fn another_users_battery_is_404_whatever_the_token() {
    let app = spawn_app().await;
    let alice = app.signup().await;
    let bob = app.signup().await;
    let routes = [
        format!("/social-battery/{}", bob.id),
        format!("/social-battery/{}/activity", bob.id),
        "/social-battery/0123456789abcdef01234567".to_owned(),
    ];
    for route in routes {
        let response = app.get_authed(&route, &alice.access_token).await;
        assert_eq!(
            json_of(response, StatusCode::NOT_FOUND).await["code"],
            "not_found",
            "{route}"
        );
    }
    let response = app
        .record_to(&bob.id, &alice.access_token, &depletion(50), None)
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.battery(&bob).await["level"],
        70,
        "Bob's battery is untouched"
    );
    assert_eq!(
        app.get("/social-battery/me").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn parallel_records_for_one_user_all_land_and_replay_to_the_final_level() {
    let app = spawn_app().await;
    let user = app.signup().await;
    // All at one `occurred_at`: the timeline then lists them in acceptance order (ties
    // by `seq`), the order whose levels chain. (Stamped at arrival, concurrent requests'
    // `occurred_at` need not follow acceptance order.)
    let when = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let bodies: Vec<Value> = (0..40)
        .map(|i| {
            let mut body = match i % 4 {
                0 => depletion(7 + i),
                1 => recharge(3 + i),
                2 => {
                    let quality = ["good", "medium", "bad"][(i as usize / 4) % 3];
                    json!({"type": "sleep", "sleep_quality": quality})
                }
                _ => json!({"type": "set", "level": (i * 13) % 101}),
            };
            body["occurred_at"] = json!(when);
            body
        })
        .collect();
    let responses =
        futures::future::join_all(bodies.iter().map(|b| app.record(&user.access_token, b))).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");

    let page = json_of(app.activity(&user, "?limit=200").await, StatusCode::OK).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 40);
    // Oldest first: each record starts where the previous one ended, from 70.
    let mut level = 70;
    for item in items.iter().rev() {
        assert_eq!(item["level_before"], level, "a lost update: {item}");
        level = item["level_after"].as_i64().unwrap();
    }
    assert_eq!(app.battery(&user).await["level"], level);
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_first_response_and_drains_once() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let first = app
        .record_to("me", &user.access_token, &depletion(30), Some("retry-1"))
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let retry = app
        .record_to("me", &user.access_token, &depletion(30), Some("retry-1"))
        .await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry, first);
    assert_eq!(app.battery(&user).await["level"], 40, "drained once");
    // Parallel retries with one key: still once.
    let body = recharge(10);
    let responses = futures::future::join_all(
        (0..10).map(|_| app.record_to("me", &user.access_token, &body, Some("retry-2"))),
    )
    .await;
    assert!(responses.iter().all(|r| r.status() == StatusCode::CREATED));
    assert_eq!(app.battery(&user).await["level"], 50);
    // Another key is another interaction.
    app.record_to("me", &user.access_token, &depletion(30), Some("retry-3"))
        .await;
    assert_eq!(app.battery(&user).await["level"], 20);
}

#[tokio::test]
async fn an_idempotency_key_with_another_body_is_422_and_changes_nothing() {
    let app = spawn_app().await;
    let user = app.signup().await;
    app.record_to("me", &user.access_token, &depletion(30), Some("key-a"))
        .await;
    let response = app
        .record_to("me", &user.access_token, &depletion(31), Some("key-a"))
        .await;
    let body = json_of(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        body["detail"][0]["loc"],
        json!(["header", "Idempotency-Key"])
    );
    assert_eq!(app.battery(&user).await["level"], 40);
    let bad_key = app
        .record_to(
            "me",
            &user.access_token,
            &depletion(1),
            Some(&"k".repeat(300)),
        )
        .await;
    assert_eq!(bad_key.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn idempotency_keys_expire_after_24_hours() {
    let app = spawn_app().await;
    let user = app.signup().await;
    app.record_to("me", &user.access_token, &depletion(10), Some("daily"))
        .await;
    app.advance(24 * 3600 + 1);
    let again = app
        .record_to("me", &user.access_token, &depletion(10), Some("daily"))
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert!(!again.headers().contains_key("idempotent-replayed"));
    assert_eq!(app.battery(&user).await["level"], 50);
}

#[tokio::test]
async fn idempotency_keys_are_per_user() {
    let app = spawn_app().await;
    let alice = app.signup().await;
    let bob = app.signup().await;
    app.record_to("me", &alice.access_token, &depletion(10), Some("shared"))
        .await;
    let response = app
        .record_to("me", &bob.access_token, &depletion(10), Some("shared"))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!response.headers().contains_key("idempotent-replayed"));
    assert_eq!(app.battery(&bob).await["level"], 60);
}

#[tokio::test]
async fn history_pages_newest_first_with_a_stable_cursor() {
    let app = spawn_app().await;
    let user = app.signup().await;
    for i in 1..=7 {
        app.record(&user.access_token, &json!({"type": "set", "level": i}))
            .await;
    }
    let first = json_of(app.activity(&user, "?limit=3").await, StatusCode::OK).await;
    let levels = |page: &Value| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["level_after"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(levels(&first), vec![7, 6, 5]);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    // New records arrive between pages: the next page is unaffected.
    app.record(&user.access_token, &json!({"type": "set", "level": 99}))
        .await;
    let second = json_of(
        app.activity(&user, &format!("?limit=3&cursor={cursor}"))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(levels(&second), vec![4, 3, 2]);
    let third = json_of(
        app.activity(
            &user,
            &format!(
                "?limit=3&cursor={}",
                second["next_cursor"].as_str().unwrap()
            ),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(levels(&third), vec![1]);
    assert_eq!(third["next_cursor"], Value::Null);
}

#[tokio::test]
async fn history_defaults_to_50_items() {
    let app = spawn_app().await;
    let user = app.signup().await;
    for _ in 0..55 {
        app.record(&user.access_token, &recharge(1)).await;
    }
    let page = json_of(app.activity(&user, "").await, StatusCode::OK).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 50);
    assert!(page["next_cursor"].is_string());
    assert_eq!(page["summary"]["count"], 55);
}

#[tokio::test]
async fn history_filters_and_summary() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let hours_ago = |h: i64| {
        (chrono::Utc::now() - chrono::Duration::hours(h))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let records = [
        json!({"type": "depletion", "name": "Old party", "energy_impact": 30, "occurred_at": hours_ago(48)}), // 70 → 40
        json!({"type": "recharge", "name": "Walk", "energy_impact": 20, "occurred_at": hours_ago(30)}), // 40 → 60
        json!({"type": "depletion", "name": "Meeting", "energy_impact": 10, "occurred_at": hours_ago(5)}), // 60 → 50
        json!({"type": "recharge", "name": "Nap", "energy_impact": 80, "occurred_at": hours_ago(2)}), // 50 → 100
        json!({"type": "set", "level": 90, "occurred_at": hours_ago(1)}), // 100 → 90
    ];
    for body in &records {
        assert_eq!(
            app.record(&user.access_token, body).await.status(),
            StatusCode::CREATED
        );
    }
    let all = json_of(app.activity(&user, "").await, StatusCode::OK).await;
    assert_eq!(
        all["summary"],
        json!({"count": 5, "recharge_count": 2, "depletion_count": 2, "total_recharged": 70,
               "total_depleted": 50, "average_level": 68.0})
    );
    let recharges = json_of(app.activity(&user, "?type=recharge").await, StatusCode::OK).await;
    assert_eq!(recharges["items"].as_array().unwrap().len(), 2);
    assert!(recharges["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["type"] == "recharge"));
    assert_eq!(
        recharges["summary"],
        json!({"count": 2, "recharge_count": 2, "depletion_count": 0, "total_recharged": 70,
               "total_depleted": 0, "average_level": 80.0})
    );
    let from = hours_ago(24);
    let recent = json_of(
        app.activity(&user, &format!("?from={}", urlencode(&from)))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(recent["items"].as_array().unwrap().len(), 3);
    assert_eq!(recent["summary"]["count"], 3);
    assert_eq!(recent["summary"]["total_depleted"], 20);
    assert_eq!(recent["summary"]["total_recharged"], 50);
    let to = hours_ago(24);
    let old = json_of(
        app.activity(&user, &format!("?to={}&type=depletion", urlencode(&to)))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(old["items"].as_array().unwrap().len(), 1);
    assert_eq!(old["items"][0]["name"], "Old party");
    let none = json_of(app.activity(&user, "?type=sleep").await, StatusCode::OK).await;
    assert_eq!(none["summary"]["count"], 0);
    assert_eq!(none["summary"]["average_level"], Value::Null);
}

fn urlencode(value: &str) -> String {
    value.replace(':', "%3A").replace('+', "%2B")
}

#[tokio::test]
async fn bad_history_queries_are_422() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let cases = [
        ("?limit=0", "limit"),
        ("?limit=10000", "limit"),
        ("?limit=201", "limit"),
        ("?limit=ten", "limit"),
        ("?cursor=garbage", "cursor"),
        ("?cursor=djE6MA", "cursor"),
        ("?from=yesterday", "from"),
        ("?to=2026-13-45", "to"),
        ("?type=teleport", "type"),
        ("?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
    ];
    for (query, field) in cases {
        let body = json_of(
            app.activity(&user, query).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["query", field]),
            "{query}: {body}"
        );
    }
    assert_eq!(
        app.activity(&user, "?limit=200").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.activity(&user, "?limit=1").await.status(),
        StatusCode::OK
    );
}
