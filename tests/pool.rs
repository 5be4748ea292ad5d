//! The detector pool: fairness, stale frames, bounded memory and shutdown with a slow fake
//! detector; then the sample clip over the real RTSP path through the real model.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use common::{Auth, RtspTestServer, Source, camera, wait_state};
use kinderwatch::app::Daemon;
use kinderwatch::camera::{CameraState, Frame, FrameSlot};
use kinderwatch::detect::detector::Detector;
use kinderwatch::detect::motion::MotionConfig;
use kinderwatch::detect::pool::{DetectorPool, PoolCamera};
use kinderwatch::detect::{BBox, DetectError, Detection};

/// Sleeps `cost` per frame and reports one box; counts its own drops.
struct SlowDetector {
    cost: Duration,
    dropped: Arc<AtomicUsize>,
}

impl Detector for SlowDetector {
    fn detect(&mut self, _frame: &Frame) -> Result<Vec<Detection>, DetectError> {
        std::thread::sleep(self.cost);
        Ok(vec![Detection {
            class_id: 0,
            label: "person".into(),
            score: 0.9,
            bbox: BBox::new(0.1, 0.1, 0.2, 0.4),
        }])
    }
}

impl Drop for SlowDetector {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

fn detectors(n: usize, cost: Duration) -> (Vec<Box<dyn Detector>>, Arc<AtomicUsize>) {
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = (0..n)
        .map(|_| {
            Box::new(SlowDetector {
                cost,
                dropped: dropped.clone(),
            }) as Box<dyn Detector>
        })
        .collect();
    (d, dropped)
}

fn no_gate() -> MotionConfig {
    MotionConfig {
        enabled: false,
        ..MotionConfig::default()
    }
}

fn pool_camera(id: &str, max_age: Duration) -> PoolCamera {
    PoolCamera {
        id: id.into(),
        slot: Arc::new(FrameSlot::default()),
        max_age,
        motion_masks: vec![],
    }
}

fn frame(camera: &str, seq: u64) -> Arc<Frame> {
    Arc::new(Frame {
        camera: camera.into(),
        seq,
        captured_at: SystemTime::now(),
        captured: Instant::now(),
        width: 32,
        height: 18,
        rgb: vec![(seq % 251) as u8; 32 * 18 * 3],
    })
}

/// Pushes a fresh frame into every slot every `period` until `until`; returns weak refs to all.
fn feed(slots: &[(String, Arc<FrameSlot>)], period: Duration, until: Instant) -> Vec<Weak<Frame>> {
    let mut all = Vec::new();
    let mut seq = 0;
    while Instant::now() < until {
        seq += 1;
        for (id, slot) in slots {
            let f = frame(id, seq);
            all.push(Arc::downgrade(&f));
            slot.put(f);
        }
        std::thread::sleep(period);
    }
    all
}

#[test]
fn busy_cameras_share_one_worker_fairly() {
    let cams: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|id| pool_camera(id, Duration::from_secs(1)))
        .collect();
    let slots: Vec<_> = cams
        .iter()
        .map(|c| (c.id.to_string(), c.slot.clone()))
        .collect();
    let (dets, _) = detectors(1, Duration::from_millis(20));
    let (pool, mut rx) = DetectorPool::start(cams, dets, &no_gate(), 1000);
    // Every camera always has a fresh frame; the worker manages ~50 inferences/s in all.
    feed(
        &slots,
        Duration::from_millis(5),
        Instant::now() + Duration::from_secs(3),
    );
    let total: u64 = ["a", "b", "c"]
        .iter()
        .map(|c| pool.stats(c).unwrap().inferred)
        .sum();
    assert!(total >= 30, "{total} inferences");
    for c in ["a", "b", "c"] {
        let share = pool.stats(c).unwrap().inferred as f64 / total as f64;
        assert!(
            (0.25..=0.42).contains(&share),
            "camera {c} got {share:.2} of the inferences"
        );
    }
    // Results arrive in capture order per camera.
    let mut last: HashMap<String, u64> = HashMap::new();
    while let Ok(r) = rx.try_recv() {
        let prev = last
            .insert(r.frame.camera.to_string(), r.frame.seq)
            .unwrap_or(0);
        assert!(r.frame.seq > prev, "out of order on {}", r.frame.camera);
        assert_eq!(r.detections.len(), 1);
    }
    assert_eq!(pool.shutdown(), 1);
}

#[test]
fn a_frame_older_than_one_interval_is_dropped_and_counted() {
    let busy = pool_camera("busy", Duration::from_secs(1));
    let late = pool_camera("late", Duration::from_millis(50));
    let slots = [(busy.id.to_string(), busy.slot.clone())];
    let late_slot = late.slot.clone();
    let (dets, _) = detectors(1, Duration::from_millis(150));
    let (pool, _rx) = DetectorPool::start(vec![busy, late], dets, &no_gate(), 100);
    // Occupy the worker, then give "late" a frame captured 100 ms ago: older than its 50 ms
    // interval whenever its turn comes.
    let until = Instant::now() + Duration::from_millis(900);
    let feeder = std::thread::spawn(move || feed(&slots, Duration::from_millis(10), until));
    std::thread::sleep(Duration::from_millis(200));
    late_slot.put(Arc::new(Frame {
        captured: Instant::now() - Duration::from_millis(100),
        ..(*frame("late", 1)).clone()
    }));
    feeder.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let s = pool.stats("late").unwrap();
    assert_eq!((s.dropped_stale, s.inferred), (1, 0), "{s:?}");
    let b = pool.stats("busy").unwrap();
    assert!(b.inferred >= 3 && b.dropped_stale == 0, "{b:?}");
    assert!(
        b.overwritten > 0,
        "newer frames replace waiting ones: {b:?}"
    );
    drop(pool);
}

#[test]
fn nothing_grows_without_bound_and_shutdown_joins_every_worker() {
    let cams: Vec<_> = (0..4)
        .map(|i| pool_camera(&format!("c{i}"), Duration::from_secs(5)))
        .collect();
    let slots: Vec<_> = cams
        .iter()
        .map(|c| (c.id.to_string(), c.slot.clone()))
        .collect();
    let (dets, dropped) = detectors(2, Duration::from_millis(5));
    const CAPACITY: usize = 8;
    // Nobody reads the results: the output queue fills up and must stay at its capacity.
    let (pool, rx) = DetectorPool::start(cams, dets, &no_gate(), CAPACITY);
    let frames = feed(
        &slots,
        Duration::from_millis(1),
        Instant::now() + Duration::from_secs(2),
    );
    assert!(frames.len() > 400, "{} frames fed", frames.len());
    // Alive: at most one per slot, one per worker, and what the full queue holds.
    let alive = frames.iter().filter(|w| w.strong_count() > 0).count();
    assert!(alive <= 4 + 2 + CAPACITY, "{alive} frames still alive");
    let full: u64 = (0..4)
        .map(|i| pool.stats(&format!("c{i}")).unwrap().dropped_output_full)
        .sum();
    assert!(full > 0, "the output bound was never reached");
    assert_eq!(rx.len(), CAPACITY);
    assert_eq!(pool.shutdown(), 2, "every worker joined");
    assert_eq!(dropped.load(Ordering::SeqCst), 2, "every detector dropped");
}

#[test]
fn still_scene_is_mostly_skipped_by_the_motion_gate() {
    let cam = pool_camera("still", Duration::from_secs(1));
    let slots = [(cam.id.to_string(), cam.slot.clone())];
    let (dets, _) = detectors(1, Duration::from_millis(2));
    let gate = MotionConfig {
        hold: Duration::from_millis(200),
        keepalive: Duration::from_secs(60),
        ..MotionConfig::default()
    };
    let (pool, _rx) = DetectorPool::start(vec![cam], dets, &gate, 100);
    // The same picture over and over (feed() varies the gray level only with seq; use one frame).
    let still = frame("still", 1);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let f = Arc::new(Frame {
            captured: Instant::now(),
            ..(*still).clone()
        });
        slots[0].1.put(f);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    let s = pool.stats("still").unwrap();
    let seen = s.inferred + s.skipped_motion;
    assert!(seen >= 30, "{s:?}");
    assert!(s.skipped_motion as f64 >= 0.8 * seen as f64, "{s:?}");
    // A live track keeps the still camera inferred.
    pool.live_tracks_flag("still")
        .unwrap()
        .store(true, Ordering::Relaxed);
    let before = pool.stats("still").unwrap().inferred;
    for _ in 0..10 {
        slots[0].1.put(Arc::new(Frame {
            captured: Instant::now(),
            ..(*still).clone()
        }));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(pool.stats("still").unwrap().inferred >= before + 5);
}

/// The sample clip (2-8 people per frame) over the real RTSP path, through the real model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_clip_over_rtsp_finds_people() {
    common::init();
    let server = RtspTestServer::start(Source::SampleClip, Auth::None);
    let mut config = common::config(vec![camera(
        "clip",
        &server.url(),
        "detect_width = 640\ndetect_height = 480\ndetect_fps = 5",
    )]);
    config.detector.model =
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/nanodet-coco-416.toml"));
    config.detector.workers = 2;
    config.motion.enabled = false;
    let mut daemon = Daemon::start(&config).await.unwrap();
    let mut rx = daemon.take_detections().unwrap();
    let mut status = daemon.cameras()[0].status.clone();
    wait_state(&mut status, CameraState::Streaming, Duration::from_secs(20)).await;
    let mut frames = 0;
    let mut people = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while frames < 15 {
        let r = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("inferred frames within 30 s")
            .unwrap();
        assert_eq!(&*r.frame.camera, "clip");
        for d in &r.detections {
            assert_eq!(&*d.label, "person");
            assert!(
                d.score >= 0.4 && d.bbox.area() > 0.0 && d.bbox.x2 <= 1.0 && d.bbox.y2 <= 1.0,
                "{d:?}"
            );
        }
        frames += 1;
        people += r.detections.len();
    }
    let per_frame = people as f64 / frames as f64;
    assert!(
        per_frame >= 2.5,
        "{per_frame:.1} people per frame (a Python check finds about 5)"
    );
    let stats = daemon.pool().unwrap().stats("clip").unwrap();
    assert_eq!(stats.errors, 0, "{stats:?}");
    let report = daemon.shutdown(Duration::from_secs(5)).await;
    assert!(report.clean, "{report:?}");
}
