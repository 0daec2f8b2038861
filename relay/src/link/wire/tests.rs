use proptest::prelude::*;

use super::*;

fn varint(v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, v);
    out
}

#[test]
fn varints_are_quic_varints() {
    // RFC 9000 Appendix A.1's examples.
    assert_eq!(varint(151_288_809_941_952_652), [0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]);
    assert_eq!(varint(494_878_333), [0x9d, 0x7f, 0x3e, 0x7d]);
    assert_eq!(varint(15_293), [0x7b, 0xbd]);
    assert_eq!(varint(37), [0x25]);
    for (v, len) in [(0, 1), (63, 1), (64, 2), (16_383, 2), (16_384, 4), ((1 << 30) - 1, 4), (1 << 30, 8)] {
        let bytes = varint(v);
        assert_eq!(bytes.len(), len, "{v}");
        assert_eq!(Reader(&bytes).varint(), Ok(v));
    }
    // The two-byte encoding of 37 (RFC 9000: not minimal, still valid).
    assert_eq!(Reader(&[0x40, 0x25]).varint(), Ok(37));
    assert_eq!(Reader(&[0x40]).varint(), Err(WireError::Truncated));
}

fn media(payload: &[u8]) -> Media<'_> {
    Media {
        track: 3,
        layer: 2,
        seq: 70_000,
        timestamp: 0xdead_beef,
        marker: true,
        keyframe: true,
        resend: false,
        payload,
    }
}

#[test]
fn a_media_datagram_is_its_header_and_payload() {
    let mut out = Vec::new();
    media(b"rtp payload").encode(&mut out);
    // track 3, flags layer 2 | keyframe | marker, seq 70000 (4-byte varint), timestamp.
    assert_eq!(&out[..10], &[3, 0x23, 0x80, 0x01, 0x11, 0x70, 0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(&out[10..], b"rtp payload");
    assert_eq!(Media::decode(&out), Ok(media(b"rtp payload")));
    // An empty payload is a packet too (padding-only RTP).
    let mut out = Vec::new();
    media(b"").encode(&mut out);
    assert_eq!(Media::decode(&out).unwrap().payload, b"");
}

#[test]
fn malformed_media_is_an_error() {
    let mut out = Vec::new();
    media(b"x").encode(&mut out);
    // Every cut inside the header.
    for cut in 0..10 {
        assert_eq!(Media::decode(&out[..cut]), Err(WireError::Truncated), "cut at {cut}");
    }
    let mut bad = out.clone();
    bad[1] |= 0x08;
    assert_eq!(Media::decode(&bad), Err(WireError::Invalid("media flags")));
}

fn every_control() -> Vec<Control> {
    vec![
        Control::Subscribe { machine: "pusher-1".into() },
        Control::Unsubscribe { machine: "pusher-1".into() },
        Control::Layers { track: 1, mask: 0b101 },
        Control::KeyframeRequest { track: 70_000 },
        Control::Nack { track: 2, layer: 1, seqs: vec![5, 6, 1 << 40] },
        Control::SeatInput {
            machine: "pusher-1".into(),
            binary: false,
            data: b"{\"coin\":1}".to_vec(),
            arrived_unix_ms: 1_800_000_000_123,
            rtt_ms: 42,
        },
        Control::SeatTaken { machine: "pusher-1".into() },
        Control::Track { machine: "pusher-1".into(), track: 9, codec: 2, layers: 3 },
        Control::TrackEnded { track: 9 },
        Control::MachineMessage { machine: "pusher-1".into(), binary: true, data: vec![0, 1, 2] },
        Control::Unavailable { machine: "pusher-9".into(), reason: "not published here".into() },
        Control::Oversize { datagram: vec![0x5a; 1600] },
        Control::LayerRates { track: 9, rates: vec![150_000, 0, 2_500_000] },
        Control::Viewer { machine: "pusher-1".into(), label: "alice".into(), present: true },
        Control::Viewer { machine: "pusher-1".into(), label: "alice".into(), present: false },
        Control::Seat { machine: "pusher-1".into(), holder: Some("alice".into()) },
        Control::Seat { machine: "pusher-1".into(), holder: None },
    ]
}

#[test]
fn every_control_frame_round_trips_and_streams_decode_frame_by_frame() {
    let mut stream = Vec::new();
    for c in every_control() {
        let mut one = Vec::new();
        c.encode(&mut one).unwrap();
        assert_eq!(Control::decode(&one), Ok(Some((c.clone(), one.len()))));
        // Every proper prefix asks for more.
        for cut in 0..one.len() {
            assert_eq!(Control::decode(&one[..cut]), Ok(None), "{c:?} cut at {cut}");
        }
        stream.extend_from_slice(&one);
    }
    let mut read = Vec::new();
    let mut at = 0;
    while let Some((c, used)) = Control::decode(&stream[at..]).unwrap() {
        read.push(c);
        at += used;
    }
    assert_eq!(at, stream.len());
    assert_eq!(read, every_control());
}

#[test]
fn malformed_control_frames_are_errors() {
    let frame = |kind: u8, body: &[u8]| {
        let mut out = varint(body.len() as u64 + 1);
        out.push(kind);
        out.extend_from_slice(body);
        out
    };
    assert_eq!(Control::decode(&frame(99, &[])), Err(WireError::UnknownType(99)));
    assert_eq!(Control::decode(&[0]), Err(WireError::Invalid("empty frame")));
    assert_eq!(Control::decode(&varint(MAX_FRAME as u64 + 1)), Err(WireError::TooLong("frame")));
    // A body that ends early, one with bytes left over, a bad UTF-8 machine id, a bad flag.
    assert_eq!(Control::decode(&frame(SUBSCRIBE, &[5, b'a'])), Err(WireError::Truncated));
    assert_eq!(Control::decode(&frame(TRACK_ENDED, &[1, 2])), Err(WireError::Invalid("trailing bytes in frame")));
    assert_eq!(Control::decode(&frame(SUBSCRIBE, &[1, 0xff])), Err(WireError::Invalid("machine")));
    assert_eq!(Control::decode(&frame(MACHINE_MESSAGE, &[1, b'm', 2, 0])), Err(WireError::Invalid("flag")));
    // Limits: a NACK list, a machine id, a layer.
    let mut nack = vec![1, 0];
    put_varint(&mut nack, MAX_NACKS as u64 + 1);
    assert_eq!(Control::decode(&frame(NACK, &nack)), Err(WireError::TooLong("nack list")));
    assert_eq!(Control::decode(&frame(NACK, &[1, 16, 0])), Err(WireError::Invalid("layer")));
    assert_eq!(Control::decode(&frame(LAYER_RATES, &[1, 17])), Err(WireError::TooLong("layer rates")));
    let too_many_layers = Control::LayerRates { track: 1, rates: vec![0; 17] };
    assert_eq!(too_many_layers.encode(&mut Vec::new()), Err(WireError::TooLong("layer rates")));
    let mut long = varint(MAX_ID as u64 + 1);
    long.extend(std::iter::repeat_n(b'a', MAX_ID + 1));
    assert_eq!(Control::decode(&frame(SUBSCRIBE, &long)), Err(WireError::TooLong("machine")));
    // The encoder refuses what the decoder would.
    let too_many = Control::Nack { track: 1, layer: 0, seqs: vec![0; MAX_NACKS + 1] };
    assert_eq!(too_many.encode(&mut Vec::new()), Err(WireError::TooLong("nack list")));
    let too_big = Control::MachineMessage { machine: "m".into(), binary: true, data: vec![0; MAX_MESSAGE + 1] };
    assert_eq!(too_big.encode(&mut Vec::new()), Err(WireError::TooLong("machine message")));
    // The largest message fits a frame.
    let largest = Control::SeatInput {
        machine: "m".repeat(MAX_ID),
        binary: true,
        data: vec![7; MAX_MESSAGE],
        arrived_unix_ms: u64::MAX >> 2,
        rtt_ms: u32::MAX,
    };
    let mut out = Vec::new();
    largest.encode(&mut out).unwrap();
    assert_eq!(Control::decode(&out).unwrap().unwrap().0, largest);
}

proptest! {
    #[test]
    fn media_round_trips(
        track in 0u64..(1 << 62), layer in 0u8..=MAX_LAYER, seq in 0u64..(1 << 62), timestamp: u32,
        marker: bool, keyframe: bool, resend: bool, payload in proptest::collection::vec(any::<u8>(), 0..1300),
    ) {
        let m = Media { track, layer, seq, timestamp, marker, keyframe, resend, payload: &payload };
        let mut out = Vec::new();
        m.encode(&mut out);
        prop_assert!(out.len() <= payload.len() + 22);
        prop_assert_eq!(Media::decode(&out), Ok(m));
    }

    #[test]
    fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Media::decode(&bytes);
        if let Ok(Some((c, used))) = Control::decode(&bytes) {
            // Whatever decodes re-encodes to a frame that decodes the same.
            prop_assert!(used <= bytes.len());
            let mut again = Vec::new();
            c.encode(&mut again).unwrap();
            prop_assert_eq!(Control::decode(&again), Ok(Some((c, again.len()))));
        }
    }
}
