//! Property tests: arbitrary bytes into every parser that faces the network and into the core
//! itself, from clients and from peers, with and without an allocation in place. The property is
//! the one the relay promises: no input panics, and malformed input produces no relayed data.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use relay::testkit::{self, FakeSockets};
use relay::turn::auth::{Credentials, NonceSource};
use relay::turn::peer_filter::PeerFilter;
use relay::turn::wire::{self, PEER_HEADROOM, PEER_TAILROOM, StunFrame};
use relay::turn::{ClientAddr, OwnAddresses, PeerAddr, PortPool, Quotas, RelayPort, ServerConfig, Shared, TurnServer};

fn server() -> TurnServer {
    let now = Instant::now();
    let ip = "192.0.2.1".parse().unwrap();
    let config = ServerConfig {
        software: "prop".into(),
        credentials: Credentials::new("r", &[("u".into(), "p".into())], vec![b"s".to_vec()]),
        nonces: NonceSource::new([1; 32], now, Duration::from_secs(600)),
        max_permissions: 4,
        max_channels: 4,
        rfc5766_channel_numbers: true,
        peer_filter: PeerFilter::new(vec!["127.0.0.0/8".parse().unwrap()], vec![]),
        own: OwnAddresses { ips: vec![ip], ports: vec![3478..=3478, 50000..=50009] },
        ..testkit::server_config(ip, now)
    };
    let shared = Arc::new(Shared::new(PortPool::new(50000, 50009, 3), Quotas::new(0, 0)));
    TurnServer::new(Arc::new(config), shared, now, 1_800_000_000, 1)
}

/// Datagrams that look like STUN (right cookie, plausible length) with arbitrary attributes, so
/// the fuzzing reaches past the header checks into attribute handling.
fn stunish() -> impl Strategy<Value = Vec<u8>> {
    (
        0u16..0x4000,
        prop::collection::vec((any::<u16>(), prop::collection::vec(any::<u8>(), 0..40)), 0..8),
        any::<[u8; 12]>(),
    )
        .prop_map(|(typ, attrs, txid)| {
            let mut body = Vec::new();
            for (t, v) in attrs {
                body.extend_from_slice(&t.to_be_bytes());
                body.extend_from_slice(&(v.len() as u16).to_be_bytes());
                body.extend_from_slice(&v);
                body.resize(body.len().next_multiple_of(4), 0);
            }
            let mut m = typ.to_be_bytes().to_vec();
            m.extend_from_slice(&(body.len() as u16).to_be_bytes());
            m.extend_from_slice(&wire::MAGIC_COOKIE.to_be_bytes());
            m.extend_from_slice(&txid);
            m.extend_from_slice(&body);
            m
        })
}

fn any_datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1600),
        stunish(),
        // ChannelData-looking.
        (0x40u8..0x50, prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(b, mut v)| {
            v.insert(0, b);
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic(packet in any_datagram()) {
        let frame = StunFrame::parse(&packet);
        if let Ok(f) = &frame {
            prop_assert!(f.effective_len <= packet.len());
            let _ = wire::parse_send_indication(&packet, &f.transaction_id);
        }
        if let Some((_, range)) = wire::parse_channel_data(&packet) {
            prop_assert!(range.end <= packet.len());
        }
        let _ = wire::classify(&packet);
        for attr in wire::Attributes::new(&packet).flatten() {
            let _ = wire::read_xor_address(attr.value, &[0; 12]);
        }
        // The stun crate decoder must agree it can read whatever our framing accepted.
        if frame.is_ok() {
            let mut m = stun::message::Message::new();
            prop_assert!(m.unmarshal_binary(&packet).is_ok());
        }
    }

    #[test]
    fn core_never_panics_on_client_input(packets in prop::collection::vec(any_datagram(), 1..20)) {
        let mut s = server();
        let mut sockets = FakeSockets::default();
        let now = Instant::now();
        let from = ClientAddr("198.51.100.1:4000".parse().unwrap());
        for p in &packets {
            if let Some(f) = s.handle_client(now, from, p, &mut sockets) {
                prop_assert!(f.payload.end <= p.len());
            }
            while s.poll_transmit().is_some() {}
        }
        s.handle_timeout(now + Duration::from_secs(10_000));
    }

    #[test]
    fn core_never_panics_on_peer_input(data in prop::collection::vec(any::<u8>(), 0..1500), port in 49990u16..50020) {
        let mut s = server();
        let mut buf = vec![0u8; PEER_HEADROOM + data.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + data.len()].copy_from_slice(&data);
        let peer = PeerAddr(SocketAddr::from(([127, 0, 0, 1], 9)));
        let out = s.handle_peer(Instant::now(), RelayPort(port), peer, &mut buf, PEER_HEADROOM..PEER_HEADROOM + data.len());
        prop_assert!(out.is_none(), "no allocation, nothing relayed");
    }
}

/// With a live allocation and channel, arbitrary client datagrams never panic the core and never
/// relay anything but a byte range inside the datagram, and peers' arbitrary datagrams always
/// come out as well-formed ChannelData or Data indications.
#[test]
fn core_with_state_never_panics() {
    use stun::message::*;
    let mut s = server();
    let mut sockets = FakeSockets::default();
    let now = Instant::now();
    let from = ClientAddr("198.51.100.1:4000".parse().unwrap());
    let key = relay::turn::auth::long_term_key("u", "r", "p");
    // Allocate with the static user (challenge first to get a nonce).
    let build = |method: Method, nonce: Option<&str>, extra: &[&dyn Setter]| {
        let mut m = Message::new();
        m.typ = MessageType::new(method, CLASS_REQUEST);
        m.new_transaction_id().unwrap();
        m.write_header();
        for a in extra {
            a.add_to(&mut m).unwrap();
        }
        if let Some(n) = nonce {
            stun::textattrs::TextAttribute::new(stun::attributes::ATTR_USERNAME, "u".into()).add_to(&mut m).unwrap();
            stun::textattrs::TextAttribute::new(stun::attributes::ATTR_REALM, "r".into()).add_to(&mut m).unwrap();
            stun::textattrs::TextAttribute::new(stun::attributes::ATTR_NONCE, n.into()).add_to(&mut m).unwrap();
            stun::integrity::MessageIntegrity(key.to_vec()).add_to(&mut m).unwrap();
        }
        m.raw
    };
    let udp = turn::proto::reqtrans::RequestedTransport { protocol: turn::proto::PROTO_UDP };
    s.handle_client(now, from, &build(METHOD_ALLOCATE, None, &[&udp]), &mut sockets);
    let challenge = s.poll_transmit().unwrap();
    let mut m = Message::new();
    m.unmarshal_binary(&challenge.payload).unwrap();
    let nonce = stun::textattrs::TextAttribute::get_from_as(&m, stun::attributes::ATTR_NONCE).unwrap().text;
    s.handle_client(now, from, &build(METHOD_ALLOCATE, Some(&nonce), &[&udp]), &mut sockets);
    let ok = s.poll_transmit().unwrap();
    m.unmarshal_binary(&ok.payload).unwrap();
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE);
    let mut relayed = turn::proto::relayaddr::RelayedAddress::default();
    stun::message::Getter::get_from(&mut relayed, &m).unwrap();
    let peer = turn::proto::peeraddr::PeerAddress { ip: "127.0.0.1".parse().unwrap(), port: 9 };
    s.handle_client(
        now,
        from,
        &build(METHOD_CHANNEL_BIND, Some(&nonce), &[&turn::proto::channum::ChannelNumber(0x4000), &peer]),
        &mut sockets,
    );
    m.unmarshal_binary(&s.poll_transmit().unwrap().payload).unwrap();
    assert_eq!(m.typ.class, CLASS_SUCCESS_RESPONSE);

    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases: 4000, ..ProptestConfig::default() });
    // The runner wants an `Fn`; the core and its sockets carry state across cases on purpose.
    let state = std::cell::RefCell::new((s, sockets));
    runner
        .run(
            &(any_datagram(), prop::collection::vec(any::<u8>(), 0..1400), any::<bool>()),
            |(client, peer_data, bound)| {
                let mut guard = state.borrow_mut();
                let (s, sockets) = &mut *guard;
                if let Some(f) = s.handle_client(now, from, &client, sockets) {
                    prop_assert!(f.payload.end <= client.len());
                }
                while s.poll_transmit().is_some() {}
                let mut buf = vec![0u8; PEER_HEADROOM + peer_data.len() + PEER_TAILROOM];
                buf[PEER_HEADROOM..PEER_HEADROOM + peer_data.len()].copy_from_slice(&peer_data);
                let src = PeerAddr(SocketAddr::from(([127, 0, 0, 1], if bound { 9 } else { 10 })));
                let out = s.handle_peer(
                    now,
                    RelayPort(relayed.port),
                    src,
                    &mut buf,
                    PEER_HEADROOM..PEER_HEADROOM + peer_data.len(),
                );
                let out = out.expect("permission exists for 127.0.0.1");
                let msg = &buf[out.message];
                if bound {
                    prop_assert_eq!(wire::parse_channel_data(msg), Some((0x4000, 4..4 + peer_data.len())));
                } else {
                    let frame = StunFrame::parse(msg).expect("a well-formed Data indication");
                    prop_assert_eq!(frame.typ, wire::DATA_INDICATION);
                }
                Ok(())
            },
        )
        .unwrap();
}
