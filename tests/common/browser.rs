//! Headless Chromium from Debian driven through WebDriver (`chromedriver`; both installed by
//! `scripts/setup.sh`) for the console tests: start the driver and a browser, wait for the page,
//! press keys, take screenshots into `target/tmp/console/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

pub struct Driver {
    child: std::process::Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn chromedriver() -> Driver {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "{CHROMEDRIVER} or {CHROMIUM} is missing: run scripts/setup.sh (it installs chromium and chromium-driver)"
    );
    let port = super::daemon::free_port();
    let child = std::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    Driver { child, port }
}

pub async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--lang=en-US"],
            "prefs": { "intl.accept_languages": "en-US,en" },
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session")
}

pub fn screenshots() -> PathBuf {
    // Examples share `tests/common` without a target tmpdir.
    let dir =
        PathBuf::from(option_env!("CARGO_TARGET_TMPDIR").unwrap_or("target/tmp")).join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Waits until `script` (a JS expression) is true in the page.
pub async fn until(c: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = c
            .execute(&format!("return !!({script});"), vec![])
            .await
            .unwrap();
        if v == Value::Bool(true) {
            return;
        }
        assert!(Instant::now() < deadline, "waited for {what}: {script}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Types `keys` into the focused element (WebDriver key codes allowed: Tab \u{E004}, Enter \u{E007}).
pub async fn press(c: &Client, keys: &str) {
    c.active_element()
        .await
        .unwrap()
        .send_keys(keys)
        .await
        .unwrap();
}

pub async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Presses Tab until the focused element matches `selector` (at most 30 times).
pub async fn tab_to(c: &Client, selector: &str) {
    for _ in 0..30 {
        let hit = js(
            c,
            &format!("return document.activeElement.matches({selector:?});"),
        )
        .await;
        if hit == Value::Bool(true) {
            return;
        }
        press(c, "\u{E004}").await;
    }
    panic!("Tab never reached {selector}");
}

pub async fn sign_in_by_keyboard(c: &Client, token: &str) {
    c.wait().for_element(Locator::Css("#token")).await.unwrap();
    until(
        c,
        "focus on the token field",
        "document.activeElement.id === 'token'",
    )
    .await;
    press(c, &format!("{token}\u{E007}")).await;
    until(c, "signed in", "!document.querySelector('#nav').hidden").await;
}
