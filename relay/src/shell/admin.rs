//! The admin HTTP listener (loopback by default): `/metrics` in the Prometheus text format and
//! `/healthz`, which answers 200 while the relay takes new allocations and 503 while it drains, so
//! a load balancer or signaling stops sending players to it; its body gives the allocations held
//! and the relay's capacity (`config::Capacity`). `POST /reload` re-reads the
//! configuration like SIGHUP and answers with what it applied (`shell::reload`): 200 with
//! `{"applied": [...], "restart_required": [...]}`, or 400 with `{"error": ...}` when the new
//! configuration is invalid (nothing changed then). Anything else is a JSON 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::metrics::Metrics;
use super::reload::Live;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub draining: Arc<AtomicBool>,
    pub live: Arc<Live>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/reload", post(reload))
        .fallback(not_found)
        .with_state(state)
}

async fn reload(State(state): State<AdminState>) -> Response {
    let live = Arc::clone(&state.live);
    match tokio::task::spawn_blocking(move || live.reload()).await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, Json(json!({ "error": format!("{e:#}") }))).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": "reload task failed" }))).into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let body = state.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn healthz(State(state): State<AdminState>) -> Response {
    let (allocations, capacity) = (state.metrics.allocations(), state.metrics.capacity());
    if state.draining.load(Ordering::Relaxed) {
        let body = json!({ "status": "draining", "allocations": allocations, "capacity": capacity });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else {
        Json(json!({ "status": "ok", "allocations": allocations, "capacity": capacity })).into_response()
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "not found", "endpoints": ["/metrics", "/healthz", "POST /reload"] })),
    )
        .into_response()
}

/// Binds the admin listener; fails (naming the key) if the address is taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("admin.listen: cannot bind {addr}: {e}"))
}
