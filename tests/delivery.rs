//! Alert delivery that no message, packet limit or stored record can wedge, against a real
//! mosquitto configured per test: a retained oversized command, a broker `max_packet_size` below
//! the snapshot, an alert and a reply, PUBACKs refused by the broker's ACL (dead letters and their
//! re-queue), the connection cut with 100 alerts in flight, and a command flood while recording.
//! In every case every alert arrives, in order, duplicates only with the same `event_id`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kinderwatch::events::EventKind;
use kinderwatch::perimeter::RecordedEvent;
use kinderwatch::store::{AuditQuery, DeadLetterReason};
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

mod common;
use common::broker::{self, Broker, Received};
use common::site::*;

/// Every alert received (event topics, not snapshots) until `want` distinct ids are in, as
/// (event id, payload), in arrival order.
async fn alerts_until(
    rx: &mut UnboundedReceiver<Received>,
    want: usize,
    timeout: Duration,
    also: &mut Vec<Received>,
) -> Vec<(String, Value)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    while ids.len() < want {
        let m = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => panic!("subscriber ended"),
            Err(_) => panic!(
                "timed out with {} of {want} alerts: {:?}",
                ids.len(),
                out.iter()
                    .map(|(_, v): &(String, Value)| v["detail"].clone())
                    .collect::<Vec<_>>()
            ),
        };
        if is_event(&m) {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            let id = v["event_id"].as_str().unwrap().to_owned();
            ids.insert(id.clone());
            out.push((id, v));
        } else {
            also.push(m);
        }
    }
    out
}

/// Everything else that arrives within `d`.
async fn drain(rx: &mut UnboundedReceiver<Received>, d: Duration, into: &mut Vec<Received>) {
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        into.push(m);
    }
}

/// The order of first arrival equals `sent`, and every duplicate is a repeat of an id already
/// seen (the idempotency key).
fn assert_in_order_once_each(received: &[(String, Value)], sent: &[String]) {
    let mut seen = HashSet::new();
    let first: Vec<&String> = received
        .iter()
        .filter(|(id, _)| seen.insert(id.clone()))
        .map(|(id, _)| id)
        .collect();
    let sent: Vec<&String> = sent.iter().collect();
    assert_eq!(first, sent, "first arrivals in recording order");
}

async fn send_all(site: &Site, events: Vec<RecordedEvent>) -> Vec<String> {
    let mut ids = Vec::new();
    for e in events {
        ids.push(e.event.id.to_string());
        site.events.send(e).await.unwrap();
    }
    ids
}

async fn ask(
    client: &AsyncClient,
    command: &str,
    body: String,
    response_topic: &str,
    id: &str,
    retain: bool,
) {
    let props = PublishProperties {
        response_topic: Some(response_topic.into()),
        correlation_data: Some(Bytes::from(id.to_owned())),
        ..Default::default()
    };
    client
        .publish_with_properties(
            format!("kinderwatch/{SITE}/commands/{command}"),
            QoS::AtLeastOnce,
            retain,
            body,
            props,
        )
        .await
        .unwrap();
}

fn online_count(msgs: &[Received]) -> usize {
    msgs.iter()
        .filter(|m| m.topic == format!("kinderwatch/{SITE}/status") && m.payload == b"online")
        .count()
}

#[tokio::test]
async fn a_retained_oversized_command_neither_wedges_delivery_nor_runs() {
    common::init_logs();
    let broker = Broker::start("");
    let (client, _) = broker::subscribe(broker.port, "nothing/#", |_| {}).await;
    // Before the site connects: a retained 20 KB "query" (above this site's 16 KiB limit).
    let big = format!(r#"{{"limit": 10, "pad": "{}"}}"#, "x".repeat(20_000));
    ask(
        &client,
        "query/events",
        big,
        "center/replies/kg-7",
        "big",
        true,
    )
    .await;
    let (sub_client, mut rx) =
        broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/#"), |o| {
            o.set_max_packet_size(Some(1 << 20));
        })
        .await;
    let (replies_client, mut replies) =
        broker::subscribe(broker.port, "center/replies/#", |_| {}).await;
    // A retained disarm with the site's valid admin token, there before the site subscribes.
    let tokens = new_tokens();
    let disarm = format!(r#"{{"rule": "fence", "token": "{}"}}"#, tokens[0].0);
    ask(
        &client,
        "admin/disarm",
        disarm,
        "center/replies/kg-7",
        "old",
        true,
    )
    .await;
    let site = start_site_with(
        mqtt_config(
            broker.port,
            "max_incoming_packet = 16384\nreply_topic_prefix = \"center/replies\"",
        ),
        tokens,
    )
    .await;
    let sent = send_all(&site, (0..20).map(crossing).collect()).await;
    let mut other = Vec::new();
    let got = alerts_until(&mut rx, 20, Duration::from_secs(20), &mut other).await;
    drain(&mut rx, Duration::from_secs(2), &mut other).await;
    assert_in_order_once_each(&got, &sent);
    assert_eq!(
        got.len(),
        20,
        "no alert sent twice: the connection never dropped"
    );
    assert_eq!(online_count(&other), 1, "one connection, no reconnect loop");
    // The retained disarm was not run: the fence is still armed, and neither got a reply.
    ask(
        &replies_client,
        "query/rules",
        "{}".into(),
        "center/replies/kg-7",
        "r",
        false,
    )
    .await;
    let r = reply(&mut replies, "r").await;
    assert_eq!(r["rules"][0]["armed"], true, "{r}");
    let mut late = Vec::new();
    drain(&mut replies, Duration::from_millis(500), &mut late).await;
    assert!(
        late.is_empty(),
        "a retained command gets no reply: {late:?}"
    );
    assert!(
        common::captured_logs().contains("a retained message on a command topic was ignored"),
        "the ignored retained command is logged"
    );
    let _ = sub_client.disconnect().await;
    site.stop().await;
}

/// A JPEG of about `target` bytes: smooth gradients (like a camera picture) with some noise.
fn jpeg_of(width: u32, height: u32, noise: u32) -> Vec<u8> {
    let mut seed = 12345u32;
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let n = (seed >> 16) % (noise + 1);
        image::Rgb([
            ((x * 255 / width) + n) as u8,
            ((y * 255 / height) + n) as u8,
            (((x + y) * 128 / (width + height)) + n) as u8,
        ])
    });
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(
            img.as_raw(),
            width as u16,
            height as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .unwrap();
    out
}

#[tokio::test]
async fn a_broker_packet_limit_shrinks_snapshots_cuts_replies_and_dead_letters_a_huge_alert() {
    common::init_logs();
    let broker = Broker::start("max_packet_size 20000");
    let (_c, mut rx) = broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/#"), |o| {
        o.set_max_packet_size(Some(1 << 20));
    })
    .await;
    let site = start_site(mqtt_config(
        broker.port,
        "publish_snapshots = true\nreply_topic_prefix = \"center/replies\"",
    ))
    .await;
    let picture = jpeg_of(768, 576, 24);
    let noise = jpeg_of(1280, 720, 255);
    assert!(picture.len() > 25_000, "picture {} bytes", picture.len());
    assert!(noise.len() > 200_000, "noise {} bytes", noise.len());
    // Stored bytes that do not decode as a JPEG cannot be re-encoded.
    let broken = vec![0x5a; 30_000];
    let mut events = Vec::new();
    for n in 0..6 {
        let mut e = crossing(n);
        e.snapshot = Some(match n {
            1 => broken.clone(),
            2 => noise.clone(),
            _ => picture.clone(),
        });
        if n == 3 {
            // An alert that can never fit the broker's limit.
            e.event.detail = Some("y".repeat(25_000));
            e.snapshot = None;
        }
        events.push(e);
    }
    let huge_id = events[3].event.id;
    let sent = send_all(&site, events).await;
    let expected: Vec<String> = sent
        .iter()
        .filter(|id| **id != huge_id.to_string())
        .cloned()
        .collect();
    let mut other = Vec::new();
    let got = alerts_until(&mut rx, 5, Duration::from_secs(30), &mut other).await;
    drain(&mut rx, Duration::from_secs(2), &mut other).await;
    assert_in_order_once_each(&got, &expected);
    assert_eq!(got.len(), 5, "nothing sent twice: {got:?}");
    assert_eq!(online_count(&other), 1, "one connection");
    let schema = schema();
    for (id, alert) in &got {
        assert!(schema.is_valid(alert), "schema: {alert}");
        let snap = &alert["snapshot"];
        if id == &sent[1] {
            assert_eq!(snap["omitted"], "too_large", "{alert}");
            assert!(snap["topic"].is_null());
            assert_eq!(snap["bytes"], broken.len());
        } else {
            let published = snap["published_bytes"].as_u64().unwrap() as usize;
            let stored = snap["bytes"].as_u64().unwrap() as usize;
            assert!(published < stored && published < 20_000, "{alert}");
            let topic = snap["topic"].as_str().unwrap();
            // Every gate alert's snapshot has the same topic; this one has this size.
            let m = other
                .iter()
                .find(|m| m.topic == topic && m.payload.len() == published)
                .unwrap_or_else(|| panic!("a snapshot of {published} bytes on {topic}"));
            let img = image::load_from_memory(&m.payload).expect("a JPEG");
            assert!(
                img.width() >= 192,
                "still a usable picture: {}",
                img.width()
            );
        }
    }
    // The alert that cannot fit is a dead letter, listed with its reason.
    let store = site.store.clone();
    common::poll_until(Duration::from_secs(5), "a dead letter", move || {
        store.dead_letter_len() == 1
    })
    .await;
    let letters = site.store.dead_letters(10).unwrap();
    assert_eq!(letters[0].event_id, huge_id);
    assert_eq!(letters[0].reason, DeadLetterReason::TooLarge);
    assert!(letters[0].detail.contains("20000"), "{:?}", letters[0]);
    assert_eq!(site.store.outbox_len(), 0);

    // A reply larger than the limit is cut to a page that fits, with the cursor of the rest.
    let mut many = Vec::new();
    for n in 0..150 {
        let mut e = crossing(100 + n);
        e.event.detail = Some(format!("{n:03} {}", "z".repeat(300)));
        e.snapshot = None;
        many.push(e);
    }
    send_all(&site, many).await;
    let store = site.store.clone();
    common::poll_until(Duration::from_secs(10), "156 stored events", move || {
        store.stats().map(|s| s.events >= 156).unwrap_or(false)
    })
    .await;
    let (client, mut replies) = broker::subscribe(broker.port, "center/replies/#", |o| {
        o.set_max_packet_size(Some(1 << 20));
    })
    .await;
    let mut cursor: Option<String> = None;
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut stubs = 0;
    loop {
        let body = match &cursor {
            Some(c) => format!(r#"{{"limit": 1000, "cursor": "{c}"}}"#),
            None => r#"{"limit": 1000}"#.to_owned(),
        };
        let id = format!("p{pages}");
        ask(
            &client,
            "query/events",
            body,
            "center/replies/kg-7",
            &id,
            false,
        )
        .await;
        let r = reply(&mut replies, &id).await;
        assert_eq!(r["ok"], true, "{r}");
        pages += 1;
        for e in r["events"].as_array().unwrap() {
            ids.push(e["id"].as_str().unwrap().to_owned());
            if e["omitted"] == "too_large" {
                assert_eq!(e["id"], huge_id.to_string());
                stubs += 1;
            }
        }
        match r["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(r["truncated"], true);
                cursor = Some(c.to_owned());
            }
            None => break,
        }
        assert!(pages < 100, "cursor loop");
    }
    let distinct: HashSet<&String> = ids.iter().collect();

    assert_eq!(distinct.len(), ids.len(), "no event twice across pages");
    assert_eq!(ids.len(), 156, "every stored event, across {pages} pages");
    assert!(
        stubs == 1,
        "the one event larger than the limit came as a stub: {stubs}"
    );
    assert!(
        pages >= 3,
        "the 64 KB of events took several pages: {pages}"
    );
    eprintln!("delivery: 156 events of ~450 bytes over a 20000-byte broker limit in {pages} pages");
    site.stop().await;
}

#[tokio::test]
async fn refused_alerts_become_dead_letters_the_rest_go_on_and_a_requeue_delivers_them() {
    common::init_logs();
    let acl_dir = tempfile::tempdir().unwrap();
    let acl = acl_dir.path().join("acl");
    let rules = |yard: bool| {
        format!(
            "topic read kinderwatch/#\ntopic read center/#\ntopic write kinderwatch/{SITE}/status\ntopic write kinderwatch/{SITE}/cameras/#\ntopic write kinderwatch/{SITE}/events/gate/#\n{}topic readwrite kinderwatch/{SITE}/commands/#\ntopic write kinderwatch/{SITE}/responses\n",
            if yard {
                format!("topic write kinderwatch/{SITE}/events/yard/#\n")
            } else {
                String::new()
            }
        )
    };
    std::fs::write(&acl, rules(false)).unwrap();
    let broker = Broker::start(&format!("acl_file {}", acl.display()));
    let (_c, mut rx) =
        broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/events/#"), |_| {}).await;
    let site = start_site(mqtt_config(broker.port, "max_delivery_attempts = 3")).await;
    let mut events = Vec::new();
    let mut yard = Vec::new();
    for n in 0..12 {
        let mut e = crossing(n);
        if n % 4 == 1 {
            e.event.camera = Some("yard".into());
            yard.push(e.event.id.to_string());
        }
        events.push(e);
    }
    let sent = send_all(&site, events).await;
    let gate: Vec<String> = sent
        .iter()
        .filter(|id| !yard.contains(id))
        .cloned()
        .collect();
    let mut other = Vec::new();
    let got = alerts_until(&mut rx, gate.len(), Duration::from_secs(20), &mut other).await;
    assert_in_order_once_each(&got, &gate);
    // Three refusals each (1 s and 2 s apart), then the dead letters.
    let store = site.store.clone();
    common::poll_until(Duration::from_secs(20), "3 dead letters", move || {
        store.dead_letter_len() == 3
    })
    .await;
    let letters = site.store.dead_letters(10).unwrap();
    let mut lettered: Vec<String> = letters.iter().map(|l| l.event_id.to_string()).collect();
    lettered.sort();
    let mut want = yard.clone();
    want.sort();
    assert_eq!(lettered, want);
    assert!(
        letters
            .iter()
            .all(|l| l.reason == DeadLetterReason::Refused && l.attempts == 3),
        "{letters:?}"
    );
    assert_eq!(
        site.store.outbox_len(),
        0,
        "the entries behind them went on"
    );
    // Retention keeps dead-lettered events (they wait for an admin).
    let policy = kinderwatch::store::RetentionPolicy {
        max_age: None,
        max_bytes: Some(1),
        audit_max_age: None,
    };
    let report = site
        .store
        .apply_retention(&policy, jiff::Timestamp::now())
        .unwrap();
    assert_eq!(report.kept_for_outbox, 3, "{report:?}");
    assert_eq!(report.deleted_by_size, gate.len() as u64);
    // The ACL is fixed; an admin re-queues them and they arrive.
    std::fs::write(&acl, rules(true)).unwrap();
    broker.reload();
    let listed: Vec<String> = letters.iter().map(|l| l.event_id.to_string()).collect();
    assert_eq!(listed, yard, "listed in outbox order");
    assert_eq!(site.store.requeue_all().unwrap(), 3);
    let again = alerts_until(&mut rx, 3, Duration::from_secs(20), &mut other).await;
    assert_in_order_once_each(&again, &yard);
    let store = site.store.clone();
    common::poll_until(Duration::from_secs(5), "an empty outbox", move || {
        store.outbox_len() == 0 && store.dead_letter_len() == 0
    })
    .await;
    site.stop().await;
}

#[tokio::test]
async fn the_connection_cut_with_100_alerts_in_flight_loses_none() {
    common::init_logs();
    let broker = Broker::start("");
    let proxy = common::proxy::Proxy::start(broker.port).await;
    let (_c, mut rx) =
        broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/events/#"), |_| {}).await;
    let site = start_site(mqtt_config(proxy.port, "max_inflight = 100")).await;
    let sent = send_all(&site, (0..100).map(crossing).collect()).await;
    // Cut the site's connection (twice) as soon as alerts arrive: most of the 100 are queued
    // or unacknowledged at that moment.
    let mut other = Vec::new();
    let mut got = alerts_until(&mut rx, 5, Duration::from_secs(20), &mut other).await;
    proxy.cut();
    let more = alerts_until(&mut rx, 5, Duration::from_secs(20), &mut other).await;
    got.extend(more);
    proxy.cut();
    let mut seen: HashSet<String> = got.iter().map(|(id, _)| id.clone()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 100 {
        let m = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<usize> = sent
                    .iter()
                    .enumerate()
                    .filter(|(_, id)| !seen.contains(*id))
                    .map(|(n, _)| n)
                    .collect();
                panic!(
                    "only {} of 100 alerts after the cuts; missing {missing:?}; outbox holds {}",
                    seen.len(),
                    site.store.outbox_len()
                )
            })
            .unwrap();
        if is_event(&m) {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            let id = v["event_id"].as_str().unwrap().to_owned();
            seen.insert(id.clone());
            got.push((id, v));
        }
    }
    drain(&mut rx, Duration::from_secs(1), &mut other).await;
    let ids: HashSet<&String> = got.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 100, "every alert arrived");
    assert_in_order_once_each(&got, &sent);
    let dups = got.len() - 100;
    eprintln!(
        "delivery: connection cut twice with 100 alerts in flight: 100 delivered, {dups} duplicates (same event_id)"
    );
    let store = site.store.clone();
    common::poll_until(Duration::from_secs(10), "an empty outbox", move || {
        store.outbox_len() == 0
    })
    .await;
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_flood_while_recording_is_bounded_and_loses_no_alert() {
    common::init_logs();
    let broker = Broker::start("");
    let (_c, mut rx) =
        broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/events/#"), |_| {}).await;
    let (client, mut replies) = broker::subscribe(broker.port, "center/replies/#", |o| {
        o.set_max_packet_size(Some(64 << 20));
    })
    .await;
    let site = start_site(mqtt_config(
        broker.port,
        "reply_topic_prefix = \"center/replies\"\nmax_concurrent_commands = 1",
    ))
    .await;
    // Some history to query.
    let first = send_all(&site, (0..300).map(crossing).collect()).await;
    let mut other = Vec::new();
    alerts_until(&mut rx, 300, Duration::from_secs(30), &mut other).await;
    // The flood and new alerts at the same time.
    const FLOOD: usize = 300;
    let flood = {
        let client = client.clone();
        tokio::spawn(async move {
            for n in 0..FLOOD {
                ask(
                    &client,
                    "query/events",
                    r#"{"limit": 1000}"#.into(),
                    "center/replies/kg-7",
                    &format!("f{n}"),
                    false,
                )
                .await;
            }
        })
    };
    let sent = send_all(&site, (300..500).map(crossing).collect()).await;
    flood.await.unwrap();
    let got = alerts_until(&mut rx, 200, Duration::from_secs(60), &mut other).await;
    assert_in_order_once_each(&got, &sent);
    // At most one reply per request: ok, or busy (at most 20 a second); beyond that a flood's
    // requests are dropped, so that replies cannot crowd out the alerts.
    let mut answers: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while answers.len() < FLOOD && Instant::now() < deadline {
        // The replies have ended once none came for 3 s.
        let Ok(m) = tokio::time::timeout(Duration::from_secs(3), replies.recv()).await else {
            break;
        };
        let m = m.unwrap();
        let id = m
            .properties
            .as_ref()
            .and_then(|p| p.correlation_data.clone())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        let outcome = if v["ok"] == true {
            "ok".to_owned()
        } else {
            v["error"].as_str().unwrap().to_owned()
        };
        assert!(
            answers.insert(id.clone(), outcome).is_none(),
            "two replies to {id}"
        );
    }
    let busy = answers.values().filter(|o| *o == "busy").count();
    let ok = answers.values().filter(|o| *o == "ok").count();
    let dropped = FLOOD - answers.len();
    assert_eq!(busy + ok, answers.len(), "only ok or busy: {answers:?}");
    assert!(
        dropped == 0 || busy >= 20,
        "requests are dropped only beyond 20 busy replies a second: {busy} busy, {dropped} dropped"
    );
    assert!(
        busy > 0,
        "one command at a time: a burst of {FLOOD} meets `busy`"
    );
    assert!(ok > 0);
    // The recorder kept writing: no storage_failed, every event recorded.
    let page = site
        .store
        .query(&kinderwatch::store::EventQuery {
            kind: Some(EventKind::StorageFailed),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert!(page.events.is_empty(), "storage_failed during the flood");
    assert_eq!(site.store.stats().unwrap().events, 500);
    let audited = site
        .store
        .audit_query(&AuditQuery {
            limit: 1000,
            ..Default::default()
        })
        .unwrap()
        .0
        .len();
    assert_eq!(audited, ok, "every query that ran is in the audit trail");
    eprintln!(
        "delivery: {FLOOD} queries in a burst while recording 200 alerts: {ok} answered, {busy} busy, {dropped} dropped (flood), 0 alerts lost, {} history events",
        first.len()
    );
    site.stop().await;
}

#[tokio::test]
async fn replies_go_only_to_allowed_response_topics() {
    common::init_logs();
    let broker = Broker::start("");
    let (client, mut everything) = broker::subscribe(broker.port, "#", |_| {}).await;
    let (_r, mut refusals) = broker::subscribe(
        broker.port,
        &format!("kinderwatch/{SITE}/responses"),
        |_| {},
    )
    .await;
    let (_a, mut answers) = broker::subscribe(broker.port, "center/replies/#", |_| {}).await;
    let site = start_site(mqtt_config(
        broker.port,
        "reply_topic_prefix = \"center/replies\"",
    ))
    .await;
    // The site subscribes to its commands right after it says it is online.
    broker::next_matching(&mut everything, Duration::from_secs(10), "online", |m| {
        m.topic == format!("kinderwatch/{SITE}/status") && m.payload == b"online"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Onto the site's own event topic: refused, answered on <prefix>/responses.
    let own = format!("kinderwatch/{SITE}/events/gate/line_crossed");
    ask(&client, "query/cameras", "{}".into(), &own, "x1", false).await;
    let r = reply(&mut refusals, "x1").await;
    assert_eq!(r["error"], "forbidden", "{r}");
    // Outside the reply prefix: refused too.
    ask(
        &client,
        "query/cameras",
        "{}".into(),
        "elsewhere/t",
        "x2",
        false,
    )
    .await;
    assert_eq!(reply(&mut refusals, "x2").await["error"], "forbidden");
    // Under the prefix: answered there.
    ask(
        &client,
        "query/cameras",
        "{}".into(),
        "center/replies/kg-7",
        "x3",
        false,
    )
    .await;
    assert_eq!(reply(&mut answers, "x3").await["ok"], true);
    let mut msgs = Vec::new();
    drain(&mut everything, Duration::from_millis(500), &mut msgs).await;
    assert!(
        !msgs
            .iter()
            .any(|m| m.topic == own || m.topic == "elsewhere/t"),
        "nothing was published on a refused topic"
    );
    site.stop().await;
}

/// rumqttc numbers publishes 1..=receive-maximum (mosquitto: 20) and its SUBSCRIBE takes a number
/// too, so after a connect with a backlog its counter comes round to a packet id still in flight
/// and it holds that publish (and every request after it) until that id's PUBACK arrives *with
/// success*. Here the PUBACKs come late (a slow uplink) and the broker refuses the first publish,
/// the retained `online` (its ACL denies the status topic): rumqttc would wait until its
/// collision time-out (two keep-alives) on every connection. Every alert must still arrive, in
/// order, and soon.
#[tokio::test]
async fn a_packet_id_collision_behind_a_refused_puback_does_not_wedge_delivery() {
    common::init_logs();
    let acl_dir = tempfile::tempdir().unwrap();
    let acl = acl_dir.path().join("acl");
    std::fs::write(
        &acl,
        format!(
            "topic read kinderwatch/#\ntopic write kinderwatch/{SITE}/cameras/#\ntopic write kinderwatch/{SITE}/events/#\ntopic readwrite kinderwatch/{SITE}/commands/#\ntopic write kinderwatch/{SITE}/responses\n"
        ),
    )
    .unwrap();
    let broker = Broker::start(&format!("acl_file {}", acl.display()));
    let proxy =
        common::proxy::Proxy::start_holding_acks(broker.port, Duration::from_millis(800)).await;
    let (_c, mut rx) =
        broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/events/#"), |_| {}).await;
    // The backlog is there before the site connects.
    let site = start_site(mqtt_config(proxy.port, "keep_alive = \"30s\"")).await;
    delivers_in_order_then_drains(site, &mut rx, 40, Duration::from_secs(15)).await;
}

/// A broker that takes one QoS 1 message at a time (mosquitto `max_inflight_messages 1`, its
/// setting for strictly ordered delivery; CONNACK receive-maximum 1): the outbox still drains,
/// in order.
#[tokio::test]
async fn a_receive_maximum_of_one_still_delivers_every_alert_in_order() {
    common::init_logs();
    let broker = Broker::start("max_inflight_messages 1");
    let (_c, mut rx) =
        broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/events/#"), |_| {}).await;
    let site = start_site(mqtt_config(broker.port, "")).await;
    delivers_in_order_then_drains(site, &mut rx, 25, Duration::from_secs(20)).await;
}

/// Records `n` crossings; each must arrive once, in order, within `within`; then the outbox is
/// empty and the site stops.
async fn delivers_in_order_then_drains(
    site: Site,
    rx: &mut UnboundedReceiver<Received>,
    n: usize,
    within: Duration,
) {
    let sent = send_all(&site, (0..n).map(crossing).collect()).await;
    let mut other = Vec::new();
    let got = alerts_until(rx, sent.len(), within, &mut other).await;
    assert_in_order_once_each(&got, &sent);
    let store = site.store.clone();
    common::poll_until(Duration::from_secs(10), "an empty outbox", move || {
        store.outbox_len() == 0
    })
    .await;
    site.stop().await;
}
