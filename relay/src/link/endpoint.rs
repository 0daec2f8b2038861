//! A relay's link endpoint on Tokio: one quinn endpoint, both accepting links from other relays
//! and opening links to them, on its own UDP port. The relay process drives its links sans-IO
//! instead ([`super::node`], on the SFU thread); this endpoint speaks the same protocol, with
//! the same settings (which live here), for tests and tools that play another relay.
//!
//! A port of its own (`link.listen`) rather than the TURN port told apart by first byte: QUIC's
//! long-header first bytes (0xc0-0xff) fall outside RFC 7983's ranges, but QUIC wants its own
//! socket (its own pacing, GSO, ECN and connection ids), and a separate port lets a firewall
//! admit only the other relays' addresses to it.
//!
//! Admission: the TLS handshake checks the connecting relay's certificate (see [`super::tls`]);
//! then the accepting relay opens a unidirectional *welcome* stream carrying [`WELCOME`]. The
//! connecting relay's [`LinkEndpoint::connect`] returns only once it has read it: in TLS 1.3
//! the client's handshake is over before the server has checked the client's certificate, so
//! without the welcome a refused relay would believe it was linked until the close arrived.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use tracing::debug;

use super::tls::{LinkTls, Refusal};

/// Keep-alive on a quiet link (an edge sends little but ACKs): well inside [`IDLE_TIMEOUT`] and
/// the 30 s NATs keep a UDP mapping, and often enough that a peer that restarted answers within
/// a second with a stateless reset (see [`LinkEndpoint::bind`]), so the edge links again at
/// once instead of waiting out the idle timeout. One small packet a second per link.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A link silent this long (no keep-alive either: the peer or the path is gone) is closed and
/// the edge starts linking again; ten keep-alives lost in a row.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A handshake (or a welcome) not done by then fails.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Datagrams buffered each way: about 0.7 s of a 10 Mbit/s session.
const DATAGRAM_BUFFER: usize = 1 << 20;
/// The UDP payload a link starts with, before path MTU discovery: quinn's default (1200) leaves
/// about 1,150 bytes per datagram, less than a browser's 1,200-byte RTP packets; 1,400 fits them
/// with the link header on any path of the usual 1,500-byte MTU. On a narrower path quinn's
/// black-hole detection falls back to 1,200; a packet that no longer fits a datagram
/// ([`DatagramDrop::TooLarge`]) goes on the link's reliable stream instead
/// ([`super::node::LinkNode::send_media`], `Control::Oversize`), counted by
/// `relay_link_oversize_total`.
pub const INITIAL_MTU: u16 = 1400;
/// What the welcome stream carries: the link protocol and its version.
pub const WELCOME: &[u8] = b"relay-link/1 welcome\n";
/// QUIC application close code for a relay refused after the handshake.
pub(super) const CLOSE_REFUSED: u32 = 0x100;

/// A link to another relay, once both sides have admitted each other.
#[derive(Debug, Clone)]
pub struct Link {
    /// The peer's relay id, from its certificate (accepting side) or as asked for (connecting
    /// side, verified against its certificate).
    pub peer: String,
    pub connection: quinn::Connection,
}

/// Why a link did not come up.
#[derive(Debug)]
pub enum LinkError {
    /// This relay refused the peer's certificate (counted in `relay_link_refusals_total`).
    Refused(Refusal),
    /// The peer refused this relay, or the handshake or welcome failed otherwise.
    Failed(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(r) => write!(f, "refused the peer's certificate: {r}"),
            Self::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LinkError {}

/// Why a media datagram did not go out on a link (the `reason` of its drop counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramDrop {
    /// Larger than the link can carry now (path MTU, or the peer's limit). A resend would not
    /// fit either: the caller sends it on the reliable stream.
    TooLarge { size: usize, max: usize },
    /// The peer takes no datagrams (it is not a relay of this version).
    Unsupported,
    /// The link is gone.
    LinkLost,
}

impl DatagramDrop {
    pub fn label(self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Unsupported => "unsupported",
            Self::LinkLost => "link_lost",
        }
    }
}

/// Sends one media datagram on a link; when the send buffer is full quinn drops the *oldest*
/// queued datagrams, the right choice for live media.
pub fn send_media(connection: &quinn::Connection, datagram: bytes::Bytes) -> Result<(), DatagramDrop> {
    let size = datagram.len();
    connection.send_datagram(datagram).map_err(|e| match e {
        quinn::SendDatagramError::TooLarge => {
            DatagramDrop::TooLarge { size, max: connection.max_datagram_size().unwrap_or(0) }
        }
        quinn::SendDatagramError::UnsupportedByPeer | quinn::SendDatagramError::Disabled => DatagramDrop::Unsupported,
        quinn::SendDatagramError::ConnectionLost(_) => DatagramDrop::LinkLost,
    })
}

/// The link settings on every connection, both ways.
fn transport() -> Arc<quinn::TransportConfig> {
    Arc::new(transport_config())
}

pub(super) fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("10 s is a valid idle timeout")));
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    t.datagram_send_buffer_size(DATAGRAM_BUFFER);
    t.initial_mtu(INITIAL_MTU);
    // BBR, not quinn's default Cubic: datagrams are congestion-controlled, and a loss-based
    // controller reads a long path's random loss as congestion. Measured through a proxy with
    // 40 ms each way and 1% loss (`relay/tests/link.rs`): at 1 and 2 Mbyte/s offered, Cubic let
    // 83% and 59% of the datagrams through, BBR 98.5-98.7% (every one the path did not drop).
    // quinn calls its BBR experimental; it is the one that fits media over long-haul links.
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    t
}

/// Connection IDs of links: 8 random bytes, any of which a relay answers with a stateless
/// reset when it knows no such connection (quinn's default generator signs its IDs with a key
/// drawn at start and drops packets whose ID it did not sign, which after a restart is every
/// packet of every link the peers still hold).
struct LinkCids;

impl quinn::ConnectionIdGenerator for LinkCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; 8]>())
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The endpoint settings of links. The stateless-reset key is derived from the relay's private
/// key, so it survives a restart: a peer still holding a link to the relay's previous process
/// gets a reset it can verify for its next packet, and links again at once. (quinn's default
/// connection IDs are checked with a key drawn at start, so a restarted relay would drop those
/// packets as junk instead of answering: see [`LinkCids`].)
pub(super) fn endpoint_config(tls: &LinkTls) -> quinn::EndpointConfig {
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &tls.stateless_reset_secret());
    let mut config = quinn::EndpointConfig::new(Arc::new(reset));
    config.cid_generator(|| Box::new(LinkCids));
    config
}

/// One relay's QUIC endpoint for links.
#[derive(Debug)]
pub struct LinkEndpoint {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    tls: Arc<LinkTls>,
}

impl LinkEndpoint {
    /// Listens on `addr` (call within a Tokio runtime).
    pub fn bind(addr: SocketAddr, tls: LinkTls) -> anyhow::Result<Self> {
        Self::bind_with(addr, tls, transport())
    }

    /// [`bind`](Self::bind) with path MTU discovery off, so that a test sees the link's
    /// datagram size before discovery, as a long-haul path does for its first round trips.
    #[cfg(feature = "testkit")]
    pub fn bind_without_mtu_discovery(addr: SocketAddr, tls: LinkTls) -> anyhow::Result<Self> {
        let mut t = transport_config();
        t.mtu_discovery_config(None);
        Self::bind_with(addr, tls, Arc::new(t))
    }

    fn bind_with(addr: SocketAddr, tls: LinkTls, transport: Arc<quinn::TransportConfig>) -> anyhow::Result<Self> {
        let crypto = QuicServerConfig::try_from(tls.server_config()?).context("link TLS for QUIC")?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::clone(&transport));
        let crypto = QuicClientConfig::try_from(tls.client_config()?).context("link TLS for QUIC")?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport);
        let socket = std::net::UdpSocket::bind(addr).with_context(|| format!("link.listen: binding {addr}"))?;
        let config = endpoint_config(&tls);
        let endpoint = quinn::Endpoint::new(config, Some(server), socket, Arc::new(quinn::TokioRuntime))
            .with_context(|| format!("link.listen: {addr}"))?;
        Ok(Self { endpoint, client, tls: Arc::new(tls) })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn relay_id(&self) -> &str {
        self.tls.relay_id()
    }

    /// Certificates refused, by side and reason.
    pub fn refusals(&self) -> &super::tls::Refusals {
        self.tls.refusals()
    }

    /// The next relay trying to link in, its handshake not started; `None` once the endpoint is
    /// closed. Admit it with [`admit`](Self::admit) in a task of its own: a handshake may take
    /// up to [`HANDSHAKE_TIMEOUT`], and a silent peer must not hold up the others.
    pub async fn incoming(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Handshake and admission of a relay linking in, within [`HANDSHAKE_TIMEOUT`].
    pub async fn admit(&self, incoming: quinn::Incoming) -> Result<Link, LinkError> {
        let remote = incoming.remote_address();
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.admit_now(incoming))
            .await
            .unwrap_or_else(|_| Err(LinkError::Failed(format!("{remote}: no handshake within {HANDSHAKE_TIMEOUT:?}"))))
    }

    /// The next relay admitted, admitting one at a time (tests, tools); `None` once the endpoint
    /// is closed. Relays refused on the way are counted and skipped. A relay process uses
    /// [`incoming`](Self::incoming) and [`admit`](Self::admit) instead (`shell::links`).
    pub async fn accept(&self) -> Option<Link> {
        while let Some(incoming) = self.incoming().await {
            let remote = incoming.remote_address();
            match self.admit(incoming).await {
                Ok(link) => return Some(link),
                Err(e) => debug!(%remote, "link refused: {e}"),
            }
        }
        None
    }

    async fn admit_now(&self, incoming: quinn::Incoming) -> Result<Link, LinkError> {
        let connecting = incoming.accept().map_err(|e| LinkError::Failed(format!("accepting: {e}")))?;
        // A certificate that is presented and bad fails here, counted by the verifier.
        let connection = connecting.await.map_err(|e| LinkError::Failed(format!("handshake: {e}")))?;
        let peer = connection
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| certs.first().and_then(|c| cluster::pki::relay_id_of(c)));
        let Some(peer) = peer else {
            // No certificate at all (a verified one always names a relay: the verifier checks).
            self.tls.refusals().count("accept", Refusal::NoCertificate);
            connection.close(CLOSE_REFUSED.into(), b"a relay certificate from the cluster CA is required");
            return Err(LinkError::Refused(Refusal::NoCertificate));
        };
        let welcome = async {
            let mut stream = connection.open_uni().await?;
            stream.write_all(WELCOME).await?;
            stream.finish()?;
            anyhow::Ok(())
        };
        welcome.await.map_err(|e| LinkError::Failed(format!("welcoming {peer}: {e:#}")))?;
        Ok(Link { peer, connection })
    }

    /// A link to relay `relay_id` at `addr`: its certificate must be from the CA and for that
    /// relay id, and it must admit this relay.
    pub async fn connect(&self, addr: SocketAddr, relay_id: &str) -> Result<Link, LinkError> {
        super::tls::server_name(relay_id).map_err(|e| LinkError::Failed(format!("{e:#}")))?;
        let attempt = async {
            let connecting = self
                .endpoint
                .connect_with(self.client.clone(), addr, relay_id)
                .map_err(|e| LinkError::Failed(format!("connecting to {relay_id} at {addr}: {e}")))?;
            let connection = connecting.await.map_err(|e| self.failure(relay_id, addr, e))?;
            let mut welcome = connection.accept_uni().await.map_err(|e| self.failure(relay_id, addr, e))?;
            let got = welcome
                .read_to_end(WELCOME.len())
                .await
                .map_err(|e| LinkError::Failed(format!("{relay_id} at {addr}: reading its welcome: {e}")))?;
            if got != WELCOME {
                connection.close(CLOSE_REFUSED.into(), b"unexpected welcome");
                return Err(LinkError::Failed(format!("{relay_id} at {addr}: not a relay link welcome")));
            }
            Ok(Link { peer: relay_id.to_owned(), connection })
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await.unwrap_or_else(|_| {
            Err(LinkError::Failed(format!("{relay_id} at {addr}: no link within {HANDSHAKE_TIMEOUT:?}")))
        })
    }

    /// A connection error on the connecting side: a certificate this relay refused (counted by
    /// its verifier; the error names the reason) or a refusal or failure on the peer's side.
    fn failure(&self, relay_id: &str, addr: SocketAddr, e: quinn::ConnectionError) -> LinkError {
        LinkError::Failed(format!("{relay_id} at {addr}: {e}"))
    }

    /// Stops accepting and closes every link.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"relay stopping");
    }

    /// Waits until every link's close has been sent.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}
