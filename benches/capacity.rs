//! Capacity benchmark: N busy + M still cameras on this machine, the whole daemon as a user runs it.
//!
//! `cargo bench --bench capacity` (or `make bench-capacity`). In one run it:
//! 1. makes the still clip once (a photo without people, ±3 gray-level noise on every pixel of
//!    every frame like sensor noise, 768x576, 10 fps, H.264 with a keyframe every second);
//! 2. serves the busy clip (vtest: people in every frame) and the still clip from a **separate
//!    process** (this binary again), one RTSP mount per camera;
//! 3. measures the limits: the bare CPU time of one inference (one ONNX Runtime session, one thread;
//!    again right before and right after each overloaded run, whose limit uses the mean of both:
//!    the shared machine's speed drifts), the CPU of decoding the busy streams alone (`gst-launch-1.0
//!    rtspsrc ! rtph264depay ! avdec_h264`), and two bare sessions while those streams are decoded;
//! 4. runs `kinderwatch run` (release) per scenario with mosquitto, a tripwire per camera,
//!    `detect_fps = 5` at 768x576, and prints per-camera inferred fps, frames dropped, alert latency
//!    (frame capture → subscriber) p50/p99, CPU and RSS, and the detector threads' CPU and
//!    preemptions against the other threads';
//! 5. measures how soon motion on a still camera is inferred (keyframes-only decoding);
//! 6. with `BENCH_BASELINE=1`, runs `../shared/tools/pybaseline/baseline.py` (a venv in
//!    `.deps/pybaseline-venv`, made on first use from PyPI) on the same busy streams and prints the
//!    ratios.
//!
//! Options: `BENCH_SCENARIOS=4+0,8+0,16+0,4+12,4+28,0+28` (busy+still), `BENCH_WINDOW_S=30`,
//! `BENCH_BASELINE=1`, `BENCH_REPEAT=3` (overloaded scenarios run that often), `BENCH_MOTION_TRIES=8`,
//! `BENCH_EXTRAS=0` (skip the size-hint and motion measurements), `BENCH_SCHED=batch-others` (an
//! experiment: every thread but the detectors as SCHED_BATCH), `BENCH_MODEL=nanodet-coco-416-int8`,
//! `BENCH_DAEMON=/path/to/kinderwatch` (another build of the daemon, to compare two builds in one
//! sitting). Numbers go into docs/BENCHMARKS.md; nothing here is asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use jiff::Timestamp;
use serde_json::Value;

use common::bench::{cpu_seconds, rss_mb, stat_cpu_seconds};
use common::broker::{self, Broker};

const KINDERWATCH: &str = env!("CARGO_BIN_EXE_kinderwatch");
const DETECT_FPS: f64 = 5.0;
const SERVER_ENV: &str = "KW_CAPACITY_SERVER";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The model under test: `BENCH_MODEL` (default `nanodet-coco-416`) in `models/`.
fn model_manifest() -> PathBuf {
    manifest_dir().join(format!(
        "models/{}.toml",
        std::env::var("BENCH_MODEL").unwrap_or_else(|_| "nanodet-coco-416".into())
    ))
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    percentile(&s, 0.5)
}

// ---------------------------------------------------------------- the still clip ----

/// A photo without people, with fresh ±3 gray-level noise on every pixel of every frame, encoded
/// like a camera would (x264, 1 s keyframe interval, ~1.5 Mbit/s), 30 s looped by the server.
fn still_clip() -> PathBuf {
    let path = common::media_dir().join("still-768x576-noise3.h264");
    if path.is_file() {
        return path;
    }
    let photo = still_photo();
    let tmp = path.with_extension("tmp");
    let (pipeline, src) = encoder(
        "bitrate=1500",
        &format!("filesink location={}", tmp.display()),
    );
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..300u64 {
        let data = noisy(&photo, &mut rng);
        common::bench::push_frame(&src, i, data);
    }
    src.end_of_stream().unwrap();
    let bus = pipeline.bus().unwrap();
    bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(120),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    )
    .expect("encoding the still clip");
    pipeline.set_state(gst::State::Null).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    eprintln!("made the still clip {}", path.display());
    path
}

/// The still scene: a photo without people at the busy clip's size.
fn still_photo() -> image::RgbImage {
    image::open(common::media_dir().join("coffee.png"))
        .expect("coffee.png: run scripts/setup.sh")
        .resize_exact(768, 576, image::imageops::FilterType::Triangle)
        .to_rgb8()
}

/// A playing 768x576 10 fps RGB → x264 (`rate_control`, 1 s keyframe interval, camera-like
/// settings) → byte-stream pipeline ending in `sink`, and its source.
fn encoder(rate_control: &str, sink: &str) -> (gst::Pipeline, gst_app::AppSrc) {
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width=768,height=576,framerate=10/1 \
         ! videoconvert ! video/x-raw,format=I420 \
         ! x264enc speed-preset=veryfast tune=zerolatency {rate_control} key-int-max=10 \
         ! h264parse ! video/x-h264,stream-format=byte-stream,alignment=au ! {sink}"
    ))
    .expect("x264enc: run scripts/setup.sh")
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, src)
}

/// The photo with fresh ±3 gray-level noise on every pixel (the same on R, G and B: luma noise).
fn noisy(photo: &image::RgbImage, rng: &mut u64) -> Vec<u8> {
    let mut data = photo.as_raw().clone();
    for px in data.chunks_exact_mut(3) {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let n = (*rng % 7) as i16 - 3;
        for c in px {
            *c = (*c as i16 + n).clamp(0, 255) as u8;
        }
    }
    data
}

/// The compressed-size gate on real encoder output: the still clip's noisy photo for 10 s, then a
/// dark figure of `height` pixels (a person at a distance: 24 px is 4 % of the picture's height)
/// walking across at 3 px per frame. Encoded like the still clip; returns (false alarms during
/// the still 10 s, frames after the figure appeared until the gate first flagged growth).
fn size_gate_on_a_walker(height: u32, rate_control: &str) -> (usize, Option<usize>) {
    use kinderwatch::camera::pipeline::DeltaSizes;
    let photo = still_photo();
    let (pipeline, src) = encoder(rate_control, "appsink name=sink sync=false");
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    const APPEAR: u64 = 100;
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let (fw, fh) = (height.div_ceil(3), height);
    for i in 0..200u64 {
        let mut data = noisy(&photo, &mut rng);
        if i >= APPEAR {
            let x0 = 100 + 3 * (i - APPEAR) as u32;
            let y0 = 330 - fh / 2;
            for y in y0..y0 + fh {
                for x in x0..(x0 + fw).min(768) {
                    let p = ((y * 768 + x) * 3) as usize;
                    // Dark clothes with a little texture.
                    let v = 40 + ((x + y) % 5) as u8 * 4;
                    data[p..p + 3].copy_from_slice(&[v, v, v + 10]);
                }
            }
        }
        common::bench::push_frame(&src, i, data);
    }
    src.end_of_stream().unwrap();
    let mut sizes = DeltaSizes::default();
    let (mut false_alarms, mut flagged) = (0, None);
    let mut frame = 0u64;
    while let Ok(sample) = sink.pull_sample() {
        let buffer = sample.buffer().unwrap();
        if buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) && sizes.grew(buffer.size()) {
            if frame < APPEAR {
                false_alarms += 1;
            } else if flagged.is_none() {
                flagged = Some((frame - APPEAR) as usize);
            }
        }
        frame += 1;
    }
    pipeline.set_state(gst::State::Null).unwrap();
    (false_alarms, flagged)
}

// ---------------------------------------------------------------- the server process ----

/// In the child: serves `/busy0..` and `/still0..` from one RTSP server until killed.
fn serve(spec: &str) -> ! {
    common::init_quiet();
    let (busy, still) = spec.split_once(',').expect("BUSY,STILL");
    let (busy, still): (usize, usize) = (busy.parse().unwrap(), still.parse().unwrap());
    let still_path = still_clip();
    let server =
        common::RtspTestServer::start_with(common::Source::SampleClip, common::Auth::None, 0, true);
    for i in 0..busy {
        server.add_mount(&format!("/busy{i}"), common::Source::SampleClip);
    }
    for i in 0..still {
        server.add_mount(
            &format!("/still{i}"),
            common::Source::Clip {
                path: still_path.clone(),
                fps: 10,
            },
        );
    }
    println!("{}", server.port());
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::park();
    }
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(busy: usize, still: usize) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(SERVER_ENV, format!("{busy},{still}"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("server process");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let port = loop {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "the server process ended"
            );
            if let Ok(port) = line.trim().parse() {
                break port;
            }
        };
        Self { child, port }
    }

    fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{mount}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- process measurement ----

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A decode-only gst-launch over `urls` (what the limit subtracts).
fn decode_only(urls: &[String]) -> Child {
    let mut args = vec!["-q".to_string()];
    for url in urls {
        args.extend(
            [
                "rtspsrc",
                &format!("location={url}"),
                "protocols=tcp",
                "!",
                "rtph264depay",
                "!",
                "avdec_h264",
                "max-threads=1",
                "!",
                "fakesink",
                "sync=false",
            ]
            .map(String::from),
        );
    }
    Command::new("gst-launch-1.0")
        .args(&args)
        .stdout(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0")
}

/// CPU (% of one core) of a decode-only gst-launch over `urls`.
fn decode_only_cpu(urls: &[String], warmup: Duration, window: Duration) -> f64 {
    let child = decode_only(urls);
    std::thread::sleep(warmup);
    let pid = child.id();
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(window);
    let cpu = 100.0 * (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
    stop(child);
    cpu
}

/// Inferences per second of two bare sessions while a decode-only gst-launch decodes `urls`:
/// what ONNX Runtime gets on this machine beside the same decoding, its slowdown from sharing the
/// cores' caches with the decoders included (the formula's limit assumes there is none).
fn bare_beside_decoding(urls: &[String], window: Duration) -> f64 {
    let child = decode_only(urls);
    std::thread::sleep(Duration::from_secs(5));
    let rate = bare_rate_parallel(2, window);
    stop(child);
    rate
}

/// Inferences per second of `callers` bare sessions in parallel, one thread each.
fn bare_rate_parallel(callers: usize, window: Duration) -> f64 {
    let handles: Vec<_> = (0..callers)
        .map(|_| std::thread::spawn(move || bare_rate(window)))
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

/// Inferences per second of one bare session with one thread (session.run only, on a real
/// picture prepared once).
fn bare_rate(window: Duration) -> f64 {
    let model =
        kinderwatch::detect::manifest::ModelManifest::load_verified(&model_manifest()).unwrap();
    let photo = still_photo();
    let input =
        kinderwatch::detect::preprocess::prepare(photo.as_raw(), 768, 576, &model.manifest.input);
    common::bench::bare_rate(&model, 1, &input, window)
}

// ---------------------------------------------------------------- the daemon ----

/// Counters scraped from `/metrics`: (metric, camera) → value.
type Scrape = BTreeMap<(String, String), f64>;

fn scrape(api: &str, token: &str) -> Scrape {
    let text = ureq::get(&format!("http://{api}/metrics"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .expect("GET /metrics")
        .into_string()
        .unwrap();
    let mut out = Scrape::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = name_labels
            .split_once('{')
            .map(|(n, l)| (n, l.trim_end_matches('}')))
            .unwrap_or((name_labels, ""));
        let camera = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("camera=\""))
            .map(|v| v.trim_end_matches('"').to_owned())
            .unwrap_or_default();
        let reason = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("reason=\""))
            .map(|v| format!("/{}", v.trim_end_matches('"')))
            .unwrap_or_default();
        *out.entry((format!("{name}{reason}"), camera)).or_default() += value;
    }
    out
}

fn delta(a: &Scrape, b: &Scrape, metric: &str, camera: &str) -> f64 {
    let k = (metric.to_owned(), camera.to_owned());
    b.get(&k).copied().unwrap_or(0.0) - a.get(&k).copied().unwrap_or(0.0)
}

/// One thread of a process: its name, CPU seconds, and how often the scheduler took the CPU from
/// it while it could still run (`nonvoluntary_ctxt_switches`: preemptions).
struct ThreadStat {
    name: String,
    cpu: f64,
    preempted: u64,
}

fn thread_stats(pid: u32) -> BTreeMap<u32, ThreadStat> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        out.insert(
            tid,
            ThreadStat {
                name: field("Name:"),
                cpu: stat_cpu_seconds(&stat),
                preempted: field("nonvoluntary_ctxt_switches:").parse().unwrap_or(0),
            },
        );
    }
    out
}

/// The detector threads' share over a window: (CPU % of a core, preemptions per second), and
/// the same for every other thread of the daemon.
fn thread_split(
    a: &BTreeMap<u32, ThreadStat>,
    b: &BTreeMap<u32, ThreadStat>,
    secs: f64,
) -> ((f64, f64), (f64, f64)) {
    let (mut det, mut other) = ((0.0, 0.0), (0.0, 0.0));
    for (tid, t1) in b {
        let (cpu0, pre0) = a.get(tid).map_or((0.0, 0), |t0| (t0.cpu, t0.preempted));
        let acc = if t1.name.starts_with("detector-") {
            &mut det
        } else {
            &mut other
        };
        acc.0 += 100.0 * (t1.cpu - cpu0) / secs;
        acc.1 += t1.preempted.saturating_sub(pre0) as f64 / secs;
    }
    (det, other)
}

/// `BENCH_SCHED=batch-all|batch-others` (an experiment): every thread of the daemon, or every
/// thread but the detectors, as SCHED_BATCH.
fn apply_sched(pid: u32) {
    let Ok(mode) = std::env::var("BENCH_SCHED") else {
        return;
    };
    for (tid, t) in thread_stats(pid) {
        if mode == "batch-all" || (mode == "batch-others" && !t.name.starts_with("detector-")) {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: plain syscall on a thread id with a valid parameter block.
            unsafe { libc::sched_setscheduler(tid as i32, libc::SCHED_BATCH, &param) };
        }
    }
}

/// An overloaded run and its limits, measured right before and after it.
struct OverloadedRun {
    busy: usize,
    /// The daemon's inferences/s.
    total: f64,
    /// The limit: (cores − decode-only CPU) × the bare rate.
    limit: f64,
    /// The same with the RTSP test server's CPU in the window also subtracted.
    limit_less_server: f64,
    /// Two bare sessions while the same streams are decoded by gst-launch.
    beside: f64,
}

struct Outcome {
    /// Detector threads (CPU % of a core, preemptions/s), every other thread of the daemon.
    threads: ((f64, f64), (f64, f64)),
    busy_fps: Vec<f64>,
    still_fps: Vec<f64>,
    dropped_per_busy_5s: f64,
    cpu: f64,
    rss: f64,
    alerts: Vec<f64>,
    overloaded: bool,
    keyframes_only: usize,
    /// The RTSP server process's CPU over the window (% of a core): on the same cores, serving
    /// what real cameras would send from their own.
    server_cpu: f64,
}

fn scenario(server: &Server, busy: usize, still: usize, window: Duration) -> Outcome {
    let broker = Broker::start("");
    let state = tempfile::tempdir().unwrap();
    let (token, hash) = kinderwatch::api::auth::new_token();
    let api = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let mut text = format!(
        "[site]\nid = \"bench\"\n[logging]\nlevel = \"warn\"\n[detector]\nmodel = \"{}\"\n[state]\ndir = \"{}\"\n\
         [store]\nmin_free_mb = 64\n[api]\nlisten = \"{api}\"\n[[api.tokens]]\nname = \"bench\"\nrole = \"read\"\nsha256 = \"{hash}\"\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
        model_manifest().display(),
        state.path().display(),
        broker.port
    );
    let cameras: Vec<(String, String)> = (0..busy)
        .map(|i| (format!("busy{i}"), server.url(&format!("busy{i}"))))
        .chain((0..still).map(|i| (format!("still{i}"), server.url(&format!("still{i}")))))
        .collect();
    for (id, url) in &cameras {
        text.push_str(&format!(
            "[[cameras]]\nid = \"{id}\"\nurl = \"{url}\"\ndetect_width = 768\ndetect_height = 576\ndetect_fps = {DETECT_FPS}\n\
             [[rules]]\nid = \"fence-{id}\"\ncamera = \"{id}\"\nkind = \"tripwire\"\nline = [[0.05, 0.55], [0.95, 0.55]]\ndirection = \"any\"\ncooldown = \"0s\"\n"
        ));
    }
    let file = state.path().join("bench.toml");
    std::fs::write(&file, text).unwrap();
    // The subscriber's event loop runs on its own thread the whole time (a subscriber that is not
    // polled during the warm-up falls behind and is dropped by the broker).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (_sub, mut rx) = rt.block_on(broker::subscribe(
        broker.port,
        "kinderwatch/bench/events/#",
        |_| {},
    ));
    let daemon = std::env::var("BENCH_DAEMON").unwrap_or_else(|_| KINDERWATCH.to_string());
    let child = Command::new(&daemon)
        .args(["run", "--config", file.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .spawn()
        .expect("kinderwatch");
    let pid = child.id();
    // Start-up: sessions, every camera's first frames and the motion gate's first hold.
    let warmup = Duration::from_secs_f64(15.0 + 0.3 * cameras.len() as f64);
    std::thread::sleep(warmup / 3);
    apply_sched(pid);
    std::thread::sleep(warmup - warmup / 3);
    apply_sched(pid);
    let m0 = scrape(&api, &token);
    let th0 = thread_stats(pid);
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    let s0 = cpu_seconds(server.child.id());
    let window_start = Timestamp::now();
    let mut alerts = Vec::new();
    rt.block_on(async {
        let end = tokio::time::Instant::now() + window;
        while let Ok(Some(m)) = tokio::time::timeout_at(end, rx.recv()).await {
            let now = Timestamp::now();
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            // Only frames captured inside the window (not alerts of the warm-up).
            if let Some(time) = v["time"].as_str().and_then(|t| t.parse::<Timestamp>().ok())
                && time >= window_start
            {
                alerts.push((now - time).get_milliseconds() as f64);
            }
        }
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = 100.0 * (cpu_seconds(pid) - c0) / elapsed;
    let threads = thread_split(&th0, &thread_stats(pid), elapsed);
    let server_cpu = 100.0 * (cpu_seconds(server.child.id()) - s0) / elapsed;
    let m1 = scrape(&api, &token);
    let rss = rss_mb(pid, "VmRSS:");
    let health: Value = ureq::get(&format!("http://{api}/healthz"))
        .call()
        .map(|r| r.into_json().unwrap_or_default())
        .unwrap_or_default();
    stop(child);
    let fps = |id: &str| delta(&m0, &m1, "kinderwatch_detect_inferences_total", id) / elapsed;
    let dropped: f64 = (0..busy)
        .map(|i| {
            delta(
                &m0,
                &m1,
                "kinderwatch_detect_frames_dropped_total/overwritten",
                &format!("busy{i}"),
            )
        })
        .sum();
    alerts.sort_by(|a, b| a.total_cmp(b));
    Outcome {
        threads,
        busy_fps: (0..busy).map(|i| fps(&format!("busy{i}"))).collect(),
        still_fps: (0..still).map(|i| fps(&format!("still{i}"))).collect(),
        dropped_per_busy_5s: dropped / busy.max(1) as f64 / elapsed * 5.0,
        cpu,
        server_cpu,
        rss,
        alerts,
        overloaded: health["detector"]["overloaded"].as_bool().unwrap_or(false),
        keyframes_only: (0..still)
            .filter(|i| {
                m1.get(&(
                    "kinderwatch_camera_keyframes_only".to_owned(),
                    format!("still{i}"),
                )) == Some(&1.0)
            })
            .count(),
    }
}

// ---------------------------------------------------------------- motion on a still camera ----

/// How long after a still camera's picture starts moving its first moving frame is inferred
/// (the pool with a real model, keyframes-only decoding), over `tries` changes.
fn motion_latency(tries: usize) -> Vec<f64> {
    use kinderwatch::camera::{CameraState, DecodeDemand};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut out = Vec::new();
        for _ in 0..tries {
            let server = common::RtspTestServer::start(
                common::Source::Named { pattern: "colors" },
                common::Auth::None,
            );
            let cam = common::camera(
                "still",
                &server.url(),
                "detect_width = 640\ndetect_height = 360\ndetect_fps = 5",
            );
            let mut config = common::config(vec![cam]);
            config.detector.model = Some(model_manifest());
            config.detector.workers = 1;
            config.detector.output_queue = 16;
            let mut daemon = kinderwatch::app::Daemon::builder(&config)
                .detections(kinderwatch::app::Detections::Intercepted)
                .start()
                .await
                .unwrap();
            let mut rx = daemon.take_detections().unwrap();
            let handle = daemon.cameras()[0].clone();
            let mut status = handle.status.clone();
            common::wait_state(&mut status, CameraState::Streaming, Duration::from_secs(20)).await;
            while handle.slot.decode_demand() != DecodeDemand::Keyframes {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // A random moment within the keyframe interval.
            tokio::time::sleep(Duration::from_millis(1500 + rand::random::<u64>() % 1000)).await;
            while rx.try_recv().is_ok() {}
            let moved = Instant::now();
            server.set_pattern("ball");
            loop {
                let r = rx.recv().await.unwrap();
                if r.frame.captured > moved {
                    out.push(r.frame.captured.duration_since(moved).as_secs_f64() * 1000.0);
                    break;
                }
            }
            daemon.shutdown(Duration::from_secs(5)).await;
        }
        out
    })
}

// ---------------------------------------------------------------- the Python loop ----

fn python_venv() -> Option<PathBuf> {
    let venv = manifest_dir().join(".deps/pybaseline-venv");
    let python = venv.join("bin/python");
    if !python.is_file() {
        println!(
            "making {} (PyPI: opencv-python-headless, onnxruntime, numpy, paho-mqtt)",
            venv.display()
        );
        let ok = Command::new("python3")
            .args(["-m", "venv", venv.to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "opencv-python-headless",
                    "onnxruntime==1.31.1",
                    "numpy",
                    "paho-mqtt==2.2.0",
                ])
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            println!("could not make the Python venv; skipping the Python loop");
            return None;
        }
    }
    Some(python)
}

/// baseline.py loads its model from `<its folder>/../../shared/models/`: run a copy from
/// `.deps/pybaseline/tools/pybaseline/` with `.deps/pybaseline/shared/models` pointing at our models.
fn baseline_script() -> Option<PathBuf> {
    let original = manifest_dir().join("../shared/tools/pybaseline/baseline.py");
    if !original.is_file() {
        println!("{} not found; skipping the Python loop", original.display());
        return None;
    }
    let root = manifest_dir().join(".deps/pybaseline");
    let dir = root.join("tools/pybaseline");
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::create_dir_all(root.join("shared")).ok()?;
    let models = root.join("shared/models");
    if !models.exists() {
        std::os::unix::fs::symlink(manifest_dir().join("models"), &models).ok()?;
    }
    let copy = dir.join("baseline.py");
    std::fs::copy(&original, &copy).ok()?;
    Some(copy)
}

/// Runs baseline.py and returns its SUMMARY/BENCH_ORT line as key=value pairs.
fn python(args: &[String]) -> BTreeMap<String, String> {
    let (Some(py), Some(script)) = (python_venv(), baseline_script()) else {
        return BTreeMap::new();
    };
    let out = Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .expect("baseline.py");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        println!(
            "baseline.py {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    text.lines()
        .filter(|l| l.starts_with("SUMMARY") || l.starts_with("BENCH_ORT"))
        .flat_map(|l| l.split_whitespace().skip(1))
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn num(m: &BTreeMap<String, String>, k: &str) -> f64 {
    m.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

fn main() {
    if let Ok(spec) = std::env::var(SERVER_ENV) {
        serve(&spec);
    }
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("capacity benchmark: run with `cargo bench --bench capacity`");
        return;
    }
    common::init_quiet();
    kinderwatch::detect::runtime::init(None).expect("ONNX Runtime: run scripts/setup.sh");
    let window = Duration::from_secs(env_or("BENCH_WINDOW_S", 30));
    let scenarios: Vec<(usize, usize)> = std::env::var("BENCH_SCENARIOS")
        .unwrap_or_else(|_| "4+0,8+0,16+0,4+12,4+28,0+28".into())
        .split(',')
        .filter_map(|s| s.split_once('+'))
        .map(|(b, s)| (b.trim().parse().unwrap(), s.trim().parse().unwrap()))
        .collect();
    let baseline = std::env::var("BENCH_BASELINE").is_ok_and(|v| v == "1");
    let max_busy = scenarios.iter().map(|s| s.0).max().unwrap_or(0).max(8);
    let max_still = scenarios.iter().map(|s| s.1).max().unwrap_or(0);
    let server = Server::start(max_busy, max_still);
    println!(
        "capacity benchmark: {} cores, window {:?}, server pid {} on port {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        window,
        server.child.id(),
        server.port
    );
    if let Ok(daemon) = std::env::var("BENCH_DAEMON") {
        println!("daemon under test: {daemon} (BENCH_DAEMON)");
    }

    let bare = bare_rate(Duration::from_secs(15));
    let bare_ms = 1000.0 / bare;
    println!(
        "bare ONNX Runtime, 1 session, 1 thread: {bare:.1} inferences/s ({bare_ms:.1} ms CPU each)"
    );
    let bare2 = bare_rate_parallel(2, Duration::from_secs(15));
    println!(
        "bare ONNX Runtime, 2 sessions in parallel, 1 thread each: {bare2:.1} inferences/s ({:.0} % of 2 × one)",
        100.0 * bare2 / (2.0 * bare)
    );
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    // The physical limit with N busy cameras: (cores − decoding those N streams) × bare rate.
    let mut decode_by: BTreeMap<usize, f64> = BTreeMap::new();
    for busy in scenarios
        .iter()
        .filter(|s| s.1 == 0 && s.0 >= 8)
        .map(|s| s.0)
    {
        let urls: Vec<String> = (0..busy).map(|i| server.url(&format!("busy{i}"))).collect();
        let decode = decode_only_cpu(&urls, Duration::from_secs(5), Duration::from_secs(20));
        let limit = (cores - decode / 100.0).max(0.0) * bare;
        println!(
            "decode only, {busy} busy streams: {decode:.1} % of a core → limit with {busy} busy cameras: ({cores:.0} − {:.2}) × {bare:.1} = {limit:.1} inferences/s",
            decode / 100.0
        );
        decode_by.insert(busy, decode);
    }
    let urls_still: Vec<String> = (0..max_still.min(8))
        .map(|i| server.url(&format!("still{i}")))
        .collect();
    if !urls_still.is_empty() {
        let d = decode_only_cpu(&urls_still, Duration::from_secs(5), Duration::from_secs(20));
        println!(
            "decode only, {} still streams: {:.2} % of a core per stream",
            urls_still.len(),
            d / urls_still.len() as f64
        );
    }

    let mut python_rates: BTreeMap<usize, BTreeMap<String, String>> = BTreeMap::new();
    if baseline {
        let ort1 = python(&[
            "--bench-ort".into(),
            "--intra-threads".into(),
            "1".into(),
            "--duration".into(),
            "20".into(),
        ]);
        let ort2 = python(&[
            "--bench-ort".into(),
            "--intra-threads".into(),
            "1".into(),
            "--bench-callers".into(),
            "2".into(),
            "--duration".into(),
            "20".into(),
        ]);
        println!("Python bare ORT: 1 caller {ort1:?}; 2 callers {ort2:?}");
    }

    println!();
    println!(
        "| busy + still | inferred fps per busy camera (min / median) | still cameras' fps (max) | frames dropped per busy camera per 5 s | inferences/s | CPU % | RSS MB | alerts | alert p50 / p99 ms | overloaded | still cameras on keyframes only |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut cpu_by: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    let mut total_by: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    let mut server_by: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    let mut overloaded_runs: Vec<OverloadedRun> = Vec::new();
    let repeat = env_or("BENCH_REPEAT", 1usize).max(1);
    let runs = scenarios.iter().flat_map(|&(busy, still)| {
        let n = if decode_by.contains_key(&busy) && still == 0 {
            repeat
        } else {
            1
        };
        std::iter::repeat_n((busy, still), n)
    });
    for (busy, still) in runs {
        let decode = decode_by.get(&busy).filter(|_| still == 0).copied();
        // The machine's speed drifts over minutes (it is shared): an overloaded run's limit uses
        // the mean of the bare rate right before and right after it.
        let before = decode.map(|_| bare_rate(Duration::from_secs(10)));
        let o = scenario(&server, busy, still, window);
        if let (Some(decode), Some(before)) = (decode, before) {
            let urls: Vec<String> = (0..busy).map(|i| server.url(&format!("busy{i}"))).collect();
            let beside = bare_beside_decoding(&urls, Duration::from_secs(15));
            let after = bare_rate(Duration::from_secs(10));
            let bare = (before + after) / 2.0;
            let total: f64 = o.busy_fps.iter().sum();
            let run = OverloadedRun {
                busy,
                total,
                limit: (cores - decode / 100.0).max(0.0) * bare,
                limit_less_server: (cores - decode / 100.0 - o.server_cpu / 100.0).max(0.0) * bare,
                beside,
            };
            println!(
                "|   limit | bare {before:.1}/s before, {after:.1}/s after → limit {:.1}/s: {:.0} % of it; two bare sessions beside the same decoding right after: {beside:.1}/s, {:.0} % of that |",
                run.limit,
                100.0 * total / run.limit,
                100.0 * total / beside
            );
            overloaded_runs.push(run);
        }
        server_by.insert((busy, still), o.server_cpu);
        let total: f64 = o.busy_fps.iter().chain(&o.still_fps).sum();
        cpu_by.insert((busy, still), o.cpu);
        total_by.insert((busy, still), total);
        // "–" where a scenario has no such cameras (or no alerts).
        let cell = |there: bool, v: f64, digits: usize| match there && v.is_finite() {
            true => format!("{v:.digits$}"),
            false => "–".to_string(),
        };
        let (b, s) = (busy > 0, still > 0);
        println!(
            "| {busy} + {still} | {} / {} | {} | {} | {total:.1} | {:.0} | {:.0} | {} | {} / {} | {} | {} |",
            cell(
                b,
                o.busy_fps.iter().copied().fold(f64::INFINITY, f64::min),
                2
            ),
            cell(b, median(&o.busy_fps), 2),
            cell(s, o.still_fps.iter().copied().fold(0.0, f64::max), 2),
            cell(b, o.dropped_per_busy_5s, 1),
            o.cpu,
            o.rss,
            o.alerts.len(),
            cell(!o.alerts.is_empty(), percentile(&o.alerts, 0.5), 0),
            cell(!o.alerts.is_empty(), percentile(&o.alerts, 0.99), 0),
            if o.overloaded { "yes" } else { "no" },
            match s {
                true => format!("{}/{still}", o.keyframes_only),
                false => "–".to_string(),
            }
        );
        let ((det_cpu, det_pre), (other_cpu, other_pre)) = o.threads;
        println!(
            "|   threads | detectors {det_cpu:.0} % of a core, preempted {det_pre:.0}/s ({:.2} per inference) | others {other_cpu:.0} %, preempted {other_pre:.0}/s |",
            det_pre / total.max(1e-9)
        );
        if baseline && still == 0 && matches!(busy, 4 | 8) {
            let broker = Broker::start("");
            let summary = python(&[
                "--cameras".into(),
                busy.to_string(),
                "--url".into(),
                format!("rtsp://127.0.0.1:{}/busy{{i}}", server.port),
                "--mqtt-port".into(),
                broker.port.to_string(),
                "--duration".into(),
                window.as_secs().to_string(),
            ]);
            println!(
                "|   Python loop, {busy} busy | {} / {} | – | – | {} | {} | {} | {} | {} / p95 {} | – | – |",
                summary.get("detect_fps_min").map_or("?", |s| s.as_str()),
                summary.get("detect_fps_med").map_or("?", |s| s.as_str()),
                summary.get("detect_fps_total").map_or("?", |s| s.as_str()),
                summary.get("cpu_pct").map_or("?", |s| s.as_str()),
                summary.get("rss_mb").map_or("?", |s| s.as_str()),
                summary.get("alerts").map_or("?", |s| s.as_str()),
                summary.get("alert_lat_ms_p50").map_or("?", |s| s.as_str()),
                summary.get("alert_lat_ms_p95").map_or("?", |s| s.as_str()),
            );
            python_rates.insert(busy, summary);
        }
    }
    println!();
    for &busy in decode_by.keys() {
        let runs: Vec<_> = overloaded_runs.iter().filter(|r| r.busy == busy).collect();
        if runs.is_empty() {
            continue;
        }
        let list = |f: &dyn Fn(&OverloadedRun) -> f64| -> (f64, String) {
            let v: Vec<f64> = runs.iter().map(|r| f(r)).collect();
            let shown = v.iter().map(|x| format!("{x:.0} %")).collect::<Vec<_>>();
            (median(&v), shown.join(", "))
        };
        let (share, shares) = list(&|r| 100.0 * r.total / r.limit);
        let (share_server, _) = list(&|r| 100.0 * r.total / r.limit_less_server);
        let (share_beside, shares_beside) = list(&|r| 100.0 * r.total / r.beside);
        let total = median(&runs.iter().map(|r| r.total).collect::<Vec<_>>());
        print!(
            "{busy} busy cameras, {} run(s): median {total:.1} inferences/s ({:.0}/s wanted) = median {share:.0} % of the limit (runs: {shares}); with the RTSP server's CPU also subtracted {share_server:.0} %; {share_beside:.0} % of two bare sessions beside the same decoding (runs: {shares_beside})",
            runs.len(),
            busy as f64 * DETECT_FPS,
        );
        if let Some(py) = python_rates.get(&busy) {
            print!(
                ", {:.2}x the Python loop ({}/s, its lag at the end {} s)",
                total / num(py, "detect_fps_total"),
                py.get("detect_fps_total").map_or("?", |s| s.as_str()),
                py.get("lag_end_max_s").map_or("?", |s| s.as_str())
            );
        }
        println!();
    }
    if let (Some(ours), Some(py)) = (total_by.get(&(4, 0)), python_rates.get(&4)) {
        println!(
            "4 busy cameras: {ours:.1} inferences/s, {:.2}x the Python loop ({}/s)",
            ours / num(py, "detect_fps_total"),
            py.get("detect_fps_total").map_or("?", |s| s.as_str())
        );
    }
    if let (Some(with), Some(without)) = (cpu_by.get(&(4, 28)), cpu_by.get(&(4, 0))) {
        println!(
            "per still camera (4+28 − 4+0): {:.2} % of a core",
            (with - without) / 28.0
        );
    }
    if let Some(alone) = cpu_by.get(&(0, 28)) {
        println!(
            "per still camera (0+28 ÷ 28, daemon overhead included): {:.2} % of a core",
            alone / 28.0
        );
    }
    if std::env::var("BENCH_EXTRAS").is_ok_and(|v| v == "0") {
        return;
    }
    for (rate_control, name) in [
        ("bitrate=1500", "constant bit rate 1.5 Mbit/s"),
        ("pass=qual quantizer=26", "constant quality (QP 26)"),
    ] {
        for height in [16, 24, 48, 96] {
            let (false_alarms, flagged) = size_gate_on_a_walker(height, rate_control);
            println!(
                "compressed-size gate, {name}, a {height} px figure walking into the still noisy scene: {}; false alarms in the 10 s before: {false_alarms}",
                match flagged {
                    Some(f) => format!("flagged {f} frames after it appeared"),
                    None => "never flagged in 10 s".into(),
                }
            );
        }
    }
    let lat = motion_latency(env_or("BENCH_MOTION_TRIES", 8));
    let mut sorted = lat.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    println!(
        "motion on a still camera (1 s keyframe interval, detect_fps 5) → first inferred moving frame: median {:.0} ms, max {:.0} ms over {} tries ({:?})",
        median(&sorted),
        sorted.last().copied().unwrap_or(f64::NAN),
        sorted.len(),
        Arc::new(sorted.iter().map(|v| v.round()).collect::<Vec<_>>())
    );
    drop(server);
}
