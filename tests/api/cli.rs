//! The binary itself: help, configuration refusals, `check`.

use std::process::Command;

fn introgy() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_introgy"));
    // A clean environment: only what each test sets.
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

/// The child's exit status, or `None` (child killed) if it still runs after `limit`.
fn exit_within(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn help_lists_every_setting_with_its_environment_variable() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["check", "--help"],
    ] {
        let output = introgy()
            .args(&args)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}");
        let help = String::from_utf8(output.stdout).unwrap();
        for variable in [
            "ENVIRONMENT",
            "MONGO_URI",
            "JWT_SECRET_KEY",
            "SMTP_HOST",
            "SMTP_PORT",
            "SMTP_USER",
            "SMTP_PASSWORD",
            "SENDGRID_API_KEY",
            "FROM_EMAIL",
            "EMAIL_FROM_NAME",
            "FRONTEND_URL",
            "HOST",
            "PORT",
            "DATABASE_URL",
            "MONGO_DB",
            "SMTP_TLS",
            "EMAIL_TRANSPORT",
            "SENDGRID_API_URL",
            "CORS_ORIGINS",
            "ACCESS_TOKEN_TTL_SECONDS",
            "REFRESH_TOKEN_TTL_SECONDS",
            "OTP_TTL_SECONDS",
            "TRUSTED_PROXIES",
        ] {
            assert!(
                help.contains(&format!("env: {variable}")),
                "{args:?} does not list {variable}"
            );
        }
    }
}

#[test]
fn production_refuses_to_start_without_a_secret_or_a_mail_transport() {
    let dir = tempfile::tempdir().unwrap();
    // `openssl rand -hex 64`.
    let good = "9c41e07b3fd2a8650e1b7c94d3af2860c5e97b1d4a03f6e28b5c1d7e9a4f0b36\
                e2d84a1c7f5b3906d8e2a4c1f7b09e35a6d2c8f14b7e0a93d5c6f1e2b8a7d403";
    let k64 = "k".repeat(64);
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("SMTP_HOST", "mail.example.com")], "JWT_SECRET_KEY"),
        (
            &[
                ("SMTP_HOST", "mail.example.com"),
                ("JWT_SECRET_KEY", "short"),
            ],
            "at least 64",
        ),
        (
            &[("SMTP_HOST", "mail.example.com"), ("JWT_SECRET_KEY", &k64)],
            "too predictable",
        ),
        (&[("JWT_SECRET_KEY", good)], "mail transport"),
    ];
    for (env, expected) in cases {
        // Bounded: a server that wrongly accepts the settings is stopped, not waited for.
        let mut child = introgy()
            .env("ENVIRONMENT", "production")
            .env("PORT", "0")
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = exit_within(&mut child, std::time::Duration::from_secs(20));
        assert!(status.is_some_and(|s| !s.success()), "started with {env:?}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
        for (_, value) in env {
            if value.len() > 8 && !value.contains('.') {
                assert!(!stderr.contains(value), "secret printed");
            }
        }
    }
}

#[test]
fn check_reports_store_and_transport_and_succeeds_on_a_fresh_machine() {
    let dir = tempfile::tempdir().unwrap();
    let output = introgy()
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("store:          ok"), "{stdout}");
    assert!(
        stdout.contains("several writes: one SQLite transaction each"),
        "{stdout}"
    );
    assert!(stdout.contains("mail transport: log"), "{stdout}");
}

#[test]
fn check_fails_clearly_when_smtp_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let output = introgy()
        .args([
            "check",
            "--smtp-host",
            "127.0.0.1",
            "--smtp-port",
            "1",
            "--smtp-tls",
            "none",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("mail:           FAILED"), "{stdout}");
}

#[test]
fn env_files_are_read_and_real_environment_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Mongo.env"),
        "DATABASE_URL=sqlite:from-file.db\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("Email.env"),
        "FROM_EMAIL=file@example.com\nSMTP_PORT=2525\n",
    )
    .unwrap();
    let output = introgy()
        .arg("check")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("sqlite:from-file.db"), "{stdout}");
    let output = introgy()
        .arg("check")
        .env("DATABASE_URL", "sqlite:from-env.db")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("sqlite:from-env.db"), "{stdout}");
}

#[test]
fn mail_preview_writes_every_template_as_html_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("preview");
    let output = introgy()
        .args(["mail", "preview", "--out"])
        .arg(&out)
        .args(["--frontend-url", "https://staging.introgy.ai"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in [
        "verification_code",
        "verification_code_again",
        "reset_code",
        "signup_attempt",
        "signup_incomplete",
        "password_changed",
        "password_updated",
        "low_battery",
        "weekly_summary",
        "email_change_code",
        "email_change_taken",
        "email_changed",
    ] {
        let html = std::fs::read_to_string(out.join(format!("{name}.html"))).unwrap();
        let text = std::fs::read_to_string(out.join(format!("{name}.txt"))).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"), "{name}.html");
        assert!(text.contains("https://staging.introgy.ai"), "{name}.txt");
    }
    let code_mail = std::fs::read_to_string(out.join("verification_code.txt")).unwrap();
    assert!(code_mail.contains("048213") && code_mail.contains("10 minutes"));
    // The summary's chart is written beside its page, which shows it.
    let chart = std::fs::read(out.join("weekly_summary-2026-W48.png")).unwrap();
    assert!(chart.starts_with(b"\x89PNG"));
    let summary = std::fs::read_to_string(out.join("weekly_summary.html")).unwrap();
    assert!(
        summary.contains("src=\"weekly_summary-2026-W48.png\""),
        "{summary}"
    );
    let low = std::fs::read_to_string(out.join("low_battery.txt")).unwrap();
    assert!(
        low.contains("https://staging.introgy.ai/api/unsubscribe?token="),
        "{low}"
    );
}

#[test]
fn sigterm_stops_the_server_gracefully() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = introgy()
        .args([
            "serve",
            "--port",
            "0",
            "--bcrypt-cost",
            "4",
            "--log-format",
            "json",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log on a thread; wait for the server to say it listens.
    let (lines, received) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("introgy listening")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        log.push(
            received
                .recv_timeout(left)
                .expect("the server did not start"),
        );
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = exit_within(&mut child, std::time::Duration::from_secs(20))
        .expect("the server did not stop on SIGTERM");
    reader.join().unwrap();
    log.extend(received.try_iter());
    assert!(exit.success(), "exit status {exit:?}; log: {log:?}");
    assert!(log.iter().any(|l| l.contains("introgy stopped")), "{log:?}");
    // JSON logs on request: every line parses.
    assert!(
        log.iter()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{log:?}"
    );
}

/// Runs `introgy smoke` with `args` and extra environment, off the async workers.
async fn smoke(args: Vec<String>, env: Vec<(String, String)>) -> (bool, String) {
    let output = tokio::task::spawn_blocking(move || {
        introgy()
            .arg("smoke")
            .args(args)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.success(), format!("{stdout}\n{stderr}"))
}

/// The settings that name the app's store, as the server's env file would.
fn store_env(app: &crate::helpers::TestApp) -> Vec<(String, String)> {
    let url = match std::env::var("INTROGY_TEST_MONGO_URL") {
        Ok(url) if !url.is_empty() => format!(
            "{}/{}",
            url.trim_end_matches('/'),
            crate::helpers::mongo_db_name_for(app.dir.path())
        ),
        _ => format!("sqlite:{}", app.db_path.display()),
    };
    vec![("DATABASE_URL".to_owned(), url)]
}

#[tokio::test]
async fn smoke_drives_a_live_deployment_end_to_end_and_creates_no_account() {
    let app = crate::helpers::spawn_app().await;
    let user = app.signup().await;
    let users_before = app.count("users").await;
    let (ok, output) = smoke(
        vec![
            format!("{}/api", app.address),
            "--email".into(),
            user.email.clone(),
            "--password".into(),
            user.password.clone(),
        ],
        vec![],
    )
    .await;
    assert!(ok, "{output}");
    for step in [
        "health",
        "docs (Swagger UI)",
        "register (test account)",
        "login",
        "read battery",
        "history shows it",
        "logout",
    ] {
        assert!(
            output.contains(&format!("ok    {step}")),
            "{step} missing:\n{output}"
        );
    }
    assert!(!output.contains(&user.password), "the password was printed");
    assert_eq!(
        app.count("users").await,
        users_before,
        "smoke left an account"
    );
    // The session smoke opened is closed again; the user's own token still works.
    assert_eq!(
        app.verify_token(&user.access_token).await.status(),
        reqwest::StatusCode::OK
    );
}

#[tokio::test]
async fn smoke_with_the_store_settings_deletes_the_account_it_registers() {
    let app = crate::helpers::spawn_app().await;
    app.signup().await;
    let users_before = app.count("users").await;
    // `host:port` without a scheme is accepted.
    let base = app.address.trim_start_matches("http://").to_owned();
    let (ok, output) = smoke(vec![base], store_env(&app)).await;
    assert!(ok, "{output}");
    for step in ["register", "login (unverified)", "delete the smoke account"] {
        assert!(
            output.contains(&format!("ok    {step}")),
            "{step} missing:\n{output}"
        );
    }
    assert_eq!(
        app.count("users").await,
        users_before,
        "smoke left an account"
    );
}

#[tokio::test]
async fn smoke_without_credentials_or_store_registers_nothing() {
    let app = crate::helpers::spawn_app().await;
    let users_before = app.count("users").await;
    let (ok, output) = smoke(vec![app.address.clone()], vec![]).await;
    assert!(ok, "{output}");
    assert!(output.contains("skip  register"), "{output}");
    assert!(output.contains("ok    login (unknown address)"), "{output}");
    assert_eq!(app.count("users").await, users_before);
}

#[test]
fn smoke_stops_with_one_line_when_the_deployment_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = introgy()
        .args([
            "smoke",
            &format!("127.0.0.1:{port}"),
            "--timeout-seconds",
            "2",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let failures: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failures.len(), 1, "{stdout}");
    assert!(
        failures[0].starts_with("FAIL  health") && failures[0].contains("cannot reach"),
        "{stdout}"
    );
    assert!(!stdout.contains("relative URL"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unreachable"), "{stderr}");
}
