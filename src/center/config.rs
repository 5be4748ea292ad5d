//! `center.toml`: the `[center]` section of a city center instance (`kinderwatch center`).
//!
//! ```toml
//! [center]
//! instance = "center-1"          # unique per instance: its MQTT client id and its name in the log
//! topic_root = "kinderwatch"     # the sites publish under <topic_root>/<site id>/...
//! share_group = "center"         # the MQTT 5 shared subscription group of all instances
//!
//! [center.mqtt]                  # the broker, as in a site's [mqtt] (host, tls, credentials...)
//! host = "mqtt.city.example"
//!
//! [center.database]
//! url = "postgresql://center@db.city.example/kinderwatch"
//! password_file = "/run/credentials/kinderwatch-center.service/secret_db"
//!
//! [center.http]
//! listen = "0.0.0.0:8090"
//! [[center.http.tokens]]          # as the site's [[api.tokens]]; admin may acknowledge/resolve
//! name = "desk-1"
//! role = "admin"
//! sha256 = "..."
//!
//! [[center.sites]]               # the directory: district and name of each site
//! id = "kg-7"
//! district = "north"
//! name = "Kindergarten No. 7"
//! api_url = "http://10.8.0.7:8080"   # the site's HTTP API, for snapshots MQTT did not carry
//! api_token_file = "/etc/kinderwatch/center/kg-7.token"   # a read token of that site
//! ```
//!
//! Queries to the sites (`query/events` over MQTT request/response: the city-wide history's
//! fan-out and the reconciliation that fills the center's gaps) are tuned by `query_timeout`,
//! `query_concurrency`, `reply_topic_prefix`, `reconcile_interval` and `reconcile_window`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::alert::MqttConfig;
use crate::auth::TokenConfig;
use crate::config::ConfigError;
use crate::validate::{Problem, Validator};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CenterFile {
    pub center: CenterConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CenterConfig {
    /// This instance's name, unique among the instances: its MQTT client id.
    pub instance: String,
    /// Default: "kinderwatch".
    #[serde(default = "default_topic_root")]
    pub topic_root: String,
    /// Default: "center".
    #[serde(default = "default_share_group")]
    pub share_group: String,
    /// Alerts read but not yet stored at any time (MQTT 5 Receive Maximum), for a broker that
    /// keeps to it (mosquitto may send more: a WARN says so). Default: 32.
    #[serde(default = "default_receive_maximum")]
    pub receive_maximum: u16,
    /// How long a site has to answer one query. Default: 5s.
    #[serde(default = "default_query_timeout", with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Sites asked at once by a fan-out. Default: 64.
    #[serde(default = "default_query_concurrency")]
    pub query_concurrency: usize,
    /// Queries ask for their replies on `<reply_topic_prefix>/<instance>/<site>` (what the sites allow
    /// as their `mqtt.reply_topic_prefix`). Default: none; each site replies on
    /// `<topic_root>/<site>/responses`.
    pub reply_topic_prefix: Option<String>,
    /// How often one instance (whichever holds the database lock) asks every online site for
    /// the events the center lacks: what a killed instance or a broker restart lost. "0s": never.
    /// Default: 5m.
    #[serde(default = "default_reconcile_interval", with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// How far back the reconciliation looks the first time it asks a site. Default: 24h.
    #[serde(default = "default_reconcile_window", with = "humantime_serde")]
    pub reconcile_window: Duration,
    /// An alert whose JPEG has not come over MQTT this long after the alert is fetched from the
    /// site's API (`api_url`). Default: 10s.
    #[serde(default = "default_snapshot_fetch_after", with = "humantime_serde")]
    pub snapshot_fetch_after: Duration,
    pub mqtt: MqttConfig,
    pub database: DatabaseConfig,
    pub http: Option<HttpConfig>,
    #[serde(default)]
    pub sites: Vec<SiteEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// A libpq connection string: `postgresql://user@host:port/db` or `host=... dbname=...`.
    pub url: String,
    /// A file holding the password (else the URL's, or none).
    pub password_file: Option<PathBuf>,
    /// Connections of this instance. Default: 8.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// One site of the directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteEntry {
    pub id: String,
    pub district: Option<String>,
    pub name: Option<String>,
    /// The site's HTTP API, `http://host:port` (the site serves plain HTTP: reach it over the
    /// city's VPN). Without it, snapshots come only over MQTT.
    pub api_url: Option<String>,
    /// A file holding a read token of the site's API.
    pub api_token_file: Option<PathBuf>,
}

fn default_topic_root() -> String {
    "kinderwatch".into()
}
fn default_share_group() -> String {
    "center".into()
}
fn default_receive_maximum() -> u16 {
    32
}
fn default_pool_size() -> usize {
    8
}
fn default_query_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_query_concurrency() -> usize {
    64
}
fn default_reconcile_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_reconcile_window() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_snapshot_fetch_after() -> Duration {
    Duration::from_secs(10)
}

impl CenterConfig {
    /// Reads, parses and validates a center config file.
    pub fn load(file: &Path) -> Result<CenterConfig, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            ConfigError::one(
                file,
                "",
                format!("cannot read the file: {e}; pass an existing file with --config"),
            )
        })?;
        Self::from_toml(&text, file, file.parent().unwrap_or(Path::new(".")))
    }

    pub fn from_toml(text: &str, file: &Path, base: &Path) -> Result<CenterConfig, ConfigError> {
        let parsed: CenterFile = crate::config::deserialize_toml(text, file)?;
        let mut c = parsed.center;
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = &mut c.database.password_file {
            resolve(p);
        }
        for s in &mut c.sites {
            if let Some(p) = &mut s.api_token_file {
                resolve(p);
            }
        }
        for p in [
            &mut c.mqtt.ca_file,
            &mut c.mqtt.client_cert_file,
            &mut c.mqtt.client_key_file,
            &mut c.mqtt.password_file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(p);
        }
        let problems = c.validate();
        if problems.is_empty() {
            Ok(c)
        } else {
            Err(ConfigError {
                file: file.to_owned(),
                problems,
            })
        }
    }

    pub fn validate(&self) -> Vec<Problem> {
        let mut v = Validator::default();
        v.id("center.instance", &self.instance);
        let topic = |v: &mut Validator, key: &str, t: &str| {
            if t.is_empty() || t.contains(['+', '#', '$']) || t.starts_with('/') || t.ends_with('/')
            {
                v.err(
                    key,
                    format!("{t:?}: no wildcards (+ #), no '$' and no leading or trailing '/'"),
                );
            }
        };
        topic(&mut v, "center.topic_root", &self.topic_root);
        if self.share_group.is_empty() || self.share_group.contains(['+', '#', '/']) {
            v.err(
                "center.share_group",
                format!(
                    "{:?}: one topic level without wildcards, e.g. \"center\"",
                    self.share_group
                ),
            );
        }
        if let Some(r) = &self.reply_topic_prefix {
            topic(&mut v, "center.reply_topic_prefix", r);
        }
        if self.query_timeout.is_zero() || self.query_timeout > Duration::from_secs(120) {
            v.err("center.query_timeout", "use 1s to 120s (default 5s)");
        }
        if !(1..=1024).contains(&self.query_concurrency) {
            v.err("center.query_concurrency", "use 1 to 1024 (default 64)");
        }
        if self.reconcile_window.is_zero() {
            v.err(
                "center.reconcile_window",
                "use a duration such as \"24h\" (to turn reconciliation off, set reconcile_interval = \"0s\")",
            );
        }
        if self.receive_maximum == 0 {
            v.err("center.receive_maximum", "use 1 to 65535 (default 32)");
        }
        for (key, message) in self.mqtt.problems(&self.instance) {
            // Site-only keys (topic_prefix, reply_topic_prefix) are not used by the center.
            v.err(&format!("center.mqtt.{key}"), message);
        }
        if let Err(e) = self.database.url.parse::<tokio_postgres::Config>() {
            v.err(
                "center.database.url",
                format!("not a PostgreSQL connection string ({e}); e.g. \"postgresql://center@db.example/kinderwatch\""),
            );
        }
        if let Some(p) = &self.database.password_file
            && let Err(e) = crate::camera::config::read_password_file(p)
        {
            v.err("center.database.password_file", e.to_string());
        }
        if !(1..=256).contains(&self.database.pool_size) {
            v.err("center.database.pool_size", "use 1 to 256 (default 8)");
        }
        if let Some(http) = &self.http {
            for (i, t) in http.tokens.iter().enumerate() {
                if !crate::auth::is_sha256_hex(&t.sha256) {
                    v.err(
                        &format!("center.http.tokens[{i}].sha256"),
                        "not a hex SHA-256; make one with `kinderwatch token`",
                    );
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.sites.iter().enumerate() {
            v.id(&format!("center.sites[{i}].id"), &s.id);
            if !seen.insert(&s.id) {
                v.err(
                    &format!("center.sites[{i}].id"),
                    format!("site {:?} is listed twice", s.id),
                );
            }
            if let Some(u) = &s.api_url
                && !valid_api_url(u)
            {
                v.err(
                    &format!("center.sites[{i}].api_url"),
                    format!("{u:?}: use http://host:port, the site's API address (plain HTTP, over the city VPN)"),
                );
            }
            match (&s.api_url, &s.api_token_file) {
                (Some(_), None) => v.err(
                    &format!("center.sites[{i}].api_token_file"),
                    "api_url needs a read token of the site: a file holding it (`kinderwatch token` on the site)",
                ),
                (None, Some(_)) => v.err(
                    &format!("center.sites[{i}].api_url"),
                    "api_token_file is set without api_url; add the site's http://host:port",
                ),
                (Some(_), Some(p)) => {
                    if let Err(e) = crate::camera::config::read_password_file(p) {
                        v.err(&format!("center.sites[{i}].api_token_file"), e.to_string());
                    }
                }
                (None, None) => {}
            }
        }
        v.into_problems()
    }

    /// The response topic of this instance's questions to `site` (none: the site replies on its
    /// `<root>/<site>/responses`). One topic per site, so that a broker ACL can let each site
    /// write only its own (`topic write <prefix>/+/<site>`) and no site can answer for another.
    pub fn reply_topic(&self, site: &str) -> Option<String> {
        self.reply_topic_prefix
            .as_ref()
            .map(|p| format!("{p}/{}/{site}", self.instance))
    }

    /// The filter that receives this instance's replies.
    pub fn reply_filter(&self) -> String {
        match &self.reply_topic_prefix {
            Some(p) => format!("{p}/{}/+", self.instance),
            None => format!("{}/+/responses", self.topic_root),
        }
    }

    /// The site a reply came from, read from its topic (the broker's ACL vouches for it).
    pub fn reply_site<'a>(&self, topic: &'a str) -> Option<&'a str> {
        match &self.reply_topic_prefix {
            Some(p) => topic
                .strip_prefix(p.as_str())?
                .strip_prefix('/')?
                .strip_prefix(self.instance.as_str())?
                .strip_prefix('/'),
            None => topic
                .strip_prefix(self.topic_root.as_str())?
                .strip_prefix('/')?
                .strip_suffix("/responses"),
        }
        .filter(|s| !s.is_empty() && !s.contains('/'))
    }

    /// The directory entry of `site`.
    pub fn site(&self, site: &str) -> Option<&SiteEntry> {
        self.sites.iter().find(|s| s.id == site)
    }

    /// The database settings tokio-postgres connects with (the password file applied).
    pub fn pg_config(&self) -> anyhow::Result<tokio_postgres::Config> {
        let mut pg: tokio_postgres::Config = self
            .database
            .url
            .parse()
            .map_err(|e| anyhow::anyhow!("center.database.url: {e}"))?;
        if let Some(p) = &self.database.password_file {
            let pw = crate::camera::config::read_password_file(p)
                .map_err(|e| anyhow::anyhow!("center.database.password_file: {e}"))?;
            pg.password(pw);
        }
        if pg.get_application_name().is_none() {
            pg.application_name(format!("kinderwatch-center {}", self.instance));
        }
        Ok(pg)
    }
}

/// `http://host[:port]` with nothing after the authority but an optional `/`.
fn valid_api_url(u: &str) -> bool {
    url::Url::parse(u).is_ok_and(|p| {
        p.scheme() == "http"
            && p.host_str().is_some()
            && p.path() == "/"
            && p.query().is_none()
            && p.username().is_empty()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> CenterConfig {
        let text = format!(
            "[center]\ninstance = \"center-a\"\n{extra}\n[center.mqtt]\nhost = \"broker\"\n[center.database]\nurl = \"postgresql://center@db/center\"\n"
        );
        CenterConfig::from_toml(&text, Path::new("center.toml"), Path::new(".")).unwrap()
    }

    #[test]
    fn replies_name_the_site_in_their_topic() {
        let c = config("reply_topic_prefix = \"center/replies\"");
        assert_eq!(
            c.reply_topic("kg-7").as_deref(),
            Some("center/replies/center-a/kg-7")
        );
        assert_eq!(c.reply_filter(), "center/replies/center-a/+");
        assert_eq!(c.reply_site("center/replies/center-a/kg-7"), Some("kg-7"));
        assert_eq!(c.reply_site("center/replies/center-b/kg-7"), None);
        assert_eq!(c.reply_site("center/replies/center-a/kg-7/x"), None);

        let d = config("");
        assert_eq!(d.reply_topic("kg-7"), None);
        assert_eq!(d.reply_filter(), "kinderwatch/+/responses");
        assert_eq!(d.reply_site("kinderwatch/kg-7/responses"), Some("kg-7"));
        assert_eq!(d.reply_site("kinderwatch/responses"), None);
    }
}
