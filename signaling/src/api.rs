//! The HTTP API (JSON over HTTP, versioned under `/v1`). Each handler checks the caller's role,
//! validates its input into typed values, and answers 4xx with a JSON error for anything a
//! client got wrong (see [`crate::error`]).
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /v1/relays/heartbeat` | relay (cluster token) | register / report load; get commands and secrets |
//! | `GET /v1/regions` | anyone | regions, their probe targets and the probe policy |
//! | `POST /v1/ice-config` | player | an ICE configuration for the best region |
//! | `POST /v1/machines/register`, `POST /v1/machines/heartbeat` | machine | presence and RTTs to regions |
//! | `GET /v1/machines` | player, admin | machines with status |
//! | `POST /v1/sessions` | player | play a machine: region, relay, scores, ICE config, alternates |
//! | `GET /v1/sessions/{id}` | its player or machine, admin | the session and its event timeline |
//! | `POST /v1/sessions/{id}/connected`, `POST /v1/sessions/{id}/end` | its player or machine, admin | progress and end |
//! | `POST /v1/sessions/{id}/ice-config` | its player or machine | fresh credentials for the session's relay |
//! | `POST /v1/sessions/{id}/watch` | player | WHEP URL and token for an `sfu` session (spectator unless it is the session's player) |
//! | `POST /v1/sessions/{id}/seat` | admin, its player | hand an `sfu` session's seat to a viewer (`{"to": id}`) or to nobody |
//! | `GET /v1/ws` | player, machine | WebSocket: SDP and candidates between the parties (see [`crate::ws`]) |
//! | `GET /v1/sessions` | admin | session history with filters |
//! | `GET /v1/relays`, `POST /v1/relays/{id}/drain`, `/undrain`, `DELETE /v1/relays/{id}` | admin | the registry |
//! | `POST /v1/admin/keys/rotate`, `POST /v1/admin/tokens`, `GET /v1/admin/status` | admin | operations |

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cluster::heartbeat::{Command, Heartbeat, HeartbeatReply, RelayState};
use cluster::media::{MediaClaims, MediaRole};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::info;

use crate::app::{AppState, now_ms, now_unix};
use crate::auth::{Bearer, RelayAuth, Role, valid_subject};
use crate::config::valid_relay_id;
use crate::error::{ApiError, ApiResult};
use crate::placement::{self, PlacementRequest};
use crate::store::{CreateError, MachineRow, RelayRow, SessionFilter, SessionRow, new_id};

/// At most this many ended sessions in a heartbeat reply (the newest): a relay refuses their
/// media tokens.
const MAX_ENDED_SESSIONS: i64 = 10_000;

/// A JSON body whose rejections are API errors.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state).await.map(|Json(v)| Body(v)).map_err(ApiError::from)
    }
}

/// An optional JSON body: empty means `T::default()`.
pub struct OptionalBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE { ApiError::TooLarge } else { ApiError::bad(r.body_text()) }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        serde_json::from_slice(&bytes).map(Self).map_err(|e| ApiError::bad(format!("invalid request: {e}")))
    }
}

/// Path parameters whose rejections are API errors.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state).await.map(|p| PathParam(p.0)).map_err(ApiError::from)
    }
}

/// A query string whose rejections are API errors.
pub struct QueryParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParam(q.0))
            .map_err(ApiError::from)
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(cluster::heartbeat::PATH, post(relay_heartbeat))
        .route("/v1/regions", get(regions))
        .route("/v1/ice-config", post(ice_config))
        .route("/v1/machines", get(list_machines))
        .route("/v1/machines/register", post(register_machine))
        .route("/v1/machines/heartbeat", post(machine_heartbeat))
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route("/v1/sessions/{id}", get(show_session))
        .route("/v1/sessions/{id}/connected", post(session_connected))
        .route("/v1/sessions/{id}/end", post(end_session))
        .route("/v1/sessions/{id}/ice-config", post(session_ice_config))
        .route("/v1/sessions/{id}/watch", post(watch_session))
        .route("/v1/sessions/{id}/seat", post(hand_seat))
        .route("/v1/ws", get(crate::ws::upgrade))
        .route("/v1/relays", get(list_relays))
        .route("/v1/relays/{id}", axum::routing::delete(remove_relay))
        .route("/v1/relays/{id}/drain", post(drain_relay))
        .route("/v1/relays/{id}/undrain", post(undrain_relay))
        .route("/v1/admin/status", get(status))
        .route("/v1/admin/keys/rotate", post(rotate_keys))
        .route("/v1/admin/tokens", post(mint_token))
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({"status": "ok", "store": state.store.kind()})).into_response(),
        Err(e) => ApiError::Unavailable(format!("store unreachable: {e}")).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], state.metrics.render())
}

// ---- relays ----

async fn relay_heartbeat(
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
    Ok(Json(HeartbeatReply {
        commands,
        secrets,
        interval_ms: cluster::heartbeat::INTERVAL.as_millis() as u64,
        ended_sessions,
    }))
}

async fn list_relays(State(state): State<AppState>, bearer: Bearer) -> ApiResult<Json<Value>> {
    bearer.require(&[])?;
    let now = now_ms();
    let relays: Vec<Value> = state
        .store
        .relays()
        .await?
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["status"] = placement::relay_status(r, now).into();
            v["seen_ago_ms"] = (now - r.last_seen_ms).into();
            v
        })
        .collect();
    Ok(Json(json!({ "relays": relays })))
}

async fn set_admin_state(state: &AppState, bearer: &Bearer, id: &str, to: RelayState) -> ApiResult<Json<Value>> {
    bearer.require(&[])?;
    if !state.store.set_relay_admin_state(id, to).await? {
        return Err(ApiError::not_found(format!("no relay {id:?}")));
    }
    info!(relay = %id, to = to.as_str(), by = %bearer.0.sub, "relay admin state changed");
    Ok(Json(json!({ "relay": id, "admin_state": to })))
}

/// Forgets a dead relay (decommissioned); a live one would register again with its next
/// heartbeat, so it is refused with 409 (drain it and stop it first).
async fn remove_relay(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Value>> {
    bearer.require(&[])?;
    let relay = state.store.relay(&id).await?.ok_or_else(|| ApiError::not_found(format!("no relay {id:?}")))?;
    if placement::is_live(&relay, now_ms()) {
        return Err(ApiError::Conflict(format!("relay {id:?} is live; stop it first (it would register again)")));
    }
    state.store.remove_relay(&id).await?;
    info!(relay = %id, by = %bearer.0.sub, "relay removed");
    Ok(Json(json!({ "relay": id, "removed": true })))
}

async fn drain_relay(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Value>> {
    set_admin_state(&state, &bearer, &id, RelayState::Draining).await
}

async fn undrain_relay(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Value>> {
    set_admin_state(&state, &bearer, &id, RelayState::Serving).await
}

// ---- regions and ICE ----

/// How clients should probe (Photon's pinger: 5 attempts, 800 ms each, in parallel; the first
/// sample is warm-up).
fn probe_policy() -> Value {
    json!({ "attempts": 5, "timeout_ms": 800, "discard_first": true, "parallel": true })
}

async fn regions(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let now = now_ms();
    let relays = state.store.relays().await?;
    let regions: Vec<Value> = state
        .config
        .regions
        .iter()
        .map(|region| {
            let mut live: Vec<_> = relays.iter().filter(|r| r.region == region.id.as_str() && placement::takes_sessions(r, now)).collect();
            live.sort_by(|a, b| a.utilisation.total_cmp(&b.utilisation).then(a.id.cmp(&b.id)));
            let targets: Vec<Value> = live
                .iter()
                .map(|r| {
                    let host = if r.public_host.contains(':') { format!("[{}]", r.public_host) } else { r.public_host.clone() };
                    json!({ "relay": r.id, "url": format!("stun:{host}:{}", r.turn_udp_port), "host": r.public_host, "port": r.turn_udp_port })
                })
                .collect();
            json!({
                "id": region.id,
                "lat": region.location.lat(),
                "lon": region.location.lon(),
                "available": !targets.is_empty(),
                "probe_targets": targets,
            })
        })
        .collect();
    Ok(Json(json!({ "regions": regions, "probe": probe_policy() })))
}

async fn ice_config(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    bearer: Bearer,
    Body(req): Body<IceConfigRequest>,
) -> ApiResult<Json<Value>> {
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
struct IceConfigRequest {
    #[serde(default)]
    machine_id: Option<String>,
    #[serde(flatten)]
    placement: PlacementRequest,
}

// ---- machines ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterMachine {
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

async fn register_machine(
    State(state): State<AppState>,
    bearer: Bearer,
    Body(req): Body<RegisterMachine>,
) -> ApiResult<Json<Value>> {
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
    Ok(Json(json!({ "machine_id": row.id, "heartbeat_secs": state.config.machine_heartbeat.as_secs() })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineHeartbeat {
    #[serde(default)]
    rtts: Option<BTreeMap<String, f64>>,
}

async fn machine_heartbeat(
    State(state): State<AppState>,
    bearer: Bearer,
    Body(req): Body<MachineHeartbeat>,
) -> ApiResult<Json<Value>> {
    let claims = bearer.require(&[Role::Machine])?;
    if let Some(rtts) = &req.rtts {
        check_rtts(&state, rtts)?;
    }
    if !state.store.machine_heartbeat(&claims.sub, req.rtts.as_ref(), now_ms()).await? {
        return Err(ApiError::not_found("machine is not registered; POST /v1/machines/register first"));
    }
    let live = state
        .store
        .sessions(&SessionFilter {
            machine: Some(claims.sub.clone()),
            live: Some(true),
            limit: 1,
            ..Default::default()
        })
        .await?;
    // In an sfu session the machine publishes: where, and with what token.
    let mut sfu = Value::Null;
    if let Some(s) = live.first()
        && let Some(base) = s.scores["sfu"]["url"].as_str()
    {
        let token = media_token(&state, &claims.sub, &claims.sub, Some(&s.id), MediaRole::Publisher).await?;
        sfu = json!({ "relay": s.scores["sfu"]["relay"], "whip_url": format!("{base}/whip/{}", claims.sub), "token": token });
    }
    Ok(Json(json!({ "heartbeat_secs": state.config.machine_heartbeat.as_secs(), "session": live.first(), "sfu": sfu })))
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

async fn list_machines(State(state): State<AppState>, bearer: Bearer) -> ApiResult<Json<Value>> {
    bearer.require(&[Role::Player])?;
    let now = now_ms();
    let machines: Vec<Value> = state
        .store
        .machines()
        .await?
        .iter()
        .map(|(m, session)| {
            let mut v = json!({
                "id": m.id, "name": m.name, "status": machine_status(&state, m, session, now),
                "last_seen_ms": m.last_seen_ms, "seen_ago_ms": now - m.last_seen_ms, "rtts": m.rtts,
            });
            if bearer.is_admin() {
                v["session_id"] = json!(session);
            }
            v
        })
        .collect();
    Ok(Json(json!({ "machines": machines })))
}

// ---- sessions ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    machine_id: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(flatten)]
    placement: PlacementRequest,
}

async fn create_session(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    bearer: Bearer,
    Body(req): Body<CreateSession>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let claims = bearer.require(&[Role::Player])?.clone();
    let mode = req.mode.as_deref().unwrap_or("direct");
    if mode != "direct" && mode != "sfu" {
        return Err(ApiError::bad(format!("mode: {mode:?} is not supported (direct, sfu)")));
    }
    let machine = state
        .store
        .machine(&req.machine_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no machine {:?}", req.machine_id)))?;
    let now = now_ms();
    if now - machine.last_seen_ms > state.config.machine_offline_after.as_millis() as i64 {
        return Err(ApiError::Conflict(format!("machine {:?} is offline", machine.id)));
    }
    let client_ip = state.client_ip(peer, &headers);
    let placement = placement::place(&state, &req.placement, client_ip, Some(&machine)).await?;
    let id = new_id("ses");
    let sel = &placement.selection;
    let mut scores = json!({ "score_ms": sel.score_ms, "scores": sel.scores, "alternates": sel.alternates });
    // SFU mode: the machine publishes to its home relay (the SFU relay in the region it reaches
    // fastest); the player watches there, reaching it directly or through its own region's TURN.
    let sfu_relay = if mode == "sfu" {
        let relay = sfu_home(&state, &machine, &placement.relay).await?;
        scores["sfu"] = json!({ "relay": relay.id, "region": relay.region, "url": relay.sfu_url });
        Some(relay)
    } else {
        None
    };
    let source = serde_json::to_value(sel.source)?.as_str().unwrap_or("unknown").to_owned();
    let row = SessionRow {
        id: id.clone(),
        machine_id: machine.id.clone(),
        player: claims.sub.clone(),
        mode: mode.into(),
        region: placement.relay.region.clone(),
        relay_id: placement.relay.id.clone(),
        source: source.clone(),
        scores: scores.clone(),
        client_ip: Some(client_ip.to_string()),
        requested_ms: now,
        connected_ms: None,
        ended_ms: None,
        end_reason: None,
        ended_by: None,
    };
    let mut events = vec![
        ("requested", json!({ "player": claims.sub, "machine": machine.id, "mode": mode })),
        (
            "region_chosen",
            json!({ "region": row.region, "relay": row.relay_id, "source": source, "score_ms": sel.score_ms, "scores": sel.scores }),
        ),
    ];
    if let Some(r) = &sfu_relay {
        events.push(("sfu_relay_chosen", json!({ "relay": r.id, "region": r.region })));
    }
    match state.store.create_session(&row, &events).await {
        Ok(()) => {}
        Err(CreateError::Busy) => {
            return Err(ApiError::Conflict(format!("machine {:?} is already in a session", machine.id)));
        }
        Err(CreateError::Db(e)) => return Err(e.into()),
    }
    state.metrics.sessions_created.with_label_values(&[&row.region]).inc();
    info!(session = %id, machine = %machine.id, region = %row.region, relay = %row.relay_id, source = %source, "session created");
    // Credentials are tagged with the session, so relay logs and revocation can name it. The
    // machine gets its own for the same relay: both legs of the media path meet there.
    let ice = placement::ice_config(&state, &placement, &id).await?;
    let machine_ice = placement::ice_config(&state, &placement, &id).await?;
    let mut notice = json!({ "type": "session", "session": session_json(&row), "ice": machine_ice });
    let mut sfu = Value::Null;
    if let Some(r) = &sfu_relay {
        let base = r.sfu_url.as_deref().unwrap_or_default();
        let publish = media_token(&state, &machine.id, &machine.id, Some(&id), MediaRole::Publisher).await?;
        notice["sfu"] = json!({ "relay": r.id, "whip_url": format!("{base}/whip/{}", machine.id), "token": publish });
        let watch = media_token(&state, &claims.sub, &machine.id, Some(&id), MediaRole::Player).await?;
        sfu = json!({ "relay": r.id, "region": r.region, "whep_url": format!("{base}/whep/{id}"), "token": watch });
    }
    crate::ws::deliver(&state, &crate::ws::Party { role: Role::Machine, id: machine.id.clone() }, &notice).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "session_id": id,
            "machine_id": machine.id,
            "mode": mode,
            "region": row.region,
            "relay": ice["relay"],
            "selection": ice["selection"],
            "ice": ice,
            "alternates": ice["alternates"],
            "sfu": sfu,
        })),
    ))
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

/// The machine's home SFU relay: among relays in rotation that run an SFU, the one in the region
/// the machine reaches fastest (its reported RTTs), else the session's relay if it runs one,
/// else any.
async fn sfu_home(state: &AppState, machine: &MachineRow, chosen: &RelayRow) -> ApiResult<RelayRow> {
    let now = now_ms();
    let relays: Vec<RelayRow> = state
        .store
        .relays()
        .await?
        .into_iter()
        .filter(|r| r.sfu_url.is_some() && placement::takes_sessions(r, now))
        .collect();
    let by_rtt = relays
        .iter()
        .filter_map(|r| machine.rtts.get(&r.region).map(|rtt| (rtt, r)))
        .min_by(|a, b| a.0.total_cmp(b.0).then(a.1.utilisation.total_cmp(&b.1.utilisation)))
        .map(|(_, r)| r);
    by_rtt
        .or_else(|| relays.iter().find(|r| r.id == chosen.id))
        .or_else(|| relays.iter().min_by(|a, b| a.utilisation.total_cmp(&b.utilisation)))
        .cloned()
        .ok_or_else(|| ApiError::Unavailable("no relay with an SFU is in rotation".into()))
}

/// A media token (WHIP/WHEP) signed with the newest TURN REST secret, which every relay holds.
async fn media_token(
    state: &AppState,
    sub: &str,
    machine: &str,
    session: Option<&str>,
    role: MediaRole,
) -> ApiResult<String> {
    let secret = &placement::signing_secret(state).await?;
    let now = now_unix();
    let claims = MediaClaims::new(sub, machine, session, role, now, state.config.credential_ttl.as_secs());
    cluster::media::mint(secret.as_bytes(), claims).map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))
}

/// A spectator's way into an SFU session: a WHEP URL and a spectator token.
async fn watch_session(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Value>> {
    let claims = bearer.require(&[Role::Player])?.clone();
    let s = state.store.session(&id).await?.ok_or_else(|| ApiError::not_found(format!("no session {id:?}")))?;
    if s.ended_ms.is_some() {
        return Err(ApiError::Conflict("session has ended".into()));
    }
    let (Some(relay), Some(base)) = (s.scores["sfu"]["relay"].as_str(), s.scores["sfu"]["url"].as_str()) else {
        return Err(ApiError::Conflict("only sfu sessions can be watched".into()));
    };
    let role = if claims.sub == s.player { MediaRole::Player } else { MediaRole::Spectator };
    let token = media_token(&state, &claims.sub, &s.machine_id, Some(&id), role).await?;
    Ok(Json(json!({ "relay": relay, "whep_url": format!("{base}/whep/{id}"), "token": token, "role": role })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandSeat {
    /// The viewer's id (a player id, as in its media token), or `null` for nobody.
    to: Option<String>,
}

/// Hands an `sfu` session's seat (whose inputs reach the machine) to one of its viewers, or to
/// nobody: an admin, or the session's player giving it away. Signaling asks the session's SFU
/// relay with an operator media token and records a `seat` event on the session.
async fn hand_seat(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
    Body(req): Body<HandSeat>,
) -> ApiResult<Json<Value>> {
    let s = visible_session(&state, &bearer, &id).await?;
    if !(bearer.is_admin() || (bearer.0.role == Role::Player && bearer.0.sub == s.player)) {
        return Err(ApiError::Forbidden("only an admin or the session's player hands the seat".into()));
    }
    if s.ended_ms.is_some() {
        return Err(ApiError::Conflict("session has ended".into()));
    }
    if req.to.as_deref().is_some_and(|to| !valid_subject(to)) {
        return Err(ApiError::bad("to: a viewer id (1-128 printable characters, no ':'), or null"));
    }
    let Some(base) = s.scores["sfu"]["url"].as_str() else {
        return Err(ApiError::Conflict("only sfu sessions have a seat".into()));
    };
    let mut url = reqwest::Url::parse(base).map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?;
    url.path_segments_mut()
        .map_err(|()| ApiError::Internal(anyhow::anyhow!("SFU URL {base} cannot take a path")))?
        .pop_if_empty()
        .extend(["seat", s.machine_id.as_str()]);
    let token = media_token(&state, "signaling", &s.machine_id, Some(&id), MediaRole::Operator).await?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?;
    let unreachable = |e: reqwest::Error| ApiError::Unavailable(format!("the session's SFU relay did not answer: {e}"));
    let res = client.post(url).bearer_auth(token).json(&json!({ "to": req.to })).send().await.map_err(unreachable)?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or_default();
    let reason = body["error"].as_str().unwrap_or("no reason given").to_owned();
    match status.as_u16() {
        200 => {}
        404 => return Err(ApiError::not_found(format!("the SFU relay: {reason}"))),
        _ => return Err(ApiError::Unavailable(format!("the SFU relay answered {status}: {reason}"))),
    }
    let by = bearer.0.role.as_str();
    let detail = json!({ "to": req.to, "previous": body["previous"], "by": by });
    state.store.add_event(&id, "seat", &detail, now_ms()).await?;
    info!(session = %id, to = req.to.as_deref().unwrap_or("nobody"), by, "seat handed");
    Ok(Json(json!({ "session": id, "holder": req.to, "previous": body["previous"] })))
}

/// The session if the caller may see it: admin, its player, or its machine.
async fn visible_session(state: &AppState, bearer: &Bearer, id: &str) -> ApiResult<SessionRow> {
    if !crate::store::valid_generated_id("ses", id) {
        return Err(ApiError::not_found(format!("no session {id:?}")));
    }
    let s = state.store.session(id).await?.ok_or_else(|| ApiError::not_found(format!("no session {id:?}")))?;
    let c = &bearer.0;
    let allowed = bearer.is_admin()
        || (c.role == Role::Player && c.sub == s.player)
        || (c.role == Role::Machine && c.sub == s.machine_id);
    if !allowed {
        // Not 403: do not confirm that someone else's session exists.
        return Err(ApiError::not_found(format!("no session {id:?}")));
    }
    Ok(s)
}

fn session_json(s: &SessionRow) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    v["status"] = if s.ended_ms.is_some() {
        "ended"
    } else if s.connected_ms.is_some() {
        "connected"
    } else {
        "requested"
    }
    .into();
    v["duration_ms"] = json!(s.ended_ms.map(|e| e - s.requested_ms));
    v
}

async fn show_session(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Value>> {
    let s = visible_session(&state, &bearer, &id).await?;
    let events = state.store.events(&id).await?;
    let mut v = session_json(&s);
    v["events"] = serde_json::to_value(events)?;
    Ok(Json(v))
}

async fn session_connected(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
) -> ApiResult<StatusCode> {
    let s = visible_session(&state, &bearer, &id).await?;
    if s.ended_ms.is_some() {
        return Err(ApiError::Conflict("session has ended".into()));
    }
    let now = now_ms();
    let first = s.connected_ms.is_none();
    if state.store.mark_connected(&id, now).await? && first {
        state
            .store
            .add_event(&id, "connected", &json!({ "by": bearer.0.role, "after_ms": now - s.requested_ms }), now)
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// End reasons are short tokens (they are stored and shown, never used as metric labels).
pub fn valid_reason(r: &str) -> bool {
    !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndSession {
    #[serde(default)]
    reason: Option<String>,
}

async fn end_session(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
    OptionalBody(req): OptionalBody<EndSession>,
) -> ApiResult<Json<Value>> {
    let s = visible_session(&state, &bearer, &id).await?;
    let reason = req.reason.unwrap_or_else(|| "ended".into());
    if reason.is_empty()
        || reason.len() > 64
        || !reason.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ApiError::bad("reason: 1-64 of a-z, A-Z, 0-9, _ and -"));
    }
    let by = bearer.0.role.as_str();
    if !state.store.end_session(&s.id, &reason, by, now_ms()).await? {
        return Err(ApiError::Conflict("session has already ended".into()));
    }
    // Metric labels stay bounded: client-given reasons count by who ended the session.
    state.metrics.sessions_ended.with_label_values(&[&format!("by_{by}")]).inc();
    info!(session = %id, reason, by, "session ended");
    crate::ws::notify_ended(&state, &s.player, &s.machine_id, &id, &reason).await;
    let s = state.store.session(&id).await?.ok_or_else(|| ApiError::not_found("session vanished"))?;
    Ok(Json(session_json(&s)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListSessions {
    machine: Option<String>,
    player: Option<String>,
    region: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

async fn list_sessions(
    State(state): State<AppState>,
    bearer: Bearer,
    QueryParam(q): QueryParam<ListSessions>,
) -> ApiResult<Json<Value>> {
    bearer.require(&[])?;
    let live = match q.status.as_deref() {
        None | Some("all") => None,
        Some("live") => Some(true),
        Some("ended") => Some(false),
        Some(other) => return Err(ApiError::bad(format!("status: {other:?} is not live, ended or all"))),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("limit: must be 1-1000"));
    }
    let filter = SessionFilter { machine: q.machine, player: q.player, region: q.region, live, limit };
    let sessions: Vec<Value> = state.store.sessions(&filter).await?.iter().map(session_json).collect();
    Ok(Json(json!({ "sessions": sessions })))
}

// ---- admin ----

async fn status(State(state): State<AppState>, bearer: Bearer) -> ApiResult<Json<Value>> {
    bearer.require(&[])?;
    let now = now_ms();
    let relays = state.store.relays().await?;
    let (machines, live, total) = state.store.counts().await?;
    let count = |s: &str| relays.iter().filter(|r| placement::relay_status(r, now) == s).count();
    let secrets = state.store.live_secrets(now).await?;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "store": state.store.kind(),
        "regions": state.config.regions.len(),
        "relays": { "serving": count("serving"), "draining": count("draining"), "dead": count("dead") },
        "machines": machines,
        "sessions": { "live": live, "total": total },
        "secrets": { "newest": secrets.version >> 8, "live": secrets.keys.len() },
    })))
}

async fn rotate_keys(State(state): State<AppState>, bearer: Bearer) -> ApiResult<Json<Value>> {
    bearer.require(&[])?;
    // Old secrets stay accepted while credentials they signed may still allocate, plus margin
    // for clock skew and heartbeat propagation.
    let keep_ms = (state.config.credential_ttl.as_millis() + 5 * 60 * 1000) as i64;
    let version = state.store.rotate_secret(now_ms(), keep_ms).await?;
    info!(version, by = %bearer.0.sub, "TURN secret rotated");
    let secrets = state.store.live_secrets(now_ms()).await?;
    Ok(Json(
        json!({ "version": version, "live_secrets": secrets.keys.len(), "previous_retire_after_secs": keep_ms / 1000 }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintToken {
    sub: String,
    role: Role,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

async fn mint_token(
    State(state): State<AppState>,
    bearer: Bearer,
    Body(req): Body<MintToken>,
) -> ApiResult<Json<Value>> {
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
    Ok(Json(json!({ "token": token, "sub": req.sub, "role": req.role, "expires_at": now + ttl })))
}

/// Fresh credentials for a live session's relay, for either party (refresh before
/// `refresh_after`, or the machine's side when it did not get the socket notice).
async fn session_ice_config(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Value>> {
    let s = visible_session(&state, &bearer, &id).await?;
    if s.ended_ms.is_some() {
        return Err(ApiError::Conflict("session has ended".into()));
    }
    let relay = state.store.relay(&s.relay_id).await?.filter(|r| placement::is_live(r, now_ms())).ok_or_else(|| {
        ApiError::Unavailable(format!("the session's relay {} is not live; start a new session", s.relay_id))
    })?;
    let secret = &placement::signing_secret(&state).await?;
    let ttl = state.config.credential_ttl.as_secs();
    Ok(Json(json!({
        "iceServers": [placement::ice_server(&state, &relay, secret, &id)?],
        "iceTransportPolicy": "all",
        "bundlePolicy": "max-bundle",
        "region": relay.region,
        "relay": placement::RelayRef { id: &relay.id, region: &relay.region, host: &relay.public_host },
        "ttl": ttl,
        "expires_at": now_unix() + ttl,
        "refresh_after": now_unix() + ttl * 3 / 4,
    })))
}
