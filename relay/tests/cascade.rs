//! Relays forward a machine's media to each other over QUIC links, in the real binaries: a
//! machine publishes at relay A (eu-1); viewers whose media tokens name A as the machine's home
//! watch at relay B (asia-1), which links to A through a user-space proxy with 40 ms of delay
//! each way and 1% loss. B subscribes once however many viewers it has, repairs the link's loss
//! from A's buffer, and carries the seat holder's input to the machine and the machine's
//! messages to its viewers.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster::media::MediaRole;
use cluster::pki::{Authority, Validity};
use common::RelayProcess;
use common::links::{relay_with_link, viewer_token};
use common::proxy::LossyProxy;
use common::webrtc_client::{Http, Peer, pump_all, vp8};
use str0m::media::Direction;

const SDP: &str = "application/sdp";

/// The packet numbers (the VP8 payload's bytes 2..10, see [`vp8`]) a viewer received.
fn received(peer: &Peer) -> Vec<u64> {
    let mut seqs: Vec<u64> = peer
        .client
        .rtp
        .iter()
        .filter(|(mid, _, p)| *mid == peer.client.video && p.len() >= 10)
        .map(|(_, _, p)| u64::from_be_bytes(p[2..10].try_into().unwrap()))
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs
}

/// Sends packets `range` from the machine at 200 a second, a key frame every 100, pumping
/// every peer meanwhile.
fn send(machine: &mut Peer, viewers: &mut [Peer], range: std::ops::Range<u64>) {
    for i in range {
        machine.client.send_rtp(Instant::now(), true, 1000 + i, i as u32 * 450, vp8(i.is_multiple_of(100), i));
        let mut all: Vec<&mut Peer> = std::iter::once(&mut *machine).chain(viewers.iter_mut()).collect();
        pump_all(&mut all, Duration::from_millis(5));
    }
}

fn pump(machine: &mut Peer, viewers: &mut [Peer], d: Duration) {
    let mut all: Vec<&mut Peer> = std::iter::once(machine).chain(viewers.iter_mut()).collect();
    pump_all(&mut all, d);
}

/// Pumps until the machine has received `input` (up to 5 s: a loaded machine delays SCTP).
fn pump_until_received(machine: &mut Peer, viewers: &mut [Peer], input: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !machine.client.data.iter().any(|d| d == input) {
        assert!(Instant::now() < deadline, "the machine did not receive {:?}", String::from_utf8_lossy(input));
        pump(machine, viewers, Duration::from_millis(100));
    }
}

/// Waits (up to 3 s: the SFU's figures are at most 1 s old) for `series` to read `want`.
fn wait_for_metric(relay: &RelayProcess, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while relay.metric(series) != want {
        assert!(Instant::now() < deadline, "{series} is {}, not {want}", relay.metric(series));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A viewer at `http`'s relay, connected.
/// The machine `cab-1` publishing at `relay` (WHIP at `http`), its data channel labelled
/// `channel` (`stamped`: it asks for its seat inputs stamped).
fn machine_at(relay: &RelayProcess, http: String, channel: &str) -> Peer {
    let api = Http::new(http, reqwest::Client::new());
    let (mut machine, offer, pending) = Peer::with_channel(relay.udp, Direction::SendOnly, channel);
    let publisher = common::media_token(MediaRole::Publisher, "cab-1", None, "cab-1");
    let (status, _, answer) = api.post("/whip/cab-1", Some(&publisher), SDP, &offer);
    assert_eq!(status, 201, "{answer}");
    machine.client.accept(pending, &answer);
    machine
}

fn join(http: &Http, relay_udp: SocketAddr, token: &str) -> Peer {
    let (mut peer, offer, pending) = Peer::new(relay_udp, Direction::RecvOnly);
    let (status, _, answer) = http.post("/whep/s-1", Some(token), SDP, &offer);
    assert_eq!(status, 201, "{answer}");
    peer.client.accept(pending, &answer);
    peer
}

#[test]
fn viewers_at_another_relay_play_the_machine_over_one_repaired_link_copy_and_its_seat_reaches_it() {
    let dir = common::temp_dir("cascade");
    let ca = Authority::generate("cluster", Validity::days_from(cluster::time::unix_now(), 10)).unwrap();
    let (a, a_http, a_link) = relay_with_link(&ca, &dir, "eu-1", "127.0.0.1:0");
    let (b, b_http, _) = relay_with_link(&ca, &dir, "asia-1", "127.0.0.1:0");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let proxy = rt.block_on(LossyProxy::start(a_link, Duration::from_millis(40), 100));
    let home = Some(("eu-1", proxy.addr));

    // The machine publishes at A; it asks for its seat inputs stamped.
    let mut machine = machine_at(&a, a_http, "stamped");
    let b_api = Http::new(b_http, reqwest::Client::new());

    // The player watches at B, which links to A for it.
    let mut viewers = vec![join(&b_api, b.udp, &viewer_token(MediaRole::Player, "player", home))];
    pump(&mut machine, &mut viewers, Duration::from_secs(2));
    assert!(machine.client.connected && viewers[0].client.connected && viewers[0].client.open);
    send(&mut machine, &mut viewers, 0..200);
    assert_eq!(b.metric("relay_links_open"), 1.0, "B linked to A");
    assert_eq!(a.metric("relay_links_open"), 1.0, "A admitted B");
    let first = *received(&viewers[0]).first().expect("the player at B receives the machine's video");

    // With 1 viewer and then 20 at B, A sends each packet over the link once; the link's loss
    // is repaired.
    for (round, more) in [(0u64, 0usize), (1, 19)] {
        for i in 0..more {
            viewers.push(join(&b_api, b.udp, &viewer_token(MediaRole::Spectator, &format!("fan-{i}"), home)));
        }
        pump(&mut machine, &mut viewers, Duration::from_secs(2));
        // Both figures from one scrape (one snapshot of the SFU thread's, at most 1 s old).
        let figures = || {
            let m = a.metrics();
            let read = |series| common::metric_value(&m, series);
            (read("relay_sfu_ingest_packets_total"), read("relay_link_media_sent_total"))
        };
        pump(&mut machine, &mut viewers, Duration::from_millis(1200));
        let (ingest, copies) = figures();
        // 600 packets counted, 20 more after them: a loss is seen (and repaired) when a later
        // packet arrives, as in any live stream. Each round starts with a key frame (the test
        // machine sends one every 100 packets and does not answer requests).
        let start = 200 + round * 700;
        send(&mut machine, &mut viewers, start..start + 620);
        pump(&mut machine, &mut viewers, Duration::from_millis(1200));
        let (ingest_after, copies_after) = figures();
        let (ingest, copies) = (ingest_after - ingest, copies_after - copies);
        eprintln!("{} viewers at B: A received {ingest} packets, sent {copies} over the link", viewers.len());
        assert!(ingest >= 620.0, "A received {ingest} packets of 620");
        assert!(
            (copies - ingest).abs() <= ingest * 0.01,
            "{} viewers at B: A sent {copies} first copies over the link for {ingest} packets",
            viewers.len()
        );
        for (n, v) in viewers.iter().enumerate() {
            let got = received(v).into_iter().filter(|s| (start..start + 600).contains(s)).count();
            // The bar is 99.5%; with the loss repaired none should be missing (the proxy drops
            // about 0.6% of what A sends, so without repair 3 or more would be).
            let missing: Vec<u64> = (start..start + 600).filter(|s| !received(v).contains(s)).collect();
            assert!(
                got >= 599,
                "viewer {n} of {} at B got {got} of 600 packets, missing {missing:?}; B repaired {}, nacked {}, lost {}, A resent {}",
                viewers.len(),
                b.metric("relay_link_repaired_total"),
                b.metric("relay_link_nacked_total"),
                b.metric("relay_link_lost_total"),
                a.metric("relay_link_resent_total")
            );
        }
    }
    let (dropped, resent) =
        (proxy.down.dropped.load(std::sync::atomic::Ordering::Relaxed), a.metric("relay_link_resent_total"));
    assert!(dropped > 0 && resent > 0.0, "the proxy dropped {dropped} datagrams to B, A resent {resent}");
    eprintln!(
        "link: {dropped} datagrams dropped on the way to B, {resent} resent by A, first packet seen at B: {first}, \
         repaired at B: {}",
        b.metric("relay_link_repaired_total")
    );

    // The seat holder's input at B reaches the machine at A, stamped by B (the first relay to
    // receive it) with its arrival and the player's RTT; the machine's message reaches every
    // viewer at B.
    let sent_at = cluster::time::unix_now_ms() as u64;
    viewers[0].client.send_text("left");
    viewers[1].client.send_text("right");
    pump(&mut machine, &mut viewers, Duration::from_millis(800));
    let inputs: Vec<serde_json::Value> =
        machine.client.data.iter().map(|d| serde_json::from_slice(d).expect("a stamped input")).collect();
    assert_eq!(inputs.len(), 1, "only the seat holder's input, over the link: {inputs:?}");
    let input = &inputs[0];
    assert_eq!((input["text"].as_str(), input["relay"].as_str()), (Some("left"), Some("asia-1")), "{input}");
    let arrived = input["arrived_unix_ms"].as_u64().unwrap();
    assert!((sent_at..sent_at + 800).contains(&arrived), "stamped on arrival at B: {input}");
    assert!(input["rtt_ms"].as_u64().is_some_and(|ms| ms < 100), "the player's RTT to B (loopback): {input}");
    wait_for_metric(&a, "relay_link_seat_inputs_total", 1.0);
    machine.client.send_data(b"credit 1");
    pump(&mut machine, &mut viewers, Duration::from_millis(800));
    for (n, v) in viewers.iter().enumerate() {
        assert_eq!(v.client.data, vec![b"credit 1".to_vec()], "viewer {n} at B");
    }
    assert_eq!(b.metric("relay_link_malformed_datagrams_total"), 0.0);

    // The alert rules shipped in deploy/ speak of series these relays export (those of the
    // cluster heartbeat: tests/cluster.rs).
    let names = common::rule_metrics("relay-rules.yml", "relay_");
    assert!(names.len() >= 8, "{names:?}");
    let (ma, mb) = (a.metrics(), b.metrics());
    for name in names.iter().filter(|n| !n.starts_with("relay_cluster_")) {
        assert!(
            common::has_series(&ma, name) || common::has_series(&mb, name),
            "deploy/prometheus/relay-rules.yml uses {name}, which neither relay exports"
        );
    }
    drop(proxy);
}

#[test]
fn a_viewer_sent_to_a_relay_without_links_is_told_why() {
    let relay = RelayProcess::start("relay.toml", &[]);
    let api = Http::new(relay.sfu_http(), reqwest::Client::new());
    let (_, offer, _) = Peer::new(relay.udp, Direction::RecvOnly);
    let token = viewer_token(MediaRole::Player, "player", Some(("eu-1", "127.0.0.1:9".parse().unwrap())));
    let (status, _, body) = api.post("/whep/s-1", Some(&token), SDP, &offer);
    assert_eq!(status, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["error"].as_str().is_some_and(|e| e.contains("eu-1") && e.contains("[link]")), "{body}");
}

/// The machine publishes at `api`'s relay and connects.
fn publish(api: &Http, relay_udp: SocketAddr) -> Peer {
    let (mut machine, offer, pending) = Peer::new(relay_udp, Direction::SendOnly);
    let token = common::media_token(MediaRole::Publisher, "cab-1", None, "cab-1");
    let (status, _, answer) = api.post("/whip/cab-1", Some(&token), SDP, &offer);
    assert_eq!(status, 201, "{answer}");
    machine.client.accept(pending, &answer);
    machine
}

#[test]
fn when_the_home_relay_restarts_the_edge_links_again_and_its_viewer_plays_again() {
    let dir = common::temp_dir("cascade-restart");
    let ca = Authority::generate("cluster", Validity::days_from(cluster::time::unix_now(), 10)).unwrap();
    // A's link port, kept across its restart.
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let a_listen = format!("127.0.0.1:{port}");
    let (mut a, a_http, a_link) = relay_with_link(&ca, &dir, "eu-1", &a_listen);
    let (b, b_http, _) = relay_with_link(&ca, &dir, "asia-1", "127.0.0.1:0");
    let b_api = Http::new(b_http, reqwest::Client::new());
    let mut machine = publish(&Http::new(a_http, reqwest::Client::new()), a.udp);
    let mut viewers = vec![join(&b_api, b.udp, &viewer_token(MediaRole::Player, "player", Some(("eu-1", a_link))))];
    pump(&mut machine, &mut viewers, Duration::from_secs(1));
    send(&mut machine, &mut viewers, 0..200);
    assert!(received(&viewers[0]).contains(&150), "the viewer at B plays before the restart");

    // A dies and comes back on the same link port; the machine publishes there again.
    assert_eq!(a.signal_and_wait(libc::SIGKILL, Duration::from_secs(5)), None, "killed, not exited");
    pump(&mut machine, &mut viewers, Duration::from_millis(500));
    let (a2, a2_http, _) = relay_with_link(&ca, &dir, "eu-1", &a_listen);
    let restarted = Instant::now();
    let mut machine = publish(&Http::new(a2_http, reqwest::Client::new()), a2.udp);
    let mut i = 10_000u64;
    let played_again = loop {
        send(&mut machine, &mut viewers, i..i + 20);
        i += 20;
        if received(&viewers[0]).iter().any(|&s| s >= 10_000) {
            break restarted.elapsed();
        }
        if restarted.elapsed() > Duration::from_secs(15) {
            let logs: Vec<String> = b.logs.try_iter().collect();
            panic!("the viewer at B did not play again within 15 s; B's logs:\n{}", logs.join("\n"));
        }
    };
    eprintln!("the viewer at B played again {played_again:?} after the home relay restarted");
    assert_eq!(b.metric("relay_links_open"), 1.0);
    let before = received(&viewers[0]).len();
    send(&mut machine, &mut viewers, i..i + 200);
    assert!(received(&viewers[0]).len() >= before + 195, "and goes on playing");
}

/// A machine whose packets are larger than a datagram on the link's path can carry (here
/// 1,600-byte payloads, above the ~1,400 bytes that quinn's largest path MTU, 1,452, leaves):
/// they cross on the link's reliable stream instead, and the viewer at B gets every one.
#[test]
fn packets_too_large_for_a_link_datagram_cross_on_its_stream() {
    let dir = common::temp_dir("cascade-oversize");
    let ca = Authority::generate("cluster", Validity::days_from(cluster::time::unix_now(), 10)).unwrap();
    let (a, a_http, a_link) = relay_with_link(&ca, &dir, "eu-1", "127.0.0.1:0");
    let (b, b_http, _) = relay_with_link(&ca, &dir, "asia-1", "127.0.0.1:0");
    let mut machine = machine_at(&a, a_http, "input");
    let b_api = Http::new(b_http, reqwest::Client::new());
    let mut viewers = vec![join(&b_api, b.udp, &viewer_token(MediaRole::Player, "player", Some(("eu-1", a_link))))];
    pump(&mut machine, &mut viewers, Duration::from_secs(2));
    assert!(viewers[0].client.connected, "the player at B connected");
    for i in 0..100u64 {
        let mut payload = vp8(i.is_multiple_of(50), i);
        payload.resize(1600, 0xab);
        machine.client.send_rtp(Instant::now(), true, 1000 + i, i as u32 * 450, payload);
        pump(&mut machine, &mut viewers, Duration::from_millis(5));
    }
    pump(&mut machine, &mut viewers, Duration::from_millis(1500));
    let got = received(&viewers[0]);
    assert_eq!(got, (0..100).collect::<Vec<u64>>(), "every packet reached the viewer at B");
    let sizes: Vec<usize> = viewers[0].client.rtp.iter().map(|(_, _, p)| p.len()).collect();
    assert!(sizes.iter().all(|&n| n == 1600), "untouched: {sizes:?}");
    let oversize = a.metric("relay_link_oversize_total{peer=\"asia-1\"}");
    assert!(oversize >= 100.0, "A sent {oversize} packets on the stream");
    assert!(!a.metrics().contains("reason=\"too_large\""), "none dropped as too large");
}

/// One seat across relays: players at two edges (a player who joined again elsewhere); the
/// edge whose holder took the seat last is the only one whose inputs reach the machine.
#[test]
fn the_seat_is_the_last_takers_across_relays() {
    let dir = common::temp_dir("cascade-seat");
    let ca = Authority::generate("cluster", Validity::days_from(cluster::time::unix_now(), 10)).unwrap();
    let (a, a_http, a_link) = relay_with_link(&ca, &dir, "eu-1", "127.0.0.1:0");
    let (b, b_http, _) = relay_with_link(&ca, &dir, "asia-1", "127.0.0.1:0");
    let (c, c_http, _) = relay_with_link(&ca, &dir, "us-1", "127.0.0.1:0");
    let a_http_for_player = a_http.clone();
    let mut machine = machine_at(&a, a_http, "input");
    let home = Some(("eu-1", a_link));
    let mut viewers = vec![
        join(&Http::new(b_http, reqwest::Client::new()), b.udp, &viewer_token(MediaRole::Player, "player", home)),
        join(&Http::new(c_http, reqwest::Client::new()), c.udp, &viewer_token(MediaRole::Player, "player", home)),
    ];
    pump(&mut machine, &mut viewers, Duration::from_secs(2));
    assert!(viewers.iter().all(|v| v.client.connected && v.client.open), "both players connected");
    send(&mut machine, &mut viewers, 0..20);
    let mut say = |viewer: usize, input: &[u8]| {
        viewers[viewer].client.send_data(input);
        pump(&mut machine, &mut viewers, Duration::from_millis(600));
    };
    say(0, b"at asia-1");
    say(1, b"at us-1");
    say(0, b"at asia-1 again");
    assert_eq!(
        machine.client.data,
        vec![b"at asia-1".to_vec(), b"at us-1".to_vec()],
        "us-1 took the seat last: asia-1's later input is dropped"
    );
    // asia-1 was told it lost the seat: it drops its player's input itself.
    wait_for_metric(&b, "relay_sfu_inputs_dropped_total", 1.0);
    assert_eq!(a.metric("relay_link_seat_inputs_dropped_total"), 0.0);
    // A player joining at the home relay takes it there: us-1 is told, and drops its own.
    let a_api = Http::new(a_http_for_player, reqwest::Client::new());
    viewers.push(join(&a_api, a.udp, &viewer_token(MediaRole::Player, "player", None)));
    pump(&mut machine, &mut viewers, Duration::from_secs(2));
    assert!(viewers[2].client.open, "the player at the home relay connected");
    let mut say = |viewer: usize, input: &[u8]| {
        viewers[viewer].client.send_data(input);
        pump(&mut machine, &mut viewers, Duration::from_millis(600));
    };
    say(2, b"at eu-1");
    pump_until_received(&mut machine, &mut viewers, b"at eu-1");
    viewers[1].client.send_data(b"at us-1 again");
    pump(&mut machine, &mut viewers, Duration::from_millis(600));
    assert_eq!(machine.client.data.last().map(Vec::as_slice), Some(&b"at eu-1"[..]));
    wait_for_metric(&c, "relay_sfu_inputs_dropped_total", 1.0);
    assert_eq!(a.metric("relay_link_seat_inputs_dropped_total"), 0.0);
}

/// The seat handed at the home relay (as signaling's seat call does) reaches a viewer at
/// another relay by name; whoever held it is told and its inputs stop reaching the machine.
#[test]
fn the_home_relay_hands_the_seat_to_a_viewer_at_another_relay() {
    let dir = common::temp_dir("cascade-hand-seat");
    let ca = Authority::generate("cluster", Validity::days_from(cluster::time::unix_now(), 10)).unwrap();
    let (a, a_http, a_link) = relay_with_link(&ca, &dir, "eu-1", "127.0.0.1:0");
    let (b, b_http, _) = relay_with_link(&ca, &dir, "asia-1", "127.0.0.1:0");
    let (c, c_http, _) = relay_with_link(&ca, &dir, "us-1", "127.0.0.1:0");
    let a_api = Http::new(a_http.clone(), reqwest::Client::new());
    let mut machine = machine_at(&a, a_http, "input");
    let home = Some(("eu-1", a_link));
    let mut viewers = vec![
        join(&Http::new(b_http, reqwest::Client::new()), b.udp, &viewer_token(MediaRole::Player, "player", home)),
        join(&Http::new(c_http, reqwest::Client::new()), c.udp, &viewer_token(MediaRole::Spectator, "bob", home)),
        join(&a_api, a.udp, &viewer_token(MediaRole::Spectator, "carol", None)),
    ];
    pump(&mut machine, &mut viewers, Duration::from_secs(2));
    assert!(viewers.iter().all(|v| v.client.connected && v.client.open), "all three connected");
    send(&mut machine, &mut viewers, 0..20);
    let operator = common::media_token(MediaRole::Operator, "cab-1", Some("s-1"), "signaling");
    let hand = |to: Option<&str>| -> (u16, serde_json::Value) {
        let body = serde_json::json!({ "to": to }).to_string();
        let (status, _, answer) = a_api.post("/seat/cab-1", Some(&operator), "application/json", &body);
        (status, serde_json::from_str(&answer).unwrap_or_default())
    };
    let say = |viewers: &mut Vec<Peer>, machine: &mut Peer, viewer: usize, input: &[u8]| {
        viewers[viewer].client.send_data(input);
        pump(machine, viewers, Duration::from_millis(600));
    };
    say(&mut viewers, &mut machine, 0, b"player 1");
    // To bob, watching at us-1: asia-1's player loses it.
    let (status, answer) = hand(Some("bob"));
    assert_eq!((status, &answer["holder"]), (200, &serde_json::json!("bob")), "{answer}");
    pump(&mut machine, &mut viewers, Duration::from_millis(600));
    say(&mut viewers, &mut machine, 1, b"bob 1");
    say(&mut viewers, &mut machine, 0, b"player 2");
    // To carol, at the home relay: bob loses it.
    let (status, answer) = hand(Some("carol"));
    assert_eq!((status, &answer["previous"]), (200, &serde_json::json!("bob")), "{answer}");
    pump(&mut machine, &mut viewers, Duration::from_millis(600));
    say(&mut viewers, &mut machine, 2, b"carol 1");
    say(&mut viewers, &mut machine, 1, b"bob 2");
    // Nobody of that name anywhere: 404, and the seat stays where it is.
    assert_eq!(hand(Some("dave")).0, 404);
    say(&mut viewers, &mut machine, 2, b"carol 2");
    assert_eq!(
        machine.client.data,
        vec![b"player 1".to_vec(), b"bob 1".to_vec(), b"carol 1".to_vec(), b"carol 2".to_vec()],
        "each input while its sender held the seat, and no other"
    );
    // The relays that lost the seat dropped their viewers' inputs themselves.
    wait_for_metric(&b, "relay_sfu_inputs_dropped_total", 1.0);
    wait_for_metric(&c, "relay_sfu_inputs_dropped_total", 1.0);
    assert_eq!(a.metric("relay_link_seat_inputs_dropped_total"), 0.0);
}

/// When the edge relay dies, its player goes straight to the home relay (as the client library
/// fails over): accepted at once, it plays and its input reaches the machine.
#[test]
fn when_the_edge_dies_its_player_plays_at_the_home_relay_at_once() {
    let dir = common::temp_dir("cascade-edge-dies");
    let ca = Authority::generate("cluster", Validity::days_from(cluster::time::unix_now(), 10)).unwrap();
    let (a, a_http, a_link) = relay_with_link(&ca, &dir, "eu-1", "127.0.0.1:0");
    let (mut b, b_http, _) = relay_with_link(&ca, &dir, "asia-1", "127.0.0.1:0");
    let a_api = Http::new(a_http.clone(), reqwest::Client::new());
    let mut machine = machine_at(&a, a_http, "input");
    let b_api = Http::new(b_http, reqwest::Client::new());
    let mut viewers = vec![join(&b_api, b.udp, &viewer_token(MediaRole::Player, "player", Some(("eu-1", a_link))))];
    pump(&mut machine, &mut viewers, Duration::from_secs(2));
    send(&mut machine, &mut viewers, 0..100);
    viewers[0].client.send_data(b"from asia-1");
    pump(&mut machine, &mut viewers, Duration::from_millis(600));
    assert!(received(&viewers[0]).contains(&90), "the player plays at B");
    assert_eq!(machine.client.data, vec![b"from asia-1".to_vec()]);

    assert_eq!(b.signal_and_wait(libc::SIGKILL, Duration::from_secs(5)), None, "killed, not exited");
    let died = Instant::now();
    let mut viewers = vec![join(&a_api, a.udp, &viewer_token(MediaRole::Player, "player", None))];
    let mut i = 1000u64;
    let played = loop {
        send(&mut machine, &mut viewers, i..i + 20);
        i += 20;
        if received(&viewers[0]).iter().any(|&s| s >= 1000) {
            break died.elapsed();
        }
        assert!(died.elapsed() < Duration::from_secs(10), "the player did not play at A within 10 s");
    };
    eprintln!("the player played at the home relay {played:?} after its edge died");
    viewers[0].client.send_data(b"from eu-1");
    pump(&mut machine, &mut viewers, Duration::from_millis(600));
    assert_eq!(machine.client.data.last().map(Vec::as_slice), Some(&b"from eu-1"[..]), "its seat moved with it");
}
