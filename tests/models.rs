//! The shipped models match their manifests; a damaged model file is refused with a clear error.

use std::path::{Path, PathBuf};

use kinderwatch::detect::manifest::{Family, ModelError, ModelManifest};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

#[test]
fn shipped_models_verify() {
    let nanodet =
        ModelManifest::load_verified(&models_dir().join("nanodet-coco-416.toml")).unwrap();
    assert_eq!(nanodet.manifest.family, Family::Nanodet);
    assert_eq!(nanodet.manifest.labels.len(), 80);
    assert_eq!(nanodet.manifest.labels[0], "person");
    assert_eq!(
        (nanodet.manifest.input.width, nanodet.manifest.input.height),
        (Some(416), Some(416))
    );

    let ssd = ModelManifest::load_verified(&models_dir().join("ssdlite-person.toml")).unwrap();
    assert_eq!(ssd.manifest.family, Family::Ssd);
    assert_eq!(ssd.manifest.labels[1], "person");
}

#[test]
fn a_damaged_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(models_dir().join("ssdlite-person.onnx")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01; // one flipped bit
    std::fs::write(dir.path().join("ssdlite-person.onnx"), &bytes).unwrap();
    std::fs::copy(
        models_dir().join("ssdlite-person.toml"),
        dir.path().join("ssdlite-person.toml"),
    )
    .unwrap();
    let err = ModelManifest::load_verified(&dir.path().join("ssdlite-person.toml")).unwrap_err();
    assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("ssdlite-person.onnx") && msg.contains("190715b2"),
        "{msg}"
    );
}

#[test]
fn a_missing_model_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        models_dir().join("nanodet-coco-416.toml"),
        dir.path().join("m.toml"),
    )
    .unwrap();
    let err = ModelManifest::load_verified(&dir.path().join("m.toml")).unwrap_err();
    assert!(err.to_string().contains("nanodet-coco-416.onnx"), "{err}");
}
