//! City center metrics (`kinderwatch center`). Owner: `center`.

use super::{Kind, Metric, flag};

const MESSAGES: Metric = Metric {
    name: "kinderwatch_center_messages_total",
    kind: Kind::Counter,
    help: "MQTT messages the center handled, per kind (alert, snapshot, site_status, camera_status) and result (stored, duplicate, rejected).",
};
const DB_ERRORS: Metric = Metric {
    name: "kinderwatch_center_db_errors_total",
    kind: Kind::Counter,
    help: "Database writes that failed and are retried (the message stays unacknowledged).",
};
const CONNECTED: Metric = Metric {
    name: "kinderwatch_center_mqtt_connected",
    kind: Kind::Gauge,
    help: "1 while the instance is connected to the broker.",
};
const ALERT_LATENCY: Metric = Metric {
    name: "kinderwatch_center_alert_latency_seconds",
    kind: Kind::Histogram,
    help: "From an alert's capture time at the site to its commit in the center's database.",
};

pub(super) const METRICS: &[Metric] = &[MESSAGES, DB_ERRORS, CONNECTED, ALERT_LATENCY];

pub fn message(kind: &'static str, result: &'static str) {
    metrics::counter!(MESSAGES.name, "kind" => kind, "result" => result).increment(1);
}

pub fn db_error() {
    metrics::counter!(DB_ERRORS.name).increment(1);
}

pub fn connected(on: bool) {
    metrics::gauge!(CONNECTED.name).set(flag(on));
}

pub fn alert_latency(seconds: f64) {
    metrics::histogram!(ALERT_LATENCY.name).record(seconds);
}
