//! Key-frame detection from RTP payload headers, per codec.
//!
//! The SFU never decodes video, but it must know where a decoder can start: a new subscriber
//! and a subscriber switching simulcast layers are only fed from a key frame on. Each codec's
//! RTP payload format says so in its first bytes; these functions read only those bytes, never
//! index past the end of the slice, and answer `false` for anything malformed.

/// The video codecs the SFU forwards (audio needs no key frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Opus,
    H264,
    Vp8,
    Vp9,
    Av1,
}

impl Codec {
    /// True for audio: every packet is a place a decoder can start.
    pub fn is_audio(self) -> bool {
        matches!(self, Self::Opus)
    }

    /// The codec's name in SDP (`a=rtpmap`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Opus => "opus",
            Self::H264 => "H264",
            Self::Vp8 => "VP8",
            Self::Vp9 => "VP9",
            Self::Av1 => "AV1",
        }
    }

    /// The codec's number on relay links ([`crate::link::wire::Control::Track`]).
    pub fn wire_id(self) -> u8 {
        match self {
            Self::Opus => 1,
            Self::H264 => 2,
            Self::Vp8 => 3,
            Self::Vp9 => 4,
            Self::Av1 => 5,
        }
    }

    /// The codec numbered `id` on relay links.
    pub fn from_wire_id(id: u8) -> Option<Self> {
        [Self::Opus, Self::H264, Self::Vp8, Self::Vp9, Self::Av1].into_iter().find(|c| c.wire_id() == id)
    }

    /// The RTP clock rate (RFC 7587 for Opus; 90 kHz for every video format).
    pub fn clock_rate(self) -> u32 {
        if self.is_audio() { 48_000 } else { 90_000 }
    }
}

/// True if this RTP payload starts a key frame (or, for audio, always).
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Opus => true,
        Codec::H264 => h264(payload),
        Codec::Vp8 => vp8(payload),
        Codec::Vp9 => vp9(payload),
        Codec::Av1 => av1(payload),
    }
}

/// RFC 6184: an IDR slice (type 5) or a sequence parameter set (7), which precedes an IDR, alone
/// (single NAL unit), inside a STAP-A (24) or at the start of an FU-A (28).
fn h264(p: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&first) = p.first() else { return false };
    match first & 0x1f {
        IDR | SPS => true,
        STAP_A => {
            let mut rest = &p[1..];
            while rest.len() >= 3 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if size == 0 || rest.len() < 2 + size {
                    return false;
                }
                if matches!(rest[2] & 0x1f, IDR | SPS) {
                    return true;
                }
                rest = &rest[2 + size..];
            }
            false
        }
        FU_A => p.get(1).is_some_and(|&fu| fu & 0x80 != 0 && matches!(fu & 0x1f, IDR | SPS)),
        _ => false,
    }
}

/// RFC 7741: at the start of partition 0 (S=1, PID=0), the VP8 payload header's P bit is 0 for
/// a key frame. The descriptor's optional fields (X → I/L/T/K, I → 7- or 15-bit picture id) are
/// skipped first.
fn vp8(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let (extended, start, pid) = (b0 & 0x80 != 0, b0 & 0x10 != 0, b0 & 0x07);
    if !start || pid != 0 {
        return false;
    }
    let mut at = 1;
    if extended {
        let Some(&x) = p.get(at) else { return false };
        at += 1;
        if x & 0x80 != 0 {
            // I: picture id, 15 bits when its first bit (M) is set.
            let Some(&pic) = p.get(at) else { return false };
            at += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // T or K: TID/Y/KEYIDX
        }
    }
    p.get(at).is_some_and(|&h| h & 0x01 == 0)
}

/// RFC 9628 (VP9): P=0 (not inter-predicted) and B=1 (beginning of a frame). In flexible mode
/// with spatial layers only the base layer's frame lacks P, which is what a switch needs.
fn vp9(p: &[u8]) -> bool {
    p.first().is_some_and(|&b| b & 0x40 == 0 && b & 0x08 != 0)
}

/// AV1 RTP payload format: N=1 in the aggregation header marks the first packet of a coded
/// video sequence, which starts with a key frame.
fn av1(p: &[u8]) -> bool {
    p.first().is_some_and(|&b| b & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h264_forms() {
        assert!(is_keyframe(Codec::H264, &[0x65, 0x88]), "IDR");
        assert!(is_keyframe(Codec::H264, &[0x67, 0x42]), "SPS");
        assert!(!is_keyframe(Codec::H264, &[0x41, 0x9a]), "non-IDR slice");
        // STAP-A holding SPS (size 2) then PPS.
        assert!(is_keyframe(Codec::H264, &[0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce]));
        assert!(!is_keyframe(Codec::H264, &[0x78, 0, 2, 0x68, 0xce]), "STAP-A with PPS only");
        assert!(!is_keyframe(Codec::H264, &[0x78, 0, 9, 0x67]), "STAP-A size past the end");
        // FU-A: start bit and IDR type, and the same without the start bit.
        assert!(is_keyframe(Codec::H264, &[0x7c, 0x85, 0xaa]));
        assert!(!is_keyframe(Codec::H264, &[0x7c, 0x05, 0xaa]));
        assert!(!is_keyframe(Codec::H264, &[0x7c]));
        assert!(!is_keyframe(Codec::H264, &[]));
    }

    #[test]
    fn vp8_forms() {
        // S=1, PID=0, no extension; payload header P=0 (key) and P=1 (inter).
        assert!(is_keyframe(Codec::Vp8, &[0x10, 0x00]));
        assert!(!is_keyframe(Codec::Vp8, &[0x10, 0x01]));
        // Not the start of a partition.
        assert!(!is_keyframe(Codec::Vp8, &[0x00, 0x00]));
        // X=1, I=1 with a 15-bit picture id, L=1, T=1: header at byte 6.
        assert!(is_keyframe(Codec::Vp8, &[0x90, 0xe0, 0x80, 0x01, 0x05, 0x20, 0x00]));
        assert!(!is_keyframe(Codec::Vp8, &[0x90, 0xe0, 0x80, 0x01, 0x05, 0x20, 0x01]));
        // Truncated descriptors.
        assert!(!is_keyframe(Codec::Vp8, &[0x90, 0xe0, 0x80]));
        assert!(!is_keyframe(Codec::Vp8, &[0x10]));
    }

    #[test]
    fn vp9_av1_opus() {
        assert!(is_keyframe(Codec::Vp9, &[0x08]));
        assert!(!is_keyframe(Codec::Vp9, &[0x48]), "inter-predicted");
        assert!(!is_keyframe(Codec::Vp9, &[0x00]), "not the beginning of a frame");
        assert!(is_keyframe(Codec::Av1, &[0x18]));
        assert!(!is_keyframe(Codec::Av1, &[0x10]));
        assert!(!is_keyframe(Codec::Av1, &[]));
        assert!(is_keyframe(Codec::Opus, &[]));
    }
}
