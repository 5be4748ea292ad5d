//! The whole chain over the real RTSP path: the sample clip → detection → tracking → rules →
//! events. (Its own test binary: it needs the CPU to itself for a deterministic frame sequence.)

mod common;

use std::time::Duration;

use common::{Auth, RtspTestServer, Source, camera, wait_state};
use kinderwatch::app::{Daemon, Detections};
use kinderwatch::camera::CameraState;
use kinderwatch::config::Config;
use kinderwatch::events::EventKind;
use kinderwatch::perimeter::RecordedEvent;

const FRAMES: usize = 60;

fn clip_config(url: &str) -> Config {
    let mut cam = camera(
        "clip",
        url,
        "detect_width = 640\ndetect_height = 480\ndetect_fps = 5",
    );
    cam.id = "clip".into();
    let mut config = common::config(vec![cam]);
    config.detector.model =
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/nanodet-coco-416.toml"));
    config.detector.workers = 2;
    config.motion.enabled = false;
    let rules: Config = Config::from_toml(
        r#"
[site]
id = "t"
[[cameras]]
id = "clip"
url = "rtsp://127.0.0.1/x"
[[rules]]
id = "path-line"
camera = "clip"
kind = "tripwire"
line = [[0.05, 0.55], [0.95, 0.55]]
cooldown = "1h"
"#,
        std::path::Path::new("rules.toml"),
        std::path::Path::new("."),
    )
    .unwrap();
    config.rules = rules.rules;
    config
}

/// Runs the first `FRAMES` inferred frames of the clip through the chain; returns the events and
/// whether any frame was dropped on the way.
async fn one_run(server: &RtspTestServer) -> (Vec<RecordedEvent>, bool) {
    let config = clip_config(&server.url());
    let mut daemon = Daemon::builder(&config)
        .detections(Detections::Intercepted)
        .start()
        .await
        .unwrap();
    let mut status = daemon.cameras()[0].status.clone();
    wait_state(&mut status, CameraState::Streaming, Duration::from_secs(20)).await;
    let mut pool_rx = daemon.take_detections().unwrap();
    let to_rules = daemon.take_detections_input().unwrap();
    let mut events_rx = daemon.take_events().unwrap();
    // The first FRAMES inferred frames; a dropped frame (one replaced in the camera's slot while
    // the previous one was inferred) is reported, since it may change what the tracker sees.
    for _ in 0..FRAMES {
        let r = tokio::time::timeout(Duration::from_secs(20), pool_rx.recv())
            .await
            .expect("frames keep coming")
            .unwrap();
        to_rules.send(r).await.unwrap();
    }
    // No more detections: the rules finish what they have (snapshots too) and end.
    drop(to_rules);
    common::poll_until(Duration::from_secs(20), "the rules end", || {
        daemon.ended_tasks().iter().any(|t| t == "rules")
    })
    .await;
    let stats = daemon.pool().unwrap().stats("clip").unwrap();
    let dropped = stats.dropped() > 0;
    let mut events = Vec::new();
    while let Ok(e) = events_rx.try_recv() {
        // The rules' events only (a camera health event may come too).
        if e.event.rule.is_some() {
            events.push(e);
        }
    }
    daemon.shutdown(Duration::from_secs(5)).await;
    (events, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_clip_crossings_are_the_same_in_three_runs() {
    common::init();
    let server = RtspTestServer::start(Source::SampleClip, Auth::None);
    let mut counts = Vec::new();
    for run in 1..=3 {
        let (events, dropped) = one_run(&server).await;
        if dropped {
            eprintln!("run {run}: some frames were dropped");
        }
        for e in &events {
            assert_eq!(e.event.kind, EventKind::LineCrossed);
            assert_eq!(e.event.rule.as_deref(), Some("path-line"));
            let jpeg = e.snapshot.as_ref().expect("a snapshot");
            assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "JPEG");
        }
        let mut per_direction = events
            .iter()
            .map(|e| format!("{:?}", e.event.object.as_ref().unwrap().crossing))
            .collect::<Vec<_>>();
        per_direction.sort();
        counts.push((events.len(), per_direction));
    }
    assert!(
        counts[0].0 > 0,
        "people walk across the middle of the clip: {counts:?}"
    );
    assert!(
        counts.iter().all(|c| *c == counts[0]),
        "runs differ: {counts:?}"
    );
}
