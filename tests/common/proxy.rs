//! A TCP proxy in front of a broker whose connections the test can cut, so that the site's
//! connection drops while the broker (and the test's subscriber) stay up.

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (generation, _) = watch::channel(0u64);
        let gen_tx = generation.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            generation,
            task,
        }
    }

    /// A proxy that, on each connection, passes the broker's first packet (the CONNACK) and then
    /// holds everything else the broker sends for `hold`, as a slow uplink does: the client's
    /// publishes reach the broker at once, their PUBACKs come late and all together.
    pub async fn start_holding_acks(target: u16, hold: std::time::Duration) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (generation, _) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = inbound.into_split();
                    let (mut broker_rx, mut broker_tx) = outbound.into_split();
                    let up = tokio::io::copy(&mut client_rx, &mut broker_tx);
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        let n = broker_rx.read(&mut buf).await?;
                        client_tx.write_all(&buf[..n]).await?;
                        tokio::time::sleep(hold).await;
                        tokio::io::copy(&mut broker_rx, &mut client_tx).await
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Self {
            port,
            generation,
            task,
        }
    }

    /// Closes every connection open now (new ones are accepted again).
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
