//! Seat-input stamps: latency-aware fairness without trusting client clocks.
//!
//! The first relay to receive a seat holder's input stamps it with the time it arrived (Unix ms,
//! that relay's clock) and the holder's current round-trip time (from the RTCP receiver reports
//! of the media it watches). A machine that wants the stamps opens its data channel with the
//! label [`STAMPED_CHANNEL`]; it then receives each input as one JSON text message:
//!
//! ```json
//! {"type":"seat_input","relay":"ap-1","arrived_unix_ms":1796000000123,"rtt_ms":41,"text":"{\"b\":1}"}
//! ```
//!
//! with `text` for an input sent as a string and `base64` for one sent as binary; `rtt_ms` is
//! `null` until the holder's first receiver report, `relay` `null` on a relay with no cluster
//! id. A machine whose channel has any other label receives the inputs as they were sent.

use base64::Engine as _;
use serde::Serialize;

/// The data-channel label by which a machine asks for stamped inputs.
pub const STAMPED_CHANNEL: &str = "stamped";

/// How an input's stamp crosses a relay link when the RTT is not known yet.
pub const RTT_UNKNOWN: u32 = u32::MAX;

/// Where and when a seat input entered the relay network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatStamp {
    /// The relay that received it first (`None`: no cluster id here).
    pub relay: Option<String>,
    pub arrived_unix_ms: u64,
    pub rtt_ms: Option<u32>,
}

impl SeatStamp {
    /// A round trip in whole ms, below [`RTT_UNKNOWN`] (which a link reads as "not known").
    pub fn rtt_ms(rtt: std::time::Duration) -> u32 {
        u32::try_from(rtt.as_millis()).unwrap_or(u32::MAX).min(RTT_UNKNOWN - 1)
    }

    /// The RTT as a link carries it.
    pub fn wire_rtt(&self) -> u32 {
        self.rtt_ms.unwrap_or(RTT_UNKNOWN)
    }

    /// The RTT from a link's field.
    pub fn rtt_from_wire(rtt_ms: u32) -> Option<u32> {
        (rtt_ms != RTT_UNKNOWN).then_some(rtt_ms)
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    r#type: &'static str,
    relay: Option<&'a str>,
    arrived_unix_ms: u64,
    rtt_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

/// The JSON text message a machine with a [`STAMPED_CHANNEL`] receives for an input. A "string"
/// input that is not UTF-8 (a browser cannot send one, a buggy client might) goes as `base64`.
pub fn envelope(stamp: &SeatStamp, binary: bool, data: &[u8]) -> Vec<u8> {
    let text = if binary { None } else { std::str::from_utf8(data).ok() };
    let envelope = Envelope {
        r#type: "seat_input",
        relay: stamp.relay.as_deref(),
        arrived_unix_ms: stamp.arrived_unix_ms,
        rtt_ms: stamp.rtt_ms,
        text,
        base64: text.is_none().then(|| base64::engine::general_purpose::STANDARD.encode(data)),
    };
    // Serialising this struct cannot fail (no maps with non-string keys, no failing Serialize).
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// Now, in Unix ms.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(v: &[u8]) -> Value {
        serde_json::from_slice(v).unwrap()
    }

    #[test]
    fn text_and_binary_inputs_carry_their_stamp() {
        let stamp = SeatStamp { relay: Some("ap-1".into()), arrived_unix_ms: 1_796_000_000_123, rtt_ms: Some(41) };
        assert_eq!(
            parse(&envelope(&stamp, false, br#"{"b":1}"#)),
            json!({ "type": "seat_input", "relay": "ap-1", "arrived_unix_ms": 1_796_000_000_123u64, "rtt_ms": 41, "text": "{\"b\":1}" })
        );
        let binary = parse(&envelope(&stamp, true, &[0, 1, 0xff]));
        assert_eq!(binary["base64"], "AAH/");
        assert!(binary.get("text").is_none());
        let unknown = SeatStamp { relay: None, arrived_unix_ms: 5, rtt_ms: None };
        let not_utf8 = parse(&envelope(&unknown, false, &[0xc3, 0x28]));
        assert_eq!((not_utf8["relay"].clone(), not_utf8["rtt_ms"].clone()), (Value::Null, Value::Null));
        assert_eq!(not_utf8["base64"], "wyg=", "a string input that is not UTF-8 goes as base64");
    }

    #[test]
    fn an_unknown_rtt_crosses_links_as_its_own_value() {
        let unknown = SeatStamp { relay: None, arrived_unix_ms: 0, rtt_ms: None };
        assert_eq!(SeatStamp::rtt_from_wire(unknown.wire_rtt()), None);
        let known = SeatStamp { rtt_ms: Some(0), ..unknown };
        assert_eq!(SeatStamp::rtt_from_wire(known.wire_rtt()), Some(0));
        assert_eq!(SeatStamp::rtt_ms(std::time::Duration::from_millis(41)), 41);
        assert_eq!(SeatStamp::rtt_ms(std::time::Duration::from_secs(u64::MAX)), RTT_UNKNOWN - 1, "never the sentinel");
    }
}
