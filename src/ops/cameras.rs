//! Cameras as every transport shows them.

use std::sync::Arc;
use std::time::SystemTime;

use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::camera::{CameraHandle, CameraStatus};

/// A camera as the transports see it: its id, name and live status.
#[derive(Clone)]
pub struct CameraView {
    pub id: Arc<str>,
    pub name: String,
    pub status: watch::Receiver<CameraStatus>,
    /// Its frames, for the live picture.
    pub slot: Arc<crate::camera::FrameSlot>,
}

impl From<&CameraHandle> for CameraView {
    fn from(h: &CameraHandle) -> Self {
        Self {
            id: h.id.clone(),
            name: h.name.clone(),
            status: h.status.clone(),
            slot: h.slot.clone(),
        }
    }
}

/// Every camera as the transports see it, kept current when a live reload adds or removes one.
#[derive(Clone)]
pub struct CameraViews(watch::Receiver<Arc<Vec<CameraView>>>);

impl CameraViews {
    /// The views, and where the daemon sends the list after a live reload changed it.
    pub fn channel(views: Vec<CameraView>) -> (watch::Sender<Arc<Vec<CameraView>>>, Self) {
        let (tx, rx) = watch::channel(Arc::new(views));
        (tx, Self(rx))
    }

    /// A list that never changes (a tool, a test).
    pub fn fixed(views: Vec<CameraView>) -> Self {
        Self::channel(views).1
    }

    /// The cameras now.
    pub fn now(&self) -> Arc<Vec<CameraView>> {
        self.0.borrow().clone()
    }

    /// The camera with this id, now.
    pub fn get(&self, id: &str) -> Option<CameraView> {
        self.0.borrow().iter().find(|c| &*c.id == id).cloned()
    }
}

/// Every camera's status as the API and MQTT commands show it.
pub fn cameras_json(cameras: &[CameraView]) -> Vec<Value> {
    cameras.iter().map(camera_json).collect()
}

pub fn camera_json(c: &CameraView) -> Value {
    let s = c.status.borrow().clone();
    json!({
        "id": &*c.id,
        "name": c.name,
        "state": s.state.as_str(),
        "since": rfc3339(s.since),
        "fps": (s.fps * 10.0).round() / 10.0,
        "decoding": s.decoding,
        "frames_received": s.frames_received,
        "reconnects": s.reconnects,
        "last_error": s.last_error,
        "last_frame_at": s.last_frame_at.and_then(rfc3339),
        "retry_at": s.retry_at.and_then(rfc3339),
    })
}

fn rfc3339(t: SystemTime) -> Option<String> {
    Timestamp::try_from(t).ok().map(|t| t.to_string())
}
