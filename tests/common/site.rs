//! A site for the MQTT tests: a real store, the recorder with its outbox, the publisher, and the
//! real rules stage behind the commands; helpers for alerts, the schema and command replies.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use kinderwatch::alert::MqttConfig;
use kinderwatch::alert::commands::CommandContext;
use kinderwatch::alert::payload::SCHEMA;
use kinderwatch::alert::publisher::{self, PublisherSettings};
use kinderwatch::api::CameraView;
use kinderwatch::camera::{CameraState, CameraStatus};
use kinderwatch::config::Config;
use kinderwatch::events::{Event, EventKind, EventObject};
use kinderwatch::perimeter::{self, ArmingStore, PerimeterIo, RecordedEvent};
use kinderwatch::store::recorder::{self, RecorderSettings, StoreStatus};
use kinderwatch::store::{Store, StoreConfig};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::broker::{self, Received};

pub const SITE: &str = "kg-7";

pub fn mqtt_config(port: u16, extra: &str) -> MqttConfig {
    let text = format!(
        "[site]\nid = \"{SITE}\"\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:9/x\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nbackoff_initial = \"200ms\"\nbackoff_max = \"1s\"\nsnapshot_base_url = \"http://10.8.0.7:8080\"\n{extra}\n"
    );
    Config::from_toml(&text, Path::new("t.toml"), Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"))
        .mqtt
        .unwrap()
}

pub struct Site {
    pub events: mpsc::Sender<RecordedEvent>,
    pub store: Store,
    /// API tokens the site knows: admin and read.
    pub admin_token: String,
    pub read_token: String,
    pub cancel: CancellationToken,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// Store + recorder (with the outbox) + publisher + the real rules stage for commands.
pub fn start_site(config: MqttConfig) -> Site {
    start_site_live(config, None)
}

pub fn start_site_live(
    config: MqttConfig,
    live: Option<mpsc::Receiver<recorder::LiveEvent>>,
) -> Site {
    start_site_with(config, live, new_tokens())
}

/// An admin and a read token (token, SHA-256 hex) for [`start_site_with`].
pub fn new_tokens() -> [(String, String); 2] {
    [
        kinderwatch::api::auth::new_token(),
        kinderwatch::api::auth::new_token(),
    ]
}

/// With the site's admin and read tokens given (to use them before the site starts).
pub fn start_site_with(
    config: MqttConfig,
    live: Option<mpsc::Receiver<recorder::LiveEvent>>,
    [(admin_token, admin_hash), (read_token, read_hash)]: [(String, String); 2],
) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let store_config = StoreConfig {
        min_free_mb: 1,
        ..StoreConfig::default()
    };
    let store = Store::open(&dir.path().join("events.db"), &store_config).unwrap();
    let cancel = CancellationToken::new();
    let (events, events_rx) = mpsc::channel(256);
    let (status_tx, _status) = watch::channel(StoreStatus::Ok);
    let rules_config = super::fence_config();
    let (_detections, detections_rx) = mpsc::channel(4);
    let (commands, commands_rx) = mpsc::channel(4);
    let (rule_events, _rule_events_rx) = mpsc::channel(4);
    let (_cam_tx, cam_rx) = watch::channel(CameraStatus::new(CameraState::Streaming));
    std::mem::forget(_cam_tx);
    std::mem::forget(_detections);
    let cameras = Arc::new(vec![CameraView {
        id: "gate".into(),
        name: "Gate".into(),
        status: cam_rx,
    }]);
    let tokens = kinderwatch::api::Tokens::new(&[
        kinderwatch::api::TokenConfig {
            name: "center-admin".into(),
            role: kinderwatch::api::Role::Admin,
            sha256: admin_hash,
        },
        kinderwatch::api::TokenConfig {
            name: "operator".into(),
            role: kinderwatch::api::Role::Read,
            sha256: read_hash,
        },
    ]);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(perimeter::run(
        rules_config,
        detections_rx,
        PerimeterIo {
            live_tracks: HashMap::new(),
            events: rule_events,
            summary: None,
            commands: Some(commands_rx),
            arming: Some(ArmingStore::new(dir.path())),
            progress: None,
        },
        cancel.clone(),
    )));
    let recorder = recorder::run(
        store.clone(),
        RecorderSettings {
            site: SITE.into(),
            config: store_config,
            outbox: true,
            live: None,
            progress: None,
        },
        events_rx,
        status_tx,
        cancel.clone(),
    );
    tasks.push(tokio::spawn(async move {
        recorder.await.expect("the recorder stops only when asked");
    }));
    let settings = PublisherSettings {
        config,
        site: SITE.into(),
        cameras: cameras.clone(),
        commands: CommandContext {
            store: store.clone(),
            rules: Some(commands),
            cameras,
            tokens,
            readers: kinderwatch::store::reader::Readers::new(),
        },
        live,
        stages: None,
    };
    tasks.push(tokio::spawn(publisher::run(
        store.clone(),
        settings,
        cancel.clone(),
    )));
    Site {
        events,
        store,
        admin_token,
        read_token,
        cancel,
        tasks,
        _dir: dir,
    }
}

impl Site {
    pub async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

pub fn crossing(n: usize) -> RecordedEvent {
    let mut e = Event::new(EventKind::LineCrossed, SITE, "gate", Timestamp::now());
    e.rule = Some("fence".into());
    e.detail = Some(format!("n={n}"));
    e.object = Some(EventObject {
        class: "person".into(),
        score: 0.81,
        bbox: kinderwatch::detect::BBox::new(0.4, 0.2, 0.55, 0.7),
        track_id: 42,
        crossing: Some(kinderwatch::rules::tripwire::Crossing::Right),
    });
    RecordedEvent {
        event: e,
        snapshot: Some(vec![0xff, 0xd8, 0xff, 0xd9]),
    }
}

pub fn schema() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

pub fn is_event(m: &Received) -> bool {
    m.topic.starts_with(&format!("kinderwatch/{SITE}/events/")) && !m.topic.ends_with("/snapshot")
}

/// The reply whose correlation data is `id`.
pub async fn reply(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Received>, id: &str) -> Value {
    let id = Bytes::from(id.to_owned());
    let m = broker::next_matching(rx, Duration::from_secs(10), "a reply", move |m| {
        m.properties
            .as_ref()
            .and_then(|p| p.correlation_data.clone())
            == Some(id.clone())
    })
    .await;
    serde_json::from_slice(&m.payload).unwrap()
}
