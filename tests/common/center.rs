//! `kinderwatch center` for the tests: an instance as a child process with its config in a temp
//! dir, a site's MQTT client, and the database and HTTP helpers the center tests share.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::{AsyncClient, MqttOptions};
use serde_json::Value;

use super::postgres::Postgres;

pub const READ_TOKEN: &str =
    "kw_read_0000000000000000000000000000000000000000000000000000000000000";
pub const ADMIN_TOKEN: &str =
    "kw_admin_000000000000000000000000000000000000000000000000000000000000";

pub fn sha(t: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(t.as_bytes()))
}

pub struct Center {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// The directory of [`Center::start`]: kg-1 (north) and kg-2 (south).
pub const SITES: &str = r#"[[center.sites]]
id = "kg-1"
district = "north"
name = "Kindergarten 1"
[[center.sites]]
id = "kg-2"
district = "south"
"#;

impl Center {
    pub fn start(instance: &str, broker: u16, db: &str) -> Center {
        Center::start_with(instance, broker, db, "", SITES)
    }

    /// With `extra` keys of `[center]` and `sites` (the `[[center.sites]]` tables).
    pub fn start_with(instance: &str, broker: u16, db: &str, extra: &str, sites: &str) -> Center {
        Center::start_with_mqtt(instance, broker, db, extra, "", sites)
    }

    /// Also with `mqtt` keys of `[center.mqtt]` (credentials, TLS).
    pub fn start_with_mqtt(
        instance: &str,
        broker: u16,
        db: &str,
        extra: &str,
        mqtt: &str,
        sites: &str,
    ) -> Center {
        let dir = tempfile::tempdir().unwrap();
        let port = super::daemon::free_port();
        let config = format!(
            r#"[center]
instance = "{instance}"
{extra}
[center.mqtt]
host = "127.0.0.1"
port = {broker}
backoff_initial = "200ms"
backoff_max = "1s"
max_incoming_packet = 1048576
{mqtt}
[center.database]
url = "{db}"
pool_size = 4
[center.http]
listen = "127.0.0.1:{port}"
[[center.http.tokens]]
name = "viewer"
role = "read"
sha256 = "{}"
[[center.http.tokens]]
name = "desk-1"
role = "admin"
sha256 = "{}"
{sites}
"#,
            sha(READ_TOKEN),
            sha(ADMIN_TOKEN)
        );
        let file = dir.path().join("center.toml");
        std::fs::write(&file, config).unwrap();
        let child = Command::new(super::daemon::bin())
            .args(["center", "--config"])
            .arg(&file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        let c = Center {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if c.log().contains("center: connected to the broker") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "center {instance} did not connect: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Subscriptions are acknowledged right after the connection.
        std::thread::sleep(Duration::from_millis(500));
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Center {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn alert(site: &str, id: &str, kind: &str) -> Value {
    serde_json::json!({
        "schema_version": 1, "event_id": id, "site": site, "camera": "gate", "rule": "fence",
        "kind": kind, "object": null, "started_at": "2026-12-02T10:00:00Z",
        "time": jiff::Timestamp::now().to_string(), "detail": null, "snapshot": null
    })
}

pub async fn site_client(port: u16, id: &str) -> AsyncClient {
    let mut opts = MqttOptions::new(format!("site-{id}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = AsyncClient::new(opts, 1000);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    client
}

pub async fn publish_alert(c: &AsyncClient, site: &str, id: &str, kind: &str) {
    let props = PublishProperties {
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    c.publish_with_properties(
        format!("kinderwatch/{site}/events/gate/{kind}"),
        QoS::AtLeastOnce,
        false,
        serde_json::to_vec(&alert(site, id, kind)).unwrap(),
        props,
    )
    .await
    .unwrap();
}

pub async fn query(pg: &Postgres, sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.query(sql, &[]).await.unwrap()
}

pub async fn count(pg: &Postgres, sql: &str) -> i64 {
    query(pg, sql).await[0].get(0)
}

pub async fn wait_count(pg: &Postgres, sql: &str, want: i64, within: Duration) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let n = count(pg, sql).await;
        if n >= want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn uuid(n: u32) -> String {
    format!("019a5f1e-0000-7000-8000-{n:012}")
}

pub fn call(port: u16, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let r = ureq::request(method, &format!("http://127.0.0.1:{port}{path}"))
        .set("Authorization", &format!("Bearer {token}"));
    let res = if method == "GET" {
        r.call()
    } else {
        r.set("Content-Type", "application/json").send_string(body)
    };
    let (status, resp) = match res {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(s, r)) => (s, r),
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let text = resp.into_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Waits up to 30 s for `sql` to count exactly `want`; else fails naming `what`, with `log`.
pub async fn wait_for(pg: &Postgres, sql: &str, want: i64, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = count(pg, sql).await;
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} (want {want}); center log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
