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
    publish_snapshots: bool,
) -> AlertPayload<'a> {
    let snapshot = (snapshot_len > 0).then(|| {
        let api_path = format!("/api/v1/events/{}/snapshot.jpg", e.id);
        SnapshotRef {
            bytes: snapshot_len,
            url: snapshot_base_url.map(|b| format!("{}{api_path}", b.trim_end_matches('/'))),
            topic: publish_snapshots.then(|| format!("{}/snapshot", topics.event(e))),
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
