//! Live reload: SIGHUP to the real daemon applies changed rules, a camera's new stream and its new
//! detect size, rate and motion masks, and a camera added and removed, without a restart, refuses an invalid file and a change that
//! needs a restart (naming it) and keeps the running config; in
//! process, a tripwire moved by a reload fires on the new line and not on the old one, with the
//! run-time arming kept.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::daemon::{RunningDaemon, free_port, http_get};
use kinderwatch::app::reload::ReloadPlan;
use kinderwatch::app::{Daemon, Detections, SHUTDOWN_GRACE, Synthetic};
use kinderwatch::config::Config;
use kinderwatch::events::EventKind;
use kinderwatch::perimeter::RuleCommand;
use kinderwatch::store::query::EventQuery;
use kinderwatch::store::{Store, StoreConfig};

/// The site's config: one camera (nothing listens on `dead`: the rules run without frames), the
/// model, the API with a read token, and `rules`.
fn site_config(api: u16, dead: u16, read_hash: &str, detector: &str, rules: &str) -> String {
    site_config_at(
        api,
        &format!("rtsp://127.0.0.1:{dead}/nothing-listens"),
        read_hash,
        detector,
        rules,
    )
}

/// [`site_config`] with the camera at `url`.
fn site_config_at(api: u16, url: &str, read_hash: &str, detector: &str, rules: &str) -> String {
    format!(
        r#"
[site]
id = "kg-7"
[state]
dir = "{{state}}"
[api]
listen = "127.0.0.1:{api}"
[[api.tokens]]
name = "operator"
role = "read"
sha256 = "{read_hash}"
[detector]
model = "{root}/models/nanodet-coco-416.toml"
{detector}
[[cameras]]
id = "gate"
url = "{url}"
{rules}
"#,
        root = env!("CARGO_MANIFEST_DIR"),
    )
}

const FENCE: &str = r#"
[[rules]]
id = "fence"
camera = "gate"
kind = "tripwire"
line = [[0.0, 0.5], [1.0, 0.5]]
"#;

const FENCE_AND_GATE_LINE: &str = r#"
[[rules]]
id = "fence"
camera = "gate"
kind = "tripwire"
line = [[0.0, 0.6], [1.0, 0.6]]
[[rules]]
id = "gate-line"
camera = "gate"
kind = "tripwire"
line = [[0.5, 0.0], [0.5, 1.0]]
"#;

/// The rule ids the running daemon serves.
fn rule_ids(api: u16, token: &str) -> Vec<String> {
    let r = ureq::get(&format!("http://127.0.0.1:{api}/api/v1/rules"))
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(5))
        .call()
        .unwrap();
    let v: serde_json::Value = r.into_json().unwrap();
    let mut ids: Vec<String> = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Camera `gate`'s state as the API says it.
fn camera_state(api: u16, token: &str) -> String {
    camera_field(api, token, "state")
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// A field of camera `gate` in `/api/v1/cameras`.
fn camera_field(api: u16, token: &str, field: &str) -> serde_json::Value {
    cameras(api, token)
        .into_iter()
        .find(|c| c["id"] == "gate")
        .map(|c| c[field].clone())
        .unwrap_or_default()
}

/// The cameras the API lists, in order.
fn camera_ids(api: u16, token: &str) -> Vec<String> {
    cameras(api, token)
        .iter()
        .map(|c| c["id"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn cameras(api: u16, token: &str) -> Vec<serde_json::Value> {
    let r = ureq::get(&format!("http://127.0.0.1:{api}/api/v1/cameras"))
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(5))
        .call()
        .unwrap();
    let v: serde_json::Value = r.into_json().unwrap();
    v["cameras"].as_array().cloned().unwrap_or_default()
}

/// A field of camera `id`, as a string ("" when there is no such camera).
fn camera_field_of(api: u16, token: &str, id: &str, field: &str) -> String {
    cameras(api, token)
        .iter()
        .find(|c| c["id"] == id)
        .and_then(|c| c[field].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `kinderwatch_detect_inferences_total` of a camera (0 before its first).
fn inferences(api: u16, token: &str, camera: &str) -> u64 {
    let body = ureq::get(&format!("http://127.0.0.1:{api}/metrics"))
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(5))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let key = format!("kinderwatch_detect_inferences_total{{camera=\"{camera}\"}}");
    body.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The size of camera `gate`'s live picture (its last frame), (0, 0) while it has none.
fn live_picture_size(api: u16, token: &str) -> (u32, u32) {
    let Ok(r) = ureq::get(&format!(
        "http://127.0.0.1:{api}/api/v1/cameras/gate/frame.jpg"
    ))
    .set("Authorization", &format!("Bearer {token}"))
    .timeout(Duration::from_secs(5))
    .call() else {
        return (0, 0);
    };
    let mut jpeg = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut jpeg).unwrap();
    let img = image::load_from_memory(&jpeg).expect("a JPEG");
    (img.width(), img.height())
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_applies_rules_live_and_refuses_what_needs_a_restart() {
    let (api, dead) = (free_port(), free_port());
    let (token, hash) = kinderwatch::api::auth::new_token();
    let daemon = RunningDaemon::start(&site_config(api, dead, &hash, "workers = 1", FENCE), "");
    wait_for("the API", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", api)).is_ok() && http_get(api, "/healthz").0 != 0
    });
    wait_for("the rules stage", Duration::from_secs(30), || {
        std::panic::catch_unwind(|| rule_ids(api, &token)).is_ok_and(|ids| ids == ["fence"])
    });
    let write = |text: String| {
        let state = daemon.file.parent().unwrap().join("state");
        std::fs::write(
            &daemon.file,
            text.replace("{state}", state.to_str().unwrap()),
        )
        .unwrap();
    };

    // The same file: nothing to do.
    daemon.hangup();
    daemon.wait_log(
        &["config reloaded: nothing changed"],
        Duration::from_secs(10),
    );

    // A rule moved and one added: applied, no restart.
    write(site_config(
        api,
        dead,
        &hash,
        "workers = 1",
        FENCE_AND_GATE_LINE,
    ));
    daemon.hangup();
    daemon.wait_log(&["config reloaded and applied"], Duration::from_secs(10));
    assert_eq!(rule_ids(api, &token), ["fence", "gate-line"]);
    assert!(
        daemon
            .all_notifications()
            .iter()
            .any(|m| m.contains("RELOADING=1")),
        "systemd is told of the reload"
    );

    // An invalid file: refused with the key at fault; the running rules stay.
    write(site_config(
        api,
        dead,
        &hash,
        "workers = 1",
        &FENCE_AND_GATE_LINE.replace("tripwire", "fence"),
    ));
    daemon.hangup();
    let refused = daemon.wait_log(
        &["config reload refused", "rules[0].kind"],
        Duration::from_secs(10),
    );
    assert!(refused.contains("running config stays"), "{refused}");
    assert_eq!(rule_ids(api, &token), ["fence", "gate-line"]);

    // A change that needs a restart, beside a rule change: refused whole, naming the section.
    write(site_config(api, dead, &hash, "workers = 2", FENCE));
    daemon.hangup();
    let refused = daemon.wait_log(
        &["config reload refused", "restart the service", "detector"],
        Duration::from_secs(10),
    );
    assert!(!refused.contains("cameras"), "{refused}");
    assert_eq!(
        rule_ids(api, &token),
        ["fence", "gate-line"],
        "nothing of it applied"
    );

    // The camera's stream moves to a server that answers: that camera restarts, and streams;
    // the rules run on.
    let server = common::RtspTestServer::start(
        common::Source::Pattern {
            width: 320,
            height: 240,
            fps: 10,
        },
        common::Auth::None,
    );
    write(site_config_at(
        api,
        &server.url(),
        &hash,
        "workers = 1",
        FENCE_AND_GATE_LINE,
    ));
    daemon.hangup();
    daemon.wait_log(
        &["camera restarted with its new config", "gate"],
        Duration::from_secs(15),
    );
    wait_for("the second applied reload", Duration::from_secs(15), || {
        daemon.logs().matches("config reloaded and applied").count() == 2
    });
    wait_for("the camera streaming", Duration::from_secs(20), || {
        camera_state(api, &token) == "streaming"
    });
    assert_eq!(rule_ids(api, &token), ["fence", "gate-line"]);

    // Writes the file with gate at the test server and `rest` (gate's further keys, more cameras,
    // the rules), sends SIGHUP and waits for the `n`th applied reload.
    let reload_to = |what: &str, rest: &str, n: usize| {
        write(site_config_at(
            api,
            &server.url(),
            &hash,
            "workers = 1",
            rest,
        ));
        daemon.hangup();
        wait_for(what, Duration::from_secs(20), || {
            daemon.logs().matches("config reloaded and applied").count() == n
        });
    };

    // What the camera hands to detection changes (size, rate, motion masks): that camera
    // restarts with it, the daemon does not. The default is 640x360 at 5 fps.
    assert_eq!(live_picture_size(api, &token), (640, 360));
    reload_to(
        "the third applied reload",
        &format!(
            "detect_width = 320\ndetect_height = 180\ndetect_fps = 2\n\
             motion_masks = [[[0.0, 0.0], [0.2, 0.0], [0.2, 0.2]]]\n{FENCE_AND_GATE_LINE}"
        ),
        3,
    );
    assert_eq!(
        daemon
            .logs()
            .matches("camera restarted with its new config")
            .count(),
        2
    );
    wait_for("frames of the new size", Duration::from_secs(20), || {
        live_picture_size(api, &token) == (320, 180)
    });
    // At most 2 frames a second now (the source sends 10; the old rate was 5).
    let frames = || {
        camera_field(api, &token, "frames_received")
            .as_u64()
            .unwrap()
    };
    let (n0, t0) = (frames(), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let (n1, took) = (frames(), t0.elapsed().as_secs_f64());
    assert!(
        (n1 - n0) as f64 <= 2.0 * (took + 1.5),
        "{} frames in {took:.1} s at detect_fps 2",
        n1 - n0
    );

    // A camera added: it starts, the pool infers it; the camera already there runs on untouched.
    let gate_keys = "detect_width = 320\ndetect_height = 180\ndetect_fps = 2\n\
                     motion_masks = [[[0.0, 0.0], [0.2, 0.0], [0.2, 0.2]]]\n";
    // Its whole picture masked for the motion gate: it is inferred now and then (its first
    // picture, keep-alives), and its skipped-frame counter grows.
    let yard = format!(
        "[[cameras]]\nid = \"yard\"\nurl = \"{}\"\ndetect_width = 320\ndetect_height = 180\n\
         motion_masks = [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]]\n",
        server.url()
    );
    let gate_frames = frames();
    reload_to(
        "the fourth applied reload",
        &format!("{gate_keys}{yard}{FENCE_AND_GATE_LINE}"),
        4,
    );
    daemon.wait_log(&["camera added", "yard"], Duration::from_secs(5));
    wait_for(
        "both cameras listed, yard streaming",
        Duration::from_secs(20),
        || {
            let ids = camera_ids(api, &token);
            ids == ["gate", "yard"] && camera_field_of(api, &token, "yard", "state") == "streaming"
        },
    );
    wait_for("yard inferred", Duration::from_secs(30), || {
        inferences(api, &token, "yard") > 0
    });
    // A summary period of the rules stage sees yard's counters (frames skipped by now).
    std::thread::sleep(kinderwatch::perimeter::SUMMARY_PERIOD + Duration::from_secs(2));
    wait_for("gate streaming on", Duration::from_secs(10), || {
        frames() > gate_frames
    });
    assert_eq!(
        daemon
            .logs()
            .matches("camera restarted with its new config")
            .count(),
        2,
        "gate was not restarted by the addition"
    );

    // Renamed: replaced under its id (a fresh pool entry whose counters start again at 0: the
    // rules stage's per-camera summary must not underflow on them), and inferred again.
    let renamed = yard.replace("detect_width", "name = \"Yard, south\"\ndetect_width");
    reload_to(
        "the renaming reload",
        &format!("{gate_keys}{renamed}{FENCE_AND_GATE_LINE}"),
        5,
    );
    wait_for("the new name", Duration::from_secs(10), || {
        camera_field_of(api, &token, "yard", "name") == "Yard, south"
    });
    let yard_before = inferences(api, &token, "yard");
    wait_for("the renamed yard inferred", Duration::from_secs(30), || {
        inferences(api, &token, "yard") > yard_before
    });
    // Past a summary period (5 s) of the rules stage, which logs each camera's counters.
    std::thread::sleep(kinderwatch::perimeter::SUMMARY_PERIOD + Duration::from_secs(1));
    assert_eq!(
        rule_ids(api, &token),
        ["fence", "gate-line"],
        "the rules stage runs on"
    );

    // Disabled: replaced by a camera that does not stream (and is not inferred).
    reload_to(
        "the disabling reload",
        &format!(
            "{gate_keys}{}{FENCE_AND_GATE_LINE}",
            yard.replace("detect_width", "enabled = false\ndetect_width")
        ),
        6,
    );
    wait_for("yard disabled", Duration::from_secs(10), || {
        camera_field_of(api, &token, "yard", "state") == "disabled"
    });
    assert_eq!(camera_ids(api, &token), ["gate", "yard"]);

    // Removed: it leaves the list; gate runs on.
    reload_to(
        "the removing reload",
        &format!("{gate_keys}{FENCE_AND_GATE_LINE}"),
        7,
    );
    daemon.wait_log(&["camera removed", "yard"], Duration::from_secs(5));
    assert_eq!(camera_ids(api, &token), ["gate"]);
    let yard_inferred = inferences(api, &token, "yard");
    let gate_frames = frames();
    wait_for("gate streaming on", Duration::from_secs(10), || {
        frames() > gate_frames
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        inferences(api, &token, "yard"),
        yard_inferred,
        "nothing of the removed camera is inferred"
    );
    assert_eq!(camera_state(api, &token), "streaming");
    assert_eq!(rule_ids(api, &token), ["fence", "gate-line"]);

    // The old supervisor's end was on purpose: no task ended on its own.
    assert!(
        !daemon.logs().contains("ended on its own"),
        "{}",
        daemon.logs()
    );
    // The daemon ran on throughout: no restart, one process.
    assert_eq!(
        daemon.logs().matches("starting kinderwatch").count(),
        1,
        "{}",
        daemon.logs()
    );
}

/// In process: the graph with detections from the test and the store; a reload moves the fence
/// where the walker does not cross it and adds a line where it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tripwire_fires_on_the_new_line_only_and_arming_is_kept() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let text = |rules: &str| {
        format!(
            "[site]\nid = \"kg-7\"\n[state]\ndir = \"{}\"\n[store]\nmin_free_mb = 1\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1/x\"\n{rules}",
            dir.path().display()
        )
    };
    let config =
        |t: &str| Config::from_toml(t, std::path::Path::new("site.toml"), dir.path()).unwrap();
    let first = text(
        "[[rules]]\nid = \"fence\"\ncamera = \"gate\"\nkind = \"tripwire\"\nline = [[0.0, 0.5], [1.0, 0.5]]\ncooldown = \"0s\"\n\
         [[rules]]\nid = \"side\"\ncamera = \"gate\"\nkind = \"tripwire\"\nline = [[0.0, 0.4], [1.0, 0.4]]\ncooldown = \"0s\"\n",
    );
    let store = Store::open(
        &dir.path().join("events.db"),
        &StoreConfig {
            min_free_mb: 1,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let mut daemon = Daemon::builder(&config(&first))
        .frames(Synthetic::new(|_, _| None))
        .detections(Detections::Caller)
        .store(store.clone())
        .start()
        .await
        .unwrap();
    let detections = daemon.take_detections_input().unwrap();
    let crossings = |rule: &str| {
        store
            .query(&EventQuery {
                kind: Some(EventKind::LineCrossed),
                rule: Some(rule.into()),
                limit: 100,
                ..EventQuery::default()
            })
            .unwrap()
            .events
            .len()
    };
    let walk = |t0: SystemTime| {
        let detections = detections.clone();
        async move {
            for d in common::walk_down(t0) {
                detections.send(d).await.unwrap();
            }
        }
    };
    let t0 = SystemTime::now();
    walk(t0).await;
    common::poll_until(Duration::from_secs(10), "both lines crossed", || {
        crossings("fence") == 1 && crossings("side") == 1
    })
    .await;

    // Disarmed at run time: a reload keeps it so.
    let (reply, rx) = tokio::sync::oneshot::channel();
    daemon
        .rule_commands()
        .send(RuleCommand::SetArmed {
            rule: "side".into(),
            armed: false,
            reply,
        })
        .await
        .unwrap();
    rx.await.unwrap().unwrap();

    // The fence moves below the walk (y 0.9); a new line where the walk crosses (y 0.6).
    let second = text(
        "[[rules]]\nid = \"fence\"\ncamera = \"gate\"\nkind = \"tripwire\"\nline = [[0.0, 0.9], [1.0, 0.9]]\ncooldown = \"0s\"\n\
         [[rules]]\nid = \"side\"\ncamera = \"gate\"\nkind = \"tripwire\"\nline = [[0.0, 0.4], [1.0, 0.4]]\ncooldown = \"0s\"\n\
         [[rules]]\nid = \"new-line\"\ncamera = \"gate\"\nkind = \"tripwire\"\nline = [[0.0, 0.6], [1.0, 0.6]]\ncooldown = \"0s\"\n",
    );
    let plan = ReloadPlan::between(&first.parse().unwrap(), &second.parse().unwrap());
    assert_eq!(
        plan,
        ReloadPlan {
            rules: true,
            ..Default::default()
        }
    );
    daemon.reload(config(&second), &plan).await.unwrap();
    walk(t0 + Duration::from_secs(60)).await;
    common::poll_until(Duration::from_secs(10), "the new line crossed", || {
        crossings("new-line") == 1
    })
    .await;
    // The walk's frames are handled in order: the new line's crossing is in, so would be any
    // crossing of the old fence or of the disarmed line.
    assert_eq!(crossings("fence"), 1, "the moved fence is not crossed");
    assert_eq!(crossings("side"), 1, "still disarmed after the reload");

    // A change that needs a restart is refused whole: the running rules stay.
    let third = second
        .replace("id = \"kg-7\"", "id = \"kg-8\"")
        .replace("0.9]", "0.5]");
    let plan = ReloadPlan::between(&second.parse().unwrap(), &third.parse().unwrap());
    let refused = daemon.reload(config(&third), &plan).await.unwrap_err();
    assert!(refused.to_string().contains("site"), "{refused}");
    assert_eq!(daemon.config().site.id, "kg-7");
    drop(detections);
    let report = daemon.shutdown(SHUTDOWN_GRACE).await;
    assert!(report.clean, "{report:?}");
}
