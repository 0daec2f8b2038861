//! The service: the router with its middleware, background upkeep, and `run` with graceful
//! shutdown. What handlers share is in [`crate::state`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tracing::{info, warn};

use crate::error::ApiError;
pub use crate::state::AppState;
use crate::state::now_ms;

/// Counts every response by route and status, and rate-limits clients (relays and scrapes are
/// exempt: they are ours and their rate is fixed).
async fn observe(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let route = matched.as_ref().map_or("unmatched", |m| m.as_str()).to_owned();
    // Relays and scrapes are ours; sockets are long-lived and limited per frame by size.
    let exempt = matches!(route.as_str(), "/metrics" | "/healthz" | "/v1/ws" | cluster::heartbeat::PATH);
    let response = if !exempt && !state.limiter.allow(state.client_ip(peer, request.headers()), Instant::now()) {
        ApiError::RateLimited.into_response()
    } else {
        let response = next.run(request).await;
        // The router answers a wrong method with an empty 405; every error here is JSON.
        if response.status() == axum::http::StatusCode::METHOD_NOT_ALLOWED && !is_json(&response) {
            let allow = response.headers().get(axum::http::header::ALLOW).cloned();
            let mut json = ApiError::MethodNotAllowed.into_response();
            if let Some(allow) = allow {
                json.headers_mut().insert(axum::http::header::ALLOW, allow);
            }
            json
        } else {
            response
        }
    };
    state.metrics.http_requests.with_label_values(&[&route, response.status().as_str()]).inc();
    response
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
}

pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    crate::api::routes()
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Periodic upkeep: ends overdue sessions, refreshes gauges, forgets long-dead relays.
pub async fn upkeep(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for round in 0u64.. {
        tick.tick().await;
        let up = state.metrics.database_up.with_label_values(&[] as &[&str]);
        // The retention period too, at start and every minute (an indexed delete).
        let done = match upkeep_once(&state).await {
            Ok(()) if round % 60 == 0 => forget_old_sessions(&state).await,
            other => other,
        };
        match done {
            Ok(()) => up.set(1),
            Err(e) => {
                up.set(0);
                warn!(error = format!("{e:#}"), "upkeep failed");
            }
        }
    }
}

/// Forgets the sessions that ended longer ago than `sessions.retention_days`.
pub async fn forget_old_sessions(state: &AppState) -> anyhow::Result<()> {
    let Some(retention) = state.config.retention else { return Ok(()) };
    let gone = state.store.forget_sessions(now_ms() - retention.as_millis() as i64).await?;
    if gone > 0 {
        info!(sessions = gone, retention_days = retention.as_secs() / 86_400, "forgot ended sessions past retention");
    }
    Ok(())
}

pub async fn upkeep_once(state: &AppState) -> anyhow::Result<()> {
    let now = now_ms();
    let c = &state.config;
    let overdue = state
        .store
        .overdue_sessions(
            now,
            c.connect_timeout.as_millis() as i64,
            c.max_session.as_millis() as i64,
            now - c.machine_offline_after.as_millis() as i64,
        )
        .await?;
    for (id, reason) in overdue {
        if state.store.end_session(&id, reason, "signaling", now).await? {
            info!(session = %id, reason, "session ended");
            state.metrics.sessions_ended.with_label_values(&[reason]).inc();
            if let Some(s) = state.store.session(&id).await? {
                crate::ws::notify_ended(state, &s.player, &s.machine_id, &id, reason).await;
            }
        }
    }
    // A relay silent for a day is gone for good; it registers again if it comes back.
    state.store.forget_relays(now - 24 * 3600 * 1000).await?;
    state.limiter.sweep(Instant::now());
    state.hub.sweep();
    if state.store.postgres_url().is_some() {
        state.store.sweep_messages(now - crate::hub::PENDING_TTL.as_millis() as i64).await?;
    }
    crate::placement::refresh_gauges(state, now).await?;
    Ok(())
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn run(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let upkeep = tokio::spawn(upkeep(state.clone()));
    let listener_task = tokio::spawn(crate::ws::listen(state.clone()));
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    upkeep.abort();
    listener_task.abort();
    served.context("HTTP server failed")
}
