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

struct Peer(Child, u16);

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

/// Starts turnutils_peer (a UDP echo server) on a free loopback port.
fn start_peer() -> Peer {
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Owned by `Peer` at once, whose Drop kills and reaps it on every path.
    let peer = Peer(
        Command::new(tool("turnutils_peer"))
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnutils_peer"),
        port,
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
    sent_pps: bool,
    output: String,
}

/// Runs uclient and parses its "Total lost packets N" line.
fn uclient(relay: &RelayProcess, peer: &Peer, extra: &[&str]) -> Report {
    let out = Command::new(tool("turnutils_uclient"))
        .args(["-W", SECRET, "-e", "127.0.0.1", "-r", &peer.1.to_string()])
        .args(["-n", "1000", "-m", "10", "-l", "170", "-p", &relay.udp.port().to_string()])
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
    let sent_pps = output.contains("send_pps") || output.contains("Total transmit time");
    Report { lost, sent_pps, output }
}

fn check(relay: &RelayProcess, report: &Report, mode: &str) {
    assert!(report.sent_pps, "{mode}: uclient did not run its send phase:\n{}", report.output);
    assert_eq!(report.lost, 0, "{mode}: lost packets:\n{}", report.output);
    // 10 clients x 1000 messages each way went through the relay (uclient's RTCP sessions add more).
    let m = relay.metrics();
    let to_peer = common::metric_value(&m, "relay_relayed_packets_total{direction=\"client_to_peer\"}");
    let to_client = common::metric_value(&m, "relay_relayed_packets_total{direction=\"peer_to_client\"}");
    assert!(to_peer >= 10_000.0 && to_client >= 10_000.0, "{mode}: {to_peer} / {to_client}");
}

#[test]
fn uclient_channel_mode_ten_clients_zero_loss() {
    let relay = RelayProcess::start("relay-loopback.toml", &[]);
    let peer = start_peer();
    let report = uclient(&relay, &peer, &[]);
    check(&relay, &report, "channel");
    let m = relay.metrics();
    assert!(common::metric_value(&m, "relay_requests_total{method=\"channel_bind\"}") >= 10.0);
}

#[test]
fn uclient_send_indication_mode_ten_clients_zero_loss() {
    let relay = RelayProcess::start("relay-loopback.toml", &[]);
    let peer = start_peer();
    let report = uclient(&relay, &peer, &["-s"]);
    check(&relay, &report, "send indication");
    let m = relay.metrics();
    assert_eq!(common::metric_value(&m, "relay_requests_total{method=\"channel_bind\"}"), 0.0, "-s uses no channels");
}
