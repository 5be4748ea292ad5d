//! Is the detector pool keeping up? Every period, per camera: frames with motion that were replaced
//! in the slot before a worker took them (`overwritten`) against the frames inferred. A camera whose
//! overwritten share passes [`BEHIND_SHARE`] gets fewer inferences than its `detect_fps`: the pool is
//! overloaded. That is a WARN naming the cameras, the `kinderwatch_detect_overloaded` gauge (and
//! `kinderwatch_detect_camera_behind` per camera) and a "degraded" `/healthz`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::pool::{CameraStats, PoolStats};
use crate::telemetry::detect::{self as telemetry, FrameDrop};

/// Share of a camera's frames with motion that may be overwritten before it counts as behind.
pub const BEHIND_SHARE: f64 = 0.1;
/// Fewer overwritten frames than this in a period never count (a jittery camera, one slow frame).
const MIN_OVERWRITTEN: u64 = 3;
/// While the overload lasts, the warning is repeated this often.
const REPEAT_WARNING: Duration = Duration::from_secs(300);

/// One camera the pool is not keeping up with.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BehindCamera {
    #[schema(value_type = String)]
    pub camera: Arc<str>,
    /// Inferences per second over the last period.
    pub inferred_fps: f64,
    /// What the camera asks for: `detect_fps`.
    pub wanted_fps: f64,
}

/// The pool's load, as `/healthz` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DetectorLoad {
    /// Cameras with motion that got fewer inferences than their `detect_fps` in the last period.
    pub behind: Vec<BehindCamera>,
    /// Since when the pool has been overloaded without a break.
    pub overloaded_since: Option<SystemTime>,
}

impl DetectorLoad {
    pub fn is_overloaded(&self) -> bool {
        !self.behind.is_empty()
    }
}

/// Whether a camera fell behind between two readings of its counters.
pub fn is_behind(before: &CameraStats, now: &CameraStats) -> bool {
    let overwritten = now.overwritten.saturating_sub(before.overwritten);
    let inferred = now.inferred.saturating_sub(before.inferred);
    overwritten >= MIN_OVERWRITTEN
        && overwritten as f64 >= BEHIND_SHARE * (overwritten + inferred) as f64
}

/// Reads the pool's counters every `period` until cancelled and publishes the load. For `warmup`
/// after the start no camera counts as behind: every camera's first frames (and the motion gate's
/// `hold` after them) come at once then, a burst the pool works off, not an overload.
pub async fn monitor(
    stats: PoolStats,
    period: Duration,
    warmup: Duration,
    load: watch::Sender<DetectorLoad>,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    let mut before: HashMap<Arc<str>, CameraStats> = stats
        .cameras()
        .into_iter()
        .filter_map(|c| stats.stats(&c).map(|s| (c, s)))
        .collect();
    let mut last_warning: Option<Instant> = None;
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let elapsed = last_tick.elapsed().as_secs_f64().max(1e-3);
        last_tick = Instant::now();
        let warming_up = started.elapsed() < warmup;
        let mut behind = Vec::new();
        for camera in stats.cameras() {
            let Some(now) = stats.stats(&camera) else {
                continue;
            };
            let prev = before.insert(camera.clone(), now).unwrap_or_default();
            telemetry::frames_dropped(
                &camera,
                FrameDrop::Overwritten,
                now.overwritten.saturating_sub(prev.overwritten),
            );
            let is = !warming_up && is_behind(&prev, &now);
            telemetry::camera_behind(&camera, is);
            if is {
                let wanted = stats
                    .interval(&camera)
                    .map(|i| 1.0 / i.as_secs_f64().max(1e-3))
                    .unwrap_or(0.0);
                behind.push(BehindCamera {
                    inferred_fps: now.inferred.saturating_sub(prev.inferred) as f64 / elapsed,
                    wanted_fps: wanted,
                    camera,
                });
            }
        }
        telemetry::overloaded(!behind.is_empty());
        let was = load.borrow().clone();
        let next = DetectorLoad {
            overloaded_since: match (behind.is_empty(), was.overloaded_since) {
                (true, _) => None,
                (false, Some(since)) => Some(since),
                (false, None) => Some(SystemTime::now()),
            },
            behind,
        };
        let names = |l: &DetectorLoad| {
            l.behind
                .iter()
                .map(|b| b.camera.clone())
                .collect::<Vec<_>>()
        };
        if next.is_overloaded() {
            let changed = names(&next) != names(&was);
            if changed || last_warning.is_none_or(|t| t.elapsed() >= REPEAT_WARNING) {
                let cameras = names(&next).join(",");
                let detail = next
                    .behind
                    .iter()
                    .map(|b| format!("{} {:.1}/{:.1}", b.camera, b.inferred_fps, b.wanted_fps))
                    .collect::<Vec<_>>()
                    .join(", ");
                tracing::warn!(cameras = %cameras, inferred_per_wanted_fps = %detail,
                    "detector overloaded: these cameras get fewer inferences than their detect_fps (every camera keeps an equal share; lower detect_fps, add workers or a faster model)");
                last_warning = Some(Instant::now());
            }
        } else if was.is_overloaded() {
            tracing::info!("detector keeps up again with every camera");
            last_warning = None;
        }
        load.send_replace(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(inferred: u64, overwritten: u64) -> CameraStats {
        CameraStats {
            inferred,
            overwritten,
            ..CameraStats::default()
        }
    }

    #[test]
    fn behind_means_a_real_share_of_frames_overwritten() {
        let zero = stats(0, 0);
        // Keeping up: every frame inferred.
        assert!(!is_behind(&zero, &stats(25, 0)));
        // Jitter: two frames replaced in a period is not overload.
        assert!(!is_behind(&zero, &stats(25, 2)));
        assert!(!is_behind(&zero, &stats(100, 5)));
        // Half the frames replaced: behind.
        assert!(is_behind(&zero, &stats(12, 13)));
        // Starved: nothing inferred, frames replaced.
        assert!(is_behind(&zero, &stats(0, 25)));
        // Differences, not totals.
        assert!(!is_behind(&stats(1000, 500), &stats(1025, 500)));
    }
}
