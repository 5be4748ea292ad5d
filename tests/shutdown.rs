//! Shutdown with streams running: every pipeline reaches Null within the bound, none is left.
//! (Its own test binary: it counts the process's live pipelines.)

mod common;

use std::time::Duration;

use common::{Auth, RtspTestServer, Source, camera, wait_state};
use kinderwatch::app::{Daemon, SHUTDOWN_GRACE};
use kinderwatch::camera::CameraState;
use kinderwatch::camera::pipeline::live_pipelines;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_streams_running_leaves_no_pipeline() {
    common::init();
    let server = RtspTestServer::start(
        Source::Pattern {
            width: 1280,
            height: 720,
            fps: 25,
        },
        Auth::None,
    );
    // Three streaming cameras and one that keeps failing (nothing listening).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = common::config(vec![
        camera("a", &server.url(), ""),
        camera("b", &server.url(), ""),
        camera("c", &server.url(), ""),
        camera("dead", &format!("rtsp://127.0.0.1:{port}/x"), ""),
    ]);
    let daemon = Daemon::start(&config).await.unwrap();
    let mut handles: Vec<_> = daemon.cameras().to_vec();
    for h in &mut handles[..3] {
        wait_state(
            &mut h.status,
            CameraState::Streaming,
            Duration::from_secs(20),
        )
        .await;
    }
    assert!(live_pipelines() >= 3, "{} live pipelines", live_pipelines());

    let report = daemon.shutdown(SHUTDOWN_GRACE).await;
    assert!(
        report.clean,
        "not every task stopped within {SHUTDOWN_GRACE:?}: {report:?}"
    );
    assert_eq!(live_pipelines(), 0, "pipelines left after shutdown");
    for h in &handles {
        assert_eq!(
            h.status.borrow().state,
            CameraState::Stopped,
            "camera {}",
            h.id
        );
    }
}
