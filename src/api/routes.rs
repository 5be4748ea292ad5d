//! Routes and handlers.

use std::time::{Instant, SystemTime};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use jiff::Timestamp;
use serde_json::{Value, json};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use uuid::Uuid;

use super::auth::{self, Caller, Role};
use super::{ApiError, ApiState, MAX_BODY, audit_outcome, cameras_json, event_json};
use crate::control::RuleCommand;
use crate::ops::{self, events};
use crate::store::audit::{AuditAction, AuditRecord};
use crate::store::{AuditQuery, EventQuery, Store, StoreError};

pub(super) fn router(state: ApiState) -> Router {
    let read = Router::new()
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/{id}", get(get_event))
        .route("/api/v1/events/{id}/snapshot.jpg", get(get_snapshot))
        .route("/api/v1/events/stream", get(super::stream::events_stream))
        .route("/api/v1/cameras", get(cameras))
        .route(
            "/api/v1/cameras/{id}/frame.jpg",
            get(super::preview::frame_jpg),
        )
        .route("/api/v1/rules", get(list_rules))
        .route(
            "/api/v1/cameras/{id}/perimeter",
            get(super::perimeter::get_perimeter),
        )
        .route("/api/v1/store", get(store_stats))
        .route("/api/v1/outbox/dead-letters", get(dead_letters))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            gate(&state, Role::Read),
            auth::require,
        ));
    let admin = Router::new()
        .route("/api/v1/rules/{id}/arm", post(arm))
        .route("/api/v1/rules/{id}/disarm", post(disarm))
        .route(
            "/api/v1/cameras/{id}/perimeter",
            axum::routing::put(super::perimeter::put_perimeter),
        )
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/outbox/dead-letters/requeue", post(requeue_all))
        .route("/api/v1/outbox/dead-letters/{id}/requeue", post(requeue))
        .route_layer(middleware::from_fn_with_state(
            gate(&state, Role::Admin),
            auth::require,
        ));
    let timeout = state.request_timeout;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/openapi.json", get(super::openapi::openapi_json))
        .merge(crate::api::console::router())
        .merge(read)
        .merge(admin)
        .fallback(|| async { ApiError::not_found("no such route; see docs/api.md") })
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(middleware::from_fn(common_headers))
        .layer(middleware::from_fn(log_request))
}

fn gate(state: &ApiState, need: Role) -> auth::Gate {
    auth::Gate {
        tokens: state.tokens.clone(),
        sessions: state.sessions.clone(),
        need,
    }
}

/// Adds the headers every answer carries: no MIME sniffing, and no caching of the API's
/// answers unless a handler says otherwise (snapshots are immutable).
async fn common_headers(req: Request, next: Next) -> Response {
    let mut r = json_error(next.run(req).await);
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    r
}

/// An error answered by a layer or by axum itself (413 body too large, 408 time-out, 405 method
/// not allowed, 400 unreadable body) becomes the API's JSON error like every other.
fn json_error(r: Response) -> Response {
    let status = r.status();
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let (code, reason) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too_large",
            format!("the request body is over {MAX_BODY} bytes"),
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "timeout",
            "the request took longer than api.request_timeout".to_owned(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not take that method; see docs/api.md".to_owned(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send the body as application/json".to_owned(),
        ),
        s if s.is_server_error() => (
            "internal",
            "the daemon could not answer; see its log".to_owned(),
        ),
        _ => ("bad_request", format!("the request was refused ({status})")),
    };
    let (mut parts, _) = r.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let mut fresh = ApiError::new(status, code, reason).into_response();
    for (k, v) in parts.headers.iter() {
        if !fresh.headers().contains_key(k) {
            fresh.headers_mut().insert(k.clone(), v.clone());
        }
    }
    fresh
}

/// Logs method, path (never the query or headers: no tokens in logs), status and duration.
async fn log_request(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if response.status().is_server_error() {
        tracing::warn!(%method, %path, status, ms, "API request");
    } else {
        tracing::debug!(%method, %path, status, ms, "API request");
    }
    crate::telemetry::api::request(status);
    response
}

/// Runs a blocking store or ops call on the blocking pool.
async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(Into::into)
}

/// Runs a history or snapshot read on the reader threads and writes its audit record in the same
/// job: the answer leaves only if the record was written. `describe` says what was returned.
async fn audited<T: Send + 'static>(
    state: &ApiState,
    mut record: AuditRecord,
    read: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    describe: fn(&T) -> String,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    state
        .readers
        .run(move || {
            let out = read(&store);
            match &out {
                Ok(v) => record.detail = Some(describe(v)),
                Err(_) => record.result = "internal".into(),
            }
            store.audit(&record)?;
            out
        })
        .await?
        .map_err(ApiError::internal)
}

/// Runs a change (arm, disarm, re-queue) and records it, refused attempts included, in a task
/// of its own: a request that times out (or a client that goes away) cannot leave a change
/// without its record. A record that cannot be written is logged.
async fn audited_change<T: Send + 'static>(
    state: &ApiState,
    caller: &Caller,
    action: AuditAction,
    target: String,
    change: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    let name = caller.name.clone();
    tokio::spawn(async move {
        let outcome = change.await;
        let error = outcome.as_ref().err().map(|e| e.code);
        audit_outcome(&store, "http", &name, action, target, error).await;
        outcome
    })
    .await
    .map_err(ApiError::internal)?
}

/// Parses `?camera=&kind=&rule=&from=&to=&since=&limit=&cursor=` (see [`events::parse_filter`]).
pub fn parse_event_query(raw: Option<&str>, now: Timestamp) -> Result<EventQuery, ApiError> {
    let pairs = url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()));
    Ok(events::parse_filter(pairs, now)?)
}

#[utoipa::path(get, path = "/api/v1/events", security(("bearer" = [])), params(
        ("camera" = Option<String>, Query, description = "Camera id"),
        ("kind" = Option<crate::events::EventKind>, Query, description = "Event kind"),
        ("rule" = Option<String>, Query, description = "Rule id"),
        ("from" = Option<String>, Query, description = "RFC 3339 start (inclusive)"),
        ("to" = Option<String>, Query, description = "RFC 3339 end (exclusive)"),
        ("since" = Option<String>, Query, description = "A duration back from now, e.g. 2h"),
        ("limit" = Option<u32>, Query, description = "1-500, default 50"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses((status = 200, description = "Events, newest first", body = super::openapi::EventPage),
        (status = 400, description = "A bad parameter (named)", body = super::openapi::ErrorBody), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
async fn list_events(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = parse_event_query(raw.as_deref(), Timestamp::now())?;
    let record = AuditRecord::new(
        "http",
        &caller.name,
        AuditAction::QueryEvents,
        raw.unwrap_or_default(),
    );
    let page = audited(
        &state,
        record,
        move |s| s.query(&q),
        |p| format!("{} events", p.events.len()),
    )
    .await?;
    let mut body = json!({
        "events": page.events.iter().map(event_json).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor.map(|c| c.encode()),
    });
    if page.skipped_undecodable > 0 {
        body["skipped_undecodable"] = page.skipped_undecodable.into();
    }
    Ok(Json(body))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Ok(ops::outbox::parse_event_id("id", id)?)
}

fn found<T>(v: &Option<T>) -> String {
    if v.is_some() { "found" } else { "not found" }.into()
}

#[utoipa::path(get, path = "/api/v1/events/{id}", security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "Event id")),
    responses((status = 200, description = "The event", body = super::openapi::ApiEvent),
        (status = 400, description = "Not a UUID", body = super::openapi::ErrorBody),
        (status = 404, description = "No such event", body = super::openapi::ErrorBody), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
async fn get_event(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let record = AuditRecord::new("http", &caller.name, AuditAction::GetEvent, id.to_string());
    match audited(&state, record, move |s| s.get(&id), found).await? {
        Some(e) => Ok(Json(event_json(&e))),
        None => Err(ApiError::not_found(format!("no event {id}"))),
    }
}

#[utoipa::path(get, path = "/api/v1/events/{id}/snapshot.jpg", security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "Event id")),
    responses((status = 200, description = "The event's snapshot", content_type = "image/jpeg", body = Vec<u8>),
        (status = 400, description = "Not a UUID", body = super::openapi::ErrorBody),
        (status = 404, description = "No such event, or none with a snapshot", body = super::openapi::ErrorBody), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
async fn get_snapshot(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let record = AuditRecord::new(
        "http",
        &caller.name,
        AuditAction::ReadSnapshot,
        id.to_string(),
    );
    match audited(&state, record, move |s| s.snapshot(&id), found).await? {
        Some(jpeg) => Ok((
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "private, max-age=86400, immutable"),
            ],
            jpeg,
        )
            .into_response()),
        None => Err(ApiError::not_found(format!("no snapshot for event {id}"))),
    }
}

fn rfc3339(t: SystemTime) -> Option<String> {
    Timestamp::try_from(t).ok().map(|t| t.to_string())
}

#[utoipa::path(get, path = "/api/v1/cameras", security(("bearer" = [])),
    responses((status = 200, description = "Every camera's state", body = super::openapi::CameraList), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
async fn cameras(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({ "cameras": cameras_json(&state.cameras.now()) }))
}

fn rules_sender(state: &ApiState) -> Result<tokio::sync::mpsc::Sender<RuleCommand>, ApiError> {
    Ok(ops::rules::sender(state.rules.as_ref())?.clone())
}

#[utoipa::path(get, path = "/api/v1/rules", security(("bearer" = [])),
    responses((status = 200, description = "Every rule with its state and shape", body = super::openapi::RuleList),
        (status = 503, description = "The rules are not running", body = super::openapi::ErrorBody), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
async fn list_rules(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let rules = ops::rules::list(&rules_sender(&state)?).await?;
    Ok(Json(json!({ "rules": rules })))
}

#[utoipa::path(post, path = "/api/v1/rules/{id}/arm", security(("bearer" = [])), params(("id" = String, Path, description = "Rule id", example = "fence")),
    responses((status = 200, description = "Armed", body = super::openapi::Armed),
        (status = 404, description = "No such rule", body = super::openapi::ErrorBody), (status = 403, description = "A read token on an admin route", body = super::openapi::ErrorBody), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
async fn arm(
    state: State<ApiState>,
    caller: Extension<Caller>,
    id: Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_armed(state, caller, id, true).await
}

#[utoipa::path(post, path = "/api/v1/rules/{id}/disarm", security(("bearer" = [])), params(("id" = String, Path, description = "Rule id", example = "fence")),
    responses((status = 200, description = "Disarmed", body = super::openapi::Armed),
        (status = 404, description = "No such rule", body = super::openapi::ErrorBody), (status = 403, description = "A read token on an admin route", body = super::openapi::ErrorBody), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
async fn disarm(
    state: State<ApiState>,
    caller: Extension<Caller>,
    id: Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_armed(state, caller, id, false).await
}

async fn set_armed(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(rule): Path<String>,
    armed: bool,
) -> Result<Json<Value>, ApiError> {
    let action = if armed {
        AuditAction::Arm
    } else {
        AuditAction::Disarm
    };
    let tx = rules_sender(&state);
    let r = rule.clone();
    audited_change(&state, &caller, action, rule.clone(), async move {
        Ok(ops::rules::set_armed(&tx?, &r, armed).await?)
    })
    .await?;
    tracing::info!(rule = %rule, armed, caller = %caller.name, "rule armed state changed through the API");
    Ok(Json(json!({ "rule": rule, "armed": armed })))
}

/// `GET /api/v1/audit?from=&to=&since=&caller=&limit=&cursor=` (admin), newest first.
#[utoipa::path(get, path = "/api/v1/audit", security(("bearer" = [])), params(
        ("caller" = Option<String>, Query, description = "The token holder's name"),
        ("from" = Option<String>, Query, description = "RFC 3339 start"),
        ("to" = Option<String>, Query, description = "RFC 3339 end"),
        ("since" = Option<String>, Query, description = "A duration back from now"),
        ("limit" = Option<u32>, Query, description = "1-500"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses((status = 200, description = "Audit records, newest first", body = super::openapi::AuditPage),
        (status = 400, description = "A bad parameter (named)", body = super::openapi::ErrorBody), (status = 403, description = "A read token on an admin route", body = super::openapi::ErrorBody), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
async fn audit(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = parse_audit_query(raw.as_deref(), Timestamp::now())?;
    let record = AuditRecord::new(
        "http",
        &caller.name,
        AuditAction::ReadAudit,
        raw.unwrap_or_default(),
    );
    let (records, next) = audited(
        &state,
        record,
        move |s| s.audit_query(&q),
        |(r, _)| format!("{} records", r.len()),
    )
    .await?;
    Ok(Json(json!({
        "records": records,
        "next_cursor": next.map(|c| c.encode()),
    })))
}

/// Parses `?from=&to=&since=&caller=&limit=&cursor=` (see [`events::parse_audit_filter`]).
pub fn parse_audit_query(raw: Option<&str>, now: Timestamp) -> Result<AuditQuery, ApiError> {
    let pairs = url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()));
    Ok(events::parse_audit_filter(pairs, now)?)
}

/// `GET /api/v1/outbox/dead-letters`: alerts taken out of delivery, oldest first.
#[utoipa::path(get, path = "/api/v1/outbox/dead-letters", security(("bearer" = [])),
    responses((status = 200, description = "Alerts taken out of MQTT delivery, oldest first", body = super::openapi::DeadLetters), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
async fn dead_letters(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    Ok(Json(
        blocking(move || ops::outbox::dead_letters_json(&store)).await?,
    ))
}

/// `POST /api/v1/outbox/dead-letters/{event id}/requeue` (admin).
#[utoipa::path(post, path = "/api/v1/outbox/dead-letters/{id}/requeue", security(("bearer" = [])), params(("id" = uuid::Uuid, Path, description = "Event id")),
    responses((status = 200, description = "Put back into the outbox", body = super::openapi::Requeued),
        (status = 400, description = "Not a UUID", body = super::openapi::ErrorBody),
        (status = 404, description = "No dead letter for that event", body = super::openapi::ErrorBody), (status = 403, description = "A read token on an admin route", body = super::openapi::ErrorBody), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
async fn requeue(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let store = state.store.clone();
    let n = audited_change(
        &state,
        &caller,
        AuditAction::Requeue,
        id.to_string(),
        async move { blocking(move || ops::outbox::requeue(&store, Some(&id))).await },
    )
    .await?;
    Ok(Json(json!({ "requeued": n })))
}

/// `POST /api/v1/outbox/dead-letters/requeue` (admin): every dead letter.
#[utoipa::path(post, path = "/api/v1/outbox/dead-letters/requeue", security(("bearer" = [])),
    responses((status = 200, description = "Every dead letter put back", body = super::openapi::Requeued), (status = 403, description = "A read token on an admin route", body = super::openapi::ErrorBody), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
async fn requeue_all(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let n = audited_change(
        &state,
        &caller,
        AuditAction::Requeue,
        "all".into(),
        async move { blocking(move || ops::outbox::requeue(&store, None)).await },
    )
    .await?;
    Ok(Json(json!({ "requeued": n })))
}

#[utoipa::path(get, path = "/api/v1/store", security(("bearer" = [])),
    responses((status = 200, description = "The store's state and size", body = super::openapi::StoreInfo), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
async fn store_stats(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let stats = blocking(move || store.stats().map_err(ApiError::internal)).await?;
    let status = state.store_status.borrow().clone();
    Ok(Json(json!({ "status": status, "stats": stats })))
}

#[utoipa::path(get, path = "/metrics", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let handle = state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("no metrics recorder in this process"))?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}

/// How long the broker may be unreachable before `/healthz` says `degraded` (reconnects and a
/// broker restart take less).
const BROKER_AWAY: std::time::Duration = std::time::Duration::from_secs(60);

/// The broker has been unreachable for longer than [`BROKER_AWAY`] at `now`.
fn broker_away(link: &crate::alert::publisher::MqttLink, now: Timestamp) -> bool {
    !link.connected
        && link
            .since
            .is_some_and(|t| now.duration_since(t).as_secs() > BROKER_AWAY.as_secs() as i64)
}

#[utoipa::path(get, path = "/healthz",
    responses((status = 200, description = "Working (ok or degraded)", body = super::openapi::Health),
        (status = 503, description = "The store cannot write, or a stage is stuck", body = super::openapi::Health)))]
async fn healthz(State(state): State<ApiState>) -> Response {
    let store = state.store_status.borrow().clone();
    let load = state.detector_load.borrow().clone();
    let cameras = state.cameras.now();
    let streaming = cameras
        .iter()
        .filter(|c| c.status.borrow().state == crate::camera::CameraState::Streaming)
        .count();
    // A failing store loses events: 503. An overloaded detector still infers every camera, less
    // often than asked: degraded, but 200.
    let ok = store.is_ok();
    // Alerts that never reached the center wait for an admin: degraded until re-queued.
    let dead_letters = state.store.dead_letter_len();
    // A stuck stage (no progress within its deadline) is a daemon that no longer works: 503, and
    // systemd's watchdog restarts it.
    let stages = state.stages.report();
    let stuck: Vec<&crate::progress::StageReport> = stages.iter().filter(|s| s.stuck).collect();
    let ok = ok && stuck.is_empty();
    // Alerts wait in the outbox while the broker is away: degraded once that lasts.
    let mqtt = state.mqtt.as_ref().map(|l| l.borrow().clone());
    let broker_away = mqtt
        .as_ref()
        .is_some_and(|l| broker_away(l, Timestamp::now()));
    let status = if !stuck.is_empty() {
        "failing"
    } else if ok && !load.is_overloaded() && dead_letters == 0 && !broker_away {
        "ok"
    } else {
        "degraded"
    };
    let body = json!({
        "status": status,
        "stages": { "total": stages.len(), "stuck": stuck },
        "outbox": { "dead_letters": dead_letters },
        "site": &*state.site,
        "version": env!("CARGO_PKG_VERSION"),
        "store": store,
        "detector": {
            "overloaded": load.is_overloaded(),
            "overloaded_since": load.overloaded_since.and_then(rfc3339),
            "behind": load.behind,
        },
        "cameras": { "total": cameras.len(), "streaming": streaming },
        "mqtt": match mqtt {
            Some(link) => json!({
                "configured": true,
                "connected": link.connected,
                "since": link.since,
                "last_error": link.last_error,
                "outbox": state.store.outbox_len(),
            }),
            None => json!({ "configured": false }),
        },
        "disk": { "free_bytes": crate::store::free_bytes(state.store.dir()).ok() },
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    #[test]
    fn the_broker_counts_as_away_after_a_minute_down() {
        use crate::alert::publisher::MqttLink;
        let t0: Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
        let at = |s: i64| t0 + jiff::SignedDuration::from_secs(s);
        let down = MqttLink {
            connected: false,
            since: Some(t0),
            last_error: Some("connection refused".into()),
        };
        assert!(
            !broker_away(&down, at(30)),
            "a reconnect or a broker restart"
        );
        assert!(broker_away(&down, at(61)));
        let up = MqttLink {
            connected: true,
            since: Some(t0),
            last_error: None,
        };
        assert!(!broker_away(&up, at(3600)));
        // Before the first attempt ends there is no "since": not away.
        assert!(!broker_away(&MqttLink::default(), at(3600)));
    }

    #[test]
    fn query_parameters_are_checked_by_name() {
        let now: Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        let q =
            parse_event_query(Some("camera=gate&kind=line_crossed&limit=5&since=2h"), now).unwrap();
        assert_eq!(q.camera.as_deref(), Some("gate"));
        assert_eq!(q.kind, Some(EventKind::LineCrossed));
        assert_eq!(q.limit, 5);
        assert_eq!(q.from, Some("2026-11-22T10:00:00Z".parse().unwrap()));
        for (raw, name) in [
            ("kind=jumping", "kind"),
            ("from=yesterday", "from"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("cursor=abc", "cursor"),
            ("colour=red", "colour"),
            ("since=2h&from=2026-11-22T00:00:00Z", "since"),
            ("from=2026-11-22T10:00:00Z&to=2026-11-22T09:00:00Z", "to"),
        ] {
            let e = parse_event_query(Some(raw), now).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{raw}");
            assert_eq!(e.parameter.as_deref(), Some(name), "{raw}");
        }
    }
}
