//! The allocations of one core, and the indexes that find them: by client (requests,
//! ChannelData, Send), by relay port (every datagram from a peer) and by expiry (timeouts).
//!
//! Allocations live in slots of a vector, so the peer path turns a relay port into an
//! allocation with two array reads and no hashing. [`Slot`] handles stay valid until their
//! allocation is removed; a removed slot is reused by a later insert.
//!
//! **Invariants**, kept by every method and checked by [`AllocationTable::check`] in the tests:
//! 1. `by_client[c] == s` exactly when slot `s` holds an allocation whose client is `c`;
//! 2. `by_port[p] == s + 1` exactly when slot `s` holds an allocation on relay port `p`, and 0
//!    for every other port;
//! 3. `free` lists each empty slot once, and nothing else;
//! 4. every allocation has an entry `(its expiry, its slot)` in `expiries`. Entries are not
//!    removed when an allocation is refreshed or removed; [`AllocationTable::pop_expired`]
//!    recognises stale ones by the allocation's own expiry, so they cost a pop and nothing else.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::allocation::Allocation;
use super::steady_map::SteadyMap;
use super::types::{ClientAddr, RelayPort};

/// The client index: a [`SteadyMap`], so that allocations coming and going all day do not grow it
/// beyond what its peak needs.
type FastMap<K, V> = SteadyMap<K, V, foldhash::fast::RandomState>;

/// Where an allocation is in its table; valid until the allocation is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(u32);

/// The allocations of one core with their indexes (see the module docs for the invariants).
pub struct AllocationTable {
    slots: Vec<Option<Allocation>>,
    free: Vec<u32>,
    by_client: FastMap<ClientAddr, u32>,
    /// Relay port → slot + 1 (0 = none); indexed directly, so the peer path does no hashing.
    by_port: Vec<u32>,
    expiries: BinaryHeap<Reverse<(Instant, u32)>>,
}

impl Default for AllocationTable {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            by_client: FastMap::default(),
            by_port: vec![0; usize::from(u16::MAX) + 1],
            expiries: BinaryHeap::new(),
        }
    }
}

impl AllocationTable {
    /// How many allocations there are (expired ones not yet removed count).
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// Whether `client` has an allocation (expired or not).
    #[inline]
    pub fn contains(&self, client: ClientAddr) -> bool {
        self.by_client.contains_key(&client)
    }

    /// The allocation of `client` (expired or not).
    #[inline]
    pub fn by_client(&self, client: ClientAddr) -> Option<(Slot, &Allocation)> {
        let slot = *self.by_client.get(&client)?;
        self.slots[slot as usize].as_ref().map(|a| (Slot(slot), a))
    }

    /// The allocation on relay port `port` (expired or not).
    #[inline]
    pub fn by_port(&self, port: RelayPort) -> Option<(Slot, &Allocation)> {
        let slot = self.by_port[usize::from(port.0)].checked_sub(1)?;
        self.slots.get(slot as usize)?.as_ref().map(|a| (Slot(slot), a))
    }

    #[inline]
    pub fn get(&self, slot: Slot) -> Option<&Allocation> {
        self.slots.get(slot.0 as usize)?.as_ref()
    }

    #[inline]
    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut Allocation> {
        self.slots.get_mut(slot.0 as usize)?.as_mut()
    }

    /// Adds an allocation. Its client and relay port must have none yet (the core checks the
    /// client before it allocates, and the port pool hands out each port once).
    pub fn insert(&mut self, alloc: Allocation) -> Slot {
        debug_assert!(!self.by_client.contains_key(&alloc.client), "one allocation per client");
        debug_assert_eq!(self.by_port[usize::from(alloc.port.0)], 0, "one allocation per relay port");
        let (client, port, expires) = (alloc.client, alloc.port, alloc.expires);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(alloc);
                slot
            }
            None => {
                self.slots.push(Some(alloc));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_client.insert(client, slot);
        self.by_port[usize::from(port.0)] = slot + 1;
        self.expiries.push(Reverse((expires, slot)));
        Slot(slot)
    }

    /// Sets when the allocation in `slot` expires (Refresh).
    pub fn set_expiry(&mut self, slot: Slot, expires: Instant) {
        if let Some(alloc) = self.get_mut(slot) {
            alloc.expires = expires;
            self.expiries.push(Reverse((expires, slot.0)));
        }
    }

    /// Takes the allocation out of `slot`; `None` if the slot is empty.
    pub fn remove(&mut self, slot: Slot) -> Option<Allocation> {
        let alloc = self.slots.get_mut(slot.0 as usize)?.take()?;
        self.by_client.remove(&alloc.client);
        self.by_port[usize::from(alloc.port.0)] = 0;
        self.free.push(slot.0);
        Some(alloc)
    }

    /// The earliest expiry to look at (possibly of an allocation refreshed or removed since).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiries.peek().map(|Reverse((t, _))| *t)
    }

    /// The next allocation whose lifetime is over at `now`, if any; stale expiry entries met on
    /// the way are dropped.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Slot> {
        while let Some(&Reverse((due, slot))) = self.expiries.peek() {
            if due > now {
                return None;
            }
            self.expiries.pop();
            // An entry whose allocation was refreshed, removed, or replaced by another in the same
            // slot is recognised by the allocation's own expiry.
            if self.get(Slot(slot)).is_some_and(|a| a.expires <= now) {
                return Some(Slot(slot));
            }
        }
        None
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Allocation> {
        self.slots.iter_mut().flatten()
    }

    /// Checks the invariants of the module docs; the first broken one, in words (tests only:
    /// it walks every index).
    #[cfg(test)]
    pub fn check(&self) -> Result<(), String> {
        let mut live = 0;
        for (s, alloc) in self.slots.iter().enumerate() {
            let Some(a) = alloc else { continue };
            live += 1;
            if self.by_client.get(&a.client) != Some(&(s as u32)) {
                return Err(format!("slot {s}: its client {} is not indexed to it", a.client));
            }
            if self.by_port[usize::from(a.port.0)] != s as u32 + 1 {
                return Err(format!("slot {s}: its port {} is not indexed to it", a.port));
            }
            if !self.expiries.iter().any(|Reverse((t, e))| *e == s as u32 && *t == a.expires) {
                return Err(format!("slot {s}: no expiry entry at its expiry"));
            }
        }
        if self.by_client.len() != live {
            return Err(format!("{} clients indexed, {live} allocations", self.by_client.len()));
        }
        if let Some((port, _)) = self.by_port.iter().enumerate().find(|(port, s)| {
            **s != 0
                && self
                    .slots
                    .get(**s as usize - 1)
                    .and_then(Option::as_ref)
                    .is_none_or(|a| usize::from(a.port.0) != *port)
        }) {
            return Err(format!("port {port} indexed to a slot that is not its allocation's"));
        }
        let mut free = self.free.clone();
        free.sort_unstable();
        let empty: Vec<u32> = (0..self.slots.len() as u32).filter(|s| self.slots[*s as usize].is_none()).collect();
        if free != empty {
            return Err(format!("free list {free:?}, empty slots {empty:?}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
