//! The running binary as a Prometheus scrape and a log reader see it: `/metrics` on its
//! own address, parsed by the Prometheus client's reference parsers, moves with requests;
//! logs carry no colour codes when redirected, and JSON log fields keep their types.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::{python, repo, serve};

/// Scrapes and parses: (family name → type, samples).
async fn scrape(metrics: &str, openmetrics: bool) -> Value {
    let mut request = reqwest::Client::new().get(format!("http://{metrics}/metrics"));
    if openmetrics {
        request = request.header("accept", "application/openmetrics-text; version=1.0.0");
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let text = response.text().await.unwrap();
    let format = if openmetrics {
        "openmetrics"
    } else {
        "prometheus"
    };
    assert!(
        content_type.starts_with(if openmetrics {
            "application/openmetrics-text"
        } else {
            "text/plain; version=0.0.4"
        }),
        "{content_type}"
    );
    let mut parser = Command::new(python())
        .arg(repo("tests/fixtures/parse_metrics.py"))
        .arg(format)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = parser.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the {format} parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels` (0 when absent).
fn value(parsed: &Value, name: &str, labels: &Value) -> f64 {
    let wanted = labels.as_object().unwrap();
    parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s[0] == name)
        .filter(|s| wanted.iter().all(|(k, v)| &s[1][k] == v))
        .map(|s| s[2].as_f64().unwrap())
        .sum()
}

#[tokio::test]
async fn metrics_on_their_own_address_parse_and_move_with_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(
        dir.path(),
        &[
            "--port",
            "0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--bcrypt-cost",
            "4",
        ],
        &[],
    );
    let address = server.listening_address("introgy listening");
    let metrics = server.listening_address("metrics listening");
    let client = reqwest::Client::new();
    let failed_login = || {
        client
            .post(format!("http://{address}/auth/login"))
            .json(&json!({"email": "nobody@example.com", "password": "wrong password"}))
            .send()
    };

    let before = scrape(&metrics, false).await;
    assert_eq!(before["families"]["introgy_outbox_pending"], "gauge");
    let health = json!({"route": "/health", "method": "GET", "status": "200"});
    let failed = json!({"outcome": "invalid_credentials"});
    let count = "introgy_http_request_duration_seconds_count";
    assert_eq!(value(&before, count, &health), 0.0);
    assert_eq!(value(&before, "introgy_logins_total", &failed), 0.0);

    assert_eq!(
        client
            .get(format!("http://{address}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(failed_login().await.unwrap().status(), 401);
    let after = scrape(&metrics, false).await;
    assert_eq!(
        after["families"]["introgy_http_request_duration_seconds"],
        "histogram"
    );
    assert_eq!(after["families"]["introgy_logins"], "counter");
    assert_eq!(value(&after, count, &health), 1.0);
    assert_eq!(value(&after, "introgy_logins_total", &failed), 1.0);
    assert_eq!(
        value(
            &after,
            count,
            &json!({"route": "/auth/login", "method": "POST", "status": "401"})
        ),
        1.0
    );
    // The store series name the operation the choke point ran.
    assert!(
        value(
            &after,
            "introgy_store_operation_duration_seconds_count",
            &json!({"backend": "sqlite", "operation": "user_by_email"})
        ) >= 1.0,
        "{after}"
    );
    assert!(
        value(
            &after,
            "introgy_build_info",
            &json!({"version": env!("CARGO_PKG_VERSION"), "commit": introgy::COMMIT})
        ) == 1.0
    );

    // OpenMetrics, for scrapers that ask for it, passes the strict parser too.
    assert_eq!(failed_login().await.unwrap().status(), 401);
    let open = scrape(&metrics, true).await;
    assert_eq!(value(&open, "introgy_logins_total", &failed), 2.0);
    assert_eq!(open["families"]["introgy_build"], "info");

    // The main port does not serve metrics without a token; the metrics port serves
    // nothing else.
    let main = client
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(main.status(), 404);
    let other = client
        .get(format!("http://{metrics}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[test]
fn redirected_text_logs_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(
        dir.path(),
        &["--port", "0", "--log-format", "text"],
        &[("LOG_FORMAT", "text")],
    );
    server.wait_for("introgy listening", Duration::from_secs(30));
    let log = server.drain().join("\n");
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a redirected log:\n{log}"
    );
}

#[tokio::test]
async fn json_logs_keep_numbers_as_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &["--port", "0"], &[]);
    let address = server.listening_address("introgy listening");
    reqwest::get(format!("http://{address}/health"))
        .await
        .unwrap();
    let line = server.wait_for("request finished", Duration::from_secs(10));
    let event: Value = serde_json::from_str(&line).unwrap();
    assert!(event["fields"]["status"].is_u64(), "{line}");
    assert!(event["fields"]["latency_ms"].is_f64(), "{line}");
    assert_eq!(event["span"]["route"], "/health", "{line}");
    assert!(event["span"]["status"].is_u64(), "{line}");
    assert!(!line.contains('\u{1b}'));
}
