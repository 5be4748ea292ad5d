//! The systemd service as installed: the unit passes `systemd-analyze verify` and keeps its
//! `security` exposure low; `scripts/install.sh` (into a DESTDIR) leaves a config the service user
//! can read, and the unit's own ExecStartPre and ExecStart lines, run as that user on the
//! installed paths with the unit's environment, check the config (a trial inference included) and
//! run the daemon until SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kinderwatch");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("systemd/kinderwatch.service")).unwrap()
}

/// The values of every `key=` line of the unit, in order.
fn unit_values(key: &str) -> Vec<String> {
    unit_text()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Root's tools (chown, setpriv) are needed below; a developer without root skips, loudly.
fn needs_root(what: &str) -> bool {
    if !is_root() {
        eprintln!("SKIPPED: {what} needs root (the CI runs it)");
    }
    is_root()
}

/// `systemd-analyze verify` of `systemd/<name>` (no remarks), and its `security` exposure level.
fn verify(name: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("systemd").join(name)).unwrap();
    // verify checks that ExecStart's program exists: point it at the built binary.
    let unit = dir.path().join(name);
    std::fs::write(&unit, text.replace("/usr/bin/kinderwatch", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: {stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify has remarks on {name}: {stderr}"
    );

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let level: f64 = stdout
        .lines()
        .find_map(|l| {
            l.split(&format!("exposure level for {name}:"))
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure level in: {stdout}"));
    assert!(out.status.success(), "{name}: exposure {level}:\n{stdout}");
    level
}

#[test]
fn the_unit_verifies_and_its_exposure_stays_low() {
    let level = verify("kinderwatch.service");
    assert!(level <= 2.0, "{level}");

    // Resource limits sized in docs/BENCHMARKS.md are set.
    for key in ["MemoryMax", "TasksMax", "LimitNOFILE"] {
        assert_eq!(unit_values(key).len(), 1, "{key}= missing from the unit");
    }
}

#[test]
fn the_center_unit_verifies_and_its_exposure_stays_low() {
    let level = verify("kinderwatch-center.service");
    assert!(level <= 2.0, "{level}");
    let text = std::fs::read_to_string(repo().join("systemd/kinderwatch-center.service")).unwrap();
    assert!(
        text.contains(
            "ExecStart=/usr/bin/kinderwatch center --config /etc/kinderwatch/center.toml"
        ),
        "{text}"
    );
}

/// `scripts/install.sh` into a DESTDIR for the service user `nobody` (group `nogroup`).
fn install(destdir: &Path) -> Output {
    Command::new(repo().join("scripts/install.sh"))
        .env("DESTDIR", destdir)
        .env("BIN", BIN)
        .env("SERVICE_USER", "nobody")
        .env("SERVICE_GROUP", "nogroup")
        .output()
        .unwrap()
}

/// A unit line's command with the installed paths under `destdir` and `%`-free arguments.
fn installed_command(line: &str, destdir: &Path, config: &Path) -> Vec<String> {
    line.split_whitespace()
        .map(|w| match w {
            "/etc/kinderwatch/kinderwatch.toml" => config.to_str().unwrap().to_owned(),
            // The unit names the packaged binary; install.sh puts it in /usr/local/bin.
            "/usr/bin/kinderwatch" => format!("{}/usr/local/bin/kinderwatch", destdir.display()),
            w if w.starts_with('/') => format!("{}{w}", destdir.display()),
            w => w.to_owned(),
        })
        .collect()
}

/// The unit's `Environment=` lines, paths moved under `destdir` (the registry cache into `cache`).
fn unit_environment(destdir: &Path, cache: &Path) -> Vec<(String, String)> {
    unit_values("Environment")
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            let v = match v.strip_prefix("/var/cache/kinderwatch/") {
                Some(rest) => cache.join(rest).to_str().unwrap().to_owned(),
                None => format!("{}{v}", destdir.display()),
            };
            (k.to_owned(), v)
        })
        .collect()
}

/// Runs `argv` as nobody:nogroup with only `env` (as systemd would: no inherited environment).
fn as_service_user(argv: &[String], env: &[(String, String)]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().map(|(k, v)| (k, v)));
    c
}

fn output_text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A site config for the installed layout: the installed model, one camera, no API.
fn site_config(destdir: &Path, state: &Path) -> String {
    format!(
        r#"[site]
id = "kg-7"
[detector]
model = "{}/usr/share/kinderwatch/models/nanodet-coco-416.toml"
[state]
dir = "{}"
[api]
enabled = false
[[cameras]]
id = "gate"
url = "rtsp://127.0.0.1:9/nothing-listens"
"#,
        destdir.display(),
        state.display()
    )
}

#[test]
fn the_installed_service_runs_as_its_user() {
    if !needs_root("installing with owners and running as another user") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    // The service user must be able to walk down to the installed files.
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let destdir = root.path().join("dest");
    let out = install(&destdir);
    assert!(out.status.success(), "{}", output_text(&out));
    // Idempotent: a second run keeps the (edited) config.
    let config = destdir.join("etc/kinderwatch/kinderwatch.toml");
    let state = root.path().join("state");
    let cache = root.path().join("cache");
    for d in [&state, &cache] {
        std::fs::create_dir(d).unwrap();
        // StateDirectory=/CacheDirectory= hand these to the service user.
        let ok = Command::new("chown")
            .arg("nobody:nogroup")
            .arg(d)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    std::fs::write(&config, site_config(&destdir, &state)).unwrap();
    let out = install(&destdir);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        std::fs::read_to_string(&config).unwrap().contains("kg-7"),
        "install.sh overwrote an existing config"
    );
    let meta = std::fs::metadata(&config).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o640
    );

    let env = unit_environment(&destdir, &cache);
    let pre = installed_command(&unit_values("ExecStartPre")[0], &destdir, &config);
    let out = as_service_user(&pre, &env).output().unwrap();
    assert!(
        out.status.success(),
        "ExecStartPre as the service user: {}",
        output_text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("trial inference"),
        "{}",
        output_text(&out)
    );

    // ExecStart runs until SIGTERM and stops cleanly.
    let start = installed_command(&unit_values("ExecStart")[0], &destdir, &config);
    let mut child = as_service_user(&start, &env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon exited early"
    );
    // setpriv execs: the child is the daemon itself.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "{status:?}: {logs}");
    assert!(logs.contains("detector sessions ready"), "{logs}");
    assert!(logs.contains("stopped cleanly"), "{logs}");
    let db: PathBuf = state.join("events.db");
    assert!(db.is_dir(), "the service user created its database");
}

/// The steps the README gave before (`install -m 640` as root: root:root) leave a config the
/// service cannot read: the check above would fail on them.
#[test]
fn a_root_only_config_is_what_the_service_user_cannot_read() {
    if !needs_root("running as another user") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = root.path().join("kinderwatch.toml");
    std::fs::write(&config, "[site]\nid = \"kg-7\"\n").unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let argv = vec![
        BIN.to_owned(),
        "check-config".to_owned(),
        config.to_str().unwrap().to_owned(),
    ];
    let out = as_service_user(&argv, &[]).output().unwrap();
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ermission denied"),
        "{}",
        output_text(&out)
    );
}
