//! Table-driven tests of the selection rule, one row per behaviour the crate docs promise.

use super::*;
use crate::probe::ProbeSamples;

/// Test regions and where they are.
fn location(region: &str) -> Coordinates {
    let (lat, lon) = match region {
        "fra" => (50.11, 8.68),
        "ams" => (52.37, 4.90),
        "iad" => (39.04, -77.49),
        "sin" => (1.35, 103.82),
        "syd" => (-33.87, 151.21),
        other => panic!("no test location for {other}"),
    };
    Coordinates::new(lat, lon).expect("test coordinates are in range")
}

use RegionState::{Dead, Draining, Full, Serving};

/// Five probes: a slow warm-up sample (dropped), then four around `ms`.
fn probes(ms: f64) -> Vec<Option<f64>> {
    vec![Some(ms + 300.0), Some(ms - 1.0), Some(ms), Some(ms), Some(ms + 1.0)]
}

struct Case {
    name: &'static str,
    regions: Vec<(&'static str, RegionState, f64)>,
    probes: Vec<(&'static str, Vec<Option<f64>>)>,
    client_at: Option<(f64, f64)>,
    machine_rtts: Vec<(&'static str, f64)>,
    machine_at: Option<(f64, f64)>,
    previous: Option<(&'static str, f64)>,
    default: &'static str,
    expect: (&'static str, Source),
}

impl Default for Case {
    fn default() -> Self {
        Self {
            name: "",
            regions: vec![("fra", Serving, 0.1), ("iad", Serving, 0.1), ("sin", Serving, 0.1)],
            probes: vec![],
            client_at: None,
            machine_rtts: vec![],
            machine_at: None,
            previous: None,
            default: "iad",
            expect: ("", Source::Default),
        }
    }
}

impl Case {
    fn input(&self) -> SelectionInput {
        let at = |(lat, lon)| Coordinates::new(lat, lon).expect("test coordinates are in range");
        SelectionInput {
            candidates: self
                .regions
                .iter()
                .map(|&(id, state, load)| Candidate {
                    region: Region { id: id.into(), location: location(id) },
                    status: RegionStatus {
                        region: id.into(),
                        state,
                        load: Load::new(load).expect("test load is valid"),
                    },
                })
                .collect(),
            client_probes: self
                .probes
                .iter()
                .map(|(id, samples)| {
                    (
                        RegionId::from(*id),
                        ProbeSamples::new(samples.clone()).expect("test probes are valid").summarize(),
                    )
                })
                .collect(),
            client_location: self.client_at.map(|c| GeoLocation {
                coordinates: at(c),
                accuracy_radius_km: Some(50),
                country: None,
            }),
            machine_rtts: self.machine_rtts.iter().map(|&(id, ms)| (RegionId::from(id), ms)).collect(),
            machine_location: self.machine_at.map(at),
            previous: self.previous.map(|(id, score_ms)| PreviousRegion { region: id.into(), score_ms }),
            default_region: self.default.into(),
        }
    }
}

const WASHINGTON: (f64, f64) = (38.9, -77.0);
const PARIS: (f64, f64) = (48.86, 2.35);
const SYDNEY: (f64, f64) = (-33.9, 151.2);

fn cases() -> Vec<Case> {
    let eu_pair = vec![("fra", Serving, 0.1), ("ams", Serving, 0.1), ("iad", Serving, 0.1)];
    vec![
        Case {
            name: "probes pick the fastest region",
            probes: vec![("fra", probes(30.0)), ("iad", probes(95.0)), ("sin", probes(180.0))],
            client_at: Some(WASHINGTON), // GeoIP disagrees; trusted probes win
            expect: ("fra", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "without probes GeoIP decides",
            client_at: Some(WASHINGTON),
            default: "sin",
            expect: ("iad", Source::GeoIp),
            ..Case::default()
        },
        Case {
            name: "untrusted probes (2 valid) fall back to GeoIP for that region",
            // fra would win on these two samples, but two are too few to trust; GeoIP puts the
            // client in Washington, and fra also pays for the lost probe beyond the forgiven one.
            probes: vec![("fra", vec![Some(500.0), Some(20.0), None, Some(21.0), None])],
            client_at: Some(WASHINGTON),
            expect: ("iad", Source::GeoIp),
            ..Case::default()
        },
        Case {
            name: "no client data: the region with the lowest measured machine RTT",
            machine_rtts: vec![("fra", 90.0), ("iad", 6.0), ("sin", 200.0)],
            default: "sin",
            expect: ("iad", Source::MachineNearest),
            ..Case::default()
        },
        Case {
            name: "no client data: the region nearest the machine's location",
            regions: vec![("fra", Serving, 0.1), ("sin", Serving, 0.1), ("syd", Serving, 0.1)],
            machine_at: Some(SYDNEY),
            default: "fra",
            expect: ("syd", Source::MachineNearest),
            ..Case::default()
        },
        Case {
            name: "nothing known: the default region",
            default: "sin",
            expect: ("sin", Source::Default),
            ..Case::default()
        },
        Case {
            name: "nothing known and the default is draining: the least-loaded live region",
            regions: vec![("fra", Serving, 0.3), ("iad", Draining, 0.0), ("sin", Serving, 0.2)],
            expect: ("sin", Source::LeastLoaded),
            ..Case::default()
        },
        Case {
            name: "an overloaded region is excluded",
            regions: vec![("fra", Serving, 0.9), ("ams", Serving, 0.1), ("iad", Serving, 0.1)],
            probes: vec![("fra", probes(20.0)), ("ams", probes(45.0)), ("iad", probes(95.0))],
            expect: ("ams", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "every region overloaded: the least loaded (soft filter)",
            regions: vec![("fra", Serving, 0.95), ("ams", Serving, 0.88), ("iad", Serving, 0.99)],
            probes: vec![("fra", probes(20.0)), ("ams", probes(45.0)), ("iad", probes(95.0))],
            previous: Some(("fra", 20.0)), // the soft filter overrides stickiness
            expect: ("ams", Source::LeastLoaded),
            ..Case::default()
        },
        Case {
            name: "draining and dead regions are excluded",
            regions: vec![("fra", Draining, 0.1), ("ams", Dead, 0.1), ("iad", Serving, 0.1)],
            probes: vec![("fra", probes(20.0)), ("ams", probes(25.0)), ("iad", probes(95.0))],
            previous: Some(("fra", 20.0)), // a draining previous region is not kept
            expect: ("iad", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "a full region is excluded, even when every other region is overloaded",
            regions: vec![("fra", Full, 0.2), ("ams", Serving, 0.95), ("iad", Serving, 0.9)],
            probes: vec![("fra", probes(20.0)), ("ams", probes(25.0)), ("iad", probes(95.0))],
            previous: Some(("fra", 20.0)), // a full previous region is not kept
            expect: ("iad", Source::LeastLoaded),
            ..Case::default()
        },
        Case {
            name: "near-equal regions spread to the least loaded",
            regions: vec![("fra", Serving, 0.5), ("ams", Serving, 0.1), ("iad", Serving, 0.1)],
            probes: vec![("fra", probes(30.0)), ("ams", probes(35.0)), ("iad", probes(95.0))],
            expect: ("ams", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "a region outside the similar set does not win on load",
            // threshold = min(1.2·30, 30 + 15) = 36 ms
            regions: vec![("fra", Serving, 0.5), ("ams", Serving, 0.1), ("iad", Serving, 0.1)],
            probes: vec![("fra", probes(30.0)), ("ams", probes(37.0)), ("iad", probes(95.0))],
            expect: ("fra", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "loads within the tolerance tie and the lowest score wins",
            regions: vec![("fra", Serving, 0.13), ("ams", Serving, 0.10), ("iad", Serving, 0.1)],
            probes: vec![("fra", probes(30.0)), ("ams", probes(35.0)), ("iad", probes(95.0))],
            expect: ("fra", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "near the hard limit the load penalty moves the session",
            // fra: 30 + 50·(0.8−0.6)/0.25 = 70 ms; ams: 45 ms
            regions: vec![("fra", Serving, 0.8), ("ams", Serving, 0.1), ("iad", Serving, 0.1)],
            probes: vec![("fra", probes(30.0)), ("ams", probes(45.0)), ("iad", probes(95.0))],
            expect: ("ams", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "the machine leg changes the answer: player near fra, machine near iad",
            // fra: 20 + 95 = 115 ms; iad: 90 + 4 = 94 ms
            probes: vec![("fra", probes(20.0)), ("iad", probes(90.0)), ("sin", probes(170.0))],
            machine_rtts: vec![("fra", 95.0), ("iad", 4.0), ("sin", 230.0)],
            expect: ("iad", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "the machine leg from its location when not measured",
            probes: vec![("fra", probes(20.0)), ("iad", probes(90.0)), ("sin", probes(170.0))],
            machine_at: Some(WASHINGTON),
            expect: ("iad", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "an unmeasured machine leg is charged the worst measured one",
            // sin has no measurement and no machine location: charged 95 ms, not 0
            probes: vec![("fra", probes(20.0)), ("iad", probes(90.0)), ("sin", probes(60.0))],
            machine_rtts: vec![("fra", 95.0), ("iad", 4.0)],
            expect: ("iad", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "repeated loss counts against a region",
            // fra: counted 6, 2 timeouts, 1 forgiven: 30 + 300/6 = 80 ms; ams: 45 ms
            regions: eu_pair.clone(),
            probes: vec![
                ("fra", vec![Some(330.0), Some(30.0), None, None, Some(30.0), Some(31.0), Some(29.0)]),
                ("ams", probes(45.0)),
            ],
            expect: ("ams", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "a single lost probe is forgiven",
            regions: eu_pair.clone(),
            probes: vec![("fra", vec![Some(330.0), Some(30.0), None, Some(30.0), Some(31.0)]), ("ams", probes(45.0))],
            expect: ("fra", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "sticky: a previous region that is not clearly worse is kept",
            // fra 30 vs ams 37: 1.1·30 + 5 = 38 is not below 37
            regions: eu_pair.clone(),
            probes: vec![("fra", probes(30.0)), ("ams", probes(37.0))],
            previous: Some(("ams", 38.0)),
            expect: ("ams", Source::Sticky),
            ..Case::default()
        },
        Case {
            name: "sticky: a clearly better region releases the previous one",
            // 1.1·30 + 5 = 38 < 45
            regions: eu_pair.clone(),
            probes: vec![("fra", probes(30.0)), ("ams", probes(45.0))],
            previous: Some(("ams", 20.0)), // the recomputed score, not the stale one, counts
            expect: ("fra", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "sticky: without a current score the previous score is used (kept)",
            regions: eu_pair.clone(),
            probes: vec![("fra", probes(30.0))],
            previous: Some(("ams", 36.0)),
            expect: ("ams", Source::Sticky),
            ..Case::default()
        },
        Case {
            name: "sticky: without a current score the previous score is used (released)",
            regions: eu_pair.clone(),
            probes: vec![("fra", probes(30.0))],
            previous: Some(("ams", 60.0)),
            expect: ("fra", Source::Probes),
            ..Case::default()
        },
        Case {
            name: "sticky: a fallback choice does not displace an eligible previous region",
            machine_rtts: vec![("fra", 5.0), ("iad", 90.0), ("sin", 160.0)],
            previous: Some(("sin", 200.0)),
            expect: ("sin", Source::Sticky),
            ..Case::default()
        },
        Case {
            name: "probes and GeoIP mix per region",
            // iad is probed (trusted, 90 ms); fra is not and is estimated from Paris (~ 15 ms)
            probes: vec![("iad", probes(90.0))],
            client_at: Some(PARIS),
            expect: ("fra", Source::GeoIp),
            ..Case::default()
        },
    ]
}

#[test]
fn selection_rule_table() {
    let policy = Policy::default();
    for case in cases() {
        let selection = select(&case.input(), &policy).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(
            (selection.region.as_str(), selection.source),
            case.expect,
            "{}\n{:#?}",
            case.name,
            selection.scores
        );
        // Invariants of every selection.
        assert!(!selection.alternates.contains(&selection.region), "{}", case.name);
        let eligible = selection.scores.iter().filter(|s| s.eligible).count();
        assert_eq!(selection.alternates.len(), eligible - 1, "{}", case.name);
        for score in &selection.scores {
            assert_eq!(score.eligible, score.excluded_reason.is_none(), "{}", case.name);
        }
    }
}

#[test]
fn score_breakdown_and_alternates() {
    let case = Case {
        regions: vec![("fra", Serving, 0.7), ("ams", Serving, 0.1), ("iad", Draining, 0.1), ("sin", Serving, 0.9)],
        probes: vec![("fra", probes(30.0)), ("ams", probes(50.0))],
        client_at: Some(PARIS),
        machine_rtts: vec![("fra", 10.0), ("ams", 12.0), ("iad", 80.0), ("sin", 150.0)],
        ..Case::default()
    };
    let selection = select(&case.input(), &Policy::default()).expect("valid input");
    let by_id =
        |id: &str| selection.scores.iter().find(|s| s.region.as_str() == id).expect("every candidate is scored");

    let fra = by_id("fra");
    assert_eq!((fra.client_ms, fra.client_source), (Some(30.0), Some(EstimateSource::Probes)));
    assert_eq!((fra.machine_ms, fra.machine_source), (10.0, MachineLegSource::Measured));
    assert!((fra.load_penalty_ms - 20.0).abs() < 1e-9, "50·(0.7−0.6)/0.25 = 20");
    assert!((fra.total_ms.expect("fra is scored") - 60.0).abs() < 1e-9);
    let ams = by_id("ams");
    assert_eq!(ams.total_ms, Some(62.0));
    let iad = by_id("iad");
    assert_eq!(iad.client_source, Some(EstimateSource::GeoIp));
    assert_eq!((iad.eligible, iad.excluded_reason), (false, Some(ExcludedReason::Draining)));
    let sin = by_id("sin");
    assert_eq!((sin.eligible, sin.excluded_reason), (false, Some(ExcludedReason::Overloaded)));
    assert_eq!(sin.load_penalty_ms, 50.0);

    // fra (60) and ams (62) are similar; ams is less loaded.
    assert_eq!((selection.region.as_str(), selection.source, selection.score_ms), ("ams", Source::Probes, Some(62.0)));
    assert_eq!(selection.alternates, vec![RegionId::from("fra")]);

    let json = serde_json::to_value(&selection).expect("serializable");
    assert_eq!(json["source"], "probes");
    assert_eq!(json["scores"][2]["client_source"], "geoip");
    assert_eq!(json["scores"][2]["excluded_reason"], "draining");
    assert_eq!(json["scores"][0]["load"], 0.7);
    let back: Selection = serde_json::from_value(json).expect("round trip");
    assert_eq!(back, selection);
}

#[test]
fn alternates_rank_scored_then_by_machine_leg() {
    let case = Case {
        regions: vec![
            ("fra", Serving, 0.1),
            ("ams", Serving, 0.1),
            ("iad", Serving, 0.1),
            ("sin", Serving, 0.1),
            ("syd", Serving, 0.1),
        ],
        probes: vec![("iad", probes(90.0)), ("fra", probes(20.0))],
        machine_rtts: vec![("syd", 100.0), ("sin", 50.0)],
        ..Case::default()
    };
    let selection = select(&case.input(), &Policy::default()).expect("valid input");
    // fra and iad are scored (20 + worst measured 100, 90 + 100); sin and syd are unscored and
    // ordered by their measured machine leg; ams has neither.
    assert_eq!(selection.region.as_str(), "fra");
    let alternates: Vec<&str> = selection.alternates.iter().map(RegionId::as_str).collect();
    assert_eq!(alternates, ["iad", "sin", "syd", "ams"]);
}

#[test]
fn malformed_input_is_rejected() {
    let policy = Policy::default();
    let base = || Case::default().input();

    let mut input = base();
    input.candidates.clear();
    assert_eq!(select(&input, &policy), Err(SelectError::NoCandidates));

    let mut input = base();
    input.candidates.push(input.candidates[0].clone());
    assert_eq!(select(&input, &policy), Err(SelectError::DuplicateRegion("fra".into())));

    let mut input = base();
    input.candidates[1].status.region = "fra".into();
    assert_eq!(
        select(&input, &policy),
        Err(SelectError::StatusMismatch { region: "iad".into(), status: "fra".into() })
    );

    for bad in [-1.0, f64::NAN, f64::INFINITY, 10_001.0] {
        let mut input = base();
        input.machine_rtts.insert("iad".into(), bad);
        assert!(matches!(select(&input, &policy), Err(SelectError::InvalidMachineRtt { .. })), "{bad}");
        let mut input = base();
        input.previous = Some(PreviousRegion { region: "iad".into(), score_ms: bad });
        if bad >= 0.0 && bad.is_finite() {
            continue; // a large previous score is fine
        }
        assert!(matches!(select(&input, &policy), Err(SelectError::InvalidPreviousScore(_))), "{bad}");
    }

    let mut input = base();
    for candidate in &mut input.candidates {
        candidate.status.state = Draining;
    }
    assert_eq!(select(&input, &policy), Err(SelectError::NoLiveRegion));

    let bad_policy = Policy { load_soft_limit: 0.9, ..Policy::default() };
    assert!(matches!(select(&base(), &bad_policy), Err(SelectError::InvalidPolicy(e)) if e.field == "load_soft_limit"));
    let bad_policy = Policy { similar_ratio: f64::NAN, ..Policy::default() };
    assert!(matches!(select(&base(), &bad_policy), Err(SelectError::InvalidPolicy(_))));
}

#[test]
fn malformed_probe_reports_never_reach_selection() {
    // Probe reports arrive as JSON from clients; the bad ones fail to parse into the input.
    for report in ["[20, -5, 21]", "[null, NaN]", "[20, 12000]", "[]", "[\"20\"]"] {
        assert!(serde_json::from_str::<ProbeSamples>(report).is_err(), "{report}");
    }
    let input = serde_json::json!({
        "candidates": [],
        "client_probes": {"fra": {"rtt_ms": -3.0, "valid": 4, "timeouts": 0}},
        "default_region": "fra",
    });
    let error = serde_json::from_value::<SelectionInput>(input).expect_err("negative RTT in a summary");
    assert!(error.to_string().contains("probe sample #0 is -3 ms"), "{error}");
}

#[test]
fn policy_default_is_valid_and_parses_partially() {
    Policy::default().validate().expect("the default policy is valid");
    let policy: Policy = serde_json::from_str(r#"{"similar_margin_ms": 10}"#).expect("partial policy");
    assert_eq!(policy, Policy { similar_margin_ms: 10.0, ..Policy::default() });
    assert!(serde_json::from_str::<Policy>(r#"{"similar_margn_ms": 10}"#).is_err(), "unknown keys are errors");
}

#[test]
fn load_penalty_ramp() {
    let policy = Policy::default();
    let penalty = |l: f64| policy.load_penalty_ms(Load::new(l).expect("test load is valid"));
    assert_eq!(penalty(0.0), 0.0);
    assert_eq!(penalty(0.59), 0.0);
    assert_eq!(penalty(0.6), 0.0);
    assert!((penalty(0.725) - 25.0).abs() < 1e-9);
    assert_eq!(penalty(0.85), 50.0);
    assert_eq!(penalty(1.0), 50.0);
}

#[test]
fn selection_input_round_trips_through_json() {
    for case in cases() {
        let input = case.input();
        let json = serde_json::to_string(&input).expect("serializable");
        let back: SelectionInput = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, input, "{}", case.name);
    }
    // Optional parts may be left out.
    let minimal = serde_json::json!({
        "candidates": [{
            "region": {"id": "fra", "location": {"lat": 50.11, "lon": 8.68}},
            "status": {"region": "fra", "state": "serving", "load": 0.2},
        }],
        "default_region": "fra",
    });
    let input: SelectionInput = serde_json::from_value(minimal).expect("minimal input");
    let selection = select(&input, &Policy::default()).expect("valid input");
    assert_eq!((selection.region.as_str(), selection.source), ("fra", Source::Default));
}

#[test]
fn source_names_are_their_serialized_names() {
    for source in Source::ALL {
        assert_eq!(serde_json::to_value(source).unwrap(), serde_json::json!(source.as_str()));
    }
}
