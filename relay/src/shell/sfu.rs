//! The SFU's thread: it owns the [`Sfu`] engine and serves the shared UDP port's WebRTC traffic.
//!
//! **One UDP port.** The TURN workers own the shared port. Each datagram a worker receives on
//! its listening socket is sorted by its first byte (RFC 7983, [`crate::sfu::demux`]): DTLS,
//! RTP/RTCP and STUN Binding requests for the SFU's peers go to the SFU; everything else (TURN
//! requests, ChannelData) stays with the TURN core. The SFU thread owns the [`Sfu`] engine (all
//! WebRTC peers of this relay), receives its datagrams over a channel and sends from a duplicate
//! of a listening socket, so replies come from the same port.
//!
//! The WHIP/WHEP endpoints that reach it are in [`super::whip`].

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use tracing::{error, info};

use super::link_driver::{Command, LinkDriver};
use super::udp::{SendBatch, SendQueue};
use crate::sfu::demux::is_sfu_datagram;
use crate::sfu::engine::{LinkStats, LinkView};
use crate::sfu::route::{PeerId, Role};
use crate::sfu::webrtc::Transmit;
use crate::sfu::{RouteStats, Sfu, SfuError, SfuStats};
use cluster::media::HomeRelay;

const WAKER: Token = Token(0);
const LINKS: Token = Token(1);
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
        /// The machine's home relay, when signaling sent the viewer here from another region.
        home: Option<HomeRelay>,
        offer: String,
        reply: tokio::sync::oneshot::Sender<Result<(PeerId, String), SfuError>>,
    },
    /// This thread drives the relay links from now on (see [`super::link_driver`]).
    AttachLinks(Box<LinkDriver>),
    /// From the links' task.
    LinkCommand(Command),
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
    pub links: LinkStats,
    /// Each relay link as the SFU sees it, by peer relay id.
    pub link_views: Vec<(String, LinkView)>,
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
        is_sfu_datagram(data, |u| self.ufrags.read().unwrap_or_else(|e| e.into_inner()).contains(u))
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

    /// Drives the relay links from now on (see [`super::link_driver`]).
    pub fn attach_links(&self, driver: LinkDriver) -> bool {
        self.send(Input::AttachLinks(Box::new(driver)))
    }

    /// A command of the links' task for the link driver.
    pub fn link_command(&self, command: Command) -> bool {
        self.send(Input::LinkCommand(command))
    }

    /// Stops the SFU thread.
    pub fn stop(&self) {
        self.send(Input::Stop);
    }

    /// Publishes `machine` with an SDP offer: the peer and the SDP answer.
    pub async fn publish(&self, machine: String, offer: String) -> Result<(PeerId, String), CallError<String>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.call(Input::Publish { machine, offer, reply }, rx).await
    }

    /// Subscribes a viewer of `machine` in `session`: the peer and the SDP answer.
    pub async fn subscribe(
        &self,
        machine: String,
        role: Role,
        label: String,
        session: String,
        home: Option<HomeRelay>,
        offer: String,
    ) -> Result<(PeerId, String), CallError<SfuError>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.call(Input::Subscribe { machine, role, label, session, home, offer, reply }, rx).await
    }

    /// Hands the seat of `machine`; `Ok` is the previous holder, a refusal names what is missing.
    pub async fn hand_seat(&self, machine: String, to: Option<String>) -> Result<Option<String>, CallError<String>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.call(Input::HandSeat { machine, to, reply }, rx).await
    }

    /// Ends a peer; false if there was none.
    pub async fn remove(&self, machine: String, id: PeerId) -> bool {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Input::Remove { machine, id, reply }) && rx.await.unwrap_or(false)
    }

    /// Sends `input` and waits for its reply.
    async fn call<T, E>(
        &self,
        input: Input,
        rx: tokio::sync::oneshot::Receiver<Result<T, E>>,
    ) -> Result<T, CallError<E>> {
        if !self.send(input) {
            return Err(CallError::Unavailable);
        }
        rx.await.map_err(|_| CallError::Unavailable)?.map_err(CallError::Refused)
    }
}

/// Why a request to the SFU thread got no answer it wanted.
#[derive(Debug)]
pub enum CallError<E> {
    /// The SFU refused it.
    Refused(E),
    /// The SFU thread is stopped or its queue is full.
    Unavailable,
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
    let mut links: Option<Box<LinkDriver>> = None;
    loop {
        let now = Instant::now();
        let due = match links.as_mut().and_then(|l| l.poll_timeout()) {
            Some(l) => Some(sfu.poll_timeout().map_or(l, |t| t.min(l))),
            None => sfu.poll_timeout(),
        };
        let timeout = due.map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now));
        if let Err(e) = poll.poll(&mut events, Some(timeout.min(Duration::from_secs(1))))
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            error!(error = %e, "SFU poll failed; SFU stopping");
            return;
        }
        let now = Instant::now();
        if let Some(driver) = links.as_mut()
            && events.iter().any(|e| e.token() == LINKS)
        {
            driver.receive(now, &mut sfu);
        }
        loop {
            match rx.try_recv() {
                Ok(Input::Datagram { from, data }) => {
                    sfu.handle_datagram(now, from, &data);
                }
                Ok(Input::Publish { machine, offer, reply }) => {
                    let _ = reply.send(sfu.publish(now, &machine, &offer).map_err(|e| e.to_string()));
                }
                Ok(Input::Subscribe { machine, role, label, session, home, offer, reply }) => {
                    let home = home.as_ref().map(|h| (h.id.as_str(), h.link.as_str()));
                    let _ = reply.send(sfu.subscribe(now, &machine, role, &label, Some(&session), home, &offer));
                }
                Ok(Input::AttachLinks(mut driver)) => match driver.register(poll.registry(), LINKS) {
                    Ok(()) => {
                        sfu.attach_links(driver.relay_id());
                        // Datagrams that came before the registration.
                        driver.receive(now, &mut sfu);
                        links = Some(driver);
                    }
                    Err(e) => error!(error = %e, "link socket not registered: relay links off"),
                },
                Ok(Input::LinkCommand(command)) => {
                    if let Some(driver) = links.as_mut() {
                        driver.command(now, command, &mut sfu);
                    }
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
                Ok(Input::Stop) | Err(TryRecvError::Disconnected) => {
                    // The links' closes (a `Command::Close` came first) go out now.
                    if let Some(driver) = links.as_mut() {
                        driver.flush(now);
                    }
                    return;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        if sfu.poll_timeout().is_some_and(|t| t <= now) {
            sfu.handle_timeout(now);
        }
        // It runs only what is due.
        if let Some(driver) = links.as_mut() {
            driver.handle_timeout(now, &mut sfu);
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
                links: sfu.link_stats().clone(),
                link_views: sfu.link_views(),
            };
        }
        // The links' packets first: a media packet's link copy leaves before this relay's own
        // viewers' copies, as its path is the longer.
        while let Some(o) = sfu.poll_link_output() {
            if let Some(driver) = links.as_mut() {
                driver.output(now, o);
            }
        }
        if let Some(driver) = links.as_mut() {
            driver.flush(now);
        }
        out.extend(std::iter::from_fn(|| sfu.poll_transmit()));
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
