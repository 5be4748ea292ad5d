//! The ONNX Runtime library (loaded at run time, never downloaded) and session construction with
//! the configured execution provider.

use std::path::{Path, PathBuf};

use ort::ep::ExecutionProvider as _;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use serde::Deserialize;

use super::manifest::VerifiedModel;

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    Cuda,
    Openvino,
}

impl ExecutionProvider {
    /// ONNX Runtime's name for it.
    pub fn ort_name(self) -> &'static str {
        match self {
            Self::Cpu => "CPUExecutionProvider",
            Self::Cuda => "CUDAExecutionProvider",
            Self::Openvino => "OpenVINOExecutionProvider",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found: {tried}; run scripts/setup.sh (it installs the library into \
         .deps/onnxruntime/), or set detector.onnxruntime in the config or ORT_DYLIB_PATH to libonnxruntime.so"
    )]
    LibraryNotFound { tried: String },
    #[error(
        "ONNX Runtime library {path} could not be loaded: {message}; run scripts/setup.sh to install a working copy"
    )]
    LibraryLoad { path: PathBuf, message: String },
    #[error(
        "execution provider {provider:?} is not available in the ONNX Runtime library {library} \
         (available: {available}); install a library built with it, or set detector.execution_provider = \"cpu\""
    )]
    ProviderUnavailable {
        provider: ExecutionProvider,
        library: PathBuf,
        available: String,
    },
    #[error("model {model}: ONNX Runtime could not create a session: {message}")]
    Session { model: PathBuf, message: String },
}

/// Candidate library paths, most specific first: the config, `ORT_DYLIB_PATH`, then the install
/// and development locations.
pub fn library_candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = configured {
        return vec![p.to_owned()];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut c = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        c.push(dir.join("../lib/kinderwatch/libonnxruntime.so"));
    }
    c.push(PathBuf::from("/usr/lib/kinderwatch/libonnxruntime.so"));
    c.push(PathBuf::from(".deps/onnxruntime/libonnxruntime.so"));
    c.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/onnxruntime/libonnxruntime.so"));
    c
}

/// The process's one ONNX Runtime environment, once [`init`] succeeded.
static ENVIRONMENT: std::sync::OnceLock<ort::environment::Environment> = std::sync::OnceLock::new();

/// Loads the ONNX Runtime library once per process and returns its path. Later calls return the
/// path that was loaded first.
pub fn init(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    static LOADED: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = &*loaded {
        return Ok(p.clone());
    }
    let candidates = library_candidates(configured);
    let path = candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| RuntimeError::LibraryNotFound {
            tried: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let path = path.canonicalize().unwrap_or(path);
    let builder = ort::init_from(&path).map_err(|e| RuntimeError::LibraryLoad {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let env = builder
        .with_name("kinderwatch")
        .build()
        .map_err(|e| RuntimeError::LibraryLoad {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let _ = ENVIRONMENT.set(env);
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    *loaded = Some(path.clone());
    Ok(path)
}

/// Execution providers the loaded library was built with.
pub fn available_providers() -> Vec<&'static str> {
    [
        ExecutionProvider::Cpu,
        ExecutionProvider::Cuda,
        ExecutionProvider::Openvino,
    ]
    .into_iter()
    .filter(|p| provider_available(*p))
    .map(ExecutionProvider::ort_name)
    .collect()
}

fn provider_available(p: ExecutionProvider) -> bool {
    match p {
        ExecutionProvider::Cpu => true,
        ExecutionProvider::Cuda => ort::ep::CUDA::is_available().unwrap_or(false),
        ExecutionProvider::Openvino => ort::ep::OpenVINO::is_available().unwrap_or(false),
    }
}

/// Decides which provider a session gets: the wanted one if the library has it; otherwise CPU
/// with a warning, or an error when `required`.
pub fn choose_provider(
    wanted: ExecutionProvider,
    required: bool,
    library: &Path,
) -> Result<ExecutionProvider, RuntimeError> {
    if provider_available(wanted) {
        return Ok(wanted);
    }
    let available = available_providers().join(", ");
    if required {
        return Err(RuntimeError::ProviderUnavailable {
            provider: wanted,
            library: library.to_owned(),
            available,
        });
    }
    tracing::warn!(
        wanted = wanted.ort_name(), available = %available, library = %library.display(),
        "execution provider not in the ONNX Runtime library; falling back to CPU"
    );
    Ok(ExecutionProvider::Cpu)
}

/// One session with `intra_threads` threads on the given provider. [`init`] must have succeeded.
pub fn session(
    model: &VerifiedModel,
    provider: ExecutionProvider,
    intra_threads: usize,
) -> Result<Session, RuntimeError> {
    let err = |e: &dyn std::fmt::Display| RuntimeError::Session {
        model: model.path.clone(),
        message: e.to_string(),
    };
    let env = ENVIRONMENT
        .get()
        .ok_or_else(|| err(&"the ONNX Runtime library is not loaded"))?;
    let mut builder = Session::builder(env)
        .map_err(|e| err(&e))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| err(&e))?
        .with_intra_threads(intra_threads.max(1))
        .map_err(|e| err(&e))?
        .with_inter_threads(1)
        .map_err(|e| err(&e))?
        .with_intra_op_spinning(false)
        .map_err(|e| err(&e))?;
    builder = match provider {
        ExecutionProvider::Cpu => builder,
        ExecutionProvider::Cuda => builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| err(&e))?,
        ExecutionProvider::Openvino => builder
            .with_execution_providers([ort::ep::OpenVINO::default().build().error_on_failure()])
            .map_err(|e| err(&e))?,
    };
    builder.commit_from_file(&model.path).map_err(|e| err(&e))
}
