//! Rules at run time: list them with their state, arm and disarm them (through the rules stage).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::OpsError;
use crate::control::{RuleCommand, RuleStatus};

const RULE_REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// The rules stage's command channel, or why there is none.
pub fn sender(
    rules: Option<&mpsc::Sender<RuleCommand>>,
) -> Result<&mpsc::Sender<RuleCommand>, OpsError> {
    rules.ok_or_else(|| {
        OpsError::unavailable("rules are not running (no detector model configured)")
    })
}

/// Every rule with its state, from the rules stage.
pub async fn list(tx: &mpsc::Sender<RuleCommand>) -> Result<Vec<RuleStatus>, OpsError> {
    let (reply, rx) = oneshot::channel();
    tx.send(RuleCommand::List { reply })
        .await
        .map_err(|_| OpsError::unavailable("the rules stage has stopped"))?;
    tokio::time::timeout(RULE_REPLY_TIMEOUT, rx)
        .await
        .map_err(|_| OpsError::unavailable("the rules stage did not answer"))?
        .map_err(|_| OpsError::unavailable("the rules stage has stopped"))
}

/// Arms or disarms a rule through the rules stage; `not_found` for an unknown rule.
pub async fn set_armed(
    tx: &mpsc::Sender<RuleCommand>,
    rule: &str,
    armed: bool,
) -> Result<(), OpsError> {
    let (reply, rx) = oneshot::channel();
    tx.send(RuleCommand::SetArmed {
        rule: rule.to_owned(),
        armed,
        reply,
    })
    .await
    .map_err(|_| OpsError::unavailable("the rules stage has stopped"))?;
    tokio::time::timeout(RULE_REPLY_TIMEOUT, rx)
        .await
        .map_err(|_| OpsError::unavailable("the rules stage did not answer"))?
        .map_err(|_| OpsError::unavailable("the rules stage has stopped"))?
        .map_err(|e| OpsError::not_found(e.to_string()))
}
