use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::*;
use crate::link::edge::{Arrival, Edge};

fn payload(i: u64) -> Arc<[u8]> {
    Arc::from(i.to_be_bytes().as_slice())
}

fn subscribed(machine: &str) -> Origin {
    let mut o = Origin::new();
    o.handle_control(Control::Subscribe { machine: machine.into() });
    o
}

fn datagrams(o: &mut Origin) -> Vec<(u64, u8, u64, bool)> {
    std::iter::from_fn(|| o.poll_datagram())
        .map(|d| {
            let m = Media::decode(&d).unwrap();
            (m.track, m.layer, m.seq, m.resend)
        })
        .collect()
}

#[test]
fn media_crosses_only_for_subscribed_machines_and_wanted_layers() {
    let mut o = subscribed("m1");
    assert_eq!(o.poll_event(), Some(OriginEvent::Subscribed { machine: "m1".into() }));
    o.track_added("m1", 1, 2, 3);
    o.track_added("m2", 2, 2, 1);
    assert_eq!(o.poll_control(), Some(Control::Track { machine: "m1".into(), track: 1, codec: 2, layers: 3 }));
    assert_eq!(o.poll_control(), None, "m2 is not subscribed: not announced");
    for layer in 0..3 {
        o.handle_media(1, layer, 10, 0, false, false, &payload(1));
    }
    o.handle_media(2, 0, 10, 0, false, false, &payload(1));
    assert_eq!(datagrams(&mut o), [(1, 0, 10, false), (1, 1, 10, false), (1, 2, 10, false)]);
    // The edge's viewers use layer 1 only.
    o.handle_control(Control::Layers { track: 1, mask: 0b010 });
    for layer in 0..3 {
        o.handle_media(1, layer, 11, 0, false, false, &payload(2));
    }
    assert_eq!(datagrams(&mut o), [(1, 1, 11, false)]);
    assert_eq!(o.stats().filtered, 2);
    // Unsubscribed: nothing more, and the track is forgotten.
    o.handle_control(Control::Unsubscribe { machine: "m1".into() });
    assert_eq!(o.poll_event(), Some(OriginEvent::Unsubscribed { machine: "m1".into() }));
    o.handle_media(1, 1, 12, 0, false, false, &payload(3));
    assert_eq!(datagrams(&mut o), []);
}

#[test]
fn nacks_are_answered_from_the_buffer_with_the_same_sequence_number() {
    let mut o = subscribed("m1");
    o.track_added("m1", 1, 2, 1);
    for s in 0..2000 {
        o.handle_media(1, 0, s, s as u32 * 90, s % 10 == 9, s % 100 == 0, &payload(s));
    }
    datagrams(&mut o);
    // 1990 is in the buffer; 5 was overwritten long ago; 5000 was never sent.
    o.handle_control(Control::Nack { track: 1, layer: 0, seqs: vec![1990, 5, 5000] });
    let resent: Vec<Vec<u8>> = std::iter::from_fn(|| o.poll_datagram()).collect();
    assert_eq!(resent.len(), 1);
    let m = Media::decode(&resent[0]).unwrap();
    assert_eq!(
        (m.seq, m.timestamp, m.marker, m.resend, m.payload),
        (1990, 1990 * 90, false, true, &1990u64.to_be_bytes()[..])
    );
    assert_eq!((o.stats().resent, o.stats().nack_misses), (1, 2));
    // A NACK for a track or layer never sent misses too.
    o.handle_control(Control::Nack { track: 1, layer: 3, seqs: vec![1] });
    o.handle_control(Control::Nack { track: 9, layer: 0, seqs: vec![1] });
    assert_eq!(o.stats().nack_misses, 4);
}

#[test]
fn keyframe_requests_and_stamped_seat_inputs_reach_the_router() {
    let mut o = subscribed("m1");
    o.poll_event();
    o.track_added("m1", 4, 2, 1);
    o.handle_control(Control::KeyframeRequest { track: 4 });
    o.handle_control(Control::KeyframeRequest { track: 5 });
    let input = Control::SeatInput {
        machine: "m1".into(),
        binary: false,
        data: b"left".to_vec(),
        arrived_unix_ms: 1_800_000_000_000,
        rtt_ms: 35,
    };
    o.handle_control(input);
    o.handle_control(Control::SeatInput {
        machine: "m2".into(),
        binary: false,
        data: b"x".to_vec(),
        arrived_unix_ms: 0,
        rtt_ms: 0,
    });
    let events: Vec<OriginEvent> = std::iter::from_fn(|| o.poll_event()).collect();
    assert_eq!(
        events,
        [
            OriginEvent::KeyframeRequest { track: 4, layers: u16::MAX },
            OriginEvent::SeatInput {
                machine: "m1".into(),
                binary: false,
                data: b"left".to_vec(),
                arrived_unix_ms: 1_800_000_000_000,
                rtt_ms: 35
            },
        ],
        "only for tracks and machines of this link"
    );
    o.machine_message("m1", true, &[1, 2]);
    o.machine_message("m2", true, &[3]);
    o.poll_control();
    assert_eq!(
        o.poll_control(),
        Some(Control::MachineMessage { machine: "m1".into(), binary: true, data: vec![1, 2] })
    );
    assert_eq!(o.poll_control(), None);
    o.unavailable("m1", "unpublished");
    assert_eq!(o.poll_control(), Some(Control::Unavailable { machine: "m1".into(), reason: "unpublished".into() }));
    assert!(!o.is_subscribed("m1"));
}

/// A link in memory with a fixed one-way delay; datagrams are dropped where `lose` says,
/// control frames never (they travel on a reliable stream).
struct Link {
    delay: Duration,
    to_edge: VecDeque<(Instant, Vec<u8>)>,
    to_origin: VecDeque<(Instant, Control)>,
    to_edge_control: VecDeque<(Instant, Control)>,
}

/// A deterministic 1-in-`n` loss pattern (an LCG, so the test is the same on every run).
struct Loss {
    state: u64,
    one_in: u64,
    dropped: u64,
}

impl Loss {
    fn lose(&mut self) -> bool {
        self.state = self.state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let lost = (self.state >> 33).is_multiple_of(self.one_in);
        // Not `self.dropped += u64::from(lost)`: rustc 1.95 miscompiles that pattern (a bool
        // added to a field and returned) in optimised builds, rust-lang/rust#158206.
        if lost {
            self.dropped += 1;
        }
        lost
    }
}

#[test]
fn over_a_link_with_40_ms_delay_and_1_percent_loss_the_edge_gets_every_packet_once() {
    let t0 = Instant::now();
    let mut origin = Origin::new();
    let mut edge = Edge::new();
    let mut link = Link {
        delay: Duration::from_millis(40),
        to_edge: VecDeque::new(),
        to_origin: VecDeque::new(),
        to_edge_control: VecDeque::new(),
    };
    let mut loss = Loss { state: 7, one_in: 100, dropped: 0 };
    // Twenty viewers at the edge: one subscription.
    for _ in 0..20 {
        edge.viewer_joined("m1", "v");
    }
    let (packets, mut received, mut repaired) = (10_000u64, HashSet::new(), 0u64);
    // One packet per millisecond for ten seconds, then a second for the last repairs.
    for ms in 0..packets + 1000 {
        let now = t0 + Duration::from_millis(ms);
        // The edge's control reaches the origin a delay later, and the origin's the edge.
        while let Some(c) = edge.poll_control() {
            link.to_origin.push_back((now + link.delay, c));
        }
        while link.to_origin.front().is_some_and(|(at, _)| *at <= now) {
            let (_, c) = link.to_origin.pop_front().unwrap();
            origin.handle_control(c);
        }
        while let Some(event) = origin.poll_event() {
            if let OriginEvent::Subscribed { machine } = event {
                origin.track_added(&machine, 1, 2, 1);
            }
        }
        while let Some(c) = origin.poll_control() {
            link.to_edge_control.push_back((now + link.delay, c));
        }
        while link.to_edge_control.front().is_some_and(|(at, _)| *at <= now) {
            let (_, c) = link.to_edge_control.pop_front().unwrap();
            edge.handle_control(&c);
        }
        if ms < packets {
            origin.handle_media(1, 0, ms, ms as u32 * 90, false, ms % 1000 == 0, &payload(ms));
        }
        while let Some(d) = origin.poll_datagram() {
            if !loss.lose() {
                link.to_edge.push_back((now + link.delay, d));
            }
        }
        while link.to_edge.front().is_some_and(|(at, _)| *at <= now) {
            let (_, d) = link.to_edge.pop_front().unwrap();
            let m = Media::decode(&d).unwrap();
            match edge.handle_media(now, &m) {
                Arrival::New => assert!(received.insert(m.seq), "{} twice", m.seq),
                Arrival::Repaired => {
                    assert!(received.insert(m.seq), "{} twice", m.seq);
                    repaired += 1;
                }
                Arrival::Duplicate => {}
                Arrival::Unwanted => panic!("every layer is wanted"),
            }
        }
        while let Some(at) = edge.poll_timeout().filter(|at| *at <= now) {
            edge.handle_timeout(at);
        }
    }
    // The subscription took one round trip: packets before it never crossed, by design.
    let first = *received.iter().min().unwrap();
    assert!(first <= 2 * 40 + 2, "the first packet after one round trip: {first}");
    let expected = packets - first;
    let share = received.len() as f64 / expected as f64;
    println!(
        "link: {expected} packets, {} dropped on the link, {repaired} repaired, {} received ({:.3}%)",
        loss.dropped,
        received.len(),
        share * 100.0
    );
    assert!(loss.dropped > expected / 200, "the link did lose packets: {}", loss.dropped);
    assert!(share >= 0.995, "at least 99.5% received: {share}");
    // Each packet crossed once, plus the resends the losses asked for.
    let s = origin.stats();
    assert_eq!(s.datagrams - s.resent, expected, "one copy per packet");
    assert!(s.resent >= repaired && repaired > 0);
}

#[test]
fn layer_rates_of_simulcast_tracks_are_reported_when_they_change() {
    let mut o = subscribed("m1");
    o.track_added("m1", 1, 2, 3);
    o.track_added("m1", 2, 1, 1);
    assert_eq!(o.simulcast_tracks(), [1], "the audio track has one layer");
    while o.poll_control().is_some() {}
    o.report_rates(1, &[150_000, 0, 0]);
    o.report_rates(1, &[150_000, 0, 0]);
    o.report_rates(1, &[150_000, 600_000, 0]);
    o.report_rates(9, &[1]);
    let sent: Vec<Control> = std::iter::from_fn(|| o.poll_control()).collect();
    assert_eq!(
        sent,
        [
            Control::LayerRates { track: 1, rates: vec![150_000, 0, 0] },
            Control::LayerRates { track: 1, rates: vec![150_000, 600_000, 0] },
        ],
        "once per change, and only for announced tracks"
    );
}

#[test]
fn the_origin_knows_the_edges_viewers_by_name_and_tells_the_edge_of_its_seat() {
    let mut o = subscribed("m1");
    let viewer =
        |machine: &str, label: &str, present| Control::Viewer { machine: machine.into(), label: label.into(), present };
    o.handle_control(viewer("m1", "alice", true));
    o.handle_control(viewer("m2", "bob", true));
    assert!(o.has_viewer("m1", "alice"));
    assert!(!o.has_viewer("m2", "bob"), "m2 is not subscribed");
    assert!(!o.has_viewer("m1", "bob"));
    o.handle_control(viewer("m1", "alice", false));
    assert!(!o.has_viewer("m1", "alice"));
    o.handle_control(viewer("m1", "alice", true));
    o.hand_seat("m1", Some("alice"));
    o.hand_seat("m2", Some("bob"));
    o.hand_seat("m1", None);
    let seat = |holder: Option<&str>| Control::Seat { machine: "m1".into(), holder: holder.map(str::to_owned) };
    let sent: Vec<Control> = std::iter::from_fn(|| o.poll_control()).collect();
    assert_eq!(sent, [seat(Some("alice")), seat(None)], "only for a machine the edge watches");
    // Unsubscribed: its viewers are forgotten.
    o.handle_control(Control::Unsubscribe { machine: "m1".into() });
    assert!(!o.has_viewer("m1", "alice"));
    // A peer relay cannot make the origin keep names without bound.
    let mut o = subscribed("m1");
    for i in 0..MAX_VIEWERS + 10 {
        o.handle_control(viewer("m1", &format!("v{i}"), true));
    }
    assert!(o.has_viewer("m1", &format!("v{}", MAX_VIEWERS - 1)) && !o.has_viewer("m1", &format!("v{MAX_VIEWERS}")));
}
