//! The configuration file: serde types, defaults, loading, and validation.
//!
//! Parsing and validation are separate steps. [`Config::load`] parses one TOML file (unknown keys are
//! refused with their key path), resolves relative paths against the file's directory, then runs
//! [`Config::validate`], which collects *every* problem with its key path instead of stopping at the
//! first. `kinderwatch check-config` prints them; `config/example.toml` documents every option.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::camera::RtspUrl;
pub use crate::camera::config::{CameraConfig, Codec, IngestConfig, Transport, credentials_from};
pub use crate::detect::motion::MotionConfig;
pub use crate::detect::runtime::ExecutionProvider;
pub use crate::health::HealthConfig;
pub use crate::progress::SupervisionConfig;
use crate::rules::geometry::polygon_problem;
use crate::rules::schedule::Schedule;
pub use crate::rules::tripwire::Direction;
use crate::rules::tripwire::tripwire_problem;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub site: SiteConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub detector: DetectorConfig,
    #[serde(default)]
    pub motion: MotionConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub supervision: SupervisionConfig,
    #[serde(default)]
    pub store: crate::store::StoreConfig,
    #[serde(default)]
    pub api: crate::api::ApiConfig,
    /// Absent: no MQTT alerts (events are stored and served by the API only).
    #[serde(default)]
    pub mqtt: Option<crate::alert::MqttConfig>,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
    pub fn schedule(
        &self,
        tz: &jiff::tz::TimeZone,
    ) -> Result<Schedule, crate::rules::schedule::ScheduleError> {
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
fn default_rule_min_score() -> f32 {
    0.5
}
fn default_true() -> bool {
    true
}
fn default_cooldown() -> Duration {
    Duration::from_secs(60)
}

/// `[site]`: who this box is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Site id, used in MQTT topics and event records: `[a-z0-9_-]`, 1-64 characters. Required.
    pub id: String,
    /// Human-readable name. Default: the id.
    #[serde(default)]
    pub name: Option<String>,
    /// IANA time zone of the site, for arming schedules. Default: "UTC".
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
}

fn default_time_zone() -> String {
    "UTC".into()
}

/// `[detector]`: the model and the worker pool that runs it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Path of the model manifest (`*.toml` beside the `.onnx` file); relative paths are resolved
    /// against the config file's directory. Default: none (no detection; frames are only counted).
    pub model: Option<PathBuf>,
    /// Path of libonnxruntime.so. Default: `ORT_DYLIB_PATH`, then /usr/lib/kinderwatch/, then .deps/onnxruntime/.
    pub onnxruntime: Option<PathBuf>,
    /// "cpu", "cuda" or "openvino". Default: "cpu".
    pub execution_provider: ExecutionProvider,
    /// Fail at start when the provider is missing, instead of falling back to CPU. Default: false.
    pub execution_provider_required: bool,
    /// Worker threads, each with its own session and one intra-op thread. 0 = number of cores. Default: 0.
    pub workers: usize,
    /// Detections below this score are dropped. Default: 0.4.
    pub min_score: f32,
    /// Same-class boxes overlapping more than this are one object. Default: 0.45.
    pub nms_iou: f32,
    /// Labels to report. Default: ["person"].
    pub classes: Vec<String>,
    /// Capacity of the queue of results to the next stage; when full, the newest result is
    /// dropped and counted. Default: 64.
    pub output_queue: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            model: None,
            onnxruntime: None,
            execution_provider: ExecutionProvider::Cpu,
            execution_provider_required: false,
            workers: 0,
            min_score: 0.4,
            nms_iou: 0.45,
            classes: vec!["person".into()],
            output_queue: 64,
        }
    }
}

impl DetectorConfig {
    /// Workers to start: the configured number, or one per core.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }
}

/// `[state]`: where the daemon keeps what must survive a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Default: "/var/lib/kinderwatch" (systemd's StateDirectory=); created if missing.
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/kinderwatch"),
        }
    }
}

/// `[logging]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// "text" or "json". Default: "text".
    pub format: LogFormat,
    /// tracing filter directive, e.g. "info" or "info,kinderwatch::camera=debug"; `RUST_LOG` overrides it.
    /// Default: "info".
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

pub use crate::telemetry::LogFormat;

/// One problem found in a config file, with the key path it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `cameras[2].url`; empty for the file as a whole.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a config file was refused: every problem at once, with the file they are in.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "config {}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(file: &Path, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            problems: vec![Problem {
                path: path.into(),
                message: message.into(),
            }],
        }
    }

    /// True if some problem sits at exactly this key path.
    pub fn has(&self, path: &str) -> bool {
        self.problems.iter().any(|p| p.path == path)
    }
}

impl Config {
    /// Reads, parses and validates one config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            ConfigError::one(
                file,
                "",
                format!("cannot read the file: {e}; pass an existing file with --config"),
            )
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, file, base)
    }

    /// Parses and validates config text; `file` names it in errors, `base` resolves relative paths.
    pub fn from_toml(text: &str, file: &Path, base: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            ConfigError::one(
                file,
                "",
                format!("not valid TOML: {}", toml_error(text, &e)),
            )
        })?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ConfigError::one(file, path, toml_error(text, e.inner()))
        })?;
        config.resolve_paths(base);
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                file: file.to_owned(),
                problems,
            })
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(m) = &mut self.detector.model {
            resolve(m);
        }
        if let Some(m) = &mut self.detector.onnxruntime {
            resolve(m);
        }
        resolve(&mut self.state.dir);
        for cam in &mut self.cameras {
            if let Some(f) = &mut cam.password_file {
                resolve(f);
            }
        }
    }

    /// Every problem in the configuration, each with its key path; empty when the config is usable.
    pub fn validate(&self) -> Vec<Problem> {
        let mut v = Validator::default();
        v.id("site.id", &self.site.id);
        if jiff::tz::TimeZone::get(&self.site.time_zone).is_err() {
            v.err(
                "site.time_zone",
                format!(
                    "unknown time zone {:?}; use an IANA name such as \"Europe/Berlin\" or \"UTC\"",
                    self.site.time_zone
                ),
            );
        }
        self.validate_ingest(&mut v);
        if let Some(model) = &self.detector.model
            && !model.is_file()
        {
            v.err(
                "detector.model",
                format!(
                    "model manifest {} does not exist; point it at a models/*.toml file",
                    model.display()
                ),
            );
        }
        self.validate_detector(&mut v);
        self.validate_store_and_api(&mut v);
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            v.err(
                "logging.level",
                format!(
                    "invalid filter {:?}; use e.g. \"info\" or \"info,kinderwatch=debug\"",
                    self.logging.level
                ),
            );
        }
        if self.cameras.is_empty() {
            v.err(
                "cameras",
                "no camera configured; add at least one [[cameras]] entry",
            );
        }
        let mut seen = HashSet::new();
        for (i, cam) in self.cameras.iter().enumerate() {
            let key = |k: &str| format!("cameras[{i}].{k}");
            v.id(&key("id"), &cam.id);
            if !seen.insert(cam.id.as_str()) {
                v.err(
                    &key("id"),
                    format!("duplicate camera id {:?}; ids must be unique", cam.id),
                );
            }
            if let Err(e) = RtspUrl::parse(&cam.url) {
                v.err(&key("url"), e.to_string());
            }
            match (&cam.username, &cam.password_file, &cam.password_env) {
                (None, None, None) => {}
                (None, _, _) => v.err(
                    &key("username"),
                    "a password is configured but no username; add username",
                ),
                (Some(_), Some(_), Some(_)) => v.err(
                    &key("password_env"),
                    "set only one of password_file and password_env",
                ),
                (Some(_), None, None) => v.err(
                    &key("username"),
                    "username is set but no password; add password_file or password_env",
                ),
                // The secret itself is read only for enabled cameras: a disabled camera's password
                // may not be provisioned yet.
                (Some(_), _, _) if !cam.enabled => {}
                (Some(_), _, _) => {
                    if let Err(e) = cam.credentials() {
                        let k = if cam.password_file.is_some() {
                            "password_file"
                        } else {
                            "password_env"
                        };
                        v.err(&key(k), e);
                    }
                }
            }
            if cam.latency > Duration::from_secs(10) {
                v.err(
                    &key("latency"),
                    "must be at most 10s (it delays every alert)",
                );
            }
            for (k, val) in [
                ("detect_width", cam.detect_width),
                ("detect_height", cam.detect_height),
            ] {
                if !(32..=4096).contains(&val) {
                    v.err(
                        &key(k),
                        format!("{val} is out of range; use 32..=4096 pixels"),
                    );
                }
            }
            for (name, masks) in [
                ("motion_masks", &cam.motion_masks),
                ("object_masks", &cam.object_masks),
            ] {
                for (m, ring) in masks.iter().enumerate() {
                    if let Some(p) = polygon_problem(ring) {
                        v.err(&key(&format!("{name}[{m}]")), p);
                    }
                }
            }
            if !(1..=30).contains(&cam.detect_fps) {
                v.err(
                    &key("detect_fps"),
                    format!(
                        "{} is out of range; use 1..=30 frames per second",
                        cam.detect_fps
                    ),
                );
            }
        }
        self.validate_rules(&mut v);
        v.problems
    }

    fn validate_rules(&self, v: &mut Validator) {
        let cameras: HashSet<&str> = self.cameras.iter().map(|c| c.id.as_str()).collect();
        let mut zone_ids = HashSet::new();
        for (i, z) in self.zones.iter().enumerate() {
            let key = |k: &str| format!("zones[{i}].{k}");
            v.id(&key("id"), &z.id);
            if !zone_ids.insert(z.id.as_str()) {
                v.err(&key("id"), format!("duplicate zone id {:?}", z.id));
            }
            if !cameras.contains(z.camera.as_str()) {
                v.err(
                    &key("camera"),
                    format!("no camera {:?}; use one of the [[cameras]] ids", z.camera),
                );
            }
            if let Some(p) = polygon_problem(&z.polygon) {
                v.err(&key("polygon"), p);
            }
        }
        let tz = jiff::tz::TimeZone::get(&self.site.time_zone).unwrap_or(jiff::tz::TimeZone::UTC);
        let mut rule_ids = HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let key = |k: &str| format!("rules[{i}].{k}");
            v.id(&key("id"), &r.id);
            if !rule_ids.insert(r.id.as_str()) {
                v.err(&key("id"), format!("duplicate rule id {:?}", r.id));
            }
            if !cameras.contains(r.camera.as_str()) {
                v.err(
                    &key("camera"),
                    format!("no camera {:?}; use one of the [[cameras]] ids", r.camera),
                );
            }
            match r.kind {
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
                }
                RuleKind::Zone | RuleKind::Loitering => match &r.zone {
                    None => v.err(
                        &key("zone"),
                        "a zone or loitering rule needs zone = \"<zone id>\"",
                    ),
                    Some(z) => match self.zones.iter().find(|zc| &zc.id == z) {
                        None => v.err(
                            &key("zone"),
                            format!("no zone {z:?}; define it in [[zones]]"),
                        ),
                        Some(zc) if zc.camera != r.camera => v.err(
                            &key("zone"),
                            format!(
                                "zone {z:?} is on camera {:?}, the rule on {:?}",
                                zc.camera, r.camera
                            ),
                        ),
                        Some(_) => {}
                    },
                },
            }
            if r.kind == RuleKind::Loitering && r.dwell.is_none_or(|d| d.is_zero()) {
                v.err(&key("dwell"), "a loitering rule needs dwell, e.g. \"30s\"");
            }
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
            // The same function builds the schedule at run time: what passes here cannot fail there.
            if let Err(e) = r.schedule(&tz) {
                let k = if r
                    .schedule
                    .iter()
                    .any(|w| crate::rules::schedule::Window::parse(w).is_err())
                {
                    "schedule"
                } else {
                    "exceptions"
                };
                v.err(&key(k), e.to_string());
            }
        }
    }

    fn validate_store_and_api(&self, v: &mut Validator) {
        if let Some(m) = &self.mqtt {
            for (key, message) in m.problems(&self.site.id) {
                v.err(&format!("mqtt.{key}"), message);
            }
        }
        let s = &self.store;
        if s.max_pending == 0 {
            v.err(
                "store.max_pending",
                "use at least 1 (events held while the disk is full)",
            );
        }
        if s.retention_interval < Duration::from_secs(1) {
            v.err("store.retention_interval", "use at least 1s, e.g. \"10m\"");
        }
        if s.write_timeout < Duration::from_millis(100) {
            v.err("store.write_timeout", "use at least 100ms, e.g. \"10s\"");
        }
        if s.max_pending_mb == 0 {
            v.err(
                "store.max_pending_mb",
                "use at least 1 (MB of events and snapshots held while the store cannot write)",
            );
        }
        if s.write_stall_exit <= s.write_timeout {
            v.err(
                "store.write_stall_exit",
                format!(
                    "must be longer than store.write_timeout ({}), e.g. \"2m\"",
                    humantime::format_duration(s.write_timeout)
                ),
            );
        }
        if self.supervision.stage_deadline < 2 * crate::progress::BEAT_PERIOD {
            v.err(
                "supervision.stage_deadline",
                "use at least 2s (idle stages report progress every second), e.g. \"20s\"",
            );
        }
        let a = &self.api;
        if a.request_timeout < Duration::from_millis(100) {
            v.err("api.request_timeout", "use at least 100ms, e.g. \"10s\"");
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in a.tokens.iter().enumerate() {
            if t.name.trim().is_empty() {
                v.err(
                    &format!("api.tokens[{i}].name"),
                    "give the token holder's name",
                );
            } else if !names.insert(t.name.as_str()) {
                v.err(
                    &format!("api.tokens[{i}].name"),
                    format!("{:?} is used twice; names must be unique", t.name),
                );
            }
            if !crate::auth::is_sha256_hex(t.sha256.trim()) {
                v.err(
                    &format!("api.tokens[{i}].sha256"),
                    "not a SHA-256 in hex (64 digits); `kinderwatch token` makes a token and its hash",
                );
            }
        }
    }

    fn validate_detector(&self, v: &mut Validator) {
        let d = &self.detector;
        if !(0.0..=1.0).contains(&d.min_score) {
            v.err("detector.min_score", "use a score in 0..1");
        }
        if !(0.0..=1.0).contains(&d.nms_iou) {
            v.err("detector.nms_iou", "use an overlap in 0..1");
        }
        if d.classes.is_empty() {
            v.err(
                "detector.classes",
                "name at least one label, e.g. [\"person\"]",
            );
        }
        if d.output_queue == 0 {
            v.err("detector.output_queue", "must be at least 1");
        }
        if d.workers > 64 {
            v.err("detector.workers", "at most 64 (0 = one per core)");
        }
        if let Some(lib) = &d.onnxruntime
            && !lib.is_file()
        {
            v.err(
                "detector.onnxruntime",
                format!(
                    "{} does not exist; run scripts/setup.sh or point it at libonnxruntime.so",
                    lib.display()
                ),
            );
        }
        let m = &self.motion;
        if !(0.0..=1.0).contains(&m.min_area) {
            v.err("motion.min_area", "a share of the picture: use 0..1");
        }
        if !(0.0..=1.0).contains(&m.background_alpha) || m.background_alpha == 0.0 {
            v.err("motion.background_alpha", "use a value in (0, 1]");
        }
        if m.keepalive.is_zero() {
            v.err("motion.keepalive", "must be greater than zero");
        }
        for (k, d) in [
            ("offline_grace", self.health.offline_grace),
            ("tamper_after", self.health.tamper_after),
        ] {
            if d.is_zero() {
                v.err(&format!("health.{k}"), "must be greater than zero");
            }
        }
    }

    fn validate_ingest(&self, v: &mut Validator) {
        let ing = &self.ingest;
        for (k, d) in [
            ("backoff_initial", ing.backoff_initial),
            ("backoff_max", ing.backoff_max),
            ("healthy_reset", ing.healthy_reset),
            ("config_fault_backoff", ing.config_fault_backoff),
            ("first_frame_timeout", ing.first_frame_timeout),
            ("stall_timeout", ing.stall_timeout),
            ("tcp_timeout", ing.tcp_timeout),
        ] {
            if d.is_zero() {
                v.err(&format!("ingest.{k}"), "must be greater than zero");
            }
        }
        if ing.backoff_max < ing.backoff_initial {
            v.err(
                "ingest.backoff_max",
                "must not be smaller than ingest.backoff_initial",
            );
        }
    }

    pub fn enabled_cameras(&self) -> impl Iterator<Item = &CameraConfig> {
        self.cameras.iter().filter(|c| c.enabled)
    }

    /// One line for `check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let enabled = self.enabled_cameras().count();
        format!(
            "site {} ({}), {} camera{} ({} enabled), model {}",
            self.site.id,
            self.site.time_zone,
            self.cameras.len(),
            if self.cameras.len() == 1 { "" } else { "s" },
            enabled,
            self.detector
                .model
                .as_ref()
                .map(|m| m.display().to_string())
                .unwrap_or_else(|| "none".into())
        )
    }
}

/// Identifiers end up in MQTT topics, metric labels and file names: keep them plain.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn id(&mut self, path: &str, id: &str) {
        if !is_valid_id(id) {
            self.err(
                path,
                format!("{id:?} is not a valid id; use 1-64 characters of a-z, 0-9, '-' and '_'"),
            );
        }
    }
}

/// "line L, column C: message", without the quoted source line (it could hold a password).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"), Path::new("."))
    }

    const MINIMAL: &str = r#"
        [site]
        id = "kg-1"
        [[cameras]]
        id = "gate"
        url = "rtsp://10.0.0.5/stream1"
    "#;

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

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.site.time_zone, "UTC");
        assert_eq!(c.cameras[0].detect_fps, 5);
        assert_eq!(c.cameras[0].transport, Transport::Tcp);
        assert_eq!(c.ingest.backoff_max, Duration::from_secs(30));
    }

    #[test]
    fn unknown_key_names_its_path() {
        let text = format!("{MINIMAL}\nfps = 3\n");
        let e = parse(&text).unwrap_err();
        assert!(e.has("cameras[0].fps"), "{e}");
        assert!(e.to_string().contains("unknown field `fps`"), "{e}");
        assert!(e.to_string().contains("line 8"), "{e}");
    }

    #[test]
    fn a_misplaced_password_is_not_echoed() {
        let text = format!("{MINIMAL}\npassword = \"hunter2-secret\"\n");
        let e = parse(&text).unwrap_err();
        assert!(e.has("cameras[0].password"), "{e}");
        assert!(!e.to_string().contains("hunter2-secret"), "{e}");
        let e = parse("[site]\nid = \"x\"\npassword = hunter2-secret").unwrap_err();
        assert!(!e.to_string().contains("hunter2-secret"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [site]
            id = "KG 1"
            time_zone = "Mars/Olympus"
            [[cameras]]
            id = "a"
            url = "rtsp://admin:secret@10.0.0.5/s"
            detect_fps = 0
            [[cameras]]
            id = "a"
            url = "http://10.0.0.6/"
        "#;
        let e = parse(text).unwrap_err();
        for path in [
            "site.id",
            "site.time_zone",
            "cameras[0].url",
            "cameras[0].detect_fps",
            "cameras[1].id",
            "cameras[1].url",
        ] {
            assert!(e.has(path), "missing {path} in {e}");
        }
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
