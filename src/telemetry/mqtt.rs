//! MQTT metrics. Owner: `alert::publisher`, except the dead letters, which are the store's
//! state: `store::outbox` counts and gauges them as it moves entries.

use std::time::Duration;

use super::{Kind, Metric, flag};

const CONNECTED: Metric = Metric {
    name: "kinderwatch_mqtt_connected",
    kind: Kind::Gauge,
    help: "1 while connected to the broker.",
};
const CONNECTION_ERRORS: Metric = Metric {
    name: "kinderwatch_mqtt_connection_errors_total",
    kind: Kind::Counter,
    help: "Broker connections lost or not made.",
};
const PUBLISH_LATENCY: Metric = Metric {
    name: "kinderwatch_mqtt_publish_latency_seconds",
    kind: Kind::Histogram,
    help: "Time from an event to the broker's acknowledgement of its alert.",
};
const EVENTS_PUBLISHED: Metric = Metric {
    name: "kinderwatch_mqtt_events_published_total",
    kind: Kind::Counter,
    help: "Alerts the broker acknowledged.",
};
const REFUSED: Metric = Metric {
    name: "kinderwatch_mqtt_refused_total",
    kind: Kind::Counter,
    help: "Alerts the broker refused in a PUBACK.",
};
const DEAD_LETTERS_TOTAL: Metric = Metric {
    name: "kinderwatch_mqtt_dead_letters_total",
    kind: Kind::Counter,
    help: "Outbox entries moved to the dead letters, per reason (refused, too_large, unreadable).",
};
const DEAD_LETTERS: Metric = Metric {
    name: "kinderwatch_mqtt_dead_letters",
    kind: Kind::Gauge,
    help: "Dead letters waiting to be re-queued.",
};
const SNAPSHOTS_OMITTED: Metric = Metric {
    name: "kinderwatch_mqtt_snapshots_omitted_total",
    kind: Kind::Counter,
    help: "Snapshots not published after their alert, per reason (too_large, queue_full).",
};
const LIVE_PUBLISHED: Metric = Metric {
    name: "kinderwatch_mqtt_live_published_total",
    kind: Kind::Counter,
    help: "Alerts published live while the store could not write.",
};
const TOO_LARGE: Metric = Metric {
    name: "kinderwatch_mqtt_too_large_total",
    kind: Kind::Counter,
    help: "Packets larger than the broker's maximum packet size, not sent.",
};
const OLDEST_UNPUBLISHED: Metric = Metric {
    name: "kinderwatch_mqtt_oldest_unpublished_seconds",
    kind: Kind::Gauge,
    help: "Age of the oldest event waiting in the outbox.",
};
const COMMANDS: Metric = Metric {
    name: "kinderwatch_mqtt_commands_total",
    kind: Kind::Counter,
    help: "Commands received over MQTT.",
};
const COMMANDS_IGNORED: Metric = Metric {
    name: "kinderwatch_mqtt_commands_ignored_total",
    kind: Kind::Counter,
    help: "Commands not run, per reason (retained, response_topic, busy, flood).",
};
const REPLIES_DROPPED: Metric = Metric {
    name: "kinderwatch_mqtt_replies_dropped_total",
    kind: Kind::Counter,
    help: "Command replies dropped.",
};
const SNAPSHOTS_REENCODED: Metric = Metric {
    name: "kinderwatch_mqtt_snapshots_reencoded_total",
    kind: Kind::Counter,
    help: "Snapshots re-encoded to fit the broker's maximum packet size.",
};

pub(super) const METRICS: &[Metric] = &[
    CONNECTED,
    CONNECTION_ERRORS,
    PUBLISH_LATENCY,
    EVENTS_PUBLISHED,
    REFUSED,
    DEAD_LETTERS_TOTAL,
    DEAD_LETTERS,
    SNAPSHOTS_OMITTED,
    LIVE_PUBLISHED,
    TOO_LARGE,
    OLDEST_UNPUBLISHED,
    COMMANDS,
    COMMANDS_IGNORED,
    REPLIES_DROPPED,
    SNAPSHOTS_REENCODED,
];

/// Whether the publisher is connected to the broker.
pub fn connected(on: bool) {
    metrics::gauge!(CONNECTED.name).set(flag(on));
}

/// A connection was lost or not made.
pub fn connection_error() {
    metrics::counter!(CONNECTION_ERRORS.name).increment(1);
}

/// The broker acknowledged an alert `latency` after its event.
pub fn published(latency: Duration) {
    metrics::histogram!(PUBLISH_LATENCY.name).record(latency.as_secs_f64());
    metrics::counter!(EVENTS_PUBLISHED.name).increment(1);
}

/// The broker refused an alert.
pub fn refused() {
    metrics::counter!(REFUSED.name).increment(1);
}

/// An outbox entry moved to the dead letters, for `reason` (`DeadLetterReason::as_str`), and
/// `waiting` dead letters are left. Owner: `store::outbox`.
pub fn dead_lettered(reason: &'static str, waiting: usize) {
    metrics::counter!(DEAD_LETTERS_TOTAL.name, "reason" => reason).increment(1);
    dead_letters(waiting);
}

/// Dead letters waiting. Owner: `store` (its statistics and its dead-letter moves).
pub fn dead_letters(waiting: usize) {
    metrics::gauge!(DEAD_LETTERS.name).set(waiting as f64);
}

/// Why a snapshot was not published after its alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOmitted {
    /// The publisher's queue was full.
    QueueFull,
    /// Larger than the broker's maximum packet size, even re-encoded.
    TooLarge,
}

impl SnapshotOmitted {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::TooLarge => "too_large",
        }
    }
}

/// A snapshot was left out.
pub fn snapshot_omitted(reason: SnapshotOmitted) {
    metrics::counter!(SNAPSHOTS_OMITTED.name, "reason" => reason.as_str()).increment(1);
}

/// An alert went out live, before it was stored.
pub fn live_published() {
    metrics::counter!(LIVE_PUBLISHED.name).increment(1);
}

/// A packet was too large for the broker.
pub fn too_large() {
    metrics::counter!(TOO_LARGE.name).increment(1);
}

/// How long the oldest event in the outbox has waited.
pub fn oldest_unpublished(age: Duration) {
    metrics::gauge!(OLDEST_UNPUBLISHED.name).set(age.as_secs_f64());
}

/// A command arrived.
pub fn command() {
    metrics::counter!(COMMANDS.name).increment(1);
}

/// Why a command was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandIgnored {
    /// A retained message: it would run again on every connection.
    Retained,
    /// It asked for a reply outside the allowed topics.
    ResponseTopic,
    /// Too many commands running; a busy reply went out.
    Busy,
    /// Too many busy replies this second; no reply.
    Flood,
}

impl CommandIgnored {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retained => "retained",
            Self::ResponseTopic => "response_topic",
            Self::Busy => "busy",
            Self::Flood => "flood",
        }
    }
}

/// A command was not run.
pub fn command_ignored(reason: CommandIgnored) {
    metrics::counter!(COMMANDS_IGNORED.name, "reason" => reason.as_str()).increment(1);
}

/// A command's reply was dropped.
pub fn reply_dropped() {
    metrics::counter!(REPLIES_DROPPED.name).increment(1);
}

/// A snapshot was re-encoded smaller.
pub fn snapshot_reencoded() {
    metrics::counter!(SNAPSHOTS_REENCODED.name).increment(1);
}
