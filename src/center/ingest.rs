//! The center's MQTT consumer: every site's alerts (and their JPEGs) through an MQTT 5 shared
//! subscription, so that the instances split them and a survivor takes all of them when one
//! goes; availability and camera status through a plain subscription on every instance (MQTT 5
//! sends no retained messages to a shared subscription, and these are retained).
//!
//! A message is acknowledged (PUBACK) only after its database transaction committed, so a
//! database outage leaves the alerts at the broker instead of losing them. The session is clean
//! (no session expiry): mosquitto keeps handing a shared subscription's messages round-robin to
//! a member that is gone but whose session lives on, so a persistent session would park half of
//! the alerts with a dead instance. What a killed instance had been sent and not acknowledged
//! (`receive_maximum` from a broker that keeps to it; mosquitto sends more) and what the broker
//! had queued for it are dropped with its session; the reconciliation fetches them from the sites.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use jiff::Timestamp;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::config::CenterConfig;
use super::db;
use crate::telemetry::center as telemetry;

/// What a topic under `<root>/` is.
#[derive(Debug, PartialEq, Eq)]
pub enum Topic<'a> {
    Alert { site: &'a str },
    Snapshot { site: &'a str },
    SiteStatus { site: &'a str },
    CameraStatus { site: &'a str, camera: &'a str },
    Other,
}

impl<'a> Topic<'a> {
    pub fn parse(root: &str, topic: &'a str) -> Topic<'a> {
        let Some(rest) = topic.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else {
            return Topic::Other;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [site, "status"] => Topic::SiteStatus { site },
            [site, "cameras", camera, "status"] => Topic::CameraStatus { site, camera },
            [site, "events", _, _] => Topic::Alert { site },
            [site, "events", _, _, "snapshot"] => Topic::Snapshot { site },
            _ => Topic::Other,
        }
    }
}

/// The subscriptions of one instance.
pub fn filters(c: &CenterConfig) -> Vec<Filter> {
    let root = &c.topic_root;
    vec![
        Filter::new(
            format!("$share/{}/{root}/+/events/#", c.share_group),
            QoS::AtLeastOnce,
        ),
        Filter::new(format!("{root}/+/status"), QoS::AtLeastOnce),
        Filter::new(format!("{root}/+/cameras/+/status"), QoS::AtLeastOnce),
    ]
}

/// Why a message was not stored (it is acknowledged anyway: it would never store).
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Reads an alert's payload; the site in it must be the one in its topic.
pub fn parse_alert(site: &str, payload: &[u8]) -> Result<db::Alert, Rejected> {
    parse_alert_value(site, serde_json::from_slice(payload)?)
}

/// [`parse_alert`] of JSON already read.
pub fn parse_alert_value(site: &str, v: serde_json::Value) -> Result<db::Alert, Rejected> {
    let str_field = |k: &str| v.get(k).and_then(|x| x.as_str());
    let bad = |k: &str| Rejected::Invalid(format!("field {k:?} is missing or invalid"));
    if v.get("schema_version").and_then(|x| x.as_u64()) != Some(1) {
        return Err(Rejected::Invalid("schema_version is not 1".into()));
    }
    let event_id: Uuid = str_field("event_id")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("event_id"))?;
    let in_payload = str_field("site").ok_or_else(|| bad("site"))?;
    if in_payload != site {
        return Err(Rejected::Invalid(format!(
            "the alert names site {in_payload:?} but came on site {site:?}'s topic"
        )));
    }
    let kind = str_field("kind").ok_or_else(|| bad("kind"))?.to_owned();
    let time: Timestamp = str_field("time")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("time"))?;
    Ok(db::Alert {
        event_id,
        site: site.to_owned(),
        camera: str_field("camera").map(str::to_owned),
        rule: str_field("rule").map(str::to_owned),
        kind,
        time,
        payload: v,
    })
}

/// Consumes until `cancel`, reconnecting with backoff.
pub async fn run(config: Arc<CenterConfig>, pool: Pool, cancel: CancellationToken) {
    let mut backoff = config.mqtt.backoff_initial;
    let mut last_error: Option<String> = None;
    loop {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            o = session(&config, &pool, &cancel) => o,
        };
        telemetry::connected(false);
        match outcome {
            Ok(()) => return,
            Err(Session::Lost { error, was_up }) => {
                if was_up {
                    backoff = config.mqtt.backoff_initial;
                }
                if last_error.as_deref() != Some(&error) {
                    warn!(instance = %config.instance, error = %error, retry_in = ?backoff, "center: MQTT connection failed");
                    last_error = Some(error);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(jitter(backoff)) => {}
        }
        backoff = (backoff * 2).min(config.mqtt.backoff_max);
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

enum Session {
    Lost { error: String, was_up: bool },
}

/// One connection: the event loop here, the database writes on a worker that acknowledges each
/// message after its commit (in the order they came, as MQTT wants).
async fn session(
    config: &Arc<CenterConfig>,
    pool: &Pool,
    cancel: &CancellationToken,
) -> Result<(), Session> {
    let mut opts = crate::alert::publisher::center_options(&config.mqtt, &config.instance)
        .map_err(|e| Session::Lost {
            error: e.to_string(),
            was_up: false,
        })?;
    opts.set_manual_acks(true);
    opts.set_receive_maximum(Some(config.receive_maximum));
    opts.set_session_expiry_interval(None);
    let cap = usize::from(config.receive_maximum) + 16;
    let (client, mut eventloop) = AsyncClient::new(opts, cap);
    // Unbounded, so that this loop never waits for the worker: the worker's acknowledgements go
    // through the client's request channel, which only this loop's polling drains, so a bounded
    // channel here deadlocks as soon as the broker sends more than it holds. What it holds is
    // what the broker has sent and not had acknowledged: at most `receive_maximum` from a broker
    // that keeps to it (a WARN, once, says when one does not).
    let (tx, rx) = mpsc::unbounded_channel::<Publish>();
    let unacked = Arc::new(AtomicUsize::new(0));
    let worker_cancel = cancel.child_token();
    let worker = tokio::spawn(work(
        config.clone(),
        pool.clone(),
        client.clone(),
        rx,
        unacked.clone(),
        worker_cancel.clone(),
    ));
    let _stop_worker = worker_cancel.clone().drop_guard();
    let mut was_up = false;
    let mut over_window = false;
    let result = loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                was_up = true;
                telemetry::connected(true);
                info!(instance = %config.instance, "center: connected to the broker");
                if let Err(e) = client.subscribe_many(filters(config)).await {
                    break Err(Session::Lost {
                        error: format!("subscribe: {e}"),
                        was_up,
                    });
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                let refused: Vec<_> = s
                    .return_codes
                    .iter()
                    .filter(|c| {
                        !matches!(
                            c,
                            rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                        )
                    })
                    .collect();
                if !refused.is_empty() {
                    warn!(instance = %config.instance, ?refused, "center: the broker refused a subscription (check its ACL for the center's user)");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let waiting = unacked.fetch_add(1, Ordering::Relaxed) + 1;
                if waiting > usize::from(config.receive_maximum) && !over_window {
                    over_window = true;
                    warn!(instance = %config.instance, waiting, receive_maximum = config.receive_maximum,
                          "center: the broker sends more unacknowledged messages than the Receive Maximum; they wait in memory until stored");
                }
                if tx.send(p).is_err() {
                    // The worker is gone (it stops only on cancel, or if it panicked).
                    break Err(Session::Lost {
                        error: "the database worker stopped".into(),
                        was_up,
                    });
                }
            }
            Ok(_) => {}
            Err(e) => {
                break Err(Session::Lost {
                    error: crate::alert::publisher::describe_error(&e),
                    was_up,
                });
            }
        }
    };
    drop(tx);
    // Without its event loop the client's request queue fails at once instead of filling: a
    // worker waiting to acknowledge must not hold the session's end.
    drop(eventloop);
    worker_cancel.cancel();
    let _ = worker.await;
    result
}

async fn work(
    config: Arc<CenterConfig>,
    pool: Pool,
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<Publish>,
    unacked: Arc<AtomicUsize>,
    cancel: CancellationToken,
) {
    while let Some(p) = rx.recv().await {
        let mut delay = Duration::from_millis(200);
        loop {
            match handle(&config, &pool, &p).await {
                Ok(()) => break,
                // Refused for what it holds (a NUL in a text, say): it would block every
                // message behind it forever.
                Err(e) if db::is_refused_data(&e) => {
                    let topic = String::from_utf8_lossy(&p.topic);
                    reject(
                        "refused_by_database",
                        &topic,
                        &format!("the database refused it: {e}"),
                    );
                    break;
                }
                Err(e) => {
                    telemetry::db_error();
                    warn!(instance = %config.instance, error = %e, retry_in = ?delay, "center: database write failed; the message stays unacknowledged");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        let acked = p.qos == QoS::AtMostOnce || client.ack(&p).await.is_ok();
        unacked.fetch_sub(1, Ordering::Relaxed);
        if !acked {
            return;
        }
    }
}

/// Stores one message. `Err` only for a database failure (retried); a message that will never
/// store is logged, counted and `Ok`.
async fn handle(config: &CenterConfig, pool: &Pool, p: &Publish) -> Result<(), db::DbError> {
    let topic = String::from_utf8_lossy(&p.topic);
    let now = Timestamp::now();
    match Topic::parse(&config.topic_root, &topic) {
        Topic::Alert { site } => match parse_alert(site, &p.payload) {
            Ok(alert) => {
                let new = db::store_alert(pool, &alert, &config.instance, db::Origin::Mqtt).await?;
                if new {
                    telemetry::alert_latency(
                        (now.as_millisecond() - alert.time.as_millisecond()).max(0) as f64 / 1e3,
                    );
                    debug!(site, event_id = %alert.event_id, kind = %alert.kind, "center: alert stored");
                }
                telemetry::message("alert", if new { "stored" } else { "duplicate" });
            }
            Err(e) => reject("alert", &topic, &e.to_string()),
        },
        Topic::Snapshot { site } => {
            let id = p
                .properties
                .as_ref()
                .and_then(|pr| pr.user_properties.iter().find(|(k, _)| k == "event_id"))
                .and_then(|(_, v)| v.parse::<Uuid>().ok());
            match id {
                Some(id) => {
                    db::store_snapshot(pool, id, &p.payload, "mqtt").await?;
                    debug!(site, event_id = %id, "center: snapshot stored");
                    telemetry::message("snapshot", "stored");
                }
                None => reject(
                    "snapshot",
                    &topic,
                    "no event_id user property (a site older than this center; the center fetches it over HTTP)",
                ),
            }
        }
        Topic::SiteStatus { site } => match &p.payload[..] {
            b"online" | b"offline" => {
                let online = &p.payload[..] == b"online";
                db::site_status(pool, site, online, now).await?;
                telemetry::message("site_status", "stored");
            }
            b"" => telemetry::message("site_status", "duplicate"),
            _ => reject("site_status", &topic, "neither \"online\" nor \"offline\""),
        },
        Topic::CameraStatus { site, camera } => {
            if p.payload.is_empty() {
                db::camera_status(pool, site, camera, None, now).await?;
                telemetry::message("camera_status", "stored");
            } else {
                match serde_json::from_slice::<db::CameraStatus>(&p.payload) {
                    Ok(s) => {
                        db::camera_status(pool, site, camera, Some(&s), now).await?;
                        telemetry::message("camera_status", "stored");
                    }
                    Err(e) => reject("camera_status", &topic, &e.to_string()),
                }
            }
        }
        Topic::Other => {}
    }
    Ok(())
}

fn reject(kind: &'static str, topic: &str, why: &str) {
    telemetry::message(kind, "rejected");
    warn!(topic, why, "center: message rejected");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_classified_under_the_root() {
        let r = "kinderwatch";
        assert_eq!(
            Topic::parse(r, "kinderwatch/kg-7/status"),
            Topic::SiteStatus { site: "kg-7" }
        );
        assert_eq!(
            Topic::parse(r, "kinderwatch/kg-7/cameras/gate/status"),
            Topic::CameraStatus {
                site: "kg-7",
                camera: "gate"
            }
        );
        assert_eq!(
            Topic::parse(r, "kinderwatch/kg-7/events/gate/line_crossed"),
            Topic::Alert { site: "kg-7" }
        );
        assert_eq!(
            Topic::parse(r, "kinderwatch/kg-7/events/gate/line_crossed/snapshot"),
            Topic::Snapshot { site: "kg-7" }
        );
        assert_eq!(Topic::parse(r, "kinderwatchX/kg-7/status"), Topic::Other);
        assert_eq!(Topic::parse(r, "kinderwatch/kg-7/responses"), Topic::Other);
        assert_eq!(
            Topic::parse("city/a", "city/a/kg-1/status"),
            Topic::SiteStatus { site: "kg-1" }
        );
    }

    #[test]
    fn an_alert_must_name_the_site_of_its_topic() {
        let a = br#"{"schema_version":1,"event_id":"019a5f1e-7c41-7d2a-9b1e-3f0c2a7d9e11","site":"kg-7","camera":"gate","rule":"fence","kind":"line_crossed","time":"2026-11-22T17:03:58.4Z"}"#;
        let ok = parse_alert("kg-7", a).unwrap();
        assert_eq!(ok.kind, "line_crossed");
        assert_eq!(ok.camera.as_deref(), Some("gate"));
        assert!(
            parse_alert("kg-8", a)
                .unwrap_err()
                .to_string()
                .contains("kg-8")
        );
        assert!(parse_alert("kg-7", b"{}").is_err());
        assert!(parse_alert("kg-7", b"not json").is_err());
        let v2 = String::from_utf8_lossy(a).replace("\"schema_version\":1", "\"schema_version\":2");
        assert!(parse_alert("kg-7", v2.as_bytes()).is_err());
    }
}
