//! A real mosquitto broker on a free loopback port with its own config in a temp dir, and an
//! MQTT 5 test subscriber.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    conf: PathBuf,
}

/// A message the test subscriber received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub properties: Option<PublishProperties>,
}

impl Broker {
    /// `extra` is appended to the listener config (auth, TLS). Persistence is on, so sessions and
    /// queued messages survive a restart.
    pub fn start(extra: &str) -> Self {
        // A port picked free can be taken by another test's broker before ours binds it; then
        // ours exits at once and we try another.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = dir.path().join("mosquitto.conf");
            let text = format!(
                "listener {port} 127.0.0.1\npersistence true\npersistence_location {}/\nlog_dest stderr\nlog_type error\nlog_type warning\n{}\n",
                dir.path().display(),
                if extra.contains("allow_anonymous") || extra.contains("password_file") {
                    extra.to_owned()
                } else {
                    format!("allow_anonymous true\n{extra}")
                }
            );
            std::fs::write(&conf, text).unwrap();
            let mut b = Self {
                child: None,
                port,
                dir,
                conf,
            };
            if b.try_start() {
                return b;
            }
        }
        panic!("mosquitto did not start on a free port in 5 tries");
    }

    /// Starts (again) on the same port with the same config and persistence file.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn restart(&mut self) {
        assert!(
            self.try_start(),
            "mosquitto did not start again on port {}",
            self.port
        );
    }

    /// Spawns mosquitto and waits until it listens; false if it exited (port taken).
    fn try_start(&mut self) -> bool {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Listening — ours, unless it is about to exit because another has the port.
                std::thread::sleep(Duration::from_millis(50));
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
                self.child = Some(child);
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGHUP: mosquitto reloads its ACL and password files.
    pub fn reload(&self) {
        let child = self.child.as_ref().expect("running");
        let _ = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status();
        // It reloads between network loop iterations.
        std::thread::sleep(Duration::from_millis(300));
    }

    /// SIGTERM (mosquitto saves its persistence file) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Subscribes to `filter` with a persistent session (it survives broker restarts) and forwards
/// every message. Returns the client too, for publishing requests.
pub async fn subscribe(
    port: u16,
    filter: &str,
    configure: impl FnOnce(&mut MqttOptions),
) -> (AsyncClient, mpsc::UnboundedReceiver<Received>) {
    let mut opts = MqttOptions::new(
        format!("test-sub-{}", rand::random::<u32>()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(3600));
    configure(&mut opts);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let sub = client.clone();
    let filter = filter.to_owned();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if !ack.session_present {
                        let _ = sub.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready_tx.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Received {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                        properties: p.properties,
                    });
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("the test subscriber subscribed")
        .unwrap();
    (client, rx)
}

/// The next message on a topic matching `pred`, within `timeout`.
pub async fn next_matching(
    rx: &mut mpsc::UnboundedReceiver<Received>,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Received) -> bool,
) -> Received {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m)) if pred(&m) => return m,
            Ok(Some(_)) => {}
            Ok(None) => panic!("subscriber ended while waiting for {what}"),
            Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
        }
    }
}
