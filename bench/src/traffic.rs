//! Traffic through a target: an echo peer and an engine that sends paced, numbered, timestamped
//! packets from many client sockets, echoes them at the peer, and counts and times what comes
//! back, all on one thread.
//!
//! One thread on purpose: on a small machine the generator shares CPUs with the server under
//! test, and a sender, an echo and a receiver thread would spend much of their time waking each
//! other. The loop sends what the schedule says is due, then services whichever sockets are
//! readable (echoing at the peer, counting at the clients) until the next packet is due.
//!
//! Every packet's payload starts with a marker, the step it belongs to, a sequence number and the
//! send time (nanoseconds since the engine's epoch); the rest is filler up to the payload size.
//! A packet counts as delivered when its echo returns while its step is measured or drained, so
//! loss is exact: sent minus returned, per step. Sending and receiving use the relay's own batched
//! I/O (`relay::shell::udp`).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use relay::shell::udp::{self, RecvBatch, SendBatch, SendQueue};

use crate::stats::Latency;

/// Marks the bench's packets, so stray datagrams are not counted.
const MAGIC: u32 = 0xBE4C_0001;
/// marker (4) + step (4) + sequence (8) + send time (8).
pub const STAMP: usize = 24;
/// Socket buffers on the generator's side: large, so what is lost is lost in the target.
const BUFFER: usize = 8 << 20;
const PEER: Token = Token(usize::MAX);

/// The peer the target relays to: a UDP socket that the engine echoes on.
pub struct EchoPeer {
    pub addr: SocketAddr,
    socket: UdpSocket,
}

impl EchoPeer {
    pub fn start(bind: SocketAddr) -> anyhow::Result<Self> {
        let socket = udp::bind_listener(bind, BUFFER, BUFFER)?;
        Ok(Self { addr: socket.local_addr()?, socket })
    }

    /// An echo peer on the first free loopback port of `ports` (below the relay port ranges:
    /// the relay refuses loopback peers on its own relay ports).
    pub fn start_in(ports: std::ops::Range<u16>) -> anyhow::Result<Self> {
        for port in ports.clone() {
            if let Ok(p) = Self::start(SocketAddr::from(([127, 0, 0, 1], port))) {
                return Ok(p);
            }
        }
        anyhow::bail!("no free UDP port in {}-{} for the echo peer", ports.start, ports.end - 1)
    }
}

/// One client of the target: its socket and how its packets are framed.
pub struct Flow {
    pub socket: UdpSocket,
    /// TURN channel number (ChannelData framing) or `None` for the raw forwarder (bare payload).
    pub channel: Option<u16>,
    /// For a TURN flow: what keeps its allocation, permission and channel alive through a step
    /// longer than their lifetimes.
    pub keep: Option<Keep>,
}

/// What a TURN flow needs to refresh itself while a step runs: every [`Keep::every`] it sends
/// a Refresh and its ChannelBind again (which refreshes the channel and the peer's permission,
/// RFC 8656 §9 and §12: 5 minutes for a permission, 10 for a channel), without waiting for the
/// answers; an answer of 438 (stale nonce) brings the nonce the next round uses.
pub struct Keep {
    pub server: SocketAddr,
    pub creds: crate::turnc::Credentials,
    pub nonce: String,
    pub peer: SocketAddr,
    /// The allocation's lifetime as granted.
    pub lifetime: Duration,
}

/// A permission lasts 5 minutes (RFC 8656 §9): refreshed well within it.
const PERMISSION_REFRESH: Duration = Duration::from_secs(60);

impl Keep {
    /// How often the flow is refreshed: half the allocation's lifetime, and often enough for
    /// its permission.
    pub fn every(&self) -> Duration {
        (self.lifetime / 2).min(PERMISSION_REFRESH).max(Duration::from_secs(1))
    }

    fn send(&self, socket: &UdpSocket, channel: u16) {
        use crate::turnc::request;
        let lifetime = turn::proto::lifetime::Lifetime(self.lifetime);
        let number = turn::proto::channum::ChannelNumber(channel);
        let peer = turn::proto::peeraddr::PeerAddress { ip: self.peer.ip(), port: self.peer.port() };
        let refresh = request(stun::message::METHOD_REFRESH, &[&lifetime], &self.creds, Some(&self.nonce));
        let bind = request(stun::message::METHOD_CHANNEL_BIND, &[&number, &peer], &self.creds, Some(&self.nonce));
        let _ = socket.send_to(&refresh.raw, self.server);
        let _ = socket.send_to(&bind.raw, self.server);
    }
}

/// What one measured step did.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub offered_pps: f64,
    pub sent: u64,
    pub received: u64,
    pub elapsed: Duration,
    pub latency: Latency,
}

impl StepResult {
    pub fn loss(&self) -> f64 {
        crate::stats::loss(self.sent, self.received)
    }

    /// Packets that came back per second of the step.
    pub fn delivered_pps(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64()
    }

    /// Packets actually sent per second (lower than asked when the generator is the bottleneck).
    pub fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sends from all flows to `dest`, echoes at the peer, receives at the flows.
pub struct Engine {
    flows: Vec<Flow>,
    peer: UdpSocket,
    dest: SocketAddr,
    epoch: Instant,
    poll: Poll,
    events: Events,
    recv: RecvBatch,
    queue: SendQueue,
    /// Sources known readable that have not returned a partial batch yet.
    pending: Vec<Token>,
    next_step: u32,
    /// When the flows are next refreshed: kept across steps, so that steps shorter than the
    /// refresh period (a soak's 30 s samples) still refresh.
    next_keep: Option<Instant>,
}

/// Counts for the step being measured.
struct Tally {
    step: u32,
    received: u64,
    latency: Option<Latency>,
}

impl Engine {
    pub fn new(flows: Vec<Flow>, peer: &EchoPeer, dest: SocketAddr) -> anyhow::Result<Self> {
        let poll = Poll::new()?;
        for (i, f) in flows.iter().enumerate() {
            f.socket.set_nonblocking(true)?;
            let sock = socket2::SockRef::from(&f.socket);
            let _ = sock.set_recv_buffer_size(BUFFER);
            let _ = sock.set_send_buffer_size(BUFFER);
            poll.registry().register(&mut SourceFd(&f.socket.as_raw_fd()), Token(i), Interest::READABLE)?;
        }
        let peer = peer.socket.try_clone()?;
        poll.registry().register(&mut SourceFd(&peer.as_raw_fd()), PEER, Interest::READABLE)?;
        Ok(Self {
            flows,
            peer,
            dest,
            epoch: Instant::now(),
            poll,
            events: Events::with_capacity(1024),
            recv: RecvBatch::new(0),
            queue: SendQueue::new(),
            pending: Vec::new(),
            next_step: 0,
            next_keep: None,
        })
    }

    /// Sends at `rate` packets/s for `duration`, keeps echoing and receiving for `drain` more,
    /// and reports. With `latency`, every returned packet's round trip is recorded.
    pub fn step(
        &mut self,
        rate: f64,
        duration: Duration,
        drain: Duration,
        payload: usize,
        latency: bool,
    ) -> StepResult {
        let step = self.next_step;
        self.next_step += 1;
        let mut tally = Tally { step, received: 0, latency: latency.then(Latency::new) };
        let payload = payload.max(STAMP);
        let mut scratch = vec![0u8; udp::BATCH * (payload + 4)];
        let start = Instant::now();
        let (mut sent, mut seq, mut flow) = (0u64, 0u64, 0usize);
        let n_flows = self.flows.len();
        let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
        let keep_every = self.flows.iter().filter_map(|f| f.keep.as_ref().map(Keep::every)).min();
        let mut next_keep = self.next_keep.or(keep_every.map(|every| start + every));
        loop {
            let elapsed = start.elapsed();
            if elapsed >= duration {
                break;
            }
            if let (Some(at), Some(every)) = (next_keep, keep_every)
                && Instant::now() >= at
            {
                for f in &self.flows {
                    if let (Some(keep), Some(channel)) = (&f.keep, f.channel) {
                        keep.send(&f.socket, channel);
                    }
                }
                next_keep = Some(at + every);
            }
            let due = (rate * elapsed.as_secs_f64()) as u64;
            // Spread what is due over the flows, at most a batch per flow per turn.
            let mut left = due.saturating_sub(seq);
            while left > 0 {
                let f = &self.flows[flow % n_flows];
                flow += 1;
                let per_flow = (left as usize).div_ceil(n_flows.min(left as usize)).min(udp::BATCH);
                let header = if f.channel.is_some() { 4 } else { 0 };
                let size = header + payload;
                let now_ns = self.epoch.elapsed().as_nanos() as u64;
                for (k, pkt) in scratch.chunks_mut(size).take(per_flow).enumerate() {
                    if let Some(ch) = f.channel {
                        pkt[0..2].copy_from_slice(&ch.to_be_bytes());
                        pkt[2..4].copy_from_slice(&(payload as u16).to_be_bytes());
                    }
                    let body = &mut pkt[header..];
                    body[0..4].copy_from_slice(&MAGIC.to_be_bytes());
                    body[4..8].copy_from_slice(&step.to_be_bytes());
                    body[8..16].copy_from_slice(&(seq + k as u64).to_be_bytes());
                    body[16..24].copy_from_slice(&now_ns.to_be_bytes());
                }
                let mut batch = SendBatch::new(&mut self.queue, f.socket.as_raw_fd());
                for pkt in scratch.chunks(size).take(per_flow) {
                    batch.push(self.dest, pkt);
                }
                // Packets the local socket refused were never offered: a generator that cannot
                // keep up shows as a lower sent rate, not as the target's loss.
                sent += batch.flush().sent as u64;
                seq += per_flow as u64;
                left -= per_flow as u64;
            }
            // Until the next packet is due, serve the sockets.
            let next = start + interval.mul_f64((seq + 1) as f64);
            self.service(next.saturating_duration_since(Instant::now()), &mut tally);
        }
        self.next_keep = next_keep;
        let elapsed = start.elapsed();
        let drain_end = Instant::now() + drain;
        while Instant::now() < drain_end {
            self.service(drain_end.saturating_duration_since(Instant::now()), &mut tally);
        }
        StepResult {
            offered_pps: rate,
            sent,
            received: tally.received,
            elapsed,
            latency: tally.latency.unwrap_or_default(),
        }
    }

    /// Waits up to `timeout` for readable sockets and serves them: echo at the peer, count and
    /// time at the clients.
    fn service(&mut self, timeout: Duration, tally: &mut Tally) {
        let timeout = if self.pending.is_empty() { timeout.min(Duration::from_millis(5)) } else { Duration::ZERO };
        let _ = self.poll.poll(&mut self.events, Some(timeout));
        for e in &self.events {
            if !self.pending.contains(&e.token()) {
                self.pending.push(e.token());
            }
        }
        let mut i = 0;
        while i < self.pending.len() {
            let token = self.pending[i];
            let more = if token == PEER { self.echo() } else { self.count(token.0, tally) };
            if more {
                i += 1;
            } else {
                self.pending.swap_remove(i);
            }
        }
    }

    /// One batch at the peer, sent back where it came from. True if there may be more.
    fn echo(&mut self) -> bool {
        let fd = self.peer.as_raw_fd();
        let Ok(n) = self.recv.recv(fd) else { return false };
        let mut batch = SendBatch::new(&mut self.queue, fd);
        for i in 0..n {
            if !self.recv.truncated(i) {
                batch.push(self.recv.source(i), self.recv.payload(i));
            }
        }
        batch.flush();
        n == udp::BATCH
    }

    /// One batch at a client. True if there may be more.
    fn count(&mut self, flow: usize, tally: &mut Tally) -> bool {
        let f = &mut self.flows[flow];
        let header = if f.channel.is_some() { 4 } else { 0 };
        let Ok(n) = self.recv.recv(f.socket.as_raw_fd()) else { return false };
        let now = self.epoch.elapsed().as_nanos() as u64;
        for k in 0..n {
            // A STUN answer to a keep-alive (the first two bits 0, ChannelData starts 0b01):
            // a stale nonce's 438 carries the next one.
            if let Some(keep) = f.keep.as_mut()
                && self.recv.payload(k).first().is_some_and(|b| b >> 6 == 0)
            {
                let mut m = stun::message::Message::new();
                if m.unmarshal_binary(self.recv.payload(k)).is_ok()
                    && crate::turnc::error_code(&m) == Some(438)
                    && let Some(nonce) = crate::turnc::nonce_of(&m)
                {
                    keep.nonce = nonce;
                }
                continue;
            }
            let Some(body) = self.recv.payload(k).get(header..header + STAMP) else { continue };
            if body[0..4] != MAGIC.to_be_bytes() || body[4..8] != tally.step.to_be_bytes() {
                continue;
            }
            tally.received += 1;
            if let Some(l) = tally.latency.as_mut() {
                let sent_at = u64::from_be_bytes(body[16..24].try_into().expect("8 bytes"));
                l.record(now.saturating_sub(sent_at));
            }
        }
        n == udp::BATCH
    }
}
