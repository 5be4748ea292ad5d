//! The operators' HTTP API (axum): event history, snapshots, cameras, rules, health, metrics.
//!
//! Bound to `api.listen` (default loopback). Every route but `/healthz` needs a bearer token
//! (see [`auth`]); arming and disarming need the admin role. Requests time out after
//! `api.request_timeout` and bodies are capped at [`MAX_BODY`]. History and snapshot reads run on
//! the store's reader threads and are written to the audit trail with the token's name. The API never touches cameras: it reads their status through watch channels and sends
//! rule commands to the perimeter stage.

pub mod auth;
pub mod console;
pub mod openapi;
mod perimeter;
pub mod preview;
mod routes;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::control::RuleCommand;
use crate::store::Store;
use crate::store::recorder::StoreStatus;

pub use crate::ops::audit_outcome;
pub use crate::ops::cameras::{CameraView, CameraViews, camera_json, cameras_json};
pub use crate::ops::events::event_json;
pub use auth::{Role, TokenConfig, Tokens};
pub use routes::{parse_audit_query, parse_event_query};

/// The largest request body accepted (the API takes no bodies today).
pub const MAX_BODY: usize = 16 * 1024;

/// `[api]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Default: true.
    pub enabled: bool,
    /// Default: "127.0.0.1:8080". Use a VPN address, not a public one, to reach it remotely.
    pub listen: SocketAddr,
    /// Default: 10s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub tokens: Vec<TokenConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout: Duration::from_secs(10),
            tokens: Vec::new(),
        }
    }
}

impl ApiConfig {
    /// Puts the section's problems (paths `api.*`) in `v`.
    pub fn validate(&self, v: &mut crate::validate::Validator) {
        if self.request_timeout < Duration::from_millis(100) {
            v.err("api.request_timeout", "use at least 100ms, e.g. \"10s\"");
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if t.name.trim().is_empty() {
                v.err(
                    &format!("api.tokens[{i}].name"),
                    "give the token holder's name",
                );
            } else if !names.insert(t.name.as_str()) {
                v.err(
                    &format!("api.tokens[{i}].name"),
                    format!("{:?} is used twice; names must be unique", t.name),
                );
            }
            if !crate::auth::is_sha256_hex(t.sha256.trim()) {
                v.err(
                    &format!("api.tokens[{i}].sha256"),
                    "not a SHA-256 in hex (64 digits); `kinderwatch token` makes a token and its hash",
                );
            }
        }
    }
}

/// Everything the handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub site: Arc<str>,
    pub store: Store,
    pub store_status: watch::Receiver<StoreStatus>,
    /// Whether the detector pool keeps up with every camera.
    pub detector_load: watch::Receiver<crate::detect::load::DetectorLoad>,
    pub cameras: CameraViews,
    pub rules: Option<mpsc::Sender<RuleCommand>>,
    pub metrics: Option<PrometheusHandle>,
    pub tokens: Tokens,
    /// History queries and snapshot reads run here, not beside the recorder's writes.
    pub readers: crate::store::reader::Readers,
    pub request_timeout: Duration,
    /// The daemon's stages, for `/healthz` (the accept loop is one of them, `api`).
    pub stages: crate::progress::Stages,
    /// The site's time zone (the console shows times in it).
    pub time_zone: Arc<str>,
    /// Console sign-ins.
    pub sessions: crate::api::console::Sessions,
    /// Each stored event, for the live event streams (link `recorded`); `None` without a
    /// recorder.
    pub recorded: Option<tokio::sync::broadcast::Sender<Arc<crate::store::StoredEvent>>>,
    /// The cameras' last live pictures.
    pub previews: preview::Previews,
    /// Cancelled when the API stops: long answers (event streams) end with it.
    pub shutdown: CancellationToken,
    /// The owner of the config file, for the console's rule editor (link `config_commands`);
    /// `None` when the daemon runs without a file (the demo) or a test says so.
    pub config: Option<mpsc::Sender<crate::control::ConfigCommand>>,
    /// The publisher's connection to the broker; `None` without `[mqtt]`.
    pub mqtt: Option<watch::Receiver<crate::alert::publisher::MqttLink>>,
}

/// An error answer: `{"error": code, "reason": words, "parameter": name?}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub reason: String,
    pub parameter: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            code,
            reason: reason.into(),
            parameter: None,
        }
    }

    pub fn bad_parameter(name: &str, reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "bad_parameter",
            reason: reason.into(),
            parameter: Some(name.to_owned()),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "API request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the daemon could not answer; see its log",
        )
    }

    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason)
    }

    /// Too many reads at once: come back in a moment.
    pub fn busy(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", reason)
    }

    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", reason)
    }

    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", reason)
    }
}

/// The HTTP answer to an operation's failure: the same code, reason and parameter, and the status
/// its kind calls for.
impl From<crate::ops::OpsError> for ApiError {
    fn from(e: crate::ops::OpsError) -> Self {
        use crate::ops::ErrorKind;
        let status = match e.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            code: e.code,
            reason: e.reason,
            parameter: e.parameter,
        }
    }
}

impl From<crate::store::reader::ReadError> for ApiError {
    fn from(e: crate::store::reader::ReadError) -> Self {
        match e {
            crate::store::reader::ReadError::Busy => Self::busy(e.to_string()),
            crate::store::reader::ReadError::Gone => Self::unavailable(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.code, "reason": self.reason });
        if let Some(p) = self.parameter {
            body["parameter"] = p.into();
        }
        (self.status, Json(body)).into_response()
    }
}

/// Binds `addr`; the error names the address and the config key.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("api.listen {addr}: cannot listen ({e}); choose a free address or set api.enabled = false")
    })
}

/// The whole API as a tower service (what [`serve`] runs).
pub fn router(state: ApiState) -> axum::Router {
    routes::router(state)
}

/// Connections served at once; beyond that new ones are closed at once (counted), so that a
/// flood of clients cannot take the file descriptors RTSP, MQTT and sled need.
pub const MAX_CONNECTIONS: usize = 64;
/// A client must send a request's headers within this long, on a new connection and between
/// requests on a kept-alive one (a half-open or idle connection is closed after it).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `cancel`: HTTP/1.1, at most [`MAX_CONNECTIONS`] connections, each closed when its
/// client does not send headers within [`HEADER_READ_TIMEOUT`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    info!(%addr, max_connections = MAX_CONNECTIONS, "HTTP API listening");
    let progress = state.stages.register("api");
    let streams = state.shutdown.clone();
    let mut beat = tokio::time::interval(crate::progress::BEAT_PERIOD);
    let app = routes::router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let connections = tokio_util::task::TaskTracker::new();
    let mut refused_logged: Option<std::time::Instant> = None;
    loop {
        progress.beat();
        let (stream, _peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = beat.tick() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: wait rather than spin.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            crate::telemetry::api::connection_refused();
            if refused_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                refused_logged = Some(std::time::Instant::now());
                tracing::warn!(
                    max = MAX_CONNECTIONS,
                    "API connection limit reached; new connections are closed (logged once a minute)"
                );
            }
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(64 * 1024);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
    progress.retire();
    streams.cancel();
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(3), connections.wait()).await;
    Ok(())
}
