//! Relay-to-relay links: mutual TLS with the cluster CA. Two relays with certificates from the
//! CA link and know each other's relay id; a relay with a certificate from another CA (even one
//! of the same name), an expired one, one for another relay, or none is refused, and the refusal
//! is counted by reason on the side that refused.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::RelayProcess;

use cluster::pki::{Authority, Issued, Validity};
use prometheus::{IntCounterVec, Opts};
use relay::link::endpoint::{LinkEndpoint, WELCOME};
use relay::link::tls::{LinkTls, Refusal, Refusals};

const LOOPBACK: &str = "127.0.0.1:0";

fn now() -> u64 {
    cluster::time::unix_now()
}

fn refusals() -> Refusals {
    Refusals::new(IntCounterVec::new(Opts::new("relay_link_refusals_total", "test"), &["side", "reason"]).unwrap())
}

fn new_ca(name: &str) -> Authority {
    Authority::generate(name, Validity::days_from(now(), 10)).unwrap()
}

fn issue(ca: &Authority, id: &str) -> Issued {
    ca.issue(id, Validity::days_from(now(), 1)).unwrap()
}

/// A relay's link endpoint trusting `trust`, presenting `cert`.
fn endpoint(trust: &Authority, cert: &Issued) -> LinkEndpoint {
    let tls = LinkTls::from_pem(
        trust.cert_pem().as_bytes(),
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
        ["link.ca", "link.cert", "link.key"],
        refusals(),
    )
    .unwrap();
    LinkEndpoint::bind(LOOPBACK.parse().unwrap(), tls).unwrap()
}

/// The refusals counted on `side`, those that are not zero.
fn refused(e: &LinkEndpoint, side: &str) -> Vec<(Refusal, u64)> {
    Refusal::ALL.into_iter().map(|r| (r, e.refusals().get(side, r))).filter(|(_, n)| *n > 0).collect()
}

/// Accepts in the background; the admitted peers come out of the channel.
fn accepting(e: Arc<LinkEndpoint>) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(link) = e.accept().await {
            let _ = tx.send(link.peer.clone());
            // Keep the connection open for the test's duration.
            std::mem::forget(link);
        }
    });
    rx
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} within 5 s");
}

#[tokio::test]
async fn relays_with_certificates_from_the_cluster_ca_link_and_know_each_other() {
    let ca = new_ca("cluster");
    let a = Arc::new(endpoint(&ca, &issue(&ca, "eu-1")));
    let b = endpoint(&ca, &issue(&ca, "asia-1.example.org"));
    let mut admitted = accepting(Arc::clone(&a));
    let addr = a.local_addr().unwrap();
    let link = b.connect(addr, "eu-1").await.expect("B links to A");
    assert_eq!(link.peer, "eu-1");
    assert_eq!(admitted.recv().await.as_deref(), Some("asia-1.example.org"), "A knows B by its certificate");
    // The link carries data both ways: a stream and a datagram.
    let mut s = link.connection.open_uni().await.unwrap();
    s.write_all(b"hello").await.unwrap();
    s.finish().unwrap();
    assert!(link.connection.max_datagram_size().is_some(), "datagrams are enabled on links");
    assert!(!WELCOME.is_empty());
}

#[tokio::test]
async fn a_browser_sized_packet_fits_a_link_datagram_from_the_start_and_a_larger_one_is_dropped_and_said() {
    use relay::link::endpoint::{DatagramDrop, send_media};
    use relay::link::wire::Media;
    let ca = new_ca("cluster");
    // No path MTU discovery: the datagram size is what a link has before discovery.
    let tls = |id: &str| {
        let cert = issue(&ca, id);
        let keys = ["link.ca", "link.cert", "link.key"];
        let pem = |s: &str| s.as_bytes().to_vec();
        LinkTls::from_pem(&pem(ca.cert_pem()), &pem(&cert.cert_pem), &pem(&cert.key_pem), keys, refusals()).unwrap()
    };
    let bind = |id: &str| LinkEndpoint::bind_without_mtu_discovery(LOOPBACK.parse().unwrap(), tls(id)).unwrap();
    let a = Arc::new(bind("eu-1"));
    let b = bind("asia-1");
    let accepted = {
        let a = Arc::clone(&a);
        tokio::spawn(async move { a.accept().await.expect("admitted") })
    };
    let link = b.connect(a.local_addr().unwrap(), "eu-1").await.unwrap();
    let at_a = accepted.await.unwrap();
    // Before any path MTU discovery: a 1,200-byte RTP payload with the link header fits.
    let max = link.connection.max_datagram_size().expect("datagrams on");
    let payload = vec![0x5a; 1200];
    let mut datagram = Vec::new();
    let media = Media {
        track: 1,
        layer: 2,
        seq: 1 << 40,
        timestamp: 1,
        marker: true,
        keyframe: true,
        resend: false,
        payload: &payload,
    };
    media.encode(&mut datagram);
    assert!(datagram.len() <= max, "{} bytes fit in {max}", datagram.len());
    send_media(&link.connection, datagram.clone().into()).expect("sent");
    let got = tokio::time::timeout(Duration::from_secs(5), at_a.connection.read_datagram()).await.unwrap().unwrap();
    assert_eq!(Media::decode(&got), Ok(media));
    // A datagram over the limit is not sent, and the caller learns why (to count it).
    let too_big = vec![0u8; max + 1];
    assert_eq!(send_media(&link.connection, too_big.into()), Err(DatagramDrop::TooLarge { size: max + 1, max }));
    assert_eq!(DatagramDrop::TooLarge { size: 0, max: 0 }.label(), "too_large");
    // A closed link says so.
    link.connection.close(0u32.into(), b"done");
    assert_eq!(send_media(&link.connection, vec![1].into()), Err(DatagramDrop::LinkLost));
    for e in [&*a, &b] {
        assert_eq!(refused(e, "accept"), [], "nothing refused");
        assert_eq!(refused(e, "connect"), [], "nothing refused");
    }
}

#[tokio::test]
async fn a_relay_with_a_certificate_from_another_ca_is_refused_and_counted() {
    let ca = new_ca("cluster");
    let a = Arc::new(endpoint(&ca, &issue(&ca, "eu-1")));
    let _admitted = accepting(Arc::clone(&a));
    let addr = a.local_addr().unwrap();
    // Another CA with another name, and an impostor CA with the cluster CA's very name.
    for (n, other) in [new_ca("another cluster"), new_ca("cluster")].iter().enumerate() {
        // The intruder trusts the cluster CA, so it would accept A: only A's check stops it.
        let intruder = endpoint(&ca, &issue(other, "us-1"));
        let err = intruder.connect(addr, "eu-1").await.expect_err("A refuses it");
        assert!(err.to_string().contains("us-1") || err.to_string().contains("eu-1"), "{err}");
        let expected = n as u64 + 1;
        wait_for("the refusal counted", || a.refusals().get("accept", Refusal::UntrustedCa) == expected).await;
    }
    assert_eq!(refused(&a, "accept"), [(Refusal::UntrustedCa, 2)]);
}

#[tokio::test]
async fn an_expired_certificate_is_refused_and_counted() {
    let ca = new_ca("cluster");
    let a = Arc::new(endpoint(&ca, &issue(&ca, "eu-1")));
    let _admitted = accepting(Arc::clone(&a));
    let t = now();
    let expired = ca.issue("us-1", Validity { not_before: t - 10 * 86_400, not_after: t - 86_400 }).unwrap();
    let old = endpoint(&ca, &expired);
    old.connect(a.local_addr().unwrap(), "eu-1").await.expect_err("A refuses an expired certificate");
    wait_for("the refusal counted", || a.refusals().get("accept", Refusal::Expired) == 1).await;
    assert_eq!(refused(&a, "accept"), [(Refusal::Expired, 1)]);
    // And the other way round: a relay whose own certificate expired cannot be linked to.
    let b = endpoint(&ca, &issue(&ca, "asia-1"));
    let old = Arc::new(old);
    let _admitted = accepting(Arc::clone(&old));
    b.connect(old.local_addr().unwrap(), "us-1").await.expect_err("B refuses an expired certificate");
    assert_eq!(refused(&b, "connect"), [(Refusal::Expired, 1)]);
}

#[tokio::test]
async fn a_relay_answering_for_another_relay_id_is_refused_by_the_connecting_relay() {
    let ca = new_ca("cluster");
    let a = Arc::new(endpoint(&ca, &issue(&ca, "eu-1")));
    let _admitted = accepting(Arc::clone(&a));
    let b = endpoint(&ca, &issue(&ca, "asia-1"));
    // B meant to reach us-1, but the relay at that address is eu-1.
    let err = b.connect(a.local_addr().unwrap(), "us-1").await.expect_err("wrong relay");
    assert!(err.to_string().contains("us-1"), "{err}");
    assert_eq!(refused(&b, "connect"), [(Refusal::WrongRelay, 1)]);
    // A relay id that cannot be in a certificate is refused before any packet is sent.
    let err = b.connect(a.local_addr().unwrap(), "a..b").await.expect_err("not a relay id");
    assert!(err.to_string().contains("a..b"), "{err}");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_and_counted() {
    let ca = new_ca("cluster");
    let a = Arc::new(endpoint(&ca, &issue(&ca, "eu-1")));
    let mut admitted = accepting(Arc::clone(&a));
    // A plain QUIC client that trusts the CA (so it accepts A) but has no certificate.
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls::pki_types::CertificateDer::from(pem_der(ca.cert_pem()));
    roots.add(der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"relay-link/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut client = quinn::Endpoint::client(LOOPBACK.parse::<SocketAddr>().unwrap()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = client.connect(a.local_addr().unwrap(), "eu-1").unwrap().await.expect("the TLS handshake passes");
    // ... and then A closes it without a welcome.
    let err = conn.accept_uni().await.expect_err("no welcome");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_eq!(refused(&a, "accept"), [(Refusal::NoCertificate, 1)]);
    assert!(admitted.try_recv().is_err(), "nobody was admitted");
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

#[test]
fn bad_link_credentials_fail_naming_the_key() {
    let ca = new_ca("cluster");
    let other = new_ca("other");
    let mine = issue(&ca, "eu-1");
    let theirs = issue(&other, "us-1");
    let keys = ["link.ca", "link.cert", "link.key"];
    let load = |ca: &str, cert: &str, key: &str| {
        LinkTls::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes(), keys, refusals()).unwrap_err().to_string()
    };
    assert!(load("", &mine.cert_pem, &mine.key_pem).starts_with("link.ca:"));
    assert!(load(ca.cert_pem(), "", &mine.key_pem).starts_with("link.cert:"));
    assert!(load(ca.cert_pem(), &mine.cert_pem, "").starts_with("link.key:"));
    let mismatch = load(ca.cert_pem(), &mine.cert_pem, &theirs.key_pem);
    assert!(mismatch.starts_with("link.key:") && mismatch.contains("does not match link.cert"), "{mismatch}");
    // A certificate that names no relay (the CA's own) is not a relay certificate.
    let not_relay = load(ca.cert_pem(), ca.cert_pem(), &ca.key_pem());
    assert!(not_relay.starts_with("link.cert:") && not_relay.contains("relayctl ca issue"), "{not_relay}");
}

/// Writes `issued` as `DIR/NAME.pem` and `DIR/NAME.key`; returns their paths as strings.
fn write_issued(dir: &Path, name: &str, issued: &Issued) -> (String, String) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    (cert.to_str().unwrap().to_owned(), key.to_str().unwrap().to_owned())
}

/// The flags of a relay `id` with links: the CA's and its own certificate's files in `dir`.
fn link_args(dir: &Path, ca: &Authority, id: &str) -> Vec<String> {
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
    let (cert, key) = write_issued(dir, id, &issue(ca, id));
    let ca_pem = ca_pem.to_str().unwrap().to_owned();
    ["--link-listen", LOOPBACK, "--link-ca", &ca_pem, "--link-cert", &cert, "--link-key", &key].map(String::from).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_binary_admits_cluster_relays_and_counts_refusals_in_its_metrics() {
    let dir = common::temp_dir("link");
    let ca = new_ca("cluster");
    let link_args = link_args(&dir, &ca, "eu-1");
    let link_args: Vec<&str> = link_args.iter().map(String::as_str).collect();
    let relay = RelayProcess::start("relay.toml", &link_args);
    let (_, addr) = common::links::addresses(&relay);
    let series = |reason: &str| format!("relay_link_refusals_total{{reason=\"{reason}\",side=\"accept\"}}");
    for r in Refusal::ALL {
        assert_eq!(relay.metric(&series(r.label())), 0.0, "every reason is exported from the start");
    }
    assert_eq!(relay.metric("relay_links_open"), 0.0);
    // The link certificate's expiry, for the alert that it is running out.
    let cert = std::fs::read_to_string(dir.join("eu-1.pem")).unwrap();
    let not_after = cluster::pki::not_after_of(&pem_der(&cert)).unwrap();
    assert_eq!(relay.metric("relay_certificate_expiry_timestamp_seconds{certificate=\"link\"}"), not_after as f64);

    // A peer that starts a handshake and goes silent: a client's first QUIC packet, captured
    // and replayed from a socket that never answers. The relay waits for it up to its handshake
    // timeout (10 s), and meanwhile admits others.
    let capture = tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap();
    let silent_client = endpoint(&ca, &issue(&ca, "us-9"));
    let capture_addr = capture.local_addr().unwrap();
    let attempt = tokio::spawn(async move {
        let _ = silent_client.connect(capture_addr, "eu-1").await;
    });
    let mut initial = vec![0u8; 2048];
    let n = capture.recv(&mut initial).await.unwrap();
    attempt.abort();
    let silent = tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap();
    silent.send_to(&initial[..n], addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A relay of the cluster links in, at once.
    let b = endpoint(&ca, &issue(&ca, "asia-1"));
    let started = std::time::Instant::now();
    let link = b.connect(addr, "eu-1").await.expect("the relay admits a cluster relay");
    assert!(started.elapsed() < Duration::from_secs(3), "not held up by the silent one: {:?}", started.elapsed());
    wait_for("the link counted", || relay.metric("relay_links_open") == 1.0).await;
    // One with another CA's certificate, and one whose certificate expired, do not.
    let intruder = endpoint(&ca, &issue(&new_ca("cluster"), "us-1"));
    intruder.connect(addr, "eu-1").await.expect_err("another CA's certificate");
    let t = now();
    let expired = ca.issue("us-2", Validity { not_before: t - 2 * 86_400, not_after: t - 60 }).unwrap();
    endpoint(&ca, &expired).connect(addr, "eu-1").await.expect_err("an expired certificate");
    wait_for("the refusals counted", || relay.metric(&series("expired")) == 1.0).await;
    assert_eq!(relay.metric(&series("untrusted_ca")), 1.0);
    assert_eq!(relay.metric("relay_links_open"), 1.0, "the refused relays hold no link");
    // The admitted link goes away when its peer closes it.
    link.connection.close(0u32.into(), b"bye");
    wait_for("the closed link forgotten", || relay.metric("relay_links_open") == 0.0).await;

    // A certificate for another relay than this one is refused at start, naming the key.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["--config", common::config_path("relay.toml").to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--sfu-http-listen", ""])
        .args(["--signaling-url", "http://127.0.0.1:9", "--cluster-token", "t", "--region", "eu", "--relay-id", "eu-2"])
        .args(link_args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("link.cert: is for relay \"eu-1\"") && stderr.contains("eu-2"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The link address from a relay's banner (with or without an SFU).
fn link_address(relay: &RelayProcess) -> SocketAddr {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut banner: Vec<String> = Vec::new();
    loop {
        banner.extend(relay.stdout.try_iter());
        let link = banner
            .iter()
            .find_map(|l| l.trim().strip_prefix("links       quic://"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
        if let Some(link) = link {
            return link;
        }
        assert!(std::time::Instant::now() < deadline, "no links line in the banner: {banner:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_without_an_sfu_serves_its_links_on_a_thread_of_their_own() {
    let dir = common::temp_dir("link-alone");
    let ca = new_ca("cluster");
    let mut args = link_args(&dir, &ca, "eu-1");
    args.extend(["--sfu-http-listen".into(), String::new()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = RelayProcess::start("relay.toml", &args);
    let addr = link_address(&relay);
    let banner: Vec<String> = relay.stdout.try_iter().collect();
    assert!(!banner.iter().any(|l| l.contains("WHIP")), "no SFU: {banner:?}");

    let b = endpoint(&ca, &issue(&ca, "asia-1"));
    let link = b.connect(addr, "eu-1").await.expect("the relay admits a cluster relay");
    wait_for("the link counted", || relay.metric("relay_links_open") == 1.0).await;
    // The relay measures the link (its keep-alives are answered) and exports the RTT.
    wait_for("the RTT exported", || {
        relay.metrics().lines().any(|l| l.starts_with("relay_link_rtt_seconds{peer=\"asia-1\"}"))
    })
    .await;
    let intruder = endpoint(&ca, &issue(&new_ca("cluster"), "us-1"));
    intruder.connect(addr, "eu-1").await.expect_err("another CA's certificate");
    let untrusted = "relay_link_refusals_total{reason=\"untrusted_ca\",side=\"accept\"}";
    wait_for("the refusal counted", || relay.metric(untrusted) == 1.0).await;
    link.connection.close(0u32.into(), b"bye");
    wait_for("the closed link forgotten", || relay.metric("relay_links_open") == 0.0).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn control_frames_cross_a_link_stream_in_any_pieces_unknown_ones_are_skipped_and_garbage_ends_it() {
    use relay::link::stream::{ControlReader, StreamEnd, write_control};
    use relay::link::wire::Control;
    let ca = new_ca("cluster");
    let a = Arc::new(endpoint(&ca, &issue(&ca, "eu-1")));
    let b = endpoint(&ca, &issue(&ca, "asia-1"));
    let accepted = {
        let a = Arc::clone(&a);
        tokio::spawn(async move { a.accept().await.expect("admitted") })
    };
    let link = b.connect(a.local_addr().unwrap(), "eu-1").await.unwrap();
    let at_a = accepted.await.unwrap();
    let messages = vec![
        Control::Subscribe { machine: "m1".into() },
        Control::Nack { track: 1, layer: 0, seqs: (0..300).collect() },
        Control::SeatInput { machine: "m1".into(), binary: true, data: vec![9; 5000], arrived_unix_ms: 1, rtt_ms: 2 },
    ];
    // Whole frames, then the same frames a byte at a time.
    let (mut send, recv) = link.connection.open_bi().await.unwrap();
    for m in &messages {
        write_control(&mut send, m).await.unwrap();
    }
    let mut bytes = Vec::new();
    for m in &messages {
        m.encode(&mut bytes).unwrap();
    }
    for b in &bytes {
        send.write_all(std::slice::from_ref(b)).await.unwrap();
    }
    send.finish().unwrap();
    drop(recv);
    let (_, at_a_recv) = at_a.connection.accept_bi().await.unwrap();
    let mut reader = ControlReader::new(at_a_recv);
    for m in messages.iter().chain(&messages) {
        assert_eq!(&reader.next().await.unwrap(), m);
    }
    assert!(matches!(reader.next().await, Err(StreamEnd::Finished)));

    // A frame of a type this version does not know (a newer relay's) is skipped, whole.
    let (mut send, _recv) = link.connection.open_bi().await.unwrap();
    let mut bytes = Vec::new();
    Control::Subscribe { machine: "m1".into() }.encode(&mut bytes).unwrap();
    bytes.extend_from_slice(&[4, 99, 7, 7, 7]);
    Control::Subscribe { machine: "m2".into() }.encode(&mut bytes).unwrap();
    send.write_all(&bytes).await.unwrap();
    send.finish().unwrap();
    let (_, recv) = at_a.connection.accept_bi().await.unwrap();
    let mut reader = ControlReader::new(recv);
    assert_eq!(reader.next().await.unwrap(), Control::Subscribe { machine: "m1".into() });
    assert_eq!(reader.next().await.unwrap(), Control::Subscribe { machine: "m2".into() });
    assert_eq!(reader.skipped(), 1);

    // A malformed frame ends the stream, saying why; so does one cut short.
    for (bytes, expected) in [(vec![0u8], "empty frame"), (vec![5u8, 1, 2], "inside a frame")] {
        let (mut send, _recv) = link.connection.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        let (_, recv) = at_a.connection.accept_bi().await.unwrap();
        let end = ControlReader::new(recv).next().await.unwrap_err();
        assert!(end.to_string().contains(expected), "{end}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_across_40_ms_and_1_percent_loss_comes_up_and_keeps_its_control_stream_whole() {
    use common::proxy::LossyProxy;
    use relay::link::stream::{ControlReader, write_control};
    use relay::link::wire::Control;
    use std::sync::atomic::Ordering;
    let ca = new_ca("cluster");
    let a = Arc::new(endpoint(&ca, &issue(&ca, "eu-1")));
    let b = endpoint(&ca, &issue(&ca, "asia-1"));
    let proxy = LossyProxy::start(a.local_addr().unwrap(), Duration::from_millis(40), 100).await;
    let accepted = {
        let a = Arc::clone(&a);
        tokio::spawn(async move { a.accept().await.expect("admitted") })
    };
    let link = b.connect(proxy.addr, "eu-1").await.expect("the link comes up through the proxy");
    let at_a = accepted.await.unwrap();
    // Datagrams: about 1% lost, nothing more (QUIC does not resend them; the edge NACKs).
    // 1,000 datagrams a second (8 Mbit/s), gently enough that a loaded test machine keeps up.
    let (sent, size) = (1500u64, 1000usize);
    let received = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), at_a.connection.read_datagram()).await {
            n += 1;
        }
        (n, at_a)
    });
    for i in 0..sent {
        let mut d = vec![0u8; size];
        d[..8].copy_from_slice(&i.to_be_bytes());
        relay::link::endpoint::send_media(&link.connection, d.into()).unwrap();
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (got, at_a) = received.await.unwrap();
    let share = got as f64 / sent as f64;
    println!(
        "through the proxy: {got} of {sent} datagrams ({:.1}%), rtt {:?}, proxy dropped {} up",
        share * 100.0,
        link.connection.rtt(),
        proxy.up.dropped.load(Ordering::Relaxed)
    );
    // Only what the path dropped is missing (a loss-based congestion controller would throttle
    // the link to a fraction of this on such a path).
    assert!((0.97..1.0).contains(&share), "{got} of {sent}");
    assert!(
        link.connection.rtt() >= Duration::from_millis(80),
        "the delay is on the path: {:?}",
        link.connection.rtt()
    );
    // The control stream loses nothing and keeps the order, whatever the path drops.
    let (mut send, _recv) = link.connection.open_bi().await.unwrap();
    for seq in 0..200u64 {
        write_control(&mut send, &Control::Nack { track: 1, layer: 0, seqs: vec![seq] }).await.unwrap();
    }
    send.finish().unwrap();
    let (_, recv) = at_a.connection.accept_bi().await.unwrap();
    let mut reader = ControlReader::new(recv);
    for seq in 0..200u64 {
        assert_eq!(reader.next().await.unwrap(), Control::Nack { track: 1, layer: 0, seqs: vec![seq] });
    }
}
