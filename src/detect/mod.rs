//! Person detection: ONNX models through `ort`, a bounded worker pool, and a motion gate.
//!
//! - [`config`]: the `[detector]` section;
//! - [`manifest`]: what a model is and how to feed it (sha256-checked);
//! - [`runtime`]: loading the ONNX Runtime library and building sessions with an execution provider;
//! - [`preprocess`] and [`decode`]: frame → input tensor, output tensors → detections, per model family;
//! - [`detector`]: the [`Detector`] trait and the ONNX implementation;
//! - [`motion`]: the cheap gate that skips inference on still scenes (run where frames are produced);
//! - [`pool`]: per-camera one-frame slots served least-recently-served first by N worker threads;
//! - [`load`]: whether the pool keeps up with every camera (overload warnings, `/healthz`).

pub mod config;
pub mod decode;
pub mod detector;
pub mod load;
pub mod manifest;
pub mod motion;
pub mod pool;
pub mod preprocess;
pub mod runtime;
pub mod summary;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::camera::Frame;

pub use detector::{DetectError, Detector, OnnxDetector};
pub use manifest::{ModelError, ModelManifest, VerifiedModel};

/// A box in normalised frame coordinates: 0..1 of the frame's width and height, `x1 <= x2`, `y1 <= y2`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BBox {
    pub fn new(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        Self {
            x1: x1.min(x2),
            y1: y1.min(y2),
            x2: x1.max(x2),
            y2: y1.max(y2),
        }
    }

    pub fn width(&self) -> f32 {
        self.x2 - self.x1
    }

    pub fn height(&self) -> f32 {
        self.y2 - self.y1
    }

    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    pub fn iou(&self, other: &BBox) -> f32 {
        let iw = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let ih = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = iw * ih;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }

    /// Clipped to the frame.
    pub fn clamped(&self) -> Self {
        Self::new(
            self.x1.clamp(0.0, 1.0),
            self.y1.clamp(0.0, 1.0),
            self.x2.clamp(0.0, 1.0),
            self.y2.clamp(0.0, 1.0),
        )
    }

    /// The bottom centre: where the feet are (the point tripwires test).
    pub fn feet(&self) -> (f32, f32) {
        ((self.x1 + self.x2) / 2.0, self.y2)
    }
}

/// One detected object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// Index into the model's labels.
    pub class_id: u32,
    pub label: Arc<str>,
    pub score: f32,
    pub bbox: BBox,
}

/// What the pool hands to the next stage: one inferred frame and what was found in it.
#[derive(Debug, Clone)]
pub struct FrameDetections {
    pub frame: Arc<Frame>,
    pub detections: Vec<Detection>,
    /// Time spent in the detector (pre-processing, inference, decoding).
    pub inference: Duration,
    /// Time between the frame leaving the appsink and a worker taking it.
    pub queue_wait: Duration,
}
