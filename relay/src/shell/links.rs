//! The relay's link endpoint in the running process (`[link]`): its TLS loaded from the files,
//! checked against this relay's id, bound before the banner; relays that link in are admitted
//! (see `crate::link`) and their links kept until they close. `/metrics` counts refusals by
//! reason and the links open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::bail;
use prometheus::IntGauge;
use tokio::sync::Semaphore;
use tracing::{debug, info};

use crate::config::LinkConfig;
use crate::link::endpoint::{Link, LinkEndpoint};
use crate::link::tls::{LinkTls, Refusals};

/// Handshakes of relays linking in that run at once; more wait to be accepted.
const MAX_ADMISSIONS: usize = 64;

/// The config keys of the three files, for error messages.
const KEYS: [&str; 3] = ["link.ca", "link.cert", "link.key"];

/// The link series in `/metrics`.
#[derive(Clone)]
pub struct LinkMetrics {
    pub refusals: Refusals,
    /// `relay_links_open`: links to other relays, either way.
    pub open: IntGauge,
}

/// The running link endpoint and the links it holds, by peer relay id.
pub struct Links {
    endpoint: Arc<LinkEndpoint>,
    open: Arc<Mutex<HashMap<String, quinn::Connection>>>,
    gauge: IntGauge,
}

impl Links {
    /// Loads the link TLS and binds `config.listen` (within the runtime). `relay_id` is this
    /// relay's id in the cluster, which its certificate must name.
    pub fn start(config: &LinkConfig, relay_id: Option<&str>, metrics: LinkMetrics) -> anyhow::Result<Self> {
        let tls = LinkTls::from_files(&config.ca, &config.cert, &config.key, KEYS, metrics.refusals)?;
        if let Some(id) = relay_id
            && tls.relay_id() != id
        {
            bail!(
                "link.cert: is for relay {:?}, but this relay is {id:?} (cluster.relay_id); issue its own with \
                 `relayctl ca issue {id}`",
                tls.relay_id()
            );
        }
        let endpoint = Arc::new(LinkEndpoint::bind(config.listen, tls)?);
        Ok(Self { endpoint, open: Arc::default(), gauge: metrics.open })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn relay_id(&self) -> &str {
        self.endpoint.relay_id()
    }

    /// Admits relays that link in, on the current runtime, until the endpoint closes. Each
    /// handshake runs in its own task, at most [`MAX_ADMISSIONS`] at once, so a peer that goes
    /// silent mid-handshake holds up nobody else.
    pub fn serve(&self) {
        let (endpoint, open, gauge) = (Arc::clone(&self.endpoint), Arc::clone(&self.open), self.gauge.clone());
        let slots = Arc::new(Semaphore::new(MAX_ADMISSIONS));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
                let Some(incoming) = endpoint.incoming().await else { return };
                let (endpoint, open, gauge) = (Arc::clone(&endpoint), Arc::clone(&open), gauge.clone());
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    let admitted = endpoint.admit(incoming).await;
                    drop(permit);
                    match admitted {
                        Ok(link) => hold(link, open, gauge).await,
                        Err(e) => debug!(%remote, "link refused: {e}"),
                    }
                });
            }
        });
    }

    /// Closes every link and stops accepting.
    pub fn close(&self) {
        self.endpoint.close();
    }
}

/// Keeps an admitted link in the table until it closes (a newer link from the same relay
/// replaces it).
async fn hold(link: Link, open: Arc<Mutex<HashMap<String, quinn::Connection>>>, gauge: IntGauge) {
    let (peer, connection) = (link.peer, link.connection);
    info!(peer = %peer, remote = %connection.remote_address(), "relay linked in");
    let id = connection.stable_id();
    let replaced = lock(&open).insert(peer.clone(), connection.clone());
    if let Some(old) = replaced {
        // The peer linked again (it restarted): its new link replaces the old one.
        old.close(0u32.into(), b"replaced by a new link");
    }
    gauge.set(lock(&open).len() as i64);
    let reason = connection.closed().await;
    let mut open = lock(&open);
    if open.get(&peer).is_some_and(|c| c.stable_id() == id) {
        open.remove(&peer);
    }
    gauge.set(open.len() as i64);
    info!(peer = %peer, %reason, "relay link closed");
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
