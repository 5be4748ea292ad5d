//! From the validated config to each camera's rules engine: tripwires, zones and loitering with
//! their schedules, filters and object masks.

use jiff::tz::TimeZone;

use crate::config::{Config, RuleConfig, RuleKind};
use crate::rules::engine::{Engine, ObjectFilter, Rule, RuleShape, Trigger};
use crate::rules::geometry::polygon;
use crate::rules::tripwire::Tripwire;
use crate::rules::zone::Zone;

/// Why a camera's engine could not be built (a config that passed validation never gives one:
/// validation checks the same things, the schedule with the same function).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("site.time_zone: {0}")]
    TimeZone(String),
    #[error("no camera {0:?}")]
    NoCamera(String),
    #[error("rule {rule}: no zone {zone:?} (zone and loitering rules need one)")]
    NoZone { rule: String, zone: String },
    #[error("rule {rule}: schedule: {source}")]
    Schedule {
        rule: String,
        source: crate::rules::schedule::ScheduleError,
    },
}

/// Builds the rules engine of one camera from a validated config.
pub fn engine_for(config: &Config, camera: &str) -> Result<Engine, BuildError> {
    let tz =
        TimeZone::get(&config.site.time_zone).map_err(|e| BuildError::TimeZone(e.to_string()))?;
    let cam = config
        .cameras
        .iter()
        .find(|c| c.id == camera)
        .ok_or_else(|| BuildError::NoCamera(camera.to_owned()))?;
    let rules = config
        .rules
        .iter()
        .filter(|r| r.camera == camera)
        .map(|r| rule(config, r, &tz))
        .collect::<Result<Vec<_>, _>>()?;
    let masks = cam.object_masks.iter().map(|m| polygon(m)).collect();
    Ok(Engine::new(rules, masks))
}

fn rule(config: &Config, r: &RuleConfig, tz: &TimeZone) -> Result<Rule, BuildError> {
    let points = |v: &[[f32; 2]]| v.iter().map(|p| (p[0], p[1])).collect::<Vec<_>>();
    let zone_points = || -> Result<&Vec<[f32; 2]>, BuildError> {
        let id = r.zone.as_deref().unwrap_or("");
        config
            .zones
            .iter()
            .find(|z| z.id == id)
            .map(|z| &z.polygon)
            .ok_or_else(|| BuildError::NoZone {
                rule: r.id.clone(),
                zone: id.to_owned(),
            })
    };
    let (trigger, shape) = match r.kind {
        RuleKind::Tripwire => (
            Trigger::Tripwire {
                wire: Tripwire::new(points(&r.line), r.hysteresis),
                direction: r.direction,
            },
            RuleShape::Line(points(&r.line)),
        ),
        RuleKind::Zone => {
            let p = zone_points()?;
            (
                Trigger::Zone {
                    zone: Zone::new(polygon(p), r.min_frames, None),
                    report_left: r.report_left,
                },
                RuleShape::Polygon(points(p)),
            )
        }
        RuleKind::Loitering => {
            let p = zone_points()?;
            (
                Trigger::Loitering {
                    zone: Zone::new(polygon(p), r.min_frames, r.dwell),
                },
                RuleShape::Polygon(points(p)),
            )
        }
    };
    let schedule = r.schedule(tz).map_err(|source| BuildError::Schedule {
        rule: r.id.clone(),
        source,
    })?;
    Ok(Rule {
        id: r.id.as_str().into(),
        trigger,
        shape,
        filter: ObjectFilter {
            classes: r.classes.clone(),
            min_score: r.min_score,
            min_box: (r.min_box[0], r.min_box[1]),
        },
        schedule,
        armed: r.armed,
        cooldown: r.cooldown,
    })
}
