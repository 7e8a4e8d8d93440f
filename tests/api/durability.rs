//! The store keeps its word: idempotent retries whatever the JSON looks like, a timeline
//! ordered by when things happened, `recorded_at` in acceptance order, and (SQLite) a
//! deleted or replaced database file noticed, a private database file, a complete
//! `.db` after a clean stop, and backups taken while writes run.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app_with, TestApp, TestUser};
use crate::outage::{answers_within, whole_history};

/// The app on a SQLite file in its data directory, whatever store the suite runs on.
pub async fn spawn_sqlite_app(extra: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("introgy.db").display());
    let mut args = vec!["--database-url", url.as_str()];
    args.extend_from_slice(extra);
    crate::helpers::spawn_app_in(dir, &args, true).await
}

/// POSTs a raw JSON text as a record, with an `Idempotency-Key`.
async fn record_raw(app: &TestApp, user: &TestUser, key: &str, body: &str) -> reqwest::Response {
    app.client
        .post(app.url("/social-battery/me/record"))
        .bearer_auth(&user.access_token)
        .header("Idempotency-Key", key)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn an_idempotency_key_replays_the_same_request_whatever_its_key_order_spacing_or_spelling() {
    let app = spawn_app_with(&[]).await;
    let user = app.signup().await;
    let first = json_of(
        record_raw(
            &app,
            &user,
            "party-1",
            r#"{"type":"depletion","name":"Party","energy_impact":30,"occurred_at":"2026-01-31T20:00:00Z"}"#,
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    // Keys reordered, whitespace and newlines, a camelCase alias, 30.0 for 30, the same
    // instant in another offset, the default duration written out.
    let same = [
        r#"{"occurred_at":"2026-01-31T20:00:00Z","energy_impact":30,"name":"Party","type":"depletion"}"#,
        "{\n  \"type\" : \"depletion\" ,\n  \"energyImpact\" : 30.0,\n  \"name\": \"Party\",\n  \"occurredAt\": \"2026-01-31T21:00:00+01:00\"\n}",
        r#"{"type":"depletion","name":"Party","energy_impact":30,"occurred_at":"2026-01-31T20:00:00Z","duration_minutes":60}"#,
    ];
    for body in same {
        let response = record_raw(&app, &user, "party-1", body).await;
        assert_eq!(
            response
                .headers()
                .get("idempotent-replayed")
                .map(|v| v.to_str().unwrap().to_owned()),
            Some("true".to_owned()),
            "{body}"
        );
        let replay = json_of(response, StatusCode::CREATED).await;
        assert_eq!(replay["id"], first["id"], "{body}");
    }
    // Another request under the same key is still refused.
    let other = json_of(
        record_raw(
            &app,
            &user,
            "party-1",
            r#"{"type":"depletion","name":"Party","energy_impact":31,"occurred_at":"2026-01-31T20:00:00Z"}"#,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        other["detail"][0]["type"],
        "value_error.idempotency_key_reused"
    );
    assert_eq!(whole_history(&app, &user).await.len(), 1);
}

fn at(rfc3339: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[tokio::test]
async fn history_is_ordered_by_when_things_happened_and_pages_through_ties() {
    let app = spawn_app_with(&[]).await;
    let user = app.signup().await;
    let hours_ago = |h: i64| {
        (chrono::Utc::now() - chrono::Duration::hours(h))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let (evening, morning) = (hours_ago(20), hours_ago(2));
    // Yesterday evening's party is logged after this morning's walk.
    for (name, when) in [
        ("walk", &morning),
        ("party", &evening),
        ("dinner", &evening),
        ("nap", &morning),
    ] {
        let body =
            json!({"type": "recharge", "name": name, "energy_impact": 5, "occurred_at": when});
        assert_eq!(
            app.record(&user.access_token, &body).await.status(),
            StatusCode::CREATED
        );
    }
    let mut names = Vec::new();
    let mut query = "?limit=1".to_owned();
    let mut pages = 0;
    loop {
        let page = json_of(app.activity(&user, &query).await, StatusCode::OK).await;
        pages += 1;
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=1&cursor={cursor}"),
            None => break,
        }
    }
    // Newest occurred_at first; the same instant newest accepted first.
    assert_eq!(names, ["nap", "walk", "dinner", "party"]);
    assert_eq!(pages, 4);
    // Levels stay those at acceptance: walk 70→75, party 75→80, dinner 80→85, nap 85→90.
    let items = whole_history(&app, &user).await;
    let levels: Vec<(i64, i64)> = items
        .iter()
        .map(|i| {
            (
                i["level_before"].as_i64().unwrap(),
                i["level_after"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(levels, [(85, 90), (70, 75), (80, 85), (75, 80)]);
    // A cursor of the old acceptance-order pages is refused with its own message.
    let old = base64_url("v1:3");
    let body = json_of(
        app.activity(&user, &format!("?cursor={old}")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(
        body["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("first page"),
        "{body}"
    );
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn parallel_records_are_accepted_in_recorded_at_order() {
    let app = Arc::new(spawn_app_with(&[]).await);
    let user = app.signup().await;
    // One instant for all, so the timeline shows them in acceptance order.
    let when = (chrono::Utc::now() - chrono::Duration::minutes(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let requests: Vec<_> = (0..40)
        .map(|i| {
            let (app, token) = (Arc::clone(&app), user.access_token.clone());
            let body = json!({"type": if i % 2 == 0 { "depletion" } else { "recharge" },
                              "name": format!("r{i}"), "energy_impact": 1 + i % 7, "occurred_at": when});
            tokio::spawn(async move { app.record(&token, &body).await.status() })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::CREATED);
    }
    let items = whole_history(&app, &user).await;
    assert_eq!(items.len(), 40);
    // Newest accepted first: each item starts where the next (older) one ended, and
    // its recorded_at is not earlier than the older one's.
    for pair in items.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        assert_eq!(
            newer["level_before"], older["level_after"],
            "{newer} / {older}"
        );
        let (newer_at, older_at) = (
            at(newer["recorded_at"].as_str().unwrap()),
            at(older["recorded_at"].as_str().unwrap()),
        );
        assert!(
            newer_at >= older_at,
            "{} was accepted after {} but stamped earlier ({newer_at} < {older_at})",
            newer["name"],
            older["name"]
        );
    }
}

/// The database file behind a running SQLite app.
fn db_of(app: &TestApp) -> std::path::PathBuf {
    app.db_path.clone()
}

#[tokio::test]
async fn a_deleted_sqlite_database_is_noticed_within_seconds_and_writes_are_refused() {
    let app = spawn_sqlite_app(&[]).await;
    let user = app.signup().await;
    std::fs::remove_file(db_of(&app)).unwrap();
    let noticed = answers_within(
        &app,
        "/health",
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        noticed < Duration::from_secs(3),
        "noticed after {noticed:?}"
    );
    let ready = json_of(
        app.get("/health/ready").await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(ready["store"], "unreachable");
    let record = json!({"type": "depletion", "name": "lost", "energy_impact": 5});
    let refused = json_of(
        app.record(&user.access_token, &record).await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(refused["code"], "service_unavailable");
    assert!(!db_of(&app).exists(), "a new database file was created");
}

#[tokio::test]
async fn a_replaced_sqlite_database_is_noticed_and_refused() {
    let app = spawn_sqlite_app(&[]).await;
    let user = app.signup().await;
    // Another file under the same name (a copy moved over it): same content, not the
    // file the service has open, so what it writes would not land there.
    let path = db_of(&app);
    let copy = path.with_file_name("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::rename(&copy, &path).unwrap();
    answers_within(
        &app,
        "/health",
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(5),
    )
    .await;
    let health = json_of(app.get("/health").await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(health["database"], "disconnected");
    assert_eq!(
        app.record(&user.access_token, &json!({"type": "set", "level": 10}))
            .await
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[cfg(unix)]
#[tokio::test]
async fn the_development_database_and_its_wal_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_sqlite_app(&[]).await;
    app.signup().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db_of(&app).into_os_string();
        name.push(suffix);
        let mode = std::fs::metadata(&name).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name:?} is {mode:o}");
    }
}

/// Writes records for `user` until `stop`, all at the instant `when` (so the timeline
/// lists them in acceptance order); returns the names acknowledged (201).
async fn keep_recording(
    app: Arc<TestApp>,
    token: String,
    prefix: &'static str,
    when: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<String> {
    let mut acknowledged = Vec::new();
    let mut n = 0;
    while !*stop.borrow() {
        let name = format!("{prefix} {n}");
        let kind = if n % 3 == 0 { "recharge" } else { "depletion" };
        n += 1;
        let body =
            json!({"type": kind, "name": name, "energy_impact": 1 + n % 5, "occurred_at": when});
        if app.record(&token, &body).await.status() == StatusCode::CREATED {
            acknowledged.push(name);
        }
    }
    acknowledged
}

#[tokio::test]
async fn a_backup_taken_while_writes_run_restores_into_a_working_service() {
    let app = Arc::new(spawn_sqlite_app(&[]).await);
    let user = app.signup().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let when = (chrono::Utc::now() - chrono::Duration::minutes(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let writers: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|prefix| {
            tokio::spawn(keep_recording(
                Arc::clone(&app),
                user.access_token.clone(),
                prefix,
                when.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    // Some history first, then the backup while the writers go on.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while whole_history(&app, &user).await.len() < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writers made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_backup = whole_history(&app, &user).await;
    let backup = app.dir.path().join("backups").join("introgy-backup.db");
    std::fs::create_dir_all(backup.parent().unwrap()).unwrap();
    let source = format!("sqlite:{}", db_of(&app).display());
    let target = backup.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_introgy"))
            .env_clear()
            .args(["backup", "--database-url", &source, "--to"])
            .arg(&target)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("battery events"), "{report}");
    stop.send_replace(true);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(
        whole_history(&app, &user).await.len() > before_backup.len(),
        "no write happened while the backup ran"
    );

    // Restore: the backup file becomes the database of a new service.
    let restored_dir = tempfile::tempdir().unwrap();
    let restored_db = restored_dir.path().join("introgy.db");
    std::fs::copy(&backup, &restored_db).unwrap();
    let url = format!("sqlite:{}", restored_db.display());
    let restored =
        crate::helpers::spawn_app_in(restored_dir, &["--database-url", &url], true).await;
    let restored_history = whole_history(&restored, &user).await;
    // Everything acknowledged before the backup started is there, once.
    for item in &before_backup {
        let id = &item["id"];
        assert_eq!(
            restored_history.iter().filter(|i| i["id"] == *id).count(),
            1,
            "{item}"
        );
    }
    // One consistent snapshot: no gap in the chain of levels (newest accepted first),
    // and the level is where the history ends.
    for pair in restored_history.windows(2) {
        assert_eq!(
            pair[0]["level_before"], pair[1]["level_after"],
            "{} / {}",
            pair[0], pair[1]
        );
    }
    let battery = json_of(
        restored
            .get_authed("/social-battery/me", &user.access_token)
            .await,
        StatusCode::OK,
    )
    .await;
    let newest: &Value = &restored_history[0];
    assert_eq!(battery["level"], newest["level_after"]);
    // And the restored service takes writes.
    assert_eq!(
        restored
            .record(&user.access_token, &json!({"type": "set", "level": 50}))
            .await
            .status(),
        StatusCode::CREATED
    );
}
