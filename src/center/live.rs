//! The alarm queue's live feed: one `LISTEN kinderwatch_alarms` connection per instance (the
//! database announces every alarm raised or changed, whichever instance changed it), fanned out
//! to the pages' server-sent event streams (`GET /api/v1/alarms/stream`). A page that falls
//! behind, or a feed that lost its database connection, gets `resync` and reloads its list.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::Stream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::db::ALARM_CHANNEL;

/// A comment this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the feed says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// This alarm was raised or changed.
    Alarm(i64),
    /// Changes may have been missed: reload.
    Resync,
}

/// The instance's feed; cheap to clone.
#[derive(Clone)]
pub struct AlarmFeed {
    tx: broadcast::Sender<Change>,
}

impl Default for AlarmFeed {
    fn default() -> Self {
        AlarmFeed {
            tx: broadcast::channel(256).0,
        }
    }
}

impl AlarmFeed {
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    /// Listens until `cancel`, reconnecting with backoff; each reconnection is a `Resync`.
    pub async fn listen(self, pg: tokio_postgres::Config, cancel: CancellationToken) {
        let mut delay = Duration::from_millis(500);
        let mut last_error: Option<String> = None;
        loop {
            let r = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.session(&pg) => r,
            };
            let e = match r {
                Ok(()) => "the database closed the connection".to_owned(),
                Err(e) => e.to_string(),
            };
            if last_error.as_deref() != Some(&e) {
                warn!(error = %e, "center: the alarm feed lost the database; reconnecting");
                last_error = Some(e);
            }
            let _ = self.tx.send(Change::Resync);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    async fn session(&self, pg: &tokio_postgres::Config) -> Result<(), tokio_postgres::Error> {
        let (client, mut connection) = pg.connect(tokio_postgres::NoTls).await?;
        let (msg_tx, mut msg_rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            use futures_util::StreamExt;
            while let Some(m) = messages.next().await {
                match m {
                    Ok(m) => {
                        if msg_tx.send(m).is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        client
            .batch_execute(&format!("LISTEN {ALARM_CHANNEL}"))
            .await?;
        info!("center: the alarm feed listens");
        let _ = self.tx.send(Change::Resync);
        while let Some(m) = msg_rx.recv().await {
            if let AsyncMessage::Notification(n) = m
                && let Ok(id) = n.payload().parse::<i64>()
            {
                let _ = self.tx.send(Change::Alarm(id));
            }
        }
        drop(client);
        driver.await.unwrap_or(Ok(()))
    }

    /// The server-sent events of one page: `alarm` (data: the id) and `resync`.
    pub fn stream(
        &self,
        stop: CancellationToken,
    ) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>> + use<>> {
        let rx = self.subscribe();
        let stream = futures_util::stream::unfold((rx, stop), |(mut rx, stop)| async move {
            let got = tokio::select! {
                _ = stop.cancelled() => return None,
                got = rx.recv() => got,
            };
            let message = match got {
                Ok(Change::Alarm(id)) => SseEvent::default().event("alarm").data(id.to_string()),
                Ok(Change::Resync) | Err(RecvError::Lagged(_)) => {
                    SseEvent::default().event("resync").data("{}")
                }
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(message), (rx, stop)))
        });
        Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
    }
}
