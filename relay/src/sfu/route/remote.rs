//! The router's tracks across relay links: which have started (announced at once to an edge),
//! what the home relay tells an edge of a track's layers ([`Router::layer_rates`]), what the edge takes from it
//! ([`Router::set_layer_rates`]), and which layers the edge's viewers use, the only ones it asks
//! the home relay for ([`Router::layers_in_use`]).

use std::time::Instant;

use super::{PeerId, Router};

impl Router {
    /// The publisher of `machine`'s room.
    pub fn publisher(&self, machine: &str) -> Option<PeerId> {
        self.by_machine.get(machine).and_then(|&room| self.rooms[room].publisher)
    }

    /// Whether any packet of `publisher`'s `track` has come (its codec is then sure).
    pub fn track_started(&self, publisher: PeerId, track: usize) -> bool {
        let Ok(room) = self.publisher_room(publisher) else { return false };
        self.rooms[room].tracks.get(track).is_some_and(|t| t.layers.iter().any(|l| l.last_packet.is_some()))
    }

    /// The bitrate of each layer of `publisher`'s `track` (bits per second; 0 for a layer that
    /// is not live, at least 1 for one that is), as a relay link reports them.
    pub fn layer_rates(&self, now: Instant, publisher: PeerId, track: usize) -> Vec<u64> {
        let Ok(room) = self.publisher_room(publisher) else { return Vec::new() };
        let Some(t) = self.rooms[room].tracks.get(track) else { return Vec::new() };
        t.layers.iter().map(|l| if l.live(now) { l.bps(now).max(1) } else { 0 }).collect()
    }

    /// The bitrates of the layers of `publisher`'s `track` as its home relay receives them
    /// (`publisher` stands in for a machine published there): subscribers' layers are chosen
    /// from these from now on, and at once.
    pub fn set_layer_rates(&mut self, now: Instant, publisher: PeerId, track: usize, rates: &[u64]) {
        let Ok(room) = self.publisher_room(publisher) else { return };
        let Some(t) = self.rooms[room].tracks.get_mut(track) else { return };
        for (i, l) in t.layers.iter_mut().enumerate() {
            l.reported = Some(rates.get(i).copied().unwrap_or(0));
        }
        self.review_room(now, room);
    }

    /// The layers of `publisher`'s `track` some subscriber receives or is switching to (bit
    /// `n` = layer `n`); 0 when nobody watches.
    pub fn layers_in_use(&self, publisher: PeerId, track: usize) -> u16 {
        let Ok(room) = self.publisher_room(publisher) else { return 0 };
        let mut mask = 0u16;
        for d in self.rooms[room].subscribers.iter().filter_map(|s| s.down.get(track)) {
            mask |= 1 << d.target.min(15);
            if let Some(current) = d.current {
                mask |= 1 << current.min(15);
            }
        }
        mask
    }
}
