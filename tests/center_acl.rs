//! The city broker as docs/city.md configures it: mosquitto with one user per site, no anonymous
//! access, and the ACL of docs/city.md (read from the page itself, so the page cannot drift from
//! what works). A real site (user kg-7) and a center instance (user center) work through it: the
//! center stores the site's live alert from its shared subscription, and its reconciliation asks
//! the site and gets the answer on `center/replies/<instance>/kg-7`. Another site (user kg-1) can
//! neither publish an alert as kg-7 nor answer the center's question to kg-7.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::broker::{self, Broker};
use common::center::*;
use common::postgres::Postgres;
use common::site::{self, SITE};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// The `acl_file` block of docs/city.md.
fn documented_acl() -> String {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/city.md"))
        .unwrap();
    let start = page
        .find("In mosquitto's `acl_file`")
        .expect("docs/city.md has the mosquitto ACL");
    let block = &page[start..];
    let open = block.find("```\n").unwrap() + 4;
    let close = open + block[open..].find("```").unwrap();
    block[open..close].to_owned()
}

fn password_file(dir: &Path, users: &[&str]) -> std::path::PathBuf {
    let file = dir.join("passwd");
    for (n, u) in users.iter().enumerate() {
        let mut c = Command::new("mosquitto_passwd");
        if n == 0 {
            c.arg("-c");
        }
        let ok = c
            .args(["-b"])
            .arg(&file)
            .arg(u)
            .arg(format!("pw-{u}"))
            .status()
            .expect("mosquitto_passwd (package mosquitto)")
            .success();
        assert!(ok, "mosquitto_passwd {u}");
    }
    // mosquitto reads it as its own user.
    let _ = Command::new("chmod").arg("644").arg(&file).status();
    file
}

fn secret(dir: &Path, user: &str) -> std::path::PathBuf {
    let f = dir.join(format!("{user}.pw"));
    std::fs::write(&f, format!("pw-{user}\n")).unwrap();
    f
}

async fn client_as(port: u16, user: &str) -> AsyncClient {
    let mut opts = MqttOptions::new(format!("rogue-{user}"), "127.0.0.1", port);
    opts.set_credentials(user, format!("pw-{user}"));
    let (c, mut el) = AsyncClient::new(opts, 100);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) | Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_lets_each_site_speak_only_for_itself() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, documented_acl()).unwrap();
    let _ = Command::new("chmod").arg("644").arg(&acl).status();
    let passwd = password_file(dir.path(), &[SITE, "kg-1", "center"]);
    let broker = Broker::start(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\n",
        passwd.display(),
        acl.display()
    ));
    let pg = Postgres::start();

    // The site, as the page configures it: its own user, replies under center/replies.
    let site = site::start_site_with(
        site::mqtt_config(
            broker.port,
            &format!(
                "username = \"{SITE}\"\npassword_file = \"{}\"\nreply_topic_prefix = \"center/replies\"",
                secret(dir.path(), SITE).display()
            ),
        ),
        site::new_tokens(),
    )
    .await;
    // One crossing while no center listens: only the reconciliation can bring it. (A plain
    // subscriber with the center's credentials sees it published.)
    let (_watch, mut seen) =
        broker::subscribe(broker.port, &format!("kinderwatch/{SITE}/events/#"), |o| {
            o.set_credentials("center", "pw-center");
        })
        .await;
    let early = site::crossing(0);
    let early_id = early.event.id.to_string();
    site.events.send(early).await.unwrap();
    broker::next_matching(
        &mut seen,
        Duration::from_secs(20),
        "the early crossing, published through the ACL",
        site::is_event,
    )
    .await;

    let sites = format!("{SITES}[[center.sites]]\nid = \"{SITE}\"\ndistrict = \"north\"\n");
    let a = Center::start_with_mqtt(
        "center-a",
        broker.port,
        &pg.url(),
        "reconcile_interval = \"1s\"\nquery_timeout = \"2s\"\nreply_topic_prefix = \"center/replies\"",
        &format!(
            "username = \"center\"\npassword_file = \"{}\"",
            secret(dir.path(), "center").display()
        ),
        &sites,
    );
    let log = || a.log();

    // The reconciliation asked kg-7 and got its answer through the ACL.
    wait_for(
        &pg,
        &format!("SELECT count(*) FROM events WHERE event_id = '{early_id}' AND source = 'query'"),
        1,
        "the early crossing, recovered",
        log,
    )
    .await;
    // A live crossing through the shared subscription.
    let live = site::crossing(1);
    let live_id = live.event.id.to_string();
    site.events.send(live).await.unwrap();
    wait_for(
        &pg,
        &format!("SELECT count(*) FROM events WHERE event_id = '{live_id}' AND source = 'mqtt'"),
        1,
        "the live crossing",
        log,
    )
    .await;

    // kg-1 tries to speak for kg-7: an alert on kg-7's topic, and answers on kg-7's reply topic
    // to every question the center asks kg-7 (it overhears none: it cannot read them).
    let rogue = client_as(broker.port, "kg-1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let forged = uuid(777);
    let mut body = alert(SITE, &forged, "line_crossed");
    body["camera"] = "gate".into();
    rogue
        .publish(
            format!("kinderwatch/{SITE}/events/gate/line_crossed"),
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&body).unwrap(),
        )
        .await
        .unwrap();
    let (_spy, mut overheard) = broker::subscribe(
        broker.port,
        &format!("kinderwatch/{SITE}/commands/#"),
        |o| {
            o.set_client_id("kg-1-spy".into());
            o.set_credentials("kg-1", "pw-kg-1");
        },
    )
    .await;
    let reply = serde_json::json!({ "ok": true, "events": [
        serde_json::json!({ "id": uuid(778), "site": SITE, "camera": "gate", "rule": "fence",
            "kind": "line_crossed", "time": jiff::Timestamp::now().to_string() })
    ], "next_cursor": null });
    for _ in 0..5 {
        rogue
            .publish_with_properties(
                format!("center/replies/center-a/{SITE}"),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&reply).unwrap(),
                PublishProperties {
                    correlation_data: Some(Bytes::from_static(b"guess")),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    // Two more reconciliation rounds pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        count(
            &pg,
            &format!(
                "SELECT count(*) FROM events WHERE event_id IN ('{forged}', '{}')",
                uuid(778)
            )
        )
        .await,
        0,
        "another site's user got an event stored as {SITE}"
    );
    assert!(overheard.try_recv().is_err(), "kg-1 read kg-7's commands");
    assert_eq!(
        count(
            &pg,
            &format!("SELECT count(*) FROM events WHERE site = '{SITE}'")
        )
        .await,
        2
    );
    site.stop().await;
}
