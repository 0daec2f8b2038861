//! `GET /v1/admin/status` and `POST /v1/admin/keys/rotate`.

use serde::{Deserialize, Serialize};

/// `GET /v1/admin/status`: what signaling knows, in counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Signaling's version.
    pub version: String,
    pub uptime_secs: u64,
    /// `sqlite` or `postgres`.
    pub store: String,
    /// How many regions signaling places in.
    pub regions: usize,
    pub relays: RelayCounts,
    /// Registered machines.
    pub machines: i64,
    pub sessions: SessionCounts,
    pub secrets: SecretCounts,
}

/// Relays by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCounts {
    pub serving: usize,
    pub draining: usize,
    pub dead: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCounts {
    pub live: i64,
    pub total: i64,
}

/// TURN REST secrets: the newest's version and how many are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretCounts {
    pub newest: u64,
    pub live: usize,
}

/// `POST /v1/admin/keys/rotate`: the new secret's version, how many are accepted now, and how
/// long the previous ones stay accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotated {
    pub version: i64,
    pub live_secrets: usize,
    pub previous_retire_after_secs: i64,
}
