//! Rules at run time: list them with their state, arm and disarm them (through the rules stage).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{ErrorKind, OpsError};
use crate::control::{RuleCommand, RuleStatus, SetArmedError};

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

/// Arms or disarms a rule through the rules stage; `not_found` for an unknown rule, `not_saved`
/// (internal) when the change holds but could not be kept for a restart.
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
        .map_err(|e| match e {
            SetArmedError::NoSuchRule(_) => OpsError::not_found(e.to_string()),
            SetArmedError::NotSaved(why) => OpsError::new(
                ErrorKind::Internal,
                "not_saved",
                format!(
                    "rule {rule:?} is {} now, but the change could not be saved and is lost on restart: {why}",
                    if armed { "armed" } else { "disarmed" }
                ),
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rules stage that answers every arm command with `answer`.
    fn stage(answer: fn() -> SetArmedError) -> mpsc::Sender<RuleCommand> {
        let (tx, mut rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                if let RuleCommand::SetArmed { reply, .. } = cmd {
                    let _ = reply.send(Err(answer()));
                }
            }
        });
        tx
    }

    #[tokio::test]
    async fn an_unknown_rule_is_not_found_an_unsaved_change_is_internal() {
        let unknown = stage(|| SetArmedError::NoSuchRule("x".into()));
        let e = set_armed(&unknown, "x", false).await.unwrap_err();
        assert_eq!((e.kind, e.code), (ErrorKind::NotFound, "not_found"));
        let unsaved = stage(|| SetArmedError::NotSaved("disk full".into()));
        let e = set_armed(&unsaved, "fence", false).await.unwrap_err();
        assert_eq!((e.kind, e.code), (ErrorKind::Internal, "not_saved"));
        assert!(
            e.reason.contains("disarmed now") && e.reason.contains("disk full"),
            "{}",
            e.reason
        );
    }
}
