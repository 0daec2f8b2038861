//! `relayctl probe`: from this host, what a player's client does before asking for an ICE config
//! (geo::probe, and the policy `GET /v1/regions` states): STUN Binding requests to every region's
//! probe targets, the attempts to one target one after another with a timeout each, all targets
//! at once. Each sample is a round-trip time in ms or a loss (timeout, or ICMP port unreachable).
//!
//! A region's result is that of its best target (lowest median, then least loss): the relays of
//! a region share its network path, and placement picks a serving relay within the region anyway.
//! Summaries use geo's rule (the first sample is warm-up when there are at least three; the
//! lower median of the rest), so what is printed is what signaling would conclude. `--json`
//! prints exactly the `probes` object that `POST /v1/ice-config` and `POST /v1/sessions` accept.
//!
//! The requests are built by hand; a Binding request is a bare 20-byte header (RFC 8489 §5, §6):
//! no attributes are needed, and FINGERPRINT is optional for it (§14.7).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use geo::probe::{MAX_SAMPLE_MS, MAX_SAMPLES, RECOMMENDED_ATTEMPTS, RECOMMENDED_TIMEOUT_MS, WARM_UP_MIN_SAMPLES};
use geo::{ProbeSamples, ProbeSummary};
use serde_json::{Value, json};
use signaling_api::regions::RegionList;
use tokio::net::UdpSocket;

use crate::render::{Align, Table, ms};

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Binding requests per target, sent one after another
    #[arg(long, default_value_t = RECOMMENDED_ATTEMPTS as u8,
          value_parser = clap::value_parser!(u8).range(1..=MAX_SAMPLES as i64))]
    pub attempts: u8,
    /// How long to wait for each response, in ms
    #[arg(long, default_value_t = u64::from(RECOMMENDED_TIMEOUT_MS),
          value_parser = clap::value_parser!(u64).range(1..=MAX_SAMPLE_MS as u64))]
    pub timeout_ms: u64,
}

/// STUN message type of a Binding request (RFC 8489 §5: method 0x001, class request).
const BINDING_REQUEST: u16 = 0x0001;
/// Binding success and error responses (classes 0b10 and 0b11). An error response is an answer
/// too: it took a round trip.
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
/// RFC 8489 §5.
const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;

type TransactionId = [u8; 12];

fn binding_request(tid: &TransactionId) -> [u8; HEADER_LEN] {
    let mut m = [0u8; HEADER_LEN];
    m[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    // Bytes 2..4: message length 0, no attributes.
    m[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m[8..20].copy_from_slice(tid);
    m
}

/// The transaction id of a Binding response, if `packet` is one (RFC 8489 §5: the length covers
/// the attributes and is a multiple of 4; the cookie is fixed).
fn response_tid(packet: &[u8]) -> Option<TransactionId> {
    let header = packet.get(..HEADER_LEN)?;
    let typ = u16::from_be_bytes([header[0], header[1]]);
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let well_formed = matches!(typ, BINDING_SUCCESS | BINDING_ERROR)
        && len % 4 == 0
        && HEADER_LEN + len == packet.len()
        && cookie == MAGIC_COOKIE;
    well_formed.then(|| header[8..20].try_into().expect("a 12-byte slice"))
}

/// One probe target's results.
#[derive(Debug)]
struct TargetReport {
    url: String,
    samples: Vec<Option<f64>>,
    /// Why nothing could be sent (name resolution, socket), if so; the samples are all losses.
    error: Option<String>,
}

impl TargetReport {
    fn summary(&self) -> ProbeSummary {
        // Samples are within 0..=timeout, and timeout <= MAX_SAMPLE_MS, 1..=MAX_SAMPLES of them.
        ProbeSamples::new(self.samples.clone()).expect("probe samples are in range").summarize()
    }

    /// Orders targets best first: answered, lower median, less loss.
    fn rank(&self) -> (bool, f64, usize) {
        let s = self.summary();
        (s.rtt_ms().is_none(), s.rtt_ms().unwrap_or(f64::INFINITY), s.timeouts())
    }

    /// The samples geo counts (the first is warm-up with three or more).
    fn counted(&self) -> &[Option<f64>] {
        if self.samples.len() >= WARM_UP_MIN_SAMPLES { &self.samples[1..] } else { &self.samples }
    }
}

#[derive(Debug)]
struct RegionReport {
    id: String,
    targets: Vec<TargetReport>,
}

impl RegionReport {
    fn best(&self) -> Option<&TargetReport> {
        self.targets.iter().min_by(|a, b| {
            let (a, b) = (a.rank(), b.rank());
            a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2))
        })
    }
}

#[derive(Debug)]
pub struct Report {
    regions: Vec<RegionReport>,
}

/// Probes every target `GET /v1/regions` (`regions`) lists.
pub async fn run(regions: &RegionList, args: &ProbeArgs) -> anyhow::Result<Report> {
    let attempts = usize::from(args.attempts);
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut report = Report { regions: Vec::new() };
    let mut tasks = tokio::task::JoinSet::new();
    for (ri, region) in regions.regions.iter().enumerate() {
        let id = region.id.clone();
        for (ti, target) in region.probe_targets.iter().enumerate() {
            let (host, port, url) = (target.host.clone(), target.port, target.url.clone());
            tasks.spawn(async move {
                let (samples, error) = match probe_target(&host, port, attempts, timeout).await {
                    Ok(samples) => (samples, None),
                    Err(e) => (vec![None; attempts], Some(format!("{e:#}"))),
                };
                (ri, ti, TargetReport { url, samples, error })
            });
        }
        report.regions.push(RegionReport { id, targets: Vec::new() });
    }
    let mut done = Vec::new();
    while let Some(result) = tasks.join_next().await {
        done.push(result.context("a probe task failed")?);
    }
    // Back in the order signaling listed them.
    done.sort_by_key(|(ri, ti, _)| (*ri, *ti));
    for (ri, _, target) in done {
        report.regions[ri].targets.push(target);
    }
    Ok(report)
}

/// `attempts` Binding requests in sequence to `host:port`, each answered or lost within `timeout`.
async fn probe_target(host: &str, port: u16, attempts: usize, timeout: Duration) -> anyhow::Result<Vec<Option<f64>>> {
    let addr = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let local: SocketAddr =
        if addr.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(local).await.context("binding a UDP socket")?;
    // Connected, so that only the target's datagrams arrive, and an ICMP port unreachable comes
    // back as ECONNREFUSED: a loss known at once rather than after the timeout.
    socket.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let mut samples = Vec::with_capacity(attempts);
    let mut buf = [0u8; 1500];
    for _ in 0..attempts {
        let tid: TransactionId = rand::random();
        let sent = Instant::now();
        let deadline = tokio::time::Instant::from_std(sent + timeout);
        let mut sample = None;
        if socket.send(&binding_request(&tid)).await.is_ok() {
            // Late answers to earlier attempts and stray datagrams are skipped by transaction id.
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                if response_tid(&buf[..n]) == Some(tid) {
                    let rtt = sent.elapsed();
                    // Woken after the deadline: it did not make it in time.
                    sample = (rtt <= timeout).then(|| (rtt.as_secs_f64() * 1e6).round() / 1e3);
                    break;
                }
            }
        }
        samples.push(sample);
    }
    Ok(samples)
}

impl Report {
    /// `{"probes": {"region": [ms | null, ...]}}`, each region's best target; regions without
    /// targets are left out (there was nothing to measure).
    pub fn to_json(&self) -> Value {
        let probes: serde_json::Map<String, Value> =
            self.regions.iter().filter_map(|r| Some((r.id.clone(), json!(r.best()?.samples)))).collect();
        json!({ "probes": probes })
    }

    pub fn table(&self) -> String {
        let mut t = Table::new(&[
            ("REGION", Align::Left),
            ("TARGET", Align::Left),
            ("MEDIAN", Align::Right),
            ("MIN", Align::Right),
            ("LOSS", Align::Right),
            ("SAMPLES", Align::Left),
        ]);
        let mut best: Option<(&str, f64)> = None;
        for region in &self.regions {
            let Some(target) = region.best() else {
                t.row(vec![
                    region.id.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "no probe targets".into(),
                ]);
                continue;
            };
            let summary = target.summary();
            let min = target.counted().iter().flatten().copied().min_by(f64::total_cmp);
            let more = region.targets.len() - 1;
            let samples = match &target.error {
                Some(e) => e.clone(),
                None => target
                    .samples
                    .iter()
                    .map(|s| s.map_or_else(|| "lost".into(), |v| format!("{v:.2}")))
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            t.row(vec![
                region.id.clone(),
                if more > 0 { format!("{} (+{more} more)", target.url) } else { target.url.clone() },
                summary.rtt_ms().map_or("-".into(), ms),
                min.map_or("-".into(), ms),
                format!("{:.0}%", summary.loss() * 100.0),
                samples,
            ]);
            if let Some(rtt) = summary.rtt_ms()
                && best.is_none_or(|(_, b)| rtt < b)
            {
                best = Some((&region.id, rtt));
            }
        }
        let mut out = t.render();
        out.push('\n');
        match best {
            Some((region, rtt)) => out.push_str(&format!("best region: {region} ({})\n", ms(rtt))),
            None => out.push_str("best region: none (no region answered)\n"),
        }
        if self.regions.iter().flat_map(|r| &r.targets).any(|t| t.samples.len() >= WARM_UP_MIN_SAMPLES) {
            out.push_str("median, min and loss leave out the first sample (warm-up), as signaling does\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_request_is_a_bare_header() {
        let tid = [7u8; 12];
        let m = binding_request(&tid);
        assert_eq!(&m[..8], &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42]);
        assert_eq!(&m[8..], &tid);
    }

    #[test]
    fn responses_are_matched_by_type_cookie_length_and_id() {
        let tid = [9u8; 12];
        let mut success = binding_request(&tid).to_vec();
        success[0..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
        assert_eq!(response_tid(&success), Some(tid));
        // With a 12-byte XOR-MAPPED-ADDRESS attribute.
        let mut with_attr = success.clone();
        with_attr[2..4].copy_from_slice(&12u16.to_be_bytes());
        with_attr.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0x11, 0x22, 0x5e, 0x12, 0xa4, 0x43]);
        assert_eq!(response_tid(&with_attr), Some(tid));
        let mut error = success.clone();
        error[0..2].copy_from_slice(&BINDING_ERROR.to_be_bytes());
        assert_eq!(response_tid(&error), Some(tid));
        // The request itself, a truncated packet, a wrong cookie, a length that lies.
        assert_eq!(response_tid(&binding_request(&tid)), None);
        assert_eq!(response_tid(&success[..19]), None);
        let mut bad_cookie = success.clone();
        bad_cookie[4] ^= 1;
        assert_eq!(response_tid(&bad_cookie), None);
        let mut bad_len = success.clone();
        bad_len[3] = 4;
        assert_eq!(response_tid(&bad_len), None);
    }

    #[test]
    fn report_prefers_the_best_target_and_prints_what_signaling_accepts() {
        let target = |url: &str, samples: Vec<Option<f64>>| TargetReport { url: url.into(), samples, error: None };
        let report = Report {
            regions: vec![
                RegionReport {
                    id: "eu-central".into(),
                    targets: vec![
                        target("stun:a:1", vec![None, None, None]),
                        target("stun:b:1", vec![Some(50.0), Some(20.0), Some(21.0)]),
                    ],
                },
                RegionReport { id: "us-east".into(), targets: vec![target("stun:c:1", vec![Some(9.0), None, None])] },
                RegionReport { id: "ap-southeast".into(), targets: vec![] },
            ],
        };
        assert_eq!(
            report.to_json(),
            json!({ "probes": { "eu-central": [50.0, 20.0, 21.0], "us-east": [9.0, null, null] } })
        );
        let table = report.table();
        assert!(table.contains("stun:b:1 (+1 more)"), "{table}");
        assert!(table.contains("best region: eu-central (20.0 ms)"), "{table}");
        assert!(table.lines().any(|l| l.starts_with("us-east") && l.contains("100%")), "{table}");
        assert!(table.lines().any(|l| l.starts_with("ap-southeast") && l.ends_with("no probe targets")), "{table}");
    }
}
