//! The stage graph as the daemon builds it, fed by a synthetic frame source instead of RTSP:
//! every stage from the detector pool to the store, and the order they stop in.

mod common;

use std::time::Duration;

use kinderwatch::app::{Daemon, SHUTDOWN_GRACE, Synthetic};
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
            "cameras",
            "detectors",
            "rules",
            "api",
            "recorder",
            "publisher"
        ],
        "stopped in reverse start order"
    );
}

/// Stopping in reverse start order: an event handed to the recorder as the daemon stops is
/// still written, since the recorder stops only after the stages that feed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_when_the_stop_comes_are_recorded() {
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
    let events = daemon.events_input();
    let mut ids = Vec::new();
    for _ in 0..50 {
        let e = kinderwatch::events::Event::new(
            EventKind::ZoneEntered,
            "kg",
            "yard",
            jiff::Timestamp::now(),
        );
        ids.push(e.id);
        events
            .send(kinderwatch::events::RecordedEvent {
                event: e,
                snapshot: None,
            })
            .await
            .unwrap();
    }
    drop(events);
    let report = daemon.shutdown(SHUTDOWN_GRACE).await;
    assert!(report.clean, "{report:?}");
    for id in ids {
        assert!(store.get(&id).unwrap().is_some(), "event {id} recorded");
    }
}
