//! The SMTP transport against a real SMTP server process (aiosmtpd) over TCP.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{extract_code, unique_email, PASSWORD};

/// The Python that has aiosmtpd: `INTROGY_TEST_PYTHON`, else the project's `.venv`.
fn python() -> PathBuf {
    if let Ok(path) = std::env::var("INTROGY_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "the SMTP test needs aiosmtpd: run the README's test command (scripts/test), which \
         creates .venv, or set INTROGY_TEST_PYTHON to a Python that has aiosmtpd"
    );
    venv
}

struct SmtpServer {
    child: Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_smtp_server() -> SmtpServer {
    let maildir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(python())
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(maildir.path().join("Maildir"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aiosmtpd");
    let server = SmtpServer {
        child,
        port,
        maildir,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "aiosmtpd did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// Every message file the Maildir holds.
fn delivered(server: &SmtpServer) -> Vec<String> {
    let new = server.maildir.path().join("Maildir/new");
    std::fs::read_dir(new)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn verification_mail_travels_over_smtp_and_its_code_works() {
    let server = start_smtp_server().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("introgy.db").display());
    let port = server.port.to_string();
    let args = [
        "introgy",
        "--port",
        "0",
        "--database-url",
        &db,
        "--bcrypt-cost",
        "4",
        "--jwt-secret-key",
        crate::helpers::SECRET,
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        &port,
        "--smtp-tls",
        "none",
        "--from-email",
        "hello@introgy.ai",
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
    assert_eq!(config.mail.transport.name(), "smtp");
    let app = introgy::startup::Application::build(config).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    tokio::spawn(app.run_until(std::future::pending()));
    let client = reqwest::Client::new();

    let email = unique_email();
    let response = client
        .post(format!("{address}/auth/register"))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(state.background.wait_idle(Duration::from_secs(20)).await, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while delivered(&server).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no mail reached the SMTP server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let messages = delivered(&server);
    assert_eq!(messages.len(), 1, "one mail delivered");
    let raw = &messages[0];
    assert!(raw.contains(&format!("To: {email}")), "{raw}");
    assert!(raw.contains("From: Introgy <hello@introgy.ai>"), "{raw}");
    assert!(raw.contains("multipart/alternative"), "HTML and text parts");
    assert!(raw.contains("Message-ID: <"), "{raw}");
    let text_start = raw
        .find("Your Introgy verification code is:")
        .expect("text part");
    let code = extract_code(&raw[text_start..]);

    let response = client
        .post(format!("{address}/auth/verify-otp"))
        .json(&serde_json::json!({"email": email, "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
