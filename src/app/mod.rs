//! The daemon: its stage graph ([`graph`]: every stage, channel and task, started in order and
//! stopped in reverse), its channels ([`links`]), where frames come from ([`source`]), and the
//! process around them ([`run`]: the store and the API's port first, then the graph, READY=1 and
//! the systemd watchdog, signals; a second Ctrl-C/SIGTERM during shutdown exits at once).
//!
//! Every task is spawned with a name (`camera/<id>`, `recorder`, `publisher`, `rules`, `api`,
//! `health/<id>`, ...): one that ends on its own, by returning or panicking, is logged by that name
//! and stops the systemd watchdog feed, as a stage that stops making progress does
//! ([`crate::progress`]).

pub mod config_file;
pub mod graph;
pub mod links;
pub mod reload;
pub mod source;

pub use graph::{Daemon, DaemonBuilder, Detections, ShutdownReport};
pub use source::{Clip, FrameSource, OpenedCamera, Rtsp, Synthetic};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::camera::CameraHandle;
use crate::config::Config;
use crate::detect::detector::{Detector, DetectorParams, OnnxDetector};
use crate::detect::manifest::{ModelManifest, VerifiedModel};
use crate::detect::pool::DetectorFactory;
use crate::detect::runtime;
use crate::progress::Monitor;
use crate::store::Store;

/// How long `run` waits for every task after a stop signal, under the unit's `TimeoutStopSec`
/// (15 s): the stages up to the rules get 8 s (a camera's teardown is bounded by
/// [`crate::camera::teardown::TEARDOWN_DEADLINE`], 5 s, then abandoned; the snapshots being
/// encoded by 2 s), the recorder and the publisher the last [`graph::RECORDER_RESERVE`].
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(12);

/// How often the detector's load is assessed (and an overload reported).
const LOAD_PERIOD: Duration = Duration::from_secs(5);
/// After the start, the cameras' first frames come at once (32 cameras: ~8 s of inferences with the
/// motion gate's `hold`): not assessed as an overload for this long.
const LOAD_WARMUP: Duration = Duration::from_secs(15);

/// The model and its sessions, one per pool worker.
pub struct Detectors {
    pub model: VerifiedModel,
    pub sessions: Vec<Box<dyn Detector>>,
    /// Builds a fresh session for a worker whose detector panicked.
    pub factory: DetectorFactory,
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
/// `config_file` is where `config` came from, read again on SIGHUP (`None`: the built-in demo
/// config, which cannot be reloaded).
pub async fn run(
    config: Config,
    config_file: Option<PathBuf>,
    stop_after: Option<Duration>,
) -> anyhow::Result<()> {
    info!(summary = %config.summary(), "starting kinderwatch {}", env!("CARGO_PKG_VERSION"));
    let metrics_handle = crate::telemetry::install_metrics();
    let store = open_store(&config).await?;
    let listener = match config.api.enabled {
        true => Some(crate::api::bind(config.api.listen).await?),
        false => None,
    };
    let mut builder = Daemon::builder(&config)
        .store(store)
        .metrics(metrics_handle);
    if let Some(listener) = listener {
        builder = builder.api(listener);
    }
    if config_file.is_some() {
        builder = builder.config_editable();
    }
    let mut daemon = builder.start().await?;
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
    // The running file, to see what a reload or an edit changes.
    let mut file = config_file.as_deref().map(config_file::ConfigFile::open);
    let mut config_commands = daemon.take_config_commands();
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
            // A reload may wait for cameras to stop (7 s each at most): "main" beats meanwhile.
            _ = sighup.recv() => match &mut file {
                Some(file) => beating(&main_progress, file.reload(&mut daemon)).await,
                None => warn!("SIGHUP: the built-in demo config cannot be reloaded"),
            },
            Some(command) = next(&mut config_commands) => {
                if let Some(file) = &mut file {
                    beating(&main_progress, file.handle(&mut daemon, command)).await;
                }
            }
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

/// The next request from the console's editor (never, without an editable config file).
async fn next(
    commands: &mut Option<tokio::sync::mpsc::Receiver<crate::control::ConfigCommand>>,
) -> Option<crate::control::ConfigCommand> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Logs every state change of one camera (the supervisor logs the faults themselves).
/// Runs `work`, beating `progress` while it runs.
async fn beating<T>(progress: &crate::progress::Progress, work: impl Future<Output = T>) -> T {
    tokio::pin!(work);
    let mut beat = tokio::time::interval(crate::progress::BEAT_PERIOD);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = beat.tick() => progress.beat(),
        }
    }
}

async fn log_state_changes(mut camera: CameraHandle, cancel: CancellationToken) {
    let mut last = camera.status.borrow().state;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            // No status will come (a disabled camera has no supervisor): the log waits for the
            // stop, or the daemon would count it as a task that ended on its own.
            changed = camera.status.changed() => if changed.is_err() {
                cancel.cancelled().await;
                return;
            },
        }
        let status = camera.status.borrow_and_update().clone();
        if status.state != last {
            info!(camera = %camera.id, from = %last, to = %status.state,
                  reconnects = status.reconnects, "camera state changed");
            last = status.state;
        }
    }
}
