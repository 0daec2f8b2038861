//! Sessions: create (placement, relay, ICE), watch and the seat for `sfu` sessions, progress,
//! end, history, and fresh credentials for a live session.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use cluster::media::{HomeRelay, MediaClaims, MediaRole};
use serde::Deserialize;
use serde_json::{Value, json};
use signaling_api::ice::IceConfig;
use signaling_api::machines::Publish;
use signaling_api::sessions::{
    SeatHanded, Session, SessionCreated, SessionDetail, SessionEvent, SessionList, SfuViewer, Watch,
};
use tracing::info;

use super::extract::{Bearer, Body, OptionalBody, PathParam, QueryParam};
use crate::auth::{Role, valid_subject};
use crate::error::{ApiError, ApiResult};
use crate::placement::{self, PlacementRequest};
use crate::state::{AppState, now_ms, now_unix};
use crate::store::{CreateError, MachineRow, RelayRow, SessionFilter, SessionRow, new_id};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateSession {
    machine_id: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(flatten)]
    placement: PlacementRequest,
}

pub(super) async fn create_session(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    bearer: Bearer,
    Body(req): Body<CreateSession>,
) -> ApiResult<(StatusCode, Json<SessionCreated>)> {
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
    if !placement.passed_over.is_empty() {
        scores["passed_over"] = serde_json::to_value(&placement.passed_over)?;
    }
    // SFU mode: the machine publishes to its home relay (the SFU relay in the region it reaches
    // fastest); the player watches there, or at its own region's relay linked to the home relay
    // when that path is the shorter end to end (`placement::sfu_viewer_path`).
    let (sfu_relay, viewer_relay) = if mode == "sfu" {
        let relay = sfu_home(&state, &machine, &placement.relay).await?;
        let path = placement::sfu_viewer_path(&relay, &placement.relay, &req.placement);
        scores["sfu"] = json!({ "relay": relay.id, "region": relay.region, "url": relay.sfu_url,
            "viewer": { "relay": path.relay.id, "region": path.relay.region, "linked": path.linked,
                        "direct_ms": path.direct_ms, "linked_ms": path.linked_ms } });
        let viewer = path.linked.then(|| path.relay.clone());
        (Some(relay), viewer)
    } else {
        (None, None)
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
            json!({ "region": row.region, "relay": row.relay_id, "source": source, "score_ms": sel.score_ms,
                    "scores": sel.scores, "passed_over": placement.passed_over }),
        ),
    ];
    if let Some(r) = &sfu_relay {
        events.push(("sfu_relay_chosen", json!({ "relay": r.id, "region": r.region })));
    }
    if let Some(v) = &viewer_relay {
        events.push((
            "sfu_viewer_relay_chosen",
            json!({ "relay": v.id, "region": v.region, "linked_to": scores["sfu"]["relay"] }),
        ));
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
    let mut notice = json!({ "type": "session", "session": Session::from(row.clone()), "ice": machine_ice });
    let mut sfu = None;
    if let Some(r) = &sfu_relay {
        let base = r.sfu_url.as_deref().unwrap_or_default();
        let token = media_token(&state, &machine.id, &machine.id, Some(&id), MediaRole::Publisher, None).await?;
        let publish = Publish { relay: r.id.clone(), whip_url: format!("{base}/whip/{}", machine.id), token };
        notice["sfu"] = serde_json::to_value(publish)?;
        // The player's relay: the home relay, or its own region's, which links to the home
        // relay named in the (signed) token.
        let (viewer, home) = match (&viewer_relay, r.link_port) {
            (Some(v), Some(port)) => {
                (v, Some(HomeRelay { id: r.id.clone(), link: super::relays::host_port(&r.public_host, port) }))
            }
            _ => (r, None),
        };
        let token = media_token(&state, &claims.sub, &machine.id, Some(&id), MediaRole::Player, home).await?;
        let whep_url = format!("{}/whep/{id}", viewer.sfu_url.as_deref().unwrap_or_default());
        sfu = Some(SfuViewer { relay: viewer.id.clone(), region: viewer.region.clone(), whep_url, token });
    }
    crate::ws::deliver(&state, &crate::hub::Party { role: Role::Machine, id: machine.id.clone() }, &notice).await;
    let created = SessionCreated {
        session_id: id,
        machine_id: machine.id,
        mode: mode.into(),
        region: row.region,
        relay: ice.relay.clone(),
        selection: ice.selection.clone(),
        alternates: ice.alternates.clone(),
        ice,
        sfu,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// The machine's home SFU relay: among relays in rotation that run an SFU, the one in the region
/// the machine reaches fastest (its reported RTTs), else the session's relay if it runs one,
/// else any.
pub(super) async fn sfu_home(state: &AppState, machine: &MachineRow, chosen: &RelayRow) -> ApiResult<RelayRow> {
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

/// A media token (WHIP/WHEP) signed with the newest TURN REST secret, which every relay holds;
/// `home` names the machine's home relay for a viewer sent to another relay.
pub(super) async fn media_token(
    state: &AppState,
    sub: &str,
    machine: &str,
    session: Option<&str>,
    role: MediaRole,
    home: Option<HomeRelay>,
) -> ApiResult<String> {
    let secret = &placement::signing_secret(state).await?;
    let now = now_unix();
    let mut claims = MediaClaims::new(sub, machine, session, role, now, state.config.credential_ttl.as_secs());
    claims.home = home;
    cluster::media::mint(secret.as_bytes(), claims).map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))
}

/// A spectator's way into an SFU session: a WHEP URL and a spectator token. With the viewer's
/// probes (the body of `POST /v1/sessions`, optional), at its own region's relay linked to the
/// home relay when that path is shorter, as for the player.
pub(super) async fn watch_session(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
    OptionalBody(req): OptionalBody<PlacementRequest>,
) -> ApiResult<Json<Watch>> {
    let claims = bearer.require(&[Role::Player])?.clone();
    let s = state.store.session(&id).await?.ok_or_else(|| ApiError::not_found(format!("no session {id:?}")))?;
    if s.ended_ms.is_some() {
        return Err(ApiError::Conflict("session has ended".into()));
    }
    let (Some(relay), Some(base)) = (s.scores["sfu"]["relay"].as_str(), s.scores["sfu"]["url"].as_str()) else {
        return Err(ApiError::Conflict("only sfu sessions can be watched".into()));
    };
    let role = if claims.sub == s.player { MediaRole::Player } else { MediaRole::Spectator };
    let mut at = (relay.to_owned(), format!("{base}/whep/{id}"), None);
    if !req.probes.is_empty()
        && let Some(home) = state.store.relay(relay).await?
        && let Some(port) = home.link_port
    {
        let machine = state.store.machine(&s.machine_id).await?;
        let placement = placement::place(&state, &req, state.client_ip(peer, &headers), machine.as_ref()).await?;
        let path = placement::sfu_viewer_path(&home, &placement.relay, &req);
        if path.linked {
            let link = HomeRelay { id: home.id.clone(), link: super::relays::host_port(&home.public_host, port) };
            let url = format!("{}/whep/{id}", path.relay.sfu_url.as_deref().unwrap_or_default());
            at = (path.relay.id.clone(), url, Some(link));
        }
    }
    let (relay, whep_url, home) = at;
    let token = media_token(&state, &claims.sub, &s.machine_id, Some(&id), role, home).await?;
    Ok(Json(Watch { relay, whep_url, token, role }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HandSeat {
    /// The viewer's id (a player id, as in its media token), or `null` for nobody.
    to: Option<String>,
}

/// Hands an `sfu` session's seat (whose inputs reach the machine) to one of its viewers, or to
/// nobody: an admin, or the session's player giving it away. Signaling asks the session's SFU
/// relay with an operator media token and records a `seat` event on the session.
pub(super) async fn hand_seat(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
    Body(req): Body<HandSeat>,
) -> ApiResult<Json<SeatHanded>> {
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
    let token = media_token(&state, "signaling", &s.machine_id, Some(&id), MediaRole::Operator, None).await?;
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
    let previous = body["previous"].as_str().map(str::to_owned);
    Ok(Json(SeatHanded { session: id, holder: req.to, previous }))
}

/// The session if the caller may see it: admin, its player, or its machine.
pub(super) async fn visible_session(state: &AppState, bearer: &Bearer, id: &str) -> ApiResult<SessionRow> {
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

pub(super) async fn show_session(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<SessionDetail>> {
    let s = visible_session(&state, &bearer, &id).await?;
    let events = state.store.events(&id).await?;
    let events = events
        .into_iter()
        .map(|e| SessionEvent { seq: e.seq, at_ms: e.at_ms, kind: e.kind, detail: e.detail })
        .collect();
    Ok(Json(SessionDetail { session: s.into(), events }))
}

pub(super) async fn session_connected(
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EndSession {
    #[serde(default)]
    reason: Option<String>,
}

pub(super) async fn end_session(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
    OptionalBody(req): OptionalBody<EndSession>,
) -> ApiResult<Json<Session>> {
    let s = visible_session(&state, &bearer, &id).await?;
    let reason = req.reason.unwrap_or_else(|| "ended".into());
    if !crate::store::valid_reason(&reason) {
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
    Ok(Json(s.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListSessions {
    machine: Option<String>,
    player: Option<String>,
    region: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

pub(super) async fn list_sessions(
    State(state): State<AppState>,
    bearer: Bearer,
    QueryParam(q): QueryParam<ListSessions>,
) -> ApiResult<Json<SessionList>> {
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
    let sessions = state.store.sessions(&filter).await?.into_iter().map(Session::from).collect();
    Ok(Json(SessionList { sessions }))
}

/// Fresh credentials for a live session's relay, for either party (refresh before
/// `refresh_after`, or the machine's side when it did not get the socket notice).
pub(super) async fn session_ice_config(
    State(state): State<AppState>,
    bearer: Bearer,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<IceConfig>> {
    let s = visible_session(&state, &bearer, &id).await?;
    if s.ended_ms.is_some() {
        return Err(ApiError::Conflict("session has ended".into()));
    }
    let relay = state.store.relay(&s.relay_id).await?.filter(|r| placement::is_live(r, now_ms())).ok_or_else(|| {
        ApiError::Unavailable(format!("the session's relay {} is not live; start a new session", s.relay_id))
    })?;
    let secret = &placement::signing_secret(&state).await?;
    Ok(Json(placement::session_ice_config(&state, &relay, secret, &id)?))
}
