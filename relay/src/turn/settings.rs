//! What a TURN core is configured with: its addresses, credentials, lifetimes, caps, the peer
//! filter and the relay's own addresses. Fixed per core until a reload replaces it
//! (`TurnServer::set_config`).

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use super::auth::{Credentials, NonceSource};
use super::limit::{Bandwidth, Rates};
use super::peer_filter::{PeerFilter, canonical};

/// Addresses that are the relay itself: a peer address with one of these IPs and one of these
/// ports would make the relay send to itself, which it never does.
#[derive(Debug, Clone, Default)]
pub struct OwnAddresses {
    /// The listening and relay IPs and every local interface address (loopback and unspecified
    /// addresses always count as own).
    pub ips: Vec<IpAddr>,
    /// The UDP listening port(s). Relay ports are not among them: relaying from one allocation
    /// to another on the same relay is what two clients that both need TURN do (ICE between two
    /// relayed candidates), and it cannot loop, since what reaches a relay port goes to that
    /// allocation's client.
    pub ports: Vec<RangeInclusive<u16>>,
}

impl OwnAddresses {
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.ports.iter().any(|r| r.contains(&addr.port())) && self.has_ip(addr.ip())
    }

    /// Whether `ip` is one of the relay's addresses.
    pub fn has_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_loopback() || ip.is_unspecified() || self.ips.iter().any(|own| canonical(*own) == ip)
    }
}

/// Everything the core needs to know, fixed at start.
#[derive(Debug)]
pub struct ServerConfig {
    /// SOFTWARE attribute in every response (RFC 8489 §14.14).
    pub software: String,
    /// The credentials at start; `TurnServer::set_credentials` replaces them at run time.
    pub credentials: Credentials,
    pub nonces: NonceSource,
    /// The address relay sockets are bound to (its family is the allocations' family).
    pub relay_ip: IpAddr,
    /// The address put in XOR-RELAYED-ADDRESS: the public address behind 1:1 NAT, else `relay_ip`.
    pub advertised_ip: IpAddr,
    /// A relay address of the other family, for dual-stack relays (RFC 6156).
    pub relay_ip_other: Option<RelayIp>,
    /// RFC 8656 §7.2: lifetime when the client asks for less or nothing (600 s).
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub max_permissions: usize,
    pub max_channels: usize,
    /// Accept channel numbers up to 0x7FFF (RFC 5766) and not only to 0x4FFF (RFC 8656).
    pub rfc5766_channel_numbers: bool,
    pub peer_filter: PeerFilter,
    pub own: OwnAddresses,
    /// The SFU's ICE candidates on the listening port, when the SFU runs: the one place the
    /// relay relays to itself, so that clients that only have TURN reach the SFU. They are
    /// allowed as peers despite the peer filter and the self-relay rule, but only exactly (port
    /// included; the permission this installs for their IP does not open its other ports to
    /// Send or ChannelBind), and datagrams reaching the
    /// listening port from the relay's own relay ports are the SFU's or dropped.
    pub sfu: Vec<SocketAddr>,
    /// Caps on answers to unauthenticated requests, per source IP and for the whole relay (the
    /// total is one budget in [`Shared`](super::Shared), whatever the number of cores).
    pub unauthenticated: Rates,
    /// Caps on relayed bandwidth, per allocation and for the whole relay (one budget in
    /// [`Shared`](super::Shared)).
    pub bandwidth: Bandwidth,
}

/// A relay address: what relay sockets bind to and what clients are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayIp {
    pub bind: IpAddr,
    pub advertised: IpAddr,
}

impl ServerConfig {
    /// The relay address of the family asked for, if the relay has one.
    pub fn relay_for(&self, v6: bool) -> Option<RelayIp> {
        let primary = RelayIp { bind: self.relay_ip, advertised: self.advertised_ip };
        [Some(primary), self.relay_ip_other].into_iter().flatten().find(|r| r.bind.is_ipv6() == v6)
    }

    /// Whether `ip` is the IP of one of the SFU's candidates.
    pub fn sfu_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.sfu.iter().any(|a| canonical(a.ip()) == ip)
    }

    /// Whether relaying to `peer` would be the relay sending to itself (or, for an SFU IP the
    /// peer filter refuses, to anything but the SFU).
    pub fn self_relay(&self, peer: SocketAddr) -> bool {
        if self.sfu.contains(&peer) {
            return false;
        }
        self.own.contains(peer) || (self.sfu_ip(peer.ip()) && self.peer_filter.check(peer.ip()).is_err())
    }
}
