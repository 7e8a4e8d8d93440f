//! The README's production example, taken from the README (not re-typed) and run with
//! bash as an operator would: `serve` must come up with the production settings the
//! example writes, not with the development defaults.

use std::process::Command;
use std::time::Duration;

use crate::{free_port, introgy_bin, python, repo, wait_for_port, Process};

/// The fenced `sh` block that follows the `production-example` marker.
fn production_example() -> String {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let after = readme
        .split("<!-- production-example")
        .nth(1)
        .expect("the README marks its production example");
    let block = after
        .split("```sh\n")
        .nth(1)
        .expect("a ```sh block after the marker");
    block.split("\n```").next().unwrap().to_owned()
}

#[tokio::test]
async fn the_readmes_production_example_serves_with_the_production_settings() {
    let script = production_example();
    assert!(script.contains("--env-file"), "{script}");

    // A plain SMTP relay for `check` to reach (the example's smtp.example.com is not).
    let smtp_port = free_port();
    let mut smtp = Command::new(python());
    smtp.args([
        "-m",
        "aiosmtpd",
        "-n",
        "-l",
        &format!("127.0.0.1:{smtp_port}"),
    ])
    .args(["-c", "aiosmtpd.handlers.Sink"]);
    let _smtp = Process::spawn(smtp);
    wait_for_port(smtp_port, Duration::from_secs(15));

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("introgy.db");
    let bin_dir = std::path::Path::new(introgy_bin()).parent().unwrap();
    let mut command = Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        // What differs on this machine: real environment variables win over the file.
        .env("DATABASE_URL", format!("sqlite:{}", db.display()))
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("SMTP_HOST", "127.0.0.1")
        .env("SMTP_PORT", smtp_port.to_string())
        .env("SMTP_TLS", "none")
        .env("SMTP_USER", "")
        .env("SMTP_PASSWORD", "");
    let mut server = Process::spawn(command);
    server.wait_for("all checks passed", Duration::from_secs(30));
    let address = server.listening_address("introgy listening");

    // `serve` runs in production with the file's settings.
    let listening: serde_json::Value =
        serde_json::from_str(&server.wait_for("introgy listening", Duration::ZERO)).unwrap();
    assert_eq!(
        listening["fields"]["environment"], "production",
        "{listening}"
    );
    assert_eq!(listening["fields"]["mail_transport"], "smtp", "{listening}");
    let root: serde_json::Value = reqwest::get(format!("http://{address}/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root["environment"], "production");
    let health = reqwest::get(format!("http://{address}/health"))
        .await
        .unwrap();
    assert!(
        health.headers().contains_key("strict-transport-security"),
        "production sends HSTS"
    );
    // The file's JWT secret is used: no development secret was generated.
    assert!(!dir.path().join("introgy-jwt-secret").exists());
    assert!(db.exists(), "the store is the one DATABASE_URL names");
    // The settings file holds secrets: private to its owner.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("introgy.env"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        mode & 0o077,
        0,
        "introgy.env is readable by others: {mode:o}"
    );
}
