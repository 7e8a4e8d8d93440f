//! A child process for tests that drive the binary: in its own process group, its
//! standard output and error collected line by line, signalled as a group; SIGTERM,
//! then SIGKILL, when dropped. Shared by `tests/deploy` and `tests/api` (`#[path]`).

use std::io::BufRead;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

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

    /// Waits (bounded) for the process to exit; `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
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
