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

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
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

/// A child process (in its own process group) whose standard error is collected line by
/// line; the whole group gets SIGTERM, then SIGKILL, when dropped.
pub struct Process {
    child: Child,
    lines: Receiver<String>,
    pub log: Vec<String>,
}

impl Process {
    pub fn spawn(mut command: Command) -> Self {
        use std::os::unix::process::CommandExt;
        command
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn");
        let (send, lines) = channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let send = send.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    if send.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits (bounded) for a log line containing `needle` and returns it.
    pub fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        if let Some(line) = self.log.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "no log line with {needle:?} within {within:?} (exited: {status:?}); log:\n{}",
                        self.log.join("\n")
                    );
                }
            }
        }
    }

    /// Everything logged so far.
    pub fn drain(&mut self) -> &[String] {
        self.log.extend(self.lines.try_iter());
        &self.log
    }

    /// The `host:port` of a JSON "… listening" log line's `address` field.
    pub fn listening_address(&mut self, message: &str) -> String {
        let line = self.wait_for(message, Duration::from_secs(30));
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        value["fields"]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address in {line}"))
            .to_owned()
    }

    pub fn signal_group(&self, signal: i32) {
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's process group.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

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
