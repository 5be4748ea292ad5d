//! The stage graph as the daemon builds it, fed by a synthetic frame source or a recorded clip
//! instead of RTSP: every stage from the detector pool to the store, and the order they stop in.

mod common;

use std::time::Duration;

use kinderwatch::app::{Clip, Daemon, SHUTDOWN_GRACE, Synthetic};
use kinderwatch::camera::Pixels;
use kinderwatch::config::Config;
use kinderwatch::events::EventKind;
use kinderwatch::store::Store;
use kinderwatch::store::query::EventQuery;

/// One camera whose every frame is the sample photo (people in it), a zone rule over the whole
/// picture, the real model, a store in `dir`.
fn config(dir: &std::path::Path) -> Config {
    let text = format!(
        r#"
[site]
id = "kg"
[state]
dir = "{}"
[store]
min_free_mb = 1
[detector]
model = "{}/models/nanodet-coco-416.toml"
workers = 1
[motion]
enabled = false
[[cameras]]
id = "yard"
url = "rtsp://127.0.0.1/unused"
detect_width = 640
detect_height = 480
detect_fps = 4
[[zones]]
id = "all"
camera = "yard"
polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
[[rules]]
id = "yard-entry"
camera = "yard"
kind = "zone"
zone = "all"
min_score = 0.4
cooldown = "1h"
"#,
        dir.display(),
        env!("CARGO_MANIFEST_DIR")
    );
    Config::from_toml(&text, std::path::Path::new("graph.toml"), dir)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn photo() -> Pixels {
    let img = image::open(common::media_dir().join("camera.png"))
        .unwrap()
        .to_rgb8();
    let img = image::imageops::resize(&img, 640, 480, image::imageops::FilterType::Triangle);
    Pixels::Rgb(img.into_raw())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_frames_go_through_every_stage_into_the_store() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let store = Store::open(&dir.path().join("events.db"), &config.store).unwrap();
    let picture = photo();
    let daemon = Daemon::builder(&config)
        .frames(Synthetic::new(move |_, _| Some(picture.clone())))
        .store(store.clone())
        .start()
        .await
        .unwrap();
    let entered = || {
        store
            .query(&EventQuery {
                kind: Some(EventKind::ZoneEntered),
                limit: 10,
                ..EventQuery::default()
            })
            .unwrap()
            .events
    };
    common::poll_until(
        Duration::from_secs(30),
        "a zone_entered event stored",
        || !entered().is_empty(),
    )
    .await;
    let stored = entered();
    let e = &stored[0];
    assert_eq!(e.event.camera.as_deref(), Some("yard"));
    assert_eq!(e.event.rule.as_deref(), Some("yard-entry"));
    assert!(e.snapshot_len > 0, "with its snapshot");
    assert_eq!(daemon.ended_tasks(), Vec::<String>::new(), "no task ended");
    let report = daemon.shutdown(SHUTDOWN_GRACE).await;
    assert!(report.clean, "{report:?}");
    assert_eq!(
        report.stopped,
        [
            "added",
            "api",
            "cameras",
            "detectors",
            "rules",
            "recorder",
            "publisher"
        ],
        "every step stopped in time, in reverse start order"
    );
}

/// Stopping in reverse start order: a stage upstream of the recorder that still emits while it
/// stops (as the rules do with the snapshots being encoded) is still recorded, since the recorder
/// stops only after it. (Stopped all at once, the recorder would be gone by then.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_stopping_stage_emits_is_still_recorded() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.detector.model = None;
    let store = Store::open(&dir.path().join("events.db"), &config.store).unwrap();
    let daemon = Daemon::builder(&config)
        .frames(Synthetic::new(|_, _| None))
        .store(store.clone())
        .start()
        .await
        .unwrap();
    let event = kinderwatch::events::Event::new(
        EventKind::ZoneEntered,
        "kg",
        "yard",
        jiff::Timestamp::now(),
    );
    let id = event.id;
    let events = daemon.events_input();
    daemon.spawn("late", |cancel| async move {
        cancel.cancelled().await;
        // Half a second into the stop, well after the recorder would have gone.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = events
            .send(kinderwatch::events::RecordedEvent {
                event,
                snapshot: None,
            })
            .await;
    });
    let report = daemon.shutdown(SHUTDOWN_GRACE).await;
    assert!(report.clean, "{report:?}");
    assert!(
        store.get(&id).unwrap().is_some(),
        "the event sent while stopping is recorded"
    );
}

/// A recorded clip as the frame source, no RTSP: the walk of `common::walk_clip` (across the
/// fence, into the yard, standing there) gives one crossing, one entry and one loitering, stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_clip_through_the_graph_gives_its_known_events() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let clip = common::walk_clip::make(dir.path());
    let text = format!(
        r#"
[site]
id = "kg"
[state]
dir = "{dir}"
[store]
min_free_mb = 1
[detector]
model = "{root}/models/nanodet-coco-416.toml"
workers = 1
[motion]
enabled = false
[[cameras]]
id = "yard"
url = "rtsp://127.0.0.1/unused"
detect_width = 640
detect_height = 480
detect_fps = {fps}
[[zones]]
id = "yard"
camera = "yard"
polygon = [[0.2, 0.75], [0.8, 0.75], [0.8, 1.0], [0.2, 1.0]]
[[rules]]
id = "fence"
camera = "yard"
kind = "tripwire"
line = [[0.05, 0.62], [0.95, 0.62]]
direction = "right"
min_score = 0.4
cooldown = "1h"
[[rules]]
id = "yard-entry"
camera = "yard"
kind = "zone"
zone = "yard"
min_score = 0.4
cooldown = "1h"
[[rules]]
id = "yard-loitering"
camera = "yard"
kind = "loitering"
zone = "yard"
dwell = "3s"
min_score = 0.4
cooldown = "1h"
"#,
        dir = dir.path().display(),
        root = env!("CARGO_MANIFEST_DIR"),
        fps = common::walk_clip::FPS,
    );
    let config = Config::from_toml(&text, std::path::Path::new("clip.toml"), dir.path())
        .unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&dir.path().join("events.db"), &config.store).unwrap();
    let daemon = Daemon::builder(&config)
        .frames(Clip {
            path: clip,
            looped: false,
        })
        .store(store.clone())
        .start()
        .await
        .unwrap();
    let rule_events = || {
        let mut events = store
            .query(&EventQuery {
                limit: 100,
                ..EventQuery::default()
            })
            .unwrap()
            .events;
        events.retain(|e| e.event.rule.is_some());
        events
    };
    common::poll_until(Duration::from_secs(40), "the loitering event", || {
        rule_events()
            .iter()
            .any(|e| e.event.kind == EventKind::Loitering)
    })
    .await;
    // The clip plays on (the person stands): nothing more comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = rule_events();
    let mut got: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.event.kind.as_str(), e.event.rule.as_deref().unwrap()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("line_crossed", "fence"),
            ("loitering", "yard-loitering"),
            ("zone_entered", "yard-entry")
        ],
        "{events:#?}"
    );
    let tracks: std::collections::BTreeSet<u64> = events
        .iter()
        .map(|e| e.event.object.as_ref().unwrap().track_id)
        .collect();
    assert_eq!(tracks.len(), 1, "one person, one track: {events:#?}");
    assert!(events.iter().all(|e| e.snapshot_len > 0));
    let report = daemon.shutdown(SHUTDOWN_GRACE).await;
    assert!(report.clean, "{report:?}");
}
