//! TURN over TLS with a real browser: headless Chromium whose only ICE server is
//! `turns:127.0.0.1:443?transport=tcp` (a generated test certificate; Chromium is told to accept
//! it) and `iceTransportPolicy: "relay"`. The page holds two peer connections configured so,
//! which can only reach each other relay to relay through this relay's TLS listener; a data
//! channel message goes from one to the other and its echo comes back. The page reports its
//! relay candidates and the selected pair's local candidate (type and `relayProtocol`).

use std::sync::Arc;
use std::time::Duration;

use common::browser::{Browser, Reports, latest, serve_pages, url, wait_for};
use common::{RelayProcess, unix_now};
use relay::turn::auth::rest_password;
use serde_json::Value;

mod common;

/// The TLS port the issue asks for: what corporate firewalls let through.
const TLS_ADDR: &str = "127.0.0.1:443";

const PAGE: &str = r#"<!doctype html><title>turns</title><script>
const q = new URLSearchParams(location.search);
const report = (o) => fetch('/report/page', {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify(o)});
window.onerror = (m) => { report({error: String(m)}); };
(async () => {
  try {
    const config = {iceServers: [{urls: q.get('turn'), username: q.get('user'), credential: q.get('pass')}], iceTransportPolicy: 'relay'};
    const a = new RTCPeerConnection(config), b = new RTCPeerConnection(config);
    a.onicecandidate = (e) => {
      if (!e.candidate) return;
      report({candidate: e.candidate.candidate, type: e.candidate.type, relayProtocol: e.candidate.relayProtocol});
      b.addIceCandidate(e.candidate);
    };
    b.onicecandidate = (e) => { if (e.candidate) a.addIceCandidate(e.candidate); };
    b.ondatachannel = (e) => { e.channel.onmessage = (m) => e.channel.send('echo ' + m.data); };
    const dc = a.createDataChannel('round-trip');
    let sent = 0;
    dc.onopen = () => { sent = performance.now(); dc.send('ping'); };
    dc.onmessage = async (m) => {
      const stats = await a.getStats();
      let local = null;
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) {
          const pair = stats.get(s.selectedCandidatePairId);
          const c = pair && stats.get(pair.localCandidateId);
          if (c) local = {type: c.candidateType, relayProtocol: c.relayProtocol};
        }
      });
      report({reply: m.data, ms: performance.now() - sent, local});
    };
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription(a.localDescription);
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription(b.localDescription);
    setTimeout(() => report({state: a.connectionState, ice: a.iceConnectionState}), 20000);
  } catch (e) { report({error: String(e)}); }
})();
</script>"#;

#[test]
fn chromium_with_only_turns_gets_a_relay_candidate_and_a_data_channel_round_trip() {
    if std::net::TcpListener::bind(TLS_ADDR).is_err() {
        panic!("TCP {TLS_ADDR} is taken (or this test is not running as root); the turns: test needs it");
    }
    let dir = common::temp_dir("turns-browser");
    let (cert, key) = common::test_certificate(&dir, "turns");
    let relay = RelayProcess::start(
        "relay-loopback.toml",
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--tls-listen", TLS_ADDR],
    );
    assert_eq!(relay.tls, vec![TLS_ADDR.parse().unwrap()]);

    let reports: Reports = Arc::default();
    let pages = serve_pages(vec![("/turns.html", PAGE.to_owned())], Arc::clone(&reports));
    let username = format!("{}:browser", unix_now() + 600);
    let password = rest_password(b"loopback-test-secret", &username);
    let _browser = Browser::open_with(
        &url(
            &format!("http://{pages}/turns.html"),
            &[("turn", &format!("turns:{TLS_ADDR}?transport=tcp")), ("user", &username), ("pass", &password)],
        ),
        // The test certificate is self-signed.
        &["--ignore-certificate-errors"],
    );

    wait_for("the echo through the relay", Duration::from_secs(40), &reports, |r| latest(r, "page", "reply").is_some());
    let reply = latest(&reports, "page", "reply").unwrap();
    assert_eq!(reply["reply"], "echo ping");
    assert_eq!(reply["local"]["type"], "relay", "{reply}");
    assert_eq!(reply["local"]["relayProtocol"], "tls", "{reply}");
    let candidates: Vec<Value> =
        reports.lock().unwrap()["page"].iter().filter(|v| v.get("candidate").is_some()).cloned().collect();
    assert!(!candidates.is_empty() && candidates.iter().all(|c| c["type"] == "relay"), "{candidates:?}");
    assert!(candidates.iter().any(|c| c["relayProtocol"] == "tls"), "{candidates:?}");

    // The relay really carried it: two allocations over TLS, data both ways.
    let m = relay.metrics();
    assert!(common::metric_value(&m, "relay_connections_total{event=\"accepted\"}") >= 2.0, "{m}");
    assert!(common::metric_value(&m, "relay_allocations_created_total") >= 2.0, "{m}");
    assert!(common::metric_value(&m, "relay_relayed_packets_total{direction=\"client_to_peer\"}") >= 2.0, "{m}");
    assert!(common::metric_value(&m, "relay_relayed_packets_total{direction=\"peer_to_client\"}") >= 2.0, "{m}");
    println!("round trip over turns: {} ms; candidates: {candidates:?}", reply["ms"]);
    std::fs::remove_dir_all(dir).ok();
}
