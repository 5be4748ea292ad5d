//! Filling the center's gaps from the sites' own stores. The live path loses alerts in rare
//! cases: what a killed instance had read and not acknowledged (up to `receive_maximum`), what a
//! broker restart without persistence dropped, what was published while no instance was
//! subscribed. Every `center.reconcile_interval`, one instance (whichever takes the database
//! lock) asks every online site for its events since it last answered (the first time: the
//! last `center.reconcile_window`) and stores those the center lacks. A lost perimeter alert
//! found this way becomes an alarm marked `recovered` while it is recent
//! ([`db::RECOVERED_ALARM_MAX_AGE`]).
//!
//! A site's events are asked for up to [`LIVE_GRACE`] ago (younger ones may still be on their
//! way), from its last answer minus [`OVERLAP`], so that an event
//! stamped by a site clock a little behind the center's is not skipped; what is asked twice
//! is a duplicate the database drops.

use std::sync::Arc;

use futures_util::StreamExt;

use deadpool_postgres::Pool;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::config::CenterConfig;
use super::db::{self, DbError, Origin};
use super::query::{SiteEvents, SiteQueries, as_alert};
use crate::telemetry::center as telemetry;

/// Asked again each time: covers site clocks up to this far behind the center's.
pub const OVERLAP: SignedDuration = SignedDuration::from_mins(10);

/// Events younger than this (or than `reconcile_interval`, if shorter) are left to the live path.
const LIVE_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Pages of 1,000 events one site may give to one round (a site with more is asked again
/// from the same point, and the newest pages come first: a day of 100,000 events is beyond any
/// kindergarten's).
const RECONCILE_PAGES: usize = 100;

/// The advisory lock one reconciling instance holds ("kwrecncl").
const LOCK: i64 = 0x6b77_7265_636e_636c;

/// What storing one site's answer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Events the center did not hold.
    pub new: u64,
    /// Events that do not read as alerts (logged).
    pub rejected: u64,
}

/// Stores a site's answer (events the center holds already are duplicates and change nothing).
pub async fn store_answer(
    pool: &Pool,
    instance: &str,
    site: &str,
    answer: SiteEvents,
) -> Result<Stored, DbError> {
    let now = Timestamp::now();
    let mut out = Stored::default();
    let mut alerts = Vec::with_capacity(answer.events.len());
    for e in answer.events {
        match super::ingest::parse_alert_value(site, as_alert(e)) {
            Ok(a) => alerts.push(a),
            Err(e) => {
                out.rejected += 1;
                warn!(site, error = %e, "center: a site's stored event was not understood");
            }
        }
    }
    // Most of an answer is what the center holds already (every round asks again from its last
    // answer minus OVERLAP): one look-up instead of one transaction per event.
    let ids: Vec<_> = alerts.iter().map(|a| a.event_id).collect();
    let known = db::known_events(pool, &ids).await?;
    for a in alerts.iter().filter(|a| !known.contains(&a.event_id)) {
        match db::store_alert(pool, a, instance, Origin::Query { now }).await {
            Ok(true) => out.new += 1,
            Ok(false) => {}
            Err(e) if db::is_refused_data(&e) => {
                out.rejected += 1;
                warn!(site, event_id = %a.event_id, error = %e, "center: the database refused a site's stored event");
            }
            Err(e) => return Err(e),
        }
    }
    if out.new > 0 {
        telemetry::recovered(out.new);
    }
    Ok(out)
}

/// Runs the reconciliation every `center.reconcile_interval` until `cancel` (never if zero).
pub async fn run(
    config: Arc<CenterConfig>,
    pool: Pool,
    queries: SiteQueries,
    cancel: CancellationToken,
) {
    if config.reconcile_interval.is_zero() {
        return;
    }
    loop {
        let pause = config
            .reconcile_interval
            .mul_f64(rand::random_range(0.9..1.1));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        match sweep(&config, &pool, &queries).await {
            Ok(Some(s)) => {
                debug!(instance = %config.instance, asked = s.asked, answered = s.answered, recovered = s.recovered, "center: reconciliation done")
            }
            Ok(None) => debug!(instance = %config.instance, "center: another instance reconciles"),
            Err(e) => {
                warn!(instance = %config.instance, error = %e, "center: reconciliation failed (the database); retried next interval")
            }
        }
    }
}

/// One round's figures.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sweep {
    pub asked: usize,
    pub answered: usize,
    pub recovered: u64,
}

/// One round over every online site; `None` if another instance holds the lock.
pub async fn sweep(
    config: &CenterConfig,
    pool: &Pool,
    queries: &SiteQueries,
) -> Result<Option<Sweep>, DbError> {
    let Some(_lock) = db::try_lock(pool, LOCK).await? else {
        return Ok(None);
    };
    if !queries.is_connected() {
        // Nobody can answer; the lock goes with `_lock`.
        return Ok(Some(Sweep::default()));
    }
    let now = Timestamp::now();
    // What is younger than the grace is the live path's: an alert still queued at the broker
    // (a burst, an instance taking over) would otherwise be stored as if it had been lost.
    let grace = SignedDuration::try_from(config.reconcile_interval.min(LIVE_GRACE))
        .unwrap_or(SignedDuration::ZERO);
    let until = now.checked_sub(grace).unwrap_or(now);
    let window = SignedDuration::try_from(config.reconcile_window).unwrap_or(SignedDuration::MAX);
    let earliest = now.checked_sub(window).unwrap_or(Timestamp::MIN);
    let targets = db::online_sites(pool).await?;
    let mut s = Sweep {
        asked: targets.len(),
        ..Sweep::default()
    };
    let asks = targets.into_iter().map(|t| {
        let from = t
            .reconciled_until
            .map_or(earliest, |u| u.max(earliest))
            .checked_sub(OVERLAP)
            .unwrap_or(Timestamp::MIN);
        let mut filter = Map::new();
        filter.insert("from".into(), Value::String(from.to_string()));
        filter.insert("to".into(), Value::String(until.to_string()));
        (t.site, filter)
    });
    let mut answers = futures_util::stream::iter(asks)
        .map(|(site, filter)| async move {
            let r = queries.events(&site, &filter, RECONCILE_PAGES).await;
            (site, r)
        })
        .buffer_unordered(config.query_concurrency);
    while let Some((site, r)) = answers.next().await {
        match r {
            Ok(answer) => {
                s.answered += 1;
                let complete = answer.complete;
                let stored = store_answer(pool, &config.instance, &site, answer).await?;
                if stored.new > 0 {
                    warn!(
                        site,
                        recovered = stored.new,
                        "center: reconciliation found events the live path had lost"
                    );
                    s.recovered += stored.new;
                }
                // An answer cut at the page limit is asked again from the same point.
                if complete {
                    db::set_reconciled(pool, &site, until).await?;
                }
            }
            Err(e) => {
                info!(site, error = %e, "center: a site did not answer the reconciliation; asked again next interval")
            }
        }
    }
    Ok(Some(s))
}
