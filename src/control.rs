//! Run-time control of the rules stage: the messages the HTTP API, the MQTT commands and the CLI
//! send to it (arm, disarm, list), kept apart from the stage itself so that those transports do
//! not depend on it (the seed of a transport-neutral control layer).

use tokio::sync::oneshot;

/// A command to the rules at run time (from the API or MQTT).
#[derive(Debug)]
pub enum RuleCommand {
    /// Arms or disarms a rule; the choice is saved and survives a restart.
    SetArmed {
        rule: String,
        armed: bool,
        reply: oneshot::Sender<Result<(), SetArmedError>>,
    },
    /// Every rule with its state.
    List {
        reply: oneshot::Sender<Vec<RuleStatus>>,
    },
}

/// Why a rule's armed state was not changed, or not kept.
#[derive(Debug, thiserror::Error)]
pub enum SetArmedError {
    #[error("no rule {0:?}")]
    NoSuchRule(String),
    /// Changed, but not saved: it is lost on restart. The rules stage's own storage error.
    #[error(transparent)]
    NotSaved(Box<dyn std::error::Error + Send + Sync>),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct RuleStatus {
    pub id: String,
    pub camera: String,
    /// `tripwire`, `zone` or `loitering`.
    pub kind: &'static str,
    /// Its line or polygon, [x, y] fractions of the frame (what the console draws).
    pub shape: Vec<[f32; 2]>,
    /// A tripwire's crossing direction (`left`, `right`, `any`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<&'static str>,
    pub armed: bool,
    /// Armed and inside its schedule right now.
    pub active: bool,
}

/// A request to the owner of the config file (the daemon's main loop) from the console's rule
/// editor: read a camera's perimeter, or save a new one into the file and apply it live.
#[derive(Debug)]
pub enum ConfigCommand {
    GetPerimeter {
        camera: String,
        reply: oneshot::Sender<Result<PerimeterView, EditError>>,
    },
    SavePerimeter {
        camera: String,
        /// The [`PerimeterView::version`] the editor started from.
        version: String,
        perimeter: Perimeter,
        reply: oneshot::Sender<Result<Saved, EditError>>,
    },
}

/// A camera's perimeter and the version of the file it was read from (the SHA-256 of the running
/// config file's text): a save names it, so that two editors cannot overwrite each other.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct PerimeterView {
    pub version: String,
    pub zones: Vec<crate::rules::edit::ZoneEdit>,
    pub object_masks: Vec<Vec<[f64; 2]>>,
    pub rules: Vec<crate::rules::edit::RuleEdit>,
}

impl PerimeterView {
    pub fn new(version: String, p: Perimeter) -> Self {
        Self {
            version,
            zones: p.zones,
            object_masks: p.object_masks,
            rules: p.rules,
        }
    }
}

/// A save that went through.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Saved {
    /// The file's new version.
    pub version: String,
    /// False when the perimeter was already what the file says (nothing written).
    pub changed: bool,
}

/// A config problem, and the edited camera's shape it belongs to (if it is one of them).
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ShapeProblem {
    /// The key path (`rules[3].line`).
    pub path: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<Shape>,
}

/// Why a perimeter could not be read or saved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EditError {
    #[error("no camera {0:?} in the config")]
    NoSuchCamera(String),
    /// The file or the running config moved on since the editor read it.
    #[error("{0}")]
    Conflict(String),
    /// The new file would not pass `check-config`: nothing was written.
    #[error("the config would have {} problem(s)", .0.len())]
    Invalid(Vec<ShapeProblem>),
    /// The file also holds changes that need a restart: nothing was written.
    #[error("the config file also changes {}, which needs a restart; restart the service, then edit again", .0.join(", "))]
    NeedsRestart(Vec<String>),
    /// The file could not be written, or the change not applied (the previous file is back).
    #[error("{0}")]
    Failed(String),
}

pub use crate::rules::edit::{Perimeter, Shape};
