//! Interop with a TURN client nobody here wrote: coturn's `turnutils_uclient`, with
//! `turnutils_peer` as the echo peer, against the relay started from
//! `configs/relay-loopback.toml` (loopback peers allowed), authenticating with the TURN REST
//! secret (`-W`). `scripts/test.sh` installs the Debian `coturn` package for these tools; if they
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

/// Runs exactly `turnutils_uclient -W <secret> -e 127.0.0.1 -n 1000 -m 10 -l 170 [extra] 127.0.0.1`
/// (default ports: the relay on 3478, the peer on 3480) and parses its "Total lost packets" line.
fn uclient(extra: &[&str]) -> Report {
    let out = Command::new(tool("turnutils_uclient"))
        .args(["-W", SECRET, "-e", "127.0.0.1", "-n", "1000", "-m", "10", "-l", "170"])
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

/// Both modes in one test: they share the default ports 3478 and 3480.
#[test]
fn uclient_channel_and_send_indication_modes_ten_clients_zero_loss() {
    if UdpSocket::bind("127.0.0.1:3478").is_err() {
        panic!("UDP port 3478 is taken (a relay or coturn running here?); the interop test needs it");
    }
    let relay = RelayProcess::start_on("relay-loopback.toml", "127.0.0.1:3478", &[]);
    let _peer = start_peer();

    // Channel mode: uclient binds channels and sends ChannelData.
    let report = uclient(&[]);
    assert_eq!(report.lost, 0, "channel mode lost packets:\n{}", report.output);
    let (to_peer, to_client) = relayed(&relay);
    // 10 clients x 1000 messages each way (uclient's RTCP sessions add a few more).
    assert!(to_peer >= 10_000.0 && to_client >= 10_000.0, "{to_peer} / {to_client}");
    let binds = relay.metric("relay_requests_total{method=\"channel_bind\"}");
    assert!(binds >= 10.0, "channel mode bound channels: {binds}");

    // Send-indication mode (-s): no channels, Send and Data indications.
    let report = uclient(&["-s"]);
    assert_eq!(report.lost, 0, "send-indication mode lost packets:\n{}", report.output);
    let (to_peer2, to_client2) = relayed(&relay);
    assert!(to_peer2 - to_peer >= 10_000.0 && to_client2 - to_client >= 10_000.0);
    assert_eq!(relay.metric("relay_requests_total{method=\"channel_bind\"}"), binds, "-s binds no channels");
}
