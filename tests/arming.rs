//! Run-time arming through the rule command channel, saved in the state directory so that it
//! survives a restart of the daemon (built through its stage graph: the rules, the recorder and
//! the store; detections from the test).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use kinderwatch::app::{Daemon, Detections, Synthetic};
use kinderwatch::detect::FrameDetections;
use kinderwatch::events::EventKind;
use kinderwatch::perimeter::{RuleCommand, SetArmedError};
use kinderwatch::store::query::EventQuery;
use kinderwatch::store::{Store, StoreConfig, StoredEvent};
use tokio::sync::{mpsc, oneshot};

mod common;

struct Stage {
    daemon: Daemon,
    detections: mpsc::Sender<FrameDetections>,
    commands: mpsc::Sender<RuleCommand>,
    store: Store,
}

/// The daemon with its state (store and arming) in `state_dir`.
async fn start(state_dir: &Path, store: &Store) -> Stage {
    let mut config = (*common::fence_config()).clone();
    config.state.dir = state_dir.to_owned();
    config.store.min_free_mb = 1;
    let mut daemon = Daemon::builder(&config)
        .frames(Synthetic::new(|_, _| None))
        .detections(Detections::Caller)
        .store(store.clone())
        .start()
        .await
        .unwrap();
    Stage {
        detections: daemon.take_detections_input().unwrap(),
        commands: daemon.rule_commands(),
        store: store.clone(),
        daemon,
    }
}

fn crossings(store: &Store) -> Vec<StoredEvent> {
    store
        .query(&EventQuery {
            kind: Some(EventKind::LineCrossed),
            limit: 100,
            ..EventQuery::default()
        })
        .unwrap()
        .events
}

/// A person walking down across the line (one frame per 200 ms), from `t0`: the crossings it
/// recorded (waited for up to 5 s; 1.5 s when none comes).
async fn walk(stage: &mut Stage, t0: SystemTime) -> Vec<StoredEvent> {
    let before = crossings(&stage.store).len();
    for d in common::walk_down(t0) {
        stage.detections.send(d).await.unwrap();
    }
    let started = Instant::now();
    loop {
        let now = crossings(&stage.store);
        let waited = started.elapsed();
        if (now.len() > before && waited > Duration::from_millis(300))
            || waited > Duration::from_secs(5)
            || (now.len() == before && waited > Duration::from_millis(1500))
        {
            // Newest first.
            return now[..now.len() - before].to_vec();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_armed(stage: &Stage, rule: &str, armed: bool) -> Result<(), SetArmedError> {
    let (reply, rx) = oneshot::channel();
    stage
        .commands
        .send(RuleCommand::SetArmed {
            rule: rule.into(),
            armed,
            reply,
        })
        .await
        .unwrap();
    rx.await.unwrap()
}

async fn armed(stage: &Stage) -> bool {
    let (reply, rx) = oneshot::channel();
    stage
        .commands
        .send(RuleCommand::List { reply })
        .await
        .unwrap();
    let list = rx.await.unwrap();
    assert_eq!(list.len(), 1);
    list[0].armed
}

#[tokio::test]
async fn disarming_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("events.db"),
        &StoreConfig {
            min_free_mb: 1,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let t0 = SystemTime::now();
    let mut stage = start(dir.path(), &store).await;
    assert!(armed(&stage).await);
    let events = walk(&mut stage, t0).await;
    assert_eq!(events.len(), 1, "armed: one crossing");
    assert_eq!(events[0].event.kind, EventKind::LineCrossed);

    set_armed(&stage, "fence", false).await.unwrap();
    let unknown = set_armed(&stage, "no-such-rule", false).await.unwrap_err();
    assert!(
        matches!(&unknown, SetArmedError::NoSuchRule(r) if r == "no-such-rule"),
        "{unknown:?}"
    );
    assert_eq!(unknown.to_string(), "no rule \"no-such-rule\"");
    assert!(!armed(&stage).await);
    assert!(
        walk(&mut stage, t0 + Duration::from_secs(60))
            .await
            .is_empty(),
        "disarmed: silent"
    );
    let report = stage.daemon.shutdown(Duration::from_secs(5)).await;
    assert!(report.clean, "{report:?}");

    // The restarted daemon reads the choice back.
    let mut stage = start(dir.path(), &store).await;
    assert!(!armed(&stage).await, "still disarmed after the restart");
    assert!(
        walk(&mut stage, t0 + Duration::from_secs(120))
            .await
            .is_empty()
    );
    set_armed(&stage, "fence", true).await.unwrap();
    assert_eq!(
        walk(&mut stage, t0 + Duration::from_secs(180)).await.len(),
        1
    );
    assert!(dir.path().join("arming.json").is_file());
    // The two armed walks' crossings and nothing of the three silent ones, however late.
    stage.daemon.shutdown(Duration::from_secs(5)).await;
    assert_eq!(crossings(&store).len(), 2);
}
