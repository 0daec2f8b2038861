//! Scenario tests of the SFU's routing core: no sockets, no WebRTC, a virtual clock. A fake
//! publisher sends packets the way a browser's simulcast encoder does (each layer with its own
//! random sequence and timestamp bases), and the tests check what each subscriber receives.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use relay::sfu::route::{KEYFRAME_INTERVAL, RouteError};
use relay::sfu::{Codec, Forward, MediaIn, PeerId, Role, Router};
use std::sync::Arc;

const MACHINE: &str = "cab-1";
const PUBLISHER: PeerId = PeerId(1);
const PLAYER: PeerId = PeerId(10);
const SPECTATOR: PeerId = PeerId(11);

/// One layer of one track as an encoder sends it.
struct Source {
    track: usize,
    layer: u8,
    seq: u64,
    ts: u32,
    /// Payload bytes per packet (sets the layer's bitrate).
    size: usize,
}

impl Source {
    fn new(track: usize, layer: u8, seq: u64, ts: u32, size: usize) -> Self {
        Self { track, layer, seq, ts, size }
    }

    /// The next packet; the payload carries (layer, seq) so a test can tell where it came from.
    fn next(&mut self, keyframe: bool, ts_step: u32) -> MediaIn {
        self.seq += 1;
        self.ts = self.ts.wrapping_add(ts_step);
        let mut payload = vec![0u8; self.size.max(9)];
        payload[0] = self.layer;
        payload[1..9].copy_from_slice(&self.seq.to_be_bytes());
        MediaIn {
            track: self.track,
            layer: self.layer,
            seq: self.seq,
            timestamp: self.ts,
            marker: true,
            keyframe,
            payload: Arc::from(payload),
        }
    }
}

fn origin(f: &Forward) -> (u8, u64) {
    (f.payload[0], u64::from_be_bytes(f.payload[1..9].try_into().unwrap()))
}

/// Feeds a packet and returns what was forwarded, by subscriber.
fn feed(router: &mut Router, now: Instant, pkt: MediaIn) -> HashMap<PeerId, Vec<Forward>> {
    router.handle_media(now, PUBLISHER, pkt);
    let mut by = HashMap::<PeerId, Vec<Forward>>::new();
    for f in forwards(router) {
        by.entry(f.to).or_default().push(f);
    }
    by
}

/// What the router queued for subscribers.
fn forwards(router: &mut Router) -> Vec<Forward> {
    std::iter::from_fn(|| router.poll_forward()).collect()
}

fn drain_requests(router: &mut Router) -> Vec<(usize, u8)> {
    std::iter::from_fn(|| router.poll_keyframe_request()).map(|r| (r.track, r.layer)).collect()
}

#[test]
fn subscribe_waits_for_a_key_frame_and_unsubscribe_stops_the_flow() {
    let t0 = Instant::now();
    let mut router = Router::new();
    router.publish(MACHINE, PUBLISHER).unwrap();
    let audio = router.add_track(PUBLISHER, Codec::Opus, 1).unwrap();
    let video = router.add_track(PUBLISHER, Codec::H264, 1).unwrap();
    let mut a = Source::new(audio, 0, 5000, 1000, 80);
    let mut v = Source::new(video, 0, 60_000, 90_000, 1100);
    // Frames flow before anyone watches.
    for _ in 0..10 {
        assert!(feed(&mut router, t0, v.next(false, 3000)).is_empty());
    }
    drain_requests(&mut router);

    router.subscribe(t0, MACHINE, PLAYER, Role::Player).unwrap();
    // Joining asks the publisher for a key frame of the video (audio needs none).
    assert_eq!(drain_requests(&mut router), vec![(video, 0)]);
    // Audio flows at once; inter frames of video are held back until a key frame.
    let got = feed(&mut router, t0, a.next(true, 960));
    assert_eq!(got[&PLAYER].len(), 1);
    assert!(feed(&mut router, t0, v.next(false, 3000)).is_empty());
    let first = feed(&mut router, t0, v.next(true, 3000));
    assert_eq!(origin(&first[&PLAYER][0]), (0, v.seq));
    let mut last = first[&PLAYER][0].seq;
    for _ in 0..20 {
        let got = feed(&mut router, t0, v.next(false, 3000));
        let f = &got[&PLAYER][0];
        assert_eq!(f.seq, last + 1, "continuous sequence numbers");
        last = f.seq;
    }

    // A spectator joining later also waits for its own key frame and does not disturb the player.
    router.subscribe(t0, MACHINE, SPECTATOR, Role::Spectator).unwrap();
    let got = feed(&mut router, t0, v.next(false, 3000));
    assert!(got.contains_key(&PLAYER) && !got.contains_key(&SPECTATOR));
    let got = feed(&mut router, t0, v.next(true, 3000));
    assert!(got.contains_key(&PLAYER) && got.contains_key(&SPECTATOR));

    router.remove(PLAYER).unwrap();
    let got = feed(&mut router, t0, v.next(false, 3000));
    assert!(!got.contains_key(&PLAYER) && got.contains_key(&SPECTATOR));
    assert_eq!(router.subscribers(MACHINE), vec![(SPECTATOR, Role::Spectator)]);
    assert_eq!(router.remove(PLAYER), Err(RouteError::UnknownPeer(PLAYER)));

    // The room goes when the last peer does.
    router.remove(SPECTATOR).unwrap();
    router.remove(PUBLISHER).unwrap();
    assert!(router.machine_of(PUBLISHER).is_none());
    assert!(router.tracks(MACHINE).is_empty());
}

#[test]
fn seat_holder_alone_reaches_the_machine_and_handoff_swaps_the_roles() {
    let t0 = Instant::now();
    let mut router = Router::new();
    router.publish(MACHINE, PUBLISHER).unwrap();
    router.subscribe(t0, MACHINE, SPECTATOR, Role::Spectator).unwrap();
    assert_eq!(router.seat(MACHINE), None, "a spectator does not take the seat");
    router.subscribe(t0, MACHINE, PLAYER, Role::Player).unwrap();
    assert_eq!(router.seat(MACHINE), Some(PLAYER), "the player does");

    assert_eq!(router.handle_input(PLAYER), Some(PUBLISHER));
    assert_eq!(router.handle_input(SPECTATOR), None);
    assert_eq!(router.handle_input(PUBLISHER), None, "the machine is not a subscriber");
    assert_eq!(router.handle_input(PeerId(999)), None, "nor is a stranger");

    // The machine's messages go to everyone.
    let mut to = router.handle_publisher_message(PUBLISHER);
    to.sort();
    assert_eq!(to, vec![PLAYER, SPECTATOR]);
    assert!(router.handle_publisher_message(PLAYER).is_empty(), "a subscriber cannot broadcast");

    // Handoff: the roles swap.
    assert_eq!(router.hand_seat(MACHINE, Some(SPECTATOR)), Ok(Some(PLAYER)));
    assert_eq!(router.handle_input(SPECTATOR), Some(PUBLISHER));
    assert_eq!(router.handle_input(PLAYER), None);
    assert_eq!(
        router.hand_seat(MACHINE, Some(PeerId(999))),
        Err(RouteError::NotSubscriber(PeerId(999), MACHINE.into()))
    );
    assert_eq!(router.hand_seat("nope", None), Err(RouteError::NoRoom("nope".into())));

    // The holder leaving frees the seat; nobody's input gets through until it is handed on.
    router.remove(SPECTATOR).unwrap();
    assert_eq!(router.seat(MACHINE), None);
    assert_eq!(router.handle_input(PLAYER), None);
    router.hand_seat(MACHINE, Some(PLAYER)).unwrap();
    assert_eq!(router.handle_input(PLAYER), Some(PUBLISHER));

    let s = router.stats();
    assert_eq!((s.inputs_delivered, s.inputs_dropped), (3, 5));
    assert_eq!(s.messages_to_subscribers, 2);
}

#[test]
fn twenty_subscribers_asking_for_key_frames_cause_one_request_per_interval() {
    let t0 = Instant::now();
    let mut router = Router::new();
    router.publish(MACHINE, PUBLISHER).unwrap();
    let video = router.add_track(PUBLISHER, Codec::Vp8, 1).unwrap();
    let subs: Vec<PeerId> = (100..120).map(PeerId).collect();
    for &s in &subs {
        router.subscribe(t0, MACHINE, s, Role::Spectator).unwrap();
    }
    let mut v = Source::new(video, 0, 10, 0, 1000);
    feed(&mut router, t0, v.next(true, 3000));
    drain_requests(&mut router);

    // Every subscriber sends a PLI every 10 ms for 5 s; the shell runs timeouts as they fall due.
    let mut sent_at = Vec::new();
    let mut now = t0 + Duration::from_millis(1);
    let end = t0 + Duration::from_secs(5);
    while now < end {
        for &s in &subs {
            router.handle_keyframe_request(now, s, video);
        }
        if router.poll_timeout().is_some_and(|t| t <= now) {
            router.handle_timeout(now);
        }
        for r in std::iter::from_fn(|| router.poll_keyframe_request()) {
            assert_eq!((r.publisher, r.track, r.layer), (PUBLISHER, video, 0));
            sent_at.push(now);
        }
        now += Duration::from_millis(10);
    }
    for pair in sent_at.windows(2) {
        assert!(pair[1] - pair[0] >= KEYFRAME_INTERVAL, "two requests {:?} apart", pair[1] - pair[0]);
    }
    // Merged, not lost: about one per interval reaches the publisher.
    assert!((9..=11).contains(&sent_at.len()), "{} requests in 5 s", sent_at.len());
    let s = router.stats();
    assert_eq!(s.keyframe_requests_suppressed + sent_at.len() as u64, 20 * 500);
}

#[test]
fn a_key_frame_answers_merged_requests() {
    let t0 = Instant::now();
    let mut router = Router::new();
    router.publish(MACHINE, PUBLISHER).unwrap();
    let video = router.add_track(PUBLISHER, Codec::Vp8, 1).unwrap();
    router.subscribe(t0, MACHINE, PLAYER, Role::Player).unwrap();
    let mut v = Source::new(video, 0, 10, 0, 1000);
    feed(&mut router, t0, v.next(true, 3000));
    drain_requests(&mut router);
    let t1 = t0 + Duration::from_secs(1);
    router.handle_keyframe_request(t1, PLAYER, video);
    assert_eq!(drain_requests(&mut router).len(), 1);
    router.handle_keyframe_request(t1 + Duration::from_millis(100), PLAYER, video);
    assert!(router.poll_timeout().is_some(), "merged request pending");
    feed(&mut router, t1 + Duration::from_millis(200), v.next(true, 3000));
    router.handle_timeout(t1 + Duration::from_secs(1));
    assert!(drain_requests(&mut router).is_empty(), "the key frame answered it");
}

/// Three layers with their own sequence and timestamp bases, 30 frames/s each, three packets
/// per frame; a key frame on every layer every `gop` frames.
struct Simulcast {
    layers: Vec<Source>,
    frame: u64,
    gop: u64,
}

impl Simulcast {
    fn new(track: usize) -> Self {
        Self {
            layers: vec![
                Source::new(track, 0, 1_000, 4_000_000_000, 100),
                Source::new(track, 1, 40_000, 17, 400),
                Source::new(track, 2, 65_530, 2_000_000_000, 1200),
            ],
            frame: 0,
            gop: 30,
        }
    }

    /// One frame of every layer.
    fn frame(&mut self) -> Vec<MediaIn> {
        let key = self.frame.is_multiple_of(self.gop);
        self.frame += 1;
        let mut out = Vec::new();
        for l in &mut self.layers {
            out.push(l.next(key, 3000));
            out.push(l.next(false, 0));
            out.push(l.next(false, 0));
        }
        out
    }
}

#[test]
fn layers_follow_bandwidth_with_continuous_sequence_numbers_and_timestamps() {
    let t0 = Instant::now();
    let mut router = Router::new();
    router.publish(MACHINE, PUBLISHER).unwrap();
    let video = router.add_track(PUBLISHER, Codec::Vp8, 3).unwrap();
    router.subscribe(t0, MACHINE, PLAYER, Role::Player).unwrap();
    let mut sim = Simulcast::new(video);
    let frame = Duration::from_micros(33_333);

    let mut now = t0;
    let mut received: Vec<Forward> = Vec::new();
    let mut run = |router: &mut Router, now: &mut Instant, frames: usize, received: &mut Vec<Forward>| {
        for _ in 0..frames {
            for pkt in sim.frame() {
                let mut got = feed(router, *now, pkt);
                received.extend(got.remove(&PLAYER).unwrap_or_default());
            }
            *now += frame;
            if router.poll_timeout().is_some_and(|t| t <= *now) {
                router.handle_timeout(*now);
            }
        }
    };
    // Subscribed before any layer was live: it starts on layer 0 at the first key frame, then,
    // with no estimate yet, climbs to the highest live layer at the next one.
    run(&mut router, &mut now, 40, &mut received);
    assert_eq!(router.current_layer(PLAYER, video), Some(2));
    // Layer 2 carries 3 × 1200 B × 30/s ≈ 864 kbit/s, layer 1 about 288, layer 0 about 72.
    router.handle_bandwidth(now, PLAYER, 300_000);
    assert_eq!(router.target_layer(PLAYER, video), Some(1));
    // It stays on layer 2 until layer 1's next key frame (the review asked for one).
    run(&mut router, &mut now, 5, &mut received);
    assert_eq!(router.current_layer(PLAYER, video), Some(2));
    run(&mut router, &mut now, 30, &mut received);
    assert_eq!(router.current_layer(PLAYER, video), Some(1));
    router.handle_bandwidth(now, PLAYER, 50_000);
    run(&mut router, &mut now, 35, &mut received);
    assert_eq!(router.current_layer(PLAYER, video), Some(0), "nothing fits: the lowest live layer");
    router.handle_bandwidth(now, PLAYER, 5_000_000);
    run(&mut router, &mut now, 35, &mut received);
    assert_eq!(router.current_layer(PLAYER, video), Some(2));
    assert_eq!(router.stats().layer_switches, 4);

    // What the player saw: one stream, sequence numbers with no gap and no repeat, timestamps
    // never going back and advancing by about a frame across every switch.
    assert!(received.len() > 300);
    let mut layers_seen = Vec::new();
    for pair in received.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(b.seq, a.seq + 1, "sequence gap at {a:?} -> {b:?}");
        let step = b.timestamp.wrapping_sub(a.timestamp);
        assert!(step <= 3100, "timestamp jumped by {step}");
        if origin(a).0 != origin(b).0 {
            // A switch advances the timestamp by the wall-clock time since the last packet: a
            // frame when the new layer's key frame comes a frame later (switching down: lower
            // layers come first in each frame here), one tick when it is the same instant.
            let expected = if origin(b).0 < origin(a).0 { 2900..=3100 } else { 1..=1 };
            assert!(
                expected.contains(&step),
                "switch {:?} -> {:?} advanced the timestamp by {step}",
                origin(a),
                origin(b)
            );
            layers_seen.push(origin(b).0);
        }
    }
    assert_eq!(origin(&received[0]).0, 0);
    assert_eq!(layers_seen, vec![2, 1, 0, 2]);
}

#[test]
fn nacks_are_answered_once_per_track_from_the_shared_cache() {
    let t0 = Instant::now();
    let mut router = Router::new();
    router.publish(MACHINE, PUBLISHER).unwrap();
    let video = router.add_track(PUBLISHER, Codec::H264, 1).unwrap();
    router.subscribe(t0, MACHINE, PLAYER, Role::Player).unwrap();
    router.subscribe(t0, MACHINE, SPECTATOR, Role::Spectator).unwrap();
    let mut v = Source::new(video, 0, u64::from(u16::MAX) - 3, 0, 1000);
    let mut sent = Vec::new();
    sent.push(feed(&mut router, t0, v.next(true, 3000)));
    for _ in 0..20 {
        sent.push(feed(&mut router, t0, v.next(false, 3000)));
    }
    let player_seqs: Vec<u64> = sent.iter().map(|m| m[&PLAYER][0].seq).collect();
    router.handle_nack(PLAYER, video, &[player_seqs[3], player_seqs[10], player_seqs[20] + 5]);
    let out = forwards(&mut router);
    assert_eq!(out.len(), 2, "the one never sent is a miss");
    for (f, i) in out.iter().zip([3, 10]) {
        let original = &sent[i][&PLAYER][0];
        assert!(f.resend && f.to == PLAYER);
        assert_eq!((f.seq, f.timestamp, &f.payload), (original.seq, original.timestamp, &original.payload));
        // The spectator's copy and the cache are the same bytes, not copies.
        assert_eq!(f.payload.as_ptr(), sent[i][&SPECTATOR][0].payload.as_ptr());
    }
    let s = router.stats();
    assert_eq!((s.nacks, s.resent, s.resend_misses), (3, 2, 1));

    // Old packets fall out of the cache.
    for _ in 0..relay::sfu::route::CACHE_PACKETS {
        feed(&mut router, t0, v.next(false, 3000));
    }
    router.handle_nack(PLAYER, video, &[player_seqs[3]]);
    let out = forwards(&mut router);
    assert!(out.is_empty());
}

#[test]
fn a_reconnecting_publisher_continues_every_subscribers_stream() {
    let t0 = Instant::now();
    let mut router = Router::new();
    router.publish(MACHINE, PUBLISHER).unwrap();
    let video = router.add_track(PUBLISHER, Codec::Av1, 1).unwrap();
    router.subscribe(t0, MACHINE, PLAYER, Role::Player).unwrap();
    let mut v = Source::new(video, 0, 100, 0, 500);
    let mut last = 0;
    for i in 0..10 {
        last = feed(&mut router, t0, v.next(i == 0, 3000))[&PLAYER][0].seq;
    }
    // The machine comes back on a new connection with new numbering.
    let again = PeerId(2);
    assert_eq!(router.publish(MACHINE, again), Ok(Some(PUBLISHER)));
    let video2 = router.add_track(again, Codec::Av1, 1).unwrap();
    let mut v2 = Source::new(video2, 0, 9_999, 123, 500);
    router.handle_media(t0 + Duration::from_secs(1), PUBLISHER, v2.next(true, 3000));
    let out = forwards(&mut router);
    assert!(out.is_empty(), "the old publisher is gone");
    router.handle_media(t0 + Duration::from_secs(1), again, v2.next(false, 3000));
    let out = forwards(&mut router);
    assert!(out.is_empty(), "waits for the new key frame");
    router.handle_media(t0 + Duration::from_secs(1), again, v2.next(true, 3000));
    let out = forwards(&mut router);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].seq, last + 1);
}

#[test]
fn bad_input_is_ignored_or_refused() {
    let t0 = Instant::now();
    let mut router = Router::new();
    router.publish(MACHINE, PUBLISHER).unwrap();
    assert_eq!(router.publish(MACHINE, PUBLISHER), Err(RouteError::PeerExists(PUBLISHER)));
    assert_eq!(router.add_track(PUBLISHER, Codec::Vp8, 4), Err(RouteError::BadLayers));
    assert_eq!(router.add_track(PUBLISHER, Codec::Vp8, 0), Err(RouteError::BadLayers));
    router.subscribe(t0, MACHINE, PLAYER, Role::Player).unwrap();
    assert_eq!(router.add_track(PLAYER, Codec::Vp8, 1), Err(RouteError::NotPublisher(PLAYER)));
    assert_eq!(router.subscribe(t0, MACHINE, PLAYER, Role::Player), Err(RouteError::PeerExists(PLAYER)));
    let video = router.add_track(PUBLISHER, Codec::Vp8, 1).unwrap();
    let mut bad = Source::new(video + 5, 0, 1, 0, 10);
    router.handle_media(t0, PUBLISHER, bad.next(true, 1));
    let mut bad_layer = Source::new(video, 2, 1, 0, 10);
    router.handle_media(t0, PUBLISHER, bad_layer.next(true, 1));
    let mut from_sub = Source::new(video, 0, 1, 0, 10);
    router.handle_media(t0, PLAYER, from_sub.next(true, 1));
    assert!(forwards(&mut router).is_empty());
    router.handle_nack(PLAYER, 99, &[1, 2, 3]);
    router.handle_nack(PUBLISHER, video, &[1]);
    router.handle_keyframe_request(t0, PLAYER, 99);
    assert!(forwards(&mut router).is_empty());
    assert_eq!(router.stats().packets_in, 0);
}
