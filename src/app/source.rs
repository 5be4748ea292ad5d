//! Where a camera's frames come from: the seam between ingest and the rest of the daemon.
//!
//! The daemon uses [`Rtsp`] (one [`CameraSupervisor`] per camera). Tests and benchmarks give the
//! [`super::DaemonBuilder`] another source, such as [`Synthetic`] frames made on the spot or a
//! recorded [`Clip`], and run every other stage exactly as the daemon does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::camera::supervisor::{CameraFeed, CameraSupervisor};
use crate::camera::{CameraHandle, CameraState, Frame, Pixels};
use crate::config::{CameraConfig, IngestConfig};
use crate::progress::Stages;

/// A started camera: the handle the rest of the daemon holds, and the task that feeds its slot
/// (`None` for a disabled camera).
pub struct OpenedCamera {
    pub handle: CameraHandle,
    pub task: Option<BoxFuture<'static, ()>>,
    /// What the task feeds, for [`FrameSource::reopen`] (`None`: this source cannot reopen).
    pub feed: Option<CameraFeed>,
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

    /// The task of `camera` again, after its stream's config changed (a live reload), feeding
    /// the same slot and status. `None`: this source cannot; the change then needs a restart.
    fn reopen(
        &self,
        _camera: &CameraConfig,
        _ingest: &IngestConfig,
        _stages: &Stages,
        _cancel: CancellationToken,
        _feed: CameraFeed,
    ) -> Option<anyhow::Result<BoxFuture<'static, ()>>> {
        None
    }
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
        // The stage registers when the task starts: a camera opened by a reload that is then
        // refused leaves no stage behind that never beats.
        let stages = stages.clone();
        Ok(OpenedCamera {
            handle,
            feed: supervisor.as_ref().map(CameraSupervisor::feed),
            task: supervisor.map(|s| -> BoxFuture<'static, ()> {
                Box::pin(async move { s.report_progress(&stages).run().await })
            }),
        })
    }

    fn reopen(
        &self,
        camera: &CameraConfig,
        ingest: &IngestConfig,
        stages: &Stages,
        cancel: CancellationToken,
        feed: CameraFeed,
    ) -> Option<anyhow::Result<BoxFuture<'static, ()>>> {
        // The stage registers when the task starts: a reload refused after this leaves no stage
        // behind that never beats.
        let stages = stages.clone();
        Some(
            CameraSupervisor::resume(camera, ingest, cancel, feed)
                .map(|s| -> BoxFuture<'static, ()> {
                    Box::pin(async move { s.report_progress(&stages).run().await })
                })
                .map_err(|e| anyhow::anyhow!("camera {}: {e}", camera.id)),
        )
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
        let (handle, status) = CameraHandle::for_camera(camera, CameraState::Streaming);
        let (id, slot) = (handle.id.clone(), handle.slot.clone());
        if !camera.enabled {
            return Ok(OpenedCamera {
                handle,
                task: None,
                feed: None,
            });
        }
        let stages = stages.clone();
        let make = self.frame.clone();
        let (width, height) = (camera.detect_width, camera.detect_height);
        let period = Duration::from_secs_f64(1.0 / f64::from(camera.detect_fps.max(1)));
        let seq = AtomicU64::new(0);
        let task = async move {
            let progress = stages.register(format!("camera/{id}"));
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
            status.send_modify(|s| {
                s.state = CameraState::Stopped;
                s.since = SystemTime::now();
            });
        };
        Ok(OpenedCamera {
            handle,
            task: Some(Box::pin(task)),
            feed: None,
        })
    }
}

/// A recorded clip (any file GStreamer decodes, such as an H.264 byte stream), played by every
/// camera of the config at most at the camera's `detect_fps`, one clip frame per tick, scaled to
/// its `detect_width × detect_height` (I420, as cameras deliver). In lockstep with the detector:
/// a frame waits until the pool has taken the one before (or the motion gate refused it), so
/// every run sees the same frames in the same order, however loaded the machine. Once the clip
/// ends the camera stays `streaming`, silent, unless `looped`; a decoding error stops it
/// (`not_found`, with the error).
pub struct Clip {
    pub path: std::path::PathBuf,
    pub looped: bool,
}

impl FrameSource for Clip {
    fn open(
        &self,
        camera: &CameraConfig,
        _ingest: &IngestConfig,
        stages: &Stages,
        cancel: CancellationToken,
    ) -> anyhow::Result<OpenedCamera> {
        use gstreamer as gst;
        use gstreamer::prelude::*;

        let (handle, status) = CameraHandle::for_camera(camera, CameraState::Connecting);
        let (id, slot) = (handle.id.clone(), handle.slot.clone());
        if !camera.enabled {
            return Ok(OpenedCamera {
                handle,
                task: None,
                feed: None,
            });
        }
        anyhow::ensure!(
            self.path.is_file(),
            "clip {} does not exist",
            self.path.display()
        );
        crate::init_gstreamer()?;
        let description = format!(
            "filesrc location=\"{}\" ! decodebin ! videoconvert ! videoscale ! \
             video/x-raw,format=I420,width={},height={} ! appsink name=sink sync=false max-buffers=2",
            self.path.display(),
            camera.detect_width,
            camera.detect_height
        );
        let pipeline = gst::parse::launch(&description)?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow::anyhow!("clip pipeline is not a pipeline"))?;
        let sink = pipeline
            .by_name("sink")
            .and_then(|e| e.downcast::<gstreamer_app::AppSink>().ok())
            .ok_or_else(|| anyhow::anyhow!("clip pipeline has no appsink"))?;
        let stages = stages.clone();
        let period = Duration::from_secs_f64(1.0 / f64::from(camera.detect_fps.max(1)));
        let looped = self.looped;
        let path = self.path.display().to_string();
        let task = async move {
            let progress = stages.register(format!("camera/{id}"));
            let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
            let stop = cancel.clone();
            // Dropping the task (a runtime that ends) stops the clip too.
            let _stop_on_drop = cancel.drop_guard();
            // Pulling a sample blocks: the clip plays on a thread of its own.
            std::thread::Builder::new()
                .name(format!("clip-{id}"))
                .spawn(move || {
                    let _done = done_tx;
                    let fail = |why: String| {
                        status.send_modify(|s| {
                            s.state = CameraState::NotFound;
                            s.since = SystemTime::now();
                            s.last_error = Some(why);
                        });
                    };
                    if pipeline.set_state(gst::State::Playing).is_err() {
                        fail(format!("clip {path} does not play"));
                        progress.retire();
                        return;
                    }
                    let bus = pipeline.bus().expect("a pipeline has a bus");
                    status.send_modify(|s| {
                        s.state = CameraState::Streaming;
                        s.since = SystemTime::now();
                    });
                    let mut next = Instant::now();
                    let mut seq = 0;
                    let mut ended = false;
                    while !stop.is_cancelled() {
                        progress.beat();
                        if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error])
                            && let gst::MessageView::Error(e) = msg.view()
                        {
                            fail(format!("clip {path}: {}", e.error()));
                            ended = true;
                        }
                        if ended {
                            std::thread::sleep(crate::progress::BEAT_PERIOD / 4);
                            continue;
                        }
                        let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(200))
                        else {
                            if sink.is_eos() {
                                ended = !looped
                                    || pipeline
                                        .seek_simple(gst::SeekFlags::FLUSH, gst::ClockTime::ZERO)
                                        .is_err();
                            }
                            continue;
                        };
                        let Some((width, height, pixels)) =
                            crate::camera::pipeline::copy_i420(&sample)
                        else {
                            continue;
                        };
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        while slot.has_frame() && !stop.is_cancelled() {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        next = Instant::now().max(next) + period;
                        seq += 1;
                        slot.put(Arc::new(Frame {
                            camera: id.clone(),
                            seq,
                            captured_at: SystemTime::now(),
                            captured: Instant::now(),
                            width,
                            height,
                            pixels,
                        }));
                        status.send_modify(|s| {
                            s.frames_received = seq;
                            s.last_frame_at = Some(SystemTime::now());
                        });
                    }
                    let _ = pipeline.set_state(gst::State::Null);
                    progress.retire();
                    status.send_modify(|s| {
                        s.state = CameraState::Stopped;
                        s.since = SystemTime::now();
                    });
                })
                .expect("spawn a clip thread");
            let _ = done.await;
        };
        Ok(OpenedCamera {
            handle,
            task: Some(Box::pin(task)),
            feed: None,
        })
    }
}
