//! The [`Detector`] trait (what a pool worker calls) and its ONNX Runtime implementation.

use std::sync::Arc;

use ort::session::Session;
use ort::value::TensorRef;

use super::Detection;
use super::decode::{self, DecodeError, DecodeParams};
use super::manifest::{Family, ModelManifest, VerifiedModel};
use super::preprocess::{self, InputTensor};
use super::runtime::{self, ExecutionProvider, RuntimeError};
use crate::camera::{Frame, Pixels};

/// Finds objects in one frame. Each pool worker owns one.
pub trait Detector: Send {
    fn detect(&mut self, frame: &Frame) -> Result<Vec<Detection>, DetectError>;
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("class {class:?} is not a label of model {model}; its labels are: {labels}")]
    UnknownClass {
        class: String,
        model: String,
        labels: String,
    },
}

/// What to keep of a model's output.
#[derive(Debug, Clone)]
pub struct DetectorParams {
    pub min_score: f32,
    pub nms_iou: f32,
    /// Class labels to report (e.g. ["person"]).
    pub classes: Vec<String>,
    pub max_detections: usize,
}

impl Default for DetectorParams {
    fn default() -> Self {
        Self {
            min_score: 0.4,
            nms_iou: 0.45,
            classes: vec!["person".into()],
            max_detections: 100,
        }
    }
}

/// A model running in ONNX Runtime, single-threaded (the pool parallelises across frames).
pub struct OnnxDetector {
    session: Session,
    manifest: Arc<ModelManifest>,
    labels: Vec<Arc<str>>,
    params: DecodeParams,
    /// The input tensor, reused frame after frame.
    scratch: Option<InputTensor>,
}

impl OnnxDetector {
    /// One session for `model`. [`runtime::init`] must have loaded the library.
    pub fn new(
        model: &VerifiedModel,
        provider: ExecutionProvider,
        intra_threads: usize,
        params: &DetectorParams,
    ) -> Result<Self, DetectError> {
        let decode = decode_params(&model.manifest, params)?;
        let session = runtime::session(model, provider, intra_threads)?;
        Ok(Self {
            session,
            labels: model
                .manifest
                .labels
                .iter()
                .map(|l| Arc::from(l.as_str()))
                .collect(),
            manifest: Arc::new(model.manifest.clone()),
            params: decode,
            scratch: None,
        })
    }

    /// Detects in a packed RGB image.
    pub fn detect_rgb(
        &mut self,
        rgb: &[u8],
        w: u32,
        h: u32,
    ) -> Result<Vec<Detection>, DetectError> {
        assert_eq!(rgb.len(), (w * h * 3) as usize, "packed RGB frame");
        self.detect_pixels(&Pixels::Rgb(rgb.to_vec()), w, h)
    }

    /// Detects in a frame's pixels (I420 is sampled straight from its planes).
    pub fn detect_pixels(
        &mut self,
        pixels: &Pixels,
        w: u32,
        h: u32,
    ) -> Result<Vec<Detection>, DetectError> {
        let m = self.manifest.clone();
        let (input, placement) =
            preprocess::prepare_pixels(pixels, w, h, &m.input, self.scratch.take());
        let infer = |e: ort::Error| DetectError::Inference(e.to_string());
        let name = m.input.name.as_str();
        let outputs = match &input {
            InputTensor::F32(t) => {
                let v = TensorRef::from_array_view(t.view()).map_err(infer)?;
                self.session.run(ort::inputs![name => v]).map_err(infer)?
            }
            InputTensor::U8(t) => {
                let v = TensorRef::from_array_view(t.view()).map_err(infer)?;
                self.session.run(ort::inputs![name => v]).map_err(infer)?
            }
        };
        self.scratch = Some(input);
        let get = |name: &str| -> Result<ndarray::ArrayViewD<'_, f32>, DetectError> {
            outputs
                .get(name)
                .ok_or_else(|| DetectError::Inference(format!("the model has no output {name:?}")))?
                .try_extract_array::<f32>()
                .map_err(|e| DetectError::Inference(format!("output {name:?}: {e}")))
        };
        let o = &m.outputs;
        let dets = match m.family {
            Family::Nanodet => {
                let scores = o
                    .scores
                    .iter()
                    .map(|n| Ok((n.as_str(), get(n)?)))
                    .collect::<Result<Vec<_>, DetectError>>()?;
                let boxes = o
                    .boxes
                    .iter()
                    .map(|n| Ok((n.as_str(), get(n)?)))
                    .collect::<Result<Vec<_>, DetectError>>()?;
                decode::nanodet(
                    &scores,
                    &boxes,
                    &o.strides,
                    o.bins.unwrap_or(0),
                    &placement,
                    &self.labels,
                    &self.params,
                )?
            }
            Family::Ssd => decode::ssd(
                get(first(&o.boxes)?)?,
                get(first(&o.scores)?)?,
                get(o.classes.as_deref().unwrap_or_default())?,
                o.count.as_deref().map(get).transpose()?,
                &placement,
                &self.labels,
                &self.params,
            )?,
            Family::Yolo => decode::yolo(
                get(first(&o.boxes)?)?,
                &placement,
                &self.labels,
                &self.params,
            )?,
        };
        Ok(dets)
    }
}

/// The one tensor name of a single-output list ([`ModelManifest::problems`] refuses others).
fn first(names: &[String]) -> Result<&str, DetectError> {
    names
        .first()
        .map(String::as_str)
        .ok_or_else(|| DetectError::Inference("the manifest names no output tensor".into()))
}

impl Detector for OnnxDetector {
    fn detect(&mut self, frame: &Frame) -> Result<Vec<Detection>, DetectError> {
        self.detect_pixels(&frame.pixels, frame.width, frame.height)
    }
}

/// Maps class names to a keep-mask over the model's labels.
pub fn decode_params(
    manifest: &ModelManifest,
    params: &DetectorParams,
) -> Result<DecodeParams, DetectError> {
    let mut keep = vec![false; manifest.labels.len()];
    for class in &params.classes {
        let i = manifest
            .labels
            .iter()
            .position(|l| l == class)
            .ok_or_else(|| DetectError::UnknownClass {
                class: class.clone(),
                model: manifest.name.clone(),
                labels: manifest.labels.join(", "),
            })?;
        keep[i] = true;
    }
    Ok(DecodeParams {
        min_score: params.min_score,
        nms_iou: params.nms_iou,
        keep,
        max_detections: params.max_detections,
    })
}
