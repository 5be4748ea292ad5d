//! `kinderwatch center`: one instance of the city monitoring center. It consumes every site's
//! alerts, availability and camera status from the city broker ([`ingest`]), keeps them in
//! PostgreSQL ([`db`]) de-duplicated by `event_id`, and serves the alarm queue for security
//! staff and the city-wide history over HTTP ([`api`]). Run two or more instances against the
//! same broker and database: they split the alerts (an MQTT 5 shared subscription) and each
//! takes them all when the others are gone.

pub mod api;
pub mod config;
pub mod db;
pub mod ingest;
pub mod live;
pub mod query;
pub mod reconcile;
pub mod snapshots;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::CenterConfig;

/// The connection pool of `config.database` (connections open on first use).
pub fn pool(config: &CenterConfig) -> anyhow::Result<Pool> {
    let pg = config.pg_config()?;
    let manager = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.database.pool_size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| anyhow::anyhow!("center.database: {e}"))
}

/// Creates the schema, retrying (logged once per distinct error) until the database answers or
/// `cancel`; `false` if cancelled first.
async fn migrate_when_up(pool: &Pool, cancel: &CancellationToken) -> bool {
    let mut delay = Duration::from_millis(500);
    let mut last: Option<String> = None;
    loop {
        match db::migrate(pool).await {
            Ok(()) => return true,
            Err(e) => {
                let e = e.to_string();
                if last.as_deref() != Some(&e) {
                    warn!(error = %e, "center: the database is not reachable (center.database.url); retrying");
                    last = Some(e);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Runs one instance until `cancel`.
pub async fn run(config: CenterConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let pool = pool(&config)?;
    let metrics = crate::telemetry::install_metrics();
    let tasks = tokio_util::task::TaskTracker::new();
    let queries = query::SiteQueries::start(config.clone(), cancel.clone())?;
    let feed = live::AlarmFeed::default();
    tasks.spawn(feed.clone().listen(config.pg_config()?, cancel.clone()));
    if let Some(http) = &config.http {
        let listener = tokio::net::TcpListener::bind(http.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!("center.http.listen {}: cannot listen ({e})", http.listen)
            })?;
        info!(addr = %listener.local_addr()?, "center: HTTP API listening");
        let app = api::router(api::CenterApi {
            instance: config.instance.as_str().into(),
            pool: pool.clone(),
            queries: queries.clone(),
            feed: feed.clone(),
            metrics: metrics.clone(),
            tokens: crate::auth::Tokens::new(&http.tokens),
            sessions: Default::default(),
            fan_outs: Arc::new(tokio::sync::Semaphore::new(1)),
            stop: cancel.clone(),
        });
        let stop = cancel.clone();
        tasks.spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                warn!(error = %e, "center: HTTP API stopped");
            }
        });
    }
    if let Some(h) = metrics {
        tasks.spawn(crate::telemetry::metrics_upkeep(h, cancel.clone()));
    }
    if !migrate_when_up(&pool, &cancel).await {
        return Ok(());
    }
    if let Err(e) = db::sync_directory(&pool, &config.sites).await {
        warn!(error = %e, "center: the site directory was not stored");
    }
    info!(
        instance = %config.instance,
        broker = %config.mqtt.host,
        group = %config.share_group,
        sites = config.sites.len(),
        reconcile_every = ?config.reconcile_interval,
        "center: ready"
    );
    tasks.spawn(reconcile::run(
        config.clone(),
        pool.clone(),
        queries.clone(),
        cancel.clone(),
    ));
    tasks.spawn(snapshots::run(config.clone(), pool.clone(), cancel.clone()));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    ingest::run(config.clone(), pool.clone(), cancel.clone()).await;
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    pool.close();
    info!(instance = %config.instance, "center: stopped");
    Ok(())
}
