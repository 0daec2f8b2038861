//! Byte-level framing on the relay's hot paths, written by hand because it runs per packet:
//! telling STUN from ChannelData (RFC 7983 first-byte demultiplexing), the 4-byte ChannelData
//! header (RFC 8656 §12.4), Send indications parsed without allocating, and Data indications and
//! ChannelData headers written in place in front of a payload that is already in its buffer.
//!
//! Control messages (Allocate, Refresh, ...) are decoded and built with the `stun`/`turn` crates
//! in `server.rs`; this module only validates their outer structure ([`StunFrame::parse`]), which
//! is also what makes the crate's decoder safe to feed: it only ever sees well-formed TLV lists.
//!
//! Nothing here panics on any input; every function returns `None` or an error for malformed
//! bytes (checked by the property tests in `tests/prop.rs`).

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

/// RFC 8489 §5: the fixed value in bytes 4..8 of every STUN message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// RFC 8489 §5: a STUN header is 20 bytes.
pub const STUN_HEADER: usize = 20;
/// RFC 8656 §12.4: a ChannelData header is 4 bytes (channel number, length).
pub const CHANNEL_DATA_HEADER: usize = 4;

/// RFC 8656 §18: attribute types used on the hot paths.
pub const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
pub const ATTR_DATA: u16 = 0x0013;
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ATTR_MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
pub const ATTR_FINGERPRINT: u16 = 0x8028;

/// STUN message types (RFC 8489 §5 encoding of method and class) for the indications.
pub const SEND_INDICATION: u16 = 0x0016;
pub const DATA_INDICATION: u16 = 0x0017;

/// Room the core needs in front of a peer's payload to write a Data indication for an IPv6 peer:
/// header (20) + XOR-PEER-ADDRESS (4 + 20) + DATA attribute header (4). ChannelData needs 4.
pub const PEER_HEADROOM: usize = STUN_HEADER + 4 + 20 + 4;
/// Room the core needs after a peer's payload: a Data indication's DATA attribute is padded to a
/// multiple of 4 (RFC 8489 §14). ChannelData over UDP needs no padding (RFC 8656 §12.5).
pub const PEER_TAILROOM: usize = 3;

/// RFC 8489 §14.7: FINGERPRINT is CRC-32 of the message XOR'ed with this.
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// What the first bytes of a datagram on the client port say it is (RFC 7983 §7: 0-3 STUN,
/// 64-79 TURN ChannelData; DTLS and RTP ranges are left for the SFU). 80-127 is unassigned
/// there and is RFC 5766's upper channel range, so it is read as ChannelData too; whether such a
/// channel can be bound is the server's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    ChannelData,
    Other,
}

pub fn classify(packet: &[u8]) -> Kind {
    match packet.first() {
        Some(0..=3) => Kind::Stun,
        Some(0x40..=0x7F) => Kind::ChannelData,
        _ => Kind::Other,
    }
}

/// Parses a ChannelData header: returns the channel number and the range of the application data.
/// RFC 8656 §12.5: over UDP the datagram may carry padding after the data, which is ignored; a
/// length larger than what arrived makes the message malformed.
pub fn parse_channel_data(packet: &[u8]) -> Option<(u16, Range<usize>)> {
    let header = packet.get(..CHANNEL_DATA_HEADER)?;
    let number = u16::from_be_bytes([header[0], header[1]]);
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let end = CHANNEL_DATA_HEADER + len;
    (end <= packet.len()).then_some((number, CHANNEL_DATA_HEADER..end))
}

/// Writes a ChannelData header in the 4 bytes before `payload` and returns the range of the whole
/// message, or `None` if there is no room (the caller keeps `PEER_HEADROOM` free) or the payload
/// is too long for the 16-bit length.
pub fn write_channel_data(buf: &mut [u8], payload: Range<usize>, channel: u16) -> Option<Range<usize>> {
    let start = payload.start.checked_sub(CHANNEL_DATA_HEADER)?;
    let len = u16::try_from(payload.len()).ok()?;
    if payload.end > buf.len() {
        return None;
    }
    buf[start..start + 2].copy_from_slice(&channel.to_be_bytes());
    buf[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    Some(start..payload.end)
}

/// Writes a Data indication (RFC 8656 §11.6) around `payload` in place: header, XOR-PEER-ADDRESS and
/// the DATA attribute header go in front of it, zero padding after it. Returns the range of the
/// whole message, or `None` if the buffer lacks head- or tailroom or the message would be too long.
pub fn write_data_indication(
    buf: &mut [u8],
    payload: Range<usize>,
    peer: SocketAddr,
    transaction_id: [u8; 12],
) -> Option<Range<usize>> {
    let addr_len = match peer {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    };
    let padded = payload.len().next_multiple_of(4);
    let front = STUN_HEADER + 4 + addr_len + 4;
    let start = payload.start.checked_sub(front)?;
    let end = payload.start + padded;
    if end > buf.len() {
        return None;
    }
    let body_len = u16::try_from(end - start - STUN_HEADER).ok()?;
    let data_len = u16::try_from(payload.len()).ok()?;
    buf[payload.end..end].fill(0);
    let msg = &mut buf[start..payload.start];
    write_header(msg, DATA_INDICATION, body_len, &transaction_id);
    let attr = &mut msg[STUN_HEADER..];
    attr[0..2].copy_from_slice(&ATTR_XOR_PEER_ADDRESS.to_be_bytes());
    attr[2..4].copy_from_slice(&(addr_len as u16).to_be_bytes());
    write_xor_address(&mut attr[4..4 + addr_len], peer, &transaction_id);
    let data = &mut attr[4 + addr_len..];
    data[0..2].copy_from_slice(&ATTR_DATA.to_be_bytes());
    data[2..4].copy_from_slice(&data_len.to_be_bytes());
    Some(start..end)
}

fn write_header(msg: &mut [u8], typ: u16, body_len: u16, transaction_id: &[u8; 12]) {
    msg[0..2].copy_from_slice(&typ.to_be_bytes());
    msg[2..4].copy_from_slice(&body_len.to_be_bytes());
    msg[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    msg[8..20].copy_from_slice(transaction_id);
}

/// RFC 8489 §14.2: the XOR'ed address value (family, port, address); `out` is 8 or 20 bytes.
fn write_xor_address(out: &mut [u8], addr: SocketAddr, transaction_id: &[u8; 12]) {
    out[0] = 0;
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out[2..4].copy_from_slice(&port.to_be_bytes());
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = 0x01;
            for (i, b) in ip.octets().iter().enumerate() {
                out[4 + i] = b ^ cookie[i];
            }
        }
        IpAddr::V6(ip) => {
            out[1] = 0x02;
            let octets = ip.octets();
            for i in 0..16 {
                let key = if i < 4 { cookie[i] } else { transaction_id[i - 4] };
                out[4 + i] = octets[i] ^ key;
            }
        }
    }
}

/// Decodes an XOR'ed address value (XOR-PEER-ADDRESS and friends, RFC 8489 §14.2).
pub fn read_xor_address(value: &[u8], transaction_id: &[u8]) -> Option<SocketAddr> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    match (value.get(1)?, value.len()) {
        (0x01, 8) => {
            let mut ip = [0u8; 4];
            for i in 0..4 {
                ip[i] = value[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::from((ip, port)))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            for i in 0..16 {
                let key = if i < 4 { cookie[i] } else { *transaction_id.get(i - 4)? };
                ip[i] = value[4 + i] ^ key;
            }
            Some(SocketAddr::from((ip, port)))
        }
        _ => None,
    }
}

/// Why a datagram that starts like STUN is not a message we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than a header, wrong magic cookie, length not a multiple of 4 or not matching the
    /// datagram, or an attribute running past the end.
    Malformed,
    /// A FINGERPRINT that is not the last attribute or does not match (RFC 8489 §7.3: such a
    /// datagram is not a STUN message and is discarded).
    BadFingerprint,
}

/// The outer structure of a STUN message, validated: header fields and where MESSAGE-INTEGRITY is.
/// Built without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunFrame {
    pub typ: u16,
    pub transaction_id: [u8; 12],
    /// Offset of the MESSAGE-INTEGRITY attribute (its type field), if present.
    pub integrity_at: Option<usize>,
    /// Length of the message as it should be seen: up to and including MESSAGE-INTEGRITY when
    /// present (RFC 8489 §14.5: attributes after it, other than FINGERPRINT, are ignored, which
    /// also defeats on-path attribute appending), else the whole message without FINGERPRINT.
    pub effective_len: usize,
}

impl StunFrame {
    /// Validates a datagram as one STUN message (RFC 8489 §6.3: top two bits zero, magic cookie,
    /// length a multiple of 4 and equal to the datagram's body over UDP) and checks FINGERPRINT if
    /// present.
    pub fn parse(packet: &[u8]) -> Result<Self, FrameError> {
        if packet.len() < STUN_HEADER || packet[0] & 0xC0 != 0 {
            return Err(FrameError::Malformed);
        }
        let typ = u16::from_be_bytes([packet[0], packet[1]]);
        let body_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        let cookie = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        if cookie != MAGIC_COOKIE || body_len % 4 != 0 || STUN_HEADER + body_len != packet.len() {
            return Err(FrameError::Malformed);
        }
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&packet[8..20]);
        let mut integrity_at = None;
        let mut effective_len = None;
        for attr in Attributes::new(packet) {
            let attr = attr.ok_or(FrameError::Malformed)?;
            match attr.typ {
                ATTR_FINGERPRINT => {
                    if attr.end_padded != packet.len() || attr.value.len() != 4 {
                        return Err(FrameError::BadFingerprint);
                    }
                    let want = u32::from_be_bytes([attr.value[0], attr.value[1], attr.value[2], attr.value[3]]);
                    if fingerprint(packet, attr.start) != want {
                        return Err(FrameError::BadFingerprint);
                    }
                    effective_len.get_or_insert(attr.start);
                }
                ATTR_MESSAGE_INTEGRITY if integrity_at.is_none() => {
                    if attr.value.len() != 20 {
                        return Err(FrameError::Malformed);
                    }
                    integrity_at = Some(attr.start);
                    effective_len = Some(attr.end_padded);
                }
                _ => {}
            }
        }
        Ok(Self { typ, transaction_id, integrity_at, effective_len: effective_len.unwrap_or(packet.len()) })
    }

    /// RFC 8489 §5: the method bits of the message type.
    pub fn method(&self) -> u16 {
        (self.typ & 0x000F) | ((self.typ & 0x00E0) >> 1) | ((self.typ & 0x3E00) >> 2)
    }

    /// RFC 8489 §5: the class bits (0 request, 1 indication, 2 success, 3 error).
    pub fn class(&self) -> u8 {
        (((self.typ & 0x0010) >> 4) | ((self.typ & 0x0100) >> 7)) as u8
    }
}

/// RFC 8489 §14.7: CRC-32 of the message up to the FINGERPRINT attribute, with the header's length
/// field covering the FINGERPRINT attribute, XOR'ed with 0x5354554e.
fn fingerprint(packet: &[u8], fingerprint_at: usize) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&packet[..fingerprint_at]);
    crc.finalize() ^ FINGERPRINT_XOR
}

/// One attribute: type, value and where it sits in the message.
#[derive(Debug, Clone, Copy)]
pub struct Attribute<'a> {
    pub typ: u16,
    pub value: &'a [u8],
    /// Offset of the attribute's type field.
    pub start: usize,
    /// Offset just past the value and its padding.
    pub end_padded: usize,
}

/// Iterates over the attributes of a message whose header has been checked; yields `None` once
/// (and then stops) if an attribute runs past the end.
pub struct Attributes<'a> {
    packet: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Attributes<'a> {
    pub fn new(packet: &'a [u8]) -> Self {
        Self { packet, at: STUN_HEADER, failed: false }
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Option<Attribute<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.packet.len() {
            return None;
        }
        let start = self.at;
        let parsed = (|| {
            let header = self.packet.get(start..start + 4)?;
            let typ = u16::from_be_bytes([header[0], header[1]]);
            let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
            let value = self.packet.get(start + 4..start + 4 + len)?;
            let end_padded = start + 4 + len.next_multiple_of(4);
            (end_padded <= self.packet.len()).then_some(Attribute { typ, value, start, end_padded })
        })();
        match parsed {
            Some(attr) => {
                self.at = attr.end_padded;
                Some(Some(attr))
            }
            None => {
                self.failed = true;
                Some(None)
            }
        }
    }
}

/// A Send indication's destination and data (RFC 8656 §11.4), as a range into the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendIndication {
    pub peer: SocketAddr,
    pub data: Range<usize>,
}

/// Why a Send indication is discarded (RFC 8656 §11.4: indications get no error response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    Malformed,
    MissingPeerAddress,
    MissingData,
    /// A comprehension-required attribute we do not understand (RFC 8489 §7.3.2: an indication
    /// carrying one is discarded), e.g. DONT-FRAGMENT, which we do not support.
    UnknownRequiredAttribute,
}

/// Parses a Send indication without allocating. `packet` must already be framed (see
/// [`StunFrame::parse`]); attributes after the first XOR-PEER-ADDRESS and DATA of each kind are
/// ignored, as RFC 8489 §14 says for duplicates.
pub fn parse_send_indication(packet: &[u8], transaction_id: &[u8; 12]) -> Result<SendIndication, SendError> {
    let mut peer = None;
    let mut data = None;
    for attr in Attributes::new(packet) {
        let attr = attr.ok_or(SendError::Malformed)?;
        match attr.typ {
            ATTR_XOR_PEER_ADDRESS if peer.is_none() => {
                peer = Some(read_xor_address(attr.value, transaction_id).ok_or(SendError::Malformed)?);
            }
            ATTR_DATA if data.is_none() => {
                let start = attr.start + 4;
                data = Some(start..start + attr.value.len());
            }
            ATTR_XOR_PEER_ADDRESS | ATTR_DATA | ATTR_FINGERPRINT => {}
            typ if typ < 0x8000 => return Err(SendError::UnknownRequiredAttribute),
            _ => {}
        }
    }
    Ok(SendIndication { peer: peer.ok_or(SendError::MissingPeerAddress)?, data: data.ok_or(SendError::MissingData)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::message::{Getter, Message, Setter};

    fn tid() -> [u8; 12] {
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    }

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&[0x00, 0x01]), Kind::Stun);
        assert_eq!(classify(&[0x40, 0x00]), Kind::ChannelData);
        assert_eq!(classify(&[0x4F, 0xFF]), Kind::ChannelData);
        assert_eq!(classify(&[0x7F]), Kind::ChannelData);
        assert_eq!(classify(&[0x80]), Kind::Other);
        assert_eq!(classify(&[0x16]), Kind::Other); // DTLS
        assert_eq!(classify(&[0x80]), Kind::Other); // RTP
        assert_eq!(classify(&[]), Kind::Other);
    }

    #[test]
    fn channel_data_round_trip_and_bounds() {
        let mut buf = [0u8; 64];
        buf[10..15].copy_from_slice(b"hello");
        let range = write_channel_data(&mut buf, 10..15, 0x4001).unwrap();
        assert_eq!(range, 6..15);
        let (num, data) = parse_channel_data(&buf[range.clone()]).unwrap();
        assert_eq!(num, 0x4001);
        assert_eq!(&buf[range][data], b"hello");
        // Declared length longer than the datagram.
        assert_eq!(parse_channel_data(&[0x40, 0x00, 0x00, 0x05, 1, 2]), None);
        assert_eq!(parse_channel_data(&[0x40, 0x00, 0x00]), None);
        // Padding after the data is allowed.
        assert_eq!(parse_channel_data(&[0x40, 0x00, 0x00, 0x01, 9, 0, 0, 0]), Some((0x4000, 4..5)));
        // No room in front.
        assert_eq!(write_channel_data(&mut buf, 2..5, 0x4000), None);
    }

    #[test]
    fn data_indication_decodes_with_the_stun_crate() {
        for peer in ["203.0.113.9:4000".parse().unwrap(), "[2001:db8::7]:5000".parse().unwrap()] {
            let mut buf = [0u8; 128];
            let payload = PEER_HEADROOM..PEER_HEADROOM + 5;
            buf[payload.clone()].copy_from_slice(b"abcde");
            let range = write_data_indication(&mut buf, payload, peer, tid()).unwrap();
            assert_eq!(range.len() % 4, 0);
            let frame = StunFrame::parse(&buf[range.clone()]).unwrap();
            assert_eq!(frame.typ, DATA_INDICATION);
            let mut m = Message::new();
            m.unmarshal_binary(&buf[range]).unwrap();
            let mut addr = turn::proto::peeraddr::PeerAddress::default();
            addr.get_from(&m).unwrap();
            assert_eq!(SocketAddr::new(addr.ip, addr.port), peer);
            let mut data = turn::proto::data::Data::default();
            data.get_from(&m).unwrap();
            assert_eq!(data.0, b"abcde");
        }
    }

    #[test]
    fn send_indication_parses_what_the_stun_crate_builds() {
        let mut m = Message::new();
        m.typ = stun::message::MessageType::new(stun::message::METHOD_SEND, stun::message::CLASS_INDICATION);
        m.transaction_id = stun::agent::TransactionId(tid());
        m.write_header();
        let peer = turn::proto::peeraddr::PeerAddress { ip: "2001:db8::1".parse().unwrap(), port: 9 };
        peer.add_to(&mut m).unwrap();
        turn::proto::data::Data(b"xyz".to_vec()).add_to(&mut m).unwrap();
        stun::fingerprint::FINGERPRINT.add_to(&mut m).unwrap();
        let frame = StunFrame::parse(&m.raw).unwrap();
        assert_eq!((frame.method(), frame.class()), (0x006, 1));
        let send = parse_send_indication(&m.raw, &frame.transaction_id).unwrap();
        assert_eq!(send.peer, "[2001:db8::1]:9".parse().unwrap());
        assert_eq!(&m.raw[send.data], b"xyz");
    }

    #[test]
    fn frame_rejects_bad_structure_and_fingerprint() {
        let mut m = Message::new();
        m.typ = stun::message::BINDING_REQUEST;
        m.transaction_id = stun::agent::TransactionId(tid());
        m.write_header();
        stun::fingerprint::FINGERPRINT.add_to(&mut m).unwrap();
        assert!(StunFrame::parse(&m.raw).is_ok());
        let mut bad = m.raw.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(StunFrame::parse(&bad), Err(FrameError::BadFingerprint));
        let mut trailing = m.raw.clone();
        trailing.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(StunFrame::parse(&trailing), Err(FrameError::Malformed));
        let mut cookie = m.raw.clone();
        cookie[4] = 0;
        assert_eq!(StunFrame::parse(&cookie), Err(FrameError::Malformed));
        // An attribute whose length runs past the message.
        let mut overrun = vec![0u8, 1, 0, 8];
        overrun.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        overrun.extend_from_slice(&tid());
        overrun.extend_from_slice(&[0x80, 0x22, 0x00, 0x40, 0, 0, 0, 0]);
        assert_eq!(StunFrame::parse(&overrun), Err(FrameError::Malformed));
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        let mut m = Message::new();
        m.typ = stun::message::MessageType::new(stun::message::METHOD_REFRESH, stun::message::CLASS_REQUEST);
        m.transaction_id = stun::agent::TransactionId(tid());
        m.write_header();
        stun::integrity::MessageIntegrity(vec![7; 16]).add_to(&mut m).unwrap();
        let mi_end = m.raw.len();
        turn::proto::lifetime::Lifetime(std::time::Duration::ZERO).add_to(&mut m).unwrap();
        let frame = StunFrame::parse(&m.raw).unwrap();
        assert_eq!(frame.integrity_at, Some(mi_end - 24));
        assert_eq!(frame.effective_len, mi_end);
    }

    #[test]
    fn method_and_class_bits() {
        let f = |typ| StunFrame { typ, transaction_id: [0; 12], integrity_at: None, effective_len: 20 };
        assert_eq!((f(0x0001).method(), f(0x0001).class()), (1, 0));
        assert_eq!((f(0x0103).method(), f(0x0103).class()), (3, 2));
        assert_eq!((f(0x0113).method(), f(0x0113).class()), (3, 3));
        assert_eq!((f(0x0009).method(), f(0x0009).class()), (9, 0));
        assert_eq!((f(0x0017).method(), f(0x0017).class()), (7, 1));
    }
}
