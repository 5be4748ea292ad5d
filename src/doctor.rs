//! `kinderwatch doctor`: checks a box before and after install, on one screen, in plain words,
//! with the fix for each problem: the config, the ONNX Runtime library and its execution
//! providers, each model file's SHA-256, the GStreamer elements the cameras need, the state
//! directory (owner, mode, writable, free space), the MQTT broker (reachable, TLS, credentials
//! accepted) and each camera (a probe). It changes nothing: the broker sees a client of its own
//! (`<client id>-doctor`, no last will), so a running daemon's session is not taken over.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::camera::config::{CREDENTIALS_DIR, credential_source};
use crate::camera::probe::{ProbeOptions, probe};
use crate::config::Config;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Works, but worth a look (the daemon starts).
    Warn,
    /// The daemon will not work as configured.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub verdict: Verdict,
    /// What was checked: `config`, `onnxruntime`, `model`, `gstreamer`, `state`, `mqtt`,
    /// `camera <id>`.
    pub what: String,
    pub detail: String,
    /// What to do about a warning or a failure.
    pub fix: Option<String>,
}

impl Check {
    fn ok(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Ok,
            what: what.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        verdict: Verdict,
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            verdict,
            what: what.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check, in the order an installer fixes things.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// Something will not work: `doctor` exits non-zero.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let tag = match c.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            writeln!(f, "  {tag}  {:<14} {}", c.what, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(f, "        {:<14} fix: {fix}", "")?;
            }
        }
        let fails = self
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .count();
        let warns = self
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Warn)
            .count();
        match (fails, warns) {
            (0, 0) => write!(f, "all {} checks passed", self.checks.len()),
            (0, w) => write!(f, "no problems; {w} warning(s)"),
            (n, w) => write!(
                f,
                "{n} problem(s), {w} warning(s): the daemon will not work as configured"
            ),
        }
    }
}

/// A config that did not load: the report of that one check.
pub fn invalid_config(file: &Path, error: &crate::config::ConfigError) -> Report {
    let problems: Vec<String> = error.problems.iter().map(ToString::to_string).collect();
    Report {
        checks: vec![Check::bad(
            Verdict::Fail,
            "config",
            format!("{}: {}", file.display(), problems.join("; ")),
            format!(
                "correct the keys named, then run `kinderwatch check-config --config {}`",
                file.display()
            ),
        )],
    }
}

/// Runs every check on a loaded config. Cameras are probed at once, each for at most
/// `camera_timeout`.
pub async fn examine(config: &Config, file: &Path, camera_timeout: Duration) -> Report {
    let mut checks = vec![Check::ok(
        "config",
        format!(
            "{}: valid (site {}, {} camera(s), {} rule(s))",
            file.display(),
            config.site.id,
            config.cameras.len(),
            config.rules.len()
        ),
    )];
    checks.extend(detector(config));
    checks.push(gstreamer(config));
    checks.push(state_dir(config));
    if let Some(mqtt) = mqtt(config).await {
        checks.push(mqtt);
    }
    checks.extend(cameras(config, camera_timeout).await);
    Report { checks }
}

/// The ONNX Runtime library, its providers, and the model's SHA-256.
fn detector(config: &Config) -> Vec<Check> {
    use crate::detect::runtime;
    let d = &config.detector;
    let Some(model) = &d.model else {
        return vec![Check::bad(
            Verdict::Warn,
            "model",
            "no detector.model: nobody is detected, no rule runs (cameras and events only)",
            "set detector.model to a manifest under /usr/share/kinderwatch/models/ (or models/)",
        )];
    };
    let mut out = Vec::new();
    match runtime::init(d.onnxruntime.as_deref()) {
        Ok(path) => {
            let providers = runtime::available_providers();
            let wanted = d.execution_provider.ort_name();
            if providers.contains(&wanted) {
                out.push(Check::ok("onnxruntime", format!("{} (providers: {})", path.display(), providers.join(", "))));
            } else {
                let verdict = if d.execution_provider_required { Verdict::Fail } else { Verdict::Warn };
                out.push(Check::bad(
                    verdict,
                    "onnxruntime",
                    format!("{} has no {wanted} provider (it has: {})", path.display(), providers.join(", ")),
                    format!("install an ONNX Runtime build with {wanted}, or set detector.execution_provider = \"cpu\""),
                ));
            }
        }
        Err(e) => out.push(Check::bad(
            Verdict::Fail,
            "onnxruntime",
            e.to_string(),
            "run scripts/setup.sh (it installs the library), or set detector.onnxruntime to libonnxruntime.so",
        )),
    }
    match crate::detect::manifest::ModelManifest::load_verified(model) {
        Ok(m) => out.push(Check::ok(
            "model",
            format!("{} {} (sha256 {} verified)", m.manifest.name, m.path.display(), &m.manifest.sha256[..16.min(m.manifest.sha256.len())]),
        )),
        Err(e) => out.push(Check::bad(
            Verdict::Fail,
            "model",
            format!("{}: {e}", model.display()),
            "reinstall the model files (the package, or `git checkout models/`); never edit a manifest's sha256 by hand",
        )),
    }
    out
}

/// The GStreamer elements the cameras' pipelines are built from, and the Debian package of each.
fn gstreamer(config: &Config) -> Check {
    use crate::camera::config::Codec;
    if let Err(e) = crate::init_gstreamer() {
        return Check::bad(
            Verdict::Fail,
            "gstreamer",
            format!("does not initialise: {e}"),
            "apt install gstreamer1.0-plugins-base",
        );
    }
    let mut needed: Vec<(&str, &str)> = vec![
        ("rtspsrc", "gstreamer1.0-plugins-good"),
        ("videorate", "gstreamer1.0-plugins-base"),
        ("videoscale", "gstreamer1.0-plugins-base"),
        ("videoconvert", "gstreamer1.0-plugins-base"),
        ("capsfilter", "gstreamer1.0 (core)"),
        ("appsink", "gstreamer1.0-plugins-base"),
    ];
    let cams: Vec<_> = config.enabled_cameras().collect();
    if cams.iter().any(|c| c.codec == Codec::H264) {
        needed.extend([
            ("rtph264depay", "gstreamer1.0-plugins-good"),
            ("avdec_h264", "gstreamer1.0-libav"),
        ]);
    }
    if cams.iter().any(|c| c.codec == Codec::Auto) {
        needed.extend([
            ("decodebin", "gstreamer1.0-plugins-base"),
            ("rtph265depay", "gstreamer1.0-plugins-good"),
            ("avdec_h265", "gstreamer1.0-libav"),
            ("rtpjpegdepay", "gstreamer1.0-plugins-good"),
            ("jpegdec", "gstreamer1.0-plugins-good"),
        ]);
    }
    let missing: Vec<&(&str, &str)> = needed
        .iter()
        .filter(|(e, _)| gstreamer::ElementFactory::find(e).is_none())
        .collect();
    if missing.is_empty() {
        return Check::ok(
            "gstreamer",
            format!(
                "{} {}: the {} element(s) the cameras need",
                gstreamer::version_string(),
                "found",
                needed.len()
            ),
        );
    }
    let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    packages.dedup();
    Check::bad(
        Verdict::Fail,
        "gstreamer",
        format!(
            "missing: {}",
            missing
                .iter()
                .map(|(e, _)| *e)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!("apt install {}", packages.join(" ")),
    )
}

/// The state directory: there (or creatable), whose, what mode, writable, and its free space.
fn state_dir(config: &Config) -> Check {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = &config.state.dir;
    let meta = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => {
            return Check::bad(
                Verdict::Fail,
                "state",
                format!("{} is not a directory", dir.display()),
                "set state.dir to a directory",
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.parent().unwrap_or(Path::new("/"));
            return Check::bad(
                Verdict::Warn,
                "state",
                format!(
                    "{} does not exist yet (created at the first start if {} is writable)",
                    dir.display(),
                    parent.display()
                ),
                "under systemd the unit's StateDirectory=kinderwatch creates /var/lib/kinderwatch; else create it for the service user",
            );
        }
        Err(e) => {
            return Check::bad(
                Verdict::Fail,
                "state",
                format!("{}: {e}", dir.display()),
                "check the path and its parents' permissions",
            );
        }
    };
    let owner = user_name(meta.uid()).unwrap_or_else(|| meta.uid().to_string());
    let mode = meta.permissions().mode() & 0o7777;
    let probe = dir.join(format!(".kinderwatch-doctor-{}", std::process::id()));
    let writable = std::fs::write(&probe, b"x").and_then(|_| std::fs::remove_file(&probe));
    let free_mb = crate::store::free_bytes(dir)
        .map(|b| b / (1024 * 1024))
        .ok();
    let facts = format!(
        "{} (owner {owner}, mode {mode:o}, {} MB free)",
        dir.display(),
        free_mb.map_or("?".into(), |f| f.to_string())
    );
    if let Err(e) = writable {
        return Check::bad(
            Verdict::Fail,
            "state",
            format!("{facts}: not writable by this user ({e})"),
            format!(
                "chown the directory to the service user (e.g. chown -R kinderwatch: {})",
                dir.display()
            ),
        );
    }
    let reserve = config.store.min_free_mb;
    match free_mb {
        Some(free) if free < reserve => Check::bad(
            Verdict::Fail,
            "state",
            format!("{facts}: below the reserve store.min_free_mb = {reserve}"),
            "free disk space, move state.dir to a larger disk, or lower store.max_disk_mb",
        ),
        _ if mode & 0o007 != 0 => Check::bad(
            Verdict::Warn,
            "state",
            format!("{facts}: readable by every user (snapshots of children are in it)"),
            format!("chmod 0750 {}", dir.display()),
        ),
        _ => Check::ok("state", facts),
    }
}

fn user_name(uid: u32) -> Option<String> {
    // SAFETY: getpwuid returns a pointer into static storage or null; the name is copied at once.
    unsafe {
        let pw = libc::getpwuid(uid);
        if pw.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// What to tell the installer when a password file is the unit's credential read outside the
/// unit (see [`credential_source`]).
fn outside_the_unit(password_file: Option<&Path>) -> Option<String> {
    let file = password_file?;
    let from = credential_source(file, Path::new(CREDENTIALS_DIR))?;
    Some(format!(
        "password read from {} (the unit's {})",
        from.display(),
        file.display()
    ))
}

/// The broker: a connection of its own (`<client id>-doctor`, no last will) to the CONNACK.
async fn mqtt(config: &Config) -> Option<Check> {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
    use rumqttc::v5::{AsyncClient, ConnectionError, Event};
    let m = config.mqtt.as_ref()?;
    let target = format!(
        "{}:{}{}",
        m.host.trim(),
        m.port(),
        if m.tls { " (TLS)" } else { "" }
    );
    let opts = match crate::alert::publisher::doctor_options(m, &config.site.id) {
        Ok(o) => o,
        Err(e) => {
            return Some(Check::bad(
                Verdict::Fail,
                "mqtt",
                format!("{target}: {e:#}"),
                "correct the [mqtt] keys named",
            ));
        }
    };
    let (client, mut eventloop) = AsyncClient::new(opts, 4);
    let outcome = tokio::time::timeout(Duration::from_secs(12), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let check = match outcome {
        Ok(Ok(ack)) if ack.code == ConnectReturnCode::Success => {
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
            Check::ok("mqtt", format!("{target}: connected, credentials accepted"))
        }
        Ok(Ok(ack)) => refused_by_broker(&target, ack.code),
        Ok(Err(ConnectionError::ConnectionRefused(code))) => refused_by_broker(&target, code),
        Ok(Err(ConnectionError::Tls(e))) => Check::bad(
            Verdict::Fail,
            "mqtt",
            format!("{target}: TLS failed: {e}"),
            "check mqtt.ca_file (the broker's CA), the host name in its certificate, and the client certificate",
        ),
        Ok(Err(e)) => Check::bad(
            Verdict::Fail,
            "mqtt",
            format!("{target}: {}", crate::alert::publisher::describe_error(&e)),
            "check mqtt.host and mqtt.port, that the broker runs, and the firewall between this box and it",
        ),
        Err(_) => Check::bad(
            Verdict::Fail,
            "mqtt",
            format!("{target}: no answer within 12 s"),
            "check mqtt.host and mqtt.port, and the firewall (a silent drop looks like this)",
        ),
    };
    Some(check)
}

fn refused_by_broker(target: &str, code: rumqttc::v5::mqttbytes::v5::ConnectReturnCode) -> Check {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
    let fix = match code {
        C::BadUserNamePassword | C::NotAuthorized => {
            "check mqtt.username and the password file (mqtt.password_file) against the broker's password file"
        }
        C::ClientIdentifierNotValid => "set mqtt.client_id to what the broker accepts",
        _ => "see the broker's log for why it refused the connection",
    };
    Check::bad(
        Verdict::Fail,
        "mqtt",
        format!("{target}: the broker refused the connection ({code:?})"),
        fix,
    )
}

/// Each enabled camera, probed at once.
async fn cameras(config: &Config, timeout: Duration) -> Vec<Check> {
    let probes = config.enabled_cameras().map(|cam| async move {
        let what = format!("camera {}", cam.id);
        let credential_note = outside_the_unit(cam.password_file.as_deref());
        let url = match cam.rtsp_url() {
            Ok(u) => u,
            Err(e) => {
                return Check::bad(
                    Verdict::Fail,
                    what,
                    format!("url: {e}"),
                    "correct the camera's url",
                );
            }
        };
        let credentials = match cam.credentials() {
            Ok(c) => c,
            Err(e) => {
                let fix = match &credential_note {
                    Some(_) => format!(
                        "put the camera's password in {CREDENTIALS_DIR}/{} (root, mode 0600)",
                        cam.password_file
                            .as_deref()
                            .and_then(Path::file_name)
                            .map_or_else(|| cam.id.clone(), |n| n.to_string_lossy().into_owned())
                    ),
                    None => "check the camera's username and password_file / password_env".into(),
                };
                return Check::bad(Verdict::Fail, what, e.to_string(), fix);
            }
        };
        let opts = ProbeOptions {
            url: url.clone(),
            credentials,
            transport: cam.transport,
            codec: cam.codec,
            timeout,
            measure: Duration::from_secs(1),
        };
        match probe(opts).await {
            Ok(r) => {
                let facts = format!(
                    "{url}: {} {}x{} at {:.1} fps over {}",
                    r.codec,
                    r.width,
                    r.height,
                    r.measured_fps,
                    r.transport.as_str()
                );
                let facts = match &credential_note {
                    Some(note) => format!("{facts}; {note}"),
                    None => facts,
                };
                match r.advice {
                    Some(advice) => Check::bad(Verdict::Warn, what, facts, advice),
                    None => Check::ok(what, facts),
                }
            }
            Err(e) => Check::bad(
                Verdict::Fail,
                what,
                format!("{url}: {}", e.fault),
                e.diagnosis,
            ),
        }
    });
    futures_util::future::join_all(probes).await
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_unit_credential_is_read_from_the_file_it_is_made_from() {
        let dir = Path::new("/etc/kinderwatch/credentials");
        assert_eq!(
            credential_source(
                Path::new("/run/credentials/kinderwatch.service/secret_gate"),
                dir
            ),
            Some(dir.join("gate"))
        );
        for other in [
            "/run/credentials/kinderwatch.service/gate",
            "/run/credentials/kinderwatch.service/secret_",
            "/run/credentials/other.service/secret_gate",
            "/etc/kinderwatch/gate-password",
        ] {
            assert_eq!(credential_source(Path::new(other), dir), None, "{other}");
        }
    }

    use super::*;
}
