//! The real relay binary heartbeating to a stand-in for signaling: a small axum server in the
//! test that records every heartbeat and answers with the reply the test sets. Checks the wire
//! contract (`cluster::heartbeat`), secrets from signaling, drain and undrain by command, and that
//! the relay keeps serving with its last secrets once signaling is gone.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use cluster::heartbeat::{Command, Heartbeat, HeartbeatReply, LinkState, PATH, RelayState, Secrets};
use cluster::pki::{Authority, Validity};
use common::{RawClient, RelayProcess, unix_now};

const REALM: &str = "relay";
const TOKEN: &str = "test-cluster-token";

/// One request as signaling saw it.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    authorization: Option<String>,
    content_type: Option<String>,
    /// The body, parsed strictly (unknown fields refused), or why it did not parse.
    heartbeat: Result<Heartbeat, String>,
}

struct Inner {
    received: Vec<Received>,
    reply: HeartbeatReply,
}

/// Recording and replying under one lock, so that a heartbeat recorded after `set_reply` returned
/// is known to have been answered with the new reply.
#[derive(Clone)]
struct Shared(Arc<Mutex<Inner>>);

async fn heartbeat(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let parsed =
        serde_json::from_slice::<Heartbeat>(&body).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)));
    let ok = parsed.is_ok();
    let mut inner = shared.0.lock().unwrap();
    inner.received.push(Received {
        at: Instant::now(),
        authorization: text(header::AUTHORIZATION),
        content_type: text(header::CONTENT_TYPE),
        heartbeat: parsed,
    });
    if !ok {
        return StatusCode::BAD_REQUEST.into_response();
    }
    Json(inner.reply.clone()).into_response()
}

/// The stand-in for signaling, on its own runtime so that the test itself stays blocking.
struct Signaling {
    url: String,
    shared: Shared,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Signaling {
    fn start(reply: HeartbeatReply) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let shared = Shared(Arc::new(Mutex::new(Inner { received: Vec::new(), reply })));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = Router::new().route(PATH, post(heartbeat)).with_state(shared.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self { url: format!("http://{addr}"), shared, runtime: Some(runtime) }
    }

    /// Answers every later heartbeat with `reply`; returns how many were received before.
    fn set_reply(&self, reply: HeartbeatReply) -> usize {
        let mut inner = self.shared.0.lock().unwrap();
        inner.reply = reply;
        inner.received.len()
    }

    fn received(&self) -> Vec<Received> {
        self.shared.0.lock().unwrap().received.clone()
    }

    /// Waits for heartbeat number `index` (0-based) and returns it, parsed.
    fn nth(&self, index: usize) -> (Instant, Heartbeat) {
        let deadline = Instant::now() + Duration::from_secs(6);
        loop {
            if let Some(r) = self.received().get(index) {
                let hb = r.heartbeat.clone().unwrap_or_else(|e| panic!("heartbeat {index} does not parse: {e}"));
                return (r.at, hb);
            }
            assert!(Instant::now() < deadline, "heartbeat {index} did not arrive");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops answering: the listener and every connection close.
    fn go_away(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

fn reply(commands: Vec<Command>, version: u64, keys: &[&str]) -> HeartbeatReply {
    HeartbeatReply {
        commands,
        secrets: Secrets { version, keys: keys.iter().map(|k| k.to_string()).collect() },
        interval_ms: 2000,
        ended_sessions: Vec::new(),
        link_peers: Vec::new(),
    }
}

/// Polls `f` every 50 ms until it holds or `within` passes.
fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The banner line that starts with `prefix` (the banner is all printed at start).
fn banner_line(relay: &RelayProcess, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match relay.stdout.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.trim_start().starts_with(prefix) => return line,
            _ => {}
        }
    }
    panic!("no banner line starting with {prefix:?}");
}

/// A config with no TURN REST secret of its own: they come from signaling. The token comes from
/// the environment and the URL from a flag, so all three layers of the config are exercised.
fn write_config() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-cluster-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relay-cluster.toml");
    std::fs::write(
        &path,
        r#"
[server]
workers = 2
realm = "relay"

[allocations]
max_per_user = 0
max_total = 100

[auth]
secrets = []
users = [{ username = "test", password = "test-password" }]

[cluster]
region = "test-1"
relay_id = "relay-test-1"
bandwidth_cap_mbps = 100
"#,
    )
    .unwrap();
    path
}

#[test]
fn heartbeats_carry_state_and_replies_drive_secrets_and_drain() {
    let test_start = unix_now();
    let mut signaling = Signaling::start(reply(vec![], 0, &[]));
    let config = write_config();
    // With TURN over TLS on, so the heartbeat reports its port for signaling's turns: URL.
    let dir = config.parent().unwrap();
    let (cert, key) = common::test_certificate(dir, "heartbeat");
    // And with links, so it reports its link port.
    let ca = Authority::generate("cluster", Validity::days_from(unix_now(), 1)).unwrap();
    let issued = ca.issue("relay-test-1", Validity::days_from(unix_now(), 1)).unwrap();
    let link_files = [("ca.pem", ca.cert_pem()), ("link.pem", &issued.cert_pem), ("link.key", &issued.key_pem)];
    for (name, pem) in link_files {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let mut relay = RelayProcess::start_with(
        config.to_str().unwrap(),
        "127.0.0.1:0",
        &[
            "--signaling-url",
            &signaling.url,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-listen",
            "127.0.0.1:0",
            "--link-listen",
            "127.0.0.1:0",
            "--link-ca",
            &path("ca.pem"),
            "--link-cert",
            &path("link.pem"),
            "--link-key",
            &path("link.key"),
        ],
        &[("RELAY_CLUSTER_TOKEN", TOKEN)],
    );
    // The banner's SFU line comes before its cluster line.
    let sfu_port = banner_line(&relay, "SFU ")
        .split("WHIP http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(str::to_owned)
        .expect("the SFU's port in the banner");
    let link_line = banner_line(&relay, "links ");
    let cluster_line = banner_line(&relay, "cluster ");
    for part in [signaling.url.as_str(), "\"relay-test-1\"", "\"test-1\""] {
        assert!(cluster_line.contains(part), "{part} in {cluster_line}");
    }

    // The first heartbeat goes out at start and says who the relay is.
    let (_, first) = signaling.nth(0);
    assert_eq!(first.relay_id, "relay-test-1");
    assert_eq!(first.region, "test-1");
    assert_eq!(first.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(first.public_host, "127.0.0.1", "the advertised address by default");
    assert_eq!(first.turn_udp_port, relay.udp.port(), "the port actually bound, not the configured 0");
    assert_eq!(first.turn_tls_port, Some(relay.tls[0].port()), "the TLS listener's bound port");
    // The SFU (the test relays run one on an ephemeral port) is announced with its base URL.
    let sfu_url = first.sfu_url.clone().expect("the SFU's URL");
    assert_eq!(sfu_url, format!("http://127.0.0.1:{sfu_port}"));
    let link_port = link_line.split("quic://127.0.0.1:").nth(1).and_then(|r| r.split_whitespace().next());
    assert_eq!(first.link_port.map(|p| p.to_string()).as_deref(), link_port, "the link port bound: {link_line}");
    assert_eq!(first.state, RelayState::Serving);
    assert_eq!(first.secrets_version, 0, "no secrets received yet");
    assert!((test_start..=unix_now()).contains(&first.started_at), "{}", first.started_at);
    assert_eq!(first.load.allocations, 0);
    assert_eq!(first.load.max_allocations, 100);
    assert_eq!(first.load.bandwidth_cap_bps, 100_000_000);
    assert!((0.0..=1.0).contains(&first.load.cpu));

    // Without secrets from signaling (and none configured) REST credentials are refused; the
    // static user works.
    assert_eq!(RawClient::rest(relay.udp, "s2", 600, REALM).allocate(), Err(401));
    RawClient::new(relay.udp, "test", "test-password", REALM).allocate().expect("static user");

    // Signaling hands out s2: a credential signed with it allocates.
    let before = signaling.set_reply(reply(vec![], 1, &["s2"]));
    signaling.nth(before);
    eventually(Duration::from_secs(3), "a credential signed with s2 allocates", || {
        RawClient::rest(relay.udp, "s2", 600, REALM).allocate().is_ok()
    });
    assert_eq!(RawClient::rest(relay.udp, "s1", 600, REALM).allocate(), Err(401), "only what signaling sent");

    // Drain: the heartbeat after the reply that carried it reports draining, and Allocate gets
    // the draining error (508); /healthz says so too.
    let before = signaling.set_reply(reply(vec![Command::Drain], 1, &["s2"]));
    let (_, answered) = signaling.nth(before);
    assert_eq!(answered.secrets_version, 1, "reports the secrets it applied");
    assert!(answered.load.allocations >= 2, "{:?}", answered.load);
    let (_, next) = signaling.nth(before + 1);
    assert_eq!(next.state, RelayState::Draining);
    assert_eq!(RawClient::rest(relay.udp, "s2", 600, REALM).allocate(), Err(508));
    assert_eq!(relay.healthz(), 503);
    assert_eq!(relay.metric("relay_draining"), 1.0);

    // Undrain: allocations work again.
    let before = signaling.set_reply(reply(vec![Command::Undrain], 1, &["s2"]));
    signaling.nth(before);
    eventually(Duration::from_secs(3), "allocations work after undrain", || {
        RawClient::rest(relay.udp, "s2", 600, REALM).allocate().is_ok()
    });
    assert_eq!(relay.healthz(), 200);

    // Every heartbeat so far: bearer token, JSON, about every 2 s.
    let received = signaling.received();
    assert!(received.len() >= 5, "{} heartbeats", received.len());
    for r in &received {
        assert_eq!(r.authorization.as_deref(), Some("Bearer test-cluster-token"));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert!(r.heartbeat.is_ok(), "{:?}", r.heartbeat);
    }
    for pair in received.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!((Duration::from_millis(1500)..=Duration::from_millis(3000)).contains(&gap), "gap {gap:?}");
    }
    let m = relay.metrics();
    assert!(common::metric_value(&m, "relay_cluster_heartbeats_total{result=\"ok\"}") >= received.len() as f64 - 1.0);
    assert_eq!(common::metric_value(&m, "relay_cluster_heartbeats_total{result=\"error\"}"), 0.0);
    let last = common::metric_value(&m, "relay_cluster_last_heartbeat_timestamp_seconds");
    assert!((test_start as f64..=unix_now() as f64 + 1.0).contains(&last), "{last}");
    // The alert rules' heartbeat series are these (the others: tests/cascade.rs).
    let names = common::rule_metrics("relay-rules.yml", "relay_cluster_");
    assert!(!names.is_empty());
    for name in &names {
        assert!(common::has_series(&m, name), "deploy/prometheus/relay-rules.yml uses {name}, not exported");
    }

    // Signaling lists the relays that take links: the relay links to the one whose id sorts
    // after its own (one link per pair: the other links to it) and reports its RTT.
    let links = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let peer = |id: &str| {
        let issued = ca.issue(id, Validity::days_from(unix_now(), 1)).unwrap();
        let refusals = prometheus::IntCounterVec::new(prometheus::Opts::new("r", "r"), &["side", "reason"]).unwrap();
        let tls = relay::link::tls::LinkTls::from_pem(
            ca.cert_pem().as_bytes(),
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            ["ca", "cert", "key"],
            relay::link::tls::Refusals::new(refusals),
        )
        .unwrap();
        let _guard = links.enter();
        let endpoint =
            Arc::new(relay::link::endpoint::LinkEndpoint::bind("127.0.0.1:0".parse().unwrap(), tls).unwrap());
        let admitted = Arc::new(Mutex::new(Vec::new()));
        let (e, a) = (Arc::clone(&endpoint), Arc::clone(&admitted));
        links.spawn(async move {
            while let Some(link) = e.accept().await {
                a.lock().unwrap().push(link);
            }
        });
        (endpoint, admitted)
    };
    let (after, after_links) = peer("relay-test-2");
    let (before_us, before_links) = peer("relay-test-0");
    let mut with_peers = reply(vec![], 1, &["s2"]);
    with_peers.link_peers = [("relay-test-2", &after), ("relay-test-0", &before_us)]
        .into_iter()
        .map(|(id, e)| cluster::heartbeat::LinkPeer { id: id.into(), link: e.local_addr().unwrap().to_string() })
        .collect();
    let mut seen = signaling.set_reply(with_peers);
    let deadline = Instant::now() + Duration::from_secs(8);
    let rtt = loop {
        let (_, hb) = signaling.nth(seen);
        seen += 1;
        if let Some(ms) = hb.link_rtts.get("relay-test-2") {
            break *ms;
        }
        assert!(Instant::now() < deadline, "no link RTT to relay-test-2 in the heartbeats: {:?}", hb.link_rtts);
    };
    assert!(rtt > 0.0 && rtt < 1000.0, "{rtt} ms on loopback");
    let linked: Vec<String> = after_links.lock().unwrap().iter().map(|l| l.peer.clone()).collect();
    assert_eq!(linked, ["relay-test-1"]);
    assert!(before_links.lock().unwrap().is_empty(), "relay-test-0 links to relay-test-1, not the other way");
    assert_eq!(relay.metric("relay_links_open"), 1.0);
    // The heartbeat reports the link in full (no media on it yet).
    let (_, hb) = signaling.nth(seen);
    let report = hb.links.iter().find(|l| l.peer == "relay-test-2").unwrap_or_else(|| panic!("{:?}", hb.links));
    assert_eq!((report.state, report.datagrams_sent, report.watching), (LinkState::Up, 0, 0), "{report:?}");
    assert!(report.rtt_ms.is_some_and(|ms| ms > 0.0), "{report:?}");
    assert_eq!(hb.links.len(), 1, "relay-test-0 links in, if at all, and has not: {:?}", hb.links);
    // The peer drops the link: the relay, which keeps one to it, links again.
    let first = after_links.lock().unwrap()[0].connection.clone();
    first.close(0u32.into(), b"test drops the link");
    eventually(Duration::from_secs(5), "relay-test-1 links to relay-test-2 again", || {
        after_links.lock().unwrap().len() >= 2
    });

    // Signaling goes away: heartbeats fail, the relay keeps serving with the last secrets.
    signaling.go_away();
    eventually(Duration::from_secs(5), "a failed heartbeat is counted", || {
        relay.metric("relay_cluster_heartbeats_total{result=\"error\"}") >= 1.0
    });
    assert!(relay.is_running());
    RawClient::rest(relay.udp, "s2", 600, REALM).allocate().expect("the last secrets still work");
    assert_eq!(relay.healthz(), 200, "still serving");
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut warned = false;
    while !warned && Instant::now() < deadline {
        if let Ok(line) = relay.logs.recv_timeout(Duration::from_millis(100)) {
            warned = line.contains("WARN") && line.contains("heartbeat to signaling failed");
        }
    }
    assert!(warned, "the failure is logged at warn");
    let _ = std::fs::remove_file(config);
}

/// Every allocation takes a relay port of its own: a relay with 50 ports and
/// `allocations.max_total = 1000` can hold 50 allocations, and says so everywhere an operator or
/// signaling looks (issue 27): `check-config` and the start warn naming both keys, the heartbeat
/// and `/healthz` report 50, and the 51st Allocate gets 508, counted by its reason.
#[test]
fn capacity_is_the_port_range_when_max_total_exceeds_it() {
    let signaling = Signaling::start(reply(vec![], 0, &[]));
    let dir = common::temp_dir("relay-capacity");
    let config = dir.join("relay-capacity.toml");
    std::fs::write(
        &config,
        r#"
[allocations]
max_per_user = 0
max_total = 1000

[auth]
users = [{ username = "test", password = "test-password" }]

[cluster]
region = "test-1"
relay_id = "relay-capacity"
"#,
    )
    .unwrap();
    // Between the other tests' relay ports (10000-30000, and e2e's 31000-31999) and Linux's
    // ephemeral range: no other process binds these.
    let args = ["--min-port", "30500", "--max-port", "30549", "--signaling-url", &signaling.url];

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .arg("check-config")
        .env("RELAY_CLUSTER_TOKEN", TOKEN)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "warning: allocations.max_total = 1000 exceeds what relay.min_port..relay.max_port can hold (50 ports"
        ),
        "{stderr}"
    );
    assert!(stdout.contains("# capacity: 50 allocations (relay ports: 50, allocations.max_total: 1000)"), "{stdout}");

    let relay =
        RelayProcess::start_with(config.to_str().unwrap(), "127.0.0.1:0", &args, &[("RELAY_CLUSTER_TOKEN", TOKEN)]);
    let mut logs = Vec::new();
    eventually(Duration::from_secs(3), "the relay warns at start", || {
        logs.extend(relay.logs.try_iter());
        logs.iter().any(|l| l.contains("allocations.max_total = 1000 exceeds"))
    });
    assert!(banner_line(&relay, "relay ports").contains("capacity 50 allocations"));
    assert!(banner_line(&relay, "warning").contains("allocations.max_total = 1000 exceeds"));
    let (_, first) = signaling.nth(0);
    assert_eq!((first.load.allocations, first.load.max_allocations), (0, 50));
    assert!(!first.load.is_full());
    let health = relay.healthz_body();
    assert_eq!((health["status"].as_str(), health["capacity"].as_u64()), (Some("ok"), Some(50)), "{health}");
    assert_eq!(relay.metric("relay_allocations_capacity"), 50.0);

    let mut held = Vec::new();
    for i in 0..50 {
        let mut client = RawClient::new(relay.udp, "test", "test-password", REALM);
        client.allocate().unwrap_or_else(|code| panic!("allocation {} of 50 refused with {code}", i + 1));
        held.push(client);
    }
    let mut one_more = RawClient::new(relay.udp, "test", "test-password", REALM);
    assert_eq!(one_more.allocate(), Err(508), "the 51st allocation finds no relay port");
    let refused = |reason: &str| relay.metric(&format!("relay_allocations_refused_total{{reason=\"{reason}\"}}"));
    assert_eq!(refused("ports"), 1.0);
    assert_eq!(refused("max_total"), 0.0);
    assert_eq!(relay.metric(r#"relay_error_responses_total{code="508"}"#), 1.0);

    // Signaling hears that the relay is full.
    eventually(Duration::from_secs(5), "a heartbeat reports 50 of 50", || {
        signaling.received().iter().filter_map(|r| r.heartbeat.as_ref().ok()).any(|hb| hb.load.allocations == 50)
    });
    let last = signaling.received().iter().rev().find_map(|r| r.heartbeat.clone().ok()).unwrap();
    assert_eq!((last.load.allocations, last.load.max_allocations), (50, 50));
    assert!(last.load.is_full() && (last.load.utilisation() - 1.0).abs() < 1e-9);
    assert_eq!(relay.healthz_body()["allocations"].as_u64(), Some(50));

    // A reload that lowers max_total below the range lowers the capacity with it; the
    // allocations held stay, and a new one is refused for max_total.
    let text = std::fs::read_to_string(&config).unwrap().replace("max_total = 1000", "max_total = 40");
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-X", "POST", &format!("http://{}/reload", relay.admin)])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("allocations.max_total"), "{report}");
    assert_eq!(relay.healthz_body()["capacity"].as_u64(), Some(40));
    assert_eq!(relay.metric("relay_allocations_capacity"), 40.0);
    let mut again = RawClient::new(relay.udp, "test", "test-password", REALM);
    assert_eq!(again.allocate(), Err(508));
    assert_eq!(refused("max_total"), 1.0);
    eventually(Duration::from_secs(5), "a heartbeat reports the new capacity", || {
        signaling.received().iter().filter_map(|r| r.heartbeat.as_ref().ok()).any(|hb| hb.load.max_allocations == 40)
    });
}
