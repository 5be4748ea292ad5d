//! Events: what the daemon records and tells the monitoring center, and their snapshots.
//!
//! An event id is a UUID v7 (time-ordered; also the MQTT idempotency key). Rule events carry the
//! object that fired the rule; the snapshot is the track's best frame as a JPEG with the object's
//! box, the rule's line or zone and the time drawn on it.

use std::sync::{Arc, OnceLock};

use ab_glyph::FontRef;
use image::{ImageBuffer, Rgb, RgbImage};
use imageproc::drawing::{
    draw_filled_rect_mut, draw_hollow_rect_mut, draw_line_segment_mut, draw_text_mut,
};
use imageproc::rect::Rect;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::camera::Frame;
use crate::detect::BBox;
use crate::rules::engine::{HitKind, RuleShape};
use crate::rules::tripwire::Crossing;
use crate::telemetry::events::{self as telemetry, EventDrop};

/// Every kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    LineCrossed,
    ZoneEntered,
    ZoneLeft,
    Loitering,
    CameraOffline,
    CameraOnline,
    CameraTampered,
    /// The event store cannot write (disk full, write stalled); events wait in memory.
    StorageFailed,
    /// The event store writes again; the events that waited are recorded.
    StorageRecovered,
}

impl From<HitKind> for EventKind {
    fn from(k: HitKind) -> Self {
        match k {
            HitKind::LineCrossed => Self::LineCrossed,
            HitKind::ZoneEntered => Self::ZoneEntered,
            HitKind::ZoneLeft => Self::ZoneLeft,
            HitKind::Loitering => Self::Loitering,
        }
    }
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LineCrossed => "line_crossed",
            Self::ZoneEntered => "zone_entered",
            Self::ZoneLeft => "zone_left",
            Self::Loitering => "loitering",
            Self::CameraOffline => "camera_offline",
            Self::CameraOnline => "camera_online",
            Self::CameraTampered => "camera_tampered",
            Self::StorageFailed => "storage_failed",
            Self::StorageRecovered => "storage_recovered",
        }
    }
}

/// The object that fired a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventObject {
    pub class: String,
    pub score: f32,
    /// Normalised box in the frame at the time of the event.
    pub bbox: BBox,
    pub track_id: u64,
    /// For `line_crossed`: the side the object crossed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossing: Option<Crossing>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: Uuid,
    pub kind: EventKind,
    pub site: String,
    /// `None` for site-wide events (storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<EventObject>,
    /// When the object was first seen (rule events) or the condition began (health events).
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    /// When the event happened.
    #[schema(value_type = String, format = DateTime)]
    pub time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    /// A new event with a fresh UUID v7 whose timestamp is the event time.
    pub fn new(kind: EventKind, site: &str, camera: &str, time: Timestamp) -> Self {
        let mut e = Self::site_event(kind, site, time);
        e.camera = Some(camera.to_owned());
        e
    }

    /// A site-wide event (no camera).
    pub fn site_event(kind: EventKind, site: &str, time: Timestamp) -> Self {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            time.as_second().max(0) as u64,
            time.subsec_nanosecond().max(0) as u32,
        );
        Self {
            id: Uuid::new_v7(ts),
            kind,
            site: site.to_owned(),
            camera: None,
            rule: None,
            object: None,
            started_at: time,
            time,
            detail: None,
        }
    }
}

/// Colours of the drawing.
const BOX: Rgb<u8> = Rgb([255, 40, 40]);
const RULE: Rgb<u8> = Rgb([255, 210, 0]);
const TEXT: Rgb<u8> = Rgb([255, 255, 255]);
const TEXT_BG: Rgb<u8> = Rgb([0, 0, 0]);

/// The box colour, for tests that look for it in a decoded snapshot.
pub const BOX_COLOUR: [u8; 3] = BOX.0;

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        FontRef::try_from_slice(include_bytes!("../assets/DejaVuSansMono-Bold.ttf"))
            .expect("bundled font")
    })
}

/// Draws the box, the rule and a caption on a copy of the frame and encodes it as JPEG.
pub fn render_snapshot(
    frame: &Frame,
    bbox: &BBox,
    shape: Option<&RuleShape>,
    caption: &str,
) -> Vec<u8> {
    let mut img: RgbImage =
        ImageBuffer::from_raw(frame.width, frame.height, frame.rgb().into_owned())
            .unwrap_or_else(|| RgbImage::new(frame.width.max(1), frame.height.max(1)));
    let (w, h) = (img.width() as f32, img.height() as f32);
    let px = |p: (f32, f32)| (p.0 * w, p.1 * h);
    match shape {
        Some(RuleShape::Line(points)) => {
            for seg in points.windows(2) {
                thick_line(&mut img, px(seg[0]), px(seg[1]), RULE);
            }
        }
        Some(RuleShape::Polygon(points)) => {
            for i in 0..points.len() {
                thick_line(
                    &mut img,
                    px(points[i]),
                    px(points[(i + 1) % points.len()]),
                    RULE,
                );
            }
        }
        None => {}
    }
    let b = bbox.clamped();
    let (x1, y1) = px((b.x1, b.y1));
    let (x2, y2) = px((b.x2, b.y2));
    for k in 0..3 {
        let (rw, rh) = ((x2 - x1) as i32 - 2 * k, (y2 - y1) as i32 - 2 * k);
        if rw > 0 && rh > 0 {
            draw_hollow_rect_mut(
                &mut img,
                Rect::at(x1 as i32 + k, y1 as i32 + k).of_size(rw as u32, rh as u32),
                BOX,
            );
        }
    }
    let scale = (h / 28.0).clamp(10.0, 28.0);
    let text_w = (caption.chars().count() as f32 * scale * 0.62) as u32 + 8;
    let text_w = text_w.min(img.width());
    draw_filled_rect_mut(
        &mut img,
        Rect::at(0, 0).of_size(text_w, scale as u32 + 6),
        TEXT_BG,
    );
    draw_text_mut(&mut img, TEXT, 4, 3, scale, font(), caption);
    let mut out = Vec::new();
    let encoded = jpeg_encoder::Encoder::new(&mut out, 85).encode(
        img.as_raw(),
        img.width().min(u16::MAX as u32) as u16,
        img.height().min(u16::MAX as u32) as u16,
        jpeg_encoder::ColorType::Rgb,
    );
    if let Err(e) = encoded {
        tracing::warn!(error = %e, "snapshot not encoded");
        out.clear();
    }
    out
}

fn thick_line(img: &mut RgbImage, a: (f32, f32), b: (f32, f32), colour: Rgb<u8>) {
    for (dx, dy) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)] {
        draw_line_segment_mut(img, (a.0 + dx, a.1 + dy), (b.0 + dx, b.1 + dy), colour);
    }
}

/// A frame kept for snapshots (cheap to clone).
pub type SnapshotFrame = Arc<Frame>;

/// An event and its JPEG snapshot.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub event: Event,
    pub snapshot: Option<Vec<u8>>,
}

/// Hands `recorded` to the recorder's queue without waiting: the one way rule and health events
/// reach the recorder. One the queue cannot take is counted
/// (`kinderwatch_events_dropped_total{camera, reason}`) and its reason returned for the caller's log.
pub fn offer(
    queue: &mpsc::Sender<RecordedEvent>,
    recorded: RecordedEvent,
) -> Result<(), EventDrop> {
    queue.try_send(recorded).map_err(|e| {
        let why = EventDrop::from(&e);
        let camera = e.into_inner().event.camera.unwrap_or_default();
        telemetry::event_dropped(&camera, why);
        why
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_time_ordered_v7() {
        let t0: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let a = Event::new(EventKind::LineCrossed, "s", "c", t0);
        let b = Event::new(
            EventKind::LineCrossed,
            "s",
            "c",
            t0 + jiff::SignedDuration::from_millis(5),
        );
        assert_eq!(a.id.get_version_num(), 7);
        assert!(a.id < b.id);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["kind"], "line_crossed");
        assert_eq!(json["time"], "2026-11-23T10:00:00Z");
    }

    #[test]
    fn snapshot_is_a_jpeg_with_the_box_drawn() {
        let frame = Frame {
            camera: "c".into(),
            seq: 1,
            captured_at: std::time::SystemTime::now(),
            captured: std::time::Instant::now(),
            width: 320,
            height: 240,
            pixels: crate::camera::Pixels::Rgb(vec![90; 320 * 240 * 3]),
        };
        let jpeg = render_snapshot(
            &frame,
            &BBox::new(0.25, 0.25, 0.75, 0.75),
            Some(&RuleShape::Line(vec![(0.0, 0.9), (1.0, 0.9)])),
            "2026-11-23 10:00:00 gate fence",
        );
        let img = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (320, 240));
        // The left edge of the box (x = 80..82) at mid-height is red; the middle is untouched.
        let p = img.get_pixel(81, 120).0;
        assert!(p[0] > 200 && p[1] < 90 && p[2] < 90, "box pixel {p:?}");
        let m = img.get_pixel(160, 120).0;
        assert!((m[0] as i32 - 90).abs() < 10, "middle {m:?}");
        // The rule line (y = 216) is yellow.
        let l = img.get_pixel(160, 216).0;
        assert!(l[0] > 200 && l[1] > 160 && l[2] < 80, "line pixel {l:?}");
    }

    type Values = Vec<(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        metrics_util::debugging::DebugValue,
    )>;

    /// The value of the counter `name` with exactly `labels`.
    fn counter(values: &Values, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        values.iter().find_map(|(key, _, _, value)| {
            let k = key.key();
            let same = k.labels().count() == labels.len()
                && labels
                    .iter()
                    .all(|(n, v)| k.labels().any(|l| l.key() == *n && l.value() == *v));
            match value {
                metrics_util::debugging::DebugValue::Counter(v) if k.name() == name && same => {
                    Some(*v)
                }
                _ => None,
            }
        })
    }

    #[test]
    fn an_event_the_queue_cannot_take_is_counted_with_its_reason() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let event = |camera: &str| RecordedEvent {
            event: Event::new(EventKind::CameraOffline, "s", camera, Timestamp::now()),
            snapshot: None,
        };
        metrics::with_local_recorder(&recorder, || {
            let (tx, rx) = mpsc::channel(1);
            assert!(offer(&tx, event("gate")).is_ok());
            assert_eq!(offer(&tx, event("gate")), Err(EventDrop::QueueFull));
            drop(rx);
            assert_eq!(offer(&tx, event("yard")), Err(EventDrop::Closed));
        });
        // A snapshot takes the counters' values (the next one starts from zero): one for both.
        let values = snapshotter.snapshot().into_vec();
        let name = "kinderwatch_events_dropped_total";
        let full = [("camera", "gate"), ("reason", "queue_full")];
        assert_eq!(counter(&values, name, &full), Some(1), "{values:?}");
        let closed = [("camera", "yard"), ("reason", "closed")];
        assert_eq!(counter(&values, name, &closed), Some(1), "{values:?}");
    }
}
