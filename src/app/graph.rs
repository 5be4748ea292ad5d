//! The stage graph: one builder makes every stage and channel of the daemon ([`super::links`]),
//! names every task, starts the stages consumers first and stops them in reverse.
//!
//! ```text
//! cameras ─frames─▶ detector pool ─detections─▶ rules ─events─▶ recorder ─▶ store ─▶ publisher ─▶ MQTT
//!                                                 ▲    health ─┘      └─live_alerts─▶ publisher
//!                                  api, publisher ┘ rule_commands
//! ```
//!
//! Start order: publisher → recorder, retention → API → rules → detector pool → cameras (with
//! their health and state logs). Stop order is the reverse, but for the API, which stops with the
//! cameras: the cameras stop first, the pool finishes the frames it has, the rules what is queued
//! and their snapshots, the recorder writes what is queued, and the publisher says `offline` last.
//!
//! Tests and benchmarks build the daemon here too: another [`FrameSource`], detections and events
//! handed to the caller in the middle of the graph ([`Detections`], [`Daemon::take_events`]),
//! the rest as the daemon runs it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::links;
use super::source::{FrameSource, Rtsp};
use super::{
    Detectors, LOAD_PERIOD, LOAD_WARMUP, build_detectors, log_state_changes, report_frames,
};
use crate::api::{CameraView, CameraViews};
use crate::camera::CameraHandle;
use crate::config::Config;
use crate::control::RuleCommand;
use crate::detect::FrameDetections;
use crate::detect::load::DetectorLoad;
use crate::detect::manifest::VerifiedModel;
use crate::detect::pool::{DetectorPool, PoolCamera, PoolSupervision};
use crate::detect::summary::DetectionSummary;
use crate::events::RecordedEvent;
use crate::progress::Stages;
use crate::store::Store;
use crate::store::recorder::{RecorderSettings, StoreStatus};
use futures_util::future::BoxFuture;

/// Where the rules stage gets its detections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Detections {
    /// From the detector pool (the daemon).
    #[default]
    Pool,
    /// The pool's results go to the caller ([`Daemon::take_detections`]), which passes on what it
    /// wants to the rules ([`Daemon::take_detections_input`]).
    Intercepted,
    /// No pool: the caller sends every detection ([`Daemon::take_detections_input`]).
    Caller,
}

/// Builds a [`Daemon`]. Without a store, events go to [`Daemon::take_events`].
pub struct DaemonBuilder {
    config: Arc<Config>,
    source: Arc<dyn FrameSource>,
    detectors: Option<Detectors>,
    detections: Detections,
    store: Option<Store>,
    listener: Option<tokio::net::TcpListener>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    config_editable: bool,
}

impl DaemonBuilder {
    pub fn new(config: &Config) -> Self {
        Self {
            config: Arc::new(config.clone()),
            source: Arc::new(Rtsp),
            detectors: None,
            detections: Detections::Pool,
            store: None,
            listener: None,
            metrics: None,
            config_editable: false,
        }
    }

    /// Frames from another source than the cameras' RTSP streams.
    pub fn frames(mut self, source: impl FrameSource + 'static) -> Self {
        self.source = Arc::new(source);
        self
    }

    /// These detectors instead of ONNX sessions built from `detector.model`.
    pub fn detectors(mut self, detectors: Detectors) -> Self {
        self.detectors = Some(detectors);
        self
    }

    pub fn detections(mut self, detections: Detections) -> Self {
        self.detections = detections;
        self
    }

    /// Record events in `store` (the recorder, retention, MQTT when configured, arming kept in
    /// `state.dir`).
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Serve the HTTP API here (needs a store).
    pub fn api(mut self, listener: tokio::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Keep the Prometheus histograms current and serve them on `/metrics`.
    pub fn metrics(
        mut self,
        handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Self {
        self.metrics = handle;
        self
    }

    /// The config came from a file whose owner answers the console's editor
    /// ([`Daemon::take_config_commands`]); without it the editor is refused.
    pub fn config_editable(mut self) -> Self {
        self.config_editable = true;
        self
    }

    /// Builds every stage and starts them, consumers first.
    pub async fn start(self) -> anyhow::Result<Daemon> {
        let config = self.config.clone();
        anyhow::ensure!(
            self.listener.is_none() || self.store.is_some(),
            "the HTTP API needs the event store: give the builder one"
        );
        // The one step of building the rules that can fail, before anything starts.
        let stage_rules =
            crate::perimeter::StageRules::from_config(&config).map_err(|problems| {
                let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                anyhow::anyhow!("rules: {}", problems.join("; "))
            })?;
        let detectors = match (self.detectors, self.detections, &config.detector.model) {
            (Some(d), _, _) => Some(d),
            (None, Detections::Caller, _) | (None, _, None) => None,
            (None, _, Some(_)) => {
                let config = config.clone();
                Some(
                    tokio::task::spawn_blocking(move || build_detectors(&config))
                        .await
                        .context("detector set-up task failed")??,
                )
            }
        };
        let (views_tx, views) = CameraViews::channel(Vec::new());
        let mut d = Daemon {
            config: config.clone(),
            cameras: Vec::new(),
            views: views_tx,
            report_frames: false,
            tiers: Tier::ALL.map(|_| TierTasks::default()),
            model: None,
            pool: None,
            stages: Stages::new(config.supervision.stage_deadline),
            tasks: Arc::default(),
            fatal: None,
            fatal_tx: None,
            rule_commands: None,
            events: None,
            events_tx: None,
            live_tx: None,
            detections_out: None,
            detections_in: None,
            load_tx: None,
            api_state: None,
            reload_tx: None,
            config_commands: None,
            feeds: Default::default(),
            source: None,
        };
        let (fatal_tx, fatal_rx) = links::FATAL.channel();
        d.fatal = Some(fatal_rx);
        d.fatal_tx = Some(fatal_tx.clone());
        let (events_tx, events_rx) = links::EVENTS.channel::<RecordedEvent>();
        d.events_tx = Some(events_tx.clone());

        // Open every camera (nothing runs yet): the pool needs their slots.
        let mut camera_tasks = Vec::new();
        for cam in &config.cameras {
            let (lifetime, cancel) = d.camera_tokens();
            let opened = self
                .source
                .open(cam, &config.ingest, &d.stages, cancel.clone())?;
            if opened.task.is_none() {
                info!(camera = %cam.id, "camera disabled in the config");
            }
            d.cameras.push(opened.handle.clone());
            camera_tasks.push((opened, lifetime, cancel));
        }
        d.publish_views();
        let has_rules = detectors.is_some() || self.detections == Detections::Caller;
        let (rule_tx, rule_rx) = links::RULE_COMMANDS.channel::<RuleCommand>();
        let rules_sender = has_rules.then(|| rule_tx.clone());
        d.rule_commands = Some(rule_tx);
        let tokens = crate::auth::Tokens::new(&config.api.tokens);
        let readers = crate::store::reader::Readers::new();
        // Stored events, for the console's live streams (only with the API and a recorder).
        let recorded = (self.listener.is_some() && self.store.is_some())
            .then(|| tokio::sync::broadcast::channel(links::RECORDED.capacity).0);

        // Publisher, then recorder and retention.
        let (store_status_tx, store_status) = watch::channel(StoreStatus::Ok);
        let mut mqtt_link = None;
        match &self.store {
            Some(store) => {
                let (live_tx, live_rx) = match config.mqtt.is_some() {
                    true => {
                        let (tx, rx) = links::LIVE_ALERTS.channel();
                        d.live_tx = Some(tx.clone());
                        (Some(tx), Some(rx))
                    }
                    false => (None, None),
                };
                if let Some(mqtt) = &config.mqtt {
                    let (link_tx, link_rx) = watch::channel(Default::default());
                    mqtt_link = Some(link_rx);
                    let settings = crate::alert::publisher::PublisherSettings {
                        config: mqtt.clone(),
                        site: config.site.id.clone(),
                        cameras: views.clone(),
                        commands: crate::alert::commands::CommandContext {
                            store: store.clone(),
                            rules: rules_sender.clone(),
                            cameras: views.clone(),
                            tokens: tokens.clone(),
                            readers: readers.clone(),
                        },
                        live: live_rx,
                        stages: Some(d.stages.clone()),
                        link: Some(link_tx),
                    };
                    let s = store.clone();
                    d.spawn_in(Tier::Publisher, "publisher", |cancel| {
                        crate::alert::publisher::run(s, settings, cancel)
                    });
                }
                let settings = RecorderSettings {
                    site: config.site.id.clone(),
                    config: config.store.clone(),
                    outbox: config.mqtt.is_some(),
                    live: live_tx,
                    progress: Some(d.stages.register("recorder")),
                    recorded: recorded.clone(),
                };
                let (s, fatal) = (store.clone(), fatal_tx.clone());
                d.spawn_in(Tier::Recorder, "recorder", |cancel| async move {
                    let recorded = crate::store::recorder::run(
                        s,
                        settings,
                        events_rx,
                        store_status_tx,
                        cancel,
                    );
                    if let Err(e) = recorded.await {
                        let _ = fatal.send(e.to_string()).await;
                    }
                });
                let (s, c) = (store.clone(), config.store.clone());
                d.spawn_in(Tier::Recorder, "retention", |cancel| {
                    crate::store::recorder::run_retention(s, c, cancel)
                });
            }
            None => d.events = Some(events_rx),
        }
        if let Some(h) = self.metrics.clone() {
            d.spawn_in(Tier::Recorder, "metrics", |cancel| {
                crate::telemetry::metrics_upkeep(h, cancel)
            });
        }

        // The detector pool's workers start idle (no camera runs yet); the rules start before
        // anything can reach them, the API once the pool's load can be read.
        let (load_tx, detector_load) = watch::channel(DetectorLoad::default());
        let mut rules_input = None;
        if let Some(Detectors {
            model,
            sessions,
            factory,
        }) = detectors
        {
            let pool_cameras = config
                .cameras
                .iter()
                .zip(&d.cameras)
                .filter(|(c, _)| c.enabled)
                .map(|(cam, handle)| PoolCamera {
                    id: handle.id.clone(),
                    slot: handle.slot.clone(),
                    interval: Duration::from_secs_f64(1.0 / cam.detect_fps as f64),
                    motion_masks: cam.motion_masks.clone(),
                })
                .collect();
            let (pool, rx) = DetectorPool::start_supervised(
                pool_cameras,
                sessions,
                &config.motion,
                links::DETECTIONS
                    .with_capacity(config.detector.output_queue)
                    .capacity,
                PoolSupervision {
                    stages: Some(d.stages.clone()),
                    factory: Some(factory),
                },
            );
            info!(workers = pool.workers(), model = %model.manifest.name, "detector pool started");
            match self.detections {
                Detections::Pool => rules_input = Some(rx),
                _ => d.detections_out = Some(rx),
            }
            d.model = Some(model);
            d.pool = Some(pool);
        }
        if has_rules && rules_input.is_none() {
            let (tx, rx) = links::DETECTIONS
                .with_capacity(config.detector.output_queue)
                .channel();
            d.detections_in = Some(tx);
            rules_input = Some(rx);
        }
        if let (Some(listener), Some(store)) = (self.listener, &self.store) {
            let state = crate::api::ApiState {
                site: config.site.id.as_str().into(),
                store: store.clone(),
                store_status: store_status.clone(),
                detector_load,
                cameras: views.clone(),
                rules: rules_sender.clone(),
                metrics: self.metrics.clone(),
                tokens,
                readers,
                request_timeout: config.api.request_timeout,
                stages: d.stages.clone(),
                time_zone: config.site.time_zone.as_str().into(),
                sessions: crate::api::console::Sessions::default(),
                recorded,
                previews: crate::api::preview::Previews::default(),
                shutdown: CancellationToken::new(),
                config: None,
                mqtt: mqtt_link.clone(),
            };
            if config.api.tokens.is_empty() {
                warn!(
                    "no [[api.tokens]] configured: the HTTP API answers only /healthz; `kinderwatch token` makes one"
                );
            }
            let mut state = state;
            if self.config_editable {
                let (tx, rx) = links::CONFIG_COMMANDS.channel();
                state.config = Some(tx);
                d.config_commands = Some(rx);
            }
            d.api_state = Some(state.clone());
            d.spawn_in(Tier::Api, "api", |cancel| async move {
                if let Err(e) = crate::api::serve(listener, state, cancel).await {
                    tracing::error!(error = %e, "HTTP API stopped");
                }
            });
        }
        match rules_input {
            Some(rx) => {
                let pool = d.pool.as_ref();
                let live = pool.map_or_else(Default::default, |pool| {
                    d.cameras
                        .iter()
                        .filter_map(|c| pool.live_tracks_flag(&c.id).map(|f| (c.id.clone(), f)))
                        .collect()
                });
                let (reload_tx, reload_rx) = links::RULES_RELOAD.channel();
                let arming = self.store.is_some().then(|| {
                    if let Err(e) = std::fs::create_dir_all(&config.state.dir) {
                        warn!(dir = %config.state.dir.display(), error = %e, "state directory not usable");
                    }
                    crate::perimeter::ArmingStore::new(&config.state.dir)
                });
                let io = crate::perimeter::PerimeterIo {
                    live_tracks: live,
                    events: events_tx.clone(),
                    summary: pool.map(|p| DetectionSummary::new(p.stats_reader())),
                    commands: Some(rule_rx),
                    arming,
                    progress: Some(d.stages.register("rules")),
                    reload: Some(reload_rx),
                };
                d.reload_tx = Some(reload_tx);
                d.spawn_in(Tier::Rules, "rules", |cancel| {
                    crate::perimeter::run(stage_rules, rx, io, cancel)
                });
            }
            // Without rules, each camera's frames are reported instead.
            None => d.report_frames = true,
        }
        match &d.pool {
            Some(pool) => {
                let stats = pool.stats_reader();
                d.spawn_in(Tier::Cameras, "detector_load", |cancel| {
                    crate::detect::load::monitor(stats, LOAD_PERIOD, LOAD_WARMUP, load_tx, cancel)
                });
            }
            None => d.load_tx = Some(load_tx),
        }

        // The cameras last, each with its health watch and state log.
        for (opened, lifetime, cancel) in camera_tasks {
            d.start_camera(opened, lifetime, cancel);
        }
        d.source = Some(self.source);
        Ok(d)
    }
}

/// The groups of tasks, in start order; they stop in reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Publisher,
    Recorder,
    Api,
    Rules,
    Cameras,
    /// Tasks added with [`Daemon::spawn`], stopped first.
    Added,
}

impl Tier {
    fn name(self) -> &'static str {
        match self {
            Tier::Publisher => "publisher",
            Tier::Recorder => "recorder",
            Tier::Api => "api",
            Tier::Rules => "rules",
            Tier::Cameras => "cameras",
            Tier::Added => "added",
        }
    }

    const ALL: [Tier; 6] = [
        Tier::Publisher,
        Tier::Recorder,
        Tier::Api,
        Tier::Rules,
        Tier::Cameras,
        Tier::Added,
    ];
}

struct TierTasks {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Default for TierTasks {
    fn default() -> Self {
        Self {
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }
}

/// The running daemon: every stage of the graph, and what the caller may hold of it.
pub struct Daemon {
    config: Arc<Config>,
    cameras: Vec<CameraHandle>,
    /// The cameras as the API and MQTT see them, sent again when a reload adds or removes one.
    views: watch::Sender<Arc<Vec<CameraView>>>,
    /// No rules stage: each camera's frames are reported in the log instead.
    report_frames: bool,
    tiers: [TierTasks; 6],
    model: Option<VerifiedModel>,
    pool: Option<DetectorPool>,
    stages: Stages,
    /// Every task by name, and whether it has ended.
    tasks: Arc<Mutex<Vec<NamedTask>>>,
    fatal: Option<mpsc::Receiver<String>>,
    fatal_tx: Option<mpsc::Sender<String>>,
    rule_commands: Option<mpsc::Sender<RuleCommand>>,
    events: Option<mpsc::Receiver<RecordedEvent>>,
    events_tx: Option<mpsc::Sender<RecordedEvent>>,
    live_tx: Option<mpsc::Sender<crate::store::recorder::LiveEvent>>,
    detections_out: Option<mpsc::Receiver<FrameDetections>>,
    detections_in: Option<mpsc::Sender<FrameDetections>>,
    /// Without a pool nothing assesses the detector's load: the caller may say it.
    load_tx: Option<watch::Sender<DetectorLoad>>,
    api_state: Option<crate::api::ApiState>,
    reload_tx: Option<mpsc::Sender<crate::perimeter::RulesReload>>,
    config_commands: Option<mpsc::Receiver<crate::control::ConfigCommand>>,
    /// Each camera's tasks, for a live reload that restarts or removes it.
    feeds: std::collections::HashMap<String, CameraTask>,
    source: Option<Arc<dyn FrameSource>>,
}

/// A camera's tasks: its lifetime (its supervisor, health watch and state log stop with it), and
/// its supervisor (`None`: disabled).
struct CameraTask {
    lifetime: CancellationToken,
    supervisor: Option<SupervisorTask>,
}

/// A running camera supervisor: its own stop (a restart), its handle, and what it feeds.
struct SupervisorTask {
    cancel: CancellationToken,
    running: tokio::task::JoinHandle<()>,
    feed: Option<crate::camera::supervisor::CameraFeed>,
}

/// A task of the daemon, by name (`camera/<id>`, `recorder`, `publisher`, ...).
struct NamedTask {
    name: String,
    ended: Arc<AtomicBool>,
}

/// Marks its task ended when dropped: when the task returns, and when it panics.
struct EndGuard(Arc<AtomicBool>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// How shutdown went.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    pub elapsed: Duration,
    /// False if some task was still running when the grace period ran out.
    pub clean: bool,
    /// The groups of stages that stopped in time, in the order they did (`added`, `api`,
    /// `cameras`, `detectors`, `rules`, `recorder`, `publisher`).
    pub stopped: Vec<&'static str>,
}

impl Daemon {
    pub fn builder(config: &Config) -> DaemonBuilder {
        DaemonBuilder::new(config)
    }

    /// The daemon's graph from `config` with the cameras over RTSP, without a store or API:
    /// events go to [`Self::take_events`].
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        DaemonBuilder::new(config).start().await
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The daemon's stages (each reports progress; see [`crate::progress`]).
    pub fn stages(&self) -> &Stages {
        &self.stages
    }

    /// Where a task that cannot go on says why: the daemon stops with that error.
    pub fn fatal(&self) -> mpsc::Sender<String> {
        self.fatal_tx.clone().expect("the fatal link")
    }

    /// The receiving end of [`Self::fatal`] (once).
    pub fn take_fatal(&mut self) -> Option<mpsc::Receiver<String>> {
        self.fatal.take()
    }

    pub fn cameras(&self) -> &[CameraHandle] {
        &self.cameras
    }

    pub fn model(&self) -> Option<&VerifiedModel> {
        self.model.as_ref()
    }

    pub fn pool(&self) -> Option<&DetectorPool> {
        self.pool.as_ref()
    }

    /// Where run-time rule commands (arm, disarm, list) go.
    pub fn rule_commands(&self) -> mpsc::Sender<RuleCommand> {
        self.rule_commands.clone().expect("the rule command link")
    }

    /// The events of the rules and health stages (once; only without a store).
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<RecordedEvent>> {
        self.events.take()
    }

    /// Where events go to be recorded, as the rules and health stages send them.
    pub fn events_input(&self) -> mpsc::Sender<RecordedEvent> {
        self.events_tx.clone().expect("the events link")
    }

    /// Where the recorder sends the events it could not write yet, to the publisher (with a store
    /// and MQTT).
    pub fn live_alerts_input(&self) -> Option<mpsc::Sender<crate::store::recorder::LiveEvent>> {
        self.live_tx.clone()
    }

    /// The detector's load as the API reports it, when there is no pool to assess it (with
    /// [`Detections::Caller`]).
    pub fn detector_load_input(&self) -> Option<&watch::Sender<DetectorLoad>> {
        self.load_tx.as_ref()
    }

    /// What the HTTP API serves from (with [`DaemonBuilder::api`]), for a router of its own.
    /// The console editor's requests, for the owner of the config file (given once; only with
    /// [`DaemonBuilder::config_editable`] and the API).
    pub fn take_config_commands(
        &mut self,
    ) -> Option<mpsc::Receiver<crate::control::ConfigCommand>> {
        self.config_commands.take()
    }

    pub fn api_state(&self) -> Option<&crate::api::ApiState> {
        self.api_state.as_ref()
    }

    /// The pool's results (once; with [`Detections::Intercepted`]).
    pub fn take_detections(&mut self) -> Option<mpsc::Receiver<FrameDetections>> {
        self.detections_out.take()
    }

    /// Where detections go to the rules (once; with [`Detections::Intercepted`] or
    /// [`Detections::Caller`]). The daemon keeps no copy: when the caller drops it, the rules
    /// finish what they have (snapshots included) and their task ends.
    pub fn take_detections_input(&mut self) -> Option<mpsc::Sender<FrameDetections>> {
        self.detections_in.take()
    }

    fn spawn_in<F>(
        &self,
        tier: Tier,
        name: impl Into<String>,
        f: impl FnOnce(CancellationToken) -> F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.tiers[tier as usize].cancel.child_token();
        self.spawn_with(tier, name, cancel, f)
    }

    /// [`Self::spawn_in`] with its own stop (a child of the tier's).
    fn spawn_with<F>(
        &self,
        tier: Tier,
        name: impl Into<String>,
        cancel: CancellationToken,
        f: impl FnOnce(CancellationToken) -> F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let t = &self.tiers[tier as usize];
        let ended = Arc::new(AtomicBool::new(false));
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(NamedTask {
                name: name.into(),
                ended: ended.clone(),
            });
        let task = f(cancel);
        t.tracker.spawn(async move {
            let _guard = EndGuard(ended);
            task.await;
        })
    }

    /// Spawns a task that stops with the daemon (first), under a name the log uses if it ends
    /// early.
    pub fn spawn<F>(&self, name: impl Into<String>, f: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_in(Tier::Added, name, f);
    }

    /// A camera's lifetime (a child of the cameras' tier) and its supervisor's stop (a child of
    /// that: a restart stops the supervisor alone).
    fn camera_tokens(&self) -> (CancellationToken, CancellationToken) {
        let lifetime = self.tiers[Tier::Cameras as usize].cancel.child_token();
        let cancel = lifetime.child_token();
        (lifetime, cancel)
    }

    /// Starts an opened camera's tasks: its health watch and state log (or its frame reports,
    /// without rules), then its supervisor, all stopped by `lifetime`.
    fn start_camera(
        &mut self,
        opened: super::source::OpenedCamera,
        lifetime: CancellationToken,
        cancel: CancellationToken,
    ) {
        let cam = opened.handle;
        let id = cam.id.to_string();
        if self.report_frames {
            let c = cam.clone();
            self.spawn_with(
                Tier::Cameras,
                format!("frames/{id}"),
                lifetime.child_token(),
                |cancel| report_frames(c, Duration::from_secs(5), cancel),
            );
        }
        if let Some(events) = self.events_tx.clone() {
            let (c, site, pictures, health) = (
                cam.clone(),
                self.config.site.id.clone(),
                self.pool.as_ref().map(|p| p.stats_reader()),
                self.config.health.clone(),
            );
            self.spawn_with(
                Tier::Cameras,
                format!("health/{id}"),
                lifetime.child_token(),
                |cancel| crate::health::watch_camera(c, site, pictures, health, events, cancel),
            );
        }
        let c = cam.clone();
        self.spawn_with(
            Tier::Cameras,
            format!("state_log/{id}"),
            lifetime.child_token(),
            |cancel| log_state_changes(c, cancel),
        );
        let supervisor = opened.task.map(|task| SupervisorTask {
            running: self.spawn_with(
                Tier::Cameras,
                format!("camera/{id}"),
                cancel.clone(),
                |_| task,
            ),
            cancel,
            feed: opened.feed,
        });
        self.feeds.insert(
            id,
            CameraTask {
                lifetime,
                supervisor,
            },
        );
    }

    /// Sends the cameras' views (in the config's order) to the API and MQTT.
    fn publish_views(&self) {
        self.views.send_replace(Arc::new(
            self.cameras.iter().map(CameraView::from).collect(),
        ));
    }

    /// Stops the cameras a reload removed, all at once: their tasks (each supervisor's pipeline to
    /// Null within the teardown deadline), their places in the pool and their views. Their tasks
    /// leave the task list first: their end is no failure.
    async fn remove_cameras(&mut self, ids: &[String]) {
        let mut stopping = Vec::new();
        for id in ids {
            let names = ["camera", "health", "state_log", "frames"].map(|t| format!("{t}/{id}"));
            self.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|t| !names.contains(&t.name));
            if let Some(task) = self.feeds.remove(id) {
                task.lifetime.cancel();
                stopping.extend(task.supervisor.map(|s| (id.clone(), s.running)));
            }
        }
        let ends = stopping.into_iter().map(|(id, running)| async move {
            if tokio::time::timeout(CAMERA_STOP_TIMEOUT, running)
                .await
                .is_err()
            {
                warn!(camera = %id, "the removed camera's pipeline did not stop in time; going on");
            }
        });
        futures_util::future::join_all(ends).await;
        for id in ids {
            if let Some(pool) = &self.pool {
                pool.remove_camera(id);
            }
            self.cameras.retain(|c| &*c.id != id);
            info!(camera = %id, "camera removed");
        }
    }

    /// Stops the tasks of these cameras (pipelines to Null, within the teardown deadline, all at
    /// once) and starts their new tasks in their place, on the same slots and statuses. The old
    /// tasks leave the task list first: their end is no failure.
    async fn replace_cameras(
        &mut self,
        restarts: Vec<(String, BoxFuture<'static, ()>, CancellationToken)>,
    ) {
        let mut stopping = Vec::new();
        for (id, _, _) in &restarts {
            let name = format!("camera/{id}");
            self.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|t| t.name != name);
            if let Some(old) = self.feeds.get_mut(id).and_then(|t| t.supervisor.take()) {
                old.cancel.cancel();
                stopping.push((id.clone(), old));
            }
        }
        let mut feeds = std::collections::HashMap::new();
        let ends = stopping.into_iter().map(|(id, old)| async move {
            if tokio::time::timeout(CAMERA_STOP_TIMEOUT, old.running)
                .await
                .is_err()
            {
                warn!(camera = %id, "the old pipeline did not stop in time; starting the new one anyway");
            }
            (id, old.feed)
        });
        for (id, feed) in futures_util::future::join_all(ends).await {
            feeds.insert(id, feed);
        }
        for (id, task, cancel) in restarts {
            info!(camera = %id, "camera restarted with its new config");
            let running = self.spawn_with(
                Tier::Cameras,
                format!("camera/{id}"),
                cancel.clone(),
                |_| task,
            );
            let feed = feeds.remove(&id).flatten();
            if let Some(t) = self.feeds.get_mut(&id) {
                t.supervisor = Some(SupervisorTask {
                    cancel,
                    running,
                    feed,
                });
            }
        }
    }

    /// Applies a new config live, as `plan` says (see [`super::reload`]): refused whole when a key
    /// that needs a restart changed; else the rules stage gets the new compiled rules (without a
    /// rules stage, no detector model, they apply at its start). The running config is the new
    /// one only once applied.
    pub async fn reload(
        &mut self,
        new: Config,
        plan: &super::reload::ReloadPlan,
    ) -> anyhow::Result<()> {
        if !plan.restart.is_empty() {
            anyhow::bail!(
                "restart the service to apply changes to {}",
                plan.restart.join(", ")
            );
        }
        // The cameras' new tasks first: a camera that cannot be set up (an unreadable password
        // file) refuses the reload before anything changed.
        let source = self
            .source
            .clone()
            .context("restart the service to apply changes to the cameras")?;
        let mut restarts = Vec::new();
        for id in &plan.cameras {
            let (Some(cam), Some(running)) =
                (new.cameras.iter().find(|c| &c.id == id), self.feeds.get(id))
            else {
                anyhow::bail!("restart the service to apply changes to cameras[{id}]");
            };
            // A disabled camera has nothing running: its new settings apply when it is enabled.
            if !cam.enabled && running.supervisor.is_none() {
                continue;
            }
            let cancel = running.lifetime.child_token();
            let task = running
                .supervisor
                .as_ref()
                .and_then(|s| s.feed.clone())
                .and_then(|feed| source.reopen(cam, &new.ingest, &self.stages, cancel.clone(), feed))
                .with_context(|| format!("restart the service to apply changes to cameras[{id}] (its frame source cannot reopen)"))??;
            restarts.push((id.clone(), task, cancel));
        }
        // Cameras added: opened (checked), not started yet.
        let mut added = Vec::new();
        for id in &plan.added {
            let cam = new
                .cameras
                .iter()
                .find(|c| &c.id == id)
                .with_context(|| format!("cameras[{id}] is not in the new file"))?;
            let (lifetime, cancel) = self.camera_tokens();
            let opened = source
                .open(cam, &new.ingest, &self.stages, cancel.clone())
                .with_context(|| format!("cameras[{id}] cannot start"))?;
            added.push((cam, opened, lifetime, cancel));
        }
        // The pool's view of each added camera, with the flag the rules stage will set while it
        // has live tracks. A camera only added joins the pool now (its slot is empty until it
        // runs); one replaced (also in `removed`) once the old one has left.
        let mut joining = Vec::new();
        for (cam, opened, _, _) in &added {
            if opened.task.is_some() && self.pool.is_some() {
                let pool_camera = PoolCamera {
                    id: opened.handle.id.clone(),
                    slot: opened.handle.slot.clone(),
                    interval: Duration::from_secs_f64(1.0 / f64::from(cam.detect_fps.max(1))),
                    motion_masks: cam.motion_masks.clone(),
                };
                let replaced = plan.removed.contains(&cam.id);
                // A replaced camera keeps its flag: the rules stage keeps its tracks.
                let flag = self
                    .pool
                    .as_ref()
                    .and_then(|p| p.live_tracks_flag(&cam.id))
                    .filter(|_| replaced)
                    .unwrap_or_default();
                joining.push((pool_camera, flag, replaced));
            }
        }
        let mut pooled = Vec::new();
        if let Some(pool) = &self.pool {
            for (cam, flag, replaced) in &joining {
                if !replaced && pool.add_camera_with(cam.clone(), flag.clone()) {
                    pooled.push(cam.id.clone());
                }
            }
        }
        if plan.rules
            && let Some(tx) = &self.reload_tx
        {
            let flags: HashMap<Arc<str>, Arc<AtomicBool>> = joining
                .iter()
                .map(|(cam, flag, _)| (cam.id.clone(), flag.clone()))
                .collect();
            let applied = self.reload_rules(tx, &new, &flags).await;
            if let Err(e) = applied {
                if let Some(pool) = &self.pool {
                    for id in &pooled {
                        pool.remove_camera(id);
                    }
                }
                return Err(e);
            }
        }
        // The pool's view of each restarted camera: its rate (for the overload check) and its
        // motion masks (a fresh gate); its new size comes with its new pipeline's frames.
        if let Some(pool) = &self.pool {
            for cam in new.cameras.iter().filter(|c| plan.cameras.contains(&c.id)) {
                let interval = Duration::from_secs_f64(1.0 / f64::from(cam.detect_fps.max(1)));
                pool.reconfigure(&cam.id, interval, &cam.motion_masks);
            }
        }
        self.remove_cameras(&plan.removed).await;
        if let Some(pool) = &self.pool {
            for (cam, flag, _) in joining.into_iter().filter(|(_, _, replaced)| *replaced) {
                pool.add_camera_with(cam, flag);
            }
        }
        for (cam, opened, lifetime, cancel) in added {
            info!(camera = %cam.id, "camera added");
            self.cameras.push(opened.handle.clone());
            self.start_camera(opened, lifetime, cancel);
        }
        self.replace_cameras(restarts).await;
        // The config's order, for the API and the console.
        let position = |id: &str| new.cameras.iter().position(|c| c.id == id);
        self.cameras.sort_by_key(|c| position(&c.id));
        if !plan.added.is_empty() || !plan.removed.is_empty() {
            self.publish_views();
        }
        self.config = Arc::new(new);
        Ok(())
    }

    /// Hands the rules stage the rules of `new` and every camera's live-tracks flag (`joining`'s
    /// for the cameras joining the pool, the pool's for the others), and waits until it has taken
    /// them.
    async fn reload_rules(
        &self,
        tx: &mpsc::Sender<crate::perimeter::RulesReload>,
        new: &Config,
        joining: &HashMap<Arc<str>, Arc<AtomicBool>>,
    ) -> anyhow::Result<()> {
        let rules = crate::perimeter::StageRules::from_config(new).map_err(|problems| {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("rules: {}", problems.join("; "))
        })?;
        let live_tracks = self.pool.as_ref().map(|pool| {
            new.enabled_cameras()
                .filter_map(|c| {
                    joining
                        .get(c.id.as_str())
                        .cloned()
                        .or_else(|| pool.live_tracks_flag(&c.id))
                        .map(|f| (Arc::<str>::from(c.id.as_str()), f))
                })
                .collect()
        });
        let (done, applied) = tokio::sync::oneshot::channel();
        let reload = crate::perimeter::RulesReload {
            rules,
            live_tracks,
            done,
        };
        tokio::time::timeout(RELOAD_TIMEOUT, async {
            tx.send(reload).await.ok()?;
            applied.await.ok()
        })
        .await
        .ok()
        .flatten()
        .context("the rules stage did not take the new rules")
    }

    /// The tasks that have ended (on their own, unless the daemon is stopping).
    pub fn ended_tasks(&self) -> Vec<String> {
        ended(&self.tasks)
    }

    /// [`Self::ended_tasks`] for another thread (the progress monitor).
    pub fn liveness(&self) -> impl Fn() -> Vec<String> + Send + 'static {
        let tasks = self.tasks.clone();
        move || ended(&tasks)
    }

    /// Stops the stages in reverse start order, each step waited for in turn, all within
    /// `grace`: the API, added tasks and the cameras (pipelines to Null) together, then the
    /// detector pool (each worker finishes its frame), the rules (what is queued, then the
    /// snapshots being encoded), the recorder (what is queued), the publisher (`offline`). The
    /// steps upstream of the recorder must end [`RECORDER_RESERVE`] before the deadline: a stuck
    /// camera cannot take the recorder's and the publisher's time.
    pub async fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + grace;
        let upstream = deadline - RECORDER_RESERVE.min(grace / 2);
        self.stages.stopping();
        // The daemon's own ends of the links: the stages close them.
        self.events_tx = None;
        self.live_tx = None;
        self.rule_commands = None;
        let mut clean = true;
        let mut stopped = Vec::new();
        let steps: [(&[Tier], tokio::time::Instant); 4] = [
            (&[Tier::Added, Tier::Api, Tier::Cameras], upstream),
            (&[Tier::Rules], upstream),
            (&[Tier::Recorder], deadline),
            (&[Tier::Publisher], deadline),
        ];
        for (tiers, until) in steps {
            for tier in tiers {
                let t = &self.tiers[*tier as usize];
                t.cancel.cancel();
                t.tracker.close();
            }
            for tier in tiers {
                let t = &self.tiers[*tier as usize];
                let done = tokio::time::timeout_at(until, t.tracker.wait())
                    .await
                    .is_ok();
                if done {
                    stopped.push(tier.name());
                } else {
                    warn!(
                        stage = tier.name(),
                        "stages still running at their stop deadline; going on"
                    );
                }
                clean &= done;
            }
            if tiers.contains(&Tier::Cameras)
                && let Some(pool) = self.pool.take()
            {
                // No camera feeds the pool now: its workers finish their frames and end.
                let stop = tokio::task::spawn_blocking(move || pool.shutdown());
                let done = tokio::time::timeout_at(upstream, stop).await.is_ok();
                if done {
                    stopped.push("detectors");
                }
                clean &= done;
            }
        }
        ShutdownReport {
            elapsed: started.elapsed(),
            clean,
            stopped,
        }
    }
}

impl Drop for Daemon {
    /// A daemon dropped without [`Daemon::shutdown`] (a test that failed) still stops its tasks.
    fn drop(&mut self) {
        for t in &self.tiers {
            t.cancel.cancel();
        }
    }
}

/// How long a reload waits for a camera's old pipeline to stop (its teardown is bounded by 5 s).
const CAMERA_STOP_TIMEOUT: Duration = Duration::from_secs(7);

/// How long a reload waits for the rules stage to take the new rules.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the recorder (its last write, 3 s at most) and the publisher (`offline`) keep of the
/// shutdown grace whatever the stages before them take.
pub const RECORDER_RESERVE: Duration = Duration::from_secs(4);

fn ended(tasks: &Mutex<Vec<NamedTask>>) -> Vec<String> {
    tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|t| t.ended.load(Ordering::SeqCst))
        .map(|t| t.name.clone())
        .collect()
}
