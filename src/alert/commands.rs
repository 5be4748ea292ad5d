//! Commands from the monitoring center over MQTT request/response.
//!
//! A request is a JSON object published on `<prefix>/commands/<command>`; the response goes to the
//! request's MQTT 5 response topic with its correlation data (or to `<prefix>/responses`). Every
//! request gets exactly one response: `{"ok": true, ...}` or `{"ok": false, "error": code,
//! "reason": words, "parameter": name?}` — malformed JSON and unknown commands included.
//!
//! | command | request | response |
//! |---|---|---|
//! | `query/events` | `camera`, `kind`, `rule`, `from`, `to`, `since`, `limit`, `cursor` (as the HTTP API) | `events`, `next_cursor` |
//! | `query/cameras` | `{}` | `cameras` |
//! | `query/rules` | `{}` | `rules` |
//! | `admin/arm`, `admin/disarm` | `{"rule": id}` | `rule`, `armed` |

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::api::{ApiError, CameraView};
use crate::perimeter::RuleCommand;
use crate::store::Store;

/// What commands may read and change.
#[derive(Clone)]
pub struct CommandContext {
    pub store: Store,
    pub rules: Option<mpsc::Sender<RuleCommand>>,
    pub cameras: Arc<Vec<CameraView>>,
}

/// The response to one request; never panics on any input.
pub async fn handle(ctx: &CommandContext, command: &str, payload: &[u8]) -> Value {
    match run(ctx, command, payload).await {
        Ok(mut v) => {
            v["ok"] = true.into();
            v["command"] = command.into();
            v
        }
        Err(e) => {
            let mut v =
                json!({ "ok": false, "command": command, "error": e.code, "reason": e.reason });
            if let Some(p) = e.parameter {
                v["parameter"] = p.into();
            }
            v
        }
    }
}

fn bad_request(reason: impl Into<String>) -> ApiError {
    ApiError::new(axum::http::StatusCode::BAD_REQUEST, "bad_request", reason)
}

async fn run(ctx: &CommandContext, command: &str, payload: &[u8]) -> Result<Value, ApiError> {
    let body: Map<String, Value> = if payload.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(bad_request("the request must be a JSON object")),
            Err(e) => return Err(bad_request(format!("the request is not JSON: {e}"))),
        }
    };
    match command {
        "query/events" => {
            let pairs = query_pairs(&body)?;
            let qs = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs.iter())
                .finish();
            let q = crate::api::parse_event_query(Some(&qs), Timestamp::now())?;
            let store = ctx.store.clone();
            let page = tokio::task::spawn_blocking(move || store.query(&q))
                .await
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?;
            Ok(json!({
                "events": page.events.iter().map(crate::api::event_json).collect::<Vec<_>>(),
                "next_cursor": page.next_cursor.map(|c| c.encode()),
            }))
        }
        "query/cameras" => Ok(json!({ "cameras": crate::api::cameras_json(&ctx.cameras) })),
        "query/rules" => {
            let rules = crate::api::rules_list(rules(ctx)?).await?;
            Ok(json!({ "rules": rules }))
        }
        "admin/arm" | "admin/disarm" => {
            let armed = command == "admin/arm";
            let rule = body
                .get("rule")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_parameter("rule", "give the rule id as a string"))?;
            crate::api::rule_set_armed(rules(ctx)?, rule, armed).await?;
            tracing::info!(rule, armed, "rule armed state changed by an MQTT command");
            Ok(json!({ "rule": rule, "armed": armed }))
        }
        other => Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown_command",
            format!(
                "unknown command {other:?}; use query/events, query/cameras, query/rules, admin/arm or admin/disarm"
            ),
        )),
    }
}

fn rules(ctx: &CommandContext) -> Result<&mpsc::Sender<RuleCommand>, ApiError> {
    ctx.rules.as_ref().ok_or_else(|| {
        ApiError::unavailable("rules are not running (no detector model configured)")
    })
}

/// A JSON request as the HTTP API's query parameters (strings and numbers only).
fn query_pairs(body: &Map<String, Value>) -> Result<Vec<(String, String)>, ApiError> {
    body.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            Value::Number(n) => Ok((k.clone(), n.to_string())),
            _ => Err(ApiError::bad_parameter(k, "use a string or a number")),
        })
        .collect()
}
