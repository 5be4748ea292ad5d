//! Pre-processing: a decoded frame → the model's input tensor, as the detector runs it (one
//! reused tensor). `cargo bench --bench preprocess` (option `BENCH_ITERATIONS=200`). The capacity
//! bench's overload figure depends on it: every inference pays it on the same two cores.

use std::path::Path;
use std::time::Instant;

use kinderwatch::camera::pixels::{Pixels, YuvMatrix, chroma_size};
use kinderwatch::detect::manifest::ModelManifest;
use kinderwatch::detect::preprocess::{self, InputTensor};

fn i420(w: u32, h: u32) -> Pixels {
    let (cw, ch) = chroma_size(w, h);
    let mut data = Vec::with_capacity(w as usize * h as usize + 2 * cw * ch);
    // A busy picture: values vary with position so nothing is constant-folded.
    for y in 0..h {
        for x in 0..w {
            data.push(((x * 7 + y * 13) % 220 + 16) as u8);
        }
    }
    for i in 0..2 * cw * ch {
        data.push((i % 200 + 28) as u8);
    }
    Pixels::I420 {
        data,
        matrix: YuvMatrix::default(),
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("pre-processing benchmark: run with `cargo bench --bench preprocess`");
        return;
    }
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    println!(
        "pre-processing benchmark, {iterations} iterations each (ms per frame, reused tensor)"
    );
    println!("| model | frame | ms |");
    println!("|---|---|---:|");
    for name in ["nanodet-coco-416", "ssdlite-person"] {
        let manifest = ModelManifest::load(&models.join(format!("{name}.toml"))).unwrap();
        for (w, h, kind) in [(768, 576, "I420"), (640, 360, "I420"), (768, 576, "RGB")] {
            let pixels = match kind {
                "I420" => i420(w, h),
                _ => Pixels::Rgb(i420(w, h).to_rgb(w, h).into_owned()),
            };
            let mut reuse: Option<InputTensor> = None;
            for _ in 0..5 {
                reuse = Some(preprocess::prepare_pixels(&pixels, w, h, &manifest.input, reuse).0);
            }
            let t = Instant::now();
            for _ in 0..iterations {
                reuse = Some(preprocess::prepare_pixels(&pixels, w, h, &manifest.input, reuse).0);
            }
            std::hint::black_box(&reuse);
            println!(
                "| {name} | {kind} {w}x{h} | {:.2} |",
                t.elapsed().as_secs_f64() * 1000.0 / iterations as f64
            );
        }
    }
}
