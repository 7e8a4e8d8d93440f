//! The SendGrid transport and the durable outbox, against a local mock of SendGrid's
//! v3 API: request shape, success, a 400 with an error body, 429 and 500 then success, a
//! timeout, and `introgy check`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app_with_configured_mail, unique_email, TestApp, PASSWORD};

/// What the mock answers to one request.
#[derive(Clone, Copy)]
pub enum Reply {
    Status(u16),
    /// Answer 202, but only after this long.
    Slow(Duration),
}

#[derive(Default)]
pub struct Mock {
    pub requests: Mutex<Vec<(HeaderMap, Value)>>,
    /// Recipient and status of every answer given.
    pub answers: Mutex<Vec<(String, u16)>>,
    /// Scripted replies; when empty, `fallback`.
    pub script: Mutex<VecDeque<Reply>>,
    pub fallback: Mutex<Option<u16>>,
}

impl Mock {
    pub fn received(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }
}

async fn mail_send(
    State(mock): State<Arc<Mock>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (AxumStatus, Json<Value>) {
    let recipient = body["personalizations"][0]["to"][0]["email"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    mock.requests.lock().unwrap().push((headers, body));
    let reply = mock.script.lock().unwrap().pop_front();
    let status = match reply {
        Some(Reply::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            202
        }
        Some(Reply::Status(status)) => status,
        None => mock.fallback.lock().unwrap().unwrap_or(202),
    };
    mock.answers.lock().unwrap().push((recipient, status));
    let body = if status == 400 {
        json!({"errors": [{"message": "The from address does not match a verified Sender Identity", "field": "from"}]})
    } else {
        json!({})
    };
    (AxumStatus::from_u16(status).unwrap(), Json(body))
}

async fn scopes(headers: HeaderMap) -> (AxumStatus, Json<Value>) {
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some("Bearer SG.good-key") => (AxumStatus::OK, Json(json!({"scopes": ["mail.send"]}))),
        _ => (
            AxumStatus::UNAUTHORIZED,
            Json(json!({"errors": [{"message": "authorization required"}]})),
        ),
    }
}

/// Starts the mock; returns it and its `mail/send` URL.
pub async fn start_mock() -> (Arc<Mock>, String) {
    let mock = Arc::new(Mock::default());
    let app = Router::new()
        .route("/v3/mail/send", post(mail_send))
        .route("/v3/scopes", get(scopes))
        .with_state(Arc::clone(&mock));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v3/mail/send", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (mock, url)
}

async fn app_with_sendgrid(url: &str) -> TestApp {
    spawn_app_with_configured_mail(&[
        "--email-transport",
        "sendgrid",
        "--sendgrid-api-key",
        "SG.good-key",
        "--sendgrid-api-url",
        url,
        "--mail-timeout-seconds",
        "1",
        "--from-email",
        "hello@introgy.ai",
        "--email-from-name",
        "Introgy",
    ])
    .await
}

/// Waits until the mock has seen `count` requests.
async fn wait_for_requests(mock: &Mock, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while mock.received() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} SendGrid requests, got {}",
            mock.received()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The outbox's counters from /health.
async fn outbox(app: &TestApp) -> (u64, u64) {
    let health = json_of(app.get("/health").await, reqwest::StatusCode::OK).await;
    (
        health["outbox_pending"].as_u64().unwrap(),
        health["outbox_dead"].as_u64().unwrap(),
    )
}

async fn wait_for_outbox(app: &TestApp, pending: u64, dead: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while outbox(app).await != (pending, dead) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox is {:?}, expected ({pending}, {dead})",
            outbox(app).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sendgrid_receives_a_well_formed_request() {
    let (mock, url) = start_mock().await;
    let app = app_with_sendgrid(&url).await;
    let email = unique_email();
    app.register(&email, PASSWORD).await;
    wait_for_requests(&mock, 1).await;
    wait_for_outbox(&app, 0, 0).await;
    let (headers, body) = mock.requests.lock().unwrap()[0].clone();
    assert_eq!(headers["authorization"], "Bearer SG.good-key");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(
        body["personalizations"][0]["to"][0]["email"],
        email.as_str()
    );
    assert_eq!(
        body["from"],
        json!({"email": "hello@introgy.ai", "name": "Introgy"})
    );
    assert!(body["subject"]
        .as_str()
        .unwrap()
        .contains("verification code"));
    assert_eq!(body["content"][0]["type"], "text/plain");
    assert_eq!(body["content"][1]["type"], "text/html");
    let text = body["content"][0]["value"].as_str().unwrap();
    let code = crate::helpers::extract_code(text);
    assert!(body["content"][1]["value"]
        .as_str()
        .unwrap()
        .contains(&code));
    assert!(body["headers"]["Message-ID"]
        .as_str()
        .unwrap()
        .ends_with("@introgy>"));
    // And the mailed code works.
    assert_eq!(
        app.verify_otp(&email, &code).await.status(),
        reqwest::StatusCode::OK
    );
}

#[tokio::test]
async fn sendgrid_gets_the_weekly_chart_as_an_inline_attachment_and_the_unsubscribe_headers() {
    let (mock, url) = start_mock().await;
    let app = app_with_sendgrid(&url).await;
    let summary = introgy::cli::mail::samples()
        .into_iter()
        .find(|k| k.name() == "weekly_summary")
        .expect("a sample weekly summary");
    let email = introgy::domain::Email::parse(&unique_email(), "email").unwrap();
    app.state.outbox.enqueue(&email, &summary).await.unwrap();
    wait_for_requests(&mock, 1).await;
    let (_, body) = mock.requests.lock().unwrap()[0].clone();
    let unsubscribe = body["headers"]["List-Unsubscribe"].as_str().unwrap();
    assert!(
        unsubscribe.starts_with('<') && unsubscribe.contains("/unsubscribe?token="),
        "{unsubscribe}"
    );
    assert_eq!(
        body["headers"]["List-Unsubscribe-Post"],
        "List-Unsubscribe=One-Click"
    );
    let attachment = &body["attachments"][0];
    assert_eq!(attachment["type"], "image/png");
    assert_eq!(attachment["disposition"], "inline");
    assert_eq!(attachment["content_id"], "week-chart@introgy");
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(attachment["content"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(body["content"][1]["value"]
        .as_str()
        .unwrap()
        .contains("cid:week-chart@introgy"));
}

#[tokio::test]
async fn a_400_is_permanent_the_mail_ends_dead_and_is_not_retried() {
    let (mock, url) = start_mock().await;
    mock.script.lock().unwrap().push_back(Reply::Status(400));
    let app = app_with_sendgrid(&url).await;
    app.register(&unique_email(), PASSWORD).await;
    wait_for_outbox(&app, 0, 1).await;
    app.advance(3600);
    tokio::time::sleep(Duration::from_millis(1500)).await; // one worker poll with the clock moved on
    assert_eq!(mock.received(), 1, "a permanent failure was retried");
}

async fn retried_until_sent(first: Reply) {
    let (mock, url) = start_mock().await;
    mock.script.lock().unwrap().push_back(first);
    let app = app_with_sendgrid(&url).await;
    let email = unique_email();
    app.register(&email, PASSWORD).await;
    wait_for_requests(&mock, 1).await;
    // The retry is scheduled with backoff; let that time pass on the service's clock.
    wait_for_outbox(&app, 1, 0).await;
    app.advance(60);
    wait_for_requests(&mock, 2).await;
    wait_for_outbox(&app, 0, 0).await;
    let bodies = mock.bodies();
    assert_eq!(
        bodies[0]["headers"]["Message-ID"], bodies[1]["headers"]["Message-ID"],
        "a retry keeps its Message-ID"
    );
    assert_eq!(
        bodies[1]["personalizations"][0]["to"][0]["email"],
        email.as_str()
    );
}

#[tokio::test]
async fn a_429_is_retried_and_then_delivered() {
    retried_until_sent(Reply::Status(429)).await;
}

#[tokio::test]
async fn a_500_is_retried_and_then_delivered() {
    retried_until_sent(Reply::Status(500)).await;
}

#[tokio::test]
async fn a_timeout_is_retried_and_then_delivered() {
    retried_until_sent(Reply::Slow(Duration::from_secs(3))).await;
}

#[tokio::test]
async fn a_mail_that_keeps_failing_ends_dead_after_the_last_try() {
    let (mock, url) = start_mock().await;
    let app = app_with_sendgrid(&url).await;
    let email = unique_email();
    app.register(&email, PASSWORD).await;
    wait_for_requests(&mock, 1).await;
    let code =
        crate::helpers::extract_code(mock.bodies()[0]["content"][0]["value"].as_str().unwrap());
    assert_eq!(
        app.verify_otp(&email, &code).await.status(),
        reqwest::StatusCode::OK
    );
    wait_for_outbox(&app, 0, 0).await;
    let before = mock.received();
    // A notice (no code, no expiry) to an address whose provider keeps failing.
    *mock.fallback.lock().unwrap() = Some(503);
    app.advance(61);
    app.register(&email, PASSWORD).await;
    let tries = introgy::email::outbox::MAX_ATTEMPTS as usize;
    for n in 1..=tries {
        wait_for_requests(&mock, before + n).await;
        app.advance(3600);
    }
    wait_for_outbox(&app, 0, 1).await;
    assert_eq!(
        mock.received(),
        before + tries,
        "tried more than MAX_ATTEMPTS times"
    );
}

#[tokio::test]
async fn an_expired_code_is_not_mailed_late() {
    let (mock, url) = start_mock().await;
    *mock.fallback.lock().unwrap() = Some(503);
    let app = app_with_sendgrid(&url).await;
    app.register(&unique_email(), PASSWORD).await;
    wait_for_requests(&mock, 1).await;
    *mock.fallback.lock().unwrap() = Some(202);
    app.advance(601);
    wait_for_outbox(&app, 0, 0).await;
    assert_eq!(
        mock.received(),
        1,
        "the mail went out after its code had expired"
    );
}

#[test]
fn check_verifies_the_sendgrid_key_without_sending_mail() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mock, url) = runtime.block_on(start_mock());
    let dir = tempfile::tempdir().unwrap();
    let run = |key: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_introgy"))
            .args([
                "check",
                "--sendgrid-api-key",
                key,
                "--sendgrid-api-url",
                &url,
            ])
            .current_dir(dir.path())
            .env_clear()
            .output()
            .unwrap()
    };
    let good = run("SG.good-key");
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{stdout}");
    assert!(stdout.contains("key accepted"), "{stdout}");
    let bad = run("SG.revoked");
    assert!(!bad.status.success());
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert!(stdout.contains("refused the API key"), "{stdout}");
    assert!(!stdout.contains("SG.revoked"), "the key was printed");
    assert_eq!(mock.received(), 0, "check sent mail");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary, as a process that can be killed.
fn start_binary(
    database_url: &str,
    dir: &std::path::Path,
    sendgrid_url: &str,
    port: u16,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_introgy"))
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--database-url",
            database_url,
        ])
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--jwt-secret-key",
            crate::helpers::SECRET,
            "--bcrypt-cost",
            "4",
        ])
        .args([
            "--email-transport",
            "sendgrid",
            "--sendgrid-api-key",
            "SG.good-key",
        ])
        .args([
            "--sendgrid-api-url",
            sendgrid_url,
            "--mail-timeout-seconds",
            "1",
        ])
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start introgy")
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(format!("{base}/health")).send().await {
            if response.status() == reqwest::StatusCode::OK {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "introgy did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn queued_mail_survives_a_kill_during_a_provider_outage_and_arrives_once() {
    let (mock, url) = start_mock().await;
    *mock.fallback.lock().unwrap() = Some(503);
    let dir = tempfile::tempdir().unwrap();
    let database_url = match std::env::var("INTROGY_TEST_MONGO_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(mongo) => format!(
            "{}/{}",
            mongo.trim_end_matches('/'),
            crate::helpers::mongo_db_name_for(dir.path())
        ),
        None => format!("sqlite:{}", dir.path().join("introgy.db").display()),
    };
    let client = reqwest::Client::new();

    let port = free_port();
    let mut first = start_binary(&database_url, dir.path(), &url, port);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&client, &base).await;
    let people: Vec<String> = (0..3).map(|_| unique_email()).collect();
    for email in &people {
        let response = client
            .post(format!("{base}/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    }
    // Every mail has been tried and refused by the provider at least once...
    wait_for_requests(&mock, 3).await;
    // ...and then the process dies without a chance to clean up.
    first.kill().unwrap();
    first.wait().unwrap();

    *mock.fallback.lock().unwrap() = Some(202);
    let port = free_port();
    let mut second = start_binary(&database_url, dir.path(), &url, port);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&client, &base).await;
    let delivered = |mock: &Mock| {
        let answers = mock.answers.lock().unwrap();
        people
            .iter()
            .map(|p| {
                answers
                    .iter()
                    .filter(|(to, status)| to == p && *status == 202)
                    .count()
            })
            .collect::<Vec<_>>()
    };
    // A mail claimed at the moment of the kill waits out its lease (60 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(100);
    while delivered(&mock).contains(&0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every mail arrived: {:?}",
            delivered(&mock)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once the outbox is empty, each person has exactly one delivered mail.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let health: Value = client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if health["outbox_pending"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox did not drain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(delivered(&mock), vec![1, 1, 1]);
    second.kill().unwrap();
    second.wait().unwrap();
}
