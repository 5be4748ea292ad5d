//! Snapshot encoding off the rules loop: a rule hit's picture (the track's best frame, drawn on,
//! JPEG) is rendered on the blocking pool while the loop goes on with every camera's next frame;
//! the event goes to the recorder once its picture is ready. At most [`MAX_IN_FLIGHT`] encodes
//! run or wait at once: beyond that an event is recorded at once without its picture (counted in
//! `kinderwatch_snapshots_skipped_total`), so a burst of hits can neither queue without bound nor
//! hold up the alert.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::RecordedEvent;
use crate::detect::BBox;
use crate::events::{Event, SnapshotFrame, render_snapshot};
use crate::rules::engine::RuleShape;
use crate::telemetry::events::{self as telemetry, SnapshotSkip};

/// Encodes running or waiting for the blocking pool at once.
pub const MAX_IN_FLIGHT: usize = 8;

/// What a snapshot is drawn from.
pub struct SnapshotJob {
    pub frame: SnapshotFrame,
    pub bbox: BBox,
    pub shape: Option<RuleShape>,
    pub caption: String,
}

pub struct SnapshotEncoder {
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    events: mpsc::Sender<RecordedEvent>,
}

impl SnapshotEncoder {
    pub fn new(events: mpsc::Sender<RecordedEvent>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            tasks: TaskTracker::new(),
            events,
        }
    }

    /// Records `event`, with the snapshot `job` draws once it is encoded.
    pub fn submit(&self, event: Event, job: Option<SnapshotJob>) {
        let Some(job) = job else {
            record(
                &self.events,
                RecordedEvent {
                    event,
                    snapshot: None,
                },
            );
            return;
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            telemetry::snapshot_skipped(SnapshotSkip::Busy);
            warn!(event_id = %event.id, in_flight = MAX_IN_FLIGHT,
                  "too many snapshots being encoded: event recorded without its picture");
            record(
                &self.events,
                RecordedEvent {
                    event,
                    snapshot: None,
                },
            );
            return;
        };
        let events = self.events.clone();
        self.tasks.spawn(async move {
            let _permit = permit;
            let snapshot = tokio::task::spawn_blocking(move || {
                #[cfg(feature = "failpoints")]
                fail::fail_point!("snapshot_render");
                render_snapshot(&job.frame, &job.bbox, job.shape.as_ref(), &job.caption)
            })
            .await
            .ok();
            if snapshot.is_none() {
                telemetry::snapshot_skipped(SnapshotSkip::Failed);
            }
            record(&events, RecordedEvent { event, snapshot });
        });
    }

    /// Waits up to `within` for the encodes in flight (their events are recorded).
    pub async fn finish(self, within: Duration) {
        self.tasks.close();
        if tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                in_flight = self.tasks.len(),
                "stopping with snapshots still being encoded; their events are not recorded"
            );
        }
    }
}

fn record(events: &mpsc::Sender<RecordedEvent>, recorded: RecordedEvent) {
    let e = &recorded.event;
    let camera = e.camera.as_deref().unwrap_or("").to_owned();
    info!(event_id = %e.id, kind = e.kind.as_str(), camera = %camera, rule = e.rule.as_deref().unwrap_or(""),
          track = e.object.as_ref().map_or(0, |o| o.track_id),
          score = format!("{:.2}", e.object.as_ref().map_or(0.0, |o| o.score)),
          snapshot_bytes = recorded.snapshot.as_ref().map_or(0, Vec::len), "event");
    if let Err(why) = crate::events::offer(events, recorded) {
        warn!(camera = %camera, reason = why.as_str(), "event queue full: event not recorded");
    }
}
