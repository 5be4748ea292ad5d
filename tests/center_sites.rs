//! The center asking the sites: a real site (store, outbox, publisher, command handler, HTTP API)
//! whose alerts were published while no center listened; the center's reconciliation finds them
//! in the site's store over MQTT request/response and raises them as recovered alarms, fetches
//! their snapshots from the site's HTTP API with the site's read token, and the city-wide
//! history asks every site of the directory and names those that did not answer.

mod common;

use std::time::Duration;

use common::broker::{self, Broker};
use common::center::*;
use common::postgres::Postgres;
use common::site::{self, SITE};
use rumqttc::v5::mqttbytes::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_alerts_are_recovered_from_the_site_and_the_history_asks_every_site() {
    let broker = Broker::start("");
    let pg = Postgres::start();
    let tokens = site::new_tokens();
    let read_token = tokens[1].0.clone();
    // The site allows replies under center/replies (center-h asks for them there; center-a
    // asks without a response topic, and the site replies on its own responses topic).
    let site = site::start_site_with(
        site::mqtt_config(broker.port, "reply_topic_prefix = \"center/replies\""),
        tokens,
    )
    .await;

    // Three crossings published while no center is subscribed: the broker drops them.
    let (_watch, mut seen) =
        broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/events/#"), |_| {}).await;
    let lost: Vec<String> = (0..3)
        .map(|n| {
            let e = site::crossing(n);
            let id = e.event.id.to_string();
            let tx = site.events.clone();
            tokio::spawn(async move { tx.send(e).await.unwrap() });
            id
        })
        .collect();
    for _ in 0..3 {
        broker::next_matching(
            &mut seen,
            Duration::from_secs(20),
            "a published crossing",
            site::is_event,
        )
        .await;
    }
    // kg-2 is offline (its last will); kg-1 never spoke.
    let other = site_client(broker.port, "kg-2").await;
    other
        .publish("kinderwatch/kg-2/status", QoS::AtLeastOnce, true, "offline")
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("kg-7.token");
    std::fs::write(&token_file, format!("{read_token}\n")).unwrap();
    let sites = format!(
        r#"{SITES}
[[center.sites]]
id = "{SITE}"
district = "north"
api_url = "{}"
api_token_file = "{}"
"#,
        site.api,
        token_file.display()
    );
    let mut a = Center::start_with(
        "center-a",
        broker.port,
        &pg.url(),
        "reconcile_interval = \"1s\"\nquery_timeout = \"2s\"\nsnapshot_fetch_after = \"1s\"",
        &sites,
    );
    let log = || a.log();

    // The reconciliation finds the three in the site's store: events, recovered alarms.
    wait_for(
        &pg,
        "SELECT count(*) FROM events WHERE site = 'kg-7' AND source = 'query'",
        3,
        "events recovered from the site",
        log,
    )
    .await;
    let rows = query(
        &pg,
        "SELECT event_id::text FROM events WHERE site = 'kg-7' ORDER BY 1",
    )
    .await;
    let mut got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let mut want = lost.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the recovered events are not the lost ones");
    assert_eq!(
        count(&pg, "SELECT count(*) FROM alarms WHERE site = 'kg-7' AND recovered AND kind = 'line_crossed'").await,
        3
    );
    assert!(
        a.log()
            .contains("reconciliation found events the live path had lost"),
        "{}",
        a.log()
    );

    // Their snapshots come from the site's HTTP API, byte for byte.
    wait_for(
        &pg,
        "SELECT count(*) FROM snapshots WHERE source = 'http'",
        3,
        "snapshots fetched from the site's API",
        log,
    )
    .await;
    let jpegs = query(&pg, "SELECT jpeg FROM snapshots").await;
    let want_jpeg = site::crossing(0).snapshot.unwrap();
    assert!(jpegs.iter().all(|r| r.get::<_, Vec<u8>>(0) == want_jpeg));

    // A live alert now arrives on MQTT; the next rounds store nothing twice.
    site.events.send(site::crossing(9)).await.unwrap();
    wait_for(
        &pg,
        "SELECT count(*) FROM events WHERE site = 'kg-7' AND source = 'mqtt'",
        1,
        "the live alert",
        log,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        count(&pg, "SELECT count(*) FROM events WHERE site = 'kg-7'").await,
        4
    );
    assert_eq!(
        count(&pg, "SELECT count(*) FROM alarms WHERE site = 'kg-7'").await,
        4
    );
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM alarms WHERE site = 'kg-7' AND NOT recovered"
        )
        .await,
        1
    );
    a.kill();

    // The history's fan-out, on an instance that does not reconcile: the center lost one event
    // (deleted here); asking the sites brings it back, and the report names who did not answer.
    let gone = &lost[1];
    let pgq = |sql: String| {
        let url = pg.url();
        async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c.batch_execute(&sql).await.unwrap();
        }
    };
    pgq(format!(
        "DELETE FROM alarms WHERE event_id = '{gone}'; DELETE FROM snapshots WHERE event_id = '{gone}'; DELETE FROM events WHERE event_id = '{gone}';"
    ))
    .await;
    let h = Center::start_with(
        "center-h",
        broker.port,
        &pg.url(),
        "reconcile_interval = \"0s\"\nquery_timeout = \"2s\"\nreply_topic_prefix = \"center/replies\"",
        &sites,
    );
    let (s, before) = call(h.port, "GET", "/api/v1/events?site=kg-7", READ_TOKEN, "");
    assert_eq!(s, 200, "{before}");
    assert_eq!(before["events"].as_array().unwrap().len(), 3);
    assert!(before.get("sites").is_none());
    let (s, v) = call(
        h.port,
        "GET",
        "/api/v1/events?since=1h&ask_sites=true&limit=1000",
        READ_TOKEN,
        "",
    );
    assert_eq!(s, 200, "{v}");
    let r = &v["sites"];
    assert_eq!(r["asked"], 2, "{r}");
    assert_eq!(r["answered"], serde_json::json!([SITE]), "{r}");
    assert_eq!(r["recovered"], 1, "{r}");
    let not: Vec<(String, String)> = r["not_answered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["site"].as_str().unwrap().into(),
                x["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(not.len(), 2, "{r}");
    assert_eq!(not[0].0, "kg-1");
    assert!(not[0].1.contains("no answer within 2s"), "{not:?}");
    assert_eq!(not[1].0, "kg-2");
    assert!(not[1].1.starts_with("offline"), "{not:?}");
    let ids: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert!(
        ids.contains(&gone.as_str()),
        "the lost event is not back: {ids:?}"
    );
    assert_eq!(
        count(&pg, "SELECT count(*) FROM events WHERE site = 'kg-7'").await,
        4
    );

    // A filter the sites apply too: no zone_entered anywhere.
    let (s, v) = call(
        h.port,
        "GET",
        "/api/v1/events?site=kg-7&kind=zone_entered&ask_sites=true",
        READ_TOKEN,
        "",
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["events"].as_array().unwrap().len(), 0);
    assert_eq!(v["sites"]["answered"], serde_json::json!([SITE]));

    // Malformed queries are 400s naming the parameter.
    for (q, param) in [
        ("since=soon", "since"),
        ("kind=burglary", "kind"),
        ("since=1h&from=2026-12-01T00:00:00Z", "since"),
    ] {
        let (s, v) = call(
            h.port,
            "GET",
            &format!("/api/v1/events?{q}"),
            READ_TOKEN,
            "",
        );
        assert_eq!((s, v["parameter"].as_str()), (400, Some(param)), "{q}: {v}");
    }
    let (s, _) = call(
        h.port,
        "GET",
        "/api/v1/events?ask_sites=maybe",
        READ_TOKEN,
        "",
    );
    assert_eq!(s, 400);
    // A site the directory does not know is not asked (its id would name an MQTT topic).
    let (s, v) = call(
        h.port,
        "GET",
        "/api/v1/events?site=kg-9%2F%23&ask_sites=true",
        READ_TOKEN,
        "",
    );
    assert_eq!(s, 404, "{v}");
    let (_, metrics) = common::daemon::http_get(h.port, "/metrics");
    assert!(
        metrics.contains(r#"kinderwatch_center_site_queries_total{result="timeout"}"#),
        "{metrics}"
    );
    drop(h);
    site.stop().await;
}
