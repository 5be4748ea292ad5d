//! Event store benchmark: insert rate with and without 50 KB snapshots, query latency over a
//! store of 1,000,000 events, disk bytes per event.
//!
//! `cargo bench --bench store` (KW_BENCH_EVENTS=N for another store size). Numbers go into
//! docs/BENCHMARKS.md.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use kinderwatch::detect::BBox;
use kinderwatch::events::{Event, EventKind, EventObject};
use kinderwatch::perimeter::RecordedEvent;
use kinderwatch::store::{EventQuery, Store, StoreConfig};

const CAMERAS: usize = 16;

fn config() -> StoreConfig {
    StoreConfig {
        min_free_mb: 64,
        ..StoreConfig::default()
    }
}

fn event(i: usize, time: Timestamp, snapshot: Option<&[u8]>) -> RecordedEvent {
    let camera = format!("cam-{:02}", i % CAMERAS);
    let kind = match i % 10 {
        0..=5 => EventKind::LineCrossed,
        6..=7 => EventKind::ZoneEntered,
        8 => EventKind::Loitering,
        _ => EventKind::CameraOffline,
    };
    let mut e = Event::new(kind, "bench-site", &camera, time);
    if kind != EventKind::CameraOffline {
        e.rule = Some(format!("rule-{}", i % 5));
        e.object = Some(EventObject {
            class: "person".into(),
            score: 0.73,
            bbox: BBox::new(0.31, 0.22, 0.45, 0.71),
            track_id: i as u64,
            crossing: None,
        });
        e.started_at = time - SignedDuration::from_secs(3);
    }
    RecordedEvent {
        event: e,
        snapshot: snapshot.map(<[u8]>::to_vec),
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Events/s recording `total` events in batches of `batch` (each batch one transaction + fsync).
fn insert_rate(total: usize, batch: usize, snapshot: Option<&[u8]>) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config()).unwrap();
    let started = Instant::now();
    let mut i = 0;
    while i < total {
        let events: Vec<RecordedEvent> = (i..(i + batch).min(total))
            .map(|n| event(n, Timestamp::now(), snapshot))
            .collect();
        store.record(&events, true).unwrap();
        i += batch;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    store.flush().unwrap();
    drop(store);
    (rate, dir_bytes(dir.path()) / total as u64)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn measure(store: &Store, queries: &[EventQuery]) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(queries.len());
    let mut returned = 0;
    for q in queries {
        let t = Instant::now();
        let page = store.query(q).unwrap();
        times.push(t.elapsed());
        returned += page.events.len();
    }
    times.sort();
    (
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        returned / queries.len(),
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("store benchmark: run with `cargo bench --bench store`");
        return;
    }
    let n: usize = std::env::var("KW_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let snapshot: Vec<u8> = (0..50 * 1024).map(|i| (i * 7 % 251) as u8).collect();

    println!("== insert (one transaction + fsync per batch) ==");
    for (batch, snap, total) in [
        (1, true, 1_000),
        (16, true, 4_000),
        (64, true, 8_000),
        (1, false, 2_000),
        (64, false, 50_000),
    ] {
        let (rate, per_event) = insert_rate(total, batch, snap.then_some(snapshot.as_slice()));
        println!(
            "batch {batch:>3}, snapshot {:>5}: {rate:>8.0} events/s, {per_event:>6} disk bytes/event ({total} events)",
            if snap { "50 KB" } else { "none" }
        );
    }

    println!("== query over {n} events (no snapshots), 30 days, {CAMERAS} cameras ==");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config()).unwrap();
    let end = Timestamp::now();
    let span = SignedDuration::from_hours(24 * 30);
    let step = span / n as i32;
    let start = end - span;
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
        let events: Vec<RecordedEvent> = chunk
            .iter()
            .map(|&i| event(i, start + step * i as i32, None))
            .collect();
        store.record(&events, false).unwrap();
    }
    store.flush().unwrap();
    let stats = store.stats().unwrap();
    println!(
        "filled in {:.1} s ({:.0} events/s in batches of 2000); {} events; disk {} MB = {} bytes/event",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64(),
        stats.events,
        dir_bytes(dir.path()) / (1024 * 1024),
        dir_bytes(dir.path()) / n as u64,
    );

    let day = SignedDuration::from_hours(24);
    let days = |k: i32| start + day * k;
    let one_day: Vec<EventQuery> = (0..200)
        .map(|k| EventQuery {
            from: Some(days(k % 29)),
            to: Some(days(k % 29 + 1)),
            limit: 100,
            ..Default::default()
        })
        .collect();
    let camera: Vec<EventQuery> = (0..200)
        .map(|k| EventQuery {
            camera: Some(format!("cam-{:02}", k % CAMERAS)),
            from: Some(days(k as i32 % 29)),
            limit: 100,
            ..Default::default()
        })
        .collect();
    let camera_day_kind: Vec<EventQuery> = (0..200)
        .map(|k| EventQuery {
            camera: Some(format!("cam-{:02}", k % CAMERAS)),
            kind: Some(EventKind::Loitering),
            from: Some(days(k as i32 % 29)),
            to: Some(days(k as i32 % 29 + 1)),
            limit: 100,
            ..Default::default()
        })
        .collect();
    let kind_only: Vec<EventQuery> = (0..50)
        .map(|_| EventQuery {
            kind: Some(EventKind::CameraOffline),
            limit: 1000,
            ..Default::default()
        })
        .collect();
    let full_page: Vec<EventQuery> = (0..50)
        .map(|k| EventQuery {
            from: Some(days(k % 29)),
            to: Some(days(k % 29 + 1)),
            limit: 1000,
            ..Default::default()
        })
        .collect();
    // Warm the cache the way a running daemon would have it.
    measure(&store, &one_day[..20]);
    for (name, qs) in [
        ("one-day range, first page of 100", &one_day),
        ("camera filter from a day, page of 100", &camera),
        ("camera + kind + one day (rare: 10%)", &camera_day_kind),
        ("one-day range, page of 1000", &full_page),
        ("kind only, 30 days, page of 1000 (10%)", &kind_only),
    ] {
        let (p50, p99, avg) = measure(&store, qs);
        println!(
            "{name:<40} p50 {:>7.2} ms  p99 {:>7.2} ms  ({avg} events/page)",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
    }
}
