//! The daemon's graph behind the HTTP API, for the API and console tests: camera `gate` (its
//! status set by the test, its frame slot fed by the test), detections from the test, the real
//! rules, recorder and sled store, and the API on a free port, with a read and an admin token.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kinderwatch::api::{self, ApiState, Role, TokenConfig};
use kinderwatch::app::{Daemon, Detections, FrameSource, OpenedCamera};
use kinderwatch::camera::{CameraHandle, CameraState, CameraStatus};
use kinderwatch::config::{CameraConfig, IngestConfig};
use kinderwatch::detect::FrameDetections;
use kinderwatch::detect::load::DetectorLoad;
use kinderwatch::progress::Stages;
use kinderwatch::store::Store;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub base: String,
    pub read: String,
    pub admin: String,
    pub store: Store,
    pub detections: mpsc::Sender<FrameDetections>,
    pub camera_status: watch::Sender<CameraStatus>,
    pub daemon: Option<Daemon>,
    pub state: ApiState,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn detector_load(&self) -> &watch::Sender<DetectorLoad> {
        self.daemon
            .as_ref()
            .and_then(|d| d.detector_load_input())
            .expect("no pool: the test says the load")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            self.rt.block_on(d.shutdown(Duration::from_secs(5)));
        }
    }
}

/// Cameras whose status the test sets (they deliver no frames).
#[derive(Default, Clone)]
pub struct TestCameras {
    pub status: Arc<Mutex<Vec<watch::Sender<CameraStatus>>>>,
}

impl FrameSource for TestCameras {
    fn open(
        &self,
        camera: &CameraConfig,
        _ingest: &IngestConfig,
        _stages: &Stages,
        _cancel: CancellationToken,
    ) -> anyhow::Result<OpenedCamera> {
        let (tx, rx) = watch::channel(CameraStatus::new(CameraState::Connecting));
        self.status.lock().unwrap().push(tx);
        Ok(OpenedCamera {
            handle: CameraHandle {
                id: camera.id.as_str().into(),
                name: "Front gate".into(),
                slot: Arc::default(),
                status: rx,
            },
            task: None,
            feed: None,
        })
    }
}

/// The daemon's graph with camera `gate` (status set by the test), detections from the test, the
/// real rules, recorder and store, and the API on a free port.
pub fn start() -> Harness {
    super::init_logs();
    let metrics = kinderwatch::telemetry::install_metrics();
    assert!(
        metrics.is_some(),
        "this test binary installs no other recorder"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = (*super::fence_config()).clone();
    config.store.min_free_mb = 1;
    config.state.dir = dir.path().to_owned();
    let store = Store::open(&dir.path().join("events.db"), &config.store).unwrap();
    let (read, read_hash) = api::auth::new_token();
    let (admin, admin_hash) = api::auth::new_token();
    config.api.tokens = vec![
        TokenConfig {
            name: "operator".into(),
            role: Role::Read,
            sha256: read_hash,
        },
        TokenConfig {
            name: "city-center".into(),
            role: Role::Admin,
            sha256: admin_hash,
        },
    ];
    config.api.request_timeout = Duration::from_secs(5);
    let cameras = TestCameras::default();
    let (base, mut daemon) = rt.block_on(async {
        let listener = api::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let daemon = Daemon::builder(&config)
            .frames(cameras.clone())
            .detections(Detections::Caller)
            .store(store.clone())
            .api(listener)
            .metrics(metrics)
            .start()
            .await
            .unwrap();
        (base, daemon)
    });
    let camera_status = cameras.status.lock().unwrap().pop().expect("camera gate");
    Harness {
        rt,
        base,
        read,
        admin,
        store,
        detections: daemon.take_detections_input().unwrap(),
        camera_status,
        state: daemon.api_state().unwrap().clone(),
        daemon: Some(daemon),
        _dir: dir,
    }
}

/// (status, body) of a request; `token` None sends no Authorization header.
pub fn call(h: &Harness, method: &str, path: &str, token: Option<&str>) -> (u16, Vec<u8>, String) {
    let mut req = ureq::request(method, &format!("{}{path}", h.base));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    let content_type = resp.content_type().to_owned();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
    (status, body, content_type)
}

pub fn json(h: &Harness, path: &str, token: &str) -> (u16, Value) {
    let (status, body, _) = call(h, "GET", path, Some(token));
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A person walking down across the fence line on camera `gate`.
pub fn walk_across(h: &Harness) {
    h.rt.block_on(async {
        for d in super::walk_down(SystemTime::now()) {
            h.detections.send(d).await.unwrap();
        }
    });
}

pub fn wait_events(h: &Harness, query: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = json(h, &format!("/api/v1/events?{query}"), &h.read);
        assert_eq!(status, 200, "{v}");
        let events = v["events"].as_array().cloned().unwrap_or_default();
        if events.len() >= n {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "waited for {n} events matching {query}: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
