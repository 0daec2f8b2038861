//! Placement: from the relay registry and what is known of the player and the machine, choose a
//! region (with `geo::select`, whose module docs state the rule), then a relay within it, and
//! build the ICE configuration with fresh TURN credentials for it and for the alternates.
//!
//! A region's state comes from its relays: **serving** if at least one live relay serves and no
//! admin drained it; **draining** if its live relays all drain; **dead** if none has been heard
//! from within [`cluster::heartbeat::DEAD_AFTER`]; **full** if its serving relays are all within
//! a margin of their allocation capacity ([`cluster::heartbeat::Load::is_full`]: a relay holds
//! one allocation per relay port, and refuses more with 508). Its load is the load of its least
//! loaded serving relay with room, which is the relay a new session would get. Within a region
//! the least loaded serving relay with room wins (ties by id, so the choice is stable). Live
//! relays that take no new session are named, with why, in the selection's `passed_over`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use cluster::heartbeat::{DEAD_AFTER, RelayState};
use geo::{
    Candidate, GeoLocation, Load, PreviousRegion, ProbeSummary, Region, RegionId, RegionState, RegionStatus, Selection,
    SelectionInput,
};
use serde::Deserialize;

use signaling_api::ice::{Alternate, IceConfig, IceServer, PassedOver, PassedOverReason, RelayRef, SelectionSummary};

use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, now_ms, now_unix};
use crate::store::{MachineRow, RelayRow};

/// Whether a relay is live (heard from recently) at `now_ms`.
pub fn is_live(relay: &RelayRow, now_ms: i64) -> bool {
    now_ms - relay.last_seen_ms <= DEAD_AFTER.as_millis() as i64
}

/// Whether a live relay takes new sessions.
pub fn takes_sessions(relay: &RelayRow, now_ms: i64) -> bool {
    is_live(relay, now_ms) && relay.state == RelayState::Serving && relay.admin_state == RelayState::Serving
}

/// Whether a relay has room for a new session's allocations (see the module docs).
pub fn has_room(relay: &RelayRow) -> bool {
    !relay.load.is_full()
}

/// The live relays that take no new session, and why.
fn passed_over(relays: &[RelayRow], now_ms: i64) -> Vec<PassedOver> {
    relays
        .iter()
        .filter(|r| is_live(r, now_ms))
        .filter_map(|r| {
            let reason = if !takes_sessions(r, now_ms) {
                PassedOverReason::Draining
            } else if !has_room(r) {
                PassedOverReason::Full
            } else {
                return None;
            };
            Some(PassedOver {
                relay: r.id.clone(),
                region: r.region.clone(),
                reason,
                allocations: r.load.allocations,
                capacity: r.load.max_allocations,
            })
        })
        .collect()
}

/// The status a relay shows operators: serving, draining or dead.
pub fn relay_status(relay: &RelayRow, now_ms: i64) -> &'static str {
    if !is_live(relay, now_ms) {
        "dead"
    } else if takes_sessions(relay, now_ms) {
        "serving"
    } else {
        "draining"
    }
}

/// The best relay of each region for a new session.
fn best_relays(relays: &[RelayRow], now_ms: i64) -> BTreeMap<String, &RelayRow> {
    let mut best: BTreeMap<String, &RelayRow> = BTreeMap::new();
    for r in relays.iter().filter(|r| takes_sessions(r, now_ms) && has_room(r)) {
        let better = match best.get(&r.region) {
            None => true,
            Some(b) => (r.utilisation, &r.id) < (b.utilisation, &b.id),
        };
        if better {
            best.insert(r.region.clone(), r);
        }
    }
    best
}

fn region_statuses(regions: &[Region], relays: &[RelayRow], now_ms: i64) -> Vec<Candidate> {
    let best = best_relays(relays, now_ms);
    regions
        .iter()
        .map(|region| {
            let (st, load) = match best.get(region.id.as_str()) {
                Some(r) => (RegionState::Serving, r.utilisation),
                None if relays.iter().any(|r| r.region == region.id.as_str() && takes_sessions(r, now_ms)) => {
                    (RegionState::Full, 1.0)
                }
                None if relays.iter().any(|r| r.region == region.id.as_str() && is_live(r, now_ms)) => {
                    (RegionState::Draining, 0.0)
                }
                None => (RegionState::Dead, 0.0),
            };
            // Utilisation is clamped to 0..=1 by the relay's Load; anything else counts as full.
            let load = Load::new(load).unwrap_or_else(|_| Load::new(1.0).expect("1.0 is a valid load"));
            Candidate { region: region.clone(), status: RegionStatus { region: region.id.clone(), state: st, load } }
        })
        .collect()
}

/// What a client tells us for placement (part of the ICE-config and session requests).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementRequest {
    /// RTT samples to each region's probe target, in ms, `null` for a timeout, in the order
    /// taken (the first is discarded as warm-up when there are at least three).
    #[serde(default)]
    pub probes: BTreeMap<String, Vec<Option<f64>>>,
    /// The region and score of the client's previous session, for stickiness.
    #[serde(default)]
    pub previous: Option<PreviousRegion>,
}

/// A chosen relay and what decided it.
pub struct Placement {
    pub selection: Selection,
    /// Live relays that took no new session, and why.
    pub passed_over: Vec<PassedOver>,
    pub relay: RelayRow,
    /// Alternates' relays, best first.
    pub alternates: Vec<RelayRow>,
}

/// Everything placement decides from. Placement itself ([`decide`]) reads no store, clock or
/// GeoIP database and counts nothing; [`place`] gathers this and records the outcome.
pub struct PlacementInput<'a> {
    /// Signaling's regions (`[[regions]]`).
    pub regions: &'a [Region],
    /// The relay registry.
    pub relays: &'a [RelayRow],
    pub now_ms: i64,
    pub request: &'a PlacementRequest,
    /// The client's location from its IP, if the GeoIP database knows it.
    pub client_location: Option<GeoLocation>,
    /// The machine to be played, if any.
    pub machine: Option<&'a MachineRow>,
    pub default_region: &'a RegionId,
    /// How many alternates to offer at most.
    pub alternates: usize,
}

/// Chooses a region and relay: `geo::select` over the regions' states (from their relays), the
/// client's probes and location, and the machine's RTTs and location; then the region's least
/// loaded serving relay, and the alternates' relays. Pure: the same input gives the same answer.
pub fn decide(input: &PlacementInput<'_>) -> ApiResult<Placement> {
    let known = |region: &str| input.regions.iter().any(|r| r.id.as_str() == region);
    let mut client_probes: BTreeMap<RegionId, ProbeSummary> = BTreeMap::new();
    for (region, samples) in &input.request.probes {
        if !known(region) {
            return Err(ApiError::bad(format!("probes: unknown region {region:?}")));
        }
        let samples =
            geo::ProbeSamples::new(samples.clone()).map_err(|e| ApiError::bad(format!("probes.{region}: {e}")))?;
        client_probes.insert(RegionId::new(region.as_str()), samples.summarize());
    }
    let (machine_rtts, machine_location) = match input.machine {
        Some(m) => (
            m.rtts.iter().filter(|(r, _)| known(r)).map(|(r, ms)| (RegionId::new(r.as_str()), *ms)).collect(),
            m.lat.zip(m.lon).and_then(|(lat, lon)| geo::Coordinates::new(lat, lon).ok()),
        ),
        None => (BTreeMap::new(), None),
    };
    let selection_input = SelectionInput {
        candidates: region_statuses(input.regions, input.relays, input.now_ms),
        client_probes,
        client_location: input.client_location.clone(),
        machine_rtts,
        machine_location,
        previous: input.request.previous.clone(),
        default_region: input.default_region.clone(),
    };
    let passed_over = passed_over(input.relays, input.now_ms);
    let selection = geo::select(&selection_input, &geo::Policy::default()).map_err(|e| match e {
        geo::SelectError::NoLiveRegion if passed_over.iter().any(|p| p.reason == PassedOverReason::Full) => {
            ApiError::Unavailable("every serving relay is at its allocation capacity".into())
        }
        geo::SelectError::NoLiveRegion => ApiError::Unavailable("no relay is serving in any region".into()),
        geo::SelectError::InvalidPreviousScore(_) => ApiError::bad(format!("previous: {e}")),
        other => ApiError::Internal(anyhow::anyhow!("region selection failed: {other}")),
    })?;
    let best = best_relays(input.relays, input.now_ms);
    let relay = best
        .get(selection.region.as_str())
        .map(|r| (*r).clone())
        .ok_or_else(|| ApiError::Unavailable(format!("no relay is serving in region {}", selection.region)))?;
    let alternates = selection
        .alternates
        .iter()
        .filter_map(|r| best.get(r.as_str()).map(|r| (*r).clone()))
        .take(input.alternates)
        .collect();
    Ok(Placement { selection, passed_over, relay, alternates })
}

/// What a relay link adds to a path beyond the link's own RTT (forwarding at both relays).
pub const LINK_HOP_MS: f64 = 1.0;

/// Where the player of an `sfu` session watches, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewerPath<'a> {
    pub relay: &'a RelayRow,
    /// True when `relay` is not the machine's home relay: it links to the home relay.
    pub linked: bool,
    /// Player → home relay (the client's probes of the home relay's region), ms.
    pub direct_ms: Option<f64>,
    /// Player → its own region's relay → home relay (probes, plus the two relays' link RTT and
    /// [`LINK_HOP_MS`]), ms.
    pub linked_ms: Option<f64>,
}

/// Where the player of an `sfu` session watches: at the machine's `home` relay, or at
/// `candidate` (the relay placement chose for the player's own region) linked to the home
/// relay, whichever path is shorter end to end. The machine's leg (machine → home relay) is on
/// both paths, so the comparison is player → home against player → candidate → home, with the
/// relay-to-relay RTT the two relays measure on their link (either's report; the smaller if
/// both). Without the numbers to compare (no probe of either region, no link RTT), or when the
/// candidate cannot serve (no SFU, no link endpoint, or the home relay has none), the player
/// watches at home. Pure.
pub fn sfu_viewer_path<'a>(home: &'a RelayRow, candidate: &'a RelayRow, request: &PlacementRequest) -> ViewerPath<'a> {
    let probe = |region: &str| {
        let samples = request.probes.get(region)?;
        geo::ProbeSamples::new(samples.clone()).ok()?.summarize().rtt_ms()
    };
    let direct_ms = probe(&home.region);
    let link_ms = [home.link_rtts.get(&candidate.id), candidate.link_rtts.get(&home.id)]
        .into_iter()
        .flatten()
        .copied()
        .min_by(f64::total_cmp);
    let can_link = candidate.id != home.id
        && candidate.sfu_url.is_some()
        && candidate.link_port.is_some()
        && home.link_port.is_some();
    let linked_ms =
        if can_link { probe(&candidate.region).zip(link_ms).map(|(p, l)| p + l + LINK_HOP_MS) } else { None };
    let linked = matches!((direct_ms, linked_ms), (Some(d), Some(l)) if l < d);
    ViewerPath { relay: if linked { candidate } else { home }, linked, direct_ms, linked_ms }
}

/// Chooses a region and relay for a client at `client_ip`, optionally to play `machine`: reads
/// the registry, the clock and the GeoIP database, [`decide`]s, and counts the selection.
pub async fn place(
    state: &AppState,
    req: &PlacementRequest,
    client_ip: IpAddr,
    machine: Option<&MachineRow>,
) -> ApiResult<Placement> {
    let relays = state.store.relays().await?;
    let placement = decide(&PlacementInput {
        regions: &state.config.regions,
        relays: &relays,
        now_ms: now_ms(),
        request: req,
        client_location: state.geoip.as_ref().and_then(|g| g.lookup(client_ip)),
        machine,
        default_region: &state.config.default_region,
        alternates: state.config.alternates,
    })?;
    state.metrics.selections.with_label_values(&[placement.selection.source.as_str()]).inc();
    Ok(placement)
}

/// The host part of a TURN URL (IPv6 literals in brackets).
pub(crate) fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() }
}

/// One `RTCIceServer` for `relay` with a fresh credential tagged with `id`.
pub fn ice_server(state: &AppState, relay: &RelayRow, secret: &str, id: &str) -> ApiResult<IceServer> {
    let cred =
        cluster::credentials::mint(secret.as_bytes(), now_unix(), state.config.credential_ttl.as_secs(), Some(id))
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("minting a TURN credential: {e}")))?;
    let host = url_host(&relay.public_host);
    let mut urls = vec![format!("turn:{host}:{}?transport=udp", relay.turn_udp_port)];
    if state.config.offer_tls
        && let Some(tls) = relay.turn_tls_port
    {
        urls.push(format!("turns:{host}:{tls}?transport=tcp"));
    }
    state.metrics.credentials_minted.with_label_values(&[&relay.region]).inc();
    Ok(IceServer { urls, username: cred.username, credential: cred.credential })
}

/// Which relay an ICE configuration is for.
pub fn relay_ref(relay: &RelayRow) -> RelayRef {
    RelayRef { id: relay.id.clone(), region: relay.region.clone(), host: relay.public_host.clone() }
}

/// The newest TURN REST secret: what credentials and media tokens are signed with (every relay
/// holds it from its heartbeat replies).
pub async fn signing_secret(state: &AppState) -> ApiResult<String> {
    let secrets = state.store.live_secrets(now_ms()).await?;
    secrets.keys.into_iter().next().ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no TURN secret in the store")))
}

/// The ICE configuration: an `RTCConfiguration` (its `iceServers`, `iceTransportPolicy` and
/// `bundlePolicy` go straight into `new RTCPeerConnection(...)`, which ignores the other members)
/// plus what decided it and pre-minted alternates for failover without another request.
pub async fn ice_config(state: &AppState, placement: &Placement, id: &str) -> ApiResult<IceConfig> {
    let secret = &signing_secret(state).await?;
    let _ttl = state.config.credential_ttl.as_secs();
    let relay = &placement.relay;
    let alternates = placement
        .alternates
        .iter()
        .map(|r| {
            Ok(Alternate {
                region: r.region.clone(),
                relay: relay_ref(r),
                ice_servers: vec![ice_server(state, r, secret, id)?],
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let s = &placement.selection;
    Ok(IceConfig {
        alternates: Some(alternates),
        selection: Some(SelectionSummary {
            source: s.source,
            score_ms: s.score_ms,
            scores: s.scores.clone(),
            passed_over: placement.passed_over.clone(),
        }),
        ..session_ice_config(state, relay, secret, id)?
    })
}

/// The ICE configuration of a session's relay: fresh credentials, without alternates (a
/// session stays on its relay).
pub fn session_ice_config(state: &AppState, relay: &RelayRow, secret: &str, id: &str) -> ApiResult<IceConfig> {
    let ttl = state.config.credential_ttl.as_secs();
    let now = now_unix();
    Ok(IceConfig {
        ice_servers: vec![ice_server(state, relay, secret, id)?],
        ice_transport_policy: "all".into(),
        bundle_policy: "max-bundle".into(),
        region: relay.region.clone(),
        relay: relay_ref(relay),
        ttl,
        expires_at: now + ttl,
        refresh_after: now + ttl * 3 / 4,
        alternates: None,
        selection: None,
    })
}

/// Refreshes the relay gauges from the registry.
pub async fn refresh_gauges(state: &AppState, now_ms: i64) -> anyhow::Result<()> {
    let relays = state.store.relays().await?;
    state.metrics.relays.reset();
    for region in &state.config.regions {
        for st in ["serving", "draining", "dead"] {
            state.metrics.relays.with_label_values(&[region.id.as_str(), st]).set(0);
        }
    }
    for r in &relays {
        if state.config.regions.iter().any(|x| x.id.as_str() == r.region) {
            state.metrics.relays.with_label_values(&[&r.region, relay_status(r, now_ms)]).inc();
        }
    }
    let (_, live, _) = state.store.counts().await?;
    state.metrics.sessions_live.with_label_values(&[] as &[&str]).set(live);
    Ok(())
}

#[cfg(test)]
mod tests;
