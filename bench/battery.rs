//! Battery benchmark: `cargo bench --bench battery`.
//!
//! 1. Store level (SQLite): reading the battery and a history page for a user with
//!    1,000 and with 1,000,000 recorded interactions, side by side (`BENCH_EVENTS`
//!    overrides the large size).
//!    An insights month (`InsightStore::battery_buckets` and the composition into
//!    local days): both users have the same 1,000 records in the last 60 days (the
//!    large one's other records are older), so the two columns compare the same period
//!    over histories of different lengths.
//!    Then correcting the history (`correct_interaction`): replacing the newest record,
//!    replacing the record 100 from the end, and deleting the newest record, for both
//!    users: the cost follows the number of later records, not the history's length.
//! 2. HTTP level (the real server, release build, in-process load): requests per second
//!    for `GET /health`, `GET /social-battery/me`, `GET .../activity`, and
//!    `POST .../record` for one user and for many users, with the ratios PRODUCT.md §7
//!    talks about. `BENCH_SECONDS` sets each HTTP run's length (default 5).
//!
//! The load generator shares the machine's cores with the server, so absolute numbers
//! are pessimistic; the ratios are what to compare.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use introgy::battery::{EnergyImpact, Interaction};
use introgy::config::{Config, ConfigArgs};
use introgy::email::MemoryTransport;
use introgy::startup::Application;
use introgy::store::sqlite::SqliteStore;
use introgy::store::{
    BatteryStore, CorrectedFields, Correction, HistoryCursor, HistoryFilter, MigrationStore,
    NewUser, Store, UserStore,
};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn new_user(store: &dyn Store) -> String {
    let id = introgy::auth::new_object_id();
    store
        .insert_user(&NewUser {
            id: id.clone(),
            email: format!("{id}@bench.example"),
            hashed_password: "$2b$04$invalidinvalidinvalidinvalidinvalidinvalidinvalidinv".into(),
            display_name: None,
            battery_level: 70,
            now: Utc::now(),
        })
        .await
        .unwrap();
    id
}

/// How many of a history's newest records fall in the last two months (the same for
/// both sizes, so an insights month and the one before it hold the same records).
const RECENT: i64 = 1_000;
/// Their spacing: 1,000 records over the last 60 days.
const RECENT_SPACING_MS: i64 = 86 * 60 * 1000;

/// When record `seq` of `n` occurred: the newest [`RECENT`] every 86 minutes up to now,
/// the ones before them one a second before that.
fn occurred_ms(now: i64, n: i64, seq: i64) -> i64 {
    let recent_from = n - RECENT.min(n);
    let first_recent = now - RECENT.min(n) * RECENT_SPACING_MS;
    if seq > recent_from {
        first_recent + (seq - recent_from) * RECENT_SPACING_MS
    } else {
        first_recent - (recent_from - seq + 1) * 1000
    }
}

/// Writes `n` events for `user_id` directly (one transaction), as `record` would have
/// (times by [`occurred_ms`]); returns the page cursor halfway through the history.
fn bulk_load(path: &std::path::Path, user_id: &str, n: i64) -> HistoryCursor {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    let now = Utc::now().timestamp_millis() - 60_000;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO battery_events (id, user_id, seq, kind, energy_impact, name, energy_delta, \
                 level_before, level_after, duration_minutes, occurred_at, recorded_at) \
                 VALUES (?1, ?2, ?3, ?4, 10, 'bench', ?5, ?6, ?7, 60, ?8, ?8)",
            )
            .unwrap();
        let mut level: i64 = 70;
        for seq in 1..=n {
            let (kind, after) = if seq % 2 == 0 {
                ("recharge", (level + 10).min(100))
            } else {
                ("depletion", (level - 10).max(0))
            };
            insert
                .execute(rusqlite::params![
                    format!("{user_id}-{seq}"),
                    user_id,
                    seq,
                    kind,
                    after - level,
                    level,
                    after,
                    occurred_ms(now, n, seq)
                ])
                .unwrap();
            level = after;
        }
        tx.execute(
            "UPDATE users SET battery_level = ?2, battery_seq = ?3 WHERE id = ?1",
            rusqlite::params![user_id, level, n],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO battery_stats (user_id, kind, count, total_positive, total_negative, level_sum) \
             SELECT user_id, kind, COUNT(*), SUM(MAX(energy_delta, 0)), SUM(MAX(-energy_delta, 0)), SUM(level_after) \
             FROM battery_events WHERE user_id = ?1 GROUP BY kind",
            [user_id],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let middle = n / 2;
    HistoryCursor {
        occurred_at: chrono::DateTime::from_timestamp_millis(occurred_ms(now, n, middle)).unwrap(),
        seq: middle,
    }
}

/// Mean time of `f` over `iterations` runs, in microseconds.
async fn time_us<F, Fut>(iterations: u32, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..iterations / 10 {
        f().await;
    }
    let started = Instant::now();
    for _ in 0..iterations {
        f().await;
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

async fn store_level(dir: &std::path::Path) {
    let large: i64 = env_or("BENCH_EVENTS", 1_000_000);
    let path = dir.join("store-bench.db");
    let store = SqliteStore::open(&path, Duration::from_secs(30))
        .await
        .unwrap();
    let small_user = new_user(&store).await;
    let large_user = new_user(&store).await;
    let load = Instant::now();
    let small_middle = bulk_load(&path, &small_user, 1_000);
    let large_middle = bulk_load(&path, &large_user, large);
    println!(
        "loaded 1,000 and {large} events in {:.1} s",
        load.elapsed().as_secs_f64()
    );
    // Running totals and insights buckets, as an import computes them.
    let load = Instant::now();
    for (user, n) in [(&small_user, 1_000), (&large_user, large)] {
        let level = store.user_by_id(user).await.unwrap().unwrap().battery_level;
        store
            .finish_battery_import(user, level, n, None)
            .await
            .unwrap();
    }
    println!(
        "computed their totals and insights buckets in {:.1} s",
        load.elapsed().as_secs_f64()
    );

    let no_filter = HistoryFilter::default();
    let recharges = HistoryFilter {
        kind: Some(introgy::battery::InteractionKind::Recharge),
        ..HistoryFilter::default()
    };
    println!(
        "\n{:<44} {:>14} {:>14}",
        "store operation (mean µs)",
        "1,000 events",
        format!("{large} events")
    );
    for (label, kind) in [
        ("read battery (user_by_id)", 0),
        ("history: first page of 50", 1),
        ("history: page of 50 deep in the history", 2),
        ("history: first page of 50, type=recharge", 3),
        ("summary, no filter", 4),
        ("summary, type=recharge", 5),
        ("insights: a month (and the one before), UTC", 6),
        ("insights: a month, America/Santiago", 7),
    ] {
        let mut results = Vec::new();
        for (user, middle) in [(&small_user, small_middle), (&large_user, large_middle)] {
            let store = &store;
            let (no_filter, recharges) = (&no_filter, &recharges);
            let us = time_us(2_000, || async move {
                match kind {
                    0 => drop(store.user_by_id(user).await.unwrap()),
                    1 => drop(
                        store
                            .battery_history(user, no_filter, None, 51)
                            .await
                            .unwrap(),
                    ),
                    2 => drop(
                        store
                            .battery_history(user, no_filter, Some(middle), 51)
                            .await
                            .unwrap(),
                    ),
                    3 => drop(
                        store
                            .battery_history(user, recharges, None, 51)
                            .await
                            .unwrap(),
                    ),
                    4 => drop(store.battery_summary(user, no_filter).await.unwrap()),
                    5 => drop(store.battery_summary(user, recharges).await.unwrap()),
                    _ => drop(insights_month(store, user, kind == 7).await),
                }
            })
            .await;
            results.push(us);
        }
        println!("{label:<44} {:>14.1} {:>14.1}", results[0], results[1]);
    }
    corrections(&store, [(&small_user, 1_000), (&large_user, large)]).await;
}

/// What `GET .../insights?period=month` does after the authenticated read.
async fn insights_month(
    store: &SqliteStore,
    user: &str,
    santiago: bool,
) -> introgy::battery::insights::Insights {
    use introgy::battery::insights::{compose, Period, Window, Zone};
    use introgy::store::InsightStore;
    let zone = Zone::of_profile(santiago.then_some("America/Santiago"));
    let window = Window::new(Period::Month, zone.tz, Utc::now());
    let stored = store
        .battery_buckets(user, window.from_bucket, window.to_bucket)
        .await
        .unwrap();
    compose(&window, &zone, &stored)
}

/// Corrections of the newest records and of one 100 records back, at both sizes.
async fn corrections(store: &SqliteStore, users: [(&String, i64); 2]) {
    let replace = |impact: i64| {
        Correction::Replace(CorrectedFields {
            interaction: Interaction::Depletion(EnergyImpact::new(impact).unwrap()),
            name: Some("bench".into()),
            duration_minutes: 60,
            occurred_at: Utc::now() - chrono::Duration::days(1),
            notes: None,
            people_count: None,
            interaction_type: None,
        })
    };
    for (label, depth, iterations) in [
        ("correct the newest record", 0, 2_000),
        ("correct the record 100 from the end", 100, 200),
    ] {
        let mut results = Vec::new();
        for (user, n) in users {
            let id = format!("{user}-{}", n - depth);
            let mut i = 0;
            let us = time_us(iterations, || {
                i += 1;
                let (correction, id) = (replace(1 + i % 20), id.clone());
                async move {
                    store
                        .correct_interaction(user, &id, &correction, None, Utc::now())
                        .await
                        .unwrap();
                }
            })
            .await;
            results.push(us);
        }
        println!("{label:<44} {:>14.1} {:>14.1}", results[0], results[1]);
    }
    // Each run deletes the newest record left (warm-up included: 440 of them).
    let mut results = Vec::new();
    for (user, n) in users {
        let mut next = n;
        let us = time_us(400, || {
            let id = format!("{user}-{next}");
            next -= 1;
            async move {
                store
                    .correct_interaction(user, &id, &Correction::Delete, None, Utc::now())
                    .await
                    .unwrap();
            }
        })
        .await;
        results.push(us);
    }
    println!(
        "{:<44} {:>14.1} {:>14.1}",
        "delete the newest record", results[0], results[1]
    );
}

struct Server {
    base: String,
    client: reqwest::Client,
}

impl Server {
    async fn start(dir: &std::path::Path) -> Self {
        let db = format!("sqlite:{}", dir.join("http-bench.db").display());
        let argv = [
            "introgy",
            "--port",
            "0",
            "--database-url",
            &db,
            "--bcrypt-cost",
            "4",
            // The benchmark signs up many users from one address.
            "--auth-rate-limit-per-minute",
            "1000000",
            "--jwt-secret-key",
            "bench-secret-0123456789abcdef0123456789abcdef0123456789abcdef0123",
        ];
        let config = Config::from_args(Args::try_parse_from(argv).unwrap().config).unwrap();
        let app = Application::build_with_transport(config, Arc::new(MemoryTransport::default()))
            .await
            .unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until(std::future::pending()));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap();
        Self { base, client }
    }

    /// A verified user with an access token, through the real endpoints.
    async fn user(&self, store_path: &std::path::Path) -> String {
        let email = format!("{}@bench.example", introgy::auth::random_hex(6));
        let password = "bench password 123";
        self.client
            .post(format!("{}/auth/register", self.base))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        let conn = rusqlite::Connection::open(store_path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute(
            "UPDATE users SET is_verified = 1 WHERE email = ?1",
            [&email],
        )
        .unwrap();
        let body: serde_json::Value = self
            .client
            .post(format!("{}/auth/login", self.base))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }
}

/// Requests per second with `concurrency` clients for `seconds`; panics on a non-2xx.
async fn load(
    server: &Server,
    tokens: &[String],
    concurrency: usize,
    seconds: f64,
    kind: &'static str,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (client, base) = (server.client.clone(), server.base.clone());
        let token = tokens[worker % tokens.len()].clone();
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let request = match kind {
                    "health" => client.get(format!("{base}/health")),
                    "battery" => client
                        .get(format!("{base}/social-battery/me"))
                        .bearer_auth(&token),
                    "me" => client.get(format!("{base}/users/me")).bearer_auth(&token),
                    "activity" => client
                        .get(format!("{base}/social-battery/me/activity?limit=50"))
                        .bearer_auth(&token),
                    _ => client
                        .post(format!("{base}/social-battery/me/record"))
                        .bearer_auth(&token)
                        .json(&json!({"type": "depletion", "name": "bench", "energy_impact": 1})),
                };
                let response = request.send().await.unwrap();
                assert!(
                    response.status().is_success(),
                    "{kind}: {}",
                    response.status()
                );
                let _ = response.bytes().await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / seconds
}

async fn http_level(dir: &std::path::Path) {
    let seconds: f64 = env_or("BENCH_SECONDS", 5.0);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 32);
    let server = Server::start(dir).await;
    let store_path = dir.join("http-bench.db");
    let one = vec![server.user(&store_path).await];
    let mut many = Vec::new();
    for _ in 0..concurrency {
        many.push(server.user(&store_path).await);
    }
    println!("\nHTTP, {concurrency} concurrent clients, {seconds} s each (requests per second)");
    let health = load(&server, &one, concurrency, seconds, "health").await;
    println!("{:<44} {:>10.0}", "GET /health", health);
    let rows = [
        ("GET /social-battery/me", "battery", &one),
        ("GET /users/me", "me", &one),
        ("POST .../record, one user", "record", &one),
        ("POST .../record, many users", "record", &many),
        ("GET .../activity?limit=50", "activity", &one),
    ];
    for (label, kind, tokens) in rows {
        let rps = load(&server, tokens, concurrency, seconds, kind).await;
        println!(
            "{label:<44} {rps:>10.0}   {:>5.1}% of /health",
            rps / health * 100.0
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        store_level(dir.path()).await;
        http_level(dir.path()).await;
    });
}
