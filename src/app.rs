//! Wiring and supervision: start order, shutdown order, signals, systemd notify and watchdog.
//!
//! Start: open the event store (a corrupt, foreign or busy one stops the start) and bind the API
//! → verify the model file → start one supervisor per enabled camera (each in a `camera` span, all
//! in one `TaskTracker`) → recorder, retention, MQTT publisher, API, rules and health consumers →
//! READY=1 to systemd. Shutdown cancels the token: every camera sets its pipeline to Null, the
//! recorder writes what is queued, the publisher says `offline`; the tracker is awaited with a
//! deadline. A second Ctrl-C/SIGTERM during shutdown exits at once.
//!
//! Every task is spawned with a name (`camera/<id>`, `recorder`, `publisher`, `rules`, `api`,
//! `health/<id>`, ...): one that ends on its own, by returning or panicking, is logged by that name
//! and stops the systemd watchdog feed, as a stage that stops making progress does
//! ([`crate::progress`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use tokio::sync::{mpsc, watch};

use crate::api::{ApiState, CameraView};
use crate::progress::{Monitor, Stages};
use crate::store::Store;
use crate::store::recorder::{RecorderSettings, StoreStatus};

use crate::camera::CameraHandle;
use crate::camera::supervisor::CameraSupervisor;
use crate::config::Config;
use crate::detect::FrameDetections;
use crate::detect::detector::{Detector, DetectorParams, OnnxDetector};
use crate::detect::load::DetectorLoad;
use crate::detect::manifest::{ModelManifest, VerifiedModel};
use crate::detect::pool::{DetectorFactory, DetectorPool, PoolCamera, PoolSupervision};
use crate::detect::runtime;
use crate::detect::summary::DetectionSummary;

/// How long `run` waits for every task after a stop signal: a camera's teardown is bounded by
/// [`crate::camera::teardown::TEARDOWN_DEADLINE`] (then abandoned), so this holds with room to
/// spare, and well under the unit's `TimeoutStopSec`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// How often the detector's load is assessed (and an overload reported).
const LOAD_PERIOD: Duration = Duration::from_secs(5);

/// The running daemon: camera supervisors and what the rest of the process holds of them.
pub struct Daemon {
    cameras: Vec<CameraHandle>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    model: Option<VerifiedModel>,
    pool: Option<DetectorPool>,
    detections: Option<mpsc::Receiver<FrameDetections>>,
    rule_commands: (
        mpsc::Sender<crate::control::RuleCommand>,
        Option<mpsc::Receiver<crate::control::RuleCommand>>,
    ),
    stages: Stages,
    /// Every task by name, and whether it has ended.
    tasks: Arc<Mutex<Vec<NamedTask>>>,
    /// A task that cannot go on sends why here; the daemon then stops with an error.
    fatal: (mpsc::Sender<String>, Option<mpsc::Receiver<String>>),
}

/// A task of the daemon, by name (`camera/<id>`, `recorder`, `publisher`, ...).
struct NamedTask {
    name: String,
    ended: Arc<AtomicBool>,
}

/// Marks its task ended when dropped: when the task returns, and when it panics.
struct EndGuard(Arc<AtomicBool>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn spawn_named<F>(tracker: &TaskTracker, tasks: &Mutex<Vec<NamedTask>>, name: String, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let ended = Arc::new(AtomicBool::new(false));
    tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(NamedTask {
            name,
            ended: ended.clone(),
        });
    tracker.spawn(async move {
        let _guard = EndGuard(ended);
        task.await;
    });
}

/// How shutdown went.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownReport {
    pub elapsed: Duration,
    /// False if some task was still running when the grace period ran out.
    pub clean: bool,
}

impl Daemon {
    /// Verifies the model, loads ONNX Runtime and one session per worker, then starts every
    /// enabled camera and the detector pool. GStreamer must be initialised.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let detection = match &config.detector.model {
            Some(_) => {
                let config = config.clone();
                Some(
                    tokio::task::spawn_blocking(move || build_detectors(&config))
                        .await
                        .context("detector set-up task failed")??,
                )
            }
            None => None,
        };
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let stages = Stages::new(config.supervision.stage_deadline);
        let tasks: Arc<Mutex<Vec<NamedTask>>> = Arc::default();
        let mut cameras = Vec::new();
        let mut pool_cameras = Vec::new();
        for cam in &config.cameras {
            let (supervisor, handle) =
                CameraSupervisor::new(cam, &config.ingest, cancel.child_token())
                    .map_err(|e| anyhow::anyhow!("camera {}: {e}", cam.id))?;
            match supervisor {
                Some(s) => {
                    spawn_named(
                        &tracker,
                        &tasks,
                        format!("camera/{}", cam.id),
                        s.report_progress(&stages).run(),
                    );
                    pool_cameras.push(PoolCamera {
                        id: handle.id.clone(),
                        slot: handle.slot.clone(),
                        interval: Duration::from_secs_f64(1.0 / cam.detect_fps as f64),
                        motion_masks: cam.motion_masks.clone(),
                    });
                }
                None => info!(camera = %cam.id, "camera disabled in the config"),
            }
            cameras.push(handle);
        }
        let (model, pool, detections) = match detection {
            Some(Detectors {
                model,
                sessions,
                factory,
            }) => {
                let (pool, rx) = DetectorPool::start_supervised(
                    pool_cameras,
                    sessions,
                    &config.motion,
                    config.detector.output_queue,
                    PoolSupervision {
                        stages: Some(stages.clone()),
                        factory: Some(factory),
                    },
                );
                info!(workers = pool.workers(), model = %model.manifest.name, "detector pool started");
                (Some(model), Some(pool), Some(rx))
            }
            None => (None, None, None),
        };
        Ok(Self {
            cameras,
            cancel,
            tracker,
            model,
            pool,
            detections,
            rule_commands: {
                let (tx, rx) = mpsc::channel(16);
                (tx, Some(rx))
            },
            stages,
            tasks,
            fatal: {
                let (tx, rx) = mpsc::channel(4);
                (tx, Some(rx))
            },
        })
    }

    /// The daemon's stages (each reports progress; see [`crate::progress`]).
    pub fn stages(&self) -> &Stages {
        &self.stages
    }

    /// Where a task that cannot go on says why: the daemon stops with that error.
    pub fn fatal(&self) -> mpsc::Sender<String> {
        self.fatal.0.clone()
    }

    /// The receiving end of [`Self::fatal`] (once).
    pub fn take_fatal(&mut self) -> Option<mpsc::Receiver<String>> {
        self.fatal.1.take()
    }

    pub fn cameras(&self) -> &[CameraHandle] {
        &self.cameras
    }

    pub fn model(&self) -> Option<&VerifiedModel> {
        self.model.as_ref()
    }

    pub fn pool(&self) -> Option<&DetectorPool> {
        self.pool.as_ref()
    }

    /// Where run-time rule commands (arm, disarm, list) go.
    pub fn rule_commands(&self) -> mpsc::Sender<crate::control::RuleCommand> {
        self.rule_commands.0.clone()
    }

    /// The receiving end of the rule commands (once), for the perimeter stage.
    pub fn take_rule_commands(&mut self) -> Option<mpsc::Receiver<crate::control::RuleCommand>> {
        self.rule_commands.1.take()
    }

    /// The detector pool's results (once; `None` without a model or when already taken).
    pub fn take_detections(&mut self) -> Option<mpsc::Receiver<FrameDetections>> {
        self.detections.take()
    }

    /// Spawns a task that stops with the daemon, under a name the log uses if it ends early.
    pub fn spawn<F>(&self, name: impl Into<String>, f: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        spawn_named(
            &self.tracker,
            &self.tasks,
            name.into(),
            f(self.cancel.child_token()),
        );
    }

    /// The tasks that have ended (on their own, unless the daemon is stopping).
    pub fn ended_tasks(&self) -> Vec<String> {
        ended(&self.tasks)
    }

    /// [`Self::ended_tasks`] for another thread (the progress monitor).
    pub fn liveness(&self) -> impl Fn() -> Vec<String> + Send + 'static {
        let tasks = self.tasks.clone();
        move || ended(&tasks)
    }

    /// Stops every camera (pipelines to Null) and waits up to `grace`.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        let started = Instant::now();
        self.stages.stopping();
        self.cancel.cancel();
        self.tracker.close();
        let clean = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        ShutdownReport {
            elapsed: started.elapsed(),
            clean,
        }
    }
}

/// The model and its sessions, one per pool worker.
pub struct Detectors {
    pub model: VerifiedModel,
    pub sessions: Vec<Box<dyn Detector>>,
    /// Builds a fresh session for a worker whose detector panicked.
    pub factory: DetectorFactory,
}

fn ended(tasks: &Mutex<Vec<NamedTask>>) -> Vec<String> {
    tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|t| t.ended.load(Ordering::SeqCst))
        .map(|t| t.name.clone())
        .collect()
}

/// Loads the model (sha256-checked), the ONNX Runtime library and one session per worker. Blocking.
pub fn build_detectors(config: &Config) -> anyhow::Result<Detectors> {
    let d = &config.detector;
    let path = d.model.as_ref().context("no detector.model configured")?;
    let model = ModelManifest::load_verified(path)?;
    info!(model = %model.manifest.name, path = %model.path.display(), "model file verified (sha256)");
    let library = runtime::init(d.onnxruntime.as_deref())?;
    let provider = runtime::choose_provider(
        d.execution_provider,
        d.execution_provider_required,
        &library,
    )?;
    let params = DetectorParams {
        min_score: d.min_score,
        nms_iou: d.nms_iou,
        classes: d.classes.clone(),
        max_detections: 100,
    };
    let factory: DetectorFactory = {
        let model = model.clone();
        std::sync::Arc::new(move || {
            OnnxDetector::new(&model, provider, 1, &params)
                .map(|det| Box::new(det) as Box<dyn Detector>)
        })
    };
    let detectors = (0..d.worker_count())
        .map(|_| factory())
        .collect::<Result<Vec<_>, _>>()?;
    info!(
        provider = provider.ort_name(),
        sessions = detectors.len(),
        "detector sessions ready"
    );
    Ok(Detectors {
        model,
        sessions: detectors,
        factory,
    })
}

/// Logs, per camera, how many frames arrived in each period. The stand-in consumer of the frame
/// slots until the detector pool takes them.
pub async fn report_frames(camera: CameraHandle, period: Duration, cancel: CancellationToken) {
    let mut window_start = Instant::now();
    let mut count = 0u64;
    let mut last_size = (0, 0);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            frame = camera.slot.next() => {
                count += 1;
                last_size = (frame.width, frame.height);
            }
            _ = tokio::time::sleep_until((window_start + period).into()) => {}
        }
        if window_start.elapsed() >= period {
            if count > 0 {
                let fps = count as f64 / window_start.elapsed().as_secs_f64();
                info!(camera = %camera.id, frames = count, fps = format!("{fps:.1}"),
                      width = last_size.0, height = last_size.1, "frames arriving");
            }
            count = 0;
            window_start = Instant::now();
        }
    }
}

/// Opens the event store in `<state.dir>/events.db`, off the async workers.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let dir = config.state.dir.join(crate::store::DB_DIR);
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir, &store_config))
        .await
        .context("store open task failed")??;
    let stats = crate::store::recorder::publish_stats(&store)?;
    info!(dir = %store.dir().display(), events = stats.events, outbox = stats.outbox,
          disk_mb = stats.disk_bytes / (1024 * 1024), "event store open");
    Ok(store)
}

/// Runs the daemon until SIGINT/SIGTERM, or until `stop_after` has passed (the demo).
pub async fn run(config: Config, stop_after: Option<Duration>) -> anyhow::Result<()> {
    info!(summary = %config.summary(), "starting kinderwatch {}", env!("CARGO_PKG_VERSION"));
    let metrics_handle = crate::telemetry::install_metrics();
    let store = open_store(&config).await?;
    let listener = match config.api.enabled {
        true => Some(crate::api::bind(config.api.listen).await?),
        false => None,
    };
    let mut daemon = Daemon::start(&config).await?;
    let cameras = daemon.cameras().to_vec();
    let (events_tx, events_rx) = mpsc::channel(256);
    let (store_status_tx, store_status) = watch::channel(StoreStatus::Ok);
    let (live_tx, live_rx) = match config.mqtt.is_some() {
        true => {
            let (tx, rx) = mpsc::channel(1024);
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let settings = RecorderSettings {
        site: config.site.id.clone(),
        config: config.store.clone(),
        outbox: config.mqtt.is_some(),
        live: live_tx,
        progress: Some(daemon.stages().register("recorder")),
    };
    let (s, fatal) = (store.clone(), daemon.fatal());
    daemon.spawn("recorder", |cancel| async move {
        let recorded = crate::store::recorder::run(s, settings, events_rx, store_status_tx, cancel);
        if let Err(e) = recorded.await {
            let _ = fatal.send(e.to_string()).await;
        }
    });
    let (s, c) = (store.clone(), config.store.clone());
    daemon.spawn("retention", |cancel| {
        crate::store::recorder::run_retention(s, c, cancel)
    });
    if let Some(h) = metrics_handle.clone() {
        daemon.spawn("metrics", |cancel| {
            crate::telemetry::metrics_upkeep(h, cancel)
        });
    }
    let rule_commands = daemon.pool().is_some().then(|| daemon.rule_commands());
    let camera_views: std::sync::Arc<Vec<CameraView>> =
        std::sync::Arc::new(cameras.iter().map(CameraView::from).collect());
    let readers = crate::store::reader::Readers::new();
    let tokens = crate::api::Tokens::new(&config.api.tokens);
    if let Some(mqtt) = &config.mqtt {
        let settings = crate::alert::publisher::PublisherSettings {
            config: mqtt.clone(),
            site: config.site.id.clone(),
            cameras: camera_views.clone(),
            commands: crate::alert::commands::CommandContext {
                store: store.clone(),
                rules: rule_commands.clone(),
                cameras: camera_views.clone(),
                tokens: tokens.clone(),
                readers: readers.clone(),
            },
            live: live_rx,
            stages: Some(daemon.stages().clone()),
        };
        let s = store.clone();
        daemon.spawn("publisher", |cancel| {
            crate::alert::publisher::run(s, settings, cancel)
        });
    }
    let (load_tx, detector_load) = watch::channel(DetectorLoad::default());
    if let Some(pool) = daemon.pool() {
        let stats = pool.stats_reader();
        daemon.spawn("detector_load", |cancel| {
            crate::detect::load::monitor(stats, LOAD_PERIOD, load_tx, cancel)
        });
    }
    if let Some(listener) = listener {
        let state = ApiState {
            site: config.site.id.as_str().into(),
            store: store.clone(),
            store_status: store_status.clone(),
            detector_load,
            cameras: camera_views,
            rules: rule_commands,
            metrics: metrics_handle,
            tokens,
            readers,
            request_timeout: config.api.request_timeout,
            stages: daemon.stages().clone(),
        };
        if config.api.tokens.is_empty() {
            warn!(
                "no [[api.tokens]] configured: the HTTP API answers only /healthz; `kinderwatch token` makes one"
            );
        }
        daemon.spawn("api", |cancel| async move {
            if let Err(e) = crate::api::serve(listener, state, cancel).await {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        });
    }
    let pictures = daemon.pool().map(|p| p.stats_reader());
    match daemon.take_detections() {
        Some(rx) => {
            let pool = daemon.pool().expect("a pool with detections");
            let summary = DetectionSummary::new(pool.stats_reader());
            let live = daemon
                .cameras()
                .iter()
                .filter_map(|c| pool.live_tracks_flag(&c.id).map(|f| (c.id.clone(), f)))
                .collect();
            if let Err(e) = std::fs::create_dir_all(&config.state.dir) {
                warn!(dir = %config.state.dir.display(), error = %e, "state directory not usable");
            }
            let io = crate::perimeter::PerimeterIo {
                live_tracks: live,
                events: events_tx.clone(),
                summary: Some(summary),
                commands: daemon.take_rule_commands(),
                arming: Some(crate::perimeter::ArmingStore::new(&config.state.dir)),
                progress: Some(daemon.stages().register("rules")),
            };
            let config = std::sync::Arc::new(config.clone());
            daemon.spawn("rules", |cancel| {
                crate::perimeter::run(config, rx, io, cancel)
            });
        }
        None => {
            for cam in &cameras {
                let c = cam.clone();
                daemon.spawn(format!("frames/{}", cam.id), |cancel| {
                    report_frames(c, Duration::from_secs(5), cancel)
                });
            }
        }
    }
    for cam in &cameras {
        let (c, site, p, h, tx) = (
            cam.clone(),
            config.site.id.clone(),
            pictures.clone(),
            config.health.clone(),
            events_tx.clone(),
        );
        daemon.spawn(format!("health/{}", cam.id), |cancel| {
            crate::health::watch_camera(c, site, p, h, tx, cancel)
        });
    }
    for cam in cameras {
        daemon.spawn(format!("state_log/{}", cam.id), |cancel| {
            log_state_changes(cam, cancel)
        });
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let mut watchdog_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec)
        .then(|| Duration::from_micros(watchdog_usec) / 2);
    if let Some(period) = watchdog {
        info!(
            feed_every_ms = period.as_millis() as u64,
            stage_deadline_s = config.supervision.stage_deadline.as_secs(),
            "systemd watchdog: fed while every stage makes progress"
        );
    }
    let main_progress = daemon.stages().register("main");
    let monitor = Monitor::start(daemon.stages().clone(), watchdog, daemon.liveness());
    let mut beat = tokio::time::interval(crate::progress::BEAT_PERIOD);
    let mut fatal = daemon.take_fatal().expect("fatal receiver taken once");
    let mut failure: Option<String> = None;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let deadline = tokio::time::sleep(stop_after.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    loop {
        main_progress.beat();
        tokio::select! {
            _ = &mut deadline, if stop_after.is_some() => { info!("run time over: stopping"); break; }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sighup.recv() => warn!("SIGHUP: live config reload is not supported yet; restart the service to apply changes"),
            Some(why) = fatal.recv() => {
                tracing::error!(error = %why, "stopping: a stage cannot go on");
                failure = Some(why);
                break;
            }
            _ = beat.tick() => {}
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // A second signal (Ctrl-C or SIGTERM) during shutdown exits at once.
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
        eprintln!("second signal: exiting without waiting");
        std::process::exit(130);
    });
    let report = daemon.shutdown(SHUTDOWN_GRACE).await;
    drop(monitor);
    if let Some(why) = failure {
        anyhow::bail!("{why}");
    }
    let stuck = crate::camera::teardown::stuck_teardowns();
    if report.clean && stuck > 0 {
        warn!(
            elapsed_ms = report.elapsed.as_millis() as u64,
            stuck, "stopped; some camera pipelines never reached Null (abandoned)"
        );
        Ok(())
    } else if report.clean {
        info!(
            elapsed_ms = report.elapsed.as_millis() as u64,
            "stopped cleanly"
        );
        Ok(())
    } else {
        anyhow::bail!("some pipelines did not stop within {SHUTDOWN_GRACE:?}")
    }
}

/// Logs every state change of one camera (the supervisor logs the faults themselves).
async fn log_state_changes(mut camera: CameraHandle, cancel: CancellationToken) {
    let mut last = camera.status.borrow().state;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            changed = camera.status.changed() => if changed.is_err() { return },
        }
        let status = camera.status.borrow_and_update().clone();
        if status.state != last {
            info!(camera = %camera.id, from = %last, to = %status.state,
                  reconnects = status.reconnects, "camera state changed");
            last = status.state;
        }
    }
}
