//! MQTT alerts against a real mosquitto on a free port: the documented payload (checked against
//! the JSON Schema), a broker outage, TLS with password auth, a wrong password, commands over
//! request/response, and the daemon killed with SIGKILL (outbox and last will).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kinderwatch::config::Config;
use kinderwatch::perimeter::RecordedEvent;
use kinderwatch::store::recorder;
use kinderwatch::store::{Store, StoreConfig};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::Value;

mod common;
use common::broker::{self, Broker};

use common::site::*;

#[tokio::test]
async fn an_event_is_delivered_with_the_documented_payload() {
    common::init_logs();
    let broker = Broker::start("");
    let (_sub, mut rx) =
        broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/#"), |_| {}).await;
    let site = start_site(mqtt_config(broker.port, "publish_snapshots = true")).await;
    broker::next_matching(&mut rx, Duration::from_secs(10), "status online", |m| {
        m.topic == format!("kinderwatch/{SITE}/status") && m.payload == b"online"
    })
    .await;
    let cam = broker::next_matching(&mut rx, Duration::from_secs(5), "camera status", |m| {
        m.topic == format!("kinderwatch/{SITE}/cameras/gate/status")
    })
    .await;
    let cam: Value = serde_json::from_slice(&cam.payload).unwrap();
    assert_eq!(cam["state"], "streaming");

    let sent = crossing(1);
    site.events.send(sent.clone()).await.unwrap();
    let m = broker::next_matching(&mut rx, Duration::from_secs(10), "the alert", is_event).await;
    assert_eq!(
        m.topic,
        format!("kinderwatch/{SITE}/events/gate/line_crossed")
    );
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    let validator = schema();
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "payload {v} does not match the schema: {errors:?}"
    );
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["event_id"], sent.event.id.to_string());
    assert_eq!(v["site"], SITE);
    assert_eq!(v["camera"], "gate");
    assert_eq!(v["rule"], "fence");
    assert_eq!(v["kind"], "line_crossed");
    assert_eq!(v["object"]["class"], "person");
    assert_eq!(v["object"]["crossing"], "right");
    assert_eq!(v["time"], sent.event.time.to_string());
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        v["snapshot"]["url"],
        format!(
            "http://10.8.0.7:8080/api/v1/events/{}/snapshot.jpg",
            sent.event.id
        )
    );
    assert_eq!(v["snapshot"]["bytes"], 4);
    let props = m.properties.expect("MQTT 5 properties");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    // The snapshot on its own topic.
    let snap = broker::next_matching(&mut rx, Duration::from_secs(5), "the snapshot", |m| {
        m.topic.ends_with("/line_crossed/snapshot")
    })
    .await;
    assert_eq!(snap.payload, vec![0xff, 0xd8, 0xff, 0xd9]);
    // The schema is really checked: a payload without its id fails it.
    let mut broken = v.clone();
    broken.as_object_mut().unwrap().remove("event_id");
    assert!(!validator.is_valid(&broken));
    // Acknowledged: the outbox is empty.
    let store = site.store.clone();
    common::poll_until(Duration::from_secs(5), "an empty outbox", move || {
        store.outbox_len() == 0
    })
    .await;
    site.stop().await;
    // A clean stop says offline (retained).
    let off = broker::next_matching(&mut rx, Duration::from_secs(5), "status offline", |m| {
        m.topic == format!("kinderwatch/{SITE}/status")
    })
    .await;
    assert_eq!(off.payload, b"offline");
}

/// A camera added by a live reload gets its retained status; removed (here while the broker is
/// away), its retained status is cleared (an empty retained message) by the next connection, so
/// that the center does not show it forever. The other camera's stays.
#[tokio::test]
async fn a_camera_added_and_removed_live_gets_and_loses_its_retained_status() {
    use kinderwatch::app::reload::ReloadPlan;
    common::init_logs();
    let broker = Broker::start("");
    let status = |cam: &str| format!("kinderwatch/{SITE}/cameras/{cam}/status");
    let (_sub, mut rx) = broker::subscribe(
        broker.port,
        &format!("kinderwatch/{SITE}/cameras/#"),
        |_| {},
    )
    .await;
    let mut site = start_site(mqtt_config(broker.port, "")).await;
    broker::next_matching(&mut rx, Duration::from_secs(10), "gate's status", |m| {
        m.topic == status("gate")
    })
    .await;

    let first = site.daemon.config().clone();
    let mut with_yard = first.clone();
    let mut yard = first.cameras[0].clone();
    yard.id = "yard".into();
    yard.name = Some("Yard".into());
    with_yard.cameras.push(yard);
    let added = ReloadPlan {
        rules: true,
        added: vec!["yard".into()],
        ..Default::default()
    };
    site.daemon.reload(with_yard.clone(), &added).await.unwrap();
    let m = broker::next_matching(&mut rx, Duration::from_secs(10), "yard's status", |m| {
        m.topic == status("yard")
    })
    .await;
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["state"], "streaming", "{v}");
    assert_eq!(site.daemon.cameras().len(), 2);

    // Removed while the broker is away (it keeps its retained messages on disk): the connection
    // after the outage clears the status, although it never published it itself.
    let mut broker = broker;
    broker.stop();
    let removed = ReloadPlan {
        rules: true,
        removed: vec!["yard".into()],
        ..Default::default()
    };
    site.daemon.reload(first, &removed).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.restart();
    // (It may say `stopped` first: the camera stops before it leaves the list.)
    broker::next_matching(
        &mut rx,
        Duration::from_secs(20),
        "yard's status cleared",
        |m| m.topic == status("yard") && m.payload.is_empty(),
    )
    .await;
    assert_eq!(site.daemon.cameras().len(), 1);

    // A subscriber that comes now sees gate's retained status and nothing of yard.
    let (_late, mut late) = broker::subscribe(
        broker.port,
        &format!("kinderwatch/{SITE}/cameras/#"),
        |_| {},
    )
    .await;
    let m = broker::next_matching(
        &mut late,
        Duration::from_secs(5),
        "gate's retained status",
        |m| m.topic == status("gate"),
    )
    .await;
    assert!(m.retain);
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(m) = late.try_recv() {
        assert_ne!(m.topic, status("yard"), "a removed camera's status is gone");
    }
    site.stop().await;
}

/// A connected publisher with nothing to send reads the outbox only when told (a new entry) or on
/// its poll tick, never in a loop: it once re-read an empty outbox without pause (84 % of a core on
/// an idle site). Then one event is still delivered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_publisher_does_not_spin_on_the_outbox() {
    common::init_logs();
    let broker = Broker::start("");
    let (_sub, mut rx) =
        broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/#"), |_| {}).await;
    let site = start_site(mqtt_config(broker.port, "")).await;
    broker::next_matching(&mut rx, Duration::from_secs(10), "status online", |m| {
        m.topic == format!("kinderwatch/{SITE}/status") && m.payload == b"online"
    })
    .await;
    let before = site.store.outbox_reads();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_reads = site.store.outbox_reads() - before;
    // The poll tick is 500 ms: about 6 reads in 3 s (a spinning loop makes thousands).
    assert!(
        idle_reads <= 12,
        "{idle_reads} outbox reads in 3 s while idle"
    );
    site.events.send(crossing(1)).await.unwrap();
    broker::next_matching(&mut rx, Duration::from_secs(10), "the alert", is_event).await;
    site.stop().await;
}

#[tokio::test]
async fn a_broker_outage_loses_nothing_and_order_is_kept() {
    common::init_logs();
    let mut broker = Broker::start("");
    let (_sub, mut rx) =
        broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/events/#"), |_| {}).await;
    let site = start_site(mqtt_config(broker.port, "")).await;
    site.events.send(crossing(0)).await.unwrap();
    broker::next_matching(
        &mut rx,
        Duration::from_secs(10),
        "the first alert",
        is_event,
    )
    .await;
    let health = site.health().await;
    assert_eq!(health["mqtt"]["connected"], true, "{health}");
    assert_eq!(health["mqtt"]["configured"], true, "{health}");
    assert!(
        health["disk"]["free_bytes"].as_u64().unwrap() > 0,
        "{health}"
    );

    broker.stop();
    let mut sent = Vec::new();
    for n in 1..=100 {
        let e = crossing(n);
        sent.push(e.event.id.to_string());
        site.events.send(e).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let store = site.store.clone();
    common::poll_until(
        Duration::from_secs(10),
        "100 alerts in the outbox",
        move || store.outbox_len() >= 100,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The health panel says the broker is away, why, and what waits.
    let health = site.health().await;
    assert_eq!(health["mqtt"]["connected"], false, "{health}");
    assert!(
        health["mqtt"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{health}"
    );
    assert!(
        health["mqtt"]["outbox"].as_u64().unwrap() >= 100,
        "{health}"
    );
    broker.restart();

    let mut got: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sent.iter().all(|id| got.contains(id)) {
        assert!(
            Instant::now() < deadline,
            "only {} of 100 arrived",
            sent.iter().filter(|id| got.contains(id)).count()
        );
        let m = broker::next_matching(
            &mut rx,
            Duration::from_secs(30),
            "alerts after the outage",
            is_event,
        )
        .await;
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        got.push(v["event_id"].as_str().unwrap().to_owned());
    }
    // In order: the first arrival of each id follows the recording order.
    let mut firsts: Vec<&String> = Vec::new();
    for id in &got {
        if sent.contains(id) && !firsts.contains(&id) {
            firsts.push(id);
        }
    }
    assert_eq!(
        firsts,
        sent.iter().collect::<Vec<_>>(),
        "alerts arrived out of order"
    );
    let store = site.store.clone();
    common::poll_until(Duration::from_secs(10), "an empty outbox", move || {
        store.outbox_len() == 0
    })
    .await;
    let health = site.health().await;
    assert_eq!(health["mqtt"]["connected"], true, "{health}");
    site.stop().await;
}

#[tokio::test]
async fn commands_over_request_response() {
    common::init_logs();
    let broker = Broker::start("");
    let (client, mut rx) = broker::subscribe(broker.port, "center/replies/#", |_| {}).await;
    let site = start_site(mqtt_config(
        broker.port,
        "reply_topic_prefix = \"center/replies\"",
    ))
    .await;
    let mut sent = Vec::new();
    for n in 0..5 {
        let e = crossing(n);
        sent.push(e.event.id.to_string());
        site.events.send(e).await.unwrap();
    }
    let store = site.store.clone();
    common::poll_until(Duration::from_secs(10), "5 stored events", move || {
        store.stats().map(|s| s.events >= 5).unwrap_or(false)
    })
    .await;
    // The publisher subscribes to the command topics after connecting.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let ask = |command: &str, body: &str, id: &str| {
        let props = PublishProperties {
            response_topic: Some("center/replies/kg-7".into()),
            correlation_data: Some(Bytes::from(id.to_owned())),
            ..Default::default()
        };
        let topic = format!("kinderwatch/{SITE}/commands/{command}");
        let client = client.clone();
        let body = body.to_owned();
        async move {
            client
                .publish_with_properties(topic, QoS::AtLeastOnce, false, body, props)
                .await
                .unwrap();
        }
    };
    ask("query/events", r#"{"camera": "gate", "limit": 3}"#, "q1").await;
    let r = reply(&mut rx, "q1").await;
    assert_eq!(r["ok"], true, "{r}");
    let ids: Vec<&str> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    // Newest first by id (ids order by time; within one millisecond their order is arbitrary).
    let mut by_id = sent.clone();
    by_id.sort_by(|a, b| b.cmp(a));
    let newest: Vec<&str> = by_id.iter().take(3).map(String::as_str).collect();
    assert_eq!(ids, newest);
    let cursor = r["next_cursor"].as_str().expect("a cursor").to_owned();
    ask(
        "query/events",
        &format!(r#"{{"camera": "gate", "limit": 3, "cursor": "{cursor}"}}"#),
        "q2",
    )
    .await;
    let r = reply(&mut rx, "q2").await;
    assert_eq!(r["events"].as_array().unwrap().len(), 2);

    // Arming needs an admin token: write access to the topic alone is not enough.
    ask("admin/disarm", r#"{"rule": "fence"}"#, "n1").await;
    let r = reply(&mut rx, "n1").await;
    assert_eq!(r["error"], "unauthorized", "{r}");
    let with = |token: &str| format!(r#"{{"rule": "fence", "token": "{token}"}}"#);
    ask("admin/disarm", &with("kw_not-a-token"), "n2").await;
    assert_eq!(reply(&mut rx, "n2").await["error"], "unauthorized");
    ask("admin/disarm", &with(&site.read_token), "n3").await;
    let r = reply(&mut rx, "n3").await;
    assert_eq!(r["error"], "forbidden", "{r}");
    assert!(
        !r.to_string().contains(&site.read_token),
        "a reply never echoes a token"
    );
    ask("query/rules", "", "r0").await;
    assert_eq!(reply(&mut rx, "r0").await["rules"][0]["armed"], true);
    ask("admin/disarm", &with(&site.admin_token), "a1").await;
    assert_eq!(reply(&mut rx, "a1").await["armed"], false);
    ask("query/rules", "", "r1").await;
    let r = reply(&mut rx, "r1").await;
    assert_eq!(r["rules"][0]["armed"], false, "{r}");
    ask("admin/arm", &with(&site.admin_token), "a2").await;
    assert_eq!(reply(&mut rx, "a2").await["ok"], true);
    // Every attempt is in the audit trail, with who and what came of it.
    let (records, _) = site
        .store
        .audit_query(&kinderwatch::store::AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let changes: Vec<(String, String, String)> = records
        .iter()
        .rev()
        .filter(|r| r.channel == "mqtt" && r.target == "fence")
        .map(|r| {
            (
                serde_json::to_value(r.action)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned(),
                r.caller.clone(),
                r.result.clone(),
            )
        })
        .collect();
    let t = |a: &str, c: &str, r: &str| (a.to_owned(), c.to_owned(), r.to_owned());
    assert_eq!(
        changes,
        [
            t("disarm", "mqtt:center/replies/kg-7", "unauthorized"),
            t("disarm", "mqtt:center/replies/kg-7", "unauthorized"),
            t("disarm", "operator", "forbidden"),
            t("disarm", "center-admin", "ok"),
            t("arm", "center-admin", "ok"),
        ],
        "{records:?}"
    );
    assert!(
        records.iter().any(|r| r.channel == "mqtt"
            && r.target.contains("camera=gate")
            && r.detail.as_deref() == Some("3 events")),
        "history queries are audited: {records:?}"
    );
    ask("query/cameras", "{}", "c1").await;
    assert_eq!(
        reply(&mut rx, "c1").await["cameras"][0]["state"],
        "streaming"
    );

    // Garbage gets an error reply, never a crash.
    let bad_rule = format!(
        r#"{{"rule": "no-such-rule", "token": "{}"}}"#,
        site.admin_token
    );
    for (command, body, id, error) in [
        ("query/events", "{not json", "g1", "bad_request"),
        (
            "query/events",
            r#"{"kind": "jumping"}"#,
            "g2",
            "bad_parameter",
        ),
        ("query/events", "[1, 2]", "g3", "bad_request"),
        ("admin/arm", bad_rule.as_str(), "g4", "not_found"),
        ("admin/arm", "{}", "g5", "bad_parameter"),
        ("query/events", r#"{"token": 7}"#, "g7", "bad_parameter"),
        ("self-destruct", "{}", "g6", "unknown_command"),
    ] {
        ask(command, body, id).await;
        let r = reply(&mut rx, id).await;
        assert_eq!(r["ok"], false, "{command} {body}: {r}");
        assert_eq!(r["error"], error, "{command} {body}: {r}");
    }
    // Still alive: a good query after the garbage.
    ask("query/cameras", "{}", "c2").await;
    assert_eq!(reply(&mut rx, "c2").await["ok"], true);
    site.stop().await;
}

/// A CA and a server certificate for 127.0.0.1, as PEM files in `dir`.
fn make_certs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kinderwatch test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    // Client certificates (CN = the MQTT username) for "center" and "kg-7".
    for name in ["center", "kg-7"] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
    (paths.0, paths.1, paths.2)
}

#[tokio::test]
async fn tls_client_certificates_authenticate_the_site() {
    common::init_logs();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(certs.path());
    let broker = Broker::start(&format!(
        "allow_anonymous false\nrequire_certificate true\nuse_identity_as_username true\ncafile {}\ncertfile {}\nkeyfile {}\n",
        ca.display(),
        cert.display(),
        key.display()
    ));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |f: &str| std::fs::read(certs.path().join(f)).unwrap();
    let (ca_bytes, center) = (
        std::fs::read(&ca).unwrap(),
        (read("center.pem"), read("center.key")),
    );
    let (_sub, mut rx) = broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/#"), |o| {
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Simple {
                ca: ca_bytes.clone(),
                alpn: None,
                client_auth: Some(center.clone()),
            },
        ));
    })
    .await;
    // With the site's certificate: delivered.
    let with_cert = format!(
        "tls = true\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        ca.display(),
        certs.path().join("kg-7.pem").display(),
        certs.path().join("kg-7.key").display()
    );
    let site = start_site(mqtt_config(broker.port, &with_cert)).await;
    let e = crossing(11);
    site.events.send(e.clone()).await.unwrap();
    let m = broker::next_matching(
        &mut rx,
        Duration::from_secs(15),
        "the alert with a client certificate",
        is_event,
    )
    .await;
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["event_id"], e.event.id.to_string());
    site.stop().await;

    // Without one: refused by the broker, the alert waits in the outbox.
    let site = start_site(mqtt_config(
        broker.port,
        &format!("tls = true\nca_file = \"{}\"\n", ca.display()),
    ))
    .await;
    site.events.send(crossing(12)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        site.store.outbox_len(),
        1,
        "not delivered without a client certificate"
    );
    while let Ok(m) = rx.try_recv() {
        assert!(
            !is_event(&m),
            "an alert got through without a client certificate: {}",
            m.topic
        );
    }
    site.stop().await;
}

#[tokio::test]
async fn tls_with_password_auth_delivers_and_a_wrong_password_is_a_clear_rate_limited_error() {
    common::init_logs();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(certs.path());
    let passwords = certs.path().join("passwd");
    let ok = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["kg-7", "s3cret-mqtt-pass", "center"])
        .status()
        .unwrap();
    assert!(ok.success());
    // Add the center's user.
    assert!(
        std::process::Command::new("mosquitto_passwd")
            .args(["-b"])
            .arg(&passwords)
            .args(["center", "center-pass"])
            .status()
            .unwrap()
            .success()
    );
    let broker = Broker::start(&format!(
        "allow_anonymous false\npassword_file {}\ncafile {}\ncertfile {}\nkeyfile {}\n",
        passwords.display(),
        ca.display(),
        cert.display(),
        key.display()
    ));
    let ca_bytes = std::fs::read(&ca).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (_sub, mut rx) = broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/#"), |o| {
        o.set_credentials("center", "center-pass");
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Simple {
                ca: ca_bytes.clone(),
                alpn: None,
                client_auth: None,
            },
        ));
    })
    .await;
    let password_file = certs.path().join("mqtt-password");
    std::fs::write(&password_file, "s3cret-mqtt-pass\n").unwrap();
    let tls = format!(
        "tls = true\nca_file = \"{}\"\nusername = \"kg-7\"\npassword_file = \"{}\"\n",
        ca.display(),
        password_file.display()
    );
    let site = start_site(mqtt_config(broker.port, &tls)).await;
    let e = crossing(7);
    site.events.send(e.clone()).await.unwrap();
    let m = broker::next_matching(
        &mut rx,
        Duration::from_secs(15),
        "the alert over TLS",
        is_event,
    )
    .await;
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["event_id"], e.event.id.to_string());
    site.stop().await;

    // A wrong password: a clear error, logged once (not once per retry), no crash, no password.
    let wrong_file = certs.path().join("wrong-password");
    std::fs::write(&wrong_file, "not-the-password\n").unwrap();
    let tls = format!(
        "tls = true\nca_file = \"{}\"\nusername = \"kg-7\"\npassword_file = \"{}\"\n",
        ca.display(),
        wrong_file.display()
    );
    let site = start_site(mqtt_config(broker.port, &tls)).await;
    let e = crossing(8);
    site.events.send(e.clone()).await.unwrap();
    // With backoff 200ms..1s, 4 s are several attempts.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        site.daemon.ended_tasks(),
        Vec::<String>::new(),
        "a task ended"
    );
    assert_eq!(site.store.outbox_len(), 1, "the alert waits in the outbox");
    let logs = common::captured_logs();
    let refusals = logs.matches("the broker refused the credentials").count();
    assert_eq!(
        refusals, 1,
        "logged once while the error stays the same:\n{logs}"
    );
    assert!(
        logs.contains("mqtt.password_file"),
        "the error names the key to check"
    );
    assert!(!logs.contains("not-the-password") && !logs.contains("s3cret-mqtt-pass"));
    site.stop().await;
}

#[test]
fn config_problems_name_their_keys() {
    let text = "[site]\nid = \"kg\"\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:9/x\"\n[mqtt]\nhost = \"mqtt://broker\"\ntls = true\nca_file = \"/nonexistent/ca.pem\"\nusername = \"kg\"\npassword_file = \"/nonexistent/pw\"\ntopic_prefix = \"kw/#\"\n";
    let e = Config::from_toml(text, Path::new("t.toml"), Path::new("."))
        .unwrap_err()
        .to_string();
    for key in [
        "mqtt.host",
        "mqtt.ca_file",
        "mqtt.password_file",
        "mqtt.topic_prefix",
    ] {
        assert!(e.contains(key), "{key} missing in:\n{e}");
    }
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    // The delivery limits.
    let text = "[site]\nid = \"kg\"\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:9/x\"\n[mqtt]\nhost = \"broker\"\nmax_incoming_packet = 100\nmax_delivery_attempts = 0\nmax_concurrent_commands = 0\nreply_topic_prefix = \"kinderwatch\"\n";
    let e = Config::from_toml(text, Path::new("t.toml"), Path::new("."))
        .unwrap_err()
        .to_string();
    for key in [
        "mqtt.max_incoming_packet",
        "mqtt.max_delivery_attempts",
        "mqtt.max_concurrent_commands",
        "mqtt.reply_topic_prefix",
    ] {
        assert!(e.contains(key), "{key} missing in:\n{e}");
    }
    assert!(e.contains("holds the site's own topics"), "{e}");
}

/// The daemon binary with this state dir and broker; killed (SIGKILL) on drop.
struct Daemon(std::process::Child);

impl Daemon {
    fn start(config: &Path) -> Self {
        Self(
            std::process::Command::new(env!("CARGO_BIN_EXE_kinderwatch"))
                .args(["run", "--config"])
                .arg(config)
                .env_remove("RUST_LOG")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn kill9(mut self) {
        self.0.kill().unwrap(); // SIGKILL
        self.0.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn after_sigkill_the_outbox_is_published_on_restart_and_the_last_will_says_offline() {
    common::init_logs();
    let state = tempfile::tempdir().unwrap();
    let mut sent = Vec::new();
    {
        let store = Store::open(&state.path().join("events.db"), &StoreConfig::default()).unwrap();
        let events: Vec<RecordedEvent> = (0..50).map(crossing).collect();
        sent.extend(events.iter().map(|e| e.event.id.to_string()));
        store.record(&events, true).unwrap();
    }
    let mut broker = Broker::start("");
    broker.stop();
    let config = state.path().join("kinderwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[site]\nid = \"{SITE}\"\n[state]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nkeep_alive = \"5s\"\nbackoff_initial = \"200ms\"\nbackoff_max = \"1s\"\n[[cameras]]\nid = \"gate\"\nurl = \"rtsp://127.0.0.1:9/x\"\n",
            state.path().display(),
            broker.port
        ),
    )
    .unwrap();

    // The broker is down: the daemon cannot publish, and is killed with the 50 in its outbox.
    let daemon = Daemon::start(&config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.kill9();
    {
        let store = Store::open(&state.path().join("events.db"), &StoreConfig::default()).unwrap();
        assert_eq!(store.outbox_len(), 50, "the outbox survived SIGKILL");
    }

    // Broker back, daemon restarted: all 50 arrive.
    broker.restart();
    let (_sub, mut rx) =
        broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/#"), |_| {}).await;
    let daemon = Daemon::start(&config);
    let mut got = std::collections::HashSet::new();
    let mut online = false;
    while got.len() < 50 || !online {
        let m = broker::next_matching(
            &mut rx,
            Duration::from_secs(20),
            "the 50 alerts and online",
            |_| true,
        )
        .await;
        if m.topic == format!("kinderwatch/{SITE}/status") {
            online |= m.payload == b"online";
        } else if is_event(&m) {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            got.insert(v["event_id"].as_str().unwrap().to_owned());
        }
    }
    assert!(sent.iter().all(|id| got.contains(id)));

    // SIGKILL: no DISCONNECT, so the broker publishes the last will.
    daemon.kill9();
    let m = broker::next_matching(&mut rx, Duration::from_secs(15), "the last will", |m| {
        m.topic == format!("kinderwatch/{SITE}/status")
    })
    .await;
    assert_eq!(m.payload, b"offline");
}

#[tokio::test]
async fn events_the_store_cannot_write_yet_go_out_live() {
    common::init_logs();
    let broker = Broker::start("");
    let (_sub, mut rx) =
        broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/#"), |_| {}).await;
    let site = start_site(mqtt_config(broker.port, "")).await;
    let live = site.daemon.live_alerts_input().unwrap();
    broker::next_matching(&mut rx, Duration::from_secs(10), "status online", |m| {
        m.topic == format!("kinderwatch/{SITE}/status")
    })
    .await;
    let e = crossing(3).event;
    live.send(recorder::LiveEvent {
        event: e.clone(),
        snapshot_len: 0,
    })
    .await
    .unwrap();
    let m =
        broker::next_matching(&mut rx, Duration::from_secs(10), "the live alert", is_event).await;
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert!(schema().is_valid(&v), "{v}");
    assert_eq!(v["event_id"], e.id.to_string());
    assert_eq!(
        v["snapshot"],
        Value::Null,
        "not stored yet: no snapshot to fetch"
    );
    assert_eq!(
        site.store.outbox_len(),
        0,
        "live alerts do not go through the outbox"
    );
    site.stop().await;
}
