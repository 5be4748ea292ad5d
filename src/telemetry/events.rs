//! Event metrics: rule and health events on their way to the recorder.

use super::{Kind, Metric};

const EVENTS_DROPPED: Metric = Metric {
    name: "kinderwatch_events_dropped_total",
    kind: Kind::Counter,
    help: "Rule and health events not recorded because the recorder's queue could not take \
           them, per camera and reason (queue_full, closed).",
};
const SNAPSHOTS_SKIPPED: Metric = Metric {
    name: "kinderwatch_snapshots_skipped_total",
    kind: Kind::Counter,
    help: "Events recorded without their snapshot, per reason (busy: too many encodes in \
           flight; failed: the encode failed).",
};

pub(super) const METRICS: &[Metric] = &[EVENTS_DROPPED, SNAPSHOTS_SKIPPED];

/// Why the recorder's queue did not take an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventDrop {
    /// The queue was full.
    QueueFull,
    /// The recorder is gone (shutting down).
    Closed,
}

impl EventDrop {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Closed => "closed",
        }
    }
}

impl<T> From<&tokio::sync::mpsc::error::TrySendError<T>> for EventDrop {
    fn from(e: &tokio::sync::mpsc::error::TrySendError<T>) -> Self {
        match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => Self::QueueFull,
            tokio::sync::mpsc::error::TrySendError::Closed(_) => Self::Closed,
        }
    }
}

/// An event of `camera` was not recorded. Owner: `events::offer`, the one way rule events
/// (`perimeter::encode`) and health events (`health`) reach the recorder.
pub fn event_dropped(camera: &str, reason: EventDrop) {
    metrics::counter!(EVENTS_DROPPED.name, "camera" => camera.to_owned(), "reason" => reason.as_str())
        .increment(1);
}

/// Why an event was recorded without its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSkip {
    /// Too many snapshots were being encoded.
    Busy,
    /// The encode failed (panicked).
    Failed,
}

impl SnapshotSkip {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Failed => "failed",
        }
    }
}

/// An event goes without its snapshot. Owner: `perimeter::encode`.
pub fn snapshot_skipped(reason: SnapshotSkip) {
    metrics::counter!(SNAPSHOTS_SKIPPED.name, "reason" => reason.as_str()).increment(1);
}
