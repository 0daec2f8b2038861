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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_SOFTWARE, ATTR_USERNAME, AttrType};
use stun::error_code::{ErrorCode, ErrorCodeAttribute};
use stun::message::{CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE, Message, MessageClass, MessageType, Setter};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tracing::{debug, info, warn};

use super::allocation::{Allocation, BindConflict};
use super::auth::{CredentialKind, Credentials, Key, NonceSource, verify_integrity};
use super::limit::{Bandwidth, ByteBucket, Lease, Rates, SourceLimiter};
use super::peer_filter::{PeerFilter, canonical};
use super::shared::{QuotaError, Shared};
use super::stats::{AuthFailure, Direction, DropReason, Method, Stats};
use super::types::{ChannelNumber, ClientAddr, PeerAddr, RelayPort, Username};
use super::wire::{self, Attributes, FrameError, Kind, StunFrame};

/// STUN methods (RFC 8489 §18.2, RFC 8656 §17).
const BINDING: u16 = 0x001;
const ALLOCATE: u16 = 0x003;
const REFRESH: u16 = 0x004;
const SEND: u16 = 0x006;
const CREATE_PERMISSION: u16 = 0x008;
const CHANNEL_BIND: u16 = 0x009;

const CLASS_REQUEST: u8 = 0;
const CLASS_INDICATION: u8 = 1;

/// Attribute types (RFC 8489 §18.3, RFC 8656 §18) read by the handlers.
const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
const ATTR_LIFETIME: u16 = 0x000D;
const ATTR_REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
const ATTR_EVEN_PORT: u16 = 0x0018;
const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
const ATTR_RESERVATION_TOKEN: u16 = 0x0022;

/// Comprehension-required attributes (type < 0x8000) this server understands; any other in a
/// request gets 420 Unknown Attribute (RFC 8489 §7.3.1). DONT-FRAGMENT (0x001A) is deliberately
/// absent: RFC 8656 §7.2 says a server that does not support it answers 420, and the client
/// retries without it. MESSAGE-INTEGRITY-SHA256 and USERHASH are absent because this server does
/// not offer them (no PASSWORD-ALGORITHMS, no nonce cookie), so a client has no reason to send them.
const KNOWN_REQUIRED: &[u16] = &[
    0x0001, // MAPPED-ADDRESS
    0x0006, // USERNAME
    0x0008, // MESSAGE-INTEGRITY
    0x0009, // ERROR-CODE
    0x000A, // UNKNOWN-ATTRIBUTES
    ATTR_CHANNEL_NUMBER,
    ATTR_LIFETIME,
    wire::ATTR_XOR_PEER_ADDRESS,
    wire::ATTR_DATA,
    0x0014, // REALM
    0x0015, // NONCE
    0x0016, // XOR-RELAYED-ADDRESS
    ATTR_REQUESTED_ADDRESS_FAMILY,
    ATTR_EVEN_PORT,
    ATTR_REQUESTED_TRANSPORT,
    0x0020, // XOR-MAPPED-ADDRESS
    ATTR_RESERVATION_TOKEN,
    0x0024, // PRIORITY (ICE, RFC 8445)
    0x0025, // USE-CANDIDATE (ICE)
];

/// RFC 8656 §14.7: REQUESTED-TRANSPORT value for UDP.
const PROTOCOL_UDP: u8 = 17;

/// How often expired permissions and channels are swept from all allocations. Lookups already
/// ignore expired entries; the sweep only reclaims memory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// How many random ports an Allocate tries before giving up with 508; a port can be taken by
/// another program on the host even though the pool thinks it free.
const BIND_ATTEMPTS: usize = 16;

/// Addresses that are the relay itself: a peer address with one of these IPs and one of these
/// ports would make the relay send to itself, which it never does.
#[derive(Debug, Clone, Default)]
pub struct OwnAddresses {
    /// The listening and relay IPs and every local interface address (loopback and unspecified
    /// addresses always count as own).
    pub ips: Vec<IpAddr>,
    /// The UDP listening port(s). Relay ports are not among them: relaying from one allocation
    /// to another on the same relay is what two clients that both need TURN do (ICE between two
    /// relayed candidates), and it cannot loop, since what reaches a relay port goes to that
    /// allocation's client.
    pub ports: Vec<RangeInclusive<u16>>,
}

impl OwnAddresses {
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.ports.iter().any(|r| r.contains(&addr.port())) && self.has_ip(addr.ip())
    }

    /// Whether `ip` is one of the relay's addresses.
    pub fn has_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_loopback() || ip.is_unspecified() || self.ips.iter().any(|own| canonical(*own) == ip)
    }
}

/// Everything the core needs to know, fixed at start.
#[derive(Debug)]
pub struct ServerConfig {
    /// SOFTWARE attribute in every response (RFC 8489 §14.14).
    pub software: String,
    /// The credentials at start; `TurnServer::set_credentials` replaces them at run time.
    pub credentials: Credentials,
    pub nonces: NonceSource,
    /// The address relay sockets are bound to (its family is the allocations' family).
    pub relay_ip: IpAddr,
    /// The address put in XOR-RELAYED-ADDRESS: the public address behind 1:1 NAT, else `relay_ip`.
    pub advertised_ip: IpAddr,
    /// A relay address of the other family, for dual-stack relays (RFC 6156).
    pub relay_ip_other: Option<RelayIp>,
    /// RFC 8656 §7.2: lifetime when the client asks for less or nothing (600 s).
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub max_permissions: usize,
    pub max_channels: usize,
    /// Accept channel numbers up to 0x7FFF (RFC 5766) and not only to 0x4FFF (RFC 8656).
    pub rfc5766_channel_numbers: bool,
    pub peer_filter: PeerFilter,
    pub own: OwnAddresses,
    /// The SFU's ICE candidates on the listening port, when the SFU runs: the one place the
    /// relay relays to itself, so that clients that only have TURN reach the SFU. They are
    /// allowed as peers despite the peer filter and the self-relay rule, but only exactly (port
    /// included; the permission this installs for their IP does not open its other ports to
    /// Send or ChannelBind), and datagrams reaching the
    /// listening port from the relay's own relay ports are the SFU's or dropped.
    pub sfu: Vec<SocketAddr>,
    /// Caps on answers to unauthenticated requests, per source IP and for the whole relay (the
    /// total is one budget in [`Shared`], whatever the number of cores).
    pub unauthenticated: Rates,
    /// Caps on relayed bandwidth, per allocation and for the whole relay (one budget in
    /// [`Shared`]).
    pub bandwidth: Bandwidth,
}

/// A relay address: what relay sockets bind to and what clients are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayIp {
    pub bind: IpAddr,
    pub advertised: IpAddr,
}

impl ServerConfig {
    /// The relay address of the family asked for, if the relay has one.
    pub fn relay_for(&self, v6: bool) -> Option<RelayIp> {
        let primary = RelayIp { bind: self.relay_ip, advertised: self.advertised_ip };
        [Some(primary), self.relay_ip_other].into_iter().flatten().find(|r| r.bind.is_ipv6() == v6)
    }

    /// Whether `ip` is the IP of one of the SFU's candidates.
    fn sfu_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.sfu.iter().any(|a| canonical(a.ip()) == ip)
    }

    /// Whether relaying to `peer` would be the relay sending to itself (or, for an SFU IP the
    /// peer filter refuses, to anything but the SFU).
    fn self_relay(&self, peer: SocketAddr) -> bool {
        if self.sfu.contains(&peer) {
            return false;
        }
        self.own.contains(peer) || (self.sfu_ip(peer.ip()) && self.peer_filter.check(peer.ip()).is_err())
    }
}

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

/// Which relay port an Allocate gets.
#[derive(Debug, Clone, Copy)]
enum PortChoice {
    Any {
        even: bool,
    },
    /// EVEN-PORT with R: an even port, the next one reserved.
    Pair,
    /// A port reserved earlier, claimed by RESERVATION-TOKEN.
    Reserved(RelayPort),
}

/// Who a request was authenticated as.
struct Authenticated {
    username: Username,
    key: Key,
    credential: CredentialKind,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub struct TurnServer {
    config: Arc<ServerConfig>,
    credentials: Arc<Credentials>,
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    slots: Vec<Option<Allocation>>,
    free_slots: Vec<u32>,
    by_client: FastMap<ClientAddr, u32>,
    /// Relay port → slot + 1 (0 = none); indexed directly, so the peer path does no hashing.
    by_port: Vec<u32>,
    expiries: BinaryHeap<Reverse<(Instant, u32)>>,
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
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_client: FastMap::default(),
            by_port: vec![0; usize::from(u16::MAX) + 1],
            expiries: BinaryHeap::new(),
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
        self.by_client.len()
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
    fn within_bandwidth(&mut self, slot: u32, bytes: usize, now: Instant) -> bool {
        let alloc = self.slots[slot as usize].as_mut().and_then(|a| a.bandwidth.as_mut());
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
        self.by_client.contains_key(&client)
    }

    /// The client's connection is gone (TCP, TLS): its allocation goes with it (RFC 8656 §3.1).
    pub fn close_client(&mut self, client: ClientAddr) {
        if let Some(&slot) = self.by_client.get(&client) {
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
        let next_expiry = self.expiries.peek().map(|Reverse((t, _))| *t);
        Some(next_expiry.map_or(self.next_sweep, |t| t.min(self.next_sweep)))
    }

    /// Expires allocations whose lifetime is over and sweeps expired permissions and channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((due, slot))) = self.expiries.peek() {
            if due > now {
                break;
            }
            self.expiries.pop();
            // Entries are not removed on refresh; an entry whose allocation was refreshed, removed,
            // or replaced by another in the same slot is recognised by the allocation's own expiry.
            let expired = self.slots.get(slot as usize).and_then(Option::as_ref).is_some_and(|a| a.expires <= now);
            if expired {
                self.remove(slot, "expired");
            }
        }
        if now >= self.next_sweep {
            for alloc in self.slots.iter_mut().flatten() {
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
        let slot = self.by_port[usize::from(port.0)].checked_sub(1);
        let alloc = slot.and_then(|slot| self.slots.get(slot as usize)).and_then(Option::as_ref);
        let (Some(slot), Some(alloc)) = (slot, alloc) else {
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
    fn allocation_of(&self, client: ClientAddr, now: Instant) -> Option<(u32, &Allocation)> {
        let slot = *self.by_client.get(&client)?;
        self.slots[slot as usize].as_ref().filter(|a| a.expires > now).map(|a| (slot, a))
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
        if frame.integrity_at.is_none() && !self.by_client.contains_key(&from) {
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

    /// RFC 8489 §9.2.4. Sends the error response itself and returns `None` on failure.
    fn authenticate(
        &mut self,
        now: Instant,
        from: ClientAddr,
        packet: &[u8],
        frame: &StunFrame,
        msg: &Message,
    ) -> Option<Authenticated> {
        let Some(integrity_at) = frame.integrity_at else {
            self.stats.auth_challenges.inc();
            self.challenge(now, from, frame, 401);
            return None;
        };
        let text = |attr| TextAttribute::get_from_as(msg, attr).ok().map(|t| t.text);
        let (Some(username), Some(_realm), Some(nonce)) = (text(ATTR_USERNAME), text(ATTR_REALM), text(ATTR_NONCE))
        else {
            self.stats.auth_failure(AuthFailure::MissingAttributes);
            self.error(from, frame, 400, None);
            return None;
        };

        let existing = self.by_client.get(&from).and_then(|&s| self.slots[s as usize].as_ref());
        let (key, credential) = match existing {
            Some(alloc) if alloc.username.as_str() != username => {
                // RFC 8656 §5: requests on an allocation must use the credentials that created it.
                self.stats.auth_failure(AuthFailure::WrongCredentials);
                debug!(client = %from, "request with other credentials than its allocation's");
                self.error(from, frame, 441, None);
                return None;
            }
            Some(alloc) => {
                if !verify_integrity(packet, integrity_at, &alloc.key) {
                    self.stats.auth_failure(AuthFailure::BadIntegrity);
                    self.challenge(now, from, frame, 401);
                    return None;
                }
                (alloc.key, alloc.credential)
            }
            None => {
                let candidates = self.credentials.candidates(&username);
                let Some(kind) = candidates.kind else {
                    self.stats.auth_failure(AuthFailure::UnknownUser);
                    debug!(client = %from, "unknown username");
                    self.challenge(now, from, frame, 401);
                    return None;
                };
                let Some(key) = candidates.keys.iter().find(|k| verify_integrity(packet, integrity_at, k)) else {
                    self.stats.auth_failure(AuthFailure::BadIntegrity);
                    debug!(client = %from, "MESSAGE-INTEGRITY mismatch");
                    self.challenge(now, from, frame, 401);
                    return None;
                };
                (*key, kind)
            }
        };
        if !self.config.nonces.is_valid(now, from.0, &nonce) {
            self.stats.auth_failure(AuthFailure::StaleNonce);
            self.challenge(now, from, frame, 438);
            return None;
        }
        Some(Authenticated { username: Username::new(&username), key, credential })
    }

    /// A 401 or 438 carrying REALM and a fresh NONCE (RFC 8489 §9.2.4).
    fn challenge(&mut self, now: Instant, from: ClientAddr, frame: &StunFrame, code: u16) {
        let mut reply = Reply::error(frame, code);
        reply.add(&TextAttribute::new(ATTR_REALM, self.credentials.realm().to_owned()));
        reply.add(&TextAttribute::new(ATTR_NONCE, self.config.nonces.issue(now, from.0)));
        self.send(from, reply, None);
    }

    fn allocate(
        &mut self,
        now: Instant,
        from: ClientAddr,
        frame: &StunFrame,
        msg: &Message,
        auth: Authenticated,
        sockets: &mut impl RelaySockets,
    ) {
        let key = Some(auth.key);
        if let Some(&slot) = self.by_client.get(&from) {
            let alloc = self.slots[slot as usize].as_ref().expect("by_client points at live slots");
            if alloc.allocate_transaction == frame.transaction_id {
                // A retransmission: the same answer again (RFC 8656 §7.2).
                let payload = alloc.allocate_response.clone();
                self.transmits.push_back(Transmit { to: from, payload });
                return;
            }
            return self.error(from, frame, 437, key);
        }

        match attr(msg, ATTR_REQUESTED_TRANSPORT) {
            Some([PROTOCOL_UDP, _, _, _]) => {}
            Some([_, _, _, _]) => return self.error(from, frame, 442, key),
            _ => return self.error(from, frame, 400, key),
        }
        // EVEN-PORT (RFC 8656 §14.6): an even port, and with the R bit the next port reserved
        // for the client's RTCP allocation, which it claims with the RESERVATION-TOKEN we return.
        let choice = match attr(msg, ATTR_EVEN_PORT) {
            None => PortChoice::Any { even: false },
            Some([flags]) if flags & 0x80 != 0 => PortChoice::Pair,
            Some([_]) => PortChoice::Any { even: true },
            Some(_) => return self.error(from, frame, 400, key),
        };
        let family = attr(msg, ATTR_REQUESTED_ADDRESS_FAMILY);
        let token = attr(msg, ATTR_RESERVATION_TOKEN);
        if token.is_some() && (msg_has(msg, ATTR_EVEN_PORT) || family.is_some()) {
            // RFC 8656 §7.2: a token with EVEN-PORT or REQUESTED-ADDRESS-FAMILY is a bad request.
            return self.error(from, frame, 400, key);
        }
        // RFC 6156: the family asked for, or 440 if the relay has none of it. Unasked, the family
        // the client came in with (browsers ask only for IPv6, and only when they reach the
        // server over IPv6), else whatever the relay has.
        let relay = match family {
            None => {
                let v6 = from.0.ip().to_canonical().is_ipv6();
                self.config.relay_for(v6).or_else(|| self.config.relay_for(!v6))
            }
            Some([1, _, _, _]) => self.config.relay_for(false),
            Some([2, _, _, _]) => self.config.relay_for(true),
            Some(_) => None,
        };
        let Some(relay) = relay else {
            return self.error(from, frame, 440, key);
        };
        if self.draining {
            return self.error(from, frame, 508, key);
        }
        let unix_now = self.unix_now(now);
        if let CredentialKind::Rest { expiry } = auth.credential
            && expiry <= unix_now
        {
            self.stats.auth_failure(AuthFailure::Expired);
            debug!(client = %from, expiry, unix_now, "expired REST credential");
            return self.challenge(now, from, frame, 401);
        }
        let choice = match token {
            // An unknown or expired token: 508, as RFC 8656 §7.2 says.
            Some(token) => match self.shared.redeem(token, now) {
                Some(port) => PortChoice::Reserved(port),
                None => return self.error(from, frame, 508, key),
            },
            None => choice,
        };
        match self.shared.quotas.acquire(&auth.username) {
            Ok(()) => {}
            Err(QuotaError::User) => {
                self.release_choice(choice);
                return self.error(from, frame, 486, key);
            }
            Err(QuotaError::Total) => {
                self.release_choice(choice);
                return self.error(from, frame, 508, key);
            }
        }
        let Some((port, reservation)) = self.open_relay(now, choice, relay.bind, sockets) else {
            self.shared.quotas.release(&auth.username);
            return self.error(from, frame, 508, key);
        };

        let lifetime = self.lifetime(msg);
        let span = tracing::info_span!("allocation", client = %from, relay = %port, user = %auth.username);
        let mut alloc = Allocation::new(
            from,
            relay.bind,
            port,
            auth.username,
            auth.key,
            auth.credential,
            now + lifetime,
            frame.transaction_id,
            span,
        );
        let mut reply = Reply::success(frame);
        reply.add(&turn::proto::relayaddr::RelayedAddress { ip: relay.advertised, port: port.0 });
        reply.add(&turn::proto::lifetime::Lifetime(lifetime));
        reply.add(&XorMappedAddress { ip: from.0.ip(), port: from.0.port() });
        if let Some(token) = reservation {
            reply.add(&turn::proto::rsrvtoken::ReservationToken(token.to_vec()));
        }
        let response = reply.finish(&self.config.software, key.as_ref());
        alloc.allocate_response = response.clone();
        alloc.bandwidth = ByteBucket::new(self.config.bandwidth.per_allocation_bps, now);
        alloc.span.in_scope(|| info!(lifetime_s = lifetime.as_secs(), "allocation created"));

        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(alloc);
                slot
            }
            None => {
                self.slots.push(Some(alloc));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_client.insert(from, slot);
        self.by_port[usize::from(port.0)] = slot + 1;
        self.expiries.push(Reverse((now + lifetime, slot)));
        self.stats.allocations_created.inc();
        self.stats.allocations_active.add(1);
        self.transmits.push_back(Transmit { to: from, payload: response });
    }

    /// A reserved port that will not be used goes back to the pool.
    fn release_choice(&self, choice: PortChoice) {
        if let PortChoice::Reserved(port) = choice {
            self.shared.put_port(port);
        }
    }

    /// Takes a port as `choice` says and binds it, trying other random ports when one is in use.
    /// With `PortChoice::Pair` the port's successor is reserved and its token returned.
    fn open_relay(
        &mut self,
        now: Instant,
        choice: PortChoice,
        ip: IpAddr,
        sockets: &mut impl RelaySockets,
    ) -> Option<(RelayPort, Option<[u8; 8]>)> {
        if let PortChoice::Reserved(port) = choice {
            return match sockets.probe(ip, port) {
                Ok(()) => Some((port, None)),
                Err(e) => {
                    debug!(%port, error = %e, "reserved relay port unavailable");
                    self.shared.put_port(port);
                    None
                }
            };
        }
        let mut busy = Vec::new();
        let mut opened = None;
        for _ in 0..BIND_ATTEMPTS {
            let (port, next) = match choice {
                PortChoice::Pair => match self.shared.take_pair() {
                    Some((port, next)) => (port, Some(next)),
                    None => break,
                },
                PortChoice::Any { even } => match self.shared.take_port(even) {
                    Some(port) => (port, None),
                    None => break,
                },
                PortChoice::Reserved(_) => unreachable!("handled above"),
            };
            match sockets.probe(ip, port) {
                Ok(()) => {
                    let token = next.map(|next| {
                        let token: [u8; 8] = self.next_transaction_id()[..8].try_into().expect("12 > 8 bytes");
                        self.shared.reserve(token, next, now);
                        token
                    });
                    opened = Some((port, token));
                    break;
                }
                Err(e) => {
                    debug!(%port, error = %e, "relay port unavailable");
                    busy.push(port);
                    busy.extend(next);
                    if e.kind() != io::ErrorKind::AddrInUse {
                        break;
                    }
                }
            }
        }
        // Ports in use by someone else go back: they may be free by the time they come round again.
        for port in busy {
            self.shared.put_port(port);
        }
        opened
    }

    /// RFC 8656 §7.2: min(requested, maximum), but no less than the default.
    fn lifetime(&self, msg: &Message) -> Duration {
        let requested = match attr(msg, ATTR_LIFETIME) {
            Some(&[a, b, c, d]) => Duration::from_secs(u64::from(u32::from_be_bytes([a, b, c, d]))),
            _ => self.config.default_lifetime,
        };
        requested.min(self.config.max_lifetime).max(self.config.default_lifetime.min(self.config.max_lifetime))
    }

    /// RFC 8656 §7.3 (Refresh): LIFETIME 0 deletes the allocation; otherwise it is extended.
    fn refresh(&mut self, now: Instant, from: ClientAddr, frame: &StunFrame, msg: &Message, auth: &Authenticated) {
        let key = Some(auth.key);
        let Some(&slot) = self.by_client.get(&from) else {
            return self.error(from, frame, 437, key);
        };
        if let Some(family) = attr(msg, ATTR_REQUESTED_ADDRESS_FAMILY) {
            let alloc = self.slots[slot as usize].as_ref().expect("by_client points at live slots");
            let ours = if alloc.relay_ip.is_ipv4() { 1 } else { 2 };
            if family.first() != Some(&ours) {
                return self.error(from, frame, 443, key);
            }
        }
        let zero = matches!(attr(msg, ATTR_LIFETIME), Some([0, 0, 0, 0]));
        let lifetime = if zero { Duration::ZERO } else { self.lifetime(msg) };
        let mut reply = Reply::success(frame);
        reply.add(&turn::proto::lifetime::Lifetime(lifetime));
        self.send(from, reply, key.as_ref());
        if zero {
            self.remove(slot, "deleted by client");
        } else {
            let alloc = self.slots[slot as usize].as_mut().expect("by_client points at live slots");
            alloc.expires = now + lifetime;
            alloc.sweep(now);
            alloc.span.in_scope(|| debug!(lifetime_s = lifetime.as_secs(), "allocation refreshed"));
            self.expiries.push(Reverse((now + lifetime, slot)));
        }
    }

    /// The XOR-PEER-ADDRESS attributes of a request, decoded; `Err(400)` if any is malformed.
    fn peer_addresses(msg: &Message) -> Result<Vec<SocketAddr>, u16> {
        msg.attributes
            .0
            .iter()
            .filter(|a| a.typ.0 == wire::ATTR_XOR_PEER_ADDRESS)
            .map(|a| wire::read_xor_address(&a.value, &msg.transaction_id.0).ok_or(400))
            .collect()
    }

    /// The error code for a peer address the relay must not use: 403 if filtered (RFC 8656 §9.1
    /// lets the server restrict peers), 443 if its family differs from the allocation's.
    fn check_peer(&self, peer: SocketAddr, check_port: bool, relay_ip: IpAddr) -> Result<(), u16> {
        // The SFU's candidate is allowed exactly, port included, even in CreatePermission (whose
        // port RFC 8656 otherwise ignores; browsers put the candidate's port there): a loopback
        // or private SFU address must not open its IP's other ports.
        let sfu = self.config.sfu.contains(&peer);
        if !sfu && (self.config.peer_filter.check(peer.ip()).is_err() || (check_port && self.config.own.contains(peer)))
        {
            return Err(403);
        }
        if peer.is_ipv4() != relay_ip.is_ipv4() {
            return Err(443);
        }
        Ok(())
    }

    /// RFC 8656 §9.2: installs or refreshes permissions for every XOR-PEER-ADDRESS, all or none.
    fn create_permission(
        &mut self,
        now: Instant,
        from: ClientAddr,
        frame: &StunFrame,
        msg: &Message,
        auth: &Authenticated,
        sockets: &mut impl RelaySockets,
    ) {
        let key = Some(auth.key);
        let Some(&slot) = self.by_client.get(&from) else {
            return self.error(from, frame, 437, key);
        };
        let peers = match Self::peer_addresses(msg) {
            Ok(peers) if !peers.is_empty() => peers,
            Ok(_) | Err(_) => return self.error(from, frame, 400, key),
        };
        let relay_ip = self.slots[slot as usize].as_ref().expect("by_client points at live slots").relay_ip;
        if let Some(code) = peers.iter().find_map(|p| self.check_peer(*p, false, relay_ip).err()) {
            if code == 403 {
                debug!(client = %from, "CreatePermission to a forbidden peer");
            }
            return self.error(from, frame, code, key);
        }
        let ips: Vec<IpAddr> = peers.iter().map(SocketAddr::ip).collect();
        let max = self.config.max_permissions;
        let alloc = self.slots[slot as usize].as_mut().expect("by_client points at live slots");
        if alloc.permission_count(now) + alloc.new_permissions_needed(&ips, now) > max {
            return self.error(from, frame, 508, key);
        }
        if !self.bind_relay(slot, sockets) {
            return self.error(from, frame, 508, key);
        }
        let alloc = self.slots[slot as usize].as_mut().expect("by_client points at live slots");
        for ip in &ips {
            alloc.permit(*ip, now);
        }
        alloc.span.in_scope(|| debug!(peers = ?ips, "permissions installed"));
        self.send(from, Reply::success(frame), key.as_ref());
    }

    /// RFC 8656 §12.2: binds a channel number to a peer, and installs its permission.
    fn channel_bind(
        &mut self,
        now: Instant,
        from: ClientAddr,
        frame: &StunFrame,
        msg: &Message,
        auth: &Authenticated,
        sockets: &mut impl RelaySockets,
    ) {
        let key = Some(auth.key);
        let Some(&slot) = self.by_client.get(&from) else {
            return self.error(from, frame, 437, key);
        };
        let raw_number = match attr(msg, ATTR_CHANNEL_NUMBER) {
            Some(&[a, b, _, _]) => Some(u16::from_be_bytes([a, b])),
            _ => None,
        };
        let number = raw_number.and_then(|n| ChannelNumber::new_in(n, self.config.rfc5766_channel_numbers));
        if raw_number.is_some() && number.is_none() {
            debug!(client = %from, number = ?raw_number, "ChannelBind outside 0x4000-0x4FFF");
        }
        let peer = match Self::peer_addresses(msg).as_deref() {
            Ok([peer, ..]) => Some(*peer),
            _ => None,
        };
        let (Some(number), Some(peer)) = (number, peer) else {
            return self.error(from, frame, 400, key);
        };
        let relay_ip = self.slots[slot as usize].as_ref().expect("by_client points at live slots").relay_ip;
        if let Err(code) = self.check_peer(peer, true, relay_ip) {
            return self.error(from, frame, code, key);
        }
        let (max_channels, max_permissions) = (self.config.max_channels, self.config.max_permissions);
        let alloc = self.slots[slot as usize].as_mut().expect("by_client points at live slots");
        if !alloc.permits(peer.ip(), now) && alloc.permission_count(now) >= max_permissions {
            return self.error(from, frame, 508, key);
        }
        if !self.bind_relay(slot, sockets) {
            return self.error(from, frame, 508, key);
        }
        let alloc = self.slots[slot as usize].as_mut().expect("by_client points at live slots");
        match alloc.bind_channel(number.get(), peer, now, max_channels) {
            Ok(()) => {}
            Err(BindConflict::TooMany) => return self.error(from, frame, 508, key),
            Err(conflict) => {
                alloc.span.in_scope(|| debug!(channel = %number, %peer, ?conflict, "ChannelBind refused"));
                return self.error(from, frame, 400, key);
            }
        }
        alloc.permit(peer.ip(), now);
        alloc.span.in_scope(|| debug!(channel = %number, %peer, "channel bound"));
        self.send(from, Reply::success(frame), key.as_ref());
    }

    /// Opens the allocation's relay socket if it has none yet; false if the port cannot be bound.
    fn bind_relay(&mut self, slot: u32, sockets: &mut impl RelaySockets) -> bool {
        let alloc = self.slots[slot as usize].as_mut().expect("callers pass live slots");
        if alloc.bound {
            return true;
        }
        match sockets.open(alloc.relay_ip, alloc.port) {
            Ok(()) => {
                alloc.bound = true;
                self.stats.relay_sockets_open.add(1);
                true
            }
            Err(e) => {
                alloc.span.in_scope(|| warn!(error = %e, "relay port taken since Allocate; cannot relay"));
                false
            }
        }
    }

    fn remove(&mut self, slot: u32, reason: &'static str) {
        let Some(alloc) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.by_client.remove(&alloc.client);
        self.by_port[usize::from(alloc.port.0)] = 0;
        self.free_slots.push(slot);
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
            && !self.by_client.contains_key(&to)
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

fn msg_has(msg: &Message, typ: u16) -> bool {
    attr(msg, typ).is_some()
}

/// The value of the first attribute of type `typ`.
fn attr(msg: &Message, typ: u16) -> Option<&[u8]> {
    msg.attributes.0.iter().find(|a| a.typ.0 == typ).map(|a| a.value.as_slice())
}

/// A response under construction, built with the `stun` crate.
struct Reply {
    msg: Message,
    code: Option<u16>,
}

impl Reply {
    /// A response of `class` to the request in `frame`, with the request's method (RFC 8489 §6.3:
    /// responses mirror the request's method and transaction id).
    fn new(frame: &StunFrame, class: MessageClass) -> Self {
        let mut typ = MessageType::default();
        typ.read_value(frame.typ);
        typ.class = class;
        let mut msg = Message::new();
        msg.typ = typ;
        msg.transaction_id = TransactionId(frame.transaction_id);
        msg.write_header();
        Self { msg, code: None }
    }

    fn success(frame: &StunFrame) -> Self {
        Self::new(frame, CLASS_SUCCESS_RESPONSE)
    }

    fn error(frame: &StunFrame, code: u16) -> Self {
        let mut reply = Self::new(frame, CLASS_ERROR_RESPONSE);
        reply.add(&ErrorCodeAttribute { code: ErrorCode(code), reason: reason(code).as_bytes().to_vec() });
        reply.code = Some(code);
        reply
    }

    fn add(&mut self, attr: &dyn Setter) {
        // Every value added is ours and within the attribute size limits; an error here is a bug.
        if let Err(e) = attr.add_to(&mut self.msg) {
            debug_assert!(false, "building a response: {e}");
        }
    }

    /// SOFTWARE, then MESSAGE-INTEGRITY when the request was authenticated, then FINGERPRINT.
    fn finish(mut self, software: &str, key: Option<&Key>) -> Vec<u8> {
        if !software.is_empty() {
            self.add(&TextAttribute::new(ATTR_SOFTWARE, software.to_owned()));
        }
        if let Some(key) = key {
            self.add(&stun::integrity::MessageIntegrity(key.to_vec()));
        }
        self.add(&stun::fingerprint::FINGERPRINT);
        self.msg.raw
    }
}

/// Reason phrases (RFC 8489 §14.8, RFC 8656 §19).
fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Server Error",
    }
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer").field("allocations", &self.by_client.len()).finish_non_exhaustive()
    }
}
