//! The SFU engine: WebRTC peers ([`Peer`]) around the routing core ([`Router`]), sans-IO.
//!
//! The shell hands it the datagrams of the shared UDP port that are the SFU's (see
//! [`Sfu::handle_datagram`]: STUN checks are matched by the ICE username fragment, everything
//! else by the source address ICE learned) and sends what [`Sfu::poll_transmit`] returns from
//! the same port. HTTP (WHIP/WHEP) calls [`Sfu::publish`], [`Sfu::subscribe`] and
//! [`Sfu::remove`]. A peer whose WebRTC stack fails or panics is ended alone and counted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tracing::{debug, info, warn};

use super::keyframe::Codec;
use super::route::{MediaIn, PeerId, Role, RouteError, Router};
use super::stamp::{SeatStamp, envelope, unix_ms};
use super::webrtc::{Peer, PeerError, PeerEvent, PeerOutput, Transmit, stun_ufrag};

mod linked;
mod links;
mod report;
use links::LinkSet;
pub use links::{LinkOutput, LinkStats, LinkView, link_track, split_link_track};
pub use report::{SfuError, SfuStats};

struct Entry {
    peer: Peer,
    /// `None` for a publisher.
    role: Option<Role>,
    /// Who the peer is (a viewer's id from its token; the machine for a publisher): the seat
    /// is handed by it.
    label: String,
    /// Order of creation: of two peers with one label (a viewer who reconnected), the newer one
    /// is handed the seat.
    serial: u64,
    /// A subscriber's session (from its media token): when signaling ends the session, its
    /// peers are closed.
    session: Option<String>,
    /// A publisher's media index → router track.
    tracks: Vec<Option<usize>>,
    /// A subscriber's media line for each of its publisher's tracks (`None`: that track is
    /// not sent to it), as of layout `lines_layout` (see [`Sfu::layout`]).
    lines: Vec<Option<usize>>,
    lines_layout: u64,
}

/// The SFU of one worker.
pub struct Sfu {
    /// Our one ICE candidate. Datagrams are given to str0m as addressed to it even when they
    /// arrive on a private address behind 1:1 NAT, since ICE matches them to the candidate.
    public: SocketAddr,
    peers: HashMap<PeerId, Entry>,
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    /// Machine → its publisher.
    publishers: HashMap<String, PeerId>,
    router: Router,
    /// Datagrams the peers produced, moved to `outbox` as [`Sfu::poll_transmit`] reads them.
    transmits: Vec<Transmit>,
    outbox: VecDeque<Transmit>,
    stats: SfuStats,
    /// Our peers' ufrags, shared with the TURN workers that sort STUN checks on the shared port.
    ufrags: Arc<RwLock<HashSet<String>>>,
    serial: u64,
    /// Sessions signaling has ended (see [`Sfu::end_sessions`]): no new subscriber joins them.
    ended: HashSet<String>,
    /// Changes whenever a media line or a publisher comes or goes: subscribers' track → line
    /// maps older than this are worked out again.
    layout: u64,
    /// Relay links: stand-ins for machines published elsewhere, and the link cores.
    links: LinkSet,
}

impl Sfu {
    /// An SFU advertising `public` (the shared UDP port's public address) as its ICE candidate.
    pub fn new(public: SocketAddr) -> Self {
        Self {
            public,
            peers: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            publishers: HashMap::new(),
            router: Router::new(),
            transmits: Vec::new(),
            outbox: VecDeque::new(),
            stats: SfuStats::default(),
            ufrags: Arc::default(),
            serial: 0,
            ended: HashSet::new(),
            layout: 1,
            links: LinkSet::default(),
        }
    }

    /// The set of our peers' ICE ufrags, kept up to date as peers come and go: a STUN Binding
    /// request on the shared port whose USERNAME starts with one of them is the SFU's.
    pub fn ufrags(&self) -> Arc<RwLock<HashSet<String>>> {
        Arc::clone(&self.ufrags)
    }

    pub fn stats(&self) -> &SfuStats {
        &self.stats
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Peers alive.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// WHIP: `machine` publishes with `offer`; returns the peer and the SDP answer. A publisher
    /// already there (the machine reconnecting) is replaced. Viewers already waiting that can
    /// decode none of its video codecs are closed (see [`Sfu::subscribe`]).
    pub fn publish(&mut self, now: Instant, machine: &str, offer: &str) -> Result<(PeerId, String), SfuError> {
        let (peer, answer) = self.answer(now, offer)?;
        let id = self.add(peer, None, machine);
        if let Some(old) = self.router.publish(machine, id)? {
            self.forget(old);
        }
        self.publishers.insert(machine.to_owned(), id);
        self.layout += 1;
        info!(peer = id.0, machine, "publisher joined");
        self.service(now, id);
        // Viewers who came before the machine and decode none of what it offers to send would
        // wait for nothing: close them (a new offer of theirs is refused with the reason).
        let blind: Vec<(PeerId, Vec<Codec>, Vec<Codec>)> = self
            .router
            .subscribers(machine)
            .into_iter()
            .filter_map(|(p, _)| self.codec_mismatch(machine, p).map(|(sent, taken)| (p, sent, taken)))
            .collect();
        for (p, publisher, viewer) in blind {
            info!(peer = p.0, machine, ?publisher, ?viewer, "subscriber closed: no video codec in common");
            self.stats.codec_refusals += 1;
            self.close(p);
        }
        Ok((id, answer))
    }

    /// WHEP: a subscriber of `machine` with `offer`, known as `label` (the viewer's id, by which
    /// the seat is handed), in `session` (ended by [`Sfu::end_sessions`]); returns the peer and
    /// the SDP answer. Each of the machine's tracks goes to a line of the offer that takes its
    /// codec (see [`Sfu::refresh_lines`]), so a machine may send its camera twice, in H.264 and
    /// in a VP8 backup, and each viewer gets one it decodes; a viewer whose offer takes none of
    /// the machine's video codecs is refused ([`SfuError::NoCommonCodec`]).
    ///
    /// `home` is the machine's home relay (id, link address) when signaling sent the viewer
    /// here from another region: unless the machine is published here, its media comes over a
    /// relay link (see [`links`]).
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe(
        &mut self,
        now: Instant,
        machine: &str,
        role: Role,
        label: &str,
        session: Option<&str>,
        home: Option<(&str, &str)>,
        offer: &str,
    ) -> Result<(PeerId, String), SfuError> {
        if let Some(session) = session.filter(|s| self.ended.contains(*s)) {
            return Err(SfuError::SessionEnded(session.to_owned()));
        }
        let home = home.filter(|(id, _)| Some(*id) != self.links.own() && !self.publishers.contains_key(machine));
        if let Some((id, _)) = home
            && self.links.own().is_none()
        {
            return Err(SfuError::NoLinks { machine: machine.to_owned(), home: id.to_owned() });
        }
        let (peer, answer) = self.answer(now, offer)?;
        let id = self.add(peer, Some(role), label);
        if let Some(entry) = self.peers.get_mut(&id) {
            entry.session = session.map(str::to_owned);
        }
        if let Err(e) = self.router.subscribe(now, machine, id, role) {
            self.forget(id);
            return Err(e.into());
        }
        if role == Role::Player && self.publishers.contains_key(machine) {
            // The player took the seat here: a linked relay that held it is told it lost it.
            self.links.seat_handed_here(machine);
        }
        if let Some((home, addr)) = home {
            let peers = &self.peers;
            if self.links.watch(&mut self.router, &|p| peers.contains_key(&p), machine, label, home, addr) {
                self.layout += 1;
            }
        }
        self.service(now, id);
        // A viewer that can decode none of the machine's video codecs would get packets it
        // cannot use (or none): refuse it, naming both sides' codecs.
        if let Some((publisher, viewer)) = self.codec_mismatch(machine, id) {
            self.forget(id);
            self.stats.codec_refusals += 1;
            info!(machine, ?publisher, ?viewer, "subscriber refused: no video codec in common");
            return Err(SfuError::NoCommonCodec { publisher, viewer });
        }
        info!(peer = id.0, machine, ?role, "subscriber joined");
        self.deliver_keyframe_requests(now);
        self.links.flush(&mut self.router, now);
        Ok((id, answer))
    }

    /// The sessions signaling has ended are `ended` (the full set, replacing the last one): their
    /// subscribers are closed gracefully (RTCP BYE, SCTP shutdown, DTLS close_notify, so that
    /// each client learns at once instead of after ICE gives up) and forgotten, a seat one held
    /// is free, and no new subscriber joins them. Returns how many peers ended.
    pub fn end_sessions(&mut self, ended: &HashSet<String>) -> usize {
        self.ended.clone_from(ended);
        let ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, e)| e.session.as_ref().is_some_and(|s| ended.contains(s)))
            .map(|(&id, _)| id)
            .collect();
        for &id in &ids {
            info!(
                peer = id.0,
                session = self.peers.get(&id).and_then(|e| e.session.as_deref()),
                "session ended: peer closed"
            );
            self.stats.peers_revoked += 1;
            self.close(id);
        }
        ids.len()
    }

    /// The machine's video codecs and the subscriber's, when the subscriber takes video and can
    /// decode none of the codecs the machine sends, or before its first packets, offered to send
    /// (nothing to say before the machine publishes).
    fn codec_mismatch(&self, machine: &str, id: PeerId) -> Option<(Vec<Codec>, Vec<Codec>)> {
        let mut sent: Vec<Codec> =
            self.router.tracks(machine).into_iter().map(|(c, _)| c).filter(|c| !c.is_audio()).collect();
        if sent.is_empty() {
            // The machine has published but its tracks are not known until it connects: what
            // its offer takes is what it may send.
            let publisher = self.publishers.get(machine).and_then(|p| self.peers.get(p));
            sent = publisher.map(|p| p.peer.offered_video_codecs()).unwrap_or_default();
        }
        let peer = &self.peers.get(&id)?.peer;
        if sent.is_empty() || !peer.offers_video() {
            return None;
        }
        let taken = peer.offered_video_codecs();
        (!sent.iter().any(|c| taken.contains(c))).then_some((sent, taken))
    }

    /// Works out again, if the layout changed, which of its media lines carries each of the
    /// publisher's tracks for subscriber `id`: in track order, each track goes to the first line
    /// of its kind not yet used whose codecs include the track's. A machine that sends its
    /// camera twice (H.264, and a VP8 backup, as LiveKit's publishers do) thus reaches a viewer
    /// with one video line in the first codec it decodes, and the other copy not at all.
    fn refresh_lines(&mut self, id: PeerId) {
        let Some(entry) = self.peers.get(&id) else { return };
        if entry.lines_layout == self.layout || entry.role.is_none() {
            return;
        }
        let tracks = self.router.machine_of(id).map(|m| self.router.tracks(m)).unwrap_or_default();
        let mut used = Vec::new();
        let lines: Vec<Option<usize>> = tracks
            .iter()
            .map(|(codec, _)| {
                let line = entry
                    .peer
                    .media_of_kind(codec.is_audio())
                    .find(|m| !used.contains(m) && entry.peer.codecs(*m).contains(codec))?;
                used.push(line);
                Some(line)
            })
            .collect();
        let layout = self.layout;
        if let Some(entry) = self.peers.get_mut(&id) {
            entry.lines = lines;
            entry.lines_layout = layout;
        }
    }

    /// Closes a peer gracefully (its client learns at once, see [`Peer::close`]) and forgets it.
    fn close(&mut self, id: PeerId) {
        if let Some(entry) = self.peers.get_mut(&id) {
            match entry.peer.close() {
                Ok(sent) => self.transmits.extend(sent),
                Err(e) => debug!(peer = id.0, error = %e, "closing a peer"),
            }
        }
        self.forget(id);
    }

    /// Ends a peer (WHIP/WHEP DELETE); false if it was not there.
    pub fn remove(&mut self, id: PeerId) -> bool {
        let known = self.peers.contains_key(&id);
        self.forget(id);
        known
    }

    /// The machine a peer belongs to.
    pub fn machine_of(&self, id: PeerId) -> Option<&str> {
        self.router.machine_of(id)
    }

    /// Hands `machine`'s seat to a subscriber (or to nobody).
    pub fn hand_seat(&mut self, machine: &str, to: Option<PeerId>) -> Result<Option<PeerId>, RouteError> {
        self.router.hand_seat(machine, to)
    }

    /// Hands `machine`'s seat to the subscriber known as `label` (its newest peer, if it joined
    /// more than once), or to nobody; returns the label of the previous holder. A machine
    /// published here with no viewer of that name here hands it to one at a linked relay, if
    /// one reported the name (see `links`).
    pub fn hand_seat_to(&mut self, machine: &str, label: Option<&str>) -> Result<Option<String>, SfuError> {
        let label_of = |sfu: &Self, peer: Option<PeerId>| peer.and_then(|p| sfu.peers.get(&p)).map(|e| e.label.clone());
        let to = label.map(|label| (label, self.subscriber_named(machine, label)));
        if let Some((label, None)) = to {
            let relay = (self.publishers.contains_key(machine))
                .then(|| self.links.viewer_elsewhere(machine, label))
                .flatten()
                .ok_or_else(|| SfuError::NoSubscriber(label.to_owned(), machine.to_owned()))?;
            let previous = self.router.hand_seat(machine, None)?;
            let before = self.links.hand_seat_to_link(machine, &relay, label);
            info!(machine, relay, viewer = label, "seat handed to a viewer at a linked relay");
            return Ok(label_of(self, previous).or(before));
        }
        let previous_remote = self.links.remote_holder(machine).map(str::to_owned);
        let previous = self.router.hand_seat(machine, to.and_then(|(_, id)| id))?;
        self.links.seat_handed_here(machine);
        Ok(label_of(self, previous).or(previous_remote))
    }

    /// The newest subscriber of `machine` here known as `label`.
    fn subscriber_named(&self, machine: &str, label: &str) -> Option<PeerId> {
        self.router
            .subscribers(machine)
            .into_iter()
            .filter_map(|(id, _)| self.peers.get(&id).map(|e| (id, e)))
            .filter(|(_, e)| e.label == label)
            .max_by_key(|(_, e)| e.serial)
            .map(|(id, _)| id)
    }

    /// The label of whoever holds `machine`'s seat.
    pub fn seat_holder(&self, machine: &str) -> Option<&str> {
        self.router.seat(machine).and_then(|p| self.peers.get(&p)).map(|e| e.label.as_str())
    }

    /// Takes a datagram from the shared port if it is the SFU's: a STUN Binding request naming
    /// one of our peers' ufrags, or anything from an address ICE learned for a peer. False
    /// means it is not ours (the TURN core gets it).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> bool {
        let by_ufrag = match data.first() {
            Some(0..=3) => stun_ufrag(data).and_then(|u| self.by_ufrag.get(&u).copied()),
            _ => None,
        };
        let Some(id) = by_ufrag.or_else(|| self.by_addr.get(&from).copied()) else { return false };
        let Some(entry) = self.peers.get_mut(&id) else { return false };
        self.stats.datagrams_in += 1;
        match entry.peer.handle_datagram(now, from, self.public, data) {
            Ok(true) => {
                self.by_addr.insert(from, id);
                self.service(now, id);
            }
            Ok(false) => self.stats.datagrams_refused += 1,
            Err(e) => self.fail(id, &e),
        }
        true
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .map(|e| e.peer.timeout())
            .chain(self.router.poll_timeout())
            .chain(self.links.poll_timeout())
            .min()
    }

    /// Runs due timers of every peer and of the router.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<PeerId> = self.peers.iter().filter(|(_, e)| e.peer.timeout() <= now).map(|(&id, _)| id).collect();
        for id in due {
            let Some(entry) = self.peers.get_mut(&id) else { continue };
            match entry.peer.handle_timeout(now) {
                Ok(()) => self.service(now, id),
                Err(e) => self.fail(id, &e),
            }
        }
        if self.router.poll_timeout().is_some_and(|t| t <= now) {
            self.router.handle_timeout(now);
            self.deliver_keyframe_requests(now);
        }
        if self.links.poll_timeout().is_some_and(|t| t <= now) {
            self.links.handle_timeout(&mut self.router, now);
            self.layout += 1;
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.outbox.is_empty() {
            self.outbox.extend(self.transmits.drain(..));
        }
        self.outbox.pop_front()
    }

    fn add(&mut self, peer: Peer, role: Option<Role>, label: &str) -> PeerId {
        // Random ids: they end up in WHIP/WHEP resource URLs, which must not be guessable (one
        // viewer must not be able to end another's subscription). None a stand-in has.
        let peers = &self.peers;
        let id = self.links.fresh_id(&|p| peers.contains_key(&p));
        self.by_ufrag.insert(peer.ufrag().to_owned(), id);
        self.ufrags.write().unwrap_or_else(|e| e.into_inner()).insert(peer.ufrag().to_owned());
        self.serial += 1;
        let entry = Entry {
            peer,
            role,
            label: label.to_owned(),
            serial: self.serial,
            session: None,
            tracks: Vec::new(),
            lines: Vec::new(),
            lines_layout: 0,
        };
        self.peers.insert(id, entry);
        self.stats.peers_created += 1;
        id
    }

    fn forget(&mut self, id: PeerId) {
        self.layout += 1;
        self.links.forget_stand_in(id);
        if let Some(machine) = self.router.machine_of(id)
            && let Some(entry) = self.peers.get(&id).filter(|e| e.role.is_some())
        {
            self.links.viewer_left(machine, &entry.label);
        }
        if let Some(entry) = self.peers.remove(&id) {
            self.by_ufrag.remove(entry.peer.ufrag());
            self.ufrags.write().unwrap_or_else(|e| e.into_inner()).remove(entry.peer.ufrag());
            self.by_addr.retain(|_, p| *p != id);
            if entry.role.is_none() {
                self.publishers.retain(|_, p| *p != id);
            }
        }
        let _ = self.router.remove(id);
    }

    /// A new peer answering `offer`; a panic of the WebRTC stack while answering is counted
    /// like one of a running peer's.
    fn answer(&mut self, now: Instant, offer: &str) -> Result<(Peer, String), PeerError> {
        Peer::answer(now, offer, self.public).inspect_err(|e| {
            if matches!(e, PeerError::Panicked) {
                self.stats.panics += 1;
            }
        })
    }

    fn fail(&mut self, id: PeerId, e: &PeerError) {
        if matches!(e, PeerError::Panicked) {
            self.stats.panics += 1;
        }
        warn!(peer = id.0, error = %e, "SFU peer ended");
        self.stats.peers_lost += 1;
        self.forget(id);
    }

    /// Drains a peer's output and acts on its events, then does the same for every peer those
    /// events wrote to (str0m wants its output drained after every input).
    fn service(&mut self, now: Instant, first: PeerId) {
        let mut queue = vec![first];
        while let Some(id) = queue.pop() {
            // Until the peer is drained, or gone (an event can end it).
            while let Some(entry) = self.peers.get_mut(&id) {
                match entry.peer.poll_output() {
                    Ok(PeerOutput::Timeout(_)) => break,
                    Ok(PeerOutput::Transmit(t)) => self.transmits.push(t),
                    Ok(PeerOutput::Event(event)) => self.on_event(now, id, event, &mut queue),
                    Err(e) => {
                        self.fail(id, &e);
                        break;
                    }
                }
            }
        }
    }

    fn on_event(&mut self, now: Instant, id: PeerId, event: PeerEvent, queue: &mut Vec<PeerId>) {
        match event {
            PeerEvent::Connected => {
                self.stats.peers_connected += 1;
                debug!(peer = id.0, "connected");
            }
            PeerEvent::Disconnected => {
                info!(peer = id.0, "peer disconnected");
                self.stats.peers_lost += 1;
                self.forget(id);
            }
            PeerEvent::Media { index, receiving, codec, layers } => {
                self.layout += 1;
                let Some(entry) = self.peers.get_mut(&id) else { return };
                if entry.role.is_some() || !receiving {
                    return;
                }
                let Some(codec) = codec else { return };
                match self.router.add_track(id, codec, layers) {
                    Ok(track) => {
                        if entry.tracks.len() <= index {
                            entry.tracks.resize(index + 1, None);
                        }
                        entry.tracks[index] = Some(track);
                        debug!(peer = id.0, track, ?codec, layers, "track published");
                    }
                    Err(e) => warn!(peer = id.0, error = %e, "track refused"),
                }
            }
            PeerEvent::Rtp { media, layer, seq, timestamp, marker, keyframe, payload, codec } => {
                let Some(entry) = self.peers.get(&id) else { return };
                let Some(track) = entry.tracks.get(media).copied().flatten() else { return };
                if self.router.set_track_codec(id, track, codec) {
                    // Viewers' lines are chosen by codec.
                    self.layout += 1;
                }
                let pkt = MediaIn { track, layer, seq, timestamp, marker, keyframe, payload };
                if let Some(entry) = self.peers.get(&id) {
                    self.links.tap(&self.router, now, &entry.label, id, codec, &pkt);
                }
                self.route(now, id, codec, pkt, queue);
            }
            PeerEvent::KeyframeRequest { media } => {
                self.refresh_lines(id);
                let Some(track) = self.peers.get(&id).and_then(|e| e.lines.iter().position(|l| *l == Some(media)))
                else {
                    return;
                };
                self.router.handle_keyframe_request(now, id, track);
                self.deliver_to(now, queue);
            }
            PeerEvent::Nacks(n) => self.stats.nacks_received += n,
            PeerEvent::Bandwidth(bps) => {
                self.router.handle_bandwidth(now, id, bps);
                self.deliver_to(now, queue);
            }
            PeerEvent::Data { binary, data } => {
                let publisher_of = self.peers.get(&id).filter(|e| e.role.is_none()).map(|e| e.label.clone());
                if let Some(machine) = publisher_of {
                    self.links.machine_message(&machine, binary, &data);
                    let targets = self.router.handle_publisher_message(id);
                    self.send_data(&targets, binary, &data, queue);
                    return;
                }
                let Some(to) = self.router.handle_input(id) else { return };
                // Stamped by the first relay to receive it: this one.
                let stamp = SeatStamp {
                    relay: self.links.own().map(str::to_owned),
                    arrived_unix_ms: unix_ms(),
                    rtt_ms: self.peers.get(&id).and_then(|e| e.peer.rtt()).map(SeatStamp::rtt_ms),
                };
                if self.links.is_stand_in(to) {
                    self.links.seat_input(&self.router, to, binary, &data, &stamp);
                } else {
                    self.send_input(to, binary, &data, &stamp, queue);
                }
            }
        }
    }

    /// Routes a packet of `from` (a publisher here, or a stand-in for one elsewhere) to the
    /// room's subscribers, who join `queue`; key-frame requests it causes go out.
    fn route(&mut self, now: Instant, from: PeerId, codec: Codec, pkt: MediaIn, queue: &mut Vec<PeerId>) {
        let track = pkt.track;
        self.router.handle_media(now, from, pkt);
        while let Some(f) = self.router.poll_forward() {
            self.refresh_lines(f.to);
            let Some(sub) = self.peers.get_mut(&f.to) else { continue };
            let Some(m) = sub.lines.get(track).copied().flatten() else { continue };
            match sub.peer.write_rtp(now, m, codec, f.seq, f.timestamp, f.marker, f.payload) {
                Ok(_) => {
                    if !queue.contains(&f.to) {
                        queue.push(f.to);
                    }
                }
                Err(e) => self.fail(f.to, &e),
            }
        }
        self.deliver_to(now, queue);
    }

    /// A seat input for the machine's publisher `to`: stamped if its channel asks for it.
    fn send_input(&mut self, to: PeerId, binary: bool, data: &[u8], stamp: &SeatStamp, queue: &mut Vec<PeerId>) {
        if self.peers.get(&to).is_some_and(|e| e.peer.wants_stamps()) {
            self.send_data(&[to], false, &envelope(stamp, binary, data), queue);
        } else {
            self.send_data(&[to], binary, data, queue);
        }
    }

    /// A data-channel message to each of `to`, who join `queue`.
    fn send_data(&mut self, to: &[PeerId], binary: bool, data: &[u8], queue: &mut Vec<PeerId>) {
        for &id in to {
            let Some(e) = self.peers.get_mut(&id) else { continue };
            match e.peer.send_data(binary, data) {
                Ok(_) => queue.push(id),
                Err(err) => self.fail(id, &err),
            }
        }
    }

    fn deliver_keyframe_requests(&mut self, now: Instant) {
        let mut queue = Vec::new();
        self.deliver_to(now, &mut queue);
        for id in queue {
            self.service(now, id);
        }
    }

    /// Sends the router's key-frame requests to their publishers; they join `queue`.
    fn deliver_to(&mut self, now: Instant, queue: &mut Vec<PeerId>) {
        while let Some(r) = self.router.poll_keyframe_request() {
            if self.links.is_stand_in(r.publisher) {
                self.links.keyframe_upstream(&self.router, now, r.publisher, r.track);
                continue;
            }
            let Some(entry) = self.peers.get_mut(&r.publisher) else { continue };
            let Some(media) = entry.tracks.iter().position(|t| *t == Some(r.track)) else { continue };
            match entry.peer.request_keyframe(now, media, r.layer) {
                Ok(()) => {
                    if !queue.contains(&r.publisher) {
                        queue.push(r.publisher);
                    }
                }
                Err(e) => self.fail(r.publisher, &e),
            }
        }
    }
}
