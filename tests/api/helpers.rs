//! `spawn_app()` starts the real application on port 0 with a fresh temporary SQLite
//! store and a memory mail transport the test can read; `TestApp` has one method per
//! endpoint.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use introgy::config::{Config, ConfigArgs};
use introgy::email::{MemoryTransport, OutgoingMail};
use introgy::startup::{AppState, Application};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

/// Serialises app start-up (see `spawn_app_in`).
pub static BUILD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const PASSWORD: &str = "correct horse battery";
pub const SECRET: &str = "test-signing-secret-0123456789abcdef0123456789abcdef0123456789abcdef";

#[derive(Parser)]
#[command(args_override_self = true)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub mail: Arc<MemoryTransport>,
    pub state: AppState,
    pub db_path: std::path::PathBuf,
    pub dir: tempfile::TempDir,
    /// The app's MongoDB database when the suite runs against MongoDB.
    pub mongo: Option<mongodb::Database>,
}

/// Starts the app with test defaults (bcrypt cost 4, a fixed signing secret).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the app with extra command-line settings, e.g. `&["--otp-ttl-seconds", "5"]`.
pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    spawn_app_in(dir, extra, true).await
}

/// Starts the app on a given data directory (to test restarts).
pub async fn spawn_app_in(dir: tempfile::TempDir, extra: &[&str], with_secret: bool) -> TestApp {
    spawn(dir, extra, with_secret, false).await
}

/// Starts the app with the mail transport its settings name (SMTP, SendGrid) instead of
/// the memory transport.
pub async fn spawn_app_with_configured_mail(extra: &[&str]) -> TestApp {
    spawn(tempfile::tempdir().expect("temp dir"), extra, true, true).await
}

async fn spawn(
    dir: tempfile::TempDir,
    extra: &[&str],
    with_secret: bool,
    configured_mail: bool,
) -> TestApp {
    let db_path = dir.path().join("introgy.db");
    // One suite, both stores: with INTROGY_TEST_MONGO_URL set, every app gets its own
    // uniquely named MongoDB database instead of a temporary SQLite file.
    let mongo_url = std::env::var("INTROGY_TEST_MONGO_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let mongo_db = mongo_db_name_for(dir.path());
    let database_url = match &mongo_url {
        Some(url) => format!("{}/{mongo_db}", url.trim_end_matches('/')),
        None => format!("sqlite:{}", db_path.display()),
    };
    let data_dir = dir.path().display().to_string();
    let mut argv = vec![
        "introgy",
        "--data-dir",
        &data_dir,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--database-url",
        &database_url,
        "--bcrypt-cost",
        "4",
        "--email-transport",
        "log",
        // The suite makes many auth calls from one address; rate_limits.rs tests the limit.
        "--auth-rate-limit-per-minute",
        "1000000",
    ];
    if with_secret {
        argv.extend(["--jwt-secret-key", SECRET]);
    }
    // SecantusDB is one Python process serving the whole suite's ~250 concurrent tests on
    // two cores: under that load one operation can wait longer than the production
    // default of 5 s, which would answer 503 for reasons of the test bed. Tests of the
    // timeout itself set their own.
    if mongo_url.is_some() && !extra.contains(&"--store-timeout-seconds") {
        argv.extend(["--store-timeout-seconds", "15"]);
    }
    argv.extend_from_slice(extra);
    let config = config_from(&argv);
    let mail = Arc::new(MemoryTransport::default());
    let app = {
        // One app at a time creates its MongoDB collections and indexes: SecantusDB can
        // deadlock on concurrent DDL (see docs/mongodb.md).
        let _guard = BUILD_LOCK.lock().await;
        let built = if configured_mail {
            Application::build(config).await
        } else {
            Application::build_with_transport(config, mail.clone()).await
        };
        built.expect("app builds")
    };
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    tokio::spawn(app.run_until(std::future::pending()));
    let mongo = match &mongo_url {
        Some(url) => Some(
            mongodb::Client::with_uri_str(url)
                .await
                .expect("test MongoDB client")
                .database(&mongo_db),
        ),
        None => None,
    };
    TestApp {
        mongo,
        address,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        mail,
        state,
        db_path,
        dir,
    }
}

/// A configuration from command-line settings (`argv[0]` is the program name).
pub fn config_from(argv: &[&str]) -> Config {
    Config::from_args(Args::try_parse_from(argv).expect("test args").config).expect("test config")
}

/// The MongoDB database of the app on `dir`: named after the data directory, so a
/// restart on the same directory finds its data.
pub fn mongo_db_name_for(dir: &std::path::Path) -> String {
    format!(
        "introgy_test_{}",
        &introgy::auth::sha256_hex(&dir.display().to_string())[..16]
    )
}

/// The store the suite runs against: `mongodb` with INTROGY_TEST_MONGO_URL, else `sqlite`.
pub fn expected_store() -> &'static str {
    if std::env::var("INTROGY_TEST_MONGO_URL").is_ok_and(|u| !u.is_empty()) {
        "mongodb"
    } else {
        "sqlite"
    }
}

/// A signed-up, verified user with a session.
pub struct TestUser {
    pub email: String,
    pub password: String,
    pub id: String,
    pub access_token: String,
    pub refresh_token: String,
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", introgy::auth::random_hex(6))
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    pub async fn get_authed(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn register(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/auth/register",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    /// `register` as another client behind the proxy, with a display name: needs an app
    /// that trusts the test client as a proxy (`--trusted-proxies 127.0.0.1/32`).
    pub async fn register_as(
        &self,
        client_ip: &str,
        email: &str,
        password: &str,
        display_name: &str,
    ) -> Response {
        self.client
            .post(self.url("/auth/register"))
            .header("x-forwarded-for", client_ip)
            .json(&json!({"email": email, "password": password, "display_name": display_name}))
            .send()
            .await
            .expect("request")
    }

    pub async fn send_code(&self, email: &str, purpose: &str) -> Response {
        self.post_json(
            "/auth/send-verification-code",
            &json!({"email": email, "purpose": purpose}),
        )
        .await
    }

    /// `send_code` as another client behind the proxy: needs an app that trusts the test
    /// client as a proxy (`--trusted-proxies 127.0.0.1/32`).
    pub async fn send_code_as(&self, client_ip: &str, email: &str, purpose: &str) -> Response {
        self.client
            .post(self.url("/auth/send-verification-code"))
            .header("x-forwarded-for", client_ip)
            .json(&json!({"email": email, "purpose": purpose}))
            .send()
            .await
            .expect("request")
    }

    pub async fn verify_otp(&self, email: &str, code: &str) -> Response {
        self.post_json("/auth/verify-otp", &json!({"email": email, "code": code}))
            .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json(
            "/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn login_form(&self, username: &str, password: &str) -> Response {
        self.client
            .post(self.url("/auth/login"))
            .form(&[
                ("grant_type", "password"),
                ("username", username),
                ("password", password),
            ])
            .send()
            .await
            .expect("request")
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_json(
            "/auth/refresh-token",
            &json!({"refresh_token": refresh_token}),
        )
        .await
    }

    pub async fn verify_token(&self, token: &str) -> Response {
        self.get_authed("/auth/verify-token", token).await
    }

    /// What verify-token answers for `access` and refresh-token for `refresh` (which
    /// rotates it): `(OK, OK)` for a live session, `(UNAUTHORIZED, UNAUTHORIZED)` for one
    /// signed out.
    pub async fn session_works(&self, access: &str, refresh: &str) -> (StatusCode, StatusCode) {
        let access = self.verify_token(access).await.status();
        (access, self.refresh(refresh).await.status())
    }

    /// An account made in the store directly with [`PASSWORD`] (no mail was ever sent to
    /// it, like an address an attacker probes), verified or not.
    pub async fn stored_account(&self, verified: bool) -> introgy::store::User {
        let id = introgy::auth::new_object_id();
        let hash = self
            .state
            .hasher
            .hash(&introgy::domain::Password::parse(PASSWORD, "password").unwrap())
            .await
            .unwrap();
        let user = self
            .state
            .store
            .insert_user(&introgy::store::NewUser {
                id: id.clone(),
                email: unique_email(),
                hashed_password: hash,
                display_name: None,
                battery_level: 70,
                now: self.state.clock.now(),
            })
            .await
            .unwrap();
        if verified {
            self.state
                .store
                .mark_verified(&id, self.state.clock.now())
                .await
                .unwrap();
        }
        user
    }

    pub async fn logout(&self, token: &str, scope: Option<&str>) -> Response {
        let request = self
            .client
            .post(self.url("/auth/logout"))
            .bearer_auth(token);
        let request = match scope {
            Some(scope) => request.json(&json!({"scope": scope})),
            None => request,
        };
        request.send().await.expect("request")
    }

    pub async fn reset_password(&self, email: &str, code: &str, new_password: &str) -> Response {
        self.post_json(
            "/auth/reset-password",
            &json!({"email": email, "code": code, "new_password": new_password}),
        )
        .await
    }

    /// Mails sent so far to `to` whose template is `kind`.
    pub fn mails(&self, to: &str, kind: &str) -> Vec<OutgoingMail> {
        self.mail
            .messages()
            .into_iter()
            .filter(|m| m.to == to.to_lowercase() && m.kind == kind)
            .collect()
    }

    /// Waits (up to 5 s) until `to` has received `count` mails of `kind`.
    pub async fn wait_for_mails(&self, to: &str, kind: &str, count: usize) -> Vec<OutgoingMail> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mails = self.mails(to, kind);
            if mails.len() >= count {
                return mails;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {count} {kind} mail(s) to {to}, got {}",
                mails.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the `n`-th (1-based) mail of `kind` to `to` and returns its code.
    pub async fn code_from_mail(&self, to: &str, kind: &str, n: usize) -> String {
        let mails = self.wait_for_mails(to, kind, n).await;
        extract_code(&mails[n - 1].text)
    }

    /// Waits until all work spawned after responses (codes, mail) has finished, so
    /// a test can assert that a mail was *not* sent.
    pub async fn settle(&self) {
        let pending = self
            .state
            .background
            .wait_idle(Duration::from_secs(10))
            .await;
        assert_eq!(pending, 0, "background work did not settle");
        // And the outbox worker has delivered everything that was queued.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.state.store.outbox_stats().await.unwrap().pending > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the outbox did not drain"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Registers, reads the code, verifies: a user with a live session.
    pub async fn signup(&self) -> TestUser {
        let email = unique_email();
        assert_eq!(
            self.register(&email, PASSWORD).await.status(),
            StatusCode::ACCEPTED
        );
        let code = self.code_from_mail(&email, "verification_code", 1).await;
        let response = self.verify_otp(&email, &code).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        TestUser {
            email,
            password: PASSWORD.to_owned(),
            id: body["user"]["id"].as_str().unwrap().to_owned(),
            access_token: body["access_token"].as_str().unwrap().to_owned(),
            refresh_token: body["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    /// Lets `seconds` pass on the service's clock (cooldowns, expiries, grace windows).
    pub fn advance(&self, seconds: i64) {
        self.state.clock.advance(chrono::Duration::seconds(seconds));
    }

    /// How many records a table (SQLite) or collection (MongoDB) holds.
    pub async fn count(&self, table: &str) -> i64 {
        match &self.mongo {
            Some(db) => {
                let collection = if table == "users" {
                    "IntrogyUsers"
                } else {
                    table
                };
                db.collection::<mongodb::bson::Document>(collection)
                    .count_documents(mongodb::bson::doc! {})
                    .await
                    .unwrap() as i64
            }
            None => {
                let conn = rusqlite::Connection::open(&self.db_path).expect("open test db");
                conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                    .unwrap()
            }
        }
    }
}

/// The six-digit code in a mail's text.
pub fn extract_code(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
        .expect("a six-digit code in the mail")
        .to_owned()
}

/// Where two JSON values differ, as JSON pointers (at most `limit`).
pub fn json_differences(expected: &Value, actual: &Value, at: &str, limit: usize) -> Vec<String> {
    let mut found = Vec::new();
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = e.keys().chain(a.keys()).collect();
            for key in keys {
                let here = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                match (e.get(key), a.get(key)) {
                    (Some(e), Some(a)) => found.extend(json_differences(
                        e,
                        a,
                        &here,
                        limit - found.len().min(limit),
                    )),
                    (Some(_), None) => found.push(format!("{here} (only in the snapshot)")),
                    (None, Some(_)) => found.push(format!("{here} (only in the served document)")),
                    (None, None) => {}
                }
                if found.len() >= limit {
                    break;
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (e, a)) in e.iter().zip(a).enumerate() {
                found.extend(json_differences(e, a, &format!("{at}/{i}"), limit));
                if found.len() >= limit {
                    break;
                }
            }
        }
        (e, a) if e != a => found.push(format!("{at}: {e} became {a}")),
        _ => {}
    }
    found.truncate(limit);
    found
}

/// Reads a JSON body, asserting the status first.
pub async fn json_of(response: Response, status: StatusCode) -> Value {
    let got = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}
