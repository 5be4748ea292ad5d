//! Event store metrics. Owner: `store` (the recorder for writes, status and the pending queue;
//! the store's own files for reads, the audit log and undecodable records).

use std::time::Duration;

use super::{Kind, Metric, flag};

const EVENTS_LOST: Metric = Metric {
    name: "kinderwatch_store_events_lost_total",
    kind: Kind::Counter,
    help: "Events never written, per reason (pending_full: the oldest waiting event made room; \
           shutdown: still waiting when the daemon stopped).",
};
const PENDING_EVENTS: Metric = Metric {
    name: "kinderwatch_store_pending_events",
    kind: Kind::Gauge,
    help: "Events waiting in memory to be written.",
};
const PENDING_BYTES: Metric = Metric {
    name: "kinderwatch_store_pending_bytes",
    kind: Kind::Gauge,
    help: "Bytes of the events waiting in memory to be written.",
};
const WRITE_SECONDS: Metric = Metric {
    name: "kinderwatch_store_write_seconds",
    kind: Kind::Histogram,
    help: "Time one batch write took.",
};
const EVENTS_RECORDED: Metric = Metric {
    name: "kinderwatch_store_events_recorded_total",
    kind: Kind::Counter,
    help: "Events written to the store.",
};
const WRITE_ERRORS: Metric = Metric {
    name: "kinderwatch_store_write_errors_total",
    kind: Kind::Counter,
    help: "Batch writes that failed or panicked (the batch is written again).",
};
const UP: Metric = Metric {
    name: "kinderwatch_store_up",
    kind: Kind::Gauge,
    help: "1 while the store writes, 0 while events wait in memory.",
};
const LIVE_DROPPED: Metric = Metric {
    name: "kinderwatch_alerts_live_dropped_total",
    kind: Kind::Counter,
    help: "Alerts not sent live while the store cannot write (the live queue was full); they \
           go out once the store writes again.",
};
const EVENTS: Metric = Metric {
    name: "kinderwatch_store_events",
    kind: Kind::Gauge,
    help: "Events in the store.",
};
const STORED_BYTES: Metric = Metric {
    name: "kinderwatch_store_stored_bytes",
    kind: Kind::Gauge,
    help: "Bytes of the stored events and snapshots.",
};
const DISK_BYTES: Metric = Metric {
    name: "kinderwatch_store_disk_bytes",
    kind: Kind::Gauge,
    help: "Bytes the store's database takes on disk.",
};
const OUTBOX_DEPTH: Metric = Metric {
    name: "kinderwatch_store_outbox_depth",
    kind: Kind::Gauge,
    help: "Events waiting in the outbox to be published over MQTT.",
};
const OLDEST_EVENT: Metric = Metric {
    name: "kinderwatch_store_oldest_event_timestamp_seconds",
    kind: Kind::Gauge,
    help: "When the oldest stored event happened (Unix seconds).",
};
const RETENTION_DELETED: Metric = Metric {
    name: "kinderwatch_store_retention_deleted_total",
    kind: Kind::Counter,
    help: "Events deleted by retention, per reason (age, size).",
};
const READS_REFUSED: Metric = Metric {
    name: "kinderwatch_store_reads_refused_total",
    kind: Kind::Counter,
    help: "Store reads refused because the readers were busy.",
};
const UNDECODABLE: Metric = Metric {
    name: "kinderwatch_store_undecodable_total",
    kind: Kind::Counter,
    help: "Stored records that do not decode, per where they were read (outbox, audit, query).",
};
const AUDIT_ERRORS: Metric = Metric {
    name: "kinderwatch_store_audit_errors_total",
    kind: Kind::Counter,
    help: "Audit records the store could not write.",
};
const AUDIT_RECORDS: Metric = Metric {
    name: "kinderwatch_audit_records_total",
    kind: Kind::Counter,
    help: "Audit records written.",
};

pub(super) const METRICS: &[Metric] = &[
    EVENTS_LOST,
    PENDING_EVENTS,
    PENDING_BYTES,
    WRITE_SECONDS,
    EVENTS_RECORDED,
    WRITE_ERRORS,
    UP,
    LIVE_DROPPED,
    EVENTS,
    STORED_BYTES,
    DISK_BYTES,
    OUTBOX_DEPTH,
    OLDEST_EVENT,
    RETENTION_DELETED,
    READS_REFUSED,
    UNDECODABLE,
    AUDIT_ERRORS,
    AUDIT_RECORDS,
];

/// Why events were never written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsLost {
    /// The pending queue was full: the oldest waiting event made room.
    PendingFull,
    /// Still waiting when the daemon stopped.
    Shutdown,
}

impl EventsLost {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingFull => "pending_full",
            Self::Shutdown => "shutdown",
        }
    }
}

/// `n` events were lost. Owner: `store::recorder`.
pub fn events_lost(reason: EventsLost, n: u64) {
    metrics::counter!(EVENTS_LOST.name, "reason" => reason.as_str()).increment(n);
}

/// The events waiting in memory. Owner: `store::recorder`.
pub fn pending(events: usize, bytes: usize) {
    metrics::gauge!(PENDING_EVENTS.name).set(events as f64);
    metrics::gauge!(PENDING_BYTES.name).set(bytes as f64);
}

/// A batch write returned after `took`. Owner: `store::recorder`.
pub fn write_took(took: Duration) {
    metrics::histogram!(WRITE_SECONDS.name).record(took.as_secs_f64());
}

/// `n` events were written. Owner: `store::recorder`.
pub fn events_recorded(n: u64) {
    metrics::counter!(EVENTS_RECORDED.name).increment(n);
}

/// A batch write failed or panicked. Owner: `store::recorder`.
pub fn write_error() {
    metrics::counter!(WRITE_ERRORS.name).increment(1);
}

/// Whether the store writes. Owner: `store::recorder`, which owns the store's status.
pub fn up(on: bool) {
    metrics::gauge!(UP.name).set(flag(on));
}

/// A live alert did not fit in the live queue. Owner: `store::recorder`.
pub fn live_alert_dropped() {
    metrics::counter!(LIVE_DROPPED.name).increment(1);
}

/// The store's size. Owner: `store::recorder::publish_stats`.
pub fn size(events: u64, stored_bytes: u64, disk_bytes: u64) {
    metrics::gauge!(EVENTS.name).set(events as f64);
    metrics::gauge!(STORED_BYTES.name).set(stored_bytes as f64);
    metrics::gauge!(DISK_BYTES.name).set(disk_bytes as f64);
}

/// When the oldest stored event happened, in Unix seconds. Owner: `store::recorder::publish_stats`.
pub fn oldest_event(unix_seconds: f64) {
    metrics::gauge!(OLDEST_EVENT.name).set(unix_seconds);
}

/// Entries in the outbox. Owner: `store` (its statistics, and `Store::refresh_outbox_gauges`
/// after the publisher removes what the broker acknowledged).
pub fn outbox_depth(entries: usize) {
    metrics::gauge!(OUTBOX_DEPTH.name).set(entries as f64);
}

/// Retention deleted events for their age and for the store's size. Owner: `store::recorder`.
pub fn retention_deleted(by_age: u64, by_size: u64) {
    metrics::counter!(RETENTION_DELETED.name, "reason" => "age").increment(by_age);
    metrics::counter!(RETENTION_DELETED.name, "reason" => "size").increment(by_size);
}

/// A read was refused: the readers were busy. Owner: `store::reader`.
pub fn read_refused() {
    metrics::counter!(READS_REFUSED.name).increment(1);
}

/// Where an undecodable record was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecodable {
    Outbox,
    Audit,
    Query,
}

impl Undecodable {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbox => "outbox",
            Self::Audit => "audit",
            Self::Query => "query",
        }
    }
}

/// A stored record does not decode. Owner: `store` (outbox, audit and query each report theirs).
pub fn undecodable(read_in: Undecodable) {
    metrics::counter!(UNDECODABLE.name, "where" => read_in.as_str()).increment(1);
}

/// An audit record could not be written. Owner: `store::audit`.
pub fn audit_error() {
    metrics::counter!(AUDIT_ERRORS.name).increment(1);
}

/// An audit record was written. Owner: `store::audit`.
pub fn audit_recorded() {
    metrics::counter!(AUDIT_RECORDS.name).increment(1);
}
