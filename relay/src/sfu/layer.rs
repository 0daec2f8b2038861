//! What the router keeps per track layer ([`Layer`]): the packets for retransmission
//! ([`PacketCache`]), the key-frame request gate ([`KeyframeGate`]), the bitrate
//! ([`RateMeter`]), and how a subscriber's layer is chosen from them ([`choose_layer`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most one key-frame request per track layer reaches the publisher in this interval.
pub const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);
/// Packets kept per track layer for retransmission (about 1.5 s of 720p video at 2.5 Mbit/s).
pub const CACHE_PACKETS: usize = 512;
/// A layer's bitrate is measured over windows of this length.
const RATE_WINDOW: Duration = Duration::from_millis(500);
/// A layer silent this long is not chosen for subscribers.
const LAYER_IDLE: Duration = Duration::from_millis(1000);

/// One layer of a published track.
pub(super) struct Layer {
    pub cache: PacketCache,
    pub gate: KeyframeGate,
    pub rate: RateMeter,
    pub last_packet: Option<Instant>,
    /// The layer's bitrate as the publisher's home relay receives it (0: not live there), for
    /// a track watched through a relay link: the edge receives only the layers its viewers
    /// use, so its own measure says nothing of the others. `None` for local publishers.
    pub reported: Option<u64>,
}

impl Layer {
    pub fn new() -> Self {
        Self {
            cache: PacketCache::new(),
            gate: KeyframeGate::default(),
            rate: RateMeter::default(),
            last_packet: None,
            reported: None,
        }
    }

    /// Whether the publisher sends this layer now.
    pub fn live(&self, now: Instant) -> bool {
        match self.reported {
            Some(bps) => bps > 0,
            None => self.last_packet.is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE),
        }
    }

    /// Its bitrate, bits per second.
    pub fn bps(&self, now: Instant) -> u64 {
        self.reported.unwrap_or_else(|| self.rate.bps(now))
    }
}

/// The highest live layer whose bitrate fits `budget` (all of them without an estimate yet);
/// the lowest live one when none fits; layer 0 when none is live.
pub(super) fn choose_layer(layers: &[Layer], now: Instant, budget: Option<u64>) -> u8 {
    let mut best = None;
    let mut lowest = None;
    for (i, l) in layers.iter().enumerate() {
        if !l.live(now) {
            continue;
        }
        lowest.get_or_insert(i);
        if budget.is_none_or(|b| l.bps(now) <= b) {
            best = Some(i);
        }
    }
    best.or(lowest).unwrap_or(0) as u8
}

/// Merges key-frame requests: at most one per [`KEYFRAME_INTERVAL`] goes to the publisher; one
/// asked for inside the interval is sent when it ends, unless a key frame came meanwhile.
#[derive(Debug, Default, Clone)]
pub struct KeyframeGate {
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeGate {
    /// True if a request must be sent now; otherwise it is merged into the pending one.
    pub fn request(&mut self, now: Instant) -> bool {
        if self.last_sent.is_none_or(|t| now.saturating_duration_since(t) >= KEYFRAME_INTERVAL) {
            self.last_sent = Some(now);
            self.pending = false;
            true
        } else {
            self.pending = true;
            false
        }
    }

    /// A key frame arrived: the pending request is answered.
    pub fn satisfied(&mut self) {
        self.pending = false;
    }

    /// When the pending request is due.
    pub fn due(&self) -> Option<Instant> {
        if self.pending { self.last_sent.map(|t| t + KEYFRAME_INTERVAL) } else { None }
    }

    /// True if the pending request is due at `now` (and is then sent).
    pub fn fire(&mut self, now: Instant) -> bool {
        if self.due().is_some_and(|t| t <= now) {
            self.last_sent = Some(now);
            self.pending = false;
            true
        } else {
            false
        }
    }
}

/// A packet kept for retransmission.
#[derive(Debug, Clone)]
pub struct Cached {
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Arc<[u8]>,
}

/// The last [`CACHE_PACKETS`] packets of one track layer, by incoming sequence number.
pub struct PacketCache {
    slots: Box<[Option<Cached>]>,
}

impl PacketCache {
    pub fn new() -> Self {
        Self { slots: vec![None; CACHE_PACKETS].into_boxed_slice() }
    }

    /// Keeps `pkt`, unless its slot holds a newer packet.
    pub fn insert(&mut self, pkt: Cached) {
        let slot = &mut self.slots[(pkt.seq % CACHE_PACKETS as u64) as usize];
        if slot.as_ref().is_none_or(|c| c.seq <= pkt.seq) {
            *slot = Some(pkt);
        }
    }

    pub fn get(&self, seq: u64) -> Option<&Cached> {
        self.slots[(seq % CACHE_PACKETS as u64) as usize].as_ref().filter(|c| c.seq == seq)
    }
}

impl Default for PacketCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Bits per second over the last complete window of [`RATE_WINDOW`].
#[derive(Debug, Default, Clone)]
pub struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    last_bps: u64,
}

impl RateMeter {
    pub fn add(&mut self, now: Instant, bytes: usize) {
        self.roll(now);
        self.bytes += bytes as u64;
    }

    pub fn roll(&mut self, now: Instant) {
        match self.window_start {
            None => self.window_start = Some(now),
            Some(start) => {
                let elapsed = now.saturating_duration_since(start);
                if elapsed >= RATE_WINDOW {
                    // A window with nothing after it (a silent gap) counts as idle.
                    self.last_bps = if elapsed >= RATE_WINDOW * 2 {
                        0
                    } else {
                        self.bytes * 8 * 1_000_000 / elapsed.as_micros().max(1) as u64
                    };
                    self.bytes = 0;
                    self.window_start = Some(now);
                }
            }
        }
    }

    pub fn bps(&self, now: Instant) -> u64 {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) >= RATE_WINDOW * 2 => 0,
            _ => self.last_bps,
        }
    }
}
