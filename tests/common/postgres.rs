//! A real PostgreSQL server (Debian's `postgresql`) in a temp dir on a free loopback port; as
//! root it runs as the `postgres` user (the server refuses to run as root).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    /// Flush to disk on commit as a production server does (the tests leave it off).
    fsync: bool,
}

fn bindir() -> PathBuf {
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed; run scripts/setup.sh")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no /usr/lib/postgresql/<version>/bin/initdb")
}

fn as_server_user(bin: PathBuf) -> Command {
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with_fsync(false)
    }

    /// With `fsync` on (the load benchmark: commits as costly as on a real server).
    pub fn start_with_fsync(fsync: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = bindir();
        if unsafe { libc::geteuid() } == 0 {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of the PostgreSQL test dir failed");
        }
        let data = dir.path().join("data");
        let out = as_server_user(bin.join("initdb"))
            .args([
                "--no-sync",
                "-A",
                "trust",
                "-U",
                "center",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut pg = Self {
            child: None,
            port,
            dir,
            bin,
            fsync,
        };
        pg.start_server();
        pg
    }

    fn start_server(&mut self) {
        let data = self.dir.path().join("data");
        let child = as_server_user(self.bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                if self.fsync { "fsync=on" } else { "fsync=off" },
                "-c",
                "max_connections=200",
            ])
            .arg("-k")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Accepting connections, not only listening.
        std::thread::sleep(Duration::from_millis(300));
    }

    pub fn url(&self) -> String {
        format!("postgresql://center@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Through pg_ctl: as root the child is runuser, which does not pass signals on.
            let _ = as_server_user(self.bin.join("pg_ctl"))
                .args(["stop", "-m", "fast", "-w", "-D"])
                .arg(self.dir.path().join("data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start_server();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
