//! Bounded teardown: a pipeline whose state change to Null hangs is abandoned within the deadline
//! (and counted), never holding up its caller; and a UDP camera that stopped sending, torn down
//! again and again, never makes shutdown wait past its bound. (Its own test binary: it counts the
//! process's stuck teardowns.)

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Auth, RtspTestServer, Source, camera, wait_state};
use gstreamer as gst;
use gstreamer::prelude::*;
use kinderwatch::app::{Daemon, SHUTDOWN_GRACE};
use kinderwatch::camera::CameraState;
use kinderwatch::camera::pipeline::live_pipelines;
use kinderwatch::camera::teardown::{Teardown, set_null_within, stuck_teardowns};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_stuck_in_teardown_is_abandoned_within_the_deadline() {
    common::init();
    let pipeline = gst::parse::launch("videotestsrc is-live=true ! identity name=id ! fakesink")
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    // The streaming thread blocks inside a probe (holding its stream lock) until released: the
    // state change to Null waits for it, as rtspsrc waits for a blocked udpsrc thread.
    let (release, blocked) = mpsc::channel::<()>();
    let blocked = std::sync::Mutex::new(blocked);
    let (entered_tx, entered) = mpsc::channel::<()>();
    let entered_tx = std::sync::Mutex::new(Some(entered_tx));
    let id = pipeline.by_name("id").unwrap();
    id.static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            if let Some(tx) = entered_tx.lock().unwrap().take() {
                let _ = tx.send(());
                let _ = blocked.lock().unwrap().recv();
            }
            gst::PadProbeReturn::Ok
        });
    pipeline.set_state(gst::State::Playing).unwrap();
    entered
        .recv_timeout(Duration::from_secs(10))
        .expect("the probe was reached");
    let started = Instant::now();
    let outcome = set_null_within(
        pipeline.clone().upcast(),
        (),
        Duration::from_millis(500),
        "stuck-test",
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(outcome, Teardown::Stuck);
    assert!(
        waited < Duration::from_secs(5),
        "the caller waited {waited:?}"
    );
    assert_eq!(stuck_teardowns(), 1);
    assert_eq!(
        common::counter(
            "kinderwatch_camera_teardown_stuck_total",
            &[("camera", "stuck-test")]
        ),
        1
    );
    // Released: the abandoned thread finishes and the count goes back down.
    release.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stuck_teardowns() > 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned teardown never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pipeline.current_state(), gst::State::Null);
    // A pipeline that stops normally is not counted.
    let ok = gst::parse::launch("videotestsrc is-live=true ! fakesink").unwrap();
    ok.set_state(gst::State::Playing).unwrap();
    let outcome = set_null_within(ok.clone(), (), Duration::from_secs(5), "ok-test").await;
    assert!(matches!(outcome, Teardown::Done(_)), "{outcome:?}");
    assert_eq!(stuck_teardowns(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_camera_that_stopped_sending_never_holds_up_shutdown() {
    common::init();
    const ROUNDS: usize = 50;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for round in 0..ROUNDS {
        let server = RtspTestServer::start(
            Source::Pattern {
                width: 640,
                height: 480,
                fps: 25,
            },
            Auth::None,
        );
        let config = common::config(vec![camera(
            "udp-cam",
            &server.url(),
            "transport = \"udp\"",
        )]);
        let daemon = Daemon::start(&config).await.unwrap();
        let mut handle = daemon.cameras()[0].clone();
        wait_state(
            &mut handle.status,
            CameraState::Streaming,
            Duration::from_secs(20),
        )
        .await;
        // The server keeps the session but stops sending; tear down at once or a moment later.
        server.stall();
        tokio::time::sleep(Duration::from_millis(50 * (round % 4) as u64)).await;
        let report = daemon.shutdown(SHUTDOWN_GRACE).await;
        slowest = slowest.max(report.elapsed);
        assert!(
            report.clean,
            "round {round}: shutdown not done within {SHUTDOWN_GRACE:?}: {report:?}"
        );
        assert_eq!(
            handle.status.borrow().state,
            CameraState::Stopped,
            "round {round}"
        );
    }
    let total = started.elapsed();
    // Generous: only a hang (a teardown waited for without its deadline) can exceed it.
    assert!(
        total < (SHUTDOWN_GRACE + Duration::from_secs(20)) * ROUNDS as u32,
        "{ROUNDS} rounds took {total:?}"
    );
    eprintln!(
        "teardown: {ROUNDS} UDP cameras stalled then shut down in {total:?} (slowest shutdown {slowest:?}); {} teardowns stuck and abandoned, {} pipelines left",
        stuck_teardowns(),
        live_pipelines()
    );
}
