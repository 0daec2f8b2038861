//! The SFU's thread and its WHIP/WHEP HTTP endpoints.
//!
//! **One UDP port.** The TURN workers own the shared port. Each datagram a worker receives on
//! its listening socket is sorted by its first byte (RFC 7983): 20-63 is DTLS and 128-191 is
//! RTP/RTCP, which TURN never uses, so they go to the SFU; 0-3 is STUN, which goes to the SFU
//! only when it is a Binding request whose USERNAME starts with one of the SFU peers' ICE
//! ufrags; everything else (TURN requests, ChannelData) stays with the TURN core. The SFU
//! thread owns the [`Sfu`] engine (all WebRTC peers of this relay), receives its datagrams over
//! a channel and sends from a duplicate of a listening socket, so replies come from the same
//! port.
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
//! [`Sfu::subscribe`]). Browsers call these
//! from any origin (CORS allows every origin: the bearer token, not a cookie, is what
//! authorizes, so another origin gains nothing).

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router as HttpRouter;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use cluster::media::{MediaClaims, MediaRole, TokenError};
use mio::{Events, Poll, Token, Waker};
use serde_json::json;
use tracing::{error, info};

use super::udp::{SendBatch, SendQueue};
use crate::sfu::route::{PeerId, Role};
use crate::sfu::webrtc::{Transmit, stun_ufrag};
use crate::sfu::{Codec, RouteStats, Sfu, SfuError, SfuStats};

/// Largest SDP offer accepted (browsers' offers with simulcast are a few KiB).
const MAX_SDP: usize = 64 * 1024;
const WAKER: Token = Token(0);
/// Inputs (mostly datagrams) waiting for the SFU thread, at most.
const QUEUE: usize = 16_384;

enum Input {
    Datagram {
        from: SocketAddr,
        data: Vec<u8>,
    },
    Publish {
        machine: String,
        offer: String,
        reply: tokio::sync::oneshot::Sender<Result<(PeerId, String), String>>,
    },
    Subscribe {
        machine: String,
        role: Role,
        label: String,
        session: String,
        offer: String,
        reply: tokio::sync::oneshot::Sender<Result<(PeerId, String), SfuError>>,
    },
    Remove {
        machine: String,
        id: PeerId,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    HandSeat {
        machine: String,
        to: Option<String>,
        reply: tokio::sync::oneshot::Sender<Result<Option<String>, String>>,
    },
    /// The sessions signaling has ended (the full set).
    EndSessions(HashSet<String>),
    Stop,
}

/// What the SFU thread publishes for `/metrics`, once per [`SNAPSHOT_INTERVAL`].
#[derive(Debug, Default, Clone)]
pub struct SfuSnapshot {
    pub stats: SfuStats,
    pub route: RouteStats,
    pub peers: usize,
    /// Per machine: ingest bitrate (payload bits per second over the last interval) and
    /// subscribers.
    pub machines: Vec<(String, u64, usize)>,
    /// Inputs dropped because the SFU thread's queue was full (counted by the senders).
    pub queue_full: u64,
}

const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

/// A way into the SFU thread, for the TURN workers and the HTTP handlers.
#[derive(Clone)]
pub struct SfuHandle {
    tx: SyncSender<Input>,
    /// Datagrams dropped because the SFU thread's queue was full (it is bounded, so a flood of
    /// DTLS- or RTP-looking junk costs at most [`QUEUE`] buffers, not unbounded memory).
    queue_full: Arc<AtomicU64>,
    waker: Arc<Waker>,
    ufrags: Arc<RwLock<HashSet<String>>>,
    snapshot: Arc<Mutex<SfuSnapshot>>,
}

impl std::fmt::Debug for SfuHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SfuHandle(..)")
    }
}

impl SfuHandle {
    fn send(&self, input: Input) -> bool {
        let ok = match self.tx.try_send(input) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.queue_full.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        };
        let _ = self.waker.wake();
        ok
    }

    /// Whether a datagram from the shared port is the SFU's (see the module docs).
    pub fn claims(&self, data: &[u8]) -> bool {
        match data.first() {
            Some(20..=63 | 128..=191) => true,
            // A Binding request (type 0x0001) naming one of our peers' ufrags.
            Some(0) if data.get(1) == Some(&1) => {
                stun_ufrag(data).is_some_and(|u| self.ufrags.read().unwrap_or_else(|e| e.into_inner()).contains(&u))
            }
            _ => false,
        }
    }

    /// Hands a datagram to the SFU thread (copied: the worker's buffer is reused at once).
    pub fn datagram(&self, from: SocketAddr, data: &[u8]) {
        self.send(Input::Datagram { from, data: data.to_vec() });
    }

    /// The latest figures (at most [`SNAPSHOT_INTERVAL`] old; `queue_full` is current).
    pub fn snapshot(&self) -> SfuSnapshot {
        let mut snap = self.snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        snap.queue_full = self.queue_full.load(Ordering::Relaxed);
        snap
    }

    /// Closes the subscribers of the sessions in `ended` (the full set signaling sent) and keeps
    /// new ones out; false if the SFU's queue was full (the caller tries again).
    pub fn end_sessions(&self, ended: HashSet<String>) -> bool {
        self.send(Input::EndSessions(ended))
    }

    /// Stops the SFU thread.
    pub fn stop(&self) {
        self.send(Input::Stop);
    }

    /// Publishes; `Err` is a refusal of the offer (400) or the SFU being unavailable (503).
    async fn publish(&self, machine: String, offer: String) -> Result<(PeerId, String), Problem> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.call(Input::Publish { machine, offer, reply }, rx, |e| problem(StatusCode::BAD_REQUEST, e)).await
    }

    async fn subscribe(
        &self,
        machine: String,
        role: Role,
        label: String,
        session: String,
        offer: String,
    ) -> Result<(PeerId, String), Problem> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.call(Input::Subscribe { machine, role, label, session, offer, reply }, rx, |e| match &e {
            SfuError::NoCommonCodec { publisher, viewer } => {
                let names = |codecs: &[Codec]| codecs.iter().map(|c| c.name()).collect::<Vec<_>>();
                let mut p = problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
                p.2 = Some(json!({ "publisher_codecs": names(publisher), "viewer_codecs": names(viewer) }));
                p
            }
            SfuError::SessionEnded(_) => problem(StatusCode::FORBIDDEN, e.to_string()),
            _ => problem(StatusCode::BAD_REQUEST, e.to_string()),
        })
        .await
    }

    /// Hands the seat; `Ok` is the previous holder, `Err` a 404 (no such room or viewer).
    async fn hand_seat(&self, machine: String, to: Option<String>) -> Result<Option<String>, Problem> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.call(Input::HandSeat { machine, to, reply }, rx, |e| problem(StatusCode::NOT_FOUND, e)).await
    }

    /// Sends `input` and waits for its reply; a refusal becomes the response `refused` makes of
    /// it, a full queue or a stopped SFU 503.
    async fn call<T, E>(
        &self,
        input: Input,
        rx: tokio::sync::oneshot::Receiver<Result<T, E>>,
        refused: impl FnOnce(E) -> Problem,
    ) -> Result<T, Problem> {
        let unavailable = || problem(StatusCode::SERVICE_UNAVAILABLE, "the SFU is not running or is overloaded");
        if !self.send(input) {
            return Err(unavailable());
        }
        rx.await.map_err(|_| unavailable())?.map_err(refused)
    }

    async fn remove(&self, machine: String, id: PeerId) -> bool {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Input::Remove { machine, id, reply }) && rx.await.unwrap_or(false)
    }
}

/// Starts the SFU thread. `socket` is a duplicate of a listening socket of the shared port;
/// `public` is the address advertised as the SFU's ICE candidate.
pub fn start(socket: UdpSocket, public: SocketAddr) -> anyhow::Result<(SfuHandle, std::thread::JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let sfu = Sfu::new(public);
    let snapshot = Arc::new(Mutex::new(SfuSnapshot::default()));
    let handle =
        SfuHandle { tx, queue_full: Arc::default(), waker, ufrags: sfu.ufrags(), snapshot: Arc::clone(&snapshot) };
    let thread =
        std::thread::Builder::new().name("relay-sfu".into()).spawn(move || run(sfu, poll, rx, socket, &snapshot))?;
    Ok((handle, thread))
}

fn run(mut sfu: Sfu, mut poll: Poll, rx: Receiver<Input>, socket: UdpSocket, snapshot: &Mutex<SfuSnapshot>) {
    let mut events = Events::with_capacity(8);
    let mut last_snapshot = Instant::now();
    let mut last_bytes: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut queue = SendQueue::new();
    let mut out: Vec<Transmit> = Vec::new();
    let fd = socket.as_raw_fd();
    loop {
        let now = Instant::now();
        let timeout = sfu.poll_timeout().map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now));
        if let Err(e) = poll.poll(&mut events, Some(timeout.min(Duration::from_secs(1))))
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            error!(error = %e, "SFU poll failed; SFU stopping");
            return;
        }
        let now = Instant::now();
        loop {
            match rx.try_recv() {
                Ok(Input::Datagram { from, data }) => {
                    sfu.handle_datagram(now, from, &data);
                }
                Ok(Input::Publish { machine, offer, reply }) => {
                    let _ = reply.send(sfu.publish(now, &machine, &offer).map_err(|e| e.to_string()));
                }
                Ok(Input::Subscribe { machine, role, label, session, offer, reply }) => {
                    let _ = reply.send(sfu.subscribe(now, &machine, role, &label, Some(&session), &offer));
                }
                Ok(Input::EndSessions(ended)) => {
                    sfu.end_sessions(&ended);
                }
                Ok(Input::HandSeat { machine, to, reply }) => {
                    let result = sfu.hand_seat_to(&machine, to.as_deref()).map_err(|e| e.to_string());
                    if result.is_ok() {
                        info!(machine, to = to.as_deref().unwrap_or("nobody"), "seat handed");
                    }
                    let _ = reply.send(result);
                }
                Ok(Input::Remove { machine, id, reply }) => {
                    let ours = sfu.machine_of(id) == Some(machine.as_str());
                    let _ = reply.send(ours && sfu.remove(id));
                }
                Ok(Input::Stop) | Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => break,
            }
        }
        if sfu.poll_timeout().is_some_and(|t| t <= now) {
            sfu.handle_timeout(now);
        }
        if now.saturating_duration_since(last_snapshot) >= SNAPSHOT_INTERVAL {
            let secs = now.saturating_duration_since(last_snapshot).as_secs_f64();
            let mut machines = Vec::new();
            let mut bytes_now = std::collections::HashMap::new();
            for (machine, bytes, subscribers) in sfu.router().rooms() {
                // A room dropped and made again for the same machine counts from 0 again.
                let before = last_bytes.get(machine).copied().filter(|&b| b <= bytes).unwrap_or(bytes);
                machines.push((machine.to_owned(), ((bytes - before) as f64 * 8.0 / secs) as u64, subscribers));
                bytes_now.insert(machine.to_owned(), bytes);
            }
            last_bytes = bytes_now;
            last_snapshot = now;
            *snapshot.lock().unwrap_or_else(|e| e.into_inner()) = SfuSnapshot {
                stats: sfu.stats().clone(),
                route: sfu.router().stats().clone(),
                peers: sfu.peer_count(),
                machines,
                queue_full: 0,
            };
        }
        sfu.drain_transmits(&mut out);
        if !out.is_empty() {
            {
                let mut batch = SendBatch::new(&mut queue, fd);
                for t in &out {
                    batch.push(t.to, &t.data);
                }
                batch.flush();
            }
            out.clear();
        }
    }
}

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
    let c = claims(&state, &headers)?;
    if c.role != MediaRole::Publisher || c.machine != machine {
        return Err(problem(StatusCode::FORBIDDEN, format!("this token does not publish machine {machine:?}")));
    }
    refuse_when_draining(&state)?;
    let offer = offer(&headers, &body)?;
    let (id, answer) = state.sfu.publish(machine.clone(), offer).await?;
    info!(machine, peer = id.0, "WHIP publish");
    Ok(created(format!("/whip/{machine}/{}", id.0), answer))
}

async fn whep(
    State(state): State<HttpState>,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let c = claims(&state, &headers)?;
    let role = match c.role {
        MediaRole::Player => Role::Player,
        MediaRole::Spectator => Role::Spectator,
        MediaRole::Publisher | MediaRole::Operator => {
            return Err(problem(StatusCode::FORBIDDEN, "only a player or spectator token subscribes"));
        }
    };
    if c.session.as_deref() != Some(session.as_str()) {
        return Err(problem(StatusCode::FORBIDDEN, format!("this token is not for session {session:?}")));
    }
    if state.ended_sessions.read().unwrap_or_else(|e| e.into_inner()).contains(&session) {
        return Err(problem(StatusCode::FORBIDDEN, format!("session {session:?} has ended; its tokens are revoked")));
    }
    refuse_when_draining(&state)?;
    let offer = offer(&headers, &body)?;
    let (id, answer) = state.sfu.subscribe(c.machine.clone(), role, c.sub.clone(), session.clone(), offer).await?;
    info!(session, machine = c.machine, peer = id.0, ?role, "WHEP subscribe");
    Ok(created(format!("/whep/{session}/{}", id.0), answer))
}

async fn whip_delete(
    State(state): State<HttpState>,
    Path((machine, peer)): Path<(String, u64)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let c = claims(&state, &headers)?;
    if c.role != MediaRole::Publisher || c.machine != machine {
        return Err(problem(StatusCode::FORBIDDEN, format!("this token does not publish machine {machine:?}")));
    }
    end(&state, machine, peer).await
}

async fn whep_delete(
    State(state): State<HttpState>,
    Path((session, peer)): Path<(String, u64)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let c = claims(&state, &headers)?;
    if !matches!(c.role, MediaRole::Player | MediaRole::Spectator) || c.session.as_deref() != Some(session.as_str()) {
        return Err(problem(StatusCode::FORBIDDEN, format!("this token is not for session {session:?}")));
    }
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
    let c = claims(&state, &headers)?;
    if c.role != MediaRole::Operator || c.machine != machine {
        return Err(problem(StatusCode::FORBIDDEN, format!("this token does not operate machine {machine:?}")));
    }
    let request: SeatRequest = serde_json::from_slice(&body)
        .map_err(|e| problem(StatusCode::BAD_REQUEST, format!("expected {{\"to\": viewer id or null}}: {e}")))?;
    let previous = state.sfu.hand_seat(machine.clone(), request.to.clone()).await?;
    Ok(axum::Json(json!({ "machine": machine, "holder": request.to, "previous": previous })).into_response())
}
