//! Commands from the monitoring center over MQTT request/response.
//!
//! A request is a JSON object published on `<prefix>/commands/<command>`; the response goes to the
//! request's MQTT 5 response topic with its correlation data (or to `<prefix>/responses`). Every
//! request gets exactly one response: `{"ok": true, ...}` or `{"ok": false, "error": code,
//! "reason": words, "parameter": name?}` — malformed JSON and unknown commands included; only a
//! flood's excess is dropped by the publisher (see `publisher::BUSY_REPLIES_PER_S`).
//!
//! | command | request | response |
//! |---|---|---|
//! | `query/events` | `camera`, `kind`, `rule`, `from`, `to`, `since`, `limit`, `cursor` (as the HTTP API) | `events`, `next_cursor` |
//! | `query/cameras` | `{}` | `cameras` |
//! | `query/rules` | `{}` | `rules` |
//! | `admin/arm`, `admin/disarm` | `{"rule": id, "token": admin token}` | `rule`, `armed` |
//!
//! Any request may carry `"token"`, an HTTP API token (checked against the same hashes and
//! roles); arming and disarming need one with the admin role, so that write access to a topic
//! alone cannot disarm a fence. History queries, arming and disarming are written to the audit
//! trail with the token's name (or `mqtt:<response topic>` without a token). Queries run on the
//! store's reader threads, never beside the recorder's writes.

use jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::auth::{Caller, Role, Tokens};
use crate::control::RuleCommand;
use crate::ops::cameras::CameraViews;
use crate::ops::{self, ErrorKind, OpsError};
use crate::store::Store;
use crate::store::audit::{AuditAction, AuditRecord};
use crate::store::reader::Readers;

/// What commands may read and change.
#[derive(Clone)]
pub struct CommandContext {
    pub store: Store,
    pub rules: Option<mpsc::Sender<RuleCommand>>,
    pub cameras: CameraViews,
    /// The HTTP API's tokens: admin commands need an admin one.
    pub tokens: Tokens,
    pub readers: Readers,
}

/// The response to one request; never panics on any input. `requester` names the asker in the
/// audit trail when the request carries no token (its response topic).
pub async fn handle(ctx: &CommandContext, command: &str, payload: &[u8], requester: &str) -> Value {
    let result = match command {
        "admin/arm" | "admin/disarm" => admin(ctx, command, payload, requester).await,
        _ => run(ctx, command, payload, requester).await,
    };
    match result {
        Ok(mut v) => {
            v["ok"] = true.into();
            v["command"] = command.into();
            v
        }
        Err(e) => error_reply(command, e),
    }
}

/// `{"ok": false, ...}` for an error.
pub fn error_reply(command: &str, e: OpsError) -> Value {
    let mut v = json!({ "ok": false, "command": command, "error": e.code, "reason": e.reason });
    if let Some(p) = e.parameter {
        v["parameter"] = p.into();
    }
    v
}

fn bad_request(reason: impl Into<String>) -> OpsError {
    OpsError::new(ErrorKind::BadRequest, "bad_request", reason)
}

/// The request as a JSON object (an empty payload is `{}`).
fn parse_body(payload: &[u8]) -> Result<Map<String, Value>, OpsError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad_request("the request must be a JSON object")),
        Err(e) => Err(bad_request(format!("the request is not JSON: {e}"))),
    }
}

/// Takes `"token"` out of the request and checks it: `None` without one.
fn take_caller(
    ctx: &CommandContext,
    body: &mut Map<String, Value>,
) -> Result<Option<Caller>, OpsError> {
    match body.remove("token") {
        None => Ok(None),
        Some(Value::String(t)) => ctx
            .tokens
            .check(t.trim())
            .map(Some)
            .ok_or_else(|| OpsError::unauthorized("unknown token")),
        Some(_) => Err(OpsError::bad_parameter(
            "token",
            "give the API token as a string",
        )),
    }
}

async fn run(
    ctx: &CommandContext,
    command: &str,
    payload: &[u8],
    requester: &str,
) -> Result<Value, OpsError> {
    let mut body = parse_body(payload)?;
    let caller = take_caller(ctx, &mut body)?;
    let label = caller
        .as_ref()
        .map_or_else(|| format!("mqtt:{requester}"), |c| c.name.to_string());
    match command {
        "query/events" => {
            let pairs = query_pairs(&body)?;
            // The audit trail shows the filter as the HTTP API's would read.
            let qs = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs.iter())
                .finish();
            let q = ops::events::parse_filter(pairs, Timestamp::now())?;
            let store = ctx.store.clone();
            let mut record = AuditRecord::new("mqtt", &label, AuditAction::QueryEvents, qs);
            let page = ctx
                .readers
                .run(move || {
                    let page = store.query(&q);
                    match &page {
                        Ok(p) => record.detail = Some(format!("{} events", p.events.len())),
                        Err(_) => record.result = "internal".into(),
                    }
                    store.audit(&record)?;
                    page
                })
                .await?
                .map_err(OpsError::internal)?;
            let mut v = json!({
                "events": page.events.iter().map(ops::events::event_json).collect::<Vec<_>>(),
                "next_cursor": page.next_cursor.map(|c| c.encode()),
            });
            if page.skipped_undecodable > 0 {
                v["skipped_undecodable"] = page.skipped_undecodable.into();
            }
            Ok(v)
        }
        "query/cameras" => Ok(json!({ "cameras": ops::cameras::cameras_json(&ctx.cameras.now()) })),
        "query/rules" => {
            let rules = ops::rules::list(rules(ctx)?).await?;
            Ok(json!({ "rules": rules }))
        }
        other => Err(OpsError::new(
            ErrorKind::NotFound,
            "unknown_command",
            format!(
                "unknown command {other:?}; use query/events, query/cameras, query/rules, admin/arm or admin/disarm"
            ),
        )),
    }
}

/// `admin/arm` and `admin/disarm`: every attempt is audited, whatever stops it (malformed, no
/// token, a read token, an unknown rule, no rules stage).
async fn admin(
    ctx: &CommandContext,
    command: &str,
    payload: &[u8],
    requester: &str,
) -> Result<Value, OpsError> {
    let armed = command == "admin/arm";
    let action = if armed {
        AuditAction::Arm
    } else {
        AuditAction::Disarm
    };
    let mut label = format!("mqtt:{requester}");
    let mut target = String::new();
    let outcome = async {
        let mut body = parse_body(payload)?;
        target = body
            .get("rule")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let caller = take_caller(ctx, &mut body)?;
        if let Some(c) = &caller {
            label = c.name.to_string();
        }
        let rule = body
            .get("rule")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| OpsError::bad_parameter("rule", "give the rule id as a string"))?;
        match caller {
            None => Err(OpsError::unauthorized(format!(
                "{command} needs an admin token: {{\"rule\": \"...\", \"token\": \"kw_...\"}}"
            ))),
            Some(c) if c.role < Role::Admin => Err(OpsError::forbidden(format!(
                "token {:?} has role {:?}; {command} needs admin",
                &*c.name, c.role
            ))),
            Some(_) => ops::rules::set_armed(rules(ctx)?, &rule, armed)
                .await
                .map(|()| rule),
        }
    }
    .await;
    let error = outcome.as_ref().err().map(|e| e.code);
    ops::audit_outcome(&ctx.store, "mqtt", &label, action, target, error).await;
    let rule = outcome?;
    tracing::info!(rule = %rule, armed, caller = %label, "rule armed state changed by an MQTT command");
    Ok(json!({ "rule": rule, "armed": armed }))
}

fn rules(ctx: &CommandContext) -> Result<&mpsc::Sender<RuleCommand>, OpsError> {
    ops::rules::sender(ctx.rules.as_ref())
}

/// A JSON request as the HTTP API's query parameters (strings and numbers only).
fn query_pairs(body: &Map<String, Value>) -> Result<Vec<(String, String)>, OpsError> {
    body.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            Value::Number(n) => Ok((k.clone(), n.to_string())),
            _ => Err(OpsError::bad_parameter(k, "use a string or a number")),
        })
        .collect()
}
