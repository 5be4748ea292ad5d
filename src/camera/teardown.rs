//! Bounded teardown: a pipeline is set to Null on a thread of its own, and the caller waits for
//! it at most a deadline. A pipeline that does not get there in time (rtspsrc waiting for its
//! lock while a udpsrc streaming thread is blocked sending an event: seen with a UDP camera that
//! stopped sending) is abandoned to that thread: logged, counted, and the camera is rebuilt. The
//! process never waits for it: not a tokio worker, not shutdown, not the runtime's exit.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

/// How long a camera pipeline may take to reach Null before it is abandoned.
pub const TEARDOWN_DEADLINE: Duration = Duration::from_secs(5);

const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const ABANDONED: u8 = 2;

/// Abandoned teardowns whose thread has not finished yet.
static STUCK: AtomicUsize = AtomicUsize::new(0);

/// Teardowns abandoned and still stuck in this process (for `/healthz`, tests and diagnostics).
pub fn stuck_teardowns() -> usize {
    STUCK.load(Ordering::SeqCst)
}

/// How a teardown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    /// Null reached, after this long.
    Done(Duration),
    /// Not within the deadline: abandoned to its thread.
    Stuck,
}

/// Sets `element` to Null on a thread of its own, then drops `keep` there (whatever must not be
/// dropped on the caller's thread because its `Drop` touches the pipeline); waits at most
/// `deadline`.
pub async fn set_null_within<K: Send + 'static>(
    element: gst::Element,
    keep: K,
    deadline: Duration,
    label: &str,
) -> Teardown {
    let started = Instant::now();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    // RUNNING → FINISHED (the thread) or RUNNING → ABANDONED (the caller, at the deadline);
    // whoever comes second after ABANDONED takes the abandoned teardown off the count.
    let state = std::sync::Arc::new(AtomicU8::new(RUNNING));
    let theirs = state.clone();
    let name = label.to_owned();
    let spawned = std::thread::Builder::new()
        .name(format!("kw-teardown-{label}"))
        .spawn(move || {
            let _ = element.set_state(gst::State::Null);
            drop(keep);
            if theirs.swap(FINISHED, Ordering::SeqCst) == ABANDONED {
                STUCK.fetch_sub(1, Ordering::SeqCst);
                tracing::info!(camera = %name, after_s = started.elapsed().as_secs(),
                               "an abandoned pipeline reached Null after all");
            }
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        tracing::error!(camera = label, error = %e, "no thread for a teardown");
        return Teardown::Stuck;
    }
    if tokio::time::timeout(deadline, done).await.is_ok() {
        return Teardown::Done(started.elapsed());
    }
    STUCK.fetch_add(1, Ordering::SeqCst);
    match state.compare_exchange(RUNNING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => {
            crate::telemetry::camera::teardown_stuck(label);
            Teardown::Stuck
        }
        // It finished right at the deadline.
        Err(_) => {
            STUCK.fetch_sub(1, Ordering::SeqCst);
            Teardown::Done(started.elapsed())
        }
    }
}
