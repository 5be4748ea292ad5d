//! The detector pool: fairness, no starvation far past capacity, the motion gate before the slot,
//! bounded memory, panics and shutdown with a slow fake detector; keyframes-only decoding of a still
//! camera over real RTSP; then the sample clip over the real RTSP path through the real model.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use common::{Auth, RtspTestServer, Source, camera, wait_state};
use kinderwatch::app::{Daemon, Detections};
use kinderwatch::camera::supervisor::CameraSupervisor;
use kinderwatch::camera::{CameraState, DecodeDemand, Frame, FrameSlot, Pixels};
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

fn pool_camera(id: &str, interval: Duration) -> PoolCamera {
    PoolCamera {
        id: id.into(),
        slot: Arc::new(FrameSlot::default()),
        interval,
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
        pixels: Pixels::Rgb(vec![(seq % 251) as u8; 32 * 18 * 3]),
    })
}

/// Pool cameras with these ids and their slots (to feed them).
fn cameras(
    ids: impl IntoIterator<Item = String>,
    interval: Duration,
) -> (Vec<PoolCamera>, Vec<(String, Arc<FrameSlot>)>) {
    let cams: Vec<_> = ids
        .into_iter()
        .map(|id| pool_camera(&id, interval))
        .collect();
    let slots = cams
        .iter()
        .map(|c| (c.id.to_string(), c.slot.clone()))
        .collect();
    (cams, slots)
}

/// A frame whose gray level jumps with `seq` (motion for the gate).
fn moving(camera: &str, seq: u64) -> Arc<Frame> {
    frame(camera, seq * 97)
}

/// Until `d` has passed, every `period`: a moving frame into each of `moving_slots` and each
/// still camera's unchanging picture (captured now) into its slot. `seq` numbers the rounds.
fn feed_motion_and_still(
    moving_slots: &[(String, Arc<FrameSlot>)],
    still: &[(Arc<FrameSlot>, Arc<Frame>)],
    period: Duration,
    d: Duration,
    seq: &mut u64,
) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        *seq += 1;
        for (id, slot) in moving_slots {
            slot.put(moving(id, *seq));
        }
        for (slot, picture) in still {
            slot.put(Arc::new(Frame {
                captured: Instant::now(),
                seq: *seq,
                ..(**picture).clone()
            }));
        }
        std::thread::sleep(period);
    }
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
    let (cams, slots) = cameras(["a", "b", "c"].map(String::from), Duration::from_secs(1));
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
fn a_waiting_frame_is_never_dropped_for_its_age() {
    let busy = pool_camera("busy", Duration::from_millis(50));
    let late = pool_camera("late", Duration::from_millis(50));
    let slots = [(busy.id.to_string(), busy.slot.clone())];
    let late_slot = late.slot.clone();
    let (dets, _) = detectors(1, Duration::from_millis(150));
    let (pool, _rx) = DetectorPool::start(vec![busy, late], dets, &no_gate(), 100);
    // Occupy the worker, then give "late" a frame captured 100 ms ago: older than its 50 ms
    // interval whenever its turn comes. It is the freshest "late" has: it must be inferred.
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
    assert_eq!((s.inferred, s.dropped()), (1, 0), "{s:?}");
    let b = pool.stats("busy").unwrap();
    assert!(b.inferred >= 3, "{b:?}");
    assert!(
        b.overwritten > 0,
        "newer frames replace waiting ones: {b:?}"
    );
    drop(pool);
}

/// Far past capacity (32 cameras offering 100 fps each to two workers that manage ~60 inferences/s
/// in all), every camera still gets inferred, in nearly equal shares, and the load monitor's rule
/// calls every one of them behind.
#[test]
fn far_past_capacity_no_camera_starves() {
    const N: usize = 32;
    let (cams, slots) = cameras(
        (0..N).map(|i| format!("c{i:02}")),
        Duration::from_millis(200),
    );
    let (dets, _) = detectors(2, Duration::from_millis(30));
    let (pool, _rx) = DetectorPool::start(cams, dets, &no_gate(), 10_000);
    let before: Vec<_> = slots
        .iter()
        .map(|(id, _)| pool.stats(id).unwrap())
        .collect();
    feed(
        &slots,
        Duration::from_millis(10),
        Instant::now() + Duration::from_secs(4),
    );
    let after: Vec<_> = slots
        .iter()
        .map(|(id, _)| pool.stats(id).unwrap())
        .collect();
    let inferred: Vec<u64> = after.iter().map(|s| s.inferred).collect();
    let total: u64 = inferred.iter().sum();
    assert!(total >= 100, "{total} inferences in 4 s");
    let fair = total as f64 / N as f64;
    for (i, n) in inferred.iter().enumerate() {
        assert!(
            *n as f64 >= 0.6 * fair && *n as f64 <= 1.5 * fair,
            "camera c{i:02}: {n} inferences, fair share {fair:.1}: {inferred:?}"
        );
        assert!(
            kinderwatch::detect::load::is_behind(&before[i], &after[i]),
            "c{i:02} {:?}",
            after[i]
        );
    }
    assert_eq!(pool.shutdown(), 2);
}

/// The load monitor calls an overload only after its warm-up (the start-up burst of every camera's
/// first frames is not one), and then names every camera the pool cannot keep up with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_reported_after_the_warmup_only() {
    use kinderwatch::detect::load::{DetectorLoad, monitor};
    let (cams, slots) = cameras((0..4).map(|i| format!("c{i}")), Duration::from_millis(200));
    let (dets, _) = detectors(1, Duration::from_millis(20));
    let (pool, _rx) = DetectorPool::start(cams, dets, &no_gate(), 10_000);
    let (load_tx, mut load) = tokio::sync::watch::channel(DetectorLoad::default());
    let cancel = tokio_util::sync::CancellationToken::new();
    let warmup = Duration::from_millis(1200);
    let started = Instant::now();
    let task = tokio::spawn(monitor(
        pool.stats_reader(),
        Duration::from_millis(200),
        warmup,
        load_tx,
        cancel.clone(),
    ));
    // Far past capacity from the start: 4 cameras at 100 fps, one 20 ms worker.
    let until = Instant::now() + Duration::from_secs(4);
    let feeder = std::thread::spawn(move || feed(&slots, Duration::from_millis(10), until));
    let mut overloaded_at = None;
    while overloaded_at.is_none() && started.elapsed() < Duration::from_millis(3500) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = load.borrow_and_update().clone();
        if now.is_overloaded() {
            overloaded_at = Some(started.elapsed());
            let mut named: Vec<String> = now.behind.iter().map(|b| b.camera.to_string()).collect();
            named.sort();
            assert_eq!(named, ["c0", "c1", "c2", "c3"], "{now:?}");
        }
    }
    let at =
        overloaded_at.expect("an overload of 4 cameras at 100 fps on one 20 ms worker is reported");
    assert!(
        at >= warmup,
        "overload reported {at:?} after the start, within the warm-up"
    );
    cancel.cancel();
    task.await.unwrap();
    feeder.join().unwrap();
    drop(pool);
}

/// 4 busy cameras and 28 still ones on one worker: the motion gate turns the still frames away
/// before the slot (they never take a worker's turn), the busy cameras share the worker, and the
/// still cameras' pipelines are asked for keyframes only.
#[test]
fn still_cameras_take_no_pool_time_and_ask_for_keyframes_only() {
    let (cams, slots) = cameras(
        (0..32).map(|i| format!("c{i:02}")),
        Duration::from_millis(200),
    );
    let (dets, _) = detectors(1, Duration::from_millis(20));
    let gate = MotionConfig {
        hold: Duration::from_millis(100),
        keepalive: Duration::from_secs(60),
        ..MotionConfig::default()
    };
    let (pool, _rx) = DetectorPool::start(cams, dets, &gate, 10_000);
    let still: Vec<_> = slots[4..]
        .iter()
        .map(|(id, slot)| (slot.clone(), frame(id, 7)))
        .collect();
    let mut seq = 0;
    let mut run = |d: Duration| {
        feed_motion_and_still(&slots[..4], &still, Duration::from_millis(20), d, &mut seq);
        std::thread::sleep(Duration::from_millis(100));
    };
    // The first still frames are inferred (a new picture, then `hold`); after that, none.
    run(Duration::from_secs(1));
    let before: Vec<_> = slots
        .iter()
        .map(|(id, _)| pool.stats(id).unwrap())
        .collect();
    run(Duration::from_secs(3));
    let after: Vec<_> = slots
        .iter()
        .map(|(id, _)| pool.stats(id).unwrap())
        .collect();
    let busy: Vec<u64> = (0..4)
        .map(|i| after[i].inferred - before[i].inferred)
        .collect();
    let total: u64 = busy.iter().sum();
    // One 20 ms worker: ~150 inferences in 3 s, all of them for the busy cameras.
    assert!(total >= 80, "busy cameras got {busy:?}");
    for n in &busy {
        assert!(*n as f64 >= 0.15 * total as f64, "{busy:?}");
    }
    for (i, (id, slot)) in slots.iter().enumerate().skip(4) {
        let (b, a) = (&before[i], &after[i]);
        assert_eq!(a.inferred, b.inferred, "still camera {id} inferred: {a:?}");
        assert_eq!(
            a.overwritten, b.overwritten,
            "still frames never enter the slot: {a:?}"
        );
        assert!(a.skipped_motion - b.skipped_motion >= 60, "{id} {a:?}");
        assert_eq!(slot.decode_demand(), DecodeDemand::Keyframes, "{id}");
    }
    for (id, slot) in &slots[..4] {
        assert_eq!(slot.decode_demand(), DecodeDemand::Every, "{id}");
    }
    // Motion on a still camera: every frame is wanted again.
    slots[10].1.put(moving("c10", 200));
    assert_eq!(slots[10].1.decode_demand(), DecodeDemand::Every);
}

/// Under overload a still camera's keep-alive waits behind the cameras with motion until the next
/// keep-alive replaces it: the still cameras are then inferred about every 2 x keepalive, never
/// less often, and what is inferred is a fresh frame. Without motion elsewhere, every keepalive.
#[test]
fn keepalives_yield_to_motion_within_a_bound() {
    let keepalive = Duration::from_millis(400);
    let (cams, slots) = cameras((0..8).map(|i| format!("c{i}")), Duration::from_millis(200));
    // One 20 ms worker (~50 inferences/s) and 4 cameras with motion offering 100 fps each.
    let (dets, _) = detectors(1, Duration::from_millis(20));
    let gate = MotionConfig {
        hold: Duration::from_millis(50),
        keepalive,
        ..MotionConfig::default()
    };
    let (pool, mut rx) = DetectorPool::start(cams, dets, &gate, 100_000);
    let still: Vec<_> = slots[4..]
        .iter()
        .map(|(id, slot)| (slot.clone(), frame(id, 7)))
        .collect();
    let mut seq = 0;
    let mut run = |d: Duration, motion: bool| {
        let moving_slots = if motion { &slots[..4] } else { &[] };
        feed_motion_and_still(moving_slots, &still, Duration::from_millis(10), d, &mut seq);
    };
    // Per still camera: when its inferred frames were captured, and how long they waited.
    let mut drain = |from: Instant| {
        let mut seen: HashMap<String, Vec<(Instant, Duration)>> = HashMap::new();
        while let Ok(r) = rx.try_recv() {
            if r.frame.captured >= from && ["c4", "c5", "c6", "c7"].contains(&&*r.frame.camera) {
                seen.entry(r.frame.camera.to_string())
                    .or_default()
                    .push((r.frame.captured, r.queue_wait));
            }
        }
        seen
    };
    // First frames and the gate's first `hold` are inferred; then the overload.
    run(Duration::from_secs(1), true);
    drain(Instant::now());
    let window = Duration::from_secs(4);
    let start = Instant::now();
    run(window, true);
    std::thread::sleep(Duration::from_millis(100));
    let overloaded = drain(start);
    let every = window.as_secs_f64() / keepalive.as_secs_f64();
    for id in ["c4", "c5", "c6", "c7"] {
        let times = overloaded.get(id).cloned().unwrap_or_default();
        // Every 400 ms would be ~10 in 4 s; every 800 ms ~5.
        assert!(
            times.len() >= 3 && (times.len() as f64) <= 0.7 * every,
            "still camera {id}: {} keep-alives in {window:?} of overload",
            times.len()
        );
        for w in times.windows(2) {
            let gap = w[1].0 - w[0].0;
            assert!(
                gap <= 2 * keepalive + Duration::from_millis(400),
                "still camera {id}: {gap:?} between keep-alives"
            );
        }
        // The frame inferred is the fresh one that replaced the waiting keep-alive, not the one
        // that waited (~400 ms).
        for (_, waited) in &times {
            assert!(
                *waited < keepalive / 2,
                "still camera {id}: a keep-alive frame waited {waited:?}"
            );
        }
    }
    let busy: u64 = (0..4)
        .map(|i| pool.stats(&format!("c{i}")).unwrap().inferred)
        .sum();
    assert!(busy >= 100, "cameras with motion got {busy} inferences");
    // No motion anywhere: nothing to yield to, a keep-alive every `keepalive`.
    let start = Instant::now();
    run(Duration::from_secs(3), false);
    std::thread::sleep(Duration::from_millis(100));
    let quiet = drain(start);
    for id in ["c4", "c5", "c6", "c7"] {
        let n = quiet.get(id).map_or(0, Vec::len);
        assert!(
            n >= 5,
            "still camera {id}: {n} keep-alives in 3 s without overload"
        );
    }
    assert_eq!(pool.shutdown(), 1);
}

#[test]
fn a_camera_reconfigured_live_gets_its_new_rate_and_motion_masks() {
    let (cams, slots) = cameras(["a".to_string()], Duration::from_millis(200));
    let (dets, _) = detectors(1, Duration::from_millis(2));
    let gate = MotionConfig {
        hold: Duration::from_millis(100),
        keepalive: Duration::from_secs(60),
        ..MotionConfig::default()
    };
    let (pool, _rx) = DetectorPool::start(cams, dets, &gate, 10_000);
    let stats = pool.stats_reader();
    let slot = &slots[0].1;
    let mut seq = 0;
    let mut run = |n: usize| {
        for _ in 0..n {
            seq += 1;
            slot.put(moving("a", seq));
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        pool.stats("a").unwrap()
    };
    // Motion everywhere: every frame is wanted.
    let before = run(40);
    assert!(before.inferred >= 30, "{before:?}");
    assert!(before.skipped_motion <= 2, "{before:?}");
    // The whole picture masked: the same motion is now ignored, after the fresh gate's first
    // picture and its hold.
    let everywhere = vec![vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]];
    assert!(pool.reconfigure("a", Duration::from_millis(500), &everywhere));
    assert_eq!(stats.interval("a"), Some(Duration::from_millis(500)));
    let after = run(40);
    let (inferred, skipped) = (
        after.inferred - before.inferred,
        after.skipped_motion - before.skipped_motion,
    );
    assert!(skipped >= 30, "masked motion skipped: {after:?}");
    assert!(inferred <= 10, "masked motion inferred {inferred} times");
    // The slot and the counters are the camera's still: nothing was lost or reset.
    assert!(after.inferred >= before.inferred);
    assert!(!pool.reconfigure("nobody", Duration::from_millis(500), &[]));
}

#[test]
fn cameras_added_and_removed_live_join_and_leave_the_schedule() {
    let (cams, slots) = cameras(
        ["a".to_string(), "b".to_string()],
        Duration::from_millis(200),
    );
    let (dets, _) = detectors(1, Duration::from_millis(5));
    let (pool, _rx) = DetectorPool::start(cams, dets, &no_gate(), 10_000);
    let added = pool_camera("c", Duration::from_millis(200));
    let c_slot = added.slot.clone();
    // A frame already waiting in the new camera's slot is served once it joins.
    c_slot.put(frame("c", 1));
    assert!(pool.add_camera(added));
    assert!(
        !pool.add_camera(pool_camera("c", Duration::from_millis(200))),
        "one camera per id"
    );
    let mut all = slots.clone();
    all.push(("c".to_string(), c_slot.clone()));
    feed(
        &all,
        Duration::from_millis(10),
        Instant::now() + Duration::from_secs(1),
    );
    std::thread::sleep(Duration::from_millis(50));
    let got = |id: &str| pool.stats(id).map_or(0, |s| s.inferred);
    let (a, b, c) = (got("a"), got("b"), got("c"));
    assert!(c >= 20, "the added camera is served: a {a} b {b} c {c}");
    assert!(
        c as f64 >= 0.6 * a.min(b) as f64,
        "and fairly: a {a} b {b} c {c}"
    );
    assert_eq!(pool.stats_reader().cameras().len(), 3);

    // Removed: no longer served or listed, while the others go on.
    assert!(pool.remove_camera("b"));
    assert!(!pool.remove_camera("b"));
    assert!(pool.stats("b").is_none());
    let b_slot = slots[1].1.clone();
    let before_a = got("a");
    feed(
        &all,
        Duration::from_millis(10),
        Instant::now() + Duration::from_millis(500),
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(got("a") > before_a + 10, "a goes on");
    assert!(
        b_slot.has_frame(),
        "nobody takes the removed camera's frames"
    );
    assert_eq!(
        pool.stats_reader().cameras(),
        vec![std::sync::Arc::<str>::from("a"), "c".into()]
    );
}

/// Panics on every other frame; counts its calls.
struct PanickyDetector(Arc<AtomicUsize>);

impl Detector for PanickyDetector {
    fn detect(&mut self, frame: &Frame) -> Result<Vec<Detection>, DetectError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
        if frame.seq.is_multiple_of(2) {
            panic!("detector bug on frame {}", frame.seq);
        }
        Ok(vec![])
    }
}

#[test]
fn a_panicking_detector_loses_the_frame_not_the_camera() {
    let cam = pool_camera("cam", Duration::from_millis(20));
    let slot = cam.slot.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let (pool, _rx) = DetectorPool::start(
        vec![cam],
        vec![Box::new(PanickyDetector(calls.clone()))],
        &no_gate(),
        100,
    );
    // One frame at a time (a panic with a backtrace is slow), each waited for.
    one_by_one(&pool, &slot, 20, Duration::from_secs(10));
    let s = pool.stats("cam").unwrap();
    assert_eq!((s.inferred, s.errors), (10, 10), "{s:?}");
    assert_eq!(s.inferred + s.errors, calls.load(Ordering::SeqCst) as u64);
    assert_eq!(pool.shutdown(), 1);
}

/// Panics on frames divisible by 3 and is broken ever after (every later frame fails), as a
/// session a panic left in a bad state would be.
struct PoisonedAfterPanic {
    broken: bool,
}

impl Detector for PoisonedAfterPanic {
    fn detect(&mut self, frame: &Frame) -> Result<Vec<Detection>, DetectError> {
        if self.broken {
            return Err(DetectError::Inference(
                "session broken by an earlier panic".into(),
            ));
        }
        if frame.seq.is_multiple_of(3) {
            self.broken = true;
            panic!("detector bug on frame {}", frame.seq);
        }
        Ok(vec![])
    }
}

/// A worker whose detector panicked gets a fresh one from the factory (a first failed build is
/// retried), so the camera is inferred again instead of failing for good; every worker reports
/// progress, and a worker blocked inside an inference is named stuck.
#[test]
fn a_worker_whose_detector_panicked_is_restarted_with_a_fresh_detector() {
    use kinderwatch::detect::pool::{DetectorFactory, PoolSupervision};
    use kinderwatch::progress::Stages;
    let cam = pool_camera("cam", Duration::from_millis(20));
    let slot = cam.slot.clone();
    let builds = Arc::new(AtomicUsize::new(0));
    let b = builds.clone();
    let factory: DetectorFactory = Arc::new(move || {
        // The first rebuild fails (say the model file is being replaced): retried after a pause.
        if b.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(DetectError::Inference("cannot build now".into()));
        }
        Ok(Box::new(PoisonedAfterPanic { broken: false }) as Box<dyn Detector>)
    });
    let stages = Stages::new(Duration::from_secs(2));
    let (pool, _rx) = DetectorPool::start_supervised(
        vec![cam],
        vec![Box::new(PoisonedAfterPanic { broken: false })],
        &no_gate(),
        100,
        PoolSupervision {
            stages: Some(stages.clone()),
            factory: Some(factory),
        },
    );
    one_by_one(&pool, &slot, 10, Duration::from_secs(20));
    let s = pool.stats("cam").unwrap();
    // Frames 3, 6 and 9 panic; without a restart every frame after 3 would fail.
    assert_eq!((s.inferred, s.errors), (7, 3), "{s:?}");
    // One failed and three good builds.
    assert_eq!(builds.load(Ordering::SeqCst), 4);
    let report = stages.report();
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0].stage, "detector-0");
    assert!(!report[0].stuck, "{report:?}");
    assert_eq!(pool.shutdown(), 1);
}

/// A detector that never returns: its worker's stage goes stuck, and the idle worker beside it
/// does not.
#[test]
fn a_worker_blocked_in_an_inference_is_named_stuck() {
    use kinderwatch::detect::pool::PoolSupervision;
    use kinderwatch::progress::Stages;
    let (cams, slots) = cameras(["a".to_string()], Duration::from_millis(20));
    // Both workers would block; only one gets the one frame.
    let (dets, _) = detectors(2, Duration::from_secs(6));
    let stages = Stages::new(Duration::from_secs(2));
    let (pool, _rx) = DetectorPool::start_supervised(
        cams,
        dets,
        &no_gate(),
        10,
        PoolSupervision {
            stages: Some(stages.clone()),
            factory: None,
        },
    );
    // Only one frame: one worker takes it and blocks for 6 s; the other stays idle.
    slots[0].1.put(frame("a", 1));
    wait_for(Duration::from_secs(10), "a worker stuck", || {
        !stages.stuck().is_empty()
    });
    let stuck = stages.stuck();
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert!(stuck[0].stage.starts_with("detector-"), "{stuck:?}");
    assert_eq!(stages.report().len(), 2);
    // The inference ends: the worker makes progress again.
    wait_for(Duration::from_secs(15), "the worker back", || {
        stages.stuck().is_empty()
    });
    drop(pool);
}

#[test]
fn nothing_grows_without_bound_and_shutdown_joins_every_worker() {
    let (cams, slots) = cameras((0..4).map(|i| format!("c{i}")), Duration::from_secs(5));
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

/// Waits until `f` holds, polling every 50 ms; panics with `what` after `limit`.
async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Frames the camera's pipeline delivered to its slot so far (admitted or turned away).
fn delivered(pool: &DetectorPool, id: &str) -> u64 {
    let s = pool.stats(id).unwrap();
    s.skipped_motion + s.inferred + s.overwritten + s.errors
}

/// A still camera over real RTSP (a 10 fps test picture, a keyframe every second) is decoded at its
/// keyframes only, and with `still_keyframe_interval = 5s` one every 5 s while its compressed frames
/// keep their size; when the (clean, synthetic) picture starts moving, the deltas grow, the next
/// keyframe is decoded, motion is seen on it, that frame is inferred, and every frame is decoded
/// again from the keyframe after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn still_camera_decodes_keyframes_only_until_motion() {
    common::init();
    let server = RtspTestServer::start(Source::Named { pattern: "colors" }, Auth::None);
    let cam = camera(
        "still",
        &server.url(),
        "detect_width = 320\ndetect_height = 180\ndetect_fps = 10",
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let (sup, handle) =
        CameraSupervisor::new(&cam, &common::fast_ingest(), cancel.clone()).unwrap();
    let task = tokio::spawn(sup.expect("enabled").run());
    let (dets, _) = detectors(1, Duration::from_millis(5));
    let gate = MotionConfig {
        hold: Duration::from_millis(500),
        keepalive: Duration::from_secs(600),
        still_keyframe_interval: Duration::from_secs(5),
        ..MotionConfig::default()
    };
    let slot = handle.slot.clone();
    let (pool, mut rx) = DetectorPool::start(
        vec![PoolCamera {
            id: handle.id.clone(),
            slot: slot.clone(),
            interval: Duration::from_millis(100),
            motion_masks: vec![],
        }],
        dets,
        &gate,
        100,
    );
    let mut status = handle.status.clone();
    wait_state(&mut status, CameraState::Streaming, Duration::from_secs(20)).await;
    let waited = Instant::now();
    while slot.decode_demand() != DecodeDemand::Keyframes {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "keyframes-only decoding within 10 s: {:?}, picture {:?}",
            pool.stats("still"),
            pool.stats_reader().picture("still")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until(Duration::from_secs(10), "the status to say so", || {
        handle.status.borrow().decoding == DecodeDemand::Keyframes
    })
    .await;
    // Keyframes only, and of those only one per `still_keyframe_interval` (5 s) while the
    // compressed frames keep their size: 1-2 pictures in 7 s instead of 70.
    let before = delivered(&pool, "still");
    tokio::time::sleep(Duration::from_secs(7)).await;
    let still_frames = delivered(&pool, "still") - before;
    assert!(
        (1..=3).contains(&still_frames),
        "{still_frames} pictures in 7 s while still"
    );
    assert_eq!(handle.status.borrow().state, CameraState::Streaming);
    while rx.try_recv().is_ok() {}

    let moved = Instant::now();
    server.set_pattern("ball");
    let first = loop {
        let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the moving picture is inferred")
            .unwrap();
        if r.frame.captured > moved {
            break r;
        }
    };
    eprintln!(
        "motion on a still camera inferred {:?} after it began",
        first.frame.captured.duration_since(moved)
    );
    until(Duration::from_secs(5), "full decoding again", || {
        slot.decode_demand() == DecodeDemand::Every
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = delivered(&pool, "still");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let moving_frames = delivered(&pool, "still") - before;
    // 10 fps when decoding every frame (at least 6 on a loaded machine), against 2 keyframes.
    assert!(
        moving_frames >= 6,
        "{moving_frames} pictures in 2 s while moving (10 fps)"
    );
    cancel.cancel();
    task.await.unwrap();
    assert_eq!(pool.shutdown(), 1);
}

/// The sample clip (2-8 people per frame) over the real RTSP path, through the real models (the
/// float NanoDet and its int8 variant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_clip_over_rtsp_finds_people() {
    common::init();
    for model in ["nanodet-coco-416", "nanodet-coco-416-int8"] {
        sample_clip_through(model).await;
    }
}

async fn sample_clip_through(model: &str) {
    let server = RtspTestServer::start(Source::SampleClip, Auth::None);
    let mut config = common::config(vec![camera(
        "clip",
        &server.url(),
        "detect_width = 640\ndetect_height = 480\ndetect_fps = 5",
    )]);
    config.detector.model =
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("models/{model}.toml")));
    config.detector.workers = 2;
    config.motion.enabled = false;
    let mut daemon = Daemon::builder(&config)
        .detections(Detections::Intercepted)
        .start()
        .await
        .unwrap();
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
        "{model}: {per_frame:.1} people per frame (a Python check finds about 5)"
    );
    let stats = daemon.pool().unwrap().stats("clip").unwrap();
    assert_eq!(stats.errors, 0, "{stats:?}");
    let report = daemon.shutdown(Duration::from_secs(5)).await;
    assert!(report.clean, "{report:?}");
}

/// [`until`] for plain threads.
fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Puts frames 1..=`n` of camera "cam" into `slot` one at a time, each waited for (inferred or
/// failed) for at most `each`.
fn one_by_one(pool: &DetectorPool, slot: &FrameSlot, n: u64, each: Duration) {
    for seq in 1..=n {
        slot.put(frame("cam", seq));
        let deadline = Instant::now() + each;
        loop {
            let s = pool.stats("cam").unwrap();
            if s.inferred + s.errors == seq {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "frame {seq} never processed: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
