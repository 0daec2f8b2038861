//! One worker per core: a thread with its own `TurnServer`, its own SO_REUSEPORT listening socket
//! and the relay sockets of the allocations it created, driven by a mio event loop.
//!
//! Per wake-up the loop receives a batch (recvmmsg) from each readable socket, asks the core for a
//! routing decision per datagram, then sends the batch's decisions with sendmmsg, grouped by
//! outgoing socket. Datagrams stay in the receive buffers from arrival to departure; the core
//! rewrites peer datagrams in place. A socket that still has data after its budget of batches is
//! revisited on the next turn, so one busy flow cannot starve the others.
//!
//! A receive that returns less than a full batch means the socket's queue was empty at that
//! moment; the socket's turn ends there without a second, empty recvmmsg. That is sound with
//! epoll in edge-triggered mode (mio's): any datagram arriving later raises a new event.
//!
//! Nothing here logs per packet; shell-level drops (truncated datagrams, full send buffers) are
//! counted in the core's `Stats`, which this thread alone writes.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::error;

use super::busy_poll::BusyPoll;
use super::control::Command;
use super::relays::RelaySet;
use super::sfu::SfuHandle;
use super::udp::{self, RecvBatch, SendBatch, SendQueue, count_send, recv_error, send_counted};
use crate::turn::stats::{DropReason, Stats};
use crate::turn::wire::PEER_HEADROOM;
use crate::turn::{ClientAddr, Event, Forward, PeerAddr, ToClient, TurnServer};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_RELAY: usize = 2;

/// Batches a socket may take per turn of the loop before others get theirs.
const BUDGET: usize = 8;
/// The loop wakes at least this often, to re-anchor the core's wall clock and notice commands.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Settings of a worker's sockets.
#[derive(Debug, Clone)]
pub struct SocketSettings {
    /// Buffer size of relay sockets (0 = kernel default).
    pub relay_buffer: usize,
    /// The SFU sharing the listening port, if it runs: datagrams it claims go to it.
    pub sfu: Option<SfuHandle>,
    /// How long to keep polling after the last datagram before sleeping (`server.busy_poll_us`;
    /// zero = sleep at once).
    pub busy_poll: Duration,
}

pub struct Worker {
    poll: Poll,
    listener: UdpSocket,
    relays: RelaySet,
    server: TurnServer,
    stats: Arc<Stats>,
    settings: SocketSettings,
    commands: Receiver<Command>,
    recv: RecvBatch,
    send: SendQueue,
    forwards: Vec<Option<Forward>>,
    to_clients: Vec<Option<ToClient>>,
    /// Sources known to be readable that have not yet returned WouldBlock.
    pending: Vec<Token>,
    outbox: Outbox,
    /// The time read once per wake-up, right after `poll` returns, and used for every datagram
    /// of that wake-up: the core's timers have second granularity, and on hosts whose clock
    /// source is not served by the vDSO every read is a system call (or a VM exit).
    now: Instant,
    next_clock_sync: Instant,
    busy_poll: BusyPoll,
    /// Whether the current turn of the loop received any datagram (for `busy_poll`).
    served: bool,
}

impl Worker {
    /// Builds a worker around an already bound listening socket; returns it with the waker the
    /// main thread uses to get its attention after sending a command.
    pub fn new(
        listener: std::net::UdpSocket,
        server: TurnServer,
        settings: SocketSettings,
        commands: Receiver<Command>,
    ) -> io::Result<(Self, Arc<Waker>)> {
        let poll = Poll::new()?;
        let mut listener = UdpSocket::from_std(listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stats = server.stats();
        let busy_poll = BusyPoll::new(settings.busy_poll, Instant::now());
        let worker = Self {
            poll,
            listener,
            relays: RelaySet::new(settings.relay_buffer, FIRST_RELAY),
            server,
            stats,
            settings,
            commands,
            recv: RecvBatch::new(PEER_HEADROOM),
            send: SendQueue::new(),
            forwards: Vec::with_capacity(udp::BATCH),
            to_clients: Vec::with_capacity(udp::BATCH),
            pending: Vec::new(),
            outbox: Outbox::new(),
            now: Instant::now(),
            next_clock_sync: Instant::now(),
            busy_poll,
            served: false,
        };
        Ok((worker, waker))
    }

    /// Runs until told to stop.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.pending.is_empty() {
                let due = self.server.poll_timeout().map_or(MAX_SLEEP, |t| t.saturating_duration_since(self.now));
                due.min(MAX_SLEEP)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.wait(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                error!(error = %e, "poll failed; worker stopping");
                return;
            }
            self.now = Instant::now();
            for event in &events {
                match event.token() {
                    WAKER => {}
                    token if !self.pending.contains(&token) => self.pending.push(token),
                    _ => {}
                }
            }
            if !self.handle_commands() {
                return;
            }
            self.serve_pending();

            let now = self.now;
            if self.server.poll_timeout().is_some_and(|t| t <= now) {
                self.server.handle_timeout(now);
            }
            if now >= self.next_clock_sync {
                let unix = cluster::time::unix_now();
                self.server.set_wall_clock(now, unix);
                self.next_clock_sync = now + MAX_SLEEP;
            }
            self.flush_control();
            if self.busy_poll.enabled() {
                self.busy_poll.turn(now, Instant::now(), std::mem::take(&mut self.served));
            }
        }
    }

    /// Waits up to `timeout` for readiness: sleeping in `epoll_wait`, after polling for a while
    /// if `busy_poll` says so.
    fn wait(&mut self, events: &mut Events, timeout: Duration) -> io::Result<()> {
        if !timeout.is_zero() && self.busy_poll.enabled() {
            let start = Instant::now();
            if let Some(until) = self.busy_poll.poll_until(start) {
                let deadline = start + timeout;
                loop {
                    self.poll.poll(events, Some(Duration::ZERO))?;
                    let now = Instant::now();
                    if !events.is_empty() || now >= until.min(deadline) {
                        self.busy_poll.polled(now - start);
                        // Nothing came while polling: sleep for the rest of the timeout.
                        return match deadline.checked_duration_since(now) {
                            Some(rest) if events.is_empty() && !rest.is_zero() => self.poll.poll(events, Some(rest)),
                            _ => Ok(()),
                        };
                    }
                    std::hint::spin_loop();
                }
            }
        }
        self.poll.poll(events, Some(timeout))
    }

    /// Returns false when the worker must stop.
    fn handle_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::SetDraining(on)) => self.server.set_draining(on),
                Ok(Command::SetCredentials(credentials)) => self.server.set_credentials(credentials),
                Ok(Command::SetConfig(config)) => self.server.set_config(config),
                Ok(Command::SetTls(_) | Command::SetConnLimits(_)) => {}
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn serve_pending(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            let token = self.pending[i];
            let more = if token == LISTENER { self.serve_listener() } else { self.serve_relay(token.0 - FIRST_RELAY) };
            self.flush_control();
            if more {
                i += 1;
            } else {
                self.pending.swap_remove(i);
            }
        }
        self.outbox.flush(&mut self.send, self.listener.as_raw_fd(), &self.stats);
    }

    /// Serves up to BUDGET batches from the listening socket; true if it may have more.
    fn serve_listener(&mut self) -> bool {
        for _ in 0..BUDGET {
            let n = match self.recv.recv(self.listener.as_raw_fd()) {
                Ok(n) => n,
                Err(e) => return recv_error(&self.stats, e),
            };
            let drained = n < udp::BATCH;
            let now = self.now;
            self.served = true;
            self.forwards.clear();
            let mut sockets = self.relays.lend(self.poll.registry(), 0);
            for i in 0..n {
                if self.recv.truncated(i) {
                    self.stats.record_drop(DropReason::Truncated);
                    self.forwards.push(None);
                    continue;
                }
                let from = ClientAddr(self.recv.source(i));
                if let Some(sfu) = &self.settings.sfu
                    && sfu.claims(self.recv.payload(i))
                {
                    sfu.datagram(from.0, self.recv.payload(i));
                    self.forwards.push(None);
                    continue;
                }
                let forward = self.server.handle_client(now, from, self.recv.payload(i), &mut sockets);
                self.forwards.push(forward);
            }
            self.send_forwards();
            if drained {
                return false;
            }
        }
        true
    }

    /// Sends the batch's client→peer datagrams, one sendmmsg per run of the same relay socket.
    fn send_forwards(&mut self) {
        let mut i = 0;
        while i < self.forwards.len() {
            let Some(first) = &self.forwards[i] else {
                i += 1;
                continue;
            };
            let port = first.port;
            let Some(relay) = self.relays.by_port(port) else {
                // The allocation was removed within this batch.
                self.stats.record_drop(DropReason::NoAllocation);
                i += 1;
                continue;
            };
            let mut batch = SendBatch::new(&mut self.send, relay.socket.as_raw_fd());
            while let Some(Some(f)) = self.forwards.get(i) {
                if f.port != port {
                    break;
                }
                batch.push(f.peer.0, &self.recv.payload(i)[f.payload.clone()]);
                i += 1;
            }
            let stats = batch.flush();
            count_send(&self.stats, &stats);
        }
    }

    /// Serves up to BUDGET batches from one relay socket; true if it may have more.
    fn serve_relay(&mut self, key: usize) -> bool {
        for _ in 0..BUDGET {
            let Some(relay) = self.relays.get(key) else { return false };
            let port = relay.port;
            let n = match self.recv.recv(relay.socket.as_raw_fd()) {
                Ok(n) => n,
                Err(e) => return recv_error(&self.stats, e),
            };
            let drained = n < udp::BATCH;
            let now = self.now;
            self.served = true;
            self.to_clients.clear();
            for i in 0..n {
                if self.recv.truncated(i) {
                    self.stats.record_drop(DropReason::Truncated);
                    self.to_clients.push(None);
                    continue;
                }
                let from = PeerAddr(self.recv.source(i));
                let (buf, payload) = self.recv.buf_mut(i);
                let to = self.server.handle_peer(now, port, from, buf, payload);
                self.to_clients.push(to);
            }
            if drained {
                // A few datagrams: gather them with other relay sockets' into one sendmmsg.
                for (i, to) in self.to_clients.iter().enumerate() {
                    if let Some(to) = to {
                        let data = &self.recv.buf(i)[to.message.clone()];
                        if !self.outbox.push(to.client.0, data) {
                            self.outbox.flush(&mut self.send, self.listener.as_raw_fd(), &self.stats);
                            self.outbox.push(to.client.0, data);
                        }
                    }
                }
                return false;
            }
            // A full batch goes out as it is, from the receive buffers.
            let mut batch = SendBatch::new(&mut self.send, self.listener.as_raw_fd());
            for (i, to) in self.to_clients.iter().enumerate() {
                if let Some(to) = to {
                    batch.push(to.client.0, &self.recv.buf(i)[to.message.clone()]);
                }
            }
            let stats = batch.flush();
            count_send(&self.stats, &stats);
        }
        true
    }

    /// Sends queued control responses and closes the sockets of removed allocations.
    fn flush_control(&mut self) {
        while let Some(t) = self.server.poll_transmit() {
            send_counted(&self.stats, self.listener.as_raw_fd(), t.to.0, &t.payload);
        }
        while let Some(event) = self.server.poll_event() {
            match event {
                Event::RelayClosed(port) => self.relays.close(self.poll.registry(), port),
            }
        }
    }
}

/// Datagrams for clients from several relay sockets' partial batches, copied into one
/// preallocated arena so that they leave in one sendmmsg on the listening socket instead of one
/// syscall per relay socket. At moderate rates most relay sockets yield a datagram or two per
/// wake-up, so this saves most of a syscall per datagram for the price of a short memcpy.
struct Outbox {
    data: Box<[u8]>,
    used: usize,
    msgs: Vec<(SocketAddr, std::ops::Range<usize>)>,
}

impl Outbox {
    /// Room for a full batch of the largest datagrams the relay sends.
    const CAPACITY: usize = udp::BATCH * udp::BUF_SIZE;

    fn new() -> Self {
        Self { data: vec![0; Self::CAPACITY].into_boxed_slice(), used: 0, msgs: Vec::with_capacity(udp::BATCH) }
    }

    /// Copies a datagram in; false (nothing copied) when full.
    fn push(&mut self, to: SocketAddr, bytes: &[u8]) -> bool {
        if self.msgs.len() == udp::BATCH || self.used + bytes.len() > self.data.len() {
            return false;
        }
        let range = self.used..self.used + bytes.len();
        self.data[range.clone()].copy_from_slice(bytes);
        self.used = range.end;
        self.msgs.push((to, range));
        true
    }

    fn flush(&mut self, queue: &mut SendQueue, fd: std::os::fd::RawFd, stats: &Stats) {
        if self.msgs.is_empty() {
            return;
        }
        let mut batch = SendBatch::new(queue, fd);
        for (to, range) in &self.msgs {
            batch.push(*to, &self.data[range.clone()]);
        }
        count_send(stats, &batch.flush());
        self.msgs.clear();
        self.used = 0;
    }
}
