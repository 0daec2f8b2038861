//! `bench`: measures the relay against coturn and against a bare UDP forwarder, side by side on
//! this machine, in one run. Every figure comes from a real run; a target that fails to start,
//! dies, or loses its allocations is reported as failed, never with numbers.
//!
//!   cargo run --release -p bench -- compare            all targets, all scenarios, interleaved
//!   cargo run --release -p bench -- throughput --target ours --payload 100 --flows 64
//!   cargo run --release -p bench -- latency --target coturn
//!   cargo run --release -p bench -- allocations --target ours --hold 50000
//!   cargo run --release -p bench -- throughput --server 192.0.2.7:3478 --secret S   (any TURN server)

mod cascade;
mod raw;
mod report;
mod scenarios;
mod sfu;
mod soak;
mod stats;
mod sys;
mod targets;
mod traffic;
mod turnc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use report::{Machine, Report, TargetReport};
use scenarios::Plan;
use targets::{Env, Kind};
use traffic::EchoPeer;

#[derive(Debug, Parser)]
#[command(name = "bench", about = "The relay against coturn and a bare UDP forwarder, side by side")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Args, Clone)]
struct Common {
    /// The relay binary to test (default: `relay` next to this binary, built if missing).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Another relay binary (say, the previous commit's release build) to run side by side with
    /// `ours` as the `baseline` target, on the same config.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// Worker threads of every server (relay threads for coturn); default one per core.
    #[arg(long)]
    workers: Option<usize>,
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
    /// Give the servers their own CPUs (the last `--server-cpus` of them) and keep the bench on
    /// the rest, so the generator and the server do not steal each other's time. 0 = no pinning.
    #[arg(long, default_value_t = 0)]
    server_cpus: usize,
    /// Drive a TURN server that is already running at this address instead of starting one.
    #[arg(long)]
    server: Option<SocketAddr>,
    /// Its pid, for the CPU and memory figures.
    #[arg(long)]
    server_pid: Option<u32>,
    /// TURN REST shared secret (coturn's static-auth-secret) for `--server`.
    #[arg(long)]
    secret: Option<String>,
    /// Static long-term credential for `--server`, instead of a secret.
    #[arg(long, requires = "password")]
    user: Option<String>,
    #[arg(long)]
    password: Option<String>,
    /// Realm of `--server`'s credentials.
    #[arg(long, default_value = targets::REALM)]
    realm: String,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every target through every scenario, interleaved; a markdown table, JSON and an SVG.
    Compare {
        #[command(flatten)]
        common: Common,
        /// Small counts and short steps (seconds, not minutes), for the test suite.
        #[arg(long)]
        smoke: bool,
        /// Targets to run (default all: ours, ours-busy-poll, coturn, coturn-batched, raw, and baseline
        /// when --baseline-bin is given).
        #[arg(long, value_delimiter = ',')]
        targets: Option<Vec<String>>,
        /// Idle allocations to hold in the scale test.
        #[arg(long)]
        hold: Option<usize>,
        /// Scenarios to run (default all: throughput, cpu, latency, allocations).
        #[arg(long, value_delimiter = ',')]
        only: Option<Vec<String>>,
        /// Where to write compare.json and throughput.svg.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
    /// Ramp the offered load until loss passes 0.1%.
    Throughput {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "ours")]
        target: String,
        /// Payload bytes per packet (without TURN framing).
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Allocations (flows) the load is spread over.
        #[arg(long, default_value_t = 1)]
        flows: usize,
        /// Run one step at exactly this rate instead of a ramp.
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds per step.
        #[arg(long)]
        secs: Option<f64>,
        /// raw only: drop every Nth client packet in the forwarder (tests the loss measurement).
        #[arg(long, default_value_t = 0)]
        drop_every: u64,
    },
    /// Round-trip time percentiles at a fixed moderate rate.
    Latency {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "ours")]
        target: String,
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long)]
        secs: Option<f64>,
        /// raw only: hold every packet this many microseconds (tests the latency measurement).
        #[arg(long, default_value_t = 0)]
        delay_us: u64,
    },
    /// Server CPU seconds per million forwarded packets at a fixed rate.
    Cpu {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "ours")]
        target: String,
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long)]
        secs: Option<f64>,
    },
    /// Authenticated allocations per second, and RSS per idle allocation.
    Allocations {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "ours")]
        target: String,
        #[arg(long)]
        count: Option<usize>,
        #[arg(long)]
        hold: Option<usize>,
    },
    /// The SFU's fan-out: one publisher (a 720p-like 2.5 Mbit/s stream and Opus) to a growing
    /// number of viewers, all efficient in-process WebRTC clients; loss, relay CPU per forwarded
    /// packet, egress packets per second per core, latency.
    Sfu {
        #[command(flatten)]
        common: Common,
        /// Viewer counts to ramp through (stops after the first step with 1% loss or more).
        #[arg(long, value_delimiter = ',', default_value = "10,25,50,100,150,200,300,400")]
        viewers: Vec<usize>,
        /// Seconds of streaming per step.
        #[arg(long, default_value_t = 8.0)]
        secs: f64,
        /// Where to write sfu.json.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
    /// A machine at relay A, viewers at relay B linked to A over QUIC through a delaying proxy,
    /// beside the same viewers at A: what the relay hop adds, CPU per packet at A and B, link
    /// copies per packet.
    Cascade {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 20)]
        viewers: usize,
        /// Seconds of streaming per case.
        #[arg(long, default_value_t = 8.0)]
        secs: f64,
        /// The emulated one-way delay between the relays, in ms.
        #[arg(long, default_value_t = 40.0)]
        link_delay_ms: f64,
        /// Pairs of cases (direct, then cascade) to run; the summary takes medians over them.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Give relay B the last CPU to itself (relay A and the bench share the others), as if
        /// it ran on another machine.
        #[arg(long)]
        split_cpus: bool,
        /// Where to write cascade.json.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
    /// Every target at once for a set time at a share of the rate it reached alone, with
    /// allocation churn beside; RSS, open files, threads, allocations and loss every interval;
    /// growth from the first window (ten minutes, or a third of a shorter run) to the last.
    Soak {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_delimiter = ',', default_value = "ours,coturn")]
        targets: Vec<String>,
        #[arg(long, default_value_t = 60.0)]
        minutes: f64,
        /// Seconds between samples.
        #[arg(long, default_value_t = 30.0)]
        interval_secs: f64,
        /// Share of each target's maximum rate (measured alone first) to soak at.
        #[arg(long, default_value_t = 0.25)]
        fraction: f64,
        /// Round trips per second for every target instead (skips measuring the maximum).
        #[arg(long)]
        rate: Option<f64>,
        /// Authenticated allocations a minute beside the traffic, half deleted after 20 s, half
        /// left to expire.
        #[arg(long, default_value_t = 2000)]
        churn: usize,
        /// Allocations carrying the traffic.
        #[arg(long, default_value_t = 16)]
        flows: usize,
        /// Payload bytes per packet.
        #[arg(long, default_value_t = 200)]
        payload: usize,
        /// Where to write soak.json.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
    /// Prints the table of a saved `compare` run again (and rewrites its SVG next to it).
    Report {
        /// A compare.json written by `compare`.
        from: PathBuf,
    },
    /// Holds idle allocations for the scale test until stdin closes (started by the bench itself).
    #[command(hide = true)]
    Hold {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long)]
        count: usize,
        /// Delete the allocations when done (the server outlives the bench).
        #[arg(long)]
        release: bool,
    },
    /// The raw target's process (started by the bench itself).
    #[command(hide = true)]
    RawForwarder {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        peer: SocketAddr,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long, default_value_t = 0)]
        drop_every: u64,
        #[arg(long, default_value_t = 0)]
        delay_us: u64,
    },
}

fn env(common: &Common) -> anyhow::Result<Env> {
    // 50,000 allocations: that many sockets in the bench and in the server it starts.
    sys::raise_fd_limit(262_144);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_cpus = match common.server_cpus {
        0 => None,
        n if n >= cpus => anyhow::bail!("--server-cpus {n}: the bench needs at least one of the {cpus} CPUs"),
        n => {
            let (bench, server): (Vec<usize>, Vec<usize>) = (0..cpus).partition(|c| *c < cpus - n);
            sys::pin_to(&bench).context("pinning the bench")?;
            Some(server)
        }
    };
    let workers = common.workers.unwrap_or(server_cpus.as_ref().map_or(cpus, Vec::len));
    let mut env = Env::new(common.relay_bin.clone(), workers, server_cpus)?;
    if let Some(bin) = &common.baseline_bin {
        anyhow::ensure!(bin.exists(), "--baseline-bin: {} not found", bin.display());
        env.baseline_bin = Some(bin.clone());
    }
    if let Some(addr) = common.server {
        env.external = Some((addr, common.server_pid));
    }
    let ttl = Duration::from_secs(86_400);
    match (&common.user, &common.password, &common.secret) {
        (Some(u), Some(p), _) => scenarios::set_credentials(turnc::Credentials::static_user(u, p, &common.realm)),
        (_, _, Some(secret)) => scenarios::set_credentials(turnc::Credentials::rest(secret, &common.realm, ttl)),
        _ => {}
    }
    Ok(env)
}

/// The echo peer, on a port below the relay port range (the relay refuses loopback peers on its
/// own relay ports).
fn peer() -> anyhow::Result<EchoPeer> {
    EchoPeer::start_in(9000..9999)
}

fn print<T: serde::Serialize + std::fmt::Debug>(json: bool, value: &T) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{value:#?}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Hold { server, count, release } => scenarios::hold(server, count, release),
        Cmd::Sfu { common, viewers, secs, out } => {
            let env = env(&common)?;
            let (_server, target) = targets::start_ours_sfu(&env)?;
            eprintln!(
                "bench sfu: relay pid {} (SFU http://{}, media udp {}), {secs} s per step",
                target.pid, target.http, target.udp
            );
            eprint!("{}", sfu::HEADER);
            let report = sfu::ramp(&target, &viewers, secs, |s| eprint!("{}", sfu::row(s)))?;
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("sfu.json"), serde_json::to_string_pretty(&report)?)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", sfu::markdown(&report));
            }
            Ok(())
        }
        Cmd::Cascade { common, viewers, secs, link_delay_ms, rounds, split_cpus, out } => {
            let env = env(&common)?;
            eprintln!(
                "bench cascade: {viewers} viewers, {secs} s per case, {link_delay_ms} ms each way between the relays"
            );
            let report =
                cascade::run(&env, viewers, secs, Duration::from_secs_f64(link_delay_ms / 1000.0), rounds, split_cpus)?;
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("cascade.json"), serde_json::to_string_pretty(&report)?)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", cascade::markdown(&report));
            }
            Ok(())
        }
        Cmd::Soak { common, targets, minutes, interval_secs, fraction, rate, churn, flows, payload, out } => {
            let env = env(&common)?;
            let kinds: Vec<Kind> = targets.iter().map(|n| Kind::parse(n)).collect::<anyhow::Result<_>>()?;
            let opts = soak::Options { minutes, interval_secs, fraction, rate, churn_per_min: churn, flows, payload };
            let report = soak::run(&env, &kinds, &opts)?;
            soak::save(&report, &out)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", soak::markdown(&report));
            }
            let failed: Vec<&str> =
                report.targets.iter().filter(|t| t.error.is_some()).map(|t| t.target.as_str()).collect();
            anyhow::ensure!(failed.is_empty(), "the soak failed for {}", failed.join(", "));
            Ok(())
        }
        Cmd::Report { from } => {
            let report: Report =
                serde_json::from_slice(&std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?)?;
            std::fs::write(from.with_extension("svg"), report.svg())?;
            println!("{}\n\n{}", report.header(), report.markdown());
            Ok(())
        }
        Cmd::RawForwarder { listen, peer, workers, drop_every, delay_us } => {
            raw::run(raw::RawOptions { listen, peer, workers, drop_every, delay: Duration::from_micros(delay_us) })
        }
        Cmd::Throughput { common, target, payload, flows, rate, secs, drop_every } => {
            let env = env(&common)?;
            let kind = Kind::parse(&target)?;
            let peer = peer()?;
            let mut plan = Plan::full();
            if let Some(s) = secs {
                plan.step_secs = s;
            }
            if let Some(r) = rate {
                (plan.start_pps, plan.max_pps, plan.refine_steps) = (r, r, 0);
            }
            let result = if drop_every > 0 {
                // A fixed-rate step through a raw forwarder that drops every Nth packet.
                let server = targets::Server::start(kind, &env, peer.addr, drop_every, Duration::ZERO)?;
                let flows = vec![traffic::Flow {
                    socket: std::net::UdpSocket::bind("127.0.0.2:0")?,
                    channel: None,
                    keep: None,
                }];
                let mut engine = traffic::Engine::new(flows, &peer, server.addr)?;
                let r = engine.step(
                    plan.start_pps,
                    Duration::from_secs_f64(plan.step_secs),
                    Duration::from_millis(300),
                    payload,
                    false,
                );
                serde_json::json!({ "sent": r.sent, "received": r.received, "loss": r.loss(), "delivered_pps": r.delivered_pps() })
            } else {
                serde_json::to_value(scenarios::throughput(&env, kind, &peer, &plan, payload, flows)?)?
            };
            print(common.json, &result)
        }
        Cmd::Latency { common, target, rate, secs, delay_us } => {
            let env = env(&common)?;
            let kind = Kind::parse(&target)?;
            let peer = peer()?;
            let mut plan = Plan::full();
            if let Some(r) = rate {
                plan.latency_pps = r;
            }
            if let Some(s) = secs {
                plan.latency_secs = s;
            }
            let (round, loss) = scenarios::latency(&env, kind, &peer, &plan, Duration::from_micros(delay_us))?;
            print(common.json, &serde_json::json!({ "latency": round, "loss": loss }))
        }
        Cmd::Cpu { common, target, rate, secs } => {
            let env = env(&common)?;
            let kind = Kind::parse(&target)?;
            let peer = peer()?;
            let mut plan = Plan::full();
            if let Some(r) = rate {
                plan.cpu_pps = r;
            }
            if let Some(s) = secs {
                plan.cpu_secs = s;
            }
            print(common.json, &scenarios::cpu(&env, kind, &peer, &plan)?)
        }
        Cmd::Allocations { common, target, count, hold } => {
            let env = env(&common)?;
            let kind = Kind::parse(&target)?;
            let mut plan = Plan::full();
            if let Some(c) = count {
                plan.alloc_count = c;
            }
            if let Some(h) = hold {
                plan.hold = h;
            }
            print(common.json, &scenarios::allocations(&env, kind, &plan, !common.json)?)
        }
        Cmd::Compare { common, smoke, targets, hold, only, out } => compare(&common, smoke, targets, hold, only, out),
    }
}

fn compare(
    common: &Common,
    smoke: bool,
    targets: Option<Vec<String>>,
    hold: Option<usize>,
    only: Option<Vec<String>>,
    out: PathBuf,
) -> anyhow::Result<()> {
    const SCENARIOS: [&str; 4] = ["throughput", "cpu", "latency", "allocations"];
    if let Some(bad) = only.iter().flatten().find(|s| !SCENARIOS.contains(&s.as_str())) {
        anyhow::bail!("--only: unknown scenario {bad:?} (expected {})", SCENARIOS.join(", "));
    }
    let run = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|s| s == name));
    let env = env(common)?;
    let kinds: Vec<Kind> = match targets {
        Some(names) => names.iter().map(|n| Kind::parse(n)).collect::<anyhow::Result<_>>()?,
        None => env.default_targets(),
    };
    let mut plan = if smoke { Plan::smoke() } else { Plan::full() };
    if let Some(h) = hold {
        plan.hold = h;
    }
    let peer = peer()?;
    let mut reports: Vec<TargetReport> = kinds.iter().map(|k| TargetReport::new(*k)).collect();
    for (r, k) in reports.iter_mut().zip(&kinds) {
        if let Some(why) = env.unavailable(*k) {
            r.available = false;
            r.note = Some(format!("not run: {why}"));
        }
    }
    let runnable: Vec<usize> = (0..kinds.len()).filter(|&i| reports[i].available).collect();
    let record = |r: &mut TargetReport, what: &str, e: anyhow::Error| {
        eprintln!("  {} {what}: FAILED: {e:#}", r.target);
        r.errors.push(format!("{what}: {e:#}"));
    };

    // Interleaved: each scenario runs every target in turn before the next scenario starts, so
    // a slow drift of the machine (thermal, noisy neighbours) spreads over all targets.
    for (payload, flows) in [(100, 1), (100, 64), (1200, 1), (1200, 64)] {
        if !run("throughput") {
            break;
        }
        for &i in &runnable {
            eprintln!("throughput {payload} B x{flows}: {}", kinds[i].name());
            match scenarios::throughput(&env, kinds[i], &peer, &plan, payload, flows) {
                Ok(t) => {
                    eprintln!("  {:.0} round trips/s (stopped by {})", t.max_pps, t.limited_by);
                    reports[i].throughput.push(t);
                }
                Err(e) => record(&mut reports[i], &format!("throughput {payload} B x{flows}"), e),
            }
        }
    }
    // CPU and latency are small differences under a noisy machine: several short rounds, the
    // targets taking turns, summed (CPU) and merged (every latency sample) per target.
    let mut cpu_sums: Vec<Option<scenarios::Cpu>> = vec![None; kinds.len()];
    let mut latencies: Vec<Vec<stats::LatencyRound>> = vec![Vec::new(); kinds.len()];
    // A latency round during which the hypervisor kept the CPUs from running (steal time) is a
    // measure of the host's neighbours, not of the server: its tail is the steal. Such rounds
    // are set aside and more are run, all targets again in turn, until every target has
    // `rounds` calm ones or the extra rounds are used up.
    let machine = Machine::detect();
    let calm_limit_ms = plan.calm_steal_limit_ms(machine.cpus);
    let calm = |r: &stats::LatencyRound| r.host_steal_ms.is_none_or(|ms| ms <= calm_limit_ms);
    let max_rounds = (plan.rounds + plan.extra_latency_rounds) as usize;
    for round in 0..max_rounds {
        let latency_needed = run("latency")
            && (round < plan.rounds as usize
                || runnable.iter().any(|&i| {
                    !reports[i].errors.iter().any(|e| e.starts_with("latency"))
                        && latencies[i].iter().filter(|r| calm(r)).count() < plan.rounds as usize
                }));
        if round >= plan.rounds as usize && !latency_needed {
            break;
        }
        if round == plan.rounds as usize {
            eprintln!("latency: rounds disturbed by host steal (> {calm_limit_ms:.0} ms); running more");
        }
        // Rotate who goes first each round: whoever runs right after a heavy phase pays for the
        // machine settling (freed buffers, memory reclaim), and that must not always be the same.
        let order: Vec<usize> = (0..runnable.len()).map(|k| runnable[(k + round) % runnable.len()]).collect();
        for &i in order.iter().filter(|_| run("cpu") && round < plan.rounds as usize) {
            eprintln!("cpu, round {}/{}: {}", round + 1, plan.rounds, kinds[i].name());
            match scenarios::cpu(&env, kinds[i], &peer, &plan) {
                Ok(c) => {
                    eprintln!("  {:.3} CPU s per million packets", c.cpu_secs_per_mpkt);
                    cpu_sums[i] = Some(match cpu_sums[i].take() {
                        None => c,
                        Some(sum) => sum.add(&c),
                    });
                }
                Err(e) => record(&mut reports[i], "cpu", e),
            }
        }
        for &i in order.iter().filter(|_| latency_needed) {
            eprintln!("latency, round {}: {}", round + 1, kinds[i].name());
            match scenarios::latency(&env, kinds[i], &peer, &plan, Duration::ZERO) {
                Ok((round, loss)) => {
                    let s = &round.latency;
                    eprintln!(
                        "  p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, loss {:.4}, server CPU {:.0}%, host steal {:.0} ms",
                        s.p50_us,
                        s.p99_us,
                        s.p999_us,
                        loss,
                        round.server_cpu_percent.unwrap_or(f64::NAN),
                        round.host_steal_ms.unwrap_or(f64::NAN)
                    );
                    latencies[i].push(round);
                }
                Err(e) => record(&mut reports[i], "latency", e),
            }
        }
    }
    for &i in &runnable {
        // A target that failed any round is not reported for that scenario.
        if !reports[i].errors.iter().any(|e| e.starts_with("cpu")) {
            reports[i].cpu = cpu_sums[i].take();
        }
        if !reports[i].errors.iter().any(|e| e.starts_with("latency")) {
            // The calm rounds, if there are at least three; otherwise every round, and the
            // report says how many were calm.
            let all = &latencies[i];
            let calm_rounds: Vec<stats::LatencyRound> = all.iter().filter(|r| calm(r)).copied().collect();
            reports[i].latency_calm_rounds = Some(calm_rounds.len());
            let rounds = if calm_rounds.len() >= 3 { &calm_rounds } else { all };
            let summaries: Vec<stats::LatencySummary> = rounds.iter().map(|r| r.latency).collect();
            reports[i].latency = (!rounds.is_empty()).then(|| stats::median_of_rounds(&summaries));
            reports[i].latency_cpu_percent = stats::median_of(rounds, |r| r.server_cpu_percent);
            reports[i].latency_host_steal_ms = stats::median_of(all, |r| r.host_steal_ms);
            reports[i].latency_rounds = std::mem::take(&mut latencies[i]);
        }
    }
    for &i in runnable.iter().filter(|_| run("allocations")) {
        if !kinds[i].is_turn() {
            continue;
        }
        eprintln!("allocations: {}", kinds[i].name());
        match scenarios::allocations(&env, kinds[i], &plan, !smoke) {
            Ok(a) => {
                eprintln!(
                    "  {:.0}/s; held {} of {}, {:.0} B RSS each; refusals {:?}",
                    a.per_sec, a.held, a.hold_attempted, a.rss_per_allocation, a.cap_hit
                );
                reports[i].allocations = Some(a);
            }
            Err(e) => record(&mut reports[i], "allocations", e),
        }
    }

    let command = format!("cargo run --release -p bench -- {}", std::env::args().skip(1).collect::<Vec<_>>().join(" "));
    let report = Report {
        date: utc_now(),
        command,
        machine,
        coturn: (&env.coturn).into(),
        workers: env.workers,
        server_cpus: env.server_cpus.clone(),
        plan,
        targets: reports,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let name = if smoke { "smoke" } else { "compare" };
    std::fs::write(out.join(format!("{name}.json")), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(out.join(format!("{name}.svg")), report.svg())?;
    let pinning = match &report.server_cpus {
        Some(cpus) => format!("servers pinned to CPU {cpus:?}, the bench to the others"),
        None => "no CPU pinning".into(),
    };
    println!(
        "{} on {} ({} CPUs, kernel {}), {} worker(s) per server, {pinning}; `{}`\n",
        report.date,
        report.machine.cpu_model,
        report.machine.cpus,
        report.machine.kernel,
        report.workers,
        report.command
    );
    println!("{}", report.markdown());
    println!("\nwrote {}/{name}.json and {}/{name}.svg", out.display(), out.display());
    if common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// The current UTC time as ISO 8601.
fn utc_now() -> String {
    let (y, m, d, h, min, _) = cluster::time::utc(cluster::time::unix_now() as i64);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{min:02} UTC")
}
