//! `[detector]`: the model and the worker pool that runs it, and its checks ([`crate::config`]
//! re-exports the type).

use std::path::PathBuf;

use serde::Deserialize;

use super::runtime::ExecutionProvider;
use crate::validate::Validator;

/// `[detector]`: the model and the worker pool that runs it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Path of the model manifest (`*.toml` beside the `.onnx` file); relative paths are resolved
    /// against the config file's directory. Default: none (no detection; frames are only counted).
    pub model: Option<PathBuf>,
    /// Path of libonnxruntime.so. Default: `ORT_DYLIB_PATH`, then /usr/lib/kinderwatch/, then .deps/onnxruntime/.
    pub onnxruntime: Option<PathBuf>,
    /// "cpu", "cuda" or "openvino". Default: "cpu".
    pub execution_provider: ExecutionProvider,
    /// Fail at start when the provider is missing, instead of falling back to CPU. Default: false.
    pub execution_provider_required: bool,
    /// Worker threads, each with its own session and one intra-op thread. 0 = number of cores. Default: 0.
    pub workers: usize,
    /// Detections below this score are dropped. Default: 0.4.
    pub min_score: f32,
    /// Same-class boxes overlapping more than this are one object. Default: 0.45.
    pub nms_iou: f32,
    /// Labels to report. Default: ["person"].
    pub classes: Vec<String>,
    /// Capacity of the queue of results to the next stage; when full, the newest result is
    /// dropped and counted. Default: 64.
    pub output_queue: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            model: None,
            onnxruntime: None,
            execution_provider: ExecutionProvider::Cpu,
            execution_provider_required: false,
            workers: 0,
            min_score: 0.4,
            nms_iou: 0.45,
            classes: vec!["person".into()],
            output_queue: 64,
        }
    }
}

impl DetectorConfig {
    /// Workers to start: the configured number, or one per core.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }

    /// Puts the section's problems (paths `detector.*`) in `v`.
    pub fn validate(&self, v: &mut Validator) {
        if let Some(model) = &self.model
            && !model.is_file()
        {
            v.err(
                "detector.model",
                format!(
                    "model manifest {} does not exist; point it at a models/*.toml file",
                    model.display()
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.min_score) {
            v.err("detector.min_score", "use a score in 0..1");
        }
        if !(0.0..=1.0).contains(&self.nms_iou) {
            v.err("detector.nms_iou", "use an overlap in 0..1");
        }
        if self.classes.is_empty() {
            v.err(
                "detector.classes",
                "name at least one label, e.g. [\"person\"]",
            );
        }
        if self.output_queue == 0 {
            v.err("detector.output_queue", "must be at least 1");
        }
        if self.workers > 64 {
            v.err("detector.workers", "at most 64 (0 = one per core)");
        }
        if let Some(lib) = &self.onnxruntime
            && !lib.is_file()
        {
            v.err(
                "detector.onnxruntime",
                format!(
                    "{} does not exist; run scripts/setup.sh or point it at libonnxruntime.so",
                    lib.display()
                ),
            );
        }
    }
}
