//! Schema versions and the migrations between them.
//!
//! - **Version 1** (kinderwatch before the MQTT outbox): `events` (id → plain event JSON),
//!   `snapshots` as today, a `camera_index` tree keyed `camera ∥ 0x00 ∥ event id`, and `meta`
//!   with only the format and `schema_version`. A camera id that is a prefix of another (`gate`,
//!   `gate-2`) could not be range-scanned exactly in that layout.
//! - **Version 2**: event values carry a header with the snapshot length, `by_camera` is keyed
//!   `len ∥ camera ∥ event id` (value: the event kind), the `outbox` tree, and the byte and event counters in `meta`
//!   that retention by size reads.
//! - **Version 3**: the `outbox_index` tree (event id → outbox sequence), so that retention and a
//!   retried write check outbox membership inside their transactions; the `dead_letters` and
//!   `audit` trees (empty in a migrated database).
//!
//! A migration runs in one go at open; it is idempotent (rebuilding an index and recounting), so
//! a crash halfway repeats it on the next start. The version is written last.

use std::path::Path;

use super::{StoreError, keys};
use crate::events::Event;

pub(super) fn bring_up_to_date(db: &sled::Db, dir: &Path) -> Result<(), StoreError> {
    let meta = db.open_tree(keys::META)?;
    let events = db.open_tree(keys::EVENTS)?;
    match meta.get(keys::META_FORMAT)? {
        Some(f) if f.as_ref() == keys::FORMAT => {}
        Some(_) => {
            return Err(StoreError::Foreign {
                dir: dir.to_owned(),
                detail: "its format marker names another program".into(),
            });
        }
        None => {
            let user_trees = db
                .tree_names()
                .into_iter()
                .filter(|n| n.as_ref() != b"__sled__default")
                .filter(|n| db.open_tree(n).map(|t| !t.is_empty()).unwrap_or(true))
                .count();
            if !events.is_empty() || user_trees > 0 || !db.is_empty() {
                return Err(StoreError::Foreign {
                    dir: dir.to_owned(),
                    detail: "a sled database without kinderwatch's format marker".into(),
                });
            }
            meta.insert(keys::META_FORMAT, keys::FORMAT)?;
            meta.insert(keys::META_SCHEMA, &super::SCHEMA_VERSION.to_be_bytes())?;
            db.flush()?;
            return Ok(());
        }
    }
    let version = meta
        .get(keys::META_SCHEMA)?
        .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
        .map(u32::from_be_bytes)
        .unwrap_or(1);
    if version > super::SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            dir: dir.to_owned(),
            found: version,
            supported: super::SCHEMA_VERSION,
        });
    }
    if version < 2 {
        v1_to_v2(db)?;
        meta.insert(keys::META_SCHEMA, &2u32.to_be_bytes())?;
        db.flush()?;
        tracing::info!(dir = %dir.display(), from = version, to = 2, "event database migrated");
    }
    if version < 3 {
        v2_to_v3(db)?;
        meta.insert(keys::META_SCHEMA, &3u32.to_be_bytes())?;
        db.flush()?;
        tracing::info!(dir = %dir.display(), from = version.max(2), to = 3, "event database migrated");
    }
    Ok(())
}

/// Builds the outbox index from the outbox.
fn v2_to_v3(db: &sled::Db) -> Result<(), StoreError> {
    let outbox = db.open_tree(keys::OUTBOX)?;
    let index = db.open_tree(keys::OUTBOX_INDEX)?;
    index.clear()?;
    let mut batch = sled::Batch::default();
    for kv in outbox.iter() {
        let (seq, id) = kv?;
        batch.insert(id, seq);
    }
    index.apply_batch(batch)?;
    Ok(())
}

/// Rewrites event values with the version-2 header, rebuilds the camera index in the version-2
/// layout and counts bytes and events. Values that already have the header (a migration cut
/// short) are kept as they are.
fn v1_to_v2(db: &sled::Db) -> Result<(), StoreError> {
    let events = db.open_tree(keys::EVENTS)?;
    let snapshots = db.open_tree(keys::SNAPSHOTS)?;
    let by_camera = db.open_tree(keys::BY_CAMERA)?;
    let meta = db.open_tree(keys::META)?;
    by_camera.clear()?;
    let (mut bytes, mut count) = (0u64, 0u64);
    let mut index = sled::Batch::default();
    let mut values = sled::Batch::default();
    for kv in events.iter() {
        let (k, v) = kv?;
        let (value, json) = match keys::split_event_value(&v) {
            Some((_, json)) => (v.to_vec(), json.to_vec()),
            None => {
                let snapshot_len = snapshots.get(&k)?.map_or(0, |s| s.len());
                (keys::event_value(&v, snapshot_len), v.to_vec())
            }
        };
        let event: Event = serde_json::from_slice(&json).map_err(|e| StoreError::Decode {
            id: hex::encode(&k),
            detail: e.to_string(),
        })?;
        if let Some(camera) = &event.camera {
            index.insert(keys::camera_key(camera, &event.id), event.kind.as_str());
        }
        let snapshot_len = keys::split_event_value(&value).map_or(0, |(n, _)| n);
        bytes += (value.len() + snapshot_len) as u64;
        count += 1;
        values.insert(k, value);
    }
    events.apply_batch(values)?;
    by_camera.apply_batch(index)?;
    meta.insert(keys::META_STORED_BYTES, &bytes.to_be_bytes())?;
    meta.insert(keys::META_EVENT_COUNT, &count.to_be_bytes())?;
    db.drop_tree("camera_index")?;
    Ok(())
}
