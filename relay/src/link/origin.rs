//! The origin side of a relay link, sans-IO: the home relay of a machine serving one edge relay
//! over one link. To the origin's router the link is one more subscriber; this core decides what
//! of the machine's media crosses the link and answers the edge's control messages.
//!
//! - Media of a machine crosses only while the edge subscribes to it, and of a simulcast track
//!   only the layers the edge asked for ([`Control::Layers`]; all of them until it asks).
//! - The edge chooses its viewers' layers from the rates the origin measures: the origin
//!   reports each simulcast track's layer bitrates ([`Control::LayerRates`]) when they change.
//! - Every packet sent is kept in a per-layer buffer of [`BUFFER_PACKETS`], shared by nothing
//!   else (payloads are reference-counted, not copied); a NACK is answered from it with the
//!   same sequence number and the `resend` flag. A NACK for a packet no longer there is counted.
//! - What the origin's router must act on comes out as [`OriginEvent`]s: a subscription starts
//!   or ends, a key frame is wanted, the seat holder's input arrived (with the stamps of the
//!   relay that received it first).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::wire::{Control, Media};

/// Viewers' names kept per machine for an edge (a peer relay sending more is not believed).
pub const MAX_VIEWERS: usize = 4096;

/// Packets kept per track layer for NACKs: about 1 s of a 1 Mbit/s layer of 1,200-byte packets,
/// several long-haul round trips.
pub const BUFFER_PACKETS: usize = 1024;

/// What the origin's router acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginEvent {
    /// The edge has viewers for this machine: announce its tracks ([`Origin::track_added`]).
    Subscribed { machine: String },
    /// It has none any more.
    Unsubscribed { machine: String },
    /// A viewer at the edge needs a key frame of this track (merged there already), of one of
    /// these layers (the edge's mask: the layers its viewers receive or switch to).
    KeyframeRequest { track: u64, layers: u16 },
    /// The seat holder's input, for the machine; stamped by the relay that received it.
    SeatInput { machine: String, binary: bool, data: Vec<u8>, arrived_unix_ms: u64, rtt_ms: u32 },
    /// A viewer at the edge holds the machine's seat now.
    SeatTaken { machine: String },
}

/// Counts, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginStats {
    pub datagrams: u64,
    pub bytes: u64,
    /// Packets not sent: their layer is not wanted at the edge.
    pub filtered: u64,
    pub resent: u64,
    /// NACKed packets no longer in the buffer (or never sent).
    pub nack_misses: u64,
}

/// One packet as the buffer keeps it.
#[derive(Debug, Clone)]
struct Kept {
    seq: u64,
    timestamp: u32,
    marker: bool,
    keyframe: bool,
    payload: Arc<[u8]>,
}

#[derive(Debug)]
struct Track {
    machine: String,
    /// Bit `n` = layer `n` wanted; all until the edge says.
    mask: u16,
    /// Simulcast layers, and their rates as last reported to the edge.
    layers: u8,
    reported: Vec<u64>,
    buffers: HashMap<u8, Vec<Option<Kept>>>,
}

/// The origin side of one link (to one edge relay).
#[derive(Debug, Default)]
pub struct Origin {
    subscribed: HashSet<String>,
    /// The names of the edge's viewers of each subscribed machine.
    viewers: HashMap<String, HashSet<String>>,
    tracks: HashMap<u64, Track>,
    control: VecDeque<Control>,
    datagrams: VecDeque<Vec<u8>>,
    events: VecDeque<OriginEvent>,
    stats: OriginStats,
}

impl Origin {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> OriginStats {
        self.stats
    }

    /// Whether `track` is announced on this link.
    pub fn has_track(&self, track: u64) -> bool {
        self.tracks.contains_key(&track)
    }

    pub fn is_subscribed(&self, machine: &str) -> bool {
        self.subscribed.contains(machine)
    }

    /// How many machines the edge watches through this origin.
    pub fn subscriptions(&self) -> usize {
        self.subscribed.len()
    }

    /// A control message from the edge.
    pub fn handle_control(&mut self, message: Control) {
        match message {
            Control::Subscribe { machine } => {
                if self.subscribed.insert(machine.clone()) {
                    self.events.push_back(OriginEvent::Subscribed { machine });
                }
            }
            Control::Unsubscribe { machine } => {
                if self.subscribed.remove(&machine) {
                    self.tracks.retain(|_, t| t.machine != machine);
                    self.viewers.remove(&machine);
                    self.events.push_back(OriginEvent::Unsubscribed { machine });
                }
            }
            Control::Layers { track, mask } => {
                if let Some(t) = self.tracks.get_mut(&track) {
                    t.mask = mask;
                }
            }
            Control::KeyframeRequest { track } => {
                if let Some(t) = self.tracks.get(&track) {
                    self.events.push_back(OriginEvent::KeyframeRequest { track, layers: t.mask });
                }
            }
            Control::Nack { track, layer, seqs } => self.resend(track, layer, &seqs),
            Control::SeatInput { machine, binary, data, arrived_unix_ms, rtt_ms } => {
                if self.subscribed.contains(&machine) {
                    self.events.push_back(OriginEvent::SeatInput { machine, binary, data, arrived_unix_ms, rtt_ms });
                }
            }
            Control::Viewer { machine, label, present } => {
                if !self.subscribed.contains(&machine) {
                    return;
                }
                let names = self.viewers.entry(machine).or_default();
                if !present {
                    names.remove(&label);
                } else if names.len() < MAX_VIEWERS {
                    names.insert(label);
                }
            }
            Control::SeatTaken { machine } => {
                if self.subscribed.contains(&machine) {
                    self.events.push_back(OriginEvent::SeatTaken { machine });
                }
            }
            // What only an origin sends: an edge that sends it is confused; ignore it.
            Control::Track { .. }
            | Control::TrackEnded { .. }
            | Control::MachineMessage { .. }
            | Control::Unavailable { .. }
            | Control::Oversize { .. }
            | Control::LayerRates { .. }
            | Control::Seat { .. } => {}
        }
    }

    /// A track of `machine` is published (or was when the edge subscribed): announce it as
    /// `track` (the origin's id, unique on this link) if the edge subscribes to the machine.
    pub fn track_added(&mut self, machine: &str, track: u64, codec: u8, layers: u8) {
        if !self.subscribed.contains(machine) || self.tracks.contains_key(&track) {
            return;
        }
        let state = Track {
            machine: machine.to_owned(),
            mask: u16::MAX,
            layers,
            reported: Vec::new(),
            buffers: HashMap::new(),
        };
        self.tracks.insert(track, state);
        self.control.push_back(Control::Track { machine: machine.to_owned(), track, codec, layers });
    }

    /// Whether any announced track has more than one layer.
    pub fn has_simulcast(&self) -> bool {
        self.tracks.values().any(|t| t.layers > 1)
    }

    /// The announced tracks with more than one layer, in order.
    pub fn simulcast_tracks(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.tracks.iter().filter(|(_, t)| t.layers > 1).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    /// The bitrates of `track`'s layers as the origin receives them now (0: not live): sent to
    /// the edge if they changed since last reported.
    pub fn report_rates(&mut self, track: u64, rates: &[u64]) {
        let Some(t) = self.tracks.get_mut(&track) else { return };
        if t.reported != rates {
            t.reported = rates.to_vec();
            self.control.push_back(Control::LayerRates { track, rates: rates.to_vec() });
        }
    }

    /// The track is gone.
    pub fn track_removed(&mut self, track: u64) {
        if self.tracks.remove(&track).is_some() {
            self.control.push_back(Control::TrackEnded { track });
        }
    }

    /// Whether a viewer of `machine` known as `name` watches at the edge.
    pub fn has_viewer(&self, machine: &str, name: &str) -> bool {
        self.viewers.get(machine).is_some_and(|n| n.contains(name))
    }

    /// The machine's seat was handed to the edge's viewer `holder`, or is no longer the edge's
    /// (`None`): tell the edge, if it watches the machine.
    pub fn hand_seat(&mut self, machine: &str, holder: Option<&str>) {
        if self.subscribed.contains(machine) {
            let holder = holder.map(str::to_owned);
            self.control.push_back(Control::Seat { machine: machine.to_owned(), holder });
        }
    }

    /// The machine is not published here (answer to a subscription the origin cannot serve).
    pub fn unavailable(&mut self, machine: &str, reason: &str) {
        if self.subscribed.remove(machine) {
            self.tracks.retain(|_, t| t.machine != machine);
            self.viewers.remove(machine);
            self.control.push_back(Control::Unavailable { machine: machine.to_owned(), reason: reason.to_owned() });
        }
    }

    /// A message from `machine` to its viewers.
    pub fn machine_message(&mut self, machine: &str, binary: bool, data: &[u8]) {
        if self.subscribed.contains(machine) {
            self.control.push_back(Control::MachineMessage {
                machine: machine.to_owned(),
                binary,
                data: data.to_vec(),
            });
        }
    }

    /// A packet of an announced track from the publisher: sent if its layer is wanted.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_media(
        &mut self,
        track: u64,
        layer: u8,
        seq: u64,
        timestamp: u32,
        marker: bool,
        keyframe: bool,
        payload: &Arc<[u8]>,
    ) {
        let Some(t) = self.tracks.get_mut(&track) else { return };
        if layer > super::wire::MAX_LAYER || t.mask & (1 << layer) == 0 {
            self.stats.filtered += 1;
            return;
        }
        let kept = Kept { seq, timestamp, marker, keyframe, payload: Arc::clone(payload) };
        let buffer = t.buffers.entry(layer).or_insert_with(|| vec![None; BUFFER_PACKETS]);
        buffer[(seq % BUFFER_PACKETS as u64) as usize] = Some(kept.clone());
        self.send(track, layer, &kept, false);
    }

    fn resend(&mut self, track: u64, layer: u8, seqs: &[u64]) {
        let Some(buffer) = self.tracks.get(&track).and_then(|t| t.buffers.get(&layer)) else {
            self.stats.nack_misses += seqs.len() as u64;
            return;
        };
        let found: Vec<Kept> = seqs
            .iter()
            .filter_map(|s| buffer[(s % BUFFER_PACKETS as u64) as usize].as_ref().filter(|k| k.seq == *s).cloned())
            .collect();
        self.stats.nack_misses += (seqs.len() - found.len()) as u64;
        for k in found {
            self.stats.resent += 1;
            self.send(track, layer, &k, true);
        }
    }

    fn send(&mut self, track: u64, layer: u8, k: &Kept, resend: bool) {
        let mut datagram = Vec::with_capacity(k.payload.len() + 24);
        let (seq, timestamp, marker, keyframe, payload) = (k.seq, k.timestamp, k.marker, k.keyframe, &k.payload[..]);
        Media { track, layer, seq, timestamp, marker, keyframe, resend, payload }.encode(&mut datagram);
        self.stats.datagrams += 1;
        self.stats.bytes += datagram.len() as u64;
        self.datagrams.push_back(datagram);
    }

    /// The next control message for the edge.
    pub fn poll_control(&mut self) -> Option<Control> {
        self.control.pop_front()
    }

    /// The next media datagram for the edge.
    pub fn poll_datagram(&mut self) -> Option<Vec<u8>> {
        self.datagrams.pop_front()
    }

    /// The next thing for the origin's router.
    pub fn poll_event(&mut self) -> Option<OriginEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
