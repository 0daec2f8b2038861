//! The servers under test, started and stopped by the bench itself with equivalent settings:
//! UDP on loopback, TURN REST secret auth, loopback peers allowed, no TLS, one worker (relay
//! thread) per core, the same relay port range and no quotas.
//!
//! - `ours`: the project's relay binary (release build) from a config the bench writes.
//! - `ours-busy-poll`: the same with `server.busy_poll_us` set (off by default): its workers poll
//!   for a moment after traffic instead of sleeping at once, trading idle CPU for wake-up latency.
//! - `coturn`: Debian's `turnserver`.
//! - `coturn-batched`: `turnserver` with `--udp-recvmmsg --udp-sendmmsg` where the installed
//!   version has them (added in coturn 4.10); otherwise unavailable, and the report says why.
//! - `baseline`: another build of the relay (`--baseline-bin`, for example the previous commit's)
//!   on the same config as `ours`, so that a change is measured side by side with what it
//!   replaces in one run; only with `--baseline-bin`.
//! - `raw`: `bench raw-forwarder`, a bare UDP forwarder (see `raw.rs`), in its own process so its
//!   CPU and memory are measured the same way.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

/// Relay ports both TURN servers draw from: wide enough for 50,000 allocations.
pub const RELAY_PORTS: (u16, u16) = (10000, 65000);
pub const SECRET: &str = "bench-secret";
pub const REALM: &str = "relay";
/// `server.busy_poll_us` of the `ours-busy-poll` target: long enough to cover a datagram's trip
/// to a loopback peer and back while the worker polls.
pub const BUSY_POLL_US: u64 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Ours,
    /// Ours with `server.busy_poll_us` (off by default): CPU traded for wake-up latency.
    OursBusyPoll,
    Coturn,
    CoturnBatched,
    /// The relay from `--baseline-bin`, on `ours`'s config.
    Baseline,
    Raw,
}

impl Kind {
    pub const ALL: [Kind; 6] =
        [Kind::Ours, Kind::OursBusyPoll, Kind::Coturn, Kind::CoturnBatched, Kind::Baseline, Kind::Raw];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::OursBusyPoll => "ours-busy-poll",
            Kind::Coturn => "coturn",
            Kind::CoturnBatched => "coturn-batched",
            Kind::Baseline => "baseline",
            Kind::Raw => "raw",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s).with_context(|| format!("unknown target {s:?}"))
    }

    pub fn is_turn(self) -> bool {
        self != Kind::Raw
    }
}

/// What the installed coturn can do.
#[derive(Debug, Clone, Serialize)]
pub struct CoturnInfo {
    pub installed: bool,
    pub version: String,
    pub recvmmsg: bool,
    pub sendmmsg: bool,
    pub gso: bool,
}

impl CoturnInfo {
    pub fn detect() -> Self {
        let run = |arg: &str| {
            Command::new("turnserver")
                .arg(arg)
                .output()
                .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
        };
        match (run("--version"), run("--help")) {
            (Ok(version), Ok(help)) => Self {
                installed: true,
                version: version.lines().last().unwrap_or("").trim().to_owned(),
                recvmmsg: help.contains("--udp-recvmmsg"),
                sendmmsg: help.contains("--udp-sendmmsg"),
                gso: help.contains("--udp-gso"),
            },
            _ => Self { installed: false, version: String::new(), recvmmsg: false, sendmmsg: false, gso: false },
        }
    }

    /// The batching flags this coturn has, for the batched variant.
    pub fn batching_flags(&self) -> Vec<&'static str> {
        let mut flags = Vec::new();
        if self.recvmmsg {
            flags.push("--udp-recvmmsg");
        }
        if self.sendmmsg {
            flags.push("--udp-sendmmsg");
        }
        flags
    }
}

/// How to run the targets.
#[derive(Debug, Clone)]
pub struct Env {
    pub relay_bin: PathBuf,
    /// The `baseline` target's relay binary, if one was given.
    pub baseline_bin: Option<PathBuf>,
    pub bench_bin: PathBuf,
    pub workers: usize,
    /// CPUs the servers are confined to (the bench keeps the others), if pinning.
    pub server_cpus: Option<Vec<usize>>,
    /// A server someone else started (`--server`), and its pid for CPU and memory figures.
    pub external: Option<(SocketAddr, Option<u32>)>,
    pub dir: PathBuf,
    pub coturn: CoturnInfo,
    /// The relay port range the servers it starts get (default [`RELAY_PORTS`]; servers that
    /// run at once, as in the soak, get ranges of their own).
    pub relay_ports: (u16, u16),
}

impl Env {
    /// Finds (building if needed) the relay binary and makes a scratch directory.
    pub fn new(relay_bin: Option<PathBuf>, workers: usize, server_cpus: Option<Vec<usize>>) -> anyhow::Result<Self> {
        let bench_bin = std::env::current_exe()?;
        let relay_bin = match relay_bin {
            Some(p) => p,
            None => {
                let beside = bench_bin.with_file_name("relay");
                if !beside.exists() {
                    build_relay()?;
                }
                beside
            }
        };
        if !relay_bin.exists() {
            bail!("relay binary not found at {}", relay_bin.display());
        }
        let dir = std::env::temp_dir().join(format!("relay-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            relay_bin,
            baseline_bin: None,
            bench_bin,
            workers,
            server_cpus,
            external: None,
            dir,
            coturn: CoturnInfo::detect(),
            relay_ports: RELAY_PORTS,
        })
    }

    /// Why a target cannot run here, if it cannot.
    pub fn unavailable(&self, kind: Kind) -> Option<String> {
        match kind {
            Kind::Coturn | Kind::CoturnBatched if !self.coturn.installed => {
                Some("turnserver not installed (Debian package coturn)".into())
            }
            Kind::CoturnBatched if self.coturn.batching_flags().is_empty() => {
                Some(format!("coturn {} has no --udp-recvmmsg/--udp-sendmmsg (added in 4.10)", self.coturn.version))
            }
            Kind::Baseline if self.baseline_bin.is_none() => Some("no --baseline-bin given".into()),
            _ => None,
        }
    }

    /// The targets of a run with no `--targets`: all of them, `baseline` only if there is one.
    pub fn default_targets(&self) -> Vec<Kind> {
        Kind::ALL.into_iter().filter(|k| *k != Kind::Baseline || self.baseline_bin.is_some()).collect()
    }
}

fn build_relay() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building the relay (release)...");
    let status = Command::new(cargo).args(["build", "--release", "-p", "relay", "--bin", "relay"]).status()?;
    if !status.success() {
        bail!("cargo build --release -p relay failed");
    }
    Ok(())
}

/// Confines a server about to be spawned to `env.server_cpus`.
fn pinned(mut cmd: Command, env: &Env) -> Command {
    if let Some(cpus) = env.server_cpus.clone() {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and only calls
        // sched_setaffinity (async-signal-safe) through `pin_to`, allocating nothing.
        unsafe {
            cmd.pre_exec(move || crate::sys::pin_to(&cpus));
        }
    }
    cmd
}

/// A running server under test, killed when dropped.
pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// The process, if known (always for servers the bench starts).
    pid: Option<u32>,
    /// `None` for an external server.
    child: Option<Child>,
}

impl Server {
    /// Starts `kind` on loopback. `peer` is where the raw forwarder sends; `drop_every` and
    /// `delay` are the raw forwarder's test knobs.
    pub fn start(kind: Kind, env: &Env, peer: SocketAddr, drop_every: u64, delay: Duration) -> anyhow::Result<Self> {
        if let Some((addr, pid)) = env.external {
            let mut server = Self { kind, addr, pid, child: None };
            server.wait_stun_ready()?;
            return Ok(server);
        }
        if let Some(why) = env.unavailable(kind) {
            bail!("{} unavailable: {why}", kind.name());
        }
        let (child, addr) = match kind {
            Kind::Ours => start_ours(env, &env.relay_bin, 0)?,
            Kind::OursBusyPoll => start_ours(env, &env.relay_bin, BUSY_POLL_US)?,
            Kind::Baseline => start_ours(env, env.baseline_bin.as_deref().context("--baseline-bin")?, 0)?,
            Kind::Coturn => start_coturn(env, &[])?,
            Kind::CoturnBatched => start_coturn(env, &env.coturn.batching_flags())?,
            Kind::Raw => start_raw(env, peer, drop_every, delay)?,
        };
        let pid = Some(child.id());
        let mut server = Self { kind, addr, pid, child: Some(child) };
        if kind.is_turn() {
            server.wait_stun_ready()?;
        }
        Ok(server)
    }

    /// A server the bench did not start (`--server`): it outlives the run, and keeps whatever
    /// the run leaves allocated.
    pub fn is_external(&self) -> bool {
        self.child.is_none()
    }

    /// True while the process runs (an external server is assumed to).
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The server's pid, needed for CPU and memory figures.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.pid.context("CPU and memory figures of an external server need --server-pid")
    }

    fn wait_stun_ready(&mut self) -> anyhow::Result<()> {
        let probe = UdpSocket::bind("127.0.0.1:0")?;
        probe.set_read_timeout(Some(Duration::from_millis(100)))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut m = stun::message::Message::new();
        m.build(&[Box::new(stun::message::BINDING_REQUEST), Box::new(stun::agent::TransactionId::new())])?;
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if !self.alive() {
                bail!("{} exited during start-up", self.kind.name());
            }
            probe.send_to(&m.raw, self.addr)?;
            if probe.recv_from(&mut buf).is_ok() {
                return Ok(());
            }
        }
        bail!("{} did not answer STUN on {} within 15 s", self.kind.name(), self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free UDP port on loopback (bound and released; the server binds it right after).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits for a line starting with `prefix` on the child's stdout and returns the rest.
fn read_ready_line(child: &mut Child, prefix: &'static str) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).with_context(|| format!("no {prefix:?} line from the server"))
}

/// The relay config equivalent to coturn's command line, plus `extra` TOML at the end.
fn write_config(env: &Env, name: &str, busy_poll_us: u64, extra: &str) -> anyhow::Result<PathBuf> {
    let (dir, workers) = (&env.dir, env.workers);
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"# Written by the bench: equivalent to the coturn command line it runs.
[server]
listen = "127.0.0.1:0"
workers = {workers}
realm = "{REALM}"
socket_buffer_bytes = 8388608
busy_poll_us = {busy_poll_us}

[relay]
min_port = {min}
max_port = {max}

[allocations]
max_per_user = 0
max_total = 0

[auth]
secrets = ["{SECRET}"]

[peers]
allow = ["127.0.0.0/8"]

[limits]
# coturn answers every unauthenticated request, and the allocation-rate scenario sends
# thousands a second from one address: the relay's per-source cap on those answers (an
# anti-reflection default) is off here, as coturn has none.
unauthenticated_per_ip = 0
unauthenticated_total = 0

[admin]
listen = "127.0.0.1:0"

[log]
level = "warn"
"#,
        min = env.relay_ports.0,
        max = env.relay_ports.1,
    );
    std::fs::write(&path, text + extra)?;
    Ok(path)
}

/// A relay binary on the bench's config plus `extra`, stdout piped for its banner.
fn spawn_ours(env: &Env, bin: &Path, busy_poll_us: u64, extra: &str) -> anyhow::Result<Child> {
    spawn_named(env, bin, "relay", busy_poll_us, extra)
}

/// [`spawn_ours`] with its config at `<dir>/<name>.toml` (several relays at once).
fn spawn_named(env: &Env, bin: &Path, name: &str, busy_poll_us: u64, extra: &str) -> anyhow::Result<Child> {
    let config = write_config(env, name, busy_poll_us, extra)?;
    pinned(Command::new(bin), env)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

fn start_ours(env: &Env, bin: &Path, busy_poll_us: u64) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = spawn_ours(env, bin, busy_poll_us, "")?;
    let rest = read_ready_line(&mut child, "STUN/TURN   udp://")?;
    let addr = rest.split_whitespace().next().context("address in banner")?.parse()?;
    Ok((child, addr))
}

fn start_coturn(env: &Env, extra: &[&str]) -> anyhow::Result<(Child, SocketAddr)> {
    let port = free_port()?;
    let child = pinned(Command::new("turnserver"), env)
        .args(["-n", "--listening-ip=127.0.0.1", &format!("--listening-port={port}"), "--relay-ip=127.0.0.1"])
        .args([format!("--min-port={}", env.relay_ports.0), format!("--max-port={}", env.relay_ports.1)])
        .args(["--use-auth-secret", &format!("--static-auth-secret={SECRET}"), &format!("--realm={REALM}")])
        .args(["--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp-relay"])
        .args([format!("--relay-threads={}", env.workers), "--user-quota=0".into(), "--total-quota=0".into()])
        .args(["--no-stdout-log", "--log-file=/dev/null", "--simple-log"])
        .arg(format!("--pidfile={}", env.dir.join("turnserver.pid").display()))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting turnserver")?;
    Ok((child, SocketAddr::from(([127, 0, 0, 1], port))))
}

fn start_raw(env: &Env, peer: SocketAddr, drop_every: u64, delay: Duration) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = pinned(Command::new(&env.bench_bin), env)
        .args(["raw-forwarder", "--listen", "127.0.0.1:0", "--peer", &peer.to_string()])
        .args(["--workers", &env.workers.to_string(), "--drop-every", &drop_every.to_string()])
        .args(["--delay-us", &delay.as_micros().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the raw forwarder")?;
    let rest = read_ready_line(&mut child, "raw forwarder ready udp://")?;
    Ok((child, rest.trim().parse()?))
}

/// Starts the relay with its SFU on (`bench sfu`): the bench's config plus an HTTP listener for
/// WHIP/WHEP. Returns the process (killed when dropped) and where to reach it.
pub fn start_ours_sfu(env: &Env) -> anyhow::Result<(Server, crate::sfu::Target)> {
    start_sfu_named(env, "relay", "")
}

/// The relay with its SFU on, its config at `<dir>/<name>.toml` with `extra` TOML after the
/// `[sfu]` section (say, a `[link]` section: the link address then comes from the banner).
pub fn start_sfu_named(env: &Env, name: &str, extra: &str) -> anyhow::Result<(Server, crate::sfu::Target)> {
    let sfu = format!("\n[sfu]\nhttp_listen = \"127.0.0.1:0\"\n{extra}");
    let mut child = spawn_named(env, &env.relay_bin, name, 0, &sfu)?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut prefixes = vec!["STUN/TURN   udp://", "SFU         WHIP http://", "metrics     http://"];
    if extra.contains("[link]") {
        prefixes.push("links       quic://");
    }
    let mut banner = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while banner.len() < prefixes.len() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .context("the relay did not print its SFU banner within 30 s")?;
        for &p in &prefixes {
            if let Some(rest) = line.trim().strip_prefix(p) {
                banner.insert(p, rest.to_owned());
            }
        }
    }
    let (udp, http, admin) = crate::sfu::addresses(&banner)?;
    let link = banner
        .get("links       quic://")
        .map(|l| l.split_whitespace().next().unwrap_or_default().parse())
        .transpose()
        .context("the link address in the banner")?;
    let pid = child.id();
    let server = Server { kind: Kind::Ours, addr: udp, pid: Some(pid), child: Some(child) };
    Ok((server, crate::sfu::Target { pid, udp, http, admin, link, secret: SECRET.to_owned() }))
}
