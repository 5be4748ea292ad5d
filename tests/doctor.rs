//! `kinderwatch doctor` (issue 16, part 2) as an installer runs it, the real binary against real
//! parts: a box where everything works says so and exits 0; a box with a tampered model file, a
//! missing ONNX Runtime library, a state directory that is a file, a broker that refuses the
//! password and a camera that refuses the password names each problem with its fix and exits 1,
//! and never prints a password.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::broker::Broker;
use common::{Auth, RtspTestServer, Source};

const BIN: &str = env!("CARGO_BIN_EXE_kinderwatch");

fn doctor(config: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["doctor", "--camera-timeout", "8s", "--config"])
        .arg(config)
        .output()
        .expect("run kinderwatch doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    (out.status.success(), text)
}

/// The line of the check `what` and the fix line after it, if any.
fn check<'a>(report: &'a str, what: &str) -> (&'a str, Option<&'a str>) {
    let mut lines = report.lines();
    while let Some(l) = lines.next() {
        if l.get(8..).is_some_and(|rest| rest.starts_with(what)) {
            let fix = lines
                .clone()
                .next()
                .filter(|n| n.trim_start().starts_with("fix:"));
            return (l, fix);
        }
    }
    panic!("no {what} check in:\n{report}");
}

fn pattern() -> Source {
    Source::Pattern {
        width: 320,
        height: 240,
        fps: 10,
    }
}

#[test]
fn a_working_box_passes_every_check() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
    let camera = RtspTestServer::start(pattern(), Auth::None);
    let broker = Broker::start("");
    let config = dir.path().join("kinderwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[site]\nid = \"kg-doc\"\n[state]\ndir = \"{}\"\n[store]\nmin_free_mb = 1\n[detector]\nmodel = \"{}/models/nanodet-coco-416.toml\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n[[cameras]]\nid = \"gate\"\nurl = \"{}\"\n",
            state.display(),
            env!("CARGO_MANIFEST_DIR"),
            broker.port,
            camera.url()
        ),
    )
    .unwrap();
    let (ok, report) = doctor(&config);
    assert!(ok, "{report}");
    for what in [
        "config",
        "onnxruntime",
        "model",
        "gstreamer",
        "state",
        "mqtt",
        "camera gate",
    ] {
        let (line, fix) = check(&report, what);
        assert!(line.trim_start().starts_with("ok"), "{line}");
        assert!(fix.is_none());
    }
    assert!(
        check(&report, "model")
            .0
            .contains("sha256 dd4b20ff19f55aef verified"),
        "{report}"
    );
    assert!(
        check(&report, "camera gate").0.contains("320x240"),
        "{report}"
    );
    assert!(
        check(&report, "mqtt").0.contains("credentials accepted"),
        "{report}"
    );
    assert!(report.contains("all 7 checks passed"), "{report}");
}

#[test]
fn a_broken_box_names_each_problem_and_its_fix() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    // A model whose file does not match its manifest's SHA-256.
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/nanodet-coco-416.toml"
    ))
    .unwrap();
    let onnx = dir.path().join("nanodet-coco-416.onnx");
    std::fs::write(&onnx, b"not the model").unwrap();
    let tampered = dir.path().join("nanodet.toml");
    std::fs::write(&tampered, &manifest).unwrap();
    // A library file that is not one.
    let library = dir.path().join("libonnxruntime.so");
    std::fs::write(&library, b"not a library").unwrap();
    // The state directory is a file.
    let state = dir.path().join("state");
    std::fs::write(&state, b"").unwrap();
    // The broker and the camera refuse the passwords given.
    let passwords = dir.path().join("passwd");
    assert!(
        Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwords)
            .args(["kg-doc", "the-right-one"])
            .status()
            .unwrap()
            .success()
    );
    let broker = Broker::start(&format!(
        "allow_anonymous false\npassword_file {}",
        passwords.display()
    ));
    let mqtt_password = dir.path().join("mqtt-password");
    std::fs::write(&mqtt_password, "Wr0ng-mqtt-pass\n").unwrap();
    let camera = RtspTestServer::start(
        pattern(),
        Auth::Basic {
            user: "viewer".into(),
            password: "R1ght-cam-pass".into(),
        },
    );
    let camera_password = dir.path().join("cam-password");
    std::fs::write(&camera_password, "Wr0ng-cam-pass\n").unwrap();
    let config = dir.path().join("kinderwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[site]\nid = \"kg-doc\"\n[state]\ndir = \"{}\"\n[detector]\nmodel = \"{}\"\nonnxruntime = \"{}\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"kg-doc\"\npassword_file = \"{}\"\n\
             [[cameras]]\nid = \"gate\"\nurl = \"{}\"\nusername = \"viewer\"\npassword_file = \"{}\"\n",
            state.display(),
            tampered.display(),
            library.display(),
            broker.port,
            mqtt_password.display(),
            camera.url(),
            camera_password.display()
        ),
    )
    .unwrap();
    let (ok, report) = doctor(&config);
    assert!(!ok, "problems exit non-zero: {report}");
    let failed = |what: &str, words: &str, fix_words: &str| {
        let (line, fix) = check(&report, what);
        assert!(line.trim_start().starts_with("FAIL"), "{line}");
        assert!(line.contains(words), "{what}: {line}");
        let fix = fix.unwrap_or_else(|| panic!("{what} has no fix"));
        assert!(fix.contains(fix_words), "{what}: {fix}");
    };
    failed("onnxruntime", "libonnxruntime.so", "scripts/setup.sh");
    failed("model", "sha256", "reinstall the model files");
    failed("state", "not a directory", "state.dir");
    failed("mqtt", "refused", "password");
    failed("camera gate", "401", "password");
    assert!(report.contains("5 problem(s)"), "{report}");
    for secret in [
        "Wr0ng-mqtt-pass",
        "Wr0ng-cam-pass",
        "R1ght-cam-pass",
        "the-right-one",
    ] {
        assert!(
            !report.contains(secret),
            "a password in the report: {report}"
        );
    }
}

#[test]
fn an_invalid_config_is_one_failed_check_naming_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kinderwatch.toml");
    std::fs::write(
        &config,
        "[site]\nid = \"Bad Id\"\n[[cameras]]\nid = \"gate\"\nurl = \"http://x\"\n",
    )
    .unwrap();
    let (ok, report) = doctor(&config);
    assert!(!ok);
    let (line, fix) = check(&report, "config");
    assert!(
        line.contains("site.id") && line.contains("cameras[0].url"),
        "{line}"
    );
    assert!(fix.unwrap().contains("check-config"), "{report}");
}
