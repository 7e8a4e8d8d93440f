//! Real store outages on both backends, and what a 503 promises: "not applied".
//!
//! - The store goes away: on MongoDB the network to the server is cut (a TCP proxy, see
//!   `chaos_proxy.rs`); on SQLite the database file is moved away (the service must notice
//!   and refuse, since SQLite would go on writing to the moved file) and put back.
//! - Writes stall: on SQLite another connection holds the write lock (`BEGIN IMMEDIATE`),
//!   as another process would; on MongoDB the network is cut.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::chaos_proxy::{self, ChaosProxy};
use crate::helpers::{expected_store, json_of, spawn_app_with, TestApp, TestUser};

/// A store outage a test switches on and off.
pub enum Outage {
    /// MongoDB: the network between the service and the server is cut.
    Network(Arc<ChaosProxy>),
    /// SQLite: the database file is moved aside (and later moved back).
    FileMoved { path: PathBuf, aside: PathBuf },
}

impl Outage {
    pub fn begin(&self) {
        match self {
            Self::Network(proxy) => proxy.cut(),
            Self::FileMoved { path, aside } => std::fs::rename(path, aside).expect("move aside"),
        }
    }

    pub fn end(&self) {
        match self {
            Self::Network(proxy) => proxy.restore(),
            Self::FileMoved { path, aside } => std::fs::rename(aside, path).expect("move back"),
        }
    }
}

/// The app on the suite's store with a 2 s store timeout, and the outage of that store.
pub async fn spawn_app_with_outage() -> (TestApp, Outage) {
    if expected_store() == "mongodb" {
        let (app, proxy) = chaos_proxy::spawn_app_behind_proxy().await;
        (app, Outage::Network(proxy))
    } else {
        let app = spawn_app_with(&["--store-timeout-seconds", "2"]).await;
        let outage = Outage::FileMoved {
            path: app.db_path.clone(),
            aside: app.dir.path().join("moved-away.db"),
        };
        (app, outage)
    }
}

/// Polls `path` until it answers `status`, for at most `limit`; returns how long it took.
pub async fn answers_within(
    app: &TestApp,
    path: &str,
    status: StatusCode,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let got = app.get(path).await.status();
        if got == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{path} still answers {got}, not {status}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every history item of `user`, all pages.
pub async fn whole_history(app: &TestApp, user: &TestUser) -> Vec<Value> {
    let mut items = Vec::new();
    let mut query = "?limit=200".to_owned();
    loop {
        let page = json_of(app.activity(user, &query).await, StatusCode::OK).await;
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=200&cursor={cursor}"),
            None => return items,
        }
    }
}

/// How many history items are named `name`.
fn named(history: &[Value], name: &str) -> usize {
    history.iter().filter(|i| i["name"] == name).count()
}

/// A real outage of the store: every route answers 503 JSON within the store timeout,
/// and the service recovers by itself when the store is back.
#[tokio::test]
async fn health_and_every_route_answer_503_json_during_a_store_outage_and_recover() {
    let (app, outage) = spawn_app_with_outage().await;
    let user = app.signup().await;
    outage.begin();
    // SQLite notices a moved file within a second (and /health looks at once).
    answers_within(
        &app,
        "/health",
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(5),
    )
    .await;
    let started = Instant::now();
    let body = json_of(app.get("/health").await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["database"], "disconnected");
    assert_eq!(body["status"], "degraded");
    let body = json_of(
        app.login(&user.email, &user.password).await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(body["code"], "service_unavailable");
    let body = json_of(
        app.verify_token(&user.access_token).await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(body["code"], "service_unavailable");
    let record = json!({"type": "depletion", "name": "during the outage", "energy_impact": 5});
    let body = json_of(
        app.record(&user.access_token, &record).await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(body["code"], "service_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "four requests took {:?} during the outage (store timeout 2 s)",
        started.elapsed()
    );
    // And it recovers by itself.
    outage.end();
    answers_within(&app, "/health", StatusCode::OK, Duration::from_secs(30)).await;
    assert_eq!(
        app.verify_token(&user.access_token).await.status(),
        StatusCode::OK
    );
    let history = whole_history(&app, &user).await;
    assert_eq!(named(&history, "during the outage"), 0, "a 503 was applied");
}

/// Liveness does not depend on the store; readiness and `/health` do.
#[tokio::test]
async fn liveness_stays_up_while_the_store_is_down_and_readiness_does_not() {
    let (app, outage) = spawn_app_with_outage().await;
    outage.begin();
    answers_within(
        &app,
        "/health/ready",
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(5),
    )
    .await;
    let live = json_of(app.get("/health/live").await, StatusCode::OK).await;
    assert_eq!(live["status"], "ok");
    let ready = json_of(
        app.get("/health/ready").await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(ready["status"], "not_ready");
    assert_eq!(ready["store"], "unreachable");
    let health = json_of(app.get("/health").await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["database"], "disconnected");
    assert!(
        health["reason"].as_str().unwrap().contains("store"),
        "{health}"
    );
    outage.end();
    answers_within(
        &app,
        "/health/ready",
        StatusCode::OK,
        Duration::from_secs(30),
    )
    .await;
}

/// Another connection holds SQLite's write lock (as another process would) until
/// released or dropped.
struct WriteLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    holder: Option<std::thread::JoinHandle<()>>,
}

impl WriteLock {
    fn take(path: &std::path::Path) -> Self {
        let (locked, is_locked) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let path = path.to_path_buf();
        let holder = std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&path).expect("open the database");
            conn.execute_batch("BEGIN IMMEDIATE")
                .expect("take the write lock");
            locked.send(()).unwrap();
            // Held until released; bounded, so a failing test cannot hang the suite.
            let _ = released.recv_timeout(Duration::from_secs(60));
            conn.execute_batch("ROLLBACK")
                .expect("release the write lock");
        });
        is_locked
            .recv_timeout(Duration::from_secs(10))
            .expect("the write lock was not taken");
        Self {
            release: Some(release),
            holder: Some(holder),
        }
    }

    fn release(&mut self) {
        drop(self.release.take());
        if let Some(holder) = self.holder.take() {
            holder.join().expect("the lock holder panicked");
        }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        self.release();
    }
}

/// Records sent while writes cannot proceed: every one answered 503 is absent afterwards
/// (never applied late), every 201 is present once; a retry of each 503 (with its key or
/// without one) records it exactly once. On SQLite reads and `/health` keep answering
/// while 320 writes wait for the writer. On MongoDB the network is cut, which usually
/// stops a request at its session read already; `tests/mongo.rs` drives the store's
/// write itself into a cut network.
#[tokio::test]
async fn records_answered_503_while_writes_stall_are_never_applied() {
    const KEYED: usize = 20;
    const PLAIN: usize = 300;
    let (app, outage) = spawn_app_with_outage().await;
    let user = app.signup().await;
    let app = Arc::new(app);
    let body = |name: &str| json!({"type": "depletion", "name": name, "energy_impact": 1});
    let mut lock = None;
    match &outage {
        Outage::Network(_) => outage.begin(),
        Outage::FileMoved { path, .. } => lock = Some(WriteLock::take(path)),
    }

    // The burst: keyed and plain records, all at once.
    let mut sent = Vec::new();
    for i in 0..KEYED + PLAIN {
        let (app, token) = (Arc::clone(&app), user.access_token.clone());
        let name = format!("stalled {i}");
        let key = (i < KEYED).then(|| format!("stall-key-{i}"));
        let request = body(&name);
        sent.push(tokio::spawn(async move {
            let status = app
                .record_to("me", &token, &request, key.as_deref())
                .await
                .status();
            (name, key, status)
        }));
    }
    // WAL readers do not need the writer: while the burst waits for it, reads and
    // /health answer (checked over and over until the burst has its answers).
    let mut rounds = 0;
    while lock.is_some() && (rounds == 0 || !sent.iter().all(|s| s.is_finished())) {
        rounds += 1;
        for path in ["/health", "/health/live"] {
            let started = Instant::now();
            let status = app.get(path).await.status();
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{path} took {:?} ({status}) while writes were stalled",
                started.elapsed()
            );
        }
        let started = Instant::now();
        assert_eq!(
            app.get_authed("/social-battery/me", &user.access_token)
                .await
                .status(),
            StatusCode::OK
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a read waited for the writer"
        );
    }
    let mut outcomes = Vec::new();
    for request in sent {
        outcomes.push(request.await.unwrap());
    }
    // Writes resume.
    match lock.as_mut() {
        Some(lock) => lock.release(),
        None => outage.end(),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while app
        .record(&user.access_token, &body("after"))
        .await
        .status()
        != StatusCode::CREATED
    {
        assert!(Instant::now() < deadline, "writes did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let history = whole_history(&app, &user).await;
    let mut unavailable = 0;
    for (name, _, status) in &outcomes {
        match *status {
            StatusCode::SERVICE_UNAVAILABLE => {
                unavailable += 1;
                assert_eq!(
                    named(&history, name),
                    0,
                    "{name} answered 503 and was applied"
                );
            }
            StatusCode::CREATED => assert_eq!(named(&history, name), 1, "{name}"),
            // MongoDB: a write sent just before the cut has an unknown outcome (500).
            StatusCode::INTERNAL_SERVER_ERROR if expected_store() == "mongodb" => {}
            other => panic!("{name}: unexpected {other}"),
        }
    }
    assert!(
        unavailable >= (KEYED + PLAIN) * 9 / 10,
        "only {unavailable} of {} records were refused during the stall",
        KEYED + PLAIN
    );
    // The client's retries: each intended record ends up in the history exactly once.
    for (name, key, status) in &outcomes {
        let unknown = *status == StatusCode::INTERNAL_SERVER_ERROR;
        if *status == StatusCode::CREATED || (unknown && key.is_none()) {
            continue;
        }
        let retry = app
            .record_to("me", &user.access_token, &body(name), key.as_deref())
            .await;
        assert_eq!(retry.status(), StatusCode::CREATED, "retry of {name}");
        if !unknown {
            assert!(
                retry.headers().get("idempotent-replayed").is_none(),
                "{name} answered 503 but its key had been used"
            );
        }
    }
    let history = whole_history(&app, &user).await;
    for (name, key, status) in &outcomes {
        if *status != StatusCode::INTERNAL_SERVER_ERROR || key.is_some() {
            assert_eq!(named(&history, name), 1, "{name} after the retries");
        }
    }
}
