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
