//! Test support: a real RTSP server (gstreamer-rtsp-server) on a free loopback port, captured logs,
//! and helpers to build configs and wait for camera states. Shared by the integration tests and the
//! `sample_camera` example (`make demo`).
#![allow(dead_code)]

pub mod api_site;
pub mod bench;
pub mod browser;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;

/// What the server streams.
#[derive(Debug, Clone)]
pub enum Source {
    /// A live test pattern (moving ball), H.264.
    Pattern { width: u32, height: u32, fps: u32 },
    /// The sample clip (vtest.avi transcoded to H.264 by scripts/setup.sh), 768x576 at 10 fps, looped.
    SampleClip,
    /// Any H.264 byte-stream file, looped at `fps`.
    Clip { path: PathBuf, fps: u32 },
    /// A live H.265 test pattern.
    PatternH265 { width: u32, height: u32, fps: u32 },
    /// A live H.264 test pattern of one of videotestsrc's patterns ("black", "smpte", ...), 640x360.
    Named { pattern: &'static str },
    /// A live MJPEG test pattern.
    PatternMjpeg { width: u32, height: u32, fps: u32 },
}

#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Basic { user: String, password: String },
    Digest { user: String, password: String },
}

/// The folder where scripts/setup.sh put the sample media.
pub fn media_dir() -> PathBuf {
    std::env::var_os("KW_MEDIA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/media"))
}

pub fn sample_clip() -> PathBuf {
    let p = media_dir().join("vtest.h264");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh first",
        p.display()
    );
    p
}

fn launch_line(source: &Source) -> String {
    // The valve lets a test stall the stream while the connection stays open.
    match source {
        Source::Pattern { width, height, fps } => format!(
            "( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 \
             ! valve name=stall drop=false \
             ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! rtph264pay name=pay0 pt=96 )"
        ),
        Source::PatternH265 { width, height, fps } => format!(
            "( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 \
             ! valve name=stall drop=false \
             ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} ! rtph265pay name=pay0 pt=96 )"
        ),
        Source::Named { pattern } => format!(
            "( videotestsrc name=src is-live=true pattern={pattern} ! video/x-raw,format=I420,width=640,height=360,framerate=10/1 \
             ! valve name=stall drop=false \
             ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 )"
        ),
        Source::PatternMjpeg { width, height, fps } => format!(
            "( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 \
             ! valve name=stall drop=false ! jpegenc ! rtpjpegpay name=pay0 pt=26 )"
        ),
        Source::SampleClip => launch_line(&Source::Clip {
            path: sample_clip(),
            fps: 10,
        }),
        Source::Clip { path, fps } => format!(
            "( multifilesrc location=\"{}\" loop=true caps=\"video/x-h264,stream-format=byte-stream,framerate={fps}/1\" \
             ! h264parse ! valve name=stall drop=false ! rtph264pay name=pay0 pt=96 config-interval=-1 )",
            path.display()
        ),
    }
}

/// An RTSP server on 127.0.0.1 and a free port, serving `source` at `/cam`, with its GLib main loop
/// on its own thread and context.
pub struct RtspTestServer {
    server: rtsp::RTSPServer,
    ctx: glib::MainContext,
    main_loop: glib::MainLoop,
    thread: Option<JoinHandle<()>>,
    source: Mutex<Option<glib::SourceId>>,
    port: u16,
    valves: Arc<Mutex<Vec<glib::WeakRef<gst::Element>>>>,
    /// The test sources (`Source::Named`) of the current sessions.
    sources: Arc<Mutex<Vec<glib::WeakRef<gst::Element>>>>,
}

impl RtspTestServer {
    pub fn start(source: Source, auth: Auth) -> Self {
        Self::start_on(source, auth, 0)
    }

    pub fn start_on(source: Source, auth: Auth, port: u16) -> Self {
        Self::start_with(source, auth, port, false)
    }

    /// `shared`: all clients get one media (one source pipeline), as a benchmark wants.
    pub fn start_with(source: Source, auth: Auth, port: u16, shared: bool) -> Self {
        Self::start_full(source, auth, port, shared, None)
    }

    /// A server that offers RTP over UDP only (as some cameras do): a client asking for TCP
    /// interleaving gets 461 Unsupported Transport.
    pub fn start_udp_only(source: Source) -> Self {
        Self::start_full(
            source,
            Auth::None,
            0,
            false,
            Some(gstreamer_rtsp::RTSPLowerTrans::UDP),
        )
    }

    fn start_full(
        source: Source,
        auth: Auth,
        port: u16,
        shared: bool,
        protocols: Option<gstreamer_rtsp::RTSPLowerTrans>,
    ) -> Self {
        gst::init().unwrap();
        let server = rtsp::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&port.to_string());
        let factory = rtsp::RTSPMediaFactory::new();
        factory.set_launch(&launch_line(&source));
        factory.set_shared(shared);
        if let Some(p) = protocols {
            factory.set_protocols(p);
        }
        let valves: Arc<Mutex<Vec<glib::WeakRef<gst::Element>>>> = Arc::default();
        let v = valves.clone();
        let sources: Arc<Mutex<Vec<glib::WeakRef<gst::Element>>>> = Arc::default();
        let srcs = sources.clone();
        factory.connect_media_configure(move |_, media| {
            let element = media.element();
            if let Some(bin) = element.downcast_ref::<gst::Bin>()
                && let Some(src) = bin.by_name("src")
            {
                srcs.lock().unwrap().push(src.downgrade());
            }
            if let Some(bin) = element.downcast_ref::<gst::Bin>()
                && let Some(valve) = bin
                    .by_name_recurse_up("stall")
                    .or_else(|| bin.by_name("stall"))
            {
                v.lock().unwrap().push(valve.downgrade());
            }
        });
        match &auth {
            Auth::None => {}
            Auth::Basic { user, password } | Auth::Digest { user, password } => {
                let a = rtsp::RTSPAuth::new();
                let token = rtsp::RTSPToken::builder()
                    .field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
                    .build();
                if matches!(auth, Auth::Basic { .. }) {
                    let basic = rtsp::RTSPAuth::make_basic(user, password);
                    a.add_basic(basic.as_str(), &token);
                } else {
                    a.set_supported_methods(gstreamer_rtsp::RTSPAuthMethod::Digest);
                    a.add_digest(user, password, &token);
                }
                server.set_auth(Some(&a));
                factory.add_role_from_structure(
                    &gst::Structure::builder("user")
                        .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                        .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                        .build(),
                );
            }
        }
        server.mount_points().unwrap().add_factory("/cam", factory);
        let ctx = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&ctx), false);
        let id = server.attach(Some(&ctx)).expect("attach RTSP server");
        let port = server.bound_port() as u16;
        let thread = {
            let ctx = ctx.clone();
            let ml = main_loop.clone();
            std::thread::spawn(move || {
                ctx.with_thread_default(|| ml.run()).unwrap();
            })
        };
        Self {
            server,
            ctx,
            main_loop,
            thread: Some(thread),
            source: Mutex::new(Some(id)),
            port,
            valves,
            sources,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rtsp://127.0.0.1:PORT/cam`
    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }

    pub fn url_with_path(&self, path: &str) -> String {
        format!("rtsp://127.0.0.1:{}{path}", self.port)
    }

    /// Stops listening and drops every client connection (the server "goes down").
    pub fn stop(&self) {
        if let Some(id) = self.source.lock().unwrap().take()
            && let Some(src) = self.ctx.find_source_by_id(&id)
        {
            src.destroy();
        }
        self.server
            .client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
    }

    /// Listens again on the same port.
    pub fn restart(&self) {
        let mut source = self.source.lock().unwrap();
        if source.is_some() {
            return;
        }
        self.server.set_service(&self.port.to_string());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.server.attach(Some(&self.ctx)) {
                Ok(id) => {
                    *source = Some(id);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("re-attach failed ({e}); retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!(
                    "cannot re-attach the RTSP server on port {}: {e}",
                    self.port
                ),
            }
        }
    }

    /// Serves `source` at `path` too, one shared media for all its clients (benchmarks: each camera
    /// its own mount, the server only parsing and payloading).
    pub fn add_mount(&self, path: &str, source: Source) {
        let factory = rtsp::RTSPMediaFactory::new();
        factory.set_launch(&launch_line(&source));
        factory.set_shared(true);
        self.server
            .mount_points()
            .unwrap()
            .add_factory(path, factory);
    }

    /// Changes what a `Source::Named` stream shows, on every current session (e.g. from a still
    /// "colors" picture to a moving "ball").
    pub fn set_pattern(&self, pattern: &str) {
        let mut n = 0;
        for s in self.sources.lock().unwrap().iter() {
            if let Some(src) = s.upgrade() {
                src.set_property_from_str("pattern", pattern);
                n += 1;
            }
        }
        assert!(n > 0, "no running Named session");
    }

    /// Stops sending data on every current session while keeping the connections open.
    /// New sessions stream normally.
    pub fn stall(&self) {
        let mut n = 0;
        for v in self.valves.lock().unwrap().iter() {
            if let Some(valve) = v.upgrade() {
                valve.set_property("drop", true);
                n += 1;
            }
        }
        assert!(n > 0, "no running session to stall");
    }
}

impl Drop for RtspTestServer {
    fn drop(&mut self) {
        self.stop();
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// --- captured logs ------------------------------------------------------------------------------

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
static METRICS: OnceLock<metrics_util::debugging::Snapshotter> = OnceLock::new();

#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        // eprint! (not io::stderr) so the test harness shows it only for failing tests.
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Initialises GStreamer, a process-wide tracing subscriber at debug level whose output is kept
/// for [`captured_logs`] (and echoed to stderr, which the test harness captures per test), and a
/// metrics recorder read by [`counter`].
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let _ = METRICS.set(recorder.snapshotter());
        recorder.install().expect("install the metrics recorder");
        init_logs();
    });
}

/// GStreamer and the capturing debug-level subscriber, without a metrics recorder (for tests
/// that read the daemon's own Prometheus recorder).
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        gst::init().unwrap();
        let buf = LOGS.get_or_init(Arc::default).clone();
        tracing_subscriber::fmt()
            .with_env_filter("debug,glib=warn")
            .with_ansi(false)
            .with_writer(move || CaptureWriter(buf.clone()))
            .init();
    });
}

/// GStreamer and a warn-level subscriber on stderr, for benchmarks.
pub fn init_quiet() {
    gst::init().unwrap();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .try_init();
}

/// Everything logged in this test process so far.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.get_or_init(Arc::default).lock().unwrap()).into_owned()
}

/// The value of a counter with exactly these labels (0 if it was never incremented).
pub fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    let Some(snapshotter) = METRICS.get() else {
        return 0;
    };
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| {
            let k = key.key();
            let same_labels = k.labels().count() == labels.len()
                && labels
                    .iter()
                    .all(|(lk, lv)| k.labels().any(|l| l.key() == *lk && l.value() == *lv));
            match value {
                metrics_util::debugging::DebugValue::Counter(v)
                    if k.name() == name && same_labels =>
                {
                    Some(v)
                }
                _ => None,
            }
        })
        .unwrap_or(0)
}

pub mod broker;
pub mod center;
pub mod daemon;
pub mod postgres;
pub mod proxy;
pub mod recorder;
pub mod site;
pub mod walk_clip;

/// A person walking down across the `fence` line of [`fence_config`], one 320x240 frame per
/// 200 ms from `t0`, as the detector pool would report it. Scores rise, so the last frame is the
/// track's best (the snapshot's frame); the box is x 0.40..0.60, 0.3 high.
pub fn walk_down(t0: std::time::SystemTime) -> Vec<kinderwatch::detect::FrameDetections> {
    use kinderwatch::detect::{BBox, Detection, FrameDetections};
    let base = Instant::now();
    (0..20u64)
        .map(|i| {
            let y = 0.2 + 0.03 * i as f32;
            FrameDetections {
                frame: Arc::new(kinderwatch::camera::Frame {
                    camera: "gate".into(),
                    seq: i + 1,
                    captured_at: t0 + Duration::from_millis(200 * i),
                    captured: base + Duration::from_millis(200 * i),
                    width: 320,
                    height: 240,
                    pixels: kinderwatch::camera::Pixels::Rgb(vec![100; 320 * 240 * 3]),
                }),
                detections: vec![Detection {
                    class_id: 0,
                    label: "person".into(),
                    score: 0.6 + 0.015 * i as f32,
                    bbox: BBox::new(0.40, y - 0.3, 0.60, y),
                }],
                inference: Duration::ZERO,
                queue_wait: Duration::ZERO,
            }
        })
        .collect()
}

/// A site with one camera, `gate`, and one armed tripwire, `fence`, across the middle of the
/// picture (no cooldown), for tests that drive the rules stage with detections.
pub fn fence_config() -> std::sync::Arc<Config> {
    const FENCE: &str = r#"
[site]
id = "kg-7"
[[cameras]]
id = "gate"
url = "rtsp://127.0.0.1/x"
[[rules]]
id = "fence"
camera = "gate"
kind = "tripwire"
line = [[0.0, 0.5], [1.0, 0.5]]
cooldown = "0s"
"#;
    std::sync::Arc::new(
        Config::from_toml(
            FENCE,
            std::path::Path::new("fence.toml"),
            std::path::Path::new("."),
        )
        .unwrap(),
    )
}

// --- configs and waiting ----------------------------------------------------------------------

use kinderwatch::camera::{CameraState, CameraStatus};
use kinderwatch::config::{CameraConfig, Config, IngestConfig};

/// Fast reconnects and watchdogs, so fault tests take seconds.
pub fn fast_ingest() -> IngestConfig {
    IngestConfig {
        backoff_initial: Duration::from_millis(300),
        backoff_max: Duration::from_secs(2),
        healthy_reset: Duration::from_secs(60),
        config_fault_backoff: Duration::from_secs(60),
        first_frame_timeout: Duration::from_secs(8),
        stall_timeout: Duration::from_secs(2),
        tcp_timeout: Duration::from_secs(3),
        decoder_threads: 1,
    }
}

/// A camera config parsed from TOML lines (so defaults are the real ones).
pub fn camera(id: &str, url: &str, extra: &str) -> CameraConfig {
    let text =
        format!("[site]\nid = \"t\"\n[[cameras]]\nid = \"{id}\"\nurl = \"{url}\"\n{extra}\n");
    let mut c = Config::from_toml(
        &text,
        std::path::Path::new("test.toml"),
        std::path::Path::new("."),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    c.cameras.remove(0)
}

/// A whole config with these cameras and fast ingest settings.
pub fn config(cameras: Vec<CameraConfig>) -> Config {
    let mut c = Config::from_toml(
        "[site]\nid = \"test-site\"\n[[cameras]]\nid = \"x\"\nurl = \"rtsp://127.0.0.1/x\"\n",
        std::path::Path::new("test.toml"),
        std::path::Path::new("."),
    )
    .unwrap();
    c.cameras = cameras;
    c.ingest = fast_ingest();
    c
}

/// Waits until the camera status satisfies `pred`; panics with the last status after `timeout`.
pub async fn wait_for(
    rx: &mut tokio::sync::watch::Receiver<CameraStatus>,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&CameraStatus) -> bool,
) -> CameraStatus {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        {
            let s = rx.borrow_and_update();
            if pred(&s) {
                return s.clone();
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!(
                "timed out after {timeout:?} waiting for {what}; last status: {:?}",
                *rx.borrow()
            );
        }
    }
}

pub async fn wait_state(
    rx: &mut tokio::sync::watch::Receiver<CameraStatus>,
    state: CameraState,
    timeout: Duration,
) -> CameraStatus {
    wait_for(rx, timeout, &format!("state {state}"), |s| s.state == state).await
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after `timeout`.
pub async fn poll_until(timeout: Duration, what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
