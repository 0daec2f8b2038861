//! Machines: registration, heartbeat (with the live session and where to publish), and the list
//! players choose from.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use cluster::media::MediaRole;
use serde::Deserialize;
use signaling_api::machines::{HeartbeatReply, MachineInfo, MachineList, Publish, Registered};
use tracing::info;

use super::extract::{Bearer, Body};
use super::sessions::media_token;
use crate::auth::Role;
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, now_ms};
use crate::store::{MachineRow, SessionFilter};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegisterMachine {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lon: Option<f64>,
    #[serde(default)]
    rtts: BTreeMap<String, f64>,
}

fn check_rtts(state: &AppState, rtts: &BTreeMap<String, f64>) -> ApiResult<()> {
    for (region, ms) in rtts {
        if !state.config.regions.iter().any(|r| r.id.as_str() == region) {
            return Err(ApiError::bad(format!("rtts: unknown region {region:?}")));
        }
        if !ms.is_finite() || !(0.0..=10_000.0).contains(ms) {
            return Err(ApiError::bad(format!("rtts.{region}: {ms} is not a round-trip time in ms (0-10000)")));
        }
    }
    Ok(())
}

pub(super) async fn register_machine(
    State(state): State<AppState>,
    bearer: Bearer,
    Body(req): Body<RegisterMachine>,
) -> ApiResult<Json<Registered>> {
    let claims = bearer.require(&[Role::Machine])?;
    check_rtts(&state, &req.rtts)?;
    if let (Some(lat), Some(lon)) = (req.lat, req.lon) {
        geo::Coordinates::new(lat, lon).map_err(|e| ApiError::bad(format!("lat/lon: {e}")))?;
    } else if req.lat.is_some() || req.lon.is_some() {
        return Err(ApiError::bad("lat and lon go together"));
    }
    let name = req.name.unwrap_or_else(|| claims.sub.clone());
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::bad("name: must be 1-200 characters"));
    }
    let now = now_ms();
    let row = MachineRow {
        id: claims.sub.clone(),
        name,
        lat: req.lat,
        lon: req.lon,
        rtts: req.rtts,
        registered_ms: now,
        last_seen_ms: now,
    };
    state.store.register_machine(&row).await?;
    info!(machine = %row.id, "machine registered");
    Ok(Json(Registered { machine_id: row.id, heartbeat_secs: state.config.machine_heartbeat.as_secs() }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MachineHeartbeat {
    #[serde(default)]
    rtts: Option<BTreeMap<String, f64>>,
}

pub(super) async fn machine_heartbeat(
    State(state): State<AppState>,
    bearer: Bearer,
    Body(req): Body<MachineHeartbeat>,
) -> ApiResult<Json<HeartbeatReply>> {
    let claims = bearer.require(&[Role::Machine])?;
    if let Some(rtts) = &req.rtts {
        check_rtts(&state, rtts)?;
    }
    if !state.store.machine_heartbeat(&claims.sub, req.rtts.as_ref(), now_ms()).await? {
        return Err(ApiError::not_found("machine is not registered; POST /v1/machines/register first"));
    }
    let mut live = state
        .store
        .sessions(&SessionFilter {
            machine: Some(claims.sub.clone()),
            live: Some(true),
            limit: 1,
            ..Default::default()
        })
        .await?;
    // In an sfu session the machine publishes: where, and with what token.
    let session = live.pop();
    let mut sfu = None;
    if let Some(s) = &session
        && let Some(base) = s.scores["sfu"]["url"].as_str()
    {
        let token = media_token(&state, &claims.sub, &claims.sub, Some(&s.id), MediaRole::Publisher, None).await?;
        let relay = s.scores["sfu"]["relay"].as_str().unwrap_or_default().to_owned();
        sfu = Some(Publish { relay, whip_url: format!("{base}/whip/{}", claims.sub), token });
    }
    Ok(Json(HeartbeatReply { heartbeat_secs: state.config.machine_heartbeat.as_secs(), session, sfu }))
}

fn machine_status(state: &AppState, m: &MachineRow, session: &Option<String>, now: i64) -> &'static str {
    if now - m.last_seen_ms > state.config.machine_offline_after.as_millis() as i64 {
        "offline"
    } else if session.is_some() {
        "in_session"
    } else {
        "available"
    }
}

pub(super) async fn list_machines(State(state): State<AppState>, bearer: Bearer) -> ApiResult<Json<MachineList>> {
    bearer.require(&[Role::Player])?;
    let now = now_ms();
    let machines = state
        .store
        .machines()
        .await?
        .into_iter()
        .map(|(m, session)| MachineInfo {
            status: machine_status(&state, &m, &session, now).into(),
            seen_ago_ms: now - m.last_seen_ms,
            // Only admins see who plays.
            session_id: bearer.is_admin().then_some(session),
            id: m.id,
            name: m.name,
            last_seen_ms: m.last_seen_ms,
            rtts: m.rtts,
        })
        .collect();
    Ok(Json(MachineList { machines }))
}
