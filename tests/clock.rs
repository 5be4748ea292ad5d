//! Rule timing on the monotonic clock: a wall-clock step of minutes (NTP, an operator setting the
//! time) in either direction fires no false loitering and loses no track, while event times stay
//! on the wall clock. The clock is injected through the frames: their capture `Instant`s advance
//! steadily while their wall-clock capture times jump.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kinderwatch::camera::{Frame, Pixels};
use kinderwatch::config::Config;
use kinderwatch::detect::{BBox, Detection, FrameDetections};
use kinderwatch::events::EventKind;
use kinderwatch::perimeter::{self, PerimeterIo, RecordedEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const STEP: Duration = Duration::from_secs(600);

fn config() -> Arc<Config> {
    let text = r#"
[site]
id = "kg-7"
[[cameras]]
id = "gate"
url = "rtsp://127.0.0.1/x"
[[zones]]
id = "yard"
camera = "gate"
polygon = [[0.0, 0.6], [1.0, 0.6], [1.0, 1.0], [0.0, 1.0]]
[[rules]]
id = "fence"
camera = "gate"
kind = "tripwire"
line = [[0.0, 0.5], [1.0, 0.5]]
cooldown = "0s"
[[rules]]
id = "linger"
camera = "gate"
kind = "loitering"
zone = "yard"
dwell = "5s"
"#;
    Arc::new(
        Config::from_toml(
            text,
            std::path::Path::new("c.toml"),
            std::path::Path::new("."),
        )
        .unwrap(),
    )
}

/// One frame every 200 ms on the monotonic clock; `wall(i)` its wall-clock capture time; the
/// person's feet at `feet_y(i)`.
fn frames(
    n: u64,
    wall: impl Fn(u64) -> SystemTime,
    feet_y: impl Fn(u64) -> f32,
) -> Vec<FrameDetections> {
    let base = Instant::now();
    (0..n)
        .map(|i| {
            let y = feet_y(i);
            FrameDetections {
                frame: Arc::new(Frame {
                    camera: "gate".into(),
                    seq: i + 1,
                    captured_at: wall(i),
                    captured: base + Duration::from_millis(200 * i),
                    width: 320,
                    height: 240,
                    pixels: Pixels::Rgb(vec![90; 320 * 240 * 3]),
                }),
                detections: vec![Detection {
                    class_id: 0,
                    label: "person".into(),
                    score: 0.8,
                    bbox: BBox::new(0.40, y - 0.3, 0.55, y),
                }],
                inference: Duration::ZERO,
                queue_wait: Duration::ZERO,
            }
        })
        .collect()
}

async fn run(frames: Vec<FrameDetections>) -> Vec<RecordedEvent> {
    let (tx, rx) = mpsc::channel(frames.len() + 1);
    let (events_tx, mut events_rx) = mpsc::channel(100);
    let stage = tokio::spawn(perimeter::run(
        perimeter::StageRules::from_config(&config()).unwrap(),
        rx,
        PerimeterIo {
            live_tracks: HashMap::new(),
            events: events_tx,
            summary: None,
            commands: None,
            arming: None,
            progress: None,
            reload: None,
        },
        CancellationToken::new(),
    ));
    for f in frames {
        tx.send(f).await.unwrap();
    }
    drop(tx);
    stage.await.unwrap();
    let mut out = Vec::new();
    while let Ok(e) = events_rx.try_recv() {
        out.push(e);
    }
    out
}

#[tokio::test]
async fn a_wall_clock_step_forward_fires_no_false_loitering() {
    common::init_logs();
    let t0 = SystemTime::now();
    // 3 s standing in the yard (dwell 5 s); the wall clock jumps 10 minutes ahead after 1.4 s.
    let events = run(frames(
        15,
        |i| t0 + Duration::from_millis(200 * i) + if i >= 7 { STEP } else { Duration::ZERO },
        |_| 0.8,
    ))
    .await;
    let kinds: Vec<EventKind> = events.iter().map(|e| e.event.kind).collect();
    assert!(!kinds.contains(&EventKind::Loitering), "{kinds:?}");
    // Standing longer than the dwell on the monotonic clock does fire it.
    let events = run(frames(35, |i| t0 + Duration::from_millis(200 * i), |_| 0.8)).await;
    let loitering = events
        .iter()
        .filter(|e| e.event.kind == EventKind::Loitering)
        .count();
    assert_eq!(loitering, 1);
}

#[tokio::test]
async fn a_wall_clock_step_back_loses_no_track_and_events_keep_wall_time() {
    common::init_logs();
    let t0 = SystemTime::now();
    // Walking down across the fence (y 0.5) in 20 frames; the wall clock jumps 10 minutes back
    // at frame 6, before the crossing.
    let events = run(frames(
        20,
        |i| {
            let t = t0 + Duration::from_millis(200 * i);
            if i >= 6 { t - STEP } else { t }
        },
        |i| 0.2 + 0.03 * i as f32,
    ))
    .await;
    let crossings: Vec<&RecordedEvent> = events
        .iter()
        .filter(|e| e.event.kind == EventKind::LineCrossed)
        .collect();
    assert_eq!(crossings.len(), 1, "{events:?}");
    let e = &crossings[0].event;
    // The event is stamped with the (stepped) wall clock of its frame.
    let stepped = jiff::Timestamp::try_from(t0 - STEP).unwrap();
    let d = e.time.duration_since(stepped).as_secs_f64();
    assert!(
        (0.0..10.0).contains(&d),
        "event time {} vs stepped clock {stepped}",
        e.time
    );
    // The track began before the step: its start is placed by its age, not by the raw clock.
    assert!(e.started_at <= e.time, "{} > {}", e.started_at, e.time);
    assert!(
        e.time.duration_since(e.started_at).as_secs_f64() < 10.0,
        "started_at {} is minutes away from {}",
        e.started_at,
        e.time
    );
}
