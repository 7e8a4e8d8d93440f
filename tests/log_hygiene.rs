//! SECURITY.md 24: no secret, token, code or password reaches a log line; emails are
//! masked. A separate test binary, because it installs the global log subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use introgy::config::{Config, ConfigArgs};
use introgy::email::MemoryTransport;
use introgy::startup::Application;
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::test]
async fn a_whole_account_lifecycle_logs_no_secrets() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let dir = tempfile::tempdir().unwrap();
    let secret = "log-test-secret-0123456789abcdef0123456789abcdef0123456789abcdef0123";
    let db = format!("sqlite:{}", dir.path().join("t.db").display());
    let args = [
        "introgy",
        "--port",
        "0",
        "--database-url",
        &db,
        "--bcrypt-cost",
        "4",
        "--jwt-secret-key",
        secret,
    ];
    let config = Config::from_args(Args::try_parse_from(args).unwrap().config).unwrap();
    let mail = Arc::new(MemoryTransport::default());
    let app = Application::build_with_transport(config, mail.clone())
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    tokio::spawn(app.run_until(std::future::pending()));
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| client.post(format!("{base}{path}")).json(&body).send();

    let email = "secret.person@example.com";
    let password = "my very secret passphrase";
    let new_password = "another very secret passphrase";
    post(
        "/auth/register",
        json!({"email": email, "password": password}),
    )
    .await
    .unwrap();
    state.background.wait_idle(Duration::from_secs(5)).await;
    let code = code_of_mail(&mail, 1).await;
    let tokens: Value = post("/auth/verify-otp", json!({"email": email, "code": code}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    post(
        "/auth/login",
        json!({"email": email, "password": "wrong password here"}),
    )
    .await
    .unwrap();
    post(
        "/auth/verify-otp",
        json!({"email": email, "code": "000000"}),
    )
    .await
    .unwrap();
    let rotated: Value = post("/auth/refresh-token", json!({"refresh_token": refresh}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    client
        .get(format!("{base}/auth/verify-token"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    client
        .get(format!("{base}/auth/verify-token"))
        .bearer_auth("forged.token.value")
        .send()
        .await
        .unwrap();
    // Age the budget so a reset code goes out.
    state.clock.advance(chrono::Duration::seconds(120));
    post(
        "/auth/send-verification-code",
        json!({"email": email, "purpose": "reset_password"}),
    )
    .await
    .unwrap();
    state.background.wait_idle(Duration::from_secs(5)).await;
    let reset_code = code_of_mail(&mail, 2).await;
    post(
        "/auth/reset-password",
        json!({"email": email, "code": reset_code, "new_password": new_password}),
    )
    .await
    .unwrap();
    state.background.wait_idle(Duration::from_secs(5)).await;
    // The email change: the new address and its code stay out of the logs too.
    let new_email = "moved.person@example.org";
    let signed_in: Value = post(
        "/auth/login",
        json!({"email": email, "password": new_password}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let access_again = signed_in["access_token"].as_str().unwrap().to_owned();
    let asked = client
        .post(format!("{base}/users/me/email"))
        .bearer_auth(&access_again)
        .json(&json!({"new_email": new_email, "password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), reqwest::StatusCode::ACCEPTED);
    let change_code = code_of_mail_to(&mail, new_email, "email_change_code").await;
    let confirmed = client
        .post(format!("{base}/users/me/email/confirm"))
        .bearer_auth(&access_again)
        .json(&json!({ "code": change_code }))
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), reqwest::StatusCode::OK);
    state.background.wait_idle(Duration::from_secs(5)).await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("request finished"),
        "nothing was logged at all"
    );
    assert!(
        logs.contains("s***@example.com") && logs.contains("m***@example.org"),
        "emails should appear masked"
    );
    let secrets = [
        email.to_owned(),
        password.to_owned(),
        new_password.to_owned(),
        code,
        reset_code,
        access,
        rotated["access_token"].as_str().unwrap().to_owned(),
        rotated["refresh_token"].as_str().unwrap().to_owned(),
        tokens["refresh_token"].as_str().unwrap().to_owned(),
        secret.to_owned(),
        new_email.to_owned(),
        change_code,
        access_again,
    ];
    for secret in secrets {
        assert!(!logs.contains(&secret), "a log line contains {secret:?}");
    }
}

/// The code of the newest mail, once `count` mails have arrived.
async fn code_of_mail(mail: &MemoryTransport, count: usize) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mail.messages().len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "mail {count} did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let last = mail.messages().pop().expect("a mail");
    last.text
        .split_whitespace()
        .find(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
        .expect("a code")
        .to_owned()
}

/// The code in the first mail of `kind` to `to`, once it has arrived.
async fn code_of_mail_to(mail: &MemoryTransport, to: &str, kind: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = mail
            .messages()
            .into_iter()
            .find(|m| m.to == to && m.kind == kind)
        {
            return found
                .text
                .split_whitespace()
                .find(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
                .expect("a code")
                .to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind} mail to {to} arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
