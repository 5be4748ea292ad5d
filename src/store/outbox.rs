//! The outbox (events waiting for the broker's PUBACK) and its dead letters.
//!
//! An outbox entry is `outbox[seq] = event id` with `outbox_index[event id] = seq` beside it,
//! both written in the event's own transaction and removed together. An entry that cannot be
//! delivered (the broker refused it too often, it is larger than the broker accepts, or its
//! event does not decode) moves to `dead_letters[event id]` in one transaction, so the entries
//! behind it go on; an admin re-queues it (at the end of the outbox) once the cause is fixed.
//! Retention keeps the events of both (see [`super::retention`]).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use uuid::Uuid;

use super::{Store, StoreError, decode_stored, keys};
use crate::events::Event;
use crate::telemetry::store::{self as telemetry, Undecodable};

/// One event waiting in the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub seq: u64,
    pub event: Event,
    /// Bytes of the event's snapshot; 0 when it has none.
    pub snapshot_len: usize,
}

/// Why an entry left delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// The broker answered its PUBACK with an error reason (an ACL, a quota) too many times.
    Refused,
    /// The alert is larger than the broker's maximum packet size.
    TooLarge,
    /// The stored event does not decode.
    Unreadable,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::TooLarge => "too_large",
            Self::Unreadable => "unreadable",
        }
    }
}

/// An outbox entry taken out of delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub event_id: Uuid,
    /// Its outbox sequence when it was taken out.
    pub seq: u64,
    pub reason: DeadLetterReason,
    /// The broker's reason code, the sizes, or the decode error.
    pub detail: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When it was taken out.
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

impl Store {
    /// How many times the outbox has been read since the store was opened.
    pub fn outbox_reads(&self) -> u64 {
        self.inner
            .outbox_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Up to `max` outbox entries after sequence `after` (exclusive), oldest first. An entry whose
    /// event does not decode moves to the dead letters (counted, logged) and the read goes on; one
    /// whose event is gone is removed.
    pub fn outbox_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.inner
            .outbox_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let start = after.map_or(0, |s| s.saturating_add(1));
        let mut out = Vec::new();
        for kv in self.inner.outbox.range(start.to_be_bytes()..) {
            if out.len() >= max {
                break;
            }
            let (k, id) = kv?;
            if let Some(entry) = self.entry(keys::u64_value(Some(&k)), &id)? {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// The entry `seq`, if it is still in the outbox (for a retry after a refusal).
    pub fn outbox_get(&self, seq: u64) -> Result<Option<OutboxEntry>, StoreError> {
        match self.inner.outbox.get(seq.to_be_bytes())? {
            Some(id) => self.entry(seq, &id),
            None => Ok(None),
        }
    }

    fn entry(&self, seq: u64, id: &[u8]) -> Result<Option<OutboxEntry>, StoreError> {
        let Some(value) = self.inner.events.get(id)? else {
            tracing::warn!(
                seq,
                "outbox entry without its event (deleted outside kinderwatch?); removed"
            );
            self.outbox_remove(seq)?;
            return Ok(None);
        };
        match decode_stored(id, &value) {
            Ok(stored) => Ok(Some(OutboxEntry {
                seq,
                event: stored.event,
                snapshot_len: stored.snapshot_len,
            })),
            Err(e) => {
                tracing::error!(seq, error = %e, "an outbox entry does not decode; moved to the dead letters, the entries behind it go on");
                telemetry::undecodable(Undecodable::Outbox);
                match self.dead_letter(seq, DeadLetterReason::Unreadable, &e.to_string(), 0) {
                    Ok(_) => {}
                    // Skipped all the same: it must not fail the reads of the entries behind it.
                    Err(e) => {
                        tracing::warn!(seq, error = %e, "the unreadable entry could not be moved; skipped")
                    }
                }
                Ok(None)
            }
        }
    }

    /// Removes an entry once the broker acknowledged it. Not flushed at once: after a crash the
    /// entry may be published again (at-least-once, same event id).
    pub fn outbox_remove(&self, seq: u64) -> Result<(), StoreError> {
        self.outbox_remove_all(&[seq])
    }

    /// Removes acknowledged entries. Not a transaction: sled 0.34's transactions stop every other
    /// operation on the database while they run, which halved the drain rate of a backlog. The
    /// outbox entry goes first, then its index entry (compare-and-swap: only if it still points
    /// here; a re-queued event has a new sequence). A crash between the two leaves an index entry
    /// without its outbox entry: retention checks the outbox too and treats it as gone.
    pub fn outbox_remove_all(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let i = &self.inner;
        for seq in seqs {
            let seq = seq.to_be_bytes();
            if let Some(id) = i.outbox.remove(seq)? {
                // Err: it points elsewhere now, or is already gone.
                let _ = i
                    .outbox_index
                    .compare_and_swap(&id, Some(&seq[..]), None::<&[u8]>)?;
            }
        }
        Ok(())
    }

    /// Removes index entries whose outbox entry is gone (a crash inside `outbox_remove_all`); at
    /// open, while the index is as small as the outbox.
    pub(super) fn sweep_outbox_index(&self) -> Result<usize, StoreError> {
        let i = &self.inner;
        let mut stale = 0;
        for kv in i.outbox_index.iter() {
            let (id, seq) = kv?;
            if !i.outbox.contains_key(&seq)? {
                let _ = i
                    .outbox_index
                    .compare_and_swap(&id, Some(&seq), None::<&[u8]>)?;
                stale += 1;
            }
        }
        Ok(stale)
    }

    pub fn outbox_len(&self) -> usize {
        self.inner.outbox.len()
    }

    /// Writes the outbox depth gauge (the store owns it; the publisher asks after removing what
    /// the broker acknowledged). Walks the tree: at most about once a second.
    pub fn refresh_outbox_depth(&self) {
        telemetry::outbox_depth(self.outbox_len());
    }

    /// Resolves the next time events are added to the outbox.
    pub async fn outbox_changed(&self) {
        self.inner.outbox_changed.notified().await
    }

    /// The time of the oldest event still in the outbox.
    pub fn outbox_oldest(&self) -> Result<Option<Timestamp>, StoreError> {
        Ok(self.inner.outbox.first()?.map(|(_, id)| keys::id_time(&id)))
    }

    /// Whether the event waits in the outbox or among the dead letters.
    pub fn awaits_delivery(&self, id: &Uuid) -> Result<bool, StoreError> {
        let i = &self.inner;
        let in_outbox = match i.outbox_index.get(id.as_bytes())? {
            Some(seq) => i.outbox.contains_key(seq)?,
            None => false,
        };
        Ok(in_outbox || i.dead_letters.contains_key(id.as_bytes())?)
    }

    /// Moves outbox entry `seq` to the dead letters; `None` if it was no longer in the outbox.
    pub fn dead_letter(
        &self,
        seq: u64,
        reason: DeadLetterReason,
        detail: &str,
        attempts: u32,
    ) -> Result<Option<DeadLetter>, StoreError> {
        let i = &self.inner;
        let now = Timestamp::now();
        let moved = (&i.outbox, &i.outbox_index, &i.dead_letters).transaction(
            |(outbox, index, dead)| {
                let Some(id) = outbox.remove(&seq.to_be_bytes())? else {
                    return Ok(None);
                };
                index.remove(&id)?;
                let letter = DeadLetter {
                    event_id: keys::uuid_from_key(&id).unwrap_or_default(),
                    seq,
                    reason,
                    detail: detail.to_owned(),
                    attempts,
                    at: now,
                };
                dead.insert(
                    &id,
                    serde_json::to_vec(&letter).expect("dead letters serialise"),
                )?;
                Ok::<_, ConflictableTransactionError<StoreError>>(Some(letter))
            },
        )?;
        if moved.is_some() {
            let waiting = i
                .dead_letter_count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            i.db.flush()?;
            crate::telemetry::mqtt::dead_lettered(reason.as_str(), waiting);
        }
        Ok(moved)
    }

    /// Dead letters in their old outbox order (the first `max`).
    pub fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.dead_letters.iter() {
            let (k, v) = kv?;
            match serde_json::from_slice::<DeadLetter>(&v) {
                Ok(d) => out.push(d),
                Err(e) => {
                    tracing::warn!(id = %hex::encode(&k), error = %e, "a dead letter does not decode")
                }
            }
        }
        out.sort_by_key(|d| d.seq);
        out.truncate(max);
        Ok(out)
    }

    /// How many dead letters wait (a counter: no tree walk).
    pub fn dead_letter_len(&self) -> usize {
        self.inner
            .dead_letter_count
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Puts a dead letter back at the end of the outbox; `false` if there is no such dead letter.
    pub fn requeue(&self, id: &Uuid) -> Result<bool, StoreError> {
        let i = &self.inner;
        // See `Store::record`: taken and committed in order.
        let _order = i.outbox_order.lock().unwrap_or_else(|p| p.into_inner());
        let seq = i.db.generate_id()?;
        let done = (&i.outbox, &i.outbox_index, &i.dead_letters).transaction(
            |(outbox, index, dead)| {
                if dead.remove(id.as_bytes().as_slice())?.is_none() {
                    return Ok(false);
                }
                outbox.insert(&seq.to_be_bytes(), id.as_bytes().as_slice())?;
                index.insert(id.as_bytes().as_slice(), &seq.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            },
        )?;
        if done {
            let waiting = i
                .dead_letter_count
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(1);
            crate::telemetry::mqtt::dead_letters(waiting);
            i.db.flush()?;
            i.outbox_changed.notify_one();
        }
        Ok(done)
    }

    /// Re-queues every dead letter, in their old outbox order; how many.
    pub fn requeue_all(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for letter in self.dead_letters(usize::MAX)? {
            if self.requeue(&letter.event_id)? {
                n += 1;
            }
        }
        Ok(n)
    }
}
