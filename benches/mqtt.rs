//! MQTT alert benchmark: outbox drain rate after a 10,000-event backlog, and alert latency from
//! frame capture to the subscriber's receipt with 1 and 8 cameras (the whole daemon in-process:
//! RTSP sample clip → detection → rules → store → outbox → mosquitto → subscriber).
//!
//! Also the drain of a backlog whose events carry camera-sized snapshots with
//! `publish_snapshots`, with no broker limit and with mosquitto `max_packet_size 20000` (every
//! snapshot re-encoded to fit).
//!
//! `cargo bench --bench mqtt` (options: KW_BENCH_LATENCY_S=60, KW_BENCH_ONLY=drain). Numbers go
//! into docs/BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kinderwatch::config::Config;
use kinderwatch::events::{Event, EventKind};
use kinderwatch::perimeter::RecordedEvent;
use kinderwatch::store::{Store, StoreConfig};
use serde_json::Value;

use common::broker::{self, Broker};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A camera-like JPEG (768x576, gradients and noise, quality 90).
fn camera_jpeg() -> Vec<u8> {
    let mut seed = 7u32;
    let img = image::RgbImage::from_fn(768, 576, |x, y| {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let n = (seed >> 16) % 9;
        image::Rgb([
            (x * 255 / 768 + n) as u8,
            (y * 255 / 576 + n) as u8,
            ((x + y) * 128 / 1344 + n) as u8,
        ])
    });
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(img.as_raw(), 768, 576, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

async fn drain(n: usize, snapshot: Option<&[u8]>, broker_extra: &str) {
    let broker = Broker::start(&format!("max_queued_messages 100000\n{broker_extra}\n"));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        &StoreConfig {
            min_free_mb: 64,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let events: Vec<RecordedEvent> = (0..n)
        .map(|i| {
            let mut e = Event::new(
                EventKind::LineCrossed,
                "bench",
                &format!("cam-{}", i % 8),
                Timestamp::now(),
            );
            e.rule = Some("fence".into());
            RecordedEvent {
                event: e,
                snapshot: snapshot.map(<[u8]>::to_vec),
            }
        })
        .collect();
    for chunk in events.chunks(500) {
        store.record(chunk, true).unwrap();
    }
    let (_sub, mut rx) = broker::subscribe(broker.port, "kinderwatch/bench/events/#", |o| {
        o.set_max_packet_size(Some(1 << 20));
    })
    .await;
    let text = format!(
        "[site]\nid = \"bench\"\n[[cameras]]\nid = \"cam-0\"\nurl = \"rtsp://127.0.0.1:9/x\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\npublish_snapshots = {}\n",
        broker.port,
        snapshot.is_some()
    );
    let config = Config::from_toml(&text, Path::new("b.toml"), Path::new(".")).unwrap();
    // The daemon's graph around the store: the publisher drains the outbox (no camera frames).
    let started = Instant::now();
    let daemon = kinderwatch::app::Daemon::builder(&config)
        .frames(kinderwatch::app::Synthetic::new(|_, _| None))
        .store(store.clone())
        .start()
        .await
        .unwrap();
    let mut received = 0;
    let mut snapshot_bytes = 0;
    let want = if snapshot.is_some() { 2 * n } else { n };
    while received < want {
        let m =
            broker::next_matching(&mut rx, Duration::from_secs(120), "the backlog", |_| true).await;
        if m.topic.ends_with("/snapshot") {
            snapshot_bytes += m.payload.len();
        }
        received += 1;
    }
    let delivered = started.elapsed();
    while store.outbox_len() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let emptied = started.elapsed();
    let what = match snapshot {
        None => String::new(),
        Some(s) => format!(
            " with {}-byte snapshots{} (mean {} bytes published)",
            s.len(),
            if broker_extra.is_empty() {
                String::new()
            } else {
                format!(", broker `{broker_extra}`")
            },
            snapshot_bytes / n
        ),
    };
    println!(
        "drain {n} events{what}: all received by the subscriber in {:.2} s ({:.0} events/s); outbox empty (every PUBACK) after {:.2} s ({:.0} events/s)",
        delivered.as_secs_f64(),
        n as f64 / delivered.as_secs_f64(),
        emptied.as_secs_f64(),
        n as f64 / emptied.as_secs_f64()
    );
    daemon.shutdown(Duration::from_secs(10)).await;
}

async fn latency(cameras: usize, window: Duration) {
    let broker = Broker::start("");
    let server = common::RtspTestServer::start(common::Source::SampleClip, common::Auth::None);
    let state = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/nanodet-coco-416.toml");
    let mut text = format!(
        "[site]\nid = \"bench\"\n[detector]\nmodel = \"{}\"\n[state]\ndir = \"{}\"\n[api]\nenabled = false\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
        model.display(),
        state.path().display(),
        broker.port
    );
    for i in 0..cameras {
        text.push_str(&format!(
            "[[cameras]]\nid = \"cam-{i}\"\nurl = \"{}\"\ndetect_width = 640\ndetect_height = 480\ndetect_fps = 5\n[[rules]]\nid = \"line-{i}\"\ncamera = \"cam-{i}\"\nkind = \"tripwire\"\nline = [[0.5, 0.0], [0.5, 1.0]]\ncooldown = \"0s\"\n",
            server.url()
        ));
    }
    let config = Config::from_toml(&text, Path::new("b.toml"), Path::new(".")).unwrap();
    let (_sub, mut rx) = broker::subscribe(broker.port, "kinderwatch/bench/events/#", |_| {}).await;
    let run = tokio::spawn(kinderwatch::app::run(config, None, Some(window)));
    let mut latencies = Vec::new();
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await else {
            continue;
        };
        let now = Timestamp::now();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        let time: Timestamp = v["time"].as_str().unwrap().parse().unwrap();
        latencies.push((now - time).get_milliseconds() as f64);
    }
    run.await.unwrap().unwrap();
    latencies.sort_by(|a, b| a.total_cmp(b));
    if latencies.is_empty() {
        println!("{cameras} camera(s): no alerts in {window:?}");
        return;
    }
    println!(
        "{cameras} camera(s): {} alerts in {:.0} s; capture → subscriber p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latencies.len(),
        window.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("MQTT benchmark: run with `cargo bench --bench mqtt`");
        return;
    }
    common::init_quiet();
    kinderwatch::detect::runtime::init(None).expect("ONNX Runtime: run scripts/setup.sh");
    let window = Duration::from_secs(
        std::env::var("KW_BENCH_LATENCY_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only_drain = std::env::var("KW_BENCH_ONLY").is_ok_and(|v| v == "drain");
    rt.block_on(async {
        drain(10_000, None, "").await;
        let jpeg = camera_jpeg();
        drain(1_000, Some(&jpeg), "").await;
        drain(1_000, Some(&jpeg), "max_packet_size 20000").await;
        if only_drain {
            return;
        }
        latency(1, window).await;
        latency(8, window).await;
    });
}
