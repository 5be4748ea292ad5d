//! The alert payload (schema version 1; `docs/mqtt-alert.schema.json`) and event topics.

use serde::Serialize;

use crate::events::{Event, EventObject};

pub const SCHEMA_VERSION: u32 = 1;

/// The JSON Schema of [`AlertPayload`], as shipped in `docs/`.
pub const SCHEMA: &str = include_str!("../../docs/mqtt-alert.schema.json");

#[derive(Debug, Clone, Serialize)]
pub struct AlertPayload<'a> {
    pub schema_version: u32,
    pub event_id: String,
    pub site: &'a str,
    pub camera: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub kind: &'static str,
    pub object: Option<&'a EventObject>,
    pub started_at: String,
    pub time: String,
    pub detail: Option<&'a str>,
    pub snapshot: Option<SnapshotRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRef {
    pub bytes: usize,
    pub api_path: String,
    pub url: Option<String>,
    pub topic: Option<String>,
    /// Bytes of the JPEG on `topic`: fewer than `bytes` when it was re-encoded to fit the
    /// broker's maximum packet size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_bytes: Option<usize>,
    /// Why the JPEG was not published although `mqtt.publish_snapshots` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub omitted: Option<&'static str>,
}

/// What happens to an alert's snapshot on MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotDelivery {
    /// `mqtt.publish_snapshots` is off (or the event has none).
    NotPublished,
    /// Published on the snapshot topic, with this many bytes.
    Published { bytes: usize },
    /// Left out, with the reason (`too_large`).
    Omitted(&'static str),
}

/// Where an event goes, and how it is described there.
pub struct Topics {
    pub prefix: String,
}

impl Topics {
    pub fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }

    pub fn camera_status(&self, camera: &str) -> String {
        format!("{}/cameras/{camera}/status", self.prefix)
    }

    /// `<prefix>/events/<camera or "site">/<kind>`.
    pub fn event(&self, e: &Event) -> String {
        format!(
            "{}/events/{}/{}",
            self.prefix,
            e.camera.as_deref().unwrap_or("site"),
            e.kind.as_str()
        )
    }

    pub fn commands(&self) -> String {
        format!("{}/commands/#", self.prefix)
    }

    pub fn command_prefix(&self) -> String {
        format!("{}/commands/", self.prefix)
    }

    pub fn responses(&self) -> String {
        format!("{}/responses", self.prefix)
    }
}

/// Times as UTC RFC 3339 (jiff's `Timestamp` display is exactly that).
pub fn build<'a>(
    e: &'a Event,
    snapshot_len: usize,
    topics: &Topics,
    snapshot_base_url: Option<&str>,
    delivery: SnapshotDelivery,
) -> AlertPayload<'a> {
    let snapshot = (snapshot_len > 0).then(|| {
        let api_path = format!("/api/v1/events/{}/snapshot.jpg", e.id);
        let (topic, published_bytes, omitted) = match delivery {
            SnapshotDelivery::NotPublished => (None, None, None),
            SnapshotDelivery::Published { bytes } => (
                Some(format!("{}/snapshot", topics.event(e))),
                Some(bytes),
                None,
            ),
            SnapshotDelivery::Omitted(why) => (None, None, Some(why)),
        };
        SnapshotRef {
            bytes: snapshot_len,
            url: snapshot_base_url.map(|b| format!("{}{api_path}", b.trim_end_matches('/'))),
            topic,
            published_bytes,
            omitted,
            api_path,
        }
    });
    AlertPayload {
        schema_version: SCHEMA_VERSION,
        event_id: e.id.to_string(),
        site: &e.site,
        camera: e.camera.as_deref(),
        rule: e.rule.as_deref(),
        kind: e.kind.as_str(),
        object: e.object.as_ref(),
        started_at: e.started_at.to_string(),
        time: e.time.to_string(),
        detail: e.detail.as_deref(),
        snapshot,
    }
}
