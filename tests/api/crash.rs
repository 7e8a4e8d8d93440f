//! Crash safety, on the suite's store: the binary under write load is killed with
//! SIGKILL at a random moment, several rounds, and restarted each time. Afterwards every
//! acknowledged record is in the history exactly once (no record at all appears twice),
//! and the history is one unbroken chain of levels ending at the current level: the
//! level is the replay of the history. Bounded: about half a minute per store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{expected_store, extract_code, mongo_db_name_for, BUILD_LOCK, SECRET};
use crate::process::Process;

const ROUNDS: usize = 6;
const WRITERS: usize = 6;

/// Starts `introgy serve` on `database_url` (development, log mail transport, JSON logs).
async fn start(dir: &std::path::Path, database_url: &str) -> (Process, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_introgy"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir)
        .args([
            "serve",
            "--port",
            "0",
            "--bcrypt-cost",
            "4",
            "--log-format",
            "json",
        ])
        .args(["--email-transport", "log", "--jwt-secret-key", SECRET])
        .args(["--auth-rate-limit-per-minute", "1000000"])
        .args(["--database-url", database_url]);
    // One app at a time creates MongoDB indexes (SecantusDB and concurrent DDL).
    let _guard = BUILD_LOCK.lock().await;
    let mut server = Process::spawn(command);
    let address = tokio::task::block_in_place(|| server.listening_address("introgy listening"));
    (server, format!("http://{address}"))
}

/// Registers and verifies an account, reading the code from the log transport.
async fn signup(server: &mut Process, base: &str, client: &reqwest::Client) -> String {
    let email = "crash@example.com";
    let response = client
        .post(format!("{base}/auth/register"))
        .json(&json!({"email": email, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let line = tokio::task::block_in_place(|| {
        server.wait_for("DEVELOPMENT MAIL TRANSPORT", Duration::from_secs(20))
    });
    let logged: Value = serde_json::from_str(&line).unwrap();
    let code = extract_code(logged["fields"]["message"].as_str().unwrap());
    let verified: Value = client
        .post(format!("{base}/auth/verify-otp"))
        .json(&json!({"email": email, "code": code}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    verified["access_token"].as_str().unwrap().to_owned()
}

/// The JSON body of an authenticated GET of `url`.
async fn get_json(client: &reqwest::Client, url: &str, token: &str) -> Value {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn record_body(name: &str, n: usize, when: &str) -> Value {
    let kind = if n % 3 == 0 { "recharge" } else { "depletion" };
    json!({"type": kind, "name": name, "energy_impact": 1 + n % 9, "occurred_at": when})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_records_survive_kill_9_exactly_once_and_the_level_is_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = match expected_store() {
        "mongodb" => format!(
            "{}/{}",
            std::env::var("INTROGY_TEST_MONGO_URL")
                .unwrap()
                .trim_end_matches('/'),
            mongo_db_name_for(dir.path())
        ),
        _ => format!("sqlite:{}", dir.path().join("introgy.db").display()),
    };
    let client = reqwest::Client::new();
    // Every record occurred at one instant, so the timeline lists them in acceptance
    // order (newest first) and the chain of levels can be followed.
    let when = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let (mut server, mut base) = start(dir.path(), &database_url).await;
    let token = signup(&mut server, &base, &client).await;

    for round in 0..ROUNDS {
        if round > 0 {
            (server, base) = start(dir.path(), &database_url).await;
        }
        let dead = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (client, base, token, when) =
                    (client.clone(), base.clone(), token.clone(), when.clone());
                let (acknowledged, dead) = (Arc::clone(&acknowledged), Arc::clone(&dead));
                tokio::spawn(async move {
                    for n in 0.. {
                        let name = format!("round-{round}-writer-{w}-record-{n}");
                        let sent = client
                            .post(format!("{base}/social-battery/me/record"))
                            .bearer_auth(&token)
                            .header("Idempotency-Key", &name)
                            .json(&record_body(&name, n, &when))
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await;
                        match sent {
                            Ok(response) if response.status() == StatusCode::CREATED => {
                                acknowledged.lock().unwrap().push(name)
                            }
                            Ok(response) => {
                                let status = response.status();
                                assert!(
                                    dead.load(Ordering::SeqCst) && status.is_server_error(),
                                    "{name}: {status} {}",
                                    response.text().await.unwrap_or_default()
                                )
                            }
                            // The server is gone.
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        // The load is running once a few records of this round are acknowledged (polled,
        // so a slow machine only takes longer); the kill then comes at a random moment of
        // it: that is the point of the test.
        let start_count = acknowledged.lock().unwrap().len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while acknowledged.lock().unwrap().len() < start_count + WRITERS {
            if writers.iter().any(|writer| writer.is_finished()) {
                break; // A writer failed: joining it below reports why.
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no load in round {round}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let load = Duration::from_millis(rand::thread_rng().gen_range(0..1000));
        tokio::time::sleep(load).await;
        dead.store(true, Ordering::SeqCst);
        server.signal_group(libc::SIGKILL);
        tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(10)))
            .expect("the server survived SIGKILL");
        for writer in writers {
            tokio::time::timeout(Duration::from_secs(20), writer)
                .await
                .expect("a writer hung after the kill")
                .unwrap();
        }
    }

    // Restart once more; one more record (on MongoDB it also rolls forward a user whose
    // writer was killed between inserting its event and moving the user).
    let (_server, base) = start(dir.path(), &database_url).await;
    let settle = client
        .post(format!("{base}/social-battery/me/record"))
        .bearer_auth(&token)
        .json(&record_body("settle", 1, &when))
        .send()
        .await
        .unwrap();
    assert_eq!(settle.status(), StatusCode::CREATED);
    let mut items: Vec<Value> = Vec::new();
    let mut query = "?limit=200".to_owned();
    loop {
        let page: Value = get_json(
            &client,
            &format!("{base}/social-battery/me/activity{query}"),
            &token,
        )
        .await;
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=200&cursor={cursor}"),
            None => break,
        }
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    for item in &items {
        *seen.entry(item["name"].as_str().unwrap()).or_default() += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "a record is in the history twice: {:?}",
        seen.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    for name in &acknowledged {
        assert_eq!(seen.get(name.as_str()), Some(&1), "{name} was acknowledged");
    }
    // Newest first, one unbroken chain of levels from the initial 70 ...
    for pair in items.windows(2) {
        assert_eq!(
            pair[0]["level_before"], pair[1]["level_after"],
            "{} / {}",
            pair[0], pair[1]
        );
    }
    assert_eq!(items.last().unwrap()["level_before"], 70);
    for item in &items {
        let (before, impact) = (
            item["level_before"].as_i64().unwrap(),
            item["energy_impact"].as_i64().unwrap(),
        );
        let expected = match item["type"].as_str().unwrap() {
            "recharge" => (before + impact).min(100),
            _ => (before - impact).max(0),
        };
        assert_eq!(item["level_after"].as_i64().unwrap(), expected, "{item}");
    }
    // ... to the level the service reports.
    let battery: Value = get_json(&client, &format!("{base}/social-battery/me"), &token).await;
    assert_eq!(battery["level"], items[0]["level_after"]);
    // The insights buckets hold every record once, with the levels of the history: its
    // closing level is the newest record's (all occurred at one instant).
    let insights: Value = get_json(
        &client,
        &format!("{base}/social-battery/me/insights?period=month"),
        &token,
    )
    .await;
    let delta = |item: &Value| {
        item["level_after"].as_i64().unwrap() - item["level_before"].as_i64().unwrap()
    };
    let current = &insights["current"];
    assert_eq!(current["count"], items.len(), "{current}");
    let drained: i64 = items.iter().map(|i| (-delta(i)).max(0)).sum();
    let recharged: i64 = items.iter().map(|i| delta(i).max(0)).sum();
    assert_eq!(
        (current["drained"].as_i64(), current["recharged"].as_i64()),
        (Some(drained), Some(recharged))
    );
    let day = when[..10].to_owned();
    let day = insights["days"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["date"] == day.as_str())
        .unwrap();
    assert_eq!(day["closing_level"], items[0]["level_after"], "{day}");
}
