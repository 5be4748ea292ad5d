//! `[[zones]]` and `[[rules]]`: the rules section of the config file, and its compilation into
//! [`SiteRules`]. Compiling is validating: every mistake becomes a [`Problem`] at its key path
//! (`rules[2].schedule`), and what compiles without one is what the engines are built from, so
//! building them cannot fail. [`crate::config`] re-exports these types.

use std::collections::HashSet;
use std::time::Duration;

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::engine::ObjectFilter;
use super::geometry::{polygon, polygon_problem};
use super::schedule::{Schedule, ScheduleError, Window};
use super::spec::{CameraRules, RuleSpec, SiteRules, TriggerSpec};
pub use super::tripwire::Direction;
use super::tripwire::tripwire_problem;
#[cfg(doc)]
use crate::validate::Problem;
use crate::validate::Validator;

/// One `[[zones]]` entry: a named polygon on one camera, used by zone and loitering rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// Zone id: `[a-z0-9_-]`, unique. Required.
    pub id: String,
    /// The camera it is drawn on. Required.
    pub camera: String,
    /// [x, y] points, fractions of the frame (0..1), at least 3, not crossing. Required.
    pub polygon: Vec<[f32; 2]>,
}

/// What a rule detects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    /// A person's feet cross a line (`line`, `direction`): event `line_crossed`.
    Tripwire,
    /// A person enters a zone (`zone`, `min_frames`): event `zone_entered` (and `zone_left`).
    Zone,
    /// A person stays in a zone longer than `dwell`: event `loitering`.
    Loitering,
}

/// A dated exception to a rule's weekly schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleException {
    /// "YYYY-MM-DD".
    pub date: String,
    /// Windows starting that day instead of the weekly ones ("HH:MM-HH:MM"); empty = not armed.
    #[serde(default)]
    pub windows: Vec<String>,
}

/// One `[[rules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Rule id: `[a-z0-9_-]`, unique on the site. Required.
    pub id: String,
    /// The camera it watches. Required.
    pub camera: String,
    /// "tripwire", "zone" or "loitering". Required.
    pub kind: RuleKind,
    /// Tripwire: [x, y] points of the line (a polyline), fractions of the frame.
    #[serde(default)]
    pub line: Vec<[f32; 2]>,
    /// Tripwire: "left", "right" or "any", relative to the line's direction on screen
    /// (first point → last point). Default: "any".
    #[serde(default)]
    pub direction: Direction,
    /// Tripwire: feet closer to the line than this (fraction of the frame) have no side, so
    /// someone standing on the line does not cross it repeatedly. Default: 0.01.
    #[serde(default = "default_hysteresis")]
    pub hysteresis: f32,
    /// Zone and loitering: the zone id.
    #[serde(default)]
    pub zone: Option<String>,
    /// Zone: frames in a row inside (or outside) before entering (or leaving) counts. Default: 2.
    #[serde(default = "default_min_frames")]
    pub min_frames: u32,
    /// Zone: also report `zone_left`. Default: false.
    #[serde(default)]
    pub report_left: bool,
    /// Loitering: how long a stay may last. Required for loitering.
    #[serde(default, with = "humantime_serde::option")]
    pub dwell: Option<Duration>,
    /// Labels the rule applies to. Default: ["person"].
    #[serde(default = "default_classes")]
    pub classes: Vec<String>,
    /// Least detection score. Default: 0.5.
    #[serde(default = "default_rule_min_score")]
    pub min_score: f32,
    /// Least box [width, height], fractions of the frame. Default: [0.0, 0.0].
    #[serde(default)]
    pub min_box: [f32; 2],
    /// Weekly windows when the rule is armed, e.g. ["Mon-Fri 19:00-07:30", "Sat,Sun 00:00-24:00"],
    /// in the site's time zone. Default: empty = always.
    #[serde(default)]
    pub schedule: Vec<String>,
    /// Dated exceptions (holidays). Default: none.
    #[serde(default)]
    pub exceptions: Vec<ScheduleException>,
    /// Armed at start (run-time arming overrides it). Default: true.
    #[serde(default = "default_true")]
    pub armed: bool,
    /// One track fires the rule again only after this long. Default: 60s.
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
}

impl RuleConfig {
    /// The rule's arming schedule in the site's time zone: always armed without windows or
    /// exceptions; exceptions alone apply to an otherwise always-armed week. Validation and the
    /// rules stage both build it here.
    pub fn schedule(&self, tz: &TimeZone) -> Result<Schedule, ScheduleError> {
        if self.schedule.is_empty() && self.exceptions.is_empty() {
            return Ok(Schedule::always(tz.clone()));
        }
        let windows = match self.schedule.is_empty() {
            true => vec!["00:00-24:00".to_owned()],
            false => self.schedule.clone(),
        };
        let exceptions: Vec<(String, Vec<String>)> = self
            .exceptions
            .iter()
            .map(|e| (e.date.clone(), e.windows.clone()))
            .collect();
        Schedule::new(tz.clone(), &windows, &exceptions)
    }
}

fn default_hysteresis() -> f32 {
    0.01
}
fn default_min_frames() -> u32 {
    2
}
fn default_classes() -> Vec<String> {
    vec!["person".into()]
}
pub(super) fn default_rule_min_score() -> f32 {
    0.5
}
fn default_true() -> bool {
    true
}
pub(super) fn default_cooldown() -> Duration {
    Duration::from_secs(60)
}

/// A camera as the rules section sees it: its id, and the object masks all its rules ignore.
#[derive(Debug, Clone, Copy)]
pub struct RuleCamera<'a> {
    pub id: &'a str,
    pub object_masks: &'a [Vec<[f32; 2]>],
}

/// Checks the zones and rules against the site's cameras (in `[[cameras]]` order, for the key
/// paths of their masks) and compiles them. Every problem goes to `v`; the rules returned are the
/// ones that compiled, complete when `v` got no problem.
pub fn compile(
    zones: &[ZoneConfig],
    rules: &[RuleConfig],
    cameras: &[RuleCamera],
    tz: &TimeZone,
    v: &mut Validator,
) -> SiteRules {
    let mut site = SiteRules {
        time_zone: tz.clone(),
        cameras: Vec::with_capacity(cameras.len()),
    };
    for (i, cam) in cameras.iter().enumerate() {
        let mut masks = Vec::new();
        for (m, ring) in cam.object_masks.iter().enumerate() {
            match polygon_problem(ring) {
                Some(p) => v.err(&format!("cameras[{i}].object_masks[{m}]"), p),
                None => masks.push(polygon(ring)),
            }
        }
        site.cameras.push(CameraRules {
            camera: cam.id.to_owned(),
            rules: Vec::new(),
            object_masks: masks,
        });
    }
    let camera_ids: HashSet<&str> = cameras.iter().map(|c| c.id).collect();
    let mut zone_ids = HashSet::new();
    for (i, z) in zones.iter().enumerate() {
        let key = |k: &str| format!("zones[{i}].{k}");
        v.id(&key("id"), &z.id);
        if !zone_ids.insert(z.id.as_str()) {
            v.err(&key("id"), format!("duplicate zone id {:?}", z.id));
        }
        if !camera_ids.contains(z.camera.as_str()) {
            v.err(
                &key("camera"),
                format!("no camera {:?}; use one of the [[cameras]] ids", z.camera),
            );
        }
        if let Some(p) = polygon_problem(&z.polygon) {
            v.err(&key("polygon"), p);
        }
    }
    let mut rule_ids = HashSet::new();
    for (i, r) in rules.iter().enumerate() {
        let key = |k: &str| format!("rules[{i}].{k}");
        let before = v.len();
        v.id(&key("id"), &r.id);
        if !rule_ids.insert(r.id.as_str()) {
            v.err(&key("id"), format!("duplicate rule id {:?}", r.id));
        }
        if !camera_ids.contains(r.camera.as_str()) {
            v.err(
                &key("camera"),
                format!("no camera {:?}; use one of the [[cameras]] ids", r.camera),
            );
        }
        let spec = rule_spec(r, zones, tz, &key, v);
        let cam = site.cameras.iter_mut().find(|c| c.camera == r.camera);
        if let (Some(spec), Some(cam), true) = (spec, cam, v.len() == before) {
            cam.rules.push(spec);
        }
    }
    site
}

/// One rule's spec, or `None` after putting its problems (but those of its id and camera) in `v`.
fn rule_spec(
    r: &RuleConfig,
    zones: &[ZoneConfig],
    tz: &TimeZone,
    key: &dyn Fn(&str) -> String,
    v: &mut Validator,
) -> Option<RuleSpec> {
    let before = v.len();
    let trigger = match r.kind {
        RuleKind::Tripwire => {
            if let Some(p) = tripwire_problem(&r.line) {
                v.err(&key("line"), p);
            }
            if !(0.0..0.5).contains(&r.hysteresis) {
                v.err(
                    &key("hysteresis"),
                    "a fraction of the frame: use 0..0.5 (default 0.01)",
                );
            }
            Some(TriggerSpec::Tripwire {
                line: r.line.clone(),
                direction: r.direction,
                hysteresis: r.hysteresis,
            })
        }
        RuleKind::Zone | RuleKind::Loitering => {
            let zone = match &r.zone {
                None => {
                    v.err(
                        &key("zone"),
                        "a zone or loitering rule needs zone = \"<zone id>\"",
                    );
                    None
                }
                Some(z) => match zones.iter().find(|zc| &zc.id == z) {
                    None => {
                        v.err(
                            &key("zone"),
                            format!("no zone {z:?}; define it in [[zones]]"),
                        );
                        None
                    }
                    Some(zc) if zc.camera != r.camera => {
                        v.err(
                            &key("zone"),
                            format!(
                                "zone {z:?} is on camera {:?}, the rule on {:?}",
                                zc.camera, r.camera
                            ),
                        );
                        None
                    }
                    Some(zc) => Some(zc),
                },
            };
            let dwell = r.dwell.filter(|d| !d.is_zero());
            if r.kind == RuleKind::Loitering && dwell.is_none() {
                v.err(&key("dwell"), "a loitering rule needs dwell, e.g. \"30s\"");
            }
            match (r.kind, zone, dwell) {
                (RuleKind::Zone, Some(z), _) => Some(TriggerSpec::Zone {
                    zone: z.id.clone(),
                    polygon: z.polygon.clone(),
                    min_frames: r.min_frames,
                    report_left: r.report_left,
                }),
                (RuleKind::Loitering, Some(z), Some(dwell)) => Some(TriggerSpec::Loitering {
                    zone: z.id.clone(),
                    polygon: z.polygon.clone(),
                    min_frames: r.min_frames,
                    dwell,
                }),
                _ => None,
            }
        }
    };
    if r.min_frames == 0 {
        v.err(&key("min_frames"), "must be at least 1");
    }
    if !(0.0..=1.0).contains(&r.min_score) {
        v.err(&key("min_score"), "use a score in 0..1");
    }
    if r.classes.is_empty() {
        v.err(
            &key("classes"),
            "name at least one label, e.g. [\"person\"]",
        );
    }
    let schedule = r
        .schedule(tz)
        .map_err(|e| {
            let k = match r.schedule.iter().any(|w| Window::parse(w).is_err()) {
                true => "schedule",
                false => "exceptions",
            };
            v.err(&key(k), e.to_string());
        })
        .ok();
    if v.len() != before {
        return None;
    }
    Some(RuleSpec {
        id: r.id.clone(),
        trigger: trigger?,
        filter: ObjectFilter {
            classes: r.classes.clone(),
            min_score: r.min_score,
            min_box: (r.min_box[0], r.min_box[1]),
        },
        schedule: schedule?,
        armed: r.armed,
        cooldown: r.cooldown,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::config::test_support::{MINIMAL, parse};

    /// The schedule validation checks is the one the rules stage runs: an exception alone
    /// disarms its day of an otherwise always-armed week.
    #[test]
    fn a_rules_schedule_is_built_by_one_function() {
        let text = format!(
            "{MINIMAL}\n[[rules]]\nid = \"fence\"\ncamera = \"gate\"\nkind = \"tripwire\"\n\
             line = [[0.0, 0.5], [1.0, 0.5]]\n[[rules.exceptions]]\ndate = \"2026-12-24\"\nwindows = []\n"
        );
        let c = parse(&text).unwrap();
        let s = c.rules[0].schedule(&jiff::tz::TimeZone::UTC).unwrap();
        assert!(s.is_active("2026-12-23T12:00:00Z".parse().unwrap()));
        assert!(!s.is_active("2026-12-24T12:00:00Z".parse().unwrap()));
        let bad = text.replace("2026-12-24", "2026-13-40");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("rules[0].exceptions"), "{e}");
    }

    /// Deserialised only: the rules section is compiled on its own, without the rest of validation.
    fn site(text: &str) -> Config {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    const SITE: &str = r#"
        [site]
        id = "kg-1"
        time_zone = "Europe/Berlin"
        [[cameras]]
        id = "gate"
        url = "rtsp://10.0.0.5/s"
        object_masks = [[[0.0, 0.0], [0.2, 0.0], [0.2, 0.2]]]
        [[cameras]]
        id = "yard"
        url = "rtsp://10.0.0.6/s"
        [[zones]]
        id = "path"
        camera = "gate"
        polygon = [[0.1, 0.6], [0.9, 0.6], [0.9, 1.0], [0.1, 1.0]]
        [[rules]]
        id = "path-entry"
        camera = "gate"
        kind = "zone"
        zone = "path"
        report_left = true
        schedule = ["Mon-Fri 19:00-07:30"]
        cooldown = "5m"
        [[rules]]
        id = "path-loitering"
        camera = "gate"
        kind = "loitering"
        zone = "path"
        dwell = "30s"
        armed = false
    "#;

    /// A valid section compiles to each camera's rules: the zone's polygon resolved, the schedule
    /// parsed in the site's time zone, the camera's masks beside them.
    #[test]
    fn a_valid_section_compiles_to_specs() {
        let specs = site(SITE).rule_specs().unwrap();
        assert_eq!(specs.cameras.len(), 2);
        assert!(specs.camera("yard").unwrap().rules.is_empty());
        let gate = specs.camera("gate").unwrap();
        assert_eq!(gate.object_masks.len(), 1);
        let path = vec![[0.1, 0.6], [0.9, 0.6], [0.9, 1.0], [0.1, 1.0]];
        let [entry, loitering] = &gate.rules[..] else {
            panic!("two rules: {:?}", gate.rules)
        };
        assert_eq!(entry.id, "path-entry");
        assert_eq!(
            entry.trigger,
            TriggerSpec::Zone {
                zone: "path".into(),
                polygon: path.clone(),
                min_frames: 2,
                report_left: true,
            }
        );
        assert_eq!(entry.cooldown, Duration::from_secs(300));
        assert_eq!(entry.filter.classes, ["person"]);
        // Wednesday 2 December 2026: 20:00 in Berlin is 19:00 UTC.
        assert!(
            entry
                .schedule
                .is_active("2026-12-02T19:00:00Z".parse().unwrap())
        );
        assert!(
            !entry
                .schedule
                .is_active("2026-12-02T17:30:00Z".parse().unwrap())
        );
        assert_eq!(
            loitering.trigger,
            TriggerSpec::Loitering {
                zone: "path".into(),
                polygon: path,
                min_frames: 2,
                dwell: Duration::from_secs(30),
            }
        );
        assert!(!loitering.armed && entry.armed);
        let engine = crate::rules::engine::Engine::from(gate);
        assert_eq!(engine.rules().len(), 2);
    }

    /// Each kind of mistake is a problem at its key path, and its rule compiles to nothing; the
    /// sound rule beside them still compiles.
    #[test]
    fn each_mistake_has_its_key_path() {
        let text = format!(
            "{SITE}{}",
            r#"
        [[zones]]
        id = "path"
        camera = "nowhere"
        polygon = [[0.1, 0.1], [0.2, 0.2]]
        [[zones]]
        id = "Yard Zone"
        camera = "yard"
        polygon = [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]
        [[rules]]
        id = "path-entry"
        camera = "ghost"
        kind = "tripwire"
        line = [[0.1, 0.5]]
        hysteresis = 0.7
        [[rules]]
        id = "no-zone"
        camera = "gate"
        kind = "zone"
        min_frames = 0
        [[rules]]
        id = "unknown-zone"
        camera = "gate"
        kind = "zone"
        zone = "nope"
        min_score = 1.5
        [[rules]]
        id = "other-camera"
        camera = "gate"
        kind = "loitering"
        zone = "Yard Zone"
        classes = []
        [[rules]]
        id = "Bad Id"
        camera = "gate"
        kind = "tripwire"
        line = [[0.0, 0.5], [1.0, 0.5]]
        schedule = ["Mon-Fry 19:00-07:30"]
        [[rules]]
        id = "holiday"
        camera = "gate"
        kind = "tripwire"
        line = [[0.0, 0.5], [1.0, 0.5]]
        exceptions = [{ date = "2026-02-30", windows = [] }]
        "#
        )
        .replace(
            "object_masks = [[[0.0, 0.0], [0.2, 0.0], [0.2, 0.2]]]",
            "object_masks = [[[0.0, 0.0], [0.2, 0.0], [0.2, 0.2]], [[0.5, 0.5]]]",
        );
        let config = site(&text);
        let mut paths: Vec<String> = config
            .rule_specs()
            .unwrap_err()
            .into_iter()
            .map(|p| p.path)
            .collect();
        paths.sort();
        let mut expected = vec![
            "cameras[0].object_masks[1]",
            "zones[1].id",
            "zones[1].camera",
            "zones[1].polygon",
            "zones[2].id",
            "rules[2].id",
            "rules[2].camera",
            "rules[2].line",
            "rules[2].hysteresis",
            "rules[3].zone",
            "rules[3].min_frames",
            "rules[4].zone",
            "rules[4].min_score",
            "rules[5].zone",
            "rules[5].dwell",
            "rules[5].classes",
            "rules[6].id",
            "rules[6].schedule",
            "rules[7].exceptions",
        ];
        expected.sort();
        assert_eq!(paths, expected);
        let mut v = Validator::default();
        let cameras: Vec<RuleCamera> = config
            .cameras
            .iter()
            .map(|c| RuleCamera {
                id: &c.id,
                object_masks: &c.object_masks,
            })
            .collect();
        let specs = compile(
            &config.zones,
            &config.rules,
            &cameras,
            &TimeZone::UTC,
            &mut v,
        );
        let gate = specs.camera("gate").unwrap();
        let ids: Vec<&str> = gate.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["path-entry", "path-loitering"]);
        assert_eq!(gate.object_masks.len(), 1, "the sound mask");
    }

    /// Every example config in the repository compiles a spec for each of its rules, on its
    /// camera (the rest of validation needs the files the examples point at).
    #[test]
    fn the_example_configs_compile_every_rule() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().path();
            if file.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            files += 1;
            let config = site(&std::fs::read_to_string(&file).unwrap());
            let specs = config
                .rule_specs()
                .unwrap_or_else(|p| panic!("{}: {p:?}", file.display()));
            assert_eq!(
                specs.cameras.len(),
                config.cameras.len(),
                "{}",
                file.display()
            );
            for r in &config.rules {
                let camera = specs.camera(&r.camera).unwrap();
                assert!(
                    camera.rules.iter().any(|s| s.id == r.id),
                    "{}: rule {} has no spec",
                    file.display(),
                    r.id
                );
            }
        }
        assert!(files >= 2, "the example configs are in {}", dir.display());
    }
}
