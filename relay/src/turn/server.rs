//! The TURN server core: RFC 8489 (STUN) and RFC 8656 (TURN over UDP, UDP relays) as a sans-IO
//! state machine.
//!
//! The shell feeds it datagrams with `handle_client` (from the listening port) and `handle_peer`
//! (from an allocation's relay port), calls `handle_timeout` when `poll_timeout` is due, and drains
//! `poll_transmit` (control responses to clients) and `poll_event` (relay sockets to close). It
//! owns no socket, clock or task: `now` is passed in, and the only effects it asks of the shell
//! synchronously are checking and opening relay sockets ([`RelaySockets`]), because the answer
//! to a request depends on whether a port could be bound.
//!
//! **A relay socket is opened when its allocation first needs one**: at its first
//! CreatePermission or ChannelBind. Before that nothing can be relayed anyway (RFC 8656 §9: data
//! from a peer without a permission is dropped), so an idle allocation costs no file descriptor
//! and no kernel socket. At Allocate the port is taken from the pool and test-bound, so the
//! advertised address is free; if another program takes it before the first permission (the
//! relay port range should be the relay's alone), that request gets 508.
//!
//! The data paths return a routing decision instead of copying: `handle_client` says which relay
//! port should send which byte range of the datagram to which peer, and `handle_peer` rewrites
//! the peer's datagram in place into a ChannelData message or Data indication and says which
//! client gets which byte range. Neither allocates, locks or logs.
//!
//! One `TurnServer` runs per worker thread. SO_REUSEPORT pins each client's 5-tuple to one worker,
//! and each allocation's relay socket belongs to the worker that created it, so no state is
//! shared per packet; the port pool and quotas ([`Shared`]) are shared and locked only at
//! allocation time.
//!
//! Choices where the RFCs leave room, and why:
//! - Authentication order follows RFC 8489 §9.2.4: missing MESSAGE-INTEGRITY → 401 with a
//!   nonce; missing USERNAME/REALM/NONCE → 400; unknown user or wrong MESSAGE-INTEGRITY → 401;
//!   then an invalid nonce → 438. A nonce is "invalid" when expired, issued to another client
//!   address, issued by another process, or tampered with: all get 438 and a fresh nonce, so
//!   clients recover on their own after a relay restart.
//! - An expired REST credential is refused only at Allocate (401). Refreshes of an existing
//!   allocation use the key it was created with, so rotating secrets never drops a session.
//! - Peer addresses are checked against the peer filter (403) before the address family (443), so a
//!   loopback address in IPv6 form is reported as forbidden, which it is.
//! - Attributes after MESSAGE-INTEGRITY (other than FINGERPRINT) are ignored (RFC 8489 §14.5),
//!   so an on-path attacker cannot append a LIFETIME to a signed Refresh.
//! - Draining (SIGTERM): new Allocates get 508 Insufficient Capacity, everything else continues.
//! - Answers to sources without an allocation that carry no MESSAGE-INTEGRITY (401 challenges,
//!   400s, Binding responses) are rate-limited per source and in total ([`SourceLimiter`]): a
//!   spoofed flood gets a capped trickle of answers, never an amplified stream. Over the limit
//!   the request is dropped and counted (`rate_limited`); a real client retransmits.
//!
//! The core knows nothing of transports. Over TCP and TLS the shell frames messages out of the
//! stream and runs one `TurnServer` per listening socket, so the client address alone (the peer
//! of one connection) identifies the 5-tuple; when a connection closes the shell calls
//! [`TurnServer::close_client`], since an allocation lives no longer than its connection
//! (RFC 8656 §3.1).
//!
//! Where things are: this file has the server's state, dispatch, the data paths and responses;
//! the request handlers (authentication, Allocate, Refresh, CreatePermission, ChannelBind) are in
//! [`requests`]; the allocations and their indexes in [`super::table`]; the STUN vocabulary and
//! response builder in [`super::message`]; the settings in [`super::settings`].

use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun::attributes::AttrType;
use stun::message::Message;
use stun::xoraddr::XorMappedAddress;
use tracing::info;

use super::allocation::Allocation;
use super::auth::{Credentials, Key};
use super::limit::{Lease, SourceLimiter};
use super::message::*;
use super::settings::ServerConfig;
use super::shared::Shared;
use super::stats::{Direction, DropReason, Method, Stats};
use super::table::{AllocationTable, Slot};
use super::types::{ClientAddr, PeerAddr, RelayPort};
use super::wire::{self, Attributes, FrameError, Kind, StunFrame};

mod requests;

/// How often expired permissions and channels are swept from all allocations. Lookups already
/// ignore expired entries; the sweep only reclaims memory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Relay sockets, as the core asks for them.
pub trait RelaySockets {
    /// Checks that `ip:port` can be bound right now, without keeping it (Allocate). An
    /// `AddrInUse` error makes the core try another port.
    fn probe(&mut self, ip: IpAddr, port: RelayPort) -> io::Result<()>;
    /// Binds `ip:port` for an allocation and starts receiving on it (first permission).
    fn open(&mut self, ip: IpAddr, port: RelayPort) -> io::Result<()>;
}

/// Client to peer: relay port `port` sends `packet[payload]` to `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub port: RelayPort,
    pub peer: PeerAddr,
    pub payload: Range<usize>,
}

/// Peer to client: the listening socket sends `buf[message]` to `client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToClient {
    pub client: ClientAddr,
    pub message: Range<usize>,
}

/// A control message (a response) for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: ClientAddr,
    pub payload: Vec<u8>,
}

/// Something the shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The allocation on this port is gone: close its socket.
    RelayClosed(RelayPort),
}

/// One core's TURN server (see the module docs).
pub struct TurnServer {
    config: Arc<ServerConfig>,
    credentials: Arc<Credentials>,
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    allocations: AllocationTable,
    next_sweep: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Maps the monotonic clock to unix time, for REST credential expiry.
    wall: (Instant, u64),
    draining: bool,
    /// State of the generator for Data indication transaction ids (SplitMix64).
    txid_state: u64,
    limiter: SourceLimiter,
    /// `now` of the input being handled, for the limiter.
    clock: Instant,
    /// The request being handled already took its token from the limiter.
    limit_checked: bool,
    /// This core's lease of the relay-wide bandwidth budget (`Shared::bandwidth`).
    total_bandwidth: Lease,
}

impl TurnServer {
    /// `unix_now` is the unix time at `now`; `seed` seeds the transaction ids of Data indications.
    pub fn new(config: Arc<ServerConfig>, shared: Arc<Shared>, now: Instant, unix_now: u64, seed: u64) -> Self {
        let limiter = SourceLimiter::new(config.unauthenticated, Arc::clone(&shared.answers), now);
        shared.bandwidth.set_rate(config.bandwidth.total_bps as f64 / 8.0);
        Self {
            credentials: Arc::new(config.credentials.clone()),
            config,
            shared,
            stats: Arc::new(Stats::default()),
            allocations: AllocationTable::default(),
            next_sweep: now + SWEEP_INTERVAL,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            wall: (now, unix_now),
            draining: false,
            txid_state: seed,
            limiter,
            clock: now,
            limit_checked: false,
            total_bandwidth: Lease::default(),
        }
    }

    /// The counters of this core, for the metrics endpoint.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Re-anchors unix time (the shell calls this periodically, so wall-clock steps are followed).
    pub fn set_wall_clock(&mut self, now: Instant, unix_now: u64) {
        self.wall = (now, unix_now);
    }

    /// Replaces the accepted credentials (secret rotation). Existing allocations keep the key
    /// they were created with, so removing a secret does not drop a running session.
    pub fn set_credentials(&mut self, credentials: Arc<Credentials>) {
        self.credentials = credentials;
    }

    /// Replaces the settings (config reload): peer filter, lifetimes, caps and limits apply to
    /// requests from now on; allocations keep what they already have (their permissions,
    /// channels and lifetimes). Credentials are replaced separately (`set_credentials`).
    pub fn set_config(&mut self, config: Arc<ServerConfig>) {
        self.limiter.set_rates(config.unauthenticated);
        self.shared.bandwidth.set_rate(config.bandwidth.total_bps as f64 / 8.0);
        self.config = config;
    }

    /// Charges `bytes` of relayed data to the allocation in `slot` and to the relay's total;
    /// false (and counted) if a cap says no.
    #[inline]
    fn within_bandwidth(&mut self, slot: Slot, bytes: usize, now: Instant) -> bool {
        let alloc = self.allocations.get_mut(slot).and_then(|a| a.bandwidth.as_mut());
        if alloc.is_some_and(|b| !b.take(bytes, now))
            || !self.total_bandwidth.take(&self.shared.bandwidth, bytes as f64, now)
        {
            self.stats.record_drop(DropReason::BandwidthCap);
            return false;
        }
        true
    }

    /// Whether `client` has an allocation (expired or not yet swept counts).
    pub fn has_allocation(&self, client: ClientAddr) -> bool {
        self.allocations.contains(client)
    }

    /// The client's connection is gone (TCP, TLS): its allocation goes with it (RFC 8656 §3.1).
    pub fn close_client(&mut self, client: ClientAddr) {
        if let Some((slot, _)) = self.allocations.by_client(client) {
            self.remove(slot, "connection closed");
        }
    }

    /// Stop (or resume) accepting new allocations; existing ones keep working.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.wall.1 + now.saturating_duration_since(self.wall.0).as_secs()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next_expiry = self.allocations.next_expiry();
        Some(next_expiry.map_or(self.next_sweep, |t| t.min(self.next_sweep)))
    }

    /// Expires allocations whose lifetime is over and sweeps expired permissions and channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(slot) = self.allocations.pop_expired(now) {
            self.remove(slot, "expired");
        }
        if now >= self.next_sweep {
            for alloc in self.allocations.iter_mut() {
                alloc.sweep(now);
            }
            self.shared.expire_reservations(now);
            self.next_sweep = now + SWEEP_INTERVAL;
        }
    }

    /// A datagram from a client on the listening port. Returns where to relay it, if anywhere;
    /// responses are queued for `poll_transmit`.
    #[inline]
    pub fn handle_client(
        &mut self,
        now: Instant,
        from: ClientAddr,
        packet: &[u8],
        sockets: &mut impl RelaySockets,
    ) -> Option<Forward> {
        // With the SFU on, allocations may relay to the listening port; what arrives there from
        // one of our relay ports and is not the SFU's (the shell gave the SFU its datagrams
        // first) must not become a TURN request or ChannelData: no allocations of the relay
        // by itself, no loops.
        if !self.config.sfu.is_empty()
            && self.shared.is_relay_port(from.0.port())
            && self.config.own.has_ip(from.0.ip())
        {
            self.stats.record_drop(DropReason::SelfRelay);
            return None;
        }
        self.clock = now;
        match wire::classify(packet) {
            Kind::ChannelData => self.channel_data(now, from, packet),
            Kind::Stun => self.stun(now, from, packet, sockets),
            Kind::Other => {
                self.stats.record_drop(DropReason::NotTurn);
                None
            }
        }
    }

    /// A datagram from a peer on relay port `port`, at `buf[payload]`. `buf` must have
    /// [`wire::PEER_HEADROOM`] bytes before the payload and [`wire::PEER_TAILROOM`] after it; the
    /// datagram is rewritten in place into a message for the client.
    #[inline]
    pub fn handle_peer(
        &mut self,
        now: Instant,
        port: RelayPort,
        from: PeerAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> Option<ToClient> {
        let Some((slot, alloc)) = self.allocations.by_port(port) else {
            // The socket outlived its allocation by a moment (it is closed right after removal).
            self.stats.record_drop(DropReason::NoAllocation);
            return None;
        };
        // RFC 8656 §10.3 (and §11.6 for channels): data from a peer without a permission is dropped.
        if alloc.expires <= now || !alloc.permits(from.0.ip(), now) {
            self.stats.record_drop(DropReason::NoPermission);
            return None;
        }
        let (client, channel, len) = (alloc.client, alloc.channel_for(from.0, now), payload.len());
        if !self.within_bandwidth(slot, len, now) {
            return None;
        }
        let message = match channel {
            Some(channel) => wire::write_channel_data(buf, payload, channel),
            None => {
                let txid = self.next_transaction_id();
                wire::write_data_indication(buf, payload, from.0, txid)
            }
        };
        let Some(message) = message else {
            // Only when the shell gave too little headroom or the datagram is too big to frame.
            self.stats.record_drop(DropReason::Truncated);
            return None;
        };
        self.stats.relayed(Direction::PeerToClient, len);
        Some(ToClient { client, message })
    }

    /// SplitMix64: cheap, well-distributed 96-bit ids for Data indications (RFC 8489 §6 wants
    /// them random; they are not a security boundary here).
    fn next_transaction_id(&mut self) -> [u8; 12] {
        let mut next = || {
            self.txid_state = self.txid_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.txid_state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let (a, b) = (next(), next());
        let mut id = [0u8; 12];
        id[..8].copy_from_slice(&a.to_le_bytes());
        id[8..].copy_from_slice(&b.to_le_bytes()[..4]);
        id
    }

    #[inline]
    fn channel_data(&mut self, now: Instant, from: ClientAddr, packet: &[u8]) -> Option<Forward> {
        let Some((number, data)) = wire::parse_channel_data(packet) else {
            self.stats.record_drop(DropReason::Malformed);
            return None;
        };
        let Some((slot, alloc)) = self.allocation_of(from, now) else {
            self.stats.record_drop(DropReason::NoAllocation);
            return None;
        };
        let Some(peer) = alloc.channel_peer(number, now) else {
            self.stats.record_drop(DropReason::NoChannel);
            return None;
        };
        if !alloc.permits(peer.ip(), now) {
            self.stats.record_drop(DropReason::NoPermission);
            return None;
        }
        let port = alloc.port;
        if !self.within_bandwidth(slot, data.len(), now) {
            return None;
        }
        self.stats.relayed(Direction::ClientToPeer, data.len());
        Some(Forward { port, peer: PeerAddr(peer), payload: data })
    }

    #[inline]
    fn allocation_of(&self, client: ClientAddr, now: Instant) -> Option<(Slot, &Allocation)> {
        self.allocations.by_client(client).filter(|(_, a)| a.expires > now)
    }

    fn stun(
        &mut self,
        now: Instant,
        from: ClientAddr,
        packet: &[u8],
        sockets: &mut impl RelaySockets,
    ) -> Option<Forward> {
        let frame = match StunFrame::parse(packet) {
            Ok(frame) => frame,
            Err(FrameError::Malformed) => {
                self.stats.record_drop(DropReason::Malformed);
                return None;
            }
            Err(FrameError::BadFingerprint) => {
                self.stats.record_drop(DropReason::BadFingerprint);
                return None;
            }
        };
        match (frame.class(), frame.method()) {
            (CLASS_INDICATION, SEND) => self.send_indication(now, from, packet, &frame),
            (CLASS_REQUEST, method) => {
                self.request(now, from, packet, &frame, method, sockets);
                None
            }
            _ => {
                self.stats.record_drop(DropReason::UnexpectedMessage);
                None
            }
        }
    }

    /// RFC 8656 §11.4: a Send indication is relayed if the allocation has a permission for the
    /// peer; otherwise it is silently discarded.
    fn send_indication(&mut self, now: Instant, from: ClientAddr, packet: &[u8], frame: &StunFrame) -> Option<Forward> {
        let send = match wire::parse_send_indication(packet, &frame.transaction_id) {
            Ok(send) => send,
            Err(wire::SendError::UnknownRequiredAttribute) => {
                self.stats.record_drop(DropReason::UnknownAttribute);
                return None;
            }
            Err(_) => {
                self.stats.record_drop(DropReason::Malformed);
                return None;
            }
        };
        let Some((slot, alloc)) = self.allocation_of(from, now) else {
            self.stats.record_drop(DropReason::NoAllocation);
            return None;
        };
        if !alloc.permits(send.peer.ip(), now) {
            self.stats.record_drop(DropReason::NoPermission);
            return None;
        }
        // The permission covers an IP; the port is only known now, so the self-relay check is here.
        if self.config.self_relay(send.peer) {
            self.stats.record_drop(DropReason::PeerBlocked);
            return None;
        }
        let port = alloc.port;
        if !self.within_bandwidth(slot, send.data.len(), now) {
            return None;
        }
        self.stats.relayed(Direction::ClientToPeer, send.data.len());
        Some(Forward { port, peer: PeerAddr(send.peer), payload: send.data })
    }

    fn request(
        &mut self,
        now: Instant,
        from: ClientAddr,
        packet: &[u8],
        frame: &StunFrame,
        method: u16,
        sockets: &mut impl RelaySockets,
    ) {
        let label = match method {
            BINDING => Method::Binding,
            ALLOCATE => Method::Allocate,
            REFRESH => Method::Refresh,
            CREATE_PERMISSION => Method::CreatePermission,
            CHANNEL_BIND => Method::ChannelBind,
            _ => Method::Other,
        };
        self.stats.requests[label as usize].inc();
        // An unsigned request from a source without an allocation can only get an
        // unauthenticated answer: ask the limiter before doing any work for it (a flood's case).
        self.limit_checked = false;
        if frame.integrity_at.is_none() && !self.allocations.contains(from) {
            if !self.limiter.allow(from.0.ip(), self.clock) {
                self.stats.record_drop(DropReason::RateLimited);
                return;
            }
            self.limit_checked = true;
        }
        if label == Method::Other {
            // RFC 8489 §6.3.1.1 leaves unknown methods to the usage; TURN servers answer 400.
            return self.error(from, frame, 400, None);
        }

        let body = &packet[..frame.effective_len];
        let unknown: Vec<u16> = Attributes::new(body)
            .flatten()
            .map(|a| a.typ)
            .filter(|t| *t < 0x8000 && !KNOWN_REQUIRED.contains(t))
            .collect();
        if !unknown.is_empty() {
            let mut reply = Reply::error(frame, 420);
            reply.add(&stun::uattrs::UnknownAttributes(unknown.into_iter().map(AttrType).collect()));
            return self.send(from, reply, None);
        }

        let mut msg = Message::new();
        if msg.unmarshal_binary(packet).is_err() {
            // StunFrame::parse accepted it, so the crate should too; be safe anyway.
            self.stats.record_drop(DropReason::Malformed);
            return;
        }
        // RFC 8489 §14.5: ignore everything after MESSAGE-INTEGRITY (FINGERPRINT is checked).
        let keep = msg
            .attributes
            .0
            .iter()
            .position(|a| a.typ == stun::attributes::ATTR_MESSAGE_INTEGRITY)
            .map_or(msg.attributes.0.len(), |i| i + 1);
        msg.attributes.0.truncate(keep);
        msg.attributes.0.retain(|a| a.typ != stun::attributes::ATTR_FINGERPRINT);

        if method == BINDING {
            // RFC 8489 §9: Binding needs no credentials.
            let mut reply = Reply::success(frame);
            reply.add(&XorMappedAddress { ip: from.0.ip(), port: from.0.port() });
            return self.send(from, reply, None);
        }

        let Some(auth) = self.authenticate(now, from, packet, frame, &msg) else {
            return;
        };
        match method {
            ALLOCATE => self.allocate(now, from, frame, &msg, auth, sockets),
            REFRESH => self.refresh(now, from, frame, &msg, &auth),
            CREATE_PERMISSION => self.create_permission(now, from, frame, &msg, &auth, sockets),
            CHANNEL_BIND => self.channel_bind(now, from, frame, &msg, &auth, sockets),
            _ => unreachable!("methods other than these returned above"),
        }
    }

    /// Removes the allocation in `slot`: its quota and port go back, its socket is to be closed.
    fn remove(&mut self, slot: Slot, reason: &'static str) {
        let Some(alloc) = self.allocations.remove(slot) else { return };
        self.shared.quotas.release(&alloc.username);
        self.shared.put_port(alloc.port);
        if alloc.bound {
            self.events.push_back(Event::RelayClosed(alloc.port));
            self.stats.relay_sockets_open.add(-1);
        }
        self.stats.allocations_active.add(-1);
        alloc.span.in_scope(|| info!(reason, "allocation closed"));
    }

    fn error(&mut self, to: ClientAddr, frame: &StunFrame, code: u16, key: Option<Key>) {
        self.send(to, Reply::error(frame, code), key.as_ref());
    }

    fn send(&mut self, to: ClientAddr, reply: Reply, key: Option<&Key>) {
        // Unauthenticated answers to sources without an allocation: the reflection vector.
        if key.is_none()
            && !self.limit_checked
            && !self.allocations.contains(to)
            && !self.limiter.allow(to.0.ip(), self.clock)
        {
            self.stats.record_drop(DropReason::RateLimited);
            return;
        }
        if let Some(code) = reply.code {
            self.stats.error_response(code);
        }
        let payload = reply.finish(&self.config.software, key);
        self.transmits.push_back(Transmit { to, payload });
    }
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer").field("allocations", &self.allocations.len()).finish_non_exhaustive()
    }
}
