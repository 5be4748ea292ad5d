//! The HTTP side of the tokens ([`crate::auth`]): the bearer-token middleware.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
pub use crate::auth::{Caller, Role, TokenConfig, Tokens, is_sha256_hex, new_token};

/// Middleware: 401 without a known bearer token, 403 below `need`.
pub async fn require(
    State((tokens, need)): State<(Tokens, Role)>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = token else {
        return unauthorized("missing bearer token (Authorization: Bearer <token>)");
    };
    let Some(caller) = tokens.check(token) else {
        return unauthorized("unknown token");
    };
    if caller.role < need {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has role {:?}; this needs {:?}",
                &*caller.name, caller.role, need
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
