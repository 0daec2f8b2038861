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

/// Burst allowance: one second's worth, but at least 10 answers, so a client that starts a few
/// ICE gatherings at once is never refused.
fn burst(rate: f32) -> f32 {
    rate.max(10.0)
}

pub struct SourceLimiter {
    rates: Rates,
    slots: Box<[Slot]>,
    total: Bucket,
    hasher: foldhash::quality::RandomState,
}

impl std::fmt::Debug for SourceLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLimiter").field("rates", &self.rates).finish_non_exhaustive()
    }
}

impl SourceLimiter {
    pub fn new(rates: Rates, now: Instant) -> Self {
        let empty = Slot { owner: 0, bucket: Bucket { tokens: burst(rates.per_source), last: now } };
        Self {
            rates,
            slots: vec![empty; SLOTS].into_boxed_slice(),
            total: Bucket { tokens: burst(rates.total), last: now },
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    /// New limits (config reload); buckets keep their levels.
    pub fn set_rates(&mut self, rates: Rates) {
        self.rates = rates;
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
        total <= 0.0 || self.total.take(now, total, burst(total))
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
/// per core in total.
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
            let burst = rate.max(15_000.0);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(Rates { per_source: 20.0, total: 0.0 }, t0);
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
        let mut l = SourceLimiter::new(Rates { per_source: 10.0, total: 0.0 }, t0);
        let allowed = (0..100u16)
            .filter(|i| l.allow(IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, *i)), t0))
            .count();
        assert_eq!(allowed, 10, "one /64 is one source");
        assert!(l.allow(ip("2001:db8:0:2::1"), t0), "another /64 is another source");
        // An IPv4-mapped address is the IPv4 source.
        let mut l = SourceLimiter::new(Rates { per_source: 10.0, total: 0.0 }, t0);
        let allowed = (0..20).filter(|i| l.allow(ip(if i % 2 == 0 { "::ffff:192.0.2.9" } else { "192.0.2.9" }), t0));
        assert_eq!(allowed.count(), 10);
    }

    #[test]
    fn the_total_caps_many_sources() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(Rates { per_source: 10.0, total: 100.0 }, t0);
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
    fn off_allows_everything() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(Rates::OFF, t0);
        assert!((0..100_000).all(|_| l.allow(ip("192.0.2.1"), t0)));
    }
}
