//! Camera ingest: one supervisor task per camera owns a GStreamer pipeline and hands decoded,
//! scaled RGB frames to a one-frame slot (latest wins).
//!
//! - [`pipeline`] builds the pipeline from elements and classifies bus messages;
//! - [`supervisor`] runs the reconnect loop (backoff, first-frame timeout, stall watchdog);
//! - [`probe`] is the installer's one-shot diagnosis;
//! - [`url`] keeps credentials out of URLs and logs.

pub mod backoff;
pub mod config;
pub mod pipeline;
pub mod pixels;
pub mod probe;
pub mod supervisor;
pub mod teardown;
mod url;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use serde::Serialize;

pub use self::pixels::{Pixels, YuvMatrix};
pub use self::url::{Credentials, RtspUrl, UrlError, redact_text, redact_url};

/// One decoded frame, as the pipeline delivered it (I420 from cameras; RGB from tools and tests).
#[derive(Clone)]
pub struct Frame {
    pub camera: Arc<str>,
    /// Per-camera sequence number, counting from 1 on each daemon start (it survives reconnects).
    pub seq: u64,
    /// Wall-clock time the frame left the appsink.
    pub captured_at: SystemTime,
    /// Monotonic time the frame left the appsink, for latency and staleness.
    pub captured: Instant,
    pub width: u32,
    pub height: u32,
    pub pixels: Pixels,
}

impl Frame {
    /// Packed RGB (`width * height * 3` bytes); converted from I420 on each call (snapshots).
    pub fn rgb(&self) -> std::borrow::Cow<'_, [u8]> {
        self.pixels.to_rgb(self.width, self.height)
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("camera", &self.camera)
            .field("seq", &self.seq)
            .field("size", &(self.width, self.height))
            .finish_non_exhaustive()
    }
}

/// Which frames the consumer wants decoded. The pipeline reads it for every compressed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeDemand {
    /// Every frame (motion, live tracks, or no gate).
    Every,
    /// A still scene: only keyframes, which need no reference; deltas are dropped before the
    /// decoder. Full decoding resumes at the next keyframe after the demand changes back.
    Keyframes,
}

/// Decides on the producer's thread, before the slot, whether a frame is worth a consumer's time
/// (the motion gate). Must be cheap and must not block.
pub type AdmitFn = Box<dyn Fn(&Frame) -> bool + Send + Sync>;

/// A camera's latest frame. The producer (a GStreamer streaming thread) never blocks on the consumer:
/// `put` replaces the previous frame, which counts as overwritten if nobody took it.
pub struct FrameSlot {
    latest: Mutex<Option<Arc<Frame>>>,
    /// The last frame offered, admitted or not: the console's live picture.
    shown: Mutex<Option<Arc<Frame>>>,
    notify: tokio::sync::Notify,
    overwritten: AtomicU64,
    /// Called after each `put`, for consumers on OS threads (the detector pool). Must not block.
    listener: OnceLock<Box<dyn Fn() + Send + Sync>>,
    admit: OnceLock<AdmitFn>,
    /// `DecodeDemand::Keyframes` when true.
    keyframes_only: AtomicBool,
    /// While keyframes only: decode a keyframe at least this often (ms), and otherwise only after
    /// the compressed frames grew (0: every keyframe).
    still_keyframe_ms: AtomicU64,
}

impl Default for FrameSlot {
    fn default() -> Self {
        Self {
            latest: Mutex::new(None),
            shown: Mutex::new(None),
            notify: tokio::sync::Notify::new(),
            overwritten: AtomicU64::new(0),
            listener: OnceLock::new(),
            admit: OnceLock::new(),
            keyframes_only: AtomicBool::new(false),
            still_keyframe_ms: AtomicU64::new(0),
        }
    }
}

impl FrameSlot {
    /// Offers a frame: the admission filter (if any) decides (and counts what it turns away),
    /// then it replaces the waiting one. Returns whether the frame entered the slot.
    pub fn put(&self, frame: Arc<Frame>) -> bool {
        *self.shown.lock().unwrap_or_else(|e| e.into_inner()) = Some(frame.clone());
        if let Some(admit) = self.admit.get()
            && !admit(&frame)
        {
            return false;
        }
        let previous = self
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(frame);
        if previous.is_some() {
            self.overwritten.fetch_add(1, Ordering::Relaxed);
        }
        self.notify.notify_one();
        if let Some(listener) = self.listener.get() {
            listener();
        }
        true
    }

    /// Registers the one listener called after every `put`; false if one was already set.
    pub fn set_listener(&self, listener: Box<dyn Fn() + Send + Sync>) -> bool {
        self.listener.set(listener).is_ok()
    }

    /// Registers the one admission filter; false if one was already set.
    pub fn set_admit(&self, admit: AdmitFn) -> bool {
        self.admit.set(admit).is_ok()
    }

    /// The last frame offered (also one the motion gate turned away), for the live picture.
    pub fn shown(&self) -> Option<Arc<Frame>> {
        self.shown.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes the latest frame, leaving the slot empty.
    pub fn take(&self) -> Option<Arc<Frame>> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether a frame is waiting (without taking it).
    pub fn has_frame(&self) -> bool {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Waits for a frame and takes it.
    pub async fn next(&self) -> Arc<Frame> {
        loop {
            let notified = self.notify.notified();
            if let Some(f) = self.take() {
                return f;
            }
            notified.await;
        }
    }

    /// Frames replaced before anyone took them.
    pub fn overwritten(&self) -> u64 {
        self.overwritten.load(Ordering::Relaxed)
    }

    pub fn decode_demand(&self) -> DecodeDemand {
        match self.keyframes_only.load(Ordering::Relaxed) {
            true => DecodeDemand::Keyframes,
            false => DecodeDemand::Every,
        }
    }

    /// How often a still camera's keyframe is decoded when its compressed frames show no change
    /// (zero: every keyframe).
    pub fn still_keyframe_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.still_keyframe_ms.load(Ordering::Relaxed))
    }

    pub fn set_still_keyframe_interval(&self, interval: std::time::Duration) {
        self.still_keyframe_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_decode_demand(&self, demand: DecodeDemand) {
        self.keyframes_only
            .store(demand == DecodeDemand::Keyframes, Ordering::Relaxed);
    }
}

/// What a camera is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CameraState {
    /// Pipeline built, waiting for the first frame.
    Connecting,
    Streaming,
    /// A transient fault (refused, timeout, EOF, stall); retrying after a backoff.
    Backoff,
    /// The camera refused the credentials (401). A configuration fault; retried slowly.
    AuthFailed,
    /// The stream path does not exist (404). A configuration fault; retried slowly.
    NotFound,
    /// `enabled = false` in the config.
    Disabled,
    /// The daemon is shutting down.
    Stopped,
}

impl CameraState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Streaming => "streaming",
            Self::Backoff => "backoff",
            Self::AuthFailed => "auth_failed",
            Self::NotFound => "not_found",
            Self::Disabled => "disabled",
            Self::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for CameraState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A camera's status as the rest of the daemon sees it (through a `watch` channel).
#[derive(Debug, Clone, Serialize)]
pub struct CameraStatus {
    pub state: CameraState,
    /// When `state` last changed.
    pub since: SystemTime,
    /// The last fault, in words; never contains credentials.
    pub last_error: Option<String>,
    pub frames_received: u64,
    /// Frames per second delivered over the last status period.
    pub fps: f64,
    /// Pipelines rebuilt after the first one.
    pub reconnects: u64,
    pub last_frame_at: Option<SystemTime>,
    /// When the next connection attempt is due, in backoff states.
    pub retry_at: Option<SystemTime>,
    /// Whether every frame is decoded or, on a still scene, keyframes only (then `fps` is the
    /// keyframe rate).
    pub decoding: DecodeDemand,
}

impl CameraStatus {
    pub fn new(state: CameraState) -> Self {
        Self {
            state,
            since: SystemTime::now(),
            last_error: None,
            frames_received: 0,
            fps: 0.0,
            reconnects: 0,
            last_frame_at: None,
            retry_at: None,
            decoding: DecodeDemand::Every,
        }
    }
}

/// What the rest of the daemon holds of a running camera.
#[derive(Clone)]
pub struct CameraHandle {
    pub id: Arc<str>,
    pub name: String,
    pub slot: Arc<FrameSlot>,
    pub status: tokio::sync::watch::Receiver<CameraStatus>,
}

impl CameraHandle {
    /// A fresh handle for `camera` (an empty slot), and the sender of its status: `initial`
    /// for an enabled camera, `disabled` otherwise.
    pub fn for_camera(
        camera: &config::CameraConfig,
        initial: CameraState,
    ) -> (Self, tokio::sync::watch::Sender<CameraStatus>) {
        let state = match camera.enabled {
            true => initial,
            false => CameraState::Disabled,
        };
        let (status, status_rx) = tokio::sync::watch::channel(CameraStatus::new(state));
        let handle = Self {
            id: camera.id.as_str().into(),
            name: camera.display_name().to_owned(),
            slot: Arc::new(FrameSlot::default()),
            status: status_rx,
        };
        (handle, status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Arc<Frame> {
        Arc::new(Frame {
            camera: "c".into(),
            seq,
            captured_at: SystemTime::now(),
            captured: Instant::now(),
            width: 1,
            height: 1,
            pixels: Pixels::Rgb(vec![0; 3]),
        })
    }

    #[test]
    fn slot_keeps_latest_and_counts_overwrites() {
        let slot = FrameSlot::default();
        slot.put(frame(1));
        slot.put(frame(2));
        slot.put(frame(3));
        assert_eq!(slot.take().unwrap().seq, 3);
        assert!(slot.take().is_none());
        assert_eq!(slot.overwritten(), 2);
    }

    #[tokio::test]
    async fn next_wakes_on_put() {
        let slot = Arc::new(FrameSlot::default());
        let s = slot.clone();
        let waiter = tokio::spawn(async move { s.next().await.seq });
        tokio::task::yield_now().await;
        slot.put(frame(7));
        assert_eq!(waiter.await.unwrap(), 7);
    }
}
