//! The SFU's side of relay links, still sans-IO: the link cores ([`Edge`], [`Origin`]) joined to
//! the router. The shell carries their output ([`LinkOutput`]) over QUIC and hands back what
//! arrives (the engine's `link_control`, `link_datagram`, `link_up`, `link_down`).
//!
//! - **Edge** (a viewer here, the machine published at its home relay): the machine's room
//!   here gets a *stand-in* publisher, a [`PeerId`] with no WebRTC peer behind it, whose tracks
//!   are those the home relay announces. Media from the link is routed to the viewers exactly
//!   as a local publisher's (same rewriting, simulcast and key-frame rules); the router's
//!   key-frame requests for the stand-in go upstream, merged by the [`Edge`]; the seat holder's
//!   inputs go upstream stamped. One subscription per machine however many viewers, dropped
//!   after a grace once the last leaves.
//! - **Origin** (the machine published here, viewers at the peer relay): each packet of a
//!   machine the peer subscribes to is handed to the link's [`Origin`], which sends the wanted
//!   layers once per link and answers NACKs. A link track id is the publisher's id and its
//!   track index ([`link_track`]): unique on the link, and new when the machine republishes.
//!
//! A link that breaks, or an origin that restarts, leaves the viewers here waiting: their room's
//! stand-in is replaced (the router then waits for new key frames, with sequence numbers and
//! timestamps continuing), and the link is asked for again ([`LinkOutput::Connect`]) while
//! anyone watches.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info};

use crate::link::edge::{Arrival, Edge};
use crate::link::origin::{Origin, OriginEvent};
use crate::link::wire::{Control, Media};
use crate::sfu::keyframe::Codec;
use crate::sfu::route::{MediaIn, PeerId, Router};
use crate::sfu::stamp::SeatStamp;

/// What the shell carries out for the links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutput {
    /// Open a link to `relay` at `addr` (`host:port`) if there is none, retrying with backoff.
    Connect { relay: Arc<str>, addr: String },
    /// Nobody here needs a link to `relay` any more: stop retrying.
    Forget { relay: Arc<str> },
    /// Send on `relay`'s control stream.
    Control { relay: Arc<str>, message: Control },
    /// Send as a media datagram to `relay`.
    Datagram { relay: Arc<str>, data: Vec<u8> },
}

/// What the SFU counts about its links.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkStats {
    /// Media datagrams from links that did not decode (dropped).
    pub malformed: u64,
    /// Media packets from links routed to viewers here (new or repaired).
    pub media_in: u64,
    /// Of those, packets that filled a gap (a resend answering this relay's NACK, or late).
    pub repaired: u64,
    /// Packets that came before their track's announcement (kept briefly, then routed).
    pub early: u64,
    /// Packets NACKed upstream (each try counts), and given up on (not repaired in time).
    pub nacked: u64,
    pub lost: u64,
    /// Packets of machines published here sent over links (first copies, one per link).
    pub media_sent: u64,
    /// Packets sent again over links, answering the peers' NACKs.
    pub resent: u64,
    /// Packets of simulcast layers not sent over links: no viewer at the peer uses them.
    pub layers_held_back: u64,
    /// Seat inputs that arrived from links and reached the machine, or were dropped (no
    /// machine, or the seat is held by a viewer here).
    pub seat_inputs: u64,
    pub seat_inputs_dropped: u64,
}

/// One link as the SFU sees it (for the heartbeat's link reports).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinkView {
    pub up: bool,
    /// Machines watched here through the link, and machines here the peer watches.
    pub watching: usize,
    pub serving: usize,
    /// Packets from the peer that filled a gap, and those given up on.
    pub repaired: u64,
    pub lost: u64,
    /// Packets sent again to the peer, answering its NACKs.
    pub resent: u64,
}

/// Datagrams kept per link for tracks not announced yet, at most, and for how long.
const EARLY_PACKETS: usize = 512;
const EARLY_AGE: Duration = Duration::from_secs(1);

/// How often simulcast layer masks and rates are brought up to date (see [`layers`]) while
/// any link carries simulcast.
const LAYER_TICK: Duration = Duration::from_millis(250);

/// What the engine does for the links with its peers (the link side has none).
#[derive(Debug)]
pub enum LinkAction {
    /// Viewers' lines need working out again (tracks came or went).
    Layout,
    /// A peer relay watches `machine`: ask its publisher here for key frames.
    KeyframesFor { machine: String },
    /// The machine's message, for its viewers here.
    ToViewers { machine: String, binary: bool, data: Vec<u8> },
    /// A seat input from a peer relay, for the machine if it is here and its seat is held by
    /// no viewer here, with the edge's stamp.
    ToMachine { machine: String, binary: bool, data: Vec<u8>, stamp: SeatStamp },
    /// A packet that came before its track's announcement, for the viewers here.
    Media { stand_in: PeerId, codec: Codec, pkt: MediaIn },
    /// The home relay handed the seat of `machine` to the viewer here known as `holder`, or
    /// took it from the viewers here (`None`).
    HandSeat { machine: String, holder: Option<String> },
}

/// The links the SFU knows, by peer relay id, and the stand-ins of machines watched through
/// them.
#[derive(Default)]
pub struct LinkSet {
    /// This relay's id; `None` when no `[link]` is configured.
    own: Option<String>,
    links: HashMap<String, LinkState>,
    /// Stand-in publisher → the relay it stands in for.
    stand_ins: HashMap<PeerId, String>,
    /// Machines that lost a viewer since the last flush (an edge counts them down then).
    /// (machine, viewer name).
    left: Vec<(String, String)>,
    /// The `now` of the last flush: a flush is due at once while `left` is not empty.
    last_flush: Option<Instant>,
    /// Machines published here whose seat a viewer at a linked relay took last, and which
    /// relay: its seat inputs are the only ones from links that reach the machine.
    remote_seats: HashMap<String, RemoteSeat>,
    /// When simulcast layers are next tended (see [`layers`]): set when a link starts carrying
    /// a simulcast track, either way, and kept while any does.
    layers_at: Option<Instant>,
    out: VecDeque<LinkOutput>,
    pub stats: LinkStats,
}

/// Who holds a machine's seat at a linked relay: the relay, and the viewer's name when the seat
/// was handed to it by name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemoteSeat {
    relay: String,
    name: Option<String>,
}

struct LinkState {
    id: Arc<str>,
    /// Where to reach it (empty for a relay that linked in and that this relay never asked).
    addr: String,
    up: bool,
    edge: Edge,
    origin: Origin,
    /// Machines watched here through this link → their stand-in publishers.
    machines: HashMap<String, PeerId>,
    /// Link track id → the stand-in, its router track, codec and simulcast layers.
    tracks: HashMap<u64, (PeerId, usize, Codec, u8)>,
    /// Datagrams of tracks not announced yet: the announcement comes on the control stream and
    /// the media as datagrams, so the first packets (a key frame's) may overtake it. Kept up
    /// to [`EARLY_PACKETS`] for [`EARLY_AGE`], routed when the track is announced.
    early: VecDeque<(Instant, u64, Vec<u8>)>,
    /// Packets sent again to the peer (the origin counts afresh with each link).
    resent: u64,
    /// Machines watched through the link whose seat a viewer here holds, and who: the peer was
    /// told (`Control::SeatTaken`) before that holder's first input went up.
    seats: HashMap<String, PeerId>,
}

impl LinkState {
    fn new(id: &str, addr: &str) -> Self {
        Self {
            id: Arc::from(id),
            addr: addr.to_owned(),
            up: false,
            edge: Edge::new(),
            origin: Origin::new(),
            machines: HashMap::new(),
            tracks: HashMap::new(),
            early: VecDeque::new(),
            resent: 0,
            seats: HashMap::new(),
        }
    }

    /// Announces `publisher`'s `track` of `machine` to the peer (see [`Origin::track_added`]),
    /// with its layer rates if it has several; true for such a simulcast track.
    fn announce(
        &mut self,
        router: &Router,
        now: Instant,
        machine: &str,
        publisher: PeerId,
        track: usize,
        codec: Codec,
    ) -> bool {
        let id = link_track(publisher, track);
        let layers = router.tracks(machine).get(track).map_or(1, |(_, l)| *l as u8);
        self.origin.track_added(machine, id, codec.wire_id(), layers);
        if layers > 1 {
            self.origin.report_rates(id, &router.layer_rates(now, publisher, track));
        }
        layers > 1
    }

    /// Tells the origin which layers of link track `id` the viewers here use, if it has several.
    fn ask_for_layers(&mut self, router: &Router, id: u64) {
        if let Some(&(stand_in, track, _, layers)) = self.tracks.get(&id)
            && layers > 1
        {
            self.edge.set_layers(id, router.layers_in_use(stand_in, track));
        }
    }
}

/// The id of `publisher`'s router `track` on links: the publisher's id (53 bits, as the engine
/// draws them) and the track index (8 bits), 61 bits in all, a QUIC varint.
pub fn link_track(publisher: PeerId, track: usize) -> u64 {
    (publisher.0 << 8) | (track as u64 & 0xff)
}

/// The publisher and track a link track id names.
pub fn split_link_track(id: u64) -> (PeerId, usize) {
    (PeerId(id >> 8), (id & 0xff) as usize)
}

impl LinkSet {
    /// Relay links are configured: this relay is `own` in the cluster.
    pub fn attach(&mut self, own: &str) {
        self.own = Some(own.to_owned());
    }

    /// Each link the SFU knows (up, or wanted for viewers here), by peer relay id.
    pub fn views(&self) -> Vec<(String, LinkView)> {
        let mut views: Vec<(String, LinkView)> = self
            .links
            .iter()
            .map(|(id, l)| {
                let edge = l.edge.stats();
                let view = LinkView {
                    up: l.up,
                    watching: l.machines.len(),
                    serving: l.origin.subscriptions(),
                    repaired: edge.repaired,
                    lost: edge.lost,
                    resent: l.resent,
                };
                (id.clone(), view)
            })
            .collect();
        views.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        views
    }

    /// This relay's id, if links are configured.
    pub fn own(&self) -> Option<&str> {
        self.own.as_deref()
    }

    /// The next thing for the shell to do on a link.
    pub fn poll_output(&mut self) -> Option<LinkOutput> {
        self.out.pop_front()
    }

    /// A viewer of `machine` known as `name` joined here and the machine's home is relay `home`
    /// at `addr`: the room gets a stand-in publisher (once; `taken` tells the peer ids in use),
    /// the edge subscribes (once), and the shell is asked for the link. True if a stand-in was
    /// made.
    #[allow(clippy::too_many_arguments)]
    pub fn watch(
        &mut self,
        router: &mut Router,
        taken: &dyn Fn(PeerId) -> bool,
        machine: &str,
        name: &str,
        home: &str,
        addr: &str,
    ) -> bool {
        let state = self.links.entry(home.to_owned()).or_insert_with(|| LinkState::new(home, addr));
        if state.addr != addr && !addr.is_empty() {
            state.addr = addr.to_owned();
        }
        let mut made = false;
        if !state.machines.contains_key(machine) {
            let id = fresh_id(taken, &self.stand_ins);
            if let Ok(Some(old)) = router.publish(machine, id) {
                self.stand_ins.remove(&old);
            }
            state.machines.insert(machine.to_owned(), id);
            self.stand_ins.insert(id, home.to_owned());
            made = true;
            info!(machine, home, "watched through a relay link");
        }
        state.edge.viewer_joined(machine, name);
        if !state.up {
            self.out.push_back(LinkOutput::Connect { relay: Arc::clone(&state.id), addr: state.addr.clone() });
        }
        made
    }

    /// A random peer id (53 bits: see [`link_track`]) used by no peer (`taken`) and no stand-in.
    pub fn fresh_id(&self, taken: &dyn Fn(PeerId) -> bool) -> PeerId {
        fresh_id(taken, &self.stand_ins)
    }

    /// A stand-in replaced by a publisher here (the machine moved to this relay): forgotten.
    pub fn forget_stand_in(&mut self, peer: PeerId) {
        let Some(relay) = self.stand_ins.remove(&peer) else { return };
        if let Some(state) = self.links.get_mut(&relay) {
            state.machines.retain(|_, id| *id != peer);
            state.tracks.retain(|_, (id, _, _, _)| *id != peer);
        }
    }

    /// Whether `peer` is a stand-in for a machine published at another relay.
    pub fn is_stand_in(&self, peer: PeerId) -> bool {
        self.stand_ins.contains_key(&peer)
    }

    /// A viewer of `machine` left (or was refused): if the machine is watched through a link,
    /// the edge counts it at the next flush.
    pub fn viewer_left(&mut self, machine: &str, name: &str) {
        if self.links.values().any(|l| l.machines.contains_key(machine)) {
            self.left.push((machine.to_owned(), name.to_owned()));
        }
    }

    /// The link to `relay` is up (a new connection, either way).
    pub fn link_up(&mut self, router: &mut Router, taken: &dyn Fn(PeerId) -> bool, now: Instant, relay: &str) {
        let state = self.links.entry(relay.to_owned()).or_insert_with(|| LinkState::new(relay, ""));
        state.up = true;
        state.origin = Origin::new();
        state.tracks.clear();
        state.seats.clear();
        state.edge.relinked();
        info!(relay, watched = state.machines.len(), "relay link up");
        self.replace_stand_ins(router, taken, relay);
        self.flush(router, now);
    }

    /// The link to `relay` is gone. Viewers here wait for it again; the shell is asked to
    /// reconnect while anyone watches through it.
    pub fn link_down(&mut self, router: &mut Router, taken: &dyn Fn(PeerId) -> bool, now: Instant, relay: &str) {
        let Some(state) = self.links.get_mut(relay) else { return };
        state.up = false;
        state.origin = Origin::new();
        state.tracks.clear();
        info!(relay, watched = state.machines.len(), "relay link down");
        if state.machines.is_empty() {
            self.links.remove(relay);
        } else {
            let (relay, addr) = (Arc::clone(&state.id), state.addr.clone());
            self.replace_stand_ins(router, taken, &relay);
            self.out.push_back(LinkOutput::Connect { relay, addr });
        }
        self.flush(router, now);
    }

    /// Gives each room watched through `relay` a new stand-in publisher: its old tracks are
    /// dropped and the viewers wait for key frames of the tracks the origin announces anew.
    fn replace_stand_ins(&mut self, router: &mut Router, taken: &dyn Fn(PeerId) -> bool, relay: &str) {
        let Some(machines) = self.links.get(relay).map(|l| l.machines.clone()) else { return };
        for (machine, old) in machines {
            let id = fresh_id(taken, &self.stand_ins);
            let _ = router.publish(&machine, id);
            self.stand_ins.remove(&old);
            self.stand_ins.insert(id, relay.to_owned());
            if let Some(state) = self.links.get_mut(relay) {
                state.machines.insert(machine, id);
            }
        }
    }

    /// A control message from `relay`; what the engine must do with its peers comes back.
    pub fn control(&mut self, router: &mut Router, now: Instant, relay: &str, message: Control) -> Vec<LinkAction> {
        let mut actions = Vec::new();
        let mut taken = Vec::new();
        let Some(state) = self.links.get_mut(relay) else { return actions };
        match message {
            Control::Track { ref machine, track, codec, layers } => {
                state.edge.handle_control(&message);
                let Some(&stand_in) = state.machines.get(machine) else { return actions };
                let Some(codec) = Codec::from_wire_id(codec) else {
                    debug!(relay, codec, "link track of an unknown codec ignored");
                    return actions;
                };
                match router.add_track(stand_in, codec, usize::from(layers)) {
                    Ok(index) => {
                        state.tracks.insert(track, (stand_in, index, codec, layers));
                        if layers > 1 {
                            self.layers_at.get_or_insert(now + LAYER_TICK);
                        }
                        actions.push(LinkAction::Layout);
                        // Packets that overtook the announcement, in the order they came.
                        let (early, kept): (Vec<_>, Vec<_>) =
                            std::mem::take(&mut state.early).into_iter().partition(|(_, t, _)| *t == track);
                        state.early = kept.into();
                        for (_, _, data) in early {
                            let Ok(media) = Media::decode(&data) else { continue };
                            if let Some((stand_in, codec, pkt)) = accept(state, &mut self.stats, now, &media) {
                                actions.push(LinkAction::Media { stand_in, codec, pkt });
                            }
                        }
                    }
                    Err(e) => debug!(relay, error = %e, "link track refused"),
                }
            }
            Control::TrackEnded { track } => {
                state.edge.handle_control(&message);
                state.tracks.remove(&track);
            }
            // Only for a machine this relay watches through that link: a peer relay speaks for
            // the machines homed there, not for others.
            Control::MachineMessage { machine, binary, data } if state.machines.contains_key(&machine) => {
                actions.push(LinkAction::ToViewers { machine, binary, data });
            }
            Control::MachineMessage { machine, .. } => {
                debug!(relay, machine, "machine message for a machine not watched through this link dropped");
            }
            Control::Seat { machine, holder } if state.machines.contains_key(&machine) => {
                actions.push(LinkAction::HandSeat { machine, holder });
            }
            Control::Seat { machine, .. } => {
                debug!(relay, machine, "seat of a machine not watched through this link ignored");
            }
            Control::Unavailable { machine, reason } => {
                info!(relay, machine, reason, "the home relay cannot serve the machine");
            }
            Control::LayerRates { track, rates } => {
                if let Some(&(stand_in, index, _, _)) = state.tracks.get(&track) {
                    router.set_layer_rates(now, stand_in, index, &rates);
                }
            }
            origin_bound => {
                let resent = state.origin.stats().resent;
                state.origin.handle_control(origin_bound);
                let more = state.origin.stats().resent - resent;
                self.stats.resent += more;
                state.resent += more;
                while let Some(event) = state.origin.poll_event() {
                    match event {
                        OriginEvent::Subscribed { machine } => {
                            info!(relay, machine, "machine watched from a relay link");
                            // The tracks that have carried packets (their codec is sure) are
                            // announced now, in the publisher's order, which the edge keeps (a
                            // viewer's line goes to the first track in a codec it decodes: the
                            // machine's primary codec, not whichever packet came first); the
                            // others with their first packets. A key frame of each gets the
                            // edge's viewers going.
                            if let Some(publisher) = router.publisher(&machine) {
                                for (index, (codec, _)) in router.tracks(&machine).into_iter().enumerate() {
                                    if router.track_started(publisher, index)
                                        && state.announce(router, now, &machine, publisher, index, codec)
                                    {
                                        self.layers_at.get_or_insert(now + LAYER_TICK);
                                    }
                                }
                            }
                            actions.push(LinkAction::KeyframesFor { machine });
                        }
                        OriginEvent::Unsubscribed { machine } => info!(relay, machine, "relay link unsubscribed"),
                        OriginEvent::KeyframeRequest { track, layers } => {
                            let (publisher, track) = split_link_track(track);
                            router.request_keyframe(now, publisher, track, layers);
                        }
                        OriginEvent::SeatTaken { machine } => taken.push(machine),
                        OriginEvent::SeatInput { machine, binary, data, arrived_unix_ms, rtt_ms } => {
                            debug!(relay, machine, arrived_unix_ms, rtt_ms, "seat input from a relay link");
                            let stamp = SeatStamp {
                                relay: Some(relay.to_owned()),
                                arrived_unix_ms,
                                rtt_ms: SeatStamp::rtt_from_wire(rtt_ms),
                            };
                            actions.push(LinkAction::ToMachine { machine, binary, data, stamp });
                        }
                    }
                }
            }
        }
        for machine in taken {
            self.seat_taken(router, &machine, relay);
        }
        self.flush(router, now);
        actions
    }

    /// A media datagram from `relay`: a new packet, or one that repairs a loss, comes back for
    /// the viewers here (from its stand-in publisher); duplicates and malformed ones are
    /// dropped and counted.
    pub fn datagram(&mut self, now: Instant, relay: &str, data: &[u8]) -> Option<(PeerId, Codec, MediaIn)> {
        let Ok(media) = Media::decode(data) else {
            self.stats.malformed += 1;
            return None;
        };
        let state = self.links.get_mut(relay)?;
        if !state.tracks.contains_key(&media.track) {
            while state.early.len() >= EARLY_PACKETS
                || state.early.front().is_some_and(|(at, _, _)| now.saturating_duration_since(*at) > EARLY_AGE)
            {
                state.early.pop_front();
            }
            state.early.push_back((now, media.track, data.to_vec()));
            self.stats.early += 1;
            return None;
        }
        accept(state, &mut self.stats, now, &media)
    }

    /// A packet of a local publisher's `track` for every link whose peer watches the machine.
    pub fn tap(
        &mut self,
        router: &Router,
        now: Instant,
        machine: &str,
        publisher: PeerId,
        codec: Codec,
        pkt: &MediaIn,
    ) {
        if !self.links.values().any(|l| l.up && l.origin.is_subscribed(machine)) {
            return;
        }
        let id = link_track(publisher, pkt.track);
        for state in self.links.values_mut().filter(|l| l.up && l.origin.is_subscribed(machine)) {
            // Announced with its first packet here (its codec is sure by then), unless it was
            // when the peer subscribed.
            if !state.origin.has_track(id) && state.announce(router, now, machine, publisher, pkt.track, codec) {
                self.layers_at.get_or_insert(now + LAYER_TICK);
            }
            let before = state.origin.stats();
            state.origin.handle_media(id, pkt.layer, pkt.seq, pkt.timestamp, pkt.marker, pkt.keyframe, &pkt.payload);
            let after = state.origin.stats();
            self.stats.media_sent += after.datagrams - before.datagrams;
            self.stats.layers_held_back += after.filtered - before.filtered;
            drain(state, &mut self.out);
        }
    }

    /// A message of `machine` (published here) for the viewers at every relay watching it.
    pub fn machine_message(&mut self, machine: &str, binary: bool, data: &[u8]) {
        for state in self.links.values_mut().filter(|l| l.up) {
            state.origin.machine_message(machine, binary, data);
            drain(state, &mut self.out);
        }
    }

    /// The seat holder here sent `data` to a machine watched through a link, via its stand-in;
    /// it goes upstream with this relay's `stamp`.
    pub fn seat_input(&mut self, router: &Router, stand_in: PeerId, binary: bool, data: &[u8], stamp: &SeatStamp) {
        let Some(relay) = self.stand_ins.get(&stand_in) else { return };
        let Some(machine) = router.machine_of(stand_in) else { return };
        if let Some(state) = self.links.get_mut(relay) {
            // A holder the origin has not heard of (the first, a new one, or after a re-link)
            // takes the seat there first, after what the edge had queued (its subscription).
            drain(state, &mut self.out);
            if state.up
                && let Some(holder) = router.seat(machine)
                && state.seats.get(machine) != Some(&holder)
            {
                state.seats.insert(machine.to_owned(), holder);
                let message = Control::SeatTaken { machine: machine.to_owned() };
                self.out.push_back(LinkOutput::Control { relay: Arc::clone(&state.id), message });
            }
            state.edge.seat_input(machine, binary, data, stamp.arrived_unix_ms, stamp.wire_rtt());
            drain(state, &mut self.out);
        }
    }

    /// The router asks `stand_in` for a key frame of `track`: upstream through the edge.
    /// A layer the viewers here switch to is asked for first (see [`layers`]).
    pub fn keyframe_upstream(&mut self, router: &Router, now: Instant, stand_in: PeerId, track: usize) {
        let Some(relay) = self.stand_ins.get(&stand_in) else { return };
        let Some(state) = self.links.get_mut(relay) else { return };
        let link_track = state.tracks.iter().find(|(_, v)| (v.0, v.1) == (stand_in, track)).map(|(k, _)| *k);
        if let Some(link_track) = link_track {
            state.ask_for_layers(router, link_track);
            state.edge.request_keyframe(now, link_track);
            drain(state, &mut self.out);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let flush = self.last_flush.filter(|_| !self.left.is_empty());
        let edges = self.links.values().filter_map(|l| l.edge.poll_timeout());
        edges.chain(flush).chain(self.layers_at).min()
    }

    /// Runs the links' due timers.
    pub fn handle_timeout(&mut self, router: &mut Router, now: Instant) {
        if self.layers_at.is_some_and(|t| t <= now) {
            self.tend_layers(router, now);
        }
        for state in self.links.values_mut() {
            if state.edge.poll_timeout().is_some_and(|t| t <= now) {
                let before = state.edge.stats();
                state.edge.handle_timeout(now);
                let after = state.edge.stats();
                self.stats.nacked += after.nacked - before.nacked;
                self.stats.lost += after.lost - before.lost;
            }
        }
        self.flush(router, now);
    }

    /// Viewers who left are counted down at their edges; rooms no edge subscribes to any more
    /// lose their stand-ins; links nobody needs are forgotten; what the cores queued goes out.
    pub fn flush(&mut self, router: &mut Router, now: Instant) {
        self.last_flush = Some(now);
        for (machine, name) in std::mem::take(&mut self.left) {
            for state in self.links.values_mut().filter(|l| l.machines.contains_key(&machine)) {
                state.edge.viewer_left(now, &machine, &name);
            }
        }
        let mut dropped = Vec::new();
        for state in self.links.values_mut() {
            let gone: Vec<String> = state.machines.keys().filter(|m| !state.edge.is_subscribed(m)).cloned().collect();
            for machine in gone {
                if let Some(id) = state.machines.remove(&machine) {
                    state.tracks.retain(|_, (s, _, _, _)| *s != id);
                    dropped.push(id);
                    info!(machine, relay = %state.id, "no viewers left: unsubscribed from the relay link");
                }
            }
            drain(state, &mut self.out);
        }
        for id in dropped {
            self.stand_ins.remove(&id);
            let _ = router.remove(id);
        }
        let idle: Vec<String> =
            self.links.iter().filter(|(_, l)| !l.up && l.machines.is_empty()).map(|(k, _)| k.clone()).collect();
        for relay in idle {
            if let Some(state) = self.links.remove(&relay) {
                self.out.push_back(LinkOutput::Forget { relay: state.id });
            }
        }
    }
}

/// A media datagram of an announced track through the edge's loss tracking: the packet for the
/// viewers, unless it is a duplicate.
fn accept(
    state: &mut LinkState,
    stats: &mut LinkStats,
    now: Instant,
    media: &Media<'_>,
) -> Option<(PeerId, Codec, MediaIn)> {
    let &(stand_in, track, codec, _) = state.tracks.get(&media.track)?;
    let lost = state.edge.stats().lost;
    let arrival = state.edge.handle_media(now, media);
    stats.lost += state.edge.stats().lost - lost;
    match arrival {
        Arrival::Duplicate | Arrival::Unwanted => return None,
        Arrival::Repaired => stats.repaired += 1,
        Arrival::New => {}
    }
    stats.media_in += 1;
    let pkt = MediaIn {
        track,
        layer: media.layer,
        seq: media.seq,
        timestamp: media.timestamp,
        marker: media.marker,
        keyframe: media.keyframe,
        payload: Arc::from(media.payload),
    };
    Some((stand_in, codec, pkt))
}

/// Moves what a link's cores queued to the shell's outbox, if the link is up.
fn drain(state: &mut LinkState, out: &mut VecDeque<LinkOutput>) {
    if !state.up {
        return;
    }
    while let Some(message) = state.edge.poll_control() {
        out.push_back(LinkOutput::Control { relay: Arc::clone(&state.id), message });
    }
    while let Some(message) = state.origin.poll_control() {
        out.push_back(LinkOutput::Control { relay: Arc::clone(&state.id), message });
    }
    while let Some(data) = state.origin.poll_datagram() {
        out.push_back(LinkOutput::Datagram { relay: Arc::clone(&state.id), data });
    }
}

/// A peer id used by no peer (`taken`) and no stand-in.
fn fresh_id<W>(taken: &dyn Fn(PeerId) -> bool, stand_ins: &HashMap<PeerId, W>) -> PeerId {
    loop {
        let id = PeerId((rand::random::<u64>() >> 11) | 1);
        if !taken(id) && !stand_ins.contains_key(&id) {
            return id;
        }
    }
}

mod layers;
mod seat;
#[cfg(test)]
mod tests;
