//! Link nodes on a network simulated in memory, in virtual time: every packet either node sends
//! reaches the other after a fixed one-way delay, unless the test drops it.

use super::*;
use cluster::pki::{Authority, Validity};
use prometheus::{IntCounterVec, Opts};

use crate::link::tls::Refusals;

/// The network's one-way delay unless a test sets another.
const DELAY: Duration = Duration::from_millis(20);

fn tls_for(ca: &Authority, id: &str) -> LinkTls {
    tls_of(ca, &ca.issue(id, Validity::days_from(cluster::time::unix_now(), 1)).unwrap())
}

fn tls_of(ca: &Authority, issued: &cluster::pki::Issued) -> LinkTls {
    let counter = IntCounterVec::new(Opts::new("refusals", "test"), &["side", "reason"]).unwrap();
    LinkTls::from_pem(
        ca.cert_pem().as_bytes(),
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        ["ca", "cert", "key"],
        Refusals::new(counter),
    )
    .unwrap()
}

fn ca() -> Authority {
    Authority::generate("cluster", Validity::days_from(cluster::time::unix_now(), 1)).unwrap()
}

/// One relay on the simulated network.
struct Place {
    addr: SocketAddr,
    node: LinkNode,
    /// Everything the node reported, with the (virtual) time it was reported.
    events: Vec<(Instant, NodeEvent)>,
    /// Unplugged: what it sends and what is sent to it is lost.
    unplugged: bool,
}

struct Net {
    start: Instant,
    now: Instant,
    places: Vec<Place>,
    /// Packets on their way: arrival, from, to, bytes.
    flight: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    /// Whether to lose the next packet.
    lose: Box<dyn FnMut() -> bool>,
    delay: Duration,
    sent: u64,
}

impl Net {
    fn new(nodes: Vec<LinkNode>) -> Self {
        let now = Instant::now();
        let places = nodes
            .into_iter()
            .enumerate()
            .map(|(i, node)| Place {
                addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 7000)),
                node,
                events: Vec::new(),
                unplugged: false,
            })
            .collect();
        Self { start: now, now, places, flight: Vec::new(), lose: Box::new(|| false), delay: DELAY, sent: 0 }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.places[i].addr
    }

    fn node(&mut self, i: usize) -> &mut LinkNode {
        &mut self.places[i].node
    }

    /// Takes what every node has to send and report.
    fn flush(&mut self) {
        let mut buf = Vec::new();
        for p in &mut self.places {
            while let Some(t) = p.node.poll_transmit(self.now, &mut buf) {
                for segment in buf[..t.size].chunks(t.segment_size.unwrap_or(t.size)) {
                    self.sent += 1;
                    if !p.unplugged && !(self.lose)() {
                        self.flight.push((self.now + self.delay, p.addr, t.destination, segment.to_vec()));
                    }
                }
            }
            while let Some(e) = p.node.poll_event() {
                p.events.push((self.now, e));
            }
        }
    }

    /// Runs the network for `d` of virtual time.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.flush();
            let arrival = self.flight.iter().map(|f| f.0).min();
            let timeout = self.places.iter_mut().filter_map(|p| p.node.poll_timeout()).min();
            let next = match (arrival, timeout) {
                (Some(a), Some(t)) => a.min(t),
                (a, t) => match a.or(t) {
                    Some(n) => n,
                    None => break,
                },
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flight).into_iter().partition(|f| f.0 <= now);
            self.flight = later;
            for (_, from, to, data) in due {
                if let Some(p) = self.places.iter_mut().find(|p| p.addr == to && !p.unplugged) {
                    p.node.handle_datagram(now, from, BytesMut::from(&data[..]));
                }
            }
            for p in &mut self.places {
                if p.node.poll_timeout().is_some_and(|t| t <= now) {
                    p.node.handle_timeout(now);
                }
            }
        }
        self.now = end;
        self.flush();
    }

    /// The events of node `i` so far, taken.
    fn take(&mut self, i: usize) -> Vec<NodeEvent> {
        self.places[i].events.drain(..).map(|(_, e)| e).collect()
    }

    /// Node `i`'s events so far, with their times since the start, taken.
    fn take_timed(&mut self, i: usize) -> Vec<(Duration, NodeEvent)> {
        let start = self.start;
        self.places[i].events.drain(..).map(|(t, e)| (t - start, e)).collect()
    }
}

fn peer(id: &str) -> Arc<str> {
    Arc::from(id)
}

/// Relays `relay-a` and `relay-b` of one cluster, not linked yet.
fn pair() -> Net {
    let ca = ca();
    let a = LinkNode::new(tls_for(&ca, "relay-a")).unwrap();
    let b = LinkNode::new(tls_for(&ca, "relay-b")).unwrap();
    Net::new(vec![a, b])
}

/// Node `from` starts linking to node `to` as relay `id`.
fn connect(net: &mut Net, from: usize, to: usize, id: &str) {
    let (now, addr) = (net.now, net.addr(to));
    net.node(from).connect(now, addr, id).unwrap();
}

/// Two relays of one cluster, `relay-a` linked to `relay-b`.
fn linked() -> Net {
    let mut net = pair();
    connect(&mut net, 0, 1, "relay-b");
    net.run(Duration::from_secs(1));
    assert_eq!(net.take(0), [NodeEvent::Linked { peer: peer("relay-b") }]);
    assert_eq!(net.take(1), [NodeEvent::Linked { peer: peer("relay-a") }]);
    net
}

#[test]
fn a_link_carries_media_and_control_both_ways_in_order() {
    let mut net = linked();
    assert!(net.node(0).is_linked("relay-b") && net.node(1).is_linked("relay-a"));
    let rtt = net.node(0).rtt("relay-b").unwrap();
    assert!(rtt >= 2 * DELAY && rtt < 3 * DELAY, "{rtt:?}");
    let now = net.now;
    for i in 0..50u8 {
        assert_eq!(net.node(0).send_media(now, "relay-b", Bytes::from(vec![i; 1100])), Ok(Sent::Datagram));
    }
    for i in 0..100 {
        assert!(net.node(0).send_control(now, "relay-b", &Control::Subscribe { machine: format!("m{i}") }));
        assert!(net.node(1).send_control(now, "relay-a", &Control::KeyframeRequest { track: i }));
    }
    // Larger than any datagram the path takes: on the stream, and still a datagram at B.
    assert_eq!(net.node(0).send_media(now, "relay-b", Bytes::from(vec![7; 3000])), Ok(Sent::Stream));
    assert_eq!(
        net.node(0).send_media(now, "relay-b", Bytes::from(vec![7; 9000])),
        Err(DatagramDrop::TooLarge { size: 9000, max: net.node(0).max_datagram_size("relay-b").unwrap() })
    );
    net.run(Duration::from_secs(1));
    let at_b = net.take(1);
    let media: Vec<&Bytes> = at_b
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Datagram { peer: p, data } if **p == *"relay-a" => Some(data),
            _ => None,
        })
        .collect();
    assert_eq!(media.len(), 51, "50 datagrams and the oversize one");
    let datagrams: Vec<u8> = media.iter().filter(|d| d.len() == 1100).map(|d| d[0]).collect();
    assert_eq!(datagrams, (0..50).collect::<Vec<u8>>(), "in order on an orderly path");
    assert!(media.iter().any(|d| d.as_ref() == [7; 3000]));
    let subscribed: Vec<String> = at_b
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Control { message: Control::Subscribe { machine }, .. } => Some(machine.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(subscribed, (0..100).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let at_a: Vec<NodeEvent> = net.take(0);
    let expected: Vec<NodeEvent> = (0..100)
        .map(|i| NodeEvent::Control { peer: peer("relay-b"), message: Control::KeyframeRequest { track: i } })
        .collect();
    assert_eq!(at_a, expected);
}

#[test]
fn control_survives_loss_on_the_path_and_media_is_lost_as_the_path_loses_it() {
    let mut net = linked();
    let mut n = 0u32;
    // One packet in ten lost, whichever way.
    net.lose = Box::new(move || {
        n += 1;
        n.is_multiple_of(10)
    });
    for round in 0..20u64 {
        let now = net.now;
        for i in 0..10 {
            net.node(0).send_control(now, "relay-b", &Control::KeyframeRequest { track: round * 10 + i });
            net.node(0).send_media(now, "relay-b", Bytes::from(vec![1; 500])).unwrap();
        }
        net.run(Duration::from_millis(20));
    }
    net.run(Duration::from_secs(2));
    let at_b = net.take(1);
    let tracks: Vec<u64> = at_b
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Control { message: Control::KeyframeRequest { track }, .. } => Some(*track),
            _ => None,
        })
        .collect();
    assert_eq!(tracks, (0..200).collect::<Vec<_>>(), "every control message, in order");
    let media = at_b.iter().filter(|e| matches!(e, NodeEvent::Datagram { .. })).count();
    assert!((150..200).contains(&media), "datagrams are not resent: {media} of 200 arrived");
    assert!(net.node(0).is_linked("relay-b"));
}

#[test]
fn a_relay_with_a_certificate_from_another_ca_is_refused_and_counted() {
    let cluster = ca();
    let b = LinkNode::new(tls_for(&cluster, "relay-b")).unwrap();
    let evil = LinkNode::new(tls_for(&ca(), "relay-x")).unwrap();
    let mut net = Net::new(vec![evil, b]);
    connect(&mut net, 0, 1, "relay-b");
    net.run(Duration::from_secs(2));
    // Its own verifier refused B's certificate too (B's is not from its CA).
    let failed = net.take(0);
    assert!(matches!(&failed[..], [NodeEvent::Failed { peer: p, .. }] if **p == *"relay-b"), "{failed:?}");
    assert_eq!(net.take(1), []);
    assert_eq!(net.node(0).tls().refusals().get("connect", Refusal::UntrustedCa), 1);
    assert_eq!(net.node(0).connections() + net.node(1).connections(), 0, "both drained");

    // B linking to it refuses its certificate, counted on B's side.
    connect(&mut net, 1, 0, "relay-x");
    net.run(Duration::from_secs(2));
    let failed = net.take(1);
    assert!(matches!(&failed[..], [NodeEvent::Failed { peer: p, .. }] if **p == *"relay-x"), "{failed:?}");
    assert_eq!(net.node(1).tls().refusals().get("connect", Refusal::UntrustedCa), 1);
    assert!(!net.node(1).is_linked("relay-x") && !net.node(0).is_linked("relay-b"));
}

#[test]
fn a_relay_asked_for_by_the_wrong_id_is_refused() {
    let mut net = pair();
    connect(&mut net, 0, 1, "relay-c");
    net.run(Duration::from_secs(2));
    let failed = net.take(0);
    assert!(matches!(&failed[..], [NodeEvent::Failed { peer: p, .. }] if **p == *"relay-c"), "{failed:?}");
    assert_eq!(net.node(0).tls().refusals().get("connect", Refusal::WrongRelay), 1);
    assert_eq!(net.take(1), []);
    let (now, to) = (net.now, net.addr(1));
    assert!(net.node(0).connect(now, to, "not a relay id!").is_err());
}

#[test]
fn a_malformed_control_frame_closes_the_link_on_both_sides() {
    let mut net = linked();
    // A frame of 5 bytes of an unknown type (skipped, counted), then one of length 0.
    net.node(0).send_raw_control("relay-b", &[5, 0xee, 1, 2, 3, 4, 0]);
    net.run(Duration::from_secs(1));
    let at_b = net.take(1);
    assert!(
        matches!(&at_b[..], [NodeEvent::Closed { peer: p, reason }] if **p == *"relay-a" && reason.contains("malformed")),
        "{at_b:?}"
    );
    assert_eq!(net.node(1).unknown_frames(), 1);
    let at_a = net.take(0);
    assert!(matches!(&at_a[..], [NodeEvent::Closed { reason, .. }] if reason.contains("code 257")), "{at_a:?}");
    assert!(!net.node(0).is_linked("relay-b") && !net.node(1).is_linked("relay-a"));
}

#[test]
fn a_restarted_peer_resets_the_link_within_a_keep_alive_and_links_again() {
    let ca = ca();
    let a = LinkNode::new(tls_for(&ca, "relay-a")).unwrap();
    let issued = ca.issue("relay-b", Validity::days_from(cluster::time::unix_now(), 1)).unwrap();
    let b = LinkNode::new(tls_of(&ca, &issued)).unwrap();
    let mut net = Net::new(vec![a, b]);
    connect(&mut net, 0, 1, "relay-b");
    net.run(Duration::from_secs(1));
    net.take(0);
    // B restarts with the same files, so the same stateless-reset secret.
    net.places[1].node = LinkNode::new(tls_of(&ca, &issued)).unwrap();
    let restarted = net.now - net.start;
    net.run(Duration::from_secs(3));
    let at_a = net.take_timed(0);
    let [(when, NodeEvent::Closed { peer: p, reason })] = &at_a[..] else { panic!("{at_a:?}") };
    assert_eq!(**p, *"relay-b");
    assert!(reason.contains("reset"), "{reason}");
    assert!(*when - restarted <= KEEP_ALIVE_BOUND, "closed {:?} after the restart", *when - restarted);
    connect(&mut net, 0, 1, "relay-b");
    net.run(Duration::from_secs(1));
    assert_eq!(net.take(0), [NodeEvent::Linked { peer: peer("relay-b") }]);
}

/// A keep-alive, a stateless reset back, and the delay both ways.
const KEEP_ALIVE_BOUND: Duration = Duration::from_millis(1100);

#[test]
fn the_end_that_sends_no_keep_alives_follows_the_rtt_only_when_pinged() {
    // On a real link one end's keep-alives reset the other's timer (receiving resets it), so
    // the other only acknowledges and never samples the RTT: here B sends none at all.
    let ca = ca();
    let a = LinkNode::new(tls_for(&ca, "relay-a")).unwrap();
    let mut quiet = crate::link::endpoint::transport_config();
    quiet.keep_alive_interval(None);
    let b = LinkNode::with_transport(tls_for(&ca, "relay-b"), quiet).unwrap();
    let mut net = Net::new(vec![a, b]);
    connect(&mut net, 0, 1, "relay-b");
    net.run(Duration::from_secs(1));
    let rtt = |net: &mut Net, i: usize, peer: &str| net.node(i).rtt(peer).unwrap();
    assert!(rtt(&mut net, 1, "relay-a") < 3 * DELAY);
    // The path gets longer: 100 ms each way.
    net.delay = Duration::from_millis(100);
    net.run(Duration::from_secs(15));
    let (a, b) = (rtt(&mut net, 0, "relay-b"), rtt(&mut net, 1, "relay-a"));
    assert!(a > Duration::from_millis(150) && b < Duration::from_millis(100), "A {a:?}, B {b:?}");
    for _ in 0..15 {
        net.node(1).ping();
        net.run(Duration::from_secs(1));
    }
    let b = rtt(&mut net, 1, "relay-a");
    assert!(b > Duration::from_millis(150) && b < Duration::from_millis(260), "B {b:?}");
}

#[test]
fn a_silent_peer_times_the_link_out() {
    let mut net = linked();
    net.places[1].unplugged = true;
    let unplugged = net.now - net.start;
    net.run(Duration::from_secs(12));
    let at_a = net.take_timed(0);
    let [(when, NodeEvent::Closed { reason, .. })] = &at_a[..] else { panic!("{at_a:?}") };
    assert_eq!(reason, "timed out");
    let after = *when - unplugged;
    assert!(after >= Duration::from_secs(9) && after <= Duration::from_secs(11), "{after:?}");
}

#[test]
fn disconnecting_closes_the_link_at_both_ends_and_the_connections_drain() {
    let mut net = linked();
    let now = net.now;
    assert!(net.node(0).disconnect(now, "relay-b"));
    assert!(!net.node(0).disconnect(now, "relay-b"));
    assert_eq!(net.node(0).send_media(now, "relay-b", Bytes::from_static(b"x")), Err(DatagramDrop::LinkLost));
    assert!(!net.node(0).send_control(now, "relay-b", &Control::KeyframeRequest { track: 1 }));
    net.run(Duration::from_secs(2));
    assert!(matches!(&net.take(0)[..], [NodeEvent::Closed { .. }]));
    let at_b = net.take(1);
    assert!(matches!(&at_b[..], [NodeEvent::Closed { reason, .. }] if reason.contains("no longer wanted")), "{at_b:?}");
    assert_eq!((net.node(0).connections(), net.node(1).connections()), (0, 0));
}

#[test]
fn a_second_link_to_the_same_relay_replaces_the_first() {
    let mut net = linked();
    connect(&mut net, 0, 1, "relay-b");
    net.run(Duration::from_secs(2));
    // B takes the new link and closes the old one without a word (A is still linked); A hears
    // of that close before its new link is up (it waits for B's welcome), then links.
    assert_eq!(
        net.take(0),
        [
            NodeEvent::Closed {
                peer: peer("relay-b"),
                reason: "closed by the peer: replaced by a new link (code 0)".into()
            },
            NodeEvent::Linked { peer: peer("relay-b") }
        ]
    );
    assert_eq!(net.take(1), [NodeEvent::Linked { peer: peer("relay-a") }]);
    assert_eq!((net.node(0).connections(), net.node(1).connections()), (1, 1));
    let now = net.now;
    net.node(0).send_media(now, "relay-b", Bytes::from_static(b"still")).unwrap();
    net.run(Duration::from_millis(100));
    assert!(matches!(&net.take(1)[..], [NodeEvent::Datagram { data, .. }] if data.as_ref() == b"still"));
}

#[test]
fn a_stopping_node_closes_its_links_and_refuses_new_ones() {
    let mut net = linked();
    let now = net.now;
    net.node(1).close(now);
    assert!(net.node(1).connect(now, SocketAddr::from(([10, 0, 0, 1], 7000)), "relay-a").is_err());
    net.run(Duration::from_secs(2));
    assert!(matches!(&net.take(0)[..], [NodeEvent::Closed { reason, .. }] if reason.contains("relay stopping")));
    assert_eq!((net.node(0).connections(), net.node(1).connections()), (0, 0));
    connect(&mut net, 0, 1, "relay-b");
    net.run(Duration::from_secs(2));
    assert!(matches!(&net.take(0)[..], [NodeEvent::Failed { .. }]));
}
