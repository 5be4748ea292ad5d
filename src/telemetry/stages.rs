//! Progress metrics for the daemon's stages and tasks. Owner: `progress`.

use std::time::Duration;

use super::{Kind, Metric, flag};

const SILENT_SECONDS: Metric = Metric {
    name: "kinderwatch_stage_silent_seconds",
    kind: Kind::Gauge,
    help: "Time since the stage last showed progress, per stage.",
};
const STUCK_TOTAL: Metric = Metric {
    name: "kinderwatch_stage_stuck_total",
    kind: Kind::Counter,
    help: "Times the stage became stuck (silent past its deadline), per stage.",
};
const STUCK: Metric = Metric {
    name: "kinderwatch_stage_stuck",
    kind: Kind::Gauge,
    help: "1 while the stage is stuck, per stage.",
};
const TASK_ENDED: Metric = Metric {
    name: "kinderwatch_task_ended_total",
    kind: Kind::Counter,
    help: "Daemon tasks that ended on their own (returned or panicked), per task.",
};

pub(super) const METRICS: &[Metric] = &[SILENT_SECONDS, STUCK_TOTAL, STUCK, TASK_ENDED];

/// How long the stage has been silent.
pub fn silent(stage: &str, silent: Duration) {
    metrics::gauge!(SILENT_SECONDS.name, "stage" => stage.to_owned()).set(silent.as_secs_f64());
}

/// Whether the stage is stuck.
pub fn stuck(stage: &str, on: bool) {
    metrics::gauge!(STUCK.name, "stage" => stage.to_owned()).set(flag(on));
}

/// The stage just became stuck (the gauge follows).
pub fn became_stuck(stage: &str) {
    metrics::counter!(STUCK_TOTAL.name, "stage" => stage.to_owned()).increment(1);
    stuck(stage, true);
}

/// A daemon task ended on its own.
pub fn task_ended(task: &str) {
    metrics::counter!(TASK_ENDED.name, "task" => task.to_owned()).increment(1);
}
