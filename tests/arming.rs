//! Run-time arming through the rule command channel, saved in the state directory so that it
//! survives a restart of the perimeter stage.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use kinderwatch::detect::FrameDetections;
use kinderwatch::events::EventKind;
use kinderwatch::perimeter::{
    self, ArmingStore, PerimeterIo, RecordedEvent, RuleCommand, SetArmedError,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

mod common;

struct Stage {
    detections: mpsc::Sender<FrameDetections>,
    commands: mpsc::Sender<RuleCommand>,
    events: mpsc::Receiver<RecordedEvent>,
    task: tokio::task::JoinHandle<()>,
}

fn start(state_dir: &Path) -> Stage {
    let config = common::fence_config();
    let (detections, rx) = mpsc::channel(64);
    let (commands, cmd_rx) = mpsc::channel(4);
    let (events_tx, events) = mpsc::channel(64);
    let io = PerimeterIo {
        live_tracks: HashMap::new(),
        events: events_tx,
        summary: None,
        commands: Some(cmd_rx),
        arming: Some(ArmingStore::new(state_dir)),
        progress: None,
    };
    let task = tokio::spawn(perimeter::run(
        perimeter::StageRules::from_config(&config).unwrap(),
        rx,
        io,
        CancellationToken::new(),
    ));
    Stage {
        detections,
        commands,
        events,
        task,
    }
}

/// A person walking down across the line (one frame per 200 ms), from `t0`.
async fn walk(stage: &mut Stage, t0: SystemTime) -> Vec<RecordedEvent> {
    for d in common::walk_down(t0) {
        stage.detections.send(d).await.unwrap();
    }
    // Let the stage drain.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut out = vec![];
    while let Ok(e) = stage.events.try_recv() {
        out.push(e);
    }
    out
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
    let t0 = SystemTime::now();
    let mut stage = start(dir.path());
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
    drop(stage.detections);
    stage.task.await.unwrap();

    // A new stage (a restarted daemon) reads the choice back.
    let mut stage = start(dir.path());
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
}
