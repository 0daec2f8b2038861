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
//!
//! One file per resource: [`relays`], [`regions`], [`machines`], [`sessions`], [`admin`]; what
//! handlers take from a request is in [`extract`].

use axum::Router;
use axum::routing::{delete, get, post};

use crate::state::AppState;

pub mod admin;
pub mod extract;
pub mod machines;
pub mod regions;
pub mod relays;
pub mod sessions;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/metrics", get(admin::metrics))
        .route(cluster::heartbeat::PATH, post(relays::relay_heartbeat))
        .route("/v1/regions", get(regions::regions))
        .route("/v1/ice-config", post(regions::ice_config))
        .route("/v1/machines", get(machines::list_machines))
        .route("/v1/machines/register", post(machines::register_machine))
        .route("/v1/machines/heartbeat", post(machines::machine_heartbeat))
        .route("/v1/sessions", post(sessions::create_session).get(sessions::list_sessions))
        .route("/v1/sessions/{id}", get(sessions::show_session))
        .route("/v1/sessions/{id}/connected", post(sessions::session_connected))
        .route("/v1/sessions/{id}/end", post(sessions::end_session))
        .route("/v1/sessions/{id}/ice-config", post(sessions::session_ice_config))
        .route("/v1/sessions/{id}/watch", post(sessions::watch_session))
        .route("/v1/sessions/{id}/seat", post(sessions::hand_seat))
        .route("/v1/ws", get(crate::ws::upgrade))
        .route("/v1/relays", get(relays::list_relays))
        .route("/v1/relays/{id}", delete(relays::remove_relay))
        .route("/v1/relays/{id}/drain", post(relays::drain_relay))
        .route("/v1/relays/{id}/undrain", post(relays::undrain_relay))
        .route("/v1/admin/status", get(admin::status))
        .route("/v1/admin/keys/rotate", post(admin::rotate_keys))
        .route("/v1/admin/tokens", post(admin::mint_token))
}
