//! The region-selection rule: score every candidate region for the end-to-end path, exclude what
//! cannot take the session, pick among near-equal regions by load, keep a previous region unless a
//! new one is clearly better. The rule and its constants are stated in the crate docs; [`Policy`]
//! carries the constants.
//!
//! [`select`] is a pure function of its inputs. It rejects inconsistent or malformed input with a
//! [`SelectError`] and otherwise always chooses a region, falling back as far as the least-loaded
//! live one; it fails only when no region is serving at all.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::distance::{Coordinates, estimate_rtt_ms, haversine_km};
use crate::geoip::GeoLocation;
use crate::probe::{MAX_SAMPLE_MS, ProbeSummary};
use crate::region::{Load, Region, RegionId, RegionState, RegionStatus};

/// Every constant of the rule. [`Policy::default`] is the documented rule (see the crate docs for
/// where each value comes from); other values are for experiments and per-deployment tuning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// A region's probes are trusted with at least this many valid samples after the warm-up
    /// sample is dropped; otherwise its client estimate falls back to GeoIP. Default 3.
    pub min_valid_probes: usize,
    /// Timeouts per region not charged as loss. Default 1: with 4 counted samples and a few percent
    /// of background loss, one timeout says little about the path (Photon v5 drops the worst sample).
    pub forgiven_timeouts: usize,
    /// Milliseconds charged per unit of loss beyond the forgiven timeouts. Default 300.
    pub loss_penalty_ms: f64,
    /// Load from which a penalty applies. Default 0.6.
    pub load_soft_limit: f64,
    /// Load at which a region is excluded (unless every serving region is this loaded). Default 0.85.
    pub load_hard_limit: f64,
    /// The penalty just below the hard limit; it ramps linearly from 0 at the soft limit. Default 50.
    pub load_penalty_max_ms: f64,
    /// Among similar regions, loads within this of the least loaded count as equal and the lowest
    /// score wins, so that load noise does not cost latency. Default 0.05.
    pub load_tie_tolerance: f64,
    /// Regions with `S ≤ similar_ratio·S_best` (and within the margin) are similar. Default 1.2.
    pub similar_ratio: f64,
    /// Regions with `S ≤ S_best + similar_margin_ms` (and within the ratio) are similar. Default 15.
    pub similar_margin_ms: f64,
    /// The previous region is kept unless `sticky_factor·S_new + sticky_margin_ms < S_prev`.
    /// Default 1.1.
    pub sticky_factor: f64,
    /// See [`Policy::sticky_factor`]. Default 5.
    pub sticky_margin_ms: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_valid_probes: 3,
            forgiven_timeouts: 1,
            loss_penalty_ms: 300.0,
            load_soft_limit: 0.6,
            load_hard_limit: 0.85,
            load_penalty_max_ms: 50.0,
            load_tie_tolerance: 0.05,
            similar_ratio: 1.2,
            similar_margin_ms: 15.0,
            sticky_factor: 1.1,
            sticky_margin_ms: 5.0,
        }
    }
}

/// A [`Policy`] value that would make the rule meaningless.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("policy {field}: {requirement}")]
pub struct PolicyError {
    pub field: &'static str,
    pub requirement: &'static str,
}

impl Policy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        let check = |ok: bool, field, requirement| if ok { Ok(()) } else { Err(PolicyError { field, requirement }) };
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        check(self.min_valid_probes >= 1, "min_valid_probes", "must be at least 1")?;
        check(non_negative(self.loss_penalty_ms), "loss_penalty_ms", "must be finite and >= 0")?;
        check(
            non_negative(self.load_soft_limit) && self.load_soft_limit < self.load_hard_limit,
            "load_soft_limit",
            "must be >= 0 and below load_hard_limit",
        )?;
        check(self.load_hard_limit <= 1.0, "load_hard_limit", "must be at most 1")?;
        check(non_negative(self.load_penalty_max_ms), "load_penalty_max_ms", "must be finite and >= 0")?;
        check((0.0..=1.0).contains(&self.load_tie_tolerance), "load_tie_tolerance", "must be within 0..=1")?;
        check(self.similar_ratio.is_finite() && self.similar_ratio >= 1.0, "similar_ratio", "must be finite and >= 1")?;
        check(non_negative(self.similar_margin_ms), "similar_margin_ms", "must be finite and >= 0")?;
        check(self.sticky_factor.is_finite() && self.sticky_factor >= 1.0, "sticky_factor", "must be finite and >= 1")?;
        check(non_negative(self.sticky_margin_ms), "sticky_margin_ms", "must be finite and >= 0")
    }

    /// True if a region at this load is excluded (when not every region is).
    pub fn is_overloaded(&self, load: Load) -> bool {
        load.get() >= self.load_hard_limit
    }

    /// 0 below the soft limit, rising linearly to [`Policy::load_penalty_max_ms`] at the hard limit,
    /// and that maximum above it (where the region is excluded anyway unless all are).
    pub fn load_penalty_ms(&self, load: Load) -> f64 {
        let load = load.get();
        if load < self.load_soft_limit {
            0.0
        } else if load >= self.load_hard_limit {
            self.load_penalty_max_ms
        } else {
            self.load_penalty_max_ms * (load - self.load_soft_limit) / (self.load_hard_limit - self.load_soft_limit)
        }
    }
}

/// A region that could carry the session, with its latest status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub region: Region,
    /// Must name the same region as `region.id`.
    pub status: RegionStatus,
}

/// The region a previous session (or this session before a reconnect) used, and its score then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreviousRegion {
    pub region: RegionId,
    pub score_ms: f64,
}

/// Everything [`select`] looks at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectionInput {
    pub candidates: Vec<Candidate>,
    /// The client's probe summaries by region. Regions missing here are estimated from GeoIP;
    /// entries for regions that are not candidates are ignored.
    #[serde(default)]
    pub client_probes: BTreeMap<RegionId, ProbeSummary>,
    #[serde(default)]
    pub client_location: Option<GeoLocation>,
    /// RTT from the game machine to each region, in ms, as the machine (or the relay) measured it.
    #[serde(default)]
    pub machine_rtts: BTreeMap<RegionId, f64>,
    #[serde(default)]
    pub machine_location: Option<Coordinates>,
    #[serde(default)]
    pub previous: Option<PreviousRegion>,
    /// The configured last resort when nothing is known about client or machine.
    pub default_region: RegionId,
}

/// What decided the chosen region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The lowest-scoring region, whose client estimate came from the client's probes.
    Probes,
    /// The lowest-scoring region, whose client estimate came from GeoIP.
    #[serde(rename = "geoip")]
    GeoIp,
    /// No client estimate for any eligible region: the region nearest the game machine.
    MachineNearest,
    /// Nothing known about client or machine: the configured default region.
    Default,
    /// The previous region, kept because the new best was not clearly better.
    Sticky,
    /// Every serving region was overloaded, or nothing was known and the default region was not
    /// available: the least-loaded live region.
    LeastLoaded,
}

impl Source {
    /// Every source (signaling shows each in its metrics from the start).
    pub const ALL: [Source; 6] =
        [Self::Probes, Self::GeoIp, Self::MachineNearest, Self::Default, Self::Sticky, Self::LeastLoaded];

    /// Its name, as serialized (`probes`, `geoip`, ...): the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Probes => "probes",
            Self::GeoIp => "geoip",
            Self::MachineNearest => "machine_nearest",
            Self::Default => "default",
            Self::Sticky => "sticky",
            Self::LeastLoaded => "least_loaded",
        }
    }
}

/// Where a region's client estimate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EstimateSource {
    Probes,
    #[serde(rename = "geoip")]
    GeoIp,
}

/// Where a region's machine leg came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineLegSource {
    /// The machine's measured RTT to the region.
    Measured,
    /// The distance heuristic from the machine's location.
    DistanceEstimate,
    /// Not measured, no machine location, but other regions were measured: the worst of those, so
    /// that a region cannot win by not having been measured.
    WorstMeasured,
    /// Nothing known about the machine: 0 for every region.
    Unknown,
}

/// Why a region could not take the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExcludedReason {
    Draining,
    Dead,
    /// Load at or above the hard limit while some other serving region was below it.
    Overloaded,
    /// Every relay of the region is at its allocation capacity.
    Full,
}

/// One candidate's score breakdown, for the session record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionScore {
    pub region: RegionId,
    /// Player ↔ region RTT estimate; `None` with neither trusted probes nor a GeoIP location.
    pub client_ms: Option<f64>,
    pub client_source: Option<EstimateSource>,
    /// Region ↔ machine RTT estimate.
    pub machine_ms: f64,
    pub machine_source: MachineLegSource,
    pub load: Load,
    pub load_penalty_ms: f64,
    pub loss_penalty_ms: f64,
    /// `S = client + machine + load penalty + loss penalty`; `None` without a client estimate.
    pub total_ms: Option<f64>,
    pub eligible: bool,
    pub excluded_reason: Option<ExcludedReason>,
}

/// The outcome of [`select`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub region: RegionId,
    pub source: Source,
    /// The chosen region's score, to pass back as [`PreviousRegion::score_ms`] next time; `None`
    /// if it was chosen by a fallback without a client estimate.
    pub score_ms: Option<f64>,
    /// Every candidate, in input order.
    pub scores: Vec<RegionScore>,
    /// The other eligible regions, best first, for client failover.
    pub alternates: Vec<RegionId>,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SelectError {
    #[error("no candidate regions")]
    NoCandidates,
    #[error("region {0} is listed twice")]
    DuplicateRegion(RegionId),
    #[error("candidate {region} carries the status of {status}")]
    StatusMismatch { region: RegionId, status: RegionId },
    #[error("machine RTT to {region} is {value} ms, not within 0..={MAX_SAMPLE_MS} ms")]
    InvalidMachineRtt { region: RegionId, value: f64 },
    #[error("previous score {0} ms is not finite and >= 0")]
    InvalidPreviousScore(f64),
    #[error(transparent)]
    InvalidPolicy(#[from] PolicyError),
    #[error("no candidate region is serving")]
    NoLiveRegion,
}

/// Chooses the region for a session. See the crate docs for the rule.
pub fn select(input: &SelectionInput, policy: &Policy) -> Result<Selection, SelectError> {
    policy.validate()?;
    validate(input)?;

    let mut scores = score_candidates(input, policy);
    let serving: Vec<usize> =
        (0..scores.len()).filter(|&i| input.candidates[i].status.state == RegionState::Serving).collect();
    if serving.is_empty() {
        return Err(SelectError::NoLiveRegion);
    }
    let all_overloaded = serving.iter().all(|&i| policy.is_overloaded(scores[i].load));
    for (score, candidate) in scores.iter_mut().zip(&input.candidates) {
        score.excluded_reason = match candidate.status.state {
            RegionState::Draining => Some(ExcludedReason::Draining),
            RegionState::Dead => Some(ExcludedReason::Dead),
            RegionState::Full => Some(ExcludedReason::Full),
            RegionState::Serving if policy.is_overloaded(score.load) && !all_overloaded => {
                Some(ExcludedReason::Overloaded)
            }
            RegionState::Serving => None,
        };
        score.eligible = score.excluded_reason.is_none();
    }
    // Not empty: either every serving region is eligible, or the ones below the hard limit are.
    let eligible: Vec<usize> = (0..scores.len()).filter(|&i| scores[i].eligible).collect();

    let (mut chosen, mut source) = if all_overloaded {
        (least_loaded(&scores, &eligible).ok_or(SelectError::NoLiveRegion)?, Source::LeastLoaded)
    } else if let Some(i) = best_scored(&scores, &eligible, policy) {
        let source = match scores[i].client_source {
            Some(EstimateSource::Probes) => Source::Probes,
            // Only scored regions reach here, and a score implies a client estimate.
            Some(EstimateSource::GeoIp) | None => Source::GeoIp,
        };
        (i, source)
    } else if let Some(i) = machine_nearest(&scores, &eligible) {
        (i, Source::MachineNearest)
    } else if let Some(&i) = eligible.iter().find(|&&i| scores[i].region == input.default_region) {
        (i, Source::Default)
    } else {
        (least_loaded(&scores, &eligible).ok_or(SelectError::NoLiveRegion)?, Source::LeastLoaded)
    };

    // Valve's anti-flap rule. Under the soft load filter, load decides and stickiness does not apply.
    if let Some(previous) = &input.previous
        && source != Source::LeastLoaded
        && previous.region != scores[chosen].region
        && let Some(&prev) = eligible.iter().find(|&&i| scores[i].region == previous.region)
    {
        let s_prev = scores[prev].total_ms.unwrap_or(previous.score_ms);
        let clearly_better = match scores[chosen].total_ms {
            Some(s_new) => policy.sticky_factor * s_new + policy.sticky_margin_ms < s_prev,
            // A fallback choice has no score to show it is better.
            None => false,
        };
        if !clearly_better {
            (chosen, source) = (prev, Source::Sticky);
        }
    }

    let mut alternates: Vec<usize> = eligible.iter().copied().filter(|&i| i != chosen).collect();
    alternates.sort_by(|&a, &b| alternate_order(&scores[a], &scores[b]));
    Ok(Selection {
        region: scores[chosen].region.clone(),
        source,
        score_ms: scores[chosen].total_ms,
        alternates: alternates.iter().map(|&i| scores[i].region.clone()).collect(),
        scores,
    })
}

fn validate(input: &SelectionInput) -> Result<(), SelectError> {
    if input.candidates.is_empty() {
        return Err(SelectError::NoCandidates);
    }
    let mut seen = BTreeSet::new();
    for candidate in &input.candidates {
        let id = &candidate.region.id;
        if !seen.insert(id) {
            return Err(SelectError::DuplicateRegion(id.clone()));
        }
        if candidate.status.region != *id {
            return Err(SelectError::StatusMismatch { region: id.clone(), status: candidate.status.region.clone() });
        }
    }
    for (region, &value) in &input.machine_rtts {
        if !(0.0..=MAX_SAMPLE_MS).contains(&value) {
            return Err(SelectError::InvalidMachineRtt { region: region.clone(), value });
        }
    }
    if let Some(previous) = &input.previous
        && !(previous.score_ms.is_finite() && previous.score_ms >= 0.0)
    {
        return Err(SelectError::InvalidPreviousScore(previous.score_ms));
    }
    Ok(())
}

/// Scores every candidate; eligibility is filled in by the caller.
fn score_candidates(input: &SelectionInput, policy: &Policy) -> Vec<RegionScore> {
    let worst_measured =
        input.candidates.iter().filter_map(|c| input.machine_rtts.get(&c.region.id).copied()).max_by(f64::total_cmp);
    input
        .candidates
        .iter()
        .map(|candidate| {
            let region = &candidate.region;
            let probes = input.client_probes.get(&region.id);
            let trusted_rtt = probes.filter(|p| p.valid() >= policy.min_valid_probes).and_then(ProbeSummary::rtt_ms);
            let (client_ms, client_source) = match (trusted_rtt, &input.client_location) {
                (Some(rtt), _) => (Some(rtt), Some(EstimateSource::Probes)),
                (None, Some(location)) => {
                    (Some(location.estimate_rtt_ms(region.location)), Some(EstimateSource::GeoIp))
                }
                (None, None) => (None, None),
            };
            // Loss counts even when the RTT falls back to GeoIP: probes that mostly time out are
            // the strongest evidence against a region.
            let loss_penalty_ms = probes.map_or(0.0, |p| {
                let counted = p.valid() + p.timeouts();
                let charged = p.timeouts().saturating_sub(policy.forgiven_timeouts);
                if counted == 0 { 0.0 } else { policy.loss_penalty_ms * charged as f64 / counted as f64 }
            });
            let (machine_ms, machine_source) = match (input.machine_rtts.get(&region.id), input.machine_location) {
                (Some(&rtt), _) => (rtt, MachineLegSource::Measured),
                (None, Some(machine)) => {
                    (estimate_rtt_ms(haversine_km(machine, region.location)), MachineLegSource::DistanceEstimate)
                }
                (None, None) => match worst_measured {
                    Some(worst) => (worst, MachineLegSource::WorstMeasured),
                    None => (0.0, MachineLegSource::Unknown),
                },
            };
            let load = candidate.status.load;
            let load_penalty_ms = policy.load_penalty_ms(load);
            RegionScore {
                region: region.id.clone(),
                client_ms,
                client_source,
                machine_ms,
                machine_source,
                load,
                load_penalty_ms,
                loss_penalty_ms,
                total_ms: client_ms.map(|client| client + machine_ms + load_penalty_ms + loss_penalty_ms),
                eligible: false,
                excluded_reason: None,
            }
        })
        .collect()
}

/// Among eligible scored regions: the similar set around the best, then the least loaded of it
/// (loads within the tolerance tie), then the lowest score, then the region id.
fn best_scored(scores: &[RegionScore], eligible: &[usize], policy: &Policy) -> Option<usize> {
    let scored: Vec<(usize, f64)> = eligible.iter().filter_map(|&i| Some((i, scores[i].total_ms?))).collect();
    let best = scored.iter().map(|&(_, s)| s).min_by(f64::total_cmp)?;
    let threshold = (policy.similar_ratio * best).min(best + policy.similar_margin_ms);
    let similar: Vec<(usize, f64)> = scored.into_iter().filter(|&(_, s)| s <= threshold).collect();
    let least_load = similar.iter().map(|&(i, _)| scores[i].load.get()).min_by(f64::total_cmp)?;
    similar
        .into_iter()
        .filter(|&(i, _)| scores[i].load.get() <= least_load + policy.load_tie_tolerance)
        .min_by(|&(a, sa), &(b, sb)| sa.total_cmp(&sb).then_with(|| scores[a].region.cmp(&scores[b].region)))
        .map(|(i, _)| i)
}

/// The eligible region with the smallest known machine leg (measured or estimated from distance).
fn machine_nearest(scores: &[RegionScore], eligible: &[usize]) -> Option<usize> {
    eligible
        .iter()
        .copied()
        .filter(|&i| {
            matches!(scores[i].machine_source, MachineLegSource::Measured | MachineLegSource::DistanceEstimate)
        })
        .min_by(|&a, &b| {
            let (a, b) = (&scores[a], &scores[b]);
            a.machine_ms
                .total_cmp(&b.machine_ms)
                .then_with(|| a.load.get().total_cmp(&b.load.get()))
                .then_with(|| a.region.cmp(&b.region))
        })
}

/// The least-loaded region, then the lowest score (unscored last), then the region id. `None` only
/// for an empty `eligible`, which `select` rules out before calling.
fn least_loaded(scores: &[RegionScore], eligible: &[usize]) -> Option<usize> {
    eligible.iter().copied().min_by(|&a, &b| {
        let (a, b) = (&scores[a], &scores[b]);
        a.load
            .get()
            .total_cmp(&b.load.get())
            .then_with(|| cmp_score(a.total_ms, b.total_ms))
            .then_with(|| a.region.cmp(&b.region))
    })
}

/// Scored regions by ascending score, then unscored ones by known machine leg, then by id.
fn alternate_order(a: &RegionScore, b: &RegionScore) -> Ordering {
    let known_machine = |s: &RegionScore| {
        matches!(s.machine_source, MachineLegSource::Measured | MachineLegSource::DistanceEstimate)
            .then_some(s.machine_ms)
    };
    cmp_score(a.total_ms, b.total_ms)
        .then_with(|| cmp_score(known_machine(a), known_machine(b)))
        .then_with(|| a.region.cmp(&b.region))
}

/// Ascending, with `None` after every value.
fn cmp_score(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests;
