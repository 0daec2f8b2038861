//! The relay sockets of one worker: one UDP socket per allocation, registered with the worker's
//! mio poll and found by key (its token) or by relay port (the core's name for it).
//!
//! The core opens a socket during an Allocate through [`Sockets`], which this set lends it, and
//! asks for it to be closed with `Event::RelayClosed`; a port maps to at most one socket, and a
//! socket is registered exactly while it is in the set.

use std::io;
use std::net::{IpAddr, SocketAddr};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use slab::Slab;
use tracing::warn;

use super::udp;
use crate::turn::{RelayPort, RelaySockets};

/// An allocation's relay socket, owned by the worker whose core created the allocation.
pub(super) struct Relay {
    pub socket: UdpSocket,
    pub port: RelayPort,
    /// Which of the worker's cores owns the allocation (TCP/TLS workers run one per listener).
    pub owner: usize,
}

/// The relay sockets of one worker.
pub(super) struct RelaySet {
    relays: Slab<Relay>,
    /// Relay port → slab key + 1 (0: none).
    by_port: Vec<u32>,
    /// Buffer size of new sockets (0 = kernel default).
    buffer: usize,
    /// Token of slab entry 0; entry `k` is registered as `token_base + k`.
    token_base: usize,
}

impl RelaySet {
    pub fn new(buffer: usize, token_base: usize) -> Self {
        Self { relays: Slab::new(), by_port: vec![0; usize::from(u16::MAX) + 1], buffer, token_base }
    }

    /// The socket registered as `token_base + key`.
    pub fn get(&self, key: usize) -> Option<&Relay> {
        self.relays.get(key)
    }

    /// The socket of `port`.
    pub fn by_port(&self, port: RelayPort) -> Option<&Relay> {
        let key = self.by_port[usize::from(port.0)];
        key.checked_sub(1).and_then(|k| self.relays.get(k as usize))
    }

    /// Lends the set to core `owner` so that it can open sockets during an Allocate.
    pub fn lend<'a>(&'a mut self, registry: &'a Registry, owner: usize) -> Sockets<'a> {
        Sockets { registry, set: self, owner }
    }

    /// Closes the socket of `port` (the core removed its allocation): the inverse of
    /// `Sockets::open`.
    pub fn close(&mut self, registry: &Registry, port: RelayPort) {
        let key = std::mem::take(&mut self.by_port[usize::from(port.0)]);
        if let Some(k) = key.checked_sub(1) {
            let mut relay = self.relays.remove(k as usize);
            if let Err(e) = registry.deregister(&mut relay.socket) {
                warn!(error = %e, %port, "deregistering relay socket");
            }
        }
    }
}

/// The relay sockets of one worker, lent to one core so it can open one during an Allocate.
pub(super) struct Sockets<'a> {
    registry: &'a Registry,
    set: &'a mut RelaySet,
    owner: usize,
}

impl RelaySockets for Sockets<'_> {
    fn probe(&mut self, ip: IpAddr, port: RelayPort) -> io::Result<()> {
        // Bound and closed at once: the port is free now, and the pool keeps it ours.
        udp::bind_relay(SocketAddr::new(ip, port.0), 0, 0).map(drop)
    }

    fn open(&mut self, ip: IpAddr, port: RelayPort) -> io::Result<()> {
        let set = &mut *self.set;
        let std = udp::bind_relay(SocketAddr::new(ip, port.0), set.buffer, set.buffer)?;
        let mut socket = UdpSocket::from_std(std);
        let entry = set.relays.vacant_entry();
        self.registry.register(&mut socket, Token(set.token_base + entry.key()), Interest::READABLE)?;
        set.by_port[usize::from(port.0)] = entry.key() as u32 + 1;
        entry.insert(Relay { socket, port, owner: self.owner });
        Ok(())
    }
}
