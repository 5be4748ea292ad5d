//! The `kinderwatch` binary as installers use it: check-config, probe, and run with SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Auth, RtspTestServer, Source};

const BIN: &str = env!("CARGO_BIN_EXE_kinderwatch");

fn kinderwatch(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run kinderwatch")
}

fn check_config_text(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kinderwatch.toml");
    std::fs::write(&file, text).unwrap();
    let out = kinderwatch(&["check-config", file.to_str().unwrap()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
[site]
id = "kg-7"
time_zone = "Europe/Berlin"

[[cameras]]
id = "gate"
url = "rtsp://192.0.2.10/stream1"

[[cameras]]
id = "yard"
url = "rtsp://192.0.2.11/stream1"
detect_fps = 2
"#;

#[test]
fn check_config_accepts_a_good_file_with_a_summary_line() {
    let (ok, stdout, stderr) = check_config_text(GOOD);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("site kg-7") && stdout.contains("2 cameras"),
        "{stdout}"
    );
}

/// Each bad config is refused, naming the file and the exact key path.
#[test]
fn check_config_names_the_key_path_of_each_problem() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "credentials in URL",
            r#"[site]
id = "kg"
[[cameras]]
id = "gate"
url = "rtsp://admin:S3cretPw@192.0.2.10/s"
"#,
            "cameras[0].url: credentials must not be in the URL; use username and password_file",
        ),
        (
            "duplicate ids",
            r#"[site]
id = "kg"
[[cameras]]
id = "gate"
url = "rtsp://192.0.2.10/s"
[[cameras]]
id = "yard"
url = "rtsp://192.0.2.11/s"
[[cameras]]
id = "gate"
url = "rtsp://192.0.2.12/s"
"#,
            "cameras[2].id: duplicate camera id \"gate\"",
        ),
        (
            "zero fps",
            r#"[site]
id = "kg"
[[cameras]]
id = "gate"
url = "rtsp://192.0.2.10/s"
detect_fps = 0
"#,
            "cameras[0].detect_fps: 0 is out of range",
        ),
        (
            "unknown key",
            r#"[site]
id = "kg"
[[cameras]]
id = "gate"
url = "rtsp://192.0.2.10/s"
detect_fsp = 5
"#,
            "cameras[0].detect_fsp: line 6, column 1: unknown field `detect_fsp`",
        ),
        (
            "password file missing",
            r#"[site]
id = "kg"
[[cameras]]
id = "gate"
url = "rtsp://192.0.2.10/s"
username = "viewer"
password_file = "/nonexistent/gate.pass"
"#,
            "cameras[0].password_file: cannot read password file /nonexistent/gate.pass",
        ),
        (
            "zero duration",
            r#"[site]
id = "kg"
[ingest]
stall_timeout = "0s"
[[cameras]]
id = "gate"
url = "rtsp://192.0.2.10/s"
"#,
            "ingest.stall_timeout: must be greater than zero",
        ),
    ];
    for (name, text, expected) in cases {
        let (ok, _stdout, stderr) = check_config_text(text);
        assert!(!ok, "{name}: accepted");
        assert!(
            stderr.contains("kinderwatch.toml"),
            "{name}: file not named: {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{name}: expected {expected:?} in:\n{stderr}"
        );
        assert!(
            !stderr.contains("S3cretPw"),
            "{name}: password echoed: {stderr}"
        );
    }
}

#[test]
fn check_config_on_a_missing_file_says_so() {
    let out = kinderwatch(&["check-config", "/nonexistent/kinderwatch.toml"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/kinderwatch.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

#[test]
fn example_config_documents_valid_options() {
    // The example points at a password file that exists only on a real box: that must be its only
    // problem, so every other option in it is valid.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let out = kinderwatch(&["check-config", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("1 problem"), "{stderr}");
    assert!(
        stderr.contains("cameras[0].password_file: cannot read password file"),
        "{stderr}"
    );
}

#[test]
fn check_config_verifies_the_model_checksum() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tiny.onnx"),
        b"not the model the manifest describes",
    )
    .unwrap();
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ssdlite-person.toml"),
    )
    .unwrap()
    .replace("ssdlite-person.onnx", "tiny.onnx");
    std::fs::write(dir.path().join("tiny.toml"), manifest).unwrap();
    // [detector] goes before [[cameras]]: after it, TOML would put it inside the last camera.
    let text = format!("[detector]\nmodel = \"tiny.toml\"\n{GOOD}");
    let file = dir.path().join("kinderwatch.toml");
    std::fs::write(&file, text).unwrap();
    let out = kinderwatch(&["check-config", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("detector.model") && stderr.contains("sha256"),
        "{stderr}"
    );
    assert!(stderr.contains("tiny.onnx"), "{stderr}");
}

// --- probe ------------------------------------------------------------------------------------

#[test]
fn probe_reports_codec_size_rate_and_first_frame() {
    let server = RtspTestServer::start(
        Source::Pattern {
            width: 1280,
            height: 720,
            fps: 25,
        },
        Auth::None,
    );
    let out = kinderwatch(&["probe", &server.url(), "--measure", "2s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("codec:               H264"), "{stdout}");
    assert!(stdout.contains("resolution:          1280x720"), "{stdout}");
    assert!(stdout.contains("time to first frame:"), "{stdout}");
    let fps: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("frame rate:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no frame rate in {stdout}"));
    assert!(
        (10.0..=35.0).contains(&fps),
        "measured {fps} fps of a 25 fps stream"
    );
}

#[test]
fn probe_of_a_udp_only_camera_over_tcp_says_to_set_udp() {
    let server = RtspTestServer::start_udp_only(Source::Pattern {
        width: 640,
        height: 480,
        fps: 25,
    });
    let out = kinderwatch(&["probe", &server.url(), "--measure", "1s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("transport:           udp"), "{stdout}");
    assert!(
        stdout.contains("streams over UDP but not over TCP")
            && stdout.contains("transport = \"udp\""),
        "{stdout}"
    );
    // A camera that works over TCP gets no such note.
    let tcp = RtspTestServer::start(
        Source::Pattern {
            width: 640,
            height: 480,
            fps: 25,
        },
        Auth::None,
    );
    let out = kinderwatch(&["probe", &tcp.url(), "--measure", "1s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("transport:           tcp") && !stdout.contains("note:"),
        "{stdout}"
    );
}

#[test]
fn probe_diagnoses_wrong_password_without_printing_it() {
    let server = RtspTestServer::start(
        Source::Pattern {
            width: 320,
            height: 240,
            fps: 10,
        },
        Auth::Digest {
            user: "viewer".into(),
            password: "Corr3ct-Pr0be".into(),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "Wr0ng-Pr0be-91\n").unwrap();
    let out = kinderwatch(&[
        "probe",
        &server.url(),
        "--username",
        "viewer",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("refused the username or password (401 Unauthorized)"),
        "{all}"
    );
    assert!(!all.contains("Wr0ng-Pr0be-91"), "{all}");

    // Credentials typed into the URL are taken out of it and never printed either.
    let url = server
        .url()
        .replace("rtsp://", "rtsp://viewer:Wr0ng-Pr0be-91@");
    let out = kinderwatch(&["probe", &url]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("401"), "{all}");
    assert!(!all.contains("Wr0ng-Pr0be-91"), "{all}");
}

#[test]
fn probe_diagnoses_wrong_path_and_nothing_listening() {
    let server = RtspTestServer::start(
        Source::Pattern {
            width: 320,
            height: 240,
            fps: 10,
        },
        Auth::None,
    );
    let out = kinderwatch(&["probe", &server.url_with_path("/wrong")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no stream at this path (404 Not Found)"),
        "{stderr}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = kinderwatch(&["probe", &format!("rtsp://127.0.0.1:{port}/cam")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nothing accepted the connection"),
        "{stderr}"
    );
}

// --- run ----------------------------------------------------------------------------------------

#[test]
fn run_stops_cleanly_on_sigterm() {
    let server = RtspTestServer::start(
        Source::Pattern {
            width: 640,
            height: 360,
            fps: 15,
        },
        Auth::None,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kinderwatch.toml");
    std::fs::write(
        &file,
        format!(
            "[site]\nid = \"kg\"\n{1}[[cameras]]\nid = \"one\"\nurl = \"{0}\"\n[[cameras]]\nid = \"two\"\nurl = \"{0}\"\n",
            server.url(),
            isolated()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config", file.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let mut streaming = 0;
    while streaming < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("cameras did not stream; log:\n{}", log.join("\n")));
        if line.contains("camera streaming") {
            streaming += 1;
        }
        log.push(line);
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The daemon's own deadline is 5 s; it logs "stopped cleanly" only when it met it.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(15)) {
        log.push(line);
    }
    let exit = child.wait().unwrap();
    let log = log.join("\n");
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
    assert_eq!(log.matches("camera supervisor stopped").count(), 2, "{log}");
}

// --- detection set-up errors ----------------------------------------------------------------------

fn model_config(extra_detector: &str) -> String {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ssdlite-person.toml");
    format!(
        "[detector]\nmodel = \"{}\"\n{extra_detector}\n[site]\nid = \"kg\"\n{}[[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:9/x\"\n",
        model.display(),
        isolated()
    )
}

/// `[state]` in a fresh temp dir and `[api]` on a free port, so that daemons started by tests
/// in parallel never share a database or a port (nor touch /var/lib/kinderwatch).
fn isolated() -> String {
    let dir = tempfile::tempdir().unwrap().keep();
    format!(
        "[state]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
        dir.display()
    )
}

#[test]
fn unknown_execution_provider_and_class_are_config_errors() {
    let (ok, _, stderr) = check_config_text(&model_config("execution_provider = \"tpu\""));
    assert!(!ok);
    assert!(
        stderr.contains("detector.execution_provider") && stderr.contains("unknown variant `tpu`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`cpu`, `cuda`"),
        "the valid values are named: {stderr}"
    );

    let (ok, _, stderr) = check_config_text(&model_config("classes = [\"unicorn\"]"));
    assert!(!ok);
    assert!(
        stderr.contains("detector.model") && stderr.contains("\"unicorn\" is not a label"),
        "{stderr}"
    );
}

#[test]
fn missing_onnxruntime_library_names_the_path_and_the_fix() {
    // In the config: a check-config error with the key path.
    let (ok, _, stderr) = check_config_text(&model_config(
        "onnxruntime = \"/nonexistent/libonnxruntime.so\"",
    ));
    assert!(!ok);
    assert!(
        stderr.contains("detector.onnxruntime: /nonexistent/libonnxruntime.so does not exist"),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/setup.sh"), "{stderr}");

    // From the environment: `run` refuses to start, naming the path and the set-up command.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kinderwatch.toml");
    std::fs::write(&file, model_config("")).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config", file.to_str().unwrap()])
        .env("ORT_DYLIB_PATH", "/nonexistent/lib/libonnxruntime.so")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("ONNX Runtime library not found: /nonexistent/lib/libonnxruntime.so"),
        "{stderr}"
    );
    assert!(stderr.contains("run scripts/setup.sh"), "{stderr}");

    // A file that is not the library: a load error, not a panic.
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config", file.to_str().unwrap()])
        .env("ORT_DYLIB_PATH", &fake)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("could not be loaded") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn cuda_required_but_missing_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kinderwatch.toml");
    std::fs::write(
        &file,
        model_config("execution_provider = \"cuda\"\nexecution_provider_required = true"),
    )
    .unwrap();
    let out = kinderwatch(&["run", "--config", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("execution provider Cuda is not available"),
        "{stderr}"
    );
}

// --- rules ----------------------------------------------------------------------------------------

#[test]
fn rule_and_zone_problems_name_their_key_paths() {
    let text = r#"
[site]
id = "kg"
time_zone = "Europe/Berlin"

[[cameras]]
id = "gate"
url = "rtsp://192.0.2.10/s"
object_masks = [[[0.1, 0.1], [0.2, 0.2]]]

[[cameras]]
id = "yard"
url = "rtsp://192.0.2.11/s"

[[zones]]
id = "bow"
camera = "gate"
polygon = [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]

[[zones]]
id = "yard-zone"
camera = "yard"
polygon = [[0.1, 0.1], [0.9, 0.1], [0.5, 1.2]]

[[rules]]
id = "fence"
camera = "gate"
kind = "tripwire"
line = [[0.2, 0.5], [0.2, 0.5], [0.8, 0.5]]
schedule = ["Mon-Fry 19:00-07:30"]

[[rules]]
id = "ghost"
camera = "nowhere"
kind = "zone"
zone = "missing"

[[rules]]
id = "wrong-camera"
camera = "gate"
kind = "loitering"
zone = "yard-zone"

[[rules]]
id = "holiday"
camera = "gate"
kind = "tripwire"
line = [[0.1, 0.5], [0.9, 0.5]]
exceptions = [{ date = "2026-02-30", windows = [] }]
"#;
    let (ok, _, stderr) = check_config_text(text);
    assert!(!ok);
    for expected in [
        "cameras[0].object_masks[0]: a polygon needs at least 3 points",
        "zones[0].polygon: edges 0 and 2 cross: the polygon intersects itself",
        "zones[1].polygon: coordinates are fractions of the frame",
        "rules[0].line: segment 0 has zero length",
        "rules[0].schedule: unknown day \"Fry\"",
        "rules[1].camera: no camera \"nowhere\"",
        "rules[1].zone: no zone \"missing\"",
        "rules[2].zone: zone \"yard-zone\" is on camera \"yard\", the rule on \"gate\"",
        "rules[2].dwell: a loitering rule needs dwell",
        "rules[3].exceptions: \"2026-02-30\" is not a date",
    ] {
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn demo_config_is_valid() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let text = std::fs::read_to_string(file).unwrap().replace(
        "models/nanodet-coco-416.toml",
        &format!(
            "{}/models/nanodet-coco-416.toml",
            env!("CARGO_MANIFEST_DIR")
        ),
    );
    let (ok, stdout, stderr) = check_config_text(&text);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("model sha256 verified"), "{stdout}");
}

// --- event history ----------------------------------------------------------------------------------

/// A daemon child that a failing test does not leave running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn events_command_reads_the_daemons_api_and_a_stopped_database() {
    use jiff::{SignedDuration, Timestamp};
    use kinderwatch::events::{Event, EventKind};
    use kinderwatch::perimeter::RecordedEvent;
    use kinderwatch::store::{Store, StoreConfig};

    let state = tempfile::tempdir().unwrap();
    // One event a minute from 44.5 minutes ago: 15 of them in the last 30 minutes, with 30 s of
    // margin on both sides of that boundary.
    let t0 = Timestamp::now() - SignedDuration::from_secs(44 * 60 + 30);
    let events: Vec<RecordedEvent> = (0..30)
        .map(|i| {
            let cam = ["gate", "yard"][i % 2];
            let kind = [
                EventKind::LineCrossed,
                EventKind::Loitering,
                EventKind::CameraOffline,
            ][i % 3];
            let mut e = Event::new(
                kind,
                "kg",
                cam,
                t0 + SignedDuration::from_secs(60 * i as i64),
            );
            e.rule = (kind != EventKind::CameraOffline).then(|| "fence, north".to_owned());
            RecordedEvent {
                event: e,
                snapshot: None,
            }
        })
        .collect();
    {
        let store = Store::open(&state.path().join("events.db"), &StoreConfig::default()).unwrap();
        store.record(&events, false).unwrap();
    }
    let server = RtspTestServer::start(
        Source::Pattern {
            width: 320,
            height: 240,
            fps: 10,
        },
        Auth::None,
    );
    let (token, hash) = kinderwatch::api::auth::new_token();
    let port = free_port();
    let file = state.path().join("kinderwatch.toml");
    std::fs::write(
        &file,
        format!(
            "[site]\nid = \"kg\"\n[state]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[[api.tokens]]\nname = \"ops\"\nrole = \"read\"\nsha256 = \"{hash}\"\n[[cameras]]\nid = \"gate\"\nurl = \"{}\"\n",
            state.path().display(),
            server.url()
        ),
    )
    .unwrap();
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["run", "--config", file.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the API did not start; log:\n{}", log.join("\n")));
        let ready = line.contains("HTTP API listening");
        log.push(line);
        if ready {
            break;
        }
    }
    let api = format!("http://127.0.0.1:{port}");
    let events_cmd = |args: &[&str], token: &str| {
        Command::new(BIN)
            .arg("events")
            .args(args)
            .env("KINDERWATCH_TOKEN", token)
            .output()
            .unwrap()
    };
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();

    // JSON over the API, filtered by camera, newest first.
    let out = events_cmd(
        &["--api", &api, "--camera", "gate", "--format", "json"],
        &token,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let expected: Vec<String> = events
        .iter()
        .rev()
        .filter(|r| r.event.camera.as_deref() == Some("gate"))
        .map(|r| r.event.id.to_string())
        .collect();
    let ids: Vec<String> = got
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, expected);

    // CSV with a kind filter; the rule's comma is quoted.
    let out = events_cmd(
        &["--api", &api, "--kind", "loitering", "--format", "csv"],
        &token,
    );
    let csv = text(&out);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "id,time,kind,camera,rule,class,score,detail,snapshot_url"
    );
    assert_eq!(lines.len(), 1 + 10, "{csv}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.contains(",loitering,") && l.contains("\"fence, north\"")),
        "{csv}"
    );

    // A table of the last 30 minutes.
    let out = events_cmd(
        &["--api", &api, "--since", "30m", "--limit", "1000"],
        &token,
    );
    let table = text(&out);
    assert!(table.starts_with("TIME (UTC)"), "{table}");
    assert!(table.trim_end().ends_with("\n15 events"), "{table}");
    // --limit caps the total across pages.
    let out = events_cmd(&["--api", &api, "--limit", "7", "--format", "json"], &token);
    let got: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got.len(), 7);

    // The audit trail needs an admin token.
    let out = Command::new(BIN)
        .args(["audit", "--api", &api])
        .env("KINDERWATCH_TOKEN", &token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A wrong token, a bad value, and the database while the daemon holds it.
    let out = events_cmd(&["--api", &api], "kw_wrong");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = events_cmd(&["--api", &api, "--since", "soon"], &token);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("parameter since"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = events_cmd(&["--db", state.path().to_str().unwrap()], "");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Stopped: --db reads the same events.
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(child.0.wait().unwrap().success());
    let out = events_cmd(
        &[
            "--db",
            state.path().to_str().unwrap(),
            "--camera",
            "gate",
            "--format",
            "json",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<String> = got
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, expected);

    // The history reads above are in the audit trail, with the token's name.
    let db = state.path().to_str().unwrap();
    let out = Command::new(BIN)
        .args(["audit", "--db", db, "--caller", "ops"])
        .output()
        .unwrap();
    let table = text(&out);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.starts_with("TIME (UTC)"), "{table}");
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert!(
        rows.len() >= 4
            && rows
                .iter()
                .all(|r| r.contains(" ops ") && r.contains("query_events")),
        "{table}"
    );
    assert!(table.contains("kind=loitering"), "{table}");

    // Dead letters: listed and re-queued from the stopped daemon's database.
    {
        let store = Store::open(&state.path().join("events.db"), &StoreConfig::default()).unwrap();
        let e = RecordedEvent {
            event: Event::new(EventKind::CameraTampered, "kg", "gate", Timestamp::now()),
            snapshot: None,
        };
        store.record(std::slice::from_ref(&e), true).unwrap();
        let seq = store.outbox_after(None, 100).unwrap().last().unwrap().seq;
        store
            .dead_letter(
                seq,
                kinderwatch::store::DeadLetterReason::TooLarge,
                "a 300000-byte packet; the broker accepts 20000",
                1,
            )
            .unwrap()
            .unwrap();
    }
    let out = Command::new(BIN)
        .args(["dead-letters", "--db", db])
        .output()
        .unwrap();
    let listing = text(&out);
    assert!(
        listing.contains("too_large") && listing.contains("the broker accepts 20000"),
        "{listing}"
    );
    let out = Command::new(BIN)
        .args(["dead-letters", "--db", db, "--requeue-all"])
        .output()
        .unwrap();
    assert_eq!(
        text(&out).trim(),
        "1 re-queued",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["dead-letters", "--db", db])
        .output()
        .unwrap();
    assert_eq!(text(&out).trim(), "no dead letters");
    let out = events_cmd(&["--db", "/nonexistent/state"], "");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no event database at /nonexistent/state")
    );
}

#[test]
fn token_command_prints_a_token_and_a_matching_config_entry() {
    let out = kinderwatch(&["token", "--name", "city-center", "--role", "admin"]);
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(token.starts_with("kw_") && token.len() == 67, "{token}");
    let entry = &stderr[stderr.find("[[api.tokens]]").expect("a config entry")..];
    let text = format!(
        "[site]\nid = \"kg\"\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://192.0.2.1/x\"\n[api]\n{entry}"
    );
    let config =
        kinderwatch::config::Config::from_toml(&text, Path::new("t.toml"), Path::new(".")).unwrap();
    let tokens = kinderwatch::api::Tokens::new(&config.api.tokens);
    let caller = tokens
        .check(&token)
        .expect("the printed hash matches the token");
    assert_eq!(caller.role, kinderwatch::api::Role::Admin);
    assert_eq!(&*caller.name, "city-center");
    assert!(
        !stderr.contains(&token),
        "the token is printed once, on stdout"
    );
}

/// check-config refuses a manifest that a detector worker could not run with: one the decoder
/// would index past the end of (named by key), and one whose tensor names do not match the model
/// (only a trial inference shows that); the shipped manifest passes, with its trial inference.
#[test]
fn check_config_refuses_a_manifest_a_worker_could_not_run() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let shipped = std::fs::read_to_string(models.join("ssdlite-person.toml")).unwrap();
    let onnx = models.join("ssdlite-person.onnx");
    let shipped = shipped.replace(
        "file = \"ssdlite-person.onnx\"",
        &format!("file = {:?}", onnx.to_str().unwrap()),
    );
    let check = |manifest: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.toml"), manifest).unwrap();
        let file = dir.path().join("kinderwatch.toml");
        std::fs::write(&file, format!("[detector]\nmodel = \"m.toml\"\n{GOOD}")).unwrap();
        let out = kinderwatch(&["check-config", file.to_str().unwrap()]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = check(&shipped);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("trial inference"), "{stdout}");

    let no_boxes = shipped.replace("boxes = [\"detection_boxes:0\"]", "boxes = []");
    assert_ne!(no_boxes, shipped);
    let (ok, _, stderr) = check(&no_boxes);
    assert!(!ok);
    assert!(
        stderr.contains("m.toml") && stderr.contains("outputs.boxes"),
        "{stderr}"
    );

    let half_size = shipped.replace("layout = \"nhwc\"", "width = 300\nlayout = \"nhwc\"");
    let (ok, _, stderr) = check(&half_size);
    assert!(!ok);
    assert!(stderr.contains("input.width"), "{stderr}");

    let wrong_name = shipped.replace("\"detection_scores:0\"", "\"scores_of_another_model:0\"");
    let (ok, _, stderr) = check(&wrong_name);
    assert!(!ok);
    assert!(
        stderr.contains("trial inference") && stderr.contains("scores_of_another_model"),
        "{stderr}"
    );
}

/// The manual page is generated from the CLI itself: every command `--help` lists is in it, and it
/// renders with man's own formatter where one is installed.
#[test]
fn the_manual_page_covers_every_command() {
    let out = kinderwatch(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH kinderwatch 1"), "{page}");
    assert!(
        page.contains(".SH NAME") && page.contains(".SH SYNOPSIS"),
        "{page}"
    );
    let help = String::from_utf8(kinderwatch(&["--help"]).stdout).unwrap();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(
        commands.len() >= 10 && commands.contains(&"doctor"),
        "{commands:?}"
    );
    for c in &commands {
        let roff = format!("kinderwatch\\-{}", c.replace('-', "\\-"));
        assert!(page.contains(&roff), "{c} is not in the manual page");
    }
    if std::path::Path::new("/usr/bin/groff").exists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kinderwatch.1");
        std::fs::write(&file, &page).unwrap();
        let rendered = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(rendered.status.success());
        assert!(
            rendered.stderr.is_empty(),
            "groff warnings: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
    }
}
