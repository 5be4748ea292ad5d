//! Live reload (SIGHUP): what changed between the running config file and the new one, and
//! whether the daemon can apply it without a restart.
//!
//! The files are compared as TOML values, section by section (what is written, not the defaults
//! it implies). Applied at once:
//! - the rules — `[[zones]]`, `[[rules]]`, a camera's `object_masks`, `site.time_zone` — compiled
//!   and handed to the rules stage, which keeps its tracks and the run-time arming;
//! - a camera's stream and what it hands to detection — `url`, `username`, `password_file`,
//!   `password_env`, `transport`, `latency`, `codec`, `detect_width`, `detect_height`,
//!   `detect_fps`, `motion_masks` — by restarting that camera's supervisor on the same frame slot
//!   (and giving the detector pool the camera's new rate and motion masks); the other cameras run
//!   on untouched.
//!
//! - a camera added or removed: it starts or stops alone (with its place in the detector pool,
//!   its tracks, health watch and MQTT status), the others run on untouched; a camera renamed,
//!   enabled or disabled is replaced (removed, then added under the same id).
//!
//! Anything else changed (the detector, MQTT, the API, ...) needs a restart: the reload is refused
//! whole, naming those keys, and the running config stays.

use std::collections::BTreeMap;

use toml::{Table, Value};

/// What a reload would do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadPlan {
    /// The rules changed: the rules stage gets them compiled anew.
    pub rules: bool,
    /// Cameras whose stream or detect settings changed: their supervisors restart.
    pub cameras: Vec<String>,
    /// Cameras new in the file: they start (one also in `removed` is replaced).
    pub added: Vec<String>,
    /// Cameras no longer in the file: they stop.
    pub removed: Vec<String>,
    /// Keys whose change needs a restart (`detector`, `cameras[gate]`, ...); none for a reload
    /// that can be applied.
    pub restart: Vec<String>,
}

impl ReloadPlan {
    /// From the running file's table to the new one's.
    pub fn between(old: &Table, new: &Table) -> Self {
        let mut plan = Self::default();
        let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for key in keys {
            let (a, b) = (old.get(key.as_str()), new.get(key.as_str()));
            match key.as_str() {
                "zones" | "rules" => plan.rules |= a != b,
                "site" => {
                    let (a, tz_a) = without(a, "time_zone");
                    let (b, tz_b) = without(b, "time_zone");
                    plan.rules |= tz_a != tz_b;
                    if a != b {
                        plan.restart.push("site".into());
                    }
                }
                "cameras" => {
                    let (a, b) = (cameras(a), cameras(b));
                    let ids: std::collections::BTreeSet<&String> =
                        a.keys().chain(b.keys()).collect();
                    for id in ids {
                        match (a.get(id), b.get(id)) {
                            // The rules stage learns of the camera set with the rules.
                            (Some(_), None) => {
                                plan.removed.push(id.clone());
                                plan.rules = true;
                            }
                            (None, Some(_)) => {
                                plan.added.push(id.clone());
                                plan.rules = true;
                            }
                            (Some(x), Some(y)) => {
                                let (x, masks_x) = without(Some(x), "object_masks");
                                let (y, masks_y) = without(Some(y), "object_masks");
                                plan.rules |= masks_x != masks_y;
                                let (x, stream_x) = split(x, CAMERA_RESTART_KEYS);
                                let (y, stream_y) = split(y, CAMERA_RESTART_KEYS);
                                if x != y {
                                    // Renamed, enabled, disabled: the camera is replaced.
                                    plan.removed.push(id.clone());
                                    plan.added.push(id.clone());
                                    plan.rules = true;
                                } else if stream_x != stream_y {
                                    plan.cameras.push(id.clone());
                                }
                            }
                            (None, None) => {}
                        }
                    }
                }
                _ if a != b => plan.restart.push(key.clone()),
                _ => {}
            }
        }
        plan
    }

    /// Nothing to do: the files say the same.
    pub fn is_empty(&self) -> bool {
        !self.rules
            && self.cameras.is_empty()
            && self.added.is_empty()
            && self.removed.is_empty()
            && self.restart.is_empty()
    }
}

/// A camera's keys that its supervisor (and the pool's view of the camera) alone use: a change
/// restarts that camera only.
const CAMERA_RESTART_KEYS: &[&str] = &[
    "url",
    "username",
    "password_file",
    "password_env",
    "transport",
    "latency",
    "codec",
    "detect_width",
    "detect_height",
    "detect_fps",
    "motion_masks",
];

/// `value` (a table) without `keys`, and those keys' values.
fn split(value: Option<Value>, keys: &[&str]) -> (Option<Value>, Vec<Option<Value>>) {
    match value {
        Some(Value::Table(mut t)) => {
            let taken = keys.iter().map(|k| t.remove(*k)).collect();
            (Some(Value::Table(t)), taken)
        }
        other => (other, Vec::new()),
    }
}

/// `value` (a table) without `key`, and that key's value.
fn without(value: Option<&Value>, key: &str) -> (Option<Value>, Option<Value>) {
    match value {
        Some(Value::Table(t)) => {
            let mut t = t.clone();
            let taken = t.remove(key);
            (Some(Value::Table(t)), taken)
        }
        other => (other.cloned(), None),
    }
}

/// `[[cameras]]` by id (an entry without one under its position).
fn cameras(value: Option<&Value>) -> BTreeMap<String, Value> {
    let Some(Value::Array(entries)) = value else {
        return BTreeMap::new();
    };
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let id = e
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{i}"), str::to_owned);
            (id, e.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[site]
id = "kg"
time_zone = "UTC"
[detector]
workers = 2
[[cameras]]
id = "gate"
url = "rtsp://10.0.0.5/main"
[[cameras]]
id = "yard"
url = "rtsp://10.0.0.6/main"
[[zones]]
id = "yard"
camera = "yard"
polygon = [[0.2, 0.75], [0.8, 0.75], [0.8, 1.0]]
[[rules]]
id = "fence"
camera = "gate"
kind = "tripwire"
line = [[0.0, 0.5], [1.0, 0.5]]
"#;

    fn plan(edit: impl Fn(&str) -> String) -> ReloadPlan {
        let old: Table = BASE.parse().unwrap();
        let new: Table = edit(BASE).parse().unwrap();
        ReloadPlan::between(&old, &new)
    }

    #[test]
    fn the_same_file_changes_nothing() {
        assert!(plan(|t| t.to_owned()).is_empty());
        // Formatting and comments are not changes.
        assert!(plan(|t| t.replace("workers = 2", "workers   =   2 # two")).is_empty());
    }

    #[test]
    fn rules_zones_masks_and_the_time_zone_are_applied_live() {
        let moved = plan(|t| t.replace("[[0.0, 0.5], [1.0, 0.5]]", "[[0.0, 0.6], [1.0, 0.6]]"));
        assert_eq!(
            moved,
            ReloadPlan {
                rules: true,
                cameras: vec![],
                restart: vec![],
                ..Default::default()
            }
        );
        let zone = plan(|t| t.replace("[0.8, 1.0]]", "[0.8, 1.0], [0.2, 1.0]]"));
        assert_eq!(
            zone,
            ReloadPlan {
                rules: true,
                cameras: vec![],
                restart: vec![],
                ..Default::default()
            }
        );
        let tz = plan(|t| t.replace("\"UTC\"", "\"Asia/Almaty\""));
        assert_eq!(
            tz,
            ReloadPlan {
                rules: true,
                cameras: vec![],
                restart: vec![],
                ..Default::default()
            }
        );
        let mask = plan(|t| {
            t.replace(
                "url = \"rtsp://10.0.0.5/main\"",
                "url = \"rtsp://10.0.0.5/main\"\nobject_masks = [[[0.0, 0.0], [0.1, 0.0], [0.1, 0.1]]]",
            )
        });
        assert_eq!(
            mask,
            ReloadPlan {
                rules: true,
                cameras: vec![],
                restart: vec![],
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_renamed_camera_is_replaced_and_anything_else_needs_a_restart() {
        let renamed = plan(|t| {
            t.replace(
                "url = \"rtsp://10.0.0.5/main\"",
                "url = \"rtsp://10.0.0.5/main\"\nname = \"Main gate\"",
            )
        });
        assert_eq!(
            renamed,
            ReloadPlan {
                rules: true,
                added: vec!["gate".into()],
                removed: vec!["gate".into()],
                ..Default::default()
            },
            "a renamed camera is replaced"
        );
        let disabled = plan(|t| {
            t.replace(
                "url = \"rtsp://10.0.0.6/main\"",
                "url = \"rtsp://10.0.0.6/main\"\nenabled = false",
            )
        });
        assert_eq!(
            (disabled.added, disabled.removed),
            (vec!["yard".to_string()], vec!["yard".to_string()])
        );
        assert!(disabled.restart.is_empty());

        let both = plan(|t| {
            format!(
                "{}\n[mqtt]\nhost = \"broker\"\n",
                t.replace("workers = 2", "workers = 1")
            )
            .replace("id = \"kg\"", "id = \"kg-2\"")
        });
        assert_eq!(both.restart, ["detector", "mqtt", "site"]);
        // A rule change beside them is still seen (and refused with them).
        let mixed = plan(|t| {
            t.replace("workers = 2", "workers = 1")
                .replace("0.5]", "0.7]")
        });
        assert_eq!(
            mixed,
            ReloadPlan {
                rules: true,
                cameras: vec![],
                restart: vec!["detector".into()],
                ..Default::default()
            }
        );
    }

    #[test]
    fn cameras_added_and_removed_start_and_stop_alone() {
        let added =
            plan(|t| format!("{t}\n[[cameras]]\nid = \"hall\"\nurl = \"rtsp://10.0.0.7/x\"\n"));
        assert_eq!(
            added,
            ReloadPlan {
                rules: true,
                added: vec!["hall".into()],
                ..Default::default()
            }
        );
        let removed = plan(|t| {
            t.replace(
                "[[cameras]]\nid = \"yard\"\nurl = \"rtsp://10.0.0.6/main\"\n",
                "",
            )
        });
        assert_eq!(
            removed,
            ReloadPlan {
                rules: true,
                removed: vec!["yard".into()],
                ..Default::default()
            }
        );
        // One replaced by another, beside a stream change.
        let both = plan(|t| {
            t.replace("id = \"yard\"", "id = \"hall\"")
                .replace("10.0.0.5", "10.0.0.9")
        });
        assert_eq!(
            both,
            ReloadPlan {
                rules: true,
                cameras: vec!["gate".into()],
                added: vec!["hall".into()],
                removed: vec!["yard".into()],
                restart: vec![],
            }
        );
        assert!(!both.is_empty());
    }

    #[test]
    fn a_cameras_stream_or_detect_settings_restart_that_camera_only() {
        let url = plan(|t| t.replace("10.0.0.5", "10.0.0.9"));
        assert_eq!(
            url,
            ReloadPlan {
                rules: false,
                cameras: vec!["gate".into()],
                restart: vec![],
                ..Default::default()
            }
        );
        let auth = plan(|t| {
            t.replace(
                "url = \"rtsp://10.0.0.6/main\"",
                "url = \"rtsp://10.0.0.6/main\"\nusername = \"admin\"\npassword_env = \"YARD_PASSWORD\"\ntransport = \"udp\"",
            )
        });
        assert_eq!(auth.cameras, ["yard"]);
        assert!(auth.restart.is_empty() && !auth.rules);
        // What the camera hands to detection: size, rate and motion masks.
        let detect = plan(|t| {
            t.replace(
                "url = \"rtsp://10.0.0.5/main\"",
                "url = \"rtsp://10.0.0.5/main\"\ndetect_fps = 2\ndetect_width = 768\nmotion_masks = [[[0.0, 0.0], [0.5, 0.0], [0.5, 0.2]]]",
            )
        });
        assert_eq!(
            detect,
            ReloadPlan {
                rules: false,
                cameras: vec!["gate".into()],
                restart: vec![],
                ..Default::default()
            }
        );
    }
}
