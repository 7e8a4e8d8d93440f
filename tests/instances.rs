//! Several `introgy` instances on one MongoDB database behave as one service (issue 12):
//! each instance is the real binary in its own process (so one can be `kill -9`ed, and
//! each has its own metrics), all mailing through one SendGrid mock. Also the measured
//! round trips per request of one instance. Needs INTROGY_TEST_MONGO_URL (a running
//! MongoDB-compatible server); `scripts/test` provides it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use mongodb::bson::doc;
use reqwest::StatusCode;
use serde_json::{json, Value};

const SECRET: &str = "test-signing-secret-0123456789abcdef0123456789abcdef0123456789abcdef";
const PASSWORD: &str = "correct horse battery";

fn mongo_url() -> String {
    std::env::var("INTROGY_TEST_MONGO_URL").expect(
        "the multi-instance tests need INTROGY_TEST_MONGO_URL; run scripts/test, which starts a server",
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn unique_email() -> String {
    format!("user-{}@example.com", introgy::auth::random_hex(6))
}

/// The SendGrid mock every instance mails through: the bodies it was sent.
#[derive(Default)]
struct MailSink(Mutex<Vec<Value>>);

impl MailSink {
    /// Texts of the mails to `to`, in arrival order.
    fn texts_to(&self, to: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["personalizations"][0]["to"][0]["email"] == to)
            .map(|b| {
                b["content"][0]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// Waits (up to 20 s) for a mail to `to` and returns its six-digit code.
    async fn code_for(&self, to: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(text) = self.texts_to(to).first() {
                return text
                    .split(|c: char| !c.is_ascii_digit())
                    .find(|w| w.len() == 6)
                    .expect("a six-digit code in the mail")
                    .to_owned();
            }
            assert!(tokio::time::Instant::now() < deadline, "no mail to {to}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn start_sink() -> (Arc<MailSink>, String) {
    async fn send(State(sink): State<Arc<MailSink>>, Json(body): Json<Value>) -> StatusCode {
        sink.0.lock().unwrap().push(body);
        StatusCode::ACCEPTED
    }
    let sink = Arc::new(MailSink::default());
    let app = Router::new()
        .route("/v3/mail/send", post(send))
        .with_state(Arc::clone(&sink));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v3/mail/send", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (sink, url)
}

/// One `introgy serve` process; killed (SIGKILL) when dropped.
struct Instance {
    child: Child,
    base: String,
    metrics: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deployment: `n` instances on one database, one mail sink, one HTTP client that
/// presents itself as any client address (the instances trust it as their proxy).
struct Deployment {
    instances: Vec<Instance>,
    client: reqwest::Client,
    sink: Arc<MailSink>,
    db: mongodb::Database,
    _dir: tempfile::TempDir,
}

impl Deployment {
    async fn start(n: usize) -> Self {
        let (sink, sink_url) = start_sink().await;
        let dir = tempfile::tempdir().unwrap();
        let db_name = format!("introgy_test_instances_{}", introgy::auth::random_hex(6));
        let database_url = format!("{}/{db_name}", mongo_url().trim_end_matches('/'));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut instances = Vec::new();
        for i in 0..n {
            let data = dir.path().join(format!("instance-{i}"));
            std::fs::create_dir_all(&data).unwrap();
            let (port, metrics_port) = (free_port(), free_port());
            let child = Command::new(env!("CARGO_BIN_EXE_introgy"))
                .args(["serve", "--port", &port.to_string()])
                .args(["--database-url", &database_url])
                .arg("--data-dir")
                .arg(&data)
                .args(["--jwt-secret-key", SECRET, "--bcrypt-cost", "4"])
                .args(["--trusted-proxies", "127.0.0.1/32"])
                .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
                .args(["--email-transport", "sendgrid"])
                .args(["--sendgrid-api-key", "SG.test-key"])
                .args(["--sendgrid-api-url", &sink_url])
                .current_dir(&data)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start introgy");
            instances.push(Instance {
                child,
                base: format!("http://127.0.0.1:{port}"),
                metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            });
        }
        for instance in &instances {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !client
                .get(format!("{}/health", instance.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "introgy did not start"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let db = mongodb::Client::with_uri_str(mongo_url())
            .await
            .unwrap()
            .database(&db_name);
        Self {
            instances,
            client,
            sink,
            db,
            _dir: dir,
        }
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("{}{path}", self.instances[i % self.instances.len()].base)
    }

    /// POSTs `body` to instance `i` (modulo the count) as client `ip`.
    async fn post(&self, i: usize, ip: &str, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(i, path))
            .header("x-forwarded-for", ip)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    async fn get(&self, i: usize, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(i, path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// Registers on one instance and verifies on the next: the access and refresh tokens.
    async fn signup(&self, i: usize, email: &str) -> (String, String) {
        let ip = "10.0.0.1";
        let body = json!({"email": email, "password": PASSWORD});
        let response = self.post(i, ip, "/auth/register", &body).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let code = self.sink.code_for(email).await;
        let body = json!({"email": email, "code": code});
        let response = self.post(i + 1, ip, "/auth/verify-otp", &body).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        (
            body["access_token"].as_str().unwrap().to_owned(),
            body["refresh_token"].as_str().unwrap().to_owned(),
        )
    }

    /// `introgy_store_round_trips_per_request` of instance `i`, by route.
    async fn round_trips(&self, i: usize) -> HashMap<String, f64> {
        let text = self
            .client
            .get(&self.instances[i].metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("introgy_store_round_trips_per_request{route=\"")?;
                let (route, value) = rest.split_once("\"}")?;
                Some((route.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }
}

#[tokio::test]
async fn an_authenticated_read_is_one_round_trip_and_a_record_two() {
    let app = Deployment::start(1).await;
    let (access, _) = app.signup(0, &unique_email()).await;
    for path in ["/users/me", "/auth/verify-token", "/social-battery/me"] {
        for _ in 0..3 {
            assert_eq!(app.get(0, path, &access).await.status(), StatusCode::OK);
        }
    }
    for key in ["a", "b", "c"] {
        let response = app
            .client
            .post(app.url(0, "/social-battery/me/record"))
            .bearer_auth(&access)
            .header("Idempotency-Key", format!("key-{key}"))
            .json(&json!({"type": "depletion", "name": "Team meeting", "energy_impact": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let insights = app
        .get(0, "/social-battery/me/insights?period=month", &access)
        .await;
    assert_eq!(insights.status(), StatusCode::OK);
    let trips = app.round_trips(0).await;
    println!("MongoDB round trips per request: {trips:?}");
    // The authenticated read, then the period's buckets and the last bucket before it.
    let insights = trips["/social-battery/{user_id}/insights"];
    assert!(insights <= 3.0, "insights took {insights} round trips");
    for route in [
        "/users/me",
        "/auth/verify-token",
        "/social-battery/{user_id}",
    ] {
        assert_eq!(trips.get(route), Some(&1.0), "{route}: {trips:?}");
    }
    let record = trips["/social-battery/{user_id}/record"];
    assert!(record <= 2.0, "a record took {record} round trips");
}

#[tokio::test]
async fn three_instances_share_budgets_codes_refresh_tokens_and_the_outbox() {
    let app = Deployment::start(3).await;

    // Every queued mail is sent exactly once though three outbox workers poll it.
    let people: Vec<String> = (0..9).map(|_| unique_email()).collect();
    for (i, email) in people.iter().enumerate() {
        let body = json!({"email": email, "password": PASSWORD});
        let response = app.post(i, "10.0.0.2", "/auth/register", &body).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let outbox = app.db.collection::<mongodb::bson::Document>("mail_outbox");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while outbox
        .count_documents(doc! { "status": "pending" })
        .await
        .unwrap()
        > 0
        || people.iter().any(|p| app.sink.texts_to(p).is_empty())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox did not drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for email in &people {
        assert_eq!(app.sink.texts_to(email).len(), 1, "mails to {email}");
    }

    // Five wrong code guesses in all, spread over the instances, kill the code.
    let email = &people[0];
    let code = app.sink.code_for(email).await;
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    for i in 0..5 {
        let body = json!({"email": email, "code": wrong});
        let response = app.post(i, "10.0.0.3", "/auth/verify-otp", &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "guess {i}");
    }
    let body = json!({"email": email, "code": code});
    let response = app.post(5, "10.0.0.3", "/auth/verify-otp", &body).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "the right code");

    // The failed-login budget of an account (10 per 15 minutes) is global.
    let email = unique_email();
    app.signup(1, &email).await;
    for i in 0..10 {
        let body = json!({"email": email, "password": "not the password"});
        let response = app.post(i, "10.0.0.4", "/auth/login", &body).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    for i in 0..3 {
        let body = json!({"email": email, "password": PASSWORD});
        let response = app.post(i, "10.0.0.4", "/auth/login", &body).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "on {i}");
    }

    // A refresh token rotated on one instance and reused on another revokes the session
    // (reuse after the 10 s grace window: the rotation is moved back in the database,
    // as the in-process suite moves its clock).
    let (access, refresh) = app.signup(2, &unique_email()).await;
    let body = json!({"refresh_token": refresh});
    let rotated = app.post(0, "10.0.0.5", "/auth/refresh-token", &body).await;
    assert_eq!(rotated.status(), StatusCode::OK);
    let rotated: Value = rotated.json().await.unwrap();
    let eleven_seconds_ago =
        mongodb::bson::DateTime::from_millis(chrono::Utc::now().timestamp_millis() - 11_000);
    let moved = app
        .db
        .collection::<mongodb::bson::Document>("refresh_tokens")
        .update_one(
            doc! { "_id": introgy::auth::sha256_hex(&refresh) },
            doc! { "$set": { "rotated_at": eleven_seconds_ago } },
        )
        .await
        .unwrap();
    assert_eq!(moved.matched_count, 1);
    let reused = app.post(1, "10.0.0.5", "/auth/refresh-token", &body).await;
    assert_eq!(reused.status(), StatusCode::UNAUTHORIZED);
    let reused: Value = reused.json().await.unwrap();
    assert_eq!(reused["code"], "refresh_token_reused");
    let next = json!({"refresh_token": rotated["refresh_token"]});
    let response = app.post(2, "10.0.0.5", "/auth/refresh-token", &next).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    for i in 0..3 {
        let response = app.get(i, "/users/me", &access).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    // One client's auth budget (60 a minute) is global: spread over three instances it
    // admits 60 (plus the one a second it refills while the test runs), not 180.
    let started = tokio::time::Instant::now();
    let mut admitted = 0;
    let mut refused_by = [false; 3];
    for i in 0..75 {
        let body = json!({"email": unique_email(), "password": "not the password"});
        let status = app.post(i, "10.0.0.6", "/auth/login", &body).await.status();
        match status {
            StatusCode::UNAUTHORIZED => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => refused_by[i % 3] = true,
            other => panic!("request {i}: {other}"),
        }
    }
    let refilled = started.elapsed().as_secs() + 1;
    assert!(
        (60..=60 + refilled).contains(&admitted),
        "{admitted} of 75 admitted in {:?}",
        started.elapsed()
    );
    // Whichever instance it hits, a spent budget is refused.
    assert_eq!(refused_by, [true; 3]);
}

#[tokio::test]
async fn no_acknowledged_record_is_lost_when_an_instance_is_killed_under_load() {
    let mut app = Deployment::start(3).await;
    let (access, _) = app.signup(0, &unique_email()).await;
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    // Four writers, each cycling over the instances, until the kill has happened and
    // each has had a few more writes acknowledged.
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, access) = (app.client.clone(), access.clone());
        let bases: Vec<String> = app.instances.iter().map(|i| i.base.clone()).collect();
        let (acknowledged, killed) = (Arc::clone(&acknowledged), Arc::clone(&killed));
        writers.push(tokio::spawn(async move {
            let mut after_kill = 0;
            let mut n = w;
            while after_kill < 5 {
                let response = client
                    .post(format!("{}/social-battery/me/record", bases[n % 3]))
                    .bearer_auth(&access)
                    .json(&json!({"type": "recharge", "name": "Reading", "energy_impact": 1}))
                    .send()
                    .await;
                n += 1;
                // Refused connections and cut answers are not acknowledgements.
                let Ok(response) = response else { continue };
                if response.status() != StatusCode::CREATED {
                    continue;
                }
                let Ok(body) = response.json::<Value>().await else {
                    continue;
                };
                acknowledged
                    .lock()
                    .unwrap()
                    .push(body["id"].as_str().expect("an event id").to_owned());
                if killed.load(std::sync::atomic::Ordering::SeqCst) {
                    after_kill += 1;
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 20 {
        assert!(tokio::time::Instant::now() < deadline, "no write load");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.instances[2].child.kill().unwrap(); // SIGKILL
    app.instances[2].child.wait().unwrap();
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(60), writer)
            .await
            .expect("writers finished")
            .unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let mut stored = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/social-battery/me/activity?limit=100{cursor}");
        let page: Value = app.get(0, &path, &access).await.json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            stored.insert(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

#[test]
fn check_reports_whether_several_writes_run_as_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!(
        "{}/introgy_test_check_{}",
        mongo_url().trim_end_matches('/'),
        introgy::auth::random_hex(6)
    );
    // `check` looks at an existing database only: create it first.
    let init = Command::new(env!("CARGO_BIN_EXE_introgy"))
        .args(["init", "--database-url", &database_url])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let check = |transactions: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_introgy"))
            .args(["check", "--database-url", &database_url])
            .args(["--mongo-transactions", transactions])
            .current_dir(dir.path())
            .env_clear()
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    // SecantusDB says it is a replica set in `hello`.
    let auto = check("auto");
    assert!(
        auto.contains("several writes: transactions (replica set "),
        "{auto}"
    );
    let off = check("off");
    assert!(
        off.contains("several writes: ordered writes (MONGO_TRANSACTIONS=off)"),
        "{off}"
    );
}
