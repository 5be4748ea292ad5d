//! The daemon as the real binary (`kinderwatch run`), its stderr collected line by line, its
//! sd_notify messages on a socket of the test's.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The daemon binary cargo built for this test (examples share `tests/common` without one).
const BIN: Option<&str> = option_env!("CARGO_BIN_EXE_kinderwatch");

pub fn bin() -> &'static str {
    BIN.expect("an integration test, which cargo builds the binary for")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon binary, its stderr collected line by line, its sd_notify messages on a socket.
pub struct RunningDaemon {
    child: Child,
    logs: Arc<Mutex<String>>,
    /// Every sd_notify message with its arrival time (read at once, as systemd does: a socket
    /// left unread would block the daemon's sends).
    notified: Arc<Mutex<Vec<(Instant, String)>>>,
    /// The config file it runs on (rewritten by reload tests).
    pub file: PathBuf,
    _dir: tempfile::TempDir,
}

impl RunningDaemon {
    /// Runs `kinderwatch run` on `config` (`{state}` is replaced by a fresh state directory) with
    /// a 1 s systemd watchdog and `FAILPOINTS=failpoints`.
    pub fn start(config: &str, failpoints: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let file = dir.path().join("kinderwatch.toml");
        std::fs::write(&file, config.replace("{state}", state.to_str().unwrap())).unwrap();
        let socket = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&socket).unwrap();
        let notified = Arc::new(Mutex::new(Vec::new()));
        let sink = notified.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok(n) = notify.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push((Instant::now(), m));
            }
        });
        // WATCHDOG_PID must be the daemon's own pid: the shell execs into it.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "export WATCHDOG_PID=$$; exec {} run --config {}",
                bin(),
                file.display()
            ))
            .env("NOTIFY_SOCKET", &socket)
            .env("WATCHDOG_USEC", "1000000")
            .env("FAILPOINTS", failpoints)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kinderwatch");
        let logs = Arc::new(Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), logs.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("daemon: {line}");
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Self {
            child,
            logs,
            notified,
            file,
            _dir: dir,
        }
    }

    /// Sends the daemon `SIGHUP` (reload the config).
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits for a log line containing every one of `words`; returns it.
    pub fn wait_log(&self, words: &[&str], within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self
                .logs()
                .lines()
                .find(|l| words.iter().all(|w| l.contains(w)))
            {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {words:?} within {within:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sd_notify messages that arrive within the next `window`.
    pub fn notifications(&self, window: Duration) -> Vec<String> {
        let from = Instant::now();
        std::thread::sleep(window);
        self.notified
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= from)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Every sd_notify message so far.
    pub fn all_notifications(&self) -> Vec<String> {
        self.notified
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Waits for the process to end; its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {within:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on a loopback port; (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    match ureq::get(&format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(5))
        .call()
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}
