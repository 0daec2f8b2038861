//! The relay's link endpoint in the running process (`[link]`): its TLS loaded from the files,
//! checked against this relay's id, bound before the banner; relays that link in are admitted
//! (see `crate::link`), and links the SFU asks for are opened, with backoff while they fail.
//!
//! Every link, whichever side opened it, carries both ways: each side opens one unidirectional
//! stream for its control messages and reads the peer's, and media goes as datagrams. The SFU
//! thread owns what the links mean (`crate::sfu::engine`'s link side); this module carries its
//! [`LinkOutput`]s and hands back what arrives. `/metrics` counts refusals by reason, the links
//! open, datagrams and bytes per peer each way, datagrams dropped by reason, and each link's RTT.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGauge};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

use super::sfu::{LINK_QUEUE, SfuHandle};
use ::cluster::heartbeat::{LinkPeer, LinkReport, LinkState};

use crate::config::LinkConfig;
use crate::link::endpoint::{DatagramDrop, Link, LinkEndpoint, send_media};
use crate::link::stream::{ControlReader, StreamEnd, write_control};
use crate::link::tls::{LinkTls, Refusals};
use crate::link::wire::Control;
use crate::sfu::engine::{LinkOutput, LinkView};

/// Handshakes of relays linking in that run at once; more wait to be accepted.
const MAX_ADMISSIONS: usize = 64;
/// The first retry of a link that failed, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often each link's RTT gauge is brought up to date.
const RTT_INTERVAL: Duration = Duration::from_secs(1);
/// QUIC application close code for a peer whose control stream is malformed.
const CLOSE_MALFORMED: u32 = 0x101;

/// The config keys of the three files, for error messages.
const KEYS: [&str; 3] = ["link.ca", "link.cert", "link.key"];

/// The link series in `/metrics`.
#[derive(Clone)]
pub struct LinkMetrics {
    pub refusals: Refusals,
    /// `relay_links_open`: links to other relays, either way.
    pub open: IntGauge,
    /// By peer and direction.
    pub datagrams: IntCounterVec,
    pub bytes: IntCounterVec,
    /// By reason.
    pub dropped: IntCounterVec,
    /// Media packets too large for a datagram, sent on the reliable stream instead, by peer.
    pub oversize: IntCounterVec,
    /// By peer.
    pub rtt: GaugeVec,
    /// Control frames of types this version does not know (a newer peer's), skipped.
    pub unknown_frames: IntCounter,
}

/// The running link endpoint.
pub struct Links {
    endpoint: Arc<LinkEndpoint>,
    metrics: LinkMetrics,
    handle: LinkHandle,
    peers: Mutex<Option<mpsc::UnboundedReceiver<Vec<LinkPeer>>>>,
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

impl Links {
    /// Loads the link TLS and binds `config.listen` (within the runtime). `relay_id` is this
    /// relay's id in the cluster, which its certificate must name.
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
        let endpoint = Arc::new(LinkEndpoint::bind(config.listen, tls)?);
        let (peers_tx, peers) = mpsc::unbounded_channel();
        let handle = LinkHandle { status: Arc::default(), metrics: metrics.clone(), peers: peers_tx };
        Ok(Self { endpoint, metrics, handle, peers: Mutex::new(Some(peers)) })
    }

    pub fn handle(&self) -> LinkHandle {
        self.handle.clone()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn relay_id(&self) -> &str {
        self.endpoint.relay_id()
    }

    /// Serves links on the current runtime until the endpoint closes: admits relays that link
    /// in (each handshake in its own task, at most [`MAX_ADMISSIONS`] at once, so a peer that
    /// goes silent mid-handshake holds up nobody else), opens the links `sfu` asks for, and
    /// carries media and control both ways.
    pub fn serve(&self, sfu: Option<SfuHandle>) {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (outputs_tx, outputs) = mpsc::channel(LINK_QUEUE);
        if let Some(sfu) = &sfu {
            sfu.attach_links(self.relay_id().to_owned(), outputs_tx);
        }
        let endpoint = Arc::clone(&self.endpoint);
        let admitted = events_tx.clone();
        let slots = Arc::new(Semaphore::new(MAX_ADMISSIONS));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
                let Some(incoming) = endpoint.incoming().await else { return };
                let (endpoint, admitted) = (Arc::clone(&endpoint), admitted.clone());
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    let result = endpoint.admit(incoming).await;
                    drop(permit);
                    match result {
                        Ok(link) => {
                            info!(peer = %link.peer, %remote, "relay linked in");
                            let _ = admitted.send(Event::Linked(link));
                        }
                        Err(e) => debug!(%remote, "link refused: {e}"),
                    }
                });
            }
        });
        let manager = Manager {
            endpoint: Arc::clone(&self.endpoint),
            sfu,
            metrics: self.metrics.clone(),
            links: HashMap::new(),
            wanted: HashMap::new(),
            mesh: HashSet::new(),
            status: Arc::clone(&self.handle.status),
            events: events_tx,
        };
        let peers = lock(&self.peers).take().unwrap_or_else(|| mpsc::unbounded_channel().1);
        tokio::spawn(manager.run(outputs, events, peers));
    }

    /// Closes every link and stops accepting.
    pub fn close(&self) {
        self.endpoint.close();
    }
}

/// What the link tasks tell the manager.
enum Event {
    /// A link is up (admitted, or opened by us).
    Linked(Link),
    /// A link closed (its connection's stable id).
    Closed(Arc<str>, usize),
    /// An attempt to open a link failed; the next waits out the backoff.
    Failed(Arc<str>),
    /// Time to try again to open a link.
    Retry(Arc<str>),
}

/// A link up.
struct Held {
    connection: quinn::Connection,
    control: mpsc::UnboundedSender<Control>,
    sent: prometheus::IntCounter,
    sent_bytes: prometheus::IntCounter,
}

/// A link the SFU wants: where, and how long to wait after the next failure.
struct Wanted {
    addr: String,
    backoff: Duration,
    connecting: bool,
}

/// Owns the links table: carries the SFU's outputs, opens wanted links, registers links that
/// come up and tells the SFU of links coming and going.
struct Manager {
    endpoint: Arc<LinkEndpoint>,
    sfu: Option<SfuHandle>,
    metrics: LinkMetrics,
    links: HashMap<Arc<str>, Held>,
    wanted: HashMap<Arc<str>, Wanted>,
    /// Relays kept linked whatever the SFU needs (signaling's list, those whose id sorts after
    /// this relay's: one link per pair), for their RTTs and a link ready for viewers.
    mesh: HashSet<Arc<str>>,
    /// Shared with the heartbeat (see [`LinkHandle`]).
    status: Arc<Mutex<StatusMap>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Manager {
    async fn run(
        mut self,
        mut outputs: mpsc::Receiver<LinkOutput>,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut peers: mpsc::UnboundedReceiver<Vec<LinkPeer>>,
    ) {
        loop {
            tokio::select! {
                Some(output) = outputs.recv() => self.output(output),
                Some(event) = events.recv() => self.event(event),
                Some(list) = peers.recv() => self.mesh(list),
                else => return,
            }
        }
    }

    /// Signaling's list of relays that take links: keep a link to each whose id sorts after
    /// ours; stop retrying those no longer listed (unless the SFU wants them).
    fn mesh(&mut self, list: Vec<LinkPeer>) {
        let own = self.endpoint.relay_id().to_owned();
        let mut mesh = HashSet::new();
        for peer in list.into_iter().filter(|p| p.id.as_str() > own.as_str()) {
            let id: Arc<str> = Arc::from(peer.id.as_str());
            mesh.insert(Arc::clone(&id));
            if !self.mesh.contains(&id) {
                self.output(LinkOutput::Connect { relay: id, addr: peer.link });
            }
        }
        for gone in self.mesh.difference(&mesh) {
            self.wanted.remove(gone);
            self.unwanted(gone);
        }
        self.mesh = mesh;
    }

    fn output(&mut self, output: LinkOutput) {
        match output {
            LinkOutput::Datagram { relay, data } => {
                let Some(held) = self.links.get(&relay) else {
                    self.metrics.dropped.with_label_values(&["no_link"]).inc();
                    return;
                };
                let size = data.len() as u64;
                let data = bytes::Bytes::from(data);
                match send_media(&held.connection, data.clone()) {
                    Ok(()) => {
                        held.sent.inc();
                        held.sent_bytes.inc_by(size);
                    }
                    // The path's MTU is narrower than the packet: it still goes, reliably.
                    Err(DatagramDrop::TooLarge { .. })
                        if held.control.send(Control::Oversize { datagram: data.to_vec() }).is_ok() =>
                    {
                        self.metrics.oversize.with_label_values(&[&relay]).inc();
                    }
                    Err(drop) => self.metrics.dropped.with_label_values(&[drop.label()]).inc(),
                }
            }
            LinkOutput::Control { relay, message } => {
                if let Some(held) = self.links.get(&relay) {
                    let _ = held.control.send(message);
                }
            }
            LinkOutput::Connect { relay, addr } => {
                let wanted = self.wanted.entry(Arc::clone(&relay)).or_insert_with(|| Wanted {
                    addr: addr.clone(),
                    backoff: FIRST_BACKOFF,
                    connecting: false,
                });
                if !addr.is_empty() {
                    wanted.addr = addr;
                }
                if !self.links.contains_key(&relay) {
                    self.connect(&relay);
                }
            }
            LinkOutput::Forget { relay } => {
                if !self.mesh.contains(&relay) {
                    self.wanted.remove(&relay);
                    self.unwanted(&relay);
                }
            }
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Linked(link) => self.hold(link),
            Event::Closed(peer, id) => {
                if self.links.get(&peer).is_some_and(|h| h.connection.stable_id() == id) {
                    self.links.remove(&peer);
                    self.metrics.open.set(self.links.len() as i64);
                    let _ = self.metrics.rtt.remove_label_values(&[&peer]);
                    if self.wanted.contains_key(&peer) {
                        // Wanted (by the mesh or the SFU): open it again at once, then back off
                        // (an attempt already under way keeps it `retrying` until it ends).
                        self.set_status(&peer, LinkState::Retrying);
                        self.connect(&peer);
                    } else {
                        lock(&self.status).remove(&*peer);
                    }
                    if let Some(sfu) = &self.sfu {
                        sfu.link_down(peer);
                    }
                }
            }
            Event::Failed(relay) => {
                if self.wanted.contains_key(&relay) && !self.links.contains_key(&relay) {
                    self.set_status(&relay, LinkState::Retrying);
                }
            }
            Event::Retry(relay) => {
                if let Some(w) = self.wanted.get_mut(&relay) {
                    w.connecting = false;
                }
                if !self.links.contains_key(&relay) {
                    self.connect(&relay);
                }
            }
        }
    }

    /// A link that is not up: `state`, and no RTT.
    fn set_status(&self, relay: &str, state: LinkState) {
        lock(&self.status).insert(relay.to_owned(), (state, None));
    }

    /// No longer wanted: a link that is not up leaves the reports.
    fn unwanted(&self, relay: &str) {
        if !self.links.contains_key(relay) {
            lock(&self.status).remove(relay);
        }
    }

    /// Opens a link to a wanted relay (one attempt at a time); a failure schedules a retry
    /// after the relay's backoff, which doubles up to [`MAX_BACKOFF`].
    fn connect(&mut self, relay: &Arc<str>) {
        let Some(wanted) = self.wanted.get_mut(relay) else { return };
        if wanted.connecting {
            return;
        }
        wanted.connecting = true;
        let backoff = wanted.backoff;
        wanted.backoff = (wanted.backoff * 2).min(MAX_BACKOFF);
        let addr = wanted.addr.clone();
        self.set_status(relay, LinkState::Connecting);
        let (endpoint, events, relay) = (Arc::clone(&self.endpoint), self.events.clone(), Arc::clone(relay));
        tokio::spawn(async move {
            let result = match tokio::net::lookup_host(&addr).await.map(|mut a| a.next()) {
                Ok(Some(to)) => endpoint.connect(to, &relay).await.map_err(|e| e.to_string()),
                Ok(None) => Err(format!("{addr}: no address")),
                Err(e) => Err(format!("{addr}: {e}")),
            };
            match result {
                Ok(link) => {
                    info!(peer = %relay, %addr, "linked to relay");
                    let _ = events.send(Event::Linked(link));
                }
                Err(e) => {
                    warn!(peer = %relay, %addr, retry_in = ?backoff, "link failed: {e}");
                    let _ = events.send(Event::Failed(Arc::clone(&relay)));
                    tokio::time::sleep(backoff).await;
                    let _ = events.send(Event::Retry(relay));
                }
            }
        });
    }

    /// A link that came up: its tasks start, it replaces any older link to the same relay,
    /// and the SFU is told.
    fn hold(&mut self, link: Link) {
        let peer: Arc<str> = Arc::from(link.peer.as_str());
        let connection = link.connection;
        if let Some(w) = self.wanted.get_mut(&peer) {
            w.backoff = FIRST_BACKOFF;
            w.connecting = false;
        }
        let (control, control_rx) = mpsc::unbounded_channel();
        let held = Held {
            connection: connection.clone(),
            control,
            sent: self.metrics.datagrams.with_label_values(&[&peer, "sent"]),
            sent_bytes: self.metrics.bytes.with_label_values(&[&peer, "sent"]),
        };
        let replaced = self.links.insert(Arc::clone(&peer), held);
        if let Some(old) = replaced {
            // The peer linked again (it restarted, or both sides opened at once).
            old.connection.close(0u32.into(), b"replaced by a new link");
        }
        self.metrics.open.set(self.links.len() as i64);
        lock(&self.status).insert(peer.to_string(), (LinkState::Up, Some(connection.rtt().as_secs_f64() * 1000.0)));
        tokio::spawn(write_controls(connection.clone(), control_rx));
        if let Some(sfu) = &self.sfu {
            let unknown = self.metrics.unknown_frames.clone();
            tokio::spawn(read_controls(connection.clone(), Arc::clone(&peer), sfu.clone(), unknown));
            tokio::spawn(read_datagrams(connection.clone(), Arc::clone(&peer), sfu.clone(), self.metrics.clone()));
            sfu.link_up(Arc::clone(&peer));
        }
        let (events, rtt, status) = (self.events.clone(), self.metrics.rtt.clone(), Arc::clone(&self.status));
        tokio::spawn(async move {
            let id = connection.stable_id();
            let mut tick = tokio::time::interval(RTT_INTERVAL);
            let reason = loop {
                tokio::select! {
                    reason = connection.closed() => break reason,
                    _ = tick.tick() => {
                        let now = connection.rtt();
                        rtt.with_label_values(&[&peer]).set(now.as_secs_f64());
                        if let Some((LinkState::Up, ms)) = lock(&status).get_mut(&*peer) {
                            *ms = Some(now.as_secs_f64() * 1000.0);
                        }
                    }
                }
            };
            info!(peer = %peer, %reason, "relay link closed");
            let _ = events.send(Event::Closed(peer, id));
        });
    }
}

/// Sends this side's control messages on a stream of its own.
async fn write_controls(connection: quinn::Connection, mut messages: mpsc::UnboundedReceiver<Control>) {
    let Ok(mut send) = connection.open_uni().await else { return };
    while let Some(message) = messages.recv().await {
        if let Err(e) = write_control(&mut send, &message).await {
            debug!(error = %e, "link control stream ended");
            return;
        }
    }
}

/// Hands the peer's control messages to the SFU; a malformed one closes the link, one of a
/// type this version does not know is skipped and counted in `unknown`.
async fn read_controls(connection: quinn::Connection, peer: Arc<str>, sfu: SfuHandle, unknown: IntCounter) {
    let Ok(recv) = connection.accept_uni().await else { return };
    let mut reader = ControlReader::new(recv);
    let mut counted = 0;
    loop {
        let next = reader.next().await;
        unknown.inc_by(reader.skipped() - counted);
        counted = reader.skipped();
        match next {
            // A media packet too large for the path's datagrams: to the SFU as one.
            Ok(Control::Oversize { datagram }) => {
                sfu.link_datagram(Arc::clone(&peer), datagram.into());
            }
            Ok(message) => {
                sfu.link_control(Arc::clone(&peer), message);
            }
            Err(StreamEnd::Malformed(e)) => {
                warn!(peer = %peer, error = %e, "malformed link control stream: link closed");
                connection.close(CLOSE_MALFORMED.into(), b"malformed control frame");
                return;
            }
            Err(e) => {
                debug!(peer = %peer, error = %e, "link control stream ended");
                return;
            }
        }
    }
}

/// Hands the peer's media datagrams to the SFU.
async fn read_datagrams(connection: quinn::Connection, peer: Arc<str>, sfu: SfuHandle, metrics: LinkMetrics) {
    let received = metrics.datagrams.with_label_values(&[&peer, "received"]);
    let bytes = metrics.bytes.with_label_values(&[&peer, "received"]);
    while let Ok(data) = connection.read_datagram().await {
        received.inc();
        bytes.inc_by(data.len() as u64);
        sfu.link_datagram(Arc::clone(&peer), data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

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
