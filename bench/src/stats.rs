//! The numbers the bench reports, computed from what it recorded: loss from packets sent and
//! received, latency percentiles from every round-trip sample (HdrHistogram, 3 significant
//! digits, so a percentile is within 0.1% of the exact sample value).

use hdrhistogram::Histogram;
use serde::Serialize;

/// Fraction of `sent` that did not come back.
pub fn loss(sent: u64, received: u64) -> f64 {
    if sent == 0 { 0.0 } else { sent.saturating_sub(received) as f64 / sent as f64 }
}

/// Round-trip samples in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        // 1 ns to 60 s, 3 significant digits.
        Self { hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds") }
    }

    pub fn record(&mut self, nanos: u64) {
        // Values above the bound are clamped rather than lost; a minute-long RTT is loss anyway.
        self.hist.saturating_record(nanos.max(1));
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The `q`-quantile (0..=1) in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            samples: self.count(),
            p50_us: self.quantile_us(0.50),
            p99_us: self.quantile_us(0.99),
            p999_us: self.quantile_us(0.999),
            max_us: self.hist.max() as f64 / 1000.0,
            mean_us: self.hist.mean() / 1000.0,
        }
    }
}

/// The median, over several rounds, of each figure of their summaries: one round spoiled by
/// someone else's load moves it less than it would move the percentiles of all samples pooled.
pub fn median_of_rounds(rounds: &[LatencySummary]) -> LatencySummary {
    let median = |f: fn(&LatencySummary) -> f64| median(rounds.iter().map(f).collect()).unwrap_or(f64::NAN);
    LatencySummary {
        samples: rounds.iter().map(|r| r.samples).sum(),
        p50_us: median(|r| r.p50_us),
        p99_us: median(|r| r.p99_us),
        p999_us: median(|r| r.p999_us),
        max_us: median(|r| r.max_us),
        mean_us: median(|r| r.mean_us),
    }
}

/// One latency round: its percentiles, what the server spent on it, and how much the host
/// interfered.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct LatencyRound {
    #[serde(flatten)]
    pub latency: LatencySummary,
    /// Server CPU time during the measured part, as a percentage of one core (None for an
    /// external server without a pid).
    #[serde(default)]
    pub server_cpu_percent: Option<f64>,
    /// Time the hypervisor kept this machine's CPUs from running though they had work
    /// (`steal` in /proc/stat, summed over CPUs), during the measured part, in milliseconds.
    #[serde(default)]
    pub host_steal_ms: Option<f64>,
}

/// The median of an optional figure over rounds (None if no round has it).
pub fn median_of(rounds: &[LatencyRound], f: fn(&LatencyRound) -> Option<f64>) -> Option<f64> {
    median(rounds.iter().filter_map(f).collect())
}

/// The median of some values (the mean of the middle two for an even count); None if empty.
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_the_missing_fraction() {
        assert_eq!(loss(1000, 1000), 0.0);
        assert_eq!(loss(1000, 990), 0.01);
        assert_eq!(loss(0, 0), 0.0);
        assert_eq!(loss(10, 12), 0.0, "duplicates do not make negative loss");
    }

    #[test]
    fn median_of_rounds_ignores_one_bad_round() {
        let round = |p99: f64| LatencySummary {
            samples: 10,
            p50_us: 100.0,
            p99_us: p99,
            p999_us: p99 * 2.0,
            max_us: p99 * 3.0,
            mean_us: 110.0,
        };
        let m = median_of_rounds(&[round(300.0), round(20_000.0), round(310.0)]);
        assert_eq!((m.samples, m.p99_us, m.p999_us), (30, 310.0, 620.0));
        let m = median_of_rounds(&[round(300.0), round(400.0)]);
        assert_eq!(m.p99_us, 350.0);
        assert!(median_of_rounds(&[]).p50_us.is_nan());
    }

    #[test]
    fn percentiles_come_from_the_samples() {
        // 1..=10_000 µs, each once: the q-quantile is q * 10 ms.
        let mut l = Latency::new();
        for us in 1..=10_000u64 {
            l.record(us * 1000);
        }
        let s = l.summary();
        assert_eq!(s.samples, 10_000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1.0;
        assert!(close(s.p50_us, 5_000.0), "{s:?}");
        assert!(close(s.p99_us, 9_900.0), "{s:?}");
        assert!(close(s.p999_us, 9_990.0), "{s:?}");
        assert!(close(s.max_us, 10_000.0), "{s:?}");
        // A skewed distribution: 990 fast samples and 10 slow ones put p99 on the fast side and
        // p99.9 on the slow side.
        let mut l = Latency::new();
        for _ in 0..990 {
            l.record(100_000);
        }
        for _ in 0..10 {
            l.record(50_000_000);
        }
        let s = l.summary();
        assert!(close(s.p50_us, 100.0) && close(s.p99_us, 100.0), "{s:?}");
        assert!(close(s.p999_us, 50_000.0), "{s:?}");
    }
}
