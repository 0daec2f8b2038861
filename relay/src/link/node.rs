//! A relay's links, sans-IO: one QUIC endpoint (`quinn-proto`) and its connections, driven by
//! the thread that owns them. Datagrams from the link socket go in with
//! [`handle_datagram`](LinkNode::handle_datagram), what to send comes out of
//! [`poll_transmit`](LinkNode::poll_transmit), what happened out of
//! [`poll_event`](LinkNode::poll_event), and [`poll_timeout`](LinkNode::poll_timeout) says when
//! to call [`handle_timeout`](LinkNode::handle_timeout). No task, no lock, no wake: the SFU
//! thread drives it beside str0m, so a packet's link copy leaves in the same batch as the home
//! relay's own viewers' copies, and a datagram from a peer reaches the SFU in the call that read
//! it.
//!
//! The protocol is the one [`super::endpoint`] speaks (either side of a link may be either):
//! the TLS handshake checks the peer's certificate against the cluster CA (see [`super::tls`]);
//! the accepting relay refuses a peer without a certificate, then opens a unidirectional
//! *welcome* stream carrying [`WELCOME`]; the connecting relay counts the link up once it has
//! read it. Each side then opens one unidirectional stream for its control messages and reads
//! the peer's; media goes as datagrams, or on the control stream as `Control::Oversize` when a
//! packet does not fit the path's datagrams.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{
    ClientConfig, Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint, Event, ReadError,
    SendDatagramError, ServerConfig, StreamEvent, StreamId, Transmit, TransportConfig, VarInt, WriteError,
};
use rustls::pki_types::CertificateDer;
use tracing::{debug, info, warn};

use super::endpoint::{CLOSE_REFUSED, DatagramDrop, HANDSHAKE_TIMEOUT, WELCOME, endpoint_config, transport_config};
use super::stream::ControlFrames;
use super::tls::{LinkTls, Refusal};
use super::wire::Control;

/// Handshakes of relays linking in at once; more are refused until some end.
pub const MAX_ADMISSIONS: usize = 64;
/// QUIC application close code for a peer whose control stream is malformed.
pub const CLOSE_MALFORMED: u32 = 0x101;
/// QUIC application close code for a link that a newer link to the same relay replaced.
const CLOSE_REPLACED: u32 = 0;
/// Control bytes waiting for the peer's flow control, at most; a peer that reads no more
/// than this behind is not reading its control stream, and its link is closed.
pub const MAX_CONTROL_BACKLOG: usize = 16 << 20;
/// Datagrams per [`Transmit`] (one GSO batch).
pub const MAX_SEGMENTS: usize = 10;

/// What happened on the links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A link to `peer` is up (admitted, or opened by this relay); it replaces any older link
    /// to the same relay.
    Linked { peer: Arc<str> },
    /// The link to `peer` closed.
    Closed { peer: Arc<str>, reason: String },
    /// An attempt to open a link to `peer` failed.
    Failed { peer: Arc<str>, reason: String },
    /// A media datagram from `peer` (by datagram, or on the stream when it did not fit one).
    Datagram { peer: Arc<str>, data: Bytes },
    /// A control message from `peer`.
    Control { peer: Arc<str>, message: Control },
}

/// How a media packet went out on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Datagram,
    /// Too large for the path's datagrams: on the reliable stream instead.
    Stream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// TLS handshake under way.
    Handshaking,
    /// Connecting side: handshake done, the peer's welcome not read yet.
    Welcoming,
    Up,
    /// Closed by this side or lost; waiting to be drained.
    Closing,
}

/// One connection and what the link protocol keeps of it.
struct Conn {
    conn: Connection,
    /// Known from the start when connecting; from the certificate when accepting.
    peer: Option<Arc<str>>,
    accepting: bool,
    phase: Phase,
    /// A link not up by then is closed.
    deadline: Instant,
    /// Why this side closed it, for the event (quinn only says "locally closed").
    closed_because: Option<String>,
    /// Connecting side: the accepting side's welcome stream, and what it carried so far.
    welcome: Option<(StreamId, Vec<u8>)>,
    /// This side's control stream, and bytes not yet taken by it.
    control_out: Option<StreamId>,
    backlog: VecDeque<u8>,
    /// The peer's control stream, and the frames read from it.
    control_in: Option<StreamId>,
    frames: ControlFrames,
}

/// Every link of one relay, sans-IO (see the module docs).
pub struct LinkNode {
    endpoint: Endpoint,
    server: Arc<ServerConfig>,
    client: ClientConfig,
    tls: Arc<LinkTls>,
    conns: HashMap<ConnectionHandle, Conn>,
    /// The link up to each peer.
    up: HashMap<Arc<str>, ConnectionHandle>,
    events: VecDeque<NodeEvent>,
    /// Packets the endpoint answers itself (stateless resets, refusals), with their bytes.
    responses: VecDeque<(Transmit, Vec<u8>)>,
    /// Connections in the order [`poll_transmit`](Self::poll_transmit) asks them, rotated so
    /// that one busy link does not keep the others waiting.
    order: VecDeque<ConnectionHandle>,
    closing: bool,
    /// Control frames of types this version does not know, skipped (links closed included).
    unknown_frames: u64,
}

impl std::fmt::Debug for LinkNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkNode").field("relay_id", &self.tls.relay_id()).field("links", &self.up.len()).finish()
    }
}

impl LinkNode {
    /// A node for the relay whose credentials are `tls`, with the link transport settings of
    /// [`super::endpoint`].
    pub fn new(tls: LinkTls) -> anyhow::Result<Self> {
        Self::with_transport(tls, transport_config())
    }

    /// [`new`](Self::new) with other transport settings (tests: no MTU discovery).
    pub fn with_transport(tls: LinkTls, transport: TransportConfig) -> anyhow::Result<Self> {
        let transport = Arc::new(transport);
        let crypto = QuicServerConfig::try_from(tls.server_config()?).context("link TLS for QUIC")?;
        let mut server = ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::clone(&transport));
        let crypto = QuicClientConfig::try_from(tls.client_config()?).context("link TLS for QUIC")?;
        let mut client = ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport);
        let server = Arc::new(server);
        let endpoint = Endpoint::new(Arc::new(endpoint_config(&tls)), Some(Arc::clone(&server)), true, None);
        Ok(Self {
            endpoint,
            server,
            client,
            tls: Arc::new(tls),
            conns: HashMap::new(),
            up: HashMap::new(),
            events: VecDeque::new(),
            responses: VecDeque::new(),
            order: VecDeque::new(),
            closing: false,
            unknown_frames: 0,
        })
    }

    pub fn relay_id(&self) -> &str {
        self.tls.relay_id()
    }

    pub fn tls(&self) -> &LinkTls {
        &self.tls
    }

    /// The relays linked now.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<str>> {
        self.up.keys()
    }

    pub fn is_linked(&self, peer: &str) -> bool {
        self.up.contains_key(peer)
    }

    /// The link's current round-trip time estimate.
    pub fn rtt(&self, peer: &str) -> Option<Duration> {
        self.up.get(peer).and_then(|ch| self.conns.get(ch)).map(|c| c.conn.rtt())
    }

    /// Sends an ACK-eliciting packet on every link, so that both ends keep measuring its RTT.
    /// (A keep-alive goes only from the end whose timer fires first: receiving it resets the
    /// other end's, which then only acknowledges and never samples the RTT again. Call this as
    /// often as the RTT is wanted fresh.)
    pub fn ping(&mut self) {
        for ch in self.up.values() {
            if let Some(c) = self.conns.get_mut(ch) {
                c.conn.ping();
            }
        }
    }

    /// The largest media datagram the link to `peer` takes now.
    pub fn max_datagram_size(&mut self, peer: &str) -> Option<usize> {
        let ch = self.up.get(peer)?;
        self.conns.get_mut(ch)?.conn.datagrams().max_size()
    }

    /// Control frames of types this version does not know, skipped so far.
    pub fn unknown_frames(&self) -> u64 {
        self.unknown_frames + self.conns.values().map(|c| c.frames.skipped()).sum::<u64>()
    }

    /// Connections open or closing (links up, handshakes, links draining).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Starts opening a link to relay `relay_id` at `addr`; its end is a
    /// [`NodeEvent::Linked`] or a [`NodeEvent::Failed`]. The peer's certificate must be from
    /// the CA and for that relay id, and it must admit this relay.
    pub fn connect(&mut self, now: Instant, addr: SocketAddr, relay_id: &str) -> anyhow::Result<()> {
        anyhow::ensure!(!self.closing, "the relay is stopping");
        super::tls::server_name(relay_id)?;
        let (ch, conn) = self
            .endpoint
            .connect(now, self.client.clone(), addr, relay_id)
            .map_err(|e| anyhow::anyhow!("connecting to {relay_id} at {addr}: {e}"))?;
        self.insert(ch, conn, Some(Arc::from(relay_id)), false, now);
        Ok(())
    }

    fn insert(
        &mut self,
        ch: ConnectionHandle,
        conn: Connection,
        peer: Option<Arc<str>>,
        accepting: bool,
        now: Instant,
    ) {
        let c = Conn {
            conn,
            peer,
            accepting,
            phase: Phase::Handshaking,
            deadline: now + HANDSHAKE_TIMEOUT,
            closed_because: None,
            welcome: None,
            control_out: None,
            backlog: VecDeque::new(),
            control_in: None,
            frames: ControlFrames::default(),
        };
        self.conns.insert(ch, c);
        self.order.push_back(ch);
    }

    /// A datagram that arrived on the link socket from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: BytesMut) {
        let mut buf = Vec::new();
        match self.endpoint.handle(now, from, None, None, data, &mut buf) {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(c) = self.conns.get_mut(&ch) {
                    c.conn.handle_event(event);
                    self.process(ch, now);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                let handshakes = self.conns.values().filter(|c| c.accepting && c.phase == Phase::Handshaking).count();
                if self.closing || handshakes >= MAX_ADMISSIONS {
                    debug!(remote = %incoming.remote_address(), handshakes, "link handshake refused: too many at once");
                    let t = self.endpoint.refuse(incoming, &mut buf);
                    self.responses.push_back((t, buf));
                    return;
                }
                match self.endpoint.accept(incoming, now, &mut buf, Some(Arc::clone(&self.server))) {
                    Ok((ch, conn)) => {
                        self.insert(ch, conn, None, true, now);
                        self.process(ch, now);
                    }
                    Err(e) => {
                        debug!(error = %e.cause, "link handshake not accepted");
                        if let Some(t) = e.response {
                            self.responses.push_back((t, buf));
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(t)) => self.responses.push_back((t, buf)),
            None => {}
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.conns
            .values_mut()
            .filter_map(|c| {
                let handshake = (c.phase != Phase::Up && c.phase != Phase::Closing).then_some(c.deadline);
                match (c.conn.poll_timeout(), handshake) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .min()
    }

    /// Runs the timers due at `now` (retransmissions, keep-alives, idle timeouts, handshakes
    /// that took too long).
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in due {
            let Some(c) = self.conns.get_mut(&ch) else { continue };
            if matches!(c.phase, Phase::Handshaking | Phase::Welcoming) && c.deadline <= now {
                let why = format!("no link within {HANDSHAKE_TIMEOUT:?}");
                close(c, now, CLOSE_REFUSED, why);
            }
            if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                c.conn.handle_timeout(now);
            }
            self.process(ch, now);
        }
    }

    /// The next packets to send: `buf` is cleared and filled with `size` bytes, one datagram,
    /// or several of `segment_size` each (the last may be shorter) to the same destination.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        buf.clear();
        if let Some((t, data)) = self.responses.pop_front() {
            buf.extend_from_slice(&data[..t.size]);
            return Some(t);
        }
        for _ in 0..self.order.len() {
            let ch = self.order.pop_front()?;
            self.order.push_back(ch);
            let Some(c) = self.conns.get_mut(&ch) else { continue };
            if let Some(t) = c.conn.poll_transmit(now, MAX_SEGMENTS, buf) {
                // Sending may have moved the connection on (a close sent, so it can drain).
                self.process(ch, now);
                return Some(t);
            }
        }
        None
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// Sends a media packet to `peer`: as a datagram (when the send buffer is full quinn drops
    /// the *oldest* queued datagrams, the right choice for live media), or, when it is larger
    /// than the path's datagrams, on the control stream as `Control::Oversize`.
    pub fn send_media(&mut self, now: Instant, peer: &str, data: Bytes) -> Result<Sent, DatagramDrop> {
        let Some(&ch) = self.up.get(peer) else { return Err(DatagramDrop::LinkLost) };
        let Some(c) = self.conns.get_mut(&ch) else { return Err(DatagramDrop::LinkLost) };
        match c.conn.datagrams().send(data.clone(), true) {
            Ok(()) => Ok(Sent::Datagram),
            Err(SendDatagramError::TooLarge) => {
                if data.len() > super::wire::MAX_OVERSIZE {
                    let max = c.conn.datagrams().max_size().unwrap_or(0);
                    return Err(DatagramDrop::TooLarge { size: data.len(), max });
                }
                self.send_control(now, peer, &Control::Oversize { datagram: data.to_vec() });
                Ok(Sent::Stream)
            }
            Err(SendDatagramError::UnsupportedByPeer | SendDatagramError::Disabled) => Err(DatagramDrop::Unsupported),
            // Not with `drop` set: the oldest queued datagram makes room.
            Err(SendDatagramError::Blocked(_)) => Err(DatagramDrop::LinkLost),
        }
    }

    /// Sends a control message to `peer`, in order after the earlier ones; false if there is
    /// no link to it.
    pub fn send_control(&mut self, now: Instant, peer: &str, message: &Control) -> bool {
        let Some(&ch) = self.up.get(peer) else { return false };
        let mut frame = Vec::new();
        if let Err(e) = message.encode(&mut frame) {
            warn!(peer, error = %e, "link control message not sent: it does not encode");
            return false;
        }
        let Some(c) = self.conns.get_mut(&ch) else { return false };
        c.backlog.extend(frame);
        flush_control(c);
        if c.backlog.len() > MAX_CONTROL_BACKLOG {
            warn!(peer, backlog = c.backlog.len(), "link peer does not read its control stream: link closed");
            close(c, now, CLOSE_MALFORMED, "the peer does not read its control stream".into());
            self.process(ch, now);
        }
        true
    }

    /// Closes the link to `peer` (it is not wanted any more); false if there was none.
    pub fn disconnect(&mut self, now: Instant, peer: &str) -> bool {
        let Some(ch) = self.up.remove(peer) else { return false };
        if let Some(c) = self.conns.get_mut(&ch) {
            close(c, now, 0, "link no longer wanted".into());
        }
        self.process(ch, now);
        self.events.push_back(NodeEvent::Closed { peer: Arc::from(peer), reason: "link no longer wanted".into() });
        true
    }

    /// Closes every link and refuses new ones; keep driving the node until
    /// [`connections`](Self::connections) is 0 (or a short while) so that the closes go out.
    pub fn close(&mut self, now: Instant) {
        self.closing = true;
        for c in self.conns.values_mut() {
            close(c, now, 0, "relay stopping".into());
        }
        let handles: Vec<_> = self.conns.keys().copied().collect();
        for ch in handles {
            self.process(ch, now);
        }
    }

    /// Brings connection `ch` up to date after anything happened to it: endpoint events, the
    /// link protocol's steps, events for the owner; removes it once drained.
    fn process(&mut self, ch: ConnectionHandle, now: Instant) {
        let mut drained = false;
        {
            let Some(c) = self.conns.get_mut(&ch) else { return };
            while let Some(event) = c.conn.poll_endpoint_events() {
                drained |= event.is_drained();
                if let Some(event) = self.endpoint.handle_event(ch, event) {
                    c.conn.handle_event(event);
                }
            }
        }
        while let Some(event) = self.conns.get_mut(&ch).and_then(|c| c.conn.poll()) {
            self.step(ch, now, event);
        }
        // Closed by this side (quinn reports only the peer's closes and the path's failures).
        if self.conns.get(&ch).is_some_and(|c| c.phase != Phase::Closing && c.conn.is_closed()) {
            self.lost(ch, "closed".into());
        }
        if drained {
            self.conns.remove(&ch);
            self.order.retain(|&h| h != ch);
        }
    }

    /// One connection event.
    fn step(&mut self, ch: ConnectionHandle, now: Instant, event: Event) {
        let Some(c) = self.conns.get_mut(&ch) else { return };
        match event {
            Event::HandshakeDataReady | Event::DatagramsUnblocked => {}
            Event::Connected if c.accepting => self.admit(ch, now),
            Event::Connected => c.phase = Phase::Welcoming,
            Event::ConnectionLost { reason } => self.lost(ch, reason_of(&reason)),
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                let mut opened = Vec::new();
                while let Some(id) = c.conn.streams().accept(Dir::Uni) {
                    // The connecting side's first stream from the peer is its welcome.
                    if !c.accepting && c.phase != Phase::Up && c.welcome.is_none() {
                        c.welcome = Some((id, Vec::new()));
                    } else if c.control_in.is_none() {
                        c.control_in = Some(id);
                    } else {
                        // This protocol has no more streams: not read, so stopped.
                        let _ = c.conn.recv_stream(id).stop(VarInt::from_u32(1));
                        continue;
                    }
                    opened.push(id);
                }
                for id in opened {
                    self.read(ch, now, id);
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => self.read(ch, now, id),
            Event::Stream(StreamEvent::Writable { .. }) => flush_control(c),
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi } | StreamEvent::Available { .. }) => {}
            Event::Stream(StreamEvent::Finished { .. } | StreamEvent::Stopped { .. }) => {}
            Event::DatagramReceived => {
                let peer = c.peer.clone().filter(|_| c.phase == Phase::Up);
                while let Some(data) = c.conn.datagrams().recv() {
                    if let Some(peer) = &peer {
                        self.events.push_back(NodeEvent::Datagram { peer: Arc::clone(peer), data });
                    }
                }
            }
        }
    }

    /// Accepting side, handshake done: the peer's certificate names it (the verifier has
    /// checked it against the CA, and counted any refusal); one that presented none is refused
    /// now. Then the welcome, and the link is up.
    fn admit(&mut self, ch: ConnectionHandle, now: Instant) {
        let Some(c) = self.conns.get_mut(&ch) else { return };
        let peer = c
            .conn
            .crypto_session()
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| certs.first().and_then(|c| cluster::pki::relay_id_of(c)));
        let Some(peer) = peer else {
            self.tls.refusals().count("accept", Refusal::NoCertificate);
            let why = "a relay certificate from the cluster CA is required";
            c.conn.close(now, CLOSE_REFUSED.into(), Bytes::from_static(why.as_bytes()));
            c.phase = Phase::Closing;
            debug!(remote = %c.conn.remote_address(), "link refused: no certificate");
            return;
        };
        let Some(welcome) = c.conn.streams().open(Dir::Uni) else {
            close(c, now, CLOSE_REFUSED, "no stream for the welcome".into());
            return;
        };
        let mut send = c.conn.send_stream(welcome);
        // A new connection's stream takes this much at once.
        let written = send.write(WELCOME).unwrap_or(0);
        let _ = send.finish();
        if written != WELCOME.len() {
            close(c, now, CLOSE_REFUSED, "the welcome did not fit the stream".into());
            return;
        }
        info!(%peer, remote = %c.conn.remote_address(), "relay linked in");
        c.peer = Some(Arc::from(peer));
        self.link_up(ch, now);
    }

    /// Connection `ch` is a link now: its control stream opens and it replaces any older link
    /// to the same relay.
    fn link_up(&mut self, ch: ConnectionHandle, now: Instant) {
        let Some(c) = self.conns.get_mut(&ch) else { return };
        let Some(peer) = c.peer.clone() else { return };
        c.phase = Phase::Up;
        c.control_out = c.conn.streams().open(Dir::Uni);
        if let Some(old) = self.up.insert(Arc::clone(&peer), ch)
            && let Some(o) = self.conns.get_mut(&old)
        {
            // The peer linked again (it restarted, or both sides opened at once).
            close(o, now, CLOSE_REPLACED, "replaced by a new link".into());
        }
        self.events.push_back(NodeEvent::Linked { peer });
        // Control frames that arrived with the welcome.
        if let Some(id) = self.conns.get(&ch).and_then(|c| c.control_in) {
            self.read(ch, now, id);
        }
    }

    /// Reads what stream `id` of connection `ch` has.
    fn read(&mut self, ch: ConnectionHandle, now: Instant, id: StreamId) {
        let Some(c) = self.conns.get_mut(&ch) else { return };
        let is_welcome = c.welcome.as_ref().is_some_and(|(w, _)| *w == id);
        if !is_welcome && c.control_in != Some(id) {
            return;
        }
        let mut got = Vec::new();
        let mut finished = false;
        let mut failed = None;
        {
            let mut stream = c.conn.recv_stream(id);
            let Ok(mut chunks) = stream.read(true) else { return };
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(chunk)) => got.push(chunk.bytes),
                    Ok(None) => {
                        finished = true;
                        break;
                    }
                    Err(ReadError::Blocked) => break,
                    Err(ReadError::Reset(code)) => {
                        failed = Some(format!("reset by the peer (code {code})"));
                        break;
                    }
                }
            }
            let _ = chunks.finalize();
        }
        if is_welcome {
            let Some((_, seen)) = c.welcome.as_mut() else { return };
            for b in &got {
                seen.extend_from_slice(b);
            }
            if seen.len() > WELCOME.len() || failed.is_some() || (finished && seen.as_slice() != WELCOME) {
                close(c, now, CLOSE_REFUSED, "not a relay link welcome".into());
            } else if finished && c.phase == Phase::Welcoming {
                c.welcome = None;
                if let Some(peer) = &c.peer {
                    info!(%peer, remote = %c.conn.remote_address(), "linked to relay");
                }
                self.link_up(ch, now);
            }
            return;
        }
        for b in &got {
            c.frames.push(b);
        }
        if c.phase != Phase::Up {
            return;
        }
        let Some(peer) = c.peer.clone() else { return };
        loop {
            match c.frames.next_message() {
                Ok(Some(Control::Oversize { datagram })) => {
                    self.events.push_back(NodeEvent::Datagram { peer: Arc::clone(&peer), data: datagram.into() });
                }
                Ok(Some(message)) => self.events.push_back(NodeEvent::Control { peer: Arc::clone(&peer), message }),
                Ok(None) => break,
                Err(e) => {
                    warn!(%peer, error = %e, "malformed link control stream: link closed");
                    close(c, now, CLOSE_MALFORMED, format!("malformed control frame: {e}"));
                    return;
                }
            }
        }
        if finished || failed.is_some() {
            // The peer's control stream ended: it is not speaking this protocol any more.
            let why = failed.unwrap_or_else(|| "the peer ended its control stream".into());
            close(c, now, CLOSE_MALFORMED, why);
        }
    }

    /// Connection `ch` is lost (closed by either side, timed out, reset): a link up is closed,
    /// an attempt to open one failed.
    fn lost(&mut self, ch: ConnectionHandle, reason: String) {
        let Some(c) = self.conns.get_mut(&ch) else { return };
        let was = std::mem::replace(&mut c.phase, Phase::Closing);
        if was == Phase::Closing {
            return;
        }
        self.unknown_frames += c.frames.skipped();
        c.frames = ControlFrames::default();
        c.backlog = VecDeque::new();
        let why = c.closed_because.take().unwrap_or(reason);
        let Some(peer) = c.peer.clone() else {
            debug!(remote = %c.conn.remote_address(), "link refused: {why}");
            return;
        };
        match was {
            Phase::Up if self.up.get(&peer) == Some(&ch) => {
                self.up.remove(&peer);
                info!(%peer, reason = %why, "relay link closed");
                self.events.push_back(NodeEvent::Closed { peer, reason: why });
            }
            Phase::Handshaking | Phase::Welcoming if !c.accepting => {
                self.events.push_back(NodeEvent::Failed { peer, reason: why });
            }
            _ => {}
        }
    }

    /// Test only: writes `bytes` on this side's control stream to `peer` as they are.
    #[cfg(test)]
    fn send_raw_control(&mut self, peer: &str, bytes: &[u8]) {
        let c = self.conns.get_mut(&self.up[peer]).unwrap();
        c.backlog.extend(bytes);
        flush_control(c);
    }
}

/// Why quinn says a connection was lost, in words for the log and the owner.
fn reason_of(reason: &ConnectionError) -> String {
    match reason {
        ConnectionError::ApplicationClosed(close) => {
            format!("closed by the peer: {} (code {})", String::from_utf8_lossy(&close.reason), close.error_code)
        }
        ConnectionError::Reset => "reset by the peer (it restarted)".into(),
        ConnectionError::TimedOut => "timed out".into(),
        other => other.to_string(),
    }
}

/// Closes a connection from this side, saying why in the event that follows.
fn close(c: &mut Conn, now: Instant, code: u32, why: String) {
    if c.phase == Phase::Closing || c.conn.is_closed() {
        return;
    }
    c.conn.close(now, code.into(), Bytes::from(why.clone().into_bytes()));
    c.closed_because = Some(why);
}

/// Hands the connection's control backlog to its stream, as much as flow control takes.
fn flush_control(c: &mut Conn) {
    let Some(id) = c.control_out else { return };
    while !c.backlog.is_empty() {
        let (front, _) = c.backlog.as_slices();
        match c.conn.send_stream(id).write(front) {
            Ok(n) if n > 0 => {
                c.backlog.drain(..n);
            }
            Ok(_) | Err(WriteError::Blocked) => return,
            Err(e) => {
                debug!(error = %e, "link control stream closed");
                c.backlog.clear();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
