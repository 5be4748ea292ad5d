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

const SIGN_INS: Metric = Metric {
    name: "kinderwatch_console_sign_ins_total",
    kind: Kind::Counter,
    help: "Console sign-in attempts, per result (ok, refused).",
};
const SESSIONS: Metric = Metric {
    name: "kinderwatch_console_sessions",
    kind: Kind::Gauge,
    help: "Console sessions open.",
};
const STREAM_SKIPPED: Metric = Metric {
    name: "kinderwatch_console_stream_skipped_total",
    kind: Kind::Counter,
    help: "Recorded events a slow console's live stream skipped (it reloads the list instead).",
};
const PREVIEWS: Metric = Metric {
    name: "kinderwatch_console_previews_total",
    kind: Kind::Counter,
    help: "Live camera pictures served, per result (encoded, cached, none, busy).",
};

pub(super) const METRICS: &[Metric] = &[
    REQUESTS,
    CONNECTIONS_REFUSED,
    SIGN_INS,
    SESSIONS,
    STREAM_SKIPPED,
    PREVIEWS,
];

/// A request was answered with `status`.
pub fn request(status: u16) {
    metrics::counter!(REQUESTS.name, "status" => status.to_string()).increment(1);
}

/// A connection was refused: too many are open.
pub fn connection_refused() {
    metrics::counter!(CONNECTIONS_REFUSED.name).increment(1);
}

/// A console sign-in was accepted or refused.
pub fn sign_in(accepted: bool) {
    let result = if accepted { "ok" } else { "refused" };
    metrics::counter!(SIGN_INS.name, "result" => result).increment(1);
}

/// Console sessions open now.
pub fn sessions(open: usize) {
    metrics::gauge!(SESSIONS.name).set(open as f64);
}

/// A console's live stream fell behind and skipped `n` events.
pub fn stream_skipped(n: u64) {
    metrics::counter!(STREAM_SKIPPED.name).increment(n);
}

/// What a live-picture request got.
#[derive(Debug, Clone, Copy)]
pub enum Preview {
    /// A fresh frame, encoded for this request.
    Encoded,
    /// The same frame another viewer had asked for.
    Cached,
    /// The camera has no picture yet.
    None,
    /// Too many pictures being encoded at once.
    Busy,
}

pub fn preview(result: Preview) {
    let result = match result {
        Preview::Encoded => "encoded",
        Preview::Cached => "cached",
        Preview::None => "none",
        Preview::Busy => "busy",
    };
    metrics::counter!(PREVIEWS.name, "result" => result).increment(1);
}
