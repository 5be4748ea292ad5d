//! Detection with the real models on real photos and constructed tensors.

use std::path::{Path, PathBuf};

use kinderwatch::detect::detector::DetectorParams;
use kinderwatch::detect::manifest::ModelManifest;
use kinderwatch::detect::runtime::{self, ExecutionProvider};
use kinderwatch::detect::{BBox, Detection, OnnxDetector};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn media(name: &str) -> PathBuf {
    let p = std::env::var_os("KW_MEDIA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".deps/media"))
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

fn detector(model: &str, min_score: f32) -> OnnxDetector {
    runtime::init(None).expect("ONNX Runtime (scripts/setup.sh installs it)");
    let m =
        ModelManifest::load_verified(&root().join("models").join(format!("{model}.toml"))).unwrap();
    let params = DetectorParams {
        min_score,
        ..DetectorParams::default()
    };
    OnnxDetector::new(&m, ExecutionProvider::Cpu, 1, &params).unwrap()
}

fn detect_file(det: &mut OnnxDetector, path: &Path) -> Vec<Detection> {
    let img = image::open(path).unwrap().to_rgb8();
    det.detect_rgb(img.as_raw(), img.width(), img.height())
        .unwrap()
}

#[test]
fn print_detections() {
    for model in ["nanodet-coco-416", "ssdlite-person"] {
        let mut d = detector(model, 0.2);
        for photo in [
            "astronaut.png",
            "camera.png",
            "coffee.png",
            "chelsea.png",
            "rocket.jpg",
            "motorcycle_left.png",
            "messi5.jpg",
            "basketball1.png",
        ] {
            let dets = detect_file(&mut d, &media(photo));
            println!(
                "{model} {photo}: {:?}",
                dets.iter().map(|d| (d.score, d.bbox)).collect::<Vec<_>>()
            );
        }
    }
    let _ = BBox::new(0.0, 0.0, 1.0, 1.0);
}
