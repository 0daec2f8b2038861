//! The wire format of relay links, sans-IO: media datagrams and control frames, encoded and
//! decoded without sockets. Integers are QUIC variable-length integers (RFC 9000 §16) unless
//! said otherwise; strings and byte strings are a varint length then the bytes.
//!
//! **Media** travels as QUIC datagrams (RFC 9221), one RTP packet each, from the home relay
//! (origin) to an edge relay:
//!
//! ```text
//! varint track | u8 flags | varint seq | u32 timestamp (big endian) | payload (the rest)
//! flags: bit 0 marker, bit 1 key frame, bit 2 resend (answers a NACK), bits 4-7 layer
//! ```
//!
//! `track` is the origin's id of the track on this link (announced by [`Control::Track`]), `seq`
//! the extended sequence number of the packet in its track and layer as the origin numbers them
//! (what a NACK names). The header is 7 to 22 bytes; SRTP is gone on the hop (the relays decrypt
//! to rewrite headers anyway) and QUIC's TLS 1.3 protects it instead.
//!
//! **Control** travels on one reliable bidirectional stream per link, opened by the edge, as
//! frames `varint length | u8 type | body`, at most [`MAX_FRAME`] bytes; see [`Control`].
//! Anything malformed is an error the caller counts and drops (a datagram) or answers by
//! closing the stream (a frame): nothing here panics on input. A frame of a type this version
//! does not know ([`WireError::UnknownType`]) is not malformed: the reader skips it
//! ([`frame_size`]), as HTTP/3 does unknown frames, so that a newer relay can add messages
//! without breaking its links with this one.

use std::fmt;

/// The largest control frame (type and body): a seat input or machine message of up to 16 KiB
/// fits, with room for its stamps.
pub const MAX_FRAME: usize = 20 * 1024;
/// Most sequence numbers one NACK frame may name.
pub const MAX_NACKS: usize = 512;
/// Longest machine id on the wire.
pub const MAX_ID: usize = 128;
/// Largest seat input or machine message (a data-channel message).
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Largest media datagram carried on the control stream (see [`Control::Oversize`]).
pub const MAX_OVERSIZE: usize = 8 * 1024;
/// Highest simulcast layer a datagram can carry (four bits).
pub const MAX_LAYER: u8 = 15;

/// Why bytes from a link were not a datagram or frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Ended before the header or a field did.
    Truncated,
    /// A frame longer than [`MAX_FRAME`], or a field over its limit.
    TooLong(&'static str),
    /// A control frame type this version does not know.
    UnknownType(u8),
    /// A field with a value it cannot have (the name says which).
    Invalid(&'static str),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated"),
            Self::TooLong(what) => write!(f, "{what} too long"),
            Self::UnknownType(t) => write!(f, "unknown control frame type {t}"),
            Self::Invalid(what) => write!(f, "invalid {what}"),
        }
    }
}

impl std::error::Error for WireError {}

/// One media packet on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media<'a> {
    pub track: u64,
    pub layer: u8,
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub keyframe: bool,
    /// A retransmission answering a NACK.
    pub resend: bool,
    pub payload: &'a [u8],
}

const MARKER: u8 = 1;
const KEYFRAME: u8 = 2;
const RESEND: u8 = 4;

impl<'a> Media<'a> {
    /// Appends the datagram to `out`. The layer must be at most [`MAX_LAYER`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        debug_assert!(self.layer <= MAX_LAYER);
        put_varint(out, self.track);
        let flags = (self.layer.min(MAX_LAYER) << 4)
            | if self.marker { MARKER } else { 0 }
            | if self.keyframe { KEYFRAME } else { 0 }
            | if self.resend { RESEND } else { 0 };
        out.push(flags);
        put_varint(out, self.seq);
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(self.payload);
    }

    /// Reads a datagram; the payload borrows from `data`.
    pub fn decode(data: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader(data);
        let track = r.varint()?;
        let flags = r.u8()?;
        if flags & 0x08 != 0 {
            return Err(WireError::Invalid("media flags"));
        }
        let seq = r.varint()?;
        let timestamp = u32::from_be_bytes(r.array()?);
        Ok(Self {
            track,
            layer: flags >> 4,
            seq,
            timestamp,
            marker: flags & MARKER != 0,
            keyframe: flags & KEYFRAME != 0,
            resend: flags & RESEND != 0,
            payload: r.0,
        })
    }
}

/// A control message. Edge to origin: `Subscribe`, `Unsubscribe`, `Layers`, `KeyframeRequest`,
/// `Nack`, `SeatInput`, `SeatTaken`, `Viewer`. Origin to edge: `Track`, `TrackEnded`,
/// `MachineMessage`, `Unavailable`, `Oversize`, `LayerRates`, `Seat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Send me the tracks of this machine (the edge has viewers for it).
    Subscribe { machine: String },
    /// No more viewers here for this machine.
    Unsubscribe { machine: String },
    /// Send only these simulcast layers of a track (bit `n` = layer `n`).
    Layers { track: u64, mask: u16 },
    /// A viewer here needs a key frame (the edge merges its viewers' requests first).
    KeyframeRequest { track: u64 },
    /// These packets of a track's layer did not arrive: resend them from your buffer.
    Nack { track: u64, layer: u8, seqs: Vec<u64> },
    /// The seat holder's input, stamped by the relay it reached first: when it arrived there
    /// (unix ms) and the holder's round-trip time to that relay (ms).
    SeatInput { machine: String, binary: bool, data: Vec<u8>, arrived_unix_ms: u64, rtt_ms: u32 },
    /// A viewer here holds the machine's seat now (sent before its first input): the origin
    /// takes seat inputs for the machine from this link only, until another relay takes it or
    /// the seat is handed at the origin.
    SeatTaken { machine: String },
    /// A viewer known as `label` (its media token's subject) watches the machine here now
    /// (`present`), or no longer: the origin can hand the seat to viewers at edges by name.
    Viewer { machine: String, label: String, present: bool },
    /// A track of a subscribed machine, with its id on this link.
    Track { machine: String, track: u64, codec: u8, layers: u8 },
    /// That track is gone (the machine unpublished it).
    TrackEnded { track: u64 },
    /// A message from the machine to its viewers.
    MachineMessage { machine: String, binary: bool, data: Vec<u8> },
    /// The origin cannot serve this machine (not published here, or refused).
    Unavailable { machine: String, reason: String },
    /// A media datagram ([`Media`]) too large for a datagram on the link's path now (its MTU
    /// is narrower than the machine's packets): sent on the reliable stream instead, so that
    /// the packet (and a resend of it) still arrives.
    Oversize { datagram: Vec<u8> },
    /// The bitrate of each simulcast layer of a track as the origin receives it (bits per
    /// second, layer `n` at index `n`; 0: the layer is not live there), sent when it changes.
    /// The edge chooses its viewers' layers from these, including layers it does not receive
    /// now (it asked only for those in use, [`Control::Layers`]).
    LayerRates { track: u64, rates: Vec<u64> },
    /// The machine's seat was handed (at the origin) to the edge's viewer `holder`, or the edge
    /// no longer holds it (`None`: handed to someone elsewhere, or to nobody).
    Seat { machine: String, holder: Option<String> },
}

const SUBSCRIBE: u8 = 1;
const UNSUBSCRIBE: u8 = 2;
const LAYERS: u8 = 3;
const KEYFRAME_REQUEST: u8 = 4;
const NACK: u8 = 5;
const SEAT_INPUT: u8 = 6;
const SEAT_TAKEN: u8 = 7;
const VIEWER: u8 = 8;
const TRACK: u8 = 16;
const TRACK_ENDED: u8 = 17;
const MACHINE_MESSAGE: u8 = 18;
const UNAVAILABLE: u8 = 19;
const OVERSIZE: u8 = 20;
const LAYER_RATES: u8 = 21;
const SEAT: u8 = 22;

impl Control {
    /// Appends the frame (length, type, body) to `out`. Errors if a field is over its limit,
    /// so that no relay sends what its peer would refuse.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let mut body = Vec::new();
        let kind = match self {
            Self::Subscribe { machine } => {
                put_str(&mut body, machine, MAX_ID, "machine")?;
                SUBSCRIBE
            }
            Self::Unsubscribe { machine } => {
                put_str(&mut body, machine, MAX_ID, "machine")?;
                UNSUBSCRIBE
            }
            Self::Layers { track, mask } => {
                put_varint(&mut body, *track);
                body.extend_from_slice(&mask.to_be_bytes());
                LAYERS
            }
            Self::KeyframeRequest { track } => {
                put_varint(&mut body, *track);
                KEYFRAME_REQUEST
            }
            Self::Nack { track, layer, seqs } => {
                if seqs.len() > MAX_NACKS {
                    return Err(WireError::TooLong("nack list"));
                }
                put_varint(&mut body, *track);
                body.push(*layer);
                put_varint(&mut body, seqs.len() as u64);
                for s in seqs {
                    put_varint(&mut body, *s);
                }
                NACK
            }
            Self::SeatInput { machine, binary, data, arrived_unix_ms, rtt_ms } => {
                put_str(&mut body, machine, MAX_ID, "machine")?;
                body.push(u8::from(*binary));
                put_bytes(&mut body, data, MAX_MESSAGE, "seat input")?;
                put_varint(&mut body, *arrived_unix_ms);
                put_varint(&mut body, u64::from(*rtt_ms));
                SEAT_INPUT
            }
            Self::SeatTaken { machine } => {
                put_str(&mut body, machine, MAX_ID, "machine")?;
                SEAT_TAKEN
            }
            Self::Viewer { machine, label, present } => {
                put_str(&mut body, machine, MAX_ID, "machine")?;
                put_str(&mut body, label, MAX_ID, "viewer")?;
                body.push(u8::from(*present));
                VIEWER
            }
            Self::Seat { machine, holder } => {
                put_str(&mut body, machine, MAX_ID, "machine")?;
                body.push(u8::from(holder.is_some()));
                if let Some(holder) = holder {
                    put_str(&mut body, holder, MAX_ID, "viewer")?;
                }
                SEAT
            }
            Self::Track { machine, track, codec, layers } => {
                put_str(&mut body, machine, MAX_ID, "machine")?;
                put_varint(&mut body, *track);
                body.extend_from_slice(&[*codec, *layers]);
                TRACK
            }
            Self::TrackEnded { track } => {
                put_varint(&mut body, *track);
                TRACK_ENDED
            }
            Self::MachineMessage { machine, binary, data } => {
                put_str(&mut body, machine, MAX_ID, "machine")?;
                body.push(u8::from(*binary));
                put_bytes(&mut body, data, MAX_MESSAGE, "machine message")?;
                MACHINE_MESSAGE
            }
            Self::Unavailable { machine, reason } => {
                put_str(&mut body, machine, MAX_ID, "machine")?;
                put_str(&mut body, reason, 256, "reason")?;
                UNAVAILABLE
            }
            Self::Oversize { datagram } => {
                put_bytes(&mut body, datagram, MAX_OVERSIZE, "oversize datagram")?;
                OVERSIZE
            }
            Self::LayerRates { track, rates } => {
                if rates.len() > usize::from(MAX_LAYER) + 1 {
                    return Err(WireError::TooLong("layer rates"));
                }
                put_varint(&mut body, *track);
                body.push(rates.len() as u8);
                for r in rates {
                    put_varint(&mut body, *r);
                }
                LAYER_RATES
            }
        };
        put_varint(out, body.len() as u64 + 1);
        out.push(kind);
        out.extend_from_slice(&body);
        Ok(())
    }

    /// Reads the first frame of `buf`: `Ok(None)` while it is incomplete (read more), else the
    /// message and how many bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, WireError> {
        let mut r = Reader(buf);
        let len = match r.varint() {
            Ok(len) => len,
            Err(WireError::Truncated) => return Ok(None),
            Err(e) => return Err(e),
        };
        if len == 0 {
            return Err(WireError::Invalid("empty frame"));
        }
        if len > MAX_FRAME as u64 {
            return Err(WireError::TooLong("frame"));
        }
        let header = buf.len() - r.0.len();
        let len = len as usize;
        if r.0.len() < len {
            return Ok(None);
        }
        let frame = &r.0[..len];
        let message = Self::decode_body(frame[0], Reader(&frame[1..]))?;
        Ok(Some((message, header + len)))
    }

    fn decode_body(kind: u8, mut r: Reader<'_>) -> Result<Self, WireError> {
        let message = match kind {
            SUBSCRIBE => Self::Subscribe { machine: r.string(MAX_ID, "machine")? },
            UNSUBSCRIBE => Self::Unsubscribe { machine: r.string(MAX_ID, "machine")? },
            LAYERS => Self::Layers { track: r.varint()?, mask: u16::from_be_bytes(r.array()?) },
            KEYFRAME_REQUEST => Self::KeyframeRequest { track: r.varint()? },
            NACK => {
                let (track, layer) = (r.varint()?, r.u8()?);
                if layer > MAX_LAYER {
                    return Err(WireError::Invalid("layer"));
                }
                let n = r.varint()?;
                if n > MAX_NACKS as u64 {
                    return Err(WireError::TooLong("nack list"));
                }
                let seqs = (0..n).map(|_| r.varint()).collect::<Result<_, _>>()?;
                Self::Nack { track, layer, seqs }
            }
            SEAT_INPUT => Self::SeatInput {
                machine: r.string(MAX_ID, "machine")?,
                binary: r.bool()?,
                data: r.bytes(MAX_MESSAGE, "seat input")?.to_vec(),
                arrived_unix_ms: r.varint()?,
                rtt_ms: u32::try_from(r.varint()?).map_err(|_| WireError::Invalid("rtt"))?,
            },
            SEAT_TAKEN => Self::SeatTaken { machine: r.string(MAX_ID, "machine")? },
            VIEWER => Self::Viewer {
                machine: r.string(MAX_ID, "machine")?,
                label: r.string(MAX_ID, "viewer")?,
                present: r.bool()?,
            },
            SEAT => {
                let machine = r.string(MAX_ID, "machine")?;
                let holder = if r.bool()? { Some(r.string(MAX_ID, "viewer")?) } else { None };
                Self::Seat { machine, holder }
            }
            TRACK => Self::Track {
                machine: r.string(MAX_ID, "machine")?,
                track: r.varint()?,
                codec: r.u8()?,
                layers: r.u8()?,
            },
            TRACK_ENDED => Self::TrackEnded { track: r.varint()? },
            MACHINE_MESSAGE => Self::MachineMessage {
                machine: r.string(MAX_ID, "machine")?,
                binary: r.bool()?,
                data: r.bytes(MAX_MESSAGE, "machine message")?.to_vec(),
            },
            UNAVAILABLE => {
                Self::Unavailable { machine: r.string(MAX_ID, "machine")?, reason: r.string(256, "reason")? }
            }
            OVERSIZE => Self::Oversize { datagram: r.bytes(MAX_OVERSIZE, "oversize datagram")?.to_vec() },
            LAYER_RATES => {
                let track = r.varint()?;
                let n = r.u8()?;
                if n > MAX_LAYER + 1 {
                    return Err(WireError::TooLong("layer rates"));
                }
                let rates = (0..n).map(|_| r.varint()).collect::<Result<_, _>>()?;
                Self::LayerRates { track, rates }
            }
            other => return Err(WireError::UnknownType(other)),
        };
        if !r.0.is_empty() {
            return Err(WireError::Invalid("trailing bytes in frame"));
        }
        Ok(message)
    }
}

/// The size (header and body) of the frame at the start of `buf`, once its header is there.
pub fn frame_size(buf: &[u8]) -> Option<usize> {
    let mut r = Reader(buf);
    let len = r.varint().ok()?;
    Some(buf.len() - r.0.len() + usize::try_from(len).ok()?)
}

/// Appends a QUIC varint. Values of 2^62 and above do not fit and are clamped (no field here
/// comes near: sequence numbers and ids count from 0).
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    let v = v.min((1 << 62) - 1);
    if v < 1 << 6 {
        out.push(v as u8);
    } else if v < 1 << 14 {
        out.extend_from_slice(&(v as u16 | 0x4000).to_be_bytes());
    } else if v < 1 << 30 {
        out.extend_from_slice(&(v as u32 | 0x8000_0000).to_be_bytes());
    } else {
        out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes());
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8], max: usize, what: &'static str) -> Result<(), WireError> {
    if b.len() > max {
        return Err(WireError::TooLong(what));
    }
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str, max: usize, what: &'static str) -> Result<(), WireError> {
    put_bytes(out, s.as_bytes(), max, what)
}

/// A cursor over input that may be anything.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Invalid("flag")),
        }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let first = *self.0.first().ok_or(WireError::Truncated)?;
        let len = 1usize << (first >> 6);
        let bytes = self.take(len)?;
        let mut v = u64::from(first & 0x3f);
        for b in &bytes[1..] {
            v = (v << 8) | u64::from(*b);
        }
        Ok(v)
    }

    fn bytes(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        if n > max as u64 {
            return Err(WireError::TooLong(what));
        }
        self.take(n as usize)
    }

    fn string(&mut self, max: usize, what: &'static str) -> Result<String, WireError> {
        let b = self.bytes(max, what)?;
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| WireError::Invalid(what))
    }
}

#[cfg(test)]
mod tests;
