//! Supervision under injected faults (a test build: `--features failpoints`): a stage blocked for
//! good stops the systemd watchdog feed and is named in the log and `/healthz`; a store write that
//! stalls sends its events out live and the recorder resumes once it returns, with pending events
//! bounded by bytes; a write that never returns stops the daemon with an error for systemd to
//! restart it; a snapshot slow to encode holds up no other camera's event.
//!
//! The daemon runs as the real binary with `NOTIFY_SOCKET`/`WATCHDOG_USEC` pointing at a socket of
//! the test's; the recorder tests run in process and take turns (fail points are process-wide:
//! `FailScenario` holds a lock for its test).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::daemon::{RunningDaemon, free_port, http_get};

use kinderwatch::events::{Event, EventKind};
use kinderwatch::store::{EventQuery, Store, StoreConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A disabled camera has no supervisor, so no status ever comes from it: its state log waits
/// for the stop instead of ending (it once ended at once, and the daemon, counting it as a task
/// that ended on its own, stopped feeding the watchdog: systemd would restart a healthy site).
#[test]
fn a_disabled_camera_keeps_the_watchdog_fed() {
    let config = format!(
        r#"
[site]
id = "kg-7"
[state]
dir = "{{state}}"
[api]
enabled = false
[[cameras]]
id = "gate"
url = "rtsp://127.0.0.1:{dead}/nothing-listens"
[[cameras]]
id = "hall"
url = "rtsp://127.0.0.1:{dead}/hall"
enabled = false
"#,
        dead = free_port()
    );
    let daemon = RunningDaemon::start(&config, "");
    daemon.wait_log(
        &["camera disabled in the config", "hall"],
        Duration::from_secs(20),
    );
    daemon.notifications(Duration::from_secs(2));
    let later = daemon.notifications(Duration::from_secs(3));
    let fed = later.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(fed >= 2, "the watchdog is fed: {later:?}");
    assert!(
        !daemon.logs().contains("ended on its own"),
        "{}",
        daemon.logs()
    );
}

/// One camera supervisor blocks for good (on a runtime worker, as a GStreamer call that never
/// returns would): the watchdog is fed while every stage makes progress, and not once after the
/// stage passes its deadline; the log, `/healthz` (503, `failing`) and the stage list name it.
#[test]
fn a_stage_that_stops_making_progress_stops_the_watchdog_feed_and_is_named() {
    let api = free_port();
    let config = format!(
        r#"
[site]
id = "kg-7"
[supervision]
stage_deadline = "3s"
[state]
dir = "{{state}}"
[api]
listen = "127.0.0.1:{api}"
[[cameras]]
id = "gate"
url = "rtsp://127.0.0.1:{dead}/nothing-listens"
[[cameras]]
id = "yard"
url = "rtsp://127.0.0.1:{dead}/nothing-listens-either"
"#,
        dead = free_port()
    );
    let daemon = RunningDaemon::start(&config, "stage_stall=return(camera/gate@4s)");
    // Healthy at first: READY=1, then the watchdog fed about twice a second.
    let early = daemon.notifications(Duration::from_secs(3));
    assert!(
        daemon
            .all_notifications()
            .iter()
            .any(|m| m.contains("READY=1")),
        "{:?}",
        daemon.all_notifications()
    );
    let fed = early.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(
        fed >= 2,
        "the watchdog was not fed while healthy: {early:?}"
    );
    let (code, body) = http_get(api, "/healthz");
    assert_eq!(code, 200, "{body}");

    // The stage stalls at 4 s and is stuck 3 s later.
    let line = daemon.wait_log(&["stage stuck", "camera/gate"], Duration::from_secs(20));
    assert!(line.contains("ERROR"), "{line}");
    // Whatever was sent before the verdict is drained; after it, not one feed.
    daemon.notifications(Duration::from_millis(300));
    let late = daemon.notifications(Duration::from_secs(3));
    assert!(
        !late.iter().any(|m| m.contains("WATCHDOG=1")),
        "the watchdog was fed while a stage was stuck: {late:?}"
    );
    let (code, body) = http_get(api, "/healthz");
    assert_eq!(code, 503, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "failing", "{body}");
    let stuck = health["stages"]["stuck"].as_array().unwrap();
    assert_eq!(stuck.len(), 1, "{body}");
    assert_eq!(stuck[0]["stage"], "camera/gate", "{body}");
    // The other camera, the recorder, the API and the main loop are all watched and fine.
    assert!(health["stages"]["total"].as_u64().unwrap() >= 5, "{body}");
    assert!(
        !daemon.logs().contains("stage=camera/yard"),
        "only the blocked stage is named"
    );
}

/// A write that never returns: the events go out live (here: nowhere, no MQTT) and after
/// `write_stall_exit` the daemon stops with an error naming the wedged write, so that systemd
/// (Restart=always) starts it afresh; the events it could not store are counted in the log.
#[test]
fn a_write_that_never_returns_stops_the_daemon_with_an_error() {
    let config = format!(
        r#"
[site]
id = "kg-7"
[state]
dir = "{{state}}"
[store]
write_timeout = "500ms"
write_stall_exit = "3s"
[health]
offline_grace = "1s"
[api]
enabled = false
[[cameras]]
id = "gate"
url = "rtsp://127.0.0.1:{}/nothing-listens"
"#,
        free_port()
    );
    // The first write (the camera_offline event) sleeps for ten minutes.
    let mut daemon = RunningDaemon::start(&config, "store_record=sleep(600000)");
    daemon.wait_log(&["event store cannot write"], Duration::from_secs(20));
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "{status:?}");
    let logs = daemon.logs();
    assert!(
        logs.contains("has not returned after 3s") && logs.contains("systemd"),
        "{logs}"
    );
    assert!(
        logs.contains("stopping with events the store could not write"),
        "{logs}"
    );
}

use common::recorder::{event, start};

fn stored_numbers(store: &Store) -> Vec<usize> {
    let page = store
        .query(&EventQuery {
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    let mut n: Vec<usize> = page
        .events
        .iter()
        .filter_map(|e| e.event.detail.as_deref()?.strip_prefix("n=")?.parse().ok())
        .collect();
    n.sort();
    n
}

fn store_config(dir: &Path) -> (Store, StoreConfig) {
    let config = StoreConfig {
        min_free_mb: 1,
        write_timeout: Duration::from_millis(300),
        ..StoreConfig::default()
    };
    (Store::open(dir, &config).unwrap(), config)
}

/// The first write sleeps 3 s: past `write_timeout` the store is failing and the stalled batch
/// goes out live together with what waits behind it; when the write returns the recorder goes on,
/// and every event is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_write_goes_out_live_and_the_recorder_resumes() {
    let scenario = fail::FailScenario::setup();
    fail::cfg("store_record", "1*sleep(3000)").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (store, config) = store_config(dir.path());
    let mut r = start(&store, config);
    r.tx.send(event(0, 4)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in 1..5 {
        r.tx.send(event(n, 4)).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), r.status.wait_for(|s| !s.is_ok()))
        .await
        .expect("the stalled write marks the store failing")
        .unwrap();
    // Everything, the stalled batch first, goes out live at once.
    let mut live = Vec::new();
    while live.len() < 6 {
        let e = tokio::time::timeout(Duration::from_secs(5), r.live.recv())
            .await
            .expect("live events while the write stalls")
            .unwrap();
        live.push(e.event);
    }
    let detail = |e: &Event| e.detail.clone().unwrap_or_default();
    assert_eq!(detail(&live[0]), "n=0", "the stalled batch first: {live:?}");
    assert!(live.iter().any(|e| e.kind == EventKind::StorageFailed));
    for n in 0..5 {
        assert!(
            live.iter().any(|e| detail(e) == format!("n={n}")),
            "event {n} not sent live: {live:?}"
        );
    }
    // The write returns; the recorder resumes and writes the rest.
    tokio::time::timeout(Duration::from_secs(10), r.status.wait_for(|s| s.is_ok()))
        .await
        .expect("the store recovers once the write returns")
        .unwrap();
    let s = store.clone();
    common::poll_until(Duration::from_secs(10), "all events stored", move || {
        stored_numbers(&s).len() == 5
    })
    .await;
    assert_eq!(stored_numbers(&store), (0..5).collect::<Vec<_>>());
    r.cancel.cancel();
    r.task.await.unwrap().unwrap();
    let kinds: Vec<EventKind> = store
        .query(&EventQuery {
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .events
        .iter()
        .map(|e| e.event.kind)
        .collect();
    assert!(kinds.contains(&EventKind::StorageFailed), "{kinds:?}");
    assert!(kinds.contains(&EventKind::StorageRecovered), "{kinds:?}");
    scenario.teardown();
}

/// While a write stalls, events wait in memory up to `max_pending_mb` (snapshots counted): the
/// oldest beyond it are lost and counted, the newest kept, and nothing vanishes uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_events_are_bounded_by_bytes_while_a_write_stalls() {
    common::init();
    let scenario = fail::FailScenario::setup();
    fail::cfg("store_record", "1*sleep(4000)").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (store, mut config) = store_config(dir.path());
    config.max_pending_mb = 1;
    let lost_before = common::counter(
        "kinderwatch_store_events_lost_total",
        &[("reason", "pending_full")],
    );
    let r = start(&store, config);
    r.tx.send(event(0, 0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // 30 events of 100 KB behind the stalled write: about 3 MB for a bound of 1 MB.
    for n in 1..=30 {
        r.tx.send(event(n, 100)).await.unwrap();
    }
    let s = store.clone();
    common::poll_until(Duration::from_secs(20), "the stall over", move || {
        stored_numbers(&s).contains(&30)
    })
    .await;
    let lost = common::counter(
        "kinderwatch_store_events_lost_total",
        &[("reason", "pending_full")],
    ) - lost_before;
    let stored = stored_numbers(&store);
    assert!(
        (15..=25).contains(&lost),
        "about 2 MB of the 3 lost: {lost}"
    );
    assert_eq!(
        stored.len() as u64 + lost,
        31,
        "every event stored or counted lost: {stored:?}, {lost} lost"
    );
    assert!(stored.contains(&0), "the stalled batch is stored");
    // The oldest were dropped, the newest kept.
    let kept: Vec<usize> = stored.iter().copied().filter(|n| *n > 0).collect();
    assert_eq!(
        kept,
        ((31 - kept.len())..=30).collect::<Vec<_>>(),
        "the newest kept"
    );
    r.cancel.cancel();
    r.task.await.unwrap().unwrap();
    scenario.teardown();
}

/// Snapshot encoding is off the rules loop: while one camera's picture takes 3 s to encode, the
/// other camera's frames are analysed and its event goes out first; the slow one still comes,
/// with its picture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_snapshot_does_not_hold_up_another_cameras_event() {
    use kinderwatch::config::Config;
    use kinderwatch::perimeter::{self, PerimeterIo};
    let scenario = fail::FailScenario::setup();
    fail::cfg("snapshot_render", "1*sleep(3000)").unwrap();
    let text = r#"
[site]
id = "kg-7"
[[cameras]]
id = "gate"
url = "rtsp://127.0.0.1/x"
[[cameras]]
id = "yard"
url = "rtsp://127.0.0.1/y"
[[rules]]
id = "fence-gate"
camera = "gate"
kind = "tripwire"
line = [[0.0, 0.5], [1.0, 0.5]]
cooldown = "0s"
[[rules]]
id = "fence-yard"
camera = "yard"
kind = "tripwire"
line = [[0.0, 0.5], [1.0, 0.5]]
cooldown = "0s"
"#;
    let config = Arc::new(Config::from_toml(text, Path::new("two.toml"), Path::new(".")).unwrap());
    let (tx, rx) = mpsc::channel(100);
    let (events_tx, mut events) = mpsc::channel(100);
    let io = PerimeterIo {
        live_tracks: Default::default(),
        events: events_tx,
        summary: None,
        commands: None,
        arming: None,
        progress: None,
        reload: None,
    };
    let cancel = CancellationToken::new();
    let stage = tokio::spawn(perimeter::run(
        perimeter::StageRules::from_config(&config).unwrap(),
        rx,
        io,
        cancel.clone(),
    ));
    let t0 = std::time::SystemTime::now();
    // The gate's walker crosses first (its picture is the slow one), then the yard's.
    for r in common::walk_down(t0) {
        tx.send(r).await.unwrap();
    }
    // The gate's encode is under way (asleep in the fail point) before the yard's frames come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for mut r in common::walk_down(t0 + Duration::from_secs(5)) {
        let mut frame = (*r.frame).clone();
        frame.camera = "yard".into();
        r.frame = Arc::new(frame);
        tx.send(r).await.unwrap();
    }
    let first = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event")
        .unwrap();
    assert_eq!(
        first.event.camera.as_deref(),
        Some("yard"),
        "the yard's event waited for the gate's snapshot"
    );
    assert!(first.snapshot.is_some());
    let second = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("the slow event")
        .unwrap();
    assert_eq!(second.event.camera.as_deref(), Some("gate"));
    let jpeg = second.snapshot.expect("the slow event keeps its picture");
    assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
    cancel.cancel();
    stage.await.unwrap();
    scenario.teardown();
}
