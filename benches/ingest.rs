//! Ingest benchmark: CPU and memory of the daemon ingesting N = 1, 4, 8, 16 RTSP streams
//! (720p25 H.264, scaled to 640x360 at 5 fps), next to a decode-only baseline
//! (`gst-launch-1.0 rtspsrc ! rtph264depay ! avdec_h264 ! fakesink`) on the same streams.
//!
//! Run: `cargo bench --bench ingest` (after scripts/setup.sh). Options via environment:
//! `BENCH_STREAMS=1,4,8,16`, `BENCH_WARMUP_S=5`, `BENCH_MEASURE_S=20`.
//! The RTSP server runs in this process (one shared media, so it only payloads); the measured
//! processes are children, measured from /proc/PID/stat (CPU) and /proc/PID/status (RSS).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::bench::{cpu_seconds, rss_mb};

const KINDERWATCH: &str = env!("CARGO_BIN_EXE_kinderwatch");

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A 720p25 H.264 clip made once from the sample clip (upscaled, frame rate raised to 25).
fn bench_clip() -> PathBuf {
    let out = common::media_dir().join("bench-720p25.h264");
    if out.is_file() {
        return out;
    }
    let src = common::media_dir().join("vtest.avi");
    eprintln!(
        "bench: making {} from {} (once)",
        out.display(),
        src.display()
    );
    let partial = out.with_extension("partial");
    let status = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "filesrc",
            &format!("location={}", src.display()),
            "!",
            "decodebin",
            "!",
            "videoconvert",
            "!",
            "videoscale",
            "!",
            "videorate",
            "!",
            "video/x-raw,format=I420,width=1280,height=720,framerate=25/1",
            "!",
            "x264enc",
            "speed-preset=veryfast",
            "bitrate=2000",
            "key-int-max=50",
            "bframes=0",
            "!",
            "video/x-h264,profile=high",
            "!",
            "h264parse",
            "config-interval=-1",
            "!",
            "video/x-h264,stream-format=byte-stream,alignment=au",
            "!",
            "filesink",
            &format!("location={}", partial.display()),
        ])
        .status()
        .expect("gst-launch-1.0 (scripts/setup.sh installs it)");
    assert!(status.success(), "encoding the bench clip failed");
    std::fs::rename(&partial, &out).unwrap();
    out
}

struct Measurement {
    cpu_percent: f64,
    rss_mb: f64,
    peak_rss_mb: f64,
}

fn measure(mut child: Child, warmup: Duration, window: Duration) -> Measurement {
    std::thread::sleep(warmup);
    let pid = child.id();
    assert!(
        child.try_wait().unwrap().is_none(),
        "measured process exited during warm-up"
    );
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(window);
    let (c1, t1) = (cpu_seconds(pid), Instant::now());
    let m = Measurement {
        cpu_percent: 100.0 * (c1 - c0) / (t1 - t0).as_secs_f64(),
        rss_mb: rss_mb(pid, "VmRSS:"),
        peak_rss_mb: rss_mb(pid, "VmHWM:"),
    };
    assert!(
        child.try_wait().unwrap().is_none(),
        "measured process exited while measured"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    m
}

fn baseline(url: &str, n: usize) -> Child {
    let mut args = vec!["-q".to_string()];
    for _ in 0..n {
        args.extend(
            [
                "rtspsrc",
                &format!("location={url}"),
                "protocols=tcp",
                "latency=200",
                "!",
                "rtph264depay",
                "!",
                "avdec_h264",
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

fn daemon(url: &str, n: usize, dir: &Path) -> Child {
    let mut text = String::from("[site]\nid = \"bench\"\n[logging]\nlevel = \"warn\"\n");
    for i in 0..n {
        text.push_str(&format!(
            "[[cameras]]\nid = \"cam{i}\"\nurl = \"{url}\"\ndetect_width = 640\ndetect_height = 360\ndetect_fps = 5\n"
        ));
    }
    let file = dir.join(format!("bench-{n}.toml"));
    std::fs::write(&file, text).unwrap();
    Command::new(KINDERWATCH)
        .args(["run", "--config", file.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .spawn()
        .expect("kinderwatch")
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need. Only run when benched.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("ingest benchmark: run with `cargo bench --bench ingest`");
        return;
    }
    let streams: Vec<usize> = std::env::var("BENCH_STREAMS")
        .unwrap_or_else(|_| "1,4,8,16".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let warmup = Duration::from_secs(env_or("BENCH_WARMUP_S", 5));
    let window = Duration::from_secs(env_or("BENCH_MEASURE_S", 20));
    let clip = bench_clip();
    let server = common::RtspTestServer::start_with(
        common::Source::Clip {
            path: clip.clone(),
            fps: 25,
        },
        common::Auth::None,
        0,
        true,
    );
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "ingest benchmark: {} (720p25 H.264), {cores} cores, warm-up {warmup:?}, window {window:?}",
        clip.display()
    );
    println!();
    println!(
        "| streams | baseline CPU (% of a core) | kinderwatch CPU | ratio | baseline RSS MB | kinderwatch RSS MB (peak) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &n in &streams {
        let base = measure(baseline(&url, n), warmup, window);
        let kw = measure(daemon(&url, n, dir.path()), warmup, window);
        println!(
            "| {n} | {:.1} | {:.1} | {:.2}x | {:.0} | {:.0} ({:.0}) |",
            base.cpu_percent,
            kw.cpu_percent,
            kw.cpu_percent / base.cpu_percent.max(0.01),
            base.rss_mb,
            kw.rss_mb,
            kw.peak_rss_mb
        );
    }
}
