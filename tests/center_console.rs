//! The center's alarm queue page in a real headless Chromium (WebDriver), against two center
//! instances, a real mosquitto and PostgreSQL: alarms stored by either instance arrive live on
//! the page one instance serves (PostgreSQL LISTEN/NOTIFY behind server-sent events), with site,
//! district, camera, rule and snapshot; the district filter; an admin acknowledges and resolves
//! with an outcome and a note; a read session sees no buttons. A screenshot goes to
//! `target/tmp/console/center-queue.png`.

mod common;

use std::time::Duration;

use common::broker::Broker;
use common::browser::{browser, chromedriver, js, screenshot, until};
use common::center::*;
use common::postgres::Postgres;
use fantoccini::Locator;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

async fn sign_in(c: &fantoccini::Client, port: u16, token: &str) {
    c.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();
    let field = c.wait().for_element(Locator::Css("#token")).await.unwrap();
    until(
        c,
        "the sign-in page",
        "!document.querySelector('#page-signin').hidden",
    )
    .await;
    field.send_keys(token).await.unwrap();
    c.find(Locator::Css("#signin-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        c,
        "the queue",
        "!document.querySelector('#page-queue').hidden",
    )
    .await;
    until(
        c,
        "the live feed",
        "document.querySelector('#live-state').textContent === 'live'",
    )
    .await;
}

fn rows(state: &str) -> String {
    format!("document.querySelectorAll('#alarms li.alarm{state}').length")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alarm_queue_page_shows_alarms_live_and_an_admin_handles_them() {
    let broker = Broker::start("");
    let pg = Postgres::start();
    let a = Center::start("center-a", broker.port, &pg.url());
    let _b = Center::start("center-b", broker.port, &pg.url());
    let kg1 = site_client(broker.port, "kg-1").await;
    let kg2 = site_client(broker.port, "kg-2").await;

    // One alarm with its snapshot before the page opens.
    publish_alert(&kg1, "kg-1", &uuid(1), "line_crossed").await;
    let mut jpeg = Vec::new();
    image::RgbImage::from_fn(160, 120, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 2) as u8, 128])
    })
    .write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    kg1.publish_with_properties(
        "kinderwatch/kg-1/events/gate/line_crossed/snapshot",
        QoS::AtLeastOnce,
        false,
        jpeg,
        PublishProperties {
            user_properties: vec![("event_id".into(), uuid(1))],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_count(
        &pg,
        "SELECT count(*) FROM snapshots",
        1,
        Duration::from_secs(15),
    )
    .await;

    let driver = chromedriver();
    let c = browser(&driver).await;
    sign_in(&c, a.port, ADMIN_TOKEN).await;
    until(&c, "the first alarm", &format!("{} === 1", rows(""))).await;
    let first = js(&c, "return document.querySelector('#alarms li').innerText;").await;
    let first = first.as_str().unwrap();
    assert!(first.contains("Line crossed"), "{first}");
    assert!(first.contains("Kindergarten 1 (kg-1)"), "{first}");
    assert!(first.contains("district north"), "{first}");
    assert!(
        first.contains("camera gate") && first.contains("rule fence"),
        "{first}"
    );
    until(
        &c,
        "the snapshot shown",
        "(() => { const i = document.querySelector('#alarms li img.snap'); return i && !i.hidden && i.complete && i.naturalWidth > 0; })()",
    )
    .await;

    // Six more alarms from two sites; the instances split them, the page shows all, live.
    for n in 2..8u32 {
        let (cl, site) = if n % 2 == 0 {
            (&kg2, "kg-2")
        } else {
            (&kg1, "kg-1")
        };
        publish_alert(cl, site, &uuid(n), "zone_entered").await;
    }
    until(&c, "seven alarms, live", &format!("{} === 7", rows(""))).await;
    until(
        &c,
        "the new ones highlighted",
        &format!("{} === 6", rows(".fresh")),
    )
    .await;
    let by_b = count(
        &pg,
        "SELECT count(*) FROM events WHERE received_by = 'center-b'",
    )
    .await;
    assert!(
        by_b > 0,
        "center-b stored none: the live view was not crossing instances"
    );
    assert_eq!(
        js(&c, "return document.querySelector('#count').textContent;").await,
        "7"
    );
    screenshot(&c, "center-queue").await;

    // The district filter.
    js(&c, "const d = document.querySelector('#filters [name=district]'); d.value = 'south'; d.dispatchEvent(new Event('change', {bubbles: true})); return 0;").await;
    until(&c, "south only", &format!("{} === 3", rows(""))).await;
    let texts = js(&c, "return [...document.querySelectorAll('#alarms li')].map(li => li.innerText).join('\\n---\\n');").await;
    assert!(!texts.as_str().unwrap().contains("kg-1"), "{texts}");

    // Acknowledge, then resolve with an outcome and a note.
    let target = js(
        &c,
        "return document.querySelector('#alarms li').dataset.id;",
    )
    .await;
    let id: i64 = target.as_str().unwrap().parse().unwrap();
    c.find(Locator::Css(&format!(
        "#alarms li[data-id='{id}'] button.ack"
    )))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    until(&c, "acknowledged", &format!("document.querySelector(\"#alarms li[data-id='{id}']\").classList.contains('acknowledged')")).await;
    js(&c, &format!("const f = document.querySelector(\"#alarms li[data-id='{id}'] form.resolve\"); f.outcome.value = 'intruder'; f.note.value = 'police called'; return 0;")).await;
    c.find(Locator::Css(&format!(
        "#alarms li[data-id='{id}'] form.resolve button"
    )))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    until(
        &c,
        "resolved and gone from the open list",
        &format!("!document.querySelector(\"#alarms li[data-id='{id}']\")"),
    )
    .await;
    let r = query(
        &pg,
        &format!(
            "SELECT state, acknowledged_by, resolved_by, outcome, note FROM alarms WHERE id = {id}"
        ),
    )
    .await;
    let got: (String, String, String, String, String) = (
        r[0].get(0),
        r[0].get(1),
        r[0].get(2),
        r[0].get(3),
        r[0].get(4),
    );
    assert_eq!(
        got,
        (
            "resolved".into(),
            "desk-1".into(),
            "desk-1".into(),
            "intruder".into(),
            "police called".into()
        )
    );

    // A read session watches, without buttons.
    c.find(Locator::Css("#sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        "signed out",
        "!document.querySelector('#page-signin').hidden",
    )
    .await;
    sign_in(&c, a.port, READ_TOKEN).await;
    until(&c, "the open alarms", &format!("{} === 6", rows(""))).await;
    let visible = js(&c, "return [...document.querySelectorAll('#alarms button, #alarms form')].filter(e => e.checkVisibility()).length;").await;
    assert_eq!(visible, 0, "a read session is offered actions");
    c.close().await.unwrap();
}
