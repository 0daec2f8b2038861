//! TURN over TCP and over TLS (RFC 8656 §3.1, with UDP relays toward peers), for players whose
//! networks block UDP: one thread per core, each with its own SO_REUSEPORT socket on every TCP
//! and TLS listening address, driven by a mio loop like the UDP workers.
//!
//! **One core per listening socket.** A TURN allocation is named by its 5-tuple; on a stream
//! transport the client address of a connection is unique only per listening address (a client
//! may use one source port towards 3478 and 443 at once). So each listener of a worker has its
//! own `TurnServer`, and the client address identifies the connection within it. The relay port
//! pool and quotas are shared with the UDP workers, as always.
//!
//! **Framing (RFC 8656 §12.5):** on the stream, a message whose first two bits are 00 is STUN
//! (20-byte header plus its length); 01 is ChannelData (4-byte header plus its length, padded to
//! a multiple of 4). Anything else cannot be resynchronised, so it closes the connection, as do
//! frames over [`MAX_FRAME`] ([`crate::turn::framing`]). What the relay sends to a client is framed the same way, ChannelData
//! padded. Messages reach the core one frame at a time, exactly as datagrams would.
//!
//! **TLS** is rustls driven without blocking (`read_tls`/`process_new_packets`/`write_tls`), TLS
//! 1.2 and 1.3. A renewed certificate (reload) applies to new connections; open ones keep the
//! session they negotiated, so a renewal drops nothing.
//!
//! **Back-pressure.** Relayed data for a client whose connection cannot take it (its send queue
//! holds [`MAX_QUEUED`] bytes) is dropped a whole message at a time and counted, as a full UDP
//! socket buffer would drop it; the stream never carries a partial message.
//!
//! **Limits:** connections per source IP and in total (shared by all workers), a deadline for
//! the TLS handshake and the first message, and an idle timeout for connections without an
//! allocation. An allocation lives as long as its connection: when the connection closes, the
//! allocation is removed.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::{debug, error, warn};

use super::control::{Command, ConnLimits, ConnTable};
use super::relays::RelaySet;
use super::udp::{self, RecvBatch, recv_error, send_counted};
use crate::turn::framing::{Frame, MAX_FRAME, frame};
use crate::turn::stats::{ConnEvent, DropReason, Stats};
use crate::turn::wire::PEER_HEADROOM;
use crate::turn::{ClientAddr, Event, PeerAddr, TurnServer};

/// Bytes queued for one client at most; relayed data beyond it is dropped and counted.
pub const MAX_QUEUED: usize = 256 * 1024;
/// Plaintext handed to rustls at once, when it has nothing left to send.
const TLS_CHUNK: usize = 64 * 1024;
/// Bytes read from one connection per turn of the loop before the others get theirs.
const READ_BUDGET: usize = 256 * 1024;

const WAKER: Token = Token(0);
const FIRST_LISTENER: usize = 1;
const FIRST_CONN: usize = 1 << 16;
const FIRST_RELAY: usize = 1 << 40;
/// The loop wakes at least this often: timers, the wall clock, commands.
const TICK: Duration = Duration::from_secs(1);

/// How a listening socket's connections talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
}

/// A listening socket, bound before the workers start.
pub struct StreamListener {
    pub socket: std::net::TcpListener,
    pub transport: Transport,
}

struct Listener {
    socket: TcpListener,
    transport: Transport,
    server: TurnServer,
    stats: Arc<Stats>,
    /// Client address → connection key.
    clients: HashMap<SocketAddr, usize, foldhash::fast::RandomState>,
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    listener: usize,
    tls: Option<Box<rustls::ServerConnection>>,
    /// Received plaintext not yet framed.
    inbuf: Vec<u8>,
    /// Framed messages for the client; `out[sent..]` is still to go.
    out: Vec<u8>,
    sent: usize,
    accepted: Instant,
    /// When the last complete message arrived (`None`: none yet).
    last_message: Option<Instant>,
}

impl Conn {
    fn queued(&self) -> usize {
        self.out.len() - self.sent
    }
}

/// Settings every stream worker shares.
#[derive(Clone)]
pub struct StreamSettings {
    pub relay_buffer: usize,
    pub limits: ConnLimits,
    pub table: Arc<ConnTable>,
    /// For TLS listeners; `None` when there are none.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

pub struct StreamWorker {
    poll: Poll,
    listeners: Vec<Listener>,
    conns: Slab<Conn>,
    relays: RelaySet,
    settings: StreamSettings,
    commands: Receiver<Command>,
    recv: RecvBatch,
    scratch: Box<[u8]>,
    /// Connections with data left to read after their budget.
    pending: Vec<usize>,
    /// Relay sockets with data left after their budget (mio is edge-triggered: no new event
    /// would come for what is already queued).
    pending_relays: Vec<usize>,
    /// Connections that got relayed data in the current batch (kept to reuse its allocation).
    touched: Vec<usize>,
    now: Instant,
    next_tick: Instant,
}

impl StreamWorker {
    /// A worker serving `listeners` (each paired with its own core).
    pub fn new(
        listeners: Vec<(StreamListener, TurnServer)>,
        settings: StreamSettings,
        commands: Receiver<Command>,
    ) -> io::Result<(Self, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut out = Vec::new();
        for (i, (l, server)) in listeners.into_iter().enumerate() {
            l.socket.set_nonblocking(true)?;
            let mut socket = TcpListener::from_std(l.socket);
            poll.registry().register(&mut socket, Token(FIRST_LISTENER + i), Interest::READABLE)?;
            let stats = server.stats();
            out.push(Listener { socket, transport: l.transport, server, stats, clients: HashMap::default() });
        }
        let now = Instant::now();
        let worker = Self {
            poll,
            listeners: out,
            conns: Slab::new(),
            relays: RelaySet::new(settings.relay_buffer, FIRST_RELAY),
            settings,
            commands,
            recv: RecvBatch::new(PEER_HEADROOM),
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
            pending: Vec::new(),
            pending_relays: Vec::new(),
            touched: Vec::new(),
            now,
            next_tick: now + TICK,
        };
        Ok((worker, waker))
    }

    /// Runs until told to stop.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.pending.is_empty() && self.pending_relays.is_empty() {
                let next = self.listeners.iter().filter_map(|l| l.server.poll_timeout()).min();
                let due = next.map_or(TICK, |t| t.saturating_duration_since(self.now));
                due.min(self.next_tick.saturating_duration_since(self.now))
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                error!(error = %e, "poll failed; TCP/TLS worker stopping");
                return;
            }
            self.now = Instant::now();
            if !self.handle_commands() {
                return;
            }
            for event in &events {
                match event.token().0 {
                    0 => {}
                    t if t >= FIRST_RELAY => {
                        if self.serve_relay(t - FIRST_RELAY) && !self.pending_relays.contains(&(t - FIRST_RELAY)) {
                            self.pending_relays.push(t - FIRST_RELAY);
                        }
                    }
                    t if t >= FIRST_CONN => {
                        let key = t - FIRST_CONN;
                        if event.is_writable() {
                            self.flush(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.serve_conn(key);
                        }
                    }
                    t => self.accept(t - FIRST_LISTENER),
                }
            }
            for key in std::mem::take(&mut self.pending) {
                self.serve_conn(key);
            }
            for key in std::mem::take(&mut self.pending_relays) {
                if self.serve_relay(key) {
                    self.pending_relays.push(key);
                }
            }
            let now = self.now;
            for l in 0..self.listeners.len() {
                if self.listeners[l].server.poll_timeout().is_some_and(|t| t <= now) {
                    self.listeners[l].server.handle_timeout(now);
                    self.after_core(l);
                }
            }
            if now >= self.next_tick {
                self.tick(now);
                self.next_tick = now + TICK;
            }
        }
    }

    /// Returns false when the worker must stop.
    fn handle_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::SetDraining(on)) => self.listeners.iter_mut().for_each(|l| l.server.set_draining(on)),
                Ok(Command::SetCredentials(c)) => {
                    self.listeners.iter_mut().for_each(|l| l.server.set_credentials(Arc::clone(&c)));
                }
                Ok(Command::SetConfig(c)) => {
                    self.listeners.iter_mut().for_each(|l| l.server.set_config(Arc::clone(&c)))
                }
                Ok(Command::SetTls(tls)) => self.settings.tls = Some(tls),
                Ok(Command::SetConnLimits(limits)) => self.settings.limits = limits,
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    /// Once a second: deadlines of connections, the cores' wall clocks.
    fn tick(&mut self, now: Instant) {
        let unix = cluster::time::unix_now();
        for l in &mut self.listeners {
            l.server.set_wall_clock(now, unix);
        }
        let limits = self.settings.limits;
        let expired: Vec<(usize, ConnEvent)> = self
            .conns
            .iter()
            .filter_map(|(key, c)| {
                let event = match c.last_message {
                    None if now.saturating_duration_since(c.accepted) >= limits.handshake_timeout => {
                        ConnEvent::HandshakeTimeout
                    }
                    Some(last)
                        if now.saturating_duration_since(last) >= limits.idle_timeout
                            && !self.listeners[c.listener].server.has_allocation(ClientAddr(c.peer)) =>
                    {
                        ConnEvent::IdleClosed
                    }
                    _ => return None,
                };
                Some((key, event))
            })
            .collect();
        for (key, event) in expired {
            self.close(key, event);
        }
    }

    fn accept(&mut self, l: usize) {
        if l >= self.listeners.len() {
            return;
        }
        loop {
            let listener = &self.listeners[l];
            let (mut stream, peer) = match listener.socket.accept() {
                // A dual-stack listener reports IPv4 clients as IPv4-mapped IPv6: the core (and
                // XOR-MAPPED-ADDRESS) see them as the IPv4 addresses they are.
                Ok((stream, peer)) => (stream, SocketAddr::new(peer.ip().to_canonical(), peer.port())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of file descriptors and the like: the next readiness event retries.
                    warn!(error = %e, "accepting a TCP connection");
                    return;
                }
            };
            let stats = &listener.stats;
            if let Err(refused) = self.settings.table.open(peer.ip(), &self.settings.limits) {
                stats.connection(refused);
                continue;
            }
            let tls = match listener.transport {
                Transport::Tcp => None,
                Transport::Tls => {
                    let Some(config) = &self.settings.tls else {
                        self.settings.table.close(peer.ip());
                        continue;
                    };
                    match rustls::ServerConnection::new(Arc::clone(config)) {
                        Ok(c) => Some(Box::new(c)),
                        Err(e) => {
                            warn!(error = %e, "creating a TLS session");
                            self.settings.table.close(peer.ip());
                            continue;
                        }
                    }
                }
            };
            // Small messages, latency-bound: no Nagle.
            let _ = stream.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(FIRST_CONN + key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!(error = %e, "registering a TCP connection");
                self.settings.table.close(peer.ip());
                continue;
            }
            entry.insert(Conn {
                stream,
                peer,
                listener: l,
                tls,
                inbuf: Vec::new(),
                out: Vec::new(),
                sent: 0,
                accepted: self.now,
                last_message: None,
            });
            let listener = &mut self.listeners[l];
            // A client address still mapped belongs to a connection that closed without the
            // worker noticing yet; the new one takes over.
            if let Some(old) = listener.clients.insert(peer, key) {
                debug!(%peer, old, "client address reused before its old connection closed");
            }
            listener.stats.connections_open.add(1);
            listener.stats.connection(ConnEvent::Accepted);
        }
    }

    /// Reads what a connection has (up to the budget), frames it and hands the messages to the
    /// core; closes the connection on end of stream or error.
    fn serve_conn(&mut self, key: usize) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            let read = match &mut conn.tls {
                None => match conn.stream.read(&mut self.scratch) {
                    Ok(0) => Err(ConnEvent::ClosedByClient),
                    Ok(n) => {
                        conn.inbuf.extend_from_slice(&self.scratch[..n]);
                        Ok(n)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => Err(ConnEvent::Error),
                },
                Some(tls) => read_tls(tls, &mut conn.stream, &mut conn.inbuf),
            };
            let n = match read {
                Ok(0) => break,
                Ok(n) => n,
                Err(event) => {
                    // What arrived before the end still counts.
                    self.process(key);
                    self.close(key, event);
                    return;
                }
            };
            if !self.process(key) {
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.pending.push(key);
                break;
            }
        }
        // A TLS handshake may have produced records to send.
        self.flush(key);
    }

    /// Hands every complete message in the connection's buffer to the core. False if the
    /// connection was closed (bad framing).
    fn process(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let l = conn.listener;
        let peer = ClientAddr(conn.peer);
        let mut inbuf = std::mem::take(&mut conn.inbuf);
        let mut at = 0;
        let mut framed = false;
        loop {
            match frame(&inbuf[at..]) {
                Frame::Incomplete => break,
                Frame::Invalid => {
                    self.close(key, ConnEvent::BadFraming);
                    return false;
                }
                Frame::Message { len, wire } => {
                    let message = &inbuf[at..at + len];
                    framed = true;
                    let listener = &mut self.listeners[l];
                    let mut sockets = self.relays.lend(self.poll.registry(), l);
                    if let Some(f) = listener.server.handle_client(self.now, peer, message, &mut sockets) {
                        match self.relays.by_port(f.port) {
                            Some(relay) => {
                                send_counted(&listener.stats, relay.socket.as_raw_fd(), f.peer.0, &message[f.payload]);
                            }
                            None => listener.stats.record_drop(DropReason::NoAllocation),
                        }
                    }
                    at += wire;
                    self.after_core(l);
                }
            }
        }
        inbuf.drain(..at);
        let Some(conn) = self.conns.get_mut(key) else { return false };
        if framed {
            conn.last_message = Some(self.now);
        }
        // Keep the buffer's allocation (unless a large frame grew it) for the next read.
        if inbuf.is_empty() && inbuf.capacity() > 2 * MAX_FRAME {
            inbuf = Vec::new();
        }
        conn.inbuf = inbuf;
        true
    }

    /// Routes the core's responses to their connections and closes removed allocations' sockets.
    fn after_core(&mut self, l: usize) {
        while let Some(t) = self.listeners[l].server.poll_transmit() {
            if let Some(&key) = self.listeners[l].clients.get(&t.to.0) {
                enqueue(&mut self.conns, &self.listeners[l].stats, key, &t.payload, false);
                self.flush(key);
            }
        }
        while let Some(event) = self.listeners[l].server.poll_event() {
            match event {
                Event::RelayClosed(port) => self.relays.close(self.poll.registry(), port),
            }
        }
    }

    /// Writes what is queued for the connection until the socket is full; closes it on error.
    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let result = match &mut conn.tls {
            None => {
                let mut result = Ok(());
                while conn.sent < conn.out.len() {
                    match conn.stream.write(&conn.out[conn.sent..]) {
                        Ok(0) => {
                            result = Err(ConnEvent::Error);
                            break;
                        }
                        Ok(n) => conn.sent += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            result = Err(ConnEvent::Error);
                            break;
                        }
                    }
                }
                result
            }
            Some(tls) => write_tls(tls, &mut conn.stream, &conn.out, &mut conn.sent),
        };
        if conn.sent == conn.out.len() {
            conn.out.clear();
            conn.sent = 0;
            if conn.out.capacity() > MAX_QUEUED {
                conn.out = Vec::new();
            }
        } else if conn.sent > MAX_QUEUED {
            conn.out.drain(..conn.sent);
            conn.sent = 0;
        }
        if let Err(event) = result {
            self.close(key, event);
        }
    }

    fn close(&mut self, key: usize, event: ConnEvent) {
        let Some(mut conn) = self.conns.try_remove(key) else { return };
        if let Some(tls) = &mut conn.tls
            && !tls.is_handshaking()
        {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut conn.stream);
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.settings.table.close(conn.peer.ip());
        let l = conn.listener;
        let listener = &mut self.listeners[l];
        if listener.clients.get(&conn.peer) == Some(&key) {
            listener.clients.remove(&conn.peer);
            listener.server.close_client(ClientAddr(conn.peer));
        }
        listener.stats.connections_open.add(-1);
        listener.stats.connection(event);
        self.pending.retain(|&k| k != key);
        self.after_core(l);
    }

    /// Receives from a relay socket and queues each datagram, framed by the core, for its client.
    /// True if the socket may have more than its budget of batches let it read.
    fn serve_relay(&mut self, key: usize) -> bool {
        for _ in 0..8 {
            let Some(relay) = self.relays.get(key) else { return false };
            let (port, l) = (relay.port, relay.owner);
            let n = match self.recv.recv(relay.socket.as_raw_fd()) {
                Ok(n) => n,
                Err(e) => {
                    if recv_error(&self.listeners[l].stats, e) {
                        continue;
                    }
                    return false;
                }
            };
            let mut touched = std::mem::take(&mut self.touched);
            let listener = &mut self.listeners[l];
            for i in 0..n {
                if self.recv.truncated(i) {
                    listener.stats.record_drop(DropReason::Truncated);
                    continue;
                }
                let from = PeerAddr(self.recv.source(i));
                let (buf, payload) = self.recv.buf_mut(i);
                let Some(to) = listener.server.handle_peer(self.now, port, from, buf, payload) else {
                    continue;
                };
                let Some(&conn) = listener.clients.get(&to.client.0) else {
                    listener.stats.record_drop(DropReason::NoAllocation);
                    continue;
                };
                enqueue(&mut self.conns, &listener.stats, conn, &self.recv.buf(i)[to.message], true);
                if !touched.contains(&conn) {
                    touched.push(conn);
                }
            }
            for &conn in &touched {
                self.flush(conn);
            }
            touched.clear();
            self.touched = touched;
            if n < udp::BATCH {
                return false;
            }
        }
        true
    }
}

/// Queues a message for a client, padded to a multiple of 4 (ChannelData over a stream, RFC 8656
/// §12.5; STUN messages already are). Relayed data (`droppable`) is dropped when the queue is
/// full; responses always go.
fn enqueue(conns: &mut Slab<Conn>, stats: &Stats, key: usize, message: &[u8], droppable: bool) {
    let Some(conn) = conns.get_mut(key) else { return };
    if droppable && conn.queued() + message.len() > MAX_QUEUED {
        stats.record_drop(DropReason::SendBufferFull);
        return;
    }
    conn.out.extend_from_slice(message);
    let pad = message.len().next_multiple_of(4) - message.len();
    conn.out.extend_from_slice(&[0u8; 3][..pad]);
}

/// Reads TLS records from the socket into rustls and the plaintext they carry into `inbuf`.
/// `Ok(0)`: nothing more to read now.
fn read_tls(
    tls: &mut rustls::ServerConnection,
    stream: &mut TcpStream,
    inbuf: &mut Vec<u8>,
) -> Result<usize, ConnEvent> {
    let closed = match tls.read_tls(stream) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
        Err(_) => return Err(ConnEvent::Error),
    };
    let state = match tls.process_new_packets() {
        Ok(state) => state,
        Err(e) => {
            debug!(error = %e, "TLS error");
            // Tell the client why (an alert), best effort.
            let _ = tls.write_tls(stream);
            return Err(ConnEvent::HandshakeFailed);
        }
    };
    let plain = state.plaintext_bytes_to_read();
    if plain > 0 {
        let start = inbuf.len();
        inbuf.resize(start + plain, 0);
        match tls.reader().read(&mut inbuf[start..]) {
            Ok(n) => inbuf.truncate(start + n),
            Err(_) => inbuf.truncate(start),
        }
    }
    if closed || state.peer_has_closed() {
        return Err(ConnEvent::ClosedByClient);
    }
    // Something was read (records, maybe only handshake); ask again.
    Ok(plain.max(1))
}

/// Hands queued plaintext to rustls (only when it has nothing left to send, so its buffer stays
/// small) and writes records until the socket is full.
fn write_tls(
    tls: &mut rustls::ServerConnection,
    stream: &mut TcpStream,
    out: &[u8],
    sent: &mut usize,
) -> Result<(), ConnEvent> {
    loop {
        if !tls.wants_write() && *sent < out.len() && !tls.is_handshaking() {
            let chunk = (out.len() - *sent).min(TLS_CHUNK);
            match tls.writer().write(&out[*sent..*sent + chunk]) {
                Ok(n) => *sent += n,
                Err(_) => return Err(ConnEvent::Error),
            }
        }
        if !tls.wants_write() {
            return Ok(());
        }
        match tls.write_tls(stream) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ConnEvent::Error),
        }
    }
}

/// Binds a TCP listening socket with SO_REUSEPORT (so every worker has its own) and a backlog
/// of 1024.
pub fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // An IPv6 wildcard serves IPv4 too (dual stack), as the UDP listener does.
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
