//! The SFU in the real relay binary: WHIP and WHEP over HTTP with media tokens, and media on the
//! TURN port (one UDP port for both), driven by str0m clients on real loopback sockets.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use cluster::media::MediaRole;
use common::RelayProcess;
use common::webrtc_client::{Http, Peer, pump_all, vp8};
use str0m::media::{Direction, Mid};

mod common;

fn token(role: MediaRole, machine: &str, session: Option<&str>) -> String {
    common::media_token(role, machine, session, "tester")
}

#[test]
fn whip_publisher_and_whep_subscribers_share_the_turn_port() {
    let relay = RelayProcess::start("relay.toml", &[]);
    let http = Http::new(relay.sfu_http(), reqwest::Client::new());
    let sdp = "application/sdp";
    let publisher_token = token(MediaRole::Publisher, "cab-1", None);
    let player_token = token(MediaRole::Player, "cab-1", Some("s-1"));
    let spectator_token = token(MediaRole::Spectator, "cab-1", Some("s-1"));

    // Refusals, each with a JSON reason.
    let (mut machine, offer, pending) = Peer::new(relay.udp, Direction::SendOnly);
    for (path, tok, ctype, body, want) in [
        ("/whip/cab-1", None, sdp, offer.as_str(), 401),
        ("/whip/cab-1", Some("not-a-token"), sdp, offer.as_str(), 401),
        ("/whip/cab-2", Some(publisher_token.as_str()), sdp, offer.as_str(), 403),
        ("/whip/cab-1", Some(player_token.as_str()), sdp, offer.as_str(), 403),
        ("/whip/cab-1", Some(publisher_token.as_str()), "text/plain", offer.as_str(), 415),
        ("/whip/cab-1", Some(publisher_token.as_str()), sdp, "v=0 garbage", 400),
        ("/whep/s-2", Some(player_token.as_str()), sdp, offer.as_str(), 403),
        ("/whep/s-1", Some(publisher_token.as_str()), sdp, offer.as_str(), 403),
        ("/nope", None, sdp, "", 404),
    ] {
        let (status, _, body) = http.post(path, tok, ctype, body);
        assert_eq!(status, want, "{path}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }

    // The machine publishes; the answer's candidate is the TURN port.
    let (status, location, answer) = http.post("/whip/cab-1", Some(&publisher_token), sdp, &offer);
    assert_eq!(status, 201, "{answer}");
    let machine_location = location.expect("a Location");
    assert!(answer.contains(&format!("{} {} typ host", relay.udp.ip(), relay.udp.port())), "{answer}");
    machine.client.accept(pending, &answer);

    let mut viewers = Vec::new();
    for tok in [&player_token, &spectator_token] {
        let (mut peer, offer, pending) = Peer::new(relay.udp, Direction::RecvOnly);
        let (status, location, answer) = http.post("/whep/s-1", Some(tok), sdp, &offer);
        assert_eq!(status, 201, "{answer}");
        peer.client.accept(pending, &answer);
        viewers.push((peer, location.expect("a Location")));
    }
    let [(player, player_location), (spectator, _)] = &mut viewers[..] else { unreachable!() };
    pump_all(&mut [&mut machine, player, spectator], Duration::from_secs(2));
    for p in [&machine, &*player, &*spectator] {
        assert!(p.client.connected && p.client.open, "ICE+DTLS {} channel {}", p.client.connected, p.client.open);
    }

    // 300 video packets at 200/s, a key frame first.
    for i in 0..300u64 {
        machine.client.send_rtp(Instant::now(), true, 100 + i, i as u32 * 450, vp8(i.is_multiple_of(100), i));
        pump_all(&mut [&mut machine, player, spectator], Duration::from_millis(5));
    }
    pump_all(&mut [&mut machine, player, spectator], Duration::from_millis(300));
    for p in [&*player, &*spectator] {
        let video: Vec<&(Mid, u64, Vec<u8>)> = p.client.rtp.iter().filter(|(m, ..)| *m == p.client.video).collect();
        assert!(video.len() >= 297, "got {} of 300", video.len());
        for pair in video.windows(2) {
            assert!(pair[1].1 > pair[0].1, "in order");
        }
    }

    // The seat: the player's input reaches the machine, the spectator's does not.
    player.client.send_data(b"left");
    spectator.client.send_data(b"right");
    pump_all(&mut [&mut machine, player, spectator], Duration::from_millis(300));
    assert_eq!(machine.client.data, vec![b"left".to_vec()]);

    // Metrics: the machine's ingest bitrate while it sends, its subscribers, what was forwarded.
    for i in 300..560u64 {
        machine.client.send_rtp(Instant::now(), true, 100 + i, i as u32 * 450, vp8(false, i));
        pump_all(&mut [&mut machine, player, spectator], Duration::from_millis(5));
    }
    let m = relay.metrics();
    let bitrate = common::metric_value(&m, "relay_sfu_ingest_bitrate_bps{machine=\"cab-1\"}");
    assert!(bitrate > 100_000.0, "ingest bitrate {bitrate}\n{m}");
    assert_eq!(common::metric_value(&m, "relay_sfu_subscribers{machine=\"cab-1\"}"), 2.0);
    assert_eq!(common::metric_value(&m, "relay_sfu_peers"), 3.0);
    assert!(common::metric_value(&m, "relay_sfu_egress_packets_total") >= 594.0);
    assert_eq!(common::metric_value(&m, "relay_sfu_inputs_dropped_total"), 1.0);
    assert_eq!(common::metric_value(&m, "relay_sfu_peer_panics_total"), 0.0);

    // DELETE ends a subscription once; a wrong token cannot end someone else's.
    let path = player_location.clone();
    assert_eq!(http.delete(&path, &publisher_token), 403);
    assert_eq!(http.delete(&path, &player_token), 200);
    assert_eq!(http.delete(&path, &player_token), 404);
    assert_eq!(http.delete(&machine_location, &publisher_token), 200);
}

/// Junk shaped like the SFU's traffic: DTLS records, RTP, RTCP, STUN Binding requests naming a
/// live ICE ufrag (with a bad MESSAGE-INTEGRITY), truncated and random datagrams.
fn junk(rng: &mut impl rand::Rng, ufrag: &str) -> Vec<u8> {
    let len = rng.random_range(1..1400);
    let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    match rng.random_range(0..6) {
        0 => d[0] = rng.random_range(20..=63),
        1 if len >= 13 => {
            // A DTLS 1.2 record header: handshake or application data, any epoch and length.
            d[0] = if rng.random() { 22 } else { 23 };
            d[1] = 0xfe;
            d[2] = 0xfd;
        }
        2 if len >= 12 => {
            d[0] = 0x80 | (d[0] & 0x3f);
            d[1] = rng.random_range(96..=127) | if rng.random() { 0x80 } else { 0 };
        }
        3 if len >= 8 => {
            d[0] = 0x80 | (d[0] & 0x1f);
            d[1] = rng.random_range(200..=206);
        }
        4 => {
            // Binding request, USERNAME "<ufrag>:x", then garbage where the integrity goes.
            let user = format!("{ufrag}:x");
            let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
            m.extend((0..12).map(|_| rng.random::<u8>()));
            m.extend_from_slice(&[0x00, 0x06, 0, user.len() as u8]);
            m.extend_from_slice(user.as_bytes());
            m.resize(m.len().next_multiple_of(4), 0);
            m.extend_from_slice(&[0x00, 0x08, 0, 20]);
            m.extend((0..20).map(|_| rng.random::<u8>()));
            let body = (m.len() - 20) as u16;
            m[2..4].copy_from_slice(&body.to_be_bytes());
            m.truncate(rng.random_range(20..=m.len()));
            d = m;
        }
        _ => {}
    }
    d
}

#[test]
fn ten_seconds_of_junk_on_the_shared_port_leave_the_viewers_served() {
    let relay = RelayProcess::start("relay.toml", &[]);
    let http = Http::new(relay.sfu_http(), reqwest::Client::new());
    let sdp = "application/sdp";
    let (mut machine, offer, pending) = Peer::new(relay.udp, Direction::SendOnly);
    let (status, _, answer) = http.post("/whip/cab-1", Some(&token(MediaRole::Publisher, "cab-1", None)), sdp, &offer);
    assert_eq!(status, 201, "{answer}");
    machine.client.accept(pending, &answer);
    let ufrag = answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .expect("an ICE ufrag in the answer")
        .to_owned();
    let mut viewers = Vec::new();
    for role in [MediaRole::Player, MediaRole::Spectator] {
        let (mut peer, offer, pending) = Peer::new(relay.udp, Direction::RecvOnly);
        let (status, _, answer) = http.post("/whep/s-1", Some(&token(role, "cab-1", Some("s-1"))), sdp, &offer);
        assert_eq!(status, 201, "{answer}");
        peer.client.accept(pending, &answer);
        viewers.push(peer);
    }
    let [player, spectator] = &mut viewers[..] else { unreachable!() };
    pump_all(&mut [&mut machine, player, spectator], Duration::from_secs(2));
    assert!(player.client.connected && spectator.client.connected);

    // Junk from 64 other sockets at about 5000 datagrams a second, in a thread, for 10 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = {
        let (stop, ufrag, to) = (std::sync::Arc::clone(&stop), ufrag.clone(), relay.udp);
        std::thread::spawn(move || {
            let mut rng = rand::rng();
            let sockets: Vec<UdpSocket> = (0..64).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for s in &sockets {
                    let _ = s.send_to(&junk(&mut rng, &ufrag), to);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(12));
            }
            sent
        })
    };
    // Meanwhile the machine streams, and the viewers' and machine's own sockets also send junk
    // now and then (as an attacker spoofing their addresses would).
    let mut rng = rand::rng();
    let start = Instant::now();
    let mut per_second = Vec::new();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(10) {
        let (received_before, sent_before) = (player.client.rtp.len(), i);
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            machine.client.send_rtp(Instant::now(), true, 100 + i, i as u32 * 450, vp8(i.is_multiple_of(100), i));
            i += 1;
            if i.is_multiple_of(10) {
                for p in [&*player, &*spectator, &machine] {
                    let _ = p.socket.send_to(&junk(&mut rng, &ufrag), p.relay);
                }
            }
            pump_all(&mut [&mut machine, player, spectator], Duration::from_millis(5));
        }
        per_second.push(((player.client.rtp.len() - received_before) as u64, i - sent_before));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let junk_sent = sent.join().unwrap();
    pump_all(&mut [&mut machine, player, spectator], Duration::from_millis(300));

    // Every second of the ten, the player kept receiving what was sent (a ratio, not a rate:
    // on a loaded machine this loop may send fewer); in all, nearly everything.
    assert!(
        per_second.iter().all(|&(got, sent)| got * 10 >= sent * 8),
        "player's (received, sent) per second under junk: {per_second:?}"
    );
    for p in [&*player, &*spectator] {
        let video = p.client.rtp.iter().filter(|(m, ..)| *m == p.client.video).count() as u64;
        assert!(video * 100 >= i * 95, "received {video} of {i} under junk");
    }
    assert!(junk_sent >= 20_000, "only {junk_sent} junk datagrams sent");
    let m = relay.metrics();
    assert_eq!(common::metric_value(&m, "relay_sfu_peer_panics_total"), 0.0, "{m}");
    assert_eq!(common::metric_value(&m, "relay_sfu_peers"), 3.0, "{m}");
    println!("{junk_sent} junk datagrams in 10 s; player's (received, sent) per second: {per_second:?}");
}

#[test]
fn whip_over_https_with_the_configured_certificate() {
    let dir = common::temp_dir("sfu-tls");
    let (cert, key) = common::test_certificate(&dir, "sfu");

    // Bad TLS settings fail at start, naming the key.
    let missing = dir.join("missing.pem");
    for (args, key_name) in [
        (vec!["--sfu-tls-cert", missing.to_str().unwrap(), "--sfu-tls-key", key.to_str().unwrap()], "sfu.tls_cert"),
        (vec!["--sfu-tls-cert", cert.to_str().unwrap(), "--sfu-tls-key", cert.to_str().unwrap()], "sfu.tls_key"),
        (vec!["--sfu-tls-cert", cert.to_str().unwrap()], "sfu.tls_key"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("--config")
            .arg(common::config_path("relay.toml"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--sfu-http-listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(key_name), "{args:?}: {stderr}");
    }

    let relay = RelayProcess::start(
        "relay.toml",
        &["--sfu-tls-cert", cert.to_str().unwrap(), "--sfu-tls-key", key.to_str().unwrap()],
    );
    let base = relay.sfu_http();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let trusted = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let http = Http::new(base, reqwest::Client::builder().add_root_certificate(trusted).no_proxy().build().unwrap());
    let (mut machine, offer, pending) = Peer::new(relay.udp, Direction::SendOnly);
    let publisher = token(MediaRole::Publisher, "cab-1", None);
    let (status, _, body) = http.post("/whip/cab-1", None, "application/sdp", &offer);
    assert_eq!(status, 401, "{body}");
    let (status, location, answer) = http.post("/whip/cab-1", Some(&publisher), "application/sdp", &offer);
    assert_eq!(status, 201, "{answer}");
    machine.client.accept(pending, &answer);
    pump_all(&mut [&mut machine], Duration::from_secs(1));
    assert!(machine.client.connected, "ICE and DTLS with the SFU after WHIP over HTTPS");
    assert_eq!(http.delete(&location.unwrap(), &publisher), 200);
    // A client that does not trust the certificate gets nowhere.
    let untrusting = reqwest::Client::builder().no_proxy().build().unwrap();
    let refused = http.rt.block_on(untrusting.post(format!("{}/whip/cab-1", http.base)).send());
    assert!(refused.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Offers the WebRTC stack mishandled (a panic, a parser error carrying a pointer value, answers
/// no browser takes) get a 400 at WHIP and at WHEP whose JSON names the problem in our words, and
/// nothing panics (issue 26). The bad offers are a real client's, each broken in one way.
#[test]
fn bad_offers_get_a_400_naming_the_problem() {
    let relay = RelayProcess::start("relay.toml", &[]);
    let http = Http::new(relay.sfu_http(), reqwest::Client::new());
    let publisher_token = token(MediaRole::Publisher, "cab-1", None);
    let player_token = token(MediaRole::Player, "cab-1", Some("s-1"));
    let targets =
        [("/whip/cab-1", &publisher_token, Direction::SendOnly), ("/whep/s-1", &player_token, Direction::RecvOnly)];
    for (path, tok, direction) in targets {
        let (_peer, offer, _pending) = Peer::new(relay.udp, direction);
        let lines: Vec<&str> = offer.split("\r\n").collect();
        // An RTX payload type and its primary, in the first video m-line.
        let (rtx, primary) = lines
            .iter()
            .find_map(|l| {
                let (pt, apt) = l.strip_prefix("a=fmtp:")?.split_once(" apt=")?;
                Some((pt.to_owned(), apt.trim().to_owned()))
            })
            .unwrap_or_else(|| panic!("the client offers RTX: {offer}"));
        let video = lines.iter().find(|l| l.starts_with("m=video")).expect("a video m-line");
        // A primary the RTX payload type does not name (the client offers one codec only).
        let other = (96..128).map(|pt: u16| pt.to_string()).find(|pt| *pt != rtx && *pt != primary).unwrap();
        let mids: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("a=mid:")).collect();
        assert!(mids.len() >= 2, "two m-lines to give one mid: {offer}");
        let conflicting = offer.replace(
            &format!("a=fmtp:{rtx} apt={primary}\r\n"),
            &format!("a=fmtp:{rtx} apt={primary}\r\na=fmtp:{rtx} apt={other}\r\n"),
        );
        let duplicate = offer.replace(&format!("a=mid:{}\r\n", mids[1]), &format!("a=mid:{}\r\n", mids[0]));
        let m_video = video.split(' ').take(3).collect::<Vec<_>>().join(" ");
        let orphan = offer.replace(video, &format!("{m_video} {rtx}"));
        let (lo, hi) = if primary.parse::<u16>().unwrap() < other.parse::<u16>().unwrap() {
            (primary.as_str(), other.as_str())
        } else {
            (other.as_str(), primary.as_str())
        };
        let cases = [
            ("conflicting apt", conflicting, format!("rtx payload type {rtx} names two primaries ({lo}, {hi})")),
            ("not SDP", "hello".to_owned(), "not an SDP offer".to_owned()),
            ("empty", String::new(), "not an SDP offer: the body is empty".to_owned()),
            ("duplicate mid", duplicate, format!("two m-lines share mid {}", mids[0])),
            ("RTX without its primary", orphan, format!("rtx payload type {rtx} names primary {primary}")),
        ];
        for (name, body, want) in cases {
            let (status, _, answer) = http.post(path, Some(tok), "application/sdp", &body);
            assert_eq!(status, 400, "{path} {name}: {answer}");
            let json: serde_json::Value =
                serde_json::from_str(&answer).unwrap_or_else(|_| panic!("not JSON: {answer}"));
            let error = json["error"].as_str().unwrap_or_default();
            assert!(error.contains(&want), "{path} {name}: {error:?} does not say {want:?}");
            assert!(!answer.contains("0x") && !answer.contains("PointerOffset"), "{path} {name}: {answer}");
        }
        // The offer itself is fine.
        let (status, _, answer) = http.post(path, Some(tok), "application/sdp", &offer);
        assert_eq!(status, 201, "{path}: {answer}");
    }
    assert_eq!(relay.metric("relay_sfu_peer_panics_total"), 0.0);
}
