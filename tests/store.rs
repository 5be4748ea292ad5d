//! The event store on a real sled database in temp dirs: queries by every filter, pagination,
//! retention, schema migration, refusal of foreign/corrupt/busy databases, and a process killed
//! with SIGKILL while writing.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kinderwatch::events::{Event, EventKind, EventObject};
use kinderwatch::perimeter::RecordedEvent;
use kinderwatch::store::keys;
use kinderwatch::store::{EventQuery, RetentionPolicy, Store, StoreConfig, StoreError};
use uuid::Uuid;

fn config() -> StoreConfig {
    StoreConfig {
        min_free_mb: 1,
        ..StoreConfig::default()
    }
}

fn event(kind: EventKind, camera: &str, rule: Option<&str>, time: Timestamp) -> RecordedEvent {
    let mut e = Event::new(kind, "site-1", camera, time);
    e.rule = rule.map(str::to_owned);
    if rule.is_some() {
        e.object = Some(EventObject {
            class: "person".into(),
            score: 0.8,
            bbox: kinderwatch::detect::BBox::new(0.1, 0.2, 0.3, 0.6),
            track_id: 7,
            crossing: None,
        });
    }
    RecordedEvent {
        event: e,
        snapshot: rule.map(|_| vec![0xff, 0xd8, 1, 2, 3, 0xff, 0xd9]),
    }
}

/// 1,200 events over 3 cameras ("gate" is a prefix of "gate-2" on purpose), 4 kinds, 2 rules,
/// one every 30 s starting 10 hours ago.
fn fill(store: &Store, outbox: bool) -> Vec<RecordedEvent> {
    let start = Timestamp::now() - SignedDuration::from_hours(10);
    let cams = ["gate", "gate-2", "yard"];
    let all: Vec<RecordedEvent> = (0..1200)
        .map(|i| {
            let t = start + SignedDuration::from_secs(30 * i as i64);
            match i % 4 {
                0 => event(EventKind::LineCrossed, cams[i % 3], Some("fence"), t),
                1 => event(EventKind::ZoneEntered, cams[i % 3], Some("sandbox"), t),
                2 => event(EventKind::Loitering, cams[i % 3], Some("sandbox"), t),
                _ => event(EventKind::CameraOffline, cams[i % 3], None, t),
            }
        })
        .collect();
    for chunk in all.chunks(50) {
        store.record(chunk, outbox).unwrap();
    }
    all
}

/// `n` crossings on "gate", a millisecond apart from now (in recording order).
fn crossings_now(n: i64) -> Vec<RecordedEvent> {
    (0..n)
        .map(|i| {
            event(
                EventKind::LineCrossed,
                "gate",
                Some("fence"),
                Timestamp::now() + SignedDuration::from_millis(i),
            )
        })
        .collect()
}

/// Every page of `q`, following cursors, as ids.
fn walk(store: &Store, mut q: EventQuery) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..10_000 {
        let page = store.query(&q).unwrap();
        assert!(page.events.len() <= q.limit);
        ids.extend(page.events.iter().map(|e| e.event.id));
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => return ids,
        }
    }
    panic!("pagination did not end");
}

#[test]
fn queries_filter_and_paginate_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config()).unwrap();
    let all = fill(&store, false);
    let newest_first = |pred: &dyn Fn(&Event) -> bool| -> Vec<Uuid> {
        let mut v: Vec<&Event> = all.iter().map(|r| &r.event).filter(|e| pred(e)).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.id));
        v.iter().map(|e| e.id).collect()
    };
    let from = all[300].event.time;
    let to = all[700].event.time;
    let cases: Vec<(EventQuery, Vec<Uuid>)> = vec![
        (EventQuery::default(), newest_first(&|_| true)),
        (
            EventQuery {
                camera: Some("gate".into()),
                ..Default::default()
            },
            newest_first(&|e| e.camera.as_deref() == Some("gate")),
        ),
        (
            EventQuery {
                kind: Some(EventKind::Loitering),
                ..Default::default()
            },
            newest_first(&|e| e.kind == EventKind::Loitering),
        ),
        (
            EventQuery {
                rule: Some("fence".into()),
                ..Default::default()
            },
            newest_first(&|e| e.rule.as_deref() == Some("fence")),
        ),
        (
            EventQuery {
                from: Some(from),
                to: Some(to),
                ..Default::default()
            },
            newest_first(&|e| e.time >= from && e.time < to),
        ),
        (
            EventQuery {
                camera: Some("gate-2".into()),
                kind: Some(EventKind::ZoneEntered),
                rule: Some("sandbox".into()),
                from: Some(from),
                to: Some(to),
                ..Default::default()
            },
            newest_first(&|e| {
                e.camera.as_deref() == Some("gate-2")
                    && e.kind == EventKind::ZoneEntered
                    && e.time >= from
                    && e.time < to
            }),
        ),
        (
            EventQuery {
                camera: Some("nowhere".into()),
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (q, expected) in cases {
        for limit in [1000, 100, 7] {
            let q = EventQuery { limit, ..q.clone() };
            let got = walk(&store, q.clone());
            let unique: HashSet<_> = got.iter().collect();
            assert_eq!(unique.len(), got.len(), "repeats for {q:?}");
            assert_eq!(got, expected, "query {q:?}");
        }
    }
    // Get by id, snapshot bytes, and stats.
    let e = &all[4];
    let stored = store.get(&e.event.id).unwrap().unwrap();
    assert_eq!(stored.event, e.event);
    assert_eq!(store.snapshot(&e.event.id).unwrap(), e.snapshot);
    assert!(store.get(&Uuid::now_v7()).unwrap().is_none());
    let stats = store.stats().unwrap();
    assert_eq!(stats.events, 1200);
    assert_eq!(
        stats.oldest,
        Some(keys::id_time(all[0].event.id.as_bytes()))
    );
    assert!(stats.disk_bytes > 0);
}

#[test]
fn pages_stay_consistent_while_new_events_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config()).unwrap();
    let all = fill(&store, false);
    let mut q = EventQuery {
        limit: 50,
        ..Default::default()
    };
    let first = store.query(&q).unwrap();
    // Newer events arrive between pages; the walk goes on from where it stopped.
    store
        .record(
            &[event(
                EventKind::LineCrossed,
                "gate",
                Some("fence"),
                Timestamp::now(),
            )],
            false,
        )
        .unwrap();
    let mut ids: Vec<Uuid> = first.events.iter().map(|e| e.event.id).collect();
    q.cursor = first.next_cursor;
    ids.extend(walk(&store, q));
    let mut expected: Vec<Uuid> = all.iter().map(|r| r.event.id).collect();
    expected.reverse();
    assert_eq!(ids, expected);
}

#[test]
fn retention_by_age_and_size_keeps_outbox_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config()).unwrap();
    let now = Timestamp::now();
    let days = |d: i64| now - SignedDuration::from_hours(24 * d);
    let old: Vec<RecordedEvent> = (0..20)
        .map(|i| {
            event(
                EventKind::LineCrossed,
                "gate",
                Some("fence"),
                days(40) + SignedDuration::from_secs(i),
            )
        })
        .collect();
    let recent: Vec<RecordedEvent> = (0..20)
        .map(|i| {
            event(
                EventKind::LineCrossed,
                "yard",
                Some("fence"),
                days(2) + SignedDuration::from_secs(i),
            )
        })
        .collect();
    store.record(&old[..15], false).unwrap();
    // Five old events still wait for the broker.
    store.record(&old[15..], true).unwrap();
    store.record(&recent, false).unwrap();
    let policy = RetentionPolicy {
        max_age: Some(Duration::from_secs(30 * 86_400)),
        max_bytes: None,
        audit_max_age: None,
    };
    let report = store.apply_retention(&policy, now).unwrap();
    assert_eq!(report.deleted_by_age, 15);
    assert_eq!(report.kept_for_outbox, 5);
    for r in &old[..15] {
        assert!(store.get(&r.event.id).unwrap().is_none());
        assert!(store.snapshot(&r.event.id).unwrap().is_none());
    }
    for r in old[15..].iter().chain(&recent) {
        assert!(store.get(&r.event.id).unwrap().is_some());
    }
    let by_camera = walk(
        &store,
        EventQuery {
            camera: Some("gate".into()),
            limit: 100,
            ..Default::default()
        },
    );
    assert_eq!(
        by_camera.len(),
        5,
        "camera index entries go with their events"
    );
    assert_eq!(store.stats().unwrap().events, 25);

    // By size: keep at most the bytes of ~10 events; the outbox entries stay regardless.
    let per_event = store.stats().unwrap().stored_bytes / 25;
    let policy = RetentionPolicy {
        max_age: None,
        max_bytes: Some(per_event * 10),
        audit_max_age: None,
    };
    let report = store.apply_retention(&policy, now).unwrap();
    assert_eq!(report.deleted_by_size, 15);
    let stats = store.stats().unwrap();
    assert_eq!(stats.events, 10);
    assert!(stats.stored_bytes <= per_event * 10 + per_event / 2);
    for r in &old[15..] {
        assert!(
            store.get(&r.event.id).unwrap().is_some(),
            "outbox entries are never deleted"
        );
    }
    // The newest five survive; the oldest of the recent ones went first.
    for r in &recent[15..] {
        assert!(store.get(&r.event.id).unwrap().is_some());
    }
    assert!(store.get(&recent[0].event.id).unwrap().is_none());
    // Once published, the old ones go too.
    for e in store.outbox_after(None, 100).unwrap() {
        store.outbox_remove(e.seq).unwrap();
    }
    let policy = RetentionPolicy {
        max_age: Some(Duration::from_secs(30 * 86_400)),
        max_bytes: None,
        audit_max_age: None,
    };
    assert_eq!(
        store.apply_retention(&policy, now).unwrap().deleted_by_age,
        5
    );
}

#[test]
fn outbox_is_in_recording_order_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<Uuid> = {
        let store = Store::open(dir.path(), &config()).unwrap();
        let events: Vec<RecordedEvent> = (0..30)
            .map(|_| {
                event(
                    EventKind::LineCrossed,
                    "gate",
                    Some("fence"),
                    Timestamp::now(),
                )
            })
            .collect();
        for chunk in events.chunks(7) {
            store.record(chunk, true).unwrap();
        }
        let first = store.outbox_after(None, 10).unwrap();
        for e in &first {
            store.outbox_remove(e.seq).unwrap();
        }
        store.flush().unwrap();
        events[10..].iter().map(|r| r.event.id).collect()
    };
    let store = Store::open(dir.path(), &config()).unwrap();
    assert_eq!(store.outbox_len(), 20);
    let left: Vec<Uuid> = store
        .outbox_after(None, 100)
        .unwrap()
        .iter()
        .map(|e| e.event.id)
        .collect();
    assert_eq!(left, ids);
    let seqs: Vec<u64> = store
        .outbox_after(None, 100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let after = store.outbox_after(Some(seqs[4]), 3).unwrap();
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs[5..8]);
}

/// Writes a database in the version-1 layout by hand (plain event JSON, a `camera_index` tree
/// keyed `camera ∥ 0 ∥ id`, no counters).
fn write_v1(dir: &Path, events: &[RecordedEvent]) {
    let db = sled::open(dir).unwrap();
    let meta = db.open_tree("meta").unwrap();
    meta.insert("format", "kinderwatch-events").unwrap();
    meta.insert("schema_version", &1u32.to_be_bytes()).unwrap();
    let ev = db.open_tree("events").unwrap();
    let snaps = db.open_tree("snapshots").unwrap();
    let index = db.open_tree("camera_index").unwrap();
    for r in events {
        let id = r.event.id.as_bytes();
        ev.insert(id, serde_json::to_vec(&r.event).unwrap())
            .unwrap();
        if let Some(s) = &r.snapshot {
            snaps.insert(id, s.as_slice()).unwrap();
        }
        let camera = r.event.camera.clone().unwrap();
        index
            .insert([camera.as_bytes(), &[0], id].concat(), &[])
            .unwrap();
    }
    db.flush().unwrap();
}

#[test]
fn a_version_1_database_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let start = Timestamp::now() - SignedDuration::from_hours(1);
    let events: Vec<RecordedEvent> = (0..40)
        .map(|i| {
            let cam = ["gate", "gate-2"][i % 2];
            event(
                EventKind::LineCrossed,
                cam,
                Some("fence"),
                start + SignedDuration::from_secs(i as i64),
            )
        })
        .collect();
    write_v1(dir.path(), &events);
    let store = Store::open(dir.path(), &config()).unwrap();
    let gate = walk(
        &store,
        EventQuery {
            camera: Some("gate".into()),
            limit: 10,
            ..Default::default()
        },
    );
    let mut expected: Vec<Uuid> = events
        .iter()
        .filter(|r| r.event.camera.as_deref() == Some("gate"))
        .map(|r| r.event.id)
        .collect();
    expected.reverse();
    assert_eq!(gate, expected);
    let stats = store.stats().unwrap();
    assert_eq!(stats.events, 40);
    assert!(stats.stored_bytes > 40 * 100);
    let e = store.get(&events[3].event.id).unwrap().unwrap();
    assert_eq!(e.event, events[3].event);
    assert_eq!(e.snapshot_len, events[3].snapshot.as_ref().unwrap().len());
    drop(store);
    // Reopening is a no-op, and version 3 is what is on disk now.
    let db = sled::open(dir.path()).unwrap();
    let v = db
        .open_tree("meta")
        .unwrap()
        .get("schema_version")
        .unwrap()
        .unwrap();
    assert_eq!(v.as_ref(), &3u32.to_be_bytes());
    assert!(
        !db.tree_names()
            .iter()
            .any(|n| n.as_ref() == b"camera_index")
    );
}

#[test]
fn foreign_corrupt_busy_and_newer_databases_are_refused_with_reasons() {
    // A directory with someone else's files.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let e = Store::open(dir.path(), &config()).err().expect("refused");
    assert!(matches!(e, StoreError::Foreign { .. }), "{e}");
    assert!(
        e.to_string().contains("not a kinderwatch event database"),
        "{e}"
    );

    // Someone else's sled database.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert("hello", "world").unwrap();
        db.flush().unwrap();
    }
    let e = Store::open(dir.path(), &config()).err().expect("refused");
    assert!(matches!(e, StoreError::Foreign { .. }), "{e}");

    // Ours, in use by another handle (the daemon).
    let dir = tempfile::tempdir().unwrap();
    let open = Store::open(dir.path(), &config()).unwrap();
    let e = Store::open(dir.path(), &config()).err().expect("refused");
    assert!(matches!(e, StoreError::InUse { .. }), "{e}");
    assert!(e.to_string().contains("is the daemon running"), "{e}");
    drop(open);

    // Written by a newer kinderwatch.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("format", "kinderwatch-events").unwrap();
        meta.insert("schema_version", &9u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let e = Store::open(dir.path(), &config()).err().expect("refused");
    assert!(matches!(e, StoreError::NewerSchema { found: 9, .. }), "{e}");

    // Corrupt: garbage over the log.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), &config()).unwrap();
        fill(&store, false);
    }
    let db_file = dir.path().join("db");
    let mut bytes = std::fs::read(&db_file).unwrap();
    for b in bytes.iter_mut().take(64 * 1024) {
        *b = 0xff;
    }
    std::fs::write(&db_file, bytes).unwrap();
    let e = Store::open(dir.path(), &config()).err().expect("refused");
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("move it aside"), "{e}");
}

/// The child side of the SIGKILL test: writes batches as fast as it can and prints each id once
/// `record` returned (recorded = flushed). Runs only when the parent sets KW_STORE_CHILD.
#[test]
#[ignore = "run by sigkill_during_writes_loses_no_recorded_event"]
fn sigkill_child_writer() {
    let Some(dir) = std::env::var_os("KW_STORE_CHILD") else {
        return;
    };
    let store = Store::open(Path::new(&dir), &config()).unwrap();
    let snapshot = vec![0x5a; 50_000];
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        let batch: Vec<RecordedEvent> = (0..1 + n % 8)
            .map(|_| {
                let mut r = event(
                    EventKind::LineCrossed,
                    "gate",
                    Some("fence"),
                    Timestamp::now(),
                );
                r.snapshot = Some(snapshot.clone());
                r
            })
            .collect();
        store.record(&batch, true).unwrap();
        for r in &batch {
            use std::io::Write;
            writeln!(out, "recorded {}", r.event.id).unwrap();
        }
        use std::io::Write;
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_during_writes_loses_no_recorded_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<Uuid> = Vec::new();
    for round in 0..4u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KW_STORE_CHILD", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut ids = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("recorded ") {
                    // A line cut by the kill does not parse and does not count.
                    if let Ok(id) = Uuid::try_parse(id) {
                        ids.push(id);
                    }
                }
            }
            ids
        });
        // Kill at a different moment each round, mid-write.
        let wait = 400 + (round * 373 + rand_ms()) % 900;
        std::thread::sleep(Duration::from_millis(wait));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let ids = reader.join().unwrap();
        assert!(
            !ids.is_empty(),
            "round {round}: the child recorded nothing in {wait} ms"
        );
        acknowledged.extend(ids);
        // The database opens, and every acknowledged event is there with its snapshot.
        let store = Store::open(dir.path(), &config())
            .unwrap_or_else(|e| panic!("round {round}: database does not open after SIGKILL: {e}"));
        for id in &acknowledged {
            let e = store.get(id).unwrap();
            assert!(e.is_some(), "round {round}: acknowledged event {id} lost");
            assert_eq!(store.snapshot(id).unwrap().map(|s| s.len()), Some(50_000));
        }
        let in_outbox: HashSet<Uuid> = store
            .outbox_after(None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| e.event.id)
            .collect();
        assert!(
            acknowledged.iter().all(|id| in_outbox.contains(id)),
            "round {round}: outbox entry lost"
        );
    }
    eprintln!(
        "{} acknowledged events survived 4 SIGKILLs",
        acknowledged.len()
    );
}

fn rand_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        % 997
}

#[test]
fn retention_running_while_events_are_recorded_during_an_outage_never_deletes_a_waiting_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config()).unwrap();
    // A limit far below what is written: retention deletes everything it is allowed to, all the
    // time, while the broker is "down" (nothing leaves the outbox).
    let policy = RetentionPolicy {
        max_age: Some(Duration::from_secs(3600)),
        max_bytes: Some(2_000),
        audit_max_age: None,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let retention = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = 0u64;
            let mut deleted = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = store.apply_retention(&policy, Timestamp::now()).unwrap();
                deleted += r.deleted_by_age + r.deleted_by_size;
                runs += 1;
            }
            (runs, deleted)
        })
    };
    let old = Timestamp::now() - SignedDuration::from_hours(2);
    let mut waiting = Vec::new();
    for round in 0..200 {
        // Alerts (outbox) and, between them, old events recorded without the outbox (as when
        // MQTT is off for a while): retention may take the latter, never the former.
        let alerts: Vec<RecordedEvent> = (0..5)
            .map(|_| {
                event(
                    EventKind::LineCrossed,
                    "gate",
                    Some("fence"),
                    Timestamp::now(),
                )
            })
            .collect();
        let filler: Vec<RecordedEvent> = (0..5)
            .map(|i| {
                event(
                    EventKind::CameraOffline,
                    "yard",
                    None,
                    old + SignedDuration::from_millis(round * 10 + i),
                )
            })
            .collect();
        store.record(&alerts, true).unwrap();
        store.record(&filler, false).unwrap();
        waiting.extend(alerts.iter().map(|r| r.event.id));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (runs, deleted) = retention.join().unwrap();
    assert!(
        runs > 10 && deleted > 0,
        "retention ran {runs} times, deleted {deleted}"
    );
    let entries = store.outbox_after(None, 10_000).unwrap();
    let in_outbox: HashSet<Uuid> = entries.iter().map(|e| e.event.id).collect();
    assert_eq!(
        in_outbox.len(),
        waiting.len(),
        "every alert still waits with its event"
    );
    for id in &waiting {
        assert!(
            store.get(id).unwrap().is_some(),
            "event {id} deleted while waiting"
        );
        assert!(store.snapshot(id).unwrap().is_some());
    }
    // The counters agree with what is there.
    let stats = store.stats().unwrap();
    let mut count = 0;
    let mut q = EventQuery {
        limit: 1000,
        ..Default::default()
    };
    loop {
        let page = store.query(&q).unwrap();
        count += page.events.len() as u64;
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(stats.events, count);
    eprintln!(
        "store: 1000 alerts and 1000 other events recorded while retention ran {runs} times (deleting {deleted}); 0 waiting alerts lost"
    );
}

#[test]
fn a_retried_write_is_idempotent_by_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config()).unwrap();
    let batch: Vec<RecordedEvent> = crossings_now(10);
    store.record(&batch, true).unwrap();
    let before = store.stats().unwrap();
    // The recorder retries a batch whose flush failed after its transaction committed.
    store.record(&batch, true).unwrap();
    store.record(&batch[3..7], true).unwrap();
    let after = store.stats().unwrap();
    assert_eq!(after.events, before.events);
    assert_eq!(after.stored_bytes, before.stored_bytes);
    assert_eq!(store.outbox_len(), 10, "no second outbox entry");
}

/// Overwrites the stored value of event `id` with bytes that do not decode.
fn corrupt_event(dir: &Path, id: &Uuid) {
    let db = sled::open(dir).unwrap();
    db.open_tree("events")
        .unwrap()
        .insert(id.as_bytes(), &b"\x02\0\0\0\0{not json"[..])
        .unwrap();
    db.flush().unwrap();
}

#[test]
fn an_undecodable_record_is_skipped_counted_and_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<RecordedEvent> = crossings_now(6);
    {
        let store = Store::open(dir.path(), &config()).unwrap();
        store.record(&events, true).unwrap();
    }
    let bad = events[2].event.id;
    corrupt_event(dir.path(), &bad);
    let store = Store::open(dir.path(), &config()).unwrap();
    // The outbox read goes past it; it becomes a dead letter.
    let entries = store.outbox_after(None, 100).unwrap();
    let ids: Vec<Uuid> = entries.iter().map(|e| e.event.id).collect();
    let want: Vec<Uuid> = events
        .iter()
        .map(|r| r.event.id)
        .filter(|id| *id != bad)
        .collect();
    assert_eq!(ids, want);
    let letters = store.dead_letters(10).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event_id, bad);
    assert_eq!(
        letters[0].reason,
        kinderwatch::store::DeadLetterReason::Unreadable
    );
    assert!(letters[0].detail.contains("does not decode"), "{letters:?}");
    // A history page that holds it: the others, and the count of what was skipped.
    for camera in [None, Some("gate".to_owned())] {
        let page = store
            .query(&EventQuery {
                camera: camera.clone(),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.events.len(), 5, "camera {camera:?}");
        assert_eq!(page.skipped_undecodable, 1);
    }
    // Retention is not stopped by it either.
    let report = store
        .apply_retention(
            &RetentionPolicy {
                max_age: None,
                max_bytes: Some(1),
                audit_max_age: None,
            },
            Timestamp::now(),
        )
        .unwrap();
    assert_eq!(report.kept_for_outbox, 6, "5 in the outbox, 1 dead letter");
}

#[test]
fn dead_letters_are_requeued_at_the_end_of_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config()).unwrap();
    let events: Vec<RecordedEvent> = crossings_now(5);
    store.record(&events, true).unwrap();
    let seqs: Vec<u64> = store
        .outbox_after(None, 10)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    let d = store
        .dead_letter(
            seqs[1],
            kinderwatch::store::DeadLetterReason::Refused,
            "NotAuthorized",
            5,
        )
        .unwrap()
        .expect("moved");
    assert_eq!(d.event_id, events[1].event.id);
    assert!(
        store
            .dead_letter(
                seqs[1],
                kinderwatch::store::DeadLetterReason::Refused,
                "",
                1
            )
            .unwrap()
            .is_none(),
        "only once"
    );
    assert_eq!(store.outbox_len(), 4);
    assert!(store.awaits_delivery(&events[1].event.id).unwrap());
    // Removing a later entry's outbox entry after acknowledgement does not touch the letter.
    store.outbox_remove(seqs[0]).unwrap();
    assert!(!store.awaits_delivery(&events[0].event.id).unwrap());
    // Survives a reopen.
    drop(store);
    let store = Store::open(dir.path(), &config()).unwrap();
    assert_eq!(store.dead_letter_len(), 1);
    assert!(store.requeue(&events[1].event.id).unwrap());
    assert!(!store.requeue(&events[1].event.id).unwrap(), "only once");
    let after: Vec<(u64, Uuid)> = store
        .outbox_after(None, 10)
        .unwrap()
        .iter()
        .map(|e| (e.seq, e.event.id))
        .collect();
    assert_eq!(after.len(), 4);
    assert_eq!(after.last().unwrap().1, events[1].event.id, "at the end");
    assert!(after.last().unwrap().0 > seqs[4]);
    assert_eq!(store.dead_letter_len(), 0);
}

#[test]
fn a_version_2_database_gets_its_outbox_index() {
    let dir = tempfile::tempdir().unwrap();
    let old = Timestamp::now() - SignedDuration::from_hours(24 * 60);
    let events: Vec<RecordedEvent> = (0..8)
        .map(|i| {
            event(
                EventKind::LineCrossed,
                "gate",
                Some("fence"),
                old + SignedDuration::from_secs(i),
            )
        })
        .collect();
    {
        let store = Store::open(dir.path(), &config()).unwrap();
        store.record(&events[..4], true).unwrap();
        store.record(&events[4..], false).unwrap();
    }
    // What version 2 had on disk: the outbox without its index.
    {
        let db = sled::open(dir.path()).unwrap();
        db.drop_tree("outbox_index").unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &2u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(dir.path(), &config()).unwrap();
    let report = store
        .apply_retention(
            &RetentionPolicy {
                max_age: Some(Duration::from_secs(86_400)),
                max_bytes: None,
                audit_max_age: None,
            },
            Timestamp::now(),
        )
        .unwrap();
    assert_eq!(report.deleted_by_age, 4);
    assert_eq!(
        report.kept_for_outbox, 4,
        "the migrated index protects them"
    );
    for r in &events[..4] {
        assert!(store.awaits_delivery(&r.event.id).unwrap());
    }
}

#[test]
fn the_audit_trail_pages_filters_and_has_its_own_retention() {
    use kinderwatch::store::audit::{AuditAction, AuditRecord};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config()).unwrap();
    for n in 0..30 {
        let mut r = AuditRecord::new(
            "http",
            if n % 3 == 0 { "ops" } else { "center" },
            AuditAction::ReadSnapshot,
            format!("event-{n}"),
        );
        if n == 29 {
            r.result = "not_found".into();
        }
        store.audit(&r).unwrap();
    }
    let mut q = kinderwatch::store::AuditQuery {
        limit: 7,
        ..Default::default()
    };
    let mut all = Vec::new();
    loop {
        let (page, next) = store.audit_query(&q).unwrap();
        assert!(page.len() <= 7);
        all.extend(page);
        match next {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(all.len(), 30);
    assert_eq!(all[0].target, "event-29", "newest first");
    assert_eq!(all[0].result, "not_found");
    let ids: HashSet<Uuid> = all.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 30);
    let (ops, _) = store
        .audit_query(&kinderwatch::store::AuditQuery {
            caller: Some("ops".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ops.len(), 10);
    // Its own retention: 400 days on, a 365-day policy deletes them; events are untouched.
    let later = Timestamp::now() + SignedDuration::from_hours(24 * 400);
    let policy = RetentionPolicy::from_config(&config());
    assert_eq!(
        policy.audit_max_age,
        Some(Duration::from_secs(365 * 86_400))
    );
    let report = store
        .apply_retention(
            &RetentionPolicy {
                max_age: None,
                max_bytes: None,
                audit_max_age: policy.audit_max_age,
            },
            later,
        )
        .unwrap();
    assert_eq!(report.audit_deleted, 30);
    assert_eq!(store.audit_len(), 0);
}

#[test]
fn an_index_entry_left_by_a_crash_does_not_keep_a_delivered_event_forever() {
    let dir = tempfile::tempdir().unwrap();
    let old = Timestamp::now() - SignedDuration::from_hours(24 * 60);
    let e = event(EventKind::LineCrossed, "gate", Some("fence"), old);
    {
        let store = Store::open(dir.path(), &config()).unwrap();
        store.record(std::slice::from_ref(&e), true).unwrap();
    }
    // The crash: the outbox entry was removed (PUBACK), its index entry not yet.
    {
        let db = sled::open(dir.path()).unwrap();
        let outbox = db.open_tree("outbox").unwrap();
        let (seq, _) = outbox.first().unwrap().unwrap();
        outbox.remove(seq).unwrap();
        assert_eq!(db.open_tree("outbox_index").unwrap().len(), 1);
        db.flush().unwrap();
    }
    let store = Store::open(dir.path(), &config()).unwrap();
    assert!(!store.awaits_delivery(&e.event.id).unwrap());
    let report = store
        .apply_retention(
            &RetentionPolicy {
                max_age: Some(Duration::from_secs(86_400)),
                max_bytes: None,
                audit_max_age: None,
            },
            Timestamp::now(),
        )
        .unwrap();
    assert_eq!((report.deleted_by_age, report.kept_for_outbox), (1, 0));
}

#[test]
fn a_reader_following_the_outbox_sees_every_entry_while_records_and_requeues_race() {
    // What the publisher does: read after the last sequence it saw. Sequences must commit in
    // order, or an entry committed late behind a higher one is passed over.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &config()).unwrap();
    let first: Vec<RecordedEvent> = crossings_now(200);
    store.record(&first, true).unwrap();
    let entries = store.outbox_after(None, 1000).unwrap();
    for e in &entries {
        store
            .dead_letter(e.seq, kinderwatch::store::DeadLetterReason::Refused, "", 5)
            .unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = HashSet::new();
            let mut last = None;
            loop {
                let done = stop.load(std::sync::atomic::Ordering::SeqCst);
                for e in store.outbox_after(last, 1000).unwrap() {
                    last = Some(e.seq);
                    seen.insert(e.event.id);
                }
                if done {
                    return seen;
                }
            }
        })
    };
    let requeuer = {
        let store = store.clone();
        let ids: Vec<Uuid> = first.iter().map(|r| r.event.id).collect();
        std::thread::spawn(move || {
            for id in ids {
                assert!(store.requeue(&id).unwrap());
            }
        })
    };
    let mut recorded: Vec<Uuid> = first.iter().map(|r| r.event.id).collect();
    for _ in 0..100 {
        let batch: Vec<RecordedEvent> = (0..2)
            .map(|_| {
                event(
                    EventKind::LineCrossed,
                    "yard",
                    Some("fence"),
                    Timestamp::now(),
                )
            })
            .collect();
        recorded.extend(batch.iter().map(|r| r.event.id));
        store.record(&batch, true).unwrap();
    }
    requeuer.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.join().unwrap();
    let missed: Vec<&Uuid> = recorded.iter().filter(|id| !seen.contains(id)).collect();
    assert!(
        missed.is_empty(),
        "the reader passed over {} entries",
        missed.len()
    );
}
