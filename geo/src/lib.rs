//! Region selection for the relay: which region's relay should carry a session between a player and
//! a game machine.
//!
//! A pure library: no sockets, no clock, no mutable global state. Signaling gathers the inputs (the client's
//! probe samples, its GeoIP location, the relays' heartbeats, the machine's RTTs to each region) and
//! calls [`select()`]; the [`Selection`] it gets back names the region, the [`Source`] that decided it,
//! every candidate's score breakdown (serde-serializable, for the session row) and a ranked list of
//! alternates for client failover. The only I/O is reading a GeoIP database file in [`GeoIp::open`].
//!
//! # The selection rule
//!
//! The media path is player `p` ↔ relay in region `r` ↔ game machine `m`, so regions are ranked by
//! the **end-to-end** path, as Valve's SDR does, not by distance to the player alone
//! (notes/geo-routing.md §8). For every candidate region `r`:
//!
//! ```text
//! client(r)  = lower median of the client's probes to r, if trusted (≥ 3 valid samples)
//!              else GeoIP estimate: 2·(1.6·d(p,r)/200) + 10 ms (+ 0.01 ms/km of accuracy radius if > 500 km)
//!              else unknown (r is not scored)
//! machine(r) = the machine's measured RTT to r
//!              else distance estimate from the machine's location (same formula, no radius term)
//!              else, if other regions have measurements, the worst measured one (pessimistic)
//!              else 0 for every region (unknown; then it does not affect the ranking)
//! load(r)    = 0 if L < 0.6; 50 ms·(L − 0.6)/(0.85 − 0.6) if 0.6 ≤ L < 0.85; excluded if L ≥ 0.85
//! loss(r)    = 300 ms · max(0, timeouts − 1) / counted samples
//! S(r)       = client(r) + machine(r) + load(r) + loss(r)
//! ```
//!
//! 1. **Eligibility.** Only `Serving` regions count; `Draining`, `Dead` and `Full` (every relay at
//!    its allocation capacity) are excluded. A region at
//!    load `L ≥ 0.85` is excluded too, unless every serving region is that loaded: then the least
//!    loaded one is taken ([`Source::LeastLoaded`]; LiveKit's soft sysload filter).
//! 2. **Scored choice.** Among eligible regions with a score, `S_best = min S`; the *similar* set is
//!    `S ≤ min(1.2·S_best, S_best + 15 ms)`. The least-loaded similar region wins; loads within 0.05
//!    of the least count as equal and are split by lowest `S`, then by region id. The source is
//!    [`Source::Probes`] or [`Source::GeoIp`], whichever produced the winner's client estimate.
//! 3. **Fallbacks**, when no eligible region has a client estimate: the region nearest the machine
//!    (by measured RTT or distance estimate; [`Source::MachineNearest`]), then the configured default
//!    region ([`Source::Default`]), then the least-loaded eligible region ([`Source::LeastLoaded`]).
//! 4. **Stickiness.** If the previous region is still eligible, it is kept ([`Source::Sticky`])
//!    unless `1.1·S_new + 5 ms < S_prev`, with `S_prev` recomputed from the current inputs when
//!    possible and taken from the previous selection otherwise. A new choice without a score (a
//!    fallback) never displaces an eligible previous region. The soft load filter overrides
//!    stickiness: when every region is overloaded, load decides.
//! 5. **Alternates**: the other eligible regions, scored ones by ascending `S`, then unscored ones by
//!    the machine leg, then by id.
//!
//! # Constants and where they come from
//!
//! Every selection constant lives in [`Policy`]; [`Policy::default`] holds the values below.
//!
//! | constant | value | source |
//! |---|---|---|
//! | probes per region, per-probe timeout | 5, 800 ms | Photon `RegionPinger` (`Attempts`, `MaxMillisecondsPerPing`); [`probe::RECOMMENDED_ATTEMPTS`], [`probe::RECOMMENDED_TIMEOUT_MS`] |
//! | estimate | lower median of the counted valid samples | notes §8 step 2 (median); lower for even counts, see below ([`ProbeSamples::summarize`]) |
//! | drop the first sample when ≥ 3 were sent | — | NAT warm-up: Photon v4 `IgnoreInitialAttempt`, Valve `MinPingsBeforePingAccurate`; [`probe::WARM_UP_MIN_SAMPLES`] |
//! | largest plausible sample | 10 s | Valve SDR's default connection timeout; larger is malformed input ([`probe::MAX_SAMPLE_MS`]) |
//! | trusted probe | ≥ 3 valid samples | notes §8 step 3 ([`Policy::min_valid_probes`]) |
//! | loss penalty | 300 ms per unit loss | notes §8 step 3 ([`Policy::loss_penalty_ms`]) |
//! | forgiven timeouts | 1 | Photon v5 drops each region's worst sample; see [`Policy::forgiven_timeouts`] |
//! | load soft limit, hard limit | 0.6, 0.85 | notes §8 step 3 ([`Policy::load_soft_limit`], [`Policy::load_hard_limit`]) |
//! | load penalty at the hard limit | 50 ms | notes §8 step 3, ramped linearly from the soft limit ([`Policy::load_penalty_max_ms`]) |
//! | equal-load tolerance | 0.05 | ours, so that load noise does not cost players latency ([`Policy::load_tie_tolerance`]) |
//! | similarity ratio | 1.2 | Photon v5 `pingSimilarityFactor` ([`Policy::similar_ratio`]) |
//! | similarity margin | 15 ms | notes §8 step 3 ([`Policy::similar_margin_ms`]) |
//! | sticky factor, margin | 1.1, 5 ms | Valve SDR route anti-flap `score·1.1+5 < current` ([`Policy::sticky_factor`], [`Policy::sticky_margin_ms`]) |
//! | RTT from distance | 2·(1.6·d/200) + 10 ms | notes §4, a rule of thumb: fiber ≈ 200 km/ms, real paths ×1.5–2, 5–15 ms last mile ([`distance`]) |
//! | accuracy-radius penalty | 0.01 ms/km above 500 km | notes §8 step 1 ([`distance::accuracy_penalty_ms`]) |
//! | Earth radius | 6371.0088 km | IUGG mean radius (LiveKit uses the equatorial 6378.1 km; 0.1% apart) |
//!
//! Where this departs from the notes' §8 formula, and why:
//! - `S` has no overall `1.1×` factor: it scales every region alike, so it only widened the similarity
//!   margin; the margin is stated directly instead.
//! - The notes' `50·(L − 0.6)` reaches only 12.5 ms at the hard limit; the penalty here ramps to
//!   50 ms at 0.85 so a nearly full region yields to one up to 50 ms slower.
//! - The probe estimate is the *lower* median for an even sample count (the usual 4 after the
//!   warm-up drop): delay noise only ever adds, and the midpoint of the two middle samples let two
//!   spikes among four move a region's estimate by half a spike (see [`probe`]). In the simulation
//!   this raised the share of good choices from 99.5% to 99.85%.
//! - One timeout among a region's probes is forgiven (Photon v5 discards the worst sample). With a
//!   few percent background loss, charging 75 ms for a single lost probe out of four moves players
//!   off their best region: in the simulation (`tests/simulation.rs`, 2% loss per probe) the share
//!   of sessions within 10% of the best path was 96.6% without forgiveness and 99.85% with it. Two
//!   or more timeouts are charged, and they are charged even when the region's RTT falls back to
//!   GeoIP, since probes that mostly time out are the strongest evidence against a region.
//! - A region whose machine RTT is missing while other regions have one is charged the worst
//!   measured RTT rather than 0, so a region cannot win by not having been measured yet.

pub mod centroids;
pub mod distance;
pub mod geoip;
pub mod probe;
pub mod region;
pub mod select;

pub use centroids::country_centroid;
pub use distance::{Coordinates, CoordinatesError, accuracy_penalty_ms, estimate_rtt_ms, haversine_km};
pub use geoip::{GeoIp, GeoIpError, GeoLocation};
pub use probe::{ProbeError, ProbeSamples, ProbeSummary};
pub use region::{Load, LoadError, Region, RegionId, RegionState, RegionStatus};
pub use select::{
    Candidate, EstimateSource, ExcludedReason, MachineLegSource, Policy, PolicyError, PreviousRegion, RegionScore,
    SelectError, Selection, SelectionInput, Source, select,
};
