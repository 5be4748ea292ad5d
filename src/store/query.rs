//! Event history queries: newest first, filtered, paginated by an opaque cursor.
//!
//! A query walks one key range backwards: the `events` tree, or one camera's slice of
//! `by_camera`, between `from` and `to` (event ids are time-ordered). The cursor is the key where
//! the last page stopped, so pages never overlap or leave gaps, whatever is written meanwhile.
//! A page stops after [`MAX_SCAN`] keys even if it is not full, so a filter that matches rarely
//! cannot make one request read the whole database; its cursor continues the walk.

use jiff::Timestamp;
use uuid::Uuid;

use super::{Store, StoreError, StoredEvent, decode_stored, keys};
use crate::events::EventKind;
use crate::telemetry::store::{self as telemetry, Undecodable};

/// The most events one page may hold.
pub const MAX_LIMIT: usize = 1000;
pub const DEFAULT_LIMIT: usize = 100;
/// The most keys one page reads.
pub const MAX_SCAN: usize = 20_000;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    pub camera: Option<String>,
    pub kind: Option<EventKind>,
    pub rule: Option<String>,
    /// Inclusive.
    pub from: Option<Timestamp>,
    /// Exclusive.
    pub to: Option<Timestamp>,
    /// 1..=[`MAX_LIMIT`]; larger values are clamped.
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

/// Where the previous page stopped: the next page starts just before this event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(Uuid);

impl Cursor {
    /// The cursor of a page that ends with the record `id`: the next page starts just before it.
    pub fn before(id: Uuid) -> Self {
        Self(id)
    }

    pub fn id(&self) -> Uuid {
        self.0
    }

    /// An opaque string for clients.
    pub fn encode(&self) -> String {
        format!("c1{}", self.0.simple())
    }

    pub fn parse(s: &str) -> Result<Self, CursorError> {
        s.strip_prefix("c1")
            .and_then(|hex| Uuid::try_parse(hex).ok())
            .map(Cursor)
            .ok_or(CursorError::NotOurs)
    }
}

/// Why a cursor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not one this API handed out (or mangled on the way back).
    #[error("not a cursor returned by this API")]
    NotOurs,
}

#[derive(Debug, Clone, Default)]
pub struct Page {
    pub events: Vec<StoredEvent>,
    /// Present when more events may follow; pass it back to get them.
    pub next_cursor: Option<Cursor>,
    /// Stored records in the walked range that do not decode (skipped, counted, logged).
    pub skipped_undecodable: usize,
}

pub(super) fn run(store: &Store, q: &EventQuery) -> Result<Page, StoreError> {
    let t = store.trees();
    let limit = q.limit.clamp(1, MAX_LIMIT);
    let lower = q.from.map_or([0u8; 16], keys::id_lower_bound);
    let mut upper = q.to.map_or([0xffu8; 16], keys::id_lower_bound);
    if let Some(Cursor(id)) = q.cursor
        && id.as_bytes() < &upper
    {
        upper = *id.as_bytes();
    }
    let mut page = Page::default();
    if lower >= upper {
        return Ok(page);
    }
    let (tree, prefix) = match &q.camera {
        Some(camera) => (&t.by_camera, keys::camera_prefix(camera)),
        None => (&t.events, Vec::new()),
    };
    let key = |bound: &[u8; 16]| [prefix.as_slice(), bound.as_slice()].concat();
    let mut iter = tree.range(key(&lower)..key(&upper)).rev();
    let mut scanned = 0;
    let mut last_key: Option<Uuid> = None;
    for kv in iter.by_ref() {
        let (k, v) = kv?;
        let id_bytes = &k[prefix.len()..];
        let Some(id) = keys::uuid_from_key(id_bytes) else {
            continue;
        };
        scanned += 1;
        last_key = Some(id);
        // The camera index holds the kind: skip other kinds without reading the event.
        if q.camera.is_some()
            && let Some(kind) = q.kind
            && v.as_ref() != kind.as_str().as_bytes()
        {
            if scanned >= MAX_SCAN {
                break;
            }
            continue;
        }
        let decoded = if q.camera.is_some() {
            match t.events.get(id_bytes)? {
                Some(v) => decode_stored(id_bytes, &v),
                // Deleted by retention between the two reads.
                None => continue,
            }
        } else {
            decode_stored(id_bytes, &v)
        };
        let stored = match decoded {
            Ok(s) => s,
            Err(e) => {
                // One bad record never fails a page: skipped and reported with the page.
                tracing::warn!(error = %e, "a stored event does not decode; skipped");
                telemetry::undecodable(Undecodable::Query);
                page.skipped_undecodable += 1;
                if scanned >= MAX_SCAN {
                    break;
                }
                continue;
            }
        };
        let event = &stored.event;
        if q.kind.is_some_and(|k| k != event.kind)
            || q.rule
                .as_ref()
                .is_some_and(|r| event.rule.as_ref() != Some(r))
        {
            if scanned >= MAX_SCAN {
                break;
            }
            continue;
        }
        page.events.push(stored);
        if page.events.len() >= limit || scanned >= MAX_SCAN {
            break;
        }
    }
    // A cursor only if the walk stopped early and something is left to walk.
    if (page.events.len() >= limit || scanned >= MAX_SCAN) && iter.next().is_some() {
        page.next_cursor = last_key.map(Cursor);
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor(Uuid::now_v7());
        assert_eq!(Cursor::parse(&c.encode()), Ok(c));
        assert!(Cursor::parse("c1xyz").is_err());
        assert!(Cursor::parse(&c.0.simple().to_string()).is_err());
    }
}
