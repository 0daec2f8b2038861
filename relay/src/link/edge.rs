//! The edge side of a relay link, sans-IO: what an edge relay (viewers here, the machine
//! published at another relay, the origin) tells the origin over the link's control stream, and
//! how it repairs the link's losses. Driven like the other cores: `handle_*` calls with `now`,
//! [`Edge::poll_control`] for what to send, [`Edge::poll_timeout`] / [`Edge::handle_timeout`]
//! for timers. No socket, task or clock.
//!
//! - **One subscription per machine**, however many viewers: the first viewer subscribes; when
//!   the last leaves, the edge unsubscribes after [`UNSUBSCRIBE_GRACE`] (a viewer that reloads
//!   its page or switches layers does not tear the subscription down and rebuild it).
//! - **Who watches**: the origin is told each viewer's name as it comes and goes
//!   ([`Control::Viewer`]; again after a re-link), so that the seat can be handed there to a
//!   viewer here.
//! - **Key frames**: viewers' requests for a track are merged into at most one upstream request
//!   per [`KEYFRAME_INTERVAL`]; a request inside the window is sent when the window ends.
//! - **Layers**: the origin is told which simulcast layers of a track the edge's viewers use
//!   (a mask), only when that changes. A layer dropped from the mask is forgotten: packets of it
//!   still in flight are dropped ([`Arrival::Unwanted`]), and when it is asked for again its
//!   numbering starts afresh (the packets the origin held back meanwhile are no loss).
//! - **Loss repair**: each track layer's sequence numbers are followed; a gap is NACKed once it
//!   has been missing for [`NACK_DELAY`] (packets reordered on the path are not NACKed), again
//!   every [`NACK_RETRY`] up to [`NACK_TRIES`] times, then given up. The origin answers from its
//!   per-track buffer; a packet that fills a gap is [`Arrival::Repaired`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::wire::{Control, MAX_NACKS, Media};

/// How long a machine stays subscribed after its last viewer here left.
pub const UNSUBSCRIBE_GRACE: Duration = Duration::from_secs(5);
/// At most one upstream key-frame request per track this often (the SFU's rule for viewers).
pub const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);
/// A gap is NACKed once it has been missing this long: longer than the reordering seen on a
/// path, far shorter than a frame.
pub const NACK_DELAY: Duration = Duration::from_millis(10);
/// A NACKed packet still missing is NACKed again after this (about a long-haul round trip).
pub const NACK_RETRY: Duration = Duration::from_millis(150);
/// NACKs per missing packet before it is given up.
pub const NACK_TRIES: u8 = 3;
/// Missing packets followed per track layer; a longer gap gives up its oldest.
pub const MAX_MISSING: usize = 1024;

/// What became of an arriving packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// New: forward it.
    New,
    /// It fills a gap (a resend, or a late packet): forward it.
    Repaired,
    /// Already had it, or too old to be missed: drop it.
    Duplicate,
    /// Of a layer the edge no longer asks for (sent before the origin heard): drop it.
    Unwanted,
}

/// Counts, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeStats {
    pub subscribes: u64,
    pub unsubscribes: u64,
    /// Key-frame requests from viewers, and those sent upstream.
    pub keyframe_requests: u64,
    pub keyframe_requests_sent: u64,
    /// Sequence numbers NACKed (each try counts).
    pub nacked: u64,
    pub repaired: u64,
    /// Given up after [`NACK_TRIES`], or pushed out by [`MAX_MISSING`].
    pub lost: u64,
    pub duplicates: u64,
    /// Packets of layers no longer asked for.
    pub unwanted: u64,
}

#[derive(Debug, Default)]
struct MachineState {
    viewers: usize,
    /// Viewers by name (the same name may watch more than once).
    names: HashMap<String, usize>,
    /// When the edge unsubscribes, if nobody comes back first.
    unsubscribe_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct TrackState {
    mask: Option<u16>,
    last_keyframe_request: Option<Instant>,
    keyframe_pending: bool,
    layers: HashMap<u8, Sequence>,
}

/// A track layer's sequence numbers: the highest seen and the gaps below it.
#[derive(Debug, Default)]
struct Sequence {
    highest: Option<u64>,
    /// Missing seq → (when it is next NACKed, tries so far).
    missing: BTreeMap<u64, (Instant, u8)>,
}

/// The edge side of one link (to one origin relay).
#[derive(Debug, Default)]
pub struct Edge {
    machines: HashMap<String, MachineState>,
    tracks: HashMap<u64, TrackState>,
    out: VecDeque<Control>,
    stats: EdgeStats,
}

impl Edge {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> EdgeStats {
        self.stats
    }

    /// True while the edge holds (or is about to drop) a subscription to `machine`.
    pub fn is_subscribed(&self, machine: &str) -> bool {
        self.machines.contains_key(machine)
    }

    /// A viewer here, known as `name`, started watching `machine`.
    pub fn viewer_joined(&mut self, machine: &str, name: &str) {
        let state = self.machines.entry(machine.to_owned()).or_insert_with(|| {
            self.out.push_back(Control::Subscribe { machine: machine.to_owned() });
            self.stats.subscribes += 1;
            MachineState::default()
        });
        state.viewers += 1;
        state.unsubscribe_at = None;
        let count = state.names.entry(name.to_owned()).or_default();
        *count += 1;
        if *count == 1 {
            let (machine, label) = (machine.to_owned(), name.to_owned());
            self.out.push_back(Control::Viewer { machine, label, present: true });
        }
    }

    /// A viewer here, known as `name`, stopped watching `machine`.
    pub fn viewer_left(&mut self, now: Instant, machine: &str, name: &str) {
        if let Some(state) = self.machines.get_mut(machine) {
            state.viewers = state.viewers.saturating_sub(1);
            if state.viewers == 0 {
                state.unsubscribe_at = Some(now + UNSUBSCRIBE_GRACE);
            }
            if let Some(count) = state.names.get_mut(name) {
                *count -= 1;
                if *count == 0 {
                    state.names.remove(name);
                    let (machine, label) = (machine.to_owned(), name.to_owned());
                    self.out.push_back(Control::Viewer { machine, label, present: false });
                }
            }
        }
    }

    /// The seat holder here sent `data` to `machine`: it goes upstream on the control stream
    /// (reliable, in order), stamped with when this relay received it and the seat holder's
    /// round-trip time.
    pub fn seat_input(&mut self, machine: &str, binary: bool, data: &[u8], arrived_unix_ms: u64, rtt_ms: u32) {
        if self.machines.contains_key(machine) {
            self.out.push_back(Control::SeatInput {
                machine: machine.to_owned(),
                binary,
                data: data.to_vec(),
                arrived_unix_ms,
                rtt_ms,
            });
        }
    }

    /// The link to the origin was made again (it broke, or the origin restarted): what was
    /// queued for the old one is dropped, tracks are forgotten until announced again, and every
    /// machine still watched here is subscribed to afresh, with its viewers' names.
    pub fn relinked(&mut self) {
        self.out.clear();
        self.tracks.clear();
        let mut machines: Vec<(&String, &MachineState)> = self.machines.iter().collect();
        machines.sort_by(|a, b| a.0.cmp(b.0));
        for (machine, state) in machines {
            self.out.push_back(Control::Subscribe { machine: machine.clone() });
            self.stats.subscribes += 1;
            let mut names: Vec<&String> = state.names.keys().collect();
            names.sort();
            for label in names {
                self.out.push_back(Control::Viewer { machine: machine.clone(), label: label.clone(), present: true });
            }
        }
    }

    /// A control message from the origin. `Track` starts following a track; `TrackEnded`
    /// forgets it. The caller acts on the rest (new tracks for the router, machine messages to
    /// viewers, unavailability to the viewers' requests).
    pub fn handle_control(&mut self, message: &Control) {
        match message {
            Control::Track { track, .. } => {
                self.tracks.entry(*track).or_default();
            }
            Control::TrackEnded { track } => {
                self.tracks.remove(track);
            }
            _ => {}
        }
    }

    /// A media datagram from the origin.
    pub fn handle_media(&mut self, now: Instant, media: &Media<'_>) -> Arrival {
        let Some(track) = self.tracks.get_mut(&media.track) else {
            // A track the origin did not announce (or one that ended): nothing to forward it to.
            self.stats.duplicates += 1;
            return Arrival::Duplicate;
        };
        if track.mask.is_some_and(|m| u32::from(m) & (1 << media.layer) == 0) {
            self.stats.unwanted += 1;
            return Arrival::Unwanted;
        }
        let seq = track.layers.entry(media.layer).or_default();
        let arrival = seq.arrive(now, media.seq, &mut self.stats);
        match arrival {
            Arrival::Repaired => self.stats.repaired += 1,
            Arrival::Duplicate => self.stats.duplicates += 1,
            Arrival::New | Arrival::Unwanted => {}
        }
        arrival
    }

    /// A viewer here asked for a key frame of `track`.
    pub fn request_keyframe(&mut self, now: Instant, track: u64) {
        self.stats.keyframe_requests += 1;
        let Some(state) = self.tracks.get_mut(&track) else { return };
        match state.last_keyframe_request {
            Some(last) if now < last + KEYFRAME_INTERVAL => state.keyframe_pending = true,
            _ => {
                state.last_keyframe_request = Some(now);
                state.keyframe_pending = false;
                self.out.push_back(Control::KeyframeRequest { track });
                self.stats.keyframe_requests_sent += 1;
            }
        }
    }

    /// The simulcast layers of `track` the edge's viewers use now (bit `n` = layer `n`).
    pub fn set_layers(&mut self, track: u64, mask: u16) {
        let Some(state) = self.tracks.get_mut(&track) else { return };
        if state.mask != Some(mask) {
            state.mask = Some(mask);
            // Gaps in a layer not asked for are no loss: it starts afresh when asked again.
            state.layers.retain(|layer, _| u32::from(mask) & (1 << layer) != 0);
            self.out.push_back(Control::Layers { track, mask });
        }
    }

    /// The next control message to send to the origin.
    pub fn poll_control(&mut self) -> Option<Control> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let unsubscribes = self.machines.values().filter_map(|m| m.unsubscribe_at);
        let keyframes = self
            .tracks
            .values()
            .filter(|t| t.keyframe_pending)
            .filter_map(|t| t.last_keyframe_request.map(|l| l + KEYFRAME_INTERVAL));
        let nacks = self.tracks.values().flat_map(|t| t.layers.values()).filter_map(|s| s.next_due());
        unsubscribes.chain(keyframes).chain(nacks).min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .machines
            .iter()
            .filter(|(_, m)| m.unsubscribe_at.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for machine in expired {
            self.machines.remove(&machine);
            self.out.push_back(Control::Unsubscribe { machine });
            self.stats.unsubscribes += 1;
        }
        // In a stable order, so that what is sent does not depend on hashing.
        let mut ids: Vec<u64> = self.tracks.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(track) = self.tracks.get_mut(&id) else { continue };
            if track.keyframe_pending && track.last_keyframe_request.is_some_and(|l| now >= l + KEYFRAME_INTERVAL) {
                track.keyframe_pending = false;
                track.last_keyframe_request = Some(now);
                self.out.push_back(Control::KeyframeRequest { track: id });
                self.stats.keyframe_requests_sent += 1;
            }
            let mut layers: Vec<u8> = track.layers.keys().copied().collect();
            layers.sort_unstable();
            for layer in layers {
                let Some(seq) = track.layers.get_mut(&layer) else { continue };
                let due = seq.due(now, &mut self.stats);
                for seqs in due.chunks(MAX_NACKS) {
                    self.out.push_back(Control::Nack { track: id, layer, seqs: seqs.to_vec() });
                }
            }
        }
    }
}

impl Sequence {
    fn arrive(&mut self, now: Instant, s: u64, stats: &mut EdgeStats) -> Arrival {
        let Some(highest) = self.highest else {
            self.highest = Some(s);
            return Arrival::New;
        };
        if s > highest {
            // Everything between is missing from now on (bounded: a longer gap gives up its
            // oldest, which are the least worth resending).
            let first = (highest + 1).max(s.saturating_sub(MAX_MISSING as u64));
            stats.lost += first - (highest + 1);
            for m in first..s {
                self.missing.insert(m, (now + NACK_DELAY, 0));
            }
            while self.missing.len() > MAX_MISSING {
                self.missing.pop_first();
                stats.lost += 1;
            }
            self.highest = Some(s);
            Arrival::New
        } else if self.missing.remove(&s).is_some() {
            Arrival::Repaired
        } else {
            Arrival::Duplicate
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.missing.values().map(|(at, _)| *at).min()
    }

    /// The missing packets to NACK now, in order; those out of tries are given up.
    fn due(&mut self, now: Instant, stats: &mut EdgeStats) -> Vec<u64> {
        let mut nack = Vec::new();
        self.missing.retain(|seq, (at, tries)| {
            if *at > now {
                return true;
            }
            if *tries >= NACK_TRIES {
                stats.lost += 1;
                return false;
            }
            *tries += 1;
            *at = now + NACK_RETRY;
            nack.push(*seq);
            true
        });
        stats.nacked += nack.len() as u64;
        nack
    }
}

#[cfg(test)]
mod tests;
