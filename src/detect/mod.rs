//! Person detection. For now: the model manifest, checked at start-up; inference arrives next.

pub mod manifest;

pub use manifest::{ModelError, ModelManifest};
