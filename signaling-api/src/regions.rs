//! `GET /v1/regions`: where players can be placed, and how clients should probe.

use serde::{Deserialize, Serialize};

/// `GET /v1/regions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionList {
    pub regions: Vec<RegionInfo>,
    pub probe: ProbePolicy,
}

/// A region, with the relays a client probes to measure it (least loaded first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionInfo {
    pub id: String,
    pub lat: f64,
    pub lon: f64,
    /// Whether a relay in it takes sessions now.
    pub available: bool,
    pub probe_targets: Vec<ProbeTarget>,
}

/// A relay's STUN address, for RTT probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeTarget {
    pub relay: String,
    /// `stun:host:port` (IPv6 hosts in brackets).
    pub url: String,
    pub host: String,
    pub port: u16,
}

/// How clients should probe (Photon's pinger: several attempts per target, the first discarded
/// as warm-up, regions in parallel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbePolicy {
    pub attempts: u32,
    pub timeout_ms: u64,
    pub discard_first: bool,
    pub parallel: bool,
}
