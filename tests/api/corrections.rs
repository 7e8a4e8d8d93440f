//! Correcting the history: `PATCH`/`DELETE /social-battery/{me}/activity/{id}` (issue
//! 14, item 1). Later records, the level and the summary follow the correction.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, TestApp, TestUser};

impl TestApp {
    pub async fn patch_record(
        &self,
        user: &TestUser,
        id: &str,
        body: &Value,
        key: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .patch(self.url(&format!("/social-battery/me/activity/{id}")))
            .bearer_auth(&user.access_token)
            .json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    pub async fn delete_record(
        &self,
        user: &TestUser,
        id: &str,
        key: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .delete(self.url(&format!("/social-battery/me/activity/{id}")))
            .bearer_auth(&user.access_token);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    /// Records `body` and returns the record's id.
    async fn recorded(&self, user: &TestUser, body: Value) -> String {
        let record = json_of(
            self.record(&user.access_token, &body).await,
            StatusCode::CREATED,
        )
        .await;
        record["id"].as_str().unwrap().to_owned()
    }

    /// The whole history, oldest accepted first, as `(id, level_before, level_after,
    /// energy_delta)`; and the summary.
    async fn timeline(&self, user: &TestUser) -> (Vec<(String, i64, i64, i64)>, Value) {
        let page = json_of(self.activity(user, "?limit=200").await, StatusCode::OK).await;
        let mut items: Vec<Value> = page["items"].as_array().unwrap().clone();
        items.reverse();
        let rows = items
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_owned(),
                    r["level_before"].as_i64().unwrap(),
                    r["level_after"].as_i64().unwrap(),
                    r["energy_delta"].as_i64().unwrap(),
                )
            })
            .collect();
        (rows, page["summary"].clone())
    }
}

fn depletion(name: &str, impact: i64) -> Value {
    json!({"type": "depletion", "name": name, "energy_impact": impact})
}

fn recharge(name: &str, impact: i64) -> Value {
    json!({"type": "recharge", "name": name, "energy_impact": impact})
}

/// Three records an hour apart (so the timeline is acceptance order): 70 → 40 → 60 → 10.
async fn three_records(app: &TestApp, user: &TestUser) -> Vec<String> {
    let mut ids = Vec::new();
    for (hours_ago, body) in [
        (3, depletion("Party", 30)),
        (2, recharge("Walk", 20)),
        (1, depletion("Meeting", 50)),
    ] {
        let mut body = body;
        let at = chrono::Utc::now() - chrono::Duration::hours(hours_ago);
        body["occurred_at"] = json!(at.to_rfc3339());
        ids.push(app.recorded(user, body).await);
    }
    ids
}

#[tokio::test]
async fn patching_a_record_replays_every_later_one_and_the_level_follows() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let ids = three_records(&app, &user).await;

    // The party really cost 80: 70 → 0 (clamped), then +20 → 20, then −50 → 0.
    let corrected = json_of(
        app.patch_record(&user, &ids[0], &json!({"energy_impact": 80}), None)
            .await,
        StatusCode::OK,
    )
    .await;

    assert_eq!(corrected["id"], ids[0].as_str());
    assert_eq!(corrected["name"], "Party", "fields not given are kept");
    assert_eq!(corrected["energy_impact"], 80);
    assert_eq!(
        (
            &corrected["level_before"],
            &corrected["level_after"],
            &corrected["energy_delta"]
        ),
        (&json!(70), &json!(0), &json!(-70))
    );
    let (rows, summary) = app.timeline(&user).await;
    let levels: Vec<(i64, i64, i64)> = rows.iter().map(|r| (r.1, r.2, r.3)).collect();
    assert_eq!(levels, vec![(70, 0, -70), (0, 20, 20), (20, 0, -20)]);
    assert_eq!(app.battery(&user).await["level"], 0);
    assert_eq!(summary["total_depleted"], 90);
    assert_eq!(summary["total_recharged"], 20);
    assert_eq!(summary["count"], 3);
}

#[tokio::test]
async fn deleting_a_record_replays_every_later_one_without_it() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let ids = three_records(&app, &user).await;

    let response = app.delete_record(&user, &ids[0], None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // 70 → 90 (+20) → 40 (−50).
    let (rows, summary) = app.timeline(&user).await;
    let after: Vec<(&str, i64, i64, i64)> =
        rows.iter().map(|r| (r.0.as_str(), r.1, r.2, r.3)).collect();
    assert_eq!(
        after,
        vec![
            (ids[1].as_str(), 70, 90, 20),
            (ids[2].as_str(), 90, 40, -50)
        ]
    );
    assert_eq!(app.battery(&user).await["level"], 40);
    assert_eq!(summary["count"], 2);
    assert_eq!(summary["depletion_count"], 1);
    // Gone: a second delete and a patch find nothing.
    let again = app.delete_record(&user, &ids[0], None).await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let patch = app
        .patch_record(&user, &ids[0], &json!({"name": "x"}), None)
        .await;
    assert_eq!(patch.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_patch_is_validated_as_a_whole_record_of_its_resulting_type() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let id = app.recorded(&user, depletion("Party", 30)).await;
    let cases = [
        (json!({"energy_impact": 0}), "energy_impact", "out of range"),
        (json!({"name": null}), "name", "a depletion needs a name"),
        (
            json!({"type": "sleep"}),
            "sleep_quality",
            "sleep needs its quality",
        ),
        (
            json!({"type": "set", "sleep_quality": "good", "level": 5}),
            "sleep_quality",
            "a set takes no sleep quality",
        ),
        (json!({"seq": 4}), "seq", "not a record field"),
        (
            json!({"occurred_at": "2999-01-01T00:00:00Z"}),
            "occurred_at",
            "in the future",
        ),
    ];
    for (patch, field, why) in cases {
        let body = json_of(
            app.patch_record(&user, &id, &patch, None).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        let fields: Vec<String> = body["detail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["loc"].as_array().unwrap().last().unwrap().to_string())
            .collect();
        assert!(
            fields.iter().any(|f| f.contains(field)),
            "{why}: {patch} gave {body}"
        );
    }
    let not_an_object = app.patch_record(&user, &id, &json!([1]), None).await;
    assert_eq!(not_an_object.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Nothing changed.
    assert_eq!(app.battery(&user).await["level"], 40);

    // A change of type drops the old type's own fields; aliases work as in `record`.
    let slept = json_of(
        app.patch_record(
            &user,
            &id,
            &json!({"type": "sleep", "sleepQuality": "good"}),
            None,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(slept["type"], "sleep");
    assert_eq!(slept["energy_impact"], Value::Null);
    assert_eq!(slept["level_after"], 100);
    assert_eq!(app.battery(&user).await["level"], 100);
}

#[tokio::test]
async fn another_users_record_and_a_malformed_id_are_404() {
    let app = spawn_app().await;
    let (owner, other) = (app.signup().await, app.signup().await);
    let id = app.recorded(&owner, depletion("Party", 30)).await;
    for target in [id.as_str(), "not-an-id", "000000000000000000000000"] {
        let patch = app
            .patch_record(&other, target, &json!({"energy_impact": 1}), None)
            .await;
        assert_eq!(patch.status(), StatusCode::NOT_FOUND, "{target}");
        let delete = app.delete_record(&other, target, None).await;
        assert_eq!(delete.status(), StatusCode::NOT_FOUND, "{target}");
    }
    // Another user's battery path is 404 too.
    let response = app
        .client
        .delete(app.url(&format!("/social-battery/{}/activity/{id}", owner.id)))
        .bearer_auth(&other.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.battery(&owner).await["level"], 40, "untouched");
}

#[tokio::test]
async fn an_idempotency_key_makes_corrections_safe_to_retry() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let ids = three_records(&app, &user).await;

    let first = app
        .patch_record(&user, &ids[1], &json!({"energy_impact": 5}), Some("fix-1"))
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let first = first.json::<Value>().await.unwrap();
    let retry = app
        .patch_record(&user, &ids[1], &json!({"energy_impact": 5}), Some("fix-1"))
        .await;
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), first);
    let reused = app
        .patch_record(&user, &ids[1], &json!({"energy_impact": 6}), Some("fix-1"))
        .await;
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // 70 → 40 → 45 → 0.
    assert_eq!(app.battery(&user).await["level"], 0);

    for attempt in 0..2 {
        let delete = app.delete_record(&user, &ids[0], Some("del-1")).await;
        assert_eq!(delete.status(), StatusCode::NO_CONTENT, "attempt {attempt}");
    }
    // A key of a delete is not a key of a patch.
    let reused = app
        .patch_record(&user, &ids[2], &json!({"energy_impact": 6}), Some("del-1"))
        .await;
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // 70 → 75 → 25.
    assert_eq!(app.battery(&user).await["level"], 25);
}

#[tokio::test]
async fn parallel_records_and_corrections_over_http_lose_no_update() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            app.recorded(&user, depletion(&format!("early {i}"), 5))
                .await,
        );
    }
    let records = (0..12).map(|i| {
        let body = if i % 2 == 0 {
            recharge("Nap", 7)
        } else {
            depletion("Call", 9)
        };
        let app = &app;
        let user = &user;
        async move { app.record(&user.access_token, &body).await.status() }
    });
    let corrections = ids.iter().enumerate().map(|(i, id)| {
        let (app, user) = (&app, &user);
        async move {
            if i % 2 == 0 {
                app.delete_record(user, id, None).await.status()
            } else {
                app.patch_record(user, id, &json!({"energy_impact": 40}), None)
                    .await
                    .status()
            }
        }
    });
    let (recorded, corrected) = tokio::join!(
        futures::future::join_all(records),
        futures::future::join_all(corrections)
    );
    assert!(
        recorded.iter().all(|s| *s == StatusCode::CREATED),
        "{recorded:?}"
    );
    assert!(
        corrected
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::NO_CONTENT),
        "{corrected:?}"
    );

    let (rows, summary) = app.timeline(&user).await;
    assert_eq!(rows.len(), 6 + 12 - 3, "no record lost");
    assert_eq!(summary["count"], 15);
    // Recorded an hour apart or not, the history is applied in acceptance order, which
    // the activity page shows for records made now: ties aside, each one starts where
    // the one accepted before it ended.
    let page = json_of(app.activity(&user, "?limit=200").await, StatusCode::OK).await;
    let mut items = page["items"].as_array().unwrap().clone();
    items.sort_by_key(|r| r["recorded_at"].as_str().unwrap().to_owned());
    let total: i64 = items
        .iter()
        .map(|r| r["energy_delta"].as_i64().unwrap())
        .sum();
    assert_eq!(
        app.battery(&user).await["level"].as_i64().unwrap(),
        70 + total,
        "the level is the sum of the replayed deltas from 70"
    );
}
