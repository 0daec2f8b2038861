//! The SFU engine with real WebRTC peers and no sockets: str0m clients (full ICE, the
//! controlling side) publish and subscribe through `relay::sfu::Sfu`, with datagrams carried by
//! a virtual network and a virtual clock. DTLS, SRTP, SCTP and RTCP are all real.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::webrtc_client::{Client, vp8};
use relay::sfu::{PeerId, Role, Sfu};
use str0m::Input;
use str0m::media::{Direction, Mid};
use str0m::net::{Protocol, Receive};

mod common;

const MACHINE: &str = "cab-1";

/// The SFU and its clients on a virtual network.
struct Net {
    sfu: Sfu,
    public: SocketAddr,
    clients: Vec<Client>,
    ids: Vec<PeerId>,
    now: Instant,
    /// Clients whose session the test ended.
    ended: Vec<SocketAddr>,
}

impl Net {
    fn new() -> Self {
        let public: SocketAddr = "192.0.2.10:3478".parse().unwrap();
        Self {
            sfu: Sfu::new(public),
            public,
            clients: Vec::new(),
            ids: Vec::new(),
            now: Instant::now(),
            ended: Vec::new(),
        }
    }

    fn publish(&mut self) -> usize {
        self.publish_with_channel("input")
    }

    fn publish_with_channel(&mut self, label: &str) -> usize {
        let (mut c, offer, pending) =
            Client::with_channel(self.now, "10.0.0.1:5000".parse().unwrap(), Direction::SendOnly, label);
        let (id, answer) = self.sfu.publish(self.now, MACHINE, &offer).unwrap();
        c.accept(pending, &answer);
        self.clients.push(c);
        self.ids.push(id);
        self.clients.len() - 1
    }

    fn subscribe(&mut self, role: Role) -> usize {
        self.subscribe_in(role, "s-1")
    }

    fn subscribe_in(&mut self, role: Role, session: &str) -> usize {
        let addr = SocketAddr::new("10.0.0.1".parse().unwrap(), 6000 + self.clients.len() as u16);
        let (mut c, offer, pending) = Client::new(self.now, addr, Direction::RecvOnly);
        let (id, answer) = self.sfu.subscribe(self.now, MACHINE, role, "viewer", Some(session), None, &offer).unwrap();
        c.accept(pending, &answer);
        self.clients.push(c);
        self.ids.push(id);
        self.clients.len() - 1
    }

    /// Moves every datagram both ways and runs timers, for `d` of virtual time in 1 ms steps.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
            self.now += Duration::from_millis(1);
        }
    }

    fn step(&mut self) {
        let now = self.now;
        for _ in 0..8 {
            let mut wire = Vec::new();
            for c in &mut self.clients {
                if c.timeout <= now {
                    c.rtc.handle_input(Input::Timeout(now)).unwrap();
                }
                c.poll(now, &mut wire);
            }
            if self.sfu.poll_timeout().is_some_and(|t| t <= now) {
                self.sfu.handle_timeout(now);
            }
            for (from, data) in &wire {
                let taken = self.sfu.handle_datagram(now, *from, data);
                // A client the SFU closed answers the close, or sent before the close reached
                // it (a consent check); the SFU has forgotten it.
                let closed = self.clients.iter().any(|c| c.addr == *from && c.closed) || self.ended.contains(from);
                assert!(taken || closed, "the SFU took a datagram of its peer");
            }
            let mut out = Vec::new();
            out.extend(std::iter::from_fn(|| self.sfu.poll_transmit()));
            if wire.is_empty() && out.is_empty() {
                break;
            }
            let by_addr: HashMap<SocketAddr, usize> =
                self.clients.iter().enumerate().map(|(i, c)| (c.addr, i)).collect();
            for t in out {
                let Some(&i) = by_addr.get(&t.to) else { continue };
                let c = &mut self.clients[i];
                let receive = Receive::new(Protocol::Udp, self.public, c.addr, &t.data).unwrap();
                c.rtc.handle_input(Input::Receive(now, receive)).unwrap();
            }
        }
    }

    fn connect(&mut self) {
        self.run(Duration::from_millis(1500));
        for (i, c) in self.clients.iter().enumerate() {
            assert!(c.connected && c.open, "client {i} connected {} channel {}", c.connected, c.open);
        }
    }
}

#[test]
fn one_publisher_to_many_subscribers_with_the_seat() {
    let mut net = Net::new();
    let machine = net.publish();
    let player = net.subscribe(Role::Player);
    let spectators: Vec<usize> = (0..4).map(|_| net.subscribe(Role::Spectator)).collect();
    net.connect();

    // 300 video packets, a key frame every 100, plus audio.
    for i in 0..300u64 {
        let now = net.now;
        net.clients[machine].send_rtp(now, true, 1000 + i, (i as u32 / 3) * 3000, vp8(i % 100 == 0, i));
        if i % 3 == 0 {
            net.clients[machine].send_rtp(now, false, 500 + i / 3, (i as u32 / 3) * 960, vec![0xfc; 80]);
        }
        net.run(Duration::from_millis(4));
    }
    net.run(Duration::from_millis(200));
    for &s in std::iter::once(&player).chain(&spectators) {
        let c = &net.clients[s];
        let video: Vec<&(Mid, u64, Vec<u8>)> = c.rtp.iter().filter(|(m, ..)| *m == c.video).collect();
        assert!(video.len() >= 297, "subscriber {s} got {} of 300 video packets", video.len());
        for pair in video.windows(2) {
            assert_eq!(pair[1].1, pair[0].1 + 1, "in order, no gaps");
        }
        // The payload is the publisher's, untouched.
        assert_eq!(&video[0].2[2..10], &0u64.to_be_bytes());
        assert!(c.rtp.iter().filter(|(m, ..)| *m == c.audio).count() >= 99);
    }

    // Inputs: the player's reach the machine, a spectator's do not.
    net.clients[player].send_data(b"coin");
    net.clients[spectators[0]].send_data(b"cheat");
    net.run(Duration::from_millis(100));
    assert_eq!(net.clients[machine].data, vec![b"coin".to_vec()]);
    // The machine's messages reach everybody.
    net.clients[machine].send_data(b"state");
    net.run(Duration::from_millis(100));
    for &s in std::iter::once(&player).chain(&spectators) {
        assert_eq!(net.clients[s].data, vec![b"state".to_vec()], "subscriber {s}");
    }
    // Handoff: now the spectator plays and the player's inputs are dropped.
    net.sfu.hand_seat(MACHINE, Some(net.ids[spectators[0]])).unwrap();
    net.clients[player].send_data(b"late");
    net.clients[spectators[0]].send_data(b"go");
    net.run(Duration::from_millis(100));
    assert_eq!(net.clients[machine].data, vec![b"coin".to_vec(), b"go".to_vec()]);
    let stats = net.sfu.router().stats();
    assert_eq!((stats.inputs_delivered, stats.inputs_dropped), (2, 2));
    assert_eq!(net.sfu.stats().panics, 0);
}

/// A machine whose data channel is labelled `stamped` receives each seat input as JSON with the
/// time it reached the relay and the player's RTT (from the RTCP receiver reports of the media
/// the player receives); a spectator's input still does not reach it.
#[test]
fn a_machine_asking_for_stamps_gets_each_input_with_its_arrival_and_the_players_rtt() {
    let mut net = Net::new();
    let machine = net.publish_with_channel("stamped");
    let player = net.subscribe(Role::Player);
    let spectator = net.subscribe(Role::Spectator);
    net.connect();
    // Media for a while, so that the player has sent receiver reports.
    for i in 0..400u64 {
        let now = net.now;
        net.clients[machine].send_rtp(now, true, 1000 + i, (i as u32 / 3) * 3000, vp8(i % 100 == 0, i));
        net.run(Duration::from_millis(10));
    }
    let before = std::time::SystemTime::now();
    net.clients[player].send_text(r#"{"button":"coin"}"#);
    net.clients[player].send_data(&[1, 2, 255]);
    net.clients[spectator].send_text("cheat");
    net.run(Duration::from_millis(100));
    let after = std::time::SystemTime::now();
    let unix_ms = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let got: Vec<serde_json::Value> =
        net.clients[machine].data.iter().map(|d| serde_json::from_slice(d).expect("a JSON envelope")).collect();
    assert_eq!(got.len(), 2, "the player's two inputs, not the spectator's: {got:?}");
    assert_eq!((got[0]["type"].as_str(), got[0]["text"].as_str()), (Some("seat_input"), Some(r#"{"button":"coin"}"#)));
    assert_eq!(got[1]["base64"], "AQL/", "a binary input, base64: {}", got[1]);
    for g in &got {
        let at = g["arrived_unix_ms"].as_u64().unwrap();
        assert!((unix_ms(before)..=unix_ms(after)).contains(&at), "{g}");
        // Virtual network: the RTT is a few ms of virtual time, but known.
        assert!(g["rtt_ms"].as_u64().is_some_and(|ms| ms < 100), "the player's RTT: {g}");
        assert!(g["relay"].is_null(), "no cluster id without links: {g}");
    }
}

/// Signaling ended session s-1: its viewers are closed at once (their clients see the DTLS
/// close, not an ICE timeout), the seat it held is free, and another session's viewer of the
/// same machine keeps watching.
#[test]
fn ending_a_session_closes_its_viewers_and_no_others() {
    let mut net = Net::new();
    let machine = net.publish();
    let player = net.subscribe_in(Role::Player, "s-1");
    let spectator = net.subscribe_in(Role::Spectator, "s-1");
    let other = net.subscribe_in(Role::Spectator, "s-2");
    net.connect();
    let ended: std::collections::HashSet<String> = ["s-1".to_owned(), "s-9".to_owned()].into();
    net.ended = vec![net.clients[player].addr, net.clients[spectator].addr];
    assert_eq!(net.sfu.end_sessions(&ended), 2);
    net.run(Duration::from_millis(200));
    assert!(net.clients[player].closed && net.clients[spectator].closed, "both viewers of s-1 see the close");
    assert!(!net.clients[other].closed);
    assert_eq!(net.sfu.seat_holder(MACHINE), None, "the ended player's seat is free");
    assert_eq!(net.sfu.peer_count(), 2, "the machine and s-2's viewer remain");
    assert_eq!(net.sfu.stats().peers_revoked, 2);
    let before = [player, spectator, other].map(|c| net.clients[c].rtp.len());
    for i in 0..30u64 {
        let now = net.now;
        net.clients[machine].send_rtp(now, true, 1 + i, i as u32 * 3000, vp8(i == 0, i));
        net.run(Duration::from_millis(10));
    }
    assert_eq!(net.clients[player].rtp.len(), before[0], "nothing reaches an ended viewer");
    assert_eq!(net.clients[spectator].rtp.len(), before[1]);
    assert!(net.clients[other].rtp.len() >= before[2] + 29, "s-2's viewer keeps watching");
    // Ending it again finds nobody.
    assert_eq!(net.sfu.end_sessions(&ended), 0);
}

#[test]
fn twenty_subscribers_asking_for_key_frames_reach_the_publisher_twice_a_second_at_most() {
    let mut net = Net::new();
    let machine = net.publish();
    let subs: Vec<usize> =
        (0..20).map(|i| net.subscribe(if i == 0 { Role::Player } else { Role::Spectator })).collect();
    net.connect();
    for i in 0..10u64 {
        let now = net.now;
        net.clients[machine].send_rtp(now, true, 1 + i, i as u32 * 3000, vp8(i == 0, i));
        net.run(Duration::from_millis(33));
    }
    let start = net.now;
    net.clients[machine].keyframe_requests.clear();
    // Every subscriber asks every 20 ms for 3 s while video flows.
    for i in 0..150u64 {
        for &s in &subs {
            net.clients[s].request_keyframe();
        }
        let now = net.now;
        net.clients[machine].send_rtp(now, true, 11 + i, (10 + i as u32) * 3000, vp8(false, 10 + i));
        net.run(Duration::from_millis(20));
    }
    let seen = &net.clients[machine].keyframe_requests;
    let elapsed = net.now - start;
    assert!(!seen.is_empty(), "requests reach the publisher");
    for pair in seen.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(490), "two requests {:?} apart", pair[1] - pair[0]);
    }
    let max = (elapsed.as_millis() / 500 + 1) as usize;
    eprintln!("{} key-frame requests reached the publisher in {elapsed:?}", seen.len());
    assert!(seen.len() <= max, "{} requests in {elapsed:?}", seen.len());
    let stats = net.sfu.router().stats();
    assert!(stats.keyframe_requests_suppressed > 1000, "{stats:?}");
}

#[test]
fn garbage_on_the_shared_port_leaves_subscribers_served() {
    let mut net = Net::new();
    let machine = net.publish();
    let player = net.subscribe(Role::Player);
    net.connect();
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let addrs = [net.clients[machine].addr, net.clients[player].addr];
    for i in 0..200u64 {
        let now = net.now;
        net.clients[machine].send_rtp(now, true, 1 + i, i as u32 * 3000, vp8(i == 0, i));
        // From the peers' own addresses: random bytes shaped as STUN, DTLS, RTP and RTCP.
        for first in [0x00u8, 0x01, 0x16, 0x17, 0x80, 0x81, 0xc8] {
            let len = (next() % 1400) as usize + 1;
            let mut junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            junk[0] = first;
            if first >= 0x80 && junk.len() > 1 {
                junk[1] = [0x60, 0x6f, 0xc8, 0xc9, 0xcd, 0xce][(next() % 6) as usize];
            }
            let from = addrs[(next() % 2) as usize];
            net.sfu.handle_datagram(now, from, &junk);
        }
        // And from strangers: not ours.
        assert!(!net.sfu.handle_datagram(now, "203.0.113.9:1234".parse().unwrap(), &[0x80, 0x60, 0, 1]));
        net.run(Duration::from_millis(5));
    }
    let c = &net.clients[player];
    let video = c.rtp.iter().filter(|(m, ..)| *m == c.video).count();
    assert!(video >= 198, "the player got {video} of 200 packets");
    assert_eq!(net.sfu.peer_count(), 2);
    let s = net.sfu.stats();
    eprintln!("{s:?}");
    assert!(s.datagrams_in > 1400, "the junk from peers' addresses reached their stacks");
    assert_eq!(net.sfu.stats().panics, 0);
}
