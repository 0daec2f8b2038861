//! Placement as a table: relays, what the client and machine tell, and what must be chosen.

use std::collections::BTreeMap;

use cluster::heartbeat::{Load, RelayState};
use geo::{Coordinates, PreviousRegion, Region, RegionId, Source};

use super::*;
use crate::error::ApiError;

const NOW: i64 = 1_000_000_000;

fn regions() -> Vec<Region> {
    [("eu", 50.1, 8.7), ("us", 39.0, -77.5), ("ap", 1.35, 103.8)]
        .into_iter()
        .map(|(id, lat, lon)| Region { id: RegionId::new(id), location: Coordinates::new(lat, lon).unwrap() })
        .collect()
}

/// A relay: `spec` is `id@region`, serving, heard from now, at `utilisation`.
fn relay(spec: &str, utilisation: f64) -> RelayRow {
    let (id, region) = spec.split_once('@').unwrap();
    RelayRow {
        id: id.into(),
        region: region.into(),
        version: "test".into(),
        public_host: format!("{id}.example.net"),
        turn_udp_port: 3478,
        turn_tls_port: None,
        sfu_url: None,
        link_port: None,
        link_rtts: BTreeMap::new(),
        links: Vec::new(),
        state: RelayState::Serving,
        admin_state: RelayState::Serving,
        load: Load { allocations: 0, max_allocations: 0, cpu: 0.0, bandwidth_bps: 0, bandwidth_cap_bps: 0 },
        utilisation,
        started_at: 0,
        first_seen_ms: 0,
        last_seen_ms: NOW,
    }
}

/// A relay holding `allocations` of its `capacity`.
fn holding(mut r: RelayRow, allocations: u64, capacity: u64) -> RelayRow {
    r.load.allocations = allocations;
    r.load.max_allocations = capacity;
    r.utilisation = r.load.utilisation();
    r
}

fn draining(mut r: RelayRow) -> RelayRow {
    r.state = RelayState::Draining;
    r
}

fn drained_by_admin(mut r: RelayRow) -> RelayRow {
    r.admin_state = RelayState::Draining;
    r
}

fn dead(mut r: RelayRow) -> RelayRow {
    r.last_seen_ms = NOW - cluster::heartbeat::DEAD_AFTER.as_millis() as i64 - 1;
    r
}

/// Probes of `ms` to each named region (five samples, the first a warm-up).
fn probes(list: &[(&str, f64)]) -> PlacementRequest {
    PlacementRequest {
        probes: list.iter().map(|(r, ms)| ((*r).to_owned(), vec![Some(*ms); 5])).collect(),
        previous: None,
    }
}

fn machine(rtts: &[(&str, f64)], at: Option<(f64, f64)>) -> MachineRow {
    MachineRow {
        id: "m1".into(),
        name: "m1".into(),
        lat: at.map(|a| a.0),
        lon: at.map(|a| a.1),
        rtts: rtts.iter().map(|(r, ms)| ((*r).to_owned(), *ms)).collect::<BTreeMap<_, _>>(),
        registered_ms: 0,
        last_seen_ms: NOW,
    }
}

struct Case {
    name: &'static str,
    relays: Vec<RelayRow>,
    request: PlacementRequest,
    machine: Option<MachineRow>,
    alternates: usize,
    /// The relay chosen, its source and the alternates' relays; or the error's status.
    want: Result<(&'static str, Source, &'static [&'static str]), u16>,
}

fn run(case: &Case) -> Result<(String, Source, Vec<String>), u16> {
    let regions = regions();
    let default_region = RegionId::new("eu");
    let input = PlacementInput {
        regions: &regions,
        relays: &case.relays,
        now_ms: NOW,
        request: &case.request,
        client_location: None,
        machine: case.machine.as_ref(),
        default_region: &default_region,
        alternates: case.alternates,
    };
    decide(&input)
        .map(|p| (p.relay.id, p.selection.source, p.alternates.into_iter().map(|r| r.id).collect()))
        .map_err(|e| e.status().as_u16())
}

#[test]
fn placement_table() {
    let cases = [
        Case {
            name: "the region the probes favour, its least loaded relay",
            relays: vec![relay("eu1@eu", 0.1), relay("us1@us", 0.5), relay("us2@us", 0.2)],
            request: probes(&[("eu", 120.0), ("us", 20.0)]),
            machine: None,
            alternates: 2,
            want: Ok(("us2", Source::Probes, &["eu1"])),
        },
        Case {
            name: "equal load: the smaller id, so the choice is stable",
            relays: vec![relay("us-b@us", 0.3), relay("us-a@us", 0.3)],
            request: probes(&[("us", 20.0)]),
            machine: None,
            alternates: 2,
            want: Ok(("us-a", Source::Probes, &[])),
        },
        Case {
            name: "draining, drained and dead relays take no sessions",
            relays: vec![
                draining(relay("us1@us", 0.0)),
                drained_by_admin(relay("us2@us", 0.0)),
                dead(relay("us3@us", 0.0)),
                relay("us4@us", 0.3),
                relay("eu1@eu", 0.0),
            ],
            request: probes(&[("us", 20.0), ("eu", 100.0)]),
            machine: None,
            alternates: 2,
            want: Ok(("us4", Source::Probes, &["eu1"])),
        },
        Case {
            name: "a region with only draining relays is not chosen, whatever the probes say",
            relays: vec![draining(relay("us1@us", 0.0)), relay("eu1@eu", 0.0)],
            request: probes(&[("us", 5.0), ("eu", 150.0)]),
            machine: None,
            alternates: 2,
            want: Ok(("eu1", Source::Probes, &[])),
        },
        Case {
            name: "a relay at its allocation capacity takes no sessions; its region's other relay does",
            relays: vec![
                holding(relay("us1@us", 0.0), 990, 1000),
                holding(relay("us2@us", 0.0), 500, 1000),
                relay("eu1@eu", 0.0),
            ],
            request: probes(&[("us", 20.0), ("eu", 100.0)]),
            machine: None,
            alternates: 2,
            want: Ok(("us2", Source::Probes, &["eu1"])),
        },
        Case {
            name: "a region whose relays are all full is passed over for the next region",
            relays: vec![
                holding(relay("us1@us", 0.0), 1000, 1000),
                holding(relay("us2@us", 0.0), 980, 1000),
                relay("eu1@eu", 0.0),
            ],
            request: probes(&[("us", 20.0), ("eu", 100.0)]),
            machine: None,
            alternates: 2,
            want: Ok(("eu1", Source::Probes, &[])),
        },
        Case {
            name: "every serving relay full: 503",
            relays: vec![holding(relay("us1@us", 0.0), 1000, 1000), draining(relay("eu1@eu", 0.0))],
            request: probes(&[("us", 20.0), ("eu", 100.0)]),
            machine: None,
            alternates: 2,
            want: Err(503),
        },
        Case {
            name: "nothing known of client or machine: the default region",
            relays: vec![relay("us1@us", 0.0), relay("eu1@eu", 0.5)],
            request: PlacementRequest::default(),
            machine: None,
            alternates: 2,
            want: Ok(("eu1", Source::Default, &["us1"])),
        },
        Case {
            name: "nothing known of the client: the region nearest the machine",
            relays: vec![relay("us1@us", 0.0), relay("eu1@eu", 0.0), relay("ap1@ap", 0.0)],
            request: PlacementRequest::default(),
            machine: Some(machine(&[("ap", 3.0), ("eu", 160.0), ("mars", 1.0)], None)),
            alternates: 1,
            want: Ok(("ap1", Source::MachineNearest, &["eu1"])),
        },
        Case {
            name: "alternates are capped",
            relays: vec![relay("us1@us", 0.0), relay("eu1@eu", 0.0), relay("ap1@ap", 0.0)],
            request: probes(&[("us", 10.0), ("eu", 80.0), ("ap", 200.0)]),
            machine: None,
            alternates: 0,
            want: Ok(("us1", Source::Probes, &[])),
        },
        Case {
            name: "no relay serving anywhere: 503",
            relays: vec![dead(relay("us1@us", 0.0)), draining(relay("eu1@eu", 0.0))],
            request: probes(&[("us", 10.0)]),
            machine: None,
            alternates: 2,
            want: Err(503),
        },
        Case {
            name: "probes to a region signaling does not have: 400",
            relays: vec![relay("us1@us", 0.0)],
            request: probes(&[("mars", 10.0)]),
            machine: None,
            alternates: 2,
            want: Err(400),
        },
        Case {
            name: "a probe that is not a round-trip time: 400",
            relays: vec![relay("us1@us", 0.0)],
            request: PlacementRequest { probes: [("us".to_owned(), vec![Some(-5.0)])].into(), previous: None },
            machine: None,
            alternates: 2,
            want: Err(400),
        },
        Case {
            name: "a previous region with an impossible score: 400",
            relays: vec![relay("us1@us", 0.0)],
            request: PlacementRequest {
                probes: BTreeMap::new(),
                previous: Some(PreviousRegion { region: RegionId::new("us"), score_ms: f64::NAN }),
            },
            machine: None,
            alternates: 2,
            want: Err(400),
        },
    ];
    for case in &cases {
        let got = run(case);
        let want = case.want.map(|(relay, source, alts)| {
            (relay.to_owned(), source, alts.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
        });
        assert_eq!(got, want, "{}", case.name);
    }
}

#[test]
fn the_selection_says_which_relays_were_passed_over_and_why() {
    let regions = regions();
    let default_region = RegionId::new("eu");
    let request = probes(&[("us", 20.0), ("eu", 100.0)]);
    let place = |relays: &[RelayRow]| {
        decide(&PlacementInput {
            regions: &regions,
            relays,
            now_ms: NOW,
            request: &request,
            client_location: None,
            machine: None,
            default_region: &default_region,
            alternates: 2,
        })
    };
    // 1,000 allocations of capacity: full from 980 on (2%).
    let full = |allocations| holding(relay("us1@us", 0.0), allocations, 1000);
    let reasons = |p: &Placement| p.passed_over.iter().map(|o| (o.relay.clone(), o.reason)).collect::<Vec<_>>();

    // One relay of us full: us is still chosen, at the other relay; the full one is named.
    let p = place(&[full(990), relay("us2@us", 0.3), draining(relay("eu2@eu", 0.0)), relay("eu1@eu", 0.0)]).unwrap();
    assert_eq!((p.relay.id.as_str(), p.selection.region.as_str()), ("us2", "us"));
    assert_eq!(
        reasons(&p),
        [("us1".to_owned(), PassedOverReason::Full), ("eu2".to_owned(), PassedOverReason::Draining)]
    );
    assert_eq!((p.passed_over[0].allocations, p.passed_over[0].capacity), (990, 1000));
    let us = p.selection.scores.iter().find(|s| s.region.as_str() == "us").unwrap();
    assert!(us.eligible && us.excluded_reason.is_none());

    // Both full: eu, and us's score says why.
    let p = place(&[full(1000), holding(relay("us2@us", 0.0), 985, 1000), relay("eu1@eu", 0.0)]).unwrap();
    assert_eq!(p.relay.id, "eu1");
    let us = p.selection.scores.iter().find(|s| s.region.as_str() == "us").unwrap();
    assert_eq!((us.eligible, us.excluded_reason), (false, Some(geo::ExcludedReason::Full)));
    assert_eq!(reasons(&p).len(), 2);

    // Below the margin, nobody is passed over.
    let p = place(&[full(500), relay("eu1@eu", 0.0)]).unwrap();
    assert_eq!((p.relay.id.as_str(), p.passed_over.len()), ("us1", 0));

    // None with room anywhere: 503, saying so.
    let Err(e) = place(&[full(1000)]) else { panic!("placed on a full relay") };
    assert_eq!(e.status().as_u16(), 503);
    assert!(format!("{e}").contains("allocation capacity"), "{e}");
}

#[test]
fn the_same_input_gives_the_same_answer() {
    let relays = vec![relay("us1@us", 0.2), relay("us2@us", 0.2), relay("eu1@eu", 0.1)];
    let case = Case {
        name: "",
        relays,
        request: probes(&[("us", 30.0), ("eu", 31.0)]),
        machine: None,
        alternates: 2,
        want: Err(0),
    };
    let first = run(&case);
    assert!(first.is_ok());
    for _ in 0..10 {
        assert_eq!(run(&case), first);
    }
    // ApiError is what handlers return; its status is what the client sees.
    assert_eq!(ApiError::bad("x").status().as_u16(), 400);
}

/// An SFU relay with a link endpoint and the link RTTs it reports.
fn sfu_relay(spec: &str, link_rtts: &[(&str, f64)]) -> RelayRow {
    let mut r = relay(spec, 0.1);
    r.sfu_url = Some(format!("https://{}", r.public_host));
    r.link_port = Some(4433);
    r.link_rtts = link_rtts.iter().map(|(id, ms)| ((*id).to_owned(), *ms)).collect();
    r
}

#[test]
fn a_far_player_watches_at_its_own_region_relay_when_the_linked_path_is_shorter() {
    // The machine is homed in eu; the player is in ap, 250 ms from eu's relay, 20 ms from ap's.
    let far = probes(&[("ap", 20.0), ("eu", 250.0)]);
    let near = probes(&[("ap", 20.0), ("eu", 30.0)]);
    let home = sfu_relay("eu1@eu", &[("ap1", 160.0)]);
    // Name, home relay, the player's region's relay, probes, where the player watches, the
    // linked path's length.
    type Case = (&'static str, RelayRow, RelayRow, PlacementRequest, &'static str, Option<f64>);
    let cases: Vec<Case> = vec![
        (
            "far player, short link: 20 + 160 + 1 < 250",
            home.clone(),
            sfu_relay("ap1@ap", &[]),
            far.clone(),
            "ap1",
            Some(181.0),
        ),
        (
            "the smaller of the two relays' reports counts",
            sfu_relay("eu1@eu", &[("ap1", 300.0)]),
            sfu_relay("ap1@ap", &[("eu1", 150.0)]),
            far.clone(),
            "ap1",
            Some(171.0),
        ),
        (
            "far player, long link: 20 + 240 + 1 > 250",
            sfu_relay("eu1@eu", &[("ap1", 240.0)]),
            sfu_relay("ap1@ap", &[]),
            far.clone(),
            "eu1",
            Some(261.0),
        ),
        (
            "a player near the home relay watches there",
            home.clone(),
            sfu_relay("ap1@ap", &[]),
            near,
            "eu1",
            Some(181.0),
        ),
        ("no link RTT known: home", sfu_relay("eu1@eu", &[]), sfu_relay("ap1@ap", &[]), far.clone(), "eu1", None),
        (
            "no probe of the home region: home",
            home.clone(),
            sfu_relay("ap1@ap", &[]),
            probes(&[("ap", 20.0)]),
            "eu1",
            Some(181.0),
        ),
        ("a candidate without an SFU: home", home.clone(), relay("ap1@ap", 0.1), far.clone(), "eu1", None),
        ("the candidate is the home relay", home.clone(), home.clone(), far.clone(), "eu1", None),
    ];
    for (name, home, candidate, request, want, linked_ms) in &cases {
        let path = sfu_viewer_path(home, candidate, request);
        assert_eq!(path.relay.id, *want, "{name}");
        assert_eq!(path.linked, *want != home.id, "{name}");
        assert_eq!(path.linked_ms, *linked_ms, "{name}");
    }
    // Without links on the home relay, never linked.
    let mut no_links = home.clone();
    no_links.link_port = None;
    assert!(!sfu_viewer_path(&no_links, &sfu_relay("ap1@ap", &[("eu1", 10.0)]), &far).linked);
}
