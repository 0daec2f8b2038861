//! Regions and ICE: the regions with their probe targets, and an ICE configuration for the
//! best region of a player's whole path.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use signaling_api::ice::IceConfig;
use signaling_api::regions::{ProbePolicy, ProbeTarget, RegionInfo, RegionList};

use super::extract::{Bearer, Body};
use crate::auth::Role;
use crate::error::{ApiError, ApiResult};
use crate::placement::{self, PlacementRequest};
use crate::state::{AppState, now_ms};

/// How clients should probe (Photon's pinger: 5 attempts, 800 ms each, in parallel; the first
/// sample is warm-up).
fn probe_policy() -> ProbePolicy {
    ProbePolicy { attempts: 5, timeout_ms: 800, discard_first: true, parallel: true }
}

pub(super) async fn regions(State(state): State<AppState>) -> ApiResult<Json<RegionList>> {
    let now = now_ms();
    let relays = state.store.relays().await?;
    let regions = state
        .config
        .regions
        .iter()
        .map(|region| {
            let mut live: Vec<_> =
                relays.iter().filter(|r| r.region == region.id.as_str() && placement::takes_sessions(r, now)).collect();
            live.sort_by(|a, b| a.utilisation.total_cmp(&b.utilisation).then(a.id.cmp(&b.id)));
            let targets: Vec<ProbeTarget> = live
                .iter()
                .map(|r| {
                    let host = if r.public_host.contains(':') {
                        format!("[{}]", r.public_host)
                    } else {
                        r.public_host.clone()
                    };
                    ProbeTarget {
                        relay: r.id.clone(),
                        url: format!("stun:{host}:{}", r.turn_udp_port),
                        host: r.public_host.clone(),
                        port: r.turn_udp_port,
                    }
                })
                .collect();
            RegionInfo {
                id: region.id.to_string(),
                lat: region.location.lat(),
                lon: region.location.lon(),
                available: !targets.is_empty(),
                probe_targets: targets,
            }
        })
        .collect();
    Ok(Json(RegionList { regions, probe: probe_policy() }))
}

pub(super) async fn ice_config(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    bearer: Bearer,
    Body(req): Body<IceConfigRequest>,
) -> ApiResult<Json<IceConfig>> {
    let claims = bearer.require(&[Role::Player])?.clone();
    let machine = match &req.machine_id {
        Some(id) => {
            Some(state.store.machine(id).await?.ok_or_else(|| ApiError::not_found(format!("no machine {id:?}")))?)
        }
        None => None,
    };
    let placement = placement::place(&state, &req.placement, state.client_ip(peer, &headers), machine.as_ref()).await?;
    Ok(Json(placement::ice_config(&state, &placement, &claims.sub).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IceConfigRequest {
    #[serde(default)]
    machine_id: Option<String>,
    #[serde(flatten)]
    placement: PlacementRequest,
}
