//! City load benchmark (issue 17): 1,000 simulated sites and one real daemon against one
//! mosquitto, two `kinderwatch center` instances (child processes of the release binary) and a
//! PostgreSQL server with `fsync` on. One instance is killed (SIGKILL) in the middle
//! of the storm (below); the survivor takes all alerts, and its reconciliation recovers what the
//! killed one had read and not acknowledged.
//!
//! A simulated site is one MQTT 5 connection, as a daemon has: its last will and retained
//! `online`, eight cameras' retained status (now and then one goes offline and comes back), its
//! alerts (QoS 1, the daemon's topic and payload), and answers to the center's `query/events`
//! from the alerts it published, as a site answers from its store. The city's alert traffic:
//! - a steady Poisson stream (`KW_CITY_RATE`, alerts/s across the city, default 20);
//! - every 10 s one site's burst: 20 alerts in 2 s (a group walking along a fence);
//! - once, at 40 % of the run, a storm: 200 sites with 5 alerts each within one second;
//! - 2 % of alerts sent twice (an at-least-once re-send after a lost PUBACK).
//!
//! The real daemon runs the sample clip (RTSP, in-process server) with a tripwire, the real
//! detector, store, outbox, and publishes JPEG snapshots.
//!
//! Measured: alerts published (unique) against events stored (the ground truth: what the sites
//! sent, and what a plain subscriber saw of the daemon's), lost, stored twice, how the two
//! instances split them, what the reconciliation recovered after the kill, and alert → queue
//! latency: from the site's publish (or the daemon's frame capture) to the PostgreSQL
//! notification that the queue pages' live feed turns into a row (the bench LISTENs on the same
//! channel).
//!
//! `cargo bench --bench city` (KW_CITY_SITES=1000, KW_CITY_SECS=120, KW_CITY_RATE=20).
//! Figures go into docs/BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use rand::Rng;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{Value, json};
use uuid::Uuid;

use common::broker::{self, Broker};
use common::center::Center;
use common::postgres::Postgres;

const ROOT: &str = "kinderwatch";
const CAMERAS: usize = 8;
const DAEMON_SITE: &str = "kg-daemon";
/// When the storm comes, as a fraction of the run; center-a is killed half a second into it.
const STORM_AT: f64 = 0.4;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A process's CPU seconds (user + system, and of its reaped children) and peak RSS in MB.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14-17 of stat(5): utime, stime, cutime, cstime (here from index 11 on).
    let cpu = f.get(11..15).map_or(0.0, |t| t.iter().sum::<f64>()) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0;
    (cpu, hwm)
}

/// The same summed over every process named `name` (PostgreSQL's backends).
fn usage_of(name: &str) -> (f64, f64) {
    let mut total = (0.0, 0.0);
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == name {
            let (c, m) = usage(pid);
            total.0 += c;
            total.1 += m;
        }
    }
    total
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// When each alert was sent (wall clock: the daemon's are stamped by it at capture).
type Sent = Arc<Mutex<HashMap<Uuid, Timestamp>>>;

/// One simulated site: its connection and the alerts it "stored".
#[derive(Clone)]
struct SimSite {
    id: String,
    client: AsyncClient,
    stored: Arc<Mutex<Vec<Value>>>,
}

fn camera_status(state: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({ "state": state, "since": Timestamp::now().to_string(), "last_error": null }),
    )
    .unwrap()
}

impl SimSite {
    async fn connect(port: u16, id: String) -> SimSite {
        let mut opts = MqttOptions::new(format!("sim-{id}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        // rumqttc keeps a slot per possible in-flight publish (65,535 by default, ~14 MB a
        // client); a site has a few in flight.
        opts.set_outgoing_inflight_upper_limit(32);
        opts.set_last_will(LastWill::new(
            format!("{ROOT}/{id}/status"),
            "offline",
            QoS::AtLeastOnce,
            true,
            None,
        ));
        let (client, mut el) = AsyncClient::new(opts, 512);
        let site = SimSite {
            id,
            client,
            stored: Default::default(),
        };
        let me = site.clone();
        let (up_tx, up_rx) = tokio::sync::oneshot::channel();
        let mut up_tx = Some(up_tx);
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let c = me.client.clone();
                        let id = me.id.clone();
                        let up = up_tx.take();
                        tokio::spawn(async move {
                            let _ = c
                                .subscribe(
                                    format!("{ROOT}/{id}/commands/query/events"),
                                    QoS::AtLeastOnce,
                                )
                                .await;
                            let _ = c
                                .publish(
                                    format!("{ROOT}/{id}/status"),
                                    QoS::AtLeastOnce,
                                    true,
                                    "online",
                                )
                                .await;
                            for n in 0..CAMERAS {
                                let _ = c
                                    .publish(
                                        format!("{ROOT}/{id}/cameras/cam-{n}/status"),
                                        QoS::AtLeastOnce,
                                        true,
                                        camera_status("streaming"),
                                    )
                                    .await;
                            }
                            if let Some(up) = up {
                                let _ = up.send(());
                            }
                        });
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => me.answer(p),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), up_rx).await;
        site
    }

    /// Answers `query/events` from what the site published since `from` (one page).
    fn answer(&self, p: rumqttc::v5::mqttbytes::v5::Publish) {
        let Some(props) = p.properties else { return };
        let correlation = props.correlation_data;
        let topic = props
            .response_topic
            .unwrap_or_else(|| format!("{ROOT}/{}/responses", self.id));
        let body: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
        let from: Option<Timestamp> = body["from"].as_str().and_then(|t| t.parse().ok());
        let to: Option<Timestamp> = body["to"].as_str().and_then(|t| t.parse().ok());
        let events: Vec<Value> = self
            .stored
            .lock()
            .unwrap()
            .iter()
            .filter(|e| {
                let t: Timestamp = e["time"].as_str().unwrap().parse().unwrap();
                from.is_none_or(|f| t >= f) && to.is_none_or(|u| t < u)
            })
            .cloned()
            .collect();
        let reply =
            json!({ "ok": true, "command": "query/events", "events": events, "next_cursor": null });
        let c = self.client.clone();
        tokio::spawn(async move {
            let props = PublishProperties {
                correlation_data: correlation,
                content_type: Some("application/json".into()),
                ..Default::default()
            };
            let _ = c
                .publish_with_properties(
                    topic,
                    QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&reply).unwrap(),
                    props,
                )
                .await;
        });
    }

    /// Publishes one perimeter alert (and keeps it, as the site's store does); `twice`: sent
    /// again at once, as after a lost PUBACK.
    async fn alert(&self, sent: &Sent, twice: bool) {
        let id = Uuid::now_v7();
        let now = Timestamp::now();
        let camera = format!("cam-{}", rand::rng().random_range(0..CAMERAS));
        let (kind, rule) = if rand::random_bool(0.7) {
            ("line_crossed", "fence")
        } else {
            ("zone_entered", "yard")
        };
        let payload = json!({
            "schema_version": 1, "event_id": id, "site": self.id, "camera": camera, "rule": rule,
            "kind": kind, "object": { "track": 1, "class": "person", "score": 0.81,
                "bbox": [0.41, 0.22, 0.52, 0.71] },
            "started_at": now.to_string(), "time": now.to_string(), "detail": null,
            "snapshot": { "api_path": format!("/api/v1/events/{id}/snapshot.jpg") }
        });
        self.stored.lock().unwrap().push(json!({
            "id": id, "site": self.id, "camera": camera, "rule": rule, "kind": kind,
            "started_at": now.to_string(), "time": now.to_string(),
        }));
        sent.lock().unwrap().insert(id, now);
        let body = Bytes::from(serde_json::to_vec(&payload).unwrap());
        let topic = format!("{ROOT}/{}/events/{camera}/{kind}", self.id);
        for _ in 0..if twice { 2 } else { 1 } {
            let props = PublishProperties {
                content_type: Some("application/json".into()),
                user_properties: vec![("event_id".into(), id.to_string())],
                ..Default::default()
            };
            let _ = self
                .client
                .publish_with_properties(
                    topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    body.clone(),
                    props,
                )
                .await;
        }
    }

    /// A camera's status (retained) and its health event (`camera_offline`/`camera_online`,
    /// which opens and clears the camera's condition alarm at the center).
    async fn camera(&self, n: usize, online: bool, sent: &Sent) {
        let camera = format!("cam-{n}");
        let state = if online { "streaming" } else { "offline" };
        let _ = self
            .client
            .publish(
                format!("{ROOT}/{}/cameras/{camera}/status", self.id),
                QoS::AtLeastOnce,
                true,
                camera_status(state),
            )
            .await;
        let id = Uuid::now_v7();
        let now = Timestamp::now();
        let kind = if online {
            "camera_online"
        } else {
            "camera_offline"
        };
        let detail = if online {
            "frames again"
        } else {
            "no frames for 10 s"
        };
        let payload = json!({
            "schema_version": 1, "event_id": id, "site": self.id, "camera": camera, "rule": null,
            "kind": kind, "object": null, "started_at": now.to_string(), "time": now.to_string(),
            "detail": detail, "snapshot": null
        });
        self.stored.lock().unwrap().push(json!({
            "id": id, "site": self.id, "camera": camera, "rule": null, "kind": kind,
            "started_at": now.to_string(), "time": now.to_string(), "detail": detail,
        }));
        sent.lock().unwrap().insert(id, now);
        let props = PublishProperties {
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        let _ = self
            .client
            .publish_with_properties(
                format!("{ROOT}/{}/events/{camera}/{kind}", self.id),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&payload).unwrap(),
                props,
            )
            .await;
    }
}

/// What the schedule does at one instant.
enum Step {
    Alert { site: usize, twice: bool },
    CameraDown { site: usize },
    CameraUp { site: usize },
}

/// The run's traffic, as (offset, step), in time order.
fn schedule(sites: usize, secs: f64, rate: f64) -> Vec<(f64, Step)> {
    let mut rng = rand::rng();
    let mut s = Vec::new();
    let dup = |rng: &mut rand::rngs::ThreadRng| rng.random_bool(0.02);
    // The steady stream: exponential gaps.
    let mut t = 0.0;
    loop {
        t += -(1.0 - rng.random::<f64>()).ln() / rate;
        if t >= secs {
            break;
        }
        let site = rng.random_range(0..sites);
        s.push((
            t,
            Step::Alert {
                site,
                twice: dup(&mut rng),
            },
        ));
    }
    // A burst every 10 s.
    let mut b = 5.0;
    while b < secs - 2.0 {
        let site = rng.random_range(0..sites);
        for k in 0..20 {
            s.push((
                b + k as f64 * 0.1,
                Step::Alert {
                    site,
                    twice: dup(&mut rng),
                },
            ));
        }
        b += 10.0;
    }
    // The storm.
    let storm = secs * STORM_AT;
    for site in rand::seq::index::sample(&mut rng, sites, 200.min(sites)) {
        for _ in 0..5 {
            s.push((
                storm + rng.random::<f64>(),
                Step::Alert {
                    site,
                    twice: dup(&mut rng),
                },
            ));
        }
    }
    // A camera goes offline every 5 s and comes back 30 s later.
    let mut c = 3.0;
    while c < secs {
        let site = rng.random_range(0..sites);
        s.push((c, Step::CameraDown { site }));
        if c + 30.0 < secs {
            s.push((c + 30.0, Step::CameraUp { site }));
        }
        c += 5.0;
    }
    s.sort_by(|a, b| a.0.total_cmp(&b.0));
    s
}

/// The daemon's config: one camera on the sample clip, a tripwire, JPEG snapshots over MQTT.
fn daemon_config(rtsp: &str, broker: u16, state: &Path) -> kinderwatch::config::Config {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/nanodet-coco-416.toml");
    let text = format!(
        "[site]\nid = \"{DAEMON_SITE}\"\n[detector]\nmodel = \"{}\"\n[state]\ndir = \"{}\"\n[api]\nenabled = false\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker}\npublish_snapshots = true\nreply_topic_prefix = \"center/replies\"\n[[cameras]]\nid = \"gate\"\nurl = \"{rtsp}\"\ndetect_width = 640\ndetect_height = 480\ndetect_fps = 5\n[[rules]]\nid = \"fence\"\ncamera = \"gate\"\nkind = \"tripwire\"\nline = [[0.5, 0.0], [0.5, 1.0]]\ncooldown = \"0s\"\n",
        model.display(),
        state.display(),
    );
    kinderwatch::config::Config::from_toml(&text, Path::new("daemon.toml"), Path::new(".")).unwrap()
}

/// LISTENs on the alarm channel; the first time each alarm id was announced.
async fn listen_alarms(url: String) -> Arc<Mutex<HashMap<i64, Timestamp>>> {
    let seen: Arc<Mutex<HashMap<i64, Timestamp>>> = Default::default();
    let (client, mut connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let sink = seen.clone();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let sql = format!("LISTEN {}", kinderwatch::center::db::ALARM_CHANNEL);
        let listen = client.batch_execute(&sql);
        tokio::pin!(listen);
        let mut listening = false;
        loop {
            tokio::select! {
                r = &mut listen, if !listening => { r.unwrap(); listening = true; }
                m = messages.next() => match m {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if let Ok(id) = n.payload().parse::<i64>() {
                            sink.lock().unwrap().entry(id).or_insert_with(Timestamp::now);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen
}

fn center_extra() -> String {
    "reconcile_interval = \"20s\"\nreconcile_window = \"1h\"\nquery_timeout = \"5s\"\nreply_topic_prefix = \"center/replies\"\n".into()
}

fn directory(sites: usize) -> String {
    let mut s = String::new();
    for n in 0..sites {
        s.push_str(&format!(
            "[[center.sites]]\nid = \"kg-{n:04}\"\ndistrict = \"d-{}\"\n",
            n % 12
        ));
    }
    s.push_str(&format!(
        "[[center.sites]]\nid = \"{DAEMON_SITE}\"\ndistrict = \"d-0\"\n"
    ));
    s
}

async fn run(sites: usize, secs: u64, rate: f64) {
    let broker = Broker::start("max_queued_messages 100000\nmax_inflight_messages 100\n");
    let pg = Postgres::start_with_fsync(true);
    let mut a = Center::start_with(
        "center-a",
        broker.port,
        &pg.url(),
        &center_extra(),
        &directory(sites),
    );
    let b = Center::start_with(
        "center-b",
        broker.port,
        &pg.url(),
        &center_extra(),
        &directory(sites),
    );
    let alarms_seen = listen_alarms(pg.url()).await;

    // The daemon's alerts as a plain subscriber sees them: its ground truth.
    let sent: Sent = Default::default();
    let (_sub, mut daemon_rx) = broker::subscribe(
        broker.port,
        &format!("{ROOT}/{DAEMON_SITE}/events/+/+"),
        |_| {},
    )
    .await;
    let daemon_sent = sent.clone();
    tokio::spawn(async move {
        while let Some(m) = daemon_rx.recv().await {
            if let Ok(v) = serde_json::from_slice::<Value>(&m.payload)
                && let (Some(id), Some(t)) = (
                    v["event_id"].as_str().and_then(|s| s.parse().ok()),
                    v["time"].as_str().and_then(|s| s.parse().ok()),
                )
            {
                daemon_sent.lock().unwrap().insert(id, t);
            }
        }
    });

    let t0 = Instant::now();
    let mut sims = Vec::with_capacity(sites);
    for chunk in (0..sites).collect::<Vec<_>>().chunks(50) {
        let connects = chunk
            .iter()
            .map(|n| SimSite::connect(broker.port, format!("kg-{n:04}")));
        sims.extend(futures_util::future::join_all(connects).await);
    }
    println!(
        "{} simulated sites connected in {:.1} s ({CAMERAS} cameras each)",
        sims.len(),
        t0.elapsed().as_secs_f64()
    );
    // Every site's retained availability and camera status reach both instances (a reconnect
    // storm: the whole city at once).
    let want = (sites * CAMERAS) as i64;
    let flood = loop {
        let n = common::center::count(&pg, "SELECT count(*) FROM cameras").await;
        if n >= want || t0.elapsed() > Duration::from_secs(180) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "status of {flood} cameras and {sites} sites stored {:.1} s after the first site connected (bench process {:.0} MB)",
        t0.elapsed().as_secs_f64(),
        rss_mb()
    );

    let server = common::RtspTestServer::start(common::Source::SampleClip, common::Auth::None);
    let state = tempfile::tempdir().unwrap();
    let config = daemon_config(&server.url(), broker.port, state.path());
    let window = Duration::from_secs(secs + 10);
    let daemon = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(kinderwatch::app::run(config, None, Some(window)))
    });
    // Let the daemon's camera start.
    tokio::time::sleep(Duration::from_secs(5)).await;

    println!("daemon started (bench process {:.0} MB)", rss_mb());
    let before = [
        usage(a.pid()),
        usage(b.pid()),
        usage(broker.pid().unwrap()),
        usage_of("postgres"),
    ];
    let plan = schedule(sites, secs as f64, rate);
    let planned = plan.len();
    let resent = plan
        .iter()
        .filter(|s| matches!(s.1, Step::Alert { twice: true, .. }))
        .count();
    println!(
        "{planned} alerts planned from the simulated sites over {secs} s ({} of them camera health events)",
        plan.iter()
            .filter(|s| !matches!(s.1, Step::Alert { .. }))
            .count()
    );
    let start = Instant::now();
    let mut killed_at = None;
    let mut a_usage = (0.0, 0.0);
    let mut late = 0usize;
    for (at, step) in plan {
        let due = start + Duration::from_secs_f64(at);
        // In the middle of the storm: the instance has alerts read and not yet acknowledged.
        if killed_at.is_none() && at >= secs as f64 * STORM_AT + 0.5 {
            a_usage = usage(a.pid());
            a.kill();
            killed_at = Some(Timestamp::now());
            println!(
                "center-a killed (SIGKILL) at {:.0} s",
                start.elapsed().as_secs_f64()
            );
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        } else if Instant::now() - due > Duration::from_millis(100) {
            late += 1;
        }
        match step {
            Step::Alert { site, twice } => sims[site].alert(&sent, twice).await,
            Step::CameraDown { site } => sims[site].camera(0, false, &sent).await,
            Step::CameraUp { site } => sims[site].camera(0, true, &sent).await,
        }
    }
    let after = [
        a_usage,
        usage(b.pid()),
        usage(broker.pid().unwrap()),
        usage_of("postgres"),
    ];
    let run_s = start.elapsed().as_secs_f64();
    for (n, name) in [
        "center-a (until killed)",
        "center-b",
        "mosquitto",
        "PostgreSQL (all processes)",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "  {name}: CPU {:.1} % of one core over the run, peak RSS {:.0} MB",
            (after[n].0 - before[n].0) / run_s * 100.0,
            after[n].1
        );
    }
    println!(
        "  bench process (1,000 sites and the daemon): {:.0} MB now",
        rss_mb()
    );
    if late > 0 {
        println!("(the generator ran more than 100 ms late for {late} steps)");
    }
    let _ = tokio::task::spawn_blocking(move || daemon.join()).await;

    // Everything sent must be stored: live, or recovered by the survivor's reconciliation.
    let published: HashSet<Uuid> = sent.lock().unwrap().keys().copied().collect();
    let settle = Instant::now();
    let stored_ids = loop {
        let rows = common::center::query(&pg, "SELECT event_id FROM events").await;
        let ids: HashSet<Uuid> = rows.iter().map(|r| r.get(0)).collect();
        if published.is_subset(&ids) || settle.elapsed() > Duration::from_secs(90) {
            break ids;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let settled_in = settle.elapsed();
    let lost: Vec<_> = published.difference(&stored_ids).collect();
    let unknown = stored_ids.difference(&published).count();
    let total: i64 = common::center::count(&pg, "SELECT count(*) FROM events").await;
    let perimeter = "kind IN ('line_crossed', 'zone_entered', 'loitering')";
    let alarm_rows: i64 = common::center::count(
        &pg,
        &format!("SELECT count(*) FROM alarms WHERE {perimeter}"),
    )
    .await;
    let perimeter_events: i64 = common::center::count(
        &pg,
        &format!("SELECT count(*) FROM events WHERE {perimeter}"),
    )
    .await;
    // Events are keyed by event_id; an alert stored twice would be a second perimeter alarm.
    let twice_stored = alarm_rows - perimeter_events;
    let conditions: i64 = common::center::count(
        &pg,
        &format!("SELECT count(*) FROM alarms WHERE NOT ({perimeter})"),
    )
    .await;
    let open_conditions: i64 = common::center::count(
        &pg,
        &format!("SELECT count(*) FROM alarms WHERE NOT ({perimeter}) AND active"),
    )
    .await;
    let split = common::center::query(
        &pg,
        "SELECT received_by, source, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .await;
    let daemon_alerts = sent.lock().unwrap().len().saturating_sub(planned);
    println!(
        "published: {} unique alerts ({} from the daemon); stored: {total} events ({perimeter_events} perimeter), {alarm_rows} perimeter alarms, {conditions} condition alarms ({open_conditions} active at the end)",
        published.len(),
        daemon_alerts
    );
    println!(
        "lost: {} · stored twice: {twice_stored} (of {resent} alerts sent twice) · {} events stored that no site sent · settled {:.0} s after the last alert",
        lost.len(),
        unknown,
        settled_in.as_secs_f64()
    );
    for r in &split {
        let (by, source, n): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        println!("  received by {by} via {source}: {n}");
    }

    // Alert → queue: the alarm's announcement against the alert's send time.
    let rows = common::center::query(
        &pg,
        "SELECT a.id, a.event_id, e.source FROM alarms a JOIN events e USING (event_id)
         WHERE a.kind IN ('line_crossed', 'zone_entered', 'loitering')",
    )
    .await;
    let seen = alarms_seen.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    let mut live = Vec::new();
    let mut recovered = Vec::new();
    for r in &rows {
        let (id, event_id, source): (i64, Uuid, String) = (r.get(0), r.get(1), r.get(2));
        let (Some(at), Some(t)) = (seen.get(&id), sent.get(&event_id)) else {
            continue;
        };
        let ms = at.duration_since(*t).as_secs_f64() * 1000.0;
        if source == "mqtt" {
            live.push(ms);
        } else {
            recovered.push(ms);
        }
    }
    live.sort_by(|a, b| a.total_cmp(b));
    recovered.sort_by(|a, b| a.total_cmp(b));
    println!(
        "alert → queue, live: {} alarms, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        live.len(),
        percentile(&live, 0.5),
        percentile(&live, 0.99),
        live.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "alert → queue, recovered by reconciliation after the kill: {} alarms, p50 {:.1} s, max {:.1} s",
        recovered.len(),
        percentile(&recovered, 0.5) / 1000.0,
        recovered.last().copied().unwrap_or(f64::NAN) / 1000.0
    );
    if let Some(k) = killed_at {
        println!("(center-a was killed at {k})");
    }
    drop(b);
    if !lost.is_empty() {
        println!("LOST: {:?}", &lost[..lost.len().min(10)]);
        std::process::exit(1);
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("city load benchmark: run with `cargo bench --bench city`");
        return;
    }
    common::init_quiet();
    kinderwatch::detect::runtime::init(None).expect("ONNX Runtime: run scripts/setup.sh");
    let sites = env_or("KW_CITY_SITES", 1000usize);
    let secs = env_or("KW_CITY_SECS", 120u64);
    let rate = env_or("KW_CITY_RATE", 20.0f64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(sites, secs, rate));
}
