//! Memory never grows with attacker-chosen input (SECURITY.md 32), measured on the real
//! binary in its own process, so that the resident memory is the server's alone. It runs
//! on SQLite whatever store the suite runs against: budgets live in the process only
//! there (on MongoDB they are documents of `limits`, bounded by their TTL), and 1,100
//! logins at three budget round trips each are minutes on a loaded test server.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Resident memory of a process, in KiB (`VmRSS` in /proc).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .expect("VmRSS of the server")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `count` failed logins, 16 at a time, each with its own ~60 KB "email".
async fn oversized_logins(client: &reqwest::Client, base: &str, from: usize, count: usize) {
    let padding = "x".repeat(60_000);
    let mut next = from;
    while next < from + count {
        let batch: Vec<_> = (next..(next + 16).min(from + count))
            .map(|n| {
                let body = format!(
                    r#"{{"email":"{n}{padding}@example.com","password":"not the password"}}"#
                );
                client
                    .post(format!("{base}/auth/login"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
            })
            .collect();
        for response in futures::future::join_all(batch).await {
            let response = response.expect("login answered");
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            assert_eq!(status, 401, "{body}");
        }
        next += 16;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_login_inputs_do_not_grow_the_servers_memory() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let database_url = format!("sqlite:{}", dir.path().join("introgy.db").display());
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_introgy"))
            .env_clear()
            .args(["serve", "--port", &port.to_string(), "--bcrypt-cost", "4"])
            .args(["--auth-rate-limit-per-minute", "1000000"])
            .args(["--database-url", &database_url])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start introgy"),
    );
    let pid = server.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{base}/health"))
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
    // Warm up the allocator and the connection pool first.
    oversized_logins(&client, &base, 0, 100).await;
    let before = rss_kib(pid);
    oversized_logins(&client, &base, 100, 1_000).await;
    let after = rss_kib(pid);
    // Keeping each raw input would cost 1,000 × 60 KB ≈ 58 MiB; hashed keys cost
    // about 200 bytes each.
    let grown_mib = after.saturating_sub(before) as f64 / 1024.0;
    assert!(
        grown_mib < 16.0,
        "resident memory grew by {grown_mib:.1} MiB ({before} → {after} KiB) over 1,000 oversized logins"
    );
}
