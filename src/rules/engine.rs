//! The per-camera rules engine: confirmed tracks in, rule hits out.
//!
//! Every rule keeps one state per track (its side of a tripwire, its stay in a zone). States are
//! updated whenever the track is seen, armed or not, so arming a rule in the middle of someone's
//! walk does not invent a crossing; hits are reported only while the rule is armed (config flag
//! or run-time command) and inside its schedule, and a (track, rule) pair fires again only after
//! the rule's cooldown. Tracks whose feet are in an object mask are ignored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use geo::Polygon;
use jiff::Timestamp;
use serde::Serialize;

use super::geometry::contains;
use super::schedule::Schedule;
use super::tracker::Track;
use super::tripwire::{Crossing, Direction, Tripwire, TripwireState};
use super::zone::{Zone, ZoneChange, ZoneState};
use crate::detect::BBox;

/// What happened (events name it: `crate::events::EventKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HitKind {
    LineCrossed,
    ZoneEntered,
    ZoneLeft,
    Loitering,
}

/// The geometry a rule tests, drawn on its snapshots.
#[derive(Debug, Clone)]
pub enum RuleShape {
    Line(Vec<(f32, f32)>),
    Polygon(Vec<(f32, f32)>),
}

impl RuleShape {
    /// The line's or polygon's points.
    pub fn points(&self) -> &[(f32, f32)] {
        match self {
            Self::Line(p) | Self::Polygon(p) => p,
        }
    }
}

/// What makes a rule hit: a line crossed, a zone entered or left, a zone loitered in.
pub enum Trigger {
    Tripwire {
        wire: Tripwire,
        direction: Direction,
    },
    Zone {
        zone: Zone,
        report_left: bool,
    },
    Loitering {
        zone: Zone,
    },
}

impl Trigger {
    /// `tripwire`, `zone` or `loitering` (the config's `kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tripwire { .. } => "tripwire",
            Self::Zone { .. } => "zone",
            Self::Loitering { .. } => "loitering",
        }
    }

    /// A tripwire's direction as the config spells it.
    pub fn direction(&self) -> Option<&'static str> {
        match self {
            Self::Tripwire { direction, .. } => Some(match direction {
                Direction::Left => "left",
                Direction::Right => "right",
                Direction::Any => "any",
            }),
            _ => None,
        }
    }
}

/// Which objects a rule looks at.
#[derive(Debug, Clone)]
pub struct ObjectFilter {
    pub classes: Vec<String>,
    pub min_score: f32,
    /// Least box width and height, fractions of the frame.
    pub min_box: (f32, f32),
}

impl ObjectFilter {
    fn accepts<S>(&self, t: &Track<S>) -> bool {
        self.classes.iter().any(|c| **c == *t.label)
            && t.score >= self.min_score
            && t.bbox.width() >= self.min_box.0
            && t.bbox.height() >= self.min_box.1
    }
}

pub struct Rule {
    pub id: Arc<str>,
    pub trigger: Trigger,
    pub shape: RuleShape,
    pub filter: ObjectFilter,
    pub schedule: Schedule,
    /// Armed in the config; a run-time command overrides it.
    pub armed: bool,
    pub cooldown: Duration,
}

/// A rule that fired for a track.
#[derive(Debug, Clone)]
pub struct RuleHit {
    pub rule: Arc<str>,
    pub kind: HitKind,
    pub crossing: Option<Crossing>,
    pub track_id: u64,
    /// Wall-clock time of the frame that fired the rule.
    pub time: Timestamp,
    /// When the track was first seen, in wall-clock time (its age on the monotonic clock
    /// before `time`).
    pub started_at: Timestamp,
    pub label: Arc<str>,
    pub score: f32,
    pub bbox: BBox,
}

enum State {
    Tripwire(TripwireState),
    Zone(ZoneState),
}

struct PairState {
    state: State,
    last_fired: Option<Timestamp>,
}

pub struct Engine {
    rules: Vec<Rule>,
    masks: Vec<Polygon<f32>>,
    states: HashMap<(usize, u64), PairState>,
    /// Run-time arming, by rule id; overrides `Rule::armed`.
    armed_override: HashMap<Arc<str>, bool>,
}

impl Engine {
    pub fn new(rules: Vec<Rule>, masks: Vec<Polygon<f32>>) -> Self {
        Self {
            rules,
            masks,
            states: HashMap::new(),
            armed_override: HashMap::new(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Arms or disarms a rule at run time; false if this engine has no such rule.
    pub fn set_armed(&mut self, rule: &str, armed: bool) -> bool {
        match self.rules.iter().find(|r| &*r.id == rule) {
            Some(r) => {
                self.armed_override.insert(r.id.clone(), armed);
                true
            }
            None => false,
        }
    }

    pub fn is_armed(&self, rule: &Rule) -> bool {
        self.armed_override
            .get(&rule.id)
            .copied()
            .unwrap_or(rule.armed)
    }

    /// Is the rule reporting at `t` (armed and inside its schedule)?
    pub fn is_active(&self, rule: &Rule, t: Timestamp) -> bool {
        self.is_armed(rule) && rule.schedule.is_active(t)
    }

    /// Evaluates every rule against the tracks seen at rule time `t` (monotonic: dwell and
    /// cooldowns), with `wall` the frame's wall-clock time (schedules and the hit's time).
    pub fn evaluate<S>(
        &mut self,
        t: Timestamp,
        wall: Timestamp,
        tracks: &[Track<S>],
    ) -> Vec<RuleHit> {
        let mut hits = Vec::new();
        for track in tracks.iter().filter(|tr| tr.confirmed && tr.seen_now()) {
            let feet = track.feet();
            if self.masks.iter().any(|m| contains(m, feet)) {
                continue;
            }
            for (ri, rule) in self.rules.iter().enumerate() {
                if !rule.filter.accepts(track) {
                    continue;
                }
                let pair = self
                    .states
                    .entry((ri, track.id))
                    .or_insert_with(|| PairState {
                        state: match rule.trigger {
                            Trigger::Tripwire { .. } => State::Tripwire(TripwireState::default()),
                            _ => State::Zone(ZoneState::default()),
                        },
                        last_fired: None,
                    });
                let (kind, crossing) = match (&rule.trigger, &mut pair.state) {
                    (Trigger::Tripwire { wire, direction }, State::Tripwire(s)) => match wire
                        .update(s, feet)
                    {
                        Some(c) if direction.matches(c) => (Some(HitKind::LineCrossed), Some(c)),
                        _ => (None, None),
                    },
                    (Trigger::Zone { zone, report_left }, State::Zone(s)) => match zone
                        .update(s, feet, t)
                    {
                        Some(ZoneChange::Entered) => (Some(HitKind::ZoneEntered), None),
                        Some(ZoneChange::Left) if *report_left => (Some(HitKind::ZoneLeft), None),
                        _ => (None, None),
                    },
                    (Trigger::Loitering { zone }, State::Zone(s)) => {
                        match zone.update(s, feet, t) {
                            Some(ZoneChange::Loitering) => (Some(HitKind::Loitering), None),
                            _ => (None, None),
                        }
                    }
                    _ => (None, None),
                };
                let Some(kind) = kind else { continue };
                let armed = self
                    .armed_override
                    .get(&rule.id)
                    .copied()
                    .unwrap_or(rule.armed);
                if !armed || !rule.schedule.is_active(wall) {
                    continue;
                }
                if pair
                    .last_fired
                    .is_some_and(|f| t.duration_since(f).unsigned_abs() < rule.cooldown)
                {
                    continue;
                }
                pair.last_fired = Some(t);
                hits.push(RuleHit {
                    rule: rule.id.clone(),
                    kind,
                    crossing,
                    track_id: track.id,
                    time: wall,
                    started_at: wall
                        .checked_sub(t.duration_since(track.first_seen))
                        .unwrap_or(wall),
                    label: track.label.clone(),
                    score: track.score,
                    bbox: track.bbox,
                });
            }
        }
        hits
    }

    /// Drops the states of tracks that ended.
    pub fn forget(&mut self, track_ids: &[u64]) {
        if !track_ids.is_empty() {
            self.states.retain(|(_, id), _| !track_ids.contains(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Detection;
    use crate::rules::geometry::polygon;
    use crate::rules::tracker::{Tracker, TrackerConfig};
    use jiff::ToSpan;
    use jiff::tz::TimeZone;

    fn filter() -> ObjectFilter {
        ObjectFilter {
            classes: vec!["person".into()],
            min_score: 0.3,
            min_box: (0.01, 0.01),
        }
    }

    fn tripwire_rule(schedule: Schedule, cooldown: Duration) -> Rule {
        Rule {
            id: "fence".into(),
            trigger: Trigger::Tripwire {
                wire: Tripwire::new(vec![(0.0, 0.5), (1.0, 0.5)], 0.01),
                direction: Direction::Any,
            },
            shape: RuleShape::Line(vec![(0.0, 0.5), (1.0, 0.5)]),
            filter: filter(),
            schedule,
            armed: true,
            cooldown,
        }
    }

    /// A person walking down across the middle line and back up, one step per 200 ms.
    fn walk(engine: &mut Engine, start: Timestamp) -> Vec<RuleHit> {
        let mut tracker: Tracker<()> = Tracker::new(TrackerConfig::default());
        let mut hits = vec![];
        let ys: Vec<f32> = (0..20)
            .map(|i| 0.1 + 0.03 * i as f32)
            .chain((0..20).map(|i| 0.7 - 0.03 * i as f32))
            .collect();
        for (i, y) in ys.iter().enumerate() {
            let t = start + (i as i64 * 200).milliseconds();
            let d = Detection {
                class_id: 0,
                label: "person".into(),
                score: 0.8,
                bbox: BBox::new(0.45, y - 0.2, 0.55, *y),
            };
            tracker.update(t, &[d], &());
            hits.extend(engine.evaluate(t, t, tracker.tracks()));
        }
        hits
    }

    #[test]
    fn cooldown_makes_one_track_fire_a_rule_once() {
        let t0 = Timestamp::UNIX_EPOCH;
        let mut e = Engine::new(
            vec![tripwire_rule(
                Schedule::always(TimeZone::UTC),
                Duration::from_secs(60),
            )],
            vec![],
        );
        let hits = walk(&mut e, t0);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(
            (hits[0].kind, hits[0].crossing),
            (HitKind::LineCrossed, Some(Crossing::Right))
        );
        // Without a cooldown both passes count, in opposite directions.
        let mut e = Engine::new(
            vec![tripwire_rule(
                Schedule::always(TimeZone::UTC),
                Duration::ZERO,
            )],
            vec![],
        );
        let dirs: Vec<_> = walk(&mut e, t0).iter().map(|h| h.crossing).collect();
        assert_eq!(dirs, vec![Some(Crossing::Right), Some(Crossing::Left)]);
    }

    #[test]
    fn disarmed_or_unscheduled_rules_stay_silent() {
        let t0: Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let mut e = Engine::new(
            vec![tripwire_rule(
                Schedule::always(TimeZone::UTC),
                Duration::ZERO,
            )],
            vec![],
        );
        assert!(e.set_armed("fence", false));
        assert!(!e.set_armed("nope", false));
        assert!(walk(&mut e, t0).is_empty());
        e.set_armed("fence", true);
        assert_eq!(walk(&mut e, t0 + 1.hour()).len(), 2);
        let night = Schedule::new(TimeZone::UTC, &["22:00-06:00".into()], &[]).unwrap();
        let mut e = Engine::new(vec![tripwire_rule(night, Duration::ZERO)], vec![]);
        assert!(walk(&mut e, t0).is_empty(), "noon is outside 22:00-06:00");
        assert_eq!(walk(&mut e, t0 + 11.hours()).len(), 2, "23:00 is inside");
    }

    #[test]
    fn masked_feet_are_ignored() {
        let mask = polygon(&[[0.4, 0.0], [0.6, 0.0], [0.6, 1.0], [0.4, 1.0]]);
        let mut e = Engine::new(
            vec![tripwire_rule(
                Schedule::always(TimeZone::UTC),
                Duration::ZERO,
            )],
            vec![mask],
        );
        assert!(walk(&mut e, Timestamp::UNIX_EPOCH).is_empty());
    }
}
