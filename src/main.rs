//! The `kinderwatch` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kinderwatch::camera::RtspUrl;
use kinderwatch::camera::probe::{self, ProbeOptions};
use kinderwatch::config::{Codec, Config, LogFormat, Transport, credentials_from};

/// Perimeter alerts from kindergarten IP cameras.
#[derive(Parser)]
#[command(name = "kinderwatch", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGINT/SIGTERM.
    Run {
        /// Config file.
        #[arg(long, short, default_value = "/etc/kinderwatch/kinderwatch.toml")]
        config: PathBuf,
    },
    /// Run one instance of the city monitoring center (alarm queue, city-wide history) until
    /// SIGINT/SIGTERM: it consumes every site's alerts from the city broker into PostgreSQL.
    Center {
        /// Center config file (a `[center]` section).
        #[arg(long, short, default_value = "/etc/kinderwatch/center.toml")]
        config: PathBuf,
        /// Only check the config: print every problem with its key path, exit non-zero on one.
        #[arg(long)]
        check: bool,
    },
    /// Check a config file; print every problem with its key path and exit non-zero if there is one.
    CheckConfig {
        /// Config file.
        file: PathBuf,
    },
    /// Check this box for the config: the ONNX Runtime library, the models, GStreamer, the state
    /// directory, the MQTT broker and every camera; say what to fix; exit non-zero on a problem.
    Doctor {
        /// Config file.
        #[arg(long, short, default_value = "/etc/kinderwatch/kinderwatch.toml")]
        config: PathBuf,
        /// How long each camera may take to deliver a first frame.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        camera_timeout: std::time::Duration,
    },
    /// Connect to one camera, print codec, resolution, frame rate and time to first frame.
    Probe {
        /// rtsp://host[:port]/path (credentials in the URL are accepted but better passed separately).
        url: String,
        #[arg(long, short)]
        username: Option<String>,
        /// File holding the password.
        #[arg(long, conflicts_with = "password_env")]
        password_file: Option<PathBuf>,
        /// Environment variable holding the password.
        #[arg(long)]
        password_env: Option<String>,
        #[arg(long, value_enum, default_value = "tcp")]
        transport: CliTransport,
        /// "h264", or "auto" for H.265/MJPEG cameras.
        #[arg(long, value_enum, default_value = "h264")]
        codec: CliCodec,
        /// Give up when no frame arrived after this long.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// How long to count frames for the frame rate.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        measure: Duration,
    },
    /// Run the daemon with the built-in demo config against one camera (see `make demo`).
    Demo {
        /// The sample camera's URL.
        #[arg(long)]
        camera_url: String,
        /// Stop after this long (default: run until Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Print recorded events, newest first: from the running daemon's API, or with --db from a
    /// stopped daemon's state directory.
    Events {
        /// Events of the last DURATION (e.g. 2h, 30m, 7days).
        #[arg(long, conflicts_with = "from")]
        since: Option<String>,
        /// From this time (RFC 3339, e.g. 2026-11-22T08:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// Until this time (RFC 3339, exclusive).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        camera: Option<String>,
        /// line_crossed, zone_entered, zone_left, loitering, camera_offline, camera_online,
        /// camera_tampered, storage_failed, storage_recovered.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value = "table")]
        format: CliFormat,
        #[command(flatten)]
        from_daemon: SourceArgs,
    },
    /// Print the audit trail (who queried the history, read snapshots, armed or disarmed), newest
    /// first. Needs an admin token (or --db).
    Audit {
        /// Records of the last DURATION (e.g. 24h).
        #[arg(long, conflicts_with = "from")]
        since: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Only this token name.
        #[arg(long)]
        caller: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        from_daemon: SourceArgs,
    },
    /// List the alerts taken out of MQTT delivery (refused by the broker, too large, unreadable),
    /// or put them back into the outbox once the cause is fixed (admin token).
    DeadLetters {
        /// Re-queue the dead letter of this event id.
        #[arg(long, conflicts_with = "requeue_all")]
        requeue: Option<String>,
        /// Re-queue every dead letter.
        #[arg(long)]
        requeue_all: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        from_daemon: SourceArgs,
    },
    /// Make a new API token; print it once, with the [[api.tokens]] entry (its hash) for the config.
    Token {
        /// Who will hold the token.
        #[arg(long, default_value = "operator")]
        name: String,
        #[arg(long, value_enum, default_value = "read")]
        role: CliRole,
    },
    /// Print the HTTP API's OpenAPI document (what /api/v1/openapi.json serves; docs/openapi.json).
    Openapi,
    /// Print the manual page (roff), generated from these commands and options:
    /// `kinderwatch man > kinderwatch.1`.
    Man,
    /// Print the version.
    Version,
}

/// Where `events`, `audit` and `dead-letters` read: the daemon's API or a stopped daemon's database.
#[derive(clap::Args)]
struct SourceArgs {
    /// Read this state directory (or events.db) directly; the daemon must be stopped.
    #[arg(long, conflicts_with_all = ["api", "config"])]
    db: Option<PathBuf>,
    /// The daemon's API, e.g. http://127.0.0.1:8080 (default: api.listen from --config).
    #[arg(long)]
    api: Option<String>,
    /// Config file to take api.listen from.
    #[arg(long, short, default_value = "/etc/kinderwatch/kinderwatch.toml")]
    config: PathBuf,
    /// File holding the API token (default: the KINDERWATCH_TOKEN environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl SourceArgs {
    fn source(self) -> anyhow::Result<kinderwatch::history::Source> {
        if let Some(dir) = self.db {
            return Ok(kinderwatch::history::Source::Db(dir));
        }
        let base = match self.api {
            Some(a) => a,
            None => {
                let c = Config::load(&self.config).with_context(
                    || "give --api URL, or a readable --config to take api.listen from",
                )?;
                format!("http://{}", c.api.listen)
            }
        };
        let token = match self.token_file {
            Some(f) => std::fs::read_to_string(&f)
                .with_context(|| format!("--token-file {}", f.display()))?
                .trim()
                .to_owned(),
            None => std::env::var("KINDERWATCH_TOKEN").map_err(|_| {
                anyhow::anyhow!(
                    "no API token: set KINDERWATCH_TOKEN or give --token-file (`kinderwatch token` makes one)"
                )
            })?,
        };
        Ok(kinderwatch::history::Source::Api { base, token })
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CliFormat {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CliRole {
    Read,
    Admin,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CliTransport {
    Tcp,
    Udp,
    /// TCP, then UDP if TCP brings no picture.
    Auto,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CliCodec {
    H264,
    Auto,
}

const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

fn main() -> ExitCode {
    // Test builds only: fault injection from `FAILPOINTS` (see tests/supervision.rs).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Version => {
            println!("kinderwatch {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => Ok(check_config(&file)),
        Command::Doctor {
            config,
            camera_timeout,
        } => {
            kinderwatch::telemetry::init(LogFormat::Text, "error");
            println!(
                "kinderwatch {} doctor: {}",
                env!("CARGO_PKG_VERSION"),
                config.display()
            );
            let report = match Config::load(&config) {
                Ok(loaded) => runtime()?.block_on(kinderwatch::doctor::examine(
                    &loaded,
                    &config,
                    camera_timeout,
                )),
                Err(e) => kinderwatch::doctor::invalid_config(&config, &e),
            };
            println!("{report}");
            Ok(if report.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Man => {
            use clap::CommandFactory as _;
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            std::io::Write::write_all(&mut std::io::stdout(), &out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            println!("{}", kinderwatch::api::openapi::document());
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { name, role } => {
            let (token, hash) = kinderwatch::api::auth::new_token();
            let role = match role {
                CliRole::Read => "read",
                CliRole::Admin => "admin",
            };
            eprintln!("# Give this token to {name} (it is shown only now):");
            println!("{token}");
            eprintln!("# Add this to the config ([api] section):");
            eprintln!("[[api.tokens]]\nname = {name:?}\nrole = \"{role}\"\nsha256 = \"{hash}\"");
            Ok(ExitCode::SUCCESS)
        }
        Command::Events {
            since,
            from,
            to,
            camera,
            kind,
            rule,
            limit,
            format,
            from_daemon,
        } => {
            let mut query = Vec::new();
            for (k, v) in [
                ("since", since),
                ("from", from),
                ("to", to),
                ("camera", camera),
                ("kind", kind),
                ("rule", rule),
            ] {
                if let Some(v) = v {
                    query.push((k.to_owned(), v));
                }
            }
            let source = from_daemon.source()?;
            let events = kinderwatch::history::fetch(&source, &query, limit.max(1))?;
            let format = match format {
                CliFormat::Table => kinderwatch::history::Format::Table,
                CliFormat::Json => kinderwatch::history::Format::Json,
                CliFormat::Csv => kinderwatch::history::Format::Csv,
            };
            kinderwatch::history::print(&events, format, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            since,
            from,
            to,
            caller,
            limit,
            json,
            from_daemon,
        } => {
            let query: Vec<(String, String)> = [
                ("since", since),
                ("from", from),
                ("to", to),
                ("caller", caller),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect();
            let records =
                kinderwatch::history::fetch_audit(&from_daemon.source()?, &query, limit.max(1))?;
            kinderwatch::history::print_audit(&records, json, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters {
            requeue,
            requeue_all,
            json,
            from_daemon,
        } => {
            let source = from_daemon.source()?;
            if requeue.is_some() || requeue_all {
                let n = kinderwatch::history::requeue(&source, requeue.as_deref())?;
                println!("{n} re-queued");
                return Ok(ExitCode::SUCCESS);
            }
            let letters = kinderwatch::history::dead_letters(&source)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                println!("no dead letters");
            } else {
                println!(
                    "{:<38} {:<11} {:<8} {:<24} DETAIL",
                    "EVENT", "REASON", "ATTEMPTS", "SINCE (UTC)"
                );
                let s = |v: &serde_json::Value, k: &str| {
                    v.get(k)
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                        .unwrap_or_default()
                };
                for l in &letters {
                    println!(
                        "{:<38} {:<11} {:<8} {:<24} {}",
                        s(l, "event_id"),
                        s(l, "reason"),
                        s(l, "attempts"),
                        s(l, "at").split('.').next().unwrap_or(""),
                        s(l, "detail")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Center { config, check } => run_center(&config, check),
        Command::Run { config: file } => {
            let config = Config::load(&file)?;
            start_daemon(config, Some(file), None)
        }
        Command::Demo {
            camera_url,
            duration,
        } => {
            let cwd = std::env::current_dir()?;
            let mut config =
                Config::from_toml(DEMO_CONFIG, Path::new("<built-in demo config>"), &cwd)?;
            RtspUrl::parse(&camera_url).map_err(|e| anyhow::anyhow!("--camera-url: {e}"))?;
            for cam in &mut config.cameras {
                cam.url = camera_url.clone();
            }
            start_daemon(config, None, duration)
        }
        Command::Probe {
            url,
            username,
            password_file,
            password_env,
            transport,
            codec,
            timeout,
            measure,
        } => {
            kinderwatch::telemetry::init(LogFormat::Text, "warn");
            kinderwatch::init_gstreamer().context("GStreamer failed to initialise")?;
            let (url, mut credentials) =
                RtspUrl::parse_with_credentials(&url).map_err(|e| anyhow::anyhow!("URL: {e}"))?;
            if username.is_some() {
                credentials = credentials_from(
                    username.as_deref(),
                    password_file.as_deref(),
                    password_env.as_deref(),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let opts = ProbeOptions {
                url: url.clone(),
                credentials,
                transport: match transport {
                    CliTransport::Tcp => Transport::Tcp,
                    CliTransport::Udp => Transport::Udp,
                    CliTransport::Auto => Transport::Auto,
                },
                codec: match codec {
                    CliCodec::H264 => Codec::H264,
                    CliCodec::Auto => Codec::Auto,
                },
                timeout,
                measure,
            };
            println!("probing {url}");
            match runtime()?.block_on(probe::probe(opts)) {
                Ok(report) => {
                    println!("{report}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    eprintln!("probe failed: {failure}");
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}

fn check_config(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            match &config.detector.model {
                Some(m) => match check_model(m, &config) {
                    Ok(name) => {
                        println!("ok: {} (model sha256 verified: {name})", config.summary())
                    }
                    Err(e) => {
                        eprintln!("config {}: detector.model: {e}", file.display());
                        return ExitCode::FAILURE;
                    }
                },
                None => println!("ok: {}", config.summary()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The model file matches its manifest, the manifest is one a worker can run, the configured
/// classes are among its labels, and one trial inference on a gray frame succeeds (wrong tensor
/// names or shapes would otherwise fail every frame, or make a worker panic, only once running).
fn check_model(manifest: &Path, config: &Config) -> anyhow::Result<String> {
    use kinderwatch::detect::detector::{DetectorParams, OnnxDetector, decode_params};
    use kinderwatch::detect::runtime;
    let model = kinderwatch::detect::ModelManifest::load_verified(manifest)?;
    let d = &config.detector;
    let params = DetectorParams {
        classes: d.classes.clone(),
        min_score: d.min_score,
        nms_iou: d.nms_iou,
        ..Default::default()
    };
    decode_params(&model.manifest, &params)?;
    let library = runtime::init(d.onnxruntime.as_deref())?;
    let provider = runtime::choose_provider(
        d.execution_provider,
        d.execution_provider_required,
        &library,
    )?;
    let mut detector = OnnxDetector::new(&model, provider, 1, &params)?;
    let input = &model.manifest.input;
    let (w, h) = (input.width.unwrap_or(640), input.height.unwrap_or(480));
    let gray = vec![128u8; (w * h * 3) as usize];
    let started = std::time::Instant::now();
    let trial = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        detector.detect_rgb(&gray, w, h)
    }));
    match trial {
        Ok(Ok(_)) => Ok(format!(
            "{}; trial inference {} ms on {}",
            model.manifest.name,
            started.elapsed().as_millis(),
            provider.ort_name()
        )),
        Ok(Err(e)) => anyhow::bail!(
            "trial inference with {} failed: {e}; check the manifest's input and outputs against the model",
            manifest.display()
        ),
        Err(_) => anyhow::bail!(
            "trial inference with {} panicked; check the manifest's input and outputs against the model",
            manifest.display()
        ),
    }
}

fn run_center(file: &Path, check: bool) -> anyhow::Result<ExitCode> {
    let config = match kinderwatch::center::CenterConfig::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    if check {
        println!("{}: OK", file.display());
        return Ok(ExitCode::SUCCESS);
    }
    kinderwatch::telemetry::init(kinderwatch::config::LogFormat::Text, "info");
    let rt = runtime()?;
    let result = rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stop signal: stopping the center");
            stop.cancel();
        });
        kinderwatch::center::run(config, cancel).await
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    result?;
    Ok(ExitCode::SUCCESS)
}

fn start_daemon(
    config: Config,
    file: Option<std::path::PathBuf>,
    duration: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    kinderwatch::telemetry::init(config.logging.format, &config.logging.level);
    kinderwatch::init_gstreamer()
        .context("GStreamer failed to initialise; run scripts/setup.sh")?;
    let rt = runtime()?;
    let result = rt.block_on(kinderwatch::app::run(config, file, duration));
    // Dropping a runtime waits for every blocking task without limit; a GStreamer call stuck in
    // one must not keep the process from exiting.
    rt.shutdown_timeout(Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}
