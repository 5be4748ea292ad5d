//! The outbox's dead letters: list them, re-queue one or all (for the HTTP API and the CLI).
//! Blocking (sled): transports call these off their async workers.

use serde_json::{Value, json};
use uuid::Uuid;

use super::OpsError;
use crate::store::Store;

/// The most dead letters one listing returns.
pub const MAX_LISTED: usize = 10_000;

/// An event id as given by a caller, or why it is none (`parameter` names where it came from).
pub fn parse_event_id(parameter: &str, id: &str) -> Result<Uuid, OpsError> {
    Uuid::try_parse(id).map_err(|_| {
        OpsError::bad_parameter(parameter, format!("{id:?} is not an event id (a UUID)"))
    })
}

/// `{"dead_letters": [...]}`, oldest first.
pub fn dead_letters_json(store: &Store) -> Result<Value, OpsError> {
    let letters = store.dead_letters(MAX_LISTED).map_err(OpsError::internal)?;
    Ok(json!({ "dead_letters": letters }))
}

/// Puts one dead letter (`Some(id)`) or every one back in the outbox; how many.
pub fn requeue(store: &Store, id: Option<&Uuid>) -> Result<u64, OpsError> {
    match id {
        Some(id) => match store.requeue(id).map_err(OpsError::internal)? {
            true => Ok(1),
            false => Err(OpsError::not_found(format!(
                "no dead letter for event {id}"
            ))),
        },
        None => Ok(store.requeue_all().map_err(OpsError::internal)? as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, EventKind, RecordedEvent};
    use crate::store::StoreConfig;
    use crate::store::outbox::DeadLetterReason;

    #[test]
    fn dead_letters_are_listed_and_requeued_one_or_all() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            min_free_mb: 1,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), &config).unwrap();
        let events: Vec<RecordedEvent> = (0..3)
            .map(|_| RecordedEvent {
                event: Event::new(EventKind::LineCrossed, "kg", "gate", jiff::Timestamp::now()),
                snapshot: None,
            })
            .collect();
        store.record(&events, true).unwrap();
        for entry in store.outbox_after(None, 10).unwrap() {
            store
                .dead_letter(entry.seq, DeadLetterReason::TooLarge, "test", 1)
                .unwrap();
        }
        let listed = dead_letters_json(&store).unwrap();
        assert_eq!(
            listed["dead_letters"].as_array().unwrap().len(),
            3,
            "{listed}"
        );

        let first = &events[0].event.id;
        assert_eq!(requeue(&store, Some(first)).unwrap(), 1);
        let again = requeue(&store, Some(first)).unwrap_err();
        assert_eq!(again.code, "not_found");
        assert!(
            again.reason.contains(&first.to_string()),
            "{}",
            again.reason
        );
        assert_eq!(requeue(&store, None).unwrap(), 2);
        assert_eq!(
            dead_letters_json(&store).unwrap()["dead_letters"],
            json!([])
        );

        let bad = parse_event_id("id", "nope").unwrap_err();
        assert_eq!(
            (bad.code, bad.parameter.as_deref()),
            ("bad_parameter", Some("id"))
        );
        assert_eq!(parse_event_id("id", &first.to_string()).unwrap(), *first);
    }
}
