//! Detection benchmark, in one run:
//! 1. bare ONNX Runtime throughput of the model (session.run only): one session with 1 and 2
//!    intra-op threads, and one 1-thread session per core in parallel (the machine's limit);
//! 2. the pool's sustained inferences/s with 1..cores workers (4 cameras, always a fresh frame,
//!    motion gate off; includes pre-processing and decoding);
//! 3. end-to-end latency, frame out of the appsink → detections, p50/p99, over the real RTSP path
//!    (sample clip, 5 fps per camera) with 1 and 4 cameras;
//! 4. the share of frames the motion gate skips on a still scene (a photo with sensor-like noise).
//!
//! Run: `cargo bench --bench detect` (after scripts/setup.sh). `BENCH_MODEL=ssdlite-person` for the
//! other model; `BENCH_SECONDS=10` per measurement.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::bench::bare_rate;
use kinderwatch::app::{Daemon, Detections};
use kinderwatch::camera::{Frame, FrameSlot, Pixels};
use kinderwatch::detect::OnnxDetector;
use kinderwatch::detect::detector::{Detector, DetectorParams};
use kinderwatch::detect::manifest::{ModelManifest, VerifiedModel};
use kinderwatch::detect::motion::MotionConfig;
use kinderwatch::detect::pool::{DetectorPool, PoolCamera};
use kinderwatch::detect::preprocess;
use kinderwatch::detect::runtime::{self, ExecutionProvider};

fn secs() -> Duration {
    Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    )
}

fn model() -> (PathBuf, VerifiedModel) {
    let name = std::env::var("BENCH_MODEL").unwrap_or_else(|_| "nanodet-coco-416".into());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{name}.toml"));
    let m = ModelManifest::load_verified(&path).unwrap();
    (path, m)
}

fn photo_frame(name: &str, w: u32, h: u32) -> Frame {
    let img = image::open(common::media_dir().join(name))
        .unwrap()
        .to_rgb8();
    let img = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
    Frame {
        camera: "bench".into(),
        seq: 0,
        captured_at: SystemTime::now(),
        captured: Instant::now(),
        width: w,
        height: h,
        pixels: Pixels::Rgb(img.into_raw()),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn detectors(model: &VerifiedModel, n: usize) -> Vec<Box<dyn Detector>> {
    (0..n)
        .map(|_| {
            Box::new(
                OnnxDetector::new(model, ExecutionProvider::Cpu, 1, &DetectorParams::default())
                    .unwrap(),
            ) as Box<dyn Detector>
        })
        .collect()
}

fn pool_rate(model: &VerifiedModel, workers: usize, frames: &[Frame], window: Duration) -> f64 {
    let cams: Vec<PoolCamera> = (0..4)
        .map(|i| PoolCamera {
            id: format!("cam{i}").into(),
            slot: Arc::new(FrameSlot::default()),
            interval: Duration::from_secs(3600),
            motion_masks: vec![],
        })
        .collect();
    let slots: Vec<_> = cams.iter().map(|c| c.slot.clone()).collect();
    // Frames are built once and shared, so feeding costs next to nothing.
    let frames: Vec<Vec<Arc<Frame>>> = (0..4)
        .map(|i| {
            frames
                .iter()
                .map(|f| {
                    Arc::new(Frame {
                        camera: format!("cam{i}").into(),
                        ..f.clone()
                    })
                })
                .collect()
        })
        .collect();
    let gate = MotionConfig {
        enabled: false,
        ..MotionConfig::default()
    };
    let (pool, mut rx) = DetectorPool::start(cams, detectors(model, workers), &gate, 1024);
    let drain = std::thread::spawn(move || while rx.blocking_recv().is_some() {});
    // Warm up, then count over the window; every camera always has a fresh frame.
    let mut seq = 0usize;
    let mut feed_until = |until: Instant| {
        while Instant::now() < until {
            seq += 1;
            for (i, slot) in slots.iter().enumerate() {
                slot.put(frames[i][seq % frames[i].len()].clone());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    feed_until(Instant::now() + Duration::from_secs(2));
    let count = |p: &DetectorPool| {
        (0..4)
            .map(|i| p.stats(&format!("cam{i}")).unwrap().inferred)
            .sum::<u64>()
    };
    let (t0, n0) = (Instant::now(), count(&pool));
    feed_until(t0 + window);
    let rate = (count(&pool) - n0) as f64 / t0.elapsed().as_secs_f64();
    pool.shutdown();
    drain.join().unwrap();
    rate
}

async fn rtsp_latency(
    model_path: &Path,
    cameras: usize,
    window: Duration,
) -> (usize, f64, f64, f64) {
    let server = common::RtspTestServer::start(common::Source::SampleClip, common::Auth::None);
    let cams = (0..cameras)
        .map(|i| {
            common::camera(
                &format!("cam{i}"),
                &server.url(),
                "detect_width = 640\ndetect_height = 480\ndetect_fps = 5",
            )
        })
        .collect();
    let mut config = common::config(cams);
    config.detector.model = Some(model_path.to_owned());
    config.motion.enabled = false;
    let mut daemon = Daemon::builder(&config)
        .detections(Detections::Intercepted)
        .start()
        .await
        .unwrap();
    let mut rx = daemon.take_detections().unwrap();
    let warm = Instant::now() + Duration::from_secs(3);
    let mut lat = Vec::new();
    let mut people = 0usize;
    let end = warm + window;
    while let Ok(Some(r)) = tokio::time::timeout_at(end.into(), rx.recv()).await {
        if Instant::now() >= warm {
            lat.push(r.frame.captured.elapsed().as_secs_f64() * 1000.0);
            people += r.detections.len();
        }
    }
    daemon.shutdown(Duration::from_secs(5)).await;
    lat.sort_by(f64::total_cmp);
    let n = lat.len();
    (
        n,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        people as f64 / n.max(1) as f64,
    )
}

fn still_scene_skip(frame: &Frame, seconds: u64) -> (u64, u64) {
    // 5 fps for `seconds` of simulated time; each frame is the photo plus noise of +-3 gray levels.
    let mut gate = kinderwatch::detect::motion::MotionGate::new(MotionConfig::default(), &[]);
    let t0 = Instant::now();
    let (mut inferred, mut skipped) = (0, 0);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..seconds * 5 {
        let mut f = frame.clone();
        let Pixels::Rgb(rgb) = &mut f.pixels else {
            unreachable!("photos are RGB")
        };
        for v in rgb.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *v = (*v as i32 + (state % 7) as i32 - 3).clamp(0, 255) as u8;
        }
        let now = t0 + Duration::from_millis(200 * i);
        match gate.check(&f, false, now) {
            kinderwatch::detect::motion::GateDecision::Skip => skipped += 1,
            _ => inferred += 1,
        }
    }
    (inferred, skipped)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("detection benchmark: run with `cargo bench --bench detect`");
        return;
    }
    common::init_quiet();
    runtime::init(None).expect("ONNX Runtime: run scripts/setup.sh");
    let (model_path, model) = model();
    let window = secs();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let frames: Vec<Frame> = [
        "basketball1.png",
        "messi5.jpg",
        "astronaut.png",
        "coffee.png",
    ]
    .iter()
    .map(|p| photo_frame(p, 640, 480))
    .collect();
    println!(
        "detection benchmark: model {}, {cores} cores, {window:?} per measurement",
        model.manifest.name
    );
    let input = preprocess::prepare(&frames[0].rgb(), 640, 480, &model.manifest.input);
    let t = Instant::now();
    for _ in 0..50 {
        std::hint::black_box(preprocess::prepare(
            &frames[0].rgb(),
            640,
            480,
            &model.manifest.input,
        ));
    }
    println!(
        "pre-processing 640x480 → model input: {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / 50.0
    );
    let mut det = OnnxDetector::new(
        &model,
        ExecutionProvider::Cpu,
        1,
        &DetectorParams::default(),
    )
    .unwrap();
    let t = Instant::now();
    for _ in 0..20 {
        std::hint::black_box(det.detect(&frames[0]).unwrap());
    }
    println!(
        "whole detector (pre-processing, inference, decoding): {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / 20.0
    );

    println!(
        "\n| bare ONNX Runtime (session.run only) | inferences/s | ms/inference |\n|---|---:|---:|"
    );
    let r1 = bare_rate(&model, 1, &input, window);
    println!("| 1 session, 1 thread | {r1:.1} | {:.1} |", 1000.0 / r1);
    let r2 = bare_rate(&model, 2, &input, window);
    println!("| 1 session, 2 threads | {r2:.1} | {:.1} |", 1000.0 / r2);
    let limit = {
        let handles: Vec<_> = (0..cores)
            .map(|_| {
                let (m, i) = (model.clone(), input.clone());
                std::thread::spawn(move || bare_rate(&m, 1, &i, window))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<f64>()
    };
    println!("| {cores} sessions x 1 thread in parallel (the limit) | {limit:.1} | |");

    println!("\n| pool workers | inferences/s | share of the limit |\n|---:|---:|---:|");
    for w in 1..=cores {
        let r = pool_rate(&model, w, &frames, window);
        println!("| {w} | {r:.1} | {:.0}% |", 100.0 * r / limit);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "\n| RTSP cameras (5 fps each) | frames | latency p50 ms | latency p99 ms | people/frame |\n|---:|---:|---:|---:|---:|"
    );
    for cams in [1, 4] {
        let (n, p50, p99, people) = rt.block_on(rtsp_latency(&model_path, cams, window));
        println!("| {cams} | {n} | {p50:.0} | {p99:.0} | {people:.1} |");
    }

    let (inferred, skipped) = still_scene_skip(&frames[3], 120);
    println!(
        "\nmotion gate, still scene (photo + sensor-like noise, 5 fps, 120 s simulated): {skipped} of {} frames skipped ({:.0}%)",
        inferred + skipped,
        100.0 * skipped as f64 / (inferred + skipped) as f64
    );
}
