//! The HTTP side of the tokens ([`crate::auth`]): the middleware that lets a request in with a
//! bearer token or a console session cookie ([`crate::api::console::session`]).

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::api::console::session::{self, Sessions};
pub use crate::auth::{Caller, Role, TokenConfig, Tokens, is_sha256_hex, new_token};

/// What the middleware checks a request against.
#[derive(Clone)]
pub struct Gate {
    pub tokens: Tokens,
    pub sessions: Sessions,
    pub need: Role,
}

/// The bearer token of a request, if it carries one.
pub fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The console session cookie of a request, if it carries one.
pub fn session_cookie(req: &Request) -> Option<&str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| session::cookie_value(h, session::COOKIE))
}

/// Middleware: 401 without a known bearer token or open session, 403 below `need`, and 403 for
/// a change made with the session cookie whose `X-CSRF-Token` is not the session's.
pub async fn require(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let caller = if let Some(token) = bearer(&req) {
        match gate.tokens.check(token) {
            Some(c) => c,
            None => return unauthorized("unknown token"),
        }
    } else if let Some(id) = session_cookie(&req) {
        let Some(info) = gate.sessions.check(id) else {
            return unauthorized("the console session has ended; sign in again");
        };
        let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
        if changes && !info.csrf_sent_in(req.headers()) {
            return ApiError::forbidden(
                "a change made with the console session needs its X-CSRF-Token header",
            )
            .into_response();
        }
        info.caller
    } else {
        return unauthorized("missing bearer token (Authorization: Bearer <token>)");
    };
    if caller.role < gate.need {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has role {:?}; this needs {:?}",
                &*caller.name, caller.role, gate.need
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn unauthorized(reason: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}
