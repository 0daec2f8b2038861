//! Relays: their heartbeat (registration, load, commands, secrets and ended sessions) and the
//! admin's view of the registry: list, drain, undrain, remove.

use axum::Json;
use axum::extract::State;
use cluster::heartbeat::{Command, Heartbeat, HeartbeatReply, LinkPeer, RelayState};
use signaling_api::relays::{AdminStateChanged, RelayInfo, RelayList, RelayRemoved};
use tracing::info;

use super::extract::{Bearer, Body, PathParam, RelayAuth};
use crate::error::{ApiError, ApiResult};
use crate::placement::{self};
use crate::state::{AppState, now_ms};
use cluster::ids::valid_relay_id;

/// At most this many ended sessions in a heartbeat reply (the newest): a relay refuses their
/// media tokens.
const MAX_ENDED_SESSIONS: i64 = 10_000;
/// At most this many link RTTs in a heartbeat (one per other relay; a cluster has a handful).
const MAX_LINK_RTTS: usize = 256;

/// `host:port` of a relay's link endpoint (an IPv6 literal in brackets).
pub(crate) fn host_port(host: &str, port: u16) -> String {
    format!("{}:{port}", placement::url_host(host))
}

pub(super) async fn relay_heartbeat(
    State(state): State<AppState>,
    _: RelayAuth,
    Body(hb): Body<Heartbeat>,
) -> ApiResult<Json<HeartbeatReply>> {
    if !valid_relay_id(&hb.relay_id) {
        return Err(ApiError::bad("relay_id: must be 1-64 of a-z, 0-9, . and -"));
    }
    if !state.config.regions.iter().any(|r| r.id.as_str() == hb.region) {
        return Err(ApiError::bad(format!("region: {:?} is not one of signaling's regions", hb.region)));
    }
    if hb.public_host.is_empty() || hb.public_host.len() > 253 || hb.public_host.contains(['/', ' ', '?', '#', '@']) {
        return Err(ApiError::bad("public_host: must be a host name or IP address"));
    }
    if let Some(url) = &hb.sfu_url
        && !valid_sfu_url(url)
    {
        return Err(ApiError::bad("sfu_url: must be an http or https URL without query or fragment"));
    }
    if hb.link_port == Some(0) {
        return Err(ApiError::bad("link_port: must be a port (1-65535)"));
    }
    if hb.link_rtts.len() > MAX_LINK_RTTS
        || hb.link_rtts.iter().any(|(id, ms)| !cluster::ids::valid_relay_id(id) || !ms.is_finite() || *ms < 0.0)
    {
        return Err(ApiError::bad(format!(
            "link_rtts: at most {MAX_LINK_RTTS} relay ids, each with a finite, non-negative RTT in ms"
        )));
    }
    if let Err(e) = valid_link_reports(&hb.links) {
        return Err(ApiError::bad(format!("links: {e}")));
    }
    if hb.turn_udp_port == 0 || hb.version.len() > 64 || !hb.load.cpu.is_finite() {
        return Err(ApiError::bad("turn_udp_port, version or load is out of range"));
    }
    let now = now_ms();
    let before = state.store.relay(&hb.relay_id).await?;
    let row = state.store.relay_heartbeat(&hb, now).await?;
    match &before {
        None => info!(relay = %hb.relay_id, region = %hb.region, host = %hb.public_host, "relay registered"),
        Some(b) if !placement::is_live(b, now) => info!(relay = %hb.relay_id, "relay back in rotation"),
        _ => {}
    }
    state.metrics.heartbeats.with_label_values(&[&hb.region]).inc();
    let mut commands = Vec::new();
    match (row.admin_state, hb.state) {
        (RelayState::Draining, RelayState::Serving) => commands.push(Command::Drain),
        // A relay draining for its own reasons (SIGTERM) ignores Undrain, so this only lifts
        // a drain an admin asked for.
        (RelayState::Serving, RelayState::Draining) => commands.push(Command::Undrain),
        _ => {}
    }
    let secrets = state.store.live_secrets(now).await?;
    // Media tokens are good for the credential TTL: a session ended within it may still have
    // tokens out there, which every relay must refuse (any relay can verify them).
    let ttl_ms = i64::try_from(state.config.credential_ttl.as_millis()).unwrap_or(i64::MAX);
    let ended_sessions = state.store.ended_sfu_sessions(now.saturating_sub(ttl_ms), MAX_ENDED_SESSIONS).await?;
    // Every other live relay that takes links, for the relay to link with.
    let link_peers = state
        .store
        .relays()
        .await?
        .into_iter()
        .filter(|r| r.id != hb.relay_id && placement::is_live(r, now))
        .filter_map(|r| r.link_port.map(|port| LinkPeer { link: host_port(&r.public_host, port), id: r.id }))
        .collect();
    Ok(Json(HeartbeatReply {
        commands,
        secrets,
        interval_ms: cluster::heartbeat::INTERVAL.as_millis() as u64,
        ended_sessions,
        link_peers,
    }))
}

pub(super) async fn list_relays(State(state): State<AppState>, bearer: Bearer) -> ApiResult<Json<RelayList>> {
    bearer.require(&[])?;
    let now = now_ms();
    let relays = state
        .store
        .relays()
        .await?
        .into_iter()
        .map(|relay| RelayInfo {
            status: placement::relay_status(&relay, now).into(),
            seen_ago_ms: now - relay.last_seen_ms,
            relay,
        })
        .collect();
    Ok(Json(RelayList { relays }))
}

pub(super) async fn set_admin_state(
    state: &AppState,
    bearer: &Bearer,
    id: &str,
    to: RelayState,
) -> ApiResult<Json<AdminStateChanged>> {
    bearer.require(&[])?;
    if !state.store.set_relay_admin_state(id, to).await? {
        return Err(ApiError::not_found(format!("no relay {id:?}")));
    }
    info!(relay = %id, to = to.as_str(), by = %bearer.0.sub, "relay admin state changed");
    Ok(Json(AdminStateChanged { relay: id.to_owned(), admin_state: to }))
}

/// Forgets a dead relay (decommissioned); a live one would register again with its next
/// heartbeat, so it is refused with 409 (drain it and stop it first).
pub(super) async fn remove_relay(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<RelayRemoved>> {
    bearer.require(&[])?;
    let relay = state.store.relay(&id).await?.ok_or_else(|| ApiError::not_found(format!("no relay {id:?}")))?;
    if placement::is_live(&relay, now_ms()) {
        return Err(ApiError::Conflict(format!("relay {id:?} is live; stop it first (it would register again)")));
    }
    state.store.remove_relay(&id).await?;
    info!(relay = %id, by = %bearer.0.sub, "relay removed");
    Ok(Json(RelayRemoved { relay: id, removed: true }))
}

pub(super) async fn drain_relay(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<AdminStateChanged>> {
    set_admin_state(&state, &bearer, &id, RelayState::Draining).await
}

pub(super) async fn undrain_relay(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<AdminStateChanged>> {
    set_admin_state(&state, &bearer, &id, RelayState::Serving).await
}

/// A relay's link reports: at most [`MAX_LINK_RTTS`], one per peer, each naming a valid relay
/// id, with a finite, non-negative RTT.
fn valid_link_reports(links: &[cluster::heartbeat::LinkReport]) -> Result<(), String> {
    if links.len() > MAX_LINK_RTTS {
        return Err(format!("at most {MAX_LINK_RTTS} links"));
    }
    let mut peers = std::collections::HashSet::new();
    for l in links {
        if !valid_relay_id(&l.peer) {
            return Err("each peer must be a relay id (1-64 of a-z, 0-9, . and -)".into());
        }
        if !peers.insert(l.peer.as_str()) {
            return Err(format!("peer {:?} reported twice", l.peer));
        }
        if l.rtt_ms.is_some_and(|ms| !ms.is_finite() || ms < 0.0) {
            return Err(format!("rtt_ms of peer {:?} must be a finite, non-negative number of ms", l.peer));
        }
    }
    Ok(())
}

/// An SFU relay's base URL must be something a browser can POST to.
fn valid_sfu_url(url: &str) -> bool {
    url.len() <= 512
        && reqwest::Url::parse(url).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.query().is_none()
                && u.fragment().is_none()
        })
}
