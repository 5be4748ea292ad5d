//! `kinderwatch probe`: connect to one camera once, report what it sends, or say in plain words why not.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::config::{Codec, Transport};
use super::pipeline::{CameraPipeline, Fault, FrameOutput, PipelineSpec};
use super::{Credentials, FrameSlot, RtspUrl};

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub url: RtspUrl,
    pub credentials: Option<Credentials>,
    pub transport: Transport,
    pub codec: Codec,
    /// Give up if no frame arrives within this time.
    pub timeout: Duration,
    /// How long to count frames for the measured frame rate.
    pub measure: Duration,
}

#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// RTP encoding name, e.g. "H264".
    pub codec: String,
    pub width: u32,
    pub height: u32,
    /// Frame rate the stream declares, if it does.
    pub declared_fps: Option<f64>,
    /// Frames per second counted over `measure`.
    pub measured_fps: f64,
    pub time_to_first_frame: Duration,
    /// The transport the stream came over.
    pub transport: Transport,
    /// Set when only the other transport than the one asked for works.
    pub advice: Option<String>,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "codec:               {}", self.codec)?;
        writeln!(f, "resolution:          {}x{}", self.width, self.height)?;
        match self.declared_fps {
            Some(d) => writeln!(
                f,
                "frame rate:          {:.1} fps measured ({d:.1} declared)",
                self.measured_fps
            )?,
            None => writeln!(
                f,
                "frame rate:          {:.1} fps measured",
                self.measured_fps
            )?,
        }
        writeln!(f, "transport:           {}", self.transport.as_str())?;
        write!(
            f,
            "time to first frame: {} ms",
            self.time_to_first_frame.as_millis()
        )?;
        if let Some(a) = &self.advice {
            write!(f, "\nnote:                {a}")?;
        }
        Ok(())
    }
}

/// Why a probe failed, with advice an installer can act on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{diagnosis}\n  detail: {fault}")]
pub struct ProbeFailure {
    pub fault: Fault,
    pub diagnosis: String,
}

/// Probes over the given transport; if that fails for another reason than the credentials or the
/// path, over the other one too, and says which works (`ProbeReport::advice`).
pub async fn probe(opts: ProbeOptions) -> Result<ProbeReport, ProbeFailure> {
    let given = match opts.transport {
        Transport::Auto => Transport::Tcp,
        t => t,
    };
    let first = match probe_over(&opts, given).await {
        Ok(r) => return Ok(r),
        // Credentials and paths do not depend on the transport.
        Err(e) if matches!(e.fault, Fault::NotAuthorized(_) | Fault::NotFound(_)) => return Err(e),
        Err(e) => e,
    };
    let other = given.other();
    match probe_over(&opts, other).await {
        Ok(mut r) => {
            r.advice = Some(format!(
                "the camera streams over {} but not over {} ({}): set transport = \"{}\" for this camera (or \"auto\")",
                other.as_str().to_uppercase(),
                given.as_str().to_uppercase(),
                first.fault,
                other.as_str()
            ));
            Ok(r)
        }
        Err(_) => Err(first),
    }
}

async fn probe_over(
    opts: &ProbeOptions,
    transport: Transport,
) -> Result<ProbeReport, ProbeFailure> {
    let spec = PipelineSpec {
        camera: "probe".into(),
        url: opts.url.clone(),
        credentials: opts.credentials.clone(),
        transport,
        latency: Duration::from_millis(200),
        codec: opts.codec,
        tcp_timeout: opts.timeout.min(Duration::from_secs(20)),
        decoder_threads: 0,
        size: None,
        max_fps: None,
    };
    let output = FrameOutput {
        slot: Arc::new(FrameSlot::default()),
        seq: Arc::new(AtomicU64::new(0)),
    };
    let fail = |fault: Fault| ProbeFailure {
        diagnosis: diagnose(&fault, &opts.url, opts.credentials.is_some()),
        fault,
    };
    let started = Instant::now();
    let pipeline = CameraPipeline::start(&spec, output.clone())
        .map_err(|e| fail(Fault::Transient(e.to_string())))?;
    let mut bus = pipeline.bus().stream();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut measuring: Option<(Instant, u64)> = None;
    let result = loop {
        tokio::select! {
            msg = bus.next() => {
                let Some(msg) = msg else { break Err(fail(Fault::Transient("pipeline bus closed".into()))) };
                if let Some(fault) = pipeline.classify(&msg) {
                    break Err(fail(fault));
                }
            }
            _ = tick.tick() => {
                let stats = pipeline.stats();
                match (stats.first_frame(), measuring) {
                    (None, _) if started.elapsed() >= opts.timeout => {
                        break Err(fail(Fault::Transient(format!(
                            "no frame within {}", humantime::format_duration(opts.timeout)))));
                    }
                    (Some(_), None) => measuring = Some((Instant::now(), stats.frames())),
                    (Some(first), Some((t0, n0))) if t0.elapsed() >= opts.measure => {
                        let measured_fps = (stats.frames() - n0) as f64 / t0.elapsed().as_secs_f64();
                        let caps = pipeline.decoded_caps();
                        let s = caps.as_ref().and_then(|c| c.structure(0));
                        let frame = output.slot.take();
                        let declared_fps = s
                            .and_then(|s| s.get::<gstreamer::Fraction>("framerate").ok())
                            .filter(|f| f.numer() > 0 && f.denom() > 0)
                            .map(|f| f.numer() as f64 / f.denom() as f64);
                        break Ok(ProbeReport {
                            codec: stats.encoding().unwrap_or_else(|| "unknown".into()),
                            width: s.and_then(|s| s.get::<i32>("width").ok()).map(|w| w as u32)
                                .or(frame.as_ref().map(|f| f.width)).unwrap_or(0),
                            height: s.and_then(|s| s.get::<i32>("height").ok()).map(|h| h as u32)
                                .or(frame.as_ref().map(|f| f.height)).unwrap_or(0),
                            declared_fps,
                            measured_fps,
                            time_to_first_frame: first.saturating_duration_since(started),
                            transport,
                            advice: None,
                        });
                    }
                    _ => {}
                }
            }
        }
    };
    drop(bus);
    pipeline
        .stop(super::teardown::TEARDOWN_DEADLINE, "probe")
        .await;
    result
}

/// Plain-language advice for a failed connection.
pub fn diagnose(fault: &Fault, url: &RtspUrl, had_credentials: bool) -> String {
    let target = format!("{}:{}", url.host(), url.port());
    match fault {
        Fault::NotAuthorized(_) if had_credentials => format!(
            "the camera at {target} refused the username or password (401 Unauthorized): \
             check the credentials, and that the user may view this stream"
        ),
        Fault::NotAuthorized(_) => format!(
            "the camera at {target} requires a login (401 Unauthorized): pass --username and --password-file"
        ),
        Fault::NotFound(_) => format!(
            "the camera at {target} answered, but has no stream at this path (404 Not Found): \
             check the path in the URL (for a substream it is often .../102 or .../stream2)"
        ),
        Fault::Transient(m) if m.contains("no frame within") => format!(
            "connected to {target}, but no video frame arrived in time: the stream may be stalled, \
             another codec than the one set (try --codec auto), or UDP blocked (try --transport tcp)"
        ),
        Fault::Transient(m) if m.contains("Timeout") || m.contains("timeout") => format!(
            "no RTSP answer from {target} in time: the host may be unreachable or not a camera; \
             check the address and the network"
        ),
        Fault::Transient(m) if m.contains("end of stream") => {
            format!(
                "the camera at {target} closed the connection: it may allow only a few viewers at once"
            )
        }
        Fault::Transient(m) if m.contains("Could not open") || m.contains("connect") => format!(
            "nothing accepted the connection at {target} (refused): check the address and port, \
             and that RTSP is enabled on the camera"
        ),
        Fault::Transient(_) => format!("the stream from {target} failed"),
    }
}
