//! MQTT alerts to the city monitoring center: the publisher draining the store's outbox,
//! availability (retained status + last will), camera status, and request/response commands.
//!
//! Topics, under `mqtt.topic_prefix` (default `kinderwatch/<site>`):
//!
//! | topic | what | QoS | retained |
//! |---|---|---|---|
//! | `<prefix>/status` | `online` / `offline` (the last will) | 1 | yes |
//! | `<prefix>/cameras/<camera>/status` | camera state JSON | 1 | yes |
//! | `<prefix>/events/<camera or site>/<kind>` | the alert JSON ([`payload`]) | 1 | no |
//! | `<prefix>/events/<camera>/<kind>/snapshot` | the JPEG (with `publish_snapshots`) | 1 | no |
//! | `<prefix>/commands/query/events`, `.../query/cameras`, `.../query/rules` | requests | – | – |
//! | `<prefix>/commands/admin/arm`, `.../admin/disarm` | requests | – | – |
//! | the request's response topic (under `mqtt.reply_topic_prefix`), else `<prefix>/responses` | responses | 1 | no |
//!
//! The command topics are split into `query/` and `admin/` so that a broker ACL can give the
//! center's operators queries and only the center's admin service arming.

pub mod commands;
pub mod fit;
pub mod payload;
pub mod publisher;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::camera::Credentials;

/// `[mqtt]` in the config; absent: no MQTT (events are only stored).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or IP address (no scheme).
    pub host: String,
    /// Default: 1883, or 8883 with `tls = true`.
    pub port: Option<u16>,
    /// Default: false.
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA that signed the broker's certificate. Required with `tls = true`.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for brokers that authenticate clients by certificate.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// Default: "kinderwatch/<site id>".
    pub topic_prefix: Option<String>,
    /// Default: "kinderwatch-<site id>".
    pub client_id: Option<String>,
    /// Default: 30s.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// First pause after a failed connection; doubles up to `backoff_max`. Default: 1s.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Default: 60s.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Also publish each snapshot JPEG on `.../snapshot`. Default: false.
    #[serde(default)]
    pub publish_snapshots: bool,
    /// Where the center fetches snapshots over HTTP, e.g. "https://10.8.0.7:8080"; the payload's
    /// `snapshot.url` is this + `/api/v1/events/<id>/snapshot.jpg`. Default: none.
    pub snapshot_base_url: Option<String>,
    /// MQTT 5 message expiry of alerts (0s: none). Default: 0s.
    #[serde(default, with = "humantime_serde")]
    pub message_expiry: Duration,
    /// Alerts published and not yet acknowledged at any time. Default: 100.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// The largest packet the site accepts, in bytes; sent to the broker in CONNECT (MQTT 5
    /// Maximum Packet Size) so that it discards larger messages (a retained 20 MB "command")
    /// instead of sending them. Default: 262144 (256 KiB).
    #[serde(default = "default_max_incoming_packet")]
    pub max_incoming_packet: u32,
    /// Refusals (a PUBACK with an error reason) of one alert before it moves to the dead
    /// letters. Default: 5.
    #[serde(default = "default_max_delivery_attempts")]
    pub max_delivery_attempts: u32,
    /// Command replies may go to response topics under this prefix (e.g. "center/replies"),
    /// besides `<prefix>/responses`. Default: none (only `<prefix>/responses`).
    pub reply_topic_prefix: Option<String>,
    /// Commands run at once; a request beyond that is answered `busy`. Default: 4.
    #[serde(default = "default_max_concurrent_commands")]
    pub max_concurrent_commands: usize,
}

fn default_max_incoming_packet() -> u32 {
    256 * 1024
}
fn default_max_delivery_attempts() -> u32 {
    5
}
fn default_max_concurrent_commands() -> usize {
    4
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
fn default_max_inflight() -> u16 {
    100
}

impl MqttConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.tls { 8883 } else { 1883 })
    }

    pub fn topic_prefix(&self, site: &str) -> String {
        self.topic_prefix
            .clone()
            .unwrap_or_else(|| format!("kinderwatch/{site}"))
    }

    pub fn client_id(&self, site: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("kinderwatch-{site}"))
    }

    pub fn credentials(
        &self,
    ) -> Result<Option<Credentials>, crate::camera::config::CredentialsError> {
        crate::camera::config::credentials_from(
            self.username.as_deref(),
            self.password_file.as_deref(),
            self.password_env.as_deref(),
        )
    }

    /// Puts the section's problems (paths `mqtt.*`) in `v`, for site `site`.
    pub fn validate(&self, site: &str, v: &mut crate::validate::Validator) {
        for (key, message) in self.problems(site) {
            v.err(&format!("mqtt.{key}"), message);
        }
    }

    /// Every problem, as (key under `mqtt.`, message), for site `site`.
    pub fn problems(&self, site: &str) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        let host = self.host.trim();
        if host.is_empty() || host.contains("://") || host.contains(['/', ' ', '\t']) {
            p.push((
                "host",
                format!(
                    "{:?} is not a host name or IP address; write it without a scheme or path, e.g. \"mqtt.city.example\"",
                    self.host
                ),
            ));
        }
        if self.port == Some(0) {
            p.push(("port", "use a port from 1 to 65535".into()));
        }
        let readable = |key: &'static str, path: &Path, p: &mut Vec<(&'static str, String)>| {
            if let Err(e) = std::fs::read(path) {
                p.push((key, format!("cannot read {}: {e}", path.display())));
            }
        };
        match (&self.ca_file, self.tls) {
            (Some(ca), true) => readable("ca_file", ca, &mut p),
            (Some(_), false) => p.push((
                "tls",
                "ca_file is set but tls = false; set tls = true".into(),
            )),
            (None, true) => p.push((
                "ca_file",
                "tls = true needs the broker's CA certificate (a PEM file)".into(),
            )),
            (None, false) => {}
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(c), Some(k)) => {
                readable("client_cert_file", c, &mut p);
                readable("client_key_file", k, &mut p);
                if !self.tls {
                    p.push(("tls", "client certificates need tls = true".into()));
                }
            }
            (Some(_), None) => p.push((
                "client_key_file",
                "client_cert_file needs client_key_file".into(),
            )),
            (None, Some(_)) => p.push((
                "client_cert_file",
                "client_key_file needs client_cert_file".into(),
            )),
            (None, None) => {}
        }
        if self.username.is_none() && (self.password_file.is_some() || self.password_env.is_some())
        {
            p.push(("username", "a password is set but no username".into()));
        } else if let Err(e) = self.credentials() {
            let key = if self.password_env.is_some() {
                "password_env"
            } else {
                "password_file"
            };
            p.push((key, e.to_string()));
        }
        if let Some(prefix) = &self.topic_prefix
            && (prefix.is_empty()
                || prefix.contains(['+', '#'])
                || prefix.ends_with('/')
                || prefix.starts_with('/'))
        {
            p.push((
                "topic_prefix",
                format!("{prefix:?}: no wildcards (+ #) and no leading or trailing '/'"),
            ));
        }
        if let Some(url) = &self.snapshot_base_url
            && url::Url::parse(url)
                .map(|u| !matches!(u.scheme(), "http" | "https"))
                .unwrap_or(true)
        {
            p.push((
                "snapshot_base_url",
                format!("{url:?} is not an http(s) URL"),
            ));
        }
        if self.max_incoming_packet < 4096 || self.max_incoming_packet > 268_435_455 {
            p.push((
                "max_incoming_packet",
                "use 4096 to 268435455 bytes (the default 262144 fits every command)".into(),
            ));
        }
        if self.max_delivery_attempts == 0 {
            p.push(("max_delivery_attempts", "use at least 1".into()));
        }
        if !(1..=64).contains(&self.max_concurrent_commands) {
            p.push(("max_concurrent_commands", "use 1 to 64".into()));
        }
        if let Some(r) = &self.reply_topic_prefix {
            let own = self.topic_prefix(site);
            let under = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
            if r.is_empty() || r.contains(['+', '#']) || r.ends_with('/') || r.starts_with('/') {
                p.push((
                    "reply_topic_prefix",
                    format!("{r:?}: no wildcards (+ #) and no leading or trailing '/'"),
                ));
            } else if under(&own, r) || under(r, &own) {
                p.push((
                    "reply_topic_prefix",
                    format!("{r:?} holds the site's own topics ({own}); use the center's reply prefix, e.g. \"center/replies\""),
                ));
            }
        }
        if self.max_inflight == 0 {
            p.push(("max_inflight", "use at least 1".into()));
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            p.push((
                "backoff_max",
                "use 0 < backoff_initial <= backoff_max".into(),
            ));
        }
        if self.keep_alive < Duration::from_secs(5) {
            p.push(("keep_alive", "use at least 5s".into()));
        }
        p
    }
}
