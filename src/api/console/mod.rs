//! The web console for installers and site staff: pages served by the daemon on the API address,
//! built into the binary (plain HTML, CSS and JavaScript, nothing fetched at run time).
//!
//! `/` is the page; it signs in with an API token (`POST /console/session`), which opens a
//! [`session`] held in an HttpOnly, SameSite=Strict cookie. From then on the page calls the same
//! `/api/v1` routes as any client, with the cookie instead of a bearer token and, on every
//! change, the session's CSRF token in `X-CSRF-Token`. Roles hold as in the API: a read token
//! sees, an admin token also arms and disarms.
//!
//! Every console answer carries a strict Content-Security-Policy (scripts and styles from this
//! origin only, no inline script, no framing).

pub mod session;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::auth::Tokens;
use crate::api::{ApiError, ApiState};
pub use session::Sessions;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const EDITOR_JS: &str = include_str!("assets/editor.js");
const I18N_JS: &str = include_str!("assets/i18n.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// The console's Content-Security-Policy: this origin only; pictures also as `blob:` (the live
/// pictures are fetched, then shown).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes: the page, its assets and the session.
pub fn router() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/", get(|| asset(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/console/editor.js",
            get(|| asset(EDITOR_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/console/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/console/i18n.js",
            get(|| asset(I18N_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/console/style.css",
            get(|| asset(STYLE_CSS, "text/css; charset=utf-8")),
        )
        .merge(session_router())
        .layer(axum::middleware::from_fn(security_headers))
}

/// The console's stylesheet, shared by every page in its style (the center's alarm queue).
pub fn style_css() -> &'static str {
    STYLE_CSS
}

/// What the console's sign-in needs of the server it runs on (a site's API, the city center's).
pub trait ConsoleHost: Clone + Send + Sync + 'static {
    fn tokens(&self) -> &Tokens;
    fn sessions(&self) -> &Sessions;
    /// What the page learns at sign-in beside the name, role and CSRF token.
    fn about(&self) -> serde_json::Map<String, Value>;
}

impl ConsoleHost for ApiState {
    fn tokens(&self) -> &Tokens {
        &self.tokens
    }
    fn sessions(&self) -> &Sessions {
        &self.sessions
    }
    fn about(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("site".into(), (*self.site).into());
        m.insert("time_zone".into(), (*self.time_zone).into());
        m
    }
}

/// `POST /console/session` (sign in), `GET /console/session` (who), `POST /console/session/end`.
pub fn session_router<S: ConsoleHost>() -> axum::Router<S> {
    axum::Router::new()
        .route("/console/session", post(sign_in::<S>).get(whoami::<S>))
        .route("/console/session/end", post(sign_out::<S>))
}

/// A built-in asset, revalidated on every load.
pub async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Adds the console's security headers to an answer.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// `POST /console/session {"token": "kw_..."}`: opens a session, sets its cookie, answers who
/// signed in and the session's CSRF token.
async fn sign_in<S: ConsoleHost>(
    State(state): State<S>,
    body: Result<Json<SignIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "send {\"token\": \"kw_...\"} as JSON",
        )
        .into_response();
    };
    let Some(caller) = state.tokens().check(body.token.trim()) else {
        crate::telemetry::api::sign_in(false);
        tracing::info!("console sign-in refused: unknown token");
        return ApiError::unauthorized("unknown token").into_response();
    };
    crate::telemetry::api::sign_in(true);
    tracing::info!(name = %caller.name, role = ?caller.role, "console sign-in");
    let (id, csrf) = state.sessions().open(caller.clone());
    let mut who = json!({ "name": &*caller.name, "role": caller.role, "csrf": csrf });
    who.as_object_mut().unwrap().extend(state.about());
    let mut r = Json(who).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session::set_cookie(&id)).expect("hex id"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /console/session`: the signed-in caller and the CSRF token (after a page reload).
async fn whoami<S: ConsoleHost>(State(state): State<S>, req: Request) -> Response {
    let Some(info) =
        crate::api::auth::session_cookie(&req).and_then(|id| state.sessions().check(id))
    else {
        return ApiError::unauthorized("not signed in").into_response();
    };
    let mut who = json!({
        "name": &*info.caller.name,
        "role": info.caller.role,
        "csrf": info.csrf,
    });
    who.as_object_mut().unwrap().extend(state.about());
    let mut r = Json(who).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /console/session/end` (with the CSRF token): closes the session and clears the cookie.
async fn sign_out<S: ConsoleHost>(State(state): State<S>, req: Request) -> Response {
    if let Some(id) = crate::api::auth::session_cookie(&req)
        && let Some(info) = state.sessions().check(id)
    {
        if !info.csrf_sent_in(req.headers()) {
            return ApiError::forbidden("signing out needs the session's X-CSRF-Token header")
                .into_response();
        }
        state.sessions().close(id);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session::clear_cookie()).expect("ascii"),
    );
    r
}
