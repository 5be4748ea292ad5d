//! A site for the MQTT tests: a real store, the recorder with its outbox, the publisher, and the
//! real rules stage behind the commands; helpers for alerts, the schema and command replies.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use kinderwatch::alert::MqttConfig;
use kinderwatch::alert::payload::SCHEMA;
use kinderwatch::app::{Daemon, Detections, Synthetic};
use kinderwatch::config::Config;
use kinderwatch::events::{Event, EventKind, EventObject};
use kinderwatch::perimeter::RecordedEvent;
use kinderwatch::store::Store;
use serde_json::Value;
use tokio::sync::mpsc;

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
    pub daemon: Daemon,
    /// The site's HTTP API (`http://127.0.0.1:<port>`).
    pub api: String,
    _dir: tempfile::TempDir,
}

/// Store + recorder (with the outbox) + publisher + the real rules stage for commands.
pub async fn start_site(config: MqttConfig) -> Site {
    start_site_with(config, new_tokens()).await
}

/// An admin and a read token (token, SHA-256 hex) for [`start_site_with`].
pub fn new_tokens() -> [(String, String); 2] {
    [
        kinderwatch::api::auth::new_token(),
        kinderwatch::api::auth::new_token(),
    ]
}

/// With the site's admin and read tokens given (to use them before the site starts): the daemon's
/// graph with camera `gate` streaming no frames, detections from the test (none), events sent
/// by the test as the rules would.
pub async fn start_site_with(
    mqtt: MqttConfig,
    [(admin_token, admin_hash), (read_token, read_hash)]: [(String, String); 2],
) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let mut config = (*super::fence_config()).clone();
    config.mqtt = Some(mqtt);
    config.store.min_free_mb = 1;
    config.state.dir = dir.path().to_owned();
    config.api.tokens = vec![
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
    ];
    let store = Store::open(&dir.path().join("events.db"), &config.store).unwrap();
    let listener = kinderwatch::api::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let daemon = Daemon::builder(&config)
        .frames(Synthetic::new(|_, _| None))
        .detections(Detections::Caller)
        .store(store.clone())
        .api(listener)
        .start()
        .await
        .unwrap();
    Site {
        events: daemon.events_input(),
        store,
        admin_token,
        read_token,
        daemon,
        api,
        _dir: dir,
    }
}

impl Site {
    /// `GET /healthz` (off the async workers).
    pub async fn health(&self) -> Value {
        let url = format!("{}/healthz", self.api);
        tokio::task::spawn_blocking(move || match ureq::get(&url).call() {
            Ok(r) => r.into_json::<Value>().unwrap(),
            Err(ureq::Error::Status(_, r)) => r.into_json::<Value>().unwrap(),
            Err(e) => panic!("{url}: {e}"),
        })
        .await
        .unwrap()
    }

    pub async fn stop(self) {
        let report = self.daemon.shutdown(Duration::from_secs(10)).await;
        assert!(report.clean, "the site stops: {report:?}");
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
