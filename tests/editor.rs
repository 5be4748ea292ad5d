//! The console's rule editor (issue 15, part 4) on the real daemon binary: its config file, the
//! real model, an RTSP camera playing the synthetic walk (`common::walk_clip`: a person walks down
//! across y ≈ 0.48 → 0.92, looped every 12 s).
//!
//! Over HTTP: a read token cannot save; a stale version, a file changed on disk and an invalid
//! shape are refused (409, 409, 422 with the shape named) and the file stays as it was. Then in
//! headless Chromium: the installer drags the old tripwire's points away from the walk, draws a
//! new tripwire across it with pointer clicks, flips its direction, first saves an invalid shape
//! (its problem is shown beside it), fixes it and saves; the file keeps its comments and the keys
//! the editor does not show, the previous one is kept as `.bak`, the daemon applies it without a
//! restart, and the walk fires the new line and no longer the old one.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::browser::{browser, chromedriver, js, press, screenshot, sign_in_by_keyboard, until};
use common::daemon::{RunningDaemon, free_port};
use fantoccini::Client;
use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use serde_json::{Value, json};

fn config(api: u16, camera: &str, read: &str, admin: &str) -> String {
    format!(
        r#"# A test site.
[site]
id = "kg-edit"
[state]
dir = "{{state}}"
[store]
min_free_mb = 1
[api]
listen = "127.0.0.1:{api}"
[[api.tokens]]
name = "operator"
role = "read"
sha256 = "{read}"
[[api.tokens]]
name = "installer"
role = "admin"
sha256 = "{admin}"
[detector]
model = "{root}/models/nanodet-coco-416.toml"
workers = 1
[motion]
enabled = false

[[cameras]]
id = "yard"   # over the yard
url = "{camera}"
detect_width = 640
detect_height = 480
detect_fps = 5

# The old fence line: the walk crosses it.
[[rules]]
id = "fence"
camera = "yard"
kind = "tripwire"
line = [[0.05, 0.62], [0.95, 0.62]]
hysteresis = 0.02
min_score = 0.4
cooldown = "0s"
"#,
        root = env!("CARGO_MANIFEST_DIR"),
    )
}

/// (status, JSON body) of a request with a bearer token.
fn call(api: u16, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let req = ureq::request(method, &format!("http://127.0.0.1:{api}{path}"))
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(15));
    let r = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    };
    match r {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The line crossings stored so far: (rule, event time).
fn crossings(api: u16, token: &str) -> Vec<(String, SystemTime)> {
    let (status, body) = call(
        api,
        "GET",
        "/api/v1/events?kind=line_crossed&limit=200",
        token,
        None,
    );
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let t: jiff::Timestamp = e["time"].as_str().unwrap().parse().unwrap();
            (e["rule"].as_str().unwrap().to_owned(), SystemTime::from(t))
        })
        .collect()
}

/// Viewport pixels of the point (x, y) of the editor's picture (fractions).
async fn picture_point(c: &Client, x: f64, y: f64) -> (f64, f64) {
    let r = js(
        c,
        "const r = document.querySelector('#edit-svg').getBoundingClientRect(); return [r.left, r.top, r.width, r.height];",
    )
    .await;
    let n = |i: usize| r[i].as_f64().unwrap();
    (n(0) + x * n(2), n(1) + y * n(3))
}

/// The pointer pressed at the first viewport point, moved through the others (150 ms each) and
/// released at the last: one point is a click, several a drag.
async fn press_along(c: &Client, path: &[(f64, f64)]) {
    let at = |(x, y): (f64, f64), duration| PointerAction::MoveTo {
        duration,
        x: x.round(),
        y: y.round(),
    };
    let mut mouse = MouseActions::new("mouse".into())
        .then(at(path[0], None))
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        });
    for &p in &path[1..] {
        mouse = mouse.then(at(p, Some(Duration::from_millis(150))));
    }
    mouse = mouse.then(PointerAction::Up {
        button: MOUSE_BUTTON_LEFT,
    });
    c.perform_actions(mouse).await.unwrap();
}

/// A click at (x, y) of the picture.
async fn click_at(c: &Client, x: f64, y: f64) {
    press_along(c, &[picture_point(c, x, y).await]).await;
}

/// Drags the selected shape's point `i` to (x, y) of the picture.
async fn drag_point(c: &Client, i: usize, x: f64, y: f64) {
    let r = js(
        c,
        &format!(
            "const r = document.querySelector('#edit-svg .handle[data-point=\"{i}\"]').getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2];"
        ),
    )
    .await;
    let (hx, hy) = (r[0].as_f64().unwrap(), r[1].as_f64().unwrap());
    let (px, py) = picture_point(c, x, y).await;
    press_along(c, &[(hx, hy), ((hx + px) / 2.0, (hy + py) / 2.0), (px, py)]).await;
}

async fn click(c: &Client, selector: &str) {
    c.find(fantoccini::Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("{selector}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Sets a form field's value as typing it and leaving the field would.
async fn type_into(c: &Client, selector: &str, value: &str) {
    js(
        c,
        &format!(
            "const f = document.querySelector({selector:?}); f.value = {value:?}; f.dispatchEvent(new Event('change')); return true;"
        ),
    )
    .await;
}

#[test]
fn the_rule_editor_saves_a_drawn_tripwire_that_fires_and_the_old_line_stops() {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let clip = common::walk_clip::make(dir.path());
    let server = common::RtspTestServer::start(
        common::Source::Clip {
            path: clip,
            fps: common::walk_clip::FPS,
        },
        common::Auth::None,
    );
    let api = free_port();
    let (read, read_hash) = kinderwatch::api::auth::new_token();
    let (admin, admin_hash) = kinderwatch::api::auth::new_token();
    let daemon = RunningDaemon::start(&config(api, &server.url(), &read_hash, &admin_hash), "");
    let file = daemon.file.clone();
    let original = std::fs::read_to_string(&file).unwrap();
    wait_for("the rules stage", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", api)).is_ok()
            && call(api, "GET", "/api/v1/rules", &read, None).0 == 200
    });

    // --- over HTTP ---------------------------------------------------------------------------
    let (status, view) = call(api, "GET", "/api/v1/cameras/yard/perimeter", &read, None);
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["rules"][0]["id"], "fence");
    assert_eq!(
        view["rules"][0]["line"],
        json!([[0.05, 0.62], [0.95, 0.62]])
    );
    assert_eq!(view["rules"][0]["cooldown"], "0s");
    let version = view["version"].as_str().unwrap().to_owned();
    assert_eq!(
        call(api, "GET", "/api/v1/cameras/hall/perimeter", &read, None).0,
        404
    );

    let mut body = view.clone();
    body["rules"][0]["line"] = json!([[0.05, 0.3], [0.95, 0.3]]);
    let (status, r) = call(
        api,
        "PUT",
        "/api/v1/cameras/yard/perimeter",
        &read,
        Some(&body),
    );
    assert_eq!(status, 403, "a read token cannot save: {r}");
    let mut stale = body.clone();
    stale["version"] = json!("0".repeat(64));
    let (status, r) = call(
        api,
        "PUT",
        "/api/v1/cameras/yard/perimeter",
        &admin,
        Some(&stale),
    );
    assert_eq!(
        (status, r["error"].as_str()),
        (409, Some("conflict")),
        "{r}"
    );
    let mut bad = body.clone();
    bad["rules"][0]["line"] = json!([[0.5, 0.5]]);
    let (status, r) = call(
        api,
        "PUT",
        "/api/v1/cameras/yard/perimeter",
        &admin,
        Some(&bad),
    );
    assert_eq!(
        (status, r["error"].as_str()),
        (422, Some("invalid_config")),
        "{r}"
    );
    let problem = &r["problems"][0];
    assert_eq!(problem["shape"], json!({"rule": "fence"}), "{r}");
    assert_eq!(problem["path"], "rules[0].line", "{r}");
    let (status, r) = call(
        api,
        "PUT",
        "/api/v1/cameras/yard/perimeter",
        &admin,
        Some(&json!({"version": version, "rules": [{"id": "x"}]})),
    );
    assert_eq!(
        (status, r["parameter"].as_str()),
        (400, Some("rules[0]")),
        "{r}"
    );
    // A hand edit not yet reloaded: the editor does not overwrite it.
    std::fs::write(&file, format!("{original}\n# a hand edit\n")).unwrap();
    let (status, r) = call(
        api,
        "PUT",
        "/api/v1/cameras/yard/perimeter",
        &admin,
        Some(&body),
    );
    assert_eq!(status, 409, "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("changed on disk"),
        "{r}"
    );
    std::fs::write(&file, &original).unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        original,
        "nothing refused was written"
    );
    assert!(!file.with_extension("toml.bak").exists());

    // The old line fires on the walk.
    wait_for("the old line crossed", Duration::from_secs(60), || {
        crossings(api, &read)
            .iter()
            .any(|(rule, _)| rule == "fence")
    });

    // --- in the browser ----------------------------------------------------------------------
    let driver = chromedriver();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let saved_at = rt.block_on(async {
        let c = browser(&driver).await;
        c.goto(&format!("http://127.0.0.1:{api}/")).await.unwrap();
        sign_in_by_keyboard(&c, &admin).await;
        until(&c, "the edit link", "document.querySelector('a.edit-link')").await;
        click(&c, "a.edit-link").await;
        until(
            &c,
            "the editor with the fence",
            "document.querySelector('#shape-list [data-shape=\"rule:fence\"]')",
        )
        .await;
        until(
            &c,
            "the live picture",
            "document.querySelector('#edit-picture').naturalWidth > 0",
        )
        .await;

        // Move the old line above the walk by dragging its two points.
        click(&c, "#shape-list [data-shape='rule:fence']").await;
        until(
            &c,
            "the fence's handles",
            "document.querySelectorAll('#edit-svg .handle').length === 2",
        )
        .await;
        drag_point(&c, 0, 0.05, 0.3).await;
        drag_point(&c, 1, 0.95, 0.3).await;
        let points = js(&c, "return document.querySelector('#edit-points').value;").await;
        let pts: Vec<f64> = points
            .as_str()
            .unwrap()
            .split([' ', ','])
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(
            pts.len() == 4 && (pts[1] - 0.3).abs() < 0.01 && (pts[3] - 0.3).abs() < 0.01,
            "dragged to y 0.3: {points}"
        );

        // A mask by keyboard alone: the button by Enter, the points typed, Enter to finish.
        js(
            &c,
            "document.querySelector('#edit-add-mask').focus(); return true;",
        )
        .await;
        press(&c, "\u{E007}").await;
        until(
            &c,
            "the typed-points field",
            "!document.querySelector('#edit-draw-typed').hidden",
        )
        .await;
        js(
            &c,
            "document.querySelector('#edit-draw-points').focus(); return true;",
        )
        .await;
        press(&c, "0,0 0.2,0 0.2,0.1\u{E007}").await;
        until(
            &c,
            "the mask in the list",
            "document.querySelector('#shape-list [data-shape=\"mask:0\"]')",
        )
        .await;

        // Draw a new tripwire across the walk, right to left, and flip it: crossing downwards is
        // then to its left.
        click(&c, "#edit-add-tripwire").await;
        click_at(&c, 0.95, 0.75).await;
        click_at(&c, 0.05, 0.75).await;
        click(&c, "#edit-finish").await;
        until(
            &c,
            "the new tripwire selected",
            "document.querySelector('#edit-direction')",
        )
        .await;
        assert_eq!(
            js(
                &c,
                "return document.querySelector('#edit-direction').value;"
            )
            .await,
            "right"
        );
        click(&c, "#edit-flip").await;
        assert_eq!(
            js(
                &c,
                "return document.querySelector('#edit-direction').value;"
            )
            .await,
            "left"
        );
        let id = js(&c, "return document.querySelector('#edit-id').value;").await;
        assert_eq!(id, "tripwire-1");
        screenshot(&c, "editor-1-drawn").await;

        // An invalid cooldown: refused, the problem shown beside the shape, nothing written.
        type_into(&c, "#edit-cooldown", "soon").await;
        click(&c, "#edit-save").await;
        until(
            &c,
            "the problem shown",
            "!document.querySelector('#edit-problems').hidden",
        )
        .await;
        until(
            &c,
            "the problem beside the shape",
            "document.querySelector('#shape-form .problems li')",
        )
        .await;
        let beside = js(
            &c,
            "return document.querySelector('#shape-form .problems').textContent;",
        )
        .await;
        assert!(beside.as_str().unwrap().contains("cooldown"), "{beside}");
        assert_eq!(
            js(&c, "return document.querySelector('#edit-id').value;").await,
            "tripwire-1",
            "the shape at fault is selected"
        );
        screenshot(&c, "editor-2-problem").await;
        assert_eq!(std::fs::read_to_string(&file).unwrap(), original);

        type_into(&c, "#edit-cooldown", "0s").await;
        type_into(&c, "#edit-min_score", "0.4").await;
        click(&c, "#edit-save").await;
        until(
            &c,
            "saved",
            "document.querySelector('#edit-state').textContent.includes('applied')",
        )
        .await;
        let saved_at = SystemTime::now();
        screenshot(&c, "editor-3-saved").await;
        c.close().await.unwrap();
        saved_at
    });

    // The file: the change in place, comments and unseen keys kept, the previous file as .bak.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("id = \"yard\"   # over the yard"), "{text}");
    assert!(
        text.contains("# The old fence line: the walk crosses it."),
        "{text}"
    );
    assert!(text.contains("hysteresis = 0.02"), "{text}");
    let backup = file.with_extension("toml.bak");
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), original);
    let config = kinderwatch::config::Config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let new = config
        .rules
        .iter()
        .find(|r| r.id == "tripwire-1")
        .expect("the drawn rule");
    assert_eq!(new.direction, kinderwatch::rules::tripwire::Direction::Left);
    assert!(
        (new.line[0][1] - 0.75).abs() < 0.01 && new.line[0][0] > new.line[1][0],
        "{:?}",
        new.line
    );
    let yard = config.cameras.iter().find(|c| c.id == "yard").unwrap();
    assert_eq!(
        yard.object_masks,
        [vec![[0.0, 0.0], [0.2, 0.0], [0.2, 0.1]]],
        "the typed mask"
    );
    let fence = config.rules.iter().find(|r| r.id == "fence").unwrap();
    assert!((fence.line[0][1] - 0.3).abs() < 0.01, "{:?}", fence.line);
    daemon.wait_log(
        &["perimeter saved from the console and applied"],
        Duration::from_secs(5),
    );

    // The walk fires the new line, and no longer the old one.
    wait_for("the new line crossed", Duration::from_secs(60), || {
        crossings(api, &read)
            .iter()
            .any(|(rule, _)| rule == "tripwire-1")
    });
    // One more loop of the walk.
    std::thread::sleep(Duration::from_secs(13));
    let after: Vec<(String, SystemTime)> = crossings(api, &read)
        .into_iter()
        .filter(|(_, t)| *t > saved_at + Duration::from_secs(1))
        .collect();
    assert!(after.iter().any(|(r, _)| r == "tripwire-1"), "{after:?}");
    assert!(
        !after.iter().any(|(r, _)| r == "fence"),
        "the moved line does not fire: {after:?}"
    );

    // The save is in the audit trail with the installer's name; no restart happened.
    let (status, audit) = call(
        api,
        "GET",
        "/api/v1/audit?caller=installer&limit=100",
        &admin,
        None,
    );
    assert_eq!(status, 200);
    let edits: Vec<&Value> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "edit_perimeter")
        .collect();
    assert!(
        edits
            .iter()
            .any(|r| r["caller"] == "installer" && r["result"] == "ok"),
        "{audit}"
    );
    assert!(
        edits.iter().any(|r| r["result"] == "invalid_config"),
        "{audit}"
    );
    assert_eq!(daemon.logs().matches("starting kinderwatch").count(), 1);
}
