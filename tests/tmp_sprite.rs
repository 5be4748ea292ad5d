use std::path::PathBuf;
use kinderwatch::detect::detector::DetectorParams;
use kinderwatch::detect::manifest::ModelManifest;
use kinderwatch::detect::runtime::{self, ExecutionProvider};
use kinderwatch::detect::OnnxDetector;
#[test]
fn sprite() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    runtime::init(None).unwrap();
    let bg = image::open(root.join(".deps/media/coffee.png")).unwrap().to_rgb8();
    let bg = image::imageops::resize(&bg, 640, 480, image::imageops::FilterType::Triangle);
    let cam = image::open(root.join(".deps/media/camera.png")).unwrap().to_rgb8();
    let person = image::imageops::crop_imm(&cam, 0, 66, 312, 446).to_image();
    for h in [120u32, 160, 200] {
        let w = h * 312 / 446;
        let p = image::imageops::resize(&person, w, h, image::imageops::FilterType::Triangle);
        let mut img = bg.clone();
        image::imageops::overlay(&mut img, &p, 300, 200);
        for model in ["nanodet-coco-416", "ssdlite-person"] {
            let m = ModelManifest::load_verified(&root.join(format!("models/{model}.toml"))).unwrap();
            let mut d = OnnxDetector::new(&m, ExecutionProvider::Cpu, 1, &DetectorParams { min_score: 0.2, ..Default::default() }).unwrap();
            let dets = d.detect_rgb(img.as_raw(), 640, 480).unwrap();
            println!("h={h} {model}: {:?}", dets.iter().map(|d| (d.score, d.bbox)).collect::<Vec<_>>());
        }
    }
}
