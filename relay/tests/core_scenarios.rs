//! Scenario tests of the sans-IO TURN core: no sockets, a virtual clock, and requests built with
//! the `stun`/`turn` crates the way an independent client builds them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::testkit::{self, FakeSockets};
use relay::turn::RelayIp;
use relay::turn::auth::{Credentials, NonceSource, long_term_key, rest_password};
use relay::turn::limit::{Bandwidth, Rates};
use relay::turn::peer_filter::PeerFilter;
use relay::turn::stats::{AuthFailure, Direction, DropReason};
use relay::turn::wire::{self, PEER_HEADROOM, PEER_TAILROOM};
use relay::turn::{
    ClientAddr, Event, Forward, PeerAddr, PortPool, Quotas, RelayPort, ServerConfig, Shared, ToClient, TurnServer,
};
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, AttrType};
use stun::error_code::ErrorCodeAttribute;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE,
    METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND, Message, MessageType,
    Method, Setter,
};
use stun::textattrs::TextAttribute;
use turn::proto::channum::ChannelNumber as ChannelNumberAttr;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

const REALM: &str = "test-realm";
const SECRET_A: &str = "secret-a";
const SECRET_B: &str = "secret-b";
/// Unix time at the start of every scenario.
const T0_UNIX: u64 = 1_800_000_000;
const MIN_PORT: u16 = 50000;
const MAX_PORT: u16 = 50099;

struct Options {
    per_user: u32,
    total: u32,
    max_permissions: usize,
    allow: Vec<&'static str>,
    secrets: Vec<&'static str>,
    ports: (u16, u16),
    rfc5766: bool,
    sfu: Vec<&'static str>,
    unauthenticated: Rates,
    relay_ip_other: Option<RelayIp>,
    bandwidth: Bandwidth,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            per_user: 10,
            total: 100,
            max_permissions: 8,
            allow: vec![],
            secrets: vec![SECRET_A],
            ports: (MIN_PORT, MAX_PORT),
            rfc5766: false,
            sfu: vec![],
            unauthenticated: Rates::OFF,
            relay_ip_other: None,
            bandwidth: Bandwidth::default(),
        }
    }
}

struct Harness {
    server: TurnServer,
    sockets: FakeSockets,
    now: Instant,
    t0: Instant,
}

fn relay_ip() -> IpAddr {
    "192.0.2.10".parse().unwrap()
}

impl Harness {
    fn new() -> Self {
        Self::with(Options::default())
    }

    fn with(o: Options) -> Self {
        let t0 = Instant::now();
        let config = ServerConfig {
            credentials: Credentials::new(
                REALM,
                &[("alice".into(), "alice-pw".into())],
                o.secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            ),
            nonces: NonceSource::new([5; 32], t0, Duration::from_secs(600)),
            advertised_ip: "203.0.113.1".parse().unwrap(),
            relay_ip_other: o.relay_ip_other,
            max_permissions: o.max_permissions,
            rfc5766_channel_numbers: o.rfc5766,
            peer_filter: PeerFilter::new(o.allow.iter().map(|a| a.parse().unwrap()).collect(), vec![]),
            sfu: o.sfu.iter().map(|a| a.parse().unwrap()).collect(),
            unauthenticated: o.unauthenticated,
            bandwidth: o.bandwidth,
            ..testkit::server_config(relay_ip(), t0)
        };
        let shared = Arc::new(Shared::new(PortPool::new(o.ports.0, o.ports.1, 1), Quotas::new(o.per_user, o.total)));
        Self {
            server: TurnServer::new(Arc::new(config), shared, t0, T0_UNIX, 9),
            sockets: FakeSockets::default(),
            now: t0,
            t0,
        }
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
    }

    fn unix_now(&self) -> u64 {
        T0_UNIX + (self.now - self.t0).as_secs()
    }

    /// Sends raw bytes from a client; returns the forward decision and the decoded responses.
    fn send_raw(&mut self, from: SocketAddr, bytes: &[u8]) -> (Option<Forward>, Vec<Message>) {
        let forward = self.server.handle_client(self.now, ClientAddr(from), bytes, &mut self.sockets);
        let mut out = Vec::new();
        while let Some(t) = self.server.poll_transmit() {
            assert_eq!(t.to.0, from, "responses go back to the sender");
            let mut m = Message::new();
            m.unmarshal_binary(&t.payload).expect("our responses decode");
            wire::StunFrame::parse(&t.payload).expect("our responses carry a valid FINGERPRINT");
            out.push(m);
        }
        (forward, out)
    }

    fn request(&mut self, from: SocketAddr, msg: &Message) -> Message {
        let (fwd, mut out) = self.send_raw(from, &msg.raw);
        assert!(fwd.is_none());
        assert_eq!(out.len(), 1, "exactly one response");
        out.remove(0)
    }

    /// A datagram from a peer to a relay port; returns what reaches the client.
    fn peer_sends(&mut self, port: u16, peer: SocketAddr, data: &[u8]) -> Option<(ClientAddr, Vec<u8>)> {
        let mut buf = vec![0u8; PEER_HEADROOM + data.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + data.len()].copy_from_slice(data);
        let payload = PEER_HEADROOM..PEER_HEADROOM + data.len();
        let to: ToClient = self.server.handle_peer(self.now, RelayPort(port), PeerAddr(peer), &mut buf, payload)?;
        Some((to.client, buf[to.message].to_vec()))
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }
}

/// A TURN client's view: credentials and the nonce it last got.
struct Client {
    addr: SocketAddr,
    username: String,
    key: [u8; 16],
    nonce: Option<String>,
}

impl Client {
    fn rest(addr: &str, expiry: u64, secret: &str) -> Self {
        let username = format!("{expiry}:player");
        let password = rest_password(secret.as_bytes(), &username);
        Self { addr: addr.parse().unwrap(), key: long_term_key(&username, REALM, &password), username, nonce: None }
    }

    fn static_user(addr: &str, username: &str, password: &str) -> Self {
        Self {
            addr: addr.parse().unwrap(),
            key: long_term_key(username, REALM, password),
            username: username.into(),
            nonce: None,
        }
    }

    /// A request signed with the current nonce (none yet: unsigned).
    fn build(&self, method: Method, attrs: &[&dyn Setter]) -> Message {
        let mut m = Message::new();
        m.typ = MessageType::new(method, CLASS_REQUEST);
        m.new_transaction_id().unwrap();
        m.write_header();
        for a in attrs {
            a.add_to(&mut m).unwrap();
        }
        if let Some(nonce) = &self.nonce {
            TextAttribute::new(ATTR_USERNAME, self.username.clone()).add_to(&mut m).unwrap();
            TextAttribute::new(ATTR_REALM, REALM.into()).add_to(&mut m).unwrap();
            TextAttribute::new(ATTR_NONCE, nonce.clone()).add_to(&mut m).unwrap();
            stun::integrity::MessageIntegrity(self.key.to_vec()).add_to(&mut m).unwrap();
        }
        stun::fingerprint::FINGERPRINT.add_to(&mut m).unwrap();
        m
    }

    /// Sends a request, doing the 401/438 dance like a real client (at most twice).
    fn call(&mut self, h: &mut Harness, method: Method, attrs: &[&dyn Setter]) -> Message {
        for _ in 0..3 {
            let resp = h.request(self.addr, &self.build(method, attrs));
            let code = error_code(&resp);
            if matches!(code, Some(401) | Some(438)) && self.take_nonce(&resp) {
                continue;
            }
            return resp;
        }
        panic!("authentication did not converge");
    }

    /// Takes a new nonce from a 401/438; false if the response repeats the nonce we sent.
    fn take_nonce(&mut self, resp: &Message) -> bool {
        let Ok(n) = TextAttribute::get_from_as(resp, ATTR_NONCE) else { return false };
        if self.nonce.as_deref() == Some(n.text.as_str()) {
            return false;
        }
        self.nonce = Some(n.text);
        true
    }

    fn allocate(&mut self, h: &mut Harness) -> Message {
        self.call(h, METHOD_ALLOCATE, &[&udp()])
    }

    fn relay_port(&mut self, h: &mut Harness) -> u16 {
        let resp = self.allocate(h);
        assert_eq!(resp.typ.class, CLASS_SUCCESS_RESPONSE, "allocate failed: {:?}", error_code(&resp));
        let mut relayed = RelayedAddress::default();
        relayed.get_from(&resp).unwrap();
        assert_eq!(relayed.ip, "203.0.113.1".parse::<IpAddr>().unwrap(), "advertises the external address");
        relayed.port
    }
}

/// An attribute given as raw bytes.
struct RawAttr(u16, Vec<u8>);

impl Setter for RawAttr {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(AttrType(self.0), &self.1);
        Ok(())
    }
}

/// EVEN-PORT (RFC 8656 §14.6), with or without the R bit.
fn even_port(reserve: bool) -> RawAttr {
    RawAttr(0x0018, vec![if reserve { 0x80 } else { 0 }])
}

fn udp() -> RequestedTransport {
    RequestedTransport { protocol: turn::proto::PROTO_UDP }
}

fn peer(addr: &str) -> PeerAddress {
    let a: SocketAddr = addr.parse().unwrap();
    PeerAddress { ip: a.ip(), port: a.port() }
}

fn error_code(m: &Message) -> Option<u16> {
    if m.typ.class != CLASS_ERROR_RESPONSE {
        return None;
    }
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).unwrap();
    Some(e.code.0)
}

fn is_success(m: &Message) -> bool {
    m.typ.class == CLASS_SUCCESS_RESPONSE
}

fn lifetime_of(m: &Message) -> u64 {
    let mut l = Lifetime::default();
    l.get_from(m).unwrap();
    l.0.as_secs()
}

fn verify_mi(m: &Message, key: &[u8; 16]) -> bool {
    let mut copy = m.clone();
    stun::integrity::MessageIntegrity(key.to_vec()).check(&mut copy).is_ok()
}

fn channel_data(number: u16, data: &[u8]) -> Vec<u8> {
    let mut v = number.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn binding_needs_no_credentials_and_reflects_the_address() {
    let mut h = Harness::new();
    let c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let resp = h.request(c.addr, &c.build(METHOD_BINDING, &[]));
    assert!(is_success(&resp));
    let mut xma = stun::xoraddr::XorMappedAddress::default();
    xma.get_from(&resp).unwrap();
    assert_eq!(SocketAddr::new(xma.ip, xma.port), c.addr);
    let sw = TextAttribute::get_from_as(&resp, stun::attributes::ATTR_SOFTWARE).unwrap();
    assert_eq!(sw.text, "test");
}

#[test]
fn full_flow_allocate_permission_channel_data_both_ways() {
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let first = h.request(c.addr, &c.build(METHOD_ALLOCATE, &[&udp()]));
    assert_eq!(error_code(&first), Some(401), "unauthenticated Allocate is challenged");
    assert_eq!(h.server.stats().auth_challenges.get(), 1);
    assert!(c.take_nonce(&first));
    let resp = h.request(c.addr, &c.build(METHOD_ALLOCATE, &[&udp()]));
    assert!(is_success(&resp));
    assert!(verify_mi(&resp, &c.key), "success responses are signed");
    assert_eq!(lifetime_of(&resp), 600);
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&resp).unwrap();
    assert!((MIN_PORT..=MAX_PORT).contains(&relayed.port));
    assert!(!h.sockets.open.contains(&relayed.port), "no socket until the first permission");
    let mut xma = stun::xoraddr::XorMappedAddress::default();
    xma.get_from(&resp).unwrap();
    assert_eq!(SocketAddr::new(xma.ip, xma.port), c.addr);

    // Without a permission nothing passes either way.
    let p: SocketAddr = "93.184.216.50:7000".parse().unwrap();
    assert_eq!(h.peer_sends(relayed.port, p, b"early"), None);
    assert_eq!(h.server.stats().dropped(DropReason::NoPermission), 1);

    // Send indication needs a permission.
    let send = send_indication(p, b"hi");
    assert_eq!(h.send_raw(c.addr, &send).0, None);
    assert!(is_success(&c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("93.184.216.50:0")])));
    assert!(h.sockets.open.contains(&relayed.port), "opened by the first permission");
    assert_eq!(h.server.stats().relay_sockets_open.get(), 1);
    let (fwd, out) = h.send_raw(c.addr, &send);
    assert!(out.is_empty(), "indications get no response");
    let fwd = fwd.expect("relayed after CreatePermission");
    assert_eq!((fwd.port.0, fwd.peer.0), (relayed.port, p));
    assert_eq!(&send[fwd.payload], b"hi");

    // Peer → client without a channel: a Data indication.
    let (to, msg) = h.peer_sends(relayed.port, p, b"data!").unwrap();
    assert_eq!(to.0, c.addr);
    let mut m = Message::new();
    m.unmarshal_binary(&msg).unwrap();
    assert_eq!(m.typ, MessageType::new(stun::message::METHOD_DATA, CLASS_INDICATION));
    let mut pa = PeerAddress::default();
    pa.get_from(&m).unwrap();
    assert_eq!(SocketAddr::new(pa.ip, pa.port), p);
    let mut d = turn::proto::data::Data::default();
    d.get_from(&m).unwrap();
    assert_eq!(d.0, b"data!");

    // ChannelBind, then ChannelData both ways.
    let resp = c.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4001), &peer("93.184.216.50:7000")]);
    assert!(is_success(&resp), "{:?}", error_code(&resp));
    let cd = channel_data(0x4001, b"over channel");
    let fwd = h.send_raw(c.addr, &cd).0.expect("channel data relayed");
    assert_eq!((fwd.port.0, fwd.peer.0, &cd[fwd.payload]), (relayed.port, p, &b"over channel"[..]));
    let (_, msg) = h.peer_sends(relayed.port, p, b"back").unwrap();
    assert_eq!(msg, channel_data(0x4001, b"back"));
    // Another port of the same peer IP has a permission but no channel: Data indication.
    let (_, msg) = h.peer_sends(relayed.port, "93.184.216.50:7001".parse().unwrap(), b"x").unwrap();
    assert_eq!(wire::classify(&msg), wire::Kind::Stun);

    let stats = h.server.stats();
    assert_eq!(stats.relayed_packets[Direction::ClientToPeer as usize].get(), 2);
    assert_eq!(stats.relayed_packets[Direction::PeerToClient as usize].get(), 3);
    assert_eq!(stats.relayed_bytes[Direction::ClientToPeer as usize].get(), 2 + 12);

    // Refresh with LIFETIME 0 deletes the allocation and closes its socket.
    let resp = c.call(&mut h, METHOD_REFRESH, &[&Lifetime(Duration::ZERO)]);
    assert!(is_success(&resp));
    assert_eq!(lifetime_of(&resp), 0);
    assert_eq!(h.events(), vec![Event::RelayClosed(RelayPort(relayed.port))]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().relay_sockets_open.get(), 0);
    assert_eq!(h.send_raw(c.addr, &cd).0, None);
    assert_eq!(h.server.stats().dropped(DropReason::NoAllocation), 1);
    // A retransmitted Refresh(0) finds no allocation: 437.
    assert_eq!(error_code(&c.call(&mut h, METHOD_REFRESH, &[&Lifetime(Duration::ZERO)])), Some(437));
}

fn send_indication(to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut m = Message::new();
    m.typ = MessageType::new(METHOD_SEND, CLASS_INDICATION);
    m.new_transaction_id().unwrap();
    m.write_header();
    PeerAddress { ip: to.ip(), port: to.port() }.add_to(&mut m).unwrap();
    turn::proto::data::Data(data.to_vec()).add_to(&mut m).unwrap();
    m.raw
}

#[test]
fn allocation_lifetime_expires_and_refresh_extends_it() {
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let port = c.relay_port(&mut h);
    h.advance(500);
    let resp = c.call(&mut h, METHOD_REFRESH, &[&Lifetime(Duration::from_secs(60))]);
    // Less than the default is raised to the default (RFC 8656 §7.2).
    assert_eq!(lifetime_of(&resp), 600);
    h.advance(599);
    assert_eq!(h.server.allocation_count(), 1);
    assert!(h.events().is_empty());
    h.advance(1);
    assert_eq!(h.server.allocation_count(), 0, "expired 600 s after the refresh");
    assert!(h.events().is_empty(), "it never had a permission, so it never had a socket to close");
    let _ = port;
    // More than the maximum is cut to the maximum.
    let mut c2 = Client::rest("198.51.100.2:40000", T0_UNIX + 10_000, SECRET_A);
    let resp = c2.call(&mut h, METHOD_ALLOCATE, &[&udp(), &Lifetime(Duration::from_secs(100_000))]);
    assert_eq!(lifetime_of(&resp), 3600);
}

#[test]
fn permissions_and_channels_expire_and_refresh() {
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let port = c.relay_port(&mut h);
    let p: SocketAddr = "93.184.216.50:7000".parse().unwrap();
    assert!(is_success(&c.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        &[&ChannelNumberAttr(0x4000), &peer("93.184.216.50:7000")]
    )));
    // Keep the allocation alive throughout.
    let keepalive = |h: &mut Harness, c: &mut Client| {
        assert!(is_success(&c.call(h, METHOD_REFRESH, &[&Lifetime(Duration::from_secs(600))])));
    };
    h.advance(299);
    assert!(h.peer_sends(port, p, b"a").is_some());
    h.advance(1);
    // The permission (300 s) lapsed although the channel (600 s) did not: nothing passes.
    assert!(h.peer_sends(port, p, b"a").is_none());
    assert!(h.send_raw(c.addr, &channel_data(0x4000, b"x")).0.is_none());
    // CreatePermission alone revives the path through the still-bound channel.
    assert!(is_success(&c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("93.184.216.50:1")])));
    assert!(h.send_raw(c.addr, &channel_data(0x4000, b"x")).0.is_some());
    keepalive(&mut h, &mut c);
    h.advance(299);
    assert!(h.send_raw(c.addr, &channel_data(0x4000, b"x")).0.is_some(), "channel bound 599 s ago");
    // Refreshing the channel (same number, same peer) at 599 s extends it and the permission.
    assert!(is_success(&c.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        &[&ChannelNumberAttr(0x4000), &peer("93.184.216.50:7000")]
    )));
    keepalive(&mut h, &mut c);
    h.advance(599);
    keepalive(&mut h, &mut c);
    assert!(h.peer_sends(port, p, b"a").is_none(), "permission from the rebind expired after 300 s");
    assert!(is_success(&c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("93.184.216.50:1")])));
    assert_eq!(h.peer_sends(port, p, b"a").unwrap().1, channel_data(0x4000, b"a"), "channel still bound");
    h.advance(1);
    assert_ne!(h.peer_sends(port, p, b"a").unwrap().1, channel_data(0x4000, b"a"), "channel expired: Data indication");
    assert_eq!(h.send_raw(c.addr, &channel_data(0x4000, b"x")).0, None);
    assert_eq!(h.server.stats().dropped(DropReason::NoChannel), 1);
    // Once expired, the number can go to another peer.
    let resp = c.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4000), &peer("93.184.216.51:1")]);
    assert!(is_success(&resp));
}

#[test]
fn channel_bind_rules() {
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    c.relay_port(&mut h);
    let bind = |h: &mut Harness, c: &mut Client, n: u16, p: &str| {
        error_code(&c.call(h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(n), &peer(p)]))
    };
    assert_eq!(bind(&mut h, &mut c, 0x3FFF, "93.184.216.5:1"), Some(400), "below range");
    assert_eq!(bind(&mut h, &mut c, 0x5000, "93.184.216.5:1"), Some(400), "RFC 5766 range, not 8656");
    assert_eq!(bind(&mut h, &mut c, 0x4000, "93.184.216.5:1"), None);
    assert_eq!(bind(&mut h, &mut c, 0x4000, "93.184.216.5:1"), None, "refresh is fine");
    assert_eq!(bind(&mut h, &mut c, 0x4000, "93.184.216.5:2"), Some(400), "number bound to another peer");
    assert_eq!(bind(&mut h, &mut c, 0x4001, "93.184.216.5:1"), Some(400), "peer bound to another number");
    assert_eq!(bind(&mut h, &mut c, 0x4FFF, "93.184.216.5:2"), None);
    assert_eq!(bind(&mut h, &mut c, 0x4002, "10.0.0.1:1"), Some(403));
    assert_eq!(bind(&mut h, &mut c, 0x4002, "[2001:4860::1]:1"), Some(443), "IPv6 peer on an IPv4 allocation");
    // Missing attributes.
    assert_eq!(error_code(&c.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4003)])), Some(400));
    assert_eq!(error_code(&c.call(&mut h, METHOD_CHANNEL_BIND, &[&peer("93.184.216.5:3")])), Some(400));
    // Six more channels fit under the cap of 8, the ninth does not.
    for i in 0..6 {
        assert_eq!(bind(&mut h, &mut c, 0x4100 + i, &format!("93.184.216.6:{}", 100 + i)), None);
    }
    assert_eq!(bind(&mut h, &mut c, 0x4200, "93.184.216.6:999"), Some(508));

    // Older clients (RFC 5766) use up to 0x7FFF; a relay configured for them accepts that.
    let mut h = Harness::with(Options { rfc5766: true, ..Default::default() });
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let port = c.relay_port(&mut h);
    assert_eq!(bind(&mut h, &mut c, 0x7FFF, "93.184.216.5:1"), None);
    assert_eq!(bind(&mut h, &mut c, 0x8000, "93.184.216.5:2"), Some(400));
    let fwd = h.send_raw(c.addr, &channel_data(0x7FFF, b"old")).0.expect("relayed on a 0x7FFF channel");
    assert_eq!(fwd.peer.0, "93.184.216.5:1".parse().unwrap());
    assert_eq!(h.peer_sends(port, "93.184.216.5:1".parse().unwrap(), b"x").unwrap().1, channel_data(0x7FFF, b"x"));
}

#[test]
fn create_permission_is_all_or_nothing_and_capped() {
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let port = c.relay_port(&mut h);
    // Several XOR-PEER-ADDRESS at once, one of them forbidden: 403 and nothing installed.
    let resp = c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("93.184.216.7:1"), &peer("192.168.1.1:1")]);
    assert_eq!(error_code(&resp), Some(403));
    assert!(verify_mi(&resp, &c.key), "errors to authenticated requests are signed");
    assert!(h.peer_sends(port, "93.184.216.7:1".parse().unwrap(), b"x").is_none());
    let resp = c.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[&peer("93.184.216.7:1"), &peer("93.184.216.8:1"), &peer("93.184.216.9:1")],
    );
    assert!(is_success(&resp));
    for ip in ["93.184.216.7", "93.184.216.8", "93.184.216.9"] {
        assert!(h.peer_sends(port, format!("{ip}:5").parse().unwrap(), b"x").is_some(), "{ip}");
    }
    assert_eq!(error_code(&c.call(&mut h, METHOD_CREATE_PERMISSION, &[])), Some(400), "no XOR-PEER-ADDRESS");
    let five: Vec<PeerAddress> = (20..25).map(|i| peer(&format!("93.184.216.{i}:1"))).collect();
    let attrs: Vec<&dyn Setter> = five.iter().map(|p| p as &dyn Setter).collect();
    assert!(is_success(&c.call(&mut h, METHOD_CREATE_PERMISSION, &attrs)), "3 + 5 = 8, the cap");
    assert_eq!(error_code(&c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("93.184.216.99:1")])), Some(508));
    assert!(is_success(&c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("93.184.216.7:1")])), "refresh is free");
}

#[test]
fn blocked_peer_addresses_get_403_in_every_form() {
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    c.relay_port(&mut h);
    let blocked = [
        "127.0.0.1:1",
        "127.1.2.3:1",
        "10.0.0.1:1",
        "172.16.0.1:1",
        "192.168.0.1:1",
        "100.64.0.1:1",
        "169.254.169.254:80",
        "0.0.0.0:1",
        "224.0.0.1:1",
        "255.255.255.255:1",
        "192.0.2.1:1",
        "198.51.100.1:1",
        "203.0.113.5:1",
        "[::1]:1",
        "[::]:1",
        "[::ffff:127.0.0.1]:1",
        "[::ffff:10.0.0.1]:1",
        "[::ffff:169.254.169.254]:1",
        "[64:ff9b::7f00:1]:1",
        "[64:ff9b::a9fe:a9fe]:1",
        "[2002:7f00:1::1]:1",
        "[2002:a9fe:a9fe::1]:1",
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]:1", // Teredo, client 127.0.0.1
        "[fd00::1]:1",
        "[fe80::1]:1",
        "[ff02::1]:1",
        "[2001:db8::1]:1",
    ];
    for p in blocked {
        let resp = c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer(p)]);
        assert_eq!(error_code(&resp), Some(403), "CreatePermission to {p}");
        let resp = c.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4000), &peer(p)]);
        assert_eq!(error_code(&resp), Some(403), "ChannelBind to {p}");
    }
    assert!(is_success(&c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("8.8.8.8:53")])));
}

#[test]
fn allow_list_opens_loopback_but_never_the_relay_itself() {
    let mut h = Harness::with(Options { allow: vec!["127.0.0.0/8", "192.0.2.0/24"], ..Default::default() });
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    c.relay_port(&mut h);
    assert!(is_success(&c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("127.0.0.1:9")])));
    // Allowed as 127.0.0.1, but an IPv6 peer cannot be reached from an IPv4 allocation.
    let resp = c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("[::ffff:127.0.0.1]:9")]);
    assert_eq!(error_code(&resp), Some(443));
    // The listening port on our own addresses stays off limits.
    for own in ["127.0.0.1:3478", "192.0.2.10:3478", "[::1]:3478"] {
        let resp = c.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4000), &peer(own)]);
        assert!(matches!(error_code(&resp), Some(403 | 443)), "ChannelBind to own address {own}");
    }
    assert!(is_success(&c.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4000), &peer("127.0.0.1:9")])));
    // Another allocation's relay port is a peer like any other: two clients that both need
    // TURN reach each other relay to relay.
    let resp = c.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4001), &peer("192.0.2.10:50000")]);
    assert!(is_success(&resp), "{:?}", error_code(&resp));
    // Send indications to our own ports are dropped even with a permission for the IP.
    assert!(is_success(&c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("192.0.2.10:1")])));
    assert_eq!(h.send_raw(c.addr, &send_indication("192.0.2.10:3478".parse().unwrap(), b"x")).0, None);
    assert_eq!(h.server.stats().dropped(DropReason::PeerBlocked), 1);
    assert!(h.send_raw(c.addr, &send_indication("192.0.2.10:4000".parse().unwrap(), b"x")).0.is_some());
}

#[test]
fn the_sfu_on_the_listening_port_is_the_one_self_relay_allowed() {
    // The SFU's candidate is on loopback, which the peer filter refuses (no allow list).
    let mut h = Harness::with(Options { sfu: vec!["127.0.0.1:3478"], ..Default::default() });
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let port = c.relay_port(&mut h);
    assert!(is_success(&c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("127.0.0.1:3478")])));
    assert!(is_success(&c.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4000), &peer("127.0.0.1:3478")])));
    // The permission is for the IP, but only the SFU's port opens: no SSRF to loopback services.
    let resp = c.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4001), &peer("127.0.0.1:5432")]);
    assert_eq!(error_code(&resp), Some(403));
    for other in ["127.0.0.2:3478", "127.0.0.1:5432"] {
        let resp = c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer(other)]);
        assert_eq!(error_code(&resp), Some(403), "CreatePermission to {other}");
    }
    let fwd = h.send_raw(c.addr, &send_indication("127.0.0.1:3478".parse().unwrap(), b"dtls")).0;
    assert_eq!(fwd.map(|f| f.peer.0), Some("127.0.0.1:3478".parse().unwrap()));
    assert_eq!(h.send_raw(c.addr, &send_indication("127.0.0.1:5432".parse().unwrap(), b"x")).0, None);
    assert_eq!(h.server.stats().dropped(DropReason::PeerBlocked), 1);
    let fwd = h.send_raw(c.addr, &channel_data(0x4000, b"rtp")).0;
    assert_eq!(fwd.map(|f| f.peer.0), Some("127.0.0.1:3478".parse().unwrap()));
    // What the SFU sends back reaches the client.
    let (to, _) = h.peer_sends(port, "127.0.0.1:3478".parse().unwrap(), b"answer").expect("relayed to the client");
    assert_eq!(to.0, c.addr);
    // Datagrams from our own relay port at the listening port that the SFU did not take are
    // dropped, whatever they are: the relay never allocates for itself.
    let own: SocketAddr = SocketAddr::new(relay_ip(), port);
    let me = Client::rest(&own.to_string(), T0_UNIX + 600, SECRET_A);
    let allocate = me.build(METHOD_ALLOCATE, &[&udp()]);
    for datagram in [allocate.raw.clone(), channel_data(0x4000, b"x")] {
        let (fwd, responses) = h.send_raw(own, &datagram);
        assert!(fwd.is_none() && responses.is_empty());
    }
    assert_eq!(h.server.stats().dropped(DropReason::SelfRelay), 2);
}

#[test]
fn without_the_sfu_the_listening_port_stays_off_limits() {
    let mut h = Harness::with(Options { allow: vec!["127.0.0.0/8"], ..Default::default() });
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let port = c.relay_port(&mut h);
    let resp = c.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4000), &peer("127.0.0.1:3478")]);
    assert_eq!(error_code(&resp), Some(403));
    // With the SFU off, datagrams from our own addresses are not singled out.
    let own: SocketAddr = SocketAddr::new(relay_ip(), port);
    let me = Client::rest(&own.to_string(), T0_UNIX + 600, SECRET_A);
    let allocate = me.build(METHOD_ALLOCATE, &[&udp()]);
    assert_eq!(h.send_raw(own, &allocate.raw).1.len(), 1);
    assert_eq!(h.server.stats().dropped(DropReason::SelfRelay), 0);
}

#[test]
fn allocate_error_codes() {
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    // 400: no REQUESTED-TRANSPORT.
    assert_eq!(error_code(&c.call(&mut h, METHOD_ALLOCATE, &[])), Some(400));
    // 442: TCP relaying is not offered over this transport.
    let tcp = RequestedTransport { protocol: turn::proto::PROTO_TCP };
    assert_eq!(error_code(&c.call(&mut h, METHOD_ALLOCATE, &[&tcp])), Some(442));
    // 440: IPv6 relayed address requested from an IPv4 relay.
    let v6 = turn::proto::reqfamily::REQUESTED_FAMILY_IPV6;
    assert_eq!(error_code(&c.call(&mut h, METHOD_ALLOCATE, &[&udp(), &v6])), Some(440));
    // 420: DONT-FRAGMENT is not supported; UNKNOWN-ATTRIBUTES names it.
    let resp = c.call(&mut h, METHOD_ALLOCATE, &[&udp(), &turn::proto::dontfrag::DontFragmentAttr]);
    assert_eq!(error_code(&resp), Some(420));
    let mut unknown = stun::uattrs::UnknownAttributes(Vec::new());
    unknown.get_from(&resp).unwrap();
    assert_eq!(unknown.0, vec![AttrType(0x001A)]);
    // 508: a reservation token we never issued.
    let token = turn::proto::rsrvtoken::ReservationToken(vec![1; 8]);
    assert_eq!(error_code(&c.call(&mut h, METHOD_ALLOCATE, &[&udp(), &token])), Some(508));
    // Success, then 437 for a second Allocate on the same 5-tuple...
    c.relay_port(&mut h);
    let again = c.build(METHOD_ALLOCATE, &[&udp()]);
    assert_eq!(error_code(&h.request(c.addr, &again)), Some(437));
    // ...and 437 for requests from a 5-tuple without an allocation.
    let mut other = Client::rest("198.51.100.1:40001", T0_UNIX + 600, SECRET_A);
    assert_eq!(error_code(&other.call(&mut h, METHOD_REFRESH, &[])), Some(437));
    assert_eq!(error_code(&other.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("8.8.8.8:1")])), Some(437));
    assert_eq!(
        error_code(&other.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4000), &peer("8.8.8.8:1")])),
        Some(437)
    );
}

#[test]
fn retransmitted_allocate_gets_the_same_answer() {
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let _ = h.request(c.addr, &c.build(METHOD_ALLOCATE, &[&udp()]));
    let first = h.request(c.addr, &c.build(METHOD_ALLOCATE, &[&udp()]));
    assert!(c.take_nonce(&first));
    let req = c.build(METHOD_ALLOCATE, &[&udp()]);
    let a = h.request(c.addr, &req);
    let b = h.request(c.addr, &req);
    assert!(is_success(&a));
    assert_eq!(a.raw, b.raw);
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn wrong_credentials_on_an_allocation_get_441() {
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    c.relay_port(&mut h);
    let mut impostor = Client::static_user("198.51.100.1:40000", "alice", "alice-pw");
    impostor.nonce = c.nonce.clone();
    let resp = impostor.call(&mut h, METHOD_REFRESH, &[]);
    assert_eq!(error_code(&resp), Some(441));
    assert_eq!(h.server.stats().auth_failures[AuthFailure::WrongCredentials as usize].get(), 1);
}

#[test]
fn auth_failures_get_the_right_codes() {
    let mut h = Harness::new();
    // Expired REST username: 401 at Allocate.
    let mut expired = Client::rest("198.51.100.1:40000", T0_UNIX - 1, SECRET_A);
    assert_eq!(error_code(&expired.call(&mut h, METHOD_ALLOCATE, &[&udp()])), Some(401));
    assert_eq!(h.server.stats().auth_failures[AuthFailure::Expired as usize].get(), 1);
    // Wrong password: 401.
    let mut wrong = Client::rest("198.51.100.2:40000", T0_UNIX + 600, "not-the-secret");
    assert_eq!(error_code(&wrong.call(&mut h, METHOD_ALLOCATE, &[&udp()])), Some(401));
    // The retry after the challenge fails; the 401 repeats the same nonce, so the client stops.
    assert_eq!(h.server.stats().auth_failures[AuthFailure::BadIntegrity as usize].get(), 1);
    let mut wrong_static = Client::static_user("198.51.100.2:40001", "alice", "wrong");
    assert_eq!(error_code(&wrong_static.call(&mut h, METHOD_ALLOCATE, &[&udp()])), Some(401));
    // Unknown user: 401.
    let mut nobody = Client::static_user("198.51.100.2:40002", "mallory", "pw");
    assert_eq!(error_code(&nobody.call(&mut h, METHOD_ALLOCATE, &[&udp()])), Some(401));
    assert!(h.server.stats().auth_failures[AuthFailure::UnknownUser as usize].get() >= 1);
    // Tampered nonce (correctly signed by the client): 438 with a fresh nonce.
    let mut c = Client::rest("198.51.100.3:40000", T0_UNIX + 600, SECRET_A);
    let _ = c.allocate(&mut h); // establishes a valid nonce (and an allocation)
    let mut fresh = Client::rest("198.51.100.3:40001", T0_UNIX + 600, SECRET_A);
    let challenge = h.request(fresh.addr, &fresh.build(METHOD_ALLOCATE, &[&udp()]));
    assert!(fresh.take_nonce(&challenge));
    let mut nonce = fresh.nonce.clone().unwrap().into_bytes();
    nonce[20] = if nonce[20] == b'a' { b'b' } else { b'a' };
    fresh.nonce = Some(String::from_utf8(nonce).unwrap());
    let resp = h.request(fresh.addr, &fresh.build(METHOD_ALLOCATE, &[&udp()]));
    assert_eq!(error_code(&resp), Some(438));
    let realm = TextAttribute::get_from_as(&resp, ATTR_REALM).unwrap();
    assert_eq!(realm.text, REALM);
    assert!(fresh.take_nonce(&resp), "438 carries a new nonce");
    assert!(is_success(&h.request(fresh.addr, &fresh.build(METHOD_ALLOCATE, &[&udp()]))), "and it works");
    // A nonce issued to another client address is stale here too.
    let mut thief = Client::rest("198.51.100.3:40002", T0_UNIX + 600, SECRET_A);
    thief.nonce = fresh.nonce.clone();
    assert_eq!(error_code(&h.request(thief.addr, &thief.build(METHOD_ALLOCATE, &[&udp()]))), Some(438));
    // MESSAGE-INTEGRITY without USERNAME/REALM/NONCE: 400.
    let mut m = Message::new();
    m.typ = MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST);
    m.new_transaction_id().unwrap();
    m.write_header();
    udp().add_to(&mut m).unwrap();
    stun::integrity::MessageIntegrity(vec![0; 16]).add_to(&mut m).unwrap();
    assert_eq!(error_code(&h.request("198.51.100.4:1".parse().unwrap(), &m)), Some(400));
    assert_eq!(h.server.stats().auth_failures[AuthFailure::MissingAttributes as usize].get(), 1);
}

#[test]
fn nonces_expire() {
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 100_000, SECRET_A);
    c.relay_port(&mut h);
    let nonce = c.nonce.clone();
    h.advance(599);
    let resp = h.request(c.addr, &c.build(METHOD_REFRESH, &[]));
    assert!(is_success(&resp), "nonce still valid at 599 s");
    h.advance(1);
    let resp = h.request(c.addr, &c.build(METHOD_REFRESH, &[]));
    assert_eq!(error_code(&resp), Some(438), "nonce stale at 600 s");
    assert!(c.take_nonce(&resp));
    assert_ne!(c.nonce, nonce);
    assert!(is_success(&h.request(c.addr, &c.build(METHOD_REFRESH, &[]))));
}

#[test]
fn either_secret_is_accepted_and_rotation_keeps_sessions() {
    let mut h = Harness::with(Options { secrets: vec![SECRET_A, SECRET_B], ..Default::default() });
    let mut a = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let mut b = Client::rest("198.51.100.2:40000", T0_UNIX + 600, SECRET_B);
    a.relay_port(&mut h);
    b.relay_port(&mut h);
    assert_eq!(h.server.allocation_count(), 2);
    // Rotation: secret A is removed. New credentials signed by A are refused...
    h.server.set_credentials(Arc::new(Credentials::new(REALM, &[], vec![SECRET_B.as_bytes().to_vec()])));
    let mut new_a = Client::rest("198.51.100.3:40000", T0_UNIX + 600, SECRET_A);
    assert_eq!(error_code(&new_a.allocate(&mut h)), Some(401));
    let mut new_b = Client::rest("198.51.100.4:40000", T0_UNIX + 600, SECRET_B);
    assert!(is_success(&new_b.allocate(&mut h)));
    // ...but the allocation made with A keeps working: refreshes use the allocation's key.
    h.advance(550);
    assert!(is_success(&a.call(&mut h, METHOD_REFRESH, &[])));
    assert!(is_success(&b.call(&mut h, METHOD_REFRESH, &[])));
    h.advance(100);
    assert!(h.unix_now() > T0_UNIX + 600);
    // (The nonce is stale by now too: the client gets 438 and retries, as real clients do.)
    assert!(is_success(&a.call(&mut h, METHOD_REFRESH, &[])));
    assert!(is_success(&b.call(&mut h, METHOD_REFRESH, &[])));
    // But a new allocation with the expired credential is refused.
    let mut late = Client::rest("198.51.100.9:40000", T0_UNIX + 600, SECRET_B);
    assert_eq!(error_code(&late.call(&mut h, METHOD_ALLOCATE, &[&udp()])), Some(401));
}

#[test]
fn quotas_per_user_and_total() {
    let mut h = Harness::with(Options { per_user: 2, total: 3, ..Default::default() });
    let mut clients: Vec<Client> =
        (0..3).map(|i| Client::static_user(&format!("198.51.100.1:{}", 40000 + i), "alice", "alice-pw")).collect();
    assert!(is_success(&clients[0].allocate(&mut h)));
    assert!(is_success(&clients[1].allocate(&mut h)));
    assert_eq!(error_code(&clients[2].allocate(&mut h)), Some(486));
    let mut other = Client::rest("198.51.100.2:40000", T0_UNIX + 600, SECRET_A);
    assert!(is_success(&other.allocate(&mut h)));
    let mut fourth = Client::rest("198.51.100.3:40000", T0_UNIX + 601, SECRET_A);
    assert_eq!(error_code(&fourth.allocate(&mut h)), Some(508));
    // Freeing one lets the next in.
    assert!(is_success(&clients[0].call(&mut h, METHOD_REFRESH, &[&Lifetime(Duration::ZERO)])));
    assert!(is_success(&clients[2].allocate(&mut h)));
}

#[test]
fn port_exhaustion_and_busy_ports_give_508_and_retry() {
    let mut h = Harness::with(Options { ports: (50000, 50003), ..Default::default() });
    h.sockets.busy.insert(50000);
    h.sockets.busy.insert(50001);
    let mut got = Vec::new();
    for i in 0..2 {
        let mut c = Client::static_user(&format!("198.51.100.1:{}", 40000 + i), "alice", "alice-pw");
        got.push(c.relay_port(&mut h));
    }
    got.sort_unstable();
    assert_eq!(got, vec![50002, 50003], "ports held by someone else are skipped");
    let mut c = Client::static_user("198.51.100.1:40100", "alice", "alice-pw");
    assert_eq!(error_code(&c.allocate(&mut h)), Some(508));
}

#[test]
fn draining_refuses_new_allocations_only() {
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    c.relay_port(&mut h);
    h.server.set_draining(true);
    let mut late = Client::rest("198.51.100.2:40000", T0_UNIX + 600, SECRET_A);
    assert_eq!(error_code(&late.allocate(&mut h)), Some(508));
    assert!(is_success(&c.call(&mut h, METHOD_REFRESH, &[])));
    assert!(is_success(&c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("8.8.8.8:1")])));
}

#[test]
fn unknown_methods_and_stray_messages() {
    let mut h = Harness::new();
    let c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    // A request with an unknown method: 400, with the method mirrored.
    let mut m = Message::new();
    m.typ = MessageType::new(METHOD_BINDING, CLASS_REQUEST);
    m.new_transaction_id().unwrap();
    m.write_header();
    m.raw[1] = 0x0B; // method 0x00B (ConnectionBind), class request
    let resp = h.request(c.addr, &m);
    assert_eq!(error_code(&resp), Some(400));
    assert_eq!(resp.raw[1] & 0xEF, 0x0B & 0xEF);
    // A success response sent to the server is dropped silently.
    let mut r = Message::new();
    r.typ = MessageType::new(METHOD_BINDING, CLASS_SUCCESS_RESPONSE);
    r.new_transaction_id().unwrap();
    r.write_header();
    assert!(h.send_raw(c.addr, &r.raw).1.is_empty());
    assert_eq!(h.server.stats().dropped(DropReason::UnexpectedMessage), 1);
    // Garbage and non-TURN bytes are dropped and counted.
    assert!(h.send_raw(c.addr, &[0x16, 0xfe, 0xfd]).1.is_empty());
    assert!(h.send_raw(c.addr, &[0x00, 0x01, 0x00]).1.is_empty());
    assert!(h.send_raw(c.addr, &[0x40, 0x00, 0x10, 0x00]).1.is_empty());
    let s = h.server.stats();
    assert_eq!(s.dropped(DropReason::NotTurn), 1);
    assert_eq!(s.dropped(DropReason::Malformed), 2);
}

#[test]
fn appended_attributes_after_integrity_are_ignored() {
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    c.relay_port(&mut h);
    // An on-path attacker appends LIFETIME 0 after MESSAGE-INTEGRITY of a signed Refresh.
    let mut m = c.build(METHOD_REFRESH, &[&Lifetime(Duration::from_secs(900))]);
    // Strip FINGERPRINT (8 bytes), append LIFETIME=0 and fix the length.
    m.raw.truncate(m.raw.len() - 8);
    m.raw.extend_from_slice(&[0x00, 0x0D, 0x00, 0x04, 0, 0, 0, 0]);
    let len = (m.raw.len() - 20) as u16;
    m.raw[2..4].copy_from_slice(&len.to_be_bytes());
    let resp = h.request(c.addr, &m);
    assert!(is_success(&resp));
    assert_eq!(lifetime_of(&resp), 900, "the appended LIFETIME 0 was ignored");
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn even_port_reservation_for_rtcp() {
    let mut h = Harness::new();
    // EVEN-PORT with R: an even port, and a RESERVATION-TOKEN for the next one.
    let mut rtp = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let resp = rtp.call(&mut h, METHOD_ALLOCATE, &[&udp(), &even_port(true)]);
    assert!(is_success(&resp), "{:?}", error_code(&resp));
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&resp).unwrap();
    assert_eq!(relayed.port % 2, 0);
    let mut token = turn::proto::rsrvtoken::ReservationToken::default();
    token.get_from(&resp).unwrap();
    assert_eq!(token.0.len(), 8);
    // A second client (the RTCP socket: another source port) claims the reserved port.
    let mut rtcp = Client::rest("198.51.100.1:40001", T0_UNIX + 600, SECRET_A);
    let resp = rtcp.call(&mut h, METHOD_ALLOCATE, &[&udp(), &token]);
    assert!(is_success(&resp), "{:?}", error_code(&resp));
    let mut second = RelayedAddress::default();
    second.get_from(&resp).unwrap();
    assert_eq!(second.port, relayed.port + 1);
    // A token works once.
    let mut again = Client::rest("198.51.100.1:40002", T0_UNIX + 600, SECRET_A);
    assert_eq!(error_code(&again.call(&mut h, METHOD_ALLOCATE, &[&udp(), &token])), Some(508));
    // A token with EVEN-PORT is a bad request.
    let mut bad = Client::rest("198.51.100.1:40003", T0_UNIX + 600, SECRET_A);
    let even = even_port(false);
    assert_eq!(error_code(&bad.call(&mut h, METHOD_ALLOCATE, &[&udp(), &token, &even])), Some(400));
    // EVEN-PORT without R: just an even port.
    let resp = bad.call(&mut h, METHOD_ALLOCATE, &[&udp(), &even]);
    let mut third = RelayedAddress::default();
    third.get_from(&resp).unwrap();
    assert_eq!(third.port % 2, 0);
    // Unclaimed reservations expire after 30 s and the port returns to the pool.
    let mut lone = Client::rest("198.51.100.1:40004", T0_UNIX + 600, SECRET_A);
    let resp = lone.call(&mut h, METHOD_ALLOCATE, &[&udp(), &even_port(true)]);
    let mut late_token = turn::proto::rsrvtoken::ReservationToken::default();
    late_token.get_from(&resp).unwrap();
    h.advance(31);
    let mut late = Client::rest("198.51.100.1:40005", T0_UNIX + 600, SECRET_A);
    assert_eq!(error_code(&late.call(&mut h, METHOD_ALLOCATE, &[&udp(), &late_token])), Some(508));
}

#[test]
fn relay_socket_opens_at_the_first_permission_and_a_stolen_port_gives_508() {
    let mut h = Harness::new();
    let mut idle = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let idle_port = idle.relay_port(&mut h);
    let mut used = Client::rest("198.51.100.1:40001", T0_UNIX + 600, SECRET_A);
    let used_port = used.relay_port(&mut h);
    assert!(h.sockets.open.is_empty(), "idle allocations hold no sockets");
    assert!(is_success(&used.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        &[&ChannelNumberAttr(0x4000), &peer("93.184.216.1:1")]
    )));
    assert_eq!(h.sockets.open.iter().copied().collect::<Vec<_>>(), vec![used_port]);
    // A second permission reuses the socket.
    assert!(is_success(&used.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("93.184.216.2:1")])));
    assert_eq!(h.sockets.open.len(), 1);
    // Another program took the idle allocation's port in the meantime: no relaying possible.
    h.sockets.busy.insert(idle_port);
    let resp = idle.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("93.184.216.3:1")]);
    assert_eq!(error_code(&resp), Some(508));
    // Expiry closes only the socket that was opened.
    h.advance(600);
    assert_eq!(h.events(), vec![Event::RelayClosed(RelayPort(used_port))]);
}

#[test]
fn unauthenticated_answers_are_capped_per_source_without_state() {
    let rates = Rates { per_source: 20.0, total: 0.0 };
    let mut h = Harness::with(Options { unauthenticated: rates, ..Default::default() });
    // A spoofed flood: unsigned Allocates from 5000 ports of one address.
    let mut answered = 0;
    for port in 0..5000u16 {
        let c = Client::rest(&format!("198.51.100.7:{}", 10_000 + port), T0_UNIX + 600, SECRET_A);
        let (_, out) = h.send_raw(c.addr, &c.build(METHOD_ALLOCATE, &[&udp()]).raw);
        answered += out.len();
    }
    assert_eq!(answered, 20, "one second's burst, then nothing within the same second");
    assert_eq!(h.server.stats().dropped(DropReason::RateLimited), 4980);
    assert_eq!(h.server.allocation_count(), 0, "no state for unauthenticated requests");
    // Another source is answered, and a real client there completes its allocation.
    let mut other = Client::rest("198.51.100.8:5000", T0_UNIX + 600, SECRET_A);
    other.relay_port(&mut h);
    // The flooded source's bucket refills with time: a real client behind it gets through.
    h.advance(1);
    let mut victim = Client::rest("198.51.100.7:9999", T0_UNIX + 600, SECRET_A);
    victim.relay_port(&mut h);
    // Answers to a source that has an allocation are not limited (its 401s and 438s matter).
    for _ in 0..100 {
        let resp = h.request(victim.addr, &victim.build(METHOD_BINDING, &[]));
        assert!(is_success(&resp));
    }
}

#[test]
fn closing_a_client_removes_its_allocation() {
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let port = c.relay_port(&mut h);
    let resp = c.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("93.184.216.50:9")]);
    assert!(is_success(&resp));
    assert!(h.server.has_allocation(ClientAddr(c.addr)));
    h.server.close_client(ClientAddr(c.addr));
    assert!(!h.server.has_allocation(ClientAddr(c.addr)));
    assert_eq!(h.events(), vec![Event::RelayClosed(RelayPort(port))]);
    assert!(h.peer_sends(port, "93.184.216.50:9".parse().unwrap(), b"late").is_none());
}

/// RFC 6156 on a dual-stack relay: the family asked for, else the client's own; peers of the
/// other family get 443; IPv6's non-global ranges are refused like IPv4's.
#[test]
fn dual_stack_relay_allocates_the_family_asked_for_or_the_clients() {
    let v6 = RelayIp { bind: "2001:db8::10".parse().unwrap(), advertised: "2001:db8:1::1".parse().unwrap() };
    let mut h = Harness::with(Options { relay_ip_other: Some(v6), ..Default::default() });
    let relayed = |resp: &Message| {
        let mut r = RelayedAddress::default();
        r.get_from(resp).unwrap();
        SocketAddr::new(r.ip, r.port)
    };
    // An IPv4 client that does not ask gets IPv4; one that asks for IPv6 gets it.
    let mut c4 = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let a4 = relayed(&c4.allocate(&mut h));
    assert_eq!(a4.ip(), "203.0.113.1".parse::<IpAddr>().unwrap());
    let mut c4v6 = Client::rest("198.51.100.1:40001", T0_UNIX + 600, SECRET_A);
    let family = turn::proto::reqfamily::REQUESTED_FAMILY_IPV6;
    let resp = c4v6.call(&mut h, METHOD_ALLOCATE, &[&udp(), &family]);
    assert_eq!(relayed(&resp).ip(), v6.advertised, "REQUESTED-ADDRESS-FAMILY IPv6");
    // An IPv6 client that does not ask gets IPv6 (what browsers reaching us over IPv6 expect).
    let mut c6 = Client::rest("[2001:db8:2::7]:40000", T0_UNIX + 600, SECRET_A);
    let a6 = relayed(&c6.allocate(&mut h));
    assert_eq!(a6.ip(), v6.advertised);
    let mut xma = stun::xoraddr::XorMappedAddress::default();
    // The IPv6 allocation relays to IPv6 peers only, from the IPv6 relay address.
    assert!(is_success(&c6.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("[2606:4700::1111]:9")])));
    assert_eq!(h.sockets.opened.last().copied(), Some(SocketAddr::new(v6.bind, a6.port())));
    let resp = c6.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("93.184.216.34:9")]);
    assert_eq!(error_code(&resp), Some(443));
    for blocked in
        ["[::1]:9", "[fe80::1]:9", "[fc00::1]:9", "[2001:db8::99]:9", "[::ffff:127.0.0.1]:9", "[64:ff9b::a00:1]:9"]
    {
        let resp = c6.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4000), &peer(blocked)]);
        assert_eq!(error_code(&resp), Some(403), "{blocked}");
    }
    // The IPv4 allocation the other way round.
    let resp = c4.call(&mut h, METHOD_CREATE_PERMISSION, &[&peer("[2606:4700::1111]:9")]);
    assert_eq!(error_code(&resp), Some(443));
    // A Refresh asking for the other family: 443 (RFC 8656 §7.3).
    let resp = c6.call(&mut h, METHOD_REFRESH, &[&turn::proto::reqfamily::REQUESTED_FAMILY_IPV4]);
    assert_eq!(error_code(&resp), Some(443));
    let _ = xma.get_from(&c6.call(&mut h, METHOD_BINDING, &[]));
    assert_eq!(SocketAddr::new(xma.ip, xma.port), c6.addr);

    // An IPv4-only relay: IPv6 asked for is 440; an IPv6 client that does not ask gets IPv4.
    let mut h = Harness::new();
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    assert_eq!(error_code(&c.call(&mut h, METHOD_ALLOCATE, &[&udp(), &family])), Some(440));
    let mut c6 = Client::rest("[2001:db8:2::7]:40000", T0_UNIX + 600, SECRET_A);
    assert_eq!(relayed(&c6.allocate(&mut h)).ip(), "203.0.113.1".parse::<IpAddr>().unwrap());
}

/// A per-allocation cap (both directions together) and a core-wide one, on a virtual clock.
#[test]
fn bandwidth_caps_drop_what_exceeds_them_and_refill_with_time() {
    // 800 kbit/s = 100,000 bytes/s per allocation; a burst of one second's worth.
    let bandwidth = Bandwidth { per_allocation_bps: 800_000, total_bps: 0 };
    let mut h = Harness::with(Options { allow: vec!["127.0.0.0/8"], bandwidth, ..Default::default() });
    let mut c = Client::rest("198.51.100.1:40000", T0_UNIX + 600, SECRET_A);
    let port = c.relay_port(&mut h);
    assert!(is_success(&c.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4000), &peer("127.0.0.1:9")])));
    let payload = [7u8; 1000];
    let sent = (0..150).filter(|_| h.send_raw(c.addr, &channel_data(0x4000, &payload)).0.is_some()).count();
    assert_eq!(sent, 100, "one second's worth passes at once");
    // The peer's direction draws from the same bucket.
    assert!(h.peer_sends(port, "127.0.0.1:9".parse().unwrap(), &payload).is_none());
    assert_eq!(h.server.stats().dropped(DropReason::BandwidthCap), 51);
    h.advance(1);
    let back = (0..150).filter(|_| h.peer_sends(port, "127.0.0.1:9".parse().unwrap(), &payload).is_some()).count();
    assert_eq!(back, 100, "refilled after a second");
    // Another allocation has its own bucket.
    let mut d = Client::rest("198.51.100.2:40000", T0_UNIX + 600, SECRET_A);
    d.relay_port(&mut h);
    assert!(is_success(&d.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4000), &peer("127.0.0.1:9")])));
    assert!(h.send_raw(d.addr, &channel_data(0x4000, &payload)).0.is_some());

    // A core-wide cap binds all allocations together.
    let bandwidth = Bandwidth { per_allocation_bps: 0, total_bps: 800_000 };
    let mut h = Harness::with(Options { allow: vec!["127.0.0.0/8"], bandwidth, ..Default::default() });
    let mut passed = 0;
    for i in 0..3 {
        let mut c = Client::rest(&format!("198.51.100.{}:40000", i + 1), T0_UNIX + 600, SECRET_A);
        c.relay_port(&mut h);
        assert!(is_success(&c.call(&mut h, METHOD_CHANNEL_BIND, &[&ChannelNumberAttr(0x4000), &peer("127.0.0.1:9")])));
        passed += (0..60).filter(|_| h.send_raw(c.addr, &channel_data(0x4000, &payload)).0.is_some()).count();
    }
    assert_eq!(passed, 100, "three clients share one second's worth");
}
