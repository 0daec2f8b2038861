//! `bench soak`: every target at once, for a set time, at a fixed share of the rate it reached
//! alone, with authenticated allocation churn beside the traffic; its process (RSS, open files,
//! threads) and the traffic's loss sampled every interval. What it is for: a leak (memory, file
//! descriptors, threads, allocations never freed) or a slow degradation shows as growth between
//! the first window and the last, or as intervals losing more than the first.
//!
//! The targets run at the same time, each with its own relay port range, echo peer and load
//! thread, so that drift of the machine (a noisy neighbour, memory reclaim) meets all of them
//! alike, and so that an hour's soak takes an hour, not an hour per target.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::report::Machine;
use crate::scenarios::{self, Plan};
use crate::targets::{Env, Kind, RELAY_PORTS, Server};
use crate::traffic::{EchoPeer, Engine};
use crate::{sys, turnc};

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    pub minutes: f64,
    pub interval_secs: f64,
    /// Share of each target's measured maximum rate to run at.
    pub fraction: f64,
    /// A fixed rate for every target instead (round trips per second); skips the calibration.
    pub rate: Option<f64>,
    /// Allocations a minute, beside the traffic: half deleted after [`HOLD_BEFORE_DELETE`], half
    /// left to expire.
    pub churn_per_min: usize,
    pub flows: usize,
    pub payload: usize,
}

/// How long a churned allocation that is deleted lives first.
const HOLD_BEFORE_DELETE: Duration = Duration::from_secs(20);

/// How long past its lifetime a churned allocation left to expire is counted alive.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// The churn's clients take a new loopback address every second, back to the first after this
/// many seconds, longer than the lifetime the servers grant (600 s). So the socket of an
/// allocation left to expire can be closed at once, as a vanished browser's is, and no later
/// client meets its 5-tuple while the server still holds it (437, allocation mismatch), without
/// the bench holding a socket per expiring allocation: two targets' 10,000 each would pass the
/// open-file limit of a container that may not raise it (20,000 on our VM).
const CHURN_ADDRESS_CYCLE: u64 = 1000;

/// The churn's client address for second `second` of the soak (see [`CHURN_ADDRESS_CYCLE`]).
fn churn_ip(second: u64) -> std::net::IpAddr {
    let s = second % CHURN_ADDRESS_CYCLE;
    std::net::IpAddr::from([127, 100, (s / 250) as u8, (s % 250) as u8 + 1])
}

/// One interval of one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the soak started, at the end of the interval.
    pub at_secs: f64,
    pub rss_bytes: u64,
    /// Open file descriptors of the server (coturn holds a socket per allocation).
    pub fds: u64,
    pub threads: u64,
    /// Allocations the bench holds or left to expire on the server, by the lifetimes granted:
    /// the flows, the churned ones not yet deleted or expired.
    pub allocations: u64,
    pub sent: u64,
    pub received: u64,
    pub loss: f64,
    /// Churn since the start: allocations made, refused or timed out, deleted.
    pub churn_allocated: u64,
    pub churn_failed: u64,
    pub churn_deleted: u64,
}

/// One target's soak.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetSoak {
    pub target: String,
    /// The highest rate it reached alone (round trips/s at ≤ 0.1% loss), when calibrated.
    pub max_pps: Option<f64>,
    /// The rate it soaked at.
    pub rate: f64,
    pub samples: Vec<Sample>,
    /// Churned allocations that failed, by error code (0: timed out after 5 tries).
    #[serde(default)]
    pub churn_failures: BTreeMap<u16, u64>,
    pub summary: Option<Summary>,
    pub error: Option<String>,
}

/// First window against last.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub window_secs: f64,
    pub rss_first: f64,
    pub rss_last: f64,
    /// (last window's mean RSS / first window's) − 1.
    pub rss_growth: f64,
    /// RSS at the end of the first window (minute 10 of an hour) and at the end of the run: the
    /// first window holds the warm-up (allocations left to expire pile up for a lifetime, 10
    /// minutes, before they start to go), so growth after it is what a leak would show.
    pub rss_after_first_window: u64,
    pub rss_end: u64,
    /// (`rss_end` / `rss_after_first_window`) − 1.
    pub rss_growth_after_first_window: f64,
    pub fds_first: f64,
    pub fds_last: f64,
    pub threads_first: f64,
    pub threads_last: f64,
    pub first_interval_loss: f64,
    pub worst_interval_loss: f64,
    pub worst_interval_at_secs: f64,
    /// Intervals (after the first) that lost more than the first.
    pub intervals_worse_than_first: usize,
    pub total_loss: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Soak {
    pub started_unix: u64,
    pub machine: Machine,
    pub options: Options,
    pub targets: Vec<TargetSoak>,
}

/// Relay port ranges for `n` servers at once: [`RELAY_PORTS`] cut into `n` pieces.
fn port_ranges(n: usize) -> Vec<(u16, u16)> {
    let (lo, hi) = (u32::from(RELAY_PORTS.0), u32::from(RELAY_PORTS.1));
    let width = (hi - lo + 1) / n.max(1) as u32;
    (0..n as u32).map(|i| ((lo + i * width) as u16, (lo + (i + 1) * width - 1) as u16)).collect()
}

/// The echo peer of the `i`th target: a hundred ports of its own below the relay port ranges.
fn echo_peer(i: usize) -> anyhow::Result<EchoPeer> {
    let base = 9000 + 100 * i as u16;
    EchoPeer::start_in(base..base + 100)
}

/// Runs the soak.
pub fn run(env: &Env, kinds: &[Kind], opts: &Options) -> anyhow::Result<Soak> {
    anyhow::ensure!(!kinds.is_empty(), "--targets: no target");
    anyhow::ensure!(opts.interval_secs >= 1.0, "--interval-secs must be at least 1");
    anyhow::ensure!(opts.minutes * 60.0 >= opts.interval_secs, "--minutes: shorter than one interval");
    anyhow::ensure!(opts.fraction > 0.0 && opts.fraction <= 1.0, "--fraction must be in (0, 1]");
    anyhow::ensure!(env.external.is_none(), "soak starts its own servers (no --server)");
    for k in kinds {
        anyhow::ensure!(k.is_turn(), "{}: the soak drives TURN servers", k.name());
        if let Some(why) = env.unavailable(*k) {
            anyhow::bail!("{}: {why}", k.name());
        }
    }
    // Calibration: each target alone, before any soaks.
    let mut rates = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        let (max, rate) = match opts.rate {
            Some(r) => (None, r),
            None => {
                eprintln!("soak: measuring {}'s maximum rate alone", k.name());
                let plan = Plan { step_secs: 1.0, ..Plan::full() };
                let t = scenarios::throughput(env, *k, &echo_peer(i)?, &plan, opts.payload, opts.flows)?;
                eprintln!("  {:.0} round trips/s; soaking at {:.0}", t.max_pps, t.max_pps * opts.fraction);
                (Some(t.max_pps), t.max_pps * opts.fraction)
            }
        };
        rates.push((max, rate));
    }
    let started_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let start = Instant::now();
    let intervals = (opts.minutes * 60.0 / opts.interval_secs).round().max(1.0) as usize;
    let ranges = port_ranges(kinds.len());
    let handles: Vec<_> = kinds
        .iter()
        .enumerate()
        .map(|(i, &kind)| {
            let env = Env { relay_ports: ranges[i], ..env.clone() };
            let opts = opts.clone();
            let (max_pps, rate) = rates[i];
            std::thread::spawn(move || {
                let mut out = TargetSoak {
                    target: kind.name().into(),
                    max_pps,
                    rate,
                    samples: Vec::new(),
                    churn_failures: BTreeMap::new(),
                    summary: None,
                    error: None,
                };
                if let Err(e) =
                    soak_one(&env, kind, i, &opts, rate, intervals, start, &mut out.samples, &mut out.churn_failures)
                {
                    out.error = Some(format!("{e:#}"));
                }
                out.summary = summarize(&out.samples, opts.interval_secs);
                out
            })
        })
        .collect();
    let targets = handles.into_iter().map(|h| h.join().expect("a soak thread panicked")).collect();
    Ok(Soak { started_unix, machine: Machine::detect(), options: opts.clone(), targets })
}

/// Counters the churn thread shares with the sampler.
#[derive(Default)]
struct Churn {
    allocated: AtomicU64,
    failed: AtomicU64,
    deleted: AtomicU64,
    /// Churned allocations alive on the server (held for deletion, or not yet expired).
    alive: AtomicU64,
}

#[allow(clippy::too_many_arguments)]
fn soak_one(
    env: &Env,
    kind: Kind,
    index: usize,
    opts: &Options,
    rate: f64,
    intervals: usize,
    start: Instant,
    samples: &mut Vec<Sample>,
    churn_failures: &mut BTreeMap<u16, u64>,
) -> anyhow::Result<()> {
    let peer = echo_peer(index)?;
    let mut server = Server::start(kind, env, peer.addr, 0, Duration::ZERO)?;
    let pid = server.pid()?;
    let (flows, _clients) = scenarios::flows(&server, opts.flows, peer.addr)?;
    let mut engine = Engine::new(flows, &peer, server.addr)?;
    let churn = Arc::new(Churn::default());
    let stop = Arc::new(AtomicBool::new(false));
    let churner = {
        let (churn, stop, addr, per_min) = (churn.clone(), stop.clone(), server.addr, opts.churn_per_min);
        std::thread::spawn(move || churn_loop(addr, per_min, &churn, &stop))
    };
    let drain = Duration::from_millis(300);
    let step = Duration::from_secs_f64(opts.interval_secs).saturating_sub(drain);
    let result = (|| {
        for n in 0..intervals {
            let r = engine.step(rate, step, drain, opts.payload, false);
            anyhow::ensure!(server.alive(), "{} exited during the soak", kind.name());
            let sample = Sample {
                at_secs: start.elapsed().as_secs_f64(),
                rss_bytes: sys::rss_bytes(pid)?,
                fds: sys::open_fds(pid)?,
                threads: sys::threads(pid)?,
                allocations: opts.flows as u64 + churn.alive.load(Ordering::Relaxed),
                sent: r.sent,
                received: r.received,
                loss: r.loss(),
                churn_allocated: churn.allocated.load(Ordering::Relaxed),
                churn_failed: churn.failed.load(Ordering::Relaxed),
                churn_deleted: churn.deleted.load(Ordering::Relaxed),
            };
            eprintln!(
                "soak {:>14} {:>3}/{intervals} {:>6.0} s: RSS {:>7.1} MiB, {:>6} fds, {:>3} threads, {:>6} allocations, loss {:.5}, churn {} ok {} failed",
                kind.name(),
                n + 1,
                sample.at_secs,
                sample.rss_bytes as f64 / 1048576.0,
                sample.fds,
                sample.threads,
                sample.allocations,
                sample.loss,
                sample.churn_allocated,
                sample.churn_failed
            );
            samples.push(sample);
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    *churn_failures = churner.join().unwrap_or_default();
    result
}

/// Allocates `per_min` a minute in one-second batches until `stop`: even ones are deleted
/// after [`HOLD_BEFORE_DELETE`], odd ones have their socket closed at once and are left to
/// expire at the lifetime the server granted. Each second's clients have an address of their own
/// ([`churn_ip`]).
/// Returns the failures by code (0: timed out).
fn churn_loop(server: std::net::SocketAddr, per_min: usize, churn: &Churn, stop: &AtomicBool) -> BTreeMap<u16, u64> {
    if per_min == 0 {
        return BTreeMap::new();
    }
    let creds = scenarios::creds();
    let mut to_delete: VecDeque<(Instant, turnc::Client)> = VecDeque::new();
    // When each allocation left to expire is gone from the server (its socket is closed).
    let mut expiring: VecDeque<Instant> = VecDeque::new();
    let mut second = 0u64;
    let mut warned = false;
    let mut failures: BTreeMap<u16, u64> = BTreeMap::new();
    let mut owed = 0.0f64;
    let mut next = Instant::now();
    let mut parity = 0usize;
    while !stop.load(Ordering::Relaxed) {
        next += Duration::from_secs(1);
        owed += per_min as f64 / 60.0;
        let count = owed.floor() as usize;
        owed -= count as f64;
        if count > 0 {
            match turnc::allocate_many(server, &creds, count, 16, &[churn_ip(second)], u64::MAX, None) {
                Ok(a) => {
                    churn.allocated.fetch_add(a.clients.len() as u64, Ordering::Relaxed);
                    churn.failed.fetch_add(a.failures.values().sum(), Ordering::Relaxed);
                    for (code, n) in a.failures {
                        *failures.entry(code).or_default() += n;
                    }
                    let now = Instant::now();
                    for c in a.clients {
                        parity += 1;
                        if parity.is_multiple_of(2) {
                            to_delete.push_back((now + HOLD_BEFORE_DELETE, c));
                        } else {
                            // Some seconds past the lifetime: the server has let it go by then.
                            if c.lifetime.as_secs() >= CHURN_ADDRESS_CYCLE && !warned {
                                warned = true;
                                eprintln!(
                                    "soak: {server} grants {:?}, longer than the churn's address cycle ({CHURN_ADDRESS_CYCLE} s): \
                                     later churned Allocates may meet old allocations (437)",
                                    c.lifetime
                                );
                            }
                            expiring.push_back(now + c.lifetime + EXPIRY_MARGIN);
                        }
                    }
                }
                Err(_) => {
                    // The bench could not make client sockets (code 1 here).
                    churn.failed.fetch_add(count as u64, Ordering::Relaxed);
                    *failures.entry(1).or_default() += count as u64;
                }
            }
        }
        let now = Instant::now();
        let due = to_delete.iter().take_while(|(at, _)| *at <= now).count();
        if due > 0 {
            let done: Vec<turnc::Client> = to_delete.drain(..due).map(|(_, c)| c).collect();
            turnc::release(&done, server, &creds);
            churn.deleted.fetch_add(done.len() as u64, Ordering::Relaxed);
        }
        while expiring.front().is_some_and(|at| *at <= now) {
            expiring.pop_front();
        }
        churn.alive.store((to_delete.len() + expiring.len()) as u64, Ordering::Relaxed);
        second += 1;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let rest: Vec<turnc::Client> = to_delete.into_iter().map(|(_, c)| c).collect();
    turnc::release(&rest, server, &creds);
    failures
}

/// The first window against the last: a window is ten minutes, or a third of a shorter run.
pub fn summarize(samples: &[Sample], interval_secs: f64) -> Option<Summary> {
    let first = samples.first()?;
    let total = samples.len() as f64 * interval_secs;
    let window_secs = (total / 3.0).min(600.0);
    let per_window = ((window_secs / interval_secs).floor() as usize).max(1);
    let head = &samples[..per_window.min(samples.len())];
    let tail = &samples[samples.len().saturating_sub(per_window)..];
    let mean = |s: &[Sample], f: fn(&Sample) -> f64| s.iter().map(f).sum::<f64>() / s.len() as f64;
    let (rss_first, rss_last) = (mean(head, |s| s.rss_bytes as f64), mean(tail, |s| s.rss_bytes as f64));
    // The first interval with the most loss.
    let worst = samples.iter().fold(first, |w, s| if s.loss > w.loss { s } else { w });
    let (sent, received) = samples.iter().fold((0u64, 0u64), |(s, r), x| (s + x.sent, r + x.received));
    Some(Summary {
        window_secs: per_window as f64 * interval_secs,
        rss_first,
        rss_last,
        rss_growth: rss_last / rss_first - 1.0,
        rss_after_first_window: head.last().map_or(0, |s| s.rss_bytes),
        rss_end: tail.last().map_or(0, |s| s.rss_bytes),
        rss_growth_after_first_window: tail.last().map_or(0.0, |s| s.rss_bytes as f64)
            / head.last().map_or(1.0, |s| s.rss_bytes as f64)
            - 1.0,
        fds_first: mean(head, |s| s.fds as f64),
        fds_last: mean(tail, |s| s.fds as f64),
        threads_first: mean(head, |s| s.threads as f64),
        threads_last: mean(tail, |s| s.threads as f64),
        first_interval_loss: first.loss,
        worst_interval_loss: worst.loss,
        worst_interval_at_secs: worst.at_secs,
        intervals_worse_than_first: samples[1..].iter().filter(|s| s.loss > first.loss).count(),
        total_loss: if sent == 0 { 0.0 } else { 1.0 - received as f64 / sent as f64 },
    })
}

/// The soak as markdown: one line per target, then every sample.
pub fn markdown(soak: &Soak) -> String {
    let o = &soak.options;
    let mut s = format!(
        "Soak: {} min, samples every {} s, {} flows of {} B, {} allocations/min churned; {} ({} CPUs)\n\n",
        o.minutes, o.interval_secs, o.flows, o.payload, o.churn_per_min, soak.machine.cpu_model, soak.machine.cpus
    );
    s += "| target | rate (rt/s) | RSS first → last window (MiB) | growth | RSS end of first window → end (MiB) | growth | fds first → last | threads | loss first / worst interval | intervals worse than first | total loss |\n";
    s += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for t in &soak.targets {
        let rate = match t.max_pps {
            Some(max) => format!("{:.0} ({:.0}% of {:.0})", t.rate, 100.0 * t.rate / max, max),
            None => format!("{:.0}", t.rate),
        };
        match &t.summary {
            Some(m) => {
                s += &format!(
                    "| {} | {rate} | {:.1} → {:.1} | {:+.2}% | {:.1} → {:.1} | {:+.2}% | {:.0} → {:.0} | {:.0} → {:.0} | {:.5} / {:.5} (at {:.0} s) | {} | {:.5} |\n",
                    t.target,
                    m.rss_first / 1048576.0,
                    m.rss_last / 1048576.0,
                    100.0 * m.rss_growth,
                    m.rss_after_first_window as f64 / 1048576.0,
                    m.rss_end as f64 / 1048576.0,
                    100.0 * m.rss_growth_after_first_window,
                    m.fds_first,
                    m.fds_last,
                    m.threads_first,
                    m.threads_last,
                    m.first_interval_loss,
                    m.worst_interval_loss,
                    m.worst_interval_at_secs,
                    m.intervals_worse_than_first,
                    m.total_loss
                )
            }
            None => s += &format!("| {} | {rate} | no samples | | | | | | | | |\n", t.target),
        }
        if let Some(e) = &t.error {
            s += &format!("\n{}: FAILED: {e}\n\n", t.target);
        }
    }
    s
}

/// Writes the run to `<out>/soak.json`.
pub fn save(soak: &Soak, out: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let path = out.join("soak.json");
    std::fs::write(&path, serde_json::to_string_pretty(soak)?).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, rss: u64, loss: f64) -> Sample {
        Sample {
            at_secs: at,
            rss_bytes: rss,
            fds: 10,
            threads: 3,
            allocations: 0,
            sent: 1000,
            received: (1000.0 * (1.0 - loss)) as u64,
            loss,
            churn_allocated: 0,
            churn_failed: 0,
            churn_deleted: 0,
        }
    }

    #[test]
    fn windows_compare_the_first_against_the_last() {
        // 60 minutes at 30 s: windows of ten minutes (20 samples).
        let samples: Vec<Sample> = (0..120u64)
            .map(|i| {
                sample(
                    30.0 * (i + 1) as f64,
                    if i < 20 {
                        100
                    } else if i >= 100 {
                        102
                    } else {
                        101
                    },
                    0.0,
                )
            })
            .collect();
        let m = summarize(&samples, 30.0).unwrap();
        assert_eq!(m.window_secs, 600.0);
        assert!((m.rss_growth - 0.02).abs() < 1e-9, "{m:?}");
        // Minute 10 (the 20th sample, at 600 s: 100) to the end (102).
        assert_eq!((m.rss_after_first_window, m.rss_end), (100, 102));
        // A short run: a third of it each.
        let short: Vec<Sample> = (0..6u64).map(|i| sample(5.0 * (i + 1) as f64, 100 + i, 0.0)).collect();
        let m = summarize(&short, 5.0).unwrap();
        assert_eq!(m.window_secs, 10.0);
        assert_eq!((m.rss_first, m.rss_last), (100.5, 104.5));
    }

    #[test]
    fn loss_is_judged_against_the_first_interval() {
        let samples =
            vec![sample(30.0, 1, 0.001), sample(60.0, 1, 0.0), sample(90.0, 1, 0.01), sample(120.0, 1, 0.002)];
        let m = summarize(&samples, 30.0).unwrap();
        assert_eq!((m.first_interval_loss, m.worst_interval_loss, m.worst_interval_at_secs), (0.001, 0.01, 90.0));
        assert_eq!(m.intervals_worse_than_first, 2);
        assert!(summarize(&[], 30.0).is_none());
    }

    #[test]
    fn each_server_gets_its_own_ports() {
        let r = port_ranges(2);
        assert_eq!(r.len(), 2);
        assert!(r[0].0 == RELAY_PORTS.0 && r[0].1 < r[1].0 && r[1].1 <= RELAY_PORTS.1, "{r:?}");
        assert_eq!(port_ranges(1), vec![(RELAY_PORTS.0, RELAY_PORTS.1)]);
    }
}
