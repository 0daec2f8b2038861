//! Abuse: a flood of 100,000 unauthenticated Allocate requests from 1,000 source ports of one
//! address (what a spoofed-source flood looks like to the relay: many 5-tuples, nothing behind
//! them), while an authenticated client relays through the same relay. The relay must not
//! become a reflector (answers capped per source: `limits.unauthenticated_per_ip`, 50/s per
//! worker core by default), must keep no state for the flood (no allocations, memory flat), and
//! the real client must lose nothing. The figures are printed.

mod common;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{RawClient, RelayProcess, channel_data, error_code, metric_value, peer_attr};
use stun::message::{CLASS_REQUEST, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, Message, MessageType, Setter};
use turn::proto::channum::ChannelNumber;

const FLOOD: usize = 100_000;
const LOOPBACK_SECRET: &str = "loopback-test-secret";
const SOURCES: usize = 1_000;

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/pid/status");
    kb * 1024
}

/// An unsigned Allocate, as the first message of any TURN client (and of a flood).
fn unsigned_allocate() -> Vec<u8> {
    let mut m = Message::new();
    m.typ = MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST);
    m.new_transaction_id().unwrap();
    m.write_header();
    turn::proto::reqtrans::RequestedTransport { protocol: turn::proto::PROTO_UDP }.add_to(&mut m).unwrap();
    stun::fingerprint::FINGERPRINT.add_to(&mut m).unwrap();
    m.raw
}

#[test]
fn a_flood_of_unauthenticated_allocates_gets_capped_answers_no_state_and_costs_a_real_client_nothing() {
    let relay = RelayProcess::start("relay-loopback.toml", &[]);
    let workers = 2.0; // relay-loopback.toml
    let pid = relay.child.id();

    // The real client: allocated before the flood, then pinging an echo peer through a channel.
    let mut client = RawClient::rest(relay.udp, LOOPBACK_SECRET, 600, "relay");
    let relayed = client.allocate().expect("allocate");
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let resp = client
        .call(METHOD_CHANNEL_BIND, &[&ChannelNumber(0x4000), &peer_attr(&peer.local_addr().unwrap().to_string())]);
    assert_eq!(error_code(&resp), None);
    peer.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = peer.recv_from(&mut buf) {
                    assert_eq!(from, relayed);
                    peer.send_to(&buf[..n], from).unwrap();
                }
            }
        })
    };
    let socket = client.socket.try_clone().unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let (sent, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let pinger = {
        let (stop, sent, received, server) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&received), relay.udp);
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut seq = 0u64;
            // One ping in flight at a time, every 2 ms: a game's input rate, as a round trip.
            while !stop.load(Ordering::Relaxed) {
                socket.send_to(&channel_data(0x4000, &seq.to_be_bytes()), server).unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
                match socket.recv_from(&mut buf) {
                    Ok((12, _)) if buf[4..12] == seq.to_be_bytes() => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("ping {seq} lost or mangled during the flood: {other:?}"),
                }
                seq += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    std::thread::sleep(Duration::from_millis(500));
    let rss_before = rss_bytes(pid);

    // The flood: 1,000 sockets, 100 unsigned Allocates each, as fast as this thread sends.
    let sources: Vec<UdpSocket> = (0..SOURCES).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    for s in &sources {
        s.set_nonblocking(true).unwrap();
    }
    let request = unsigned_allocate();
    let (mut answered, mut answer_bytes) = (0u64, 0u64);
    let started = Instant::now();
    for round in 0..FLOOD / SOURCES {
        for s in &sources {
            s.send_to(&request, relay.udp).unwrap();
        }
        if round % 10 == 9 {
            // Read the answers as they come, so the flood's sockets never drop one for want of buffer.
            drain(&sources, &mut answered, &mut answer_bytes);
        }
    }
    let flood_time = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    drain(&sources, &mut answered, &mut answer_bytes);
    let elapsed = started.elapsed().as_secs_f64();
    let rss_after = rss_bytes(pid);

    stop.store(true, Ordering::Relaxed);
    pinger.join().expect("the real client lost nothing");
    echo.join().unwrap();

    let m = relay.metrics();
    let limited = metric_value(&m, "relay_dropped_packets_total{reason=\"rate_limited\"}");
    let request_bytes = (FLOOD * request.len()) as f64;
    println!(
        "flood: {FLOOD} unsigned Allocates from {SOURCES} ports in {:.2} s ({:.0}/s); answered {answered} \
         (cap {:.0} per second over {workers} cores, plus bursts), rate-limited {limited}; \
         {answer_bytes} bytes out for {request_bytes:.0} in (reflection factor {:.4}); relay RSS {} -> {} KiB; \
         real client: {} of {} pings answered",
        flood_time.as_secs_f64(),
        FLOOD as f64 / flood_time.as_secs_f64(),
        50.0 * workers,
        answer_bytes as f64 / request_bytes,
        rss_before / 1024,
        rss_after / 1024,
        received.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
    );
    // Capped: each worker core answers one source 50 per second after a burst of 50.
    let cap = workers * 50.0 * (elapsed + 1.0);
    assert!((answered as f64) <= cap, "answered {answered} > cap {cap:.0}");
    assert!(answered > 0, "the source is limited, not cut off");
    // Every request the relay got was answered or counted (the kernel may drop some before it
    // reads them, if this machine's sender outruns it: those cost the relay nothing).
    assert!(limited + answered as f64 <= FLOOD as f64, "{limited} + {answered}");
    assert!(limited >= FLOOD as f64 * 0.5, "most of the flood reached the relay and was refused: {limited}");
    // No state: the only allocation is the real client's; memory flat (allocator noise aside).
    assert_eq!(metric_value(&m, "relay_allocations_active"), 1.0);
    let grown = rss_after.saturating_sub(rss_before);
    assert!(grown < 4 << 20, "RSS grew by {grown} bytes during the flood");
    assert_eq!(sent.load(Ordering::Relaxed), received.load(Ordering::Relaxed));
    assert!(received.load(Ordering::Relaxed) >= 100, "the client kept relaying during the flood");
}

/// Reads every answer the flood's sockets hold, counting them and their bytes.
fn drain(sources: &[UdpSocket], answers: &mut u64, bytes: &mut u64) {
    let mut buf = [0u8; 2048];
    for s in sources {
        while let Ok((len, _)) = s.recv_from(&mut buf) {
            let mut m = Message::new();
            assert!(m.unmarshal_binary(&buf[..len]).is_ok(), "answers are STUN");
            *answers += 1;
            *bytes += len as u64;
        }
    }
}
