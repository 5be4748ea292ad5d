//! Where a camera's frames come from: the seam between ingest and the rest of the daemon.
//!
//! The daemon uses [`Rtsp`] (one [`CameraSupervisor`] per camera). Tests and benchmarks give the
//! [`super::DaemonBuilder`] another source, such as [`Synthetic`] frames made on the spot, and
//! run every other stage exactly as the daemon does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::camera::supervisor::CameraSupervisor;
use crate::camera::{CameraHandle, CameraState, CameraStatus, Frame, FrameSlot, Pixels};
use crate::config::{CameraConfig, IngestConfig};
use crate::progress::Stages;

/// A started camera: the handle the rest of the daemon holds, and the task that feeds its slot
/// (`None` for a disabled camera).
pub struct OpenedCamera {
    pub handle: CameraHandle,
    pub task: Option<BoxFuture<'static, ()>>,
}

/// Opens each configured camera. The task it returns stops when `cancel` is cancelled, leaving the
/// camera's status `stopped`.
pub trait FrameSource: Send + Sync {
    fn open(
        &self,
        camera: &CameraConfig,
        ingest: &IngestConfig,
        stages: &Stages,
        cancel: CancellationToken,
    ) -> anyhow::Result<OpenedCamera>;
}

/// The cameras themselves, over RTSP.
pub struct Rtsp;

impl FrameSource for Rtsp {
    fn open(
        &self,
        camera: &CameraConfig,
        ingest: &IngestConfig,
        stages: &Stages,
        cancel: CancellationToken,
    ) -> anyhow::Result<OpenedCamera> {
        let (supervisor, handle) = CameraSupervisor::new(camera, ingest, cancel)
            .map_err(|e| anyhow::anyhow!("camera {}: {e}", camera.id))?;
        Ok(OpenedCamera {
            handle,
            task: supervisor
                .map(|s| -> BoxFuture<'static, ()> { Box::pin(s.report_progress(stages).run()) }),
        })
    }
}

/// Makes a camera's frame `seq` (from 1), or `None` once the camera has no more to give (it then
/// stays `streaming`, silent, until stopped).
pub type FrameFn = Arc<dyn Fn(&str, u64) -> Option<Pixels> + Send + Sync>;

/// Frames made on the spot at each camera's `detect_fps` and `detect_width × detect_height`: a
/// camera without a network, for tests and benchmarks.
pub struct Synthetic {
    pub frame: FrameFn,
}

impl Synthetic {
    pub fn new(frame: impl Fn(&str, u64) -> Option<Pixels> + Send + Sync + 'static) -> Self {
        Self {
            frame: Arc::new(frame),
        }
    }
}

impl FrameSource for Synthetic {
    fn open(
        &self,
        camera: &CameraConfig,
        _ingest: &IngestConfig,
        stages: &Stages,
        cancel: CancellationToken,
    ) -> anyhow::Result<OpenedCamera> {
        let id: Arc<str> = camera.id.as_str().into();
        let slot = Arc::new(FrameSlot::default());
        let initial = match camera.enabled {
            true => CameraState::Streaming,
            false => CameraState::Disabled,
        };
        let (status, status_rx) = watch::channel(CameraStatus::new(initial));
        let handle = CameraHandle {
            id: id.clone(),
            name: camera.display_name().to_owned(),
            slot: slot.clone(),
            status: status_rx,
        };
        if !camera.enabled {
            return Ok(OpenedCamera { handle, task: None });
        }
        let progress = stages.register(format!("camera/{id}"));
        let make = self.frame.clone();
        let (width, height) = (camera.detect_width, camera.detect_height);
        let period = Duration::from_secs_f64(1.0 / f64::from(camera.detect_fps.max(1)));
        let seq = AtomicU64::new(0);
        let task = async move {
            let mut tick = tokio::time::interval(period);
            let mut exhausted = false;
            loop {
                progress.beat();
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if exhausted {
                    continue;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed) + 1;
                let Some(pixels) = make(&id, n) else {
                    exhausted = true;
                    continue;
                };
                slot.put(Arc::new(Frame {
                    camera: id.clone(),
                    seq: n,
                    captured_at: SystemTime::now(),
                    captured: Instant::now(),
                    width,
                    height,
                    pixels,
                }));
                status.send_modify(|s| {
                    s.frames_received = n;
                    s.last_frame_at = Some(SystemTime::now());
                });
            }
            progress.retire();
            status.send_modify(|s| s.state = CameraState::Stopped);
        };
        Ok(OpenedCamera {
            handle,
            task: Some(Box::pin(task)),
        })
    }
}
