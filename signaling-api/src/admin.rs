//! `GET /healthz`, `GET /v1/admin/status`, `POST /v1/admin/keys/rotate` and
//! `POST /v1/admin/tokens`.

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

/// `GET /healthz`: signaling answers and its store is reachable (otherwise 503 with an error
/// body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// `sqlite` or `postgres`.
    pub store: String,
}

/// What a signaling token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Creates sessions, watches, asks for ICE configurations.
    Player,
    /// Registers a game machine and sends its heartbeats.
    Machine,
    /// Everything, including the admin routes.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Player => "player",
            Self::Machine => "machine",
            Self::Admin => "admin",
        }
    }
}

/// `POST /v1/admin/tokens` (and `relayctl token --key`, which mints offline): a signed token for
/// `sub` in `role`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIssued {
    pub token: String,
    pub sub: String,
    pub role: Role,
    /// Unix seconds.
    pub expires_at: u64,
}
