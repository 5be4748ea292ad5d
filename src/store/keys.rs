//! Key layouts of the sled trees (schema version 3).
//!
//! - `events`: event id (16 bytes, UUID v7: the first 6 bytes are the event time in Unix
//!   milliseconds, big-endian) → [`VALUE_TAG`] ∥ snapshot length (u32 big-endian, 0: none) ∥
//!   event JSON. Byte order is time order; the length lets a page say which events have a
//!   snapshot, and retention count bytes, without reading the snapshots.
//! - `by_camera`: camera length (1 byte) ∥ camera ∥ event id → event kind (so a kind filter
//!   skips other events without reading them). The length prefix keeps
//!   one camera's keys from running into another's whose id starts the same.
//! - `snapshots`: event id → JPEG.
//! - `outbox`: sequence (u64 big-endian) → event id.
//! - `outbox_index`: event id → sequence: whether an event waits in the outbox, read by retention
//!   inside its delete transaction and by a retried write (schema version 3).
//! - `dead_letters`: event id → [`crate::store::DeadLetter`] JSON: outbox entries taken out of
//!   delivery (refused, too large, unreadable) until an admin re-queues them (schema version 3).
//! - `audit`: record id (UUID v7, time-ordered) → [`crate::store::AuditRecord`] JSON
//!   (schema version 3).
//! - `meta`: [`META_FORMAT`], [`META_SCHEMA`], [`META_STORED_BYTES`], [`META_EVENT_COUNT`].

use jiff::Timestamp;
use uuid::Uuid;

pub const EVENTS: &str = "events";
pub const BY_CAMERA: &str = "by_camera";
pub const SNAPSHOTS: &str = "snapshots";
pub const OUTBOX: &str = "outbox";
pub const META: &str = "meta";
pub const OUTBOX_INDEX: &str = "outbox_index";
pub const DEAD_LETTERS: &str = "dead_letters";
pub const AUDIT: &str = "audit";

/// Marks a sled database as ours; a database without it is someone else's.
pub const META_FORMAT: &[u8] = b"format";
pub const FORMAT: &[u8] = b"kinderwatch-events";
pub const META_SCHEMA: &[u8] = b"schema_version";
/// Bytes of event JSON and snapshots held: what retention by size counts.
pub const META_STORED_BYTES: &[u8] = b"stored_bytes";
pub const META_EVENT_COUNT: &[u8] = b"event_count";

/// The smallest event id at or after `t` (millisecond resolution).
pub fn id_lower_bound(t: Timestamp) -> [u8; 16] {
    let ms = t.as_millisecond().max(0) as u64;
    let mut k = [0u8; 16];
    k[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    k
}

/// The event time encoded in a UUID v7 key, in Unix milliseconds.
pub fn id_millis(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&key[..6]);
    u64::from_be_bytes(b)
}

pub fn id_time(key: &[u8]) -> Timestamp {
    Timestamp::from_millisecond(id_millis(key) as i64).unwrap_or(Timestamp::UNIX_EPOCH)
}

pub fn uuid_from_key(key: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(key).ok()
}

/// `len ∥ camera`: the prefix of one camera's keys in `by_camera`.
pub fn camera_prefix(camera: &str) -> Vec<u8> {
    let bytes = camera.as_bytes();
    let len = bytes.len().min(255);
    let mut k = Vec::with_capacity(1 + len + 16);
    k.push(len as u8);
    k.extend_from_slice(&bytes[..len]);
    k
}

pub fn camera_key(camera: &str, id: &Uuid) -> Vec<u8> {
    let mut k = camera_prefix(camera);
    k.extend_from_slice(id.as_bytes());
    k
}

/// First byte of an `events` value in schema version 2.
pub const VALUE_TAG: u8 = 2;
const HEADER: usize = 5;

pub fn event_value(json: &[u8], snapshot_len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + json.len());
    v.push(VALUE_TAG);
    v.extend_from_slice(&(snapshot_len.min(u32::MAX as usize) as u32).to_be_bytes());
    v.extend_from_slice(json);
    v
}

/// `(snapshot length, event JSON)` of an `events` value; `None` if it is not a version-2 value.
pub fn split_event_value(v: &[u8]) -> Option<(usize, &[u8])> {
    if v.len() < HEADER || v[0] != VALUE_TAG {
        return None;
    }
    let len = u32::from_be_bytes([v[1], v[2], v[3], v[4]]) as usize;
    Some((len, &v[HEADER..]))
}

pub fn u64_value(v: Option<&[u8]>) -> u64 {
    v.and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_order_like_event_ids() {
        let t = Timestamp::from_millisecond(1_700_000_000_123).unwrap();
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, 1_700_000_000, 123_456_789);
        let id = Uuid::new_v7(ts);
        assert_eq!(id_millis(id.as_bytes()), 1_700_000_000_123);
        assert!(id_lower_bound(t).as_slice() <= id.as_bytes().as_slice());
        let next = Timestamp::from_millisecond(1_700_000_000_124).unwrap();
        assert!(id_lower_bound(next).as_slice() > id.as_bytes().as_slice());
        assert_eq!(id_time(id.as_bytes()), t);
    }

    #[test]
    fn camera_prefixes_do_not_overlap() {
        let id = Uuid::nil();
        assert!(!camera_key("gate-1", &id).starts_with(&camera_prefix("gate")));
        assert!(camera_key("gate", &id).starts_with(&camera_prefix("gate")));
    }
}
