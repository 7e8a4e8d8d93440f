//! Probes and metrics as an operator sees them: `/health/live` never touches the store,
//! `/health` and `/health/ready` notice failing writes and a wedged mail worker, the build
//! is named, and `/metrics` is not public unless a token is set.

use std::sync::Arc;
use std::time::Duration;

use introgy::email::{MailTransport, OutgoingMail, SendError};
use introgy::startup::Application;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{json_of, spawn_app, spawn_app_with, TestApp};

#[tokio::test]
async fn health_names_the_build_and_the_probes_answer_when_all_is_well() {
    let app = spawn_app().await;
    for prefix in ["", "/api"] {
        let health = json_of(app.get(&format!("{prefix}/health")).await, StatusCode::OK).await;
        assert_eq!(health["status"], "ok");
        assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(health["commit"], introgy::COMMIT);
        assert!(health["reason"].is_null());
        let live = json_of(
            app.get(&format!("{prefix}/health/live")).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(live["status"], "ok");
        assert_eq!(live["commit"], introgy::COMMIT);
        let ready = json_of(
            app.get(&format!("{prefix}/health/ready")).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(ready["status"], "ready");
        assert_eq!(ready["reasons"], json!([]));
    }
    assert_ne!(introgy::COMMIT, "", "build.rs always names a commit");
}

/// Makes the app's store refuse writes while reads keep working, until the guard drops:
/// on SQLite another connection holds the write lock (a stalled writer); on MongoDB the
/// sessions collection gets a validator that rejects every document (so a login, which
/// writes a session, fails).
enum WriteBlock {
    Sqlite(rusqlite::Connection),
    Mongo(mongodb::Database),
}

impl WriteBlock {
    async fn start(app: &TestApp) -> Self {
        match &app.mongo {
            Some(db) => {
                db.run_command(mongodb::bson::doc! {
                    "collMod": "sessions",
                    "validator": { "$expr": false },
                })
                .await
                .expect("collMod");
                Self::Mongo(db.clone())
            }
            None => {
                let conn = rusqlite::Connection::open(&app.db_path).unwrap();
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                Self::Sqlite(conn)
            }
        }
    }

    async fn stop(self) {
        match self {
            Self::Mongo(db) => {
                db.run_command(mongodb::bson::doc! {
                    "collMod": "sessions",
                    "validator": {},
                })
                .await
                .expect("collMod");
            }
            Self::Sqlite(conn) => conn.execute_batch("ROLLBACK").unwrap(),
        }
    }
}

#[tokio::test]
async fn health_is_degraded_and_not_ready_while_writes_fail_and_recovers_after_a_good_write() {
    let app = spawn_app_with(&["--store-timeout-seconds", "1"]).await;
    let user = app.signup().await;

    let block = WriteBlock::start(&app).await;
    // A login writes a session.
    let refused = app.login(&user.email, &user.password).await;
    assert!(
        refused.status().is_server_error(),
        "a write went through the block: {}",
        refused.status()
    );
    // Reads still work, so the store "answers"; but the latest write failed.
    let health = json_of(app.get("/health").await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["database"], "connected");
    assert!(
        health["reason"]
            .as_str()
            .unwrap()
            .contains("writes are failing"),
        "{health}"
    );
    let ready = json_of(
        app.get("/health/ready").await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(ready["writes"], "failing");
    assert_eq!(ready["store"], "ok");
    json_of(app.get("/health/live").await, StatusCode::OK).await;
    // Reads keep answering meanwhile.
    json_of(
        app.get_authed("/users/me", &user.access_token).await,
        StatusCode::OK,
    )
    .await;

    block.stop().await;
    // The first good write clears it (on SQLite the stalled write may still be queued
    // behind the lock for a moment; the next one waits for it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while app.login(&user.email, &user.password).await.status() != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each operation clears its own failure with its next success: the mail worker's
    // claim, which may have failed last while the lock was held, succeeds on its next poll.
    while app.get("/health").await.status() != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/health did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = json_of(app.get("/health").await, StatusCode::OK).await;
    assert_eq!(health["status"], "ok");
    json_of(app.get("/health/ready").await, StatusCode::OK).await;
}

/// A transport whose sends never finish: the mail worker hangs in it.
#[derive(Default)]
struct HangingTransport {
    started: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl MailTransport for HangingTransport {
    fn name(&self) -> &'static str {
        "hanging"
    }
    async fn send(
        &self,
        _from: &lettre::message::Mailbox,
        _mail: &OutgoingMail,
    ) -> Result<(), SendError> {
        self.started
            .store(true, std::sync::atomic::Ordering::SeqCst);
        std::future::pending().await
    }
    async fn check(&self) -> anyhow::Result<String> {
        Ok("hangs".into())
    }
}

#[tokio::test]
async fn readiness_reports_a_wedged_mail_worker_but_health_stays_ok() {
    let base = spawn_app().await;
    let transport = Arc::new(HangingTransport::default());
    let mut config = base.state.config.as_ref().clone();
    config.port = 0;
    let app = Application::build_with(config, Arc::clone(&base.state.store), transport.clone())
        .await
        .unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    tokio::spawn(app.run_until(std::future::pending()));
    let client = reqwest::Client::new();

    let response = client
        .post(format!("{address}/auth/register"))
        .json(
            &json!({"email": crate::helpers::unique_email(), "password": crate::helpers::PASSWORD}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !transport.started.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = get_json(&client, &format!("{address}/health/ready"), StatusCode::OK).await;
    assert_eq!(ready["outbox"], "ok", "{ready}");

    state.clock.advance(
        chrono::Duration::from_std(introgy::email::outbox::STALL_AFTER + Duration::from_secs(1))
            .unwrap(),
    );
    let ready = get_json(
        &client,
        &format!("{address}/health/ready"),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(ready["outbox"], "stuck", "{ready}");
    assert!(ready["reasons"][0]
        .as_str()
        .unwrap()
        .contains("mail worker"));
    // Mail waits durably in the outbox: that alone does not make the service degraded.
    let health = get_json(&client, &format!("{address}/health"), StatusCode::OK).await;
    assert_eq!(health["status"], "ok");
}

async fn get_json(client: &reqwest::Client, url: &str, status: StatusCode) -> serde_json::Value {
    json_of(client.get(url).send().await.unwrap(), status).await
}

const TOKEN: &str = "metrics-token-0123456789abcdef0123456789";

#[tokio::test]
async fn metrics_are_not_served_on_the_main_port_without_a_token() {
    let app = spawn_app().await;
    let body = json_of(app.get("/metrics").await, StatusCode::NOT_FOUND).await;
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn metrics_on_the_main_port_need_the_bearer_token() {
    let app = spawn_app_with(&["--metrics-token", TOKEN]).await;
    let body = json_of(app.get("/metrics").await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["code"], "invalid_token");
    let wrong = app.get_authed("/metrics", &TOKEN.replace('0', "1")).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let response = app.get_authed("/metrics", TOKEN).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    assert!(text.contains("introgy_build_info{"), "{text}");
}

#[tokio::test]
async fn a_short_metrics_token_is_refused_at_start() {
    let args = ["introgy", "--metrics-token", "short"];
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        config: introgy::config::ConfigArgs,
    }
    let parsed = <Args as clap::Parser>::try_parse_from(args).unwrap();
    let err = introgy::config::Config::from_args(parsed.config).unwrap_err();
    assert!(err.0.contains("METRICS_TOKEN"), "{err}");
}
