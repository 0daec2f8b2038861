//! The scenarios: each starts a fresh server, builds its flows, measures, and checks that the
//! target is still alive and still holds its allocations before its numbers are reported.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::stats::LatencyRound;
use crate::sys;
use crate::targets::{Env, Kind, REALM, SECRET, Server};
use crate::traffic::{EchoPeer, Engine, Flow, Keep, StepResult};
use crate::turnc::{self, Credentials};

/// At most this loss counts as "delivered" (the 0.1%).
pub const MAX_LOSS: f64 = 0.001;
/// The generator is the bottleneck when it sends less than this share of the asked rate.
const GENERATOR_SHARE: f64 = 0.95;
/// Loopback addresses client sockets are spread over (each has its own ephemeral ports).
pub fn client_ips() -> Vec<IpAddr> {
    (2..=9).map(|i| IpAddr::from([127, 0, 0, i])).collect()
}

/// How long and how hard each scenario runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub step_secs: f64,
    pub drain_ms: u64,
    pub start_pps: f64,
    pub max_pps: f64,
    pub growth: f64,
    pub refine_steps: u32,
    pub cpu_pps: f64,
    pub cpu_secs: f64,
    pub latency_pps: f64,
    pub latency_secs: f64,
    pub alloc_count: usize,
    pub alloc_window: usize,
    pub hold: usize,
    /// Rounds of the CPU and latency scenarios in `compare`.
    pub rounds: u32,
    /// Latency rounds `compare` may add when rounds were disturbed by the host (see
    /// `calm_steal_share`), until every target has `rounds` calm ones.
    #[serde(default)]
    pub extra_latency_rounds: u32,
    /// A latency round is calm when the host's steal time during it is at most this share of
    /// the machine's CPU time (steal summed over CPUs, over the round's duration).
    #[serde(default)]
    pub calm_steal_share: f64,
    /// Repeat a failed throughput step once before believing it.
    pub confirm: bool,
}

impl Plan {
    pub fn full() -> Self {
        Self {
            step_secs: 2.0,
            drain_ms: 300,
            start_pps: 20_000.0,
            max_pps: 2_000_000.0,
            growth: 1.5,
            refine_steps: 3,
            cpu_pps: 40_000.0,
            cpu_secs: 3.0,
            latency_pps: 2_000.0,
            latency_secs: 3.0,
            alloc_count: 10_000,
            alloc_window: 64,
            hold: 50_000,
            rounds: 7,
            extra_latency_rounds: 14,
            calm_steal_share: 0.01,
            confirm: true,
        }
    }

    /// Host steal time (ms, summed over `cpus`) above which a latency round is not calm.
    pub fn calm_steal_limit_ms(&self, cpus: usize) -> f64 {
        self.calm_steal_share * self.latency_secs * cpus as f64 * 1000.0
    }

    /// Seconds, not minutes: for the test suite.
    pub fn smoke() -> Self {
        Self {
            step_secs: 0.4,
            drain_ms: 200,
            start_pps: 2_000.0,
            max_pps: 2_000.0,
            growth: 2.0,
            refine_steps: 0,
            cpu_pps: 2_000.0,
            cpu_secs: 0.5,
            latency_pps: 500.0,
            latency_secs: 0.5,
            alloc_count: 50,
            alloc_window: 16,
            hold: 200,
            rounds: 1,
            extra_latency_rounds: 0,
            calm_steal_share: 0.01,
            confirm: false,
        }
    }
}

/// One point of a throughput ramp.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub offered_pps: f64,
    pub sent_pps: f64,
    pub delivered_pps: f64,
    pub loss: f64,
}

impl From<&StepResult> for Point {
    fn from(r: &StepResult) -> Self {
        Self { offered_pps: r.offered_pps, sent_pps: r.sent_pps(), delivered_pps: r.delivered_pps(), loss: r.loss() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    pub payload: usize,
    pub flows: usize,
    /// Highest rate of round trips (echoed packets per second) delivered with at most 0.1% loss.
    /// The relay forwards each round trip twice (client→peer and peer→client).
    pub max_pps: f64,
    /// What stopped the ramp: "loss" (the target) or "generator" (the bench could send no faster).
    pub limited_by: String,
    pub curve: Vec<Point>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cpu {
    pub rounds: u32,
    pub offered_pps: f64,
    pub delivered_pps: f64,
    pub loss: f64,
    pub server_cpu_secs: f64,
    /// Packets the server forwarded (each round trip is two).
    pub forwarded: u64,
    /// Server CPU seconds per million packets forwarded.
    pub cpu_secs_per_mpkt: f64,
}

impl Cpu {
    /// Two measurements as one: CPU and packets summed, rates averaged.
    pub fn add(&self, other: &Cpu) -> Cpu {
        let (n, m) = (f64::from(self.rounds), f64::from(other.rounds));
        let server_cpu_secs = self.server_cpu_secs + other.server_cpu_secs;
        let forwarded = self.forwarded + other.forwarded;
        Cpu {
            rounds: self.rounds + other.rounds,
            offered_pps: self.offered_pps,
            delivered_pps: (self.delivered_pps * n + other.delivered_pps * m) / (n + m),
            loss: (self.loss * n + other.loss * m) / (n + m),
            server_cpu_secs,
            forwarded,
            cpu_secs_per_mpkt: server_cpu_secs / (forwarded as f64 / 1e6),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Allocations {
    pub attempted: usize,
    pub succeeded: usize,
    pub per_sec: f64,
    pub hold_attempted: usize,
    pub held: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    pub rss_per_allocation: f64,
    /// Refusals and timeouts by code while holding (0 = timeout), e.g. a quota or port cap.
    pub cap_hit: BTreeMap<u16, u64>,
}

static CREDS: std::sync::OnceLock<Credentials> = std::sync::OnceLock::new();

/// Sets the credentials of this run (before any scenario; default: a REST credential for the
/// servers the bench starts itself).
pub fn set_credentials(c: Credentials) {
    let _ = CREDS.set(c);
}

/// The one credential of this bench run (a day-long REST credential unless set; the servers the
/// bench starts have no quotas, so all allocations may share it).
pub fn creds() -> Credentials {
    CREDS.get_or_init(|| Credentials::rest(SECRET, REALM, Duration::from_secs(86_400))).clone()
}

/// Flows for `kind`: TURN allocations with a channel to the peer, or plain sockets for raw.
pub fn flows(server: &Server, count: usize, peer: SocketAddr) -> anyhow::Result<(Vec<Flow>, Vec<turnc::Client>)> {
    if !server.kind.is_turn() {
        let flows = (0..count)
            .map(|i| {
                let ip = client_ips()[i % client_ips().len()];
                Ok(Flow { socket: UdpSocket::bind((ip, 0))?, channel: None, keep: None })
            })
            .collect::<anyhow::Result<_>>()?;
        return Ok((flows, Vec::new()));
    }
    let creds = creds();
    let allocated = turnc::allocate_many(server.addr, &creds, count, 32, &client_ips(), 1, None)?;
    if allocated.clients.len() != count {
        bail!(
            "{} allocated {} of {count} flows: {:?}",
            server.kind.name(),
            allocated.clients.len(),
            allocated.failures
        );
    }
    let mut clients = allocated.clients;
    for c in &mut clients {
        turnc::channel_bind(c, server.addr, &creds, 0x4000, peer)?;
    }
    let flows = clients
        .iter()
        .map(|c| {
            let keep =
                Keep { server: server.addr, creds: creds.clone(), nonce: c.nonce.clone(), peer, lifetime: c.lifetime };
            Ok(Flow { socket: c.socket.try_clone()?, channel: Some(0x4000), keep: Some(keep) })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((flows, clients))
}

/// Checks the target is still up and, for TURN, still has the flows' allocations (a Refresh on
/// each answers 200, not 437), then deletes them from a server the bench did not start.
fn still_serving(server: &mut Server, clients: &mut [turnc::Client]) -> anyhow::Result<()> {
    if !server.alive() {
        bail!("{} exited during the run", server.kind.name());
    }
    let creds = creds();
    let lifetime = turn::proto::lifetime::Lifetime(Duration::from_secs(600));
    for c in clients.iter_mut() {
        let socket = c.socket.try_clone()?;
        let resp =
            turnc::transact(&socket, server.addr, &creds, &mut c.nonce, stun::message::METHOD_REFRESH, &[&lifetime])
                .with_context(|| format!("{} stopped answering", server.kind.name()))?;
        if let Some(code) = turnc::error_code(&resp) {
            bail!("{} lost an allocation (Refresh answered {code})", server.kind.name());
        }
    }
    // Done with them: a server the bench did not start would keep them for their lifetime (one
    // it started is stopped now; deleting thousands there only costs CPU the other tests of a
    // small machine need: coturn logs each one).
    if server.is_external() {
        turnc::release(clients, server.addr, &creds);
    }
    Ok(())
}

fn bar(len: u64, msg: String) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg:40} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(msg);
    pb
}

/// Ramps the offered load until loss passes 0.1% (or the generator tops out), then bisects.
pub fn throughput(
    env: &Env,
    kind: Kind,
    peer: &EchoPeer,
    plan: &Plan,
    payload: usize,
    flow_count: usize,
) -> anyhow::Result<Throughput> {
    let mut server = Server::start(kind, env, peer.addr, 0, Duration::ZERO)?;
    let (flows, mut clients) = flows(&server, flow_count, peer.addr)?;
    let mut engine = Engine::new(flows, peer, server.addr)?;
    let step = Duration::from_secs_f64(plan.step_secs);
    let drain = Duration::from_millis(plan.drain_ms);
    // Warm-up: caches, ARP-free loopback paths, the server's first allocations of buffers.
    engine.step(plan.start_pps.min(5000.0), Duration::from_millis(200), drain, payload, false);
    let pb = bar(0, format!("{} throughput {payload} B x{flow_count}", kind.name()));
    let mut curve = Vec::new();
    let mut good: Option<f64> = None;
    let mut bad: Option<f64> = None;
    let mut limited_by = "loss".to_string();
    let mut best = 0.0f64;
    let mut rate = plan.start_pps;
    let judge = |r: &StepResult, curve: &mut Vec<Point>, best: &mut f64| -> (bool, bool) {
        curve.push(Point::from(r));
        let generator_bound = r.sent_pps() < r.offered_pps * GENERATOR_SHARE;
        let ok = r.loss() <= MAX_LOSS && !generator_bound;
        if r.loss() <= MAX_LOSS {
            *best = best.max(r.delivered_pps());
        }
        (ok, generator_bound && r.loss() <= MAX_LOSS)
    };
    loop {
        let r = engine.step(rate, step, drain, payload, false);
        pb.inc(1);
        let (mut ok, mut generator) = judge(&r, &mut curve, &mut best);
        if !ok && plan.confirm {
            // A failure must repeat before it ends the ramp: on a shared machine one burst of
            // someone else's work can cost a step its 0.1%, for any target alike.
            let again = engine.step(rate, step, drain, payload, false);
            pb.inc(1);
            (ok, generator) = judge(&again, &mut curve, &mut best);
        }
        if !server.alive() {
            bail!("{} exited during the ramp", kind.name());
        }
        if ok {
            good = Some(rate);
            if rate >= plan.max_pps {
                limited_by = "plan".into();
                break;
            }
            rate = (rate * plan.growth).min(plan.max_pps);
        } else {
            if generator {
                limited_by = "generator".into();
            }
            bad = Some(rate);
            break;
        }
    }
    if let (Some(mut lo), Some(mut hi)) = (good, bad) {
        for _ in 0..plan.refine_steps {
            let mid = (lo + hi) / 2.0;
            let r = engine.step(mid, step, drain, payload, false);
            pb.inc(1);
            let (mut ok, _) = judge(&r, &mut curve, &mut best);
            if !ok && plan.confirm {
                let again = engine.step(mid, step, drain, payload, false);
                pb.inc(1);
                (ok, _) = judge(&again, &mut curve, &mut best);
            }
            if ok {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    pb.finish_and_clear();
    drop(engine);
    still_serving(&mut server, &mut clients)?;
    curve.sort_by(|a, b| a.offered_pps.total_cmp(&b.offered_pps));
    Ok(Throughput { payload, flows: flow_count, max_pps: best, limited_by, curve })
}

/// Server CPU per million forwarded packets at a fixed rate every target sustains.
pub fn cpu(env: &Env, kind: Kind, peer: &EchoPeer, plan: &Plan) -> anyhow::Result<Cpu> {
    let mut server = Server::start(kind, env, peer.addr, 0, Duration::ZERO)?;
    let (flows, mut clients) = flows(&server, 64, peer.addr)?;
    let mut engine = Engine::new(flows, peer, server.addr)?;
    let drain = Duration::from_millis(plan.drain_ms);
    engine.step(plan.cpu_pps, Duration::from_millis(200), drain, 100, false);
    let before = sys::cpu_seconds(server.pid()?)?;
    let r = engine.step(plan.cpu_pps, Duration::from_secs_f64(plan.cpu_secs), drain, 100, false);
    let used = sys::cpu_seconds(server.pid()?)? - before;
    drop(engine);
    still_serving(&mut server, &mut clients)?;
    let forwarded = 2 * r.received;
    Ok(Cpu {
        rounds: 1,
        forwarded,
        offered_pps: plan.cpu_pps,
        delivered_pps: r.delivered_pps(),
        loss: r.loss(),
        server_cpu_secs: used,
        cpu_secs_per_mpkt: if forwarded == 0 { f64::NAN } else { used / (forwarded as f64 / 1e6) },
    })
}

/// Round-trip times at a fixed moderate rate through one allocation.
pub fn latency(
    env: &Env,
    kind: Kind,
    peer: &EchoPeer,
    plan: &Plan,
    delay: Duration,
) -> anyhow::Result<(LatencyRound, f64)> {
    let mut server = Server::start(kind, env, peer.addr, 0, delay)?;
    let (flows, mut clients) = flows(&server, 1, peer.addr)?;
    let mut engine = Engine::new(flows, peer, server.addr)?;
    let drain = Duration::from_millis(plan.drain_ms.max(delay.as_millis() as u64 * 2 + 100));
    // A longer warm-up at the measured rate than elsewhere: tail latency is what this measures,
    // and the first second after start-up (or after the previous target's load) is not typical.
    engine.step(plan.latency_pps, Duration::from_secs_f64(plan.latency_secs.min(1.0)), drain, 100, false);
    let cpu_before = server.pid().ok().and_then(|pid| sys::cpu_seconds(pid).ok());
    let steal_before = sys::host_steal_seconds().ok();
    let started = Instant::now();
    let r = engine.step(plan.latency_pps, Duration::from_secs_f64(plan.latency_secs), drain, 100, true);
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu_percent = match (cpu_before, server.pid().ok().and_then(|pid| sys::cpu_seconds(pid).ok())) {
        (Some(a), Some(b)) => Some(100.0 * (b - a) / elapsed),
        _ => None,
    };
    let host_steal_ms = match (steal_before, sys::host_steal_seconds().ok()) {
        (Some(a), Some(b)) => Some(1000.0 * (b - a)),
        _ => None,
    };
    drop(engine);
    still_serving(&mut server, &mut clients)?;
    Ok((LatencyRound { latency: r.latency.summary(), server_cpu_percent, host_steal_ms }, r.loss()))
}

/// Client sockets one holder process keeps (the per-process open-file limit may be as low as
/// 20,000 and cannot always be raised), so large holds are spread over several processes.
const PER_HOLDER: usize = 15_000;
/// A holder stops starting allocations after this many failures: the target is at a cap.
const HOLD_GIVE_UP: u64 = 500;

/// What one `bench hold` process reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    pub relayed: Vec<SocketAddr>,
    pub failures: BTreeMap<u16, u64>,
}

/// `bench hold`: allocates `count` and keeps them until stdin closes; then, with `release`,
/// deletes them (a server the bench did not start).
pub fn hold(server: SocketAddr, count: usize, release: bool) -> anyhow::Result<()> {
    sys::raise_fd_limit(262_144);
    // The parent's credential (its --secret or --user), else the bench's own.
    if let Some(c) = Credentials::from_env()? {
        set_credentials(c);
    }
    let allocated = turnc::allocate_many(server, &creds(), count, 256, &client_ips(), HOLD_GIVE_UP, None)?;
    let held =
        Held { relayed: allocated.clients.iter().map(|c| c.relayed).collect(), failures: allocated.failures.clone() };
    println!("{}", serde_json::to_string(&held)?);
    // Keep the sockets (and so the allocations' 5-tuples) until the parent is done measuring.
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {}
    if release {
        allocated.release(server, &creds());
    }
    drop(allocated);
    Ok(())
}

/// Authenticated allocations per second, then how many idle allocations the target holds and
/// what they cost in resident memory.
pub fn allocations(env: &Env, kind: Kind, plan: &Plan, progress: bool) -> anyhow::Result<Allocations> {
    if !kind.is_turn() {
        bail!("raw has no allocations");
    }
    let creds = creds();
    let dummy_peer: SocketAddr = "127.0.0.1:9".parse()?;
    // Rate: a fresh server, `alloc_count` allocations as fast as the window allows.
    let server = Server::start(kind, env, dummy_peer, 0, Duration::ZERO)?;
    let pb = progress.then(|| bar(plan.alloc_count as u64, format!("{} allocations/s", kind.name())));
    let rate = turnc::allocate_many(
        server.addr,
        &creds,
        plan.alloc_count,
        plan.alloc_window,
        &client_ips(),
        u64::MAX,
        pb.as_ref(),
    )?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let (succeeded, per_sec) = (rate.clients.len(), rate.clients.len() as f64 / rate.elapsed.as_secs_f64());
    if server.is_external() {
        rate.release(server.addr, &creds);
    }
    drop(rate);
    drop(server);

    // Scale: another fresh server, `hold` idle allocations kept by holder processes.
    let mut server = Server::start(kind, env, dummy_peer, 0, Duration::ZERO)?;
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = sys::rss_bytes(server.pid()?)?;
    let mut holders = Vec::new();
    let mut relayed = std::collections::HashSet::new();
    let mut cap_hit = BTreeMap::new();
    let mut left = plan.hold;
    let pb = progress.then(|| bar(plan.hold as u64, format!("{} holding allocations", kind.name())));
    while left > 0 {
        let count = left.min(PER_HOLDER);
        left -= count;
        let mut child = std::process::Command::new(&env.bench_bin)
            .args(["hold", "--server", &server.addr.to_string(), "--count", &count.to_string()])
            .args(server.is_external().then_some("--release"))
            .envs(creds.to_env())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("starting a holder")?;
        let stdout = child.stdout.take().context("holder stdout")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        holders.push(child);
        let held: Held = serde_json::from_str(&line).with_context(|| format!("holder said {line:?}"))?;
        if let Some(pb) = &pb {
            pb.inc(count as u64);
        }
        let n = held.relayed.len();
        relayed.extend(held.relayed);
        // Each success must be a real, distinct relayed address.
        if relayed.len() < n {
            bail!("{} handed out the same relayed address twice", kind.name());
        }
        let failed: u64 = held.failures.values().sum();
        for (code, k) in held.failures {
            *cap_hit.entry(code).or_insert(0) += k;
        }
        if failed >= HOLD_GIVE_UP {
            break; // at the target's cap: more holders would only time out
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    std::thread::sleep(Duration::from_millis(500));
    if !server.alive() {
        bail!("{} exited while holding allocations", kind.name());
    }
    let rss_after = sys::rss_bytes(server.pid()?)?;
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }
    let n = relayed.len();
    Ok(Allocations {
        attempted: plan.alloc_count,
        succeeded,
        per_sec,
        hold_attempted: plan.hold,
        held: n,
        rss_before,
        rss_after,
        rss_per_allocation: if n == 0 { f64::NAN } else { rss_after.saturating_sub(rss_before) as f64 / n as f64 },
        cap_hit,
    })
}
