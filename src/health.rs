//! Camera health events: `camera_offline` when a camera has not streamed for `offline_grace`,
//! `camera_online` when it streams again, and `camera_tampered` when its picture has been black,
//! uniform (covered, sprayed) or frozen (the same frame over and over) for `tamper_after`.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::camera::{CameraHandle, CameraState};
use crate::detect::motion::PictureStats;
use crate::detect::pool::PoolStats;
use crate::events::RecordedEvent;
use crate::events::{Event, EventKind};

/// `[health]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// A camera not streaming for this long raises `camera_offline`. Default: 60s.
    #[serde(with = "humantime_serde")]
    pub offline_grace: Duration,
    /// A black, uniform or frozen picture for this long raises `camera_tampered`. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub tamper_after: Duration,
    /// Mean gray level below which a picture is black (0-255). Default: 16.
    pub black_level: f32,
    /// Gray-level spread below which a picture is uniform. Default: 4.
    pub uniform_spread: f32,
    /// Mean change per cell between frames below which a picture is frozen. A repeated frame
    /// re-encoded at each keyframe changes by ~0.001; a still real scene's sensor noise by 0.3 or
    /// more. Default: 0.02.
    pub frozen_change: f32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            offline_grace: Duration::from_secs(60),
            tamper_after: Duration::from_secs(30),
            black_level: 16.0,
            uniform_spread: 4.0,
            frozen_change: 0.02,
        }
    }
}

impl HealthConfig {
    /// Puts the section's problems (paths `health.*`) in `v`.
    pub fn validate(&self, v: &mut crate::validate::Validator) {
        for (k, d) in [
            ("offline_grace", self.offline_grace),
            ("tamper_after", self.tamper_after),
        ] {
            if d.is_zero() {
                v.err(&format!("health.{k}"), "must be greater than zero");
            }
        }
    }
}

/// What is wrong with a picture, if anything.
pub fn tamper_condition(p: &PictureStats, cfg: &HealthConfig) -> Option<&'static str> {
    if p.mean < cfg.black_level {
        Some("black picture")
    } else if p.spread < cfg.uniform_spread {
        Some("uniform picture")
    } else if p.change < cfg.frozen_change {
        Some("frozen picture")
    } else {
        None
    }
}

const TICK: Duration = Duration::from_millis(500);

/// Watches one camera until cancelled; health events go to `events`.
pub async fn watch_camera(
    camera: CameraHandle,
    site: String,
    pictures: Option<PoolStats>,
    cfg: HealthConfig,
    events: mpsc::Sender<RecordedEvent>,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    let mut down_since: Option<Instant> = Some(started);
    let mut offline_reported = false;
    let mut tamper_since: Option<(Instant, &'static str)> = None;
    let mut tamper_reported = false;
    let mut tick = tokio::time::interval(TICK);
    let emit = |kind: EventKind, started_at: Timestamp, detail: String| {
        let mut e = Event::new(kind, &site, &camera.id, Timestamp::now());
        e.started_at = started_at;
        e.detail = Some(detail);
        match kind {
            EventKind::CameraOnline => {
                info!(event_id = %e.id, camera = %camera.id, kind = kind.as_str(), "event")
            }
            _ => {
                warn!(event_id = %e.id, camera = %camera.id, kind = kind.as_str(), detail = e.detail.as_deref().unwrap_or(""), "event")
            }
        }
        let recorded = RecordedEvent {
            event: e,
            snapshot: None,
        };
        if let Err(why) = crate::events::offer(&events, recorded) {
            warn!(camera = %camera.id, reason = why.as_str(), "event queue full: health event not recorded");
        }
    };
    let ago = |t: Instant| {
        Timestamp::now() - jiff::SignedDuration::try_from(t.elapsed()).unwrap_or_default()
    };
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = camera.status.borrow().clone();
        if matches!(status.state, CameraState::Disabled | CameraState::Stopped) {
            continue;
        }
        let now = Instant::now();
        if status.state == CameraState::Streaming {
            if offline_reported {
                emit(
                    EventKind::CameraOnline,
                    Timestamp::now(),
                    "streaming again".into(),
                );
                offline_reported = false;
            }
            down_since = None;
        } else {
            let since = *down_since.get_or_insert(now);
            if !offline_reported && now.duration_since(since) >= cfg.offline_grace {
                let why = status
                    .last_error
                    .clone()
                    .unwrap_or_else(|| status.state.to_string());
                emit(
                    EventKind::CameraOffline,
                    ago(since),
                    format!("{}: {why}", status.state),
                );
                offline_reported = true;
            }
        }
        let condition = (status.state == CameraState::Streaming)
            .then(|| pictures.as_ref().and_then(|p| p.picture(&camera.id)))
            .flatten()
            .and_then(|p| tamper_condition(&p, &cfg));
        match (condition, tamper_since) {
            (Some(c), Some((since, prev))) if c == prev => {
                if !tamper_reported && now.duration_since(since) >= cfg.tamper_after {
                    emit(EventKind::CameraTampered, ago(since), c.to_owned());
                    tamper_reported = true;
                }
            }
            (Some(c), _) => tamper_since = Some((now, c)),
            (None, _) => {
                tamper_since = None;
                tamper_reported = false;
            }
        }
    }
}
