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

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
