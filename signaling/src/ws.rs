//! WebSocket signaling for the direct mode: signaling relays SDP offers and answers and ICE
//! candidates between a session's player and its machine, and tells machines about new
//! sessions.
//!
//! `GET /v1/ws` upgrades with a bearer token (the `Authorization` header, or `?token=` because
//! browsers cannot set headers on a WebSocket). Each text frame is one JSON message:
//!
//! - client → signaling: `{"type": "offer"|"answer"|"candidate"|"connected"|"bye",
//!   "session_id": "...", ...}`; everything besides `type` and `session_id` is passed on as it
//!   is (`sdp`, `candidate`, `sdpMid`, `sdpMLineIndex`, ...). Only the session's player and
//!   machine may send for it, and only while it is live. `connected` records the event; `bye`
//!   ends the session.
//! - signaling → client: the same message with `"from": "player"|"machine"` added;
//!   `{"type": "session", "session": {...}, "ice": {...}}` to a machine when a player starts a
//!   session on it; `{"type": "ended", "session_id", "reason"}` to both when it ends;
//!   `{"type": "error", "message", "session_id"?}` for a message that was refused.
//!
//! Delivery is to every connection of the recipient on this instance. A message for a party
//! that is not connected here waits for it for [`PENDING_TTL`](crate::hub::PENDING_TTL) (a player who opens its socket
//! just after creating the session gets what was sent meanwhile):
//!
//! - on SQLite (one instance) in a queue in memory ([`PENDING_MAX`](crate::hub::PENDING_MAX) messages per party);
//! - on PostgreSQL (several instances behind a load balancer) in the `ws_messages` table, with a
//!   `NOTIFY signaling_ws` naming the party; every instance `LISTEN`s, and the one holding the
//!   party's socket claims the rows by deleting them, so each message is delivered once, in the
//!   order it was posted. A party connecting anywhere claims what waits for it.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::auth::{Claims, Role, bearer_token};
use crate::error::ApiError;
use crate::hub::{PENDING_TTL, Party};
use crate::state::{AppState, now_ms};

/// Largest frame accepted (an SDP offer with many candidates stays well under this).
pub const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// The caller of `/v1/ws`: bearer header or `?token=`.
pub struct WsAuth(Claims);

impl FromRequestParts<AppState> for WsAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let from_query = Query::<TokenQuery>::from_request_parts(parts, state).await.ok().and_then(|q| q.0.token);
        let token = match from_query {
            Some(t) => t,
            None => bearer_token(parts)?.to_owned(),
        };
        Ok(Self(state.keys.verify(&token)?))
    }
}

pub async fn upgrade(
    State(state): State<AppState>,
    WsAuth(claims): WsAuth,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if claims.role == Role::Admin {
        return Err(ApiError::Forbidden("the signaling socket is for players and machines".into()));
    }
    Ok(ws.max_message_size(MAX_FRAME).on_upgrade(move |socket| serve(state, claims, socket)))
}

/// Sends `msg` to `party` wherever it is connected, or keeps it for [`PENDING_TTL`](crate::hub::PENDING_TTL).
pub async fn deliver(state: &AppState, party: &Party, msg: &Value) {
    if state.store.postgres_url().is_none() {
        state.hub.send(party, msg);
        return;
    }
    let text = msg.to_string();
    if state.hub.send_local(party, &text) {
        return;
    }
    if let Err(e) = state.store.post_message(party.role.as_str(), &party.id, &text, now_ms()).await {
        tracing::error!(error = format!("{e:#}"), "posting a signaling message for another instance");
    }
}

/// Hands a connected party what other instances stored for it.
async fn claim_for(state: &AppState, party: &Party) {
    if !state.hub.is_connected(party) {
        return;
    }
    let since = now_ms() - PENDING_TTL.as_millis() as i64;
    match state.store.claim_messages(party.role.as_str(), &party.id, since).await {
        Ok(messages) => {
            for text in messages {
                if !state.hub.send_local(party, &text) {
                    // It left meanwhile: put the message back for its next connection.
                    let _ = state.store.post_message(party.role.as_str(), &party.id, &text, now_ms()).await;
                }
            }
        }
        Err(e) => tracing::error!(error = format!("{e:#}"), "claiming signaling messages"),
    }
}

/// On PostgreSQL: listens for messages posted by any instance and delivers those for parties
/// connected here. Reconnects after a failure; messages posted meanwhile are claimed when the
/// listener is back (and by parties when they connect).
pub async fn listen(state: AppState) {
    let Some(url) = state.store.postgres_url().map(str::to_owned) else { return };
    loop {
        let result: anyhow::Result<()> = async {
            let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
            listener.listen("signaling_ws").await?;
            // Anything posted while we were not listening.
            let parties: Vec<Party> = state.hub.parties();
            for party in parties {
                claim_for(&state, &party).await;
            }
            loop {
                let n = listener.recv().await?;
                let Some((role, id)) = n.payload().split_once(':') else { continue };
                let role = match role {
                    "player" => Role::Player,
                    "machine" => Role::Machine,
                    _ => continue,
                };
                claim_for(&state, &Party { role, id: id.to_owned() }).await;
            }
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = format!("{e:#}"), "signaling message listener failed; reconnecting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn serve(state: AppState, claims: Claims, mut socket: WebSocket) {
    let party = Party { role: claims.role, id: claims.sub.clone() };
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let conn = state.hub.join(&party, tx);
    if state.store.postgres_url().is_some() {
        claim_for(&state, &party).await;
    }
    debug!(role = party.role.as_str(), id = %party.id, "signaling socket open");
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    ping.tick().await;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(text) => if socket.send(Message::Text(text.into())).await.is_err() { break },
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let reply = handle(&state, &party, text.as_str()).await;
                    if let Some(reply) = reply
                        && socket.send(Message::Text(reply.to_string().into())).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let err = json!({"type": "error", "message": "binary frames are not accepted; send JSON text"});
                    if socket.send(Message::Text(err.to_string().into())).await.is_err() { break }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => if socket.send(Message::Ping(Vec::new().into())).await.is_err() { break },
        }
    }
    state.hub.leave(&party, conn);
    debug!(role = party.role.as_str(), id = %party.id, "signaling socket closed");
}

fn error(message: impl Into<String>, session: Option<&str>) -> Value {
    json!({ "type": "error", "message": message.into(), "session_id": session })
}

/// Handles one frame; returns a reply for the sender (errors), if any.
async fn handle(state: &AppState, from: &Party, text: &str) -> Option<Value> {
    let Ok(Value::Object(mut msg)) = serde_json::from_str::<Value>(text) else {
        return Some(error("expected a JSON object", None));
    };
    let Some(kind) = msg.get("type").and_then(Value::as_str).map(str::to_owned) else {
        return Some(error("missing \"type\"", None));
    };
    let Some(session_id) = msg.get("session_id").and_then(Value::as_str).map(str::to_owned) else {
        return Some(error("missing \"session_id\"", None));
    };
    if !matches!(kind.as_str(), "offer" | "answer" | "candidate" | "connected" | "bye") {
        return Some(error(format!("unknown message type {kind:?}"), Some(&session_id)));
    }
    let session = match state.store.session(&session_id).await {
        Ok(Some(s)) => s,
        Ok(None) => return Some(error("no such session", Some(&session_id))),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "loading session for a socket message");
            return Some(error("internal error", Some(&session_id)));
        }
    };
    let peer = match from.role {
        Role::Player if session.player == from.id => Party { role: Role::Machine, id: session.machine_id.clone() },
        Role::Machine if session.machine_id == from.id => Party { role: Role::Player, id: session.player.clone() },
        _ => return Some(error("no such session", Some(&session_id))),
    };
    if session.ended_ms.is_some() {
        return Some(error("session has ended", Some(&session_id)));
    }
    let now = now_ms();
    match kind.as_str() {
        "connected" => {
            let first = session.connected_ms.is_none();
            let recorded = state.store.mark_connected(&session_id, now).await;
            if matches!(recorded, Ok(true)) && first {
                let detail = json!({ "by": from.role, "after_ms": now - session.requested_ms });
                if let Err(e) = state.store.add_event(&session_id, "connected", &detail, now).await {
                    tracing::error!(error = format!("{e:#}"), "recording connected");
                }
            }
            None
        }
        "bye" => {
            let reason =
                msg.get("reason").and_then(Value::as_str).filter(|r| crate::store::valid_reason(r)).unwrap_or("bye");
            match state.store.end_session(&session_id, reason, from.role.as_str(), now).await {
                Ok(true) => {
                    info!(session = %session_id, reason, by = from.role.as_str(), "session ended");
                    state.metrics.sessions_ended.with_label_values(&[&format!("by_{}", from.role.as_str())]).inc();
                    notify_ended(state, &session.player, &session.machine_id, &session_id, reason).await;
                    None
                }
                Ok(false) => Some(error("session has ended", Some(&session_id))),
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "ending session");
                    Some(error("internal error", Some(&session_id)))
                }
            }
        }
        _ => {
            msg.insert("from".into(), json!(from.role));
            deliver(state, &peer, &Value::Object(msg)).await;
            None
        }
    }
}

/// Tells both parties that a session ended.
pub async fn notify_ended(state: &AppState, player: &str, machine: &str, session_id: &str, reason: &str) {
    let msg = json!({ "type": "ended", "session_id": session_id, "reason": reason });
    for party in [Party { role: Role::Player, id: player.into() }, Party { role: Role::Machine, id: machine.into() }] {
        deliver(state, &party, &msg).await;
    }
}
