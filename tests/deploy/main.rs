//! The deploy kit as operators run it: `deploy/setup.sh` (under `DESTDIR`), the site
//! behind a real nginx from Debian's package next to the stock `default` site, the
//! systemd unit (`systemd-analyze verify`), the Debian package (built, installed into a
//! scratch root, run, removed), the README's production example run as written, and the
//! running binary's metrics and logs. No root-owned state of the machine is touched.
//!
//! Tools come from the environment `scripts/test` prepares: `INTROGY_TEST_NGINX_ROOT`
//! (nginx and nginx-common extracted from Debian's packages) or an installed nginx,
//! `systemd-analyze`, `dpkg-deb`, `openssl`, and `INTROGY_TEST_PYTHON` (a Python with
//! aiosmtpd and prometheus_client).

mod logs_and_metrics;
mod nginx;
mod package;
mod readme;
mod setup;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn introgy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_introgy")
}

/// A path inside the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The Python with aiosmtpd and prometheus_client.
pub fn python() -> PathBuf {
    if let Ok(path) = std::env::var("INTROGY_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = repo(".venv/bin/python");
    assert!(
        venv.exists(),
        "these tests need .venv (aiosmtpd, prometheus_client): run scripts/test, or set INTROGY_TEST_PYTHON"
    );
    venv
}

/// Runs `deploy/setup.sh` into `root` (DESTDIR) with extra arguments; asserts success.
pub fn setup(root: &Path, server_name: &str) -> String {
    let output = setup_output(root, &["--server-name", server_name]);
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn setup_output(root: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo("deploy/setup.sh"))
        .args(["--binary", introgy_bin()])
        .args(args)
        .env("DESTDIR", root)
        .output()
        .unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[path = "../support/process.rs"]
mod process;
pub use process::Process;

/// The binary serving in `dir` with a clean environment plus `env`; JSON logs.
pub fn serve(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Process {
    let mut command = Command::new(introgy_bin());
    command
        .arg("serve")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .current_dir(dir);
    Process::spawn(command)
}

/// Waits for a TCP port to accept connections (bounded).
pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `systemd-analyze verify` of the unit at `unit` inside `root`, against the host's
/// systemd units (copied into the root, as verify resolves every dependency there).
pub fn verify_unit(root: &Path, unit: &str) {
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("sysinit.target").exists())
        .expect("systemd's units (scripts/test installs systemd when it is missing)");
    let target = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(system_units).unwrap().map(Result::unwrap) {
        let dest = target.join(entry.file_name());
        if !dest.exists() && entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(unit)
        .output()
        .expect("systemd-analyze (scripts/test installs systemd when it is missing)");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "systemd-analyze verify {unit}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
