//! State the per-core TURN servers share: the relay port pool, the allocation quotas and the
//! relay-wide budgets (bandwidth, unauthenticated answers).
//!
//! The pool and quotas are touched only when an allocation is created or removed, never per
//! packet, so a mutex each is the simple and sufficient choice; the packet paths stay lock-free
//! (the pool's taken-port bitmap is read with atomic loads), and the budgets are drawn from a few
//! milliseconds' worth at a time (see [`SharedBucket`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::limit::SharedBucket;
use super::steady_map::SteadyMap;
use super::types::{RelayPort, Username};

/// Free relay ports, handed out in random order (RFC 8656 §7.2 wants relayed ports hard to guess,
/// and coturn's sequential allocator once wrapped, #1992).
///
/// `free` holds the free ports in no order; `slot[port]` is the port's index in `free` (or
/// `NONE`), so taking a random port, a specific port, or putting one back are all O(1).
#[derive(Debug)]
pub struct PortPool {
    free: Vec<u16>,
    slot: Vec<u32>,
    rng: SmallRng,
}

const NONE: u32 = u32::MAX;

impl PortPool {
    pub fn new(min: u16, max: u16, seed: u64) -> Self {
        let mut pool = Self { free: Vec::new(), slot: vec![NONE; 1 << 16], rng: SmallRng::seed_from_u64(seed) };
        for port in min..=max {
            pool.put(port);
        }
        pool
    }

    fn remove_at(&mut self, i: usize) -> u16 {
        let port = self.free.swap_remove(i);
        self.slot[usize::from(port)] = NONE;
        if let Some(&moved) = self.free.get(i) {
            self.slot[usize::from(moved)] = i as u32;
        }
        port
    }

    fn is_free(&self, port: u16) -> bool {
        self.slot[usize::from(port)] != NONE
    }

    /// Takes a random free port, optionally only an even one (EVEN-PORT, RFC 8656 §14.6).
    pub fn take(&mut self, even: bool) -> Option<u16> {
        self.take_where(|_, p| !even || p % 2 == 0).map(|i| self.remove_at(i))
    }

    /// Takes a random even port whose successor is free too, and the successor (EVEN-PORT with
    /// the R bit: the next port is reserved for the client's RTCP, RFC 8656 §7.2).
    pub fn take_pair(&mut self) -> Option<(u16, u16)> {
        let i = self.take_where(|pool, p| p % 2 == 0 && p < u16::MAX && pool.is_free(p + 1))?;
        let port = self.remove_at(i);
        let next = self.take_specific(port + 1).then_some(port + 1)?;
        Some((port, next))
    }

    /// Index of a random free port satisfying `ok`: random probes, then a scan, so a sparse pool
    /// still finds one.
    fn take_where(&mut self, ok: impl Fn(&Self, u16) -> bool) -> Option<usize> {
        if self.free.is_empty() {
            return None;
        }
        for _ in 0..16 {
            let i = self.rng.random_range(0..self.free.len());
            if ok(self, self.free[i]) {
                return Some(i);
            }
        }
        self.free.iter().position(|&p| ok(self, p))
    }

    /// Removes `port` from the pool if it is free.
    pub fn take_specific(&mut self, port: u16) -> bool {
        match self.slot[usize::from(port)] {
            NONE => false,
            i => {
                self.remove_at(i as usize);
                true
            }
        }
    }

    pub fn put(&mut self, port: u16) {
        if !self.is_free(port) {
            self.slot[usize::from(port)] = self.free.len() as u32;
            self.free.push(port);
        }
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }
}

/// Why the quota refused an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    /// RFC 8656 §7.2: 486 Allocation Quota Reached.
    User,
    /// RFC 8656 §7.2: 508 Insufficient Capacity.
    Total,
}

#[derive(Debug, Default)]
struct QuotaState {
    total: u32,
    /// Allocations per username; a [`SteadyMap`], as usernames churn all day (each time-limited
    /// credential is a username of its own).
    users: SteadyMap<Username, u32, std::hash::RandomState>,
}

/// Allocation counts per username and in total, with their limits (0 means no limit).
#[derive(Debug)]
pub struct Quotas {
    per_user: AtomicU32,
    total: AtomicU32,
    state: Mutex<QuotaState>,
}

impl Quotas {
    pub fn new(per_user: u32, total: u32) -> Self {
        Self { per_user: AtomicU32::new(per_user), total: AtomicU32::new(total), state: Mutex::default() }
    }

    /// New limits (config reload). Allocations over a lowered limit stay; new ones wait.
    pub fn set_limits(&self, per_user: u32, total: u32) {
        self.per_user.store(per_user, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn acquire(&self, user: &Username) -> Result<(), QuotaError> {
        let (per_user, total) = (self.per_user.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed));
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if total != 0 && s.total >= total {
            return Err(QuotaError::Total);
        }
        let n = s.users.get(user).copied().unwrap_or(0);
        if per_user != 0 && n >= per_user {
            return Err(QuotaError::User);
        }
        s.users.insert(user.clone(), n + 1);
        s.total += 1;
        Ok(())
    }

    pub fn release(&self, user: &Username) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = s.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                s.users.remove(user);
            }
            s.total -= 1;
        }
    }

    pub fn total(&self) -> u32 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// The limit on allocations in total (`allocations.max_total`; 0 = none).
    pub fn total_limit(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }
}

/// RFC 8656 §7.2: a port reserved by EVEN-PORT(R) is held for about 30 seconds.
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// What all workers share. The client that redeems a RESERVATION-TOKEN (with another source
/// port, so possibly on another worker) must find it, hence reservations live here too.
#[derive(Debug)]
pub struct Shared {
    ports: Mutex<PortPool>,
    /// How many ports the pool was made with (free or not).
    port_count: usize,
    pub quotas: Quotas,
    reservations: Mutex<HashMap<[u8; 8], (RelayPort, Instant)>>,
    /// One bit per port: out of the pool (bound by an allocation or reserved). Read without a
    /// lock, to tell datagrams from the relay's own relayed sockets (see
    /// [`Shared::is_relay_port`]).
    taken: Box<[AtomicU64]>,
    /// The relay-wide bandwidth budget (`limits.total_mbps`), in bytes; every core draws from it.
    pub bandwidth: Arc<SharedBucket>,
    /// The relay-wide budget of answers to unauthenticated requests (`limits.unauthenticated_total`).
    pub answers: Arc<SharedBucket>,
}

impl Shared {
    /// The budgets start without a limit; the cores set their rates from their config.
    pub fn new(ports: PortPool, quotas: Quotas) -> Self {
        let taken = (0..1024).map(|_| AtomicU64::new(0)).collect();
        Self {
            port_count: ports.available(),
            ports: Mutex::new(ports),
            quotas,
            reservations: Mutex::default(),
            taken,
            bandwidth: Arc::new(SharedBucket::bytes()),
            answers: Arc::new(SharedBucket::answers()),
        }
    }

    fn mark(&self, port: u16, taken: bool) {
        let bit = 1u64 << (port % 64);
        let word = &self.taken[usize::from(port / 64)];
        if taken {
            word.fetch_or(bit, Ordering::Relaxed);
        } else {
            word.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// Whether `port` is one of the relay ports in use (by an allocation of any worker, or
    /// reserved).
    #[inline]
    pub fn is_relay_port(&self, port: u16) -> bool {
        self.taken[usize::from(port / 64)].load(Ordering::Relaxed) & (1u64 << (port % 64)) != 0
    }

    pub fn take_pair(&self) -> Option<(RelayPort, RelayPort)> {
        let pair = self.ports.lock().unwrap_or_else(|e| e.into_inner()).take_pair();
        if let Some((a, b)) = pair {
            self.mark(a, true);
            self.mark(b, true);
        }
        pair.map(|(a, b)| (RelayPort(a), RelayPort(b)))
    }

    /// Holds `port` (already out of the pool) for the client presenting `token`. No socket is
    /// bound until the token is redeemed; the pool will not hand the port to anyone else.
    pub fn reserve(&self, token: [u8; 8], port: RelayPort, now: Instant) {
        self.expire_reservations(now);
        let mut r = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        r.insert(token, (port, now + RESERVATION_LIFETIME));
    }

    /// The reserved port for `token`, if the reservation exists and has not expired.
    pub fn redeem(&self, token: &[u8], now: Instant) -> Option<RelayPort> {
        self.expire_reservations(now);
        let token: [u8; 8] = token.try_into().ok()?;
        let mut r = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        r.remove(&token).map(|(port, _)| port)
    }

    /// Returns the ports of expired reservations to the pool.
    pub fn expire_reservations(&self, now: Instant) {
        let mut r = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_empty() {
            return;
        }
        let mut expired = Vec::new();
        r.retain(|_, (port, until)| {
            let keep = *until > now;
            if !keep {
                expired.push(*port);
            }
            keep
        });
        drop(r);
        for port in expired {
            self.put_port(port);
        }
    }

    pub fn take_port(&self, even: bool) -> Option<RelayPort> {
        let port = self.ports.lock().unwrap_or_else(|e| e.into_inner()).take(even);
        if let Some(p) = port {
            self.mark(p, true);
        }
        port.map(RelayPort)
    }

    pub fn put_port(&self, port: RelayPort) {
        let mut pool = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        self.mark(port.0, false);
        pool.put(port.0);
    }

    pub fn free_ports(&self) -> usize {
        self.ports.lock().unwrap_or_else(|e| e.into_inner()).available()
    }

    /// How many ports the pool holds, free or taken.
    pub fn port_count(&self) -> usize {
        self.port_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_hands_out_each_port_once_in_random_order() {
        let mut pool = PortPool::new(50000, 50099, 7);
        let mut got: Vec<u16> = (0..100).map(|_| pool.take(false).unwrap()).collect();
        assert_eq!(pool.take(false), None);
        assert_ne!(got[..10], (50000..50010).collect::<Vec<_>>()[..], "not sequential");
        got.sort_unstable();
        assert_eq!(got, (50000..50100).collect::<Vec<_>>());
        pool.put(50042);
        assert_eq!(pool.take(false), Some(50042));
    }

    #[test]
    fn pool_pairs_and_specific_ports() {
        let mut pool = PortPool::new(50000, 50009, 3);
        assert!(pool.take_specific(50004));
        assert!(!pool.take_specific(50004), "already taken");
        assert!(!pool.take_specific(40000), "never in the pool");
        let mut pairs = Vec::new();
        while let Some((a, b)) = pool.take_pair() {
            assert_eq!((a % 2, b), (0, a + 1));
            pairs.push(a);
        }
        pairs.sort_unstable();
        assert_eq!(pairs, vec![50000, 50002, 50006, 50008], "50004/50005 is broken up");
        assert_eq!(pool.available(), 1);
        pool.put(50004);
        pool.put(50004);
        assert_eq!(pool.available(), 2, "putting twice does not duplicate");
    }

    #[test]
    fn reservations_expire_back_into_the_pool() {
        let shared = Shared::new(PortPool::new(50000, 50001, 1), Quotas::new(0, 0));
        let t0 = Instant::now();
        let (a, b) = shared.take_pair().unwrap();
        assert_eq!((a.0, b.0), (50000, 50001));
        shared.reserve([1; 8], b, t0);
        shared.reserve([2; 8], RelayPort(49999), t0);
        assert_eq!(shared.redeem(&[1; 8], t0 + Duration::from_secs(29)), Some(b));
        assert_eq!(shared.redeem(&[1; 8], t0), None, "a token is used once");
        assert_eq!(shared.redeem(&[2; 8], t0 + RESERVATION_LIFETIME), None, "expired");
        assert_eq!(shared.redeem(&[2; 7], t0), None, "wrong size");
        assert_eq!(shared.free_ports(), 1, "the expired reservation's port is free again");
    }

    #[test]
    fn pool_finds_even_ports() {
        let mut pool = PortPool::new(50001, 50003, 1);
        assert_eq!(pool.take(true), Some(50002));
        assert_eq!(pool.take(true), None);
        assert_eq!(pool.available(), 2);
    }

    #[test]
    fn quotas_per_user_and_total() {
        let q = Quotas::new(2, 3);
        let (a, b) = (Username::new("a"), Username::new("b"));
        assert_eq!(q.acquire(&a), Ok(()));
        assert_eq!(q.acquire(&a), Ok(()));
        assert_eq!(q.acquire(&a), Err(QuotaError::User));
        assert_eq!(q.acquire(&b), Ok(()));
        assert_eq!(q.acquire(&b), Err(QuotaError::Total));
        q.release(&a);
        assert_eq!(q.acquire(&b), Ok(()));
        assert_eq!(q.total(), 3);
        let unlimited = Quotas::new(0, 0);
        for _ in 0..1000 {
            assert_eq!(unlimited.acquire(&a), Ok(()));
        }
    }
}
