//! Region selection against measured Internet latencies between countries.
//!
//! Data: `shared/testdata/internet-rtt/country_rtt_stat.csv.gz`, one row per unordered pair of
//! countries (ISO alpha-2, same-country pairs included): `cty1,cty2,rtt_cnt,rtt_avg,rtt_std,
//! rtt_min,rtt_max` in ms; `rtt_std` is empty for pairs with a single measurement.
//!
//! Set-up: relay regions in seven countries on six continents ([`REGIONS`]), game machines in
//! [`MACHINES`], players in every country of the data set that has data to every region. Every
//! place sits at its country's centroid, and the *true* RTT between two places is the pair's
//! `rtt_avg`. A session's true path RTT through region `r` is `rtt(player, r) + rtt(r, machine)`;
//! a choice counts as good when its true path is within 10% of the best region's.
//!
//! Two runs per (player, machine) pair, [`SESSIONS`] sessions each:
//! - **with probes**: the client sends 5 probes to every region, drawn from [`probe_samples`]'s noise
//!   model, and GeoIP (the player country's centroid) covers regions whose probes are not trusted;
//!   the machine's measured RTTs are the true ones. Asserted: at least 99% good.
//! - **GeoIP only**: no probes. Reported, not asserted.
//!
//! Region loads are all equal, so the bar measures the latency rule; the load-spreading rule trades
//! up to min(20%, 15 ms) for balance by design, and its cost is reported separately.
//!
//! Run with `cargo test -p geo --release --test simulation -- --nocapture` to see the report.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;

use geo::{
    Candidate, Coordinates, GeoLocation, Load, Policy, ProbeSamples, Region, RegionId, RegionState, RegionStatus,
    SelectionInput, Source, country_centroid, select,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Europe, North America, South America, Africa, Asia (two: India and Singapore), Oceania.
const REGIONS: [&str; 7] = ["DE", "US", "BR", "ZA", "IN", "SG", "AU"];
/// The hall in Germany, one in the US, and one in a country without a region.
const MACHINES: [&str; 3] = ["DE", "US", "JP"];
const SESSIONS: usize = 20;
/// Codes in the data set that are not countries: `EU` (Europe, unspecified) and failed lookups.
const NOT_COUNTRIES: [&str; 3] = ["EU", "None", "Unknown"];
const SEED: u64 = 0x6e6f_7465_7338;

const PROBES: usize = 5;
const PROBE_TIMEOUT_MS: f64 = 800.0;
/// Per-sample loss, independent of the path: the bar is about RTT, so the rule must not be fooled
/// by background loss.
const LOSS: f64 = 0.02;
/// Spikes (Wi-Fi retries, bufferbloat): probability and largest extra delay.
const SPIKE: (f64, f64) = (0.05, 200.0);
/// The first probe through a NAT: probability of extra delay, and its range.
const WARM_UP: (f64, f64, f64) = (0.3, 50.0, 500.0);

#[derive(Clone, Copy, Debug)]
struct PairStat {
    avg: f64,
    std: f64,
}

struct Dataset {
    pairs: BTreeMap<(String, String), PairStat>,
    codes: BTreeSet<String>,
}

impl Dataset {
    fn load() -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/internet-rtt/country_rtt_stat.csv.gz");
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        let mut text = String::new();
        flate2::read::GzDecoder::new(file).read_to_string(&mut text).expect("the data set is gzip-compressed UTF-8");

        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("cty1,cty2,rtt_cnt,rtt_avg,rtt_std,rtt_min,rtt_max"), "unexpected header");
        let mut pairs = BTreeMap::new();
        let mut codes = BTreeSet::new();
        for (n, line) in lines.enumerate() {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 7, "line {}: {line}", n + 2);
            let number = |i: usize| -> f64 {
                fields[i].parse().unwrap_or_else(|e| panic!("line {} field {i} {:?}: {e}", n + 2, fields[i]))
            };
            // A single measurement has no standard deviation.
            let std = if fields[4].is_empty() { 0.0 } else { number(4) };
            let stat = PairStat { avg: number(3), std };
            assert!(stat.avg.is_finite() && stat.avg >= 0.0, "line {}: {line}", n + 2);
            let (a, b) = (fields[0].to_owned(), fields[1].to_owned());
            codes.insert(a.clone());
            codes.insert(b.clone());
            pairs.insert((b.clone(), a.clone()), stat);
            pairs.insert((a, b), stat);
        }
        for code in NOT_COUNTRIES {
            codes.remove(code);
        }
        Self { pairs, codes }
    }

    fn get(&self, a: &str, b: &str) -> Option<PairStat> {
        self.pairs.get(&(a.to_owned(), b.to_owned())).copied()
    }

    fn rtt(&self, a: &str, b: &str) -> f64 {
        self.get(a, b).unwrap_or_else(|| panic!("no RTT data between {a} and {b}")).avg
    }
}

fn centroid(code: &str) -> Coordinates {
    country_centroid(code).unwrap_or_else(|| panic!("no centroid for {code}"))
}

fn region_id(code: &str) -> RegionId {
    RegionId::new(code.to_ascii_lowercase())
}

/// One client's probes to one region whose true mean RTT is `stat.avg`.
///
/// Each sample is `floor + Exp(q)` with `floor = avg − q`, so samples average `avg` and never go
/// below `floor`. The queueing scale `q` is a quarter of the pair's `rtt_std`, at least 1 ms and at
/// most 15% of `avg`: the data's spread is between many host pairs across two whole countries (and
/// includes mislocated hosts: DE–US has `rtt_min` 0), not one client's jitter, so it only scales
/// the noise. On top: 5% of samples get a spike of up to 200 ms, 30% of first samples a NAT
/// warm-up delay of 50–500 ms, 2% are lost, and anything over the client's 800 ms timeout is lost.
fn probe_samples(rng: &mut StdRng, stat: PairStat) -> Vec<Option<f64>> {
    let q = (0.25 * stat.std).max(1.0).min(0.15 * stat.avg);
    let floor = stat.avg - q;
    (0..PROBES)
        .map(|i| {
            if rng.random_bool(LOSS) {
                return None;
            }
            // 1 − u is in (0, 1], so the logarithm is finite.
            let mut sample = floor - q * (1.0 - rng.random::<f64>()).ln();
            if rng.random_bool(SPIKE.0) {
                sample += rng.random_range(0.0..SPIKE.1);
            }
            if i == 0 && rng.random_bool(WARM_UP.0) {
                sample += rng.random_range(WARM_UP.1..WARM_UP.2);
            }
            (sample <= PROBE_TIMEOUT_MS).then_some(sample.max(0.0))
        })
        .collect()
}

struct Miss {
    player: String,
    machine: &'static str,
    chosen: String,
    best: String,
    chosen_ms: f64,
    best_ms: f64,
}

#[derive(Default)]
struct Tally {
    sessions: usize,
    good: usize,
    misses: Vec<Miss>,
    sources: BTreeMap<String, usize>,
}

impl Tally {
    fn percent(&self) -> f64 {
        100.0 * self.good as f64 / self.sessions as f64
    }

    fn record(&mut self, miss: Option<Miss>, source: Source) {
        self.sessions += 1;
        *self.sources.entry(format!("{source:?}")).or_default() += 1;
        match miss {
            None => self.good += 1,
            Some(miss) => self.misses.push(miss),
        }
    }

    fn report(&self, title: &str) {
        println!(
            "{title}: {:.2}% within 10% of the best ({} of {}), sources {:?}",
            self.percent(),
            self.good,
            self.sessions,
            self.sources
        );
        // The worst misses, one line per (player, machine, chosen region) with how often it happened.
        let mut grouped: BTreeMap<(String, &str, String), (usize, &Miss)> = BTreeMap::new();
        for m in &self.misses {
            grouped.entry((m.player.clone(), m.machine, m.chosen.clone())).or_insert((0, m)).0 += 1;
        }
        let mut worst: Vec<(usize, &Miss)> = grouped.into_values().collect();
        worst.sort_by(|(_, a), (_, b)| (b.chosen_ms / b.best_ms).total_cmp(&(a.chosen_ms / a.best_ms)));
        for (count, m) in worst.iter().take(8) {
            println!(
                "    player {} machine {}: chose {} ({:.0} ms) instead of {} ({:.0} ms), +{:.0}%, {count}×",
                m.player,
                m.machine,
                m.chosen,
                m.chosen_ms,
                m.best,
                m.best_ms,
                100.0 * (m.chosen_ms / m.best_ms - 1.0)
            );
        }
    }
}

#[test]
fn selection_on_measured_internet_latencies() {
    let data = Dataset::load();

    // Every country in the data set must have a centroid, or the GeoIP run would silently skip it.
    let missing: Vec<&str> = data.codes.iter().map(String::as_str).filter(|c| country_centroid(c).is_none()).collect();
    assert!(missing.is_empty(), "country_centroids.csv lacks {missing:?}");
    for region in REGIONS {
        for other in REGIONS.iter().chain(&MACHINES) {
            assert!(data.get(region, other).is_some(), "no RTT data between region {region} and {other}");
        }
    }

    let players: Vec<&str> =
        data.codes.iter().map(String::as_str).filter(|p| REGIONS.iter().all(|r| data.get(p, r).is_some())).collect();
    assert!(players.len() >= 100, "only {} players have data to every region", players.len());

    let policy = Policy::default();
    let mut rng = StdRng::seed_from_u64(SEED);
    let (mut with_probes, mut geoip_only, mut spread) = (Tally::default(), Tally::default(), Tally::default());

    for machine in MACHINES {
        let machine_rtts: BTreeMap<RegionId, f64> =
            REGIONS.iter().map(|r| (region_id(r), data.rtt(r, machine))).collect();
        for &player in &players {
            let true_path: BTreeMap<RegionId, f64> =
                REGIONS.iter().map(|r| (region_id(r), data.rtt(player, r) + data.rtt(r, machine))).collect();
            let (best, &best_ms) = true_path.iter().min_by(|a, b| a.1.total_cmp(b.1)).expect("REGIONS is not empty");
            let judge = |chosen: &RegionId| {
                let chosen_ms = true_path[chosen];
                (chosen_ms > 1.1 * best_ms).then(|| Miss {
                    player: player.to_owned(),
                    machine,
                    chosen: chosen.to_string(),
                    best: best.to_string(),
                    chosen_ms,
                    best_ms,
                })
            };
            let input = |loads: &mut dyn FnMut() -> f64| SelectionInput {
                candidates: REGIONS
                    .iter()
                    .map(|r| Candidate {
                        region: Region { id: region_id(r), location: centroid(r) },
                        status: RegionStatus {
                            region: region_id(r),
                            state: RegionState::Serving,
                            load: Load::new(loads()).expect("simulated loads are within 0..=1"),
                        },
                    })
                    .collect(),
                client_probes: BTreeMap::new(),
                client_location: Some(GeoLocation {
                    coordinates: centroid(player),
                    accuracy_radius_km: None,
                    country: Some(player.to_owned()),
                }),
                machine_rtts: machine_rtts.clone(),
                machine_location: Some(centroid(machine)),
                previous: None,
                default_region: region_id("DE"),
            };

            let geoip_input = input(&mut || 0.3);
            let selection = select(&geoip_input, &policy).expect("valid simulated input");
            geoip_only.record(judge(&selection.region), selection.source);

            for _ in 0..SESSIONS {
                let mut probed = input(&mut || 0.3);
                for r in REGIONS {
                    let samples =
                        probe_samples(&mut rng, data.get(player, r).expect("players have data to every region"));
                    let summary = ProbeSamples::new(samples).expect("simulated samples are valid").summarize();
                    probed.client_probes.insert(region_id(r), summary);
                }
                let selection = select(&probed, &policy).expect("valid simulated input");
                with_probes.record(judge(&selection.region), selection.source);

                // The same probes, with loads drawn from 0..0.6 so that spreading is active.
                let mut loaded = input(&mut || rng.random_range(0.0..0.6));
                loaded.client_probes = probed.client_probes;
                let selection = select(&loaded, &policy).expect("valid simulated input");
                spread.record(judge(&selection.region), selection.source);
            }
        }
    }

    println!(
        "regions {REGIONS:?}, machines {MACHINES:?}, {} player countries, {SESSIONS} sessions per player and machine",
        players.len()
    );
    with_probes.report("with probes (+ GeoIP for untrusted regions)");
    geoip_only.report("GeoIP only (country centroid)");
    spread.report("with probes, random loads 0..0.6 (spreading to the least loaded; informational)");

    assert!(
        with_probes.percent() >= 99.0,
        "with probes only {:.2}% of sessions chose a region within 10% of the best",
        with_probes.percent()
    );
}
