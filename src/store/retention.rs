//! Retention: delete the oldest events by age and by total size, never one still in the outbox.
//!
//! Events are walked oldest first (ids are time-ordered) and deleted in transactions of
//! [`CHUNK`] events, each with its snapshot and camera index entry, the byte and event counters
//! adjusted in the same transaction.

use std::collections::HashSet;
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
}

impl RetentionPolicy {
    pub fn from_config(c: &super::StoreConfig) -> Self {
        Self {
            max_age: (c.retention_days > 0)
                .then(|| Duration::from_secs(u64::from(c.retention_days) * 86_400)),
            max_bytes: (c.max_size_mb > 0).then(|| c.max_size_mb * 1024 * 1024),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_by_age: u64,
    pub deleted_by_size: u64,
    /// Events old enough to go, kept because they wait in the outbox.
    pub kept_for_outbox: u64,
}

pub(super) fn run(
    store: &Store,
    policy: &RetentionPolicy,
    now: Timestamp,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    let waiting = store.outbox_ids()?;
    if let Some(age) = policy.max_age {
        let cutoff = now
            .checked_sub(jiff::SignedDuration::try_from(age).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(Timestamp::MIN);
        let bound = keys::id_lower_bound(cutoff);
        report.deleted_by_age =
            delete_oldest(store, &waiting, &mut report.kept_for_outbox, |k, _| {
                k < bound.as_slice()
            })?;
    }
    if let Some(max) = policy.max_bytes {
        let mut kept = 0;
        report.deleted_by_size =
            delete_oldest(store, &waiting, &mut kept, |_, stored| stored > max)?;
        report.kept_for_outbox = report.kept_for_outbox.max(kept);
    }
    if report.deleted_by_age + report.deleted_by_size > 0 {
        store.flush()?;
    }
    Ok(report)
}

/// Deletes events oldest first while `more(key, stored_bytes)` holds, skipping outbox entries.
fn delete_oldest(
    store: &Store,
    waiting: &HashSet<[u8; 16]>,
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
            if <[u8; 16]>::try_from(k.as_ref()).is_ok_and(|id| waiting.contains(&id)) {
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
        let freed: u64 = chunk.iter().map(|c| c.2).sum();
        (&t.events, &t.by_camera, &t.snapshots, &t.meta).transaction(
            |(events, by_camera, snapshots, meta)| {
                for (k, camera, _) in &chunk {
                    events.remove(k)?;
                    snapshots.remove(k)?;
                    if let (Some(camera), Some(id)) = (camera, keys::uuid_from_key(k)) {
                        by_camera.remove(keys::camera_key(camera, &id))?;
                    }
                }
                add_counter(meta, keys::META_STORED_BYTES, -(freed as i64))?;
                add_counter(meta, keys::META_EVENT_COUNT, -(chunk.len() as i64))?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            },
        )?;
        deleted += chunk.len() as u64;
        if done {
            return Ok(deleted);
        }
    }
}
