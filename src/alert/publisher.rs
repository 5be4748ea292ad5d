//! The publisher: one task owns the MQTT client and its event loop and polls it continuously.
//!
//! Per connection: connect (last will: retained `offline`) → retained `online` and every camera's
//! status → subscribe to the command topics → publish the outbox from its oldest entry, in order,
//! at most `max_inflight` unacknowledged at a time. An entry leaves the outbox only when its
//! PUBACK arrives. A lost connection drops the client and its event loop (with their unsent
//! queue) and starts over after a backoff: the next connection publishes the outbox again from
//! its oldest entry, so everything not acknowledged is sent again (at-least-once; the event id
//! is the idempotency key).
//!
//! Matching PUBACKs to outbox entries: every publish is QoS 1 and rumqttc reports each one as
//! `Outgoing::Publish(pkid)` in the order they were queued, so a FIFO of what was queued gives
//! each packet id its outbox sequence.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PubAckReason, PublishProperties};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::MqttConfig;
use super::commands::{self, CommandContext};
use super::payload::{self, Topics};
use crate::api::CameraView;
use crate::store::recorder::LiveEvent;
use crate::store::{OutboxEntry, Store};

/// A broker unreachable for this long is a health warning (logged once per outage).
pub const UNREACHABLE_WARNING: Duration = Duration::from_secs(60);
/// How often the outbox is looked at when nothing woke the publisher.
const OUTBOX_POLL: Duration = Duration::from_millis(500);

pub struct PublisherSettings {
    pub config: MqttConfig,
    pub site: String,
    pub cameras: Arc<Vec<CameraView>>,
    pub commands: CommandContext,
    /// Events the store could not write yet (disk full), published at once outside the outbox.
    pub live: Option<mpsc::Receiver<LiveEvent>>,
}

/// What a queued publish was.
#[derive(Debug, Clone, Copy)]
enum Tag {
    Outbox { seq: u64, event_ms: u64 },
    Other,
}

/// Builds the client options; errors name the config key.
pub fn mqtt_options(config: &MqttConfig, site: &str) -> anyhow::Result<MqttOptions> {
    let topics = Topics {
        prefix: config.topic_prefix(site),
    };
    let mut opts = MqttOptions::new(config.client_id(site), config.host.trim(), config.port());
    opts.set_keep_alive(config.keep_alive);
    opts.set_clean_start(true);
    opts.set_connection_timeout(10);
    opts.set_last_will(LastWill::new(
        topics.status(),
        "offline",
        QoS::AtLeastOnce,
        true,
        None,
    ));
    if let Some(c) = config
        .credentials()
        .map_err(|e| anyhow::anyhow!("mqtt: {e}"))?
    {
        opts.set_credentials(c.username.clone(), c.password());
    }
    if config.tls {
        install_crypto_provider();
        let read = |key: &str, p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| anyhow::anyhow!("mqtt.{key}: cannot read {}: {e}", p.display()))
        };
        let ca = match &config.ca_file {
            Some(p) => read("ca_file", p)?,
            None => anyhow::bail!("mqtt.ca_file: tls = true needs the broker's CA certificate"),
        };
        let client_auth = match (&config.client_cert_file, &config.client_key_file) {
            (Some(c), Some(k)) => Some((read("client_cert_file", c)?, read("client_key_file", k)?)),
            _ => None,
        };
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(opts)
}

/// rustls needs a process-wide crypto provider; ring is the one built in.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs until `cancel`; on the way out publishes `offline` (retained) and disconnects.
pub async fn run(store: Store, mut settings: PublisherSettings, cancel: CancellationToken) {
    let mut live = settings.live.take();
    let topics = Topics {
        prefix: settings.config.topic_prefix(&settings.site),
    };
    let mut backoff = settings.config.backoff_initial;
    let mut down_since: Option<Instant> = None;
    let mut warned_unreachable = false;
    let mut last_error: Option<String> = None;
    let mut repeats = 0u64;
    metrics::gauge!("kinderwatch_mqtt_connected").set(0.0);
    loop {
        let options = match mqtt_options(&settings.config, &settings.site) {
            Ok(o) => o,
            Err(e) => {
                error!(error = %e, "MQTT disabled: the client cannot be configured");
                return;
            }
        };
        let (client, eventloop) = AsyncClient::new(options, 1024);
        let mut session = Session::new(&store, &settings, &topics, client);
        let outcome = session.run(eventloop, &mut live, &cancel).await;
        metrics::gauge!("kinderwatch_mqtt_connected").set(0.0);
        match outcome {
            Outcome::Stopped => return,
            Outcome::Lost {
                error,
                was_connected,
            } => {
                metrics::counter!("kinderwatch_mqtt_connection_errors_total").increment(1);
                if was_connected {
                    backoff = settings.config.backoff_initial;
                    down_since = Some(Instant::now());
                    warned_unreachable = false;
                    warn!(error = %error, host = %settings.config.host, "MQTT connection lost; reconnecting (alerts wait in the outbox)");
                    last_error = None;
                } else {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    // The same error again is logged at most once a minute, with a count.
                    if last_error.as_deref() != Some(error.as_str()) {
                        error!(error = %error, host = %settings.config.host, port = settings.config.port(),
                               retry_in_s = backoff.as_secs_f64(), "MQTT broker connection failed");
                        last_error = Some(error);
                        repeats = 0;
                    } else {
                        repeats += 1;
                    }
                    if since.elapsed() >= UNREACHABLE_WARNING && !warned_unreachable {
                        warned_unreachable = true;
                        let waiting = store.outbox_len();
                        warn!(
                            down_s = since.elapsed().as_secs(),
                            outbox = waiting,
                            repeats,
                            error = last_error.as_deref().unwrap_or(""),
                            "MQTT broker unreachable: alerts wait in the outbox and go out when it is back"
                        );
                    }
                }
            }
        }
        let jitter = rand::random_range(0.8..1.2);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
        }
        backoff = (backoff * 2).min(settings.config.backoff_max);
    }
}

/// Outbox entries (with their JPEG when snapshots are published) read off the async workers.
/// An outbox read: the entries (with snapshots when they are published) and how many were asked for.
type OutboxRead = tokio::task::JoinHandle<
    Result<(Vec<(OutboxEntry, Option<Vec<u8>>)>, usize), crate::store::StoreError>,
>;

/// A command response: topic, correlation data, body.
type Response = (String, Option<Bytes>, Vec<u8>);

enum Outcome {
    Stopped,
    Lost { error: String, was_connected: bool },
}

/// One connection's state.
struct Session<'a> {
    store: &'a Store,
    settings: &'a PublisherSettings,
    topics: &'a Topics,
    client: AsyncClient,
    connected: bool,
    /// Publishes queued and not yet reported sent, in order.
    queued: VecDeque<Tag>,
    /// Sent and waiting for PUBACK, by packet id.
    in_flight: HashMap<u16, Tag>,
    outbox_in_flight: usize,
    /// The last outbox sequence queued on this connection.
    last_seq: Option<u64>,
    outbox_read: Option<OutboxRead>,
    /// The outbox may hold entries this connection has not read: set by the store's notification,
    /// the poll tick and a read that filled its window; cleared when a read starts. Without it the
    /// loop would read an empty outbox again and again (it once cost 84 % of a core, idle).
    outbox_unread: bool,
    acks: Vec<u64>,
    responses: (mpsc::Sender<Response>, mpsc::Receiver<Response>),
    camera_states: Vec<Option<serde_json::Value>>,
    gauges_at: Instant,
}

impl<'a> Session<'a> {
    fn new(
        store: &'a Store,
        settings: &'a PublisherSettings,
        topics: &'a Topics,
        client: AsyncClient,
    ) -> Self {
        Self {
            store,
            settings,
            topics,
            client,
            connected: false,
            queued: VecDeque::new(),
            in_flight: HashMap::new(),
            outbox_in_flight: 0,
            last_seq: None,
            outbox_read: None,
            outbox_unread: true,
            acks: Vec::new(),
            responses: mpsc::channel(64),
            camera_states: vec![None; settings.cameras.len()],
            gauges_at: Instant::now(),
        }
    }

    async fn run(
        &mut self,
        mut eventloop: EventLoop,
        live: &mut Option<mpsc::Receiver<LiveEvent>>,
        cancel: &CancellationToken,
    ) -> Outcome {
        let mut poll_outbox = tokio::time::interval(OUTBOX_POLL);
        let mut camera_tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            self.maybe_read_outbox();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.goodbye(&mut eventloop).await;
                    return Outcome::Stopped;
                }
                ev = eventloop.poll() => match ev {
                    Ok(ev) => self.on_event(ev),
                    Err(e) => return Outcome::Lost { error: describe(&e), was_connected: self.connected },
                },
                read = async { self.outbox_read.as_mut().expect("guarded").await }, if self.outbox_read.is_some() => {
                    self.outbox_read = None;
                    match read {
                        Ok(Ok((entries, asked))) => {
                            // A full read may have left more behind: read on once the window allows.
                            self.outbox_unread |= entries.len() >= asked;
                            self.publish_entries(entries);
                        }
                        // Retried on the next poll tick.
                        Ok(Err(e)) => warn!(error = %e, "outbox read failed; retrying"),
                        Err(e) => warn!(error = %e, "outbox read task failed; retrying"),
                    }
                }
                Some((topic, correlation, body)) = self.responses.1.recv() => {
                    let props = PublishProperties { correlation_data: correlation, content_type: Some("application/json".into()), ..Default::default() };
                    self.publish(topic, body, false, Some(props), Tag::Other);
                }
                Some(e) = recv_live(live), if self.connected => self.publish_live(e),
                _ = self.store.outbox_changed() => self.outbox_unread = true,
                _ = poll_outbox.tick() => self.outbox_unread = true,
                _ = camera_tick.tick(), if self.connected => self.publish_camera_changes(),
            }
            self.flush_acks();
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(ack)) => {
                self.connected = true;
                metrics::gauge!("kinderwatch_mqtt_connected").set(1.0);
                info!(host = %self.settings.config.host, port = self.settings.config.port(),
                      session_present = ack.session_present, outbox = self.store.outbox_len(),
                      "MQTT connected");
                self.publish(
                    self.topics.status(),
                    b"online".to_vec(),
                    true,
                    None,
                    Tag::Other,
                );
                self.camera_states.iter_mut().for_each(|s| *s = None);
                self.publish_camera_changes();
                if let Err(e) = self
                    .client
                    .try_subscribe(self.topics.commands(), QoS::AtLeastOnce)
                {
                    warn!(error = %e, "cannot subscribe to the command topics");
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(tag) = self.queued.pop_front() {
                    self.in_flight.insert(pkid, tag);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => match self.in_flight.remove(&ack.pkid) {
                Some(Tag::Outbox { seq, event_ms }) => {
                    self.outbox_in_flight = self.outbox_in_flight.saturating_sub(1);
                    if matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ) {
                        self.acks.push(seq);
                        let now_ms = Timestamp::now().as_millisecond().max(0) as u64;
                        metrics::histogram!("kinderwatch_mqtt_publish_latency_seconds")
                            .record(now_ms.saturating_sub(event_ms) as f64 / 1000.0);
                        metrics::counter!("kinderwatch_mqtt_events_published_total").increment(1);
                    } else {
                        // Kept in the outbox; sent again on the next connection.
                        error!(seq, reason = ?ack.reason, "the broker refused an alert (check its ACL for the events topic); it stays in the outbox");
                    }
                }
                Some(Tag::Other) | None => {}
            },
            Event::Incoming(Packet::Publish(p)) => self.on_command(p),
            Event::Incoming(Packet::Disconnect(d)) => {
                warn!(reason = ?d.reason_code, "the broker disconnected us");
            }
            _ => {}
        }
    }

    fn maybe_read_outbox(&mut self) {
        let window = self.settings.config.max_inflight as usize;
        if !self.connected
            || !self.outbox_unread
            || self.outbox_read.is_some()
            || self.outbox_in_flight >= window
        {
            return;
        }
        self.outbox_unread = false;
        let (store, after, n) = (
            self.store.clone(),
            self.last_seq,
            window - self.outbox_in_flight,
        );
        let snapshots = self.settings.config.publish_snapshots;
        self.outbox_read = Some(tokio::task::spawn_blocking(move || {
            let entries = store.outbox_after(after, n)?;
            let entries = entries
                .into_iter()
                .map(|e| {
                    let jpeg = match snapshots && e.snapshot_len > 0 {
                        true => store.snapshot(&e.event.id)?,
                        false => None,
                    };
                    Ok((e, jpeg))
                })
                .collect::<Result<Vec<_>, crate::store::StoreError>>()?;
            Ok((entries, n))
        }));
    }

    fn publish_entries(&mut self, entries: Vec<(OutboxEntry, Option<Vec<u8>>)>) {
        let c = &self.settings.config;
        for (entry, jpeg) in entries {
            let e = &entry.event;
            let body = serde_json::to_vec(&payload::build(
                e,
                entry.snapshot_len,
                self.topics,
                c.snapshot_base_url.as_deref(),
                c.publish_snapshots,
            ))
            .expect("payload serialises");
            let topic = self.topics.event(e);
            let props = PublishProperties {
                payload_format_indicator: Some(1),
                content_type: Some("application/json".into()),
                message_expiry_interval: expiry(c.message_expiry),
                ..Default::default()
            };
            let tag = Tag::Outbox {
                seq: entry.seq,
                event_ms: e.time.as_millisecond().max(0) as u64,
            };
            if !self.publish(topic.clone(), body, false, Some(props), tag) {
                break;
            }
            self.outbox_in_flight += 1;
            self.last_seq = Some(entry.seq);
            debug!(event_id = %e.id, seq = entry.seq, "alert published");
            // The picture after the alert, best effort (the alert carries where to fetch it).
            if let Some(jpeg) = jpeg {
                let props = PublishProperties {
                    content_type: Some("image/jpeg".into()),
                    message_expiry_interval: expiry(c.message_expiry),
                    ..Default::default()
                };
                self.publish(
                    format!("{topic}/snapshot"),
                    jpeg,
                    false,
                    Some(props),
                    Tag::Other,
                );
            }
        }
    }

    /// An event the store has not written yet: published now, not tracked (the outbox sends it
    /// again once it is written).
    fn publish_live(&mut self, e: LiveEvent) {
        let c = &self.settings.config;
        let body = serde_json::to_vec(&payload::build(
            &e.event,
            e.snapshot_len,
            self.topics,
            None,
            false,
        ))
        .expect("payload serialises");
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            content_type: Some("application/json".into()),
            message_expiry_interval: expiry(c.message_expiry),
            ..Default::default()
        };
        if self.publish(
            self.topics.event(&e.event),
            body,
            false,
            Some(props),
            Tag::Other,
        ) {
            metrics::counter!("kinderwatch_mqtt_live_published_total").increment(1);
            debug!(event_id = %e.event.id, "alert published live (not yet stored)");
        }
    }

    /// Queues a QoS 1 publish; false if the client's queue is full (tried again later).
    fn publish(
        &mut self,
        topic: String,
        body: Vec<u8>,
        retain: bool,
        props: Option<PublishProperties>,
        tag: Tag,
    ) -> bool {
        let result = match props {
            Some(p) => {
                self.client
                    .try_publish_with_properties(topic, QoS::AtLeastOnce, retain, body, p)
            }
            None => self
                .client
                .try_publish(topic, QoS::AtLeastOnce, retain, body),
        };
        match result {
            Ok(()) => {
                self.queued.push_back(tag);
                true
            }
            Err(e) => {
                debug!(error = %e, "MQTT client queue full");
                false
            }
        }
    }

    fn flush_acks(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        let seqs = std::mem::take(&mut self.acks);
        let store = self.store.clone();
        // sled counts a tree by walking it: the gauges are refreshed at most once a second.
        let gauges = self.gauges_at.elapsed() >= Duration::from_secs(1);
        if gauges {
            self.gauges_at = Instant::now();
        }
        // Removal is a few microseconds per entry; off the async workers all the same.
        tokio::task::spawn_blocking(move || {
            for seq in seqs {
                if let Err(e) = store.outbox_remove(seq) {
                    warn!(seq, error = %e, "outbox entry not removed; it will be published again");
                }
            }
            if gauges {
                metrics::gauge!("kinderwatch_store_outbox_depth").set(store.outbox_len() as f64);
                if let Ok(oldest) = store.outbox_oldest() {
                    let age = oldest.map_or(0.0, |t| {
                        (Timestamp::now() - t).get_milliseconds() as f64 / 1000.0
                    });
                    metrics::gauge!("kinderwatch_mqtt_oldest_unpublished_seconds")
                        .set(age.max(0.0));
                }
            }
        });
    }

    fn publish_camera_changes(&mut self) {
        let cameras = self.settings.cameras.clone();
        for (i, cam) in cameras.iter().enumerate() {
            let s = cam.status.borrow().clone();
            let v = serde_json::json!({
                "state": s.state.as_str(),
                "since": Timestamp::try_from(s.since).ok().map(|t| t.to_string()),
                "last_error": s.last_error,
            });
            if self.camera_states[i].as_ref() != Some(&v) {
                let body = serde_json::to_vec(&v).expect("json");
                if self.publish(
                    self.topics.camera_status(&cam.id),
                    body,
                    true,
                    None,
                    Tag::Other,
                ) {
                    self.camera_states[i] = Some(v);
                }
            }
        }
    }

    fn on_command(&mut self, p: rumqttc::v5::mqttbytes::v5::Publish) {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let Some(command) = topic
            .strip_prefix(&self.topics.command_prefix())
            .map(str::to_owned)
        else {
            return;
        };
        let (response_topic, correlation) = match &p.properties {
            Some(props) => (props.response_topic.clone(), props.correlation_data.clone()),
            None => (None, None),
        };
        let response_topic = response_topic.unwrap_or_else(|| self.topics.responses());
        let ctx = self.settings.commands.clone();
        let tx = self.responses.0.clone();
        let payload = p.payload.clone();
        metrics::counter!("kinderwatch_mqtt_commands_total").increment(1);
        tokio::spawn(async move {
            let response = commands::handle(&ctx, &command, &payload).await;
            if response["ok"] != true {
                warn!(command = %command, reason = %response["reason"], "MQTT command refused");
            }
            let body = serde_json::to_vec(&response).expect("json");
            let _ = tx.send((response_topic, correlation, body)).await;
        });
    }

    /// Retained `offline`, then DISCONNECT (the broker drops the last will on a clean one).
    async fn goodbye(&mut self, eventloop: &mut EventLoop) {
        if !self.connected {
            return;
        }
        self.publish(
            self.topics.status(),
            b"offline".to_vec(),
            true,
            None,
            Tag::Other,
        );
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    _ => {}
                }
            }
        })
        .await;
        info!("MQTT disconnected");
    }
}

async fn recv_live(rx: &mut Option<mpsc::Receiver<LiveEvent>>) -> Option<LiveEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn expiry(d: Duration) -> Option<u32> {
    (!d.is_zero()).then(|| d.as_secs().clamp(1, u32::MAX as u64) as u32)
}

/// The error in words, without credentials (rumqttc's errors carry none).
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
            match code {
                C::BadUserNamePassword => "the broker refused the credentials (bad username or password: check mqtt.username and mqtt.password_file)".into(),
                // mosquitto answers a wrong password with "not authorized".
                C::NotAuthorized => "the broker refused the credentials (not authorized: check mqtt.username, mqtt.password_file and the broker's ACL)".into(),
                C::ClientIdentifierNotValid | C::BadClientId => "the broker refused the client id (mqtt.client_id)".into(),
                other => format!("the broker refused the connection: {other:?}"),
            }
        }
        other => other.to_string(),
    }
}
