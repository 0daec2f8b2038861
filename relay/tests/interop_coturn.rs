//! Interop with a TURN client nobody here wrote: coturn's `turnutils_uclient`, with
//! `turnutils_peer` as the echo peer, against the relay started from
//! `configs/relay-loopback.toml` (loopback peers allowed), authenticating with the TURN REST
//! secret (`-W`), over UDP, TCP (`-t`) and TLS (`-t -S`, a test certificate). `scripts/test.sh` installs the Debian `coturn` package for these tools; if they
//! are missing the tests fail, saying so, rather than skip.

mod common;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::RelayProcess;

const SECRET: &str = "loopback-test-secret";

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(name: &str) -> String {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().expect("sh");
    assert!(
        found.status.success(),
        "{name} is not installed: run scripts/test.sh, which installs the Debian package coturn"
    );
    name.to_string()
}

/// Starts turnutils_peer (a UDP echo server) on its default port, 3480.
fn start_peer() -> Peer {
    let port = 3480;
    if UdpSocket::bind(("127.0.0.1", port)).is_err() {
        panic!("UDP port {port} (turnutils_peer's default) is taken; stop whatever holds it");
    }
    // Owned by `Peer` at once, whose Drop kills and reaps it on every path.
    let peer = Peer(
        Command::new(tool("turnutils_peer"))
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnutils_peer"),
    );
    // Wait until it answers.
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    for _ in 0..50 {
        probe.send_to(b"ping", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 16];
        if probe.recv_from(&mut buf).is_ok() {
            return peer;
        }
    }
    panic!("turnutils_peer did not start");
}

struct Report {
    lost: u64,
    output: String,
}

/// Runs exactly `turnutils_uclient -W <secret> -e 127.0.0.1 -n <n> -m 10 -l 170 [extra] 127.0.0.1`
/// (default ports: the relay on 3478, the peer on 3480) and parses its "Total lost packets" line.
/// 10 clients × n messages of 170 bytes, every 20 ms.
fn uclient(n: u32, extra: &[&str]) -> Report {
    uclient_with(SECRET, n, extra)
}

/// `uclient` with another TURN REST secret.
fn uclient_with(secret: &str, n: u32, extra: &[&str]) -> Report {
    let out = Command::new(tool("turnutils_uclient"))
        .args(["-W", secret, "-e", "127.0.0.1", "-n", &n.to_string(), "-m", "10", "-l", "170"])
        .args(extra)
        .arg("127.0.0.1")
        .output()
        .expect("run turnutils_uclient");
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "uclient failed:\n{output}");
    let lost = output
        .lines()
        .find_map(|l| l.split("Total lost packets ").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no loss report in uclient output:\n{output}"));
    Report { lost, output }
}

/// The relay's relayed, dropped and connection counters, for a failure message: where a lost
/// packet went missing.
fn counters(relay: &RelayProcess) -> String {
    let m = relay.metrics();
    let wanted = [
        "relay_relayed_packets_total",
        "relay_dropped_packets_total",
        "relay_connections_total",
        "relay_requests_total",
    ];
    m.lines().filter(|l| !l.starts_with('#') && wanted.iter().any(|w| l.starts_with(w))).collect::<Vec<_>>().join("\n")
}

fn relayed(relay: &RelayProcess) -> (f64, f64) {
    let m = relay.metrics();
    (
        common::metric_value(&m, "relay_relayed_packets_total{direction=\"client_to_peer\"}"),
        common::metric_value(&m, "relay_relayed_packets_total{direction=\"peer_to_client\"}"),
    )
}

/// The tests share turnutils_peer's port 3480, so they take turns.
static PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// UDP and TCP, both modes each, in one test: they share the default ports 3478 and 3480.
#[test]
fn uclient_udp_and_tcp_channel_and_send_indication_modes_zero_loss() {
    let _ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    if UdpSocket::bind("127.0.0.1:3478").is_err() {
        panic!("UDP port 3478 is taken (a relay or coturn running here?); the interop test needs it");
    }
    let relay = RelayProcess::start_on("relay-loopback.toml", "127.0.0.1:3478", &[]);
    let _peer = start_peer();

    // Channel mode: uclient binds channels and sends ChannelData.
    let report = uclient(1000, &[]);
    assert_eq!(report.lost, 0, "channel mode lost packets:\n{}", report.output);
    let (to_peer, to_client) = relayed(&relay);
    // 10 clients x 1000 messages each way (uclient's RTCP sessions add a few more).
    assert!(to_peer >= 10_000.0 && to_client >= 10_000.0, "{to_peer} / {to_client}");
    let binds = relay.metric("relay_requests_total{method=\"channel_bind\"}");
    assert!(binds >= 10.0, "channel mode bound channels: {binds}");

    // Send-indication mode (-s): no channels, Send and Data indications.
    let report = uclient(1000, &["-s"]);
    assert_eq!(report.lost, 0, "send-indication mode lost packets:\n{}", report.output);
    let (to_peer2, to_client2) = relayed(&relay);
    assert!(to_peer2 - to_peer >= 10_000.0 && to_client2 - to_client >= 10_000.0);
    assert_eq!(relay.metric("relay_requests_total{method=\"channel_bind\"}"), binds, "-s binds no channels");

    // TURN over TCP (-t) on the same port, channels, then Send indications.
    let before = relayed(&relay);
    let report = uclient(400, &["-t"]);
    assert_eq!(report.lost, 0, "TCP lost packets:\n{}", report.output);
    let report = uclient(400, &["-t", "-s"]);
    assert_eq!(report.lost, 0, "TCP send-indication mode lost packets:\n{}", report.output);
    let after = relayed(&relay);
    // 10 clients × 400 messages each way, twice.
    assert!(after.0 - before.0 >= 8_000.0 && after.1 - before.1 >= 8_000.0, "{before:?} -> {after:?}");
    let accepted = relay.metric("relay_connections_total{event=\"accepted\"}");
    assert!(accepted >= 20.0, "uclient connected over TCP: {accepted}");
    assert_eq!(relay.metric("relay_connections_total{event=\"bad_framing\"}"), 0.0);
    assert_eq!(relay.metric("relay_dropped_packets_total{reason=\"send_buffer_full\"}"), 0.0);
}

/// TURN over TLS: uclient's `-t -S` against the TLS listener (rustls, a generated certificate)
/// on an ephemeral port, channels and then Send indications. It takes turns with the test above
/// for turnutils_peer's port.
#[test]
fn uclient_over_tls_zero_loss() {
    let _ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::temp_dir("uclient-tls");
    let (cert, key) = common::test_certificate(&dir, "turn");
    let relay = RelayProcess::start(
        "relay-loopback.toml",
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--tls-listen", "127.0.0.1:0"],
    );
    let tls = relay.tls[0];
    let _peer = start_peer();
    let port = tls.port().to_string();
    let report = uclient(400, &["-t", "-S", "-p", &port]);
    assert_eq!(report.lost, 0, "TLS lost packets:\n{}\n{}", report.output, counters(&relay));
    let report = uclient(400, &["-t", "-S", "-s", "-p", &port]);
    assert_eq!(report.lost, 0, "TLS send-indication mode lost packets:\n{}\n{}", report.output, counters(&relay));
    let (to_peer, to_client) = relayed(&relay);
    assert!(to_peer >= 8_000.0 && to_client >= 8_000.0, "{to_peer} / {to_client}");
    let m = relay.metrics();
    assert_eq!(common::metric_value(&m, "relay_allocations_active"), 0.0, "closed connections free their allocations");
    assert_eq!(common::metric_value(&m, "relay_connections_open"), 0.0);
    std::fs::remove_dir_all(dir).ok();
}

/// The SHA-256 fingerprint of the certificate a TLS server at `addr` presents now (openssl).
fn served_fingerprint(addr: std::net::SocketAddr) -> String {
    let script =
        format!("openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256");
    let out =
        Command::new("sh").arg("-c").arg(script).output().expect("sh and openssl (scripts/test.sh installs openssl)");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(text.contains("Fingerprint="), "no certificate from {addr}: {text}");
    text
}

fn file_fingerprint(cert: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn rotation_config(secret: &str, cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        r#"[server]
workers = 2
[allocations]
max_per_user = 0
max_total = 0
rfc5766_channel_numbers = true
[auth]
secrets = ["{secret}"]
[peers]
allow = ["127.0.0.0/8"]
[tls]
cert = "{}"
key = "{}"
listen = ["127.0.0.1:0"]
watch_secs = 1
"#,
        cert.display(),
        key.display()
    )
}

/// While uclient relays over UDP and over TLS (10 clients each), the TURN REST secret is replaced
/// and the certificate files are renewed, then SIGHUP: neither session loses a packet, new TLS
/// connections get the new certificate, new allocations need the new secret. Then the files are
/// renewed again without any signal, and the relay picks them up by itself (`tls.watch_secs`).
#[test]
fn secret_and_certificate_rotation_during_live_traffic_lose_nothing() {
    let _ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::temp_dir("rotation");
    let (cert_a, key_a) = common::test_certificate(&dir, "a");
    // Renewals expire at other times, so that the expiry series shows which one is in use.
    let (cert_b, key_b) = common::test_certificate_until(&dir, "b", (2030, 1, 1));
    let (cert_c, key_c) = common::test_certificate_until(&dir, "c", (2031, 1, 1));
    let expiry = "relay_certificate_expiry_timestamp_seconds{certificate=\"turn_tls\"}";
    // The relay reads the live paths; renewals copy new files over them, as certbot's do.
    let (cert, key) = (dir.join("live.crt"), dir.join("live.key"));
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let config = dir.join("relay.toml");
    std::fs::write(&config, rotation_config("old-secret", &cert, &key)).unwrap();
    let relay = RelayProcess::start(config.to_str().unwrap(), &[]);
    let (udp, tls) = (relay.udp, relay.tls[0]);
    assert_eq!(served_fingerprint(tls), file_fingerprint(&cert_a));
    // rcgen's default validity: until 4096-01-01.
    assert_eq!(relay.metric(expiry), 67_090_118_400.0);
    let _peer = start_peer();

    // 10 UDP and 10 TLS clients, 600 messages each (12 s), on the old secret and certificate.
    let (udp_port, tls_port) = (udp.port().to_string(), tls.port().to_string());
    let over_udp = std::thread::spawn(move || uclient_with("old-secret", 600, &["-p", &udp_port]));
    let over_tls = std::thread::spawn(move || uclient_with("old-secret", 600, &["-t", "-S", "-p", &tls_port]));
    std::thread::sleep(Duration::from_secs(4));
    let relayed_before = relayed(&relay);

    // Rotate: a new secret only (the old one removed), new certificate files; SIGHUP.
    std::fs::write(&config, rotation_config("new-secret", &cert, &key)).unwrap();
    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    // SAFETY: kill(2) with the pid of our child.
    unsafe {
        libc::kill(relay.child.id() as i32, libc::SIGHUP);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !relay.logs.try_iter().any(|l| l.contains("configuration reloaded")) {
        assert!(std::time::Instant::now() < deadline, "no reload logged after SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(served_fingerprint(tls), file_fingerprint(&cert_b), "new TLS connections get the new certificate");
    assert_eq!(relay.metric(expiry), 1_893_456_000.0, "the renewed certificate's expiry (2030-01-01)");
    let mut old = common::RawClient::rest(udp, "old-secret", 600, "relay");
    assert_eq!(old.allocate(), Err(401), "the removed secret no longer makes allocations");
    let mut new = common::RawClient::rest(udp, "new-secret", 600, "relay");
    assert!(new.allocate().is_ok(), "the new secret does");
    // The admin endpoint reloads too; nothing is left to apply.
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", &format!("http://{}/reload", relay.admin)])
        .output()
        .expect("curl");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report, serde_json::json!({"applied": [], "restart_required": []}));

    let udp_report = over_udp.join().unwrap();
    let tls_report = over_tls.join().unwrap();
    assert_eq!(udp_report.lost, 0, "UDP lost packets across the rotation:\n{}", udp_report.output);
    assert_eq!(tls_report.lost, 0, "TLS lost packets across the rotation:\n{}", tls_report.output);
    let relayed_after = relayed(&relay);
    assert!(
        relayed_after.0 - relayed_before.0 >= 1000.0,
        "traffic went on after the rotation: {relayed_before:?} -> {relayed_after:?}"
    );

    // A renewal with no signal at all: picked up within tls.watch_secs (1 s here).
    std::fs::copy(&cert_c, &cert).unwrap();
    std::fs::copy(&key_c, &key).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while served_fingerprint(tls) != file_fingerprint(&cert_c) {
        assert!(std::time::Instant::now() < deadline, "the renewed certificate was not picked up");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(relay.metric(expiry), 1_924_992_000.0, "the renewed certificate's expiry (2031-01-01)");
    // A bad reload (a config that does not validate) changes nothing and says why.
    std::fs::write(&config, "[server]\nworkers = \"two\"\n").unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-X", "POST", &format!("http://{}/reload", relay.admin)])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("400") && text.contains("workers"), "{text}");
    assert!(common::RawClient::rest(udp, "new-secret", 600, "relay").allocate().is_ok(), "still serving");
    std::fs::remove_dir_all(dir).ok();
}
