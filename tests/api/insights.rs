//! `GET /social-battery/{me}/insights?period=week|month` (issue 14.2): per-day figures in
//! the profile's time zone, patterns, this period against the previous one.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, TestApp, TestUser};
use crate::users::put_me;

impl TestApp {
    async fn insights(&self, user: &TestUser, query: &str) -> reqwest::Response {
        self.get_authed(
            &format!("/social-battery/me/insights{query}"),
            &user.access_token,
        )
        .await
    }

    async fn record_at(&self, user: &TestUser, body: Value, at: DateTime<Utc>) {
        let mut body = body;
        body["occurred_at"] = json!(at.to_rfc3339());
        json_of(
            self.record(&user.access_token, &body).await,
            StatusCode::CREATED,
        )
        .await;
    }
}

fn drain(name: &str, impact: i64, channel: &str) -> Value {
    json!({"type": "depletion", "name": name, "energy_impact": impact, "interaction_type": channel})
}

/// The day of `date` in an insights answer.
fn day(insights: &Value, date: NaiveDate) -> &Value {
    insights["days"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["date"] == date.to_string())
        .unwrap_or_else(|| panic!("no day {date} in {insights}"))
}

fn at_noon(date: NaiveDate, minutes: i64) -> DateTime<Utc> {
    date.and_hms_opt(12, 0, 0).unwrap().and_utc() + Duration::minutes(minutes)
}

#[tokio::test]
async fn insights_give_each_local_day_and_compare_the_period_with_the_previous_one() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let today = app.state.clock.now().date_naive();
    let days_ago = |n: i64| today - Duration::days(n);
    app.record_at(&user, drain("call", 20, "call"), at_noon(days_ago(10), 0))
        .await; // 50
    app.record_at(&user, drain("video", 30, "video"), at_noon(days_ago(2), 0))
        .await; // 20
    app.record_at(
        &user,
        json!({"type": "sleep", "sleep_quality": "good"}),
        at_noon(days_ago(2), 5),
    )
    .await; // 70
    app.record_at(&user, drain("call", 10, "call"), at_noon(days_ago(1), 0))
        .await; // 60

    let week = json_of(app.insights(&user, "?period=week").await, StatusCode::OK).await;
    assert_eq!(week["period"], "week");
    assert_eq!(
        (week["timezone"].clone(), week["profile_timezone"].clone()),
        (json!("UTC"), Value::Null)
    );
    assert_eq!(week["from"], days_ago(6).to_string());
    assert_eq!(week["to"], today.to_string());
    let days = week["days"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    assert_eq!(days[0]["date"], days_ago(6).to_string());
    // Before this week's first record: no records, the level carried from the last one.
    let quiet = &days[0];
    assert_eq!(
        (
            quiet["count"].clone(),
            quiet["closing_level"].clone(),
            quiet["lowest_level"].clone()
        ),
        (json!(0), json!(50), Value::Null)
    );
    let busy = day(&week, days_ago(2));
    assert_eq!(busy["count"], 2);
    assert_eq!(
        (
            busy["lowest_level"].clone(),
            busy["highest_level"].clone(),
            busy["closing_level"].clone()
        ),
        (json!(20), json!(70), json!(70))
    );
    assert_eq!(
        (busy["drained"].clone(), busy["recharged"].clone()),
        (json!(30), json!(50))
    );
    assert_eq!(
        busy["counts"],
        json!({"depletion": 1, "recharge": 0, "sleep": 1, "set": 0})
    );
    assert_eq!(
        busy["by_interaction_type"],
        json!({"call": 0, "message": 0, "in-person": 0, "video": 1, "email": 0, "social": 0, "other": 0, "none": 1})
    );
    assert_eq!(day(&week, today)["closing_level"], 60);
    assert_eq!(
        week["most_draining"],
        json!([
            {"interaction_type": "video", "drained": 30, "count": 1},
            {"interaction_type": "call", "drained": 10, "count": 1},
        ])
    );
    assert_eq!(
        week["sleep"][0],
        json!({"quality": "good", "count": 1, "average_recharge": 50.0})
    );
    assert_eq!(
        week["sleep"][1],
        json!({"quality": "medium", "count": 0, "average_recharge": null})
    );
    assert_eq!(
        (
            week["current"]["count"].clone(),
            week["current"]["drained"].clone(),
            week["current"]["recharged"].clone()
        ),
        (json!(3), json!(40), json!(50))
    );
    assert_eq!(week["current"]["from"], days_ago(6).to_string());
    assert_eq!(week["previous"]["from"], days_ago(13).to_string());
    assert_eq!(
        (
            week["previous"]["count"].clone(),
            week["previous"]["drained"].clone()
        ),
        (json!(1), json!(20))
    );
    // Days before the first record have no closing level and are left out of the mean.
    assert_eq!(week["previous"]["average_closing_level"], 50.0);
    assert_eq!(week["change"]["count"], 2);
    assert_eq!(week["change"]["drained"], 20);

    // A month holds all four; the previous month none. Default and `/api` are the week.
    let month = json_of(app.insights(&user, "?period=month").await, StatusCode::OK).await;
    assert_eq!(month["days"].as_array().unwrap().len(), 30);
    assert_eq!(
        (
            month["current"]["count"].clone(),
            month["previous"]["count"].clone()
        ),
        (json!(4), json!(0))
    );
    assert_eq!(month["previous"]["average_closing_level"], Value::Null);
    assert_eq!(month["change"]["average_closing_level"], Value::Null);
    let default = json_of(
        app.get_authed("/api/social-battery/me/insights", &user.access_token)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(default, week);
    let by_id = json_of(
        app.get_authed(
            &format!("/social-battery/{}/insights?period=week", user.id),
            &user.access_token,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(by_id, week);
}

#[tokio::test]
async fn a_record_late_in_the_utc_day_lands_on_the_local_day_of_the_profiles_zone() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let utc_day = app.state.clock.now().date_naive() - Duration::days(2);
    let late = utc_day.and_hms_opt(23, 30, 0).unwrap().and_utc();
    app.record_at(&user, drain("party", 40, "in-person"), late)
        .await;

    for (zone, local_day, other_day) in [
        ("Europe/Berlin", utc_day + Duration::days(1), utc_day),
        ("America/New_York", utc_day, utc_day + Duration::days(1)),
    ] {
        assert_eq!(
            put_me(&app, &user.access_token, &json!({"timezone": zone}))
                .await
                .status(),
            StatusCode::OK
        );
        let tz: Tz = zone.parse().unwrap();
        assert_eq!(late.with_timezone(&tz).date_naive(), local_day);
        let week = json_of(app.insights(&user, "").await, StatusCode::OK).await;
        assert_eq!(week["timezone"], zone);
        assert_eq!(
            week["to"],
            app.state
                .clock
                .now()
                .with_timezone(&tz)
                .date_naive()
                .to_string()
        );
        let landed = day(&week, local_day);
        assert_eq!(
            (landed["count"].clone(), landed["drained"].clone()),
            (json!(1), json!(40)),
            "{zone}"
        );
        assert_eq!(landed["by_interaction_type"]["in-person"], 1);
        assert_eq!(day(&week, other_day)["count"], 0, "{zone}");
    }
}

#[tokio::test]
async fn a_dst_day_holds_its_23_hours() {
    let app = spawn_app().await;
    // Berlin moves from +01 to +02 at 01:00 UTC on 2030-03-31: that day is 23 hours.
    let now: DateTime<Utc> = "2030-04-01T10:00:00Z".parse().unwrap();
    app.advance((now - app.state.clock.now()).num_seconds());
    let user = app.signup().await;
    put_me(
        &app,
        &user.access_token,
        &json!({"timezone": "Europe/Berlin"}),
    )
    .await;
    for (at, impact) in [
        ("2030-03-30T22:55:00Z", 1), // 23:55 on the 30th
        ("2030-03-30T23:10:00Z", 2), // 00:10 on the 31st
        ("2030-03-31T21:50:00Z", 3), // 23:50 on the 31st (summer time)
        ("2030-03-31T22:05:00Z", 4), // 00:05 on April 1st
    ] {
        app.record_at(&user, drain("x", impact, "call"), at.parse().unwrap())
            .await;
    }
    let week = json_of(app.insights(&user, "?period=week").await, StatusCode::OK).await;
    let date = |d: &str| d.parse::<NaiveDate>().unwrap();
    assert_eq!(week["to"], "2030-04-01");
    for (d, count, drained) in [
        ("2030-03-30", 1, 1),
        ("2030-03-31", 2, 5),
        ("2030-04-01", 1, 4),
    ] {
        let figures = day(&week, date(d));
        assert_eq!(
            (figures["count"].clone(), figures["drained"].clone()),
            (json!(count), json!(drained)),
            "{d}"
        );
    }
}

#[tokio::test]
async fn insights_refuse_a_bad_period_another_users_battery_and_unknown_zones() {
    let app = spawn_app().await;
    let user = app.signup().await;
    let other = app.signup().await;

    for query in ["?period=year", "?period=", "?period=Week"] {
        let body = json_of(
            app.insights(&user, query).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["query", "period"]),
            "{query}"
        );
    }
    let theirs = app
        .get_authed(
            &format!("/social-battery/{}/insights", other.id),
            &user.access_token,
        )
        .await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.get("/social-battery/me/insights").await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Well-formed names that are not zones of the IANA database are refused.
    for zone in ["Mars/Olympus_Mons", "europe/berlin", "Europe/Berln"] {
        let body = json_of(
            put_me(&app, &user.access_token, &json!({"timezone": zone})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["body", "timezone"]),
            "{zone}"
        );
    }
    // A stored value from before that check: the days are counted in UTC, and said so.
    app.state
        .store
        .update_profile(
            &user.id,
            &introgy::store::ProfilePatch {
                timezone: Some(Some("Mars/Olympus_Mons".into())),
                ..Default::default()
            },
            app.state.clock.now(),
        )
        .await
        .unwrap()
        .unwrap();
    let week = json_of(app.insights(&user, "").await, StatusCode::OK).await;
    assert_eq!(week["timezone"], "UTC");
    assert_eq!(week["profile_timezone"], "Mars/Olympus_Mons");
}
