use std::time::{Duration, Instant};

use super::*;

/// What the edge sends, but for viewers' names (see the test of those).
fn drain(edge: &mut Edge) -> Vec<Control> {
    std::iter::from_fn(|| edge.poll_control()).filter(|c| !matches!(c, Control::Viewer { .. })).collect()
}

/// Runs the edge's timers up to `until`, as a shell would.
fn run_until(edge: &mut Edge, until: Instant) {
    while let Some(at) = edge.poll_timeout().filter(|at| *at <= until) {
        edge.handle_timeout(at);
    }
}

fn packet(track: u64, layer: u8, seq: u64) -> Media<'static> {
    Media { track, layer, seq, timestamp: 0, marker: false, keyframe: false, resend: false, payload: b"p" }
}

fn with_track(track: u64) -> Edge {
    let mut edge = Edge::new();
    edge.handle_control(&Control::Track { machine: "m1".into(), track, codec: 2, layers: 3 });
    edge
}

#[test]
fn twenty_viewers_make_one_subscription_and_the_last_leaving_ends_it_after_the_grace() {
    let t0 = Instant::now();
    let mut edge = Edge::new();
    for _ in 0..20 {
        edge.viewer_joined("m1", "v");
    }
    assert_eq!(drain(&mut edge), [Control::Subscribe { machine: "m1".into() }]);
    for i in 0..19 {
        edge.viewer_left(t0 + Duration::from_secs(i), "m1", "v");
    }
    assert_eq!(edge.poll_timeout(), None, "viewers remain: nothing scheduled");
    let left = t0 + Duration::from_secs(30);
    edge.viewer_left(left, "m1", "v");
    assert_eq!(edge.poll_timeout(), Some(left + UNSUBSCRIBE_GRACE));
    run_until(&mut edge, left + UNSUBSCRIBE_GRACE - Duration::from_millis(1));
    assert_eq!(drain(&mut edge), [], "not within the grace period");
    run_until(&mut edge, left + UNSUBSCRIBE_GRACE);
    assert_eq!(drain(&mut edge), [Control::Unsubscribe { machine: "m1".into() }]);
    assert!(!edge.is_subscribed("m1"));
    // A viewer after that subscribes again.
    edge.viewer_joined("m1", "v");
    assert_eq!(drain(&mut edge), [Control::Subscribe { machine: "m1".into() }]);
    assert_eq!((edge.stats().subscribes, edge.stats().unsubscribes), (2, 1));
}

#[test]
fn a_viewer_back_within_the_grace_keeps_the_subscription() {
    let t0 = Instant::now();
    let mut edge = Edge::new();
    edge.viewer_joined("m1", "v");
    edge.viewer_left(t0, "m1", "v");
    edge.viewer_joined("m1", "v");
    drain(&mut edge);
    run_until(&mut edge, t0 + UNSUBSCRIBE_GRACE * 2);
    assert_eq!(drain(&mut edge), [], "no unsubscribe, no second subscribe");
    assert!(edge.is_subscribed("m1"));
    // Leaving a machine never watched here changes nothing.
    edge.viewer_left(t0, "m2", "v");
    assert_eq!(edge.poll_timeout(), None);
}

#[test]
fn viewers_keyframe_requests_merge_into_one_upstream_per_interval() {
    let t0 = Instant::now();
    let mut edge = with_track(7);
    // Twenty viewers ask within 100 ms: one goes at once, one when the window ends.
    for i in 0..20 {
        edge.request_keyframe(t0 + Duration::from_millis(i * 5), 7);
    }
    assert_eq!(drain(&mut edge), [Control::KeyframeRequest { track: 7 }]);
    assert_eq!(edge.poll_timeout(), Some(t0 + KEYFRAME_INTERVAL));
    run_until(&mut edge, t0 + KEYFRAME_INTERVAL);
    assert_eq!(drain(&mut edge), [Control::KeyframeRequest { track: 7 }]);
    // Quiet afterwards; a request after the window goes at once.
    run_until(&mut edge, t0 + KEYFRAME_INTERVAL * 4);
    assert_eq!(drain(&mut edge), []);
    edge.request_keyframe(t0 + KEYFRAME_INTERVAL * 4, 7);
    assert_eq!(drain(&mut edge), [Control::KeyframeRequest { track: 7 }]);
    assert_eq!((edge.stats().keyframe_requests, edge.stats().keyframe_requests_sent), (21, 3));
    // A request for a track the origin never announced goes nowhere.
    edge.request_keyframe(t0, 99);
    assert_eq!(drain(&mut edge), []);
}

#[test]
fn layers_are_sent_when_they_change() {
    let mut edge = with_track(1);
    edge.set_layers(1, 0b001);
    edge.set_layers(1, 0b001);
    edge.set_layers(1, 0b011);
    assert_eq!(drain(&mut edge), [Control::Layers { track: 1, mask: 1 }, Control::Layers { track: 1, mask: 3 }]);
}

#[test]
fn a_layer_not_asked_for_is_dropped_and_its_gap_is_no_loss_when_asked_again() {
    let t0 = Instant::now();
    let mut edge = with_track(1);
    for s in 10..13 {
        assert_eq!(edge.handle_media(t0, &packet(1, 2, s)), Arrival::New);
    }
    // The viewers move down to layer 0: layer 2's packets still in flight are dropped.
    edge.set_layers(1, 0b001);
    assert_eq!(edge.handle_media(t0, &packet(1, 2, 13)), Arrival::Unwanted);
    assert_eq!(edge.handle_media(t0, &packet(1, 0, 5)), Arrival::New);
    // Back up: the origin held 14..500 back, which is not loss.
    edge.set_layers(1, 0b101);
    assert_eq!(edge.handle_media(t0, &packet(1, 2, 500)), Arrival::New);
    assert_eq!(edge.handle_media(t0, &packet(1, 2, 502)), Arrival::New);
    run_until(&mut edge, t0 + Duration::from_secs(2));
    let nacks: Vec<Control> = drain(&mut edge).into_iter().filter(|c| matches!(c, Control::Nack { .. })).collect();
    assert_eq!(nacks, vec![Control::Nack { track: 1, layer: 2, seqs: vec![501] }; NACK_TRIES as usize]);
    assert_eq!((edge.stats().unwanted, edge.stats().lost), (1, 1));
}

#[test]
fn a_lost_packet_is_nacked_once_missing_and_its_resend_repairs_it() {
    let t0 = Instant::now();
    let mut edge = with_track(1);
    for s in [10, 11, 13, 14] {
        assert_eq!(edge.handle_media(t0, &packet(1, 0, s)), Arrival::New);
    }
    assert_eq!(edge.poll_timeout(), Some(t0 + NACK_DELAY));
    run_until(&mut edge, t0 + NACK_DELAY);
    assert_eq!(drain(&mut edge), [Control::Nack { track: 1, layer: 0, seqs: vec![12] }]);
    let resent = Media { resend: true, ..packet(1, 0, 12) };
    assert_eq!(edge.handle_media(t0 + Duration::from_millis(60), &resent), Arrival::Repaired);
    assert_eq!(edge.handle_media(t0 + Duration::from_millis(61), &resent), Arrival::Duplicate);
    run_until(&mut edge, t0 + Duration::from_secs(2));
    assert_eq!(drain(&mut edge), [], "nothing more to NACK");
    let s = edge.stats();
    assert_eq!((s.nacked, s.repaired, s.lost, s.duplicates), (1, 1, 0, 1));
}

#[test]
fn reordering_within_the_delay_is_not_nacked_and_each_layer_is_followed_apart() {
    let t0 = Instant::now();
    let mut edge = with_track(1);
    edge.handle_media(t0, &packet(1, 0, 1));
    edge.handle_media(t0, &packet(1, 0, 3));
    // Layer 1 numbers its own packets: 500 after 1 on layer 0 is no gap of layer 1.
    edge.handle_media(t0, &packet(1, 1, 500));
    edge.handle_media(t0, &packet(1, 1, 501));
    assert_eq!(edge.handle_media(t0 + NACK_DELAY / 2, &packet(1, 0, 2)), Arrival::Repaired);
    run_until(&mut edge, t0 + Duration::from_secs(1));
    assert_eq!(drain(&mut edge), []);
    assert_eq!(edge.stats().nacked, 0);
}

#[test]
fn a_packet_that_never_comes_is_nacked_three_times_then_given_up() {
    let t0 = Instant::now();
    let mut edge = with_track(1);
    edge.handle_media(t0, &packet(1, 2, 1));
    edge.handle_media(t0, &packet(1, 2, 4));
    run_until(&mut edge, t0 + Duration::from_secs(5));
    let nacks = drain(&mut edge);
    assert_eq!(nacks, vec![Control::Nack { track: 1, layer: 2, seqs: vec![2, 3] }; usize::from(NACK_TRIES)]);
    assert_eq!(edge.poll_timeout(), None, "given up: nothing scheduled");
    let s = edge.stats();
    assert_eq!((s.nacked, s.lost), (6, 2));
}

#[test]
fn a_long_gap_follows_at_most_max_missing_and_counts_the_rest_lost() {
    let t0 = Instant::now();
    let mut edge = with_track(1);
    edge.handle_media(t0, &packet(1, 0, 0));
    edge.handle_media(t0, &packet(1, 0, 5001));
    assert_eq!(edge.stats().lost, 5000 - MAX_MISSING as u64);
    run_until(&mut edge, t0 + NACK_DELAY);
    let nacks = drain(&mut edge);
    // NACK frames hold at most MAX_NACKS each; together, the newest MAX_MISSING.
    assert!(nacks.iter().all(|n| matches!(n, Control::Nack { seqs, .. } if seqs.len() <= MAX_NACKS)));
    let seqs: Vec<u64> = nacks
        .into_iter()
        .flat_map(|n| match n {
            Control::Nack { seqs, .. } => seqs,
            _ => vec![],
        })
        .collect();
    assert_eq!(seqs, (5001 - MAX_MISSING as u64..5001).collect::<Vec<_>>());
}

#[test]
fn media_of_an_unknown_or_ended_track_is_dropped() {
    let t0 = Instant::now();
    let mut edge = with_track(1);
    assert_eq!(edge.handle_media(t0, &packet(2, 0, 1)), Arrival::Duplicate);
    edge.handle_media(t0, &packet(1, 0, 1));
    edge.handle_media(t0, &packet(1, 0, 5));
    edge.handle_control(&Control::TrackEnded { track: 1 });
    assert_eq!(edge.poll_timeout(), None, "its gaps are forgotten with it");
    assert_eq!(edge.handle_media(t0, &packet(1, 0, 6)), Arrival::Duplicate);
}

#[test]
fn a_new_link_resubscribes_every_watched_machine_and_forgets_what_was_queued_and_announced() {
    let t0 = Instant::now();
    let mut edge = with_track(7);
    edge.viewer_joined("m1", "v");
    edge.viewer_joined("m2", "v");
    edge.viewer_joined("gone", "v");
    edge.viewer_left(t0, "gone", "v");
    run_until(&mut edge, t0 + UNSUBSCRIBE_GRACE);
    drain(&mut edge);
    edge.request_keyframe(t0, 7);
    edge.relinked();
    assert_eq!(
        drain(&mut edge),
        vec![Control::Subscribe { machine: "m1".into() }, Control::Subscribe { machine: "m2".into() }],
        "only what the old link did not carry is dropped; each machine still watched is asked for again"
    );
    // Track 7 was forgotten: its packets are not forwarded until the origin announces it again.
    assert_eq!(edge.handle_media(t0, &packet(7, 0, 1)), Arrival::Duplicate);
}

#[test]
fn seat_input_goes_upstream_stamped_only_for_a_watched_machine() {
    let mut edge = Edge::new();
    edge.seat_input("m1", false, b"left", 1_700_000_000_000, 42);
    assert!(drain(&mut edge).is_empty(), "no subscription, nothing upstream");
    edge.viewer_joined("m1", "v");
    drain(&mut edge);
    edge.seat_input("m1", true, b"\x01", 1_700_000_000_123, 42);
    assert_eq!(
        drain(&mut edge),
        vec![Control::SeatInput {
            machine: "m1".into(),
            binary: true,
            data: vec![1],
            arrived_unix_ms: 1_700_000_000_123,
            rtt_ms: 42
        }]
    );
}

#[test]
fn the_origin_hears_each_viewers_name_as_it_comes_and_goes_and_again_after_a_re_link() {
    let t0 = Instant::now();
    let mut edge = Edge::new();
    let all = |edge: &mut Edge| -> Vec<Control> { std::iter::from_fn(|| edge.poll_control()).collect() };
    let viewer = |label: &str, present| Control::Viewer { machine: "m1".into(), label: label.into(), present };
    edge.viewer_joined("m1", "alice");
    edge.viewer_joined("m1", "alice");
    edge.viewer_joined("m1", "bob");
    assert_eq!(
        all(&mut edge),
        [Control::Subscribe { machine: "m1".into() }, viewer("alice", true), viewer("bob", true)],
        "a name once, however many times it watches"
    );
    edge.viewer_left(t0, "m1", "alice");
    assert_eq!(all(&mut edge), [], "alice still watches once");
    edge.relinked();
    assert_eq!(
        all(&mut edge),
        [Control::Subscribe { machine: "m1".into() }, viewer("alice", true), viewer("bob", true)]
    );
    edge.viewer_left(t0, "m1", "alice");
    edge.viewer_left(t0, "m1", "carol");
    assert_eq!(all(&mut edge), [viewer("alice", false)], "carol never watched");
}
