//! The center's HTTP API: the alarm queue (list, acknowledge, resolve, snapshot), the sites and
//! the city-wide event history over the center's database. Bearer tokens as on a site
//! (`[[center.http.tokens]]`): `read` lists, `admin` acknowledges and resolves.
//!
//! | route | |
//! |---|---|
//! | `GET /` | the alarm queue page (the console's style and sign-in; `console/`) |
//! | `GET /healthz` | `{"instance", "database": "ok"/"unreachable"}` (no token) |
//! | `GET /metrics` | Prometheus (no token) |
//! | `GET /api/v1/alarms?state=new,acknowledged&district=&site=&after=&limit=` | newest first |
//! | `GET /api/v1/alarms/stream` | server-sent events: `alarm` (an id raised or changed), `resync` |
//! | `GET /api/v1/alarms/{id}` | one alarm |
//! | `POST /api/v1/alarms/{id}/acknowledge` `{"note"?}` | New → Acknowledged (409 otherwise) |
//! | `POST /api/v1/alarms/{id}/resolve` `{"outcome","note"?}` | → Resolved (409 if it is) |
//! | `GET /api/v1/alarms/{id}/snapshot.jpg` | the alert's JPEG (404 until the center has it) |
//! | `GET /api/v1/sites?district=` | sites with status, cameras and open alarms |
//! | `GET /api/v1/events?site=&district=&kind=&camera=&rule=&from=&to=&since=&limit=&ask_sites=` | city-wide history, newest first |
//!
//! With `ask_sites=true` the history also asks the sites (all, the district's, or `site`) over
//! MQTT request/response for their events in the window, stores those the center lacked, and
//! answers from the database with a `sites` report: which were asked, which answered, which
//! did not and why (offline, no answer within `center.query_timeout`, refused).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router, middleware};
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use jiff::Timestamp;
use serde::Deserialize;

use super::db::{self, AlarmFilter, Transition, TransitionError};
use super::live::AlarmFeed;
use super::query::SiteQueries;
use crate::api::ApiError;
use crate::api::auth::{Caller, Gate, Role, Tokens, require};
use crate::api::console::session::Sessions;
use crate::api::console::{self, ConsoleHost, asset};

#[derive(Clone)]
pub struct CenterApi {
    pub instance: Arc<str>,
    pub pool: Pool,
    pub queries: SiteQueries,
    pub feed: AlarmFeed,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub tokens: Tokens,
    pub sessions: Sessions,
    /// `ask_sites` questions running at once (one).
    pub fan_outs: Arc<tokio::sync::Semaphore>,
    /// Ends the live streams when the instance stops.
    pub stop: tokio_util::sync::CancellationToken,
}

impl ConsoleHost for CenterApi {
    fn tokens(&self) -> &Tokens {
        &self.tokens
    }
    fn sessions(&self) -> &Sessions {
        &self.sessions
    }
    fn about(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("instance".into(), (*self.instance).into());
        m
    }
}

const INDEX_HTML: &str = include_str!("console/index.html");
const CENTER_JS: &str = include_str!("console/center.js");
const CENTER_CSS: &str = include_str!("console/center.css");

/// The alarm queue page, its assets and the console's sign-in.
fn console() -> Router<CenterApi> {
    Router::new()
        .route("/", get(|| asset(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/console/center.js",
            get(|| asset(CENTER_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/console/center.css",
            get(|| asset(CENTER_CSS, "text/css; charset=utf-8")),
        )
        .route(
            "/console/style.css",
            get(|| asset(console::style_css(), "text/css; charset=utf-8")),
        )
        .merge(console::session_router())
        .layer(middleware::from_fn(console::security_headers))
}

pub fn router(state: CenterApi) -> Router {
    let gate = |need| Gate {
        tokens: state.tokens.clone(),
        sessions: state.sessions.clone(),
        need,
    };
    let read = Router::new()
        .route("/api/v1/alarms", get(list_alarms))
        .route("/api/v1/alarms/stream", get(alarm_stream))
        .route("/api/v1/alarms/{id}", get(get_alarm))
        .route("/api/v1/alarms/{id}/snapshot.jpg", get(alarm_snapshot))
        .route("/api/v1/sites", get(list_sites))
        .route("/api/v1/events", get(list_events))
        .layer(middleware::from_fn_with_state(gate(Role::Read), require));
    let admin = Router::new()
        .route("/api/v1/alarms/{id}/acknowledge", post(acknowledge))
        .route("/api/v1/alarms/{id}/resolve", post(resolve))
        .layer(middleware::from_fn_with_state(gate(Role::Admin), require));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(console())
        .merge(read)
        .merge(admin)
        .with_state(state)
}

async fn alarm_stream(State(s): State<CenterApi>) -> impl IntoResponse {
    s.feed.stream(s.stop.clone())
}

async fn healthz(State(s): State<CenterApi>) -> Response {
    let db_ok = match s.pool.get().await {
        Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "instance": &*s.instance,
        "database": if db_ok { "ok" } else { "unreachable" },
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(s): State<CenterApi>) -> Response {
    match &s.metrics {
        Some(h) => h.render().into_response(),
        None => ApiError::unavailable("metrics are not recorded in this process").into_response(),
    }
}

fn db_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmQuery {
    state: Option<String>,
    district: Option<String>,
    site: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

const STATES: &[&str] = &["new", "acknowledged", "resolved"];

fn limit(l: Option<i64>) -> Result<i64, ApiError> {
    match l {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_parameter("limit", "use 1 to 1000")),
    }
}

async fn list_alarms(
    State(s): State<CenterApi>,
    q: Result<Query<AlarmQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = params(q)?;
    let states: Vec<String> = match &q.state {
        None => vec!["new".into(), "acknowledged".into()],
        Some(s) if s == "all" => vec![],
        Some(s) => s.split(',').map(|x| x.trim().to_owned()).collect(),
    };
    if let Some(bad) = states.iter().find(|x| !STATES.contains(&x.as_str())) {
        return Err(ApiError::bad_parameter(
            "state",
            format!("{bad:?}: use new, acknowledged, resolved (comma-separated) or all"),
        ));
    }
    let f = AlarmFilter {
        states,
        district: q.district,
        site: q.site,
        after_id: q.after,
        limit: limit(q.limit)?,
    };
    let alarms = db::alarms(&s.pool, &f).await.map_err(db_error)?;
    Ok(Json(serde_json::json!({ "alarms": alarms })))
}

async fn get_alarm(
    State(s): State<CenterApi>,
    Path(id): Path<i64>,
) -> Result<Json<db::Alarm>, ApiError> {
    db::alarm_by_id(&s.pool, id)
        .await
        .map_err(db_error)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no alarm {id}")))
}

async fn alarm_snapshot(
    State(s): State<CenterApi>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let alarm = db::alarm_by_id(&s.pool, id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| ApiError::not_found(format!("no alarm {id}")))?;
    let Some(event_id) = alarm.event_id else {
        return Err(ApiError::not_found(format!("alarm {id} has no event")));
    };
    match db::snapshot(&s.pool, event_id).await.map_err(db_error)? {
        Some(jpeg) => Ok(([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response()),
        None => Err(ApiError::not_found(format!(
            "the center holds no snapshot of event {event_id} (yet)"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    outcome: String,
    note: Option<String>,
}

fn transition_error(e: TransitionError) -> ApiError {
    match e {
        TransitionError::NotFound(_) => ApiError::not_found(e.to_string()),
        TransitionError::Conflict { .. } => {
            ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        TransitionError::Db(e) => db_error(e),
    }
}

/// A query string, or a 400 with serde's reason (an unknown or malformed parameter).
fn params<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
}

fn body<T>(b: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
}

fn note(n: Option<String>) -> Result<Option<String>, ApiError> {
    match n {
        Some(n) if n.chars().count() > 2000 => {
            Err(ApiError::bad_parameter("note", "at most 2000 characters"))
        }
        n => Ok(n.filter(|n| !n.trim().is_empty())),
    }
}

async fn acknowledge(
    State(s): State<CenterApi>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    b: Result<Json<AckBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<db::Alarm>, ApiError> {
    let b = body(b)?;
    let note = note(b.note)?;
    let alarm = db::transition(
        &s.pool,
        id,
        Transition::Acknowledge {
            note: note.as_deref(),
        },
        &caller.name,
    )
    .await
    .map_err(transition_error)?;
    tracing::info!(alarm = id, who = %caller.name, "alarm acknowledged");
    Ok(Json(alarm))
}

async fn resolve(
    State(s): State<CenterApi>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    b: Result<Json<ResolveBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<db::Alarm>, ApiError> {
    let b = body(b)?;
    if !db::OUTCOMES.contains(&b.outcome.as_str()) {
        return Err(ApiError::bad_parameter(
            "outcome",
            format!("{:?}: use one of {}", b.outcome, db::OUTCOMES.join(", ")),
        ));
    }
    let note = note(b.note)?;
    let alarm = db::transition(
        &s.pool,
        id,
        Transition::Resolve {
            outcome: &b.outcome,
            note: note.as_deref(),
        },
        &caller.name,
    )
    .await
    .map_err(transition_error)?;
    tracing::info!(alarm = id, who = %caller.name, outcome = %b.outcome, "alarm resolved");
    Ok(Json(alarm))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SitesQuery {
    district: Option<String>,
}

async fn list_sites(
    State(s): State<CenterApi>,
    q: Result<Query<SitesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = params(q)?;
    let sites = db::sites(&s.pool, q.district.as_deref())
        .await
        .map_err(db_error)?;
    Ok(Json(serde_json::json!({ "sites": sites })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    site: Option<String>,
    district: Option<String>,
    kind: Option<String>,
    camera: Option<String>,
    rule: Option<String>,
    from: Option<String>,
    to: Option<String>,
    since: Option<String>,
    limit: Option<i64>,
    #[serde(default)]
    ask_sites: bool,
}

fn time(name: &str, v: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    v.map(|t| {
        t.parse::<Timestamp>().map_err(|e| {
            ApiError::bad_parameter(name, format!("{t:?} is not an RFC 3339 time ({e})"))
        })
    })
    .transpose()
}

/// The filter of an events query (`since` read as `from`, the kind checked).
fn event_filter(q: EventsQuery, now: Timestamp) -> Result<(db::EventFilter, bool), ApiError> {
    if let Some(k) = &q.kind
        && serde_json::from_value::<crate::events::EventKind>(k.as_str().into()).is_err()
    {
        return Err(ApiError::bad_parameter(
            "kind",
            format!("{k:?} is not an event kind (line_crossed, zone_entered, camera_offline...)"),
        ));
    }
    let mut from = time("from", q.from.as_deref())?;
    if let Some(s) = &q.since {
        if from.is_some() {
            return Err(ApiError::bad_parameter(
                "since",
                "give either since or from, not both",
            ));
        }
        let d = humantime::parse_duration(s)
            .ok()
            .and_then(|d| jiff::SignedDuration::try_from(d).ok())
            .ok_or_else(|| {
                ApiError::bad_parameter("since", format!("{s:?} is not a duration such as 2h"))
            })?;
        from = Some(now.checked_sub(d).unwrap_or(Timestamp::MIN));
    }
    let f = db::EventFilter {
        site: q.site,
        district: q.district,
        kind: q.kind,
        camera: q.camera,
        rule: q.rule,
        from,
        to: time("to", q.to.as_deref())?,
        limit: limit(q.limit)?,
    };
    if let (Some(a), Some(b)) = (f.from, f.to)
        && a > b
    {
        return Err(ApiError::bad_parameter("from", "from is after to"));
    }
    Ok((f, q.ask_sites))
}

async fn list_events(
    State(s): State<CenterApi>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (f, ask_sites) = event_filter(params(q)?, Timestamp::now())?;
    let report = if ask_sites {
        Some(ask(&s, &f).await?)
    } else {
        None
    };
    let events = db::events(&s.pool, &f).await.map_err(db_error)?;
    let mut body = serde_json::json!({ "events": events });
    if let Some(r) = report {
        body["sites"] = r;
    }
    Ok(Json(body))
}

/// Asks the filter's sites for their events, stores what the center lacked; the report.
async fn ask(s: &CenterApi, f: &db::EventFilter) -> Result<serde_json::Value, ApiError> {
    let sites = match &f.site {
        Some(site) => vec![site.clone()],
        None => db::site_ids(&s.pool, f.district.as_deref())
            .await
            .map_err(db_error)?,
    };
    let status = db::site_online(&s.pool, &sites).await.map_err(db_error)?;
    if let Some(site) = &f.site
        && !status.contains_key(site)
    {
        return Err(ApiError::not_found(format!(
            "no site {site:?} in the center's directory"
        )));
    }
    // One city-wide question at a time per instance: each holds up to query_concurrency answers.
    let Ok(_turn) = s.fan_outs.clone().try_acquire_owned() else {
        return Err(ApiError::unavailable(
            "another ask_sites question is running on this instance; try again in a few seconds",
        ));
    };
    let mut not_answered = Vec::new();
    let mut asked = Vec::new();
    for site in sites {
        match status.get(&site) {
            Some((Some(false), at)) => not_answered.push(serde_json::json!({
                "site": site,
                "reason": match at {
                    Some(t) => format!("offline since {t}"),
                    None => "offline".into(),
                },
            })),
            _ => asked.push(site),
        }
    }
    let mut filter = serde_json::Map::new();
    for (k, v) in [
        ("kind", &f.kind),
        ("camera", &f.camera),
        ("rule", &f.rule),
        ("from", &f.from.map(|t| t.to_string())),
        ("to", &f.to.map(|t| t.to_string())),
    ] {
        if let Some(v) = v {
            filter.insert(k.into(), v.clone().into());
        }
    }
    let n = asked.len();
    let mut answered = Vec::new();
    let mut incomplete = Vec::new();
    let mut recovered = 0;
    let answers = s.queries.fan_out(asked, &filter);
    let mut answers = std::pin::pin!(answers);
    while let Some((site, r)) = answers.next().await {
        match r {
            Ok(a) => {
                if !a.complete {
                    incomplete.push(site.clone());
                }
                let stored = super::reconcile::store_answer(&s.pool, &s.instance, &site, a)
                    .await
                    .map_err(db_error)?;
                recovered += stored.new;
                answered.push(site);
            }
            Err(e) => {
                not_answered.push(serde_json::json!({ "site": site, "reason": e.to_string() }))
            }
        }
    }
    answered.sort();
    incomplete.sort();
    not_answered.sort_by(|a, b| a["site"].as_str().cmp(&b["site"].as_str()));
    Ok(serde_json::json!({
        "asked": n,
        "answered": answered,
        "incomplete": incomplete,
        "not_answered": not_answered,
        "recovered": recovered,
    }))
}
