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
    pub faulty: Option<Arc<FaultyStore>>,
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
        faulty: None,
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

    pub async fn send_code(&self, email: &str, purpose: &str) -> Response {
        self.post_json(
            "/auth/send-verification-code",
            &json!({"email": email, "purpose": purpose}),
        )
        .await
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

/// A store that forwards to SQLite until it is switched "down", then fails every call
/// as an unreachable database would.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    down: std::sync::atomic::AtomicBool,
}

impl FaultyStore {
    fn check(&self) -> StoreResult<()> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(StoreError::Unavailable(anyhow::anyhow!("injected outage")))
        } else {
            Ok(())
        }
    }
}

use chrono::{DateTime, Utc};
use introgy::domain::OtpPurpose;
use introgy::store::{
    BatteryEvent, BatterySummary, HistoryFilter, IdempotencyKey, MailResult, NewBatteryEvent,
    NewUser, OneTimeCode, OutboxMail, OutboxStats, ProfilePatch, RecordOutcome, RefreshToken,
    SendLimits, Session, Store, StoreCounts, StoreError, StoreResult, User,
};

#[async_trait::async_trait]
impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        "faulty"
    }
    async fn ping(&self) -> StoreResult<()> {
        self.check()?;
        self.inner.ping().await
    }
    async fn insert_user(&self, user: &NewUser) -> StoreResult<User> {
        self.check()?;
        self.inner.insert_user(user).await
    }
    async fn user_by_id(&self, id: &str) -> StoreResult<Option<User>> {
        self.check()?;
        self.inner.user_by_id(id).await
    }
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        self.check()?;
        self.inner.user_by_email(email).await
    }
    async fn set_password_hash(
        &self,
        user_id: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.check()?;
        self.inner.set_password_hash(user_id, hash, now).await
    }
    async fn mark_verified(&self, user_id: &str, now: DateTime<Utc>) -> StoreResult<()> {
        self.check()?;
        self.inner.mark_verified(user_id, now).await
    }
    async fn reset_password(
        &self,
        user_id: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.check()?;
        self.inner.reset_password(user_id, hash, now).await
    }
    async fn put_code(&self, code: &OneTimeCode) -> StoreResult<()> {
        self.check()?;
        self.inner.put_code(code).await
    }
    async fn take_code_attempt(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<OneTimeCode>> {
        self.check()?;
        self.inner
            .take_code_attempt(user_id, purpose, max_attempts, now)
            .await
    }
    async fn consume_code(
        &self,
        user_id: &str,
        purpose: OtpPurpose,
        code_hash: &str,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner.consume_code(user_id, purpose, code_hash).await
    }
    async fn reserve_mail_send(
        &self,
        email: &str,
        now: DateTime<Utc>,
        limits: SendLimits,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner.reserve_mail_send(email, now, limits).await
    }
    async fn insert_session(&self, session: &Session, first: &RefreshToken) -> StoreResult<()> {
        self.check()?;
        self.inner.insert_session(session, first).await
    }
    async fn session(&self, id: &str) -> StoreResult<Option<Session>> {
        self.check()?;
        self.inner.session(id).await
    }
    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshToken>> {
        self.check()?;
        self.inner.refresh_token(token_hash).await
    }
    async fn mark_refresh_rotated(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner.mark_refresh_rotated(token_hash, now).await
    }
    async fn insert_refresh_token(&self, token: &RefreshToken) -> StoreResult<()> {
        self.check()?;
        self.inner.insert_refresh_token(token).await
    }
    async fn delete_session(&self, id: &str) -> StoreResult<()> {
        self.check()?;
        self.inner.delete_session(id).await
    }
    async fn delete_user_sessions(&self, user_id: &str, except: Option<&str>) -> StoreResult<u64> {
        self.check()?;
        self.inner.delete_user_sessions(user_id, except).await
    }
    async fn purge_expired(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        self.check()?;
        self.inner.purge_expired(now).await
    }
    async fn update_profile(
        &self,
        user_id: &str,
        patch: &ProfilePatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<User>> {
        self.check()?;
        self.inner.update_profile(user_id, patch, now).await
    }
    async fn delete_user(&self, user_id: &str) -> StoreResult<bool> {
        self.check()?;
        self.inner.delete_user(user_id).await
    }
    async fn record_interaction(
        &self,
        user_id: &str,
        event: &NewBatteryEvent,
        key: Option<&IdempotencyKey>,
    ) -> StoreResult<RecordOutcome> {
        self.check()?;
        self.inner.record_interaction(user_id, event, key).await
    }
    async fn battery_history(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
        before_seq: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>> {
        self.check()?;
        self.inner
            .battery_history(user_id, filter, before_seq, limit)
            .await
    }
    async fn battery_summary(
        &self,
        user_id: &str,
        filter: &HistoryFilter,
    ) -> StoreResult<BatterySummary> {
        self.check()?;
        self.inner.battery_summary(user_id, filter).await
    }
    async fn export_users(&self, after: Option<&str>, limit: u32) -> StoreResult<Vec<User>> {
        self.check()?;
        self.inner.export_users(after, limit).await
    }
    async fn import_user(&self, user: &User) -> StoreResult<()> {
        self.check()?;
        self.inner.import_user(user).await
    }
    async fn export_events(
        &self,
        user_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<BatteryEvent>> {
        self.check()?;
        self.inner.export_events(user_id, after_seq, limit).await
    }
    async fn import_events(&self, events: &[BatteryEvent]) -> StoreResult<()> {
        self.check()?;
        self.inner.import_events(events).await
    }
    async fn finish_battery_import(
        &self,
        user_id: &str,
        level: i32,
        seq: i64,
        updated_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        self.check()?;
        self.inner
            .finish_battery_import(user_id, level, seq, updated_at)
            .await
    }
    async fn codes_of(&self, user_id: &str) -> StoreResult<Vec<OneTimeCode>> {
        self.check()?;
        self.inner.codes_of(user_id).await
    }
    async fn counts(&self) -> StoreResult<StoreCounts> {
        self.check()?;
        self.inner.counts().await
    }
    async fn put_code_and_mail(&self, code: &OneTimeCode, mail: &OutboxMail) -> StoreResult<()> {
        self.check()?;
        self.inner.put_code_and_mail(code, mail).await
    }
    async fn enqueue_mail(&self, mail: &OutboxMail) -> StoreResult<()> {
        self.check()?;
        self.inner.enqueue_mail(mail).await
    }
    async fn claim_mail(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<OutboxMail>> {
        self.check()?;
        self.inner.claim_mail(now, lease_until, limit).await
    }
    async fn finish_mail(
        &self,
        id: &str,
        result: &MailResult,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.check()?;
        self.inner.finish_mail(id, result, now).await
    }
    async fn outbox_stats(&self) -> StoreResult<OutboxStats> {
        self.check()?;
        self.inner.outbox_stats().await
    }
}

/// `spawn_app` around a [`FaultyStore`]; `store_down(true)` starts the outage.
pub async fn spawn_app_with_faulty_store() -> TestApp {
    let app = spawn_app().await;
    let config = app.state.config.as_ref().clone();
    let faulty = Arc::new(FaultyStore {
        inner: Arc::clone(&app.state.store),
        down: std::sync::atomic::AtomicBool::new(false),
    });
    let mail = Arc::new(MemoryTransport::default());
    let mut config = config;
    config.port = 0;
    let built = Application::build_with(config, faulty.clone(), mail.clone())
        .await
        .expect("app builds");
    let address = format!("http://127.0.0.1:{}", built.port());
    let state = built.state().clone();
    tokio::spawn(built.run_until(std::future::pending()));
    TestApp {
        mongo: app.mongo.clone(),
        address,
        client: app.client.clone(),
        mail,
        state,
        db_path: app.db_path.clone(),
        dir: app.dir,
        faulty: Some(faulty),
    }
}

impl TestApp {
    /// Starts or ends the injected store outage (only for `spawn_app_with_faulty_store`).
    pub fn store_down(&self, down: bool) {
        self.faulty
            .as_ref()
            .expect("spawn_app_with_faulty_store")
            .down
            .store(down, std::sync::atomic::Ordering::SeqCst);
    }
}
