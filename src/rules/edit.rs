//! A camera's perimeter as the console's editor reads and writes it ([`Perimeter`]: its zones,
//! object masks and rules), and writing one back into the config file's TOML document
//! ([`Perimeter::write_into`]).
//!
//! The document is changed in place with `toml_edit`: an entry keeps its position, comments and
//! the keys the editor does not show (a rule's `hysteresis`, `classes`, `exceptions`, ...); a
//! value is written only where it differs from the file's, so an unchanged shape is not
//! reformatted; new entries go after the existing ones, removed ones are taken out. Nothing is
//! checked here: the text that results is validated as `check-config` does (see
//! `app::config_file`), and each problem's key path is mapped back to its shape ([`shape_at`]).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value};

// A default is not written for a rule that does not say it.
use super::config::{RuleConfig, RuleKind, ZoneConfig, default_cooldown, default_rule_min_score};
pub use super::tripwire::Direction;

/// Points are written with this many decimals: a ten-thousandth of the frame is well under a
/// pixel, and `0.62` stays `0.62` in the file.
const DECIMALS: f64 = 1e4;

/// A camera's zones, object masks and rules, as the editor shows and sends them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Perimeter {
    #[serde(default)]
    pub zones: Vec<ZoneEdit>,
    /// Polygons on the camera whose objects every rule ignores (`cameras[].object_masks`).
    #[serde(default)]
    pub object_masks: Vec<Vec<[f64; 2]>>,
    #[serde(default)]
    pub rules: Vec<RuleEdit>,
}

/// A `[[zones]]` entry of the camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ZoneEdit {
    pub id: String,
    /// The id it has in the file, when the editor renamed it (its other keys and comments are
    /// kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub was: Option<String>,
    pub polygon: Vec<[f64; 2]>,
}

/// A `[[rules]]` entry of the camera: the keys the editor sets. Durations are the file's text
/// ("60s", "2m"), checked with the rest of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleEdit {
    pub id: String,
    /// The id it has in the file, when the editor renamed it (its other keys — `exceptions`,
    /// `classes`, `armed`, ... — and comments are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub was: Option<String>,
    pub kind: RuleKind,
    /// Tripwire: the line's points.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub line: Vec<[f64; 2]>,
    /// Tripwire: the crossing direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// Zone and loitering: the zone id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Loitering: how long a stay may last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwell: Option<String>,
    pub min_score: f64,
    pub cooldown: String,
    /// Weekly arming windows; empty = always.
    #[serde(default)]
    pub schedule: Vec<String>,
}

impl Perimeter {
    /// The camera's perimeter in a loaded config (defaults filled in).
    pub fn of(
        zones: &[ZoneConfig],
        masks: &[Vec<[f32; 2]>],
        rules: &[RuleConfig],
        camera: &str,
    ) -> Self {
        Self {
            zones: zones
                .iter()
                .filter(|z| z.camera == camera)
                .map(|z| ZoneEdit {
                    id: z.id.clone(),
                    was: None,
                    polygon: points(&z.polygon),
                })
                .collect(),
            object_masks: masks.iter().map(|m| points(m)).collect(),
            rules: rules
                .iter()
                .filter(|r| r.camera == camera)
                .map(|r| {
                    let tripwire = r.kind == RuleKind::Tripwire;
                    RuleEdit {
                        id: r.id.clone(),
                        was: None,
                        kind: r.kind,
                        line: points(&r.line),
                        direction: tripwire.then_some(r.direction),
                        zone: r.zone.clone(),
                        dwell: r.dwell.map(|d| humantime::format_duration(d).to_string()),
                        min_score: round(r.min_score as f64),
                        cooldown: humantime::format_duration(r.cooldown).to_string(),
                        schedule: r.schedule.clone(),
                    }
                })
                .collect(),
        }
    }

    /// Makes `camera`'s `[[zones]]`, `[[rules]]` and `object_masks` in `doc` what `self` says;
    /// the other cameras' entries and every other key stay as they are. Fails only when the file
    /// writes those sections in a form the editor does not change (inline arrays) or has no
    /// `[[cameras]]` entry with that id.
    pub fn write_into(&self, doc: &mut DocumentMut, camera: &str) -> Result<(), String> {
        if let Some(twice) = self.duplicate() {
            return Err(twice);
        }
        let cam = tables_mut(doc, "cameras")?
            .and_then(|cams| cams.iter_mut().find(|t| id_of(t) == Some(camera)))
            .ok_or_else(|| format!("no [[cameras]] entry with id {camera:?}"))?;
        let masks: Vec<Value> = self.object_masks.iter().map(|m| polyline(m)).collect();
        set_list(cam, "object_masks", masks);

        let zones = ensure_tables(doc, "zones")?;
        sync(
            zones,
            camera,
            &self.zones,
            |z| (&z.id, &z.was),
            |t, z| {
                set(t, "polygon", polyline(&z.polygon));
            },
        );
        let rules = ensure_tables(doc, "rules")?;
        sync(rules, camera, &self.rules, |r| (&r.id, &r.was), write_rule);
        for key in ["zones", "rules"] {
            if doc
                .get(key)
                .and_then(Item::as_array_of_tables)
                .is_some_and(ArrayOfTables::is_empty)
            {
                doc.remove(key);
            }
        }
        Ok(())
    }
}

impl Perimeter {
    /// A zone or rule id given twice, or the old name of a renamed one given to another (two
    /// entries would be written into one table).
    pub fn duplicate(&self) -> Option<String> {
        fn check<'a>(
            what: &str,
            items: impl Iterator<Item = (&'a String, &'a Option<String>)> + Clone,
        ) -> Option<String> {
            let (mut ids, mut in_file) = (HashSet::new(), HashSet::new());
            for (id, was) in items {
                if !ids.insert(id) {
                    return Some(format!("{what} id {id:?} is used twice"));
                }
                if !in_file.insert(was.as_ref().unwrap_or(id)) {
                    return Some(format!(
                        "{what} id {:?} was just renamed; save once before giving its old name to another",
                        was.as_ref().unwrap_or(id)
                    ));
                }
            }
            None
        }
        check("zone", self.zones.iter().map(|z| (&z.id, &z.was)))
            .or_else(|| check("rule", self.rules.iter().map(|r| (&r.id, &r.was))))
    }
}

/// The keys of one rule entry.
fn write_rule(t: &mut Table, r: &RuleEdit) {
    let kind = match r.kind {
        RuleKind::Tripwire => "tripwire",
        RuleKind::Zone => "zone",
        RuleKind::Loitering => "loitering",
    };
    set(t, "kind", kind.into());
    match r.kind {
        RuleKind::Tripwire => {
            set(t, "line", polyline(&r.line));
            match r.direction {
                // "any" is the default: written only if the file already says a direction.
                Some(Direction::Any) | None if !t.contains_key("direction") => {}
                Some(d) => set(t, "direction", direction(d).into()),
                None => {
                    t.remove("direction");
                }
            }
            for key in ["zone", "dwell"] {
                t.remove(key);
            }
        }
        RuleKind::Zone | RuleKind::Loitering => {
            for key in ["line", "direction"] {
                t.remove(key);
            }
            match &r.zone {
                Some(z) => set(t, "zone", z.as_str().into()),
                None => {
                    t.remove("zone");
                }
            }
            match (&r.dwell, r.kind) {
                (Some(d), RuleKind::Loitering) => set_duration(t, "dwell", d, None),
                _ => {
                    t.remove("dwell");
                }
            }
        }
    }
    if t.contains_key("min_score") || round(r.min_score) != round(default_rule_min_score() as f64) {
        set(t, "min_score", round(r.min_score).into());
    }
    set_duration(t, "cooldown", &r.cooldown, Some(default_cooldown()));
    let schedule: Vec<Value> = r.schedule.iter().map(|s| s.as_str().into()).collect();
    set_list(t, "schedule", schedule);
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Left => "left",
        Direction::Right => "right",
        Direction::Any => "any",
    }
}

/// Makes the entries of `camera` in `tables` the `wanted` ones, by the id each has in the file
/// (`was`, else its id): an entry kept is updated in place (renamed if its id changed), a new one
/// is appended, one no longer wanted is removed.
fn sync<T>(
    tables: &mut ArrayOfTables,
    camera: &str,
    wanted: &[T],
    ids: impl Fn(&T) -> (&String, &Option<String>),
    write: impl Fn(&mut Table, &T),
) {
    let mine = |t: &Table| t.get("camera").and_then(Item::as_str) == Some(camera);
    let in_file = |w: &T| {
        let (id, was) = ids(w);
        was.as_deref().unwrap_or(id.as_str()).to_owned()
    };
    let gone: Vec<usize> = tables
        .iter()
        .enumerate()
        .filter(|(_, t)| mine(t) && !wanted.iter().any(|w| Some(in_file(w).as_str()) == id_of(t)))
        .map(|(i, _)| i)
        .collect();
    for i in gone.into_iter().rev() {
        tables.remove(i);
    }
    for w in wanted {
        let (id, _) = ids(w);
        let old = in_file(w);
        let at = tables
            .iter()
            .position(|t| mine(t) && id_of(t) == Some(old.as_str()));
        match at.and_then(|i| tables.get_mut(i)) {
            Some(t) => {
                if old != *id {
                    set(t, "id", id.as_str().into());
                }
                write(t, w)
            }
            None => {
                let mut t = Table::new();
                t.insert("id", toml_edit::value(id.as_str()));
                t.insert("camera", toml_edit::value(camera));
                write(&mut t, w);
                tables.push(t);
            }
        }
    }
}

fn id_of(t: &Table) -> Option<&str> {
    t.get("id").and_then(Item::as_str)
}

/// `key` as an array of tables, if the document has it.
fn tables_mut<'d>(
    doc: &'d mut DocumentMut,
    key: &str,
) -> Result<Option<&'d mut ArrayOfTables>, String> {
    match doc.get_mut(key) {
        None => Ok(None),
        Some(item) => item.as_array_of_tables_mut().map(Some).ok_or_else(|| {
            format!("`{key}` is not written as [[{key}]] tables; the editor changes only that form")
        }),
    }
}

/// `key` as an array of tables, made if the document has none.
fn ensure_tables<'d>(doc: &'d mut DocumentMut, key: &str) -> Result<&'d mut ArrayOfTables, String> {
    if doc.get(key).is_none() {
        doc.insert(key, Item::ArrayOfTables(ArrayOfTables::new()));
    }
    Ok(tables_mut(doc, key)?.expect("just inserted"))
}

/// Sets `key` to `value` unless the file already says the same (its formatting is kept).
fn set(t: &mut Table, key: &str, value: Value) {
    let same = t
        .get(key)
        .and_then(Item::as_value)
        .is_some_and(|old| plain(old) == plain(&value));
    if !same {
        t.insert(key, Item::Value(value));
    }
}

/// A duration key: kept as written when it says the same time ("60s" and "1m"), not written
/// when absent and `default`.
fn set_duration(t: &mut Table, key: &str, text: &str, default: Option<std::time::Duration>) {
    let new = humantime::parse_duration(text.trim()).ok();
    let old = match t.get(key).and_then(Item::as_str) {
        Some(old) => humantime::parse_duration(old.trim()).ok(),
        None => default,
    };
    if new.is_none() || new != old {
        set(t, key, text.into());
    }
}

/// An array key: removed when empty, else as [`set`].
fn set_list(t: &mut Table, key: &str, items: Vec<Value>) {
    if items.is_empty() {
        t.remove(key);
    } else {
        set(t, key, Value::Array(items.into_iter().collect()));
    }
}

/// A value without its formatting, to compare.
fn plain(v: &Value) -> Option<toml::Value> {
    let mut v = v.clone();
    v.decor_mut().clear();
    toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()?
        .remove("v")
}

fn polyline(points: &[[f64; 2]]) -> Value {
    let mut a = Array::new();
    for p in points {
        let mut xy = Array::new();
        xy.push(round(p[0]));
        xy.push(round(p[1]));
        a.push(xy);
    }
    Value::Array(a)
}

fn round(v: f64) -> f64 {
    (v * DECIMALS).round() / DECIMALS
}

fn points(p: &[[f32; 2]]) -> Vec<[f64; 2]> {
    p.iter()
        .map(|[x, y]| [round(*x as f64), round(*y as f64)])
        .collect()
}

/// The shape a problem's key path belongs to, in the document that was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Zone(String),
    Rule(String),
    /// An object mask of the edited camera, by position.
    Mask(usize),
}

/// Which of `camera`'s shapes the key path `path` (`rules[3].line`, `zones[0].polygon`,
/// `cameras[1].object_masks[2]`) is in, if any.
pub fn shape_at(doc: &DocumentMut, camera: &str, path: &str) -> Option<Shape> {
    let (section, rest) = path.split_once('[')?;
    let (index, rest) = rest.split_once(']')?;
    let table = doc
        .get(section)?
        .as_array_of_tables()?
        .get(index.parse().ok()?)?;
    match section {
        "zones" | "rules" => {
            if table.get("camera").and_then(Item::as_str) != Some(camera) {
                return None;
            }
            let id = id_of(table)?.to_owned();
            Some(if section == "zones" {
                Shape::Zone(id)
            } else {
                Shape::Rule(id)
            })
        }
        "cameras" if id_of(table) == Some(camera) => {
            let mask = rest.strip_prefix(".object_masks[")?;
            Some(Shape::Mask(mask.split_once(']')?.0.parse().ok()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# The site.
[site]
id = "kg"

[[cameras]]
id = "gate"   # the front gate
url = "rtsp://10.0.0.5/main"

[[cameras]]
id = "yard"
url = "rtsp://10.0.0.6/main"

# Along the fence, 2 m inside.
[[rules]]
id = "fence"
camera = "gate"
kind = "tripwire"
line = [ [0.0, 0.5],   [1.0, 0.5] ]   # hand-aligned
hysteresis = 0.02

[[rules]]
id = "yard-line"
camera = "yard"
kind = "tripwire"
line = [[0.1, 0.1], [0.9, 0.1]]
"#;

    fn edit(f: impl FnOnce(&mut Perimeter)) -> (String, Perimeter) {
        let config = crate::config::test_support::parse(FILE).unwrap();
        let cam = config.cameras.iter().find(|c| c.id == "gate").unwrap();
        let mut p = Perimeter::of(&config.zones, &cam.object_masks, &config.rules, "gate");
        f(&mut p);
        let mut doc: DocumentMut = FILE.parse().unwrap();
        p.write_into(&mut doc, "gate").unwrap();
        (doc.to_string(), p)
    }

    #[test]
    fn an_unchanged_perimeter_leaves_the_file_as_it_was() {
        let (text, p) = edit(|_| {});
        assert_eq!(text, FILE);
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.rules[0].line, [[0.0, 0.5], [1.0, 0.5]]);
        assert_eq!(p.rules[0].direction, Some(Direction::Any));
        assert_eq!(p.rules[0].cooldown, "1m");
    }

    #[test]
    fn a_moved_line_changes_that_value_only_and_keeps_comments_and_other_keys() {
        let (text, _) = edit(|p| {
            p.rules[0].line = vec![[0.05, 0.62f32 as f64], [0.95, 0.62]];
            p.rules[0].direction = Some(Direction::Right);
        });
        assert!(text.contains("# Along the fence, 2 m inside."), "{text}");
        assert!(text.contains("id = \"gate\"   # the front gate"), "{text}");
        assert!(
            text.contains("line = [[0.05, 0.62], [0.95, 0.62]]"),
            "{text}"
        );
        assert!(text.contains("direction = \"right\""), "{text}");
        assert!(
            text.contains("hysteresis = 0.02"),
            "a key the editor does not show is kept: {text}"
        );
        // The other camera's rule is untouched.
        assert!(text.contains("line = [[0.1, 0.1], [0.9, 0.1]]"), "{text}");
        let config = crate::config::test_support::parse(&text).unwrap();
        let fence = config.rules.iter().find(|r| r.id == "fence").unwrap();
        assert_eq!(fence.line, [[0.05, 0.62], [0.95, 0.62]]);
        assert_eq!(fence.direction, Direction::Right);
        assert!((fence.hysteresis - 0.02).abs() < 1e-6);
    }

    #[test]
    fn shapes_are_added_and_removed_by_id_on_this_camera_only() {
        let (text, _) = edit(|p| {
            p.rules.clear();
            p.zones.push(ZoneEdit {
                id: "porch".into(),
                was: None,
                polygon: vec![[0.1, 0.6], [0.5, 0.6], [0.5, 0.9]],
            });
            p.rules.push(RuleEdit {
                id: "porch-stay".into(),
                was: None,
                kind: RuleKind::Loitering,
                line: vec![],
                direction: None,
                zone: Some("porch".into()),
                dwell: Some("30s".into()),
                min_score: 0.45,
                cooldown: "5m".into(),
                schedule: vec!["Mon-Fri 19:00-07:00".into()],
            });
            p.object_masks
                .push(vec![[0.0, 0.0], [0.2, 0.0], [0.2, 0.1]]);
        });
        let config =
            crate::config::test_support::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let ids: Vec<&str> = config.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["yard-line", "porch-stay"]);
        let stay = &config.rules[1];
        assert_eq!(
            (stay.camera.as_str(), stay.kind),
            ("gate", RuleKind::Loitering)
        );
        assert_eq!(stay.dwell, Some(std::time::Duration::from_secs(30)));
        assert_eq!(stay.schedule, ["Mon-Fri 19:00-07:00"]);
        assert_eq!(config.zones.len(), 1);
        assert_eq!(config.zones[0].camera, "gate");
        let gate = config.cameras.iter().find(|c| c.id == "gate").unwrap();
        assert_eq!(gate.object_masks.len(), 1);
        assert!(
            !text.contains("hand-aligned"),
            "the removed rule's lines are gone: {text}"
        );
    }

    #[test]
    fn a_renamed_rule_keeps_its_other_keys_and_comments() {
        let (text, _) = edit(|p| {
            p.rules[0].was = Some("fence".into());
            p.rules[0].id = "front-fence".into();
        });
        assert!(text.contains("id = \"front-fence\""), "{text}");
        assert!(!text.contains("id = \"fence\""), "{text}");
        assert!(text.contains("hysteresis = 0.02"), "{text}");
        assert!(text.contains("# Along the fence, 2 m inside."), "{text}");
        assert!(
            text.contains("hand-aligned"),
            "the line is unchanged, its comment stays: {text}"
        );
    }

    #[test]
    fn an_id_given_twice_is_refused_before_anything_is_written() {
        let config = crate::config::test_support::parse(FILE).unwrap();
        let mut p = Perimeter::of(&config.zones, &[], &config.rules, "gate");
        let mut twin = p.rules[0].clone();
        twin.kind = RuleKind::Zone;
        twin.zone = Some("yard".into());
        p.rules.push(twin);
        let mut doc: DocumentMut = FILE.parse().unwrap();
        let err = p.write_into(&mut doc, "gate").unwrap_err();
        assert!(err.contains("\"fence\" is used twice"), "{err}");
        assert_eq!(doc.to_string(), FILE);
    }

    #[test]
    fn a_problems_key_path_names_its_shape() {
        let (text, _) = edit(|p| {
            p.rules[0].line = vec![[0.5, 0.5]];
            p.object_masks.push(vec![[0.0, 0.0], [0.2, 0.0]]);
        });
        let doc: DocumentMut = text.parse().unwrap();
        let err = crate::config::test_support::parse(&text).unwrap_err();
        let shapes: Vec<Option<Shape>> = err
            .problems
            .iter()
            .map(|p| shape_at(&doc, "gate", &p.path))
            .collect();
        assert!(shapes.contains(&Some(Shape::Rule("fence".into()))), "{err}");
        assert!(shapes.contains(&Some(Shape::Mask(0))), "{err}");
        assert_eq!(
            shape_at(&doc, "gate", "rules[1].line"),
            None,
            "the other camera's rule"
        );
        assert_eq!(shape_at(&doc, "gate", "site.id"), None);
    }

    #[test]
    fn an_unknown_camera_or_an_inline_section_is_refused() {
        let p = Perimeter {
            zones: vec![],
            object_masks: vec![],
            rules: vec![],
        };
        let mut doc: DocumentMut = FILE.parse().unwrap();
        assert!(p.write_into(&mut doc, "hall").unwrap_err().contains("hall"));
        let mut inline: DocumentMut =
            "zones = []\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://x/y\"\n"
                .parse()
                .unwrap();
        assert!(
            p.write_into(&mut inline, "gate")
                .unwrap_err()
                .contains("[[zones]]")
        );
    }
}
