//! The recorder: the task between the event producers (rules, camera health) and the store.
//!
//! Events wait in a bounded in-memory queue and are written in batches (one transaction and one
//! fsync per batch) on a blocking thread, one batch at a time, in arrival order. When the store
//! cannot write (disk below its reserve, an I/O error, a write stalled past `write_timeout`) the
//! recorder says so once (a `storage_failed` event, the status channel, `kinderwatch_store_up`
//! = 0), keeps the events in memory, retries every few seconds, and when a write succeeds again
//! records a `storage_recovered` event. Detection and rules never wait for it: the producers'
//! channel is drained continuously; beyond `max_pending` events or `max_pending_mb` (snapshots
//! included) the oldest waiting events are lost and counted (`kinderwatch_store_events_lost_total`).
//!
//! A stalled write's batch goes out live with the waiting events. If the write returns, late, the
//! recorder goes on. If it has not returned after `write_stall_exit`, [`run`] returns an error and
//! the daemon stops for systemd to restart it: sled serialises its writers, so a write stuck inside
//! it holds every later one, and only a fresh process (a fresh database handle) writes again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Store, StoreConfig, StoreError};
use crate::events::RecordedEvent;
use crate::events::{Event, EventKind};
use crate::telemetry::store::{self as telemetry, EventsLost};

/// Events per write transaction.
const BATCH_EVENTS: usize = 64;
/// Pause before retrying a failed write.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How long shutdown waits for the last events to be written.
const SHUTDOWN_WRITE_DEADLINE: Duration = Duration::from_secs(3);

/// Whether the store is writing, for `/healthz`, the API and the status line.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StoreStatus {
    Ok,
    Failing {
        reason: String,
        #[schema(value_type = String, format = DateTime)]
        since: Timestamp,
        pending: usize,
    },
}

impl StoreStatus {
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }
}

/// What the recorder needs besides its input.
pub struct RecorderSettings {
    pub site: String,
    pub config: StoreConfig,
    /// Queue every event for the MQTT publisher.
    pub outbox: bool,
    /// While the store cannot write, events also go here at once (the publisher sends them
    /// live, outside the outbox), so alerting goes on; once written they leave through the
    /// outbox as well (a duplicate with the same event id).
    pub live: Option<mpsc::Sender<LiveEvent>>,
    /// Beaten each time the recorder's loop turns (stage `recorder`).
    pub progress: Option<crate::progress::Progress>,
    /// Each event, once stored, for the console's live streams (link `recorded`).
    pub recorded: Option<tokio::sync::broadcast::Sender<Arc<super::StoredEvent>>>,
}

/// An event sent to the publisher while the store cannot write.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub event: Event,
    pub snapshot_len: usize,
}

/// Why the recorder stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecorderFailed(pub String);

/// What one pending event costs in memory, for `store.max_pending_mb`: its snapshot and a
/// generous allowance for the event itself.
fn weight(e: &RecordedEvent) -> usize {
    1024 + e.snapshot.as_ref().map_or(0, Vec::len) + e.event.detail.as_ref().map_or(0, String::len)
}

/// The batch being written, kept here as well so that a stalled write's events can go out live.
struct InFlight {
    task: JoinHandle<Result<(), StoreError>>,
    batch: Arc<Vec<RecordedEvent>>,
    started: Instant,
    stalled: bool,
}

struct Recorder {
    store: Store,
    settings: RecorderSettings,
    pending: VecDeque<RecordedEvent>,
    pending_bytes: usize,
    status: watch::Sender<StoreStatus>,
    in_flight: Option<InFlight>,
    retry_at: Option<tokio::time::Instant>,
}

/// Runs until `cancel`, then writes what is left (for up to a few seconds). Returns an error when
/// a write has not returned after `store.write_stall_exit`: the database is wedged in this process
/// and only a fresh one can write again (the caller stops the daemon for systemd to restart it).
pub async fn run(
    store: Store,
    settings: RecorderSettings,
    mut events: mpsc::Receiver<RecordedEvent>,
    status: watch::Sender<StoreStatus>,
    cancel: CancellationToken,
) -> Result<(), RecorderFailed> {
    let progress = settings.progress.clone();
    // The recorder owns the store's status, and with it `kinderwatch_store_up`: writing at first.
    telemetry::up(status.borrow().is_ok());
    let mut r = Recorder {
        store,
        settings,
        pending: VecDeque::new(),
        pending_bytes: 0,
        status,
        in_flight: None,
        retry_at: None,
    };
    let mut beat = tokio::time::interval(crate::progress::BEAT_PERIOD);
    let mut outcome = Ok(());
    loop {
        if let Some(p) = &progress {
            p.beat();
        }
        r.start_write_if_due();
        let (stall_check, stall_exit) = match &r.in_flight {
            Some(f) => (
                Some(f.started + r.settings.config.write_timeout),
                Some(f.started + r.settings.config.write_stall_exit),
            ),
            None => (None, None),
        };
        let stalled = r.in_flight.as_ref().is_some_and(|f| f.stalled);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            done = async { (&mut r.in_flight.as_mut().expect("guarded").task).await }, if r.in_flight.is_some() => {
                let f = r.in_flight.take().expect("guarded");
                r.write_finished(f, done);
            }
            e = events.recv() => match e {
                Some(e) => {
                    r.push(e);
                    while r.pending.len() < BATCH_EVENTS * 4 {
                        match events.try_recv() {
                            Ok(e) => r.push(e),
                            Err(_) => break,
                        }
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(stall_check.unwrap_or_else(Instant::now).into()), if stall_check.is_some() && !stalled => {
                // The batch's events left `pending` when the write began: unless they went out
                // live already (the store was failing when they came), they go now, first.
                let was_ok = r.status.borrow().is_ok();
                if let Some(f) = r.in_flight.as_mut() {
                    f.stalled = true;
                    let batch = f.batch.clone();
                    for e in batch.iter().filter(|_| was_ok) {
                        r.send_live(e);
                    }
                }
                let timeout = r.settings.config.write_timeout;
                r.failed(format!("a write has not finished after {}", humantime::format_duration(timeout)));
            }
            _ = tokio::time::sleep_until(stall_exit.unwrap_or_else(Instant::now).into()), if stall_exit.is_some() => {
                let after = humantime::format_duration(r.settings.config.write_stall_exit);
                let reason = format!(
                    "an event store write has not returned after {after}; the database is wedged in this \
                     process, so the daemon stops for systemd to start it afresh"
                );
                error!(pending = r.pending.len(), "{reason}");
                outcome = Err(RecorderFailed(reason));
                break;
            }
            _ = tokio::time::sleep_until(r.retry_at.unwrap_or_else(tokio::time::Instant::now)), if r.retry_at.is_some() => {
                r.retry_at = None;
            }
            _ = beat.tick() => {}
        }
    }
    if let Some(p) = &progress {
        p.retire();
    }
    r.finish(events).await;
    outcome
}

impl Recorder {
    fn push(&mut self, e: RecordedEvent) {
        let max_bytes = (self.settings.config.max_pending_mb as usize).saturating_mul(1 << 20);
        while !self.pending.is_empty()
            && (self.pending.len() >= self.settings.config.max_pending
                || self.pending_bytes + weight(&e) > max_bytes)
        {
            let Some(lost) = self.pop_front() else { break };
            telemetry::events_lost(EventsLost::PendingFull, 1);
            error!(event_id = %lost.event.id, kind = lost.event.kind.as_str(),
                   max_pending = self.settings.config.max_pending,
                   max_pending_mb = self.settings.config.max_pending_mb,
                   "event lost: the store has not written for too long and the memory queue is full");
        }
        if !self.status.borrow().is_ok() {
            self.send_live(&e);
        }
        self.push_back(e);
        let n = self.pending.len();
        self.status.send_if_modified(|s| {
            if let StoreStatus::Failing { pending, .. } = s {
                *pending = n;
            }
            false
        });
    }

    fn push_back(&mut self, e: RecordedEvent) {
        self.pending_bytes += weight(&e);
        self.pending.push_back(e);
        self.pending_changed();
    }

    fn push_front(&mut self, e: RecordedEvent) {
        self.pending_bytes += weight(&e);
        self.pending.push_front(e);
        self.pending_changed();
    }

    fn pop_front(&mut self) -> Option<RecordedEvent> {
        let e = self.pending.pop_front()?;
        self.pending_bytes = self.pending_bytes.saturating_sub(weight(&e));
        self.pending_changed();
        Some(e)
    }

    fn pending_changed(&self) {
        telemetry::pending(self.pending.len(), self.pending_bytes);
    }

    fn start_write_if_due(&mut self) {
        if self.in_flight.is_some() || self.retry_at.is_some() || self.pending.is_empty() {
            return;
        }
        let n = self.pending.len().min(BATCH_EVENTS);
        let batch: Vec<RecordedEvent> = (0..n).filter_map(|_| self.pop_front()).collect();
        let batch = Arc::new(batch);
        let (store, outbox, b) = (self.store.clone(), self.settings.outbox, batch.clone());
        let task = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            #[cfg(feature = "failpoints")]
            fail::fail_point!("store_record");
            let result = store.record(&b, outbox);
            telemetry::write_took(started.elapsed());
            result
        });
        self.in_flight = Some(InFlight {
            task,
            batch,
            started: Instant::now(),
            stalled: false,
        });
    }

    fn write_finished(
        &mut self,
        f: InFlight,
        done: Result<Result<(), StoreError>, tokio::task::JoinError>,
    ) {
        let batch = Arc::try_unwrap(f.batch).unwrap_or_else(|shared| (*shared).clone());
        match done {
            Ok(Ok(())) => {
                telemetry::events_recorded(batch.len() as u64);
                for r in &batch {
                    tracing::debug!(event_id = %r.event.id, kind = r.event.kind.as_str(), "event recorded");
                    if let Some(tx) = &self.settings.recorded {
                        // No receiver (no console open) is not an error.
                        let _ = tx.send(Arc::new(super::StoredEvent {
                            event: r.event.clone(),
                            snapshot_len: r.snapshot.as_ref().map_or(0, Vec::len),
                        }));
                    }
                }
                if f.stalled {
                    info!(
                        events = batch.len(),
                        took_s = f.started.elapsed().as_secs(),
                        "the stalled write finished; its events are stored"
                    );
                }
                self.recovered();
            }
            Ok(Err(e)) => {
                telemetry::write_error();
                for r in batch.into_iter().rev() {
                    self.push_front(r);
                }
                self.failed(e.to_string());
                self.retry_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
            }
            Err(join) => {
                // The write panicked inside sled: it may have stored the batch or not. Recording is
                // idempotent by event id, so the batch is written again.
                telemetry::write_error();
                error!(error = %join, events = batch.len(), "event store write panicked; its batch is written again");
                for r in batch.into_iter().rev() {
                    self.push_front(r);
                }
                self.failed(format!("a write panicked: {join}"));
                self.retry_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
            }
        }
    }

    fn failed(&mut self, reason: String) {
        let was_ok = self.status.borrow().is_ok();
        if was_ok {
            error!(reason = %reason, pending = self.pending.len(),
                   "event store cannot write; events wait in memory and detection goes on");
            telemetry::up(false);
            let mut e = Event::site_event(
                EventKind::StorageFailed,
                &self.settings.site,
                Timestamp::now(),
            );
            e.detail = Some(reason.clone());
            self.push_back(RecordedEvent {
                event: e,
                snapshot: None,
            });
            // Everything waiting (the failed batch included) goes out live now; later events as
            // they come.
            let waiting: Vec<RecordedEvent> = self.pending.iter().cloned().collect();
            for e in &waiting {
                self.send_live(e);
            }
            self.status.send_replace(StoreStatus::Failing {
                reason,
                since: Timestamp::now(),
                pending: self.pending.len(),
            });
        } else {
            warn!(reason = %reason, pending = self.pending.len(), "event store still cannot write");
            self.status.send_modify(|s| {
                if let StoreStatus::Failing {
                    reason: r, pending, ..
                } = s
                {
                    *r = reason;
                    *pending = self.pending.len();
                }
            });
        }
    }

    fn send_live(&self, r: &RecordedEvent) {
        let Some(live) = &self.settings.live else {
            return;
        };
        let e = LiveEvent {
            event: r.event.clone(),
            snapshot_len: 0,
        };
        if live.try_send(e).is_err() {
            telemetry::live_alert_dropped();
            warn!(event_id = %r.event.id, "live alert queue full; the alert goes out once the store writes again");
        }
    }

    fn recovered(&mut self) {
        let since = match &*self.status.borrow() {
            StoreStatus::Ok => return,
            StoreStatus::Failing { since, .. } => *since,
        };
        let waited = self.pending.len();
        info!(pending = waited, "event store writes again");
        telemetry::up(true);
        let mut e = Event::site_event(
            EventKind::StorageRecovered,
            &self.settings.site,
            Timestamp::now(),
        );
        e.detail = Some(format!("failing since {since}"));
        e.started_at = since;
        self.push_back(RecordedEvent {
            event: e,
            snapshot: None,
        });
        self.status.send_replace(StoreStatus::Ok);
    }

    /// Writes what is left, for up to [`SHUTDOWN_WRITE_DEADLINE`].
    async fn finish(mut self, mut events: mpsc::Receiver<RecordedEvent>) {
        events.close();
        while let Ok(e) = events.try_recv() {
            self.push(e);
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WRITE_DEADLINE;
        let mut stuck = 0;
        loop {
            if let Some(mut f) = self.in_flight.take() {
                match tokio::time::timeout_at(deadline, &mut f.task).await {
                    Ok(done) => self.write_finished(f, done),
                    Err(_) => {
                        stuck = f.batch.len();
                        break;
                    }
                }
            }
            if self.pending.is_empty() || !self.status.borrow().is_ok() {
                break;
            }
            self.retry_at = None;
            self.start_write_if_due();
        }
        let lost = self.pending.len() + stuck;
        if lost > 0 {
            telemetry::events_lost(EventsLost::Shutdown, lost as u64);
            let ids: Vec<String> = self
                .pending
                .iter()
                .take(20)
                .map(|e| e.event.id.to_string())
                .collect();
            error!(
                lost,
                in_stuck_write = stuck,
                sent_live = self.settings.live.is_some() && !self.status.borrow().is_ok(),
                first_ids = %ids.join(","),
                "stopping with events the store could not write"
            );
        }
    }
}

/// Writes the store's size, oldest event and outbox depth as gauges.
pub fn publish_stats(store: &Store) -> Result<super::StoreStats, StoreError> {
    let stats = store.stats()?;
    telemetry::size(stats.events, stats.stored_bytes, stats.disk_bytes);
    telemetry::outbox_depth(stats.outbox as usize);
    crate::telemetry::mqtt::dead_letters(stats.dead_letters as usize);
    if let Some(oldest) = stats.oldest {
        telemetry::oldest_event(oldest.as_millisecond() as f64 / 1000.0);
    }
    Ok(stats)
}

/// How often the store's size, oldest event and outbox depth gauges are refreshed.
const STATS_PERIOD: Duration = Duration::from_secs(15);

/// Applies retention every `retention_interval` (and once at start) and refreshes the store
/// gauges every [`STATS_PERIOD`], off the async workers.
pub async fn run_retention(store: Store, config: StoreConfig, cancel: CancellationToken) {
    let policy = super::RetentionPolicy::from_config(&config);
    let mut retention =
        tokio::time::interval(config.retention_interval.max(Duration::from_secs(1)));
    let mut stats = tokio::time::interval(STATS_PERIOD);
    loop {
        let apply = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = retention.tick() => true,
            _ = stats.tick() => false,
        };
        let s = store.clone();
        let done = tokio::task::spawn_blocking(move || {
            let report = apply.then(|| s.apply_retention(&policy, Timestamp::now()));
            (report, publish_stats(&s))
        })
        .await;
        let (report, stats) = match done {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "retention task panicked");
                continue;
            }
        };
        if let Err(e) = stats {
            warn!(error = %e, "event store statistics unavailable");
        }
        match report {
            Some(Ok(report)) if report.deleted_by_age + report.deleted_by_size > 0 => {
                telemetry::retention_deleted(report.deleted_by_age, report.deleted_by_size);
                info!(
                    by_age = report.deleted_by_age,
                    by_size = report.deleted_by_size,
                    kept_for_outbox = report.kept_for_outbox,
                    audit = report.audit_deleted,
                    "retention deleted old events"
                );
            }
            Some(Err(e)) => warn!(error = %e, "retention failed; retrying at the next interval"),
            _ => {}
        }
    }
}
