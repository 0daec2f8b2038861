//! One allocation's state (RFC 8656 §2.2): its relayed port, the credentials that created it,
//! its permissions (by peer IP, RFC 8656 §9) and channels (RFC 8656 §12).
//!
//! Permissions and channels live in small vectors scanned linearly: a WebRTC allocation has one
//! or two peers, where a scan of a few entries beats hashing. Their number is capped by the
//! config, so a client cannot make the scan long. Expired entries are ignored by the lookups and
//! removed by `sweep`, which the server runs periodically and on every control request.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::auth::{CredentialKind, Key};
use super::types::{ClientAddr, RelayPort, Username};

/// RFC 8656 §9: a permission lasts 300 seconds unless refreshed.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 §12: a channel binding lasts 10 minutes unless refreshed.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
struct Permission {
    ip: IpAddr,
    expires: Instant,
}

#[derive(Debug, Clone)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

/// Why a channel could not be bound (RFC 8656 §12.2: both are 400 Bad Request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindConflict {
    NumberBoundToOtherPeer,
    PeerBoundToOtherNumber,
    /// The per-allocation cap on channels is reached (508).
    TooMany,
}

#[derive(Debug)]
pub struct Allocation {
    pub client: ClientAddr,
    /// The address the relay socket binds to; its family is the allocation's (RFC 6156).
    pub relay_ip: IpAddr,
    pub port: RelayPort,
    pub username: Username,
    pub key: Key,
    pub credential: CredentialKind,
    pub expires: Instant,
    /// Whether the relay socket is open (it is opened at the first permission or channel).
    pub bound: bool,
    /// The Allocate transaction and its success response, so a retransmitted Allocate gets the same
    /// answer instead of 437 (RFC 8656 §7.2).
    pub allocate_transaction: [u8; 12],
    pub allocate_response: Vec<u8>,
    pub span: tracing::Span,
    /// The per-allocation bandwidth cap, when one is configured.
    pub bandwidth: Option<super::limit::ByteBucket>,
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
}

impl Allocation {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: ClientAddr,
        relay_ip: IpAddr,
        port: RelayPort,
        username: Username,
        key: Key,
        credential: CredentialKind,
        expires: Instant,
        allocate_transaction: [u8; 12],
        span: tracing::Span,
    ) -> Self {
        Self {
            client,
            relay_ip,
            port,
            username,
            key,
            credential,
            expires,
            bound: false,
            allocate_transaction,
            allocate_response: Vec::new(),
            span,
            bandwidth: None,
            permissions: Vec::new(),
            channels: Vec::new(),
        }
    }

    /// True if a permission for `ip` is installed and unexpired.
    #[inline]
    pub fn permits(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.iter().any(|p| p.ip == ip && p.expires > now)
    }

    /// Number of permissions that are installed and unexpired.
    pub fn permission_count(&self, now: Instant) -> usize {
        self.permissions.iter().filter(|p| p.expires > now).count()
    }

    /// How many of `ips` would need a new permission entry (not already installed).
    pub fn new_permissions_needed(&self, ips: &[IpAddr], now: Instant) -> usize {
        let mut seen: Vec<IpAddr> = Vec::with_capacity(ips.len());
        for ip in ips {
            if !self.permits(*ip, now) && !seen.contains(ip) {
                seen.push(*ip);
            }
        }
        seen.len()
    }

    /// Installs or refreshes the permission for `ip`.
    pub fn permit(&mut self, ip: IpAddr, now: Instant) {
        let expires = now + PERMISSION_LIFETIME;
        match self.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(p) => p.expires = expires,
            None => self.permissions.push(Permission { ip, expires }),
        }
    }

    /// The peer a bound, unexpired channel number leads to.
    #[inline]
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels.iter().find(|c| c.number == number && c.expires > now).map(|c| c.peer)
    }

    /// The channel number bound to `peer`, if any.
    #[inline]
    pub fn channel_for(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels.iter().find(|c| c.peer == peer && c.expires > now).map(|c| c.number)
    }

    /// Binds or refreshes channel `number` to `peer` (RFC 8656 §12.2), within a cap of `max`.
    pub fn bind_channel(
        &mut self,
        number: u16,
        peer: SocketAddr,
        now: Instant,
        max: usize,
    ) -> Result<(), BindConflict> {
        let live = |c: &&mut Channel| c.expires > now;
        if let Some(c) = self.channels.iter_mut().filter(live).find(|c| c.number == number || c.peer == peer) {
            if c.number != number {
                return Err(BindConflict::PeerBoundToOtherNumber);
            }
            if c.peer != peer {
                return Err(BindConflict::NumberBoundToOtherPeer);
            }
            c.expires = now + CHANNEL_LIFETIME;
            return Ok(());
        }
        // An expired entry for this number or peer is replaced, not kept beside the new one.
        self.channels.retain(|c| c.expires > now);
        if self.channels.len() >= max {
            return Err(BindConflict::TooMany);
        }
        self.channels.push(Channel { number, peer, expires: now + CHANNEL_LIFETIME });
        Ok(())
    }

    /// Forgets expired permissions and channels.
    pub fn sweep(&mut self, now: Instant) {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires > now);
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(now: Instant) -> Allocation {
        Allocation::new(
            ClientAddr("192.0.2.1:1000".parse().unwrap()),
            "192.0.2.10".parse().unwrap(),
            RelayPort(50000),
            Username::new("u"),
            [0; 16],
            CredentialKind::Static,
            now + Duration::from_secs(600),
            [0; 12],
            tracing::Span::none(),
        )
    }

    #[test]
    fn permissions_expire_after_300s_and_refresh() {
        let t0 = Instant::now();
        let mut a = alloc(t0);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        assert!(!a.permits(ip, t0));
        a.permit(ip, t0);
        assert!(a.permits(ip, t0 + Duration::from_secs(299)));
        assert!(!a.permits(ip, t0 + Duration::from_secs(300)));
        a.permit(ip, t0 + Duration::from_secs(200));
        assert!(a.permits(ip, t0 + Duration::from_secs(499)));
        assert_eq!(a.permission_count(t0 + Duration::from_secs(499)), 1);
        a.sweep(t0 + Duration::from_secs(500));
        assert_eq!(a.permission_count(t0), 0);
    }

    #[test]
    fn channel_rebinding_rules() {
        let t0 = Instant::now();
        let mut a = alloc(t0);
        let p1: SocketAddr = "198.51.100.7:1".parse().unwrap();
        let p2: SocketAddr = "198.51.100.7:2".parse().unwrap();
        assert_eq!(a.bind_channel(0x4000, p1, t0, 8), Ok(()));
        assert_eq!(a.bind_channel(0x4000, p1, t0 + Duration::from_secs(1), 8), Ok(()), "refresh");
        assert_eq!(a.bind_channel(0x4000, p2, t0, 8), Err(BindConflict::NumberBoundToOtherPeer));
        assert_eq!(a.bind_channel(0x4001, p1, t0, 8), Err(BindConflict::PeerBoundToOtherNumber));
        assert_eq!(a.bind_channel(0x4001, p2, t0, 8), Ok(()));
        assert_eq!(a.channel_peer(0x4001, t0), Some(p2));
        assert_eq!(a.channel_for(p1, t0), Some(0x4000));
        // Expiry: 600 s after the last refresh (t0 + 1 s).
        assert_eq!(a.channel_peer(0x4000, t0 + Duration::from_secs(600)), Some(p1));
        assert_eq!(a.channel_peer(0x4000, t0 + Duration::from_secs(601)), None);
        // Once expired, the number may be bound to another peer.
        let later = t0 + Duration::from_secs(700);
        assert_eq!(a.bind_channel(0x4000, p2, later, 8), Ok(()));
        assert_eq!(a.channel_count(), 1);
    }

    #[test]
    fn channel_cap() {
        let t0 = Instant::now();
        let mut a = alloc(t0);
        for i in 0..4u16 {
            let peer = SocketAddr::from(([198, 51, 100, 1], 1000 + i));
            assert_eq!(a.bind_channel(0x4000 + i, peer, t0, 4), Ok(()));
        }
        let peer = SocketAddr::from(([198, 51, 100, 1], 2000));
        assert_eq!(a.bind_channel(0x4100, peer, t0, 4), Err(BindConflict::TooMany));
    }
}
