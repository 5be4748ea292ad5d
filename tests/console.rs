//! The web console (issue 15) against the daemon's real graph (rules, recorder, sled store, API on a
//! free port): sessions, CSRF and roles over HTTP; then the pages in a real headless Chromium
//! driven through WebDriver (`chromium` and `chromium-driver`, installed by `scripts/setup.sh`):
//! sign in by keyboard, the camera tile's live picture and overlay, the events page with its
//! snapshot and an event arriving live, the detail view, arming and disarming as admin, a read
//! session that cannot change anything, the Russian text. Screenshots of each page go to
//! `target/tmp/console/`.

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fantoccini::{Client, Locator};
use kinderwatch::camera::{Frame, Pixels};
use serde_json::{Value, json};

mod common;

use common::api_site::{Harness, json, start, wait_events, walk_across};
use common::browser::{
    browser, chromedriver, js, press, screenshot, screenshots, sign_in_by_keyboard, tab_to, until,
};

/// A request with optional cookie and CSRF headers: (status, headers we look at, body).
fn request(
    h: &Harness,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    body: Option<Value>,
) -> (u16, Vec<(String, String)>, String) {
    let mut req = ureq::request(method, &format!("{}{path}", h.base));
    if let Some(c) = cookie {
        req = req.set("Cookie", &format!("kw_session={c}"));
    }
    if let Some(t) = csrf {
        req = req.set("X-CSRF-Token", t);
    }
    let resp = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let headers = resp
        .headers_names()
        .into_iter()
        .flat_map(|n| {
            resp.all(&n)
                .into_iter()
                .map(|v| (n.clone(), v.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    (
        resp.status(),
        headers,
        resp.into_string().unwrap_or_default(),
    )
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Signs in with `token`: (the session cookie's value, the CSRF token, the answer).
fn sign_in(h: &Harness, token: &str) -> (String, String, Value) {
    let (status, headers, body) = request(
        h,
        "POST",
        "/console/session",
        None,
        None,
        Some(json!({ "token": token })),
    );
    assert_eq!(status, 200, "{body}");
    let set = header(&headers, "set-cookie").expect("a session cookie");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "cookie {set:?} lacks {part}");
    }
    let id = set
        .strip_prefix("kw_session=")
        .and_then(|s| s.split(';').next())
        .expect("kw_session=...")
        .to_owned();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(!body.contains(token), "the answer repeats the token");
    (id, v["csrf"].as_str().unwrap().to_owned(), v)
}

/// A picture for camera `gate`'s slot: a horizontal gradient, `seq` as given.
fn test_frame(seq: u64) -> Arc<Frame> {
    let (w, h) = (320u32, 240u32);
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for _y in 0..h {
        for x in 0..w {
            let v = (x * 255 / w) as u8;
            rgb.extend_from_slice(&[v, (seq * 60 % 256) as u8, 255 - v]);
        }
    }
    Arc::new(Frame {
        camera: "gate".into(),
        seq,
        captured_at: SystemTime::now(),
        captured: Instant::now(),
        width: w,
        height: h,
        pixels: Pixels::Rgb(rgb),
    })
}

fn gate_slot(h: &Harness) -> Arc<kinderwatch::camera::FrameSlot> {
    h.daemon.as_ref().unwrap().cameras()[0].slot.clone()
}

#[test]
fn the_page_is_served_with_a_strict_policy_and_no_secret() {
    let h = start();
    let (status, headers, body) = request(&h, "GET", "/", None, None, None);
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let csp = header(&headers, "content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header(&headers, "x-frame-options"), Some("DENY"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    assert!(body.contains("/console/app.js"));
    assert!(
        !body.contains("<script>"),
        "no inline script (the CSP forbids it)"
    );
    for asset in ["/console/app.js", "/console/i18n.js", "/console/style.css"] {
        let (status, headers, body) = request(&h, "GET", asset, None, None, None);
        assert_eq!(status, 200, "{asset}");
        assert!(!body.is_empty());
        assert!(header(&headers, "content-type").is_some());
        for secret in [&h.read, &h.admin] {
            assert!(!body.contains(secret.as_str()));
        }
    }
    // The page needs no sign-in; what it shows does.
    let (status, _, _) = request(
        &h,
        "GET",
        "/api/v1/cameras",
        Some("not-a-session"),
        None,
        None,
    );
    assert_eq!(status, 401);
}

#[test]
fn sessions_need_a_known_token_and_csrf_and_keep_roles() {
    let h = start();
    // Bad sign-ins.
    let (status, headers, _) = request(
        &h,
        "POST",
        "/console/session",
        None,
        None,
        Some(json!({ "token": "kw_nope" })),
    );
    assert_eq!(status, 401);
    assert!(header(&headers, "set-cookie").is_none());
    let (status, _, body) = request(
        &h,
        "POST",
        "/console/session",
        None,
        None,
        Some(json!({ "password": "x" })),
    );
    assert_eq!(status, 400, "{body}");

    // A read session sees and cannot change.
    let (read_id, read_csrf, me) = sign_in(&h, &h.read);
    assert_eq!(me["role"], "read");
    assert_eq!(me["name"], "operator");
    assert_eq!(me["site"], "kg-7");
    let (status, _, body) = request(&h, "GET", "/api/v1/rules", Some(&read_id), None, None);
    assert_eq!(status, 200, "{body}");
    let rules: Value = serde_json::from_str(&body).unwrap();
    let fence = &rules["rules"][0];
    assert_eq!(fence["id"], "fence");
    assert_eq!(fence["kind"], "tripwire");
    assert_eq!(fence["shape"], json!([[0.0, 0.5], [1.0, 0.5]]));
    assert_eq!(fence["direction"], "any");
    let arm = "/api/v1/rules/fence/disarm";
    let (status, _, _) = request(&h, "POST", arm, Some(&read_id), Some(&read_csrf), None);
    assert_eq!(status, 403, "a read session cannot disarm");
    let (status, _, _) = request(&h, "GET", "/api/v1/audit", Some(&read_id), None, None);
    assert_eq!(status, 403, "nor read the audit trail");
    // GET /console/session gives the CSRF token back after a reload.
    let (status, _, body) = request(&h, "GET", "/console/session", Some(&read_id), None, None);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["csrf"],
        read_csrf
    );

    // An admin session changes only with its own CSRF token.
    let (admin_id, admin_csrf, _) = sign_in(&h, &h.admin);
    let (status, _, body) = request(&h, "POST", arm, Some(&admin_id), None, None);
    assert_eq!(status, 403, "no CSRF token: {body}");
    let (status, _, _) = request(&h, "POST", arm, Some(&admin_id), Some(&read_csrf), None);
    assert_eq!(status, 403, "another session's CSRF token");
    let (status, _, body) = request(&h, "POST", arm, Some(&admin_id), Some(&admin_csrf), None);
    assert_eq!(status, 200, "{body}");
    let (_, v) = json(&h, "/api/v1/rules", &h.read);
    assert_eq!(v["rules"][0]["armed"], false);
    // The audit trail names the session's token holder.
    let (_, audit) = json(&h, "/api/v1/audit", &h.admin);
    assert!(
        audit.to_string().contains("city-center"),
        "the disarm is audited with the token's name: {audit}"
    );
    // A bearer token needs no CSRF token (no cookie: nothing a browser sends on its own).
    let (status, _, _) = request(&h, "POST", "/api/v1/rules/fence/arm", None, None, None);
    assert_eq!(status, 401);

    // Signing out ends the session for good.
    let (status, _, _) = request(
        &h,
        "POST",
        "/console/session/end",
        Some(&read_id),
        None,
        None,
    );
    assert_eq!(status, 403, "signing out needs the CSRF token too");
    let (status, headers, _) = request(
        &h,
        "POST",
        "/console/session/end",
        Some(&read_id),
        Some(&read_csrf),
        None,
    );
    assert_eq!(status, 204);
    assert!(
        header(&headers, "set-cookie")
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, _, _) = request(&h, "GET", "/api/v1/cameras", Some(&read_id), None, None);
    assert_eq!(status, 401);
    assert_eq!(h.state.sessions.len(), 1, "the admin session is still open");

    // Neither tokens nor session ids reach the daemon's logs (the test's own HTTP client logs
    // the CSRF header it sends; those lines are not the daemon's).
    let logs: String = common::captured_logs()
        .lines()
        .filter(|l| !l.contains("ureq") && !l.starts_with("X-CSRF-Token"))
        .collect();
    for secret in [
        &h.read,
        &h.admin,
        &read_id,
        &admin_id,
        &read_csrf,
        &admin_csrf,
    ] {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
    }
}

#[test]
fn the_live_picture_is_the_cameras_last_frame() {
    let h = start();
    let (id, _, _) = sign_in(&h, &h.read);
    let path = "/api/v1/cameras/gate/frame.jpg";
    let (status, _, body) = request(&h, "GET", path, Some(&id), None, None);
    assert_eq!(status, 404, "no frame yet: {body}");
    assert!(body.contains("no picture yet"), "{body}");
    assert_eq!(
        request(
            &h,
            "GET",
            "/api/v1/cameras/nope/frame.jpg",
            Some(&id),
            None,
            None
        )
        .0,
        404
    );

    gate_slot(&h).put(test_frame(1));
    let get = || {
        let resp = ureq::get(&format!("{}{path}", h.base))
            .set("Cookie", &format!("kw_session={id}"))
            .call()
            .unwrap();
        assert_eq!(resp.content_type(), "image/jpeg");
        assert_eq!(resp.header("cache-control"), Some("no-store"));
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).unwrap();
        bytes
    };
    let first = get();
    let img = image::load_from_memory(&first).expect("a JPEG").to_rgb8();
    assert_eq!(img.dimensions(), (320, 240));
    // The gradient survives: dark red on the left, bright red on the right.
    assert!(img.get_pixel(10, 120)[0] < 40 && img.get_pixel(310, 120)[0] > 215);
    assert_eq!(get(), first, "the same frame is not encoded twice");
    gate_slot(&h).put(test_frame(2));
    let second = get();
    assert_ne!(second, first, "a new frame is a new picture");
    assert!(image::load_from_memory(&second).is_ok());
    // Watching is on record: once for this viewer and camera, not once per picture.
    let (status, audit) = json(&h, "/api/v1/audit?caller=operator", &h.admin);
    assert_eq!(status, 200, "{audit}");
    let views: Vec<&Value> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "view_live")
        .collect();
    assert_eq!(views.len(), 1, "{audit}");
    assert_eq!(views[0]["target"], "gate");
}

#[test]
fn stored_events_arrive_on_the_live_stream() {
    let h = start();
    let (id, _, _) = sign_in(&h, &h.read);
    let agent = ureq::AgentBuilder::new()
        .timeout_read(Duration::from_secs(20))
        .build();
    let resp = agent
        .get(&format!("{}/api/v1/events/stream", h.base))
        .set("Cookie", &format!("kw_session={id}"))
        .call()
        .unwrap();
    assert_eq!(resp.content_type(), "text/event-stream");
    let mut lines = BufReader::new(resp.into_reader()).lines();
    walk_across(&h);
    let stored = wait_events(&h, "kind=line_crossed", 1);
    let mut kind = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let line = lines.next().expect("the stream ended").unwrap();
        if let Some(k) = line.strip_prefix("event: ") {
            kind = Some(k.to_owned());
        } else if let Some(data) = line.strip_prefix("data: ")
            && kind.as_deref() == Some("recorded")
        {
            let e: Value = serde_json::from_str(data).unwrap();
            assert_eq!(e["kind"], "line_crossed");
            assert_eq!(
                e["id"], stored[0]["id"],
                "the stored event, as the API lists it"
            );
            assert_eq!(e["snapshot_url"], stored[0]["snapshot_url"]);
            return;
        }
    }
    panic!("no recorded event on the stream");
}

// --- in a real browser ---------------------------------------------------------------------------

#[test]
fn the_console_in_a_real_browser() {
    let h = start();
    let driver = chromedriver();
    gate_slot(&h).put(test_frame(1));
    walk_across(&h);
    let first = wait_events(&h, "kind=line_crossed", 1);
    let first_id = first[0]["id"].as_str().unwrap().to_owned();
    let (read, admin) = (h.read.clone(), h.admin.clone());
    let detections = h.detections.clone();
    h.rt.block_on(async {
        let c = browser(&driver).await;
        c.goto(&h.base).await.unwrap();
        screenshot(&c, "1-sign-in").await;

        // A wrong token is refused in words.
        sign_in_fails(&c).await;

        // Read session, signed in by keyboard only.
        sign_in_by_keyboard(&c, &read).await;
        until(&c, "the camera tile", "document.querySelector('.tile[data-camera=gate]')").await;
        until(
            &c,
            "the live picture",
            "document.querySelector('.tile img').naturalWidth === 320",
        )
        .await;
        until(&c, "the tripwire drawn", "document.querySelector('.tile svg polyline.wire')").await;
        until(&c, "the last event", "document.querySelector('.last-event a')").await;
        assert_eq!(
            js(&c, "return document.querySelectorAll('button[data-action]').length").await,
            json!(0),
            "a read session is offered no arm/disarm buttons"
        );
        // Even a forged request from the page is refused.
        let forged = js(
            &c,
            "return (async () => {
               const me = await (await fetch('/console/session')).json();
               const r = await fetch('/api/v1/rules/fence/disarm', {method: 'POST', headers: {'X-CSRF-Token': me.csrf}});
               return r.status;
             })();",
        )
        .await;
        assert_eq!(forged, json!(403));
        assert_eq!(
            js(&c, "return document.cookie.includes('kw_session')").await,
            json!(false),
            "the session cookie is HttpOnly"
        );
        let source = c.source().await.unwrap();
        assert!(!source.contains(&read), "the page holds no token");
        screenshot(&c, "2-cameras-read").await;

        // Events, reached by keyboard: the recorded event with its snapshot.
        tab_to(&c, "nav a[href='#events']").await;
        press(&c, "\u{E007}").await;
        let item = format!("li[data-event='{first_id}']");
        until(&c, "the recorded event", &format!("document.querySelector({item:?})")).await;
        until(
            &c,
            "its thumbnail",
            &format!("document.querySelector({item:?} + ' img') && document.querySelector({item:?} + ' img').naturalWidth > 0"),
        )
        .await;
        // A new event arrives live (server-sent events), on top, marked new.
        until(&c, "the live stream open", "document.querySelector('#live').textContent.length > 0").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for d in common::walk_down(SystemTime::now()) {
            detections.send(d).await.unwrap();
        }
        until(&c, "a live event", "document.querySelector('#event-list li.fresh')").await;
        screenshot(&c, "3-events").await;

        // The detail view, with the full snapshot.
        c.find(Locator::Css(&format!("{item} a")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(
            &c,
            "the full snapshot",
            "document.querySelector('#snapshot') && document.querySelector('#snapshot').naturalWidth > 0",
        )
        .await;
        screenshot(&c, "4-event-detail").await;

        // Health.
        c.goto(&format!("{}/#health", h.base)).await.unwrap();
        until(&c, "the health panel", "document.querySelectorAll('#health-list dt').length >= 6").await;
        screenshot(&c, "5-health").await;

        // Sign out; the admin disarms and arms the fence with a click.
        c.find(Locator::Css("#sign-out")).await.unwrap().click().await.unwrap();
        until(&c, "signed out", "!document.querySelector('#page-signin').hidden").await;
        sign_in_by_keyboard(&c, &admin).await;
        c.goto(&format!("{}/#cameras", h.base)).await.unwrap();
        until(&c, "the disarm button", "document.querySelector('button[data-action=disarm]')").await;
        c.find(Locator::Css("button[data-action=disarm]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(&c, "the arm button", "document.querySelector('button[data-action=arm]')").await;
        screenshot(&c, "6-cameras-admin-disarmed").await;
        assert_eq!(rule_armed(&h.base, &read).await, Some(false));
        c.find(Locator::Css("button[data-action=arm]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(&c, "the disarm button again", "document.querySelector('button[data-action=disarm]')").await;
        assert_eq!(rule_armed(&h.base, &read).await, Some(true));

        // Russian, by the switch; kept for the next visit.
        c.execute(
            "const s = document.querySelector('#lang'); s.value = 'ru'; s.dispatchEvent(new Event('change'));",
            vec![],
        )
        .await
        .unwrap();
        until(
            &c,
            "Russian words",
            "document.querySelector('nav a[href=\"#events\"]').textContent === 'События'",
        )
        .await;
        until(&c, "the tile in Russian", "document.querySelector('.tile .state').textContent.length > 0").await;
        screenshot(&c, "7-cameras-ru").await;
        c.refresh().await.unwrap();
        until(&c, "Russian after a reload", "document.documentElement.lang === 'ru'").await;

        // Kazakh too; every language has every text (no key falls back to English unseen).
        c.execute(
            "const s = document.querySelector('#lang'); s.value = 'kk'; s.dispatchEvent(new Event('change'));",
            vec![],
        )
        .await
        .unwrap();
        until(
            &c,
            "Kazakh words",
            "document.querySelector('nav a[href=\"#events\"]').textContent === 'Оқиғалар'",
        )
        .await;
        screenshot(&c, "8-cameras-kk").await;
        let gaps = js(
            &c,
            "const T = window.KW_TEXT, en = Object.keys(T.en); \
             return Object.keys(T).flatMap((l) => en.filter((k) => !(k in T[l])).map((k) => l + ':' + k) \
               .concat(Object.keys(T[l]).filter((k) => !(k in T.en)).map((k) => l + ':+' + k)));",
        )
        .await;
        assert_eq!(gaps, json!([]), "texts missing or extra per language");
        assert_eq!(js(&c, "return Object.keys(window.KW_TEXT).sort();").await, json!(["en", "kk", "ru"]));
        c.close().await.unwrap();
    });
    eprintln!("screenshots in {}", screenshots().display());
}

async fn sign_in_fails(c: &Client) {
    c.wait().for_element(Locator::Css("#token")).await.unwrap();
    until(
        c,
        "focus on the token field",
        "document.activeElement.id === 'token'",
    )
    .await;
    press(c, "kw_wrong\u{E007}").await;
    until(
        c,
        "the refusal",
        "!document.querySelector('#signin-error').hidden",
    )
    .await;
    let text = c
        .find(Locator::Css("#signin-error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("not known"), "{text}");
    js(
        c,
        "document.querySelector('#token').value = ''; document.querySelector('#token').focus();",
    )
    .await;
}

async fn rule_armed(base: &str, token: &str) -> Option<bool> {
    let (base, token) = (base.to_owned(), token.to_owned());
    tokio::task::spawn_blocking(move || {
        let v: Value = ureq::get(&format!("{base}/api/v1/rules"))
            .set("Authorization", &format!("Bearer {token}"))
            .call()
            .ok()?
            .into_json()
            .ok()?;
        v["rules"][0]["armed"].as_bool()
    })
    .await
    .unwrap()
}
