//! The daemon's channels, in one table: each with its capacity and what happens when it is full.
//! A channel that drops counts each drop in the metric named here (declared in
//! [`crate::telemetry`]; the sending stage records it).
//! The camera → pool hop is not a channel but each camera's one-frame slot (latest wins).

use tokio::sync::mpsc;

/// What a sender does when the channel is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// The sender waits (with a deadline of its own where a caller waits behind it).
    Wait,
    /// The new item is dropped and counted: a stage never blocks on a slower one.
    DropNewest,
    /// The new item replaces the one waiting, which is counted as overwritten.
    ReplaceOldest,
}

/// One channel of the stage graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub name: &'static str,
    /// From → to, for the docs and the log.
    pub from: &'static str,
    pub to: &'static str,
    pub capacity: usize,
    pub when_full: WhenFull,
    /// The counter of what is dropped or overwritten (`None` for a waiting link).
    pub drops: Option<&'static str>,
}

impl Link {
    /// A bounded channel of this link's capacity.
    pub fn channel<T>(&self) -> (mpsc::Sender<T>, mpsc::Receiver<T>) {
        mpsc::channel(self.capacity.max(1))
    }

    /// This link with another capacity (from the config).
    pub const fn with_capacity(self, capacity: usize) -> Self {
        Self { capacity, ..self }
    }
}

/// Each camera's latest frame, to the detector pool (the pool's motion gate admits it first).
pub const FRAMES: Link = Link {
    name: "frames",
    from: "camera/<id>",
    to: "detector-<n>",
    capacity: 1,
    when_full: WhenFull::ReplaceOldest,
    drops: Some("kinderwatch_detect_frames_dropped_total"),
};

/// Inferred frames, to the rules (capacity: `detector.output_queue`).
pub const DETECTIONS: Link = Link {
    name: "detections",
    from: "detector-<n>",
    to: "rules",
    capacity: 64,
    when_full: WhenFull::DropNewest,
    drops: Some("kinderwatch_detect_frames_dropped_total"),
};

/// Rule and health events with their snapshots, to the recorder.
pub const EVENTS: Link = Link {
    name: "events",
    from: "rules, health/<id>",
    to: "recorder",
    capacity: 256,
    when_full: WhenFull::DropNewest,
    drops: Some("kinderwatch_events_dropped_total"),
};

/// Events the store could not write yet, to the publisher, which sends them at once.
pub const LIVE_ALERTS: Link = Link {
    name: "live_alerts",
    from: "recorder",
    to: "publisher",
    capacity: 1024,
    when_full: WhenFull::DropNewest,
    drops: Some("kinderwatch_alerts_live_dropped_total"),
};

/// Arm, disarm and list, from the API and MQTT, to the rules (each caller waits up to its own
/// deadline for the reply).
pub const RULE_COMMANDS: Link = Link {
    name: "rule_commands",
    from: "api, publisher",
    to: "rules",
    capacity: 16,
    when_full: WhenFull::Wait,
    drops: None,
};

/// New compiled rules from a live reload, to the rules (the reloader waits for them to apply).
pub const RULES_RELOAD: Link = Link {
    name: "rules_reload",
    from: "main",
    to: "rules",
    capacity: 1,
    when_full: WhenFull::Wait,
    drops: None,
};

/// The console's rule editor, to the owner of the config file (the main loop, which reads and
/// saves it and applies the change; the API waits for each answer up to its request timeout).
pub const CONFIG_COMMANDS: Link = Link {
    name: "config_commands",
    from: "api (console editor)",
    to: "main",
    capacity: 4,
    when_full: WhenFull::Wait,
    drops: None,
};

/// Events once stored, to the console's live event streams (a broadcast: a stream that falls
/// behind skips the oldest and reloads its list).
pub const RECORDED: Link = Link {
    name: "recorded",
    from: "recorder",
    to: "api (event streams)",
    capacity: 256,
    when_full: WhenFull::ReplaceOldest,
    drops: Some("kinderwatch_console_stream_skipped_total"),
};

/// Why a stage cannot go on, to the main loop, which stops the daemon with that error.
pub const FATAL: Link = Link {
    name: "fatal",
    from: "recorder",
    to: "main",
    capacity: 4,
    when_full: WhenFull::Wait,
    drops: None,
};

/// Every link, in data-flow order.
pub const ALL: [Link; 9] = [
    FRAMES,
    DETECTIONS,
    EVENTS,
    LIVE_ALERTS,
    RECORDED,
    RULE_COMMANDS,
    RULES_RELOAD,
    CONFIG_COMMANDS,
    FATAL,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_that_drops_names_a_declared_counter_and_every_name_is_unique() {
        let mut names = std::collections::BTreeSet::new();
        for link in ALL {
            assert!(names.insert(link.name), "{} twice", link.name);
            assert!(link.capacity > 0, "{}", link.name);
            match link.when_full {
                WhenFull::Wait => assert_eq!(link.drops, None, "{}", link.name),
                _ => {
                    let counter = link.drops.expect("a link that drops names its counter");
                    assert!(
                        crate::telemetry::all().any(|m| m.name == counter),
                        "{}: {counter} is not a declared metric",
                        link.name
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn a_channel_has_its_links_capacity() {
        let (tx, _rx) = EVENTS.with_capacity(2).channel::<u8>();
        assert!(tx.try_send(1).is_ok() && tx.try_send(2).is_ok());
        assert!(tx.try_send(3).is_err(), "a third item does not fit");
    }
}
