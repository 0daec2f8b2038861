//! `bench cascade`: the machine publishes at relay A, viewers watch at relay B, which links to A
//! over QUIC through a user-space proxy that delays every datagram by a fixed one-way delay (no
//! `tc netem` here). Beside it, the direct case: the same viewers at A; the two alternate for
//! `--rounds` rounds. Reported per case: delivery, the viewers' latency (for the cascade, minus
//! the emulated link delay), CPU per forwarded packet at A and at B, and link copies per packet
//! (A's first copies over the link per packet it received: 1.0 whatever the viewer count).
//!
//! What the hop adds is measured two ways. The difference of the two cases' medians carries the
//! publisher's own jitter (a 50 KB key frame leaves str0m over several ms) in both terms; so in
//! the cascade one more viewer, a reference, watches at A, and for each video packet the first
//! copy to reach a viewer at B less the copy that reached the reference, less the link delay,
//! is the hop alone (A's tap and QUIC send, the proxy, B's receive and first send), all times
//! taken from the kernel's arrival stamps.

use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cluster::media::HomeRelay;
use cluster::pki::{Authority, Validity};
use serde::Serialize;

use crate::sfu::{HomeFigures, SfuStep};
use crate::stats::LatencySummary;
use crate::targets::Env;

/// One case's figures.
#[derive(Debug, Clone, Serialize)]
pub struct CascadeCase {
    /// `direct` (viewers at A) or `cascade` (viewers at B, linked to A).
    pub path: String,
    pub step: SfuStep,
    /// The viewers' latency minus the emulated link delay (the cascade), or as measured.
    pub hop_latency: LatencySummary,
    /// Relay A's CPU µs per packet it forwarded (to viewers when direct; over the link, first
    /// copies, when cascading).
    pub a_us_per_packet: f64,
    /// Relay B's CPU µs per packet it forwarded to viewers (cascade only).
    pub b_us_per_packet: Option<f64>,
    /// A's first copies over the link per packet it received (cascade only).
    pub link_copies_per_packet: Option<f64>,
    /// Per video packet, the first copy at a viewer at B less the copy at a reference viewer
    /// at A, less the link delay (cascade only): the hop alone, with neither the publisher's
    /// side nor either relay's fan-out in it.
    pub paired_hop: Option<LatencySummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CascadeReport {
    pub viewers: usize,
    pub link_delay_ms: f64,
    /// Direct and cascade cases alternate, one pair per round.
    pub rounds: usize,
    /// Relay B had a CPU of its own (`--split-cpus`).
    pub split_cpus: bool,
    pub cases: Vec<CascadeCase>,
    /// Over the rounds: the medians of each path's p50 and p99 (minus the link delay for the
    /// cascade), and what the hop adds (cascade median minus direct median), in µs.
    pub summary: HopSummary,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HopSummary {
    pub direct_p50_us: f64,
    pub direct_p99_us: f64,
    pub cascade_p50_us: f64,
    pub cascade_p99_us: f64,
    pub hop_p50_us: f64,
    pub hop_p99_us: f64,
    /// The smallest and largest p99 of each path over the rounds (the method's noise).
    pub direct_p99_range_us: (f64, f64),
    pub cascade_p99_range_us: (f64, f64),
    /// The paired measure (the first copy at B less the copy at A's reference viewer, less
    /// the link delay): medians over the rounds, and the range of its p99.
    pub paired_hop_p50_us: f64,
    pub paired_hop_p99_us: f64,
    pub paired_hop_p99_range_us: (f64, f64),
}

fn per_packet(cpu_s: f64, packets: f64) -> f64 {
    if packets > 0.0 { cpu_s * 1e6 / packets } else { 0.0 }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// Medians over the rounds and the hop's share.
pub fn summarise(cases: &[CascadeCase]) -> HopSummary {
    let of = |path: &str, f: fn(&CascadeCase) -> f64| -> Vec<f64> {
        cases.iter().filter(|c| c.path == path).map(f).collect()
    };
    let (d50, d99) = (of("direct", |c| c.hop_latency.p50_us), of("direct", |c| c.hop_latency.p99_us));
    let (c50, c99) = (of("cascade", |c| c.hop_latency.p50_us), of("cascade", |c| c.hop_latency.p99_us));
    let paired = |f: fn(&LatencySummary) -> f64| -> Vec<f64> {
        cases.iter().filter_map(|c| c.paired_hop.as_ref()).map(f).collect()
    };
    let (h50, h99) = (paired(|h| h.p50_us), paired(|h| h.p99_us));
    if d99.is_empty() || c99.is_empty() {
        return HopSummary::default();
    }
    let s = HopSummary {
        direct_p50_us: median(d50),
        direct_p99_us: median(d99.clone()),
        cascade_p50_us: median(c50),
        cascade_p99_us: median(c99.clone()),
        direct_p99_range_us: range(&d99),
        cascade_p99_range_us: range(&c99),
        paired_hop_p50_us: median(h50),
        paired_hop_p99_us: median(h99.clone()),
        paired_hop_p99_range_us: if h99.is_empty() { (0.0, 0.0) } else { range(&h99) },
        ..HopSummary::default()
    };
    HopSummary { hop_p50_us: s.cascade_p50_us - s.direct_p50_us, hop_p99_us: s.cascade_p99_us - s.direct_p99_us, ..s }
}

/// Relay `id`'s `[link]` section, with a certificate from `ca` written into `dir`.
fn link_section(ca: &Authority, env: &Env, id: &str) -> anyhow::Result<String> {
    let issued = ca.issue(id, Validity::days_from(cluster::time::unix_now(), 1))?;
    let (ca_pem, cert, key) =
        (env.dir.join("cluster-ca.pem"), env.dir.join(format!("{id}.pem")), env.dir.join(format!("{id}.key")));
    std::fs::write(&ca_pem, ca.cert_pem())?;
    std::fs::write(&cert, &issued.cert_pem)?;
    std::fs::write(&key, &issued.key_pem)?;
    Ok(format!(
        "\n[link]\nlisten = \"127.0.0.1:0\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        ca_pem.display().to_string(),
        cert.display().to_string(),
        key.display().to_string()
    ))
}

/// Runs both cases `rounds` times, alternating, with `viewers` viewers for `secs` seconds each.
/// `split_cpus`: relay B gets the last CPU to itself and relay A shares the others with the
/// bench, as if B ran on another machine (with two CPUs, the relays no longer queue behind
/// each other, which they would not in a deployment).
pub fn run(
    env: &Env,
    viewers: usize,
    secs: f64,
    delay: Duration,
    rounds: usize,
    split_cpus: bool,
) -> anyhow::Result<CascadeReport> {
    let ca = Authority::generate("bench-cluster", Validity::days_from(cluster::time::unix_now(), 1))?;
    let (_a_server, a) = crate::targets::start_sfu_named(env, "relay-a", &link_section(&ca, env, "relay-a")?)?;
    let (_b_server, b) = crate::targets::start_sfu_named(env, "relay-b", &link_section(&ca, env, "relay-b")?)?;
    let a_link = a.link.context("relay A printed no link address")?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if split_cpus {
        anyhow::ensure!(cpus >= 2, "--split-cpus needs two CPUs or more, this machine has {cpus}");
        let rest: Vec<usize> = (0..cpus - 1).collect();
        crate::sys::pin_process(b.pid, &[cpus - 1])?;
        crate::sys::pin_process(a.pid, &rest)?;
        crate::sys::pin_process(std::process::id(), &rest)?;
    }
    // No delay: B links to A directly, so the hop is the relays' alone (the proxy's own cost,
    // two threads and two syscalls per datagram, stays out of it).
    let proxy = if delay.is_zero() { None } else { Some(DelayProxy::start(a_link, delay)?) };
    let home = HomeRelay { id: "relay-a".into(), link: proxy.as_ref().map_or(a_link, |p| p.addr).to_string() };
    let delay_ms = delay.as_secs_f64() * 1000.0;
    let mut cases = Vec::new();
    // A first, short round links B to A and settles the subscription.
    crate::sfu::step_via(&a, &b, Some(home.clone()), viewers, 2.0_f64.min(secs), 1)?;
    for round in 0..rounds.max(1) {
        let (direct, _) = crate::sfu::step_via(&a, &a, None, viewers, secs, 10 + 2 * round)?;
        cases.push(CascadeCase {
            path: "direct".into(),
            hop_latency: direct.latency,
            a_us_per_packet: direct.cpu_us_per_packet,
            b_us_per_packet: None,
            link_copies_per_packet: None,
            paired_hop: None,
            step: direct,
        });
        let (step, at_a): (SfuStep, HomeFigures) =
            crate::sfu::step_via(&a, &b, Some(home.clone()), viewers, secs, 11 + 2 * round)?;
        let less = |us: f64| (us - delay_ms * 1000.0).max(0.0);
        let mut hop = step.latency;
        hop.p50_us = less(hop.p50_us);
        hop.p99_us = less(hop.p99_us);
        hop.p999_us = less(hop.p999_us);
        hop.max_us = less(hop.max_us);
        cases.push(CascadeCase {
            path: "cascade".into(),
            hop_latency: hop,
            a_us_per_packet: per_packet(at_a.cpu_s, at_a.link_sent + at_a.egress),
            b_us_per_packet: Some(step.cpu_us_per_packet),
            link_copies_per_packet: Some(if at_a.ingest > 0.0 { at_a.link_sent / at_a.ingest } else { 0.0 }),
            paired_hop: at_a.hop.map(|mut h| {
                h.p50_us = less(h.p50_us);
                h.p99_us = less(h.p99_us);
                h.p999_us = less(h.p999_us);
                h.max_us = less(h.max_us);
                h.mean_us = less(h.mean_us);
                h
            }),
            step,
        });
    }
    drop(proxy);
    let summary = summarise(&cases);
    Ok(CascadeReport { viewers, link_delay_ms: delay_ms, rounds: rounds.max(1), split_cpus, cases, summary })
}

pub const HEADER: &str = "| path | viewers | loss | latency p50 / p99 (ms) | minus link delay p50 / p99 (ms) | hop alone p50 / p99 (ms) | A µs/pkt | B µs/pkt | link copies/pkt |\n\
|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";

pub fn markdown(r: &CascadeReport) -> String {
    let mut out = String::from(HEADER);
    for c in &r.cases {
        let s = &c.step;
        let opt = |v: Option<f64>, digits: usize| v.map_or("–".to_owned(), |v| format!("{v:.digits$}"));
        out.push_str(&format!(
            "| {} | {} | {:.3}% | {:.2} / {:.2} | {:.2} / {:.2} | {} | {:.2} | {} | {} |\n",
            c.path,
            s.viewers,
            s.loss * 100.0,
            s.latency.p50_us / 1000.0,
            s.latency.p99_us / 1000.0,
            c.hop_latency.p50_us / 1000.0,
            c.hop_latency.p99_us / 1000.0,
            c.paired_hop.map_or("–".to_owned(), |h| format!("{:.2} / {:.2}", h.p50_us / 1000.0, h.p99_us / 1000.0)),
            c.a_us_per_packet,
            opt(c.b_us_per_packet, 2),
            opt(c.link_copies_per_packet, 3),
        ));
    }
    let h = &r.summary;
    let ms = |us: f64| us / 1000.0;
    out.push_str(&format!(
        "\nLink: {:.0} ms each way through a user-space proxy (none at 0 ms); latency ends at the kernel's arrival stamp in the viewer's socket.\n\
         {}Medians over {} rounds, p50 / p99 (ms): direct {:.2} / {:.2} (p99 {:.2}-{:.2}); cascade minus link delay {:.2} / {:.2} (p99 {:.2}-{:.2}).\n\
         The relay hop adds {:.2} ms at p50 and {:.2} ms at p99 (difference of the medians).\n\
         **The hop alone, packet by packet (first copy at B less the copy at A's reference viewer, less the link delay): \
         {:.2} ms at p50 and {:.2} ms at p99** (p99 {:.2}-{:.2} over the rounds).\n",
        r.link_delay_ms,
        if r.split_cpus { "relay B on a CPU of its own, relay A and the bench on the others. " } else { "" },
        r.rounds,
        ms(h.direct_p50_us),
        ms(h.direct_p99_us),
        ms(h.direct_p99_range_us.0),
        ms(h.direct_p99_range_us.1),
        ms(h.cascade_p50_us),
        ms(h.cascade_p99_us),
        ms(h.cascade_p99_range_us.0),
        ms(h.cascade_p99_range_us.1),
        ms(h.hop_p50_us),
        ms(h.hop_p99_us),
        ms(h.paired_hop_p50_us),
        ms(h.paired_hop_p99_us),
        ms(h.paired_hop_p99_range_us.0),
        ms(h.paired_hop_p99_range_us.1),
    ));
    out
}

/// A UDP proxy in front of `server` that holds every datagram `delay`, both ways (one client).
struct DelayProxy {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A datagram due at `0`.
struct Due(Instant, Vec<u8>, SocketAddr);

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    /// Earliest first in a max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.cmp(&self.0)
    }
}

impl DelayProxy {
    fn start(server: SocketAddr, delay: Duration) -> anyhow::Result<Self> {
        let front = UdpSocket::bind("127.0.0.1:0")?;
        let back = UdpSocket::bind("127.0.0.1:0")?;
        let addr = front.local_addr()?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Due>();
        let client = std::sync::Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        for (socket, toward_server) in [(front.try_clone()?, true), (back.try_clone()?, false)] {
            let (tx, stop, client) = (tx.clone(), stop.clone(), client.clone());
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 2048];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                    let to = if toward_server {
                        *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                        server
                    } else {
                        match *client.lock().unwrap_or_else(|e| e.into_inner()) {
                            Some(c) => c,
                            None => continue,
                        }
                    };
                    let _ = tx.send(Due(Instant::now() + delay, buf[..n].to_vec(), to));
                }
            });
        }
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            let mut heap = BinaryHeap::new();
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let wait = heap
                    .peek()
                    .map_or(Duration::from_millis(100), |d: &Due| d.0.saturating_duration_since(Instant::now()));
                if let Ok(d) = rx.recv_timeout(wait) {
                    heap.push(d);
                }
                while heap.peek().is_some_and(|d| d.0 <= Instant::now()) {
                    let Some(Due(_, data, to)) = heap.pop() else { break };
                    // Datagrams for the server leave from `back`, those for the client from `front`.
                    let socket = if to == server { &back } else { &front };
                    let _ = socket.send_to(&data, to);
                }
            }
        });
        Ok(Self { addr, stop })
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(path: &str, p50_ms: f64, p99_ms: f64) -> CascadeCase {
        let step = SfuStep {
            viewers: 1,
            secs: 1.0,
            sent: 1,
            delivered: 1,
            loss: 0.0,
            egress_pps: 0.0,
            relay_cores: 0.0,
            cpu_us_per_packet: 0.0,
            egress_pps_per_core: 0.0,
            latency: LatencySummary::default(),
            bench_cores: 0.0,
        };
        let hop_latency =
            LatencySummary { p50_us: p50_ms * 1000.0, p99_us: p99_ms * 1000.0, ..LatencySummary::default() };
        CascadeCase {
            path: path.into(),
            step,
            hop_latency,
            a_us_per_packet: 0.0,
            b_us_per_packet: None,
            link_copies_per_packet: None,
            paired_hop: (path == "cascade").then(|| LatencySummary {
                p50_us: p50_ms * 100.0,
                p99_us: p99_ms * 100.0,
                ..LatencySummary::default()
            }),
        }
    }

    #[test]
    fn the_hop_is_the_difference_of_the_medians_over_rounds() {
        let cases = [
            case("direct", 4.0, 17.0),
            case("cascade", 4.5, 30.0),
            case("direct", 5.0, 19.0),
            case("cascade", 5.0, 18.0),
            case("direct", 4.5, 18.0),
            case("cascade", 4.8, 18.5),
        ];
        let s = summarise(&cases);
        assert_eq!((s.direct_p50_us, s.direct_p99_us), (4500.0, 18_000.0));
        assert_eq!((s.cascade_p50_us, s.cascade_p99_us), (4800.0, 18_500.0), "one slow round does not move a median");
        assert!((s.hop_p50_us - 300.0).abs() < 1e-6 && (s.hop_p99_us - 500.0).abs() < 1e-6, "{s:?}");
        assert_eq!(s.cascade_p99_range_us, (18_000.0, 30_000.0));
        assert_eq!((s.paired_hop_p50_us, s.paired_hop_p99_us), (480.0, 1850.0), "the paired hop's medians");
        assert_eq!(s.paired_hop_p99_range_us, (1800.0, 3000.0));
        assert_eq!(summarise(&cases[..1]).hop_p99_us, 0.0, "no cascade case, no figure");
        assert_eq!(median(vec![3.0, 1.0]), 2.0);
    }
}
