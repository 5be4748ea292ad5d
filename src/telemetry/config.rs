//! Config metrics. Owner: `app` (the SIGHUP reload).

use super::{Kind, Metric};

const RELOADS: Metric = Metric {
    name: "kinderwatch_config_reloads_total",
    kind: Kind::Counter,
    help: "Config reloads (SIGHUP), per result: applied (the rules changed live), unchanged, \
           refused (invalid, or a change that needs a restart; the running config stays).",
};

pub(super) const METRICS: &[Metric] = &[RELOADS];

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Applied,
    Unchanged,
    Refused,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Refused => "refused",
        }
    }
}

/// A reload ended with `result`.
pub fn reloaded(result: ReloadResult) {
    metrics::counter!(RELOADS.name, "result" => result.as_str()).increment(1);
}
