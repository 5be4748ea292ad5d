//! A site's rules, parsed and checked: what each camera's rules engine is built from. The rules
//! section compiles into these ([`super::config::compile`]) or into problems, so everything that
//! can be wrong was found before; [`Engine`] is built from a [`CameraRules`] without a failure.

use std::time::Duration;

use geo::Polygon;
use jiff::tz::TimeZone;

use super::engine::{Engine, ObjectFilter, Rule, RuleShape, Trigger};
use super::geometry::polygon;
use super::schedule::Schedule;
use super::tripwire::{Direction, Tripwire};
use super::zone::Zone;

/// Every camera's rules, in `[[cameras]]` order (a camera without rules has an empty set).
#[derive(Debug, Clone)]
pub struct SiteRules {
    /// The site's time zone, which the schedules are in.
    pub time_zone: TimeZone,
    pub cameras: Vec<CameraRules>,
}

impl SiteRules {
    pub fn camera(&self, id: &str) -> Option<&CameraRules> {
        self.cameras.iter().find(|c| c.camera == id)
    }
}

/// One camera's rules and the object masks they all ignore.
#[derive(Debug, Clone)]
pub struct CameraRules {
    pub camera: String,
    pub rules: Vec<RuleSpec>,
    pub object_masks: Vec<Polygon<f32>>,
}

/// One rule, its zone resolved and its schedule parsed.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub id: String,
    pub trigger: TriggerSpec,
    pub filter: ObjectFilter,
    pub schedule: Schedule,
    /// Armed at start; run-time arming overrides it.
    pub armed: bool,
    pub cooldown: Duration,
}

/// What makes the rule hit, with its geometry in [x, y] fractions of the frame.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerSpec {
    Tripwire {
        line: Vec<[f32; 2]>,
        direction: Direction,
        hysteresis: f32,
    },
    Zone {
        zone: String,
        polygon: Vec<[f32; 2]>,
        min_frames: u32,
        report_left: bool,
    },
    Loitering {
        zone: String,
        polygon: Vec<[f32; 2]>,
        min_frames: u32,
        dwell: Duration,
    },
}

impl From<&CameraRules> for Engine {
    fn from(c: &CameraRules) -> Engine {
        Engine::new(c.rules.iter().map(rule).collect(), c.object_masks.clone())
    }
}

fn rule(r: &RuleSpec) -> Rule {
    let points = |v: &[[f32; 2]]| v.iter().map(|p| (p[0], p[1])).collect::<Vec<_>>();
    let (trigger, shape) = match &r.trigger {
        TriggerSpec::Tripwire {
            line,
            direction,
            hysteresis,
        } => (
            Trigger::Tripwire {
                wire: Tripwire::new(points(line), *hysteresis),
                direction: *direction,
            },
            RuleShape::Line(points(line)),
        ),
        TriggerSpec::Zone {
            polygon: p,
            min_frames,
            report_left,
            ..
        } => (
            Trigger::Zone {
                zone: Zone::new(polygon(p), *min_frames, None),
                report_left: *report_left,
            },
            RuleShape::Polygon(points(p)),
        ),
        TriggerSpec::Loitering {
            polygon: p,
            min_frames,
            dwell,
            ..
        } => (
            Trigger::Loitering {
                zone: Zone::new(polygon(p), *min_frames, Some(*dwell)),
            },
            RuleShape::Polygon(points(p)),
        ),
    };
    Rule {
        id: r.id.as_str().into(),
        trigger,
        shape,
        filter: r.filter.clone(),
        schedule: r.schedule.clone(),
        armed: r.armed,
        cooldown: r.cooldown,
    }
}
