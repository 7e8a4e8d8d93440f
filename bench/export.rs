//! Export memory: `cargo bench --bench export` (PRODUCT.md §7: "an export's memory costs
//! the same at 1k and at 1M records"; issue 13).
//!
//! For each history size (1,000 and `BENCH_EXPORT_EVENTS`, default 1,000,000) it writes a
//! fresh SQLite file with one verified user and that many interactions (through the
//! store's import, in batches), starts the `introgy` binary on it, logs in, downloads
//! `GET /users/me/export` as JSON and then as CSV (reading the body as it streams,
//! keeping only a byte count), and prints the server's peak resident memory (`VmHWM` in
//! /proc) after login and after each export, with the bytes and time.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use introgy::battery::{BatteryLevel, EnergyImpact, Interaction};
use introgy::store::sqlite::SqliteStore;
use introgy::store::{BatteryEvent, MigrationStore, NewUser, UserStore};

const PASSWORD: &str = "correct horse battery";
const BATCH: usize = 5_000;

fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A database with one verified user (`email`) and `events` interactions.
async fn seed(dir: &std::path::Path, email: &str, events: usize) {
    let store = SqliteStore::open(&dir.join("introgy.db"), Duration::from_secs(120))
        .await
        .expect("open SQLite");
    let now = Utc::now();
    let user_id = introgy::auth::new_object_id();
    store
        .insert_user(&NewUser {
            id: user_id.clone(),
            email: email.to_owned(),
            hashed_password: bcrypt::hash(PASSWORD, 4).unwrap(),
            display_name: Some("Bench".into()),
            battery_level: 70,
            now,
        })
        .await
        .unwrap();
    store.mark_verified(&user_id, now).await.unwrap();
    let level = |n: i64| BatteryLevel::try_from(n).unwrap();
    let mut batch = Vec::with_capacity(BATCH);
    for seq in 1..=events as i64 {
        let before = 20 + seq % 60;
        batch.push(BatteryEvent {
            id: introgy::auth::new_object_id(),
            user_id: user_id.clone(),
            seq,
            interaction: Interaction::Recharge(EnergyImpact::new(1).unwrap()),
            name: Some(format!("quiet walk number {seq}")),
            energy_delta: 1,
            level_before: level(before),
            level_after: level(before + 1),
            duration_minutes: 30,
            occurred_at: now - chrono::Duration::seconds(events as i64 - seq),
            recorded_at: now,
            notes: Some("a bench interaction, with a comma".into()),
            people_count: None,
            interaction_type: None,
        });
        if batch.len() == BATCH {
            store.import_events(&batch).await.unwrap();
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.import_events(&batch).await.unwrap();
    }
    store
        .finish_battery_import(&user_id, 50, events as i64, Some(now))
        .await
        .unwrap();
}

async fn run(runtime_events: usize) {
    let dir = tempfile::tempdir().unwrap();
    let email = "bench@example.com";
    let seeding = Instant::now();
    seed(dir.path(), email, runtime_events).await;
    let seeded = seeding.elapsed();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_introgy"))
        .args(["serve", "--port", &port.to_string()])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start introgy");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "introgy did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let login: serde_json::Value = client
        .post(format!("{base}/auth/login"))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"]
        .as_str()
        .expect("logged in")
        .to_owned();
    println!(
        "{runtime_events} events (seeded in {:.1} s): peak RSS after login {:.1} MiB",
        seeded.as_secs_f64(),
        mib(peak_kib(child.id()))
    );
    for format in ["json", "csv"] {
        let t = Instant::now();
        let mut response = client
            .get(format!("{base}/users/me/export?format={format}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let mut bytes = 0usize;
        while let Some(chunk) = response.chunk().await.unwrap() {
            bytes += chunk.len();
        }
        println!(
            "  {format}: {:.1} MiB in {:.1} s, server peak RSS {:.1} MiB",
            bytes as f64 / 1024.0 / 1024.0,
            t.elapsed().as_secs_f64(),
            mib(peak_kib(child.id()))
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    let big: usize = std::env::var("BENCH_EXPORT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        run(1_000).await;
        run(big).await;
    });
}
