//! MongoDB-only behaviour: documents written by the old Python service, and outages of
//! the database server (stopped, or the network to it cut). Needs INTROGY_TEST_MONGO_URL (a running MongoDB-compatible
//! server) and INTROGY_TEST_PYTHON (a Python with SecantusDB, for the outage test);
//! `scripts/test` provides both.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

#[path = "api/chaos_proxy.rs"]
#[allow(dead_code)]
mod chaos_proxy;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, oid::ObjectId};
use reqwest::StatusCode;
use serde_json::{json, Value};

use helpers::{json_of, spawn_app_in, spawn_app_with};

/// `passlib.hash.bcrypt.using(rounds=12).hash("correct horse battery staple")`.
const PASSLIB_HASH: &str = "$2b$12$rvehJXvoFwQr0usN5/URn.wnKeC5/85Ye1LjiIHDwdqKew9fhEX72";

fn mongo_url() -> String {
    std::env::var("INTROGY_TEST_MONGO_URL").expect(
        "the MongoDB tests need INTROGY_TEST_MONGO_URL; run scripts/test, which starts a server",
    )
}

#[tokio::test]
async fn a_user_written_by_the_python_service_logs_in_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let db = mongodb::Client::with_uri_str(mongo_url())
        .await
        .unwrap()
        .database(&helpers::mongo_db_name_for(dir.path()));
    // What the FastAPI service stored: ObjectId _id, the address as typed, a passlib
    // hash, a naive UTC created_at (BSON date), no battery fields.
    let id = ObjectId::new();
    let created = mongodb::bson::DateTime::from_millis(1_700_000_000_000);
    db.collection("IntrogyUsers")
        .insert_one(doc! {
            "_id": id,
            "email": "Legacy.User@Example.com",
            "hashed_password": PASSLIB_HASH,
            "display_name": "Legacy User",
            "is_verified": true,
            "created_at": created,
            "preferences": { "theme": "dark" },
        })
        .await
        .unwrap();

    let app = spawn_app_in(dir, &[], true).await;
    let body = json_of(
        app.login("legacy.user@example.com", "correct horse battery staple")
            .await,
        StatusCode::OK,
    )
    .await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let me = json_of(app.get_authed("/users/me", &token).await, StatusCode::OK).await;
    assert_eq!(me["id"], id.to_hex());
    assert_eq!(me["email"], "legacy.user@example.com");
    assert_eq!(me["display_name"], "Legacy User");
    assert_eq!(me["is_verified"], true);
    assert_eq!(me["preferences"], json!({"theme": "dark"}));
    assert_eq!(me["social_battery_level"], 70);
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(me["created_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis(),
        1_700_000_000_000
    );
    // The battery works on a document that has never had one.
    let record = app
        .client
        .post(app.url("/social-battery/me/record"))
        .bearer_auth(&token)
        .json(&json!({"type": "depletion", "name": "Standup", "energy_impact": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(record, StatusCode::CREATED).await["level_after"],
        60
    );
    // The stored document keeps the old field names.
    let stored = db
        .collection::<mongodb::bson::Document>("IntrogyUsers")
        .find_one(doc! { "_id": id })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_str("hashed_password").unwrap(), PASSLIB_HASH);
    assert_eq!(stored.get_str("display_name").unwrap(), "Legacy User");
}

#[tokio::test]
async fn indexes_are_created_at_start_up_and_creating_them_again_changes_nothing() {
    let app = spawn_app_with(&[]).await;
    let db = app.mongo.clone().expect("MongoDB suite");
    let names = |collection: &'static str| {
        let db = db.clone();
        async move {
            db.collection::<mongodb::bson::Document>(collection)
                .list_index_names()
                .await
                .unwrap()
        }
    };
    assert!(names("IntrogyUsers")
        .await
        .iter()
        .any(|n| n.starts_with("email")));
    let before = names("battery_events").await;
    assert!(before.len() >= 4, "{before:?}");
    let store =
        introgy::store::mongo::MongoStore::connect(&mongo_url(), db.name(), Duration::from_secs(5))
            .await
            .unwrap();
    store.ensure_indexes().await.unwrap();
    let mut after = names("battery_events").await;
    let mut before = before;
    after.sort();
    before.sort();
    assert_eq!(after, before, "a second run changed the indexes");
    // Unique emails hold at the database level too.
    let user = app.signup().await;
    let duplicate = db
        .collection::<mongodb::bson::Document>("IntrogyUsers")
        .insert_one(doc! { "email": &user.email, "hashed_password": "x" })
        .await;
    assert!(
        duplicate.is_err(),
        "a second document with the same email was accepted"
    );
}

/// A SecantusDB server of this test's own, with storage on disk so it survives a restart.
struct Server {
    child: Option<Child>,
    port: u16,
    storage: tempfile::TempDir,
}

impl Server {
    fn start(port: u16, storage: tempfile::TempDir) -> Self {
        let python = std::env::var("INTROGY_TEST_PYTHON")
            .expect("the outage test needs INTROGY_TEST_PYTHON (a Python with SecantusDB); run scripts/test");
        let secantusd = std::path::Path::new(&python).with_file_name("secantusd-py");
        let child = Command::new(secantusd)
            .args(["--port", &port.to_string(), "--storage-path"])
            .arg(storage.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start secantusd-py");
        Self {
            child: Some(child),
            port,
            storage,
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "secantusd-py did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn a_mongodb_outage_answers_503_quickly_and_recovers_without_a_restart() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Server::start(port, tempfile::tempdir().unwrap());
    server.wait_ready().await;

    let dir = tempfile::tempdir().unwrap();
    let db = format!("mongodb://127.0.0.1:{port}/outage");
    let data_dir = dir.path().display().to_string();
    let args = [
        "introgy",
        "--port",
        "0",
        "--database-url",
        &db,
        "--data-dir",
        &data_dir,
        "--bcrypt-cost",
        "4",
        "--jwt-secret-key",
        helpers::SECRET,
        "--store-timeout-seconds",
        "2",
        "--email-transport",
        "log",
    ];
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        config: introgy::config::ConfigArgs,
    }
    let config = introgy::config::Config::from_args(
        <Args as clap::Parser>::try_parse_from(args).unwrap().config,
    )
    .unwrap();
    let mail = std::sync::Arc::new(introgy::email::MemoryTransport::default());
    let app = introgy::startup::Application::build_with_transport(config, mail.clone())
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until(std::future::pending()));
    let client = reqwest::Client::new();
    let health = || client.get(format!("{base}/health")).send();
    assert_eq!(health().await.unwrap().status(), StatusCode::OK);
    let register = client
        .post(format!("{base}/auth/register"))
        .json(&json!({"email": "outage@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), StatusCode::ACCEPTED);

    // The database goes away.
    server.stop();
    for path in ["/health", "/users/me"] {
        let started = Instant::now();
        let response = client
            .get(format!("{base}{path}"))
            .bearer_auth("x.y.z")
            .send()
            .await
            .unwrap();
        let elapsed = started.elapsed();
        if path == "/health" {
            let body: Value = json_of(response, StatusCode::SERVICE_UNAVAILABLE).await;
            assert_eq!(body["database"], "disconnected");
        }
        assert!(
            elapsed < Duration::from_secs(5),
            "{path} took {elapsed:?} while MongoDB was down"
        );
    }
    let login = client
        .post(format!("{base}/auth/login"))
        .json(&json!({"email": "outage@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(login, StatusCode::SERVICE_UNAVAILABLE).await["code"],
        "service_unavailable"
    );

    // It comes back on the same port and storage; Introgy recovers by itself.
    let storage = std::mem::replace(&mut server.storage, tempfile::tempdir().unwrap());
    let server = Server::start(port, storage);
    server.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = health().await.unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        let body = response.text().await.unwrap();
        assert!(
            Instant::now() < deadline,
            "/health did not recover within 60 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again = client
        .post(format!("{base}/auth/register"))
        .json(&json!({"email": "after-outage@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_service_starts_while_mongodb_is_down_and_recovers_when_it_comes_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on `port` yet.
    let url = format!("mongodb://127.0.0.1:{port}/late");
    let data_dir = dir.path().display().to_string();
    let args = [
        "introgy",
        "--port",
        "0",
        "--database-url",
        &url,
        "--data-dir",
        &data_dir,
        "--bcrypt-cost",
        "4",
        "--jwt-secret-key",
        helpers::SECRET,
        "--store-timeout-seconds",
        "1",
        "--email-transport",
        "log",
    ];
    let config = introgy::config::Config::from_args(
        <AppArgs as clap::Parser>::try_parse_from(args)
            .unwrap()
            .config,
    )
    .unwrap();
    let app = introgy::startup::Application::build(config)
        .await
        .expect("starts without MongoDB");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until(std::future::pending()));
    let client = reqwest::Client::new();
    let health = || client.get(format!("{base}/health")).send();
    assert_eq!(
        health().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    let server = Server::start(port, tempfile::tempdir().unwrap());
    server.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while health().await.unwrap().status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "/health did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The indexes were created once the server answered: emails are unique.
    let db = mongodb::Client::with_uri_str(&url)
        .await
        .unwrap()
        .database("late");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let names = db
            .collection::<mongodb::bson::Document>("IntrogyUsers")
            .list_index_names()
            .await
            .unwrap_or_default();
        if names.iter().any(|n| n.starts_with("email")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "indexes were not created after recovery: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(clap::Parser)]
struct AppArgs {
    #[command(flatten)]
    config: introgy::config::ConfigArgs,
}

/// Starts the app on `database_url`; returns its base URL, state and mailbox.
async fn app_on(
    database_url: &str,
    dir: &std::path::Path,
) -> (
    String,
    introgy::startup::AppState,
    std::sync::Arc<introgy::email::MemoryTransport>,
) {
    let data_dir = dir.display().to_string();
    let args = [
        "introgy",
        "--port",
        "0",
        "--database-url",
        database_url,
        "--data-dir",
        &data_dir,
        "--bcrypt-cost",
        "4",
        "--jwt-secret-key",
        helpers::SECRET,
        "--email-transport",
        "log",
    ];
    let config = introgy::config::Config::from_args(
        <AppArgs as clap::Parser>::try_parse_from(args)
            .unwrap()
            .config,
    )
    .unwrap();
    let mail = std::sync::Arc::new(introgy::email::MemoryTransport::default());
    let app = {
        let _guard = helpers::BUILD_LOCK.lock().await;
        introgy::startup::Application::build_with_transport(config, mail.clone())
            .await
            .unwrap()
    };
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    tokio::spawn(app.run_until(std::future::pending()));
    (base, state, mail)
}

fn migrate(from: &str, to: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_introgy"))
        .args(["migrate", "--from", from, "--to", to, "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "migrate failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("count check passed"), "{stdout}");
    stdout
}

#[tokio::test]
async fn migrate_copies_users_and_history_to_mongodb_and_back_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite:{}", dir.path().join("source.db").display());
    let (base, state, mail) = app_on(&sqlite, dir.path()).await;
    let client = reqwest::Client::new();
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut request = client.post(format!("{base}{path}")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let email = "migrating@example.com";
    let password = "correct horse battery";
    post(
        "/auth/register",
        None,
        json!({"email": email, "password": password}),
    )
    .await
    .unwrap();
    state.background.wait_idle(Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while mail.messages().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the verification mail did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let code = helpers::extract_code(&mail.messages()[0].text);
    let tokens: Value = post(
        "/auth/verify-otp",
        None,
        json!({"email": email, "code": code}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let token = tokens["access_token"].as_str().unwrap();
    for body in [
        json!({"type": "depletion", "name": "Party", "energy_impact": 40}),
        json!({"type": "recharge", "name": "Book", "energy_impact": 15}),
        json!({"type": "sleep", "sleep_quality": "good"}),
    ] {
        assert_eq!(
            post("/social-battery/me/record", Some(token), body)
                .await
                .unwrap()
                .status(),
            StatusCode::CREATED
        );
    }
    let source_page: Value = client
        .get(format!("{base}/social-battery/me/activity"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // SQLite -> MongoDB, twice.
    let mongo = format!(
        "{}/migrated_{}",
        mongo_url().trim_end_matches('/'),
        introgy::auth::random_hex(6)
    );
    let first = migrate(&sqlite, &mongo);
    assert!(
        first.contains("copied 1 users, 3 battery events"),
        "{first}"
    );
    let second = migrate(&sqlite, &mongo);
    assert!(
        second.contains("copied 1 users, 3 battery events"),
        "{second}"
    );
    let mongo_db = mongodb::Client::with_uri_str(&mongo)
        .await
        .unwrap()
        .default_database()
        .unwrap();
    let count = |collection: &'static str| {
        let db = mongo_db.clone();
        async move {
            db.collection::<mongodb::bson::Document>(collection)
                .count_documents(doc! {})
                .await
                .unwrap()
        }
    };
    assert_eq!(count("battery_events").await, 3);
    assert_eq!(count("IntrogyUsers").await, 1);
    assert_eq!(count("sessions").await, 0, "sessions are not copied");

    // The account works on MongoDB: same password, same battery, same history.
    let mongo_dir = tempfile::tempdir().unwrap();
    let (mongo_base, _, _) = app_on(&mongo, mongo_dir.path()).await;
    let login: Value = client
        .post(format!("{mongo_base}/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mongo_token = login["access_token"]
        .as_str()
        .expect("login on the migrated store")
        .to_owned();
    let page: Value = client
        .get(format!("{mongo_base}/social-battery/me/activity"))
        .bearer_auth(&mongo_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"], source_page["items"]);
    assert_eq!(page["summary"], source_page["summary"]);
    // Recording continues from where the history ended.
    let next: Value = client
        .post(format!("{mongo_base}/social-battery/me/record"))
        .bearer_auth(&mongo_token)
        .json(&json!({"type": "set", "level": 33}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(next["level_before"], source_page["items"][0]["level_after"]);

    // And back to a fresh SQLite file.
    let back = format!("sqlite:{}", dir.path().join("back.db").display());
    let report = migrate(&mongo, &back);
    assert!(
        report.contains("copied 1 users, 4 battery events"),
        "{report}"
    );
}

/// A record whose write meets a cut network is refused as "not sent" (503) or, if it may
/// have reached the server, "outcome unknown" (500); a refused one is never applied later,
/// its key stays free, and a retry with the same key records it exactly once. Driven
/// through the store, so the write itself meets the cut (over HTTP the session read
/// before it usually does).
#[tokio::test]
async fn a_record_whose_write_meets_a_cut_network_is_refused_and_never_applied_later() {
    use introgy::battery::{EnergyImpact, Interaction};
    use introgy::store::{
        BatteryStore, HistoryFilter, Housekeeping, IdempotencyKey, NewBatteryEvent, NewUser,
        RecordOutcome, StoreError, UserStore,
    };

    let proxy = chaos_proxy::ChaosProxy::start(chaos_proxy::mongo_host_port()).await;
    let name = format!("introgy_cut_{}", introgy::auth::random_hex(6));
    let url = format!(
        "mongodb://127.0.0.1:{}/{name}?directConnection=true",
        proxy.port()
    );
    let store = {
        let _guard = helpers::BUILD_LOCK.lock().await;
        introgy::store::mongo::MongoStore::connect(&url, &name, Duration::from_secs(1))
            .await
            .unwrap()
    };
    let user = store
        .insert_user(&NewUser {
            id: introgy::auth::new_object_id(),
            email: "cut@example.com".into(),
            hashed_password: "$2b$04$hash".into(),
            display_name: None,
            battery_level: 70,
            now: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let event = |i: usize| NewBatteryEvent {
        id: introgy::auth::new_object_id(),
        interaction: Interaction::Depletion(EnergyImpact::new(5).unwrap()),
        name: Some(format!("cut {i}")),
        duration_minutes: 30,
        occurred_at: chrono::Utc::now(),
        recorded_at: chrono::Utc::now(),
        received: std::time::Instant::now(),
        notes: None,
        people_count: None,
        interaction_type: None,
    };
    let key = |i: usize| IdempotencyKey {
        key: format!("cut-{i}"),
        request_hash: format!("hash-{i}"),
        not_before: chrono::Utc::now() - chrono::Duration::hours(24),
    };

    proxy.cut();
    let mut refused = Vec::new();
    for i in 0..6 {
        let keyed = i % 2 == 0;
        let started = Instant::now();
        let outcome = store
            .record_interaction(&user.id, &event(i), keyed.then(|| key(i)).as_ref())
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "a write took {:?} into a cut network",
            started.elapsed()
        );
        match outcome {
            Err(StoreError::Unavailable(_)) => refused.push(i),
            Err(StoreError::Other(e)) => {
                assert!(format!("{e:#}").contains("outcome unknown"), "{e:#}")
            }
            other => panic!("record {i} during the cut: {other:?}"),
        }
    }
    assert!(
        refused.len() >= 4,
        "only {refused:?} were refused as not sent"
    );
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "MongoDB did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = store
        .battery_history(&user.id, &HistoryFilter::default(), None, 100)
        .await
        .unwrap();
    for i in &refused {
        let name = format!("cut {i}");
        assert!(
            history
                .iter()
                .all(|e| e.name.as_deref() != Some(name.as_str())),
            "{name} was refused and applied anyway"
        );
        if i % 2 == 0 {
            let again = store
                .record_interaction(&user.id, &event(*i), Some(&key(*i)))
                .await
                .unwrap();
            assert!(matches!(again, RecordOutcome::Recorded(_)), "{again:?}");
        }
    }
}
