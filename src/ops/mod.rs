//! The transport-neutral layer: what the HTTP API, the MQTT commands and the `events` CLI ask of
//! the daemon (query events, list cameras and rules, arm and disarm, list and re-queue dead
//! letters, audit a change), with one
//! error type that knows nothing of HTTP. Each transport is a thin adapter: it turns its request
//! into these calls and [`OpsError`] into its own answer (an HTTP status, an MQTT reply).

pub mod cameras;
pub mod events;
pub mod outbox;
pub mod rules;

use crate::store::Store;
use crate::store::audit::{AuditAction, AuditRecord};

/// What went wrong, in the words every transport answers with (`code`, `reason`, `parameter`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct OpsError {
    pub kind: ErrorKind,
    /// The wire code: `bad_parameter`, `not_found`, `unauthorized`, ...
    pub code: &'static str,
    pub reason: String,
    /// The request parameter at fault, if one is.
    pub parameter: Option<String>,
}

/// The classes of failure a transport maps to its own answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong (a parameter, the body): the asker must change it.
    BadRequest,
    NotFound,
    Unauthorized,
    Forbidden,
    /// Not possible now (a stage not running, too many reads at once): try again later.
    Unavailable,
    /// The daemon failed; the log says why.
    Internal,
}

impl OpsError {
    pub fn new(kind: ErrorKind, code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            reason: reason.into(),
            parameter: None,
        }
    }

    pub fn bad_parameter(name: &str, reason: impl Into<String>) -> Self {
        Self {
            parameter: Some(name.to_owned()),
            ..Self::new(ErrorKind::BadRequest, "bad_parameter", reason)
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, "not_found", what)
    }

    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, "unauthorized", reason)
    }

    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, "forbidden", reason)
    }

    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, "unavailable", reason)
    }

    /// Too many reads at once: come back in a moment.
    pub fn busy(reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, "busy", reason)
    }

    /// Logged here with its cause; the asker gets a reason without internals.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "request failed");
        Self::new(
            ErrorKind::Internal,
            "internal",
            "the daemon could not answer; see its log",
        )
    }
}

impl From<crate::store::reader::ReadError> for OpsError {
    fn from(e: crate::store::reader::ReadError) -> Self {
        match e {
            crate::store::reader::ReadError::Busy => Self::busy(e.to_string()),
            crate::store::reader::ReadError::Gone => Self::unavailable(e.to_string()),
        }
    }
}

/// Records an attempted change with its outcome (`ok`, or `error`: the code answered), whatever
/// the transport (`channel`: http, mqtt); a record that cannot be written is logged (the change
/// has happened or been refused already).
pub async fn audit_outcome(
    store: &Store,
    channel: &str,
    caller: &str,
    action: AuditAction,
    target: String,
    error: Option<&'static str>,
) {
    let mut record = AuditRecord::new(channel, caller, action, target);
    if let Some(code) = error {
        record.result = code.into();
    }
    let store = store.clone();
    if !matches!(
        tokio::task::spawn_blocking(move || store.audit(&record)).await,
        Ok(Ok(()))
    ) {
        tracing::error!(
            caller,
            channel,
            ?action,
            "audit record of a change not written"
        );
    }
}
