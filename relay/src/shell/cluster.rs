//! The relay's side of the relay ↔ signaling heartbeat (`cluster::heartbeat`).
//!
//! A task on the main thread's runtime POSTs a [`Heartbeat`] (identity, state, load, secret
//! version) to signaling at once at start and then every [`INTERVAL`], or every `interval_ms` of
//! the last reply, clamped to 0.5-10 s. Requests never overlap: a slow signaling delays the next
//! heartbeat instead of piling them up, and each request gives up after [`REQUEST_TIMEOUT`].
//!
//! On a reply:
//! - `drain` / `undrain` set signaling's drain reason (`shell::control`). SIGTERM's reason is kept
//!   apart and wins, so an undrain never cancels a shutdown.
//! - A secret set whose version differs from the applied one replaces the TURN REST secrets of
//!   every worker: signaling's keys first (newest), then `auth.secrets` from the config; static
//!   users stay. Running allocations keep the key they were created with.
//!
//! - `ended_sessions` (sessions signaling has ended while their media tokens may still be valid)
//!   replaces the relay's set: WHEP refuses those sessions' tokens and the SFU closes their
//!   subscribers, so an ended session's viewers are cut off within one heartbeat.
//!
//! A failed heartbeat (connection, timeout, non-2xx status, a body that is not a reply) changes
//! nothing: the last secrets and drain state stay, and the next tick tries again. A signaling
//! outage must never stop TURN, so nothing here exits or panics. Failures are logged at warn for
//! the first one and then at most every [`WARN_EVERY`], and at info when signaling answers again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cluster::heartbeat::{Command, Heartbeat, HeartbeatReply, INTERVAL, Load};
use tracing::{Instrument, debug, info, info_span, warn};

use super::control::Control;
use super::metrics::{ClusterMetrics, Metrics};
use super::sfu::SfuHandle;
use crate::config::ClusterConfig;

/// How long one heartbeat may take, connection included. Equal to the default interval, so a
/// hanging signaling still sees a heartbeat attempt about every interval.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Bounds on the interval signaling may ask for: faster would load it for nothing, slower would
/// outlast `cluster::heartbeat::DEAD_AFTER` (6 s) several times over.
const MIN_INTERVAL: Duration = Duration::from_millis(500);
const MAX_INTERVAL: Duration = Duration::from_secs(10);
/// At most one warning per this long while signaling stays unreachable.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// How much of an error response's body goes into the log line.
const MAX_ERROR_BODY_CHARS: usize = 200;

/// What the heartbeat needs from the configuration and the running relay.
pub struct Settings {
    pub cluster: ClusterConfig,
    /// The port the listening sockets actually bound (server.listen may say 0).
    pub turn_udp_port: u16,
    /// The first TURN-over-TLS listener's port, when TLS is on: signaling lists
    /// `turns:HOST:PORT?transport=tcp` beside the UDP URL.
    pub turn_tls_port: Option<u16>,
    /// Unix seconds when the process started.
    pub started_at: u64,
    /// Public base URL of the SFU's WHIP/WHEP endpoints, when it runs.
    pub sfu_url: Option<String>,
    /// The link endpoint's bound port, when links are on.
    pub link_port: Option<u16>,
    /// The links, when on: their RTTs go into heartbeats, and the relays to link with come
    /// back in replies.
    pub links: Option<super::links::LinkHandle>,
    /// The SFU, when it runs: told which sessions have ended.
    pub sfu: Option<SfuHandle>,
}

pub struct Heartbeater {
    settings: Settings,
    client: reqwest::Client,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    series: ClusterMetrics,
    load: LoadSampler,
    failures: FailureLog,
    /// Version of the secret set applied last (0 = none received).
    secrets_version: u64,
    answered_once: bool,
    /// The ended sessions the SFU has been told of.
    sfu_ended: std::collections::HashSet<String>,
}

impl Heartbeater {
    /// Builds the HTTP client and registers the metrics; fails only at start.
    pub fn new(settings: Settings, control: Arc<Control>, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client for cluster.signaling_url")?;
        let series = metrics.register_cluster().context("registering the cluster metrics")?;
        Ok(Self {
            settings,
            client,
            control,
            metrics,
            series,
            load: LoadSampler::new(),
            failures: FailureLog::default(),
            secrets_version: 0,
            answered_once: false,
            sfu_ended: std::collections::HashSet::new(),
        })
    }

    /// Sends heartbeats until the runtime drops the task.
    pub async fn run(mut self) {
        let url = &self.settings.cluster.heartbeat_url;
        if url.scheme() == "http" && !is_loopback_host(url) {
            warn!(%url, "cluster.signaling_url is plain http: the cluster token and the secrets travel unencrypted");
        }
        let span = info_span!("cluster", relay_id = %self.settings.cluster.relay_id);
        async move {
            let mut interval = INTERVAL;
            loop {
                let started = tokio::time::Instant::now();
                if let Some(next) = self.tick().await {
                    interval = next;
                }
                tokio::time::sleep_until(started + interval).await;
            }
        }
        .instrument(span)
        .await;
    }

    /// One heartbeat and its reply; returns the interval the reply asked for.
    async fn tick(&mut self) -> Option<Duration> {
        let heartbeat = self.heartbeat(Instant::now());
        match self.post(&heartbeat).await {
            Ok(reply) => {
                self.series.ok.inc();
                self.series.last_ok.set(unix_seconds_f64());
                if let Some((failures, since)) = self.failures.succeeded(Instant::now()) {
                    info!(failures, outage_s = since.as_secs(), "signaling answers heartbeats again");
                } else if !self.answered_once {
                    info!(url = %self.settings.cluster.heartbeat_url, "signaling answered the first heartbeat");
                }
                self.answered_once = true;
                self.apply(&reply);
                Some(next_interval(reply.interval_ms))
            }
            Err(e) => {
                self.series.error.inc();
                let (warn_now, failures) = self.failures.failed(Instant::now());
                if warn_now {
                    warn!(
                        error = format!("{e:#}"),
                        failures,
                        "heartbeat to signaling failed; keeping the last secrets and state, retrying \
                         (next warning in 30 s at the earliest)"
                    );
                } else {
                    debug!(error = format!("{e:#}"), failures, "heartbeat to signaling failed");
                }
                None
            }
        }
    }

    fn heartbeat(&mut self, now: Instant) -> Heartbeat {
        let (cpu, bandwidth_bps) = self.load.sample(now, self.metrics.relayed_bytes());
        let c = &self.settings.cluster;
        Heartbeat {
            relay_id: c.relay_id.clone(),
            region: c.region.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            public_host: c.public_host.clone(),
            turn_udp_port: self.settings.turn_udp_port,
            turn_tls_port: self.settings.turn_tls_port,
            sfu_url: self.settings.sfu_url.clone(),
            link_port: self.settings.link_port,
            link_rtts: self.settings.links.as_ref().map(super::links::LinkHandle::rtts).unwrap_or_default(),
            links: self.settings.links.as_ref().map_or_else(Vec::new, |links| {
                let views = self.settings.sfu.as_ref().map(|sfu| sfu.snapshot().link_views).unwrap_or_default();
                links.reports(&views)
            }),
            state: self.control.state(),
            load: Load {
                allocations: u64::try_from(self.metrics.allocations()).unwrap_or(0),
                max_allocations: self.metrics.capacity(),
                cpu,
                bandwidth_bps,
                bandwidth_cap_bps: c.bandwidth_cap_bps,
            },
            secrets_version: self.secrets_version,
            started_at: self.settings.started_at,
        }
    }

    async fn post(&self, heartbeat: &Heartbeat) -> anyhow::Result<HeartbeatReply> {
        let c = &self.settings.cluster;
        let response = self
            .client
            .post(c.heartbeat_url.clone())
            .bearer_auth(&c.token.0)
            .json(heartbeat)
            .send()
            .await
            .context("sending the heartbeat")?;
        let status = response.status();
        if !status.is_success() {
            let hint = match status.as_u16() {
                401 | 403 => " (check cluster.token)",
                404 => " (check cluster.signaling_url)",
                _ => "",
            };
            // Signaling says what it refused (a 400 names the field); a little of it is enough.
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(MAX_ERROR_BODY_CHARS).filter(|c| !c.is_control()).collect();
            anyhow::bail!("signaling answered {status}{hint}: {body}");
        }
        response.json::<HeartbeatReply>().await.context("reading signaling's reply")
    }

    fn apply(&mut self, reply: &HeartbeatReply) {
        for command in &reply.commands {
            let on = matches!(command, Command::Drain);
            let before = self.control.reasons();
            let after = self.control.set_signaling_drain(on);
            // Commands repeat in every reply until the reported state agrees: log changes only.
            if before.signaling != after.signaling {
                if on {
                    info!("signaling drains this relay: no new allocations, existing ones continue");
                } else if after.shutdown {
                    info!("signaling undrains this relay, but it is shutting down (SIGTERM) and stays draining");
                } else {
                    info!("signaling undrains this relay: taking new allocations again");
                }
            }
        }
        if let Some(links) = &self.settings.links {
            links.set_peers(reply.link_peers.clone());
        }
        let ended = self.control.set_ended_sessions(&reply.ended_sessions);
        if ended != self.sfu_ended
            && let Some(sfu) = &self.settings.sfu
        {
            // A full queue loses the message; the next reply brings the same list again.
            if sfu.end_sessions(ended.clone()) {
                let new = ended.difference(&self.sfu_ended).count();
                if new > 0 {
                    info!(new, ended = ended.len(), "signaling ended sessions: their viewers are cut off");
                }
                self.sfu_ended = ended;
            }
        }
        let secrets = &reply.secrets;
        if secrets.version != self.secrets_version {
            let empty = secrets.keys.iter().filter(|k| k.is_empty()).count();
            if empty > 0 {
                warn!(version = secrets.version, empty, "signaling sent empty secrets; ignoring those");
            }
            self.control.set_signaling_secrets(&secrets.keys);
            info!(
                version = secrets.version,
                previous = self.secrets_version,
                keys = secrets.keys.len() - empty,
                "applied TURN REST secrets from signaling"
            );
            self.secrets_version = secrets.version;
        }
    }
}

/// The interval a reply asks for, clamped; 0 means the reply did not say.
fn next_interval(interval_ms: u64) -> Duration {
    if interval_ms == 0 {
        return INTERVAL;
    }
    Duration::from_millis(interval_ms).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        // IPv6 hosts come in brackets.
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn unix_seconds_f64() -> f64 {
    cluster::time::unix_now_ms() as f64 / 1000.0
}

/// Warn on the first failure, then at most every [`WARN_EVERY`]; report the outage on recovery.
#[derive(Debug, Default)]
struct FailureLog {
    failures: u64,
    first: Option<Instant>,
    last_warn: Option<Instant>,
}

impl FailureLog {
    /// Records a failure; returns whether to warn now and the consecutive failures so far.
    fn failed(&mut self, now: Instant) -> (bool, u64) {
        self.failures += 1;
        self.first.get_or_insert(now);
        let due = self.last_warn.is_none_or(|t| now.saturating_duration_since(t) >= WARN_EVERY);
        if due {
            self.last_warn = Some(now);
        }
        (due, self.failures)
    }

    /// Records a success; after failures, returns how many there were and since when it failed.
    fn succeeded(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let first = self.first.take()?;
        let failures = std::mem::take(&mut self.failures);
        self.last_warn = None;
        Some((failures, now.saturating_duration_since(first)))
    }
}

/// CPU and relayed bandwidth over the time since the previous heartbeat.
struct LoadSampler {
    cores: usize,
    ticks_per_sec: f64,
    prev: Option<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    cpu_secs: Option<f64>,
    relayed_bytes: u64,
}

impl LoadSampler {
    fn new() -> Self {
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // USER_HZ is 100 on every Linux architecture; the fallback only guards a failing call.
        let ticks_per_sec = if ticks > 0 { ticks as f64 } else { 100.0 };
        // The cores this process may use (affinity and cgroup quota included), as for workers = 0.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { cores, ticks_per_sec, prev: None }
    }

    /// (CPU fraction, relayed bits per second) since the previous call. The first call has no
    /// interval to measure and reports zeros rather than a start-up spike.
    fn sample(&mut self, now: Instant, relayed_bytes: u64) -> (f64, u64) {
        let cpu_secs = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| cpu_ticks(&s))
            .map(|t| t as f64 / self.ticks_per_sec);
        let current = Sample { at: now, cpu_secs, relayed_bytes };
        let Some(prev) = self.prev.replace(current) else {
            return (0.0, 0);
        };
        let elapsed = now.saturating_duration_since(prev.at);
        let cpu = match (prev.cpu_secs, cpu_secs) {
            (Some(a), Some(b)) => cpu_fraction(b - a, elapsed, self.cores),
            _ => 0.0,
        };
        (cpu, bits_per_second(relayed_bytes.wrapping_sub(prev.relayed_bytes), elapsed))
    }
}

/// utime + stime (fields 14 and 15, in clock ticks) from a `/proc/<pid>/stat` line. The command
/// name (field 2) is in parentheses and may itself hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts at field 3 (state): utime is field 14, the 12th of rest.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// CPU seconds used over `elapsed` as a fraction of `cores` cores, within 0..=1.
fn cpu_fraction(cpu_secs: f64, elapsed: Duration, cores: usize) -> f64 {
    let capacity = elapsed.as_secs_f64() * cores.max(1) as f64;
    if capacity <= 0.0 || !cpu_secs.is_finite() {
        return 0.0;
    }
    (cpu_secs / capacity).clamp(0.0, 1.0)
}

/// Bits per second for `bytes` over `elapsed` (0 over no time).
fn bits_per_second(bytes: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0;
    }
    // f64 → u64 saturates; u64::MAX bits per second is beyond any link.
    (bytes as f64 * 8.0 / secs) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_reads_utime_and_stime() {
        // A real line from /proc/self/stat, with a command name holding spaces and a parenthesis.
        let stat = "4242 (relay (w) 1) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    350 150 0 0 20 0 3 0 12345 104857600 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0";
        assert_eq!(cpu_ticks(stat), Some(500));
        assert_eq!(cpu_ticks("1 (x) S 1 2 3"), None, "truncated");
        assert_eq!(cpu_ticks("no parenthesis"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(cpu_ticks(&own).is_some(), "parses this process's own: {own}");
    }

    #[test]
    fn cpu_is_a_fraction_of_all_cores() {
        let two_s = Duration::from_secs(2);
        assert_eq!(cpu_fraction(1.0, two_s, 2), 0.25);
        assert_eq!(cpu_fraction(4.0, two_s, 2), 1.0);
        assert_eq!(cpu_fraction(9.0, two_s, 2), 1.0, "clamped (tick rounding can overshoot)");
        assert_eq!(cpu_fraction(-0.01, two_s, 2), 0.0);
        assert_eq!(cpu_fraction(1.0, Duration::ZERO, 2), 0.0);
        assert_eq!(cpu_fraction(f64::NAN, two_s, 2), 0.0);
        assert_eq!(cpu_fraction(1.0, two_s, 0), 0.5, "zero cores counts as one");
    }

    #[test]
    fn bandwidth_is_bits_per_second() {
        assert_eq!(bits_per_second(250_000, Duration::from_secs(2)), 1_000_000);
        assert_eq!(bits_per_second(1, Duration::from_millis(500)), 16);
        assert_eq!(bits_per_second(1000, Duration::ZERO), 0);
        assert_eq!(bits_per_second(u64::MAX, Duration::from_millis(1)), u64::MAX);
    }

    #[test]
    fn sampler_reports_the_delta_since_the_previous_sample() {
        let mut s = LoadSampler::new();
        let t0 = Instant::now();
        assert_eq!(s.sample(t0, 1_000), (0.0, 0), "nothing to measure yet");
        let (cpu, bps) = s.sample(t0 + Duration::from_secs(2), 1_000 + 500_000);
        assert_eq!(bps, 2_000_000);
        assert!((0.0..=1.0).contains(&cpu), "{cpu}");
        let (_, bps) = s.sample(t0 + Duration::from_secs(4), 1_000 + 500_000);
        assert_eq!(bps, 0, "no traffic in the last interval");
    }

    #[test]
    fn interval_follows_the_reply_within_bounds() {
        assert_eq!(next_interval(2000), Duration::from_secs(2));
        assert_eq!(next_interval(1), MIN_INTERVAL);
        assert_eq!(next_interval(600_000), MAX_INTERVAL);
        assert_eq!(next_interval(0), INTERVAL, "0 = not given");
    }

    #[test]
    fn failures_warn_first_then_every_30_s_and_recovery_reports_the_outage() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        assert_eq!(log.succeeded(t0), None, "nothing to recover from");
        assert_eq!(log.failed(t0), (true, 1));
        assert_eq!(log.failed(t0 + Duration::from_secs(2)), (false, 2));
        assert_eq!(log.failed(t0 + Duration::from_secs(29)), (false, 3));
        assert_eq!(log.failed(t0 + Duration::from_secs(30)), (true, 4));
        assert_eq!(log.failed(t0 + Duration::from_secs(32)), (false, 5));
        assert_eq!(log.succeeded(t0 + Duration::from_secs(34)), Some((5, Duration::from_secs(34))));
        assert_eq!(log.succeeded(t0 + Duration::from_secs(36)), None);
        assert_eq!(log.failed(t0 + Duration::from_secs(37)), (true, 1), "a new outage warns at once");
    }
}
