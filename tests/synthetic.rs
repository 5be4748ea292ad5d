//! A synthetic clip with known truth, through the whole chain: a person (cut from scikit-image's
//! `camera.png`) walks down over a background, across a tripwire, into a zone, and stands there.
//! The clip is encoded to H.264, served over the real RTSP test server and run through the real
//! model. Three cameras watch the same clip: one with its rules armed, one disarmed, one outside
//! its schedule.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{Auth, RtspTestServer, Source, camera};
use kinderwatch::app::{Daemon, Detections};
use kinderwatch::config::Config;
use kinderwatch::events::EventKind;
use kinderwatch::perimeter::RecordedEvent;
use kinderwatch::rules::tripwire::Crossing;

const FPS: u32 = common::walk_clip::FPS;
/// How much of the clip each camera analyses from its first frame: less than the clip's 12 s, so
/// the clip's loop back to the start is never seen.
const WINDOW: Duration = Duration::from_secs(11);

fn config(url: &str) -> Config {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let mut text = String::from("[site]\nid = \"kg\"\ntime_zone = \"UTC\"\n");
    for (cam, extra) in [
        ("armed", String::new()),
        ("disarmed", "armed = false\n".to_owned()),
        (
            "offschedule",
            format!(
                "schedule = [\"00:00-24:00\"]\nexceptions = [{{ date = \"{today}\", windows = [] }}]\n"
            ),
        ),
    ] {
        text.push_str(&format!(
            r#"
[[cameras]]
id = "{cam}"
url = "rtsp://127.0.0.1/x"
[[zones]]
id = "yard-{cam}"
camera = "{cam}"
polygon = [[0.2, 0.75], [0.8, 0.75], [0.8, 1.0], [0.2, 1.0]]
[[rules]]
id = "fence-{cam}"
camera = "{cam}"
kind = "tripwire"
line = [[0.05, 0.62], [0.95, 0.62]]
direction = "right"
min_score = 0.4
cooldown = "1h"
{extra}
[[rules]]
id = "yard-entry-{cam}"
camera = "{cam}"
kind = "zone"
zone = "yard-{cam}"
min_score = 0.4
cooldown = "1h"
{extra}
[[rules]]
id = "yard-loitering-{cam}"
camera = "{cam}"
kind = "loitering"
zone = "yard-{cam}"
dwell = "3s"
min_score = 0.4
cooldown = "1h"
{extra}
"#
        ));
    }
    let mut c = Config::from_toml(&text, Path::new("synthetic.toml"), Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    let ingest = common::fast_ingest();
    for cam in &mut c.cameras {
        let fresh = camera(
            &cam.id,
            url,
            "detect_width = 640\ndetect_height = 480\ndetect_fps = 4",
        );
        *cam = fresh;
    }
    c.ingest = ingest;
    c.detector.model =
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/nanodet-coco-416.toml"));
    c.detector.workers = 2;
    c.motion.enabled = false;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_walk_gives_one_crossing_one_entry_one_loitering() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let clip = common::walk_clip::make(dir.path());
    let server = RtspTestServer::start(
        Source::Clip {
            path: clip,
            fps: FPS,
        },
        Auth::None,
    );
    let config = config(&server.url());
    let mut daemon = Daemon::builder(&config)
        .detections(Detections::Intercepted)
        .start()
        .await
        .unwrap();
    let mut pool_rx = daemon.take_detections().unwrap();
    let tx = daemon.take_detections_input().unwrap();
    let mut events_rx = daemon.take_events().unwrap();
    let mut seen: BTreeMap<String, (std::time::SystemTime, usize, usize, bool)> = BTreeMap::new();
    while seen.len() < 3 || seen.values().any(|s| !s.3) {
        let r = tokio::time::timeout(Duration::from_secs(30), pool_rx.recv())
            .await
            .expect("frames keep coming")
            .unwrap();
        let s =
            seen.entry(r.frame.camera.to_string())
                .or_insert((r.frame.captured_at, 0, 0, false));
        if r.frame.captured_at.duration_since(s.0).unwrap_or_default() >= WINDOW {
            s.3 = true;
            continue;
        }
        s.1 += 1;
        s.2 += usize::from(!r.detections.is_empty());
        tx.send(r).await.unwrap();
    }
    // No more detections: the rules finish what they have (snapshots too) and end.
    drop(tx);
    common::poll_until(Duration::from_secs(20), "the rules end", || {
        daemon.ended_tasks().iter().any(|t| t == "rules")
    })
    .await;
    daemon.shutdown(Duration::from_secs(5)).await;
    for (cam, (_, frames, with_person, _)) in &seen {
        assert!(*frames >= 20, "{cam}: {frames} frames in {WINDOW:?}");
        assert!(
            *with_person >= frames * 8 / 10,
            "{cam}: the person is found in {with_person} of {frames} frames"
        );
    }

    let mut by_camera: BTreeMap<String, Vec<RecordedEvent>> = BTreeMap::new();
    // The rules' events (the cameras' health events are not this test's).
    while let Ok(e) = events_rx.try_recv() {
        if e.event.rule.is_none() {
            continue;
        }
        by_camera
            .entry(e.event.camera.clone().unwrap_or_default())
            .or_default()
            .push(e);
    }
    let armed = by_camera.remove("armed").unwrap_or_default();
    let mut kinds: Vec<EventKind> = armed.iter().map(|e| e.event.kind).collect();
    kinds.sort_by_key(|k| k.as_str());
    assert_eq!(
        kinds,
        vec![
            EventKind::LineCrossed,
            EventKind::Loitering,
            EventKind::ZoneEntered
        ],
        "{armed:#?}"
    );
    let crossed = armed
        .iter()
        .find(|e| e.event.kind == EventKind::LineCrossed)
        .unwrap();
    assert_eq!(
        crossed.event.object.as_ref().unwrap().crossing,
        Some(Crossing::Right)
    );
    let track = crossed.event.object.as_ref().unwrap().track_id;
    assert!(
        armed
            .iter()
            .all(|e| e.event.object.as_ref().unwrap().track_id == track),
        "one person, one track"
    );
    assert!(armed.iter().all(|e| e.snapshot.is_some()));
    assert!(
        by_camera.is_empty(),
        "disarmed or outside the schedule, yet: {by_camera:#?}"
    );
}
