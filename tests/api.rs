//! The HTTP API on port 0 over a real sled store, the real perimeter stage (rules, arming) and
//! the real recorder: auth and roles, bad parameters, pagination, snapshots, arming, metrics.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use jiff::{SignedDuration, Timestamp};
use kinderwatch::api;
use kinderwatch::camera::CameraState;
use kinderwatch::detect::load::{BehindCamera, DetectorLoad};
use kinderwatch::events::{BOX_COLOUR, Event, EventKind};
use kinderwatch::perimeter::RecordedEvent;
use serde_json::Value;

mod common;

use common::api_site::{Harness, call, json, start, wait_events, walk_across};

#[test]
fn auth_needs_a_known_token_and_the_right_role() {
    let h = start();
    let (status, body, _) = call(&h, "GET", "/healthz", None);
    assert_eq!(status, 200);
    let health: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["site"], "kg-7");

    for path in [
        "/api/v1/events",
        "/api/v1/cameras",
        "/api/v1/rules",
        "/metrics",
    ] {
        let (status, body, _) = call(&h, "GET", path, None);
        assert_eq!(status, 401, "{path} without a token");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "unauthorized");
        assert_eq!(
            call(&h, "GET", path, Some("kw_not-a-token")).0,
            401,
            "{path}"
        );
        assert_eq!(call(&h, "GET", path, Some(&h.read)).0, 200, "{path} read");
        assert_eq!(call(&h, "GET", path, Some(&h.admin)).0, 200, "{path} admin");
    }
    // Arming needs admin.
    let (status, body, _) = call(&h, "POST", "/api/v1/rules/fence/disarm", Some(&h.read));
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert_eq!(call(&h, "POST", "/api/v1/rules/fence/disarm", None).0, 401);
    assert_eq!(
        call(&h, "POST", "/api/v1/rules/fence/disarm", Some(&h.admin)).0,
        200
    );
    assert_eq!(
        call(&h, "POST", "/api/v1/rules/fence/arm", Some(&h.admin)).0,
        200
    );

    // No token (nor its hash) ever reaches the logs.
    let logs = common::captured_logs();
    assert!(logs.contains("API request"), "requests are logged");
    for secret in [&h.read, &h.admin] {
        assert!(
            !logs.contains(secret.as_str()),
            "a token leaked into the logs"
        );
        assert!(
            !logs.contains(&secret[3..20]),
            "part of a token leaked into the logs"
        );
    }
}

#[test]
fn bad_parameters_get_400_naming_them() {
    let h = start();
    for (query, param) in [
        ("kind=jumping", "kind"),
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("limit=ten", "limit"),
        ("cursor=zzz", "cursor"),
        ("since=forever", "since"),
        ("colour=red", "colour"),
    ] {
        let (status, v) = json(&h, &format!("/api/v1/events?{query}"), &h.read);
        assert_eq!(status, 400, "{query}: {v}");
        assert_eq!(v["error"], "bad_parameter", "{query}");
        assert_eq!(v["parameter"], param, "{query}: {v}");
        assert!(!v["reason"].as_str().unwrap().is_empty());
    }
    let (status, v) = json(&h, "/api/v1/events/not-a-uuid", &h.read);
    assert_eq!((status, v["parameter"].as_str()), (400, Some("id")));
    let unknown = uuid::Uuid::now_v7();
    assert_eq!(
        json(&h, &format!("/api/v1/events/{unknown}"), &h.read).0,
        404
    );
    assert_eq!(
        call(
            &h,
            "GET",
            &format!("/api/v1/events/{unknown}/snapshot.jpg"),
            Some(&h.read)
        )
        .0,
        404
    );
    let (status, v) = json(&h, "/api/v1/nothing", &h.read);
    assert_eq!((status, v["error"].as_str()), (404, Some("not_found")));
    let (status, body, _) = call(&h, "POST", "/api/v1/rules/no-such-rule/arm", Some(&h.admin));
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    // Bodies are capped. Through the router itself: over a socket, a server that answers 413
    // before reading the body may reset the connection while the client still writes.
    // Errors answered by a layer (413) or by the router (405) are JSON like every other.
    let answer = |method: &str, path: &str, body: Vec<u8>| {
        h.rt.block_on(async {
            use tower::ServiceExt;
            let req = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {}", h.admin))
                .header("content-type", "application/json")
                .header("content-length", body.len().to_string())
                .body(axum::body::Body::from(body))
                .unwrap();
            let r = api::router(h.state.clone()).oneshot(req).await.unwrap();
            let status = r.status().as_u16();
            let kind = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            (
                status,
                kind,
                serde_json::from_slice::<serde_json::Value>(&bytes).ok(),
            )
        })
    };
    for (method, path) in [
        ("POST", "/api/v1/rules/fence/arm"),
        ("PUT", "/api/v1/cameras/gate/perimeter"),
    ] {
        let (status, kind, body) = answer(method, path, vec![b'x'; 100 * 1024]);
        assert_eq!(status, 413, "{method} {path}");
        assert!(
            kind.starts_with("application/json"),
            "{method} {path}: {kind}"
        );
        assert_eq!(body.unwrap()["error"], "too_large");
    }
    let (status, kind, body) = answer("DELETE", "/api/v1/events", Vec::new());
    assert_eq!(status, 405);
    assert!(kind.starts_with("application/json"), "{kind}");
    assert_eq!(body.unwrap()["error"], "method_not_allowed");
}

#[test]
fn pages_over_http_have_no_gaps_or_repeats_and_filters_apply() {
    let h = start();
    let start_t = Timestamp::now() - SignedDuration::from_hours(3);
    let all: Vec<RecordedEvent> = (0..250)
        .map(|i| {
            let cam = ["gate", "yard"][i % 2];
            let kind = [EventKind::LineCrossed, EventKind::CameraOffline][i % 5 / 4];
            let mut e = Event::new(
                kind,
                "kg-7",
                cam,
                start_t + SignedDuration::from_secs(20 * i as i64),
            );
            e.rule = (kind == EventKind::LineCrossed).then(|| "fence".to_owned());
            RecordedEvent {
                event: e,
                snapshot: None,
            }
        })
        .collect();
    h.store.record(&all, false).unwrap();
    let walk = |query: &str| -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/events?limit=30&{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, v) = json(&h, &path, &h.read);
            assert_eq!(status, 200, "{v}");
            for e in v["events"].as_array().unwrap() {
                ids.push(e["id"].as_str().unwrap().to_owned());
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return ids,
            }
        }
    };
    let expect = |pred: &dyn Fn(&Event) -> bool| -> Vec<String> {
        all.iter()
            .rev()
            .filter(|r| pred(&r.event))
            .map(|r| r.event.id.to_string())
            .collect()
    };
    let got = walk("");
    assert_eq!(got.len(), 250);
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 250);
    assert_eq!(got, expect(&|_| true));
    assert_eq!(
        walk("camera=yard"),
        expect(&|e| e.camera.as_deref() == Some("yard"))
    );
    assert_eq!(
        walk("kind=camera_offline"),
        expect(&|e| e.kind == EventKind::CameraOffline)
    );
    assert_eq!(
        walk("rule=fence&camera=gate"),
        expect(&|e| e.rule.is_some() && e.camera.as_deref() == Some("gate"))
    );
    let from = all[100].event.time;
    let to = all[200].event.time;
    let q = format!(
        "from={}&to={}",
        url_encode(&from.to_string()),
        url_encode(&to.to_string())
    );
    assert_eq!(walk(&q), expect(&|e| e.time >= from && e.time < to));
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[test]
fn a_crossing_is_served_with_its_snapshot_and_arming_works_over_http() {
    let h = start();
    walk_across(&h);
    let events = wait_events(&h, "kind=line_crossed", 1);
    let e = &events[0];
    assert_eq!(e["camera"], "gate");
    assert_eq!(e["rule"], "fence");
    assert_eq!(e["site"], "kg-7");
    let id = e["id"].as_str().unwrap();
    let (status, one) = json(&h, &format!("/api/v1/events/{id}"), &h.read);
    assert_eq!(status, 200);
    assert_eq!(&one, e);

    // The snapshot is a JPEG with the object's box drawn in the box colour.
    let url = e["snapshot_url"].as_str().expect("a snapshot");
    let (status, jpeg, content_type) = call(&h, "GET", url, Some(&h.read));
    assert_eq!((status, content_type.as_str()), (200, "image/jpeg"));
    let img = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
        .expect("a valid JPEG")
        .to_rgb8();
    assert_eq!(img.dimensions(), (320, 240));
    // The snapshot is the track's best frame, the last one: box rows 113..185, left edge at x1
    // (the same in every frame).
    let x1 = (e["object"]["bbox"]["x1"].as_f64().unwrap() * 320.0) as u32;
    let near = |p: &image::Rgb<u8>| {
        p.0.iter()
            .zip(BOX_COLOUR)
            .all(|(a, b)| (*a as i32 - b as i32).abs() <= 40)
    };
    let edge_pixels = (40..240)
        .filter(|&y| (x1..x1 + 3).any(|x| near(img.get_pixel(x, y))))
        .count();
    assert!(
        edge_pixels >= 50,
        "box colour on the left edge at x={x1}: {edge_pixels} rows"
    );
    assert!(
        !near(img.get_pixel(20, 200)),
        "the background is not box-coloured"
    );

    // Disarmed over HTTP: the next crossing makes no event; armed again: it does.
    assert_eq!(
        call(&h, "POST", "/api/v1/rules/fence/disarm", Some(&h.admin)).0,
        200
    );
    let (_, rules) = json(&h, "/api/v1/rules", &h.read);
    assert_eq!(rules["rules"][0]["id"], "fence");
    assert_eq!(rules["rules"][0]["armed"], false);
    walk_across(&h);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        wait_events(&h, "kind=line_crossed", 1).len(),
        1,
        "disarmed: no new event"
    );
    assert_eq!(
        call(&h, "POST", "/api/v1/rules/fence/arm", Some(&h.admin)).0,
        200
    );
    let armed_at = Timestamp::now();
    walk_across(&h);
    // The armed walk's crossing is in: detections are handled in order, so a crossing of the
    // disarmed walk, however late, would be in too. Exactly two: the first walk's and this one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = wait_events(&h, "kind=line_crossed", 2);
        let newest: Timestamp = events[0]["time"].as_str().unwrap().parse().unwrap();
        if newest >= armed_at || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(events.len(), 2, "{events:#?}");
}

#[test]
fn cameras_health_and_metrics_report_state() {
    let h = start();
    let (status, v) = json(&h, "/api/v1/cameras", &h.read);
    assert_eq!(status, 200);
    assert_eq!(v["cameras"][0]["id"], "gate");
    assert_eq!(v["cameras"][0]["state"], "connecting");
    h.camera_status.send_modify(|s| {
        s.state = CameraState::Streaming;
        s.fps = 5.04;
        s.decoding = kinderwatch::camera::DecodeDemand::Keyframes;
        s.last_frame_at = Some(SystemTime::now());
        s.last_error = Some("connection refused".into());
    });
    let (_, v) = json(&h, "/api/v1/cameras", &h.read);
    let cam = &v["cameras"][0];
    assert_eq!(cam["state"], "streaming");
    assert_eq!(cam["fps"], 5.0);
    assert_eq!(cam["decoding"], "keyframes");
    assert_eq!(cam["last_error"], "connection refused");
    let last: Timestamp = cam["last_frame_at"].as_str().unwrap().parse().unwrap();
    assert!((Timestamp::now() - last).get_seconds() < 5);
    let (status, body, _) = call(&h, "GET", "/healthz", None);
    assert_eq!(status, 200);
    let health: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["cameras"]["streaming"], 1);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["detector"]["overloaded"], false);

    // An overloaded detector: degraded (still 200: every camera is inferred, less often), naming
    // the camera and its rates.
    h.detector_load().send_replace(DetectorLoad {
        behind: vec![BehindCamera {
            camera: "gate".into(),
            inferred_fps: 2.5,
            wanted_fps: 5.0,
        }],
        overloaded_since: Some(SystemTime::now()),
    });
    let (status, body, _) = call(&h, "GET", "/healthz", None);
    assert_eq!(status, 200);
    let health: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["detector"]["overloaded"], true);
    assert_eq!(health["detector"]["behind"][0]["camera"], "gate");
    assert_eq!(health["detector"]["behind"][0]["wanted_fps"], 5.0);
    assert!(
        health["detector"]["overloaded_since"]
            .as_str()
            .unwrap()
            .parse::<Timestamp>()
            .is_ok()
    );
    h.detector_load().send_replace(DetectorLoad::default());

    walk_across(&h);
    wait_events(&h, "kind=line_crossed", 1);
    let (status, body, content_type) = call(&h, "GET", "/metrics", Some(&h.read));
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"));
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("kinderwatch_store_events_recorded_total") && !l.ends_with(" 0")),
        "{text}"
    );
    assert!(text.contains("kinderwatch_api_requests_total"), "{text}");
    // Every metric carries the help text declared with it in src/telemetry/.
    assert!(
        text.contains(
            "# HELP kinderwatch_api_requests_total API requests answered, per HTTP status."
        ),
        "{text}"
    );
}

#[test]
fn history_and_snapshot_reads_and_arming_are_audited_and_dead_letters_requeued() {
    let h = start();
    walk_across(&h);
    let events = wait_events(&h, "kind=line_crossed", 1);
    let id = events[0]["id"].as_str().unwrap().to_owned();
    let url = events[0]["snapshot_url"].as_str().unwrap().to_owned();
    assert_eq!(call(&h, "GET", &url, Some(&h.read)).0, 200);
    assert_eq!(
        call(&h, "GET", &format!("/api/v1/events/{id}"), Some(&h.read)).0,
        200
    );
    assert_eq!(
        call(&h, "POST", "/api/v1/rules/fence/disarm", Some(&h.admin)).0,
        200
    );
    assert_eq!(
        call(&h, "POST", "/api/v1/rules/no-such-rule/arm", Some(&h.admin)).0,
        404
    );
    // Only admins read the audit trail.
    assert_eq!(json(&h, "/api/v1/audit", &h.read).0, 403);
    let (status, v) = json(&h, "/api/v1/audit?limit=100", &h.admin);
    assert_eq!(status, 200, "{v}");
    let records = v["records"].as_array().unwrap();
    let find = |action: &str, caller: &str| {
        records
            .iter()
            .filter(|r| r["action"] == action && r["caller"] == caller && r["channel"] == "http")
            .cloned()
            .collect::<Vec<_>>()
    };
    let snapshots = find("read_snapshot", "operator");
    assert_eq!(snapshots.len(), 1, "{v}");
    assert_eq!(snapshots[0]["target"], id.as_str());
    assert_eq!(snapshots[0]["detail"], "found");
    assert!(!find("query_events", "operator").is_empty());
    assert_eq!(find("get_event", "operator").len(), 1);
    let disarm = find("disarm", "city-center");
    assert_eq!(disarm.len(), 1);
    assert_eq!(disarm[0]["target"], "fence");
    assert_eq!(disarm[0]["result"], "ok");
    let refused = find("arm", "city-center");
    assert_eq!(
        refused[0]["result"], "not_found",
        "failed attempts are recorded too"
    );
    assert!(
        !v.to_string().contains(&h.read) && !v.to_string().contains(&h.admin),
        "no token in the audit trail"
    );
    // Filtered by caller, and the audit read itself is audited.
    let (_, ops) = json(&h, "/api/v1/audit?caller=operator", &h.admin);
    assert!(
        ops["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["caller"] == "operator")
    );
    // (A read is recorded after it runs: the newest record is the read before this one.)
    let (_, again) = json(&h, "/api/v1/audit?limit=1", &h.admin);
    assert_eq!(again["records"][0]["action"], "read_audit");
    assert_eq!(again["records"][0]["target"], "caller=operator");
    assert!(again["next_cursor"].is_string());
    assert_eq!(json(&h, "/api/v1/audit?colour=red", &h.admin).0, 400);

    // Dead letters: listed (read), re-queued (admin).
    let (status, v) = json(&h, "/api/v1/outbox/dead-letters", &h.read);
    assert_eq!(
        (status, v["dead_letters"].as_array().unwrap().len()),
        (200, 0)
    );
    let e = RecordedEvent {
        event: Event::new(EventKind::CameraTampered, "kg-7", "gate", Timestamp::now()),
        snapshot: None,
    };
    h.store.record(std::slice::from_ref(&e), true).unwrap();
    let seq = h.store.outbox_after(None, 10).unwrap()[0].seq;
    h.store
        .dead_letter(
            seq,
            kinderwatch::store::DeadLetterReason::Refused,
            "NotAuthorized",
            5,
        )
        .unwrap();
    let health = |h: &Harness| {
        let (status, body, _) = call(h, "GET", "/healthz", None);
        assert_eq!(status, 200);
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    let v = health(&h);
    assert_eq!(
        (v["status"].as_str(), v["outbox"]["dead_letters"].as_u64()),
        (Some("degraded"), Some(1)),
        "{v}"
    );
    let (_, v) = json(&h, "/api/v1/outbox/dead-letters", &h.read);
    let letters = v["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["event_id"], e.event.id.to_string());
    assert_eq!(letters[0]["reason"], "refused");
    let requeue = format!("/api/v1/outbox/dead-letters/{}/requeue", e.event.id);
    assert_eq!(call(&h, "POST", &requeue, Some(&h.read)).0, 403);
    assert_eq!(call(&h, "POST", &requeue, Some(&h.admin)).0, 200);
    assert_eq!(call(&h, "POST", &requeue, Some(&h.admin)).0, 404);
    assert_eq!(h.store.outbox_len(), 1);
    assert_eq!(h.store.dead_letter_len(), 0);
    assert_eq!(health(&h)["status"], "ok");
    let (_, v) = json(&h, "/api/v1/audit?limit=5", &h.admin);
    assert!(
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "requeue" && r["result"] == "not_found"),
        "{v}"
    );
}

#[test]
fn hundreds_of_half_open_connections_neither_hold_the_api_nor_the_store() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let h = start();
    let addr = h.base.trim_start_matches("http://").to_owned();
    // 300 connections that never send a request, and 50 that stop halfway through the headers.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let partial: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: kinderwatch\r\nX-Slow: ");
            s
        })
        .collect();
    // The store keeps recording meanwhile: a crossing becomes an event.
    walk_across(&h);
    let events = h.rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let page = h
                .store
                .query(&kinderwatch::store::EventQuery {
                    kind: Some(EventKind::LineCrossed),
                    limit: 10,
                    ..Default::default()
                })
                .unwrap();
            if !page.events.is_empty() || Instant::now() > deadline {
                return page.events.len();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_eq!(events, 1, "the store recorded during the flood");
    // Every one of them is closed by the server: beyond the cap at once, the rest once their
    // headers do not arrive in time. (Generous bound: only a hang exceeds it.)
    let deadline = Instant::now() + kinderwatch::api::HEADER_READ_TIMEOUT + Duration::from_secs(20);
    let closed_by_server = |s: &TcpStream| {
        let mut s = s;
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .unwrap();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                // A 408 or similar before the close is fine too.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    };
    let open_left = idle
        .iter()
        .chain(partial.iter())
        .filter(|s| !closed_by_server(s))
        .count();
    assert_eq!(open_left, 0, "connections the server never closed");
    // And the API answers again; the refusals are counted.
    let (status, body, _) = call(&h, "GET", "/healthz", None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (_, metrics, _) = call(&h, "GET", "/metrics", Some(&h.read));
    let metrics = String::from_utf8_lossy(&metrics);
    let refused: f64 = metrics
        .lines()
        .find(|l| l.starts_with("kinderwatch_api_connections_refused_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        refused >= 250.0,
        "connections beyond the cap were refused: {refused}"
    );
}
