//! `POST /v1/ice-config` and `POST /v1/sessions/{id}/ice-config`: an ICE configuration with
//! short-lived TURN credentials for the chosen relay.

use geo::{RegionScore, Source};
use serde::{Deserialize, Serialize};

/// An `RTCConfiguration`: `iceServers`, `iceTransportPolicy` and `bundlePolicy` go straight into
/// `new RTCPeerConnection(...)`, which ignores the other members; plus what decided it, when the
/// credentials expire, and (for a new placement) pre-minted alternates for failover without
/// another request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IceConfig {
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
    /// `all`.
    #[serde(rename = "iceTransportPolicy")]
    pub ice_transport_policy: String,
    /// `max-bundle`.
    #[serde(rename = "bundlePolicy")]
    pub bundle_policy: String,
    pub region: String,
    pub relay: RelayRef,
    /// Seconds the credentials are valid for.
    pub ttl: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// Ask again after this (unix seconds).
    pub refresh_after: u64,
    /// Other regions, best first (a new placement only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternates: Option<Vec<Alternate>>,
    /// What decided the region (a new placement only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<SelectionSummary>,
}

/// An `RTCIceServer` with a TURN REST credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

/// Which relay a configuration is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRef {
    pub id: String,
    pub region: String,
    pub host: String,
}

/// A failover region with its own relay and credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alternate {
    pub region: String,
    pub relay: RelayRef,
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
}

/// Why this region: the rule that decided (`geo::select`), the chosen region's score (to send
/// back as `previous` next time) and every region's breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionSummary {
    pub source: Source,
    pub score_ms: Option<f64>,
    pub scores: Vec<RegionScore>,
    /// Live relays that took no new session, and why (a region whose relays are all passed over
    /// shows as `full` or `draining` in `scores`; one relay passed over in a region that still
    /// has another shows only here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passed_over: Vec<PassedOver>,
}

/// A live relay that placement did not consider for new sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassedOver {
    pub relay: String,
    pub region: String,
    pub reason: PassedOverReason,
    /// Its allocations and allocation capacity, from its last heartbeat.
    pub allocations: u64,
    pub capacity: u64,
}

/// Why a live relay takes no new sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassedOverReason {
    /// Within signaling's margin of its allocation capacity (`cluster::heartbeat::FULL_MARGIN`):
    /// it would refuse the session's allocations with 508.
    Full,
    /// Draining, by its own decision (SIGTERM) or an admin's.
    Draining,
}
