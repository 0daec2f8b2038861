//! `GET /v1/relays`, `POST /v1/relays/{id}/drain`, `/undrain`, `DELETE /v1/relays/{id}`.

use cluster::heartbeat::{Load, RelayState};
use serde::{Deserialize, Serialize};

/// `GET /v1/relays`: the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayList {
    pub relays: Vec<RelayInfo>,
}

/// A relay as the registry knows it, with its status now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayInfo {
    #[serde(flatten)]
    pub relay: Relay,
    /// `serving`, `draining` or `dead`.
    pub status: String,
    pub seen_ago_ms: i64,
}

/// A relay as the registry keeps it (signaling's store row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Relay {
    pub id: String,
    pub region: String,
    pub version: String,
    pub public_host: String,
    pub turn_udp_port: u16,
    pub turn_tls_port: Option<u16>,
    /// Base URL of the relay's WHIP/WHEP endpoints, when it runs an SFU.
    pub sfu_url: Option<String>,
    /// UDP port of its link endpoint for other relays (QUIC) on `public_host`, when it has one.
    #[serde(default)]
    pub link_port: Option<u16>,
    /// Round-trip times in ms to the relays it has links with, by relay id (its last heartbeat).
    #[serde(default)]
    pub link_rtts: std::collections::BTreeMap<String, f64>,
    /// Its links to other relays: state, RTT, datagrams and bytes each way, repairs (its last
    /// heartbeat).
    #[serde(default)]
    pub links: Vec<cluster::heartbeat::LinkReport>,
    /// What the relay reports.
    pub state: RelayState,
    /// What an admin set (drain, undrain).
    pub admin_state: RelayState,
    pub load: Load,
    /// The tightest of its load ratios, 0..=1.
    pub utilisation: f64,
    /// Unix seconds.
    pub started_at: u64,
    /// Unix milliseconds.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// `POST /v1/relays/{id}/drain` and `/undrain`: the relay's admin state now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminStateChanged {
    pub relay: String,
    pub admin_state: RelayState,
}

/// `DELETE /v1/relays/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRemoved {
    pub relay: String,
    pub removed: bool,
}
