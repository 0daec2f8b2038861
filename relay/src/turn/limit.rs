//! Rate limits on what the relay sends to sources it has not authenticated.
//!
//! A TURN server answers an unauthenticated Allocate with a 401 that is larger than the request
//! (REALM, NONCE, SOFTWARE, FINGERPRINT), and a Binding request with its own address: sent from a
//! spoofed source address, either turns the relay into a reflector. Nothing in the answer needs
//! state (the nonce is a MAC), so a flood cannot fill memory; this module caps the other half,
//! the answers, per source and in total.
//!
//! Per-source buckets live in a fixed table indexed by a keyed hash of the source (an IPv4
//! address, or an IPv6 /64, which is what one subscriber gets): memory is the same whether one
//! source or a million send. Two sources that land on the same slot take turns owning it: a slot
//! is reset for a new source only when its previous owner has been quiet for a while, so a
//! flooder cannot reset its own bucket by alternating addresses that share a slot with a victim's
//! (the victim then shares the flooder's budget, with probability 1/SLOTS).

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::peer_filter::canonical;

/// Slots in the per-source table: 8192 × 24 bytes = 192 KiB per core.
const SLOTS: usize = 8192;

/// A slot whose owner has sent nothing for this long may be taken by another source.
const SLOT_IDLE: Duration = Duration::from_secs(10);

/// A token bucket: `rate` tokens per second, at most `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f32,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant, rate: f32, burst: f32) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Hash of the owning source; 0 = never used.
    owner: u64,
    bucket: Bucket,
}

/// Answers per second, per source and in total; 0 turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub per_source: f32,
    pub total: f32,
}

impl Rates {
    pub const OFF: Self = Self { per_source: 0.0, total: 0.0 };
}

/// Burst allowance: one second's worth, but at least this many answers, so a client that
/// starts a few ICE gatherings at once is never refused.
const MIN_ANSWER_BURST: f32 = 10.0;

/// A bandwidth cap's burst is one second's worth, but at least this many bytes: ten full-size
/// datagrams, so a video key frame passes a small cap in one piece.
const MIN_BYTE_BURST: f64 = 15_000.0;

fn burst(rate: f32) -> f32 {
    rate.max(MIN_ANSWER_BURST)
}

pub struct SourceLimiter {
    rates: Rates,
    slots: Box<[Slot]>,
    /// The relay-wide budget of answers, shared by every core, and this core's lease of it.
    total: Arc<SharedBucket>,
    lease: Lease,
    hasher: foldhash::quality::RandomState,
}

impl std::fmt::Debug for SourceLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLimiter").field("rates", &self.rates).finish_non_exhaustive()
    }
}

impl SourceLimiter {
    /// `total` is the relay-wide budget every core draws from (see [`SharedBucket::answers`]);
    /// its rate is set to `rates.total` here and on every [`SourceLimiter::set_rates`].
    pub fn new(rates: Rates, total: Arc<SharedBucket>, now: Instant) -> Self {
        let empty = Slot { owner: 0, bucket: Bucket { tokens: burst(rates.per_source), last: now } };
        total.set_rate(f64::from(rates.total));
        Self {
            rates,
            slots: vec![empty; SLOTS].into_boxed_slice(),
            total,
            lease: Lease::default(),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    /// New limits (config reload); buckets keep their levels.
    pub fn set_rates(&mut self, rates: Rates) {
        self.rates = rates;
        self.total.set_rate(f64::from(rates.total));
    }

    /// Whether one more answer to `source` is allowed now; takes a token if so.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let Rates { per_source, total } = self.rates;
        if per_source > 0.0 {
            let key = self.key(source);
            let slot = &mut self.slots[(key % SLOTS as u64) as usize];
            if slot.owner != key && now.saturating_duration_since(slot.bucket.last) >= SLOT_IDLE {
                *slot = Slot { owner: key, bucket: Bucket { tokens: burst(per_source), last: now } };
            }
            if !slot.bucket.take(now, per_source, burst(per_source)) {
                return false;
            }
        }
        total <= 0.0 || self.lease.take(&self.total, 1.0, now)
    }

    /// The hash of an IPv4 address or of an IPv6 address's /64 (never 0).
    fn key(&self, ip: IpAddr) -> u64 {
        let mut h = self.hasher.build_hasher();
        match canonical(ip) {
            IpAddr::V4(v4) => h.write_u32(u32::from(v4)),
            IpAddr::V6(v6) => h.write_u64((u128::from(v6) >> 64) as u64),
        }
        h.finish() | 1
    }
}

/// Bandwidth caps in bits per second (0 = none): per allocation (both directions together) and
/// for the whole relay (every core's traffic, UDP, TCP and TLS, draws from one budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bandwidth {
    pub per_allocation_bps: u64,
    pub total_bps: u64,
}

/// A token bucket of bytes: `rate` bytes per second, holding at most one second's worth (at
/// least ten full-size datagrams, so a video key frame passes a small cap in one piece).
#[derive(Debug, Clone, Copy)]
pub struct ByteBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl ByteBucket {
    /// `None` for 0 (no cap).
    pub fn new(bits_per_second: u64, now: Instant) -> Option<Self> {
        (bits_per_second > 0).then(|| {
            let rate = bits_per_second as f64 / 8.0;
            let burst = rate.max(MIN_BYTE_BURST);
            Self { rate, burst, tokens: burst, last: now }
        })
    }

    /// Takes `bytes` if the bucket holds them.
    #[inline]
    pub fn take(&mut self, bytes: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let bytes = bytes as f64;
        if self.tokens >= bytes {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }
}

/// A token bucket shared by every core of the relay, so that a relay-wide limit holds however
/// many cores (UDP workers, TCP and TLS listeners) serve the traffic: the tokens all cores spend
/// together never exceed `burst + rate × elapsed`.
///
/// Cores do not take from it per packet: each keeps a [`Lease`] and draws a few milliseconds'
/// worth at a time, so the lock is taken a few hundred times a second at most, whatever the
/// packet rate. A lease's unspent tokens stay with its core (they count as spent here), so the
/// bound is exact; the price is that a core may be refused while another holds a lease, for at
/// most a lease's worth of traffic.
#[derive(Debug)]
pub struct SharedBucket {
    /// Tokens per second as f64 bits; 0 = no limit.
    rate: AtomicU64,
    /// The burst is one second's worth, but at least this.
    min_burst: f64,
    /// Largest lease drawn at once, in tokens.
    max_lease: f64,
    state: Mutex<SharedState>,
}

#[derive(Debug)]
struct SharedState {
    tokens: f64,
    last: Option<Instant>,
}

impl SharedBucket {
    /// The relay's budget of bytes (`limits.total_mbps`): a burst of one second's worth but at
    /// least ten full-size datagrams, as for an allocation's cap; leases of at most 64 KiB.
    pub fn bytes() -> Self {
        Self::new(MIN_BYTE_BURST, 65_536.0)
    }

    /// The relay's budget of answers to unauthenticated requests (`limits.unauthenticated_total`):
    /// a burst of one second's worth but at least ten; leases of at most 16 answers.
    pub fn answers() -> Self {
        Self::new(f64::from(MIN_ANSWER_BURST), 16.0)
    }

    fn new(min_burst: f64, max_lease: f64) -> Self {
        Self {
            rate: AtomicU64::new(0f64.to_bits()),
            min_burst,
            max_lease,
            state: Mutex::new(SharedState { tokens: 0.0, last: None }),
        }
    }

    /// Tokens per second (0 = no limit). Idempotent: every core sets it from the same config;
    /// the tokens in the bucket stay (at most the new burst).
    pub fn set_rate(&self, rate: f64) {
        self.rate.store(rate.max(0.0).to_bits(), Ordering::Relaxed);
    }

    #[inline]
    fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    fn burst(&self, rate: f64) -> f64 {
        rate.max(self.min_burst)
    }

    /// Hands out up to `want` tokens (fewer if the bucket has fewer).
    fn draw(&self, want: f64, now: Instant) -> f64 {
        let rate = self.rate();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let burst = self.burst(rate);
        s.tokens = match s.last {
            // The bucket starts full, like a per-core bucket did.
            None => burst,
            Some(last) => (s.tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(burst),
        };
        // Cores' clocks are read at different moments: never move `last` backwards.
        s.last = Some(s.last.map_or(now, |last| last.max(now)));
        let granted = want.min(s.tokens);
        s.tokens -= granted;
        granted
    }
}

/// One core's tokens drawn from a [`SharedBucket`].
#[derive(Debug, Default)]
pub struct Lease {
    tokens: f64,
}

impl Lease {
    /// Takes `amount` tokens, drawing from `bucket` when the lease runs short; true if the
    /// bucket has no limit.
    #[inline]
    pub fn take(&mut self, bucket: &SharedBucket, amount: f64, now: Instant) -> bool {
        if self.tokens >= amount {
            self.tokens -= amount;
            return true;
        }
        let rate = bucket.rate();
        if rate <= 0.0 {
            return true;
        }
        // A lease is 5 ms' worth (between one token and the bucket's largest lease), and at least
        // what this take is short of.
        let lease = (rate / 200.0).clamp(1.0, bucket.max_lease);
        self.tokens += bucket.draw(lease.max(amount - self.tokens), now);
        if self.tokens >= amount {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limiter(rates: Rates, t0: Instant) -> SourceLimiter {
        SourceLimiter::new(rates, Arc::new(SharedBucket::answers()), t0)
    }

    #[test]
    fn one_source_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut l = limiter(Rates { per_source: 20.0, total: 0.0 }, t0);
        let allowed = (0..1000).filter(|_| l.allow(ip("192.0.2.1"), t0)).count();
        assert_eq!(allowed, 20, "the burst is one second's worth");
        // Another source is not affected.
        assert!(l.allow(ip("192.0.2.2"), t0));
        // Half a second later, half a second's worth more.
        let t1 = t0 + Duration::from_millis(500);
        let allowed = (0..1000).filter(|_| l.allow(ip("192.0.2.1"), t1)).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn ipv6_sources_are_limited_per_64() {
        let t0 = Instant::now();
        let mut l = limiter(Rates { per_source: 10.0, total: 0.0 }, t0);
        let allowed = (0..100u16)
            .filter(|i| l.allow(IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, *i)), t0))
            .count();
        assert_eq!(allowed, 10, "one /64 is one source");
        assert!(l.allow(ip("2001:db8:0:2::1"), t0), "another /64 is another source");
        // An IPv4-mapped address is the IPv4 source.
        let mut l = limiter(Rates { per_source: 10.0, total: 0.0 }, t0);
        let allowed = (0..20).filter(|i| l.allow(ip(if i % 2 == 0 { "::ffff:192.0.2.9" } else { "192.0.2.9" }), t0));
        assert_eq!(allowed.count(), 10);
    }

    #[test]
    fn the_total_caps_many_sources() {
        let t0 = Instant::now();
        let mut l = limiter(Rates { per_source: 10.0, total: 100.0 }, t0);
        let allowed = (0..10_000u32).filter(|i| l.allow(IpAddr::V4((0x0A00_0000 + i).into()), t0)).count();
        assert_eq!(allowed, 100);
    }

    #[test]
    fn byte_bucket_passes_its_burst_then_its_rate() {
        let t0 = Instant::now();
        assert!(ByteBucket::new(0, t0).is_none(), "0 is no cap");
        // 800 kbit/s = 100,000 bytes/s, burst one second's worth.
        let mut b = ByteBucket::new(800_000, t0).unwrap();
        let passed = (0..200).filter(|_| b.take(1000, t0)).count();
        assert_eq!(passed, 100);
        let passed = (0..200).filter(|_| b.take(1000, t0 + Duration::from_millis(100))).count();
        assert_eq!(passed, 10);
        // A small cap still lets ten full-size datagrams through at once.
        let mut small = ByteBucket::new(8_000, t0).unwrap();
        assert_eq!((0..20).filter(|_| small.take(1500, t0)).count(), 10);
    }

    #[test]
    fn cores_share_one_total_of_answers() {
        // Four cores (UDP workers, TCP and TLS listeners) with one relay-wide budget of 100 a
        // second: together they answer the burst, then 100 a second, not four times that.
        let t0 = Instant::now();
        let total = Arc::new(SharedBucket::answers());
        let rates = Rates { per_source: 0.0, total: 100.0 };
        let mut cores: Vec<SourceLimiter> = (0..4).map(|_| SourceLimiter::new(rates, Arc::clone(&total), t0)).collect();
        let mut answered = 0;
        for ms in (0..=2000).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            for (i, core) in cores.iter_mut().enumerate() {
                answered += (0..50u32).filter(|j| core.allow(IpAddr::V4((i as u32 * 1000 + j).into()), now)).count();
            }
        }
        assert!((290..=300).contains(&answered), "burst 100 + 2 s × 100/s, got {answered}");
        // A reload that lifts the limit applies to every core.
        for core in &mut cores {
            core.set_rates(Rates::OFF);
        }
        assert!((0..1000).all(|_| cores[0].allow(ip("192.0.2.1"), t0 + Duration::from_secs(3))));
    }

    #[test]
    fn cores_share_one_bandwidth_budget() {
        // 8 Mbit/s for the relay: three cores each offering 1 MB/s pass 1 MB/s together, plus the
        // burst (one second's worth).
        let t0 = Instant::now();
        let bucket = SharedBucket::bytes();
        bucket.set_rate(1_000_000.0);
        let mut leases = [Lease::default(), Lease::default(), Lease::default()];
        let mut passed = 0usize;
        for ms in 0..3000 {
            let now = t0 + Duration::from_millis(ms);
            for lease in &mut leases {
                if lease.take(&bucket, 1000.0, now) {
                    passed += 1000;
                }
            }
        }
        assert!(passed <= 1_000_000 + 3 * 1_000_000, "{passed}");
        assert!(passed >= 1_000_000 + 3 * 1_000_000 - 3 * 65_536 - 3000, "{passed}");
        // No limit: nothing is drawn and everything passes.
        let off = SharedBucket::bytes();
        let mut lease = Lease::default();
        assert!((0..10_000).all(|_| lease.take(&off, 1500.0, t0)));
    }

    #[test]
    fn off_allows_everything() {
        let t0 = Instant::now();
        let mut l = limiter(Rates::OFF, t0);
        assert!((0..100_000).all(|_| l.allow(ip("192.0.2.1"), t0)));
    }
}
