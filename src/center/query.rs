//! Questions to the sites over MQTT request/response: `query/events` on
//! `<topic_root>/<site>/commands/query/events`, the answer matched by its correlation data. One
//! connection of its own per instance (client id `<instance>-query`), beside the ingest's, so
//! that a slow or flooded site's answers never wait behind the alert acknowledgements.
//!
//! A fan-out asks many sites at once (`center.query_concurrency` in flight), each with its own
//! time-out (`center.query_timeout`), and says for each site that did not answer why: offline
//! (its last will), no answer in time, or the site's refusal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event};
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::config::CenterConfig;
use crate::telemetry::center as telemetry;

/// Pages of 1,000 events one site may give to one history question (more: the answer is
/// incomplete).
pub const HISTORY_PAGES: usize = 10;

/// Why a site gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the center is not connected to the broker")]
    NotConnected,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the site refused: {code}: {reason}")]
    Refused { code: String, reason: String },
    #[error("the answer is not JSON")]
    Garbled,
}

impl QueryError {
    /// The metric label.
    fn label(&self) -> &'static str {
        match self {
            QueryError::NotConnected => "not_connected",
            QueryError::Timeout(_) => "timeout",
            QueryError::Refused { .. } => "refused",
            QueryError::Garbled => "garbled",
        }
    }
}

/// What one site answered to an events question.
#[derive(Debug, Clone, Default)]
pub struct SiteEvents {
    /// The site's stored events, as its API shows them.
    pub events: Vec<Value>,
    /// False when the site had more pages than were asked for.
    pub complete: bool,
}

/// Questions waiting for their answer: the site asked, and the asker.
type Pending = Arc<Mutex<HashMap<Bytes, (String, oneshot::Sender<Value>)>>>;

/// The asking side; cheap to clone.
#[derive(Clone)]
pub struct SiteQueries {
    client: AsyncClient,
    pending: Pending,
    connected: Arc<AtomicBool>,
    config: Arc<CenterConfig>,
}

impl SiteQueries {
    /// Connects (and keeps reconnecting) until `cancel`.
    pub fn start(config: Arc<CenterConfig>, cancel: CancellationToken) -> anyhow::Result<Self> {
        let id = format!("{}-query", config.instance);
        let opts = crate::alert::publisher::center_options(&config.mqtt, &id)?;
        let (client, eventloop) = AsyncClient::new(opts, 256);
        let q = SiteQueries {
            client,
            pending: Pending::default(),
            connected: Arc::new(AtomicBool::new(false)),
            config,
        };
        tokio::spawn(q.clone().drive(eventloop, cancel));
        Ok(q)
    }

    async fn drive(self, mut eventloop: rumqttc::v5::EventLoop, cancel: CancellationToken) {
        let filter = self.config.reply_filter();
        let mut backoff = self.config.mqtt.backoff_initial;
        let mut last_error: Option<String> = None;
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = self.config.mqtt.backoff_initial;
                    last_error = None;
                    info!(instance = %self.config.instance, replies = %filter, "center: connected for site queries");
                    // Every connection is clean: subscribe again (from a task: this loop must
                    // keep polling for the request to go out). Questions wait for the SubAck.
                    let f = Filter::new(filter.clone(), QoS::AtLeastOnce);
                    let client = self.client.clone();
                    tokio::spawn(async move { client.subscribe_many([f]).await });
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    self.connected.store(true, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.answer(&p),
                Ok(_) => {}
                Err(e) => {
                    self.connected.store(false, Ordering::Relaxed);
                    let e = crate::alert::publisher::describe_error(&e);
                    if last_error.as_deref() != Some(&e) {
                        warn!(instance = %self.config.instance, error = %e, retry_in = ?backoff, "center: the site-query connection failed");
                        last_error = Some(e);
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.config.mqtt.backoff_max);
                }
            }
        }
        self.connected.store(false, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
    }

    /// Hands an answer to whoever asked (answers to other instances' questions are ignored, and
    /// so is an answer on another site's reply topic than the one asked).
    fn answer(&self, p: &rumqttc::v5::mqttbytes::v5::Publish) {
        let Some(id) = p
            .properties
            .as_ref()
            .and_then(|pr| pr.correlation_data.clone())
        else {
            return;
        };
        let topic = String::from_utf8_lossy(&p.topic);
        let from = self.config.reply_site(&topic);
        let mut pending = self.pending.lock().unwrap();
        if pending
            .get(&id)
            .is_some_and(|(site, _)| Some(site.as_str()) != from)
        {
            warn!(topic = %topic, "center: an answer came on another site's reply topic; ignored");
            return;
        }
        let Some((_, tx)) = pending.remove(&id) else {
            return;
        };
        drop(pending);
        let v = serde_json::from_slice::<Value>(&p.payload).unwrap_or(Value::Null);
        let _ = tx.send(v);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Asks `site` one command and waits up to `center.query_timeout` for its `{"ok": true}`.
    pub async fn ask(&self, site: &str, command: &str, body: &Value) -> Result<Value, QueryError> {
        let r = self.ask_once(site, command, body).await;
        telemetry::site_query(match &r {
            Ok(_) => "answered",
            Err(e) => e.label(),
        });
        r
    }

    async fn ask_once(&self, site: &str, command: &str, body: &Value) -> Result<Value, QueryError> {
        if !self.is_connected() {
            return Err(QueryError::NotConnected);
        }
        let id = Bytes::from(uuid::Uuid::now_v7().simple().to_string());
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap()
            .insert(id.clone(), (site.to_owned(), tx));
        let _forget = Forget(&self.pending, id.clone());
        let response_topic = self.config.reply_topic(site);
        let props = PublishProperties {
            response_topic,
            correlation_data: Some(id),
            ..Default::default()
        };
        let topic = format!("{}/{site}/commands/{command}", self.config.topic_root);
        let payload = serde_json::to_vec(body).unwrap_or_default();
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
            .await
            .map_err(|_| QueryError::NotConnected)?;
        let timeout = self.config.query_timeout;
        let v = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => return Err(QueryError::NotConnected),
            Err(_) => return Err(QueryError::Timeout(timeout)),
        };
        match v.get("ok").and_then(Value::as_bool) {
            Some(true) => Ok(v),
            Some(false) => Err(QueryError::Refused {
                code: v["error"].as_str().unwrap_or("error").to_owned(),
                reason: v["reason"].as_str().unwrap_or("").to_owned(),
            }),
            None => Err(QueryError::Garbled),
        }
    }

    /// The site's events matching `filter` (the site's `query/events` parameters), following
    /// its cursor for up to `pages` pages.
    pub async fn events(
        &self,
        site: &str,
        filter: &Map<String, Value>,
        pages: usize,
    ) -> Result<SiteEvents, QueryError> {
        let mut out = SiteEvents::default();
        let mut body = filter.clone();
        body.insert("limit".into(), crate::store::query::MAX_LIMIT.into());
        for _ in 0..pages {
            let mut page = self
                .ask(site, "query/events", &Value::Object(body.clone()))
                .await?;
            if let Some(Value::Array(events)) = page.get_mut("events").map(Value::take) {
                out.events.extend(events);
            }
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(c) => {
                    body.insert("cursor".into(), c.into());
                }
                None => {
                    out.complete = true;
                    return Ok(out);
                }
            }
        }
        debug!(
            site,
            events = out.events.len(),
            "center: a site's answer was cut at the page limit"
        );
        Ok(out)
    }

    /// Asks every site of `sites` for its events matching `filter`, `center.query_concurrency` at
    /// a time; each answer as it comes (so that the caller stores it and lets it go).
    pub fn fan_out<'a>(
        &'a self,
        sites: Vec<String>,
        filter: &'a Map<String, Value>,
    ) -> impl futures_util::Stream<Item = (String, Result<SiteEvents, QueryError>)> + 'a {
        futures_util::stream::iter(sites)
            .map(move |site| async move {
                let r = self.events(&site, filter, HISTORY_PAGES).await;
                (site, r)
            })
            .buffer_unordered(self.config.query_concurrency)
    }
}

/// Removes a question from the pending ones however its wait ends.
struct Forget<'a>(&'a Pending, Bytes);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap().remove(&self.1);
    }
}

/// A site's stored event (as its `query/events` gives it) in the shape of a live alert
/// (schema version 1): `id` is `event_id`, `snapshot_url` is `snapshot.api_path`.
pub fn as_alert(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        if let Some(id) = o.remove("id") {
            o.insert("event_id".into(), id);
        }
        o.insert("schema_version".into(), 1.into());
        if let Some(path) = o.remove("snapshot_url") {
            o.insert("snapshot".into(), serde_json::json!({ "api_path": path }));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_event_reads_as_an_alert() {
        let e = serde_json::json!({
            "id": "019a5f1e-7c41-7d2a-9b1e-3f0c2a7d9e11", "kind": "line_crossed", "site": "kg-7",
            "camera": "gate", "rule": "fence", "started_at": "2026-11-22T17:03:57Z",
            "time": "2026-11-22T17:03:58.4Z",
            "snapshot_url": "/api/v1/events/019a5f1e-7c41-7d2a-9b1e-3f0c2a7d9e11/snapshot.jpg"
        });
        let a = as_alert(e);
        let parsed = super::super::ingest::parse_alert_value("kg-7", a.clone()).unwrap();
        assert_eq!(parsed.kind, "line_crossed");
        assert_eq!(
            a["snapshot"]["api_path"],
            "/api/v1/events/019a5f1e-7c41-7d2a-9b1e-3f0c2a7d9e11/snapshot.jpg"
        );
        assert!(a.get("id").is_none());
    }
}
