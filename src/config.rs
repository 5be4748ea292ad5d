//! The configuration file: the top-level [`Config`], loading, and validation.
//!
//! Parsing and validation are separate steps. [`Config::load`] parses one TOML file (unknown keys are
//! refused with their key path), resolves relative paths against the file's directory, then runs
//! [`Config::validate`], which collects *every* problem with its key path instead of stopping at the
//! first. `kinderwatch check-config` prints them; `config/example.toml` documents every option.
//!
//! Each section's type and checks live beside the code it configures (`[[cameras]]` in
//! [`crate::camera::config`], `[[rules]]` in [`crate::rules::config`], ...) and are re-exported
//! here; this module holds the site-wide sections and calls each section's `validate`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::camera::config::{CameraConfig, Codec, IngestConfig, Transport, credentials_from};
pub use crate::detect::config::DetectorConfig;
pub use crate::detect::motion::MotionConfig;
pub use crate::detect::runtime::ExecutionProvider;
pub use crate::health::HealthConfig;
pub use crate::progress::SupervisionConfig;
pub use crate::rules::config::{
    Direction, RuleCamera, RuleConfig, RuleKind, ScheduleException, ZoneConfig,
};
pub use crate::rules::spec::{CameraRules, RuleSpec, SiteRules};
use crate::validate::Validator;
pub use crate::validate::{Problem, is_valid_id};

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

impl SiteConfig {
    /// The site's time zone; after a problem (an unknown name) UTC, so that the schedules can
    /// still be checked.
    fn time_zone(&self, v: &mut Validator) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(&self.time_zone).unwrap_or_else(|_| {
            v.err(
                "site.time_zone",
                format!(
                    "unknown time zone {:?}; use an IANA name such as \"Europe/Berlin\" or \"UTC\"",
                    self.time_zone
                ),
            );
            jiff::tz::TimeZone::UTC
        })
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

impl LoggingConfig {
    /// Puts the section's problems (paths `logging.*`) in `v`.
    fn validate(&self, v: &mut Validator) {
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            v.err(
                "logging.level",
                format!(
                    "invalid filter {:?}; use e.g. \"info\" or \"info,kinderwatch=debug\"",
                    self.level
                ),
            );
        }
    }
}

pub use crate::telemetry::LogFormat;

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
    pub fn one(file: &Path, path: impl Into<String>, message: impl Into<String>) -> Self {
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
        let mut config: Config = deserialize_toml(text, file)?;
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
        let tz = self.site.time_zone(&mut v);
        self.ingest.validate(&mut v);
        self.detector.validate(&mut v);
        self.motion.validate(&mut v);
        self.health.validate(&mut v);
        if let Some(m) = &self.mqtt {
            m.validate(&self.site.id, &mut v);
        }
        self.store.validate(&mut v);
        self.supervision.validate(&mut v);
        self.api.validate(&mut v);
        self.logging.validate(&mut v);
        crate::camera::config::validate_cameras(&self.cameras, &mut v);
        self.compile_rules(&tz, &mut v);
        v.into_problems()
    }

    /// The site's rules compiled into what the engines are built from: each camera's rules with
    /// their zones resolved and schedules parsed in the site's time zone, and its object masks;
    /// or the problems of the rules section (the same ones [`Config::validate`] reports).
    ///
    /// The rules stage calls this once at its start, on the config it is given, rather than the
    /// loaded config carrying the specs: a `Config` is plain data that callers build and edit
    /// after loading (tests swap cameras and rules), and specs stored beside it could go stale.
    /// Validating is this same compilation, so a config that passed validation cannot fail here.
    pub fn rule_specs(&self) -> Result<SiteRules, Vec<Problem>> {
        let mut v = Validator::default();
        let tz = self.site.time_zone(&mut v);
        let rules = self.compile_rules(&tz, &mut v);
        v.finish(rules)
    }

    fn compile_rules(&self, tz: &jiff::tz::TimeZone, v: &mut Validator) -> SiteRules {
        let cameras: Vec<RuleCamera> = self
            .cameras
            .iter()
            .map(|c| RuleCamera {
                id: &c.id,
                object_masks: &c.object_masks,
            })
            .collect();
        crate::rules::config::compile(&self.zones, &self.rules, &cameras, tz, v)
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

/// "line L, column C: message", without the quoted source line (it could hold a password).
/// Parses TOML text into `T`; an error names the file and the key path of the problem.
pub fn deserialize_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        ConfigError::one(
            file,
            "",
            format!("not valid TOML: {}", toml_error(text, &e)),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::one(file, path, toml_error(text, e.inner()))
    })
}

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

/// For the config tests of every section: parse a text, the smallest valid config.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"), Path::new("."))
    }

    pub const MINIMAL: &str = r#"
        [site]
        id = "kg-1"
        [[cameras]]
        id = "gate"
        url = "rtsp://10.0.0.5/stream1"
    "#;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::test_support::{MINIMAL, parse};
    use super::*;

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
