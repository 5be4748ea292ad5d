//! `[ingest]` and `[[cameras]]`: how each camera is reached and decoded, and the checks of both
//! sections ([`crate::config`] re-exports these types).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::{Credentials, RtspUrl, UrlError};
use crate::geometry::polygon_problem;
use crate::validate::Validator;

/// `[ingest]`: reconnect and watchdog policy shared by all cameras.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// First reconnect delay after a transient fault. Default: 1s.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Largest reconnect delay after repeated transient faults. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// A camera that streamed this long without a fault starts its backoff over. Default: 60s.
    #[serde(with = "humantime_serde")]
    pub healthy_reset: Duration,
    /// Retry delay after a configuration fault (401 Unauthorized, 404 Not Found). Default: 5m.
    #[serde(with = "humantime_serde")]
    pub config_fault_backoff: Duration,
    /// A connection that delivers no first frame within this time is torn down. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub first_frame_timeout: Duration,
    /// A streaming camera with no frame for this long is torn down and rebuilt. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// rtspsrc TCP timeout for connecting and reading RTSP replies. Default: 5s.
    #[serde(with = "humantime_serde")]
    pub tcp_timeout: Duration,
    /// Threads per H.264 decoder; 0 = one per core. With several cameras, one thread each is the
    /// cheapest (the cameras are the parallelism). Default: 1.
    pub decoder_threads: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            healthy_reset: Duration::from_secs(60),
            config_fault_backoff: Duration::from_secs(300),
            first_frame_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(10),
            tcp_timeout: Duration::from_secs(5),
            decoder_threads: 1,
        }
    }
}

/// RTP transport between camera and box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// RTP interleaved in the RTSP TCP connection: works through NAT and firewalls. The default.
    #[default]
    Tcp,
    /// RTP over UDP: lower overhead on a clean LAN, loses frames on a lossy one.
    Udp,
    /// TCP first; after a connection that brought no picture, UDP, and so on, keeping the one
    /// that streams (for cameras that do not offer interleaved RTP).
    Auto,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Auto => "auto",
        }
    }

    /// The other concrete transport (`Auto` counts as TCP).
    pub fn other(self) -> Self {
        match self {
            Self::Udp => Self::Tcp,
            Self::Tcp | Self::Auto => Self::Udp,
        }
    }
}

/// Video codec of the camera stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// H.264 with a fixed, verified chain (rtph264depay ! h264parse ! avdec_h264). The default.
    #[default]
    H264,
    /// Anything GStreamer can decode (H.265, MJPEG, ...) through decodebin.
    Auto,
}

/// One `[[cameras]]` entry.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Camera id: `[a-z0-9_-]`, 1-64 characters, unique on the site. Required.
    pub id: String,
    /// Human-readable name. Default: the id.
    #[serde(default)]
    pub name: Option<String>,
    /// `rtsp://host[:port]/path` without credentials. Required.
    pub url: String,
    /// RTSP username. Default: none (no authentication).
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (trailing newline ignored). One of `password_file` / `password_env`
    /// when `username` is set.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// "tcp" or "udp". Default: "tcp".
    #[serde(default)]
    pub transport: Transport,
    /// rtspsrc jitter-buffer latency. Default: 200ms.
    #[serde(default = "default_latency", with = "humantime_serde")]
    pub latency: Duration,
    /// "h264" or "auto". Default: "h264".
    #[serde(default)]
    pub codec: Codec,
    /// Width of frames handed to detection. Default: 640.
    #[serde(default = "default_detect_width")]
    pub detect_width: u32,
    /// Height of frames handed to detection. Default: 360.
    #[serde(default = "default_detect_height")]
    pub detect_height: u32,
    /// Frames per second handed to detection (the stream is rate-limited to this). Default: 5.
    #[serde(default = "default_detect_fps")]
    pub detect_fps: u32,
    /// Areas the motion gate ignores (a road, trees, a screen): polygons of [x, y] points in
    /// normalised frame coordinates (0..1). Default: none.
    #[serde(default)]
    pub motion_masks: Vec<Vec<[f32; 2]>>,
    /// Areas where detections are ignored by every rule (a road outside the fence, a poster):
    /// polygons; a detection counts as inside when its feet (bottom centre) are. Default: none.
    #[serde(default)]
    pub object_masks: Vec<Vec<[f32; 2]>>,
    /// Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_latency() -> Duration {
    Duration::from_millis(200)
}
fn default_detect_width() -> u32 {
    640
}
fn default_detect_height() -> u32 {
    360
}
fn default_detect_fps() -> u32 {
    5
}
fn default_true() -> bool {
    true
}

// Hand-written so that a future secret field cannot slip into a log by `{:?}`; the URL is redacted.
impl fmt::Debug for CameraConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CameraConfig")
            .field("id", &self.id)
            .field("url", &crate::camera::redact_url(&self.url))
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("transport", &self.transport)
            .field("codec", &self.codec)
            .field(
                "detect",
                &(self.detect_width, self.detect_height, self.detect_fps),
            )
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl CameraConfig {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }

    /// The parsed URL; only valid after [`Config::validate`] succeeded.
    pub fn rtsp_url(&self) -> Result<RtspUrl, UrlError> {
        RtspUrl::parse(&self.url)
    }

    /// Reads the password from its file or environment variable.
    pub fn credentials(&self) -> Result<Option<Credentials>, CredentialsError> {
        credentials_from(
            self.username.as_deref(),
            self.password_file.as_deref(),
            self.password_env.as_deref(),
        )
    }
}

/// Why a username's password could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    PasswordFile(#[from] PasswordFileError),
    #[error("environment variable {0} is not set (or not UTF-8); set it or use password_file")]
    EnvUnset(String),
    #[error("username is set but no password; add password_file or password_env")]
    NoPassword,
    #[error("set only one of password_file and password_env")]
    TwoPasswords,
}

/// Credentials from a username and a password file or environment variable (cameras, MQTT and
/// `probe`).
pub fn credentials_from(
    username: Option<&str>,
    password_file: Option<&Path>,
    password_env: Option<&str>,
) -> Result<Option<Credentials>, CredentialsError> {
    let Some(username) = username else {
        return Ok(None);
    };
    let password = match (password_file, password_env) {
        (Some(file), None) => read_password_file(file)?,
        (None, Some(var)) => {
            std::env::var(var).map_err(|_| CredentialsError::EnvUnset(var.to_owned()))?
        }
        (None, None) => return Err(CredentialsError::NoPassword),
        (Some(_), Some(_)) => return Err(CredentialsError::TwoPasswords),
    };
    Ok(Some(Credentials {
        username: username.to_owned(),
        password: SecretString::from(password),
    }))
}

/// Why a password file gave no password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read password file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password file {} is empty", .0.display())]
    Empty(PathBuf),
}

/// Where the packaged unit hands credentials over: every file `<name>` of [`CREDENTIALS_DIR`]
/// becomes `secret_<name>` here (`LoadCredential=secret:/etc/kinderwatch/credentials`).
pub const UNIT_CREDENTIALS: &str = "/run/credentials/kinderwatch.service";
/// Where the passwords are kept on the box (root only).
pub const CREDENTIALS_DIR: &str = "/etc/kinderwatch/credentials";

/// A password file that is the unit's credential (`/run/credentials/kinderwatch.service/secret_gate`)
/// but does not exist (a command run by hand, outside the unit: `doctor`, `check-config`): the
/// file it is made from (`/etc/kinderwatch/credentials/gate`). `None` otherwise.
pub fn credential_source(path: &Path, credentials_dir: &Path) -> Option<PathBuf> {
    let name = path
        .strip_prefix(UNIT_CREDENTIALS)
        .ok()?
        .to_str()?
        .strip_prefix("secret_")?;
    if name.is_empty() || name.contains('/') || path.exists() {
        return None;
    }
    Some(credentials_dir.join(name))
}

pub fn read_password_file(path: &Path) -> Result<String, PasswordFileError> {
    let source_file = credential_source(path, Path::new(CREDENTIALS_DIR));
    let read = source_file.as_deref().unwrap_or(path);
    let text = std::fs::read_to_string(read).map_err(|source| PasswordFileError::Unreadable {
        path: read.to_owned(),
        source,
    })?;
    let pw = text.trim_end_matches(['\r', '\n']).to_owned();
    if pw.is_empty() {
        return Err(PasswordFileError::Empty(path.to_owned()));
    }
    Ok(pw)
}

impl IngestConfig {
    /// Puts the section's problems (paths `ingest.*`) in `v`.
    pub fn validate(&self, v: &mut Validator) {
        for (k, d) in [
            ("backoff_initial", self.backoff_initial),
            ("backoff_max", self.backoff_max),
            ("healthy_reset", self.healthy_reset),
            ("config_fault_backoff", self.config_fault_backoff),
            ("first_frame_timeout", self.first_frame_timeout),
            ("stall_timeout", self.stall_timeout),
            ("tcp_timeout", self.tcp_timeout),
        ] {
            if d.is_zero() {
                v.err(&format!("ingest.{k}"), "must be greater than zero");
            }
        }
        if self.backoff_max < self.backoff_initial {
            v.err(
                "ingest.backoff_max",
                "must not be smaller than ingest.backoff_initial",
            );
        }
    }
}

/// Puts the problems of the `[[cameras]]` entries (paths `cameras[i].*`) in `v`. Their object
/// masks belong to the rules and are checked there ([`crate::rules::config::compile`]).
pub fn validate_cameras(cameras: &[CameraConfig], v: &mut Validator) {
    if cameras.is_empty() {
        v.err(
            "cameras",
            "no camera configured; add at least one [[cameras]] entry",
        );
    }
    let mut seen = HashSet::new();
    for (i, cam) in cameras.iter().enumerate() {
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
                    v.err(&key(k), e.to_string());
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
        for (m, ring) in cam.motion_masks.iter().enumerate() {
            if let Some(p) = polygon_problem(ring) {
                v.err(&key(&format!("motion_masks[{m}]")), p);
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
}
