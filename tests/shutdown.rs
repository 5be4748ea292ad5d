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

/// Every task has a name: one that ends on its own (returns or panics) is listed by name, logged
/// by the progress monitor (which stops feeding the watchdog), and the rest run on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_ends_on_its_own_is_named() {
    common::init();
    let daemon = Daemon::start(&common::config(vec![])).await.unwrap();
    daemon.spawn("steady", |cancel| async move { cancel.cancelled().await });
    daemon.spawn("short-lived", |_| async {});
    daemon.spawn("buggy", |_| async { panic!("a bug in a task") });
    let monitor =
        kinderwatch::progress::Monitor::start(daemon.stages().clone(), None, daemon.liveness());
    common::poll_until(Duration::from_secs(5), "two tasks ended", || {
        daemon.ended_tasks().len() == 2
    })
    .await;
    let mut ended = daemon.ended_tasks();
    ended.sort();
    assert_eq!(ended, ["buggy", "short-lived"]);
    common::poll_until(Duration::from_secs(5), "the monitor names them", || {
        let logs = common::captured_logs();
        logs.contains("task=short-lived") && logs.contains("task=buggy")
    })
    .await;
    drop(monitor);
    let report = daemon.shutdown(SHUTDOWN_GRACE).await;
    assert!(report.clean, "{report:?}");
}
