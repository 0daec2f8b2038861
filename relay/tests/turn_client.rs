//! The webrtc-rs `turn` client (a port of pion's, independent of this code) against the real
//! relay binary over loopback: allocate, permission, channel bind, data both ways, refresh and
//! deallocate; and the same client over TCP, through a connection that frames the stream the
//! way RFC 8656 §12.5 says (the framing is the test's; the TURN client is webrtc-rs's).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::RelayProcess;
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

const SECRET: &str = "loopback-test-secret";

async fn client(relay: &RelayProcess, username: &str, password: &str) -> Client {
    let conn = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    client_on(conn, relay.udp, username, password).await
}

/// A listening client on `conn` to the relay at `server`.
async fn client_on(
    conn: Arc<dyn Conn + Send + Sync>,
    server: std::net::SocketAddr,
    username: &str,
    password: &str,
) -> Client {
    let c = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.into(),
        password: password.into(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    c.listen().await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_turn_client_full_flow() {
    // A 4 s allocation lifetime makes the client refresh every 2 s, so the test sees refreshes.
    let relay =
        RelayProcess::start("relay-loopback.toml", &["--default-lifetime-secs", "4", "--max-lifetime-secs", "4"]);
    let expiry = common::unix_now() + 600;
    let username = format!("{expiry}:webrtc-rs");
    let password = relay::turn::auth::rest_password(SECRET.as_bytes(), &username);
    let client = client(&relay, &username, &password).await;

    // Binding through the client library.
    let mapped = client.send_binding_request().await.unwrap();
    assert_eq!(mapped.ip(), relay.udp.ip());

    let relay_conn = client.allocate().await.unwrap();
    let relayed = relay_conn.local_addr().unwrap();
    assert_eq!(relayed.ip(), relay.udp.ip());
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();

    // First packets go by Send indication while the client binds a channel in the background;
    // later ones by ChannelData. Each is echoed by the peer and must come back.
    let mut buf = vec![0u8; 1500];
    for i in 0..50u32 {
        let msg = format!("ping {i}");
        relay_conn.send_to(msg.as_bytes(), peer_addr).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((&buf[..n], from), (msg.as_bytes(), relayed));
        peer.send_to(format!("pong {i}").as_bytes(), relayed).await.unwrap();
        let (n, from) =
            tokio::time::timeout(Duration::from_secs(2), relay_conn.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((&buf[..n], from), (format!("pong {i}").as_bytes(), peer_addr));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = relay.metrics();
    assert_eq!(common::metric_value(&m, "relay_requests_total{method=\"create_permission\"}"), 1.0);
    assert!(
        common::metric_value(&m, "relay_requests_total{method=\"channel_bind\"}") >= 1.0,
        "the client bound a channel"
    );
    assert_eq!(common::metric_value(&m, "relay_relayed_packets_total{direction=\"client_to_peer\"}"), 50.0);
    assert_eq!(common::metric_value(&m, "relay_relayed_packets_total{direction=\"peer_to_client\"}"), 50.0);

    // Outlive three lifetimes: only the client's refreshes keep the allocation.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(relay.metric("relay_allocations_active"), 1.0, "refreshed, still alive");
    assert!(relay.metric("relay_requests_total{method=\"refresh\"}") >= 3.0);
    relay_conn.send_to(b"after refresh", peer_addr).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"after refresh");

    // Deallocate (Refresh with LIFETIME 0).
    relay_conn.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.metric("relay_allocations_active") != 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(relay.metric("relay_allocations_active"), 0.0, "deallocated");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_turn_client_static_user_and_bad_password() {
    let relay = RelayProcess::start("relay-loopback.toml", &[]);
    let good = client(&relay, "test", "test-password").await;
    let conn = good.allocate().await.unwrap();
    assert!((10000..=30000).contains(&conn.local_addr().unwrap().port()), "from the configured range");
    let bad = client(&relay, "test", "wrong").await;
    assert!(bad.allocate().await.is_err(), "a wrong password is refused");
    assert!(relay.metric("relay_auth_failures_total{reason=\"bad_integrity\"}") >= 1.0);
}

/// A TCP connection to the relay as a `Conn` for the webrtc-rs client: each `recv_from` yields
/// one STUN message or ChannelData message (its padding read and dropped), each `send_to` writes
/// what the client built (webrtc-rs pads its ChannelData to a multiple of 4 already).
struct TcpConn {
    reader: tokio::sync::Mutex<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>,
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
}

#[async_trait::async_trait]
impl Conn for TcpConn {
    async fn connect(&self, _addr: std::net::SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, std::net::SocketAddr)> {
        use tokio::io::AsyncReadExt;
        let mut reader = self.reader.lock().await;
        let mut header = [0u8; 4];
        reader.read_exact(&mut header).await?;
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let (message, wire) =
            if header[0] >> 6 == 0 { (20 + len, 20 + len) } else { (4 + len, (4 + len).next_multiple_of(4)) };
        let mut frame = vec![0u8; wire];
        frame[..4].copy_from_slice(&header);
        reader.read_exact(&mut frame[4..]).await?;
        let n = message.min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok((n, self.remote))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        use tokio::io::AsyncWriteExt;
        self.writer.lock().await.write_all(buf).await?;
        Ok(buf.len())
    }

    async fn send_to(&self, buf: &[u8], _target: std::net::SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }

    fn local_addr(&self) -> webrtc_util::Result<std::net::SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        Some(self.remote)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_turn_client_over_tcp() {
    let relay = RelayProcess::start("relay-loopback.toml", &[]);
    let tcp = relay.tcp.expect("TURN over TCP is on by default");
    let stream = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let (local, remote) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
    let (reader, writer) = stream.into_split();
    let conn = Arc::new(TcpConn {
        reader: tokio::sync::Mutex::new(reader),
        writer: tokio::sync::Mutex::new(writer),
        local,
        remote,
    });
    let username = format!("{}:webrtc-rs-tcp", common::unix_now() + 600);
    let password = relay::turn::auth::rest_password(SECRET.as_bytes(), &username);
    let client = client_on(conn, tcp, &username, &password).await;

    let mapped = client.send_binding_request().await.unwrap();
    assert_eq!(mapped, local, "XOR-MAPPED-ADDRESS is the connection's source");
    let relay_conn = client.allocate().await.unwrap();
    let relayed = relay_conn.local_addr().unwrap();
    assert_eq!(relayed.ip(), relay.udp.ip(), "a UDP relay for a TCP client");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    // Send indications first, ChannelData once the client has bound a channel; odd lengths, so
    // the padding on the stream is exercised both ways.
    let mut buf = vec![0u8; 1500];
    for i in 0..100u32 {
        let msg = format!("ping {i}{}", "x".repeat((i % 7) as usize));
        relay_conn.send_to(msg.as_bytes(), peer_addr).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((&buf[..n], from), (msg.as_bytes(), relayed));
        let reply = format!("pong {i}{}", "y".repeat((i % 5) as usize));
        peer.send_to(reply.as_bytes(), relayed).await.unwrap();
        let (n, from) =
            tokio::time::timeout(Duration::from_secs(2), relay_conn.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((&buf[..n], from), (reply.as_bytes(), peer_addr));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = relay.metrics();
    assert!(common::metric_value(&m, "relay_requests_total{method=\"channel_bind\"}") >= 1.0, "{m}");
    assert_eq!(common::metric_value(&m, "relay_relayed_packets_total{direction=\"client_to_peer\"}"), 100.0);
    assert_eq!(common::metric_value(&m, "relay_relayed_packets_total{direction=\"peer_to_client\"}"), 100.0);
    assert_eq!(common::metric_value(&m, "relay_connections_open"), 1.0);
    relay_conn.close().await.unwrap();
    client.close().await.unwrap();
}
