//! The per-camera supervisor: one task owns one camera's pipeline and reconnects it forever.
//!
//! Each attempt builds a fresh pipeline, waits for the first frame (`first_frame_timeout`), then
//! watches the bus and the frame gap (`stall_timeout`; rtspsrc alone notices a silent server only
//! after ~25 s). A fault ends the attempt; the pipeline goes to Null and the next attempt waits:
//! transient faults back off exponentially with jitter (reset after `healthy_reset` of streaming),
//! configuration faults (401, 404) wait `config_fault_backoff`. Every wait sits in a `select!` with
//! the shutdown token first.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use super::backoff::Backoff;
use super::config::{CameraConfig, IngestConfig, Transport};
use super::pipeline::{CameraPipeline, Fault, FrameOutput, PipelineSpec};
use super::{CameraHandle, CameraState, CameraStatus, DecodeDemand, FrameSlot};
use crate::progress::{Progress, Stages};
use crate::telemetry::camera::{self as telemetry, FaultClass};

/// How often the supervisor looks at frame counters and refreshes the published status.
const TICK: Duration = Duration::from_millis(200);
const STATUS_PERIOD: Duration = Duration::from_secs(1);

/// Why a camera could not be set up (a config that passed validation gives none).
#[derive(Debug, thiserror::Error)]
pub enum CameraSetupError {
    #[error(transparent)]
    Url(#[from] super::UrlError),
    #[error(transparent)]
    Credentials(#[from] super::config::CredentialsError),
}

/// What a camera's supervisor feeds: its frame slot, its frame numbers and its status.
#[derive(Clone)]
pub struct CameraFeed {
    pub slot: Arc<FrameSlot>,
    pub seq: Arc<AtomicU64>,
    pub status: watch::Sender<CameraStatus>,
}

pub struct CameraSupervisor {
    spec: PipelineSpec,
    ingest: IngestConfig,
    output: FrameOutput,
    status: watch::Sender<CameraStatus>,
    cancel: CancellationToken,
    /// Frames received by earlier pipelines of this camera.
    frames_before: u64,
    /// The last fault logged at warn/error level, to log each distinct fault once.
    last_logged_fault: Option<(CameraState, String)>,
    /// `transport = "auto"`: `spec.transport` alternates until one streams.
    auto_transport: bool,
    /// Beaten each time the supervisor's loop turns (see [`crate::progress`]).
    progress: Option<Progress>,
}

/// The result of one connection attempt.
struct Attempt {
    /// `None` when the attempt ended because of shutdown.
    fault: Option<Fault>,
    streamed_for: Duration,
}

impl CameraSupervisor {
    /// Validates what the camera needs (URL, credentials) and returns the supervisor and the handle
    /// the rest of the daemon uses. A disabled camera gets a handle in state `disabled` and no task.
    pub fn new(
        camera: &CameraConfig,
        ingest: &IngestConfig,
        cancel: CancellationToken,
    ) -> Result<(Option<Self>, CameraHandle), CameraSetupError> {
        let (handle, status) = CameraHandle::for_camera(camera, CameraState::Connecting);
        let slot = handle.slot.clone();
        if !camera.enabled {
            return Ok((None, handle));
        }
        let feed = CameraFeed {
            slot,
            seq: Arc::new(AtomicU64::new(0)),
            status,
        };
        Ok((Some(Self::resume(camera, ingest, cancel, feed)?), handle))
    }

    /// A supervisor for `camera` that feeds an existing camera's slot and status (a live reload
    /// with a new URL, credentials or transport): frame numbers and counters go on from there.
    pub fn resume(
        camera: &CameraConfig,
        ingest: &IngestConfig,
        cancel: CancellationToken,
        feed: CameraFeed,
    ) -> Result<Self, CameraSetupError> {
        let spec = PipelineSpec {
            camera: camera.id.as_str().into(),
            url: camera.rtsp_url()?,
            credentials: camera.credentials()?,
            // `auto` starts with TCP (see `run`).
            transport: match camera.transport {
                Transport::Auto => Transport::Tcp,
                t => t,
            },
            latency: camera.latency,
            codec: camera.codec,
            tcp_timeout: ingest.tcp_timeout,
            decoder_threads: ingest.decoder_threads,
            size: Some((camera.detect_width, camera.detect_height)),
            max_fps: Some(camera.detect_fps),
        };
        let frames_before = feed.status.borrow().frames_received;
        Ok(Self {
            spec,
            ingest: ingest.clone(),
            output: FrameOutput {
                slot: feed.slot,
                seq: feed.seq,
            },
            status: feed.status,
            cancel,
            frames_before,
            last_logged_fault: None,
            auto_transport: camera.transport == Transport::Auto,
            progress: None,
        })
    }

    /// What this supervisor feeds, for a successor ([`Self::resume`]).
    pub fn feed(&self) -> CameraFeed {
        CameraFeed {
            slot: self.output.slot.clone(),
            seq: self.output.seq.clone(),
            status: self.status.clone(),
        }
    }

    /// Reports this supervisor's progress as stage `camera/<id>`.
    pub fn report_progress(mut self, stages: &Stages) -> Self {
        self.progress = Some(stages.register(format!("camera/{}", self.spec.camera)));
        self
    }

    fn beat(&self) {
        if let Some(p) = &self.progress {
            p.beat();
        }
    }

    /// Waits `delay` (or until shutdown, then false), reporting progress meanwhile.
    async fn wait(&self, delay: Duration) -> bool {
        let until = tokio::time::Instant::now() + delay;
        let mut beat = tokio::time::interval(crate::progress::BEAT_PERIOD);
        loop {
            self.beat();
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => return true,
                _ = beat.tick() => {}
            }
        }
    }

    /// Runs until the cancellation token fires; the pipeline is Null when this returns.
    pub async fn run(mut self) {
        let span = tracing::info_span!("camera", camera = %self.spec.camera);
        async move {
            info!(url = %self.spec.url, transport = ?self.spec.transport, "camera supervisor started");
            let mut backoff = Backoff::new(self.ingest.backoff_initial, self.ingest.backoff_max);
            let mut first = true;
            while !self.cancel.is_cancelled() {
                if !first {
                    self.status.send_modify(|s| s.reconnects += 1);
                    telemetry::reconnected(&self.spec.camera);
                }
                first = false;
                self.set_state(CameraState::Connecting, None, None);
                let attempt = self.attempt().await;
                let Some(fault) = attempt.fault else { break };
                // `transport = "auto"`: a connection that brought no picture tries the other
                // transport next; one that streamed keeps its transport.
                if self.auto_transport
                    && attempt.streamed_for.is_zero()
                    && !matches!(fault, Fault::NotAuthorized(_))
                {
                    let next = self.spec.transport.other();
                    info!(failed = self.spec.transport.as_str(), next = next.as_str(), error = %fault,
                          "transport auto: no picture over this transport; trying the other");
                    self.spec.transport = next;
                }
                if attempt.streamed_for >= self.ingest.healthy_reset {
                    backoff.reset();
                }
                let (state, delay) = match &fault {
                    Fault::NotAuthorized(_) => (CameraState::AuthFailed, self.ingest.config_fault_backoff),
                    Fault::NotFound(_) => (CameraState::NotFound, self.ingest.config_fault_backoff),
                    Fault::Transient(_) => (CameraState::Backoff, backoff.next_delay()),
                };
                self.report_fault(state, &fault, delay, backoff.attempt());
                if !self.wait(delay).await {
                    break;
                }
            }
            if let Some(p) = &self.progress {
                p.retire();
            }
            self.set_state(CameraState::Stopped, None, None);
            info!("camera supervisor stopped");
        }
        .instrument(span)
        .await
    }

    /// One pipeline, from build to teardown.
    async fn attempt(&mut self) -> Attempt {
        self.beat();
        let pipeline = match CameraPipeline::start(&self.spec, self.output.clone()) {
            Ok(p) => p,
            Err(e) => {
                return Attempt {
                    fault: Some(Fault::Transient(e.to_string())),
                    streamed_for: Duration::ZERO,
                };
            }
        };
        let mut bus = pipeline.bus().stream();
        let started = Instant::now();
        let mut streaming_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status = (Instant::now(), 0u64);

        let fault = loop {
            self.beat();
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break None,
                msg = bus.next() => {
                    let Some(msg) = msg else {
                        break Some(Fault::Transient("pipeline bus closed".into()));
                    };
                    if let Some(fault) = pipeline.classify(&msg) {
                        break Some(fault);
                    }
                    if let gstreamer::MessageView::Warning(w) = msg.view() {
                        debug!(warning = %pipeline.scrub(w.error().to_string()), "pipeline warning");
                    }
                }
                _ = tick.tick() => {
                    let stats = pipeline.stats();
                    let now = Instant::now();
                    match (stats.first_frame(), streaming_since) {
                        (None, _) => {
                            if started.elapsed() >= self.ingest.first_frame_timeout {
                                // rtspsrc's own UDP timeout (and its firewall hint) is off: say it here.
                                let hint = match self.spec.transport {
                                    Transport::Udp if !self.auto_transport => "; RTP over UDP: a firewall or NAT may drop the packets, try transport = \"tcp\" or \"auto\"",
                                    _ => "",
                                };
                                break Some(Fault::Transient(format!(
                                    "no frame within {} of connecting{hint}",
                                    humantime::format_duration(self.ingest.first_frame_timeout)
                                )));
                            }
                        }
                        (Some(first), None) => {
                            streaming_since = Some(now);
                            let ms = first.saturating_duration_since(started).as_millis() as u64;
                            self.set_state(CameraState::Streaming, None, None);
                            info!(first_frame_ms = ms, encoding = stats.encoding().as_deref().unwrap_or("?"), "camera streaming");
                            self.last_logged_fault = None;
                        }
                        (Some(_), Some(_)) => {
                            let gap = stats.last_activity().map(|t| now.saturating_duration_since(t)).unwrap_or_default();
                            if gap >= self.ingest.stall_timeout {
                                break Some(Fault::Transient(format!(
                                    "stalled: no frame for {}",
                                    humantime::format_duration(Duration::from_millis(gap.as_millis() as u64))
                                )));
                            }
                            // Data arrives but no picture comes out (a still camera shows one per keyframe).
                            let picture_gap = stats.last_frame().map(|t| now.saturating_duration_since(t)).unwrap_or_default();
                            if picture_gap >= 3 * self.ingest.stall_timeout + self.output.slot.still_keyframe_interval() {
                                break Some(Fault::Transient(format!(
                                    "stalled: data arrives but no picture was decoded for {}",
                                    humantime::format_duration(Duration::from_secs(picture_gap.as_secs()))
                                )));
                            }
                        }
                    }
                    if now.duration_since(last_status.0) >= STATUS_PERIOD {
                        let frames = stats.frames();
                        let fps = (frames - last_status.1) as f64 / now.duration_since(last_status.0).as_secs_f64();
                        telemetry::frames(&self.spec.camera, frames - last_status.1);
                        last_status = (now, frames);
                        self.publish_counters(frames, fps, stats.last_frame());
                    }
                }
            }
        };
        let stats = pipeline.stats().clone();
        drop(bus);
        // The teardown is bounded (TEARDOWN_DEADLINE), well inside a stage's deadline.
        self.beat();
        let fault = match pipeline
            .stop(super::teardown::TEARDOWN_DEADLINE, &self.spec.camera)
            .await
        {
            super::teardown::Teardown::Done(_) => fault,
            super::teardown::Teardown::Stuck => {
                let why = format!(
                    "the pipeline did not stop within {}s (GStreamer teardown stuck); abandoned and rebuilt",
                    super::teardown::TEARDOWN_DEADLINE.as_secs()
                );
                error!(error = %why, stuck_teardowns = super::teardown::stuck_teardowns(), "camera teardown stuck");
                // Shutting down: nothing to rebuild. Otherwise the camera is faulted and retried.
                fault.map(|_| Fault::Transient(why))
            }
        };
        telemetry::frames(&self.spec.camera, stats.frames() - last_status.1);
        self.publish_counters(stats.frames(), 0.0, stats.last_frame());
        self.frames_before += stats.frames();
        Attempt {
            fault,
            streamed_for: streaming_since.map(|s| s.elapsed()).unwrap_or_default(),
        }
    }

    fn publish_counters(&self, frames_this_pipeline: u64, fps: f64, last_frame: Option<Instant>) {
        let total = self.frames_before + frames_this_pipeline;
        let last_frame_at = last_frame.map(|t| SystemTime::now() - t.elapsed());
        let decoding = self.output.slot.decode_demand();
        telemetry::keyframes_only(&self.spec.camera, decoding == DecodeDemand::Keyframes);
        self.status.send_modify(|s| {
            s.decoding = decoding;
            s.frames_received = total;
            s.fps = fps;
            if last_frame_at.is_some() {
                s.last_frame_at = last_frame_at;
            }
        });
    }

    fn set_state(&self, state: CameraState, error: Option<String>, retry_at: Option<SystemTime>) {
        self.status.send_if_modified(|s| {
            let changed = s.state != state || error.is_some() || s.retry_at != retry_at;
            if s.state != state {
                s.since = SystemTime::now();
                s.state = state;
            }
            if state == CameraState::Streaming {
                s.last_error = None;
            }
            if let Some(e) = &error {
                s.last_error = Some(e.clone());
            }
            s.retry_at = retry_at;
            if state != CameraState::Streaming {
                s.fps = 0.0;
            }
            changed
        });
        telemetry::streaming(&self.spec.camera, state == CameraState::Streaming);
    }

    /// Logs a fault once per distinct (state, message); repeats go to debug.
    fn report_fault(&mut self, state: CameraState, fault: &Fault, delay: Duration, attempt: u32) {
        let retry_in = humantime::format_duration(Duration::from_millis(delay.as_millis() as u64));
        let class = match state {
            CameraState::AuthFailed => FaultClass::AuthFailed,
            CameraState::NotFound => FaultClass::NotFound,
            _ => FaultClass::Transient,
        };
        telemetry::fault(&self.spec.camera, class);
        self.set_state(
            state,
            Some(fault.message().to_owned()),
            Some(SystemTime::now() + delay),
        );
        let key = (state, fault.message().to_owned());
        if self.last_logged_fault.as_ref() == Some(&key) {
            debug!(state = %state, error = %fault, attempt, retry_in = %retry_in, "camera still failing");
            return;
        }
        self.last_logged_fault = Some(key);
        match state {
            CameraState::AuthFailed => error!(
                state = %state, error = %fault, retry_in = %retry_in,
                "camera refused the credentials; check username and password_file/password_env"
            ),
            CameraState::NotFound => error!(
                state = %state, error = %fault, url = %self.spec.url, retry_in = %retry_in,
                "camera has no stream at this path; check the URL path"
            ),
            _ => {
                warn!(state = %state, error = %fault, attempt, retry_in = %retry_in, "camera connection failed; retrying")
            }
        }
    }
}
