//! The audit trail: who read the event history and the children's pictures, and who armed or
//! disarmed a rule, over HTTP or MQTT, when, and with what result.
//!
//! Records live in the `audit` tree keyed by a UUID v7 (time-ordered), with their own retention
//! (`store.audit_retention_days`). A record is written before the answer leaves: a request whose
//! record cannot be written (the disk below its reserve) is refused, so no picture is shown
//! without a trace.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Cursor, Store, StoreError, keys};
use crate::telemetry::store::{self as telemetry, Undecodable};

/// The most records one page holds.
pub const MAX_LIMIT: usize = 1000;

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A page of the event history.
    QueryEvents,
    /// One event by id.
    GetEvent,
    /// A snapshot (a picture) read.
    ReadSnapshot,
    Arm,
    Disarm,
    /// The audit trail itself read.
    ReadAudit,
    /// Dead letters put back into the outbox.
    Requeue,
    /// A camera's zones, masks and rules saved from the console's editor.
    EditPerimeter,
    /// A camera watched live (the console's tiles and editor), once per caller and camera every
    /// five minutes.
    ViewLive,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    pub id: Uuid,
    #[schema(value_type = String, format = DateTime)]
    pub time: Timestamp,
    /// `http` or `mqtt`.
    pub channel: String,
    /// The token's configured name; for MQTT queries without a token, `mqtt:<client topic>`.
    pub caller: String,
    pub action: AuditAction,
    /// The query string, event id or rule id.
    pub target: String,
    /// `ok`, or the error code answered.
    pub result: String,
    /// E.g. how many events a page returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditRecord {
    pub fn new(
        channel: &str,
        caller: &str,
        action: AuditAction,
        target: impl Into<String>,
    ) -> Self {
        Self {
            // Ordered by creation within the process, even within one millisecond.
            id: Uuid::now_v7(),
            time: Timestamp::now(),
            channel: channel.to_owned(),
            caller: caller.to_owned(),
            action,
            target: target.into(),
            result: "ok".into(),
            detail: None,
        }
    }
}

/// A page request, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub caller: Option<String>,
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

impl Store {
    /// Writes an audit record and flushes it to disk before returning, so that no answer leaves
    /// without its record. Refused below the free-space reserve, like events.
    pub fn audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).expect("audit records serialise");
        self.check_free_space(value.len() as u64)?;
        self.inner
            .audit
            .insert(record.id.as_bytes(), value)
            .map_err(|e| {
                telemetry::audit_error();
                StoreError::Sled(e)
            })?;
        self.inner.db.flush()?;
        telemetry::audit_recorded();
        Ok(())
    }

    /// One page of audit records, newest first, and the cursor of the next.
    pub fn audit_query(
        &self,
        q: &AuditQuery,
    ) -> Result<(Vec<AuditRecord>, Option<Cursor>), StoreError> {
        let limit = q.limit.clamp(1, MAX_LIMIT);
        let lower = q.from.map_or([0u8; 16], keys::id_lower_bound);
        let mut upper = q.to.map_or([0xffu8; 16], keys::id_lower_bound);
        if let Some(c) = q.cursor
            && c.id().as_bytes() < &upper
        {
            upper = *c.id().as_bytes();
        }
        let mut out = Vec::new();
        if lower >= upper {
            return Ok((out, None));
        }
        let mut iter = self.inner.audit.range(lower..upper).rev();
        let mut last = None;
        for kv in iter.by_ref() {
            let (k, v) = kv?;
            last = keys::uuid_from_key(&k);
            let Ok(r) = serde_json::from_slice::<AuditRecord>(&v) else {
                telemetry::undecodable(Undecodable::Audit);
                continue;
            };
            if q.caller.as_ref().is_some_and(|c| *c != r.caller) {
                continue;
            }
            out.push(r);
            if out.len() >= limit {
                break;
            }
        }
        let next = (out.len() >= limit && iter.next().is_some())
            .then_some(last)
            .flatten()
            .map(Cursor::before);
        Ok((out, next))
    }

    pub fn audit_len(&self) -> usize {
        self.inner.audit.len()
    }
}

/// Deletes audit records older than `age`; how many.
pub(super) fn delete_older(
    store: &Store,
    now: Timestamp,
    age: std::time::Duration,
) -> Result<u64, StoreError> {
    let cutoff = now
        .checked_sub(jiff::SignedDuration::try_from(age).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN);
    let bound = keys::id_lower_bound(cutoff);
    let tree = &store.inner.audit;
    let mut n = 0;
    loop {
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for kv in tree.range(..bound).take(1000) {
            let (k, _) = kv?;
            batch.remove(k);
            in_batch += 1;
        }
        if in_batch == 0 {
            return Ok(n);
        }
        tree.apply_batch(batch)?;
        n += in_batch;
    }
}
