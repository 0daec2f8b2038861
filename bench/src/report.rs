//! The `compare` report: one markdown table with absolute figures and the ratios ours/coturn and
//! ours/raw, the same data as JSON, and an SVG chart of delivered against offered load.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::scenarios::{Allocations, Cpu, Plan, Throughput};
use crate::stats::{LatencyRound, LatencySummary};
use crate::targets::{CoturnInfo, Kind};

/// Results for one target. A scenario that failed leaves its field empty and says why in
/// `errors`; its numbers are never reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    pub target: String,
    pub available: bool,
    pub note: Option<String>,
    pub throughput: Vec<Throughput>,
    pub cpu: Option<Cpu>,
    /// The median over rounds of each latency figure (see `stats::median_of_rounds`).
    pub latency: Option<LatencySummary>,
    /// Each round's figures.
    #[serde(default)]
    pub latency_rounds: Vec<LatencyRound>,
    /// The median over latency rounds of the server's CPU use, percent of one core.
    #[serde(default)]
    pub latency_cpu_percent: Option<f64>,
    /// The median over all this target's latency rounds, calm or not, of the host's steal time,
    /// ms per round.
    #[serde(default)]
    pub latency_host_steal_ms: Option<f64>,
    /// How many of `latency_rounds` were calm (host steal within the plan's limit). The latency
    /// figures are the medians over the calm rounds when there are at least three.
    #[serde(default)]
    pub latency_calm_rounds: Option<usize>,
    pub allocations: Option<Allocations>,
    pub errors: Vec<String>,
}

impl TargetReport {
    pub fn new(kind: Kind) -> Self {
        Self {
            target: kind.name().into(),
            available: true,
            note: None,
            throughput: Vec::new(),
            cpu: None,
            latency: None,
            latency_rounds: Vec::new(),
            latency_cpu_percent: None,
            latency_host_steal_ms: None,
            latency_calm_rounds: None,
            allocations: None,
            errors: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                })
            })
            .unwrap_or_default();
        let kernel =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default();
        // Counted from /proc/cpuinfo: the bench may already be pinned to some of them.
        let cpus = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
            .unwrap_or(1);
        Self { cpus, cpu_model, kernel }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub date: String,
    pub command: String,
    pub machine: Machine,
    pub coturn: CoturnInfoOwned,
    pub workers: usize,
    pub server_cpus: Option<Vec<usize>>,
    pub plan: Plan,
    pub targets: Vec<TargetReport>,
}

/// `CoturnInfo` as stored in the JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoturnInfoOwned {
    pub installed: bool,
    pub version: String,
    pub recvmmsg: bool,
    pub sendmmsg: bool,
    pub gso: bool,
}

impl From<&CoturnInfo> for CoturnInfoOwned {
    fn from(c: &CoturnInfo) -> Self {
        Self {
            installed: c.installed,
            version: c.version.clone(),
            recvmmsg: c.recvmmsg,
            sendmmsg: c.sendmmsg,
            gso: c.gso,
        }
    }
}

/// Whether a bigger number is better for a figure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

struct Row {
    figure: String,
    better: Better,
    values: Vec<Option<f64>>,
    /// Counts towards "ahead of coturn" (the issue's five figures).
    key: bool,
    /// Ratios make sense (not for differences, which can be negative).
    ratios: bool,
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v < 0.0 {
        format!("-{}", fmt_num(-v))
    } else if v >= 100_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.0}", v)
    } else if v >= 10.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.3}", v)
    }
}

impl Report {
    fn target(&self, name: &str) -> Option<&TargetReport> {
        self.targets.iter().find(|t| t.target == name)
    }

    fn rows(&self) -> Vec<Row> {
        let names: Vec<&str> = self.targets.iter().map(|t| t.target.as_str()).collect();
        let per = |f: &dyn Fn(&TargetReport) -> Option<f64>| -> Vec<Option<f64>> {
            names.iter().map(|n| self.target(n).and_then(f)).collect()
        };
        let mut rows = Vec::new();
        for (payload, flows) in [(100, 1), (100, 64), (1200, 1), (1200, 64)] {
            let values = per(&|t: &TargetReport| {
                t.throughput.iter().find(|x| x.payload == payload && x.flows == flows).map(|x| x.max_pps)
            });
            rows.push(Row {
                figure: format!(
                    "max round trips/s ≤0.1% loss, {payload} B, {flows} alloc{}",
                    if flows > 1 { "s" } else { "" }
                ),
                better: Better::Higher,
                values,
                key: flows == 1 || flows == 64,
                ratios: true,
            });
        }
        rows.push(Row {
            figure: format!(
                "server CPU s per million packets ({} rt/s, 64 allocs, {} rounds)",
                fmt_num(self.plan.cpu_pps),
                self.plan.rounds
            ),
            better: Better::Lower,
            values: per(&|t| t.cpu.as_ref().map(|c| c.cpu_secs_per_mpkt)),
            key: true,
            ratios: true,
        });
        for (label, q, key) in [("p50", 0, false), ("p99", 1, true), ("p99.9", 2, false)] {
            rows.push(Row {
                figure: format!(
                    "RTT {label} µs ({} rt/s, 1 alloc, median of calm rounds)",
                    fmt_num(self.plan.latency_pps)
                ),
                better: Better::Lower,
                values: per(&|t| {
                    t.latency.map(|l| match q {
                        0 => l.p50_us,
                        1 => l.p99_us,
                        _ => l.p999_us,
                    })
                }),
                key,
                ratios: true,
            });
        }
        rows.push(Row {
            figure: "server CPU during the latency rounds, % of one core".into(),
            better: Better::Lower,
            values: per(&|t| t.latency_cpu_percent),
            key: false,
            ratios: true,
        });
        // The latency a relay adds over the bare forwarder (RTT minus raw's RTT).
        let raw = self.target("raw").and_then(|t| t.latency);
        for (label, q) in [("p50", 0), ("p99", 1), ("p99.9", 2)] {
            let pick = |l: &LatencySummary| match q {
                0 => l.p50_us,
                1 => l.p99_us,
                _ => l.p999_us,
            };
            rows.push(Row {
                figure: format!("RTT {label} added over raw, µs"),
                better: Better::Lower,
                values: names
                    .iter()
                    .map(|n| match (self.target(n).and_then(|t| t.latency), raw) {
                        (Some(l), Some(r)) if *n != "raw" => Some(pick(&l) - pick(&r)),
                        _ => None,
                    })
                    .collect(),
                key: false,
                ratios: false,
            });
        }
        rows.push(Row {
            figure: "allocations/s (full 401 round trip)".into(),
            better: Better::Higher,
            values: per(&|t| t.allocations.as_ref().map(|a| a.per_sec)),
            key: true,
            ratios: true,
        });
        rows.push(Row {
            figure: format!("idle allocations held (of {})", self.plan.hold),
            better: Better::Higher,
            values: per(&|t| t.allocations.as_ref().map(|a| a.held as f64)),
            key: false,
            ratios: true,
        });
        rows.push(Row {
            figure: "server RSS per allocation, bytes".into(),
            better: Better::Lower,
            values: per(&|t| t.allocations.as_ref().map(|a| a.rss_per_allocation)),
            key: true,
            ratios: true,
        });
        rows
    }

    /// When, where and how the run was made.
    pub fn header(&self) -> String {
        let pinning = match &self.server_cpus {
            Some(cpus) => format!("servers pinned to CPU {cpus:?}, the bench to the others"),
            None => "no CPU pinning".into(),
        };
        format!(
            "{} on {} ({} CPUs, kernel {}), {} worker(s) per server, {pinning}; `{}`",
            self.date, self.machine.cpu_model, self.machine.cpus, self.machine.kernel, self.workers, self.command
        )
    }

    /// The markdown table, with the ratio columns and whether ours (and each variant of ours)
    /// is ahead of coturn.
    pub fn markdown(&self) -> String {
        let names: Vec<&str> = self.targets.iter().map(|t| t.target.as_str()).collect();
        let idx = |n: &str| names.iter().position(|x| *x == n);
        let (ours, coturn, raw, baseline) = (idx("ours"), idx("coturn"), idx("raw"), idx("baseline"));
        // `ours` and its variants (`ours-busy-poll`), each compared with coturn.
        let variants: Vec<usize> = (0..names.len()).filter(|&i| names[i].starts_with("ours")).collect();
        let mut out = String::new();
        let header: Vec<String> = names
            .iter()
            .map(|n| match *n {
                "coturn" => format!("coturn {}", self.coturn.version),
                other => other.to_string(),
            })
            .collect();
        let vs_header: Vec<String> = variants.iter().map(|&v| format!("{}/coturn", names[v])).collect();
        let ahead_header: Vec<String> = variants.iter().map(|&v| format!("{} ahead of coturn", names[v])).collect();
        // With a baseline build, how ours compares with it: the change under measurement.
        let vs_baseline_header = if baseline.is_some() { "ours/baseline | " } else { "" };
        let _ = writeln!(
            out,
            "| figure | {} | {} | ours/raw | {vs_baseline_header}{} |",
            header.join(" | "),
            vs_header.join(" | "),
            ahead_header.join(" | ")
        );
        let extra = usize::from(baseline.is_some());
        let _ = writeln!(out, "|---|{}---|", "---|".repeat(names.len() + 2 * variants.len() + extra));
        for row in self.rows() {
            let cells: Vec<String> = row.values.iter().map(|v| v.map_or("—".into(), fmt_num)).collect();
            let ratio = |a: Option<usize>, b: Option<usize>| -> Option<f64> {
                let (x, y) = (row.values.get(a?)?.as_ref()?, row.values.get(b?)?.as_ref()?);
                (*y != 0.0 && x.is_finite() && y.is_finite()).then(|| x / y)
            };
            let vs_coturn: Vec<String> = variants
                .iter()
                .map(|&v| ratio(Some(v), coturn).filter(|_| row.ratios).map_or("—".into(), |r| format!("{r:.2}")))
                .collect();
            let ahead: Vec<&str> = variants
                .iter()
                .map(|&v| {
                    let ahead = match (row.values[v], coturn.and_then(|i| row.values[i])) {
                        (Some(a), Some(b)) if a.is_finite() && b.is_finite() => Some(match row.better {
                            Better::Higher => a > b,
                            Better::Lower => a < b,
                        }),
                        _ => None,
                    };
                    match (ahead, row.key) {
                        (Some(true), _) => "yes",
                        (Some(false), true) => "**no**",
                        (Some(false), false) => "no",
                        (None, _) => "—",
                    }
                })
                .collect();
            let better = match row.better {
                Better::Higher => "higher is better",
                Better::Lower => "lower is better",
            };
            let vs_baseline = match baseline {
                Some(b) => format!(
                    "{} | ",
                    ratio(ours, Some(b)).filter(|_| row.ratios).map_or("—".into(), |r| format!("{r:.2}"))
                ),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} ({better}) | {} | {} | {} | {vs_baseline}{} |",
                row.figure,
                cells.join(" | "),
                vs_coturn.join(" | "),
                ratio(ours, raw).filter(|_| row.ratios).map_or("—".into(), |r| format!("{r:.2}")),
                ahead.join(" | ")
            );
        }
        // How much the host interfered with the latency rounds (steal is summed over CPUs), and
        // how many rounds were calm enough to count.
        let steal: Vec<String> = self
            .targets
            .iter()
            .filter_map(|t| {
                let ms = t.latency_host_steal_ms?;
                let calm = t.latency_calm_rounds.map_or(String::new(), |c| {
                    format!(
                        ", {c} of {} calm{}",
                        t.latency_rounds.len(),
                        if c < 3 { " (too few: all used)" } else { "" }
                    )
                });
                Some(format!("{} {} ms{calm}", t.target, fmt_num(ms)))
            })
            .collect();
        if !steal.is_empty() {
            let limit = self.plan.calm_steal_limit_ms(self.machine.cpus);
            let _ = writeln!(
                out,
                "\nLatency rounds ({} s each) count when calm: host steal time (the hypervisor running something \
                 else while this machine had work, summed over its {} CPUs) at most {} ms. Median steal per \
                 round and calm rounds: {}.",
                self.plan.latency_secs,
                self.machine.cpus,
                fmt_num(limit),
                steal.join("; ")
            );
        }
        for t in &self.targets {
            if let Some(note) = &t.note {
                let _ = writeln!(out, "\n`{}`: {note}", t.target);
            }
            for e in &t.errors {
                let _ = writeln!(out, "\n`{}` not reported for one scenario: {e}", t.target);
            }
        }
        out
    }

    /// Delivered against offered load, one panel per throughput configuration.
    pub fn svg(&self) -> String {
        const COLORS: [&str; 6] = ["#d62728", "#ff7f0e", "#1f77b4", "#9467bd", "#2ca02c", "#7f7f7f"];
        let configs = [(100, 1), (100, 64), (1200, 1), (1200, 64)];
        let (pw, ph, margin) = (420.0, 300.0, 50.0);
        let width = 2.0 * pw + 40.0;
        let height = 2.0 * ph + 100.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="20" y="22" font-size="14">Delivered vs offered round trips/s (≤0.1% loss marked ●), {}</text>"#,
            self.date
        );
        for (i, (payload, flows)) in configs.iter().enumerate() {
            let ox = 20.0 + (i % 2) as f64 * (pw + 20.0);
            let oy = 40.0 + (i / 2) as f64 * (ph + 20.0);
            let series: Vec<(usize, &Throughput)> = self
                .targets
                .iter()
                .enumerate()
                .filter_map(|(k, t)| {
                    t.throughput.iter().find(|x| x.payload == *payload && x.flows == *flows).map(|x| (k, x))
                })
                .collect();
            let max = series
                .iter()
                .flat_map(|(_, t)| t.curve.iter().map(|p| p.offered_pps.max(p.delivered_pps)))
                .fold(1.0f64, f64::max)
                * 1.05;
            let (x0, y0, w, h) = (ox + margin, oy + ph - 30.0, pw - margin - 10.0, ph - 60.0);
            let _ = writeln!(s, r##"<rect x="{ox}" y="{oy}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>"##);
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" font-size="12">{payload} B, {flows} allocation{}</text>"#,
                ox + margin,
                oy + 18.0,
                if *flows > 1 { "s" } else { "" }
            );
            let _ = writeln!(s, r#"<line x1="{x0}" y1="{y0}" x2="{}" y2="{y0}" stroke="black"/>"#, x0 + w);
            let _ = writeln!(s, r#"<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{}" stroke="black"/>"#, y0 - h);
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y0}" x2="{}" y2="{}" stroke="#bbb" stroke-dasharray="4 3"/>"##,
                x0 + w,
                y0 - h
            );
            for tick in 0..=4 {
                let v = max * tick as f64 / 4.0;
                let label = format!("{:.0}k", v / 1000.0);
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="middle">{label}</text>"#,
                    x0 + w * tick as f64 / 4.0,
                    y0 + 14.0
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
                    x0 - 4.0,
                    y0 - h * tick as f64 / 4.0 + 4.0
                );
            }
            let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">offered</text>"#, x0 + w / 2.0, y0 + 27.0);
            for (k, t) in &series {
                let color = COLORS[k % COLORS.len()];
                let pts: Vec<String> = t
                    .curve
                    .iter()
                    .map(|p| format!("{:.1},{:.1}", x0 + w * p.offered_pps / max, y0 - h * p.delivered_pps / max))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                    pts.join(" ")
                );
                for p in &t.curve {
                    let (cx, cy) = (x0 + w * p.offered_pps / max, y0 - h * p.delivered_pps / max);
                    let fill = if p.loss <= crate::scenarios::MAX_LOSS { color } else { "white" };
                    let _ = writeln!(s, r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3" fill="{fill}" stroke="{color}"/>"#);
                }
            }
        }
        for (k, t) in self.targets.iter().enumerate() {
            let (x, y) = (30.0 + k as f64 * 150.0, height - 15.0);
            let color = COLORS[k % COLORS.len()];
            let _ = writeln!(s, r#"<rect x="{x}" y="{}" width="14" height="4" fill="{color}"/>"#, y - 6.0);
            let _ = writeln!(s, r#"<text x="{}" y="{y}">{}</text>"#, x + 20.0, t.target);
        }
        s.push_str("</svg>\n");
        s
    }
}
