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
    let out = Command::new(tool("turnutils_uclient"))
        .args(["-W", SECRET, "-e", "127.0.0.1", "-n", &n.to_string(), "-m", "10", "-l", "170"])
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
    assert_eq!(report.lost, 0, "TLS lost packets:\n{}", report.output);
    let report = uclient(400, &["-t", "-S", "-s", "-p", &port]);
    assert_eq!(report.lost, 0, "TLS send-indication mode lost packets:\n{}", report.output);
    let (to_peer, to_client) = relayed(&relay);
    assert!(to_peer >= 8_000.0 && to_client >= 8_000.0, "{to_peer} / {to_client}");
    let m = relay.metrics();
    assert_eq!(common::metric_value(&m, "relay_allocations_active"), 0.0, "closed connections free their allocations");
    assert_eq!(common::metric_value(&m, "relay_connections_open"), 0.0);
    std::fs::remove_dir_all(dir).ok();
}
