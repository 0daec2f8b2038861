//! Newtypes that carry meaning through the TURN core: which side of the relay an address is on,
//! which relay port an allocation owns, which channel a client bound. Config parses straight into
//! them, and the core's signatures say what each address is.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// The client's transport address as the relay sees it (the client half of the 5-tuple; the
/// server half is the worker's listening socket, and the transport is UDP).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientAddr(pub SocketAddr);

/// A peer's transport address: where relayed data goes to or comes from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr(pub SocketAddr);

/// The port of an allocation's relayed transport address (one UDP socket per allocation).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayPort(pub u16);

/// A TURN channel number. RFC 8656 §12 narrows the range to 0x4000 through 0x4FFF (RFC 5766
/// allowed up to 0x7FFF); 0x5000-0x7FFF is reserved for other protocols sharing the port.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// RFC 8656 §12: the lowest channel number a client may bind.
    pub const MIN: u16 = 0x4000;
    /// RFC 8656 §12: the highest channel number a client may bind.
    pub const MAX: u16 = 0x4FFF;

    /// RFC 5766 §11's upper bound, which clients written before RFC 8656 still use (coturn's
    /// `turnutils_uclient` up to 4.15 picks random numbers up to 0x7FFF).
    pub const RFC5766_MAX: u16 = 0x7FFF;

    /// A channel number, if `n` is in the range a client may bind (RFC 8656).
    pub fn new(n: u16) -> Option<Self> {
        Self::new_in(n, false)
    }

    /// Like `new`, optionally accepting RFC 5766's wider range for older clients. Bytes
    /// 0x50-0x7F are unassigned in RFC 7983's demultiplexing table, so the wider range cannot be
    /// mistaken for DTLS or RTP on a shared port.
    pub fn new_in(n: u16, rfc5766: bool) -> Option<Self> {
        let max = if rfc5766 { Self::RFC5766_MAX } else { Self::MAX };
        (Self::MIN..=max).contains(&n).then_some(Self(n))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for ChannelNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

/// A username as sent in the USERNAME attribute. Cheap to clone: every request of an allocation
/// is compared against it, and the quota table keys on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(Arc<str>);

impl Username {
    pub fn new(s: &str) -> Self {
        Self(Arc::from(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for RelayPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_numbers_follow_rfc_8656_range() {
        assert!(ChannelNumber::new(0x3FFF).is_none());
        assert_eq!(ChannelNumber::new(0x4000).map(ChannelNumber::get), Some(0x4000));
        assert_eq!(ChannelNumber::new(0x4FFF).map(ChannelNumber::get), Some(0x4FFF));
        // Valid under RFC 5766, reserved under RFC 8656.
        assert!(ChannelNumber::new(0x5000).is_none());
        assert!(ChannelNumber::new(0x7FFF).is_none());
        assert_eq!(ChannelNumber::new_in(0x7FFF, true).map(ChannelNumber::get), Some(0x7FFF));
        assert!(ChannelNumber::new_in(0x8000, true).is_none());
        assert!(ChannelNumber::new_in(0x3FFF, true).is_none());
    }
}
