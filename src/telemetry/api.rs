//! HTTP API metrics. Owner: `api`.

use super::{Kind, Metric};

const REQUESTS: Metric = Metric {
    name: "kinderwatch_api_requests_total",
    kind: Kind::Counter,
    help: "API requests answered, per HTTP status.",
};
const CONNECTIONS_REFUSED: Metric = Metric {
    name: "kinderwatch_api_connections_refused_total",
    kind: Kind::Counter,
    help: "API connections refused at the connection limit.",
};

pub(super) const METRICS: &[Metric] = &[REQUESTS, CONNECTIONS_REFUSED];

/// A request was answered with `status`.
pub fn request(status: u16) {
    metrics::counter!(REQUESTS.name, "status" => status.to_string()).increment(1);
}

/// A connection was refused: too many are open.
pub fn connection_refused() {
    metrics::counter!(CONNECTIONS_REFUSED.name).increment(1);
}
