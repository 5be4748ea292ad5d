//! The event history: a sled database in the state directory.
//!
//! An event, its snapshot, its camera index entry and its outbox entry are written in one sled
//! transaction, and the database is flushed (fsync) before [`Store::record`] returns: an event
//! counts as recorded only then. Every call here blocks; async code calls it through
//! `spawn_blocking` (see [`recorder`] and the API).
//!
//! sled 0.34 hangs for good in `flush` once the disk is full (measured on a full tmpfs: the
//! flush waits forever, even after space returns), so the store never lets it get there:
//! [`Store::record`] refuses a batch while the file system has less than the configured reserve
//! free, and the recorder keeps such events in memory until space returns.

pub mod audit;
pub mod keys;
mod migrate;
pub mod outbox;
pub mod query;
pub mod reader;
pub mod recorder;
pub mod retention;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Deserialize;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use uuid::Uuid;

use crate::events::Event;
use crate::events::RecordedEvent;

pub use audit::{AuditQuery, AuditRecord};
pub use outbox::{DeadLetter, DeadLetterReason, OutboxEntry};
pub use query::{Cursor, CursorError, EventQuery, Page};
pub use retention::{RetentionPolicy, RetentionReport};

/// The schema this code writes. See `migrate.rs` for the older ones it can open.
pub const SCHEMA_VERSION: u32 = 3;

/// Tries (100 ms apart) before a locked database counts as in use.
const OPEN_LOCK_RETRIES: u32 = 30;

/// The database lives in this subdirectory of `state.dir`.
pub const DB_DIR: &str = "events.db";

/// `[store]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Events older than this many days are deleted (0: keep by age forever). Default: 30.
    pub retention_days: u32,
    /// Event JSON and snapshots above this many MB are deleted, oldest first (0: no limit).
    /// Default: 4096.
    pub max_size_mb: u64,
    /// How often retention runs. Default: 10m.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Writes stop while the file system has less than this many MB free, so that the database
    /// never meets a full disk; events wait in memory and are written when space returns.
    /// Default: 256.
    pub min_free_mb: u64,
    /// Events held in memory while the store cannot write; beyond this the oldest are lost (and
    /// counted). Default: 10000.
    pub max_pending: usize,
    /// The same bound in MB, snapshots included (whichever is reached first). Default: 64.
    pub max_pending_mb: u64,
    /// A write taking longer than this marks the store failed: its events and every later one go
    /// out live over MQTT while it waits. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// A write that has not returned after this long has wedged the database in this process (sled
    /// serialises its writers): the daemon stops with an error so that systemd starts it afresh.
    /// Default: 2m.
    #[serde(with = "humantime_serde")]
    pub write_stall_exit: Duration,
    /// sled's page cache, MB. Default: 64.
    pub cache_mb: u64,
    /// Audit records (who read the history and snapshots, who armed and disarmed) older than
    /// this many days are deleted (0: keep them). Default: 365.
    pub audit_retention_days: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            retention_days: 30,
            max_size_mb: 4096,
            retention_interval: Duration::from_secs(600),
            min_free_mb: 256,
            max_pending: 10_000,
            max_pending_mb: 64,
            write_timeout: Duration::from_secs(10),
            write_stall_exit: Duration::from_secs(120),
            cache_mb: 64,
            audit_retention_days: 365,
        }
    }
}

impl StoreConfig {
    /// Puts the section's problems (paths `store.*`) in `v`.
    pub fn validate(&self, v: &mut crate::validate::Validator) {
        if self.max_pending == 0 {
            v.err(
                "store.max_pending",
                "use at least 1 (events held while the disk is full)",
            );
        }
        if self.retention_interval < Duration::from_secs(1) {
            v.err("store.retention_interval", "use at least 1s, e.g. \"10m\"");
        }
        if self.write_timeout < Duration::from_millis(100) {
            v.err("store.write_timeout", "use at least 100ms, e.g. \"10s\"");
        }
        if self.max_pending_mb == 0 {
            v.err(
                "store.max_pending_mb",
                "use at least 1 (MB of events and snapshots held while the store cannot write)",
            );
        }
        if self.write_stall_exit <= self.write_timeout {
            v.err(
                "store.write_stall_exit",
                format!(
                    "must be longer than store.write_timeout ({}), e.g. \"2m\"",
                    humantime::format_duration(self.write_timeout)
                ),
            );
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "event database {dir} is in use by another process (is the daemon running? query it with `kinderwatch events` without --db)"
    )]
    InUse { dir: PathBuf },
    #[error(
        "event database {dir} is corrupt ({detail}); move it aside (mv {dir} {dir}.corrupt) and start again with an empty one"
    )]
    Corrupt { dir: PathBuf, detail: String },
    #[error(
        "{dir} is not a kinderwatch event database ({detail}); point state.dir at a directory of its own"
    )]
    Foreign { dir: PathBuf, detail: String },
    #[error(
        "event database {dir} has schema version {found}, newer than this kinderwatch supports ({supported}); run a newer kinderwatch"
    )]
    NewerSchema {
        dir: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "only {free_mb} MB free on the disk of {dir} (reserve {reserve_mb} MB); events wait in memory until space returns"
    )]
    DiskFull {
        dir: PathBuf,
        free_mb: u64,
        reserve_mb: u64,
    },
    #[error("event database {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("event database: {0}")]
    Sled(#[from] sled::Error),
    #[error("event database: stored event {id} does not decode: {detail}")]
    Decode { id: String, detail: String },
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => Self::Sled(e),
        }
    }
}

/// What the store holds, for metrics and the API.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct StoreStats {
    pub events: u64,
    /// Bytes of event JSON and snapshots (what retention by size counts).
    pub stored_bytes: u64,
    /// The database files on disk.
    pub disk_bytes: u64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub oldest: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub newest: Option<Timestamp>,
    pub outbox: u64,
    pub dead_letters: u64,
}

/// A handle to the open database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    db: sled::Db,
    events: sled::Tree,
    by_camera: sled::Tree,
    snapshots: sled::Tree,
    outbox: sled::Tree,
    outbox_index: sled::Tree,
    dead_letters: sled::Tree,
    audit: sled::Tree,
    meta: sled::Tree,
    min_free_bytes: u64,
    outbox_changed: tokio::sync::Notify,
    /// `outbox_after` calls, for diagnostics and tests (an idle publisher must not spin on it).
    outbox_reads: std::sync::atomic::AtomicU64,
    /// Held from taking outbox sequences to committing them (see [`Store::record`]).
    outbox_order: std::sync::Mutex<()>,
    /// Entries in `dead_letters` (read by `/healthz`, which must not walk a tree).
    dead_letter_count: std::sync::atomic::AtomicUsize,
}

impl Store {
    /// Opens (or creates) the database in `dir`, migrating an older schema. Refuses a directory
    /// that holds something else, a corrupt database, one in use, or a newer schema.
    pub fn open(dir: &Path, config: &StoreConfig) -> Result<Self, StoreError> {
        check_directory(dir)?;
        // A handle being dropped (a restart in the same process, a daemon still exiting) releases
        // sled's file lock only when its flusher thread ends: wait a little before "in use".
        let mut attempts = 0;
        let db = loop {
            match open_sled(dir, config.cache_mb) {
                Err(StoreError::InUse { .. }) if attempts < OPEN_LOCK_RETRIES => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => break other?,
            }
        };
        let tree = |name: &str| db.open_tree(name);
        let store = Self {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                events: tree(keys::EVENTS)?,
                by_camera: tree(keys::BY_CAMERA)?,
                snapshots: tree(keys::SNAPSHOTS)?,
                outbox: tree(keys::OUTBOX)?,
                outbox_index: tree(keys::OUTBOX_INDEX)?,
                dead_letters: tree(keys::DEAD_LETTERS)?,
                audit: tree(keys::AUDIT)?,
                meta: tree(keys::META)?,
                db,
                min_free_bytes: config.min_free_mb * 1024 * 1024,
                outbox_changed: tokio::sync::Notify::new(),
                outbox_reads: std::sync::atomic::AtomicU64::new(0),
                outbox_order: std::sync::Mutex::new(()),
                dead_letter_count: std::sync::atomic::AtomicUsize::new(0),
            }),
        };
        migrate::bring_up_to_date(&store.inner.db, dir)?;
        store.inner.dead_letter_count.store(
            store.inner.dead_letters.len(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let stale = store.sweep_outbox_index()?;
        if stale > 0 {
            tracing::info!(stale, "outbox index entries of delivered alerts removed");
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Writes events (with their snapshots, camera index and, with `outbox`, outbox entries) in
    /// one transaction and flushes it to disk. When this returns `Ok`, every event in `batch`
    /// survives a crash. Refuses with [`StoreError::DiskFull`] below the free-space reserve.
    pub fn record(&self, batch: &[RecordedEvent], outbox: bool) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let encoded: Vec<(Vec<u8>, &RecordedEvent)> = batch
            .iter()
            .map(|r| {
                let json = serde_json::to_vec(&r.event).expect("events serialise");
                let snapshot_len = r.snapshot.as_ref().map_or(0, Vec::len);
                (keys::event_value(&json, snapshot_len), r)
            })
            .collect();
        let incoming: u64 = encoded
            .iter()
            .map(|(value, r)| (value.len() + r.snapshot.as_ref().map_or(0, Vec::len)) as u64)
            .sum();
        self.check_free_space(incoming)?;
        // Sequences are taken and committed under one lock, so that they commit in order: the
        // publisher reads "after the last sequence it sent" and would never see an earlier one
        // that committed later (a re-queue racing a record).
        let _order = self
            .inner
            .outbox_order
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let seqs = if outbox {
            encoded
                .iter()
                .map(|_| self.inner.db.generate_id())
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        let i = &self.inner;
        (
            &i.events,
            &i.by_camera,
            &i.snapshots,
            &i.outbox,
            &i.outbox_index,
            &i.meta,
        )
            .transaction(|(events, by_camera, snapshots, outbox_tree, index, meta)| {
                let (mut bytes, mut count) = (0u64, 0i64);
                for (n, (value, r)) in encoded.iter().enumerate() {
                    let id = r.event.id.as_bytes();
                    // Written before (a batch retried after its transaction committed but its
                    // flush failed): idempotent by event id, no second outbox entry or count.
                    if events.get(id.as_slice())?.is_some() {
                        continue;
                    }
                    events.insert(id.as_slice(), value.as_slice())?;
                    if let Some(camera) = &r.event.camera {
                        by_camera
                            .insert(keys::camera_key(camera, &r.event.id), r.event.kind.as_str())?;
                    }
                    if let Some(jpeg) = &r.snapshot {
                        snapshots.insert(id.as_slice(), jpeg.as_slice())?;
                    }
                    if let Some(seq) = seqs.get(n) {
                        outbox_tree.insert(&seq.to_be_bytes(), id.as_slice())?;
                        index.insert(id.as_slice(), &seq.to_be_bytes())?;
                    }
                    bytes += (value.len() + r.snapshot.as_ref().map_or(0, Vec::len)) as u64;
                    count += 1;
                }
                add_counter(meta, keys::META_STORED_BYTES, bytes as i64)?;
                add_counter(meta, keys::META_EVENT_COUNT, count)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })?;
        i.db.flush()?;
        if outbox {
            // One consumer (the publisher): a permit is kept if it is not waiting right now.
            i.outbox_changed.notify_one();
        }
        Ok(())
    }

    fn check_free_space(&self, incoming: u64) -> Result<(), StoreError> {
        let free = free_bytes(&self.inner.dir).map_err(|source| StoreError::Io {
            dir: self.inner.dir.clone(),
            source,
        })?;
        // sled writes a value more than once (log, then segment rewrites); keep room for that.
        if free
            < self
                .inner
                .min_free_bytes
                .saturating_add(incoming.saturating_mul(3))
        {
            return Err(StoreError::DiskFull {
                dir: self.inner.dir.clone(),
                free_mb: free / (1024 * 1024),
                reserve_mb: self.inner.min_free_bytes / (1024 * 1024),
            });
        }
        Ok(())
    }

    pub fn get(&self, id: &Uuid) -> Result<Option<StoredEvent>, StoreError> {
        match self.inner.events.get(id.as_bytes())? {
            Some(v) => decode_stored(id.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    pub fn snapshot(&self, id: &Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.snapshots.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    /// One page of events, newest first. See [`EventQuery`].
    pub fn query(&self, q: &EventQuery) -> Result<Page, StoreError> {
        query::run(self, q)
    }

    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let i = &self.inner;
        Ok(StoreStats {
            events: keys::u64_value(i.meta.get(keys::META_EVENT_COUNT)?.as_deref()),
            stored_bytes: keys::u64_value(i.meta.get(keys::META_STORED_BYTES)?.as_deref()),
            disk_bytes: i.db.size_on_disk()?,
            oldest: i.events.first()?.map(|(k, _)| keys::id_time(&k)),
            newest: i.events.last()?.map(|(k, _)| keys::id_time(&k)),
            outbox: i.outbox.len() as u64,
            dead_letters: i.dead_letters.len() as u64,
        })
    }

    /// Deletes old events by the policy. See [`retention`].
    pub fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now: Timestamp,
    ) -> Result<RetentionReport, StoreError> {
        retention::run(self, policy, now)
    }

    /// Flushes everything written so far (the outbox removals included).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    fn trees(&self) -> &Inner {
        &self.inner
    }
}

fn add_counter(
    meta: &sled::transaction::TransactionalTree,
    key: &[u8],
    delta: i64,
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    let old = keys::u64_value(meta.get(key)?.as_deref());
    let new = (old as i64).saturating_add(delta).max(0) as u64;
    meta.insert(key, &new.to_be_bytes())?;
    Ok(())
}

/// An event as stored, with whether it has a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub event: Event,
    /// Bytes of the snapshot JPEG; 0 when there is none.
    pub snapshot_len: usize,
}

pub(crate) fn decode_stored(key: &[u8], value: &[u8]) -> Result<StoredEvent, StoreError> {
    let bad = |detail: String| StoreError::Decode {
        id: keys::uuid_from_key(key).map_or_else(|| hex::encode(key), |u| u.to_string()),
        detail,
    };
    let (snapshot_len, json) =
        keys::split_event_value(value).ok_or_else(|| bad("unknown value layout".into()))?;
    let event = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    Ok(StoredEvent {
        event,
        snapshot_len,
    })
}

/// A directory that exists, is not empty and has no sled `conf` file is someone else's.
fn check_directory(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        dir: dir.to_owned(),
        source,
    };
    if !dir.exists() {
        return std::fs::create_dir_all(dir).map_err(io);
    }
    if !dir.is_dir() {
        return Err(StoreError::Foreign {
            dir: dir.to_owned(),
            detail: "it is a file, not a directory".into(),
        });
    }
    let mut entries = std::fs::read_dir(dir).map_err(io)?;
    if entries.next().is_some() && !dir.join("conf").is_file() {
        return Err(StoreError::Foreign {
            dir: dir.to_owned(),
            detail: "the directory has files but no sled `conf`".into(),
        });
    }
    Ok(())
}

/// sled panics on some corruptions rather than returning an error; both become
/// [`StoreError::Corrupt`], without the panic's message and backtrace on stderr.
fn open_sled(dir: &Path, cache_mb: u64) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_mb.max(1) * 1024 * 1024)
        .flush_every_ms(Some(200));
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || config.open()));
    std::panic::set_hook(hook);
    let corrupt = |detail: String| StoreError::Corrupt {
        dir: dir.to_owned(),
        detail,
    };
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(e)))
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.to_string().contains("could not acquire lock") =>
        {
            Err(StoreError::InUse {
                dir: dir.to_owned(),
            })
        }
        Ok(Err(sled::Error::Io(e))) => Err(StoreError::Io {
            dir: dir.to_owned(),
            source: e,
        }),
        Ok(Err(e)) => Err(corrupt(e.to_string())),
        Err(panic) => Err(corrupt(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "sled could not read it".into()),
        )),
    }
}

/// Bytes available to this process on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}
