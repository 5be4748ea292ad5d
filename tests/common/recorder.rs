//! The recorder task on a real store, with its live channel and status, for the recorder tests.

use jiff::Timestamp;
use kinderwatch::events::{Event, EventKind, RecordedEvent};
use kinderwatch::store::recorder::{self, RecorderSettings, StoreStatus};
use kinderwatch::store::{Store, StoreConfig};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// A line crossing numbered `n` (in its detail), with a snapshot of `snapshot_kb` KB (none for 0).
pub fn event(n: usize, snapshot_kb: usize) -> RecordedEvent {
    let mut e = Event::new(EventKind::LineCrossed, "site-1", "gate", Timestamp::now());
    e.rule = Some("fence".into());
    e.detail = Some(format!("n={n}"));
    RecordedEvent {
        event: e,
        snapshot: (snapshot_kb > 0).then(|| vec![(n % 251) as u8; snapshot_kb * 1024]),
    }
}

pub struct Running {
    pub tx: mpsc::Sender<RecordedEvent>,
    pub live: mpsc::Receiver<recorder::LiveEvent>,
    pub status: watch::Receiver<StoreStatus>,
    pub cancel: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), recorder::RecorderFailed>>,
}

/// Starts the recorder on `store` with the outbox on and a live channel.
pub fn start(store: &Store, config: StoreConfig) -> Running {
    let (tx, rx) = mpsc::channel(256);
    let (status_tx, status) = watch::channel(StoreStatus::Ok);
    let cancel = CancellationToken::new();
    let (live_tx, live) = mpsc::channel(1000);
    let settings = RecorderSettings {
        site: "site-1".into(),
        config,
        outbox: true,
        live: Some(live_tx),
        progress: None,
        recorded: None,
    };
    let task = tokio::spawn(recorder::run(
        store.clone(),
        settings,
        rx,
        status_tx,
        cancel.clone(),
    ));
    Running {
        tx,
        live,
        status,
        cancel,
        task,
    }
}
