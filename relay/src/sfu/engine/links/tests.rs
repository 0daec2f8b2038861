use std::time::Instant;

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
    assert!(links.watch(&mut router, &|_| false, "m1", "origin-1", "127.0.0.1:4433"));
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
