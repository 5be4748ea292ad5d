//! `GET /api/v1/cameras/{id}/frame.jpg`: a camera's live picture, the last frame it decoded, as
//! a JPEG (what the console's camera tiles show, refreshed about once a second).
//!
//! Encoding runs on the blocking pool, at most [`MAX_ENCODING`] at once (more is 503 `busy`,
//! never a queue behind detection); each camera's last JPEG is kept with its frame number, so
//! many viewers of one camera cost one encoding per frame.
//!
//! Watching a camera live is written to the audit trail (`view_live`, the camera's id, the
//! caller's name) once per caller and camera every [`LIVE_AUDIT_EVERY`], not once per picture:
//! who looked at the children, and when, is on record without a record a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::auth::Caller;
use super::{ApiError, ApiState};
use crate::camera::Frame;
use crate::store::audit::{AuditAction, AuditRecord};
use crate::telemetry::api::{Preview, preview};

/// Pictures encoded at once.
pub const MAX_ENCODING: usize = 2;
/// JPEG quality of a live picture (a thumbnail on a tile, not evidence).
const QUALITY: u8 = 70;

/// A caller watching a camera is audited again after this long.
pub const LIVE_AUDIT_EVERY: Duration = Duration::from_secs(300);

/// When each (caller name, camera) was last written to the audit trail.
type Watchers = HashMap<(String, Arc<str>), Instant>;

/// Per camera: the frame number last encoded and its JPEG.
type LastPictures = HashMap<Arc<str>, (u64, Arc<Vec<u8>>)>;

/// Each camera's last encoded picture (cheap to clone).
#[derive(Clone)]
pub struct Previews {
    last: Arc<Mutex<LastPictures>>,
    encoding: Arc<Semaphore>,
    /// When each (caller, camera) was last audited.
    audited: Arc<Mutex<Watchers>>,
}

impl Previews {
    /// Whether `caller` watching `camera` is due an audit record now (and notes that it had one).
    fn audit_due(&self, caller: &str, camera: &Arc<str>) -> bool {
        let now = Instant::now();
        let mut seen = self.audited.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, at| now.duration_since(*at) < LIVE_AUDIT_EVERY);
        match seen.entry((caller.to_owned(), camera.clone())) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(now);
                true
            }
        }
    }

    /// Forgets an audit that could not be written (the next picture tries again).
    fn audit_failed(&self, caller: &str, camera: &Arc<str>) {
        self.audited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(caller.to_owned(), camera.clone()));
    }
}

impl Default for Previews {
    fn default() -> Self {
        Self {
            last: Arc::default(),
            encoding: Arc::new(Semaphore::new(MAX_ENCODING)),
            audited: Arc::default(),
        }
    }
}

/// The frame as a JPEG; `None` if it cannot be encoded.
pub fn encode(frame: &Frame) -> Option<Vec<u8>> {
    let rgb = frame.rgb();
    let (w, h) = (
        u16::try_from(frame.width).ok()?,
        u16::try_from(frame.height).ok()?,
    );
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, QUALITY)
        .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .ok()?;
    Some(out)
}

#[utoipa::path(get, path = "/api/v1/cameras/{id}/frame.jpg", security(("bearer" = [])), params(("id" = String, Path, description = "Camera id", example = "gate")),
    responses((status = 200, description = "The camera's latest picture", content_type = "image/jpeg", body = Vec<u8>),
        (status = 404, description = "No such camera, or no frame yet", body = super::openapi::ErrorBody),
        (status = 503, description = "Too many pictures being encoded", body = super::openapi::ErrorBody), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
pub(super) async fn frame_jpg(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let camera = state
        .cameras
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no camera {id:?}")))?;
    let Some(frame) = camera.slot.shown() else {
        preview(Preview::None);
        return Err(ApiError::not_found(format!(
            "camera {id:?} has no picture yet (state: {})",
            camera.status.borrow().state
        )));
    };
    // The picture leaves only once its viewing is on record.
    if state.previews.audit_due(&caller.name, &camera.id) {
        let store = state.store.clone();
        let record = AuditRecord::new("http", &caller.name, AuditAction::ViewLive, &*camera.id);
        let written = state.readers.run(move || store.audit(&record)).await;
        let refused = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(ApiError::internal(format!(
                "the live view could not be audited: {e}"
            ))),
            Err(busy) => Some(ApiError::from(busy)),
        };
        if let Some(e) = refused {
            state.previews.audit_failed(&caller.name, &camera.id);
            return Err(e);
        }
    }
    let previews = &state.previews;
    let cached = previews
        .last
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&camera.id)
        .filter(|(seq, _)| *seq == frame.seq)
        .map(|(_, jpeg)| jpeg.clone());
    let jpeg = match cached {
        Some(jpeg) => {
            preview(Preview::Cached);
            jpeg
        }
        None => {
            let Ok(_permit) = previews.encoding.clone().try_acquire_owned() else {
                preview(Preview::Busy);
                return Err(ApiError::busy("live pictures are being encoded; try again"));
            };
            let f = frame.clone();
            let jpeg = tokio::task::spawn_blocking(move || encode(&f))
                .await
                .map_err(ApiError::internal)?
                .ok_or_else(|| ApiError::internal("live picture not encoded"))?;
            let jpeg = Arc::new(jpeg);
            previews
                .last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(camera.id.clone(), (frame.seq, jpeg.clone()));
            preview(Preview::Encoded);
            jpeg
        }
    };
    let captured = jiff::Timestamp::try_from(frame.captured_at)
        .map(|t| t.to_string())
        .unwrap_or_default();
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg".to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (
                header::HeaderName::from_static("x-frame-captured"),
                captured,
            ),
        ],
        jpeg.to_vec(),
    )
        .into_response())
}
