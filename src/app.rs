//! Wiring and supervision: start order, shutdown order, signals, systemd notify and watchdog.
//!
//! Start: verify the model file → start one supervisor per enabled camera (each in a `camera` span,
//! all in one `TaskTracker`) → consumers → READY=1 to systemd. Shutdown is the reverse: cancel the
//! token, every camera sets its pipeline to Null, wait for the tracker with a deadline. A second
//! Ctrl-C/SIGTERM during shutdown exits at once.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::camera::CameraHandle;
use crate::camera::supervisor::CameraSupervisor;
use crate::config::Config;
use crate::detect::manifest::{ModelManifest, VerifiedModel};

/// How long `run` waits for every pipeline to reach Null after a stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The running daemon: camera supervisors and what the rest of the process holds of them.
pub struct Daemon {
    cameras: Vec<CameraHandle>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    model: Option<VerifiedModel>,
}

/// How shutdown went.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownReport {
    pub elapsed: Duration,
    /// False if some task was still running when the grace period ran out.
    pub clean: bool,
}

impl Daemon {
    /// Verifies the model and starts every enabled camera. GStreamer must be initialised.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let model = match &config.detector.model {
            Some(path) => {
                let path = path.clone();
                let model =
                    tokio::task::spawn_blocking(move || ModelManifest::load_verified(&path))
                        .await
                        .context("model check task failed")??;
                info!(model = %model.manifest.name, path = %model.path.display(), "model file verified (sha256)");
                Some(model)
            }
            None => None,
        };
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut cameras = Vec::new();
        for cam in &config.cameras {
            let (supervisor, handle) =
                CameraSupervisor::new(cam, &config.ingest, cancel.child_token())
                    .map_err(|e| anyhow::anyhow!("camera {}: {e}", cam.id))?;
            match supervisor {
                Some(s) => {
                    tracker.spawn(s.run());
                }
                None => info!(camera = %cam.id, "camera disabled in the config"),
            }
            cameras.push(handle);
        }
        Ok(Self {
            cameras,
            cancel,
            tracker,
            model,
        })
    }

    pub fn cameras(&self) -> &[CameraHandle] {
        &self.cameras
    }

    pub fn model(&self) -> Option<&VerifiedModel> {
        self.model.as_ref()
    }

    /// Spawns a task that stops with the daemon.
    pub fn spawn<F>(&self, f: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(f(self.cancel.child_token()));
    }

    /// True while no task has ended on its own (the systemd watchdog is fed only then).
    pub fn tasks_alive(&self, expected: usize) -> bool {
        self.tracker.len() >= expected
    }

    /// Stops every camera (pipelines to Null) and waits up to `grace`.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        let started = Instant::now();
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

/// Runs the daemon until SIGINT/SIGTERM, or until `stop_after` has passed (the demo).
pub async fn run(config: Config, stop_after: Option<Duration>) -> anyhow::Result<()> {
    info!(summary = %config.summary(), "starting kinderwatch {}", env!("CARGO_PKG_VERSION"));
    let daemon = Daemon::start(&config).await?;
    let cameras = daemon.cameras().to_vec();
    for cam in cameras {
        let c = cam.clone();
        daemon.spawn(|cancel| report_frames(c, Duration::from_secs(5), cancel));
        daemon.spawn(|cancel| log_state_changes(cam, cancel));
    }
    // Camera supervisors plus two consumers per camera.
    let expected_tasks = config.enabled_cameras().count() + 2 * config.cameras.len();
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let mut watchdog_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec)
        .then(|| Duration::from_micros(watchdog_usec) / 2);
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let deadline = tokio::time::sleep(stop_after.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline, if stop_after.is_some() => { info!("run time over: stopping"); break; }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
            _ = sighup.recv() => warn!("SIGHUP: live config reload is not supported yet; restart the service to apply changes"),
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                if daemon.tasks_alive(expected_tasks) {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                } else {
                    warn!("a daemon task ended unexpectedly; not feeding the systemd watchdog");
                }
            }
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // A second signal during shutdown exits at once.
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("second signal: exiting without waiting");
        std::process::exit(130);
    });
    let report = daemon.shutdown(SHUTDOWN_GRACE).await;
    if report.clean {
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
