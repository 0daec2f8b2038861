//! Relay ↔ signaling: a relay sends a [`Heartbeat`] every [`INTERVAL`] (`POST
//! /v1/relays/heartbeat` with the cluster token as bearer); signaling answers with a
//! [`HeartbeatReply`] carrying commands and the current TURN REST secrets.
//!
//! The first heartbeat registers the relay; there is no separate registration call, so a relay
//! that restarts or a signaling instance that restarts needs no recovery step. A relay that has
//! not been heard from for [`DEAD_AFTER`] (three missed heartbeats, LiveKit uses 5 s with 2 s
//! stats) is out of rotation. Secrets are rotated in one place (signaling); a relay keeps using
//! the last set it received while signaling is unreachable, so a signaling outage never stops
//! TURN.
//!
//! Everything here is plain JSON so that operators can read it with curl and other
//! implementations can speak it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often a relay reports.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Silence after which a relay leaves rotation.
pub const DEAD_AFTER: Duration = Duration::from_secs(6);

/// The path signaling serves heartbeats on.
pub const PATH: &str = "/v1/relays/heartbeat";

/// Whether a relay takes new sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayState {
    /// Takes new allocations and sessions.
    Serving,
    /// Keeps existing sessions, takes no new ones (drain command or SIGTERM).
    Draining,
}

impl RelayState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Draining => "draining",
        }
    }
}

/// A relay's load. Ratios are of what the relay itself can do; zero caps mean "no cap known".
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Active TURN allocations.
    pub allocations: u64,
    /// The allocations the relay can hold, its capacity: the smaller of its relay ports (one
    /// per allocation) and `allocations.max_total` (0 = unknown: relays before the capacity
    /// reported `max_total` here, 0 for no limit).
    pub max_allocations: u64,
    /// CPU in use as a fraction of all the relay's cores, 0..=1, over the last interval.
    pub cpu: f64,
    /// Relayed bits per second (both directions) over the last interval.
    pub bandwidth_bps: u64,
    /// The link capacity the operator configured (0 = unknown).
    pub bandwidth_cap_bps: u64,
}

/// How close to its capacity a relay may come before signaling stops placing new sessions there:
/// this fraction of the capacity, or [`FULL_MARGIN_MIN`] allocations, whichever is more (but at
/// most a quarter of the capacity). A session takes a few allocations (the player's, the
/// machine's, one per address family or transport the browser tries), and sessions placed
/// between two heartbeats all land before the relay's next report.
pub const FULL_MARGIN: f64 = 0.02;
pub const FULL_MARGIN_MIN: u64 = 4;

impl Load {
    /// Whether the relay is within [`FULL_MARGIN`] of its allocation capacity, so that signaling
    /// places no new session there (never, when the capacity is unknown).
    pub fn is_full(&self) -> bool {
        let cap = self.max_allocations;
        if cap == 0 {
            return false;
        }
        cap.saturating_sub(self.allocations) <= Self::full_margin(cap)
    }

    /// The margin for a capacity of `cap`: never more than a quarter of it, so that a small
    /// relay still takes sessions.
    fn full_margin(cap: u64) -> u64 {
        ((cap as f64 * FULL_MARGIN).ceil() as u64).max(FULL_MARGIN_MIN).min(cap / 4)
    }

    /// The most constrained resource as a fraction, 0..=1: max of CPU, bandwidth and allocation
    /// ratios (the notes' `L(r)`; LiveKit's sysload filter uses one such ratio).
    pub fn utilisation(&self) -> f64 {
        let ratio = |used: u64, cap: u64| if cap == 0 { 0.0 } else { used as f64 / cap as f64 };
        let cpu = if self.cpu.is_finite() { self.cpu } else { 0.0 };
        cpu.max(ratio(self.bandwidth_bps, self.bandwidth_cap_bps))
            .max(ratio(self.allocations, self.max_allocations))
            .clamp(0.0, 1.0)
    }
}

/// What a relay reports every [`INTERVAL`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Unique and stable per relay (e.g. `eu-fra-1`).
    pub relay_id: String,
    /// The region it serves (one of signaling's configured regions).
    pub region: String,
    /// The relay's software version.
    pub version: String,
    /// Host name or IP clients use to reach it (the public address behind 1:1 NAT).
    pub public_host: String,
    /// UDP port of STUN/TURN (also the probe target).
    pub turn_udp_port: u16,
    /// Port of TURN over TLS, when the relay offers it.
    #[serde(default)]
    pub turn_tls_port: Option<u16>,
    /// Public base URL of the relay's SFU (WHIP at `/whip/{machine}`, WHEP at
    /// `/whep/{session}`), when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sfu_url: Option<String>,
    /// UDP port of the relay's link endpoint (QUIC, mutual TLS with the cluster CA) on
    /// `public_host`, when it takes links from other relays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_port: Option<u16>,
    /// Round-trip times, in ms, to the relays this one has links with (relay id → RTT), as
    /// QUIC measures them on the links: signaling places a viewer at its own region's relay
    /// when the path through the link is the shorter.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub link_rtts: std::collections::BTreeMap<String, f64>,
    /// This relay's links to other relays, one per peer (for `relayctl relays links`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkReport>,
    pub state: RelayState,
    pub load: Load,
    /// Version of the secret set the relay holds (0 = none received yet).
    #[serde(default)]
    pub secrets_version: u64,
    /// Unix seconds when the relay process started (tells restarts apart).
    pub started_at: u64,
}

/// A command in a heartbeat reply. Commands are idempotent: signaling repeats one in every reply
/// until the relay's reported state agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Take no new allocations or sessions; keep the existing ones.
    Drain,
    /// Take new ones again.
    Undrain,
}

/// The TURN REST secrets relays accept, newest first. Signaling mints with the first.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secrets {
    /// Increases with every change.
    pub version: u64,
    pub keys: Vec<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material in logs.
        f.debug_struct("Secrets").field("version", &self.version).field("keys", &self.keys.len()).finish()
    }
}

/// Signaling's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub commands: Vec<Command>,
    /// The full current set (it is small); the relay replaces its set when `version` differs.
    pub secrets: Secrets,
    /// When to send the next heartbeat.
    pub interval_ms: u64,
    /// Sessions that have ended while media tokens minted for them may still be valid: the
    /// relay refuses those tokens and ends the sessions' peers. The full list every time
    /// (sessions ended within one token lifetime), so a relay that restarts or misses a reply
    /// catches up with the next one. Absent from an older signaling's replies.
    #[serde(default)]
    pub ended_sessions: Vec<String>,
    /// The other relays that take links (id and `host:port`): a relay keeps a link to each
    /// whose id sorts after its own (one link per pair), to measure the RTTs it reports and
    /// to have the link ready when viewers come. Absent from an older signaling's replies.
    #[serde(default)]
    pub link_peers: Vec<LinkPeer>,
}

/// One of a relay's links to another relay, as it reports it. Counters run from the relay's
/// start (datagrams, bytes) or from when the link was last needed (the SFU's figures).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkReport {
    /// The peer relay's id.
    pub peer: String,
    pub state: LinkState,
    /// QUIC's smoothed RTT while the link is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Media datagrams and their bytes, each way.
    #[serde(default)]
    pub datagrams_sent: u64,
    #[serde(default)]
    pub datagrams_received: u64,
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default)]
    pub bytes_received: u64,
    /// Packets from the peer that filled a gap (the link's loss, repaired by NACK), and those
    /// given up on.
    #[serde(default)]
    pub repaired: u64,
    #[serde(default)]
    pub lost: u64,
    /// Packets sent again to the peer, answering its NACKs.
    #[serde(default)]
    pub resent: u64,
    /// Machines watched here through the link, and machines of this relay the peer watches.
    #[serde(default)]
    pub watching: u32,
    #[serde(default)]
    pub serving: u32,
}

/// Where a link stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Up: media and control flow.
    #[default]
    Up,
    /// Being opened.
    Connecting,
    /// Down; the next attempt waits out a backoff.
    Retrying,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Connecting => "connecting",
            Self::Retrying => "retrying",
        }
    }
}

/// A relay to link with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPeer {
    pub id: String,
    /// `host:port` of its link endpoint.
    pub link: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilisation_is_the_tightest_ratio() {
        let load =
            Load { allocations: 50, max_allocations: 100, cpu: 0.2, bandwidth_bps: 900, bandwidth_cap_bps: 1000 };
        assert!((load.utilisation() - 0.9).abs() < 1e-9);
        assert_eq!(Load { cpu: f64::NAN, ..Load::default() }.utilisation(), 0.0);
        assert_eq!(Load { cpu: 7.0, ..Load::default() }.utilisation(), 1.0);
    }

    #[test]
    fn a_relay_is_full_within_its_margin_of_capacity() {
        let at = |allocations, max_allocations| Load { allocations, max_allocations, ..Load::default() };
        // 50 ports: 4 allocations of margin (2% is 1, at least 4).
        assert!(!at(45, 50).is_full());
        assert!(at(46, 50).is_full());
        assert!(at(50, 50).is_full());
        assert!(at(70, 50).is_full(), "over capacity (max_total lowered by a reload)");
        // 16,384 ports: 2% is 328.
        assert!(!at(16_384 - 329, 16_384).is_full());
        assert!(at(16_384 - 328, 16_384).is_full());
        // A small relay's margin is at most a quarter of its capacity.
        assert!(!at(5, 8).is_full() && at(6, 8).is_full());
        assert!(!at(0, 3).is_full() && at(3, 3).is_full());
        // Unknown capacity: never full.
        assert!(!at(1_000_000, 0).is_full());
    }

    #[test]
    fn wire_format_is_stable() {
        let reply = HeartbeatReply {
            commands: vec![Command::Drain],
            secrets: Secrets { version: 3, keys: vec!["k".into()] },
            interval_ms: 2000,
            ended_sessions: vec!["s-1".into()],
            link_peers: vec![LinkPeer { id: "ap-1".into(), link: "ap-1.example.net:4433".into() }],
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            json,
            r#"{"commands":[{"type":"drain"}],"secrets":{"version":3,"keys":["k"]},"interval_ms":2000,"ended_sessions":["s-1"],"link_peers":[{"id":"ap-1","link":"ap-1.example.net:4433"}]}"#
        );
        assert_eq!(serde_json::from_str::<HeartbeatReply>(&json).unwrap(), reply);
        // An older signaling's reply has no ended sessions.
        let old = r#"{"commands":[],"secrets":{"version":3,"keys":["k"]},"interval_ms":2000}"#;
        let old = serde_json::from_str::<HeartbeatReply>(old).unwrap();
        assert!(old.ended_sessions.is_empty() && old.link_peers.is_empty());
        assert!(!format!("{:?}", reply.secrets).contains("\"k\""));
    }

    #[test]
    fn heartbeat_refuses_unknown_fields() {
        let hb = Heartbeat {
            relay_id: "r".into(),
            region: "eu".into(),
            version: "0".into(),
            public_host: "127.0.0.1".into(),
            turn_udp_port: 3478,
            turn_tls_port: None,
            sfu_url: None,
            link_port: None,
            link_rtts: Default::default(),
            links: Vec::new(),
            state: RelayState::Serving,
            load: Load::default(),
            secrets_version: 0,
            started_at: 1,
        };
        let mut v = serde_json::to_value(&hb).unwrap();
        assert_eq!(serde_json::from_value::<Heartbeat>(v.clone()).unwrap(), hb);
        v["surprise"] = 1.into();
        assert!(serde_json::from_value::<Heartbeat>(v).is_err());
    }
}
