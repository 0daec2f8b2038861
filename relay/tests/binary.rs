//! Loopback tests against the real `relay` binary, started from the configs in `configs/`.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{RawClient, RelayProcess, channel_data, error_code, metric_value, peer_attr};
use rand::{Rng, SeedableRng};
use stun::message::{
    BINDING_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH,
    Message,
};
use turn::proto::channum::ChannelNumber;
use turn::proto::lifetime::Lifetime;

/// configs/relay.toml's example secret and realm (the local deployment's config).
const DEFAULT_SECRET: &str = "local-dev-secret-change-me";
const REALM: &str = "relay";
/// configs/relay-loopback.toml's secret.
const LOOPBACK_SECRET: &str = "loopback-test-secret";

#[test]
fn default_config_refuses_internal_peers() {
    let relay = RelayProcess::start("relay.toml", &[]);
    let mut client = RawClient::rest(relay.udp, DEFAULT_SECRET, 600, REALM);
    let relayed = client.allocate().expect("Allocate with a valid REST credential succeeds");
    assert_eq!(relayed.ip(), relay.udp.ip());
    for peer in ["127.0.0.1:9", "10.0.0.1:9", "169.254.169.254:80", "[::ffff:127.0.0.1]:9", "[::1]:9"] {
        let resp = client.call(METHOD_CREATE_PERMISSION, &[&peer_attr(peer)]);
        assert_eq!(error_code(&resp), Some(403), "CreatePermission to {peer}");
    }
    let resp = client.call(METHOD_CREATE_PERMISSION, &[&peer_attr("8.8.8.8:53")]);
    assert_eq!(error_code(&resp), None, "a global address is fine");
    assert_eq!(relay.metric("relay_error_responses_total{code=\"403\"}"), 5.0);
}

/// The same refusals over TCP and over TLS: the peer checks do not depend on how the client
/// reached the relay.
#[test]
fn default_config_refuses_internal_peers_over_tcp_and_tls() {
    let dir = common::temp_dir("ssrf-tls");
    let (cert, key) = common::test_certificate(&dir, "ssrf");
    let relay = RelayProcess::start(
        "relay.toml",
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--tls-listen", "127.0.0.1:0"],
    );
    let tcp = relay.tcp.expect("TCP is on by default");
    assert_eq!(tcp.port(), relay.udp.port(), "TCP shares the UDP port number");
    for (name, mut client) in [
        ("tcp", RawClient::rest_tcp(tcp, DEFAULT_SECRET, 600, REALM)),
        ("tls", RawClient::rest_tls(relay.tls[0], DEFAULT_SECRET, 600, REALM, &cert)),
    ] {
        let relayed = client.allocate().unwrap_or_else(|e| panic!("{name}: Allocate got {e}"));
        assert_eq!(relayed.ip(), relay.udp.ip(), "{name}: a UDP relay on the relay's address");
        for peer in [
            "127.0.0.1:9",
            "127.0.0.1:3478",
            "10.0.0.1:9",
            "192.168.1.1:9",
            "169.254.169.254:80",
            "0.0.0.0:9",
            "[::ffff:127.0.0.1]:9",
            "[::1]:9",
            "[64:ff9b::a9fe:a9fe]:80",
            "[fd00::1]:9",
        ] {
            let resp = client.call(METHOD_CREATE_PERMISSION, &[&peer_attr(peer)]);
            assert_eq!(error_code(&resp), Some(403), "{name}: CreatePermission to {peer}");
            let resp = client.call(METHOD_CHANNEL_BIND, &[&ChannelNumber(0x4000), &peer_attr(peer)]);
            assert_eq!(error_code(&resp), Some(403), "{name}: ChannelBind to {peer}");
        }
        let resp = client.call(METHOD_CREATE_PERMISSION, &[&peer_attr("8.8.8.8:53")]);
        assert_eq!(error_code(&resp), None, "{name}: a global address is fine");
    }
    // Both clients are gone (dropped after their turn): their connections closed, and their
    // allocations with them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.metric("relay_allocations_active") != 0.0 {
        assert!(Instant::now() < deadline, "allocations outlived their connections");
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = relay.metrics();
    assert_eq!(metric_value(&m, "relay_connections_open"), 0.0, "{m}");
    assert_eq!(metric_value(&m, "relay_connections_total{event=\"accepted\"}"), 2.0, "{m}");
    assert_eq!(metric_value(&m, "relay_connections_total{event=\"closed_by_client\"}"), 2.0, "{m}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn auth_failures_get_the_right_codes_and_both_secrets_work() {
    let relay = RelayProcess::start("relay.toml", &["--auth-secret", "old-secret", "--auth-secret", "new-secret"]);
    // Expired REST username: 401 at Allocate.
    let mut expired = RawClient::rest(relay.udp, "new-secret", -10, REALM);
    assert_eq!(expired.allocate(), Err(401));
    // Wrong password (signed by a secret the relay does not have): 401.
    let mut wrong = RawClient::rest(relay.udp, "some-other-secret", 600, REALM);
    assert_eq!(wrong.allocate(), Err(401));
    // Tampered nonce, correctly signed: 438, and the 438 carries a nonce that works.
    let mut tampered = RawClient::rest(relay.udp, "new-secret", 600, REALM);
    let udp = turn::proto::reqtrans::RequestedTransport { protocol: turn::proto::PROTO_UDP };
    let request = tampered.build(stun::message::METHOD_ALLOCATE, &[&udp]);
    let challenge = tampered.exchange(&request);
    assert_eq!(error_code(&challenge), Some(401));
    let nonce = stun::textattrs::TextAttribute::get_from_as(&challenge, stun::attributes::ATTR_NONCE).unwrap().text;
    let mut bytes = nonce.into_bytes();
    bytes[30] = if bytes[30] == b'0' { b'1' } else { b'0' };
    tampered.nonce = Some(String::from_utf8(bytes).unwrap());
    let request = tampered.build(stun::message::METHOD_ALLOCATE, &[&udp]);
    let resp = tampered.exchange(&request);
    assert_eq!(error_code(&resp), Some(438));
    let fresh = stun::textattrs::TextAttribute::get_from_as(&resp, stun::attributes::ATTR_NONCE).unwrap().text;
    tampered.nonce = Some(fresh);
    let request = tampered.build(stun::message::METHOD_ALLOCATE, &[&udp]);
    let resp = tampered.exchange(&request);
    assert_eq!(error_code(&resp), None, "the fresh nonce from the 438 works");
    // A credential signed by either secret is accepted.
    for secret in ["old-secret", "new-secret"] {
        let mut c = RawClient::rest(relay.udp, secret, 600, REALM);
        assert!(c.allocate().is_ok(), "credential signed by {secret}");
    }
    let m = relay.metrics();
    assert_eq!(metric_value(&m, "relay_auth_failures_total{reason=\"expired\"}"), 1.0);
    // At least one: the client retries if the 401 carries a newer nonce (a second passed).
    assert!(metric_value(&m, "relay_auth_failures_total{reason=\"bad_integrity\"}") >= 1.0);
    assert_eq!(metric_value(&m, "relay_auth_failures_total{reason=\"stale_nonce\"}"), 1.0);
    assert_eq!(metric_value(&m, "relay_allocations_active"), 3.0);
}

/// Sends `n` datagrams of `len` bytes each way through a channel and checks the counters.
#[test]
fn metrics_count_known_traffic() {
    let relay = RelayProcess::start("relay-loopback.toml", &[]);
    let before = relay.metrics();
    assert!(before.contains("relay_allocations_active 0"), "{before}");
    let mut client = RawClient::rest(relay.udp, LOOPBACK_SECRET, 600, REALM);
    let relayed = client.allocate().expect("allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let peer_addr = peer.local_addr().unwrap().to_string();
    let resp = client.call(METHOD_CHANNEL_BIND, &[&ChannelNumber(0x4000), &peer_attr(&peer_addr)]);
    assert_eq!(error_code(&resp), None);

    let (n, len) = (100, 200);
    let payload = vec![0xAB; len];
    let mut buf = [0u8; 2048];
    for _ in 0..n {
        client.socket.send_to(&channel_data(0x4000, &payload), relay.udp).unwrap();
        let (got, from) = peer.recv_from(&mut buf).expect("peer receives");
        assert_eq!((got, from), (len, relayed));
        peer.send_to(&payload, relayed).unwrap();
        let (got, _) = client.socket.recv_from(&mut buf).expect("client receives");
        assert_eq!(&buf[..got], &channel_data(0x4000, &payload)[..]);
    }
    client.socket.send_to(&[0x40, 0x05, 0x00, 0x01, 0x00], relay.udp).unwrap(); // unbound channel
    client.socket.send_to(b"\xffnot turn at all", relay.udp).unwrap();
    // Counters are read at scrape time; give the worker a moment for the last two datagrams.
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = relay.metrics();
        if metric_value(&m, "relay_dropped_packets_total{reason=\"not_turn\"}") >= 1.0 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let v = |s: &str| metric_value(&m, s);
    assert_eq!(v("relay_allocations_active"), 1.0);
    assert_eq!(v("relay_allocations_created_total"), 1.0);
    assert_eq!(v("relay_relayed_packets_total{direction=\"client_to_peer\"}"), n as f64);
    assert_eq!(v("relay_relayed_packets_total{direction=\"peer_to_client\"}"), n as f64);
    assert_eq!(v("relay_relayed_bytes_total{direction=\"client_to_peer\"}"), (n * len) as f64);
    assert_eq!(v("relay_relayed_bytes_total{direction=\"peer_to_client\"}"), (n * len) as f64);
    assert_eq!(v("relay_dropped_packets_total{reason=\"no_channel\"}"), 1.0);
    assert_eq!(v("relay_dropped_packets_total{reason=\"not_turn\"}"), 1.0);
    assert_eq!(v("relay_requests_total{method=\"allocate\"}"), 2.0, "challenge + authenticated");
    assert_eq!(v("relay_requests_total{method=\"channel_bind\"}"), 1.0);
    assert_eq!(v("relay_auth_challenges_total"), 1.0);
    assert!(m.contains("process_resident_memory_bytes"), "process metrics are exported");

    // Deallocate: the gauge goes back to 0.
    let resp = client.call(METHOD_REFRESH, &[&Lifetime(Duration::ZERO)]);
    assert_eq!(error_code(&resp), None);
    assert_eq!(relay.metric("relay_allocations_active"), 0.0);
    let health =
        std::process::Command::new("curl").args(["-sS", &format!("http://{}/healthz", relay.admin)]).output().unwrap();
    // Its capacity: the 20,001 ports the tests' relays get (configs/relay-loopback.toml: max_total = 0).
    assert_eq!(String::from_utf8_lossy(&health.stdout), r#"{"allocations":0,"capacity":20001,"status":"ok"}"#);
}

#[test]
fn random_bytes_for_ten_seconds_leave_it_serving() {
    let mut relay = RelayProcess::start("relay-loopback.toml", &[]);
    // Some real state to disturb: an allocation with a channel to a live peer.
    let mut client = RawClient::rest(relay.udp, LOOPBACK_SECRET, 600, REALM);
    let relayed = client.allocate().expect("allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let resp = client
        .call(METHOD_CHANNEL_BIND, &[&ChannelNumber(0x4000), &peer_attr(&peer.local_addr().unwrap().to_string())]);
    assert_eq!(error_code(&resp), None);

    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed);
    let senders: Vec<UdpSocket> = (0..8).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut buf = [0u8; 1500];
    while start.elapsed() < Duration::from_secs(10) {
        for s in &senders {
            let len = rng.random_range(0..1500);
            rng.fill(&mut buf[..len]);
            // Bias the first byte towards the STUN and ChannelData ranges so the parsers get work.
            match rng.random_range(0..4) {
                0 if len > 0 => buf[0] = rng.random_range(0..4),
                1 if len > 0 => buf[0] = rng.random_range(0x40..0x50),
                2 if len >= 20 => {
                    buf[0] = rng.random_range(0..2);
                    buf[2..4].copy_from_slice(&((len - 20) as u16 & !3).to_be_bytes());
                    buf[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
                }
                _ => {}
            }
            // Also at the relay port, as a peer would.
            let target = if sent.is_multiple_of(5) { relayed } else { relay.udp };
            let _ = s.send_to(&buf[..len], target);
            sent += 1;
        }
        if sent.is_multiple_of(2000) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(relay.is_running(), "relay survived {sent} random datagrams");
    let binding = {
        let mut m = Message::new();
        m.build(&[Box::new(BINDING_REQUEST), Box::new(stun::agent::TransactionId::new())]).unwrap();
        m
    };
    let resp = client.exchange(&binding);
    assert_eq!(resp.typ.class, CLASS_SUCCESS_RESPONSE, "still answers Binding");
    // The allocation made before the noise still relays.
    client.socket.send_to(&channel_data(0x4000, b"still here"), relay.udp).unwrap();
    let mut got = [0u8; 64];
    let (n, _) = peer.recv_from(&mut got).expect("relayed after the noise");
    assert_eq!(&got[..n], b"still here");
    let m = relay.metrics();
    let dropped: f64 = m
        .lines()
        .filter(|l| l.starts_with("relay_dropped_packets_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(dropped > 1000.0, "drop counters moved: {dropped}");
    assert!(metric_value(&m, "relay_dropped_packets_total{reason=\"malformed\"}") > 0.0);
}

#[test]
fn sigterm_drains_and_sigint_exits_at_once() {
    let mut relay = RelayProcess::start("relay-loopback.toml", &["--shutdown-grace-secs", "30"]);
    let mut client = RawClient::rest(relay.udp, LOOPBACK_SECRET, 600, REALM);
    client.allocate().expect("allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let resp = client
        .call(METHOD_CHANNEL_BIND, &[&ChannelNumber(0x4000), &peer_attr(&peer.local_addr().unwrap().to_string())]);
    assert_eq!(error_code(&resp), None);

    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(relay.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.metric("relay_draining") != 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(relay.is_running(), "an allocation is active, so the relay waits");
    let mut late = RawClient::rest(relay.udp, LOOPBACK_SECRET, 600, REALM);
    assert_eq!(late.allocate(), Err(508), "no new allocations while draining");
    client.socket.send_to(&channel_data(0x4000, b"during drain"), relay.udp).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = peer.recv_from(&mut buf).expect("existing allocation still relays");
    assert_eq!(&buf[..n], b"during drain");
    let health = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{}/healthz", relay.admin)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "503");
    // The last allocation ends: the relay exits cleanly well before the 30 s grace.
    assert_eq!(error_code(&client.call(METHOD_REFRESH, &[&Lifetime(Duration::ZERO)])), None);
    assert_eq!(relay.wait(Duration::from_secs(5)), Some(0), "exits once drained");

    // SIGINT does not wait for allocations.
    let mut relay = RelayProcess::start("relay-loopback.toml", &["--shutdown-grace-secs", "30"]);
    let mut client = RawClient::rest(relay.udp, LOOPBACK_SECRET, 600, REALM);
    client.allocate().expect("allocate");
    assert_eq!(relay.signal_and_wait(libc::SIGINT, Duration::from_secs(5)), Some(0));

    // A SIGTERM with allocations that never end exits after the grace period.
    let mut relay = RelayProcess::start("relay-loopback.toml", &["--shutdown-grace-secs", "1"]);
    let mut client = RawClient::rest(relay.udp, LOOPBACK_SECRET, 600, REALM);
    client.allocate().expect("allocate");
    let start = Instant::now();
    assert_eq!(relay.signal_and_wait(libc::SIGTERM, Duration::from_secs(10)), Some(0));
    assert!(start.elapsed() >= Duration::from_millis(900), "waited for the grace period");
}

#[test]
fn bad_config_fails_at_start_naming_the_key() {
    let cases: &[(&[&str], &str)] = &[
        (&["--listen", "not-an-address"], "server.listen"),
        (&["--min-port", "60000", "--max-port", "50000"], "relay.min_port"),
        (&["--allow-peer", "10.0.0.0/40"], "peers.allow"),
        (&["--log-format", "xml"], "log.format"),
    ];
    for (args, key) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("--config")
            .arg(common::config_path("relay.toml"))
            .args(*args)
            .arg("check-config")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{args:?}: {err}");
    }
    // A file with an unknown key.
    let dir = std::env::temp_dir().join(format!("relay-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:3478\"\nworkerz = 2\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay")).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("workerz"));
    // The listening port already taken: the relay names the key and exits non-zero.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = taken.local_addr().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("--config")
        .arg(common::config_path("relay.toml"))
        .args(["--listen", &addr.to_string(), "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen"));
}

#[test]
fn credentials_command_prints_an_ice_server_the_relay_accepts() {
    let relay = RelayProcess::start("relay.toml", &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("--config")
        .arg(common::config_path("relay.toml"))
        .args(["--listen", &relay.udp.to_string(), "--min-port", "10000", "--max-port", "30000"])
        .args(["credentials", "--ttl", "60", "--id", "player1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let urls = entry["urls"].as_array().unwrap();
    assert_eq!(urls[1], format!("turn:127.0.0.1:{}?transport=udp", relay.udp.port()));
    assert_eq!(urls[2], format!("turn:127.0.0.1:{}?transport=tcp", relay.udp.port()), "TCP on the same port");
    let username = entry["username"].as_str().unwrap();
    assert!(username.ends_with(":player1"));
    let mut client = RawClient::new(relay.udp, username, entry["credential"].as_str().unwrap(), REALM);
    assert!(client.allocate().is_ok());
    let mut over_tcp = RawClient::new(relay.udp, username, entry["credential"].as_str().unwrap(), REALM);
    over_tcp.stream = Some(Box::new(std::net::TcpStream::connect(relay.tcp.unwrap()).unwrap()));
    assert!(over_tcp.allocate().is_ok(), "the same credential over TCP");
}

#[test]
fn every_example_config_parses() {
    // configs/ holds every binary's examples (signaling.toml, ...): the relay's are relay*.toml.
    let mut seen = 0;
    for entry in std::fs::read_dir(common::repo_root().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("relay") && name.ends_with(".toml") {
            seen += 1;
            let file = relay::config::FileConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            relay::config::Config::from_file(&file).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
    }
    assert!(seen >= 2, "relay.toml and relay-loopback.toml at least");
}

#[test]
fn json_logs_carry_one_span_per_allocation() {
    let relay = RelayProcess::start("relay-loopback.toml", &["--log-format", "json"]);
    let mut client = RawClient::rest(relay.udp, LOOPBACK_SECRET, 600, REALM);
    let relayed = client.allocate().expect("allocate");
    assert_eq!(error_code(&client.call(METHOD_REFRESH, &[&Lifetime(Duration::ZERO)])), None);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut events = Vec::new();
    while events.len() < 2 && Instant::now() < deadline {
        if let Ok(line) = relay.logs.recv_timeout(Duration::from_millis(100)) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if v["span"]["name"] == "allocation" {
                events.push(v);
            }
        }
    }
    assert_eq!(events.len(), 2, "created and closed, both inside the allocation's span");
    assert_eq!(events[0]["fields"]["message"], "allocation created");
    assert_eq!(events[1]["fields"]["message"], "allocation closed");
    for e in &events {
        assert_eq!(e["span"]["relay"], relayed.port().to_string());
        assert_eq!(e["span"]["client"], client.socket.local_addr().unwrap().to_string());
    }
}

/// IPv6 and dual stack (RFC 6156) on the real binary: one `[::]` listener serves both families;
/// an IPv6 client gets an IPv6 relayed address and relays to an IPv6 peer on ::1 (allowed by the
/// loopback config), an IPv4 client gets IPv4, and IPv6's non-global ranges stay refused.
#[test]
fn dual_stack_listener_relays_each_family_and_refuses_ipv6_private_ranges() {
    let relay =
        RelayProcess::start_on("relay-loopback.toml", "[::]:0", &["--relay-ip", "127.0.0.1", "--relay-ipv6", "::1"]);
    let port = relay.udp.port();
    let v6_server: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let v4_server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut c6 = RawClient::rest(v6_server, LOOPBACK_SECRET, 600, REALM);
    let relayed6 = c6.allocate().expect("IPv6 allocate");
    assert_eq!(relayed6.ip(), "::1".parse::<std::net::IpAddr>().unwrap(), "the family the client came with");
    let peer = UdpSocket::bind("[::1]:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let resp =
        c6.call(METHOD_CHANNEL_BIND, &[&ChannelNumber(0x4000), &peer_attr(&peer.local_addr().unwrap().to_string())]);
    assert_eq!(error_code(&resp), None);
    let mut buf = [0u8; 2048];
    for i in 0..20u8 {
        c6.socket.send_to(&channel_data(0x4000, &[i; 100]), v6_server).unwrap();
        let (n, from) = peer.recv_from(&mut buf).expect("the IPv6 peer receives");
        assert_eq!((n, from), (100, relayed6));
        peer.send_to(&[i; 50], relayed6).unwrap();
        let (n, _) = c6.socket.recv_from(&mut buf).expect("the IPv6 client receives");
        assert_eq!(&buf[..n], &channel_data(0x4000, &[i; 50])[..]);
    }
    // IPv6 peers outside the allow list are refused as IPv4 ones are; IPv4 peers get 443.
    for blocked in ["[fe80::1]:9", "[fd00::1]:9", "[::]:9", "[2001:db8::1]:9", "[ff02::1]:9"] {
        let resp = c6.call(METHOD_CREATE_PERMISSION, &[&peer_attr(blocked)]);
        assert_eq!(error_code(&resp), Some(403), "{blocked}");
    }
    let resp = c6.call(METHOD_CREATE_PERMISSION, &[&peer_attr("127.0.0.1:9")]);
    assert_eq!(error_code(&resp), Some(443));

    // The same port over IPv4 gives IPv4.
    let mut c4 = RawClient::rest(v4_server, LOOPBACK_SECRET, 600, REALM);
    let relayed4 = c4.allocate().expect("IPv4 allocate");
    assert_eq!(relayed4.ip(), "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    let m = relay.metrics();
    assert_eq!(metric_value(&m, "relay_allocations_active"), 2.0);
    assert_eq!(metric_value(&m, "relay_workers"), 4.0, "two per family");
}

/// A burst from a peer bigger than what a TCP/TLS worker reads from one relay socket per turn
/// (8 batches of 32 datagrams) reaches the TCP client whole, right away: what is left after the
/// budget is read on the next turn, not only when the peer sends again (epoll is edge-triggered).
/// Before the worker kept such sockets pending, one run in three left the burst's tail behind.
#[test]
fn tcp_client_gets_a_whole_burst_from_its_peer() {
    const BURST: u32 = 600;
    let relay = RelayProcess::start("relay-loopback.toml", &[]);
    let mut client = RawClient::rest_tcp(relay.tcp.expect("TURN over TCP is on"), LOOPBACK_SECRET, 600, REALM);
    let relayed = client.allocate().expect("Allocate over TCP");
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let resp = client.call(METHOD_CREATE_PERMISSION, &[&peer_attr(&peer.local_addr().unwrap().to_string())]);
    assert_eq!(error_code(&resp), None, "CreatePermission for the loopback peer");
    // Sent 32 at a time (sendmmsg), faster than the worker reads, so that more than its budget
    // is queued when it wakes.
    let mut queue = relay::shell::udp::SendQueue::new();
    let payloads: Vec<[u8; 4]> = (0..BURST).map(u32::to_be_bytes).collect();
    for chunk in payloads.chunks(relay::shell::udp::BATCH) {
        let mut batch = relay::shell::udp::SendBatch::new(&mut queue, std::os::fd::AsRawFd::as_raw_fd(&peer));
        for p in chunk {
            batch.push(relayed, p);
        }
        let sent = batch.flush();
        assert_eq!((sent.dropped_full, sent.dropped_error), (0, 0), "the peer sent the whole burst");
    }
    // Each datagram comes as a Data indication, in order; the stream's read timeout (5 s) fails
    // the test if some stay behind.
    for i in 0..BURST {
        let frame = client.read_message();
        let mut m = Message::new();
        m.unmarshal_binary(&frame).expect("a Data indication");
        let mut data = turn::proto::data::Data::default();
        data.get_from(&m).expect("a DATA attribute");
        assert_eq!(data.0, i.to_be_bytes(), "datagram {i} of {BURST}");
    }
    assert_eq!(relay.metric("relay_relayed_packets_total{direction=\"peer_to_client\"}"), f64::from(BURST));
}

/// Counts STUN responses arriving on a byte stream read with a short timeout: bytes are kept
/// until a whole frame is in (RFC 8656 §12.5 framing).
struct FrameCounter {
    buf: Vec<u8>,
    frames: usize,
}

impl FrameCounter {
    fn poll(&mut self, stream: &mut dyn common::Stream) {
        let mut chunk = [0u8; 16384];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => panic!("the relay closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                Err(e) => panic!("reading from the relay: {e}"),
            }
        }
        while self.buf.len() >= 4 {
            let len = 20 + usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
            if self.buf.len() < len {
                break;
            }
            self.buf.drain(..len);
            self.frames += 1;
        }
    }
}

/// `limits.total_mbps` and `limits.unauthenticated_total` are relay-wide: a UDP, a TCP and a TLS
/// client at once, each served by its own core (two UDP workers, each with a TCP and a TLS
/// listener), together get the configured figure. When each core had an even share of it per UDP
/// worker, the three got half of it each: 1.5 times the figure.
#[test]
fn relay_wide_limits_hold_with_udp_tcp_and_tls_together() {
    use std::io::Write;
    const TOTAL_BPS: f64 = 1_000_000.0; // --total-mbps 8
    const ANSWERS: f64 = 100.0; // --unauthenticated-total 100
    let dir = common::temp_dir("limits");
    let (cert, key) = common::test_certificate(&dir, "limits");
    let relay = RelayProcess::start(
        "relay-loopback.toml",
        &[
            "--workers",
            "2",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-listen",
            "127.0.0.1:0",
            "--total-mbps",
            "8",
            "--unauthenticated-per-ip",
            "0",
            "--unauthenticated-total",
            "100",
        ],
    );
    let tcp = relay.tcp.expect("TURN over TCP is on");

    // Bandwidth: each client sends 1 MB/s of ChannelData to one peer for four seconds.
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let peer_addr = peer.local_addr().unwrap().to_string();
    let mut clients = [
        RawClient::rest(relay.udp, LOOPBACK_SECRET, 600, REALM),
        RawClient::rest_tcp(tcp, LOOPBACK_SECRET, 600, REALM),
        RawClient::rest_tls(relay.tls[0], LOOPBACK_SECRET, 600, REALM, &cert),
    ];
    for (i, c) in clients.iter_mut().enumerate() {
        c.allocate().unwrap_or_else(|e| panic!("client {i}: Allocate got {e}"));
        let resp = c.call(METHOD_CHANNEL_BIND, &[&ChannelNumber(0x4000), &peer_attr(&peer_addr)]);
        assert_eq!(error_code(&resp), None, "client {i}: ChannelBind");
    }
    let received = std::thread::spawn(move || {
        let (mut bytes, mut buf) = (0usize, [0u8; 2048]);
        let mut quiet = 0;
        while quiet < 5 {
            match peer.recv(&mut buf) {
                Ok(n) => (bytes, quiet) = (bytes + n, 0),
                Err(_) => quiet += 1,
            }
        }
        (bytes, Instant::now())
    });
    let frame = channel_data(0x4000, &[7u8; 1000]);
    let start = Instant::now();
    let mut sent = 0usize;
    while start.elapsed() < Duration::from_secs(4) {
        for c in &mut clients {
            for _ in 0..10 {
                match c.stream.as_deref_mut() {
                    Some(s) => s.write_all(&frame).expect("write to the relay"),
                    None => _ = c.socket.send_to(&frame, relay.udp).expect("send to the relay"),
                }
            }
            sent += 10 * 1000;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (bytes, end) = received.join().unwrap();
    // The peer stops after a second of quiet: the relay's own window is shorter than this one.
    let elapsed = (end - start).as_secs_f64() - 1.0;
    let allowed = TOTAL_BPS + TOTAL_BPS * elapsed;
    eprintln!("bandwidth: the peer got {bytes} bytes in {elapsed:.2} s, the budget was {allowed}");
    assert!(sent as f64 > 1.5 * allowed, "the clients offered {sent} bytes, not enough to test a cap of {allowed}");
    assert!(
        (bytes as f64) <= allowed + 3.0 * 65_536.0,
        "the peer got {bytes} bytes in {elapsed:.2} s: more than the relay-wide budget of {allowed}"
    );
    assert!(bytes as f64 >= 0.6 * allowed, "the peer got {bytes} bytes in {elapsed:.2} s: far below {allowed}");
    assert!(relay.metric("relay_dropped_packets_total{reason=\"bandwidth_cap\"}") > 0.0);
    drop(clients);

    // Unauthenticated answers: each transport sends 300 unsigned Binding requests a second for
    // three seconds; the relay answers 100 a second in all (and its burst, one second's worth).
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let mut streams = [
        common::connect_stream(tcp, None, Duration::from_millis(1)),
        common::connect_stream(relay.tls[0], Some(&cert), Duration::from_millis(1)),
    ];
    let mut counters = [FrameCounter { buf: Vec::new(), frames: 0 }, FrameCounter { buf: Vec::new(), frames: 0 }];
    let mut udp_answers = 0usize;
    let binding = |_: usize| {
        let mut m = Message::new();
        m.typ = BINDING_REQUEST;
        m.new_transaction_id().unwrap();
        m.write_header();
        m.raw
    };
    let start = Instant::now();
    let mut requests = 0;
    let mut buf = [0u8; 2048];
    while start.elapsed() < Duration::from_secs(3) {
        for _ in 0..3 {
            let request = binding(requests);
            udp.send_to(&request, relay.udp).unwrap();
            for s in &mut streams {
                s.write_all(&request).expect("write to the relay");
            }
            requests += 1;
        }
        while let Ok(n) = udp.recv(&mut buf) {
            udp_answers += usize::from(n > 0);
        }
        for (s, c) in streams.iter_mut().zip(&mut counters) {
            c.poll(s.as_mut());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // What is still on its way.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(500) {
        while let Ok(n) = udp.recv(&mut buf) {
            udp_answers += usize::from(n > 0);
        }
        for (s, c) in streams.iter_mut().zip(&mut counters) {
            c.poll(s.as_mut());
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let answers = udp_answers + counters.iter().map(|c| c.frames).sum::<usize>();
    let allowed = ANSWERS + ANSWERS * elapsed;
    eprintln!(
        "answers: {answers} in {elapsed:.2} s (udp {udp_answers}, tcp {}, tls {}), the budget was {allowed}",
        counters[0].frames, counters[1].frames
    );
    assert!(3.0 * requests as f64 > 1.5 * allowed, "only {requests} requests per transport");
    assert!(
        answers as f64 <= allowed + 3.0,
        "{answers} answers in {elapsed:.2} s (udp {udp_answers}, tcp {}, tls {}): more than {allowed}",
        counters[0].frames,
        counters[1].frames
    );
    assert!(answers as f64 >= 0.6 * allowed, "{answers} answers in {elapsed:.2} s: far below {allowed}");
    assert!(udp_answers > 0 && counters.iter().all(|c| c.frames > 0), "every transport got answers");
    assert!(relay.metric("relay_dropped_packets_total{reason=\"rate_limited\"}") > 0.0);
    std::fs::remove_dir_all(dir).ok();
}
