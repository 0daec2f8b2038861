//! The SFU's routing core: who receives which packet, rewritten how; the seat; key-frame
//! requests; retransmissions. Sans-IO like the TURN core: no sockets, no clock, no str0m; the
//! shell feeds it packets and events with `now` and carries out what it returns.
//!
//! # Model
//!
//! A **room** is one game machine. Its **publisher** (the machine, over WHIP) sends tracks
//! (audio, video), a video track possibly in up to three simulcast **layers** (0 = lowest).
//! **Subscribers** (the session's player and any spectators, over WHEP) each receive every track
//! once: for a simulcast track, one layer at a time, chosen from the subscriber's bandwidth
//! estimate.
//!
//! # Rewriting
//!
//! A subscriber sees one continuous stream per track whatever layer or publisher connection it
//! comes from. Per subscriber and track a [`DownTrack`] keeps offsets: outgoing sequence number
//! = incoming + `seq_offset`, outgoing timestamp = incoming + `ts_offset` (both wrapping). Offsets
//! change only at a **switch**, which happens only on the first packet of a key frame of the
//! target layer: the new offsets make the sequence continue at last + 1 and the timestamp
//! advance by the wall-clock time since the last packet sent. Gaps inside a layer are kept, so
//! the subscriber's NACKs map back to the publisher's numbers.
//!
//! # Key frames
//!
//! A new subscriber, and one switching layer, needs a key frame of its target layer. Requests
//! (ours and the subscribers' PLI/FIR) go through one [`KeyframeGate`] per track layer, which
//! sends at most one request to the publisher per [`KEYFRAME_INTERVAL`]; requests inside the
//! interval are merged into one sent when it ends, and a key frame arriving meanwhile satisfies
//! them all.
//!
//! # Retransmissions
//!
//! Every forwarded packet is kept once per track layer in a [`PacketCache`] (a ring of
//! [`CACHE_PACKETS`] slots sharing the payload by reference count, the same `Arc` every
//! subscriber's packet points to), not once per subscriber;
//! a subscriber's NACK is mapped back through its offsets and answered from there.
//!
//! # The seat
//!
//! Data-channel messages from the machine go to every subscriber. Messages from subscribers
//! reach the machine only from the **seat** holder; the others' are dropped and counted. The
//! session's player takes the seat when it joins; signaling or an admin can hand it to another
//! subscriber of the room.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::keyframe::Codec;
use super::layer::{Layer, choose_layer};

mod remote;
pub use super::layer::{CACHE_PACKETS, Cached, KEYFRAME_INTERVAL, KeyframeGate, PacketCache};

/// Simulcast layers a track may have (RIDs `q`, `h`, `f` or `l`, `m`, `h`).
pub const MAX_LAYERS: usize = 3;
/// How often layer choices are reviewed without a new bandwidth estimate.
const REVIEW_INTERVAL: Duration = Duration::from_millis(250);

/// A WebRTC peer of the SFU, as the shell numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// What a subscriber is to its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The session's player: takes the seat on joining.
    Player,
    /// Watches; its inputs are dropped unless it is handed the seat.
    Spectator,
}

/// Why the router refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("peer {0:?} is already in a room")]
    PeerExists(PeerId),
    #[error("unknown peer {0:?}")]
    UnknownPeer(PeerId),
    #[error("peer {0:?} is not the publisher of its room")]
    NotPublisher(PeerId),
    #[error("peer {0:?} is not a subscriber of machine {1:?}")]
    NotSubscriber(PeerId, String),
    #[error("no room for machine {0:?}")]
    NoRoom(String),
    #[error("a track has 1 to {MAX_LAYERS} layers")]
    BadLayers,
}

/// One RTP packet from a publisher, as the shell parsed it.
#[derive(Debug, Clone)]
pub struct MediaIn {
    /// The track's index, as returned by [`Router::add_track`].
    pub track: usize,
    /// The simulcast layer (0 when the track has one).
    pub layer: u8,
    /// The extended (never wrapping) sequence number.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// First packet of a key frame (see [`super::keyframe::is_keyframe`]).
    pub keyframe: bool,
    pub payload: Arc<[u8]>,
}

/// One packet to send to a subscriber, rewritten.
#[derive(Debug, Clone)]
pub struct Forward {
    pub to: PeerId,
    pub track: usize,
    /// Continuous per subscriber and track (extended).
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// True for a retransmission answering a NACK (the shell sends it as RTX where negotiated).
    pub resend: bool,
    pub payload: Arc<[u8]>,
}

/// Ask `publisher` for a key frame of `track`'s `layer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyframeRequest {
    pub publisher: PeerId,
    pub track: usize,
    pub layer: u8,
}

/// What the routing core counts (the shell exports them as metrics).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Packets not sent to a subscriber because it waits for a key frame or another layer.
    pub held_back: u64,
    pub nacks: u64,
    pub resent: u64,
    /// NACKed packets no longer (or never) in the cache.
    pub resend_misses: u64,
    pub keyframe_requests_forwarded: u64,
    pub keyframe_requests_suppressed: u64,
    pub layer_switches: u64,
    pub inputs_delivered: u64,
    pub inputs_dropped: u64,
    pub messages_to_subscribers: u64,
}

/// The routing core. One per worker; rooms never span workers.
#[derive(Default)]
pub struct Router {
    rooms: Slab<Room>,
    by_machine: HashMap<String, usize>,
    peers: HashMap<PeerId, Membership>,
    requests: VecDeque<KeyframeRequest>,
    /// Packets for subscribers, read by [`poll_forward`](Self::poll_forward).
    forwards: VecDeque<Forward>,
    stats: RouteStats,
    next_review: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Membership {
    room: usize,
    publisher: bool,
}

struct Room {
    machine: String,
    /// Payload bytes received from the publisher, for the ingest bitrate.
    bytes_in: u64,
    publisher: Option<PeerId>,
    tracks: Vec<Track>,
    subscribers: Vec<Subscriber>,
    seat: Option<PeerId>,
}

struct Track {
    codec: Codec,
    layers: Vec<Layer>,
}

struct Subscriber {
    id: PeerId,
    role: Role,
    /// The estimate of the bandwidth to this subscriber (str0m's BWE), bits per second.
    bandwidth: Option<u64>,
    down: Vec<DownTrack>,
}

/// Per subscriber and track: which layer it receives and the rewriting offsets.
#[derive(Debug, Clone, Default)]
pub struct DownTrack {
    /// The layer it should receive.
    target: u8,
    /// The layer it receives; `None` until the first key frame (or after the publisher left).
    current: Option<u8>,
    seq_offset: u64,
    ts_offset: u32,
    /// The first incoming sequence number forwarded from the current layer: older ones (late,
    /// reordered) belong to before the switch and are not sent.
    switch_seq: u64,
    /// The first outgoing sequence number of the current layer: NACKs below it are unmapped.
    switch_out: u64,
    last_out: Option<(u64, u32, Instant)>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> &RouteStats {
        &self.stats
    }

    /// Makes `peer` the publisher of `machine`'s room, creating the room if needed. A publisher
    /// already there (the machine reconnecting) is replaced: its tracks are dropped and every
    /// subscriber waits for the new publisher's key frames, with sequence numbers and
    /// timestamps continuing where they were. Returns the publisher it replaced.
    pub fn publish(&mut self, machine: &str, peer: PeerId) -> Result<Option<PeerId>, RouteError> {
        if self.peers.contains_key(&peer) {
            return Err(RouteError::PeerExists(peer));
        }
        let room = self.room_for(machine);
        let r = &mut self.rooms[room];
        let old = r.publisher.replace(peer);
        r.tracks.clear();
        for sub in &mut r.subscribers {
            for d in &mut sub.down {
                d.current = None;
            }
        }
        if let Some(old) = old {
            self.peers.remove(&old);
        }
        self.peers.insert(peer, Membership { room, publisher: true });
        Ok(old)
    }

    /// Adds a track to `publisher`'s room with `layers` simulcast layers; returns its index.
    pub fn add_track(&mut self, publisher: PeerId, codec: Codec, layers: usize) -> Result<usize, RouteError> {
        if !(1..=MAX_LAYERS).contains(&layers) {
            return Err(RouteError::BadLayers);
        }
        let room = self.publisher_room(publisher)?;
        let r = &mut self.rooms[room];
        r.tracks.push(Track { codec, layers: (0..layers).map(|_| Layer::new()).collect() });
        for sub in &mut r.subscribers {
            sub.down.resize_with(r.tracks.len(), DownTrack::default);
        }
        Ok(r.tracks.len() - 1)
    }

    /// The codec `publisher`'s `track` really carries: a publisher's media line may offer
    /// several, and its packets say which it sends. True if that changed the track's codec.
    pub fn set_track_codec(&mut self, publisher: PeerId, track: usize, codec: Codec) -> bool {
        let Ok(room) = self.publisher_room(publisher) else { return false };
        match self.rooms[room].tracks.get_mut(track) {
            Some(t) if t.codec != codec => {
                t.codec = codec;
                true
            }
            _ => false,
        }
    }

    /// The tracks of `machine`'s room (codec and layer count), for a subscriber's SDP.
    pub fn tracks(&self, machine: &str) -> Vec<(Codec, usize)> {
        self.by_machine
            .get(machine)
            .map(|&room| self.rooms[room].tracks.iter().map(|t| (t.codec, t.layers.len())).collect())
            .unwrap_or_default()
    }

    /// Adds a subscriber to `machine`'s room (created if the machine has not published yet).
    /// A player takes the seat.
    pub fn subscribe(&mut self, now: Instant, machine: &str, peer: PeerId, role: Role) -> Result<(), RouteError> {
        if self.peers.contains_key(&peer) {
            return Err(RouteError::PeerExists(peer));
        }
        let room = self.room_for(machine);
        let r = &mut self.rooms[room];
        let down = vec![DownTrack::default(); r.tracks.len()];
        r.subscribers.push(Subscriber { id: peer, role, bandwidth: None, down });
        if role == Role::Player {
            r.seat = Some(peer);
        }
        self.peers.insert(peer, Membership { room, publisher: false });
        self.review_room(now, room);
        Ok(())
    }

    /// Removes a peer (publisher or subscriber). A room with nobody left is dropped.
    pub fn remove(&mut self, peer: PeerId) -> Result<(), RouteError> {
        let m = self.peers.remove(&peer).ok_or(RouteError::UnknownPeer(peer))?;
        let r = &mut self.rooms[m.room];
        if m.publisher {
            r.publisher = None;
            r.tracks.clear();
            for sub in &mut r.subscribers {
                for d in &mut sub.down {
                    d.current = None;
                }
            }
        } else {
            r.subscribers.retain(|s| s.id != peer);
            if r.seat == Some(peer) {
                r.seat = None;
            }
        }
        if r.publisher.is_none() && r.subscribers.is_empty() {
            let room = self.rooms.remove(m.room);
            self.by_machine.remove(&room.machine);
        }
        Ok(())
    }

    /// Gives `machine`'s seat to `to` (one of its subscribers), or to nobody.
    pub fn hand_seat(&mut self, machine: &str, to: Option<PeerId>) -> Result<Option<PeerId>, RouteError> {
        let &room = self.by_machine.get(machine).ok_or_else(|| RouteError::NoRoom(machine.to_owned()))?;
        let r = &mut self.rooms[room];
        if let Some(to) = to
            && !r.subscribers.iter().any(|s| s.id == to)
        {
            return Err(RouteError::NotSubscriber(to, machine.to_owned()));
        }
        Ok(std::mem::replace(&mut r.seat, to))
    }

    /// Who holds `machine`'s seat.
    pub fn seat(&self, machine: &str) -> Option<PeerId> {
        self.by_machine.get(machine).and_then(|&room| self.rooms[room].seat)
    }

    /// The machine of `peer`'s room.
    pub fn machine_of(&self, peer: PeerId) -> Option<&str> {
        self.peers.get(&peer).map(|m| self.rooms[m.room].machine.as_str())
    }

    /// Every room: machine, payload bytes received from its publisher so far, subscribers.
    pub fn rooms(&self) -> impl Iterator<Item = (&str, u64, usize)> + '_ {
        self.rooms.iter().map(|(_, r)| (r.machine.as_str(), r.bytes_in, r.subscribers.len()))
    }

    /// Subscribers of `machine`'s room.
    pub fn subscribers(&self, machine: &str) -> Vec<(PeerId, Role)> {
        self.by_machine
            .get(machine)
            .map(|&room| self.rooms[room].subscribers.iter().map(|s| (s.id, s.role)).collect())
            .unwrap_or_default()
    }

    /// A data-channel message from a subscriber: `Some(publisher)` if it holds the seat and the
    /// machine is there, else dropped and counted.
    pub fn handle_input(&mut self, from: PeerId) -> Option<PeerId> {
        let to = self
            .peers
            .get(&from)
            .filter(|m| !m.publisher)
            .map(|m| &self.rooms[m.room])
            .filter(|r| r.seat == Some(from))
            .and_then(|r| r.publisher);
        if to.is_some() {
            self.stats.inputs_delivered += 1;
        } else {
            self.stats.inputs_dropped += 1;
        }
        to
    }

    /// A data-channel message from a publisher: the subscribers it goes to.
    pub fn handle_publisher_message(&mut self, from: PeerId) -> Vec<PeerId> {
        let Some(m) = self.peers.get(&from).filter(|m| m.publisher) else { return Vec::new() };
        let to: Vec<PeerId> = self.rooms[m.room].subscribers.iter().map(|s| s.id).collect();
        self.stats.messages_to_subscribers += to.len() as u64;
        to
    }

    /// Routes one packet from a publisher: every forward is queued for
    /// [`poll_forward`](Self::poll_forward), and any key-frame request it causes for
    /// [`poll_keyframe_request`](Self::poll_keyframe_request).
    pub fn handle_media(&mut self, now: Instant, from: PeerId, pkt: MediaIn) {
        let Some(&Membership { room, publisher: true }) = self.peers.get(&from) else { return };
        let r = &mut self.rooms[room];
        let Some(track) = r.tracks.get_mut(pkt.track) else { return };
        let Some(layer) = track.layers.get_mut(usize::from(pkt.layer)) else { return };
        r.bytes_in += pkt.payload.len() as u64;
        self.stats.packets_in += 1;
        self.stats.bytes_in += pkt.payload.len() as u64;
        layer.rate.add(now, pkt.payload.len());
        layer.last_packet = Some(now);
        if pkt.keyframe {
            // Whatever was asked for is on its way.
            layer.gate.satisfied();
        }
        layer.cache.insert(Cached {
            seq: pkt.seq,
            timestamp: pkt.timestamp,
            marker: pkt.marker,
            payload: pkt.payload.clone(),
        });
        let clock = u64::from(track.codec.clock_rate());
        let mut want_keyframe = false;
        for sub in &mut r.subscribers {
            let Some(d) = sub.down.get_mut(pkt.track) else { continue };
            if d.current != Some(pkt.layer) {
                if d.target == pkt.layer && pkt.keyframe {
                    if d.last_out.is_some() {
                        self.stats.layer_switches += 1;
                    }
                    d.switch_to(now, &pkt, clock);
                } else {
                    want_keyframe |= d.target == pkt.layer;
                    self.stats.held_back += 1;
                    continue;
                }
            }
            if pkt.seq < d.switch_seq {
                self.stats.held_back += 1;
                continue;
            }
            let seq = pkt.seq.wrapping_add(d.seq_offset);
            let timestamp = pkt.timestamp.wrapping_add(d.ts_offset);
            if d.last_out.is_none_or(|(last, _, _)| seq > last) {
                d.last_out = Some((seq, timestamp, now));
            }
            self.stats.packets_out += 1;
            self.stats.bytes_out += pkt.payload.len() as u64;
            self.forwards.push_back(Forward {
                to: sub.id,
                track: pkt.track,
                seq,
                timestamp,
                marker: pkt.marker,
                resend: false,
                payload: pkt.payload.clone(),
            });
        }
        // Someone waits for this layer's key frame: ask (the gate keeps it to one per interval).
        if want_keyframe {
            let gate = &mut self.rooms[room].tracks[pkt.track].layers[usize::from(pkt.layer)].gate;
            ask(gate, now, from, pkt.track, pkt.layer, &mut self.requests, &mut self.stats);
        }
        // A subscriber whose target layer went silent, or who still waits, is reviewed on time.
        if self.next_review.is_none_or(|t| t > now + REVIEW_INTERVAL) {
            self.next_review = Some(now + REVIEW_INTERVAL);
        }
    }

    /// A subscriber's PLI/FIR for `track`: goes to the publisher through the layer's gate.
    pub fn handle_keyframe_request(&mut self, now: Instant, from: PeerId, track: usize) {
        let Some(&Membership { room, publisher: false }) = self.peers.get(&from) else { return };
        let r = &mut self.rooms[room];
        let Some(publisher) = r.publisher else { return };
        let Some(d) = r.subscribers.iter().find(|s| s.id == from).and_then(|s| s.down.get(track)) else { return };
        let layer = d.current.unwrap_or(d.target);
        if let Some(l) = r.tracks.get_mut(track).and_then(|t| t.layers.get_mut(usize::from(layer)))
            && !ask(&mut l.gate, now, publisher, track, layer, &mut self.requests, &mut self.stats)
        {
            self.stats.keyframe_requests_suppressed += 1;
        }
    }

    /// A key-frame request for `publisher`'s `track` from outside the room (a relay link's
    /// edge, which merged its viewers' already): each of `layers` (bit `n` = layer `n`; a
    /// track without simulcast has layer 0 only) is asked through its gate.
    pub fn request_keyframe(&mut self, now: Instant, publisher: PeerId, track: usize, layers: u16) {
        let Ok(room) = self.publisher_room(publisher) else { return };
        let Some(t) = self.rooms[room].tracks.get_mut(track) else { return };
        for (li, l) in t.layers.iter_mut().enumerate().filter(|(li, _)| layers & (1 << li) != 0) {
            ask(&mut l.gate, now, publisher, track, li as u8, &mut self.requests, &mut self.stats);
        }
    }

    /// A subscriber's NACK for outgoing sequence numbers of `track`: the packets still cached
    /// are queued for [`poll_forward`](Self::poll_forward) with the numbers the subscriber
    /// asked for.
    pub fn handle_nack(&mut self, from: PeerId, track: usize, seqs: &[u64]) {
        let Some(&Membership { room, publisher: false }) = self.peers.get(&from) else { return };
        let r = &self.rooms[room];
        let Some(d) = r.subscribers.iter().find(|s| s.id == from).and_then(|s| s.down.get(track)) else { return };
        let Some(layer) = d.current else { return };
        let Some(l) = r.tracks.get(track).and_then(|t| t.layers.get(usize::from(layer))) else { return };
        for &seq in seqs {
            self.stats.nacks += 1;
            let cached = (seq >= d.switch_out)
                .then(|| l.cache.get(seq.wrapping_sub(d.seq_offset)))
                .flatten()
                .filter(|c| c.seq >= d.switch_seq);
            match cached {
                Some(c) => {
                    self.stats.resent += 1;
                    self.forwards.push_back(Forward {
                        to: from,
                        track,
                        seq,
                        timestamp: c.timestamp.wrapping_add(d.ts_offset),
                        marker: c.marker,
                        resend: true,
                        payload: c.payload.clone(),
                    });
                }
                None => self.stats.resend_misses += 1,
            }
        }
    }

    /// The subscriber's new bandwidth estimate (bits per second); layers are chosen again.
    pub fn handle_bandwidth(&mut self, now: Instant, peer: PeerId, bps: u64) {
        let Some(&Membership { room, publisher: false }) = self.peers.get(&peer) else { return };
        if let Some(s) = self.rooms[room].subscribers.iter_mut().find(|s| s.id == peer) {
            s.bandwidth = Some(bps);
        }
        self.review_room(now, room);
    }

    /// The layer `peer` receives of `track` (None while it waits for a key frame).
    pub fn current_layer(&self, peer: PeerId, track: usize) -> Option<u8> {
        let m = self.peers.get(&peer)?;
        self.rooms[m.room].subscribers.iter().find(|s| s.id == peer)?.down.get(track)?.current
    }

    /// The layer `peer` should receive of `track`.
    pub fn target_layer(&self, peer: PeerId, track: usize) -> Option<u8> {
        let m = self.peers.get(&peer)?;
        Some(self.rooms[m.room].subscribers.iter().find(|s| s.id == peer)?.down.get(track)?.target)
    }

    /// The next packet for a subscriber.
    pub fn poll_forward(&mut self) -> Option<Forward> {
        self.forwards.pop_front()
    }

    /// The next key-frame request to send to a publisher.
    pub fn poll_keyframe_request(&mut self) -> Option<KeyframeRequest> {
        self.requests.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let gates = self
            .rooms
            .iter()
            .flat_map(|(_, r)| r.tracks.iter().flat_map(|t| t.layers.iter().filter_map(|l| l.gate.due())));
        gates.chain(self.next_review).min()
    }

    /// Sends merged key-frame requests whose interval has passed and reviews layer choices.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (_, r) in &mut self.rooms {
            let Some(publisher) = r.publisher else { continue };
            for (ti, t) in r.tracks.iter_mut().enumerate() {
                for (li, l) in t.layers.iter_mut().enumerate() {
                    if l.gate.fire(now) {
                        self.stats.keyframe_requests_forwarded += 1;
                        self.requests.push_back(KeyframeRequest { publisher, track: ti, layer: li as u8 });
                    }
                }
            }
        }
        if self.next_review.is_some_and(|t| t <= now) {
            self.next_review = None;
            let rooms: Vec<usize> = self.rooms.iter().map(|(k, _)| k).collect();
            for room in rooms {
                self.review_room(now, room);
            }
        }
    }

    fn room_for(&mut self, machine: &str) -> usize {
        if let Some(&room) = self.by_machine.get(machine) {
            return room;
        }
        let room = self.rooms.insert(Room {
            machine: machine.to_owned(),
            bytes_in: 0,
            publisher: None,
            tracks: Vec::new(),
            subscribers: Vec::new(),
            seat: None,
        });
        self.by_machine.insert(machine.to_owned(), room);
        room
    }

    fn publisher_room(&self, peer: PeerId) -> Result<usize, RouteError> {
        match self.peers.get(&peer) {
            Some(m) if m.publisher => Ok(m.room),
            Some(_) => Err(RouteError::NotPublisher(peer)),
            None => Err(RouteError::UnknownPeer(peer)),
        }
    }

    /// Chooses every subscriber's target layer per track; asks for key frames where a
    /// subscriber now waits for one.
    fn review_room(&mut self, now: Instant, room: usize) {
        let r = &mut self.rooms[room];
        let Some(publisher) = r.publisher else { return };
        // Audio first: what is left of a subscriber's estimate is shared by the video tracks.
        let audio: u64 = r.tracks.iter().filter(|t| t.codec.is_audio()).map(|t| t.layers[0].bps(now)).sum();
        let video_tracks = r.tracks.iter().filter(|t| !t.codec.is_audio()).count().max(1) as u64;
        // `subscribe` and `add_track` keep every subscriber's `down` as long as `tracks`.
        for sub in &mut r.subscribers {
            let budget = sub.bandwidth.map(|b| b.saturating_sub(audio) / video_tracks);
            for (ti, (t, d)) in r.tracks.iter_mut().zip(sub.down.iter_mut()).enumerate() {
                d.target = choose_layer(&t.layers, now, budget);
                if d.current != Some(d.target) && !t.codec.is_audio() {
                    let l = &mut t.layers[usize::from(d.target)];
                    ask(&mut l.gate, now, publisher, ti, d.target, &mut self.requests, &mut self.stats);
                }
            }
        }
    }
}

impl DownTrack {
    /// Starts forwarding `pkt`'s layer from `pkt` (the first packet of a key frame) on, with
    /// offsets that continue the outgoing sequence and timestamps.
    fn switch_to(&mut self, now: Instant, pkt: &MediaIn, clock: u64) {
        match self.last_out {
            None => {
                self.seq_offset = 0;
                self.ts_offset = 0;
            }
            Some((last_seq, last_ts, at)) => {
                self.seq_offset = last_seq.wrapping_add(1).wrapping_sub(pkt.seq);
                let elapsed = now.saturating_duration_since(at);
                let ticks = (elapsed.as_micros() as u64).saturating_mul(clock) / 1_000_000;
                let next_ts = last_ts.wrapping_add(ticks.clamp(1, u64::from(u32::MAX / 2)) as u32);
                self.ts_offset = next_ts.wrapping_sub(pkt.timestamp);
            }
        }
        self.current = Some(pkt.layer);
        self.switch_seq = pkt.seq;
        self.switch_out = pkt.seq.wrapping_add(self.seq_offset);
    }
}

/// A key-frame request through `gate`: sent now (true), or left pending there until its
/// interval ends (false). Callers count subscribers' merged PLI/FIR as suppressed; the router's
/// own requests (a subscriber waits for a key frame) are not.
fn ask(
    gate: &mut KeyframeGate,
    now: Instant,
    publisher: PeerId,
    track: usize,
    layer: u8,
    queue: &mut VecDeque<KeyframeRequest>,
    stats: &mut RouteStats,
) -> bool {
    let sent = gate.request(now);
    if sent {
        stats.keyframe_requests_forwarded += 1;
        queue.push_back(KeyframeRequest { publisher, track, layer });
    }
    sent
}
