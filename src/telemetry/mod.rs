//! Telemetry: the tracing subscriber (text or JSON lines on stderr; journald picks them up under
//! systemd) and the Prometheus metrics.
//!
//! Every metric is declared once, in the submodule of its domain: its name, its help text and the
//! one typed function that records it. The rest of the crate calls those functions and never a
//! `metrics` macro (tests/structure.rs checks). Each declaration names the module that owns the
//! metric: the one whose state it describes. This module is a leaf: it imports nothing from the
//! crate, so every module may use it.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

pub mod api;
pub mod camera;
pub mod center;
pub mod config;
pub mod detect;
pub mod events;
pub mod mqtt;
pub mod stages;
pub mod store;

/// `[logging] format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// What kind of metric a declaration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: its name and the help text `/metrics` shows for it.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// Every metric the daemon records.
pub fn all() -> impl Iterator<Item = &'static Metric> {
    [
        camera::METRICS,
        center::METRICS,
        config::METRICS,
        detect::METRICS,
        events::METRICS,
        store::METRICS,
        mqtt::METRICS,
        api::METRICS,
        stages::METRICS,
    ]
    .into_iter()
    .flatten()
}

/// Registers every metric's help text with the installed recorder.
fn describe() {
    for m in all() {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// 0 or 1, for a gauge that says whether something holds.
fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // A second init (tests, demo after check) keeps the first subscriber.
    let _ = result;
}

/// Installs the Prometheus recorder (once per process) and returns its handle for `/metrics`.
/// `None` when another recorder was installed first (some tests install their own).
pub fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| tracing::debug!(error = %e, "Prometheus recorder not installed"))
                .ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

/// Keeps the Prometheus histograms' windows current; runs until `cancel`.
pub async fn metrics_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_declared_once_under_the_crate_prefix() {
        let mut seen = std::collections::BTreeSet::new();
        for m in all() {
            assert!(m.name.starts_with("kinderwatch_"), "{}", m.name);
            assert!(seen.insert(m.name), "{} declared twice", m.name);
            assert!(!m.help.is_empty(), "{} has no help text", m.name);
        }
        assert!(seen.len() >= 50, "{seen:?}");
    }
}
