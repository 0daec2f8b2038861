//! What every handler shares: the config, the store, token keys, the GeoIP database, metrics,
//! the per-IP rate limiter and the WebSocket hub; and the wall clock in the units the store
//! keeps.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::auth::Keys;
use crate::config::Config;
use crate::hub::Hub;
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
    pub hub: Hub,
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
        metrics.init_series(&config.regions.iter().map(|r| r.id.as_str()).collect::<Vec<_>>());
        let limiter = RateLimiter::new(config.rate_limit_per_ip);
        let hub = Hub::default();
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

/// The wall clock in the store's unit (ms) and the tokens' (s): one clock for the whole system.
pub use cluster::time::{unix_now as now_unix, unix_now_ms as now_ms};

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
