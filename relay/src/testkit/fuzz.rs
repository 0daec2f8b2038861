//! Fuzz targets for everything the network can feed the relay, as plain functions of bytes:
//! `fuzz/` runs them under libFuzzer (`cargo +nightly fuzz run <target>`, see the README), and
//! `tests/fuzz.rs` runs a bounded number of mutated inputs through each on stable Rust in the test
//! suite. Each target panics only on a broken promise (a panic inside the relay, or relayed
//! bytes that do not come from the input).
//!
//! - [`stun_message`]: a session against a fresh TURN core. The harness first allocates and binds
//!   a channel with valid credentials, so the fuzzer's messages reach allocation state; then
//!   each chunk of the input is a client datagram (raw, or signed by the harness with the
//!   session's key so it gets past MESSAGE-INTEGRITY), a peer datagram, or a clock step.
//! - [`channel_data`]: ChannelData parsing and framing both ways, and the same bytes into an
//!   allocated core as ChannelData from the client and as a datagram from the peer.
//! - [`tcp_framing`]: the stream framer (`turn::framing::frame`) over arbitrary bytes split at
//!   arbitrary points: every message it yields lies within the input and the consumed lengths
//!   add up, whatever the split.
//! - [`link_wire`]: a relay link's wire (`link::wire`): the bytes as a media datagram, then as a
//!   control stream split at arbitrary points; whatever decodes re-encodes to the same message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::message::{
    CLASS_REQUEST, Getter, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, Message, MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;

use super::FakeSockets;
use crate::link::wire::{Control, Media};
use crate::turn::auth::{Credentials, Key, NonceSource, integrity, long_term_key};
use crate::turn::framing::{Frame, MAX_FRAME, frame};
use crate::turn::limit::Rates;
use crate::turn::peer_filter::PeerFilter;
use crate::turn::wire::{self, PEER_HEADROOM, PEER_TAILROOM};
use crate::turn::{ClientAddr, PeerAddr, PortPool, Quotas, RelayPort, ServerConfig, Shared, TurnServer};

const REALM: &str = "fuzz";
const USER: &str = "user";
const PASSWORD: &str = "password";
const CLIENT: &str = "198.51.100.1:40000";
const PEER: &str = "127.0.0.1:9000";
const CHANNEL: u16 = 0x4000;

/// A fresh core on a fixed clock, with a rate limit small enough that the fuzzer reaches it.
fn core(now: Instant) -> TurnServer {
    let ip = "192.0.2.1".parse().expect("an address");
    let config = ServerConfig {
        software: "fuzz".into(),
        credentials: Credentials::new(REALM, &[(USER.into(), PASSWORD.into())], vec![b"secret".to_vec()]),
        nonces: NonceSource::new([7; 32], now, Duration::from_secs(600)),
        max_permissions: 4,
        max_channels: 4,
        rfc5766_channel_numbers: true,
        peer_filter: PeerFilter::new(vec!["127.0.0.0/8".parse().expect("a network")], vec![]),
        sfu: vec!["127.0.0.1:3478".parse().expect("an address")],
        unauthenticated: Rates { per_source: 100.0, total: 1000.0 },
        bandwidth: crate::turn::limit::Bandwidth { per_allocation_bps: 8_000_000, total_bps: 0 },
        ..super::server_config(ip, now)
    };
    let shared = Arc::new(Shared::new(PortPool::new(50000, 50009, 3), Quotas::new(4, 8)));
    TurnServer::new(Arc::new(config), shared, now, 1_800_000_000, 1)
}

/// A core with one allocation for [`CLIENT`], a permission and channel [`CHANNEL`] to [`PEER`];
/// returns the core, its sockets, the relay port, the session key and the nonce.
struct Session {
    server: TurnServer,
    sockets: FakeSockets,
    now: Instant,
    port: u16,
    key: Key,
    nonce: String,
}

impl Session {
    fn new() -> Self {
        let now = Instant::now();
        let mut s = Self {
            server: core(now),
            sockets: FakeSockets::default(),
            now,
            port: 0,
            key: long_term_key(USER, REALM, PASSWORD),
            nonce: String::new(),
        };
        let udp = turn::proto::reqtrans::RequestedTransport { protocol: turn::proto::PROTO_UDP };
        let challenge = s.request(METHOD_ALLOCATE, &[&udp], false);
        s.nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE).expect("a 401 with a nonce").text;
        let allocated = s.request(METHOD_ALLOCATE, &[&udp], true);
        let mut relayed = turn::proto::relayaddr::RelayedAddress::default();
        relayed.get_from(&allocated).expect("the harness allocates");
        s.port = relayed.port;
        let peer: SocketAddr = PEER.parse().expect("an address");
        let bound = s.request(
            METHOD_CHANNEL_BIND,
            &[
                &turn::proto::channum::ChannelNumber(CHANNEL),
                &turn::proto::peeraddr::PeerAddress { ip: peer.ip(), port: peer.port() },
            ],
            true,
        );
        assert_eq!(bound.typ.class, stun::message::CLASS_SUCCESS_RESPONSE, "the harness binds a channel");
        s
    }

    fn request(&mut self, method: Method, attrs: &[&dyn Setter], signed: bool) -> Message {
        let m = build(method, CLASS_REQUEST, attrs);
        let raw = if signed { self.sign(&m) } else { m };
        let from = ClientAddr(CLIENT.parse().expect("an address"));
        self.server.handle_client(self.now, from, &raw, &mut self.sockets);
        let reply = self.server.poll_transmit().expect("a response");
        let mut out = Message::new();
        out.unmarshal_binary(&reply.payload).expect("our responses decode");
        out
    }

    /// `message` with USERNAME, REALM, NONCE, MESSAGE-INTEGRITY (the session key) and
    /// FINGERPRINT appended and its length fixed: gets a fuzzed request past authentication.
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let mut m = message.to_vec();
        if m.len() < wire::STUN_HEADER {
            m.resize(wire::STUN_HEADER, 0);
        }
        // Attributes are 4-byte aligned; the fuzzer's bytes may not be.
        m.resize(m.len().next_multiple_of(4), 0);
        let mut attr = |typ: u16, value: &[u8]| {
            m.extend_from_slice(&typ.to_be_bytes());
            m.extend_from_slice(&(value.len() as u16).to_be_bytes());
            m.extend_from_slice(value);
            m.resize(m.len().next_multiple_of(4), 0);
        };
        attr(ATTR_USERNAME.0, USER.as_bytes());
        attr(ATTR_REALM.0, REALM.as_bytes());
        attr(ATTR_NONCE.0, self.nonce.as_bytes());
        let set_len = |m: &mut Vec<u8>, extra: usize| {
            let len = (m.len() - wire::STUN_HEADER + extra) as u16;
            m[2..4].copy_from_slice(&len.to_be_bytes());
        };
        let mac = integrity(&m, &self.key);
        m.extend_from_slice(&wire::ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        m.extend_from_slice(&20u16.to_be_bytes());
        m.extend_from_slice(&mac);
        set_len(&mut m, 8);
        let crc = crc32fast::hash(&m) ^ 0x5354_554E;
        m.extend_from_slice(&wire::ATTR_FINGERPRINT.to_be_bytes());
        m.extend_from_slice(&4u16.to_be_bytes());
        m.extend_from_slice(&crc.to_be_bytes());
        m
    }

    /// A datagram from the client; what it relays must be a slice of it.
    fn client(&mut self, datagram: &[u8]) {
        let from = ClientAddr(CLIENT.parse().expect("an address"));
        if let Some(f) = self.server.handle_client(self.now, from, datagram, &mut self.sockets) {
            assert!(f.payload.end <= datagram.len(), "relayed bytes lie within the datagram");
        }
        while self.server.poll_transmit().is_some() {}
        while self.server.poll_event().is_some() {}
    }

    /// A datagram from `from` to the allocation's relay port; the message for the client must
    /// carry the datagram unchanged.
    fn peer(&mut self, from: SocketAddr, data: &[u8]) {
        let mut buf = vec![0u8; PEER_HEADROOM + data.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + data.len()].copy_from_slice(data);
        let payload = PEER_HEADROOM..PEER_HEADROOM + data.len();
        if let Some(to) = self.server.handle_peer(self.now, RelayPort(self.port), PeerAddr(from), &mut buf, payload) {
            let message = &buf[to.message];
            let carried = match wire::classify(message) {
                wire::Kind::ChannelData => wire::parse_channel_data(message).map(|(_, r)| &message[r]),
                _ => wire::Attributes::new(message).flatten().find(|a| a.typ == wire::ATTR_DATA).map(|a| a.value),
            };
            assert_eq!(carried, Some(data), "the client gets the peer's datagram unchanged");
        }
    }

    fn advance(&mut self, secs: u8) {
        self.now += Duration::from_secs(u64::from(secs));
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
        while self.server.poll_event().is_some() {}
    }
}

/// A STUN message with a fresh transaction id, unsigned.
fn build(method: Method, class: stun::message::MessageClass, attrs: &[&dyn Setter]) -> Vec<u8> {
    let mut m = Message::new();
    m.typ = MessageType::new(method, class);
    m.new_transaction_id().expect("an id");
    m.write_header();
    for a in attrs {
        a.add_to(&mut m).expect("an attribute");
    }
    m.raw
}

/// Splits `data` into (op, chunk) pairs: a byte of op, two of length, then the chunk.
fn chunks(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&op, rest) = data.split_first()?;
        let len = match rest {
            [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
            _ => rest.len(),
        };
        let rest = rest.get(2..).unwrap_or_default();
        let (chunk, tail) = rest.split_at(len.min(rest.len()));
        data = tail;
        Some((op, chunk))
    })
}

/// A TURN session driven by the input (see the module docs).
pub fn stun_message(data: &[u8]) {
    let mut s = Session::new();
    for (op, chunk) in chunks(data) {
        match op % 5 {
            0 => s.client(chunk),
            1 => {
                let signed = s.sign(chunk);
                s.client(&signed);
            }
            2 => s.peer(PEER.parse().expect("an address"), chunk),
            3 => s.peer("127.0.0.2:1".parse().expect("an address"), chunk),
            _ => s.advance(chunk.first().copied().unwrap_or(1)),
        }
    }
}

/// ChannelData both ways (see the module docs).
pub fn channel_data(data: &[u8]) {
    if let Some((_, range)) = wire::parse_channel_data(data) {
        assert!(range.end <= data.len() && range.start == wire::CHANNEL_DATA_HEADER);
    }
    // Framing a payload in place and parsing it back gives the payload.
    let payload = data.get(..data.len().min(1500)).unwrap_or_default();
    let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
    buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
    let range = PEER_HEADROOM..PEER_HEADROOM + payload.len();
    if let Some(m) = wire::write_channel_data(&mut buf, range, CHANNEL) {
        let (number, inner) = wire::parse_channel_data(&buf[m.clone()]).expect("our ChannelData parses");
        assert_eq!(number, CHANNEL);
        assert_eq!(&buf[m][inner], payload);
    }
    let mut s = Session::new();
    s.client(data);
    let mut framed = Vec::with_capacity(data.len() + 4);
    framed.extend_from_slice(&CHANNEL.to_be_bytes());
    framed.extend_from_slice(&(data.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    framed.extend_from_slice(data);
    s.client(&framed);
    s.peer(PEER.parse().expect("an address"), data);
}

/// Appends `data` to `buf` `step` bytes at a time, as a stream delivers it, and after each piece
/// lets `take` consume what it can from `buf`; stops early when `take` says `false`.
fn in_pieces(data: &[u8], step: usize, buf: &mut Vec<u8>, mut take: impl FnMut(&mut Vec<u8>) -> bool) {
    for piece in data.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        if !take(buf) {
            return;
        }
    }
}

/// The stream framer (see the module docs). The first byte picks where the input is split.
pub fn tcp_framing(data: &[u8]) {
    let Some((&step, data)) = data.split_first() else { return };
    let mut buf = Vec::new();
    let mut consumed = 0;
    let mut valid = true;
    in_pieces(data, usize::from(step), &mut buf, |buf| {
        loop {
            match frame(buf) {
                Frame::Incomplete => {
                    assert!(buf.len() < MAX_FRAME + 4 || buf.len() < 4, "a full frame's worth is never incomplete");
                    return true;
                }
                Frame::Invalid => {
                    valid = false;
                    return false;
                }
                Frame::Message { len, wire } => {
                    assert!(len <= wire && wire <= buf.len() && wire <= MAX_FRAME && wire - len < 4);
                    buf.drain(..wire);
                    consumed += wire;
                }
            }
        }
    });
    if valid {
        assert_eq!(consumed + buf.len(), data.len(), "framing loses no byte");
    }
}

/// A relay link's wire (see the module docs). The first byte picks where the control stream is
/// split.
pub fn link_wire(data: &[u8]) {
    if let Ok(m) = Media::decode(data) {
        let mut again = Vec::new();
        m.encode(&mut again);
        assert_eq!(Media::decode(&again).as_ref(), Ok(&m), "a datagram re-encodes to itself");
    }
    let Some((&step, data)) = data.split_first() else { return };
    in_pieces(data, usize::from(step), &mut Vec::new(), |buf| {
        loop {
            match Control::decode(buf) {
                Ok(None) => return true,
                Err(_) => return false,
                Ok(Some((c, used))) => {
                    assert!(used <= buf.len());
                    let mut again = Vec::new();
                    c.encode(&mut again).expect("a decoded message is within the limits");
                    assert_eq!(Control::decode(&again), Ok(Some((c, again.len()))), "a frame re-encodes to itself");
                    buf.drain(..used);
                }
            }
        }
    });
}

/// Inputs each target starts from: valid messages of every kind the relay handles.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let s = Session::new();
    let peer: SocketAddr = PEER.parse().expect("an address");
    let peer_attr = turn::proto::peeraddr::PeerAddress { ip: peer.ip(), port: peer.port() };
    let udp = turn::proto::reqtrans::RequestedTransport { protocol: turn::proto::PROTO_UDP };
    let data = turn::proto::data::Data(b"hello".to_vec());
    let messages = [
        build(METHOD_ALLOCATE, CLASS_REQUEST, &[&udp]),
        build(stun::message::METHOD_CREATE_PERMISSION, CLASS_REQUEST, &[&peer_attr]),
        build(METHOD_CHANNEL_BIND, CLASS_REQUEST, &[&turn::proto::channum::ChannelNumber(0x4001), &peer_attr]),
        build(
            stun::message::METHOD_REFRESH,
            CLASS_REQUEST,
            &[&turn::proto::lifetime::Lifetime(Duration::from_secs(60))],
        ),
        build(stun::message::METHOD_SEND, stun::message::CLASS_INDICATION, &[&peer_attr, &data]),
        build(stun::message::METHOD_BINDING, CLASS_REQUEST, &[]),
    ];
    let mut channel = CHANNEL.to_be_bytes().to_vec();
    channel.extend_from_slice(&5u16.to_be_bytes());
    channel.extend_from_slice(b"hello\0\0\0");
    // stun_message: sequences of ops.
    for (i, m) in messages.iter().enumerate() {
        let mut session = Vec::new();
        for (op, chunk) in [(1u8, m.as_slice()), (0, m.as_slice()), (2, b"reply".as_slice()), (0, &channel), (4, &[30])]
        {
            session.push(op);
            session.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            session.extend_from_slice(chunk);
        }
        if i == 0 {
            out.push(s.sign(m));
        }
        out.push(session);
        out.push(m.clone());
    }
    out.push(channel);
    // link_wire: a media datagram, and a control stream of one frame of each direction.
    let mut media = Vec::new();
    let payload = b"\x90\xe0rtp";
    Media { track: 1, layer: 1, seq: 300, timestamp: 9000, marker: true, keyframe: true, resend: false, payload }
        .encode(&mut media);
    out.push(media);
    let mut stream = vec![7];
    for c in [
        Control::Subscribe { machine: "m1".into() },
        Control::Nack { track: 1, layer: 0, seqs: vec![298, 299] },
        Control::Track { machine: "m1".into(), track: 1, codec: 2, layers: 3 },
        Control::SeatInput {
            machine: "m1".into(),
            binary: false,
            data: b"coin".to_vec(),
            arrived_unix_ms: 5,
            rtt_ms: 40,
        },
    ] {
        c.encode(&mut stream).expect("a small frame");
    }
    out.push(stream);
    out
}
