//! Retention: delete the oldest events by age and by total size, never one still in the outbox
//! or among its dead letters.
//!
//! Events are walked oldest first (ids are time-ordered) and deleted in transactions of
//! [`CHUNK`] events, each with its snapshot and camera index entry, the byte and event counters
//! adjusted in the same transaction. Outbox membership is checked inside that transaction
//! (`outbox_index`, `dead_letters`), so an event recorded or re-queued while retention runs is
//! never deleted from under the publisher.

use std::time::Duration;

use jiff::Timestamp;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::{Store, StoreError, add_counter, decode_stored, keys};

const CHUNK: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete events older than this (None: keep by age).
    pub max_age: Option<Duration>,
    /// Delete the oldest while event JSON and snapshots exceed this many bytes (None: no limit).
    pub max_bytes: Option<u64>,
    /// Delete audit records older than this (None: keep them).
    pub audit_max_age: Option<Duration>,
}

impl RetentionPolicy {
    pub fn from_config(c: &super::StoreConfig) -> Self {
        Self {
            max_age: (c.retention_days > 0)
                .then(|| Duration::from_secs(u64::from(c.retention_days) * 86_400)),
            max_bytes: (c.max_size_mb > 0).then(|| c.max_size_mb * 1024 * 1024),
            audit_max_age: (c.audit_retention_days > 0)
                .then(|| Duration::from_secs(u64::from(c.audit_retention_days) * 86_400)),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_by_age: u64,
    pub deleted_by_size: u64,
    /// Events old enough to go, kept because they wait in the outbox or its dead letters.
    pub kept_for_outbox: u64,
    pub audit_deleted: u64,
}

pub(super) fn run(
    store: &Store,
    policy: &RetentionPolicy,
    now: Timestamp,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    if let Some(age) = policy.max_age {
        let cutoff = now
            .checked_sub(jiff::SignedDuration::try_from(age).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(Timestamp::MIN);
        let bound = keys::id_lower_bound(cutoff);
        report.deleted_by_age = delete_oldest(store, &mut report.kept_for_outbox, |k, _| {
            k < bound.as_slice()
        })?;
    }
    if let Some(max) = policy.max_bytes {
        let mut kept = 0;
        report.deleted_by_size = delete_oldest(store, &mut kept, |_, stored| stored > max)?;
        report.kept_for_outbox = report.kept_for_outbox.max(kept);
    }
    if report.deleted_by_age + report.deleted_by_size > 0 {
        store.flush()?;
    }
    if let Some(age) = policy.audit_max_age {
        report.audit_deleted = super::audit::delete_older(store, now, age)?;
    }
    Ok(report)
}

/// Deletes events oldest first while `more(key, stored_bytes)` holds, keeping those that await
/// delivery.
fn delete_oldest(
    store: &Store,
    kept: &mut u64,
    more: impl Fn(&[u8], u64) -> bool,
) -> Result<u64, StoreError> {
    let t = store.trees();
    let mut deleted = 0u64;
    let mut after: Option<sled::IVec> = None;
    loop {
        let mut stored = keys::u64_value(t.meta.get(keys::META_STORED_BYTES)?.as_deref());
        let mut chunk = Vec::new();
        let range = match &after {
            Some(k) => t.events.range::<&[u8], _>((
                std::ops::Bound::Excluded(k.as_ref()),
                std::ops::Bound::Unbounded,
            )),
            None => t.events.iter(),
        };
        let mut done = true;
        for kv in range {
            let (k, v) = kv?;
            if !more(&k, stored) {
                break;
            }
            after = Some(k.clone());
            // A first look outside the transaction; the transaction looks again.
            if keys::uuid_from_key(&k).is_some_and(|id| store.awaits_delivery(&id).unwrap_or(true))
            {
                *kept += 1;
                continue;
            }
            let (snapshot_len, camera) = match decode_stored(&k, &v) {
                Ok(s) => (s.snapshot_len, s.event.camera),
                Err(_) => (t.snapshots.get(&k)?.map_or(0, |s| s.len()), None),
            };
            let bytes = (v.len() + snapshot_len) as u64;
            stored = stored.saturating_sub(bytes);
            chunk.push((k, camera, bytes));
            if chunk.len() >= CHUNK {
                done = false;
                break;
            }
        }
        if chunk.is_empty() {
            return Ok(deleted);
        }
        let (removed, late) = (
            &t.events,
            &t.by_camera,
            &t.snapshots,
            &t.meta,
            &t.outbox_index,
            &t.dead_letters,
            &t.outbox,
        )
            .transaction(
                |(events, by_camera, snapshots, meta, index, dead, outbox)| {
                    let (mut removed, mut late, mut freed) = (0u64, 0u64, 0u64);
                    for (k, camera, bytes) in &chunk {
                        // Queued for delivery since the first look (recorded, re-queued). An index
                        // entry whose outbox entry is gone is stale (see `outbox_remove_all`).
                        let queued = match index.get(k)? {
                            Some(seq) => outbox.get(&seq)?.is_some(),
                            None => false,
                        };
                        if queued || dead.get(k)?.is_some() {
                            late += 1;
                            continue;
                        }
                        if events.remove(k)?.is_none() {
                            continue;
                        }
                        snapshots.remove(k)?;
                        if let (Some(camera), Some(id)) = (camera, keys::uuid_from_key(k)) {
                            by_camera.remove(keys::camera_key(camera, &id))?;
                        }
                        removed += 1;
                        freed += bytes;
                    }
                    add_counter(meta, keys::META_STORED_BYTES, -(freed as i64))?;
                    add_counter(meta, keys::META_EVENT_COUNT, -(removed as i64))?;
                    Ok::<_, ConflictableTransactionError<StoreError>>((removed, late))
                },
            )?;
        deleted += removed;
        *kept += late;
        if done {
            return Ok(deleted);
        }
    }
}
