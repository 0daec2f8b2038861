//! A user-space UDP proxy that delays and drops, for links and media paths in tests (this
//! machine has no `tc netem`): every datagram, either way, is held for `delay` and one in
//! `one_in` is dropped (a fixed pseudo-random pattern, so runs repeat). One client at a time:
//! the first address that sends to the proxy is the one answers go back to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Counts of one direction.
#[derive(Debug, Default)]
pub struct Counts {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
}

pub struct LossyProxy {
    /// Where clients send instead of the server.
    pub addr: SocketAddr,
    /// Client to server, and back.
    pub up: Arc<Counts>,
    pub down: Arc<Counts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A deterministic 1-in-`n` pattern (an LCG).
struct Pattern {
    state: u64,
    one_in: u64,
}

impl Pattern {
    fn drop_next(&mut self) -> bool {
        self.state = self.state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.one_in > 0 && (self.state >> 33).is_multiple_of(self.one_in)
    }
}

impl LossyProxy {
    /// Proxies to `server` on loopback (call within a Tokio runtime).
    pub async fn start(server: SocketAddr, delay: Duration, one_in: u64) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let (up, down) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
        let client: Arc<tokio::sync::OnceCell<SocketAddr>> = Arc::default();
        let mut tasks = Vec::new();
        // Client to server.
        let (tx_up, rx_up) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        {
            let (front, client, counts) = (Arc::clone(&front), Arc::clone(&client), Arc::clone(&up));
            tasks.push(tokio::spawn(async move {
                let mut pattern = Pattern { state: 1, one_in };
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    let _ = client.set(from);
                    if pattern.drop_next() {
                        counts.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let _ = tx_up.send((Instant::now() + delay, buf[..n].to_vec()));
                }
            }));
        }
        {
            let (back, counts) = (Arc::clone(&back), Arc::clone(&up));
            tasks.push(tokio::spawn(deliver(rx_up, counts, move |d| {
                let back = Arc::clone(&back);
                async move {
                    let _ = back.send(&d).await;
                }
            })));
        }
        // Server to client.
        let (tx_down, rx_down) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        {
            let (back, counts) = (Arc::clone(&back), Arc::clone(&down));
            tasks.push(tokio::spawn(async move {
                let mut pattern = Pattern { state: 2, one_in };
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = back.recv(&mut buf).await {
                    if pattern.drop_next() {
                        counts.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let _ = tx_down.send((Instant::now() + delay, buf[..n].to_vec()));
                }
            }));
        }
        {
            let (front, counts) = (Arc::clone(&front), Arc::clone(&down));
            tasks.push(tokio::spawn(deliver(rx_down, counts, move |d| {
                let (front, client) = (Arc::clone(&front), Arc::clone(&client));
                async move {
                    if let Some(to) = client.get() {
                        let _ = front.send_to(&d, *to).await;
                    }
                }
            })));
        }
        Self { addr, up, down, tasks }
    }
}

/// Sends each datagram when its time comes, in order.
async fn deliver<F, Fut>(mut rx: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>, counts: Arc<Counts>, send: F)
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some((at, d)) = rx.recv().await {
        tokio::time::sleep_until(at).await;
        send(d).await;
        counts.forwarded.fetch_add(1, Ordering::Relaxed);
    }
}
