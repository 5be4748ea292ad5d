//! The recorder: the task between the event producers (rules, camera health) and the store.
//!
//! Events wait in a bounded in-memory queue and are written in batches (one transaction and one
//! fsync per batch) on a blocking thread, one batch at a time, in arrival order. When the store
//! cannot write (disk below its reserve, an I/O error, a write stalled past `write_timeout`) the
//! recorder says so once (a `storage_failed` event, the status channel, `kinderwatch_store_up`
//! = 0), keeps the events in memory, retries every few seconds, and when a write succeeds again
//! records a `storage_recovered` event. Detection and rules never wait for it: the producers'
//! channel is drained continuously; beyond `max_pending` the oldest waiting events are lost and
//! counted (`kinderwatch_store_events_lost_total`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Store, StoreConfig, StoreError};
use crate::events::{Event, EventKind};
use crate::perimeter::RecordedEvent;

/// Events per write transaction.
const BATCH_EVENTS: usize = 64;
/// Pause before retrying a failed write.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How long shutdown waits for the last events to be written.
const SHUTDOWN_WRITE_DEADLINE: Duration = Duration::from_secs(3);

/// Whether the store is writing, for `/healthz`, the API and the status line.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StoreStatus {
    Ok,
    Failing {
        reason: String,
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
}

/// An event sent to the publisher while the store cannot write.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub event: Event,
    pub snapshot_len: usize,
}

type WriteTask = JoinHandle<(Vec<RecordedEvent>, Result<(), StoreError>)>;

struct Recorder {
    store: Store,
    settings: RecorderSettings,
    pending: VecDeque<RecordedEvent>,
    status: watch::Sender<StoreStatus>,
    in_flight: Option<(WriteTask, Instant, bool)>,
    retry_at: Option<tokio::time::Instant>,
}

/// Runs until `cancel`, then writes what is left (for up to a few seconds).
pub async fn run(
    store: Store,
    settings: RecorderSettings,
    mut events: mpsc::Receiver<RecordedEvent>,
    status: watch::Sender<StoreStatus>,
    cancel: CancellationToken,
) {
    let mut r = Recorder {
        store,
        settings,
        pending: VecDeque::new(),
        status,
        in_flight: None,
        retry_at: None,
    };
    loop {
        r.start_write_if_due();
        let stall_check = r
            .in_flight
            .as_ref()
            .map(|(_, started, _)| *started + r.settings.config.write_timeout);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            done = async { (&mut r.in_flight.as_mut().expect("guarded").0).await }, if r.in_flight.is_some() => {
                r.in_flight = None;
                r.write_finished(done);
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
            _ = tokio::time::sleep_until(stall_check.unwrap_or_else(Instant::now).into()), if stall_check.is_some() && !r.in_flight.as_ref().is_some_and(|f| f.2) => {
                if let Some(f) = r.in_flight.as_mut() { f.2 = true; }
                let timeout = r.settings.config.write_timeout;
                r.failed(format!("a write has not finished after {}", humantime::format_duration(timeout)));
            }
            _ = tokio::time::sleep_until(r.retry_at.unwrap_or_else(tokio::time::Instant::now)), if r.retry_at.is_some() => {
                r.retry_at = None;
            }
        }
    }
    r.finish(events).await;
}

impl Recorder {
    fn push(&mut self, e: RecordedEvent) {
        if self.pending.len() >= self.settings.config.max_pending
            && let Some(lost) = self.pending.pop_front()
        {
            metrics::counter!("kinderwatch_store_events_lost_total").increment(1);
            error!(event_id = %lost.event.id, kind = lost.event.kind.as_str(),
                   max_pending = self.settings.config.max_pending,
                   "event lost: the store has not written for too long and the memory queue is full");
        }
        if !self.status.borrow().is_ok() {
            self.send_live(&e);
        }
        self.pending.push_back(e);
        metrics::gauge!("kinderwatch_store_pending_events").set(self.pending.len() as f64);
        let n = self.pending.len();
        self.status.send_if_modified(|s| {
            if let StoreStatus::Failing { pending, .. } = s {
                *pending = n;
            }
            false
        });
    }

    fn start_write_if_due(&mut self) {
        if self.in_flight.is_some() || self.retry_at.is_some() || self.pending.is_empty() {
            return;
        }
        let n = self.pending.len().min(BATCH_EVENTS);
        let batch: Vec<RecordedEvent> = self.pending.drain(..n).collect();
        let (store, outbox) = (self.store.clone(), self.settings.outbox);
        let task = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = store.record(&batch, outbox);
            metrics::histogram!("kinderwatch_store_write_seconds")
                .record(started.elapsed().as_secs_f64());
            (batch, result)
        });
        self.in_flight = Some((task, Instant::now(), false));
    }

    fn write_finished(
        &mut self,
        done: Result<(Vec<RecordedEvent>, Result<(), StoreError>), tokio::task::JoinError>,
    ) {
        match done {
            Ok((batch, Ok(()))) => {
                metrics::counter!("kinderwatch_store_events_recorded_total")
                    .increment(batch.len() as u64);
                for r in &batch {
                    tracing::debug!(event_id = %r.event.id, kind = r.event.kind.as_str(), "event recorded");
                }
                metrics::gauge!("kinderwatch_store_pending_events").set(self.pending.len() as f64);
                self.recovered();
            }
            Ok((batch, Err(e))) => {
                metrics::counter!("kinderwatch_store_write_errors_total").increment(1);
                for r in batch.into_iter().rev() {
                    self.pending.push_front(r);
                }
                self.failed(e.to_string());
                self.retry_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
            }
            Err(join) => {
                // The write panicked inside sled: the batch is gone with it.
                metrics::counter!("kinderwatch_store_write_errors_total").increment(1);
                error!(error = %join, "event store write panicked; its batch was not recorded");
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
            metrics::gauge!("kinderwatch_store_up").set(0.0);
            let mut e = Event::site_event(
                EventKind::StorageFailed,
                &self.settings.site,
                Timestamp::now(),
            );
            e.detail = Some(reason.clone());
            self.pending.push_back(RecordedEvent {
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
            metrics::counter!("kinderwatch_alerts_live_dropped_total").increment(1);
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
        metrics::gauge!("kinderwatch_store_up").set(1.0);
        let mut e = Event::site_event(
            EventKind::StorageRecovered,
            &self.settings.site,
            Timestamp::now(),
        );
        e.detail = Some(format!("failing since {since}"));
        e.started_at = since;
        self.pending.push_back(RecordedEvent {
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
        loop {
            if let Some((task, _, _)) = self.in_flight.take() {
                match tokio::time::timeout_at(deadline, task).await {
                    Ok(done) => self.write_finished(done),
                    Err(_) => break,
                }
            }
            if self.pending.is_empty() || !self.status.borrow().is_ok() {
                break;
            }
            self.retry_at = None;
            self.start_write_if_due();
        }
        if !self.pending.is_empty() {
            error!(
                lost = self.pending.len(),
                "stopping with events the store could not write"
            );
        }
    }
}

/// Writes the store's size, oldest event and outbox depth as gauges.
pub fn publish_stats(store: &Store) -> Result<super::StoreStats, StoreError> {
    let stats = store.stats()?;
    metrics::gauge!("kinderwatch_store_events").set(stats.events as f64);
    metrics::gauge!("kinderwatch_store_stored_bytes").set(stats.stored_bytes as f64);
    metrics::gauge!("kinderwatch_store_disk_bytes").set(stats.disk_bytes as f64);
    metrics::gauge!("kinderwatch_store_outbox_depth").set(stats.outbox as f64);
    metrics::gauge!("kinderwatch_mqtt_dead_letters").set(stats.dead_letters as f64);
    if let Some(oldest) = stats.oldest {
        metrics::gauge!("kinderwatch_store_oldest_event_timestamp_seconds")
            .set(oldest.as_millisecond() as f64 / 1000.0);
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
                metrics::counter!("kinderwatch_store_retention_deleted_total", "reason" => "age")
                    .increment(report.deleted_by_age);
                metrics::counter!("kinderwatch_store_retention_deleted_total", "reason" => "size")
                    .increment(report.deleted_by_size);
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
