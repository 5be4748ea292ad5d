//! The periodic "what did the detector see" log line per camera (the demo shows it; operators
//! read it when tuning a camera).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::FrameDetections;
use super::pool::{CameraStats, PoolStats};

#[derive(Default)]
struct Window {
    frames: u64,
    objects: u64,
    max_objects: usize,
    inference: Duration,
}

pub struct DetectionSummary {
    stats: PoolStats,
    windows: BTreeMap<Arc<str>, Window>,
    before: HashMap<Arc<str>, CameraStats>,
}

impl DetectionSummary {
    pub fn new(stats: PoolStats) -> Self {
        Self {
            stats,
            windows: BTreeMap::new(),
            before: HashMap::new(),
        }
    }

    pub fn record(&mut self, r: &FrameDetections) {
        let w = self.windows.entry(r.frame.camera.clone()).or_default();
        w.frames += 1;
        w.objects += r.detections.len() as u64;
        w.max_objects = w.max_objects.max(r.detections.len());
        w.inference += r.inference;
    }

    /// Logs one line per camera that saw frames since the last flush.
    pub fn flush(&mut self) {
        let mut windows = std::mem::take(&mut self.windows);
        for camera in self.stats.cameras() {
            let w = windows.remove(&camera).unwrap_or_default();
            let now = self.stats.stats(&camera).unwrap_or_default();
            let prev = self.before.insert(camera.clone(), now).unwrap_or_default();
            // A camera replaced by a live reload starts its counters afresh.
            let skipped = now.skipped_motion.saturating_sub(prev.skipped_motion);
            let dropped = now.dropped().saturating_sub(prev.dropped());
            if w.frames + skipped + dropped == 0 {
                continue;
            }
            info!(camera = %camera, inferred_frames = w.frames,
                  skipped_by_motion = format!("{:.0}%", 100.0 * skipped as f64 / (skipped + w.frames).max(1) as f64),
                  dropped_frames = dropped,
                  objects_per_frame = format!("{:.1}", w.objects as f64 / w.frames.max(1) as f64),
                  max_objects = w.max_objects,
                  mean_inference_ms = (w.inference.as_millis() as u64) / w.frames.max(1),
                  "detections");
        }
    }
}
