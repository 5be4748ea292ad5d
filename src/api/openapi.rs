//! The HTTP API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! attributes and the types they answer with (`utoipa`), served at `GET /api/v1/openapi.json`
//! (no token: it holds no site data) and committed as `docs/openapi.json`
//! (`kinderwatch openapi > docs/openapi.json`; a test keeps the two the same).
//!
//! Most bodies are the code's own types (events, audit records, rules, the editor's perimeter,
//! the store's stats and status, ...). The list wrappers and the camera and health objects are
//! written as `json!` in the handlers; their shapes are the types below, and `tests/openapi.rs`
//! runs a schema-driven fuzzer (schemathesis) against the real server that checks every answer
//! against this document, so the two cannot drift apart unnoticed.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::control::{PerimeterView, RuleStatus, Saved, ShapeProblem};
use crate::detect::load::BehindCamera;
use crate::events::Event;
use crate::progress::StageReport;
use crate::rules::edit::Perimeter;
use crate::store::StoreStats;
use crate::store::audit::AuditRecord;
use crate::store::outbox::DeadLetter;
use crate::store::recorder::StoreStatus;

/// Every error: a code, the reason in words, and the parameter at fault if one is.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// `bad_parameter`, `unauthorized`, `forbidden`, `not_found`, `conflict`, `busy`, ...
    pub error: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

/// A refused perimeter: every problem, with the shape it is in.
#[derive(Serialize, ToSchema)]
pub struct InvalidConfig {
    /// `invalid_config`.
    pub error: String,
    pub reason: String,
    pub problems: Vec<ShapeProblem>,
}

/// An event as the API lists it: the stored event and, if it has one, its snapshot's URL.
#[derive(Serialize, ToSchema)]
pub struct ApiEvent {
    #[serde(flatten)]
    pub event: Event,
    /// `/api/v1/events/{id}/snapshot.jpg`; absent for events without a picture.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_url: Option<String>,
}

/// A page of events, newest first.
#[derive(Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<ApiEvent>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
    /// Stored events on this page that no longer decode (left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_undecodable: Option<u64>,
}

/// One camera's state.
#[derive(Serialize, ToSchema)]
pub struct Camera {
    pub id: String,
    pub name: String,
    /// `connecting`, `streaming`, `backoff`, `auth_failed`, `not_found`, `disabled`, `stopped`.
    pub state: String,
    #[schema(format = DateTime)]
    pub since: Option<String>,
    pub fps: f64,
    /// `every` frame, or `keyframes` only on a still scene.
    pub decoding: String,
    pub frames_received: u64,
    pub reconnects: u64,
    /// Never with credentials.
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub last_frame_at: Option<String>,
    #[schema(format = DateTime)]
    pub retry_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CameraList {
    pub cameras: Vec<Camera>,
}

#[derive(Serialize, ToSchema)]
pub struct RuleList {
    pub rules: Vec<RuleStatus>,
}

#[derive(Serialize, ToSchema)]
pub struct Armed {
    pub rule: String,
    pub armed: bool,
}

#[derive(Serialize, ToSchema)]
pub struct StoreInfo {
    pub status: StoreStatus,
    pub stats: StoreStats,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetter>,
}

#[derive(Serialize, ToSchema)]
pub struct Requeued {
    pub requeued: u64,
}

/// `/healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `degraded` (working, with problems) or `failing`.
    pub status: String,
    pub site: String,
    pub version: String,
    pub store: StoreStatus,
    pub detector: DetectorHealth,
    pub outbox: OutboxHealth,
    pub stages: StagesHealth,
    pub cameras: CamerasHealth,
    pub mqtt: MqttHealth,
    pub disk: DiskHealth,
}

#[derive(Serialize, ToSchema)]
pub struct DetectorHealth {
    pub overloaded: bool,
    #[schema(format = DateTime)]
    pub overloaded_since: Option<String>,
    pub behind: Vec<BehindCamera>,
}

#[derive(Serialize, ToSchema)]
pub struct OutboxHealth {
    pub dead_letters: u64,
}

#[derive(Serialize, ToSchema)]
pub struct StagesHealth {
    pub total: u64,
    pub stuck: Vec<StageReport>,
}

#[derive(Serialize, ToSchema)]
pub struct CamerasHealth {
    pub total: u64,
    pub streaming: u64,
}

/// The connection to the city center's broker; only `configured` without `[mqtt]`.
#[derive(Serialize, ToSchema)]
pub struct MqttHealth {
    pub configured: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    #[schema(format = DateTime)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Option<String>>,
    /// Alerts waiting for the broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct DiskHealth {
    /// Free bytes on the state directory's file system (null if it cannot be read).
    pub free_bytes: Option<u64>,
}

/// The bearer token scheme (`Authorization: Bearer <token>`; `kinderwatch token` makes one).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kinderwatch HTTP API",
        description = "A kindergarten site's event history, snapshots, cameras, rules and health. See docs/api.md.",
        license(name = "Apache-2.0")
    ),
    paths(
        super::routes::healthz,
        super::routes::list_events,
        super::routes::get_event,
        super::routes::get_snapshot,
        super::stream::events_stream,
        super::routes::cameras,
        super::preview::frame_jpg,
        super::perimeter::get_perimeter,
        super::perimeter::put_perimeter,
        super::routes::list_rules,
        super::routes::arm,
        super::routes::disarm,
        super::routes::store_stats,
        super::routes::audit,
        super::routes::dead_letters,
        super::routes::requeue,
        super::routes::requeue_all,
        super::routes::metrics,
        openapi_json,
    ),
    components(schemas(ErrorBody, InvalidConfig, Perimeter, PerimeterView, Saved, super::perimeter::PerimeterSave)),
    modifiers(&BearerAuth),
    tags((name = "kinderwatch"))
)]
pub struct ApiDoc;

/// The document as JSON text (what `/api/v1/openapi.json` serves and docs/openapi.json holds).
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

/// `GET /api/v1/openapi.json`: this document.
#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub(super) async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
        .into_response()
}
