//! One camera's GStreamer pipeline, built from elements (the URL never enters a launch string):
//!
//! ```text
//! rtspsrc ─(video pad)→ rtph264depay ! h264parse ! avdec_h264      (codec = "h264")
//!         └───────────→ decodebin                                   (codec = "auto": H.265, MJPEG, ...)
//!   → videorate drop-only max-rate=FPS → videoscale → videoconvert
//!   → video/x-raw,format=I420,width=W,height=H → appsink max-buffers=1 drop=true sync=false
//! ```
//! Scaling before converting is measurably cheaper (docs/BENCHMARKS.md). A pad probe on the H.264
//! decoder's input counts every compressed frame (the stall watchdog's clock) and, while the slot
//! asks for [`DecodeDemand::Keyframes`] (a still scene), drops delta frames before the decoder; full
//! decoding resumes at the next keyframe. The appsink callback copies
//! the frame into a packed RGB buffer and puts it into the camera's [`FrameSlot`]; it never waits for
//! a consumer. A pipeline is used once: reconnecting builds a new one (cycling the same rtspsrc
//! through Null → Playing fails with not-linked).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use super::config::{Codec, Transport};
use super::{Credentials, DecodeDemand, Frame, FrameSlot, Pixels, RtspUrl, YuvMatrix};

/// What to build.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub camera: Arc<str>,
    pub url: RtspUrl,
    pub credentials: Option<Credentials>,
    pub transport: Transport,
    pub latency: Duration,
    pub codec: Codec,
    pub tcp_timeout: Duration,
    /// avdec_h264 `max-threads` (0 = auto).
    pub decoder_threads: u32,
    /// Output size; `None` keeps the camera's own size (probe).
    pub size: Option<(u32, u32)>,
    /// Output rate limit; `None` passes every frame (probe).
    pub max_fps: Option<u32>,
}

/// Why a pipeline stopped, sorted by what the supervisor should do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 401: the camera refused the credentials. Configuration fault.
    NotAuthorized(String),
    /// 404: no such stream path. Configuration fault.
    NotFound(String),
    /// Refused, timeout, EOF, stall, decoder trouble: try again soon.
    Transient(String),
}

impl Fault {
    pub fn message(&self) -> &str {
        match self {
            Fault::NotAuthorized(m) | Fault::NotFound(m) | Fault::Transient(m) => m,
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// Counters the streaming thread updates and the supervisor reads.
#[derive(Debug)]
pub struct IngestStats {
    base: Instant,
    frames: AtomicU64,
    /// Milliseconds after `base` of the last frame, plus one (0 = none yet).
    last_frame_ms: AtomicU64,
    first_frame: OnceLock<Instant>,
    frames_skipped: AtomicU64,
    encoding: Mutex<Option<String>>,
    /// Like `last_frame_ms`, for compressed frames reaching the decoder.
    last_packet_ms: AtomicU64,
    /// Compressed frames dropped before the decoder (keyframes-only decoding).
    deltas_dropped: AtomicU64,
}

impl IngestStats {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            frames: AtomicU64::new(0),
            last_frame_ms: AtomicU64::new(0),
            first_frame: OnceLock::new(),
            frames_skipped: AtomicU64::new(0),
            encoding: Mutex::new(None),
            last_packet_ms: AtomicU64::new(0),
            deltas_dropped: AtomicU64::new(0),
        }
    }

    fn ms_since_base(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64 + 1
    }

    /// The last sign of life: a decoded frame, or a compressed one that reached the decoder (a
    /// still camera decoding keyframes only delivers a picture once per keyframe interval).
    pub fn last_activity(&self) -> Option<Instant> {
        let ms = self
            .last_frame_ms
            .load(Ordering::Relaxed)
            .max(self.last_packet_ms.load(Ordering::Relaxed));
        (ms > 0).then(|| self.base + Duration::from_millis(ms - 1))
    }

    /// Delta frames dropped before the decoder while the scene was still.
    pub fn deltas_dropped(&self) -> u64 {
        self.deltas_dropped.load(Ordering::Relaxed)
    }

    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    pub fn first_frame(&self) -> Option<Instant> {
        self.first_frame.get().copied()
    }

    pub fn last_frame(&self) -> Option<Instant> {
        match self.last_frame_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.base + Duration::from_millis(ms - 1)),
        }
    }

    /// Frames the appsink delivered that could not be read (mapping failed, odd caps).
    pub fn frames_skipped(&self) -> u64 {
        self.frames_skipped.load(Ordering::Relaxed)
    }

    /// RTP encoding name of the video stream (e.g. "H264"), once the camera described it.
    pub fn encoding(&self) -> Option<String> {
        self.encoding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record_frame(&self, at: Instant) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.last_frame_ms
            .store(self.ms_since_base(at), Ordering::Relaxed);
        let _ = self.first_frame.set(at);
    }
}

/// Where frames go: the camera's slot and its sequence counter (shared across reconnects).
#[derive(Clone)]
pub struct FrameOutput {
    pub slot: Arc<FrameSlot>,
    pub seq: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "GStreamer element {0:?} is missing; run scripts/setup.sh (it installs the GStreamer plugins)"
    )]
    MissingElement(&'static str),
    #[error("building the pipeline failed: {0}")]
    Gst(#[from] glib::BoolError),
    #[error("starting the pipeline failed: {0}")]
    State(#[from] gst::StateChangeError),
}

use gstreamer::glib;

/// A built, running pipeline. Dropping it sets it to Null.
pub struct CameraPipeline {
    pipeline: gst::Pipeline,
    /// The first element after the decoder; its sink caps describe the decoded stream.
    decoded_tap: gst::Element,
    stats: Arc<IngestStats>,
    /// The password and credential-like query values of the URL, scrubbed from GStreamer's text.
    secrets: Vec<String>,
}

/// Pipelines built and not yet dropped (each is set to Null when dropped).
static LIVE_PIPELINES: AtomicUsize = AtomicUsize::new(0);

/// How many camera pipelines exist in this process (for shutdown checks and diagnostics).
pub fn live_pipelines() -> usize {
    LIVE_PIPELINES.load(Ordering::SeqCst)
}

fn make(factory: &'static str) -> Result<gst::Element, BuildError> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| BuildError::MissingElement(factory))
}

impl CameraPipeline {
    /// Builds the pipeline and sets it to Playing.
    pub fn start(spec: &PipelineSpec, output: FrameOutput) -> Result<Self, BuildError> {
        let pipeline = gst::Pipeline::with_name(&format!("camera-{}", spec.camera));
        let stats = Arc::new(IngestStats::new());

        let src = make("rtspsrc")?;
        src.set_property("location", spec.url.as_location());
        src.set_property(
            "latency",
            spec.latency.as_millis().min(u32::MAX as u128) as u32,
        );
        src.set_property(
            "tcp-timeout",
            spec.tcp_timeout.as_micros().min(u64::MAX as u128) as u64,
        );
        src.set_property("drop-on-latency", true);
        // rtspsrc's own UDP timeout (5 s) makes it reconnect by itself, from a udpsrc streaming
        // thread, over the next protocol; the supervisor already notices a silent camera
        // (`stall_timeout`, `first_frame_timeout`) and chooses the transport (`auto`). Two owners
        // of one reconnect race: rtspsrc's, started while we set the pipeline to Null, is the
        // likeliest path to the teardown deadlock seen with a UDP camera that stopped sending.
        src.set_property("timeout", 0u64);
        src.set_property_from_str(
            "protocols",
            match spec.transport {
                // The supervisor and the probe turn `auto` into one of the two per attempt.
                Transport::Tcp | Transport::Auto => "tcp",
                Transport::Udp => "udp",
            },
        );
        if let Some(c) = &spec.credentials {
            src.set_property("user-id", &c.username);
            src.set_property("user-pw", c.password());
        }

        // The decoding chain; `entry` takes RTP from rtspsrc.
        let (decode_elems, entry, decoded_out): (
            Vec<gst::Element>,
            gst::Element,
            Option<gst::Element>,
        ) = match spec.codec {
            Codec::H264 => {
                let depay = make("rtph264depay")?;
                let dec = make("avdec_h264")?;
                // h264parse (plugins-bad) is optional: depay ! avdec_h264 works without it.
                match make("h264parse") {
                    Ok(parse) => (vec![depay.clone(), parse, dec.clone()], depay, Some(dec)),
                    Err(_) => (vec![depay.clone(), dec.clone()], depay, Some(dec)),
                }
            }
            Codec::Auto => {
                let decodebin = make("decodebin")?;
                (vec![decodebin.clone()], decodebin, None)
            }
        };

        let mut post: Vec<gst::Element> = Vec::new();
        if let Some(fps) = spec.max_fps {
            let rate = make("videorate")?;
            rate.set_property("drop-only", true);
            rate.set_property("max-rate", fps as i32);
            post.push(rate);
        }
        post.push(make("videoscale")?);
        post.push(make("videoconvert")?);
        // I420 is what decoders produce: videoconvert passes it through, and the detector samples
        // the model input from the planes (no RGB conversion of frames that are never inferred).
        let mut caps = gst::Caps::builder("video/x-raw").field("format", "I420");
        if let Some((w, h)) = spec.size {
            caps = caps.field("width", w as i32).field("height", h as i32);
        }
        let caps = caps.build();
        let capsfilter = make("capsfilter")?;
        capsfilter.set_property("caps", &caps);
        post.push(capsfilter);

        let appsink = gst_app::AppSink::builder()
            .caps(&caps)
            .max_buffers(1)
            .drop(true)
            .sync(false)
            .enable_last_sample(false)
            .build();
        appsink.set_callbacks(frame_callbacks(
            spec.camera.clone(),
            output.clone(),
            stats.clone(),
        ));

        pipeline.add(&src)?;
        pipeline.add_many(&decode_elems)?;
        pipeline.add_many(&post)?;
        pipeline.add(&appsink)?;
        gst::Element::link_many(&decode_elems)?;
        let mut tail: Vec<&gst::Element> = post.iter().collect();
        tail.push(appsink.upcast_ref());
        gst::Element::link_many(tail)?;
        let decoded_tap = post[0].clone();
        if let Some(dec) = decoded_out {
            dec.link(&decoded_tap)?;
            if let Some(pad) = dec.static_pad("sink") {
                let gate = DeltaGate::new(spec.camera.clone(), output.slot.clone(), stats.clone());
                // A dropped frame is returned as Handled with the buffer left in `info` (the
                // binding releases it): `Drop` on a sink pad makes GStreamer 1.22 unref it twice
                // (a CRITICAL per frame).
                pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                    match info.buffer() {
                        Some(buffer) if !gate.pass(buffer) => gst::PadProbeReturn::Handled,
                        _ => gst::PadProbeReturn::Ok,
                    }
                });
            }
        } else {
            // decodebin exposes its decoded pad when it knows the stream.
            let tap = decoded_tap.downgrade();
            entry.connect_pad_added(move |_, pad| {
                let Some(tap) = tap.upgrade() else { return };
                let is_video = pad
                    .current_caps()
                    .and_then(|c| c.structure(0).map(|s| s.name().starts_with("video/")))
                    .unwrap_or(false);
                // Every element here has a static sink pad; a callback must not panic regardless.
                let Some(sink) = tap.static_pad("sink") else {
                    return;
                };
                if is_video && !sink.is_linked() {
                    let _ = pad.link(&sink);
                }
            });
        }

        // rtspsrc exposes one pad per stream; video goes to the decoder, anything else to a fakesink
        // (an unlinked pad would stop the whole source with not-linked).
        let entry_weak = entry.downgrade();
        let pipeline_weak = pipeline.downgrade();
        let stats_pad = stats.clone();
        src.connect_pad_added(move |_, pad| {
            let (Some(entry), Some(pipeline)) = (entry_weak.upgrade(), pipeline_weak.upgrade()) else {
                return;
            };
            let caps = pad.current_caps();
            let s = caps.as_ref().and_then(|c| c.structure(0));
            let media = s.and_then(|s| s.get::<&str>("media").ok()).unwrap_or("");
            let Some(sink) = entry.static_pad("sink") else {
                tracing::error!("the decoder has no sink pad; the camera's stream cannot be linked");
                return;
            };
            if media == "video" && !sink.is_linked() {
                if let Some(enc) = s.and_then(|s| s.get::<&str>("encoding-name").ok()) {
                    *stats_pad.encoding.lock().unwrap_or_else(|e| e.into_inner()) = Some(enc.to_owned());
                }
                if let Err(e) = pad.link(&sink) {
                    tracing::warn!(error = ?e, "could not link the camera's video stream (wrong codec setting?)");
                }
            } else if let Ok(fake) = gst::ElementFactory::make("fakesink")
                .property("sync", false)
                .property("async", false)
                .build()
                && pipeline.add(&fake).is_ok()
            {
                let _ = fake.sync_state_with_parent();
                if let Some(fsink) = fake.static_pad("sink") {
                    let _ = pad.link(&fsink);
                }
            }
        });

        let mut secrets: Vec<String> = spec
            .credentials
            .as_ref()
            .map(|c| c.password().to_owned())
            .filter(|p| p.len() >= 3)
            .into_iter()
            .collect();
        secrets.extend(spec.url.query_secrets());
        LIVE_PIPELINES.fetch_add(1, Ordering::SeqCst);
        let this = Self {
            pipeline,
            decoded_tap,
            stats,
            secrets,
        };
        this.pipeline.set_state(gst::State::Playing)?;
        Ok(this)
    }

    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }

    pub fn bus(&self) -> gst::Bus {
        self.pipeline.bus().expect("a pipeline has a bus")
    }

    /// Caps of the decoded stream (camera resolution and declared frame rate), once negotiated.
    pub fn decoded_caps(&self) -> Option<gst::Caps> {
        self.decoded_tap.static_pad("sink")?.current_caps()
    }

    /// Turns a bus message into a fault, if it is one. Text is scrubbed of the password.
    pub fn classify(&self, msg: &gst::MessageRef) -> Option<Fault> {
        let fault = classify_message(msg)?;
        Some(match fault {
            Fault::NotAuthorized(m) => Fault::NotAuthorized(self.scrub(m)),
            Fault::NotFound(m) => Fault::NotFound(self.scrub(m)),
            Fault::Transient(m) => Fault::Transient(self.scrub(m)),
        })
    }

    /// Removes the password and the URL's credential-like query values from text that came from
    /// GStreamer, and any other `password=…`-like pair it echoes.
    pub fn scrub(&self, text: String) -> String {
        let mut text = text;
        for s in &self.secrets {
            if text.contains(s.as_str()) {
                text = text.replace(s.as_str(), "***");
            }
        }
        super::url::redact_text(&text)
    }

    /// Sets the pipeline to Null on a thread of its own, waiting at most `deadline` (see
    /// [`super::teardown`]); the pipeline is dropped on that thread too.
    ///
    /// (Setting rtspsrc to Null on its own first, while the rest plays, was tried: rtspsrc then
    /// spins on its closed connection, ~150,000 GLib criticals a second; the whole pipeline goes
    /// to Null in one step.)
    pub async fn stop(
        self,
        deadline: std::time::Duration,
        camera: &str,
    ) -> super::teardown::Teardown {
        let element = self.pipeline.clone().upcast::<gst::Element>();
        // Drop sets Null again on that thread, a no-op by then.
        super::teardown::set_null_within(element, self, deadline, camera).await
    }

    /// The pipeline's current state (for tests and diagnostics).
    pub fn current_state(&self) -> gst::State {
        self.pipeline.current_state()
    }
}

impl Drop for CameraPipeline {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        LIVE_PIPELINES.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keyframes-only decoding, on the decoder's input. A delta frame passes only while every frame is
/// wanted *and* the keyframe it builds on was passed too; so switching back to full decoding waits
/// for the next keyframe, and the decoder never sees a frame whose reference it lacks.
///
/// With `motion.still_keyframe_interval` set (default: off), not even every keyframe is decoded:
/// the sizes of a still scene's compressed delta frames are steady, and on a clean picture they
/// grow when something moves (on a noisy one the noise dominates: see docs/BENCHMARKS.md). A keyframe is
/// decoded when the deltas before it grew past their running mean + 4 mean deviations + 25 % (at
/// least 256 bytes), and
/// at least every `FrameSlot::still_keyframe_interval` whatever the sizes say (the motion gate,
/// the keep-alive inference and the tamper check then see a fresh picture).
struct DeltaGate {
    camera: Arc<str>,
    slot: Arc<FrameSlot>,
    stats: Arc<IngestStats>,
    /// Touched only by the decoder's streaming thread: never contended.
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    /// The current group of pictures is being decoded in full.
    decoding_gop: bool,
    /// Milliseconds after `stats.base` of the last keyframe, plus one (0 = none yet).
    last_keyframe_ms: u64,
    /// ... and of the last keyframe passed to the decoder.
    last_decoded_keyframe_ms: u64,
    /// Keyframes come more than `MAX_KEYFRAME_INTERVAL` apart.
    long_gop: bool,
    sizes: DeltaSizes,
    /// A delta frame since the last decoded keyframe was larger than the still scene's.
    grew: bool,
}

/// Running mean and mean absolute deviation of delta-frame sizes while the scene is still: the
/// rule that decides, without decoding, that something changed (public for the capacity benchmark,
/// which measures it on encoded clips).
#[derive(Default)]
pub struct DeltaSizes {
    n: u32,
    mean: f64,
    dev: f64,
}

impl DeltaSizes {
    /// Deltas learnt before the sizes are trusted (until then every keyframe is decoded).
    const WARMUP: u32 = 10;
    const ALPHA: f64 = 0.05;
    /// The least growth that counts, in bytes: a static picture's deltas are a few dozen bytes
    /// and jitter by more than their own size; a person in the picture adds kilobytes.
    const FLOOR: f64 = 256.0;

    pub fn ready(&self) -> bool {
        self.n >= Self::WARMUP
    }

    /// Learns one size; true if it is clearly larger than the still scene's.
    pub fn grew(&mut self, size: usize) -> bool {
        let s = size as f64;
        let grew =
            self.ready() && s > self.mean + 4.0 * self.dev + (0.25 * self.mean).max(Self::FLOOR);
        if self.n == 0 {
            self.mean = s;
        }
        let alpha = if self.ready() {
            Self::ALPHA
        } else {
            1.0 / (self.n + 1) as f64
        };
        self.dev += alpha * ((s - self.mean).abs() - self.dev);
        self.mean += alpha * (s - self.mean);
        self.n = self.n.saturating_add(1);
        grew
    }
}

/// Keyframes-only decoding is used only on cameras that send keyframes at least this often: with
/// longer groups of pictures a still camera would see motion too late.
const MAX_KEYFRAME_INTERVAL: Duration = Duration::from_millis(4500);

impl DeltaGate {
    fn new(camera: Arc<str>, slot: Arc<FrameSlot>, stats: Arc<IngestStats>) -> Self {
        Self {
            camera,
            slot,
            stats,
            state: Mutex::new(GateState {
                decoding_gop: true,
                ..GateState::default()
            }),
        }
    }

    fn pass(&self, buffer: &gst::BufferRef) -> bool {
        let now = self.stats.ms_since_base(Instant::now());
        self.stats.last_packet_ms.store(now, Ordering::Relaxed);
        let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if keyframe {
            let last = std::mem::replace(&mut st.last_keyframe_ms, now);
            let interval = Duration::from_millis(now.saturating_sub(last));
            if last > 0 && interval > MAX_KEYFRAME_INTERVAL && !st.long_gop {
                st.long_gop = true;
                tracing::info!(camera = %self.camera, keyframe_interval_ms = interval.as_millis() as u64,
                    "keyframes are far apart: this camera is decoded in full even when still (an I-frame interval of 1-4 s saves CPU)");
            }
        }
        // No keyframe seen yet (or none flagged as such), or a long group of pictures: decode all.
        let every = self.slot.decode_demand() == DecodeDemand::Every || st.long_gop;
        if every {
            st.sizes = DeltaSizes::default();
        }
        if keyframe {
            st.decoding_gop = every;
            let refresh = self.slot.still_keyframe_interval();
            let due =
                Duration::from_millis(now.saturating_sub(st.last_decoded_keyframe_ms)) >= refresh;
            let decode = every || refresh.is_zero() || due || st.grew || !st.sizes.ready();
            if decode {
                st.last_decoded_keyframe_ms = now;
                st.grew = false;
            } else {
                self.stats.deltas_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return decode;
        }
        if st.last_keyframe_ms == 0 || (every && st.decoding_gop) {
            return true;
        }
        st.decoding_gop = false;
        let size = buffer.size();
        if st.sizes.grew(size) {
            st.grew = true;
        }
        self.stats.deltas_dropped.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// Classifies one bus message (see the fault table in DESIGN.md).
pub fn classify_message(msg: &gst::MessageRef) -> Option<Fault> {
    use gst::MessageView;
    match msg.view() {
        MessageView::Error(err) => {
            let e = err.error();
            let debug = err.debug().map(|d| d.to_string()).unwrap_or_default();
            let detail = debug
                .lines()
                .last()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .unwrap_or("");
            let text = if detail.is_empty() {
                e.message().to_owned()
            } else {
                format!("{} ({detail})", e.message())
            };
            if e.matches(gst::ResourceError::NotAuthorized) || debug.contains("(401)") {
                Some(Fault::NotAuthorized(format!("401 Unauthorized: {text}")))
            } else if e.matches(gst::ResourceError::NotFound) || debug.contains("(404)") {
                Some(Fault::NotFound(format!("404 Not Found: {text}")))
            } else {
                Some(Fault::Transient(text))
            }
        }
        MessageView::Eos(_) => Some(Fault::Transient(
            "end of stream: the camera closed the connection".into(),
        )),
        MessageView::Element(el) => {
            let s = el.structure()?;
            (s.name() == "GstRTSPSrcTimeout")
                .then(|| Fault::Transient("rtspsrc timeout: no data from the camera".into()))
        }
        _ => None,
    }
}

fn frame_callbacks(
    camera: Arc<str>,
    output: FrameOutput,
    stats: Arc<IngestStats>,
) -> gst_app::AppSinkCallbacks {
    gst_app::AppSinkCallbacks::builder()
        .new_sample(move |sink| {
            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
            let now = Instant::now();
            match copy_i420(&sample) {
                Some((width, height, pixels)) => {
                    stats.record_frame(now);
                    let seq = output.seq.fetch_add(1, Ordering::Relaxed) + 1;
                    output.slot.put(Arc::new(Frame {
                        camera: camera.clone(),
                        seq,
                        captured_at: SystemTime::now(),
                        captured: now,
                        width,
                        height,
                        pixels,
                    }));
                }
                None => {
                    stats.frames_skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(gst::FlowSuccess::Ok)
        })
        .build()
}

/// Copies an I420 sample into tightly packed planes, with the stream's colour matrix.
pub(crate) fn copy_i420(sample: &gst::Sample) -> Option<(u32, u32, Pixels)> {
    let buffer = sample.buffer()?;
    let info = gst_video::VideoInfo::from_caps(sample.caps()?).ok()?;
    if info.format() != gst_video::VideoFormat::I420 {
        return None;
    }
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).ok()?;
    let (w, h) = (info.width(), info.height());
    let (cw, ch) = super::pixels::chroma_size(w, h);
    let mut data = Vec::with_capacity(w as usize * h as usize + 2 * cw * ch);
    for (plane, (row, rows)) in [(w as usize, h as usize), (cw, ch), (cw, ch)]
        .into_iter()
        .enumerate()
    {
        let stride = frame.plane_stride()[plane] as usize;
        let src = frame.plane_data(plane as u32).ok()?;
        if stride == row {
            data.extend_from_slice(src.get(..row * rows)?);
        } else {
            for y in 0..rows {
                data.extend_from_slice(src.get(y * stride..y * stride + row)?);
            }
        }
    }
    let colorimetry = info.colorimetry();
    let matrix = YuvMatrix {
        bt709: colorimetry.matrix() == gst_video::VideoColorMatrix::Bt709,
        full_range: colorimetry.range() == gst_video::VideoColorRange::Range0_255,
    };
    Some((w, h, Pixels::I420 { data, matrix }))
}

#[cfg(test)]
mod tests {
    use super::DeltaSizes;

    #[test]
    fn delta_sizes_flag_growth_not_noise() {
        let mut s = DeltaSizes::default();
        // A still scene: sizes around 2,000 bytes, ±10 %.
        let still = [1900, 2100, 2000, 1950, 2050, 2200, 1800, 2000, 2100, 1900];
        for (i, size) in still.iter().cycle().take(100).enumerate() {
            assert!(!s.grew(*size), "noise flagged at {i}");
        }
        // Someone walks in: the deltas double.
        assert!(s.grew(4500));
        // A few noisy frames after do not flag.
        assert!(!s.grew(2150));
        // Nothing is flagged while the sizes are being learnt.
        let mut fresh = DeltaSizes::default();
        assert!(!fresh.grew(100));
        assert!(!fresh.grew(100_000));
    }
}
