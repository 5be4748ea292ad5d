//! Snapshots the MQTT path did not bring, fetched from the sites' HTTP APIs: a site that does
//! not publish its JPEGs (`mqtt.publish_snapshots = false`, the default), a JPEG too large for
//! the broker, a recovered event. For each site of the directory with an `api_url` and an
//! `api_token_file`, an alert with a snapshot at the site (`snapshot.api_path`) and none at the
//! center after `center.snapshot_fetch_after` is fetched with the site's read token. One
//! instance fetches at a time (a database lock); a failure is tried again with a growing pause,
//! a 404 (the site's retention deleted it) is not.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use jiff::{SignedDuration, Timestamp};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::config::CenterConfig;
use super::db;
use crate::telemetry::center as telemetry;

/// The advisory lock of the fetching instance ("kwsnapft").
const LOCK: i64 = 0x6b77_736e_6170_6674;
/// Largest JPEG accepted from a site.
const MAX_BYTES: u64 = 16 << 20;
/// Alerts older than this are not fetched for any more.
const GIVE_UP_AFTER: SignedDuration = SignedDuration::from_hours(24);
/// Snapshots asked for in one round.
const BATCH: i64 = 64;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The site no longer has it (or never had); not tried again.
    #[error("the site has no such snapshot (404)")]
    NotFound,
    #[error("{0}")]
    Failed(String),
}

/// GETs `url` with the bearer `token` (blocking: run it off the async workers).
pub fn fetch(url: &str, token: &str, timeout: Duration) -> Result<Vec<u8>, FetchError> {
    let r = ureq::get(url)
        .timeout(timeout)
        .set("Authorization", &format!("Bearer {token}"))
        .call();
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(404, _)) => return Err(FetchError::NotFound),
        Err(ureq::Error::Status(code, _)) => {
            return Err(FetchError::Failed(format!("HTTP {code}")));
        }
        Err(e) => return Err(FetchError::Failed(e.kind().to_string())),
    };
    let mut body = Vec::new();
    r.into_reader()
        .take(MAX_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| FetchError::Failed(format!("reading the body: {e}")))?;
    if body.len() as u64 > MAX_BYTES {
        return Err(FetchError::Failed(format!("larger than {MAX_BYTES} bytes")));
    }
    if !body.starts_with(&[0xff, 0xd8]) {
        return Err(FetchError::Failed("not a JPEG".into()));
    }
    Ok(body)
}

/// Retries of failed fetches: when each may be tried again.
#[derive(Default)]
struct Retries {
    next: HashMap<Uuid, (Instant, u32)>,
}

impl Retries {
    fn failed(&mut self, id: Uuid, now: Instant, forever: bool) {
        let tries = self.next.get(&id).map_or(0, |(_, n)| *n) + 1;
        let pause = if forever {
            GIVE_UP_AFTER.unsigned_abs()
        } else {
            Duration::from_secs(5 << tries.min(8))
        };
        self.next.insert(id, (now + pause, tries));
    }

    /// The ids not to be tried yet.
    fn waiting(&self, now: Instant) -> Vec<Uuid> {
        self.next
            .iter()
            .filter(|(_, (t, _))| *t > now)
            .map(|(id, _)| *id)
            .collect()
    }

    fn forget_old(&mut self, now: Instant) {
        self.next
            .retain(|_, (t, _)| *t + GIVE_UP_AFTER.unsigned_abs() > now);
    }
}

/// Fetches until `cancel`, every half `snapshot_fetch_after` (at least 1 s).
pub async fn run(config: Arc<CenterConfig>, pool: Pool, cancel: CancellationToken) {
    let sites: Vec<String> = config
        .sites
        .iter()
        .filter(|s| s.api_url.is_some() && s.api_token_file.is_some())
        .map(|s| s.id.clone())
        .collect();
    if sites.is_empty() {
        return;
    }
    info!(instance = %config.instance, sites = sites.len(), "center: snapshots missing after {:?} are fetched from the sites' APIs", config.snapshot_fetch_after);
    let pause = (config.snapshot_fetch_after / 2).max(Duration::from_secs(1));
    let mut retries = Retries::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        if let Err(e) = round(&config, &pool, &sites, &mut retries).await {
            warn!(instance = %config.instance, error = %e, "center: snapshot fetching failed (the database); tried again");
        }
    }
}

async fn round(
    config: &CenterConfig,
    pool: &Pool,
    sites: &[String],
    retries: &mut Retries,
) -> Result<(), db::DbError> {
    let Some(_lock) = db::try_lock(pool, LOCK).await? else {
        return Ok(());
    };
    let now = Timestamp::now();
    let after = SignedDuration::try_from(config.snapshot_fetch_after).unwrap_or_default();
    let clock = Instant::now();
    retries.forget_old(clock);
    let waiting = retries.waiting(clock);
    let missing = db::missing_snapshots(
        pool,
        sites,
        now.checked_sub(after).unwrap_or(now),
        now.checked_sub(GIVE_UP_AFTER).unwrap_or(Timestamp::MIN),
        &waiting,
        BATCH,
    )
    .await?;
    for m in missing {
        let Some(site) = config.site(&m.site) else {
            continue;
        };
        let (Some(base), Some(token_file)) = (&site.api_url, &site.api_token_file) else {
            continue;
        };
        let token = match crate::camera::config::read_password_file(token_file) {
            Ok(t) => t,
            Err(e) => {
                warn!(site = %m.site, error = %e, "center: cannot read the site's api_token_file");
                retries.failed(m.event_id, clock, false);
                continue;
            }
        };
        if !m.api_path.starts_with("/api/v1/events/") {
            retries.failed(m.event_id, clock, true);
            continue;
        }
        let url = format!("{}{}", base.trim_end_matches('/'), m.api_path);
        let got = tokio::task::spawn_blocking(move || fetch(&url, &token, Duration::from_secs(10)))
            .await
            .unwrap_or_else(|e| Err(FetchError::Failed(e.to_string())));
        match got {
            Ok(jpeg) => {
                db::store_snapshot(pool, m.event_id, &jpeg, "http").await?;
                telemetry::snapshot_fetch("stored");
                debug!(site = %m.site, event_id = %m.event_id, bytes = jpeg.len(), "center: snapshot fetched from the site");
            }
            Err(FetchError::NotFound) => {
                telemetry::snapshot_fetch("not_found");
                retries.failed(m.event_id, clock, true);
            }
            Err(FetchError::Failed(why)) => {
                telemetry::snapshot_fetch("failed");
                info!(site = %m.site, event_id = %m.event_id, error = %why, "center: snapshot fetch failed; tried again later");
                retries.failed(m.event_id, clock, false);
            }
        }
    }
    Ok(())
}
