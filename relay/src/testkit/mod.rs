//! Test scaffolding shared by the relay's tests, benchmarks and fuzz targets, compiled only with
//! the `testkit` feature (the crate's own tests turn it on through a dev-dependency on itself;
//! `fuzz/` asks for it): a relay-socket set without sockets, a TURN core configuration with test
//! defaults, and the fuzz targets ([`fuzz`]).

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::turn::auth::{Credentials, NonceSource};
use crate::turn::limit::{Bandwidth, Rates};
use crate::turn::peer_filter::PeerFilter;
use crate::turn::{OwnAddresses, RelayPort, RelaySockets, ServerConfig};

pub mod fuzz;

/// Relay sockets without sockets: a port binds unless it is `busy` or already open; every
/// address opened is recorded.
#[derive(Debug, Default)]
pub struct FakeSockets {
    pub open: HashSet<u16>,
    /// Ports another program holds.
    pub busy: HashSet<u16>,
    /// Every address a relay socket was opened on, in order.
    pub opened: Vec<SocketAddr>,
}

impl RelaySockets for FakeSockets {
    fn probe(&mut self, _ip: IpAddr, port: RelayPort) -> io::Result<()> {
        if self.busy.contains(&port.0) || self.open.contains(&port.0) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        Ok(())
    }

    fn open(&mut self, ip: IpAddr, port: RelayPort) -> io::Result<()> {
        if self.busy.contains(&port.0) || !self.open.insert(port.0) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        self.opened.push(SocketAddr::new(ip, port.0));
        Ok(())
    }
}

/// A TURN core configuration for tests, on `relay_ip` (also advertised), listening on 3478:
/// static user `user`/`password` in realm `test`, REST secret `secret`, nonces of ten minutes
/// keyed with zeros from `now`, default lifetimes (600 s, at most 3600 s), 8 permissions and
/// channels, RFC 8656 channel numbers, the default peer filter, no SFU, no rate or bandwidth
/// limits. Tests change what they exercise with struct update syntax.
pub fn server_config(relay_ip: IpAddr, now: Instant) -> ServerConfig {
    ServerConfig {
        software: "test".into(),
        credentials: Credentials::new("test", &[("user".into(), "password".into())], vec![b"secret".to_vec()]),
        nonces: NonceSource::new([0; 32], now, Duration::from_secs(600)),
        relay_ip,
        advertised_ip: relay_ip,
        relay_ip_other: None,
        default_lifetime: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(3600),
        max_permissions: 8,
        max_channels: 8,
        rfc5766_channel_numbers: false,
        peer_filter: PeerFilter::new(vec![], vec![]),
        own: OwnAddresses { ips: vec![relay_ip], ports: vec![3478..=3478] },
        sfu: Vec::new(),
        unauthenticated: Rates::OFF,
        bandwidth: Bandwidth::default(),
    }
}
