//! Login benchmark: `cargo bench --bench auth` (PRODUCT.md §7).
//!
//! 1. The bcrypt bound: cores ÷ the time of one cost-12 hash.
//! 2. Login throughput of the real server (bcrypt cost 12) against that bound.
//! 3. Other users' reads during a login flood: p50/p99 of `GET /users/me` alone, then
//!    while other clients log in as fast as they can.
//!
//! `BENCH_SECONDS` sets each run's length (default 5). Server and load generator share
//! the machine, as in `bench/battery.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use introgy::config::{Config, ConfigArgs};
use introgy::email::MemoryTransport;
use introgy::startup::Application;
use introgy::store::NewUser;
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

const PASSWORD: &str = "correct horse battery staple";

fn seconds() -> f64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0)
}

/// Sends `make` requests from `clients` tasks for `for_secs`; returns each latency.
async fn drive(
    clients: usize,
    for_secs: f64,
    make: Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>,
) -> Vec<Duration> {
    let deadline = Instant::now() + Duration::from_secs_f64(for_secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let make = Arc::clone(&make);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let response = make().send().await.expect("request");
                assert!(response.status().is_success(), "{}", response.status());
                let _ = response.bytes().await;
                latencies.push(started.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    latencies.sort();
    latencies[((latencies.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        // 1. The bound.
        let started = Instant::now();
        let rounds = 6;
        for _ in 0..rounds {
            bcrypt::hash(PASSWORD, 12).unwrap();
        }
        let per_hash = started.elapsed().as_secs_f64() / f64::from(rounds);
        let bound = cores as f64 / per_hash;
        println!("one cost-12 hash: {:.0} ms; bound with {cores} cores: {bound:.1} logins/s", per_hash * 1000.0);

        // The server, with a verified user made directly in the store.
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}", dir.path().join("auth-bench.db").display());
        let argv = [
            "introgy", "--port", "0", "--database-url", &db, "--bcrypt-cost", "12",
            "--auth-rate-limit-per-minute", "1000000",
            "--jwt-secret-key", "bench-secret-0123456789abcdef0123456789abcdef0123456789abcdef0123",
        ];
        let config = Config::from_args(Args::try_parse_from(argv).unwrap().config).unwrap();
        let app = Application::build_with_transport(config, Arc::new(MemoryTransport::default()))
            .await
            .unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let state = app.state().clone();
        tokio::spawn(app.run_until(std::future::pending()));
        let hash = bcrypt::hash(PASSWORD, 12).unwrap();
        let mut emails = Vec::new();
        for n in 0..2 {
            let id = introgy::auth::new_object_id();
            let email = format!("bench{n}@example.com");
            state
                .store
                .insert_user(&NewUser {
                    id: id.clone(),
                    email: email.clone(),
                    hashed_password: hash.clone(),
                    display_name: None,
                    battery_level: 70,
                    now: chrono::Utc::now(),
                })
                .await
                .unwrap();
            state.store.mark_verified(&id, chrono::Utc::now()).await.unwrap();
            emails.push(email);
        }
        let client = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
        let token: String = client
            .post(format!("{base}/auth/login"))
            .json(&json!({"email": emails[1], "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let secs = seconds();

        // 2. Login throughput.
        let login = {
            let (client, base, email) = (client.clone(), base.clone(), emails[0].clone());
            Arc::new(move || {
                client
                    .post(format!("{base}/auth/login"))
                    .json(&json!({"email": email, "password": PASSWORD}))
            }) as Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>
        };
        let logins = drive(8, secs, Arc::clone(&login)).await;
        let rate = logins.len() as f64 / secs;
        println!("login, 8 clients: {rate:.1} logins/s = {:.0}% of the bound", rate / bound * 100.0);

        // 3. Reads alone, then during a login flood.
        let read = {
            let (client, base, token) = (client.clone(), base.clone(), token.clone());
            Arc::new(move || client.get(format!("{base}/users/me")).bearer_auth(&token))
                as Arc<dyn Fn() -> reqwest::RequestBuilder + Send + Sync>
        };
        let mut alone = drive(4, secs, Arc::clone(&read)).await;
        let (flood, mut during) = tokio::join!(drive(16, secs, login), drive(4, secs, read));
        let (p50_alone, p99_alone) = (percentile(&mut alone, 0.5), percentile(&mut alone, 0.99));
        let (p50_during, p99_during) = (percentile(&mut during, 0.5), percentile(&mut during, 0.99));
        println!(
            "GET /users/me, 4 clients, alone:          p50 {:>8.2} ms  p99 {:>8.2} ms",
            p50_alone.as_secs_f64() * 1e3,
            p99_alone.as_secs_f64() * 1e3
        );
        println!(
            "GET /users/me, 4 clients, during a flood: p50 {:>8.2} ms  p99 {:>8.2} ms  ({:.1}x p99; {} logins in the flood)",
            p50_during.as_secs_f64() * 1e3,
            p99_during.as_secs_f64() * 1e3,
            p99_during.as_secs_f64() / p99_alone.as_secs_f64(),
            flood.len()
        );
    });
}
