//! `kinderwatch center` against a real mosquitto and a real PostgreSQL: two instances split the
//! alerts of a shared subscription, store each once (a re-sent alert is a duplicate), keep
//! alerts through a database outage, and one survives the other's SIGKILL; the alarm queue
//! moves New → Acknowledged → Resolved over HTTP with roles, and a site offline is its own alarm.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::center::*;
use common::daemon::http_get;
use common::postgres::Postgres;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_alerts_store_each_once_and_survive_a_kill() {
    let broker = Broker::start("");
    let mut pg = Postgres::start();
    let a = Center::start("center-a", broker.port, &pg.url());
    let mut b = Center::start("center-b", broker.port, &pg.url());
    let site1 = site_client(broker.port, "kg-1").await;
    let site2 = site_client(broker.port, "kg-2").await;

    // 40 alerts from two sites, every one sent twice (an at-least-once re-send).
    for n in 0..40u32 {
        let (c, s) = if n % 2 == 0 {
            (&site1, "kg-1")
        } else {
            (&site2, "kg-2")
        };
        let kind = if n % 10 == 9 {
            "zone_left"
        } else {
            "line_crossed"
        };
        publish_alert(c, s, &uuid(n), kind).await;
        publish_alert(c, s, &uuid(n), kind).await;
    }
    let stored = wait_count(
        &pg,
        "SELECT count(*) FROM events",
        40,
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&pg, "SELECT count(*) FROM events").await,
        40,
        "stored {stored}"
    );
    // Both instances took a share.
    let by: Vec<(String, i64)> = query(
        &pg,
        "SELECT received_by, count(*) FROM events GROUP BY 1 ORDER BY 1",
    )
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(by.len(), 2, "one instance took everything: {by:?}");
    // An alarm for each perimeter event; zone_left is history only.
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM alarms WHERE kind = 'line_crossed'"
        )
        .await,
        36
    );
    assert_eq!(
        count(&pg, "SELECT count(*) FROM alarms WHERE kind = 'zone_left'").await,
        0
    );

    // One instance is killed; the other takes every alert after it.
    b.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 100..130u32 {
        publish_alert(&site1, "kg-1", &uuid(n), "zone_entered").await;
    }
    let n = wait_count(
        &pg,
        "SELECT count(*) FROM events WHERE kind = 'zone_entered'",
        30,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        n,
        30,
        "alerts after a kill were lost; center-a log:\n{}",
        a.log()
    );
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM events WHERE kind = 'zone_entered' AND received_by = 'center-a'"
        )
        .await,
        30
    );

    // A database outage: the alerts wait at the broker, unacknowledged, and are stored after it.
    pg.stop();
    for n in 200..210u32 {
        publish_alert(&site2, "kg-2", &uuid(n), "loitering").await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.restart();
    let n = wait_count(
        &pg,
        "SELECT count(*) FROM events WHERE kind = 'loitering'",
        10,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        n,
        10,
        "alerts sent while the database was down were lost; log:\n{}",
        a.log()
    );
    assert!(a.log().contains("database write failed"), "{}", a.log());

    // A snapshot arrives on its own topic, named by the event_id user property.
    let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe0];
    jpeg.extend((0..20_000u32).map(|i| (i % 251) as u8));
    jpeg.extend([0xff, 0xd9]);
    site1
        .publish_with_properties(
            "kinderwatch/kg-1/events/gate/line_crossed/snapshot",
            QoS::AtLeastOnce,
            false,
            jpeg.clone(),
            PublishProperties {
                content_type: Some("image/jpeg".into()),
                user_properties: vec![("event_id".into(), uuid(0))],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_count(
        &pg,
        "SELECT count(*) FROM snapshots",
        1,
        Duration::from_secs(10),
    )
    .await;

    // The queue over HTTP.
    let (s, list) = call(
        a.port,
        "GET",
        "/api/v1/alarms?district=north&limit=1000",
        READ_TOKEN,
        "",
    );
    assert_eq!(s, 200, "{list}");
    let alarms = list["alarms"].as_array().unwrap();
    assert!(
        alarms
            .iter()
            .all(|x| x["site"] == "kg-1" && x["district"] == "north")
    );
    let first = alarms
        .iter()
        .find(|x| x["event_id"] == uuid(0))
        .expect("alarm of event 0");
    assert_eq!(first["state"], "new");
    assert_eq!(first["snapshot"], true);
    let id = first["id"].as_i64().unwrap();
    let ack = format!("/api/v1/alarms/{id}/acknowledge");
    let (s, _) = call(a.port, "POST", &ack, READ_TOKEN, "{}");
    assert_eq!(s, 403, "a read token acknowledged an alarm");
    let (s, v) = call(a.port, "POST", &ack, ADMIN_TOKEN, r#"{"note":"on camera"}"#);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "acknowledged");
    assert_eq!(v["acknowledged_by"], "desk-1");
    let (s, _) = call(a.port, "POST", &ack, ADMIN_TOKEN, "{}");
    assert_eq!(s, 409, "acknowledged twice");
    let resolve = format!("/api/v1/alarms/{id}/resolve");
    let (s, v) = call(
        a.port,
        "POST",
        &resolve,
        ADMIN_TOKEN,
        r#"{"outcome":"maybe"}"#,
    );
    assert_eq!((s, v["parameter"].as_str()), (400, Some("outcome")));
    let (s, v) = call(
        a.port,
        "POST",
        &resolve,
        ADMIN_TOKEN,
        r#"{"outcome":"drill","note":"fire drill"}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["outcome"].as_str()),
        (Some("resolved"), Some("drill"))
    );
    let got = ureq::get(&format!(
        "http://127.0.0.1:{}/api/v1/alarms/{id}/snapshot.jpg",
        a.port
    ))
    .set("Authorization", &format!("Bearer {READ_TOKEN}"))
    .call()
    .unwrap();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut got.into_reader(), &mut body).unwrap();
    assert_eq!(body, jpeg, "the stored snapshot is not the one sent");
    let (s, _) = call(a.port, "GET", "/api/v1/alarms?state=bogus", READ_TOKEN, "");
    assert_eq!(s, 400);
    let (s, _) = call(a.port, "GET", "/api/v1/alarms", "kw_unknown", "");
    assert_eq!(s, 401);
    assert_eq!(count(&pg, "SELECT count(*) FROM alarm_log").await, 2);
    let (s, ev) = call(
        a.port,
        "GET",
        "/api/v1/events?site=kg-2&kind=loitering",
        READ_TOKEN,
        "",
    );
    assert_eq!(s, 200);
    assert_eq!(ev["events"].as_array().unwrap().len(), 10);

    // A site offline is an alarm of its own, cleared (not resolved) when it is back.
    site2
        .publish("kinderwatch/kg-2/status", QoS::AtLeastOnce, true, "offline")
        .await
        .unwrap();
    wait_count(
        &pg,
        "SELECT count(*) FROM alarms WHERE kind = 'site_offline' AND active",
        1,
        Duration::from_secs(10),
    )
    .await;
    site2
        .publish("kinderwatch/kg-2/status", QoS::AtLeastOnce, true, "online")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        &pg,
        "SELECT count(*) FROM alarms WHERE kind = 'site_offline' AND NOT active",
    )
    .await
        < 1
    {
        assert!(
            Instant::now() < deadline,
            "the site offline alarm did not clear"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM alarms WHERE kind = 'site_offline'"
        )
        .await,
        1
    );
    let (s, sites) = call(a.port, "GET", "/api/v1/sites", READ_TOKEN, "");
    assert_eq!(s, 200);
    let kg2 = sites["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "kg-2")
        .unwrap();
    assert_eq!(kg2["online"], true);
    let (s, h) = http_get(a.port, "/healthz");
    assert_eq!(s, 200, "{h}");
}

#[test]
fn a_bad_center_config_names_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("center.toml");
    std::fs::write(
        &file,
        "[center]\ninstance = \"Bad Name\"\nshare_group = \"a/b\"\n[center.mqtt]\nhost = \"mqtt://x\"\n[center.database]\nurl = \"postgresql://u@h:notaport/db\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kinderwatch"))
        .args(["center", "--check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for key in [
        "center.toml",
        "center.instance",
        "center.share_group",
        "center.mqtt.host",
        "center.database.url",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
}

/// A whole city reconnecting at once: 300 sites' availability and 2,400 cameras' retained status
/// arrive together, then alerts. Every message is stored, and the alerts behind the flood too.
/// (The first ingest handed messages to its database worker over a bounded channel and
/// deadlocked here: mosquitto sends more than the Receive Maximum, the worker's acknowledgements
/// wait on the client's request queue, which only the then blocked event loop drains.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_of_status_does_not_wedge_the_ingest() {
    const SITES_N: usize = 300;
    const CAMERAS_N: usize = 8;
    let broker = Broker::start("max_queued_messages 100000\n");
    let pg = Postgres::start();
    let a = Center::start("center-a", broker.port, &pg.url());
    let city = site_client(broker.port, "city").await;
    let status = serde_json::json!({ "state": "streaming", "since": "2026-12-06T08:00:00Z", "last_error": null });
    for s in 0..SITES_N {
        city.publish(
            format!("kinderwatch/kg-{s:03}/status"),
            QoS::AtLeastOnce,
            true,
            "online",
        )
        .await
        .unwrap();
        for c in 0..CAMERAS_N {
            city.publish(
                format!("kinderwatch/kg-{s:03}/cameras/cam-{c}/status"),
                QoS::AtLeastOnce,
                true,
                serde_json::to_vec(&status).unwrap(),
            )
            .await
            .unwrap();
        }
    }
    for n in 0..20u32 {
        publish_alert(&city, "kg-001", &uuid(5000 + n), "line_crossed").await;
    }
    let cameras = wait_count(
        &pg,
        "SELECT count(*) FROM cameras",
        (SITES_N * CAMERAS_N) as i64,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        cameras,
        (SITES_N * CAMERAS_N) as i64,
        "camera status stored; center log:\n{}",
        a.log()
    );
    let online = wait_count(
        &pg,
        "SELECT count(*) FROM sites WHERE online",
        SITES_N as i64,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(online, SITES_N as i64);
    let alerts = wait_count(
        &pg,
        "SELECT count(*) FROM events",
        20,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        alerts,
        20,
        "the alerts behind the flood; center log:\n{}",
        a.log()
    );
}

async fn publish_event(c: &rumqttc::v5::AsyncClient, site: &str, body: serde_json::Value) {
    let kind = body["kind"].as_str().unwrap().to_owned();
    c.publish(
        format!("kinderwatch/{site}/events/gate/{kind}"),
        QoS::AtLeastOnce,
        false,
        serde_json::to_vec(&body).unwrap(),
    )
    .await
    .unwrap();
}

/// The queue follows what happened, not how the messages arrived: an alert the database refuses
/// (a NUL in its text) is rejected and the alerts behind it are stored; a camera's `online`
/// that overtook its older `offline` (two instances, either order) leaves no active alarm; a
/// site's retained `offline`, sent again on every reconnect, raises nothing once staff resolved
/// its alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_follows_what_happened_not_the_order_of_arrival() {
    let broker = Broker::start("");
    let pg = Postgres::start();
    let a = Center::start("center-a", broker.port, &pg.url());
    let site = site_client(broker.port, "kg-1").await;

    let mut poisoned = alert("kg-1", &uuid(9001), "line_crossed");
    poisoned["rule"] = "fen\u{0}ce".into();
    publish_event(&site, "kg-1", poisoned).await;
    publish_alert(&site, "kg-1", &uuid(9002), "line_crossed").await;
    assert_eq!(
        wait_count(
            &pg,
            &format!(
                "SELECT count(*) FROM events WHERE event_id = '{}'",
                uuid(9002)
            ),
            1,
            Duration::from_secs(20)
        )
        .await,
        1,
        "the alert behind a refused one; center log:\n{}",
        a.log()
    );
    assert!(a.log().contains("the database refused it"), "{}", a.log());

    // camera_online (newer) arrives before camera_offline (older).
    let now = jiff::Timestamp::now();
    let mut online = alert("kg-1", &uuid(9003), "camera_online");
    online["time"] = now.to_string().into();
    online["object"] = serde_json::Value::Null;
    let mut offline = alert("kg-1", &uuid(9004), "camera_offline");
    offline["time"] = (now - jiff::SignedDuration::from_secs(2))
        .to_string()
        .into();
    offline["object"] = serde_json::Value::Null;
    publish_event(&site, "kg-1", online).await;
    publish_event(&site, "kg-1", offline).await;
    wait_count(
        &pg,
        "SELECT count(*) FROM events WHERE kind IN ('camera_online', 'camera_offline')",
        2,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM alarms WHERE kind = 'camera_offline' AND active"
        )
        .await,
        0,
        "an old camera_offline opened an alarm for a camera that is back"
    );

    // A site offline, its alarm resolved by staff, then the same retained offline again.
    site.publish("kinderwatch/kg-1/status", QoS::AtLeastOnce, true, "offline")
        .await
        .unwrap();
    wait_count(
        &pg,
        "SELECT count(*) FROM alarms WHERE kind = 'site_offline'",
        1,
        Duration::from_secs(10),
    )
    .await;
    let id: i64 = query(&pg, "SELECT id FROM alarms WHERE kind = 'site_offline'").await[0].get(0);
    let (s, v) = call(
        a.port,
        "POST",
        &format!("/api/v1/alarms/{id}/resolve"),
        ADMIN_TOKEN,
        r#"{"outcome":"false_alarm","note":"the box is being replaced"}"#,
    );
    assert_eq!(s, 200, "{v}");
    for _ in 0..3 {
        site.publish("kinderwatch/kg-1/status", QoS::AtLeastOnce, true, "offline")
            .await
            .unwrap();
    }
    // A marker after them: when it is stored, the offlines before it were handled.
    publish_alert(&site, "kg-1", &uuid(9005), "line_crossed").await;
    wait_count(
        &pg,
        &format!(
            "SELECT count(*) FROM events WHERE event_id = '{}'",
            uuid(9005)
        ),
        1,
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM alarms WHERE kind = 'site_offline'"
        )
        .await,
        1,
        "a repeated offline raised a new alarm"
    );
}
