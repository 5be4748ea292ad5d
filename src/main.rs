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
    /// Check a config file; print every problem with its key path and exit non-zero if there is one.
    CheckConfig {
        /// Config file.
        file: PathBuf,
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
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CliTransport {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CliCodec {
    H264,
    Auto,
}

const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

fn main() -> ExitCode {
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
        Command::Run { config } => {
            let config = Config::load(&config)?;
            start_daemon(config, None)
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
            start_daemon(config, duration)
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

/// The model file matches its manifest, and the configured classes are among its labels.
fn check_model(manifest: &Path, config: &Config) -> anyhow::Result<String> {
    let model = kinderwatch::detect::ModelManifest::load_verified(manifest)?;
    let params = kinderwatch::detect::detector::DetectorParams {
        classes: config.detector.classes.clone(),
        ..Default::default()
    };
    kinderwatch::detect::detector::decode_params(&model.manifest, &params)?;
    Ok(model.manifest.name)
}

fn start_daemon(config: Config, duration: Option<Duration>) -> anyhow::Result<ExitCode> {
    kinderwatch::telemetry::init(config.logging.format, &config.logging.level);
    kinderwatch::init_gstreamer()
        .context("GStreamer failed to initialise; run scripts/setup.sh")?;
    let rt = runtime()?;
    rt.block_on(kinderwatch::app::run(config, duration))?;
    Ok(ExitCode::SUCCESS)
}
