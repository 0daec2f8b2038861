//! Operations: health, metrics, status, TURN secret rotation and token minting.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use signaling_api::admin::{Health, RelayCounts, Rotated, SecretCounts, SessionCounts, Status, TokenIssued};
use tracing::info;

use super::extract::{Bearer, Body};
use crate::auth::{Role, valid_subject};
use crate::error::{ApiError, ApiResult};
use crate::placement::{self};
use crate::state::{AppState, now_ms, now_unix};

pub(super) async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(Health { status: "ok".into(), store: state.store.kind().into() }).into_response(),
        Err(e) => ApiError::Unavailable(format!("store unreachable: {e}")).into_response(),
    }
}

pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], state.metrics.render())
}

pub(super) async fn status(State(state): State<AppState>, bearer: Bearer) -> ApiResult<Json<Status>> {
    bearer.require(&[])?;
    let now = now_ms();
    let relays = state.store.relays().await?;
    let (machines, live, total) = state.store.counts().await?;
    let count = |s: &str| relays.iter().filter(|r| placement::relay_status(r, now) == s).count();
    let secrets = state.store.live_secrets(now).await?;
    Ok(Json(Status {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: state.started.elapsed().as_secs(),
        store: state.store.kind().into(),
        regions: state.config.regions.len(),
        relays: RelayCounts { serving: count("serving"), draining: count("draining"), dead: count("dead") },
        machines,
        sessions: SessionCounts { live, total },
        secrets: SecretCounts { newest: secrets.version >> 8, live: secrets.keys.len() },
    }))
}

pub(super) async fn rotate_keys(State(state): State<AppState>, bearer: Bearer) -> ApiResult<Json<Rotated>> {
    bearer.require(&[])?;
    // Old secrets stay accepted while credentials they signed may still allocate, plus margin
    // for clock skew and heartbeat propagation.
    let keep_ms = (state.config.credential_ttl.as_millis() + 5 * 60 * 1000) as i64;
    let version = state.store.rotate_secret(now_ms(), keep_ms).await?;
    info!(version, by = %bearer.0.sub, "TURN secret rotated");
    let secrets = state.store.live_secrets(now_ms()).await?;
    Ok(Json(Rotated { version, live_secrets: secrets.keys.len(), previous_retire_after_secs: keep_ms / 1000 }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MintToken {
    sub: String,
    role: Role,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

pub(super) async fn mint_token(
    State(state): State<AppState>,
    bearer: Bearer,
    Body(req): Body<MintToken>,
) -> ApiResult<Json<TokenIssued>> {
    bearer.require(&[])?;
    let ttl = req.ttl_secs.unwrap_or(3600);
    if !(1..=366 * 86_400).contains(&ttl) {
        return Err(ApiError::bad("ttl_secs: must be 1 to 31622400"));
    }
    if !valid_subject(&req.sub) {
        return Err(ApiError::bad("sub: 1-128 printable ASCII characters without ':'"));
    }
    let now = now_unix();
    let token = state.keys.mint(&req.sub, req.role, now, ttl)?;
    Ok(Json(TokenIssued { token, sub: req.sub, role: req.role, expires_at: now + ttl }))
}
