//! A client's RTT probes to one region, and what they say.
//!
//! The client sends [`RECOMMENDED_ATTEMPTS`] probes per candidate region in parallel (STUN Binding
//! to the region's relay; notes/geo-routing.md §8 step 2) with a timeout of
//! [`RECOMMENDED_TIMEOUT_MS`] each, and reports every result in order: a round-trip time in ms, or
//! `null` for a timeout. [`ProbeSamples::new`] rejects reports no client could honestly produce
//! (negative, NaN, over [`MAX_SAMPLE_MS`], empty, too many), since they come over the network.
//!
//! [`ProbeSamples::summarize`] drops the first sample when at least [`WARM_UP_MIN_SAMPLES`] were
//! sent, timeout or not: the first packet through a NAT is often delayed or dropped while the
//! binding is created (Valve `MinPingsBeforePingAccurate`, Photon v4 `IgnoreInitialAttempt`). Of the
//! rest it reports the median RTT, the number of valid samples, and the loss (timeouts / samples
//! counted). For an even count the median is the *lower* of the two middle samples: delay noise is
//! one-sided (queueing, Wi-Fi retries and bufferbloat only ever add), so with the usual 4 counted
//! samples two spikes move the lower median not at all where the midpoint would move by half a
//! spike. Unlike Photon's mean, neither is moved by a single outlier. Whether a summary is trusted (enough
//! valid samples) is the selection policy's call: [`crate::Policy::min_valid_probes`].

use serde::{Deserialize, Serialize};

/// Probes per region a client should send (Photon `RegionPinger.Attempts`).
pub const RECOMMENDED_ATTEMPTS: usize = 5;
/// Per-probe timeout a client should use, in ms (Photon `MaxMillisecondsPerPing`).
pub const RECOMMENDED_TIMEOUT_MS: u32 = 800;
/// The first sample is dropped as NAT warm-up when at least this many were sent.
pub const WARM_UP_MIN_SAMPLES: usize = 3;
/// A sample above this (Valve SDR's default connection timeout, 10 s) is not an RTT but a bug or a
/// lie, and the report is rejected.
pub const MAX_SAMPLE_MS: f64 = 10_000.0;
/// Most samples accepted for one region; bounds the work an untrusted report can cause.
pub const MAX_SAMPLES: usize = 32;

/// One region's probe results in the order they were sent; `None` is a timeout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Option<f64>>", into = "Vec<Option<f64>>")]
pub struct ProbeSamples(Vec<Option<f64>>);

/// A probe report that is malformed.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum ProbeError {
    #[error("no probe samples")]
    Empty,
    #[error("{count} probe samples, at most {MAX_SAMPLES} are accepted")]
    TooMany { count: usize },
    #[error("probe sample #{index} is {value} ms, not within 0..={MAX_SAMPLE_MS} ms")]
    InvalidSample { index: usize, value: f64 },
    #[error("probe summary is inconsistent: {0}")]
    InconsistentSummary(&'static str),
}

impl ProbeSamples {
    pub fn new(samples: Vec<Option<f64>>) -> Result<Self, ProbeError> {
        if samples.is_empty() {
            return Err(ProbeError::Empty);
        }
        if samples.len() > MAX_SAMPLES {
            return Err(ProbeError::TooMany { count: samples.len() });
        }
        for (index, sample) in samples.iter().enumerate() {
            if let Some(value) = *sample
                && !valid_rtt(value)
            {
                return Err(ProbeError::InvalidSample { index, value });
            }
        }
        Ok(Self(samples))
    }

    pub fn samples(&self) -> &[Option<f64>] {
        &self.0
    }

    pub fn summarize(&self) -> ProbeSummary {
        let counted = if self.0.len() >= WARM_UP_MIN_SAMPLES { &self.0[1..] } else { &self.0[..] };
        let mut valid: Vec<f64> = counted.iter().flatten().copied().collect();
        valid.sort_by(f64::total_cmp);
        // The lower median: index (n − 1) / 2 is the middle for odd n and the lower middle for even n.
        let rtt_ms = valid.get(valid.len().saturating_sub(1) / 2).copied();
        ProbeSummary { rtt_ms, valid: valid.len(), timeouts: counted.len() - valid.len() }
    }
}

impl TryFrom<Vec<Option<f64>>> for ProbeSamples {
    type Error = ProbeError;

    fn try_from(samples: Vec<Option<f64>>) -> Result<Self, Self::Error> {
        Self::new(samples)
    }
}

impl From<ProbeSamples> for Vec<Option<f64>> {
    fn from(samples: ProbeSamples) -> Self {
        samples.0
    }
}

fn valid_rtt(ms: f64) -> bool {
    (0.0..=MAX_SAMPLE_MS).contains(&ms)
}

/// What one region's probes say, after the warm-up sample is dropped.
///
/// Built by [`ProbeSamples::summarize`]; deserialization re-checks the invariants (`rtt_ms` present
/// exactly when `valid > 0`, within 0..=[`MAX_SAMPLE_MS`], at most [`MAX_SAMPLES`] samples).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSummary")]
pub struct ProbeSummary {
    rtt_ms: Option<f64>,
    valid: usize,
    timeouts: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSummary {
    rtt_ms: Option<f64>,
    valid: usize,
    timeouts: usize,
}

impl TryFrom<RawSummary> for ProbeSummary {
    type Error = ProbeError;

    fn try_from(raw: RawSummary) -> Result<Self, Self::Error> {
        if raw.valid.saturating_add(raw.timeouts) > MAX_SAMPLES {
            return Err(ProbeError::TooMany { count: raw.valid.saturating_add(raw.timeouts) });
        }
        match raw.rtt_ms {
            Some(_) if raw.valid == 0 => Err(ProbeError::InconsistentSummary("rtt_ms without valid samples")),
            None if raw.valid > 0 => Err(ProbeError::InconsistentSummary("valid samples without rtt_ms")),
            Some(value) if !valid_rtt(value) => Err(ProbeError::InvalidSample { index: 0, value }),
            _ => Ok(Self { rtt_ms: raw.rtt_ms, valid: raw.valid, timeouts: raw.timeouts }),
        }
    }
}

impl ProbeSummary {
    /// Lower median of the valid samples, if any.
    pub fn rtt_ms(&self) -> Option<f64> {
        self.rtt_ms
    }

    /// Valid (answered) samples counted.
    pub fn valid(&self) -> usize {
        self.valid
    }

    /// Timeouts counted.
    pub fn timeouts(&self) -> usize {
        self.timeouts
    }

    /// Fraction of counted samples that timed out, 0..=1 (0 when nothing was counted).
    pub fn loss(&self) -> f64 {
        let counted = self.valid + self.timeouts;
        if counted == 0 { 0.0 } else { self.timeouts as f64 / counted as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(samples: &[Option<f64>]) -> ProbeSummary {
        ProbeSamples::new(samples.to_vec()).expect("test samples are valid").summarize()
    }

    #[test]
    fn first_sample_is_dropped_from_three_on() {
        // The 400 ms NAT warm-up sample must not count.
        let s = summary(&[Some(400.0), Some(30.0), Some(32.0), Some(31.0), Some(90.0)]);
        assert_eq!(s.rtt_ms(), Some(31.0));
        assert_eq!((s.valid(), s.timeouts(), s.loss()), (4, 0, 0.0));
        // A first-sample timeout is not loss either.
        let s = summary(&[None, Some(30.0), Some(31.0), Some(32.0)]);
        assert_eq!((s.rtt_ms(), s.valid(), s.timeouts()), (Some(31.0), 3, 0));
        // Two samples: both count.
        let s = summary(&[Some(50.0), Some(40.0)]);
        assert_eq!((s.rtt_ms(), s.valid()), (Some(40.0), 2));
        let s = summary(&[Some(50.0)]);
        assert_eq!((s.rtt_ms(), s.valid()), (Some(50.0), 1));
    }

    #[test]
    fn even_counts_take_the_lower_median() {
        // Two spikes among four counted samples do not move the estimate.
        let s = summary(&[Some(300.0), Some(40.0), Some(180.0), Some(41.0), Some(150.0)]);
        assert_eq!(s.rtt_ms(), Some(41.0));
        let s = summary(&[Some(300.0), Some(44.0), Some(40.0), Some(42.0), Some(41.0), Some(43.0), Some(45.0)]);
        assert_eq!(s.rtt_ms(), Some(42.0));
    }

    #[test]
    fn timeouts_are_loss() {
        let s = summary(&[Some(30.0), None, Some(30.0), None, Some(34.0)]);
        assert_eq!((s.rtt_ms(), s.valid(), s.timeouts()), (Some(30.0), 2, 2));
        assert_eq!(s.loss(), 0.5);
        let s = summary(&[None, None, None]);
        assert_eq!((s.rtt_ms(), s.valid(), s.loss()), (None, 0, 1.0));
    }

    #[test]
    fn malformed_reports_are_rejected() {
        let cases: &[(&str, Vec<Option<f64>>, ProbeError)] = &[
            ("empty", vec![], ProbeError::Empty),
            ("negative", vec![Some(20.0), Some(-1.0)], ProbeError::InvalidSample { index: 1, value: -1.0 }),
            ("absurd", vec![Some(10_000.5)], ProbeError::InvalidSample { index: 0, value: 10_000.5 }),
            ("infinite", vec![None, Some(f64::INFINITY)], ProbeError::InvalidSample { index: 1, value: f64::INFINITY }),
            ("too many", vec![Some(20.0); MAX_SAMPLES + 1], ProbeError::TooMany { count: MAX_SAMPLES + 1 }),
        ];
        for (name, samples, expected) in cases {
            assert_eq!(ProbeSamples::new(samples.clone()).err(), Some(*expected), "{name}");
        }
        // NaN never compares equal, so match the variant.
        assert!(matches!(
            ProbeSamples::new(vec![Some(f64::NAN)]),
            Err(ProbeError::InvalidSample { index: 0, value }) if value.is_nan()
        ));
        // The bounds themselves are fine.
        assert!(ProbeSamples::new(vec![Some(0.0), Some(MAX_SAMPLE_MS), None]).is_ok());
    }

    #[test]
    fn serde_validates_reports_and_summaries() {
        let samples: ProbeSamples = serde_json::from_str("[12.5, null, 13]").expect("valid report");
        assert_eq!(samples.samples(), &[Some(12.5), None, Some(13.0)]);
        assert!(serde_json::from_str::<ProbeSamples>("[12.5, -3]").is_err());
        assert!(serde_json::from_str::<ProbeSamples>("[]").is_err());

        let summary = samples.summarize();
        let json = serde_json::to_string(&summary).expect("serializable");
        assert_eq!(json, r#"{"rtt_ms":13.0,"valid":1,"timeouts":1}"#);
        assert_eq!(serde_json::from_str::<ProbeSummary>(&json).expect("round trip"), summary);
        for bad in [
            r#"{"rtt_ms":13.0,"valid":0,"timeouts":1}"#,
            r#"{"rtt_ms":null,"valid":2,"timeouts":1}"#,
            r#"{"rtt_ms":-4.0,"valid":2,"timeouts":1}"#,
            r#"{"rtt_ms":4.0,"valid":200,"timeouts":1}"#,
        ] {
            assert!(serde_json::from_str::<ProbeSummary>(bad).is_err(), "{bad}");
        }
    }
}
