//! Camera ingest metrics, labelled by camera id. Owner of all of them: `camera::supervisor`
//! (the teardown counter: `camera::teardown`).

use super::{Kind, Metric, flag};

const RECONNECTS: Metric = Metric {
    name: "kinderwatch_camera_reconnects_total",
    kind: Kind::Counter,
    help: "Pipelines rebuilt after the first, per camera.",
};
const FRAMES: Metric = Metric {
    name: "kinderwatch_camera_frames_total",
    kind: Kind::Counter,
    help: "Frames the camera's pipeline produced, per camera.",
};
const KEYFRAMES_ONLY: Metric = Metric {
    name: "kinderwatch_camera_keyframes_only",
    kind: Kind::Gauge,
    help: "1 while the camera decodes keyframes only (a still scene).",
};
const STREAMING: Metric = Metric {
    name: "kinderwatch_camera_streaming",
    kind: Kind::Gauge,
    help: "1 while the camera streams.",
};
const FAULTS: Metric = Metric {
    name: "kinderwatch_camera_faults_total",
    kind: Kind::Counter,
    help: "Camera faults, per camera and class (auth_failed, not_found, transient).",
};
const TEARDOWN_STUCK: Metric = Metric {
    name: "kinderwatch_camera_teardown_stuck_total",
    kind: Kind::Counter,
    help: "Pipeline teardowns abandoned after their deadline, per camera.",
};

pub(super) const METRICS: &[Metric] = &[
    RECONNECTS,
    FRAMES,
    KEYFRAMES_ONLY,
    STREAMING,
    FAULTS,
    TEARDOWN_STUCK,
];

/// How a camera fault is classed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultClass {
    AuthFailed,
    NotFound,
    Transient,
}

impl FaultClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthFailed => "auth_failed",
            Self::NotFound => "not_found",
            Self::Transient => "transient",
        }
    }
}

/// The supervisor builds the camera's pipeline again.
pub fn reconnected(camera: &str) {
    metrics::counter!(RECONNECTS.name, "camera" => camera.to_owned()).increment(1);
}

/// `n` more frames arrived from the camera.
pub fn frames(camera: &str, n: u64) {
    metrics::counter!(FRAMES.name, "camera" => camera.to_owned()).increment(n);
}

/// Whether the camera decodes keyframes only.
pub fn keyframes_only(camera: &str, on: bool) {
    metrics::gauge!(KEYFRAMES_ONLY.name, "camera" => camera.to_owned()).set(flag(on));
}

/// Whether the camera streams.
pub fn streaming(camera: &str, on: bool) {
    metrics::gauge!(STREAMING.name, "camera" => camera.to_owned()).set(flag(on));
}

/// The camera faulted.
pub fn fault(camera: &str, class: FaultClass) {
    metrics::counter!(FAULTS.name, "camera" => camera.to_owned(), "class" => class.as_str())
        .increment(1);
}

/// A pipeline teardown did not finish within its deadline and was abandoned.
pub fn teardown_stuck(camera: &str) {
    metrics::counter!(TEARDOWN_STUCK.name, "camera" => camera.to_owned()).increment(1);
}
