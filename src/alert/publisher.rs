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
//!
//! Nothing can wedge delivery: the site's largest incoming packet is announced in CONNECT (the
//! broker drops larger messages instead of sending them); nothing larger than the broker's CONNACK
//! maximum is ever queued (a snapshot is re-encoded smaller or left out, a reply is cut to a page,
//! an alert that cannot fit goes to the dead letters); an alert the broker refuses in its PUBACK is
//! retried a few times on the same connection, then moved to the dead letters, and the entries
//! behind it go on. Retained command messages are ignored, commands run a few at a time, and
//! replies go only to allowed response topics. rumqttc numbers publishes 1..=the broker's receive
//! maximum and holds every request behind a publish whose number is still in flight until that
//! number's PUBACK comes back *with success*: the outbox keeps at most receive-maximum − 2
//! publishes in the client's hands so that its counter never comes round to one in flight, and a
//! collision that happens anyway (a refused PUBACK under it, or one held over 5 s) starts the
//! connection over instead of waiting for rumqttc's two-keep-alive time-out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PubAckReason, PublishProperties};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::Semaphore;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::MqttConfig;
use super::commands::{self, CommandContext};
use super::fit;
use super::payload::{self, SnapshotDelivery, Topics};
use crate::ops::OpsError;
use crate::ops::cameras::CameraViews;
use crate::store::recorder::LiveEvent;
use crate::store::{DeadLetterReason, OutboxEntry, Store};
use crate::telemetry::mqtt::{self as telemetry, CommandIgnored, SnapshotOmitted};

/// A broker unreachable for this long is a health warning (logged once per outage).
pub const UNREACHABLE_WARNING: Duration = Duration::from_secs(60);
/// How often the outbox is looked at when nothing woke the publisher.
const OUTBOX_POLL: Duration = Duration::from_millis(500);
/// An entry whose move to the dead letters failed is tried again after this.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// After the client's queue was full, the outbox is not read again for this long (the queue
/// drains meanwhile; reading at once would spin).
const FULL_QUEUE_PAUSE: Duration = Duration::from_millis(100);
/// `busy` replies sent per second at most; beyond that a flood's requests are dropped (counted)
/// so that its replies cannot crowd the alerts out of the client's queue.
pub const BUSY_REPLIES_PER_S: u32 = 20;

/// How long a publish rumqttc holds back for a packet id collision may wait before the connection
/// starts over (a PUBACK on a working link takes milliseconds).
const COLLISION_GRACE: Duration = Duration::from_secs(5);

pub struct PublisherSettings {
    pub config: MqttConfig,
    pub site: String,
    pub cameras: CameraViews,
    pub commands: CommandContext,
    /// Events the store could not write yet (disk full), published at once outside the outbox.
    pub live: Option<mpsc::Receiver<LiveEvent>>,
    /// Progress reports: stage `publisher` (this task's loop) and `mqtt_eventloop` (the client's
    /// event loop: an event at least every keep-alive while connected).
    pub stages: Option<crate::progress::Stages>,
    /// The broker connection as the health panel shows it.
    pub link: Option<watch::Sender<MqttLink>>,
}

/// The connection to the broker, for `/healthz` and the console's health panel.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, utoipa::ToSchema)]
pub struct MqttLink {
    pub connected: bool,
    /// Since when it is connected, or not (RFC 3339); `None` before the first attempt ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub since: Option<jiff::Timestamp>,
    /// Why the last attempt or connection failed (no credentials in it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl PublisherSettings {
    /// The connection is now `connected` (or lost, with `error`): the metric and the watch.
    fn report(&self, connected: bool, error: Option<&str>) {
        telemetry::connected(connected);
        if let Some(link) = &self.link {
            link.send_if_modified(|l| {
                let changed = l.connected != connected || l.since.is_none();
                if changed {
                    l.since = Some(jiff::Timestamp::now());
                }
                l.connected = connected;
                if let Some(e) = error {
                    l.last_error = Some(e.to_owned());
                }
                changed || error.is_some()
            });
        }
    }
}

/// The publisher's two stages.
#[derive(Clone, Default)]
struct Beats {
    publisher: Option<crate::progress::Progress>,
    eventloop: Option<crate::progress::Progress>,
}

impl Beats {
    fn publisher(&self) {
        if let Some(p) = &self.publisher {
            p.beat();
        }
    }

    fn eventloop(&self) {
        if let Some(p) = &self.eventloop {
            p.beat();
        }
    }

    fn retire(&self) {
        for p in [&self.publisher, &self.eventloop].into_iter().flatten() {
            p.retire();
        }
    }
}

/// What a queued publish was.
#[derive(Debug, Clone, Copy)]
enum Tag {
    Outbox {
        seq: u64,
        event_ms: u64,
        event_id: Uuid,
    },
    Other,
}

/// Whether a publish was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queued {
    Yes,
    /// The client's queue is full: try again later.
    Full,
    /// Larger than the broker's maximum packet size: it can never be sent.
    TooLarge {
        size: usize,
        max: usize,
    },
}

/// What outlives one connection.
struct Delivery {
    /// PUBACK refusals per outbox sequence.
    refusals: HashMap<u64, u32>,
    /// Cameras whose retained status this daemon published and has not cleared: a camera a live
    /// reload removed is cleared on the next connection that can, whichever that is.
    cameras_published: std::collections::HashSet<Arc<str>>,
    warned_retained: bool,
    commands: Arc<Semaphore>,
}

/// The pause before an alert refused `n` times is sent again.
fn retry_delay(n: u32) -> Duration {
    Duration::from_millis(500u64 << n.min(6)).min(Duration::from_secs(30))
}

/// Builds the client options; errors name the config key.
pub fn mqtt_options(config: &MqttConfig, site: &str) -> anyhow::Result<MqttOptions> {
    options(config, site, config.client_id(site), true)
}

/// The options `kinderwatch doctor` connects with: the site's broker, TLS and credentials, but a
/// client id of its own (`<client id>-doctor`, so that a running daemon's session is not taken
/// over) and no last will (no `offline` when it leaves).
pub fn doctor_options(config: &MqttConfig, site: &str) -> anyhow::Result<MqttOptions> {
    options(
        config,
        site,
        format!("{}-doctor", config.client_id(site)),
        false,
    )
}

/// The options a city center instance connects with (`kinderwatch center`): the broker, TLS and
/// credentials of `config`, the instance's client id, no last will.
pub fn center_options(config: &MqttConfig, client_id: &str) -> anyhow::Result<MqttOptions> {
    options(config, client_id, client_id.to_owned(), false)
}

fn options(
    config: &MqttConfig,
    site: &str,
    client_id: String,
    last_will: bool,
) -> anyhow::Result<MqttOptions> {
    let topics = Topics {
        prefix: config.topic_prefix(site),
    };
    let mut opts = MqttOptions::new(client_id, config.host.trim(), config.port());
    opts.set_keep_alive(config.keep_alive);
    opts.set_clean_start(true);
    // Also the limit rumqttc enforces on what it reads.
    opts.set_max_packet_size(Some(config.max_incoming_packet));
    opts.set_connection_timeout(10);
    if last_will {
        opts.set_last_will(LastWill::new(
            topics.status(),
            "offline",
            QoS::AtLeastOnce,
            true,
            None,
        ));
    }
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
    telemetry::connected(false);
    let beats = match &settings.stages {
        Some(stages) => Beats {
            publisher: Some(stages.register("publisher")),
            // Connecting is bounded by rumqttc's 5 s timeout; a connected, idle client pings once
            // per keep-alive.
            eventloop: Some(stages.register_with(
                "mqtt_eventloop",
                settings.config.keep_alive * 3 / 2 + Duration::from_secs(10),
            )),
        },
        None => Beats::default(),
    };
    let outcome = publish_until_stopped(&store, &mut settings, &mut live, &beats, &cancel).await;
    beats.retire();
    outcome
}

async fn publish_until_stopped(
    store: &Store,
    settings: &mut PublisherSettings,
    live: &mut Option<mpsc::Receiver<LiveEvent>>,
    beats: &Beats,
    cancel: &CancellationToken,
) {
    let topics = Topics {
        prefix: settings.config.topic_prefix(&settings.site),
    };
    let mut backoff = settings.config.backoff_initial;
    let mut down_since: Option<Instant> = None;
    let mut warned_unreachable = false;
    let mut last_error: Option<String> = None;
    let mut repeats = 0u64;
    let mut delivery = Delivery {
        refusals: HashMap::new(),
        cameras_published: Default::default(),
        warned_retained: false,
        commands: Arc::new(Semaphore::new(
            settings.config.max_concurrent_commands.max(1),
        )),
    };
    loop {
        let options = match mqtt_options(&settings.config, &settings.site) {
            Ok(o) => o,
            Err(e) => {
                error!(error = %e, "MQTT disabled: the client cannot be configured");
                return;
            }
        };
        let (client, eventloop) = AsyncClient::new(options, 1024);
        let mut session = Session::new(store, settings, &topics, client, &mut delivery);
        let outcome = session.run(eventloop, live, beats, cancel).await;
        match &outcome {
            Outcome::Lost { error, .. } => settings.report(false, Some(error)),
            Outcome::Stopped => settings.report(false, None),
        }
        match outcome {
            Outcome::Stopped => return,
            Outcome::Lost {
                error,
                was_connected,
            } => {
                telemetry::connection_error();
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
        let until = tokio::time::Instant::now() + backoff.mul_f64(jitter);
        let mut beat = tokio::time::interval(crate::progress::BEAT_PERIOD);
        loop {
            // No event loop while waiting to reconnect: both stages are idle, not stuck.
            beats.publisher();
            beats.eventloop();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(until) => break,
                _ = beat.tick() => {}
            }
        }
        backoff = (backoff * 2).min(settings.config.backoff_max);
    }
}

/// An outbox entry ready to publish: its snapshot fitted to the broker's limit.
struct Prepared {
    entry: OutboxEntry,
    /// Read again after a refusal (its sequence is behind the connection's last one).
    retry: bool,
    jpeg: Option<Vec<u8>>,
    snapshot: SnapshotDelivery,
}

/// An outbox read off the async workers: the entries and how many new ones were asked for.
type OutboxRead = tokio::task::JoinHandle<Result<(Vec<Prepared>, usize), crate::store::StoreError>>;

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
    /// Per camera, the status this connection published last (`None`: publish it again). A
    /// camera a live reload removed stays here until its retained status is cleared.
    camera_states: HashMap<Arc<str>, Option<serde_json::Value>>,
    gauges_at: Instant,
    /// The broker's maximum packet size (CONNACK), if it has one.
    max_packet: Option<usize>,
    /// The broker's receive maximum (CONNACK): rumqttc numbers publishes 1..=it.
    receive_max: u16,
    /// A publish rumqttc holds back because its packet id is still in flight (`AwaitAck`), and
    /// since when; it sends nothing more until that id's PUBACK comes back with success.
    collision: Option<(u16, Instant)>,
    /// Why this connection must be dropped (a collision rumqttc will not resolve), and since
    /// when: it is, once the PUBACKs of what was sent are in.
    wedged: Option<(String, Instant)>,
    /// Refused alerts to send again: (when, sequence).
    retry: Vec<(Instant, u64)>,
    /// The retries the outbox read in progress holds (back to `retry` if it fails).
    reading: Vec<u64>,
    /// Entries whose dead-letter move failed, back from the blocking task.
    retry_back: (mpsc::UnboundedSender<u64>, mpsc::UnboundedReceiver<u64>),
    /// No outbox read before this (the client's queue was full).
    read_paused_until: Option<Instant>,
    /// `busy` replies in the current second: (second started, count).
    busy_replies: (Instant, u32),
    delivery: &'a mut Delivery,
}

impl<'a> Session<'a> {
    fn new(
        store: &'a Store,
        settings: &'a PublisherSettings,
        topics: &'a Topics,
        client: AsyncClient,
        delivery: &'a mut Delivery,
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
            camera_states: delivery
                .cameras_published
                .iter()
                .map(|id| (id.clone(), None))
                .collect(),
            gauges_at: Instant::now(),
            max_packet: None,
            receive_max: u16::MAX,
            collision: None,
            wedged: None,
            retry: Vec::new(),
            reading: Vec::new(),
            retry_back: mpsc::unbounded_channel(),
            read_paused_until: None,
            busy_replies: (Instant::now(), 0),
            delivery,
        }
    }

    async fn run(
        &mut self,
        eventloop: EventLoop,
        live: &mut Option<mpsc::Receiver<LiveEvent>>,
        beats: &Beats,
        cancel: &CancellationToken,
    ) -> Outcome {
        // The event loop is polled in a task of its own and never cancelled: rumqttc takes a
        // publish off its queue and counts it in flight before writing it, so a `poll()` dropped
        // by this select while the write waits (a snapshot on a slow uplink) would lose the
        // packet and keep its slot in the window for good.
        let (events_tx, mut events) = mpsc::channel(256);
        let poller = AbortOnDrop(tokio::spawn(poll_events(
            eventloop,
            events_tx,
            beats.clone(),
        )));
        let mut poll_outbox = tokio::time::interval(OUTBOX_POLL);
        let mut camera_tick = tokio::time::interval(Duration::from_millis(500));
        let outcome = loop {
            beats.publisher();
            self.maybe_read_outbox();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.goodbye(&mut events).await;
                    break Outcome::Stopped;
                }
                ev = events.recv() => match ev {
                    Some(Ok(ev)) => self.on_event(ev),
                    Some(Err(e)) => break Outcome::Lost { error: describe_error(&e), was_connected: self.connected },
                    None => break Outcome::Lost { error: "the MQTT event loop stopped".into(), was_connected: self.connected },
                },
                read = async { self.outbox_read.as_mut().expect("guarded").await }, if self.outbox_read.is_some() => {
                    self.outbox_read = None;
                    match read {
                        Ok(Ok((entries, asked))) => {
                            self.reading.clear();
                            // A full read may have left more behind: read on once the window allows.
                            let new = entries.iter().filter(|e| !e.retry).count();
                            self.outbox_unread |= asked > 0 && new >= asked;
                            self.publish_entries(entries);
                        }
                        // Read again on the next poll tick, the retries among them.
                        Ok(Err(e)) => {
                            warn!(error = %e, "outbox read failed; retrying");
                            self.retry_unread();
                        }
                        Err(e) => {
                            warn!(error = %e, "outbox read task failed; retrying");
                            self.retry_unread();
                        }
                    }
                }
                Some(seq) = self.retry_back.1.recv() => self.retry.push((Instant::now() + RETRY_AFTER_FAILURE, seq)),
                Some((topic, correlation, body)) = self.responses.1.recv() => {
                    let props = reply_props(correlation);
                    match self.publish(topic, body, false, Some(props), Tag::Other) {
                        Queued::Yes => {}
                        Queued::Full => reply_dropped("the client's queue is full"),
                        Queued::TooLarge { .. } => reply_dropped("larger than the broker's maximum packet size"),
                    }
                }
                Some(e) = recv_live(live), if self.connected => self.publish_live(e),
                _ = self.store.outbox_changed() => self.outbox_unread = true,
                _ = poll_outbox.tick() => self.outbox_unread = true,
                _ = camera_tick.tick(), if self.connected => self.publish_camera_changes(),
            }
            self.flush_acks();
            if let Some(why) = self.wedge() {
                warn!(reason = %why, "MQTT delivery is held up inside the client; reconnecting");
                break Outcome::Lost {
                    error: why,
                    was_connected: self.connected,
                };
            }
        };
        drop(poller);
        outcome
    }

    /// Why the connection must start over: a collision rumqttc will not resolve (its PUBACK was
    /// a refusal; once the PUBACKs of everything sent are in, so that they count), or one that
    /// has lasted [`COLLISION_GRACE`].
    fn wedge(&mut self) -> Option<String> {
        if let Some((why, at)) = &self.wedged
            && (self.in_flight.is_empty() || at.elapsed() >= COLLISION_GRACE)
        {
            return Some(why.clone());
        }
        match self.collision {
            Some((pkid, since)) if since.elapsed() >= COLLISION_GRACE => Some(format!(
                "rumqttc has held a publish for {:?} waiting for packet id {pkid}",
                since.elapsed()
            )),
            _ => None,
        }
    }

    /// The retries of a read that failed go back to the retry list (they are behind
    /// `last_seq`: nothing else would read them again on this connection).
    fn retry_unread(&mut self) {
        let now = Instant::now();
        let back: Vec<(Instant, u64)> = self.reading.drain(..).map(|seq| (now, seq)).collect();
        self.retry.extend(back);
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(ack)) => {
                self.connected = true;
                self.max_packet = ack
                    .properties
                    .as_ref()
                    .and_then(|p| p.max_packet_size)
                    .map(|m| m as usize);
                self.receive_max = ack
                    .properties
                    .as_ref()
                    .and_then(|p| p.receive_max)
                    .unwrap_or(u16::MAX);
                self.settings.report(true, None);
                info!(host = %self.settings.config.host, port = self.settings.config.port(),
                      session_present = ack.session_present, outbox = self.store.outbox_len(),
                      broker_max_packet = self.max_packet, "MQTT connected");
                // The SUBSCRIBE first: its packet id is then taken before any publish is in
                // flight, and rumqttc's counter cannot come round to a publish still in flight.
                if let Err(e) = self
                    .client
                    .try_subscribe(self.topics.commands(), QoS::AtLeastOnce)
                {
                    warn!(error = %e, "cannot subscribe to the command topics");
                }
                self.publish(
                    self.topics.status(),
                    b"online".to_vec(),
                    true,
                    None,
                    Tag::Other,
                );
                self.camera_states.values_mut().for_each(|s| *s = None);
                self.publish_camera_changes();
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if self.collision.is_some_and(|(c, _)| c == pkid) {
                    self.collision = None;
                }
                if let Some(tag) = self.queued.pop_front() {
                    self.in_flight.insert(pkid, tag);
                }
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                debug!(
                    pkid,
                    "rumqttc holds a publish until packet id {pkid} is acknowledged"
                );
                self.collision = Some((pkid, Instant::now()));
            }
            Event::Incoming(Packet::PubAck(ack))
                if self.collision.is_some_and(|(c, _)| c == ack.pkid)
                    && !matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ) =>
            {
                // rumqttc resolves a collision only on a successful PUBACK: the publish it holds
                // would wait for its collision time-out (two keep-alives). The refused entry is
                // counted as refused; the connection starts over.
                self.wedged = Some((
                    format!(
                        "the broker refused packet id {} ({:?}) while rumqttc held a publish behind it",
                        ack.pkid, ack.reason
                    ),
                    Instant::now(),
                ));
                if let Some(Tag::Outbox { seq, event_id, .. }) = self.in_flight.remove(&ack.pkid) {
                    self.outbox_in_flight = self.outbox_in_flight.saturating_sub(1);
                    self.refused(seq, event_id, ack.reason);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => match self.in_flight.remove(&ack.pkid) {
                Some(Tag::Outbox {
                    seq,
                    event_ms,
                    event_id,
                }) => {
                    self.outbox_in_flight = self.outbox_in_flight.saturating_sub(1);
                    if matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ) {
                        self.delivery.refusals.remove(&seq);
                        self.acks.push(seq);
                        let now_ms = Timestamp::now().as_millisecond().max(0) as u64;
                        telemetry::published(Duration::from_millis(
                            now_ms.saturating_sub(event_ms),
                        ));
                    } else {
                        self.refused(seq, event_id, ack.reason);
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

    /// A refusal in a PUBACK: sent again after a pause, until `max_delivery_attempts`; then the
    /// entry moves to the dead letters and the ones behind it go on.
    fn refused(&mut self, seq: u64, event_id: Uuid, reason: PubAckReason) {
        telemetry::refused();
        let n = {
            let n = self.delivery.refusals.entry(seq).or_insert(0);
            *n += 1;
            *n
        };
        let max = self.settings.config.max_delivery_attempts;
        if n >= max {
            self.delivery.refusals.remove(&seq);
            self.dead_letter(
                seq,
                event_id,
                DeadLetterReason::Refused,
                format!("the broker answered {reason:?} {n} times"),
                n,
            );
        } else {
            let delay = retry_delay(n);
            warn!(%event_id, seq, reason = ?reason, attempt = n, of = max, retry_in_s = delay.as_secs_f64(),
                  "the broker refused an alert (check its ACL for the events topic); sending it again");
            self.retry.push((Instant::now() + delay, seq));
        }
    }

    /// Moves an entry to the dead letters (off the async workers); logged once, with its event id.
    fn dead_letter(
        &mut self,
        seq: u64,
        event_id: Uuid,
        reason: DeadLetterReason,
        detail: String,
        attempts: u32,
    ) {
        error!(%event_id, seq, reason = reason.as_str(), detail = %detail,
               "alert moved to the dead letters; the alerts behind it go on (re-queue it with `kinderwatch dead-letters --requeue`)");
        let store = self.store.clone();
        let back = self.retry_back.0.clone();
        tokio::task::spawn_blocking(move || {
            // The store counts the move (`kinderwatch_mqtt_dead_letters*`): the dead letters are its.
            match store.dead_letter(seq, reason, &detail, attempts) {
                Ok(_) => {}
                Err(e) => {
                    warn!(%event_id, error = %e, "dead letter not written; the alert stays in the outbox and is tried again");
                    let _ = back.send(seq);
                }
            }
        });
    }

    fn maybe_read_outbox(&mut self) {
        // rumqttc numbers publishes 1..=receive_max and its SUBSCRIBE takes a number too: with
        // more than receive_max - 2 publishes in its hands its counter can come round to an id
        // still in flight (a collision, which holds every request behind it).
        let in_hands = self.in_flight.len() + self.queued.len();
        let numbering = (self.receive_max as usize).saturating_sub(2).max(1);
        // An alert with its snapshot is two publishes.
        let per_entry = if self.settings.config.publish_snapshots {
            2
        } else {
            1
        };
        let window = (self.settings.config.max_inflight as usize)
            .min(self.outbox_in_flight + numbering.saturating_sub(in_hands) / per_entry);
        if !self.connected || self.outbox_read.is_some() || self.outbox_in_flight >= window {
            return;
        }
        let now = Instant::now();
        if self.read_paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.read_paused_until = None;
        let room = window - self.outbox_in_flight;
        let mut due = Vec::new();
        self.retry.retain(|&(at, seq)| {
            if at <= now && due.len() < room {
                due.push(seq);
                false
            } else {
                true
            }
        });
        let fresh = if self.outbox_unread {
            room - due.len()
        } else {
            0
        };
        if due.is_empty() && fresh == 0 {
            return;
        }
        if fresh > 0 {
            self.outbox_unread = false;
        }
        self.reading = due.clone();
        let (store, after) = (self.store.clone(), self.last_seq);
        let snapshots = self.settings.config.publish_snapshots;
        let max_packet = self.max_packet;
        let prefix = self.topics.prefix.clone();
        // For sizing only: the nil id is as long as every event id.
        let props = snapshot_props(&self.settings.config, Uuid::nil());
        self.outbox_read = Some(tokio::task::spawn_blocking(move || {
            let topics = Topics { prefix };
            let mut entries = Vec::new();
            for seq in due {
                if let Some(e) = store.outbox_get(seq)? {
                    entries.push((e, true));
                }
            }
            if fresh > 0 {
                entries.extend(
                    store
                        .outbox_after(after, fresh)?
                        .into_iter()
                        .map(|e| (e, false)),
                );
            }
            let prepared = entries
                .into_iter()
                .map(|(entry, retry)| {
                    let (jpeg, snapshot) = match snapshots && entry.snapshot_len > 0 {
                        true => fit_snapshot(&store, &entry, &topics, &props, max_packet)?,
                        false => (None, SnapshotDelivery::NotPublished),
                    };
                    Ok(Prepared {
                        entry,
                        retry,
                        jpeg,
                        snapshot,
                    })
                })
                .collect::<Result<Vec<_>, crate::store::StoreError>>()?;
            Ok((prepared, fresh))
        }));
    }

    fn publish_entries(&mut self, entries: Vec<Prepared>) {
        let c = &self.settings.config;
        let mut entries = entries.into_iter();
        while let Some(p) = entries.next() {
            let e = &p.entry.event;
            let body = serde_json::to_vec(&payload::build(
                e,
                p.entry.snapshot_len,
                self.topics,
                c.snapshot_base_url.as_deref(),
                p.snapshot,
            ))
            .expect("payload serialises");
            let topic = self.topics.event(e);
            let tag = Tag::Outbox {
                seq: p.entry.seq,
                event_ms: e.time.as_millisecond().max(0) as u64,
                event_id: e.id,
            };
            let (seq, event_id) = (p.entry.seq, e.id);
            match self.publish(topic.clone(), body, false, Some(alert_props(c)), tag) {
                Queued::Yes => {}
                Queued::Full => {
                    // Read again later: retried entries from the retry list, the rest after
                    // `last_seq`.
                    let now = Instant::now();
                    self.retry.extend(
                        std::iter::once(&p)
                            .chain(entries.as_slice())
                            .filter(|p| p.retry)
                            .map(|p| (now, p.entry.seq)),
                    );
                    self.outbox_unread = true;
                    self.read_paused_until = Some(now + FULL_QUEUE_PAUSE);
                    break;
                }
                Queued::TooLarge { size, max } => {
                    if !p.retry {
                        self.last_seq = Some(seq);
                    }
                    self.dead_letter(
                        seq,
                        event_id,
                        DeadLetterReason::TooLarge,
                        format!("the alert is a {size}-byte packet; the broker accepts {max}"),
                        1,
                    );
                    continue;
                }
            }
            self.outbox_in_flight += 1;
            if !p.retry {
                self.last_seq = Some(seq);
            }
            debug!(%event_id, seq, "alert published");
            // The picture after the alert, best effort (the alert carries where to fetch it).
            if let Some(jpeg) = p.jpeg {
                let queued = self.publish(
                    format!("{topic}/snapshot"),
                    jpeg,
                    false,
                    Some(snapshot_props(c, event_id)),
                    Tag::Other,
                );
                // The alert already says a picture follows: one that could not be queued is
                // counted and logged, and stays fetchable over HTTP.
                let why = match queued {
                    Queued::Yes => None,
                    Queued::Full => Some(SnapshotOmitted::QueueFull),
                    Queued::TooLarge { .. } => Some(SnapshotOmitted::TooLarge),
                };
                if let Some(reason) = why {
                    telemetry::snapshot_omitted(reason);
                    warn!(%event_id, reason = reason.as_str(), "snapshot not published after its alert (fetch it over HTTP)");
                }
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
            SnapshotDelivery::NotPublished,
        ))
        .expect("payload serialises");
        if self.publish(
            self.topics.event(&e.event),
            body,
            false,
            Some(alert_props(c)),
            Tag::Other,
        ) == Queued::Yes
        {
            telemetry::live_published();
            debug!(event_id = %e.event.id, "alert published live (not yet stored)");
        }
    }

    /// Queues a QoS 1 publish unless it is larger than the broker accepts or the client's queue is
    /// full.
    fn publish(
        &mut self,
        topic: String,
        body: Vec<u8>,
        retain: bool,
        props: Option<PublishProperties>,
        tag: Tag,
    ) -> Queued {
        if let Some(max) = self.max_packet {
            let size = fit::packet_size(&topic, props.as_ref(), body.len());
            if size > max {
                telemetry::too_large();
                return Queued::TooLarge { size, max };
            }
        }
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
                Queued::Yes
            }
            Err(e) => {
                debug!(error = %e, "MQTT client queue full");
                Queued::Full
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
        // One transaction for the batch of PUBACKs, off the async workers.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.outbox_remove_all(&seqs) {
                warn!(entries = seqs.len(), error = %e, "outbox entries not removed; they will be published again");
            }
            if gauges {
                store.refresh_outbox_depth();
                if let Ok(oldest) = store.outbox_oldest() {
                    let age_ms =
                        oldest.map_or(0, |t| (Timestamp::now() - t).get_milliseconds().max(0));
                    telemetry::oldest_unpublished(Duration::from_millis(age_ms as u64));
                }
            }
        });
    }

    fn publish_camera_changes(&mut self) {
        let cameras = self.settings.cameras.now();
        for cam in cameras.iter() {
            let s = cam.status.borrow().clone();
            let v = serde_json::json!({
                "state": s.state.as_str(),
                "since": Timestamp::try_from(s.since).ok().map(|t| t.to_string()),
                "last_error": s.last_error,
            });
            if self.camera_states.get(&cam.id).and_then(Option::as_ref) != Some(&v) {
                let body = serde_json::to_vec(&v).expect("json");
                if self.publish(
                    self.topics.camera_status(&cam.id),
                    body,
                    true,
                    None,
                    Tag::Other,
                ) == Queued::Yes
                {
                    self.camera_states.insert(cam.id.clone(), Some(v));
                    self.delivery.cameras_published.insert(cam.id.clone());
                }
            }
        }
        // A camera a live reload removed: its retained status is cleared (an empty retained
        // message), so that the center does not show it forever.
        let gone: Vec<Arc<str>> = self
            .camera_states
            .keys()
            .filter(|id| !cameras.iter().any(|c| &c.id == *id))
            .cloned()
            .collect();
        for id in gone {
            if self.publish(
                self.topics.camera_status(&id),
                Vec::new(),
                true,
                None,
                Tag::Other,
            ) == Queued::Yes
            {
                info!(camera = %id, "camera removed: its retained status is cleared");
                self.camera_states.remove(&id);
                self.delivery.cameras_published.remove(&id);
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
        telemetry::command();
        // A command is an action, not a state: a retained one would run again on every connection.
        if p.retain {
            telemetry::command_ignored(CommandIgnored::Retained);
            if !self.delivery.warned_retained {
                self.delivery.warned_retained = true;
                warn!(topic = %topic, bytes = p.payload.len(),
                      "a retained message on a command topic was ignored (clear it: mosquitto_pub -r -n -t <topic>); logged once");
            }
            return;
        }
        let (requested, correlation) = match &p.properties {
            Some(props) => (props.response_topic.clone(), props.correlation_data.clone()),
            None => (None, None),
        };
        let response_topic = match requested {
            None => self.topics.responses(),
            Some(t) if self.reply_allowed(&t) => t,
            Some(t) => {
                telemetry::command_ignored(CommandIgnored::ResponseTopic);
                warn!(command = %command, response_topic = %t, "a command asked for a reply on a topic outside mqtt.reply_topic_prefix; refused");
                let why = OpsError::forbidden(format!(
                    "response topic {t:?} is not allowed: use {} or a topic under mqtt.reply_topic_prefix ({})",
                    self.topics.responses(),
                    self.settings
                        .config
                        .reply_topic_prefix
                        .as_deref()
                        .unwrap_or("not set")
                ));
                self.reply_now(self.topics.responses(), correlation, &command, why);
                return;
            }
        };
        let Ok(permit) = self.delivery.commands.clone().try_acquire_owned() else {
            telemetry::command_ignored(CommandIgnored::Busy);
            let now = Instant::now();
            if now.duration_since(self.busy_replies.0) >= Duration::from_secs(1) {
                self.busy_replies = (now, 0);
            }
            self.busy_replies.1 += 1;
            if self.busy_replies.1 > BUSY_REPLIES_PER_S {
                // A flood: no reply, so that replies cannot crowd out the alerts.
                telemetry::command_ignored(CommandIgnored::Flood);
                if self.busy_replies.1 == BUSY_REPLIES_PER_S + 1 {
                    warn!(
                        per_s = BUSY_REPLIES_PER_S,
                        "a command flood: requests beyond the busy replies are dropped this second"
                    );
                }
                return;
            }
            let busy = OpsError::busy(format!(
                "{} commands are running; try again in a moment",
                self.settings.config.max_concurrent_commands
            ));
            self.reply_now(response_topic, correlation, &command, busy);
            return;
        };
        let room = self.max_packet.map(|max| {
            fit::payload_room(
                &response_topic,
                Some(&reply_props(correlation.clone())),
                max,
            )
        });
        let ctx = self.settings.commands.clone();
        let tx = self.responses.0.clone();
        let payload = p.payload.clone();
        tokio::spawn(async move {
            let response = commands::handle(&ctx, &command, &payload, &response_topic).await;
            drop(permit);
            if response["ok"] != true {
                warn!(command = %command, reason = %response["reason"], "MQTT command refused");
            }
            let body = match room {
                Some(room) => fit::fit_reply(response, room),
                None => serde_json::to_vec(&response).expect("json"),
            };
            let _ = tx.send((response_topic, correlation, body)).await;
        });
    }

    /// An error reply sent without running the command (busy, a refused response topic).
    fn reply_now(&mut self, topic: String, correlation: Option<Bytes>, command: &str, e: OpsError) {
        let body = serde_json::to_vec(&commands::error_reply(command, e)).expect("json");
        self.publish(
            topic,
            body,
            false,
            Some(reply_props(correlation)),
            Tag::Other,
        );
    }

    /// Replies go to `<prefix>/responses` or under `mqtt.reply_topic_prefix`, never onto the
    /// site's own topics (its status, events, cameras or commands) and never to a wildcard.
    fn reply_allowed(&self, topic: &str) -> bool {
        if topic.is_empty() || topic.contains(['+', '#']) {
            return false;
        }
        let responses = self.topics.responses();
        if topic == responses {
            return true;
        }
        let own = format!("{}/", self.topics.prefix);
        let under_reply_prefix = self
            .settings
            .config
            .reply_topic_prefix
            .as_deref()
            .is_some_and(|r| topic.starts_with(&format!("{r}/")));
        under_reply_prefix && !topic.starts_with(&own)
    }

    /// Retained `offline`, then DISCONNECT (the broker drops the last will on a clean one).
    async fn goodbye(&mut self, events: &mut mpsc::Receiver<Result<Event, ConnectionError>>) {
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
                match events.recv().await {
                    Some(Ok(Event::Outgoing(Outgoing::Disconnect))) | Some(Err(_)) | None => break,
                    _ => {}
                }
            }
        })
        .await;
        info!("MQTT disconnected");
    }
}

/// Polls the event loop until it fails or the session is gone, forwarding every event.
async fn poll_events(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<Result<Event, ConnectionError>>,
    beats: Beats,
) {
    loop {
        beats.eventloop();
        let ev = eventloop.poll().await;
        let failed = ev.is_err();
        if tx.send(ev).await.is_err() || failed {
            return;
        }
    }
}

/// Aborts the task when dropped (the session's end closes its connection).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn reply_dropped(why: &str) {
    telemetry::reply_dropped();
    warn!(why, "a command reply was dropped");
}

async fn recv_live(rx: &mut Option<mpsc::Receiver<LiveEvent>>) -> Option<LiveEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn alert_props(c: &MqttConfig) -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        message_expiry_interval: expiry(c.message_expiry),
        ..Default::default()
    }
}

/// The JPEG's properties; the user property `event_id` names its alert, so that a consumer that
/// did not get the alert itself (another member of a shared subscription) can file it.
fn snapshot_props(c: &MqttConfig, event_id: Uuid) -> PublishProperties {
    PublishProperties {
        content_type: Some("image/jpeg".into()),
        user_properties: vec![("event_id".into(), event_id.to_string())],
        message_expiry_interval: expiry(c.message_expiry),
        ..Default::default()
    }
}

fn reply_props(correlation: Option<Bytes>) -> PublishProperties {
    PublishProperties {
        correlation_data: correlation,
        content_type: Some("application/json".into()),
        ..Default::default()
    }
}

/// The entry's snapshot as it will be published: whole, re-encoded to fit the broker's maximum
/// packet size, or left out (missing, or too large even re-encoded).
fn fit_snapshot(
    store: &Store,
    entry: &OutboxEntry,
    topics: &Topics,
    props: &PublishProperties,
    max_packet: Option<usize>,
) -> Result<(Option<Vec<u8>>, SnapshotDelivery), crate::store::StoreError> {
    let Some(jpeg) = store.snapshot(&entry.event.id)? else {
        return Ok((None, SnapshotDelivery::Omitted("missing")));
    };
    let topic = format!("{}/snapshot", topics.event(&entry.event));
    let room = max_packet.map(|max| fit::payload_room(&topic, Some(props), max));
    let jpeg = match room {
        Some(room) if jpeg.len() > room => match fit::shrink_jpeg(&jpeg, room) {
            Some(small) => {
                telemetry::snapshot_reencoded();
                debug!(event_id = %entry.event.id, from = jpeg.len(), to = small.len(), room,
                       "snapshot re-encoded to fit the broker's maximum packet size");
                small
            }
            None => {
                telemetry::snapshot_omitted(SnapshotOmitted::TooLarge);
                warn!(event_id = %entry.event.id, bytes = jpeg.len(), room,
                      "snapshot left out: it does not fit the broker's maximum packet size even re-encoded (the alert says so; fetch it over HTTP)");
                return Ok((None, SnapshotDelivery::Omitted("too_large")));
            }
        },
        _ => jpeg,
    };
    let bytes = jpeg.len();
    Ok((Some(jpeg), SnapshotDelivery::Published { bytes }))
}

fn expiry(d: Duration) -> Option<u32> {
    (!d.is_zero()).then(|| d.as_secs().clamp(1, u32::MAX as u64) as u32)
}

/// The error in words, without credentials (rumqttc's errors carry none).
/// A connection error in an installer's words (no credentials in them).
pub fn describe_error(e: &ConnectionError) -> String {
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
