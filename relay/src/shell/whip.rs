//! The SFU's WHIP/WHEP HTTP endpoints, which reach the SFU thread through its
//! [`SfuHandle`](super::sfu::SfuHandle).
//!
//! **HTTP.** `POST /whip/{machine}` (RFC 9725) publishes with a publisher media token for that
//! machine; `POST /whep/{session}` subscribes with a player or spectator token for that session
//! (its machine comes from the token). Both take `application/sdp` and answer `201 Created` with
//! the SDP answer and a `Location` to `DELETE` at the end. `POST /seat/{machine}` with
//! `{"to": viewer}` hands the machine's seat (an operator token, which signaling mints). Tokens
//! are [`cluster::media`] tokens, checked against the relay's current TURN REST secrets. Errors
//! are JSON `{"error": ...}` with a 4xx status that says what was wrong; a viewer whose offer
//! takes none of the machine's video codecs gets `422` with `publisher_codecs` and
//! `viewer_codecs` (a machine can send a backup codec beside its first, see
//! [`Sfu::subscribe`](crate::sfu::Sfu::subscribe)). Browsers call these
//! from any origin (CORS allows every origin: the bearer token, not a cookie, is what
//! authorizes, so another origin gains nothing).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use axum::Router as HttpRouter;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use cluster::media::{MediaClaims, MediaRole, TokenError};
use serde_json::json;
use tracing::info;

use super::sfu::{CallError, SfuHandle};
use crate::sfu::route::{PeerId, Role};
use crate::sfu::{Codec, SfuError};

/// Largest SDP offer accepted (browsers' offers with simulcast are a few KiB).
const MAX_SDP: usize = 64 * 1024;

/// What the HTTP handlers need.
#[derive(Clone)]
pub struct HttpState {
    pub sfu: SfuHandle,
    /// The secrets media tokens are checked with (the relay's current TURN REST secrets).
    pub keys: Arc<RwLock<Vec<Vec<u8>>>>,
    /// Draining relays take no new publishers or subscribers.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Sessions signaling has ended: their media tokens are refused.
    pub ended_sessions: Arc<RwLock<HashSet<String>>>,
}

/// The WHIP/WHEP routes.
pub fn router(state: HttpState) -> HttpRouter {
    HttpRouter::new()
        .route("/whip/{machine}", post(whip))
        .route("/whip/{machine}/{peer}", delete(whip_delete))
        .route("/whep/{session}", post(whep))
        .route("/whep/{session}/{peer}", delete(whep_delete))
        .route("/seat/{machine}", post(seat))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "no such endpoint (POST /whip/{machine}, POST /whep/{session}, POST /seat/{machine})",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_SDP))
        .layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(tower_http::cors::Any)
                .allow_methods([axum::http::Method::POST, axum::http::Method::DELETE])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .expose_headers([header::LOCATION]),
        )
        .with_state(state)
}

/// A refusal: a 4xx/5xx status with a JSON body `{"error": reason}`.
struct Problem(StatusCode, String, Option<serde_json::Value>);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.1 });
        if let (Some(obj), Some(serde_json::Value::Object(extra))) = (body.as_object_mut(), self.2) {
            obj.extend(extra);
        }
        (self.0, axum::Json(body)).into_response()
    }
}

fn problem(status: StatusCode, message: impl Into<String>) -> Problem {
    Problem(status, message.into(), None)
}

/// The response to a request the SFU thread did not answer as asked: its refusal as `why`
/// makes it, or 503 when the SFU is stopped or overloaded.
fn refused<E>(e: CallError<E>, why: impl FnOnce(E) -> Problem) -> Problem {
    match e {
        CallError::Refused(e) => why(e),
        CallError::Unavailable => problem(StatusCode::SERVICE_UNAVAILABLE, "the SFU is not running or is overloaded"),
    }
}

/// A subscription the SFU refused: 422 with both sides' codecs when the viewer decodes none of
/// the machine's, 403 for an ended session, 400 for anything else wrong with the offer.
fn subscribe_refusal(e: SfuError) -> Problem {
    match &e {
        SfuError::NoCommonCodec { publisher, viewer } => {
            let names = |codecs: &[Codec]| codecs.iter().map(|c| c.name()).collect::<Vec<_>>();
            let mut p = problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
            p.2 = Some(json!({ "publisher_codecs": names(publisher), "viewer_codecs": names(viewer) }));
            p
        }
        SfuError::SessionEnded(_) => problem(StatusCode::FORBIDDEN, e.to_string()),
        SfuError::NoLinks { .. } => problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        _ => problem(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// What a request's media token must allow.
enum Need<'a> {
    /// Publishing (or ending the publisher of) this machine.
    Publish(&'a str),
    /// Watching (or leaving) this session, as its player or a spectator.
    Watch(&'a str),
    /// Handing this machine's seat.
    Operate(&'a str),
}

/// The request's media token, verified and allowing `need`; or the response refusing it (401
/// for a missing or bad token, 403 for a token for something else, 503 without secrets).
fn authorize(state: &HttpState, headers: &HeaderMap, need: Need<'_>) -> Result<MediaClaims, Problem> {
    let c = claims(state, headers)?;
    let refusal = match need {
        Need::Publish(machine) if c.role != MediaRole::Publisher || c.machine != machine => {
            Some(format!("this token does not publish machine {machine:?}"))
        }
        Need::Operate(machine) if c.role != MediaRole::Operator || c.machine != machine => {
            Some(format!("this token does not operate machine {machine:?}"))
        }
        Need::Watch(_) if !matches!(c.role, MediaRole::Player | MediaRole::Spectator) => {
            Some("only a player or spectator token subscribes".to_owned())
        }
        Need::Watch(session) if c.session.as_deref() != Some(session) => {
            Some(format!("this token is not for session {session:?}"))
        }
        _ => None,
    };
    match refusal {
        Some(why) => Err(problem(StatusCode::FORBIDDEN, why)),
        None => Ok(c),
    }
}

/// The bearer token's claims, or the response refusing it.
fn claims(state: &HttpState, headers: &HeaderMap) -> Result<MediaClaims, Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| problem(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer <media token>"))?;
    let keys = state.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
    cluster::media::verify(&keys, token.trim(), cluster::time::unix_now()).map_err(|e| match e {
        TokenError::NoKey => problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        _ => problem(StatusCode::UNAUTHORIZED, e.to_string()),
    })
}

/// The SDP offer of a request: `application/sdp`, UTF-8.
fn offer(headers: &HeaderMap, body: &Bytes) -> Result<String, Problem> {
    let sdp = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp")));
    if !sdp {
        return Err(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be an SDP offer (Content-Type: application/sdp)",
        ));
    }
    String::from_utf8(body.to_vec()).map_err(|_| problem(StatusCode::BAD_REQUEST, "the SDP offer is not UTF-8"))
}

fn created(location: String, answer: String) -> Response {
    let mut response = (StatusCode::CREATED, answer).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    response
}

fn refuse_when_draining(state: &HttpState) -> Result<(), Problem> {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(problem(StatusCode::SERVICE_UNAVAILABLE, "this relay is draining"));
    }
    Ok(())
}

async fn whip(
    State(state): State<HttpState>,
    Path(machine): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    authorize(&state, &headers, Need::Publish(&machine))?;
    refuse_when_draining(&state)?;
    let offer = offer(&headers, &body)?;
    let (id, answer) = state
        .sfu
        .publish(machine.clone(), offer)
        .await
        .map_err(|e| refused(e, |e| problem(StatusCode::BAD_REQUEST, e)))?;
    info!(machine, peer = id.0, "WHIP publish");
    Ok(created(format!("/whip/{machine}/{}", id.0), answer))
}

async fn whep(
    State(state): State<HttpState>,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let c = authorize(&state, &headers, Need::Watch(&session))?;
    let role = if c.role == MediaRole::Player { Role::Player } else { Role::Spectator };
    if state.ended_sessions.read().unwrap_or_else(|e| e.into_inner()).contains(&session) {
        return Err(problem(StatusCode::FORBIDDEN, format!("session {session:?} has ended; its tokens are revoked")));
    }
    refuse_when_draining(&state)?;
    let offer = offer(&headers, &body)?;
    let (id, answer) = state
        .sfu
        .subscribe(c.machine.clone(), role, c.sub.clone(), session.clone(), c.home.clone(), offer)
        .await
        .map_err(|e| refused(e, subscribe_refusal))?;
    info!(session, machine = c.machine, peer = id.0, ?role, "WHEP subscribe");
    Ok(created(format!("/whep/{session}/{}", id.0), answer))
}

async fn whip_delete(
    State(state): State<HttpState>,
    Path((machine, peer)): Path<(String, u64)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    authorize(&state, &headers, Need::Publish(&machine))?;
    end(&state, machine, peer).await
}

async fn whep_delete(
    State(state): State<HttpState>,
    Path((session, peer)): Path<(String, u64)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let c = authorize(&state, &headers, Need::Watch(&session))?;
    end(&state, c.machine, peer).await
}

async fn end(state: &HttpState, machine: String, peer: u64) -> Result<Response, Problem> {
    if state.sfu.remove(machine, PeerId(peer)).await {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(problem(StatusCode::NOT_FOUND, "no such peer (already ended?)"))
    }
}

/// `POST /seat/{machine}`: who holds the machine's seat.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SeatRequest {
    /// The viewer's id (the `sub` of its media token), or `null` for nobody.
    to: Option<String>,
}

/// Hands `machine`'s seat to one of its viewers (by id) or to nobody; an operator token for the
/// machine only. Answers `{"machine", "holder", "previous"}`.
async fn seat(
    State(state): State<HttpState>,
    Path(machine): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    authorize(&state, &headers, Need::Operate(&machine))?;
    let request: SeatRequest = serde_json::from_slice(&body)
        .map_err(|e| problem(StatusCode::BAD_REQUEST, format!("expected {{\"to\": viewer id or null}}: {e}")))?;
    let previous = state
        .sfu
        .hand_seat(machine.clone(), request.to.clone())
        .await
        .map_err(|e| refused(e, |e| problem(StatusCode::NOT_FOUND, e)))?;
    Ok(axum::Json(json!({ "machine": machine, "holder": request.to, "previous": previous })).into_response())
}
