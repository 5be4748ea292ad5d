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
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Every rule with its state.
    List {
        reply: oneshot::Sender<Vec<RuleStatus>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleStatus {
    pub id: String,
    pub camera: String,
    pub armed: bool,
    /// Armed and inside its schedule right now.
    pub active: bool,
}
