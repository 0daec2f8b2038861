//! A hash map whose memory follows its peak size, not its churn.
//!
//! A map that holds a steady number of entries while entries come and go (allocations created
//! and deleted all day) should stop growing once it has held its peak. `std`'s map (hashbrown)
//! does not, by itself: at its usual load (up to 7/8 of its buckets full) many removals leave a
//! tombstone rather than an empty bucket, tombstones use up the room left for inserts, and when
//! the room is gone the map rehashes, in place if it is at most half full, and otherwise **into
//! a table twice the size**. So under steady churn a map at 60% load doubles once, at a moment
//! set by the churn rather than the load. The hour's soak (README, "Endurance") showed such a
//! step: 1 MiB of RSS about 28 minutes in, with the allocations flat at 10,000 for 18 minutes;
//! a simulation of its churn doubles a plain map of 5,000 keys (one worker's clients) then.
//!
//! [`SteadyMap`] keeps its map at most half full: before an insert that would fill it beyond
//! half, it grows it (to twice the room), so a rehash forced by tombstones always happens in
//! place, and the table's size is fixed by the peak number of entries. The cost is memory: a
//! table twice the usual size for the same entries (and shorter probes, so lookups do not get
//! slower). Removing does not shrink it, as with `std`.
//!
//! It relies on `HashMap::capacity` being the table's room less its tombstones (so it equals
//! the full room right after a resize, when there are none), which holds for hashbrown; were
//! that to change, the map would still be correct, only less steady (the tests say so).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// A `HashMap` that stays at most half full (see the module docs).
#[derive(Debug)]
pub struct SteadyMap<K, V, S> {
    map: HashMap<K, V, S>,
    /// The room of the table at its last resize (entries it holds before it must rehash).
    room: usize,
}

impl<K, V, S: Default> Default for SteadyMap<K, V, S> {
    fn default() -> Self {
        Self { map: HashMap::default(), room: 0 }
    }
}

impl<K: Eq + Hash, V, S: BuildHasher> SteadyMap<K, V, S> {
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let len = self.map.len();
        if (len + 1) * 2 > self.room {
            // Asking for more than the room left makes hashbrown resize (never in place: more
            // than half of the new count would be full), to at least twice the entries.
            let want = ((len + 1) * 2).max(self.room + 1);
            self.map.reserve(want - len);
            self.room = self.map.capacity();
        }
        self.map.insert(key, value)
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.remove(key)
    }

    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key)
    }

    #[inline]
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get_mut(key)
    }

    #[inline]
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The room of the table at its last resize: it changes only when the table is replaced.
    pub fn room(&self) -> usize {
        self.room
    }

    /// How many entries the table holds now before it must rehash (its room less tombstones; more
    /// than [`Self::room`] only if the map resized behind our back). Tests only.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }
}

#[cfg(test)]
mod tests;
