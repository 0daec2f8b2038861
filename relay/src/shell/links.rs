//! The relay's links in the running process (`[link]`): their TLS loaded from the files,
//! checked against this relay's id, the link socket bound before the banner; relays that link
//! in are admitted (see `crate::link`), and links the SFU or signaling's mesh asks for are
//! opened, with backoff while they fail.
//!
//! Every link, whichever side opened it, carries both ways: each side opens one unidirectional
//! stream for its control messages and reads the peer's, and media goes as datagrams. The QUIC
//! of the links runs sans-IO ([`LinkNode`]) on the thread that drives it
//! ([`super::link_driver`]): the SFU thread, which owns what the links mean
//! (`crate::sfu::engine`'s link side), or a thread of its own on a relay without an SFU. This
//! module keeps the policy on the runtime: which links to open, when to retry, what the
//! heartbeat reports. `/metrics` counts refusals by reason, the links open, datagrams and bytes
//! per peer each way, datagrams dropped by reason, and each link's RTT.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::link_driver::{Command, LinkDriver, LinkMetrics, Report};
use super::sfu::SfuHandle;
use ::cluster::heartbeat::{LinkPeer, LinkReport, LinkState};

use crate::config::LinkConfig;
use crate::link::node::LinkNode;
use crate::link::tls::LinkTls;
use crate::sfu::engine::LinkView;

/// The first retry of a link that failed, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The config keys of the three files, for error messages.
const KEYS: [&str; 3] = ["link.ca", "link.cert", "link.key"];

/// The running links: the node and its socket until [`serve`](Links::serve) hands them to the
/// thread that drives them, and the way to that thread.
pub struct Links {
    relay_id: String,
    local_addr: SocketAddr,
    metrics: LinkMetrics,
    handle: LinkHandle,
    peers: Mutex<Option<mpsc::UnboundedReceiver<Vec<LinkPeer>>>>,
    unserved: Mutex<Option<(LinkNode, std::net::UdpSocket)>>,
    driver: Mutex<Option<DriverTx>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Each link up or wanted, by peer relay id: its state and (while up) its RTT in ms.
type StatusMap = BTreeMap<String, (LinkState, Option<f64>)>;

/// What the heartbeat needs of the links: their state, RTTs and counters, and where to hand
/// the relays to link with.
#[derive(Clone)]
pub struct LinkHandle {
    /// Each link up or wanted, by peer relay id: its state and (while up) its RTT in ms.
    status: Arc<Mutex<StatusMap>>,
    metrics: LinkMetrics,
    peers: mpsc::UnboundedSender<Vec<LinkPeer>>,
}

impl LinkHandle {
    /// Each open link's RTT in ms, by peer relay id.
    pub fn rtts(&self) -> BTreeMap<String, f64> {
        lock(&self.status).iter().filter_map(|(peer, (_, rtt))| rtt.map(|ms| (peer.clone(), ms))).collect()
    }

    /// One report per link up or wanted: its state and RTT from the links' task, datagrams and
    /// bytes each way from `/metrics`, and `views`, the SFU's side (repairs, machines).
    pub fn reports(&self, views: &[(String, LinkView)]) -> Vec<LinkReport> {
        let status = lock(&self.status).clone();
        let mut peers: Vec<&str> =
            status.keys().map(String::as_str).chain(views.iter().map(|(p, _)| p.as_str())).collect();
        peers.sort_unstable();
        peers.dedup();
        let count = |peer: &str, direction: &str| self.metrics.datagrams.with_label_values(&[peer, direction]).get();
        let bytes = |peer: &str, direction: &str| self.metrics.bytes.with_label_values(&[peer, direction]).get();
        peers
            .into_iter()
            .map(|peer| {
                let (state, rtt_ms) = status.get(peer).copied().unwrap_or((LinkState::Retrying, None));
                let view = views.iter().find(|(p, _)| p == peer).map(|(_, v)| v.clone()).unwrap_or_default();
                LinkReport {
                    peer: peer.to_owned(),
                    state,
                    rtt_ms,
                    datagrams_sent: count(peer, "sent"),
                    datagrams_received: count(peer, "received"),
                    bytes_sent: bytes(peer, "sent"),
                    bytes_received: bytes(peer, "received"),
                    repaired: view.repaired,
                    lost: view.lost,
                    resent: view.resent,
                    watching: u32::try_from(view.watching).unwrap_or(u32::MAX),
                    serving: u32::try_from(view.serving).unwrap_or(u32::MAX),
                }
            })
            .collect()
    }

    /// The relays signaling lists as taking links (each heartbeat reply).
    pub fn set_peers(&self, peers: Vec<LinkPeer>) {
        let _ = self.peers.send(peers);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The way to the thread that drives the links.
#[derive(Clone)]
enum DriverTx {
    Sfu(SfuHandle),
    Alone(std::sync::mpsc::Sender<Command>, Arc<mio::Waker>),
}

impl DriverTx {
    fn send(&self, command: Command) {
        match self {
            Self::Sfu(sfu) => {
                sfu.link_command(command);
            }
            Self::Alone(tx, waker) => {
                let _ = tx.send(command);
                let _ = waker.wake();
            }
        }
    }
}

impl Links {
    /// Loads the link TLS and binds `config.listen`. `relay_id` is this relay's id in the
    /// cluster, which its certificate must name.
    pub fn start(config: &LinkConfig, relay_id: Option<&str>, metrics: LinkMetrics) -> anyhow::Result<Self> {
        let tls = LinkTls::from_files(&config.ca, &config.cert, &config.key, KEYS, metrics.refusals.clone())?;
        if let Some(id) = relay_id
            && tls.relay_id() != id
        {
            bail!(
                "link.cert: is for relay {:?}, but this relay is {id:?} (cluster.relay_id); issue its own with \
                 `relayctl ca issue {id}`",
                tls.relay_id()
            );
        }
        let own = tls.relay_id().to_owned();
        let node = LinkNode::new(tls)?;
        let socket = std::net::UdpSocket::bind(config.listen)
            .with_context(|| format!("link.listen: binding {}", config.listen))?;
        let local_addr = socket.local_addr()?;
        let (peers_tx, peers) = mpsc::unbounded_channel();
        let handle = LinkHandle { status: Arc::default(), metrics: metrics.clone(), peers: peers_tx };
        Ok(Self {
            relay_id: own,
            local_addr,
            metrics,
            handle,
            peers: Mutex::new(Some(peers)),
            unserved: Mutex::new(Some((node, socket))),
            driver: Mutex::new(None),
            thread: Mutex::new(None),
        })
    }

    pub fn handle(&self) -> LinkHandle {
        self.handle.clone()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    pub fn relay_id(&self) -> &str {
        &self.relay_id
    }

    /// Serves links from now on (once; within the runtime): the SFU thread drives them when
    /// there is an SFU, else a thread of their own; this runtime's task opens the links
    /// wanted, with backoff while they fail.
    pub fn serve(&self, sfu: Option<SfuHandle>) -> anyhow::Result<()> {
        let Some((node, socket)) = lock(&self.unserved).take() else { bail!("links served twice") };
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let driver = LinkDriver::new(node, socket, reports_tx, self.metrics.clone())?;
        let tx = match sfu {
            Some(sfu) => {
                anyhow::ensure!(sfu.attach_links(driver), "the SFU thread is not running");
                DriverTx::Sfu(sfu)
            }
            None => {
                let poll = mio::Poll::new()?;
                let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0))?);
                let (tx, rx) = std::sync::mpsc::channel();
                let thread = std::thread::Builder::new()
                    .name("relay-links".into())
                    .spawn(move || super::link_driver::run_alone(driver, rx, poll))?;
                *lock(&self.thread) = Some(thread);
                DriverTx::Alone(tx, waker)
            }
        };
        *lock(&self.driver) = Some(tx.clone());
        let (retries_tx, retries) = mpsc::unbounded_channel();
        let manager = Manager {
            own: Arc::from(self.relay_id.as_str()),
            driver: tx,
            linked: HashSet::new(),
            wanted: HashMap::new(),
            mesh: HashSet::new(),
            status: Arc::clone(&self.handle.status),
            retries: retries_tx,
        };
        let peers = lock(&self.peers).take().unwrap_or_else(|| mpsc::unbounded_channel().1);
        tokio::spawn(manager.run(reports, retries, peers));
        Ok(())
    }

    /// Closes every link (the closes go out before the driving thread stops).
    pub fn close(&self) {
        if let Some(driver) = lock(&self.driver).take() {
            driver.send(Command::Close);
        }
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

/// What the manager tells itself.
enum Retry {
    /// Time to try again to open a link.
    Now(Arc<str>),
    /// The address did not resolve: this attempt failed.
    Unresolved(Arc<str>, String),
}

/// A link the SFU or the mesh wants: where, and how long to wait after the next failure.
struct Wanted {
    addr: String,
    backoff: Duration,
    connecting: bool,
}

/// The links' policy, on the runtime: which links to open (the SFU's and signaling's), when to
/// retry, and the status the heartbeat reports.
struct Manager {
    own: Arc<str>,
    driver: DriverTx,
    linked: HashSet<Arc<str>>,
    wanted: HashMap<Arc<str>, Wanted>,
    /// Relays kept linked whatever the SFU needs (signaling's list, those whose id sorts after
    /// this relay's: one link per pair), for their RTTs and a link ready for viewers.
    mesh: HashSet<Arc<str>>,
    /// Shared with the heartbeat (see [`LinkHandle`]).
    status: Arc<Mutex<StatusMap>>,
    retries: mpsc::UnboundedSender<Retry>,
}

impl Manager {
    async fn run(
        mut self,
        mut reports: mpsc::UnboundedReceiver<Report>,
        mut retries: mpsc::UnboundedReceiver<Retry>,
        mut peers: mpsc::UnboundedReceiver<Vec<LinkPeer>>,
    ) {
        loop {
            tokio::select! {
                Some(report) = reports.recv() => self.report(report),
                Some(retry) = retries.recv() => self.retry(retry),
                Some(list) = peers.recv() => self.mesh(list),
                else => return,
            }
        }
    }

    /// Signaling's list of relays that take links: keep a link to each whose id sorts after
    /// ours; stop retrying those no longer listed (unless the SFU wants them).
    fn mesh(&mut self, list: Vec<LinkPeer>) {
        let mut mesh = HashSet::new();
        let own = Arc::clone(&self.own);
        for peer in list.into_iter().filter(|p| p.id.as_str() > &*own) {
            let id: Arc<str> = Arc::from(peer.id.as_str());
            mesh.insert(Arc::clone(&id));
            if !self.mesh.contains(&id) {
                self.want(id, peer.link);
            }
        }
        for gone in self.mesh.difference(&mesh) {
            self.wanted.remove(gone);
            self.unwanted(gone);
        }
        self.mesh = mesh;
    }

    /// A link to `relay` is wanted at `addr` (empty: where it was wanted before).
    fn want(&mut self, relay: Arc<str>, addr: String) {
        let wanted = self.wanted.entry(Arc::clone(&relay)).or_insert_with(|| Wanted {
            addr: addr.clone(),
            backoff: FIRST_BACKOFF,
            connecting: false,
        });
        if !addr.is_empty() {
            wanted.addr = addr;
        }
        if !self.linked.contains(&relay) {
            self.connect(&relay);
        }
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Wanted { relay, addr } => self.want(relay, addr),
            Report::Unwanted { relay } => {
                if !self.mesh.contains(&relay) {
                    self.wanted.remove(&relay);
                    self.unwanted(&relay);
                }
            }
            Report::Linked { relay, rtt } => {
                info!(peer = %relay, "relay linked");
                if let Some(w) = self.wanted.get_mut(&relay) {
                    w.backoff = FIRST_BACKOFF;
                    w.connecting = false;
                }
                lock(&self.status).insert(relay.to_string(), (LinkState::Up, Some(rtt.as_secs_f64() * 1000.0)));
                self.linked.insert(relay);
            }
            Report::Closed { relay } => {
                self.linked.remove(&relay);
                if self.wanted.contains_key(&relay) {
                    // Wanted (by the mesh or the SFU): open it again at once, then back off
                    // (an attempt already under way keeps it `retrying` until it ends).
                    self.set_status(&relay, LinkState::Retrying);
                    self.connect(&relay);
                } else {
                    lock(&self.status).remove(&*relay);
                }
            }
            Report::Failed { relay, reason } => self.failed(&relay, &reason),
            Report::Rtts(rtts) => {
                let mut status = lock(&self.status);
                for (relay, rtt) in rtts {
                    if let Some((LinkState::Up, ms)) = status.get_mut(&*relay) {
                        *ms = Some(rtt.as_secs_f64() * 1000.0);
                    }
                }
            }
        }
    }

    fn retry(&mut self, retry: Retry) {
        match retry {
            Retry::Now(relay) => {
                if let Some(w) = self.wanted.get_mut(&relay) {
                    w.connecting = false;
                }
                if !self.linked.contains(&relay) {
                    self.connect(&relay);
                }
            }
            Retry::Unresolved(relay, reason) => self.failed(&relay, &reason),
        }
    }

    /// An attempt to open a link failed: the next waits out the backoff.
    fn failed(&mut self, relay: &Arc<str>, reason: &str) {
        let Some(wanted) = self.wanted.get_mut(relay) else { return };
        let backoff = wanted.backoff;
        wanted.backoff = (backoff * 2).min(MAX_BACKOFF);
        warn!(peer = %relay, addr = %wanted.addr, retry_in = ?backoff, "link failed: {reason}");
        if !self.linked.contains(relay) {
            self.set_status(relay, LinkState::Retrying);
        }
        let (retries, relay) = (self.retries.clone(), Arc::clone(relay));
        tokio::spawn(async move {
            tokio::time::sleep(backoff).await;
            let _ = retries.send(Retry::Now(relay));
        });
    }

    /// A link that is not up: `state`, and no RTT.
    fn set_status(&self, relay: &str, state: LinkState) {
        lock(&self.status).insert(relay.to_owned(), (state, None));
    }

    /// No longer wanted: a link that is not up leaves the reports.
    fn unwanted(&self, relay: &str) {
        if !self.linked.contains(relay) {
            lock(&self.status).remove(relay);
        }
    }

    /// Opens a link to a wanted relay (one attempt at a time): resolves its address here, then
    /// the driver connects; a failure schedules a retry after the relay's backoff, which
    /// doubles up to [`MAX_BACKOFF`].
    fn connect(&mut self, relay: &Arc<str>) {
        let Some(wanted) = self.wanted.get_mut(relay) else { return };
        if wanted.connecting {
            return;
        }
        wanted.connecting = true;
        let addr = wanted.addr.clone();
        self.set_status(relay, LinkState::Connecting);
        let (driver, retries, relay) = (self.driver.clone(), self.retries.clone(), Arc::clone(relay));
        tokio::spawn(async move {
            match tokio::net::lookup_host(&addr).await.map(|mut a| a.next()) {
                Ok(Some(to)) => driver.send(Command::Connect { relay, addr: to }),
                Ok(None) => {
                    let _ = retries.send(Retry::Unresolved(relay, format!("{addr}: no address")));
                }
                Err(e) => {
                    let _ = retries.send(Retry::Unresolved(relay, format!("{addr}: {e}")));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::tls::Refusals;
    use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts};

    fn metrics() -> LinkMetrics {
        let vec = |name: &str, labels: &[&str]| IntCounterVec::new(Opts::new(name, "test"), labels).unwrap();
        LinkMetrics {
            refusals: Refusals::new(vec("refusals", &["side", "reason"])),
            open: IntGauge::new("open", "test").unwrap(),
            datagrams: vec("datagrams", &["peer", "direction"]),
            bytes: vec("bytes", &["peer", "direction"]),
            dropped: vec("dropped", &["reason"]),
            oversize: vec("oversize", &["peer"]),
            rtt: GaugeVec::new(Opts::new("rtt", "test"), &["peer"]).unwrap(),
            unknown_frames: IntCounter::new("unknown", "test").unwrap(),
        }
    }

    #[test]
    fn reports_join_the_links_task_the_counters_and_the_sfu() {
        let (peers, _rx) = mpsc::unbounded_channel();
        let handle = LinkHandle { status: Arc::default(), metrics: metrics(), peers };
        lock(&handle.status).insert("ap-1".into(), (LinkState::Up, Some(151.5)));
        lock(&handle.status).insert("us-1".into(), (LinkState::Connecting, None));
        handle.metrics.datagrams.with_label_values(&["ap-1", "sent"]).inc_by(900);
        handle.metrics.bytes.with_label_values(&["ap-1", "sent"]).inc_by(1_000_000);
        handle.metrics.datagrams.with_label_values(&["ap-1", "received"]).inc_by(3);
        handle.metrics.bytes.with_label_values(&["ap-1", "received"]).inc_by(120);
        let up = LinkView { up: true, watching: 1, serving: 2, repaired: 7, lost: 1, resent: 4 };
        // The SFU still wants a link the links' task has not heard of yet (just asked for).
        let wanted = LinkView { up: false, watching: 1, ..LinkView::default() };
        let reports = handle.reports(&[("ap-1".into(), up), ("sa-1".into(), wanted)]);
        let peers: Vec<(&str, LinkState)> = reports.iter().map(|r| (r.peer.as_str(), r.state)).collect();
        assert_eq!(peers, [("ap-1", LinkState::Up), ("sa-1", LinkState::Retrying), ("us-1", LinkState::Connecting)]);
        assert_eq!(
            reports[0],
            LinkReport {
                peer: "ap-1".into(),
                state: LinkState::Up,
                rtt_ms: Some(151.5),
                datagrams_sent: 900,
                datagrams_received: 3,
                bytes_sent: 1_000_000,
                bytes_received: 120,
                repaired: 7,
                lost: 1,
                resent: 4,
                watching: 1,
                serving: 2,
            }
        );
        assert_eq!((reports[1].watching, reports[2].rtt_ms, reports[2].datagrams_sent), (1, None, 0));
        assert_eq!(handle.rtts(), BTreeMap::from([("ap-1".to_owned(), 151.5)]), "RTTs of links up only");
    }
}
