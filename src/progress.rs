//! Progress, not presence: every long-running stage (each camera supervisor, each detector
//! worker, the rules stage, the recorder, the MQTT publisher and its event loop, the API's accept
//! loop, the main loop) holds a [`Progress`] and beats it each time its loop turns, idle or not.
//! A stage whose last beat is older than its deadline is *stuck*: it is named in the log (once
//! per episode), in `/healthz` and in `kinderwatch_stage_stuck{stage}`, and the systemd watchdog
//! is no longer fed, so systemd restarts a daemon that is alive but no longer working.
//!
//! The [`Monitor`] runs on a thread of its own, outside the async runtime, so a runtime whose
//! workers are all blocked is still noticed (and still not fed for).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{error, info};

use crate::telemetry::stages as telemetry;

/// `[supervision]`: how the daemon watches its own stages (see this module).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// A stage (camera supervisor, detector worker, rules, recorder, publisher, API, main loop)
    /// that reports no progress for this long is stuck: named in the log, `/healthz` and
    /// `kinderwatch_stage_stuck`, and the systemd watchdog is no longer fed. Default: 20s.
    #[serde(with = "humantime_serde")]
    pub stage_deadline: Duration,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            stage_deadline: Duration::from_secs(20),
        }
    }
}

impl SupervisionConfig {
    /// Puts the section's problems (paths `supervision.*`) in `v`.
    pub fn validate(&self, v: &mut crate::validate::Validator) {
        if self.stage_deadline < 2 * BEAT_PERIOD {
            v.err(
                "supervision.stage_deadline",
                "use at least 2s (idle stages report progress every second), e.g. \"20s\"",
            );
        }
    }
}

/// How often an idle stage beats (its loop's timer); deadlines must be several times longer.
pub const BEAT_PERIOD: Duration = Duration::from_secs(1);

/// How often the monitor looks at the stages.
const CHECK_PERIOD: Duration = Duration::from_millis(500);

struct Stage {
    name: String,
    deadline: Duration,
    /// Milliseconds since the registry's epoch at the last beat.
    last_ms: AtomicU64,
    /// Stopped on purpose (shutdown): never stuck.
    retired: AtomicBool,
    /// Reported stuck, until it beats again.
    reported: AtomicBool,
}

struct Registry {
    epoch: Instant,
    /// A stage's deadline unless it asks for a longer one.
    deadline: Duration,
    stages: Mutex<Vec<Arc<Stage>>>,
    stopping: AtomicBool,
}

/// The set of stages of one daemon. Cheap to clone.
#[derive(Clone)]
pub struct Stages(Arc<Registry>);

impl Default for Stages {
    fn default() -> Self {
        Self::new(SupervisionConfig::default().stage_deadline)
    }
}

/// One stage's handle: beat it whenever the stage's loop turns.
#[derive(Clone)]
pub struct Progress {
    stage: Arc<Stage>,
    registry: Arc<Registry>,
}

/// How one stage stands, for `/healthz`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct StageReport {
    pub stage: String,
    /// Seconds since its last beat.
    pub silent_s: f64,
    pub deadline_s: f64,
    pub stuck: bool,
}

impl Stages {
    /// Stages that are stuck after `deadline` without progress (`supervision.stage_deadline`).
    pub fn new(deadline: Duration) -> Self {
        Self(Arc::new(Registry {
            epoch: Instant::now(),
            deadline,
            stages: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        }))
    }

    /// Registers a stage with the default deadline (it counts as having just beaten). Names are
    /// unique per daemon: `camera/<id>`, `detector-<n>`, `rules`, `recorder`, `publisher`,
    /// `mqtt_eventloop`, `api`, `main`.
    pub fn register(&self, name: impl Into<String>) -> Progress {
        self.register_with(name, Duration::ZERO)
    }

    /// Registers a stage whose quiet periods can be longer: its deadline is the larger of the
    /// default and `at_least`.
    pub fn register_with(&self, name: impl Into<String>, at_least: Duration) -> Progress {
        let deadline = self.0.deadline.max(at_least);
        let stage = Arc::new(Stage {
            name: name.into(),
            deadline,
            last_ms: AtomicU64::new(self.now_ms()),
            retired: AtomicBool::new(false),
            reported: AtomicBool::new(false),
        });
        self.0
            .stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stage.clone());
        Progress {
            stage,
            registry: self.0.clone(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.0.epoch.elapsed().as_millis() as u64
    }

    /// Every registered stage, stuck or not.
    pub fn report(&self) -> Vec<StageReport> {
        let now = self.now_ms();
        let stopping = self.0.stopping.load(Ordering::Relaxed);
        self.0
            .stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| !s.retired.load(Ordering::Relaxed))
            .map(|s| {
                let silent =
                    Duration::from_millis(now.saturating_sub(s.last_ms.load(Ordering::Relaxed)));
                StageReport {
                    stage: s.name.clone(),
                    silent_s: silent.as_secs_f64(),
                    deadline_s: s.deadline.as_secs_f64(),
                    stuck: !stopping && silent > s.deadline,
                }
            })
            .collect()
    }

    /// The stages past their deadline.
    pub fn stuck(&self) -> Vec<StageReport> {
        self.report().into_iter().filter(|s| s.stuck).collect()
    }

    /// From now on nothing counts as stuck: the daemon is stopping and its stages end.
    pub fn stopping(&self) {
        self.0.stopping.store(true, Ordering::Relaxed);
    }

    /// Logs and counts stages that became stuck or recovered since the last call; returns whether
    /// every stage is making progress.
    fn check(&self) -> bool {
        let now = self.now_ms();
        let stopping = self.0.stopping.load(Ordering::Relaxed);
        let stages = self.0.stages.lock().unwrap_or_else(|e| e.into_inner());
        let mut all_progress = true;
        for s in stages.iter().filter(|s| !s.retired.load(Ordering::Relaxed)) {
            let silent =
                Duration::from_millis(now.saturating_sub(s.last_ms.load(Ordering::Relaxed)));
            let stuck = !stopping && silent > s.deadline;
            telemetry::silent(&s.name, silent);
            let was = s.reported.swap(stuck, Ordering::Relaxed);
            if stuck && !was {
                telemetry::became_stuck(&s.name);
                error!(stage = %s.name, silent_s = silent.as_secs(), deadline_s = s.deadline.as_secs(),
                       "stage stuck: no progress within its deadline; the systemd watchdog is no longer fed");
            } else if !stuck && was {
                telemetry::stuck(&s.name, false);
                info!(stage = %s.name, "stage makes progress again");
            } else if !was {
                telemetry::stuck(&s.name, false);
            }
            all_progress &= !stuck;
        }
        all_progress
    }
}

impl Progress {
    /// The stage made progress (or its idle loop turned).
    pub fn beat(&self) {
        #[cfg(feature = "failpoints")]
        self.stall_hook();
        let now = self.registry.epoch.elapsed().as_millis() as u64;
        self.stage.last_ms.store(now, Ordering::Relaxed);
    }

    /// The stage ended on purpose; it no longer counts.
    pub fn retire(&self) {
        self.stage.retired.store(true, Ordering::Relaxed);
    }

    pub fn name(&self) -> &str {
        &self.stage.name
    }

    /// Test builds: `FAILPOINTS='stage_stall=return(<stage>@<age>)'` blocks this stage's thread
    /// for good at its first beat once the stage is `<age>` old (e.g. `camera/gate@3s`).
    #[cfg(feature = "failpoints")]
    fn stall_hook(&self) {
        let Some(Some(arg)) = fail::eval("stage_stall", |arg| arg) else {
            return;
        };
        let (name, after) = arg.split_once('@').unwrap_or((arg.as_str(), "0s"));
        let after = humantime::parse_duration(after).unwrap_or_default();
        if name == self.stage.name && self.registry.epoch.elapsed() >= after {
            tracing::warn!(stage = %name, "failpoint stage_stall: this stage blocks for good");
            let forever = || loop {
                std::thread::sleep(Duration::from_secs(3600));
            };
            // On a runtime worker, hand the worker's other tasks to another thread first: the
            // stage is stuck, the rest of the daemon is not.
            match tokio::runtime::Handle::try_current() {
                Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(forever)
                }
                _ => forever(),
            }
        }
    }
}

/// Watches the stages from a thread of its own and feeds the systemd watchdog while all of them
/// make progress (and `alive` holds).
pub struct Monitor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    /// `watchdog`: how often to feed systemd (half of `WATCHDOG_USEC`), `None` when not asked to;
    /// `ended`: the names of the daemon's tasks that have ended (none should, before shutdown).
    pub fn start(
        stages: Stages,
        watchdog: Option<Duration>,
        ended: impl Fn() -> Vec<String> + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("progress-monitor".into())
            .spawn(move || {
                let mut last_feed: Option<Instant> = None;
                let mut reported: Vec<String> = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    let progress = stages.check();
                    let stopping = stages.0.stopping.load(Ordering::Relaxed);
                    let ended = if stopping { Vec::new() } else { ended() };
                    for task in ended.iter().filter(|t| !reported.contains(t)) {
                        telemetry::task_ended(task);
                        error!(task = %task, "a daemon task ended on its own; the systemd watchdog is no longer fed");
                    }
                    reported.clone_from(&ended);
                    let alive = ended.is_empty();
                    if let Some(period) = watchdog
                        && progress
                        && alive
                        && last_feed.is_none_or(|t| t.elapsed() >= period)
                    {
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                        last_feed = Some(Instant::now());
                    }
                    std::thread::sleep(CHECK_PERIOD);
                }
            })
            .expect("spawn the progress monitor thread");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_past_its_deadline_is_stuck_until_it_beats_again() {
        let stages = Stages::new(Duration::from_millis(50));
        let quick = stages.register("quick");
        let _slow = stages.register_with("slow", Duration::from_secs(3600));
        assert!(stages.check());
        std::thread::sleep(Duration::from_millis(80));
        let stuck = stages.stuck();
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert_eq!(stuck[0].stage, "quick");
        assert!(!stages.check());
        quick.beat();
        assert!(stages.check());
        assert!(stages.stuck().is_empty());
    }

    #[test]
    fn retired_stages_and_a_stopping_daemon_are_never_stuck() {
        let stages = Stages::new(Duration::from_millis(10));
        let a = stages.register("a");
        let b = stages.register("b");
        std::thread::sleep(Duration::from_millis(30));
        a.retire();
        assert_eq!(stages.stuck().len(), 1);
        stages.stopping();
        assert!(stages.stuck().is_empty());
        assert!(stages.check());
        drop(b);
    }
}
