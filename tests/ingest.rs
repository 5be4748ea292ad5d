//! Camera ingest against a real RTSP server (gstreamer-rtsp-server, loopback, free port):
//! frames, reconnects, stalls, auth and path faults, and the password never in a log line.

mod common;

use std::time::{Duration, Instant};

use common::{Auth, RtspTestServer, Source, camera, fast_ingest, wait_for, wait_state};
use kinderwatch::app::Daemon;
use kinderwatch::camera::supervisor::CameraSupervisor;
use kinderwatch::camera::{CameraHandle, CameraState};
use kinderwatch::config::CameraConfig;
use tokio_util::sync::CancellationToken;

const PATTERN_720P: Source = Source::Pattern {
    width: 1280,
    height: 720,
    fps: 25,
};

/// Starts one camera supervisor; returns its handle and the token that stops it.
fn start_camera(
    cam: &CameraConfig,
) -> (CameraHandle, CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let (sup, handle) = CameraSupervisor::new(cam, &fast_ingest(), cancel.clone()).unwrap();
    let task = tokio::spawn(sup.expect("enabled camera").run());
    (handle, cancel, task)
}

async fn stop_camera(
    mut handle: CameraHandle,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
) {
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("supervisor stops within 5 s")
        .unwrap();
    wait_state(
        &mut handle.status,
        CameraState::Stopped,
        Duration::from_secs(1),
    )
    .await;
}

/// Counts frames from the slot for `window`, checking each one's size.
async fn count_frames(handle: &CameraHandle, window: Duration, width: u32, height: u32) -> usize {
    let deadline = Instant::now() + window;
    let mut n = 0;
    while let Ok(frame) = tokio::time::timeout_at(deadline.into(), handle.slot.next()).await {
        assert_eq!((frame.width, frame.height), (width, height), "frame size");
        assert!(
            matches!(frame.pixels, kinderwatch::camera::Pixels::I420 { .. }),
            "cameras deliver I420"
        );
        assert_eq!(
            frame.pixels.len(),
            frame.pixels.expected_len(width, height),
            "tightly packed planes"
        );
        assert_eq!(&*frame.camera, &*handle.id);
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_at_the_configured_size_and_rate() {
    common::init();
    let server = RtspTestServer::start(PATTERN_720P, Auth::None);
    let cam = camera(
        "pattern",
        &server.url(),
        "detect_width = 320\ndetect_height = 180\ndetect_fps = 5",
    );
    let (mut handle, cancel, task) = start_camera(&cam);
    wait_state(
        &mut handle.status,
        CameraState::Streaming,
        Duration::from_secs(15),
    )
    .await;
    let n = count_frames(&handle, Duration::from_secs(4), 320, 180).await;
    assert!(common::counter("kinderwatch_camera_frames_total", &[("camera", "pattern")]) > 0);
    // 5 fps out of a 25 fps source for 4 s: about 20 frames; not 100, not 0.
    assert!(
        (12..=28).contains(&n),
        "{n} frames in 4 s at detect_fps = 5"
    );
    // The published status catches up within its 1 s refresh period.
    let status = wait_for(
        &mut handle.status,
        Duration::from_secs(3),
        "frame counters",
        |s| s.frames_received >= n as u64,
    )
    .await;
    assert!(status.last_frame_at.is_some(), "{status:?}");
    assert!((3.0..=7.0).contains(&status.fps), "{status:?}");
    stop_camera(handle, cancel, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_cameras_in_one_daemon() {
    common::init();
    let pattern = RtspTestServer::start(
        Source::Pattern {
            width: 640,
            height: 360,
            fps: 15,
        },
        Auth::None,
    );
    let clip = RtspTestServer::start(Source::SampleClip, Auth::None);
    let config = common::config(vec![
        camera(
            "a",
            &pattern.url(),
            "detect_width = 320\ndetect_height = 180",
        ),
        camera(
            "b",
            &pattern.url(),
            "detect_width = 160\ndetect_height = 96",
        ),
        camera("c", &clip.url(), "detect_width = 384\ndetect_height = 288"),
        camera("d", &clip.url(), "detect_width = 640\ndetect_height = 480"),
        camera("e", &clip.url(), "enabled = false"),
    ]);
    let daemon = Daemon::start(&config).await.unwrap();
    let sizes = [(320, 180), (160, 96), (384, 288), (640, 480)];
    for (handle, (w, h)) in daemon.cameras().iter().zip(sizes) {
        let mut rx = handle.status.clone();
        wait_state(&mut rx, CameraState::Streaming, Duration::from_secs(20)).await;
        let n = count_frames(handle, Duration::from_secs(2), w, h).await;
        assert!(n >= 4, "camera {} delivered {n} frames in 2 s", handle.id);
    }
    assert_eq!(
        daemon.cameras()[4].status.borrow().state,
        CameraState::Disabled
    );
    let report = daemon.shutdown(Duration::from_secs(5)).await;
    assert!(report.clean, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_then_back_reconnects() {
    common::init();
    let server = RtspTestServer::start(PATTERN_720P, Auth::None);
    let cam = camera(
        "restart",
        &server.url(),
        "detect_width = 320\ndetect_height = 180",
    );
    let (mut handle, cancel, task) = start_camera(&cam);
    wait_state(
        &mut handle.status,
        CameraState::Streaming,
        Duration::from_secs(15),
    )
    .await;

    server.stop();
    let down = wait_state(
        &mut handle.status,
        CameraState::Backoff,
        Duration::from_secs(15),
    )
    .await;
    assert!(down.last_error.is_some(), "{down:?}");
    assert!(down.retry_at.is_some(), "{down:?}");
    // Stay down for a few attempts: the camera keeps retrying.
    let retrying = wait_for(
        &mut handle.status,
        Duration::from_secs(15),
        "two failed reconnects",
        |s| s.reconnects >= 2 && s.state == CameraState::Backoff,
    )
    .await;
    assert_ne!(retrying.state, CameraState::Streaming);

    server.restart();
    // backoff_max is 2 s in fast_ingest(): back within a few backoffs.
    let back = wait_state(
        &mut handle.status,
        CameraState::Streaming,
        Duration::from_secs(15),
    )
    .await;
    assert!(back.reconnects >= 2, "{back:?}");
    assert!(
        back.last_error.is_none(),
        "cleared once streaming: {back:?}"
    );
    assert!(count_frames(&handle, Duration::from_secs(2), 320, 180).await > 0);
    stop_camera(handle, cancel, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_server_is_detected_and_rebuilt() {
    common::init();
    let server = RtspTestServer::start(PATTERN_720P, Auth::None);
    let cam = camera(
        "stall",
        &server.url(),
        "detect_width = 320\ndetect_height = 180",
    );
    let (mut handle, cancel, task) = start_camera(&cam);
    wait_state(
        &mut handle.status,
        CameraState::Streaming,
        Duration::from_secs(15),
    )
    .await;

    server.stall();
    // stall_timeout is 2 s in fast_ingest(); rtspsrc alone would take ~25 s.
    let stalled = wait_state(
        &mut handle.status,
        CameraState::Backoff,
        Duration::from_secs(10),
    )
    .await;
    let err = stalled.last_error.clone().unwrap_or_default();
    assert!(err.contains("stalled"), "{stalled:?}");
    // The rebuilt pipeline opens a new session, which streams.
    let back = wait_state(
        &mut handle.status,
        CameraState::Streaming,
        Duration::from_secs(15),
    )
    .await;
    assert!(back.reconnects >= 1, "{back:?}");
    stop_camera(handle, cancel, task).await;
}

async fn wrong_password_is_auth_failed(auth: Auth, real_password: &str) {
    common::init();
    let server = RtspTestServer::start(PATTERN_720P, auth);
    let dir = tempfile::tempdir().unwrap();
    let wrong = "Wr0ng-Pa55-7f3a91";
    let wrong_file = dir.path().join("wrong.pass");
    std::fs::write(&wrong_file, format!("{wrong}\n")).unwrap();
    let right_file = dir.path().join("right.pass");
    std::fs::write(&right_file, real_password).unwrap();

    let bad = camera(
        "auth-bad",
        &server.url(),
        &format!(
            "username = \"viewer\"\npassword_file = \"{}\"",
            wrong_file.display()
        ),
    );
    let (mut handle, cancel, task) = start_camera(&bad);
    let s = wait_state(
        &mut handle.status,
        CameraState::AuthFailed,
        Duration::from_secs(15),
    )
    .await;
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("401"),
        "{s:?}"
    );
    assert!(s.retry_at.is_some());

    // Positive control: the right password streams from the same server.
    let good = camera(
        "auth-good",
        &server.url(),
        &format!(
            "username = \"viewer\"\npassword_file = \"{}\"",
            right_file.display()
        ),
    );
    let (mut good_handle, good_cancel, good_task) = start_camera(&good);
    wait_state(
        &mut good_handle.status,
        CameraState::Streaming,
        Duration::from_secs(15),
    )
    .await;

    stop_camera(handle, cancel, task).await;
    stop_camera(good_handle, good_cancel, good_task).await;

    let logs = common::captured_logs();
    assert!(
        logs.contains("camera refused the credentials"),
        "the fault is logged"
    );
    assert!(!logs.contains(wrong), "wrong password leaked into the logs");
    assert!(
        !logs.contains(real_password),
        "password leaked into the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_basic_auth() {
    wrong_password_is_auth_failed(
        Auth::Basic {
            user: "viewer".into(),
            password: "R1ght-Basic-c0ffee".into(),
        },
        "R1ght-Basic-c0ffee",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_digest_auth() {
    wrong_password_is_auth_failed(
        Auth::Digest {
            user: "viewer".into(),
            password: "R1ght-Digest-beef42".into(),
        },
        "R1ght-Digest-beef42",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_path_is_not_found() {
    common::init();
    let server = RtspTestServer::start(PATTERN_720P, Auth::None);
    let cam = camera("path", &server.url_with_path("/no-such-stream"), "");
    let (mut handle, cancel, task) = start_camera(&cam);
    let s = wait_state(
        &mut handle.status,
        CameraState::NotFound,
        Duration::from_secs(15),
    )
    .await;
    assert!(
        s.last_error.as_deref().unwrap_or("").contains("404"),
        "{s:?}"
    );
    // A configuration fault waits config_fault_backoff (60 s here), not the short transient backoff.
    let retry_in = s
        .retry_at
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(retry_in > Duration::from_secs(30), "{retry_in:?}");
    stop_camera(handle, cancel, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_the_url_query_never_reaches_the_status_or_the_logs() {
    common::init_logs();
    let server = RtspTestServer::start(PATTERN_720P, Auth::None);
    let url = server.url_with_path("/no-such-stream?channel=1&password=Qu3ry-Secret-77");
    let cam = camera("query", &url, "");
    let (mut handle, cancel, task) = start_camera(&cam);
    let s = wait_state(
        &mut handle.status,
        CameraState::NotFound,
        Duration::from_secs(15),
    )
    .await;
    let error = s.last_error.clone().unwrap_or_default();
    assert!(error.contains("404"), "{s:?}");
    // The status is what the API and the retained MQTT camera status show.
    assert!(!format!("{s:?}").contains("Qu3ry-Secret-77"), "{s:?}");
    stop_camera(handle, cancel, task).await;
    let logs = common::captured_logs();
    assert!(logs.contains("camera supervisor started"), "logs captured");
    assert!(
        !logs.contains("Qu3ry-Secret-77"),
        "the query secret was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_only_camera_streams_with_transport_auto_and_not_over_tcp() {
    common::init();
    let server = RtspTestServer::start_udp_only(PATTERN_720P);
    // Over TCP it never streams (461 Unsupported Transport).
    let tcp = camera("tcp", &server.url(), "transport = \"tcp\"");
    let (mut handle, cancel, task) = start_camera(&tcp);
    let s = wait_state(
        &mut handle.status,
        CameraState::Backoff,
        Duration::from_secs(15),
    )
    .await;
    assert!(s.last_error.is_some(), "{s:?}");
    stop_camera(handle, cancel, task).await;
    // `auto` tries TCP, then UDP, and streams.
    let auto = camera("auto", &server.url(), "transport = \"auto\"");
    let (mut handle, cancel, task) = start_camera(&auto);
    wait_state(
        &mut handle.status,
        CameraState::Streaming,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        handle.status.borrow().reconnects >= 1,
        "TCP was tried first"
    );
    stop_camera(handle, cancel, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_a_transient_backoff() {
    common::init();
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cam = camera("refused", &format!("rtsp://127.0.0.1:{port}/cam"), "");
    let (mut handle, cancel, task) = start_camera(&cam);
    let s = wait_state(
        &mut handle.status,
        CameraState::Backoff,
        Duration::from_secs(15),
    )
    .await;
    assert!(s.last_error.is_some(), "{s:?}");
    let retry_in = s
        .retry_at
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        retry_in <= Duration::from_secs(2),
        "transient backoff is short: {retry_in:?}"
    );
    let s = wait_for(
        &mut handle.status,
        Duration::from_secs(15),
        "three reconnects",
        |s| s.reconnects >= 3,
    )
    .await;
    assert_ne!(s.state, CameraState::AuthFailed);
    stop_camera(handle, cancel, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codec_auto_decodes_h265_and_mjpeg() {
    common::init();
    let h265 = RtspTestServer::start(
        Source::PatternH265 {
            width: 640,
            height: 360,
            fps: 10,
        },
        Auth::None,
    );
    let mjpeg = RtspTestServer::start(
        Source::PatternMjpeg {
            width: 640,
            height: 360,
            fps: 10,
        },
        Auth::None,
    );
    for (id, url) in [("h265", h265.url()), ("mjpeg", mjpeg.url())] {
        let cam = camera(
            id,
            &url,
            "codec = \"auto\"\ndetect_width = 320\ndetect_height = 180",
        );
        let (mut handle, cancel, task) = start_camera(&cam);
        wait_state(
            &mut handle.status,
            CameraState::Streaming,
            Duration::from_secs(15),
        )
        .await;
        assert!(
            count_frames(&handle, Duration::from_secs(2), 320, 180).await >= 4,
            "{id}"
        );
        stop_camera(handle, cancel, task).await;
    }
    // Control: the fixed H.264 chain cannot take the H.265 stream, so it never streams.
    let cam = camera("h265-as-h264", &h265.url(), "");
    let (mut handle, cancel, task) = start_camera(&cam);
    let s = wait_for(
        &mut handle.status,
        Duration::from_secs(20),
        "a failed attempt",
        |s| s.reconnects >= 1 || s.state == CameraState::Backoff,
    )
    .await;
    assert_ne!(s.state, CameraState::Streaming, "{s:?}");
    assert!(
        handle.slot.take().is_none(),
        "no frame from a mismatched decoder"
    );
    stop_camera(handle, cancel, task).await;
}
