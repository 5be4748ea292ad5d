//! A foreign camera: VLC (Debian's vlc-bin) serving the sample clip over RTSP with RTP over UDP,
//! the setup from the report of a teardown that hung. VLC stops sending (SIGSTOP: the process and
//! its sockets stay, nothing more comes) and resumes, five times: each time the daemon notices the
//! stall, tears the pipeline down within its deadline and streams again; then it shuts down, with
//! VLC stopped, within its bound and without abandoning a pipeline. (Its own test binary: it counts
//! the process's stuck teardowns.)

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{camera, wait_for, wait_state};
use kinderwatch::app::{Daemon, SHUTDOWN_GRACE};
use kinderwatch::camera::CameraState;
use kinderwatch::camera::teardown::stuck_teardowns;

/// cvlc as `nobody` (VLC refuses to run as root) serving `clip` at rtsp://127.0.0.1:PORT/cam.
struct Vlc {
    child: Child,
    port: u16,
}

impl Vlc {
    fn start(clip: &Path) -> Self {
        assert!(
            Path::new("/usr/bin/cvlc").exists(),
            "cvlc is missing: run scripts/setup.sh (package vlc-bin)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // nobody must be able to read the clip.
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let readable = dir.join("clip.h264");
        std::fs::copy(clip, &readable).unwrap();
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--",
                "cvlc",
            ]);
            c
        } else {
            Command::new("cvlc")
        };
        let child = cmd
            .env("HOME", &dir)
            .args(["-q", "--demux", "h264", "--h264-fps", "10", "--loop"])
            .arg(&readable)
            .arg("--sout")
            .arg(format!("#rtp{{sdp=rtsp://127.0.0.1:{port}/cam}}"))
            .arg("--sout-keep")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cvlc");
        let vlc = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "VLC did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        vlc
    }

    fn signal(&self, sig: i32) {
        // setpriv execs: the child is VLC itself.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Vlc {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vlc_camera_over_udp_that_stops_sending_is_rebuilt_and_never_holds_up_shutdown() {
    common::init();
    let vlc = Vlc::start(&common::sample_clip());
    let url = format!("rtsp://127.0.0.1:{}/cam", vlc.port);
    let config = common::config(vec![camera("vlc", &url, "transport = \"udp\"")]);
    let daemon = Daemon::start(&config).await.unwrap();
    let mut status = daemon.cameras()[0].status.clone();
    for round in 1..=5 {
        wait_state(&mut status, CameraState::Streaming, Duration::from_secs(30)).await;
        let frames = status.borrow().frames_received;
        vlc.signal(libc::SIGSTOP);
        wait_for(&mut status, Duration::from_secs(20), "the stall", |s| {
            s.state != CameraState::Streaming
        })
        .await;
        let s = status.borrow().clone();
        assert!(
            s.last_error.as_deref().unwrap_or("").contains("stalled")
                || s.state == CameraState::Connecting,
            "round {round}: {s:?}"
        );
        vlc.signal(libc::SIGCONT);
        let again = wait_for(&mut status, Duration::from_secs(30), "frames again", |s| {
            s.state == CameraState::Streaming && s.frames_received > frames
        })
        .await;
        assert!(again.reconnects >= round, "round {round}: {again:?}");
    }
    // Stopped once more, then the daemon stops.
    vlc.signal(libc::SIGSTOP);
    wait_for(
        &mut status,
        Duration::from_secs(20),
        "the last stall",
        |s| s.state != CameraState::Streaming,
    )
    .await;
    let started = Instant::now();
    let report = daemon.shutdown(SHUTDOWN_GRACE).await;
    assert!(report.clean, "{report:?}");
    assert!(started.elapsed() < SHUTDOWN_GRACE + Duration::from_secs(2));
    assert_eq!(stuck_teardowns(), 0, "a pipeline was abandoned in teardown");
    let logs = common::captured_logs();
    assert!(
        !logs.contains("camera teardown stuck"),
        "a teardown hit its deadline"
    );
}
