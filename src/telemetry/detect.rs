//! Detector pool metrics. Owner: `detect::pool`, except the load monitor's
//! (`kinderwatch_detect_camera_behind`, `kinderwatch_detect_overloaded` and the `overwritten`
//! frame drops, which it reads from the slots' counters each period): `detect::load`.

use std::time::Duration;

use super::{Kind, Metric, flag};

const FRAMES_SKIPPED: Metric = Metric {
    name: "kinderwatch_detect_frames_skipped_total",
    kind: Kind::Counter,
    help: "Frames the motion gate turned away before inference, per camera.",
};
const WORKER_RESTARTS: Metric = Metric {
    name: "kinderwatch_detect_worker_restarts_total",
    kind: Kind::Counter,
    help: "Detector workers restarted with a fresh session, per worker.",
};
const ERRORS: Metric = Metric {
    name: "kinderwatch_detect_errors_total",
    kind: Kind::Counter,
    help: "Frames whose detection failed or panicked, per camera.",
};
const WORKER_PANICS: Metric = Metric {
    name: "kinderwatch_detect_worker_panics_total",
    kind: Kind::Counter,
    help: "Detector panics on a frame, per worker.",
};
const INFERENCES: Metric = Metric {
    name: "kinderwatch_detect_inferences_total",
    kind: Kind::Counter,
    help: "Frames inferred, per camera.",
};
const INFERENCE_SECONDS: Metric = Metric {
    name: "kinderwatch_detect_inference_seconds",
    kind: Kind::Histogram,
    help: "Time one inference took, per camera.",
};
const QUEUE_WAIT_SECONDS: Metric = Metric {
    name: "kinderwatch_detect_queue_wait_seconds",
    kind: Kind::Histogram,
    help: "Time from a frame's capture to a worker taking it, per camera.",
};
const FRAMES_DROPPED: Metric = Metric {
    name: "kinderwatch_detect_frames_dropped_total",
    kind: Kind::Counter,
    help: "Frames lost to detection, per camera and reason (overwritten in the slot before a \
           worker took them; output_full: the rules' queue was full).",
};
const CAMERA_BEHIND: Metric = Metric {
    name: "kinderwatch_detect_camera_behind",
    kind: Kind::Gauge,
    help: "1 while the pool does not keep up with the camera's detect_fps.",
};
const OVERLOADED: Metric = Metric {
    name: "kinderwatch_detect_overloaded",
    kind: Kind::Gauge,
    help: "1 while any camera is behind.",
};

pub(super) const METRICS: &[Metric] = &[
    FRAMES_SKIPPED,
    WORKER_RESTARTS,
    ERRORS,
    WORKER_PANICS,
    INFERENCES,
    INFERENCE_SECONDS,
    QUEUE_WAIT_SECONDS,
    FRAMES_DROPPED,
    CAMERA_BEHIND,
    OVERLOADED,
];

/// Why a frame never reached the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameDrop {
    /// Replaced in the camera's slot before a worker took it (`detect::load` counts these).
    Overwritten,
    /// Inferred, but the queue to the rules was full (`detect::pool`).
    OutputFull,
}

impl FrameDrop {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overwritten => "overwritten",
            Self::OutputFull => "output_full",
        }
    }
}

/// The motion gate turned a frame away.
pub fn frame_skipped(camera: &str) {
    metrics::counter!(FRAMES_SKIPPED.name, "camera" => camera.to_owned()).increment(1);
}

/// A worker has a fresh detector session.
pub fn worker_restarted(worker: &str) {
    metrics::counter!(WORKER_RESTARTS.name, "worker" => worker.to_owned()).increment(1);
}

/// Detection failed on one of the camera's frames.
pub fn detect_error(camera: &str) {
    metrics::counter!(ERRORS.name, "camera" => camera.to_owned()).increment(1);
}

/// The detector panicked on one of the camera's frames (counted as an error too).
pub fn worker_panicked(worker: &str, camera: &str) {
    detect_error(camera);
    metrics::counter!(WORKER_PANICS.name, "worker" => worker.to_owned()).increment(1);
}

/// One of the camera's frames was inferred.
pub fn inferred(camera: &str, inference: Duration, queue_wait: Duration) {
    metrics::counter!(INFERENCES.name, "camera" => camera.to_owned()).increment(1);
    metrics::histogram!(INFERENCE_SECONDS.name, "camera" => camera.to_owned())
        .record(inference.as_secs_f64());
    metrics::histogram!(QUEUE_WAIT_SECONDS.name, "camera" => camera.to_owned())
        .record(queue_wait.as_secs_f64());
}

/// `n` of the camera's frames were lost for `reason`.
pub fn frames_dropped(camera: &str, reason: FrameDrop, n: u64) {
    metrics::counter!(FRAMES_DROPPED.name, "camera" => camera.to_owned(), "reason" => reason.as_str())
        .increment(n);
}

/// Whether the pool is behind on the camera.
pub fn camera_behind(camera: &str, behind: bool) {
    metrics::gauge!(CAMERA_BEHIND.name, "camera" => camera.to_owned()).set(flag(behind));
}

/// Whether any camera is behind.
pub fn overloaded(on: bool) {
    metrics::gauge!(OVERLOADED.name).set(flag(on));
}
