use std::time::{Duration, Instant};

use super::*;

fn datagram(track: u64, seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let payload = [0x10, 0x00, seq as u8];
    Media { track, layer: 0, seq, timestamp: 0, marker: true, keyframe: seq == 1, resend: false, payload: &payload }
        .encode(&mut out);
    out
}

/// This relay (edge-1) watches `m1` through a link to origin-1, which is up.
fn watching() -> (LinkSet, Router, Instant) {
    let (mut links, mut router, now) = (LinkSet::default(), Router::new(), Instant::now());
    links.attach("edge-1");
    assert!(links.watch(&mut router, &|_| false, "m1", "v", "origin-1", "127.0.0.1:4433"));
    links.link_up(&mut router, &|_| false, now, "origin-1");
    (links, router, now)
}

#[test]
fn packets_that_overtake_their_tracks_announcement_are_routed_when_it_comes() {
    let (mut links, mut router, now) = watching();
    assert!(links.datagram(now, "origin-1", &datagram(7, 1)).is_none(), "no track 7 yet");
    assert!(links.datagram(now, "origin-1", &datagram(7, 2)).is_none());
    assert_eq!(links.stats.early, 2);
    let announce = Control::Track { machine: "m1".into(), track: 7, codec: Codec::Vp8.wire_id(), layers: 1 };
    let actions = links.control(&mut router, now, "origin-1", announce);
    let replayed: Vec<u64> = actions
        .iter()
        .filter_map(|a| match a {
            LinkAction::Media { pkt, .. } => Some(pkt.seq),
            _ => None,
        })
        .collect();
    assert_eq!(replayed, [1, 2], "in the order they came");
    // From now on packets go straight through.
    let (_, codec, pkt) = links.datagram(now, "origin-1", &datagram(7, 3)).expect("an announced track");
    assert_eq!((codec, pkt.seq, links.stats.media_in), (Codec::Vp8, 3, 3));
}

#[test]
fn a_peer_relay_speaks_only_for_the_machines_watched_through_it() {
    let (mut links, mut router, now) = watching();
    let message =
        |machine: &str| Control::MachineMessage { machine: machine.into(), binary: false, data: b"hi".to_vec() };
    let to_viewers = |actions: &[LinkAction]| actions.iter().any(|a| matches!(a, LinkAction::ToViewers { .. }));
    assert!(to_viewers(&links.control(&mut router, now, "origin-1", message("m1"))));
    assert!(!to_viewers(&links.control(&mut router, now, "origin-1", message("m2"))), "m2 is not watched through it");
    // Nor does a relay this one does not watch anything through.
    links.link_up(&mut router, &|_| false, now, "other-1");
    assert!(!to_viewers(&links.control(&mut router, now, "other-1", message("m1"))));
}

#[test]
fn the_seat_holder_here_takes_the_seat_at_the_origin_before_its_first_input() {
    let (mut links, mut router, now) = watching();
    let stand_in = *links.stand_ins.keys().next().expect("a stand-in for m1");
    router.subscribe(now, "m1", PeerId(900), crate::sfu::Role::Player).unwrap();
    while links.poll_output().is_some() {}
    let stamp = SeatStamp { relay: Some("edge-1".into()), arrived_unix_ms: 1, rtt_ms: Some(20) };
    let sent = |links: &mut LinkSet| -> Vec<&'static str> {
        std::iter::from_fn(|| links.poll_output())
            .filter_map(|o| match o {
                LinkOutput::Control { message: Control::SeatTaken { .. }, .. } => Some("taken"),
                LinkOutput::Control { message: Control::SeatInput { .. }, .. } => Some("input"),
                _ => None,
            })
            .collect()
    };
    links.seat_input(&router, stand_in, false, b"coin", &stamp);
    assert_eq!(sent(&mut links), ["taken", "input"]);
    links.seat_input(&router, stand_in, false, b"left", &stamp);
    assert_eq!(sent(&mut links), ["input"], "once per holder");
    // A new holder (the player joined again) takes it again; so does any after a re-link.
    router.subscribe(now, "m1", PeerId(901), crate::sfu::Role::Player).unwrap();
    links.seat_input(&router, stand_in, false, b"coin", &stamp);
    assert_eq!(sent(&mut links), ["taken", "input"]);
    links.link_down(&mut router, &|_| false, now, "origin-1");
    links.link_up(&mut router, &|_| false, now, "origin-1");
    let stand_in = *links.stand_ins.keys().next().expect("a new stand-in");
    router.subscribe(now, "m1", PeerId(902), crate::sfu::Role::Player).unwrap();
    while links.poll_output().is_some() {}
    links.seat_input(&router, stand_in, false, b"coin", &stamp);
    assert_eq!(sent(&mut links), ["taken", "input"]);
}

#[test]
fn at_the_origin_the_relay_that_took_the_seat_last_holds_it() {
    let (mut links, mut router, now) = (LinkSet::default(), Router::new(), Instant::now());
    links.attach("origin-1");
    router.publish("m1", PeerId(1)).unwrap();
    router.subscribe(now, "m1", PeerId(2), crate::sfu::Role::Player).unwrap();
    for edge in ["edge-1", "edge-2"] {
        links.link_up(&mut router, &|_| false, now, edge);
        links.control(&mut router, now, edge, Control::Subscribe { machine: "m1".into() });
    }
    assert!(!links.holds_seat("m1", Some("edge-1")), "nobody at a linked relay took it yet");
    let take = Control::SeatTaken { machine: "m1".into() };
    links.control(&mut router, now, "edge-1", take.clone());
    assert!(links.holds_seat("m1", Some("edge-1")) && !links.holds_seat("m1", Some("edge-2")));
    assert_eq!(router.seat("m1"), None, "the player here lost it to the one at edge-1");
    links.control(&mut router, now, "edge-2", take.clone());
    assert!(links.holds_seat("m1", Some("edge-2")) && !links.holds_seat("m1", Some("edge-1")));
    assert!(!links.holds_seat("m1", None), "an input without a relay is not a linked relay's");
    links.seat_handed_here("m1");
    assert!(!links.holds_seat("m1", Some("edge-2")), "handed here: no linked relay holds it");
    // A relay not subscribed to the machine cannot take its seat.
    links.link_up(&mut router, &|_| false, now, "edge-3");
    links.control(&mut router, now, "edge-3", take);
    assert!(!links.holds_seat("m1", Some("edge-3")));
}

#[test]
fn the_seat_handed_at_the_origin_goes_to_a_viewer_at_an_edge_by_name_and_whoever_loses_it_is_told() {
    let (mut links, mut router, now) = (LinkSet::default(), Router::new(), Instant::now());
    links.attach("origin-1");
    router.publish("m1", PeerId(1)).unwrap();
    router.subscribe(now, "m1", PeerId(2), crate::sfu::Role::Player).unwrap();
    for (edge, name) in [("edge-1", "alice"), ("edge-2", "bob")] {
        links.link_up(&mut router, &|_| false, now, edge);
        links.control(&mut router, now, edge, Control::Subscribe { machine: "m1".into() });
        let joined = Control::Viewer { machine: "m1".into(), label: name.into(), present: true };
        links.control(&mut router, now, edge, joined);
    }
    while links.poll_output().is_some() {}
    let told = |links: &mut LinkSet| -> Vec<(String, Option<String>)> {
        std::iter::from_fn(|| links.poll_output())
            .filter_map(|o| match o {
                LinkOutput::Control { relay, message: Control::Seat { holder, .. } } => {
                    Some((relay.to_string(), holder))
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(links.viewer_elsewhere("m1", "bob").as_deref(), Some("edge-2"));
    assert_eq!(links.viewer_elsewhere("m1", "carol"), None);
    assert_eq!(links.hand_seat_to_link("m1", "edge-2", "bob"), None);
    assert_eq!(told(&mut links), [("edge-2".into(), Some("bob".into()))]);
    assert!(links.holds_seat("m1", Some("edge-2")));
    assert_eq!(links.remote_holder("m1"), Some("bob"));
    // To alice at edge-1: edge-2 hears it lost the seat.
    assert_eq!(links.hand_seat_to_link("m1", "edge-1", "alice").as_deref(), Some("bob"));
    assert_eq!(told(&mut links), [("edge-2".into(), None), ("edge-1".into(), Some("alice".into()))]);
    // edge-2's player takes it back (joined again): edge-1 hears it lost it.
    links.control(&mut router, now, "edge-2", Control::SeatTaken { machine: "m1".into() });
    assert_eq!(told(&mut links), [("edge-1".into(), None)]);
    assert!(links.holds_seat("m1", Some("edge-2")));
    // Handed here: edge-2 hears it.
    links.seat_handed_here("m1");
    assert_eq!(told(&mut links), [("edge-2".into(), None)]);
    links.seat_handed_here("m1");
    assert_eq!(told(&mut links), [], "nobody else to tell");
    // Bob stopped watching at edge-2: he is not found there any more.
    links.control(
        &mut router,
        now,
        "edge-2",
        Control::Viewer { machine: "m1".into(), label: "bob".into(), present: false },
    );
    assert_eq!(links.viewer_elsewhere("m1", "bob"), None);
}

#[test]
fn at_an_edge_the_home_relays_word_on_the_seat_is_carried_out_and_not_claimed_back() {
    let (mut links, mut router, now) = watching();
    let stand_in = *links.stand_ins.keys().next().expect("a stand-in for m1");
    router.subscribe(now, "m1", PeerId(900), crate::sfu::Role::Spectator).unwrap();
    let seat = |machine: &str, holder: Option<&str>| Control::Seat {
        machine: machine.into(),
        holder: holder.map(str::to_owned),
    };
    let handed = |actions: Vec<LinkAction>| -> Vec<(String, Option<String>)> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                LinkAction::HandSeat { machine, holder } => Some((machine, holder)),
                _ => None,
            })
            .collect()
    };
    let actions = links.control(&mut router, now, "origin-1", seat("m1", Some("v")));
    assert_eq!(handed(actions), [("m1".to_owned(), Some("v".to_owned()))]);
    assert_eq!(handed(links.control(&mut router, now, "origin-1", seat("m2", None))), [], "m2 is not watched here");
    // The engine hands it to its viewer and tells the links: no SeatTaken goes back up.
    router.hand_seat("m1", Some(PeerId(900))).unwrap();
    links.seat_from_home("m1", Some(PeerId(900)));
    while links.poll_output().is_some() {}
    let stamp = SeatStamp { relay: Some("edge-1".into()), arrived_unix_ms: 1, rtt_ms: Some(20) };
    links.seat_input(&router, stand_in, false, b"coin", &stamp);
    let sent: Vec<Control> = std::iter::from_fn(|| links.poll_output())
        .filter_map(|o| match o {
            LinkOutput::Control { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert!(matches!(sent.as_slice(), [Control::SeatInput { .. }]), "{sent:?}");
}

#[test]
fn a_new_edge_hears_of_the_started_tracks_in_the_publishers_order_whatever_packet_comes_first() {
    let (mut links, mut router, now) = (LinkSet::default(), Router::new(), Instant::now());
    links.attach("origin-1");
    router.publish("m1", PeerId(1)).unwrap();
    router.add_track(PeerId(1), Codec::H264, 1).unwrap();
    router.add_track(PeerId(1), Codec::Vp8, 1).unwrap();
    router.add_track(PeerId(1), Codec::Opus, 1).unwrap();
    // The VP8 backup's packet comes first; the audio track has none yet.
    for track in [1, 0] {
        let payload: Arc<[u8]> = vec![0u8; 10].into();
        let pkt = MediaIn { track, layer: 0, seq: 1, timestamp: 0, marker: true, keyframe: true, payload };
        router.handle_media(now, PeerId(1), pkt);
    }
    links.link_up(&mut router, &|_| false, now, "edge-1");
    links.control(&mut router, now, "edge-1", Control::Subscribe { machine: "m1".into() });
    let announced: Vec<(u64, u8)> = std::iter::from_fn(|| links.poll_output())
        .filter_map(|o| match o {
            LinkOutput::Control { message: Control::Track { track, codec, .. }, .. } => Some((track, codec)),
            _ => None,
        })
        .collect();
    let id = |track| link_track(PeerId(1), track);
    assert_eq!(announced, [(id(0), Codec::H264.wire_id()), (id(1), Codec::Vp8.wire_id())]);
}

/// Two relays in one process, their links joined by hand: the machine publishes a three-layer
/// simulcast track at origin-1; one viewer watches at edge-1.
struct Pair {
    now: Instant,
    origin: (LinkSet, Router),
    edge: (LinkSet, Router),
    /// Layer masks the edge asked for, and the layers of the datagrams that crossed.
    masks: Vec<u16>,
    crossed: Vec<u8>,
    seq: [u64; 3],
    /// Layers the publisher was asked for a key frame of (until it sends one), and every ask.
    keyframes_asked: [bool; 3],
    asks: Vec<u8>,
}

const PUBLISHER: PeerId = PeerId(1);
const VIEWER: PeerId = PeerId(900);
/// Payload bytes per packet of each layer, a packet every 10 ms: 80, 320 and 960 kbit/s.
const SIZES: [usize; 3] = [100, 400, 1200];

impl Pair {
    fn new() -> Self {
        let now = Instant::now();
        let (mut links_a, mut router_a) = (LinkSet::default(), Router::new());
        links_a.attach("origin-1");
        router_a.publish("m1", PUBLISHER).unwrap();
        router_a.add_track(PUBLISHER, Codec::Vp8, 3).unwrap();
        let (mut links_b, mut router_b) = (LinkSet::default(), Router::new());
        links_b.attach("edge-1");
        links_b.watch(&mut router_b, &|_| false, "m1", "v", "origin-1", "127.0.0.1:4433");
        router_b.subscribe(now, "m1", VIEWER, crate::sfu::Role::Spectator).unwrap();
        links_a.link_up(&mut router_a, &|_| false, now, "edge-1");
        links_b.link_up(&mut router_b, &|_| false, now, "origin-1");
        let mut pair = Self {
            now,
            origin: (links_a, router_a),
            edge: (links_b, router_b),
            masks: Vec::new(),
            crossed: Vec::new(),
            seq: [0; 3],
            keyframes_asked: [true; 3],
            asks: Vec::new(),
        };
        pair.shuttle();
        pair
    }

    /// Carries what each side has for the other until both are quiet.
    fn shuttle(&mut self) {
        let now = self.now;
        loop {
            let mut moved = false;
            while let Some(r) = self.edge.1.poll_keyframe_request() {
                self.edge.0.keyframe_upstream(&self.edge.1, now, r.publisher, r.track);
            }
            while let Some(r) = self.origin.1.poll_keyframe_request() {
                self.keyframes_asked[usize::from(r.layer)] = true;
                self.asks.push(r.layer);
            }
            while let Some(out) = self.edge.0.poll_output() {
                moved = true;
                if let LinkOutput::Control { message, .. } = out {
                    if let Control::Layers { mask, .. } = message {
                        self.masks.push(mask);
                    }
                    for action in self.origin.0.control(&mut self.origin.1, now, "edge-1", message) {
                        if let LinkAction::KeyframesFor { .. } = action {
                            self.origin.1.request_keyframe(now, PUBLISHER, 0, u16::MAX);
                        }
                    }
                }
            }
            while let Some(out) = self.origin.0.poll_output() {
                moved = true;
                match out {
                    LinkOutput::Control { message, .. } => {
                        for action in self.edge.0.control(&mut self.edge.1, now, "origin-1", message) {
                            if let LinkAction::Media { stand_in, pkt, .. } = action {
                                self.edge.1.handle_media(now, stand_in, pkt);
                            }
                        }
                    }
                    LinkOutput::Datagram { data, .. } => {
                        self.crossed.push(Media::decode(&data).unwrap().layer);
                        if let Some((stand_in, _, pkt)) = self.edge.0.datagram(now, "origin-1", &data) {
                            self.edge.1.handle_media(now, stand_in, pkt);
                        }
                        self.edge.0.flush(&mut self.edge.1, now);
                    }
                    _ => {}
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs `ms` milliseconds: a packet of each layer every 10 ms (a key frame where one was
    /// asked for), every timer on time, the links carried. Returns the viewer's packets' layers.
    fn run(&mut self, ms: u64) -> Vec<u8> {
        let mut seen = Vec::new();
        for _ in 0..ms / 10 {
            self.now += Duration::from_millis(10);
            let now = self.now;
            for layer in 0..3u8 {
                let l = usize::from(layer);
                self.seq[l] += 1;
                let keyframe = std::mem::take(&mut self.keyframes_asked[l]);
                let payload: Arc<[u8]> = vec![layer; SIZES[l]].into();
                let (seq, timestamp) = (self.seq[l], self.seq[l] as u32 * 900);
                let pkt = MediaIn { track: 0, layer, seq, timestamp, marker: true, keyframe, payload };
                self.origin.1.handle_media(now, PUBLISHER, pkt.clone());
                self.origin.0.tap(&self.origin.1, now, "m1", PUBLISHER, Codec::Vp8, &pkt);
            }
            for (links, router) in [&mut self.origin, &mut self.edge] {
                if router.poll_timeout().is_some_and(|t| t <= now) {
                    router.handle_timeout(now);
                }
                if links.poll_timeout().is_some_and(|t| t <= now) {
                    links.handle_timeout(router, now);
                }
            }
            self.shuttle();
            while let Some(f) = self.edge.1.poll_forward() {
                assert_eq!(f.to, VIEWER);
                seen.push(f.payload[0]);
            }
            while self.origin.1.poll_forward().is_some() {}
        }
        seen
    }
}

#[test]
fn an_edge_asks_only_for_the_simulcast_layers_its_viewers_use_and_moves_between_them_without_loss() {
    let mut pair = Pair::new();
    pair.run(1000);
    assert_eq!(pair.edge.1.current_layer(VIEWER, 0), Some(2), "without an estimate: the highest layer");
    // The viewer's estimate fits the middle layer only: it moves down, and only that layer
    // crosses the link from then on.
    pair.edge.1.handle_bandwidth(pair.now, VIEWER, 500_000);
    pair.run(1000);
    assert_eq!(pair.edge.1.current_layer(VIEWER, 0), Some(1));
    assert_eq!(pair.masks.last(), Some(&0b010), "asked: {:?}", pair.masks);
    pair.crossed.clear();
    let seen = pair.run(1000);
    assert!(!seen.is_empty() && seen.iter().all(|l| *l == 1), "the viewer gets layer 1: {seen:?}");
    assert!(pair.crossed.len() >= 95 && pair.crossed.iter().all(|l| *l == 1), "crossed: {:?}", pair.crossed);
    assert!(pair.origin.0.stats.layers_held_back >= 190, "{:?}", pair.origin.0.stats);
    // Room for the top layer, which the edge does not receive: the origin's rates say it is
    // live and fits, so the viewer moves up, and only it crosses once it has switched.
    pair.asks.clear();
    pair.edge.1.handle_bandwidth(pair.now, VIEWER, 3_000_000);
    pair.run(1000);
    // The publisher is asked for key frames of the layers in use only, not of layer 0.
    assert!(pair.asks.contains(&2) && !pair.asks.contains(&0), "asked: {:?}", pair.asks);
    assert_eq!(pair.edge.1.current_layer(VIEWER, 0), Some(2), "asked: {:?}", pair.masks);
    assert!(pair.masks.ends_with(&[0b110, 0b100]), "first both, then the new one alone: {:?}", pair.masks);
    pair.crossed.clear();
    let seen = pair.run(1000);
    assert!(!seen.is_empty() && seen.iter().all(|l| *l == 2), "the viewer gets layer 2: {seen:?}");
    assert!(pair.crossed.iter().all(|l| *l == 2), "crossed: {:?}", pair.crossed);
    // Layers held back and taken up again are no loss on the link.
    let edge = pair.edge.0.links["origin-1"].edge.stats();
    assert_eq!((edge.lost, edge.nacked), (0, 0), "{edge:?}");
    // The viewer leaves: nothing crosses for the track once the mask says so.
    pair.edge.1.remove(VIEWER).unwrap();
    pair.run(500);
    assert_eq!(pair.masks.last(), Some(&0));
    pair.crossed.clear();
    pair.run(500);
    assert_eq!(pair.crossed, Vec::<u8>::new());
}
