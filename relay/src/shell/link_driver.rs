//! The link socket and [`LinkNode`] on the thread that drives them: the SFU thread when the
//! relay has an SFU (so media crosses between the SFU engine and QUIC in one call, and a
//! packet's link copy leaves in the same wake-up as the relay's own viewers' copies), else a
//! thread of their own. Policy (which links, backoff, addresses) stays with the links' task
//! ([`super::links`]), which sends [`Command`]s and hears [`Report`]s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge};
use tracing::{debug, warn};

use super::udp::{RecvBatch, SendBatch, SendQueue};
use crate::link::endpoint::DatagramDrop;
use crate::link::node::{LinkNode, NodeEvent, Sent};
use crate::link::tls::Refusals;
use crate::link::wire::Control;
use crate::sfu::engine::LinkOutput;

/// Receive errors in a row after which [`LinkDriver::receive`] gives up until the next wake.
const MAX_RECEIVE_ERRORS: usize = 8;
/// How often each link's RTT goes to the links' task and `/metrics`.
const RTT_INTERVAL: Duration = Duration::from_secs(1);

/// The link series in `/metrics`.
#[derive(Clone)]
pub struct LinkMetrics {
    pub refusals: Refusals,
    /// `relay_links_open`: links to other relays, either way.
    pub open: IntGauge,
    /// By peer and direction.
    pub datagrams: IntCounterVec,
    pub bytes: IntCounterVec,
    /// By reason.
    pub dropped: IntCounterVec,
    /// Media packets too large for a datagram, sent on the reliable stream instead, by peer.
    pub oversize: IntCounterVec,
    /// By peer.
    pub rtt: GaugeVec,
    /// Control frames of types this version does not know (a newer peer's), skipped.
    pub unknown_frames: IntCounter,
}

/// What the links' task asks of the driver.
#[derive(Debug)]
pub enum Command {
    /// Open a link (unless one is up).
    Connect { relay: Arc<str>, addr: SocketAddr },
    /// The relay is stopping: close every link.
    Close,
}

/// What the driver tells the links' task.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Linked {
        relay: Arc<str>,
        rtt: Duration,
    },
    Closed {
        relay: Arc<str>,
    },
    Failed {
        relay: Arc<str>,
        reason: String,
    },
    /// Every link's RTT, each [`RTT_INTERVAL`].
    Rtts(Vec<(Arc<str>, Duration)>),
    /// The SFU wants a link (`addr` as `host:port`, resolved by the task; empty: as known).
    Wanted {
        relay: Arc<str>,
        addr: String,
    },
    /// The SFU needs no link to `relay` any more.
    Unwanted {
        relay: Arc<str>,
    },
}

/// Where what arrives on links goes: the SFU engine, or nowhere on a relay without one.
pub trait LinkSink {
    fn link_up(&mut self, now: Instant, relay: &str);
    fn link_down(&mut self, now: Instant, relay: &str);
    fn link_control(&mut self, now: Instant, relay: &str, message: Control);
    fn link_datagram(&mut self, now: Instant, relay: &str, data: &[u8]);
}

/// No SFU: links carry RTTs only.
impl LinkSink for () {
    fn link_up(&mut self, _: Instant, _: &str) {}
    fn link_down(&mut self, _: Instant, _: &str) {}
    fn link_control(&mut self, _: Instant, _: &str, _: Control) {}
    fn link_datagram(&mut self, _: Instant, _: &str, _: &[u8]) {}
}

impl LinkSink for crate::sfu::Sfu {
    fn link_up(&mut self, now: Instant, relay: &str) {
        crate::sfu::Sfu::link_up(self, now, relay);
    }
    fn link_down(&mut self, now: Instant, relay: &str) {
        crate::sfu::Sfu::link_down(self, now, relay);
    }
    fn link_control(&mut self, now: Instant, relay: &str, message: Control) {
        crate::sfu::Sfu::link_control(self, now, relay, message);
    }
    fn link_datagram(&mut self, now: Instant, relay: &str, data: &[u8]) {
        crate::sfu::Sfu::link_datagram(self, now, relay, data);
    }
}

/// A link's counters, looked up once per link rather than per packet.
struct PeerCounters {
    sent: IntCounter,
    sent_bytes: IntCounter,
    received: IntCounter,
    received_bytes: IntCounter,
    oversize: IntCounter,
}

/// The link socket and node (see the module docs).
pub struct LinkDriver {
    node: LinkNode,
    socket: mio::net::UdpSocket,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
    metrics: LinkMetrics,
    counters: HashMap<Arc<str>, PeerCounters>,
    recv: RecvBatch,
    queue: SendQueue,
    /// Datagrams to send: their bytes one after another, and each one's destination and range.
    arena: Vec<u8>,
    segments: Vec<(SocketAddr, Range<usize>)>,
    buf: Vec<u8>,
    next_rtt: Instant,
    unknown_counted: u64,
}

impl LinkDriver {
    /// `socket` is the bound link socket (made non-blocking here).
    pub fn new(
        node: LinkNode,
        socket: std::net::UdpSocket,
        reports: tokio::sync::mpsc::UnboundedSender<Report>,
        metrics: LinkMetrics,
    ) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            node,
            socket: mio::net::UdpSocket::from_std(socket),
            reports,
            metrics,
            counters: HashMap::new(),
            recv: RecvBatch::new(0),
            queue: SendQueue::new(),
            arena: Vec::new(),
            segments: Vec::new(),
            buf: Vec::new(),
            next_rtt: Instant::now(),
            unknown_counted: 0,
        })
    }

    /// Registers the socket with `registry` for readability, as `token`.
    pub fn register(&mut self, registry: &mio::Registry, token: mio::Token) -> std::io::Result<()> {
        registry.register(&mut self.socket, token, mio::Interest::READABLE)
    }

    /// The relay id of this relay's certificate.
    pub fn relay_id(&self) -> &str {
        self.node.relay_id()
    }

    /// Whether every connection has drained (after [`Command::Close`]).
    pub fn idle(&self) -> bool {
        self.node.connections() == 0
    }

    pub fn command(&mut self, now: Instant, command: Command, sink: &mut impl LinkSink) {
        match command {
            Command::Connect { relay, addr } => {
                if let Some(rtt) = self.node.rtt(&relay) {
                    // Linked meanwhile (it linked in): the attempt is over.
                    let _ = self.reports.send(Report::Linked { relay, rtt });
                } else if let Err(e) = self.node.connect(now, addr, &relay) {
                    let _ = self.reports.send(Report::Failed { relay, reason: format!("{e:#}") });
                }
            }
            Command::Close => self.node.close(now),
        }
        self.events(now, sink);
    }

    /// Reads every datagram waiting on the socket (it is edge-triggered) and hands what they
    /// carry to `sink`.
    pub fn receive(&mut self, now: Instant, sink: &mut impl LinkSink) {
        let fd = self.socket.as_raw_fd();
        let mut errors = 0;
        loop {
            match self.recv.recv(fd) {
                Ok(n) => {
                    for i in 0..n {
                        if self.recv.truncated(i) {
                            continue;
                        }
                        let data = BytesMut::from(self.recv.payload(i));
                        self.node.handle_datagram(now, self.recv.source(i), data);
                    }
                    self.events(now, sink);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // Each error consumes a pending one (an ICMP report): datagrams may still wait.
                Err(e) => {
                    debug!(error = %e, "link socket receive failed");
                    errors += 1;
                    if errors >= MAX_RECEIVE_ERRORS {
                        warn!(error = %e, "link socket keeps failing to receive");
                        return;
                    }
                }
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.node.poll_timeout().map(|t| t.min(self.next_rtt))
    }

    pub fn handle_timeout(&mut self, now: Instant, sink: &mut impl LinkSink) {
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
            self.events(now, sink);
        }
        if now >= self.next_rtt {
            self.next_rtt = now + RTT_INTERVAL;
            let rtts: Vec<(Arc<str>, Duration)> =
                self.node.peers().filter_map(|p| Some((Arc::clone(p), self.node.rtt(p)?))).collect();
            for (peer, rtt) in &rtts {
                self.metrics.rtt.with_label_values(&[peer]).set(rtt.as_secs_f64());
            }
            let unknown = self.node.unknown_frames();
            self.metrics.unknown_frames.inc_by(unknown.saturating_sub(self.unknown_counted));
            self.unknown_counted = unknown;
            let _ = self.reports.send(Report::Rtts(rtts));
            // The next interval's samples, at both ends.
            self.node.ping();
        }
    }

    /// Carries out one of the SFU's link outputs.
    pub fn output(&mut self, now: Instant, output: LinkOutput) {
        match output {
            LinkOutput::Datagram { relay, data } => {
                let size = data.len() as u64;
                match self.node.send_media(now, &relay, Bytes::from(data)) {
                    Ok(sent) => {
                        if let Some(c) = self.counters.get(&relay) {
                            match sent {
                                Sent::Datagram => {
                                    c.sent.inc();
                                    c.sent_bytes.inc_by(size);
                                }
                                Sent::Stream => c.oversize.inc(),
                            }
                        }
                    }
                    Err(DatagramDrop::LinkLost) if !self.node.is_linked(&relay) => {
                        self.metrics.dropped.with_label_values(&["no_link"]).inc();
                    }
                    Err(drop) => self.metrics.dropped.with_label_values(&[drop.label()]).inc(),
                }
            }
            LinkOutput::Control { relay, message } => {
                self.node.send_control(now, &relay, &message);
            }
            LinkOutput::Connect { relay, addr } => {
                let _ = self.reports.send(Report::Wanted { relay, addr });
            }
            LinkOutput::Forget { relay } => {
                let _ = self.reports.send(Report::Unwanted { relay });
            }
        }
    }

    /// Sends everything the links have to send, in `sendmmsg` batches.
    pub fn flush(&mut self, now: Instant) {
        self.arena.clear();
        self.segments.clear();
        while let Some(t) = self.node.poll_transmit(now, &mut self.buf) {
            let step = t.segment_size.unwrap_or(t.size).max(1);
            for chunk in self.buf[..t.size].chunks(step) {
                let start = self.arena.len();
                self.arena.extend_from_slice(chunk);
                self.segments.push((t.destination, start..self.arena.len()));
            }
        }
        if self.segments.is_empty() {
            return;
        }
        let mut batch = SendBatch::new(&mut self.queue, self.socket.as_raw_fd());
        for (to, range) in &self.segments {
            batch.push(*to, &self.arena[range.clone()]);
        }
        let stats = batch.flush();
        if stats.dropped_full + stats.dropped_error > 0 {
            warn!(full = stats.dropped_full, error = stats.dropped_error, "link packets not sent");
        }
    }

    /// What the node reported: to the sink, the links' task and the counters.
    fn events(&mut self, now: Instant, sink: &mut impl LinkSink) {
        while let Some(event) = self.node.poll_event() {
            match event {
                NodeEvent::Datagram { peer, data } => {
                    if let Some(c) = self.counters.get(&peer) {
                        c.received.inc();
                        c.received_bytes.inc_by(data.len() as u64);
                    }
                    sink.link_datagram(now, &peer, &data);
                }
                NodeEvent::Control { peer, message } => sink.link_control(now, &peer, message),
                NodeEvent::Linked { peer } => {
                    let m = &self.metrics;
                    let c = PeerCounters {
                        sent: m.datagrams.with_label_values(&[&peer, "sent"]),
                        sent_bytes: m.bytes.with_label_values(&[&peer, "sent"]),
                        received: m.datagrams.with_label_values(&[&peer, "received"]),
                        received_bytes: m.bytes.with_label_values(&[&peer, "received"]),
                        oversize: m.oversize.with_label_values(&[&peer]),
                    };
                    self.counters.insert(Arc::clone(&peer), c);
                    self.metrics.open.set(self.node.peers().count() as i64);
                    let rtt = self.node.rtt(&peer).unwrap_or_default();
                    self.metrics.rtt.with_label_values(&[&peer]).set(rtt.as_secs_f64());
                    sink.link_up(now, &peer);
                    let _ = self.reports.send(Report::Linked { relay: peer, rtt });
                }
                NodeEvent::Closed { peer, reason } => {
                    debug!(peer = %peer, reason, "link closed");
                    self.counters.remove(&peer);
                    self.metrics.open.set(self.node.peers().count() as i64);
                    let _ = self.metrics.rtt.remove_label_values(&[&peer]);
                    sink.link_down(now, &peer);
                    let _ = self.reports.send(Report::Closed { relay: peer });
                }
                NodeEvent::Failed { peer, reason } => {
                    let _ = self.reports.send(Report::Failed { relay: peer, reason });
                }
            }
        }
    }
}

/// Drives the links on a thread of their own (a relay without an SFU): until `commands` closes
/// or a [`Command::Close`] has drained every link.
pub fn run_alone(mut driver: LinkDriver, commands: std::sync::mpsc::Receiver<Command>, mut poll: mio::Poll) {
    if let Err(e) = driver.register(poll.registry(), mio::Token(1)) {
        warn!(error = %e, "link socket not registered: links off");
        return;
    }
    let mut events = mio::Events::with_capacity(8);
    let mut closing: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let timeout = driver.poll_timeout().map_or(RTT_INTERVAL, |t| t.saturating_duration_since(now));
        if let Err(e) = poll.poll(&mut events, Some(timeout.min(RTT_INTERVAL)))
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            warn!(error = %e, "link poll failed: links stopping");
            return;
        }
        let now = Instant::now();
        loop {
            match commands.try_recv() {
                Ok(command) => {
                    if matches!(command, Command::Close) {
                        closing = Some(now);
                    }
                    driver.command(now, command, &mut ());
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
            }
        }
        driver.receive(now, &mut ());
        driver.handle_timeout(now, &mut ());
        driver.flush(now);
        if closing.is_some_and(|t| driver.idle() || now.saturating_duration_since(t) > CLOSE_GRACE) {
            return;
        }
    }
}

/// How long a stopping relay keeps sending its links' closes.
pub const CLOSE_GRACE: Duration = Duration::from_millis(500);
