//! Helpers the benchmarks share: process CPU and memory from /proc, the bare ONNX Runtime rate, and
//! pushing synthetic frames into an encoder.

use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer_app as gst_app;
use kinderwatch::detect::manifest::VerifiedModel;
use kinderwatch::detect::preprocess::InputTensor;
use kinderwatch::detect::runtime::{self, ExecutionProvider};
use ort::value::TensorRef;

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// CPU seconds (user + system) in the text of a `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat`.
pub fn stat_cpu_seconds(stat: &str) -> f64 {
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // CLK_TCK is 100 on Linux
}

/// A memory figure of a process in MB: `field` is "VmRSS:" (now) or "VmHWM:" (peak).
pub fn rss_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// `session.run` alone on a prepared input for `window`; returns inferences/s.
pub fn bare_rate(
    model: &VerifiedModel,
    threads: usize,
    input: &InputTensor,
    window: Duration,
) -> f64 {
    let mut session = runtime::session(model, ExecutionProvider::Cpu, threads).unwrap();
    let name = model.manifest.input.name.as_str();
    let mut run = || match input {
        InputTensor::F32(t) => {
            session
                .run(ort::inputs![name => TensorRef::from_array_view(t.view()).unwrap()])
                .unwrap();
        }
        InputTensor::U8(t) => {
            session
                .run(ort::inputs![name => TensorRef::from_array_view(t.view()).unwrap()])
                .unwrap();
        }
    };
    for _ in 0..3 {
        run();
    }
    let (start, mut n) = (Instant::now(), 0u64);
    while start.elapsed() < window {
        run();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Pushes frame `i` of a 10 fps stream into `src`.
pub fn push_frame(src: &gst_app::AppSrc, i: u64, data: Vec<u8>) {
    let mut buffer = gst::Buffer::from_mut_slice(data);
    {
        let b = buffer.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(i * 100));
        b.set_duration(gst::ClockTime::from_mseconds(100));
    }
    src.push_buffer(buffer).unwrap();
}
