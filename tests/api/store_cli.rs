//! The binary and its database: `init` is the only way a production database comes to
//! be, `check` changes nothing, `migrate` refuses a missing source, production refuses to
//! start on a missing database, a clean stop leaves a complete `.db`, and a deleted
//! database file is said loudly in the log.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::process::Process;

/// `openssl rand -hex 64`.
const GOOD_SECRET: &str = "9c41e07b3fd2a8650e1b7c94d3af2860c5e97b1d4a03f6e28b5c1d7e9a4f0b36\
                           e2d84a1c7f5b3906d8e2a4c1f7b09e35a6d2c8f14b7e0a93d5c6f1e2b8a7d403";

fn introgy(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_introgy"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir);
    command
}

/// Settings production accepts (mail to a relay that is not there: `check` reports it).
fn production<'c>(command: &'c mut Command, db: &Path) -> &'c mut Command {
    command
        .env("ENVIRONMENT", "production")
        .env("JWT_SECRET_KEY", GOOD_SECRET)
        .env("SMTP_HOST", "127.0.0.1")
        .env("SMTP_PORT", "1")
        .env("SMTP_TLS", "none")
        .env("PORT", "0")
        .env("DATABASE_URL", format!("sqlite:{}", db.display()))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every file in `dir` with its size, sorted.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn check_fails_clearly_on_a_database_in_a_missing_folder_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent/dir/x.db");
    let output = introgy(dir.path())
        .args(["check", "--database-url"])
        .arg(format!("sqlite:{}", missing.display()))
        .output()
        .unwrap();
    let report = text(&output);
    assert!(!output.status.success(), "{report}");
    assert!(
        report.contains("store:          FAILED") && report.contains("does not exist"),
        "{report}"
    );
    assert!(
        !dir.path().join("nonexistent").exists(),
        "check created a folder"
    );
    // And the literal path of the issue.
    let output = introgy(dir.path())
        .args(["check", "--database-url", "sqlite:/nonexistent/dir/x.db"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    assert!(!Path::new("/nonexistent").exists());
}

/// A database at schema version 3, as an older release left it (WAL mode, no -wal file).
fn old_database(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    for sql in [
        include_str!("../../src/store/migrations/0001_accounts.sql"),
        include_str!("../../src/store/migrations/0002_battery.sql"),
        include_str!("../../src/store/migrations/0003_outbox.sql"),
    ] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", 3).unwrap();
}

/// How many migrations the release has after the three of [`old_database`].
fn migrations_after_3() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count()
        - 3
}

#[test]
fn check_reports_a_database_that_needs_migrations_and_migrates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    old_database(&db);
    let before = listing(dir.path());
    let content = std::fs::read(&db).unwrap();
    let output = production(&mut introgy(dir.path()), &db)
        .arg("check")
        .output()
        .unwrap();
    let report = text(&output);
    assert!(
        report.contains("store:          ok (sqlite: schema version 3 of")
            && report.contains(&format!(
                "{} migration(s) will run when `introgy serve` starts",
                migrations_after_3()
            )),
        "{report}"
    );
    assert_eq!(
        listing(dir.path()),
        before,
        "check created or changed files"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        content,
        "check changed the database"
    );
}

#[test]
fn production_refuses_to_start_on_a_missing_database_with_exit_code_2_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/introgy.db");
    std::fs::create_dir(dir.path().join("data")).unwrap();
    // `check` names the way out.
    let output = production(&mut introgy(dir.path()), &db)
        .arg("check")
        .output()
        .unwrap();
    let report = text(&output);
    assert!(
        report.contains("store:          FAILED") && report.contains("introgy init"),
        "{report}"
    );
    // `serve` stops at once, exit code 2 (the unit does not restart on it).
    let mut serve = introgy(dir.path());
    production(&mut serve, &db).arg("serve");
    let mut server = Process::spawn(serve);
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("serve started on a missing database");
    let log = server.drain().join("\n");
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("does not exist") && log.contains("introgy init"),
        "{log}"
    );
    assert!(
        listing(&dir.path().join("data")).is_empty(),
        "files were created"
    );
}

#[cfg(unix)]
#[test]
fn init_creates_a_private_database_once_and_then_production_starts_on_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("introgy.db");
    let output = production(&mut introgy(dir.path()), &db)
        .arg("init")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("created the SQLite database"));
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let file = file.unwrap();
        let mode = file.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?} is {mode:o}", file.file_name());
    }
    let again = production(&mut introgy(dir.path()), &db)
        .arg("init")
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("exists already"), "{}", text(&again));
    let report = text(
        &production(&mut introgy(dir.path()), &db)
            .arg("check")
            .output()
            .unwrap(),
    );
    assert!(
        report.contains("store:          ok (sqlite: schema version"),
        "{report}"
    );
}

#[test]
fn migrate_from_a_missing_source_fails_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let output = introgy(dir.path())
        .args([
            "migrate",
            "--quiet",
            "--from",
            "sqlite:missing.db",
            "--to",
            "sqlite:target.db",
        ])
        .output()
        .unwrap();
    let report = text(&output);
    assert!(!output.status.success(), "{report}");
    assert!(report.contains("does not exist"), "{report}");
    assert!(!report.contains("copied"), "{report}");
    assert!(!dir.path().join("missing.db").exists());
}

/// `introgy serve` in development in `dir`, JSON logs, listening on a free port.
fn serve_dev(dir: &Path) -> (Process, String) {
    let mut command = introgy(dir);
    command.args([
        "serve",
        "--port",
        "0",
        "--bcrypt-cost",
        "4",
        "--log-format",
        "json",
    ]);
    let mut server = Process::spawn(command);
    let address = server.listening_address("introgy listening");
    (server, format!("http://{address}"))
}

#[tokio::test]
async fn a_clean_stop_leaves_a_database_file_that_is_complete_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, base) = serve_dev(dir.path());
    let client = reqwest::Client::new();
    for i in 0..3 {
        let response = client
            .post(format!("{base}/auth/register"))
            .json(&serde_json::json!({"email": format!("stop-{i}@example.com"), "password": "correct horse battery"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    }
    server.signal_group(libc::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the server did not stop on SIGTERM");
    assert!(status.success(), "{}", server.drain().join("\n"));
    // "Stop, copy the .db": the file alone holds everything.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("introgy.db"),
        copy.path().join("introgy.db"),
    )
    .unwrap();
    let conn = rusqlite::Connection::open(copy.path().join("introgy.db")).unwrap();
    let users: i64 = conn
        .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(users, 3);
}

#[tokio::test]
async fn a_deleted_database_file_is_said_loudly_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, base) = serve_dev(dir.path());
    std::fs::remove_file(dir.path().join("introgy.db")).unwrap();
    let (_server, line) = tokio::task::spawn_blocking(move || {
        let line = server.wait_for("THE SQLITE DATABASE FILE", Duration::from_secs(30));
        (server, line)
    })
    .await
    .unwrap();
    assert!(
        line.contains("ERROR") && line.contains("was deleted or moved"),
        "{line}"
    );
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
}
