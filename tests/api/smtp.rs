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

impl SmtpServer {
    /// Waits (up to 15 s) until the server accepts connections.
    async fn ready(self) -> Self {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the SMTP test server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self
    }
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
    SmtpServer {
        child,
        port,
        maildir,
    }
    .ready()
    .await
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
    let messages = wait_for_delivery(&server).await;
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

/// A test CA and a `localhost` certificate signed by it (openssl CLI).
fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Introgy Test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
}

/// aiosmtpd with STARTTLS and AUTH required (tests/fixtures/smtp_server.py).
async fn start_tls_smtp_server(certs: &std::path::Path) -> SmtpServer {
    let maildir = tempfile::tempdir().unwrap();
    let port = free_port();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp_server.py");
    let child = Command::new(python())
        .arg(script)
        .args(["--port", &port.to_string(), "--maildir"])
        .arg(maildir.path().join("Maildir"))
        .arg("--cert")
        .arg(certs.join("leaf.pem"))
        .arg("--key")
        .arg(certs.join("leaf.key"))
        .args(["--user", "introgy", "--password", "smtp-secret-password"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the SMTP test server");
    SmtpServer {
        child,
        port,
        maildir,
    }
    .ready()
    .await
}

fn smtp_args<'a>(port: &'a str, ca: &'a str, password: &'a str) -> Vec<&'a str> {
    vec![
        "--email-transport",
        "smtp",
        "--smtp-host",
        "localhost",
        "--smtp-port",
        port,
        "--smtp-tls",
        "starttls",
        "--smtp-user",
        "introgy",
        "--smtp-password",
        password,
        "--smtp-ca-file",
        ca,
        "--mail-timeout-seconds",
        "5",
    ]
}

async fn wait_for_delivery(server: &SmtpServer) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let messages = delivered(server);
        if !messages.is_empty() {
            return messages;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no mail reached the SMTP server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn outbox_counts(app: &crate::helpers::TestApp) -> (u64, u64) {
    let stats = app.state.store.outbox_stats().await.unwrap();
    (stats.pending, stats.dead)
}

#[tokio::test]
async fn mail_goes_over_starttls_with_auth_when_the_ca_is_trusted() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let server = start_tls_smtp_server(certs.path()).await;
    let port = server.port.to_string();
    let ca = certs.path().join("ca.pem").display().to_string();
    let app = crate::helpers::spawn_app_with_configured_mail(&smtp_args(
        &port,
        &ca,
        "smtp-secret-password",
    ))
    .await;
    let email = unique_email();
    app.register(&email, PASSWORD).await;
    let messages = wait_for_delivery(&server).await;
    let raw = &messages[0];
    let start = raw
        .find("Your Introgy verification code is:")
        .expect("text part");
    let code = extract_code(&raw[start..]);
    assert_eq!(app.verify_otp(&email, &code).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_smtp_password_is_a_permanent_failure() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let server = start_tls_smtp_server(certs.path()).await;
    let port = server.port.to_string();
    let ca = certs.path().join("ca.pem").display().to_string();
    let app =
        crate::helpers::spawn_app_with_configured_mail(&smtp_args(&port, &ca, "wrong-password"))
            .await;
    app.register(&unique_email(), PASSWORD).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while outbox_counts(&app).await != (0, 1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox is {:?}",
            outbox_counts(&app).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(delivered(&server).is_empty());
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_the_mail_waits() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let server = start_tls_smtp_server(certs.path()).await;
    let port = server.port.to_string();
    // Trust another CA than the one that signed the server's certificate.
    let other = tempfile::tempdir().unwrap();
    make_certificates(other.path());
    let ca = other.path().join("ca.pem").display().to_string();
    let app = crate::helpers::spawn_app_with_configured_mail(&smtp_args(
        &port,
        &ca,
        "smtp-secret-password",
    ))
    .await;
    app.register(&unique_email(), PASSWORD).await;
    // The first try fails; the mail stays queued for a retry, nothing was delivered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if outbox_counts(&app).await.0 == 1 && app.state.background.pending() == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no mail was queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        delivered(&server).is_empty(),
        "mail went to a server with an untrusted certificate"
    );
    assert_eq!(outbox_counts(&app).await, (1, 0));
}

#[test]
fn check_connects_with_starttls_and_auth() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let server = runtime.block_on(start_tls_smtp_server(certs.path()));
    let port = server.port.to_string();
    let ca = certs.path().join("ca.pem").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let check = |password: &str| {
        Command::new(env!("CARGO_BIN_EXE_introgy"))
            .arg("check")
            .args(smtp_args(&port, &ca, password))
            .current_dir(dir.path())
            .env_clear()
            .output()
            .unwrap()
    };
    let good = check("smtp-secret-password");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
    let bad = check("wrong-password");
    assert!(!bad.status.success());
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert!(stdout.contains("mail:           FAILED"), "{stdout}");
    assert!(
        !stdout.contains("wrong-password"),
        "the password was printed"
    );
}

#[tokio::test]
async fn a_weekly_summary_travels_over_smtp_with_its_inline_chart_and_unsubscribe_headers() {
    let server = start_smtp_server().await;
    let port = server.port.to_string();
    let app = crate::helpers::spawn_app_with_configured_mail(&[
        "--email-transport",
        "smtp",
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        &port,
        "--smtp-tls",
        "none",
        "--from-email",
        "hello@introgy.ai",
        "--public-url",
        "https://api.introgy.app",
    ])
    .await;
    let summary = introgy::cli::mail::samples()
        .into_iter()
        .find(|k| k.name() == "weekly_summary")
        .expect("a sample weekly summary");
    let email = introgy::domain::Email::parse(&unique_email(), "email").unwrap();
    app.state.outbox.enqueue(&email, &summary).await.unwrap();

    let messages = wait_for_delivery(&server).await;
    let raw = &messages[0];
    assert!(
        raw.contains("List-Unsubscribe: <https://api.introgy.app/unsubscribe?token="),
        "{raw}"
    );
    assert!(raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    // alternative(text, related(html, png)): each part after the one before it.
    let order = [
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "Content-ID: <week-chart@introgy>",
    ];
    let mut from = 0;
    for needle in order {
        let at = raw[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} after byte {from} in\n{raw}"));
        from += at + needle.len();
    }
    assert!(raw.contains("image/png"), "{raw}");
    assert!(
        raw.contains("cid:week-chart@introgy"),
        "the HTML shows the chart"
    );
}
