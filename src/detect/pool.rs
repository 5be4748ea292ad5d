//! The detector pool: N worker threads (never on the async runtime), each owning one [`Detector`],
//! serving the cameras' one-frame slots round-robin.
//!
//! Frames of one camera are inferred one at a time, in capture order. Bounded everywhere: each camera holds at most one waiting frame (a newer one replaces it and the
//! old one counts as overwritten); a frame older than one detect interval when its turn comes is
//! dropped and counted (`stale`); results go to a bounded channel, and a full channel drops the
//! newest result and counts it (`output_full`). Workers are woken by the slots, so an idle pool
//! costs nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::motion::{GateDecision, MotionConfig, MotionGate, PictureStats};
use super::{DetectError, Detector, FrameDetections};
use crate::camera::{Frame, FrameSlot};

/// One camera as the pool sees it.
pub struct PoolCamera {
    pub id: Arc<str>,
    pub slot: Arc<FrameSlot>,
    /// One detect interval (1 / detect_fps): older frames are stale.
    pub max_age: Duration,
    /// Normalised polygons the motion gate ignores.
    pub motion_masks: Vec<Vec<[f32; 2]>>,
}

/// Per-camera counters, readable while the pool runs.
#[derive(Debug, Default)]
pub struct CameraCounters {
    pub inferred: AtomicU64,
    pub detections: AtomicU64,
    pub skipped_motion: AtomicU64,
    pub dropped_stale: AtomicU64,
    pub dropped_output_full: AtomicU64,
    pub errors: AtomicU64,
}

/// A snapshot of one camera's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CameraStats {
    pub inferred: u64,
    pub detections: u64,
    pub skipped_motion: u64,
    pub dropped_stale: u64,
    pub dropped_output_full: u64,
    /// Frames replaced in the slot before any worker took them.
    pub overwritten: u64,
    pub errors: u64,
}

struct CameraEntry {
    cam: PoolCamera,
    /// A worker is on this camera's frame: frames of one camera are inferred one at a time, in order.
    busy: AtomicBool,
    gate: Mutex<MotionGate>,
    live_tracks: Arc<AtomicBool>,
    counters: CameraCounters,
    labels: [(&'static str, String); 1],
    /// Statistics of the last frame a worker took (for tamper detection).
    picture: Mutex<Option<PictureStats>>,
}

struct Shared {
    cameras: Vec<CameraEntry>,
    /// Guards the scan of the slots together with `wake`, so a `put` is never missed.
    lock: Mutex<()>,
    wake: Condvar,
    next: AtomicUsize,
    shutdown: AtomicBool,
    output: mpsc::Sender<FrameDetections>,
}

/// Reads per-camera counters of a running pool.
#[derive(Clone)]
pub struct PoolStats(Arc<Shared>);

impl PoolStats {
    /// What the camera's last inspected frame looked like.
    pub fn picture(&self, camera: &str) -> Option<PictureStats> {
        let e = self.0.cameras.iter().find(|e| &*e.cam.id == camera)?;
        *e.picture.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn cameras(&self) -> Vec<Arc<str>> {
        self.0.cameras.iter().map(|e| e.cam.id.clone()).collect()
    }

    pub fn stats(&self, camera: &str) -> Option<CameraStats> {
        self.0
            .cameras
            .iter()
            .find(|e| &*e.cam.id == camera)
            .map(|e| {
                let c = &e.counters;
                CameraStats {
                    inferred: c.inferred.load(Ordering::Relaxed),
                    detections: c.detections.load(Ordering::Relaxed),
                    skipped_motion: c.skipped_motion.load(Ordering::Relaxed),
                    dropped_stale: c.dropped_stale.load(Ordering::Relaxed),
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

impl DetectorPool {
    /// Starts one worker thread per detector. Results go to the returned receiver (capacity
    /// `output_capacity`).
    pub fn start(
        cameras: Vec<PoolCamera>,
        detectors: Vec<Box<dyn Detector>>,
        motion: &MotionConfig,
        output_capacity: usize,
    ) -> (Self, mpsc::Receiver<FrameDetections>) {
        let (tx, rx) = mpsc::channel(output_capacity.max(1));
        let shared = Arc::new(Shared {
            cameras: cameras
                .into_iter()
                .map(|cam| CameraEntry {
                    busy: AtomicBool::new(false),
                    gate: Mutex::new(MotionGate::new(motion.clone(), &cam.motion_masks)),
                    live_tracks: Arc::default(),
                    counters: CameraCounters::default(),
                    picture: Mutex::new(None),
                    labels: [("camera", cam.id.to_string())],
                    cam,
                })
                .collect(),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            next: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            output: tx,
        });
        for entry in &shared.cameras {
            let weak = Arc::downgrade(&shared);
            let registered = entry.cam.slot.set_listener(Box::new(move || {
                if let Some(s) = weak.upgrade() {
                    let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                    s.wake.notify_one();
                }
            }));
            if !registered {
                tracing::warn!(camera = %entry.cam.id, "frame slot already has a consumer; the pool may miss wake-ups");
            }
        }
        let workers = detectors
            .into_iter()
            .enumerate()
            .map(|(i, detector)| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("detector-{i}"))
                    .spawn(move || worker(shared, detector))
                    .expect("spawn a detector thread")
            })
            .collect();
        (Self { shared, workers }, rx)
    }

    /// The flag the tracker sets while a camera has live tracks (keeps it inferred on a still scene).
    pub fn live_tracks_flag(&self, camera: &str) -> Option<Arc<AtomicBool>> {
        self.shared
            .cameras
            .iter()
            .find(|e| &*e.cam.id == camera)
            .map(|e| e.live_tracks.clone())
    }

    pub fn stats(&self, camera: &str) -> Option<CameraStats> {
        self.stats_reader().stats(camera)
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
            let _guard = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.shutdown.store(true, Ordering::SeqCst);
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

/// The next fresh frame, scanning cameras round-robin from the last served one. Stale frames
/// found on the way are dropped and counted. Called with `lock` held.
fn next_job(shared: &Shared) -> Option<(usize, Arc<Frame>)> {
    let n = shared.cameras.len();
    let start = shared.next.load(Ordering::Relaxed);
    for k in 0..n {
        let i = (start + k) % n;
        let entry = &shared.cameras[i];
        if entry.busy.load(Ordering::Relaxed) {
            continue;
        }
        while let Some(frame) = entry.cam.slot.take() {
            if frame.captured.elapsed() > entry.cam.max_age {
                entry.counters.dropped_stale.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("kinderwatch_detect_frames_dropped_total", "camera" => entry.cam.id.to_string(), "reason" => "stale")
                    .increment(1);
                continue;
            }
            shared.next.store((i + 1) % n, Ordering::Relaxed);
            entry.busy.store(true, Ordering::Relaxed);
            return Some((i, frame));
        }
    }
    None
}

fn worker(shared: Arc<Shared>, mut detector: Box<dyn Detector>) {
    loop {
        let job = {
            let mut guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if shared.shutdown.load(Ordering::SeqCst) {
                    return;
                }
                if let Some(job) = next_job(&shared) {
                    break job;
                }
                guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
        };
        process(&shared, detector.as_mut(), job.0, job.1);
        // The camera may have a newer frame waiting for this one to finish.
        let _guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
        shared.cameras[job.0].busy.store(false, Ordering::Relaxed);
        shared.wake.notify_one();
    }
}

fn process(shared: &Shared, detector: &mut dyn Detector, index: usize, frame: Arc<Frame>) {
    let entry = &shared.cameras[index];
    let taken = Instant::now();
    let queue_wait = taken.saturating_duration_since(frame.captured);
    let live = entry.live_tracks.load(Ordering::Relaxed);
    let (decision, picture) = {
        let mut gate = entry.gate.lock().unwrap_or_else(|e| e.into_inner());
        (gate.check(&frame, live, taken), gate.picture())
    };
    if picture.is_some() {
        *entry.picture.lock().unwrap_or_else(|e| e.into_inner()) = picture;
    }
    if decision == GateDecision::Skip {
        entry
            .counters
            .skipped_motion
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kinderwatch_detect_frames_skipped_total", &entry.labels).increment(1);
        return;
    }
    let result: Result<_, DetectError> = detector.detect(&frame);
    let inference = taken.elapsed();
    match result {
        Ok(detections) => {
            entry.counters.inferred.fetch_add(1, Ordering::Relaxed);
            entry
                .counters
                .detections
                .fetch_add(detections.len() as u64, Ordering::Relaxed);
            metrics::counter!("kinderwatch_detect_inferences_total", &entry.labels).increment(1);
            metrics::histogram!("kinderwatch_detect_inference_seconds", &entry.labels)
                .record(inference.as_secs_f64());
            metrics::histogram!("kinderwatch_detect_queue_wait_seconds", &entry.labels)
                .record(queue_wait.as_secs_f64());
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
                metrics::counter!("kinderwatch_detect_frames_dropped_total", "camera" => entry.cam.id.to_string(), "reason" => "output_full")
                    .increment(1);
            }
        }
        Err(e) => {
            let n = entry.counters.errors.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("kinderwatch_detect_errors_total", &entry.labels).increment(1);
            // The first error and then every 100th: a broken model must not flood the journal.
            if n.is_multiple_of(100) {
                tracing::error!(camera = %entry.cam.id, error = %e, errors = n + 1, "detection failed");
            }
        }
    }
}
