//! The detector pool: N worker threads (never on the async runtime), each owning one [`Detector`],
//! serving the cameras' one-frame slots.
//!
//! - **The motion gate runs where the frame is produced**, as the slot's admission filter on the
//!   camera's streaming thread: a still camera's frames never reach the slot, never wake a worker
//!   and never take pool time. The gate also tells the pipeline to decode keyframes only while the
//!   scene is still ([`DecodeDemand`]).
//! - **Least recently served first.** A free worker takes the waiting frame of the camera whose last
//!   frame was taken longest ago, so under any overload every camera with motion gets an equal share
//!   of inferences. A waiting frame is always the freshest the camera has (a newer one replaces it and
//!   the old one counts as overwritten): nothing is ever dropped for its age, so no overload can starve
//!   a camera, and lag is bounded by one turn of the cameras with motion.
//! - **A keep-alive yields to motion, within a bound.** A still camera's keep-alive frame (the gate's
//!   look at a scene without motion, every `motion.keepalive`) waits while frames with motion are
//!   waiting too, until the gate's next keep-alive replaces it (one `keepalive` later, with the
//!   camera's next frame; at the latest 1.5 x `keepalive` after it came); that fresh frame goes by
//!   its turn like any other. Under an overload the cameras with motion get those inferences, and a
//!   still scene is still inferred about every 2 x `keepalive`, on a fresh frame.
//! - Frames of one camera are inferred one at a time, in capture order. Results go to a bounded
//!   channel; a full channel drops the newest result and counts it (`output_full`). Workers are woken
//!   by the slots, so an idle pool costs nothing.
//! - **A worker that fails is restarted.** A detector that panics loses that frame only: its camera is
//!   freed at once, and (given a [`DetectorFactory`]) the worker drops the detector, whose state the
//!   panic may have broken, and builds a fresh one (`kinderwatch_detect_worker_restarts_total`),
//!   retrying with backoff while that fails. Each worker reports progress as stage `detector-<n>`.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::motion::{GateDecision, InferReason, MotionConfig, MotionGate, PictureStats};
use super::{DetectError, Detector, FrameDetections};
use crate::camera::{DecodeDemand, Frame, FrameSlot};
use crate::telemetry::detect::{self as telemetry, FrameDrop};

/// One camera as the pool sees it.
#[derive(Clone)]
pub struct PoolCamera {
    pub id: Arc<str>,
    pub slot: Arc<FrameSlot>,
    /// One detect interval (1 / detect_fps): the pool keeps up with the camera while it takes a
    /// frame at least this often.
    pub interval: Duration,
    /// Normalised polygons the motion gate ignores.
    pub motion_masks: Vec<Vec<[f32; 2]>>,
}

/// Per-camera counters, readable while the pool runs.
#[derive(Debug, Default)]
pub struct CameraCounters {
    pub inferred: AtomicU64,
    pub detections: AtomicU64,
    pub skipped_motion: AtomicU64,
    pub dropped_output_full: AtomicU64,
    pub errors: AtomicU64,
}

/// A snapshot of one camera's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CameraStats {
    pub inferred: u64,
    pub detections: u64,
    /// Frames the motion gate turned away before the slot.
    pub skipped_motion: u64,
    pub dropped_output_full: u64,
    /// Frames replaced in the slot before any worker took them: the pool did not keep up.
    pub overwritten: u64,
    /// Failed or panicked inferences.
    pub errors: u64,
}

impl CameraStats {
    /// Frames with motion that were dropped, for whatever reason.
    pub fn dropped(&self) -> u64 {
        self.overwritten + self.dropped_output_full
    }
}

struct CameraEntry {
    cam: PoolCamera,
    /// The camera's detect interval now (a live reload may change it; `cam.interval` is the first).
    interval: Mutex<Duration>,
    gate: Mutex<MotionGate>,
    live_tracks: Arc<AtomicBool>,
    counters: CameraCounters,
    /// Statistics of the last frame the gate saw (for tamper detection).
    picture: Mutex<Option<PictureStats>>,
    /// While the waiting frame is a keep-alive (no motion), since when, and whether a newer one has
    /// replaced the first.
    keepalive_waiting: Mutex<Option<KeepaliveWait>>,
}

/// A keep-alive frame not yet taken.
#[derive(Clone, Copy)]
struct KeepaliveWait {
    /// When the first keep-alive not yet taken was admitted.
    since: Instant,
    /// The gate admitted a newer one (one `keepalive` later): it waits no longer.
    replaced: bool,
}

impl CameraEntry {
    fn keepalive_waiting(&self) -> std::sync::MutexGuard<'_, Option<KeepaliveWait>> {
        self.keepalive_waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this camera's waiting frame is a keep-alive that may still yield to motion: the
    /// first one, for at most 1.5 x `keepalive` (a camera whose next frame does not come).
    fn keepalive_may_wait(&self, now: Instant, keepalive: Duration) -> bool {
        self.keepalive_waiting().is_some_and(|w| {
            !w.replaced && now.saturating_duration_since(w.since) < keepalive * 3 / 2
        })
    }
}

/// One camera in the schedule.
struct Scheduled {
    entry: Arc<CameraEntry>,
    /// A worker is on this camera's frame: frames of one camera are inferred one at a time, in order.
    busy: bool,
    /// When a worker last took a frame of this camera (`None`: never).
    last_taken: Option<Instant>,
}

/// Who is being served; guarded by `Shared::sched` together with `wake`, so a `put` is never missed.
/// The cameras change with a live reload (added, removed); a worker on a removed camera's frame
/// finishes it.
struct Sched {
    cameras: Vec<Scheduled>,
    shutdown: bool,
}

impl Sched {
    fn find(&self, camera: &str) -> Option<&Arc<CameraEntry>> {
        self.cameras
            .iter()
            .map(|c| &c.entry)
            .find(|e| &*e.cam.id == camera)
    }
}

struct Shared {
    sched: Mutex<Sched>,
    wake: Condvar,
    keyframes_when_still: bool,
    /// For a camera's new motion gate after a live reload.
    motion: MotionConfig,
    output: mpsc::Sender<FrameDetections>,
}

impl Shared {
    fn sched(&self) -> std::sync::MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs the motion gate in the camera's slot and puts the camera in the schedule (last
    /// served: never, so its first frame goes first). `false`: a camera with this id is there.
    fn add(self: &Arc<Self>, cam: PoolCamera, live_tracks: Arc<AtomicBool>) -> bool {
        if self.sched().find(&cam.id).is_some() {
            return false;
        }
        let entry = Arc::new(CameraEntry {
            interval: Mutex::new(cam.interval),
            gate: Mutex::new(MotionGate::new(self.motion.clone(), &cam.motion_masks)),
            live_tracks,
            counters: CameraCounters::default(),
            picture: Mutex::new(None),
            keepalive_waiting: Mutex::new(None),
            cam,
        });
        let slot = &entry.cam.slot;
        slot.set_still_keyframe_interval(self.motion.still_keyframe_interval);
        let weak = Arc::downgrade(self);
        let listener = slot.set_listener(Box::new(move || {
            if let Some(s) = weak.upgrade() {
                let _guard = s.sched();
                s.wake.notify_one();
            }
        }));
        // Weak: the slot belongs to the camera, the entry to the pool; a removed camera's slot
        // admits whatever it still gets (nobody takes it).
        let (weak, keyframes) = (Arc::downgrade(&entry), self.keyframes_when_still);
        let admit = slot.set_admit(Box::new(move |frame| match weak.upgrade() {
            Some(entry) => admit(&entry, keyframes, frame),
            None => true,
        }));
        if !(listener && admit) {
            tracing::warn!(camera = %entry.cam.id, "frame slot already has a consumer; the pool may miss frames");
        }
        self.sched().cameras.push(Scheduled {
            entry,
            busy: false,
            last_taken: None,
        });
        // Its slot may hold a frame already.
        self.wake.notify_one();
        true
    }
}

/// Reads per-camera counters of a running pool.
#[derive(Clone)]
pub struct PoolStats(Arc<Shared>);

impl PoolStats {
    fn entry(&self, camera: &str) -> Option<Arc<CameraEntry>> {
        self.0.sched().find(camera).cloned()
    }

    /// What the camera's last gated frame looked like.
    pub fn picture(&self, camera: &str) -> Option<PictureStats> {
        *self
            .entry(camera)?
            .picture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn cameras(&self) -> Vec<Arc<str>> {
        self.0
            .sched()
            .cameras
            .iter()
            .map(|c| c.entry.cam.id.clone())
            .collect()
    }

    /// The camera's detect interval.
    pub fn interval(&self, camera: &str) -> Option<Duration> {
        self.entry(camera)
            .map(|e| *e.interval.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// What the camera's pipeline is asked to decode now.
    pub fn decode_demand(&self, camera: &str) -> Option<DecodeDemand> {
        self.entry(camera).map(|e| e.cam.slot.decode_demand())
    }

    pub fn stats(&self, camera: &str) -> Option<CameraStats> {
        self.entry(camera).map(|e| {
            let c = &e.counters;
            CameraStats {
                inferred: c.inferred.load(Ordering::Relaxed),
                detections: c.detections.load(Ordering::Relaxed),
                skipped_motion: c.skipped_motion.load(Ordering::Relaxed),
                dropped_output_full: c.dropped_output_full.load(Ordering::Relaxed),
                overwritten: e.cam.slot.overwritten(),
                errors: c.errors.load(Ordering::Relaxed),
            }
        })
    }
}

pub struct DetectorPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// Builds a fresh detector for a worker whose detector panicked.
pub type DetectorFactory = Arc<dyn Fn() -> Result<Box<dyn Detector>, DetectError> + Send + Sync>;

/// How the pool's workers are watched and restarted.
#[derive(Clone, Default)]
pub struct PoolSupervision {
    /// Each worker reports progress here as `detector-<n>`.
    pub stages: Option<crate::progress::Stages>,
    /// Without one a worker keeps its detector after a panic.
    pub factory: Option<DetectorFactory>,
}

/// The first wait before building a detector again after a failed build; doubles up to a minute.
const REBUILD_BACKOFF: Duration = Duration::from_millis(500);
const REBUILD_BACKOFF_MAX: Duration = Duration::from_secs(60);

impl DetectorPool {
    /// Starts one worker thread per detector and installs the motion gate in every camera's slot.
    /// Results go to the returned receiver (capacity `output_capacity`).
    pub fn start(
        cameras: Vec<PoolCamera>,
        detectors: Vec<Box<dyn Detector>>,
        motion: &MotionConfig,
        output_capacity: usize,
    ) -> (Self, mpsc::Receiver<FrameDetections>) {
        Self::start_supervised(
            cameras,
            detectors,
            motion,
            output_capacity,
            PoolSupervision::default(),
        )
    }

    /// [`Self::start`], with progress reports and worker restarts.
    pub fn start_supervised(
        cameras: Vec<PoolCamera>,
        detectors: Vec<Box<dyn Detector>>,
        motion: &MotionConfig,
        output_capacity: usize,
        supervision: PoolSupervision,
    ) -> (Self, mpsc::Receiver<FrameDetections>) {
        let (tx, rx) = mpsc::channel(output_capacity.max(1));
        let shared = Arc::new(Shared {
            sched: Mutex::new(Sched {
                cameras: Vec::new(),
                shutdown: false,
            }),
            wake: Condvar::new(),
            keyframes_when_still: motion.enabled && motion.keyframes_when_still,
            motion: motion.clone(),
            output: tx,
        });
        for cam in cameras {
            let id = cam.id.clone();
            if !shared.add(cam, Arc::default()) {
                tracing::warn!(camera = %id, "camera given twice to the pool; the second is left out");
            }
        }
        let workers = detectors
            .into_iter()
            .enumerate()
            .map(|(i, detector)| {
                let shared = shared.clone();
                let me = Worker {
                    name: format!("detector-{i}"),
                    progress: supervision
                        .stages
                        .as_ref()
                        .map(|s| s.register(format!("detector-{i}"))),
                    factory: supervision.factory.clone(),
                };
                std::thread::Builder::new()
                    .name(me.name.clone())
                    .spawn(move || worker(shared, detector, me))
                    .expect("spawn a detector thread")
            })
            .collect();
        (Self { shared, workers }, rx)
    }

    /// The flag the tracker sets while a camera has live tracks (keeps it inferred on a still scene).
    pub fn live_tracks_flag(&self, camera: &str) -> Option<Arc<AtomicBool>> {
        self.shared
            .sched()
            .find(camera)
            .map(|e| e.live_tracks.clone())
    }

    pub fn stats(&self, camera: &str) -> Option<CameraStats> {
        self.stats_reader().stats(camera)
    }

    /// A camera added by a live reload: its motion gate goes into its slot and it joins the
    /// schedule. `false`: the pool has a camera with this id.
    pub fn add_camera(&self, camera: PoolCamera) -> bool {
        self.add_camera_with(camera, Arc::default())
    }

    /// [`Self::add_camera`] with the live-tracks flag the rules stage already holds for it.
    pub fn add_camera_with(&self, camera: PoolCamera, live_tracks: Arc<AtomicBool>) -> bool {
        self.shared.add(camera, live_tracks)
    }

    /// A camera removed by a live reload leaves the schedule (a worker on its frame finishes it).
    /// `false`: the pool has no such camera.
    pub fn remove_camera(&self, camera: &str) -> bool {
        let mut sched = self.shared.sched();
        let before = sched.cameras.len();
        sched.cameras.retain(|c| &*c.entry.cam.id != camera);
        sched.cameras.len() != before
    }

    /// A camera's new detect interval and motion masks (a live reload): its motion gate starts
    /// afresh with the masks, as at start. The slot, the counters and the camera's turn are kept.
    /// `false`: the pool has no such camera.
    pub fn reconfigure(
        &self,
        camera: &str,
        interval: Duration,
        motion_masks: &[Vec<[f32; 2]>],
    ) -> bool {
        let Some(entry) = self.shared.sched().find(camera).cloned() else {
            return false;
        };
        *entry.interval.lock().unwrap_or_else(|e| e.into_inner()) = interval;
        *entry.gate.lock().unwrap_or_else(|e| e.into_inner()) =
            MotionGate::new(self.shared.motion.clone(), motion_masks);
        true
    }

    /// A cheap handle for reading the counters from elsewhere (a reporting task, the API).
    pub fn stats_reader(&self) -> PoolStats {
        PoolStats(self.shared.clone())
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Stops and joins every worker (each finishes the frame it is on). Returns how many joined.
    pub fn shutdown(mut self) -> usize {
        self.stop()
    }

    fn stop(&mut self) -> usize {
        {
            let mut sched = self.shared.sched.lock().unwrap_or_else(|e| e.into_inner());
            sched.shutdown = true;
            self.shared.wake.notify_all();
        }
        self.workers.drain(..).filter_map(|w| w.join().ok()).count()
    }
}

impl Drop for DetectorPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The slot's admission filter, on the camera's streaming thread: the motion gate decides whether
/// the frame goes to the pool, and what the pipeline should decode next.
fn admit(entry: &CameraEntry, keyframes_when_still: bool, frame: &Frame) -> bool {
    let live = entry.live_tracks.load(Ordering::Relaxed);
    let now = Instant::now();
    let (decision, picture) = {
        let mut gate = entry.gate.lock().unwrap_or_else(|e| e.into_inner());
        (gate.check(frame, live, now), gate.picture())
    };
    if picture.is_some() {
        *entry.picture.lock().unwrap_or_else(|e| e.into_inner()) = picture;
    }
    match decision {
        GateDecision::Skip => {
            entry
                .counters
                .skipped_motion
                .fetch_add(1, Ordering::Relaxed);
            telemetry::frame_skipped(&entry.cam.id);
            if keyframes_when_still {
                entry.cam.slot.set_decode_demand(DecodeDemand::Keyframes);
            }
            false
        }
        // A keep-alive look at a still scene does not wake the decoder up. The first one yields to
        // motion; one that replaces it (the waiting one is a `keepalive` old) does not.
        GateDecision::Infer(InferReason::Keepalive) => {
            let mut waiting = entry.keepalive_waiting();
            match &mut *waiting {
                Some(w) => w.replaced = true,
                None => {
                    *waiting = Some(KeepaliveWait {
                        since: now,
                        replaced: false,
                    })
                }
            }
            true
        }
        GateDecision::Infer(_) => {
            *entry.keepalive_waiting() = None;
            entry.cam.slot.set_decode_demand(DecodeDemand::Every);
            true
        }
    }
}

/// The waiting frame of the free camera served least recently; a keep-alive frame that may still
/// wait goes after every other. Called with `sched` held.
fn next_job(sched: &mut Sched, keepalive: Duration) -> Option<(Arc<CameraEntry>, Arc<Frame>)> {
    loop {
        let now = Instant::now();
        let pick = sched
            .cameras
            .iter_mut()
            .filter(|c| !c.busy && c.entry.cam.slot.has_frame())
            .min_by_key(|c| (c.entry.keepalive_may_wait(now, keepalive), c.last_taken))?;
        // Only the pool takes from its slots, but a frame could still vanish between the look
        // and the take: then look again.
        if let Some(frame) = pick.entry.cam.slot.take() {
            *pick.entry.keepalive_waiting() = None;
            pick.busy = true;
            pick.last_taken = Some(now);
            return Some((pick.entry.clone(), frame));
        }
    }
}

/// One worker's identity and supervision.
struct Worker {
    name: String,
    progress: Option<crate::progress::Progress>,
    factory: Option<DetectorFactory>,
}

impl Worker {
    fn beat(&self) {
        if let Some(p) = &self.progress {
            p.beat();
        }
    }

    /// A fresh detector from the factory, retried with backoff; `None` on shutdown.
    fn rebuild(&self, shared: &Shared, factory: &DetectorFactory) -> Option<Box<dyn Detector>> {
        let mut wait = REBUILD_BACKOFF;
        loop {
            let built = std::panic::catch_unwind(AssertUnwindSafe(|| factory()));
            match built {
                Ok(Ok(d)) => {
                    telemetry::worker_restarted(&self.name);
                    tracing::warn!(worker = %self.name, "detector worker restarted with a fresh session");
                    return Some(d);
                }
                Ok(Err(e)) => {
                    tracing::error!(worker = %self.name, error = %e, retry_in_ms = wait.as_millis() as u64,
                                    "detector worker cannot build a new session; retrying")
                }
                Err(_) => {
                    tracing::error!(worker = %self.name, retry_in_ms = wait.as_millis() as u64,
                                    "building a detector session panicked; retrying")
                }
            }
            // Wait, beating, unless the pool stops.
            let until = Instant::now() + wait;
            let mut sched = shared.sched.lock().unwrap_or_else(|e| e.into_inner());
            while Instant::now() < until {
                if sched.shutdown {
                    return None;
                }
                self.beat();
                let left = until
                    .saturating_duration_since(Instant::now())
                    .min(crate::progress::BEAT_PERIOD);
                sched = shared
                    .wake
                    .wait_timeout(sched, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            wait = (wait * 2).min(REBUILD_BACKOFF_MAX);
        }
    }
}

fn worker(shared: Arc<Shared>, detector: Box<dyn Detector>, me: Worker) {
    let mut detector = Some(detector);
    loop {
        me.beat();
        let mut d = match detector.take() {
            Some(d) => d,
            None => match me.factory.as_ref().and_then(|f| me.rebuild(&shared, f)) {
                Some(d) => d,
                None => break,
            },
        };
        let (entry, frame) = {
            let mut sched = shared.sched.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if sched.shutdown {
                    if let Some(p) = &me.progress {
                        p.retire();
                    }
                    return;
                }
                if let Some(job) = next_job(&mut sched, shared.motion.keepalive) {
                    break job;
                }
                // Woken by a frame, or after a beat period to report that the worker is idle, not stuck.
                sched = shared
                    .wake
                    .wait_timeout(sched, crate::progress::BEAT_PERIOD)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                me.beat();
            }
        };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            #[cfg(feature = "failpoints")]
            fail::fail_point!("detector_detect");
            process(&shared, d.as_mut(), &entry, frame)
        }));
        match outcome {
            Ok(()) => detector = Some(d),
            Err(_) => {
                entry.counters.errors.fetch_add(1, Ordering::Relaxed);
                telemetry::worker_panicked(&me.name, &entry.cam.id);
                match me.factory {
                    // The panic may have left the session broken: it is dropped, a new one built.
                    Some(_) => {
                        tracing::error!(camera = %entry.cam.id, worker = %me.name,
                                        "the detector panicked on a frame; the frame is lost, the worker restarts");
                        drop(std::panic::catch_unwind(AssertUnwindSafe(move || drop(d))));
                    }
                    None => {
                        tracing::error!(camera = %entry.cam.id, worker = %me.name,
                                        "the detector panicked on a frame; the frame is lost, the camera goes on");
                        detector = Some(d);
                    }
                }
            }
        }
        // The camera may have a newer frame waiting for this one to finish.
        let mut sched = shared.sched();
        if let Some(c) = sched
            .cameras
            .iter_mut()
            .find(|c| Arc::ptr_eq(&c.entry, &entry))
        {
            c.busy = false;
        }
        shared.wake.notify_one();
    }
    if let Some(p) = &me.progress {
        p.retire();
    }
}

fn process(shared: &Shared, detector: &mut dyn Detector, entry: &CameraEntry, frame: Arc<Frame>) {
    let taken = Instant::now();
    let queue_wait = taken.saturating_duration_since(frame.captured);
    let result: Result<_, DetectError> = detector.detect(&frame);
    let inference = taken.elapsed();
    match result {
        Ok(detections) => {
            entry.counters.inferred.fetch_add(1, Ordering::Relaxed);
            entry
                .counters
                .detections
                .fetch_add(detections.len() as u64, Ordering::Relaxed);
            telemetry::inferred(&entry.cam.id, inference, queue_wait);
            let out = FrameDetections {
                frame,
                detections,
                inference,
                queue_wait,
            };
            if shared.output.try_send(out).is_err() {
                entry
                    .counters
                    .dropped_output_full
                    .fetch_add(1, Ordering::Relaxed);
                telemetry::frames_dropped(&entry.cam.id, FrameDrop::OutputFull, 1);
            }
        }
        Err(e) => {
            let n = entry.counters.errors.fetch_add(1, Ordering::Relaxed);
            telemetry::detect_error(&entry.cam.id);
            // The first error and then every 100th: a broken model must not flood the journal.
            if n.is_multiple_of(100) {
                tracing::error!(camera = %entry.cam.id, error = %e, errors = n + 1, "detection failed");
            }
        }
    }
}
