//! The readers: a few threads of their own for history queries and snapshot reads (HTTP and MQTT),
//! so that a flood of queries never competes with the recorder's writes for tokio's blocking
//! pool, and never runs more than [`READER_THREADS`] scans at once. The threads run at a lower
//! CPU priority (nice +5) than detection and the recorder. A full queue answers
//! [`ReadError::Busy`] at once instead of queueing without bound.

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use tokio::sync::oneshot;

/// Threads that run reads.
pub const READER_THREADS: usize = 2;
/// Reads waiting for a thread beyond which callers are told to come back later.
pub const QUEUE: usize = 16;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("too many history reads at once; try again in a moment")]
    Busy,
    #[error("the read stopped before it answered (the daemon is stopping, or it panicked)")]
    Gone,
}

/// A handle to the reader threads; cheap to clone. The threads end when the last handle goes.
#[derive(Clone)]
pub struct Readers {
    tx: Arc<SyncSender<Job>>,
}

impl Readers {
    pub fn new() -> Self {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for n in 0..READER_THREADS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("kw-reader-{n}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("a reader thread starts");
        }
        Self { tx: Arc::new(tx) }
    }

    /// Runs `f` on a reader thread; `Busy` at once when [`QUEUE`] reads already wait.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ReadError> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            if let Ok(out) = out {
                let _ = reply.send(out);
            }
        });
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                crate::telemetry::store::read_refused();
                return Err(ReadError::Busy);
            }
            Err(TrySendError::Disconnected(_)) => return Err(ReadError::Gone),
        }
        answer.await.map_err(|_| ReadError::Gone)
    }
}

impl Default for Readers {
    fn default() -> Self {
        Self::new()
    }
}

/// nice +5 for the calling thread (Linux: a thread's own niceness).
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread's own id; on Linux the nice value is per thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 5);
    }
}
