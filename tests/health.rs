//! Health events over the real RTSP path: a dropped camera is `camera_offline` after the grace
//! period and `camera_online` on return; a black or frozen picture is `camera_tampered`.

mod common;

use std::time::Duration;

use common::{Auth, RtspTestServer, Source, camera, wait_state};
use kinderwatch::app::Daemon;
use kinderwatch::camera::CameraState;
use kinderwatch::config::Config;
use kinderwatch::events::EventKind;
use kinderwatch::health::HealthConfig;
use kinderwatch::perimeter::RecordedEvent;
use tokio::sync::mpsc;

fn health() -> HealthConfig {
    HealthConfig {
        offline_grace: Duration::from_secs(2),
        tamper_after: Duration::from_secs(2),
        ..HealthConfig::default()
    }
}

/// The daemon (its health stage watching each camera) once its camera streams, with its events;
/// what the start itself reported (an offline camera still connecting, then online) is drained.
async fn streaming(config: &Config) -> (Daemon, mpsc::Receiver<RecordedEvent>) {
    let mut daemon = Daemon::start(config).await.unwrap();
    let mut rx = daemon.take_events().unwrap();
    let mut handle = daemon.cameras()[0].clone();
    wait_state(
        &mut handle.status,
        CameraState::Streaming,
        Duration::from_secs(15),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    while rx.try_recv().is_ok() {}
    (daemon, rx)
}

async fn next_event(
    rx: &mut mpsc::Receiver<RecordedEvent>,
    within: Duration,
) -> Option<RecordedEvent> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_camera_goes_offline_after_the_grace_and_online_on_return() {
    common::init();
    let server = RtspTestServer::start(
        Source::Pattern {
            width: 640,
            height: 360,
            fps: 10,
        },
        Auth::None,
    );
    let mut config = common::config(vec![camera("door", &server.url(), "")]);
    config.health = health();
    let (daemon, mut rx) = streaming(&config).await;

    // Streaming: nothing to report.
    assert!(next_event(&mut rx, Duration::from_secs(3)).await.is_none());
    server.stop();
    let off = next_event(&mut rx, Duration::from_secs(15))
        .await
        .expect("camera_offline");
    assert_eq!(off.event.kind, EventKind::CameraOffline);
    assert_eq!(off.event.camera.as_deref(), Some("door"));
    assert!(off.event.started_at < off.event.time, "{:?}", off.event);
    // Reported once while it stays down.
    assert!(next_event(&mut rx, Duration::from_secs(3)).await.is_none());
    server.restart();
    let on = next_event(&mut rx, Duration::from_secs(20))
        .await
        .expect("camera_online");
    assert_eq!(on.event.kind, EventKind::CameraOnline);
    daemon.shutdown(Duration::from_secs(5)).await;
}

async fn tamper_event(source: Source) -> Option<RecordedEvent> {
    let server = RtspTestServer::start(source, Auth::None);
    let mut config = common::config(vec![camera("yard", &server.url(), "detect_fps = 5")]);
    config.detector.model =
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ssdlite-person.toml"));
    config.detector.workers = 1;
    config.health = health();
    let (daemon, mut rx) = streaming(&config).await;
    let e = next_event(&mut rx, Duration::from_secs(8)).await;
    daemon.shutdown(Duration::from_secs(5)).await;
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_and_frozen_pictures_are_tampering_a_moving_one_is_not() {
    common::init();
    let black = tamper_event(Source::Named { pattern: "black" })
        .await
        .expect("camera_tampered for black");
    assert_eq!(black.event.kind, EventKind::CameraTampered);
    assert_eq!(black.event.detail.as_deref(), Some("black picture"));
    // A colour chart: a normal-looking picture whose frames never change (but for keyframes).
    let frozen = tamper_event(Source::Named { pattern: "colors" })
        .await
        .expect("camera_tampered for a frozen picture");
    assert_eq!(frozen.event.detail.as_deref(), Some("frozen picture"));
    // A real scene with people walking is fine.
    assert!(tamper_event(Source::SampleClip).await.is_none());
}
