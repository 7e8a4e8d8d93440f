//! Start-up time and peak memory: `cargo bench --bench memory` (PRODUCT.md §7), and
//! memory under attacker-chosen input (SECURITY.md 32).
//!
//! Starts the release binary on a fresh SQLite file, measures the time until `/health`
//! answers 200, then holds 256 keep-alive connections busy for `BENCH_SECONDS` (default
//! 5) with `/health` and a protected route, and reads the process's peak resident memory
//! (`VmHWM` in /proc) before and after.
//!
//! Then it starts a second server and sends `BENCH_LOGINS` (default 10,000) failed logins,
//! each with its own ~60 KB "email", 16 at a time, and prints the resident memory
//! (`VmRSS`) before and after. That server uses bcrypt cost 4, so the 10,000 dummy
//! verifications take seconds rather than half an hour on two cores: what is measured
//! (what the server keeps per attempt) does not depend on the cost.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn peak_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_introgy"))
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--auth-rate-limit-per-minute",
            "1000000",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start introgy");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::builder().pool_max_idle_per_host(512).build().unwrap();
        loop {
            if let Ok(r) = client.get(format!("{base}/health")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(30), "introgy did not start");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!("start to healthy /health: {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
        let idle = peak_kib(child.id());
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut tasks = Vec::new();
        for n in 0..256 {
            // One client per task: 256 separate connections.
            let client = reqwest::Client::new();
            let base = base.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let request = if n % 2 == 0 {
                        client.get(format!("{base}/health"))
                    } else {
                        client.get(format!("{base}/social-battery/me")).bearer_auth("not.a.token")
                    };
                    if let Ok(response) = request.send().await {
                        let _ = response.bytes().await;
                        done += 1;
                    }
                }
                done
            }));
        }
        let mut requests = 0;
        for task in tasks {
            requests += task.await.unwrap();
        }
        let peak = peak_kib(child.id());
        println!(
            "peak resident memory: {:.1} MiB idle, {:.1} MiB after {requests} requests on 256 connections",
            idle as f64 / 1024.0,
            peak as f64 / 1024.0
        );
    });
    let _ = child.kill();
    let _ = child.wait();
    oversized_logins(&runtime);
}

/// Starts a server on a fresh directory with extra arguments.
fn start(dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_introgy"))
        .args(["serve", "--port", &port.to_string()])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start introgy");
    (child, format!("http://127.0.0.1:{port}"))
}

fn oversized_logins(runtime: &tokio::runtime::Runtime) {
    let attempts: usize = std::env::var("BENCH_LOGINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = start(
        dir.path(),
        &[
            "--bcrypt-cost",
            "4",
            "--auth-rate-limit-per-minute",
            "1000000",
        ],
    );
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let started = Instant::now();
        while !client
            .get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(started.elapsed() < Duration::from_secs(30), "introgy did not start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let padding = "x".repeat(60_000);
        let send = |from: usize, count: usize| {
            let (client, base, padding) = (client.clone(), base.clone(), padding.clone());
            async move {
                let mut refused = 0;
                for start in (from..from + count).step_by(16) {
                    let batch = (start..(start + 16).min(from + count)).map(|n| {
                        client
                            .post(format!("{base}/auth/login"))
                            .header("content-type", "application/json")
                            .body(format!(
                                r#"{{"email":"{n}{padding}@example.com","password":"not the password"}}"#
                            ))
                            .send()
                    });
                    for response in futures::future::join_all(batch).await {
                        if !response.is_ok_and(|r| r.status() == 401) {
                            refused += 1;
                        }
                    }
                }
                refused
            }
        };
        // Warm up the allocator and the connections.
        send(0, 200).await;
        let before = status_kib(child.id(), "VmRSS:");
        let started = Instant::now();
        let refused = send(200, attempts).await;
        let after = status_kib(child.id(), "VmRSS:");
        println!(
            "resident memory: {:.1} MiB before, {:.1} MiB after {attempts} failed logins with ~60 KB emails ({:.1} s, {refused} not answered 401)",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            started.elapsed().as_secs_f64()
        );
    });
    let _ = child.kill();
    let _ = child.wait();
}
