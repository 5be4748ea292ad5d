//! The console's rule editor: `GET /api/v1/cameras/{id}/perimeter` (read) and `PUT` (admin), a
//! camera's zones, object masks and rules as the config file says them. A save goes to the owner
//! of the config file (link `config_commands`), which checks, writes and applies it
//! (`app::config_file`); it names the `version` it was read at, so that a save over another's
//! change is refused (409). A refused config answers 422 with each problem and its shape.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::auth::Caller;
use super::{ApiError, ApiState, audit_outcome};
use crate::control::{ConfigCommand, EditError, Perimeter};
use crate::store::audit::AuditAction;

fn owner(state: &ApiState) -> Result<mpsc::Sender<ConfigCommand>, ApiError> {
    state.config.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_editable",
            "this daemon runs without a config file (the built-in demo config): there is nothing to edit",
        )
    })
}

/// Sends one request to the config file's owner and waits for its answer (the request's own
/// time-out bounds the wait).
async fn ask<T>(
    tx: mpsc::Sender<ConfigCommand>,
    command: impl FnOnce(oneshot::Sender<T>) -> ConfigCommand,
) -> Result<T, ApiError> {
    let (reply, rx) = oneshot::channel();
    tx.send(command(reply))
        .await
        .map_err(|_| ApiError::unavailable("the daemon is stopping"))?;
    rx.await
        .map_err(|_| ApiError::unavailable("the daemon is stopping"))
}

/// The HTTP answer to an editor's failure.
fn refused(e: EditError) -> Response {
    let status = match &e {
        EditError::NoSuchCamera(_) => StatusCode::NOT_FOUND,
        EditError::Conflict(_) | EditError::NeedsRestart(_) => StatusCode::CONFLICT,
        EditError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        EditError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut body = json!({ "error": code_of(&e), "reason": e.to_string() });
    if let EditError::Invalid(problems) = &e {
        body["problems"] = json!(problems);
    }
    (status, Json(body)).into_response()
}

/// The wire code of an editor's failure (the answer's `error`, the audit record's result).
fn code_of(e: &EditError) -> &'static str {
    match e {
        EditError::NoSuchCamera(_) => "not_found",
        EditError::Conflict(_) => "conflict",
        EditError::NeedsRestart(_) => "needs_restart",
        EditError::Invalid(_) => "invalid_config",
        EditError::Failed(_) => "not_saved",
    }
}

/// `GET /api/v1/cameras/{id}/perimeter`: `{"version", "zones", "object_masks", "rules"}`.
#[utoipa::path(get, path = "/api/v1/cameras/{id}/perimeter", security(("bearer" = [])), params(("id" = String, Path, description = "Camera id", example = "gate")),
    responses((status = 200, description = "The camera's zones, masks and rules, and the file's version", body = crate::control::PerimeterView),
        (status = 404, description = "No such camera", body = super::openapi::ErrorBody),
        (status = 409, description = "No config file to edit", body = super::openapi::ErrorBody), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
pub(super) async fn get_perimeter(
    State(state): State<ApiState>,
    Path(camera): Path<String>,
) -> Result<Response, ApiError> {
    let tx = owner(&state)?;
    Ok(
        match ask(tx, |reply| ConfigCommand::GetPerimeter { camera, reply }).await? {
            Ok(view) => Json(view).into_response(),
            Err(e) => refused(e),
        },
    )
}

/// `PUT /api/v1/cameras/{id}/perimeter` (admin): the body is what `GET` answered, changed.
/// Audited as `edit_perimeter`, refused attempts included.
#[utoipa::path(put, path = "/api/v1/cameras/{id}/perimeter", security(("bearer" = [])), params(("id" = String, Path, description = "Camera id", example = "gate")),
    request_body(content = PerimeterSave, description = "What GET answered, changed"),
    responses((status = 200, description = "Saved and applied", body = crate::control::Saved),
        (status = 400, description = "A malformed body (the field named)", body = super::openapi::ErrorBody),
        (status = 404, description = "No such camera", body = super::openapi::ErrorBody),
        (status = 409, description = "The file changed since it was read, or needs a restart", body = super::openapi::ErrorBody),
        (status = 422, description = "The config would not pass check-config", body = super::openapi::InvalidConfig), (status = 403, description = "A read token on an admin route", body = super::openapi::ErrorBody), (status = 401, description = "No token, or one the site does not know", body = super::openapi::ErrorBody), (status = "default", description = "Another error (see docs/api.md)", body = super::openapi::ErrorBody)))]
pub(super) async fn put_perimeter(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(camera): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (version, perimeter) = parse_body(&body)?;
    let tx = owner(&state)?;
    let store = state.store.clone();
    let name = caller.name.clone();
    // In a task of its own: a client that goes away cannot leave a save without its record.
    tokio::spawn(async move {
        let target = camera.clone();
        let outcome = ask(tx, |reply| ConfigCommand::SavePerimeter {
            camera,
            version,
            perimeter,
            reply,
        })
        .await;
        let code = match &outcome {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(code_of(e)),
            Err(e) => Some(e.code),
        };
        audit_outcome(&store, "http", &name, AuditAction::EditPerimeter, target.clone(), code).await;
        Ok(match outcome? {
            Ok(saved) => {
                tracing::info!(camera = %target, caller = %name, changed = saved.changed, "perimeter saved through the API");
                Json(json!(saved)).into_response()
            }
            Err(e) => refused(e),
        })
    })
    .await
    .map_err(ApiError::internal)?
}

/// A save's body: what `GET` answered, changed, with the `version` it was read at.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PerimeterSave {
    /// The `version` the perimeter was read at.
    pub version: String,
    #[serde(default)]
    pub zones: Vec<crate::rules::edit::ZoneEdit>,
    #[serde(default)]
    pub object_masks: Vec<Vec<[f64; 2]>>,
    #[serde(default)]
    pub rules: Vec<crate::rules::edit::RuleEdit>,
}

/// The body as a [`PerimeterSave`]; a wrong field is a 400 naming it.
fn parse_body(body: &[u8]) -> Result<(String, Perimeter), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_parameter("body", format!("not JSON: {e}")))?;
    if value.get("version").and_then(Value::as_str).is_none() {
        return Err(ApiError::bad_parameter(
            "version",
            "give the `version` the perimeter was read at (GET answers it)",
        ));
    }
    let save: PerimeterSave = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_parameter(&path, e.inner().to_string())
    })?;
    Ok((
        save.version,
        Perimeter {
            zones: save.zones,
            object_masks: save.object_masks,
            rules: save.rules,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_needs_its_version_and_names_a_wrong_field() {
        let err = parse_body(br#"{"zones": []}"#).unwrap_err();
        assert_eq!(err.parameter.as_deref(), Some("version"));
        let err = parse_body(br#"{"version": "v", "rules": [{"id": "a", "kind": "fence"}]}"#)
            .unwrap_err();
        assert_eq!(
            err.parameter.as_deref(),
            Some("rules[0].kind"),
            "{}",
            err.reason
        );
        let err = parse_body(br#"{"version": "v", "colour": 1}"#).unwrap_err();
        assert!(err.reason.contains("colour"), "{}", err.reason);
        let (v, p) = parse_body(
            br#"{"version": "v1", "zones": [{"id": "z", "polygon": [[0,0],[1,0],[1,1]]}]}"#,
        )
        .unwrap();
        assert_eq!(v, "v1");
        assert_eq!(p.zones[0].polygon.len(), 3);
    }
}
