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

const SITE_QUERIES: Metric = Metric {
    name: "kinderwatch_center_site_queries_total",
    kind: Kind::Counter,
    help: "Questions to sites over MQTT request/response, per result (answered, timeout, refused, not_connected, garbled).",
};
const RECOVERED: Metric = Metric {
    name: "kinderwatch_center_recovered_events_total",
    kind: Kind::Counter,
    help: "Events the center found at a site (reconciliation or history fan-out) that the live MQTT path had lost.",
};
const SNAPSHOT_FETCHES: Metric = Metric {
    name: "kinderwatch_center_snapshot_fetches_total",
    kind: Kind::Counter,
    help: "Snapshots fetched from sites' HTTP APIs, per result (stored, not_found, failed).",
};

pub(super) const METRICS: &[Metric] = &[
    MESSAGES,
    DB_ERRORS,
    CONNECTED,
    ALERT_LATENCY,
    SITE_QUERIES,
    RECOVERED,
    SNAPSHOT_FETCHES,
];

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

pub fn site_query(result: &'static str) {
    metrics::counter!(SITE_QUERIES.name, "result" => result).increment(1);
}

pub fn recovered(n: u64) {
    metrics::counter!(RECOVERED.name).increment(n);
}

pub fn snapshot_fetch(result: &'static str) {
    metrics::counter!(SNAPSHOT_FETCHES.name, "result" => result).increment(1);
}
