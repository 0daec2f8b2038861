//! TURN's framing on stream transports (RFC 8656 §12.5, RFC 8489 §6.2.2): on TCP and TLS a
//! message whose first two bits are 00 is STUN (20-byte header plus its length), 01 is
//! ChannelData (4-byte header plus its length, padded to a multiple of 4 on the stream).
//! Anything else cannot be resynchronised. Pure: the shell's stream workers feed it what they
//! read, and the fuzz target arbitrary bytes.

use super::wire::{CHANNEL_DATA_HEADER, MAGIC_COOKIE, STUN_HEADER};

/// The largest message accepted on a stream. A relayed datagram larger than a UDP worker's
/// receive buffer would be dropped there too; 4 KiB leaves room for any MTU.
pub const MAX_FRAME: usize = 4096;

/// What a frame at the start of a buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Need more bytes to tell.
    Incomplete,
    /// A message of `len` bytes (what the core sees) taking `wire` bytes of the stream (with
    /// ChannelData's padding).
    Message { len: usize, wire: usize },
    /// Not STUN or ChannelData, or over [`MAX_FRAME`]: the stream cannot continue.
    Invalid,
}

/// Frames the next message of a TURN stream (RFC 8656 §12.5, RFC 8489 §6.2.2).
pub fn frame(buf: &[u8]) -> Frame {
    let Some(&first) = buf.first() else { return Frame::Incomplete };
    let stun = match first >> 6 {
        0 => true,
        1 => false,
        _ => return Frame::Invalid,
    };
    let Some(header) = buf.get(..4) else { return Frame::Incomplete };
    let body = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let (len, wire) = if stun {
        // The STUN length counts the attributes, always a multiple of 4, and the magic cookie
        // follows (RFC 8489 §5): a TLS ClientHello sent to the TCP port fails here.
        if body % 4 != 0 || buf.get(4..8).is_some_and(|c| c != MAGIC_COOKIE.to_be_bytes()) {
            return Frame::Invalid;
        }
        (STUN_HEADER + body, STUN_HEADER + body)
    } else {
        let len = CHANNEL_DATA_HEADER + body;
        (len, len.next_multiple_of(4))
    };
    if wire > MAX_FRAME {
        return Frame::Invalid;
    }
    if buf.len() < wire {
        // A ChannelData message is complete without its padding only at the very end of what
        // arrived; wait for the padding so the next message starts where it should.
        return Frame::Incomplete;
    }
    Frame::Message { len, wire }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_stun_and_padded_channel_data() {
        // STUN: header says 8 bytes of attributes.
        let mut stun = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
        stun.extend_from_slice(&[0; 12 + 8]);
        assert_eq!(frame(&stun), Frame::Message { len: 28, wire: 28 });
        assert_eq!(frame(&stun[..27]), Frame::Incomplete);
        assert_eq!(frame(&stun[..2]), Frame::Incomplete);
        assert_eq!(frame(&[]), Frame::Incomplete);
        // ChannelData with 5 bytes of data takes 12 bytes of stream (3 of padding).
        let cd = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        assert_eq!(frame(&cd), Frame::Message { len: 9, wire: 12 });
        assert_eq!(frame(&cd[..9]), Frame::Incomplete, "waits for the padding");
        // Neither STUN nor ChannelData: the stream is lost.
        assert_eq!(frame(&[0x80, 0, 0, 0]), Frame::Invalid);
        let client_hello = [0x16, 3, 1, 0, 0xc8, 1, 0, 0, 0xc4, 3, 3];
        assert_eq!(frame(&client_hello), Frame::Invalid, "a TLS record on the TCP port is not STUN");
        // A STUN length that is not a multiple of 4.
        assert_eq!(frame(&[0x00, 0x01, 0x00, 0x05]), Frame::Invalid);
        // Over the cap.
        assert_eq!(frame(&[0x40, 0x00, 0xFF, 0xFF]), Frame::Invalid);
    }
}
