//! The service: shared state, the router, background upkeep, and `run` with graceful shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tracing::{info, warn};

use crate::auth::Keys;
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::Store;

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub store: Store,
    pub keys: Keys,
    pub geoip: Option<geo::GeoIp>,
    pub metrics: Metrics,
    pub limiter: RateLimiter,
    pub hub: crate::ws::Hub,
    pub started: Instant,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        let store = Store::open(&config.store).await?;
        store.ensure_secrets(&config.seed_secrets, now_ms()).await?;
        let geoip = match &config.geoip_db {
            Some(path) => Some(
                geo::GeoIp::open(path)
                    .with_context(|| format!("selection.geoip_db: cannot open {}", path.display()))?,
            ),
            None => None,
        };
        let keys = Keys::new(&config.jwt_key);
        let metrics = Metrics::new()?;
        let limiter = RateLimiter::new(config.rate_limit_per_ip);
        let hub = crate::ws::Hub::default();
        Ok(Self(Arc::new(Inner { config, store, keys, geoip, metrics, limiter, hub, started: Instant::now() })))
    }

    /// The client's IP: the socket peer, or the last address in `X-Forwarded-For` that is not a
    /// trusted proxy when the peer is one (proxies append, so earlier entries are client-written
    /// and cannot be trusted).
    pub fn client_ip(&self, peer: SocketAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        let mut ip = peer.ip();
        if !self.config.trusted_proxies.contains(&ip) {
            return ip;
        }
        if let Some(xff) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            for hop in xff.rsplit(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(hop) if self.config.trusted_proxies.contains(&hop) => ip = hop,
                    Ok(hop) => return hop,
                    Err(_) => break,
                }
            }
        }
        ip
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A token bucket per client IP: `rate` requests per second with a burst of `2 × rate`.
pub struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate: u32) -> Self {
        Self { rate: f64::from(rate), buckets: Mutex::new(HashMap::new()) }
    }

    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let burst = 2.0 * self.rate;
        // The lock guards a map update of a few nanoseconds; poisoning would need a panic inside.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops buckets that have refilled completely (idle clients), bounding the map.
    pub fn sweep(&self, now: Instant) {
        let full_after = Duration::from_secs_f64(2.0 + 2.0 * self.rate.max(1.0) / self.rate.max(1.0));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.retain(|_, (_, last)| now.duration_since(*last) < full_after);
    }
}

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
    loop {
        tick.tick().await;
        if let Err(e) = upkeep_once(&state).await {
            warn!(error = format!("{e:#}"), "upkeep failed");
        }
    }
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
        state.store.sweep_messages(now - crate::ws::PENDING_TTL.as_millis() as i64).await?;
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
