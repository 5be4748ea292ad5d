//! The perimeter stage: detections in, events out. Per camera a [`Tracker`] gives people stable
//! ids and an [`Engine`] applies that camera's rules; each rule hit becomes an [`Event`] with a
//! snapshot (the track's best frame, drawn on). Runs as one task; snapshots are encoded off the
//! rules loop ([`encode`]): no camera waits for another's JPEG. Each camera's engine is built from
//! the config's compiled rules ([`StageRules`], from [`Config::rule_specs`]); [`arming`] keeps run-time arming across
//! restarts.

pub mod arming;
pub mod encode;

pub use arming::{ArmingError, ArmingStore};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::detect::FrameDetections;
use crate::detect::summary::DetectionSummary;
use crate::events::{Event, EventObject, SnapshotFrame};
use crate::rules::engine::{Engine, RuleHit};
use crate::rules::spec::SiteRules;
use crate::rules::tracker::{Tracker, TrackerConfig};

pub use crate::control::{RuleCommand, RuleStatus, SetArmedError};
pub use crate::events::RecordedEvent;

/// One camera's tracker and rules engine.
struct Camera {
    tracker: Tracker<SnapshotFrame>,
    engine: Engine,
    live_tracks: Option<Arc<AtomicBool>>,
}

/// What the perimeter stage talks to besides the detections.
pub struct PerimeterIo {
    /// Per camera: the flag that keeps the camera inferred while it has live tracks.
    pub live_tracks: HashMap<Arc<str>, Arc<AtomicBool>>,
    pub events: mpsc::Sender<RecordedEvent>,
    pub summary: Option<DetectionSummary>,
    pub commands: Option<mpsc::Receiver<RuleCommand>>,
    pub arming: Option<ArmingStore>,
    /// Beaten each time the stage's loop turns (stage `rules`).
    pub progress: Option<crate::progress::Progress>,
    /// New rules from a live reload.
    pub reload: Option<mpsc::Receiver<RulesReload>>,
}

/// New compiled rules for the running stage (a live reload). Each camera keeps its tracks; its
/// engine is built anew (cooldowns and dwell times start afresh) with the run-time arming
/// applied again. `done` is answered once they apply.
pub struct RulesReload {
    pub rules: StageRules,
    /// Every camera's live-tracks flag now (cameras added or removed); `None`: the same as before.
    pub live_tracks: Option<HashMap<Arc<str>, Arc<AtomicBool>>>,
    pub done: tokio::sync::oneshot::Sender<()>,
}

/// What the rules stage runs: the site, and the compiled rules of each enabled camera.
#[derive(Debug, Clone)]
pub struct StageRules {
    pub site: String,
    pub rules: SiteRules,
}

impl StageRules {
    /// From a config: compiling its rules is the same step as validating them, so a config that
    /// loaded gives no problem here (one edited since may).
    pub fn from_config(config: &Config) -> Result<Self, Vec<crate::validate::Problem>> {
        let mut rules = config.rule_specs()?;
        rules
            .cameras
            .retain(|c| config.enabled_cameras().any(|cam| cam.id == c.camera));
        Ok(Self {
            site: config.site.id.clone(),
            rules,
        })
    }
}

/// Runs tracking and rules over the pool's results until cancelled (then over those still
/// queued) or until the detections end; events go to `io.events`.
/// Building each camera's engine from its compiled rules cannot fail.
pub async fn run(
    stage: StageRules,
    mut detections: mpsc::Receiver<FrameDetections>,
    io: PerimeterIo,
    cancel: CancellationToken,
) {
    let PerimeterIo {
        mut live_tracks,
        events,
        mut summary,
        mut commands,
        arming,
        progress,
        mut reload,
    } = io;
    let mut beat = tokio::time::interval(crate::progress::BEAT_PERIOD);
    let mut tick = tokio::time::interval(SUMMARY_PERIOD);
    tick.tick().await;
    let StageRules {
        site: mut site_id,
        rules: mut site,
    } = stage;
    let mut cameras: HashMap<Arc<str>, Camera> = HashMap::new();
    build_cameras(&site, &mut cameras, &live_tracks);
    let mut armed_state = match arming.as_ref().map(ArmingStore::load) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            warn!(error = %e, "run-time arming state not loaded; using the config's armed flags");
            BTreeMap::new()
        }
        None => BTreeMap::new(),
    };
    armed_state.retain(|rule, armed| {
        let known = cameras
            .values_mut()
            .any(|c| c.engine.set_armed(rule, *armed));
        if known {
            info!(rule = %rule, armed = *armed, "run-time arming restored");
        }
        known
    });
    let clock = RuleClock::new();
    let encoder = encode::SnapshotEncoder::new(events);
    // Once cancelled, the stage takes no new detections but finishes those queued (the pool's
    // last frames), then ends.
    let mut stopping = false;
    loop {
        if let Some(p) = &progress {
            p.beat();
        }
        let r = tokio::select! {
            biased;
            _ = cancel.cancelled(), if !stopping => {
                stopping = true;
                detections.close();
                continue;
            }
            _ = beat.tick() => continue,
            _ = tick.tick() => {
                if let Some(s) = &mut summary {
                    s.flush();
                }
                continue;
            }
            Some(cmd) = async { match commands.as_mut() { Some(c) => c.recv().await, None => std::future::pending().await } } => {
                handle_command(cmd, &mut cameras, &mut armed_state, arming.as_ref());
                continue;
            }
            Some(new) = async { match reload.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                let RulesReload { rules, live_tracks: flags, done } = new;
                // The reloader gave up waiting (and told its caller "not applied"): skip it.
                if done.is_closed() {
                    warn!("a rules reload arrived after its reloader gave up; not applied");
                    continue;
                }
                site_id = rules.site;
                site = rules.rules;
                if let Some(flags) = flags {
                    live_tracks = flags;
                }
                build_cameras(&site, &mut cameras, &live_tracks);
                for (rule, armed) in &armed_state {
                    cameras.values_mut().any(|c| c.engine.set_armed(rule, *armed));
                }
                let count: usize = site.cameras.iter().map(|c| c.rules.len()).sum();
                info!(rules = count, cameras = site.cameras.len(), "rules reloaded");
                let _ = done.send(());
                continue;
            }
            r = detections.recv() => match r { Some(r) => r, None => break },
        };
        if let Some(s) = &mut summary {
            s.record(&r);
        }
        let Some(cam) = cameras.get_mut(&r.frame.camera) else {
            continue;
        };
        // Tracking, dwell and cooldowns on the monotonic clock; schedules and event times on the
        // wall clock (an NTP step moves the latter, never the former).
        let wall = Timestamp::try_from(r.frame.captured_at).unwrap_or_else(|_| Timestamp::now());
        let t = clock.at(r.frame.captured);
        let ended = cam.tracker.update(t, &r.detections, &r.frame);
        let ended_ids: Vec<u64> = ended.iter().map(|tr| tr.id).collect();
        cam.engine.forget(&ended_ids);
        let hits = cam.engine.evaluate(t, wall, cam.tracker.tracks());
        if let Some(flag) = &cam.live_tracks {
            flag.store(cam.tracker.has_live_tracks(), Ordering::Relaxed);
        }
        debug!(camera = %r.frame.camera, seq = r.frame.seq, objects = r.detections.len(),
               tracks = cam.tracker.tracks().len(), hits = hits.len(), "frame analysed");
        for hit in hits {
            let (event, job) = build_event(&site_id, &site.time_zone, cam, &r.frame.camera, &hit);
            encoder.submit(event, job);
        }
    }
    if let Some(p) = &progress {
        p.retire();
    }
    encoder.finish(ENCODE_DRAIN).await;
}

/// Each camera of `site` with its engine built from its compiled rules; a camera already there
/// keeps its tracker, one no longer in `site` goes.
fn build_cameras(
    site: &SiteRules,
    cameras: &mut HashMap<Arc<str>, Camera>,
    live_tracks: &HashMap<Arc<str>, Arc<AtomicBool>>,
) {
    let mut old = std::mem::take(cameras);
    // Every enabled camera has its entry, with or without rules.
    for rules in &site.cameras {
        let id: Arc<str> = rules.camera.as_str().into();
        let tracker = old
            .remove(&id)
            .map(|c| c.tracker)
            .unwrap_or_else(|| Tracker::new(TrackerConfig::default()));
        cameras.insert(
            id.clone(),
            Camera {
                tracker,
                engine: Engine::from(rules),
                live_tracks: live_tracks.get(&id).cloned(),
            },
        );
    }
}

/// How long the stage waits at its end for the snapshots being encoded.
const ENCODE_DRAIN: Duration = Duration::from_secs(2);

fn handle_command(
    cmd: RuleCommand,
    cameras: &mut HashMap<Arc<str>, Camera>,
    armed_state: &mut BTreeMap<String, bool>,
    arming: Option<&ArmingStore>,
) {
    match cmd {
        RuleCommand::SetArmed { rule, armed, reply } => {
            let known = cameras
                .values_mut()
                .any(|c| c.engine.set_armed(&rule, armed));
            let result = if !known {
                Err(SetArmedError::NoSuchRule(rule))
            } else {
                armed_state.insert(rule.clone(), armed);
                let saved = arming.map(|a| a.save(armed_state)).transpose().map(|_| ());
                if let Err(e) = &saved {
                    warn!(rule = %rule, error = %e, "run-time arming not saved; it is lost on restart");
                }
                info!(rule = %rule, armed, "rule armed state changed");
                saved.map_err(|e| SetArmedError::NotSaved(e.into()))
            };
            let _ = reply.send(result);
        }
        RuleCommand::List { reply } => {
            let now = Timestamp::now();
            let mut list: Vec<RuleStatus> = cameras
                .iter()
                .flat_map(|(camera, c)| {
                    c.engine.rules().iter().map(move |r| RuleStatus {
                        id: r.id.to_string(),
                        camera: camera.to_string(),
                        kind: r.trigger.kind(),
                        shape: r.shape.points().iter().map(|&(x, y)| [x, y]).collect(),
                        direction: r.trigger.direction(),
                        armed: c.engine.is_armed(r),
                        active: c.engine.is_active(r, now),
                    })
                })
                .collect();
            list.sort_by(|a, b| a.id.cmp(&b.id));
            let _ = reply.send(list);
        }
    }
}

/// Rule time: a timestamp that advances with the monotonic clock (the frames' capture
/// `Instant`s) from where the wall clock stood when the stage started. Tracking, dwell, `min_frames`
/// and cooldowns run on it, so a wall-clock step (NTP, an operator setting the time) fires no
/// false loitering and loses no track; event times and schedules stay on the wall clock.
struct RuleClock {
    anchor: std::time::Instant,
    at: Timestamp,
}

impl RuleClock {
    fn new() -> Self {
        Self {
            anchor: std::time::Instant::now(),
            at: Timestamp::now(),
        }
    }

    fn at(&self, captured: std::time::Instant) -> Timestamp {
        let d = match captured.checked_duration_since(self.anchor) {
            Some(after) => {
                jiff::SignedDuration::try_from(after).unwrap_or(jiff::SignedDuration::MAX)
            }
            None => -jiff::SignedDuration::try_from(self.anchor - captured)
                .unwrap_or(jiff::SignedDuration::MAX),
        };
        self.at.checked_add(d).unwrap_or(self.at)
    }
}

/// The event of one rule hit, and what its snapshot is drawn from (the track's best frame).
fn build_event(
    site: &str,
    tz: &TimeZone,
    cam: &Camera,
    camera: &str,
    hit: &RuleHit,
) -> (Event, Option<encode::SnapshotJob>) {
    let mut event = Event::new(hit.kind.into(), site, camera, hit.time);
    event.rule = Some(hit.rule.to_string());
    event.object = Some(EventObject {
        class: hit.label.to_string(),
        score: hit.score,
        bbox: hit.bbox,
        track_id: hit.track_id,
        crossing: hit.crossing,
    });
    event.started_at = hit.started_at;
    let track = cam.tracker.tracks().iter().find(|t| t.id == hit.track_id);
    let shape = cam
        .engine
        .rules()
        .iter()
        .find(|r| r.id == hit.rule)
        .map(|r| r.shape.clone());
    let job = track.map(|t| {
        let (_, bbox, frame) = t.best.clone();
        let caption = format!(
            "{} {} {} {}",
            hit.time.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M:%S"),
            camera,
            hit.rule,
            event.kind.as_str()
        );
        encode::SnapshotJob {
            frame,
            bbox,
            shape,
            caption,
        }
    });
    (event, job)
}

/// The default period of the detection summary log.
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(5);
