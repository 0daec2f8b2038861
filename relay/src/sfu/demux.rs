//! Which datagrams of the shared UDP port are the SFU's (RFC 7983 first-byte demultiplexing).
//!
//! The TURN workers own the port and ask this of every datagram they receive on it: 20-63 is
//! DTLS and 128-191 is RTP/RTCP, which TURN never uses, so they are the SFU's; 0-3 is STUN, the
//! SFU's only when it is a Binding request whose USERNAME starts with the ICE ufrag of one of the
//! SFU's peers; everything else (TURN requests, ChannelData at 64-79) is the TURN core's.

use super::webrtc::stun_ufrag;

/// Whether `data` is the SFU's; `is_ours` tells whether a local ICE ufrag is one of its peers'.
pub fn is_sfu_datagram(data: &[u8], is_ours: impl FnOnce(&str) -> bool) -> bool {
    match data.first() {
        Some(20..=63 | 128..=191) => true,
        // A Binding request (type 0x0001) naming one of our peers' ufrags.
        Some(0) if data.get(1) == Some(&1) => stun_ufrag(data).is_some_and(|u| is_ours(&u)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use stun::agent::TransactionId;
    use stun::attributes::{ATTR_USERNAME, AttrType};
    use stun::message::{BINDING_REQUEST, CLASS_REQUEST, METHOD_ALLOCATE, Message, MessageType, Setter};
    use stun::textattrs::TextAttribute;

    use super::*;

    /// ICE's PRIORITY (RFC 8445 §16.1), which str0m requires of a Binding request.
    struct Priority(u32);

    impl Setter for Priority {
        fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
            m.add(AttrType(0x0024), &self.0.to_be_bytes());
            Ok(())
        }
    }

    /// A STUN message as a browser's ICE agent sends it.
    fn stun(typ: MessageType, username: &str) -> Vec<u8> {
        let mut m = Message::new();
        let attrs: Vec<Box<dyn Setter>> = vec![
            Box::new(typ),
            Box::new(TransactionId::new()),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
            Box::new(Priority(0x6e00_1eff)),
            Box::new(stun::integrity::MessageIntegrity::new_short_term_integrity("password".into())),
            Box::new(stun::fingerprint::FINGERPRINT),
        ];
        m.build(&attrs).unwrap();
        m.raw
    }

    #[test]
    fn first_byte_and_ufrag_decide() {
        let ours = |u: &str| u == "sfu1";
        let allocate = MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST);
        let cases: [(&str, Vec<u8>, bool); 8] = [
            ("DTLS handshake", vec![22, 254, 253, 0], true),
            ("RTP", vec![0x80, 96, 0, 1], true),
            ("RTCP", vec![0x81, 200, 0, 6], true),
            ("Binding to one of our peers", stun(BINDING_REQUEST, "sfu1:browser"), true),
            ("Binding to another ufrag (a TURN client's ICE)", stun(BINDING_REQUEST, "other:browser"), false),
            ("a TURN Allocate", stun(allocate, "sfu1:browser"), false),
            ("ChannelData", vec![0x40, 0x00, 0, 4, 1, 2, 3, 4], false),
            ("nothing", vec![], false),
        ];
        for (name, data, want) in cases {
            assert_eq!(is_sfu_datagram(&data, ours), want, "{name}");
        }
    }
}
