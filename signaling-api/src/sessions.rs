//! `POST /v1/sessions`, `GET /v1/sessions`, `GET /v1/sessions/{id}`,
//! `POST /v1/sessions/{id}/end`, `POST /v1/sessions/{id}/watch` and
//! `POST /v1/sessions/{id}/seat`.

use cluster::media::MediaRole;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ice::{Alternate, IceConfig, RelayRef, SelectionSummary};

/// `POST /v1/sessions` (201): the new session, the player's ICE configuration and, in `sfu`
/// mode, where to watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionCreated {
    pub session_id: String,
    pub machine_id: String,
    /// `direct` or `sfu`.
    pub mode: String,
    pub region: String,
    /// The same as `ice.relay`, `ice.selection` and `ice.alternates`, at the top for clients
    /// that do not look inside `ice`.
    pub relay: RelayRef,
    pub selection: Option<SelectionSummary>,
    pub alternates: Option<Vec<Alternate>>,
    pub ice: IceConfig,
    /// `sfu` mode only (`null` otherwise).
    pub sfu: Option<SfuViewer>,
}

/// Where the session's player watches (WHEP), on the machine's home SFU relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SfuViewer {
    /// The SFU relay's id and region.
    pub relay: String,
    pub region: String,
    pub whep_url: String,
    /// A media token for the player (holds the seat).
    pub token: String,
}

/// `POST /v1/sessions/{id}/watch`: a way into an `sfu` session for its player or a spectator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// The SFU relay's id.
    pub relay: String,
    pub whep_url: String,
    pub token: String,
    /// `player` for the session's own player, `spectator` for anyone else.
    pub role: MediaRole,
}

/// A session as its history shows it: its record, its status and its duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    #[serde(flatten)]
    pub record: SessionRecord,
    /// `requested`, `connected` or `ended`.
    pub status: String,
    /// From request to end; `None` while live.
    pub duration_ms: Option<i64>,
}

impl From<SessionRecord> for Session {
    fn from(record: SessionRecord) -> Self {
        let status = if record.ended_ms.is_some() {
            "ended"
        } else if record.connected_ms.is_some() {
            "connected"
        } else {
            "requested"
        };
        Self { status: status.into(), duration_ms: record.ended_ms.map(|e| e - record.requested_ms), record }
    }
}

/// A session as signaling records it (its store row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub machine_id: String,
    pub player: String,
    /// `direct` or `sfu`.
    pub mode: String,
    pub region: String,
    pub relay_id: String,
    /// What chose the region (`probes`, `geoip`, ...).
    pub source: String,
    /// The placement's scores (and, in `sfu` mode, the SFU relay under `sfu`).
    pub scores: Value,
    pub client_ip: Option<String>,
    /// Unix milliseconds.
    pub requested_ms: i64,
    pub connected_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub end_reason: Option<String>,
    /// `player`, `machine`, `admin` or `signaling`.
    pub ended_by: Option<String>,
}

/// `GET /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<Session>,
}

/// `GET /v1/sessions/{id}`: the session and its event timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionDetail {
    #[serde(flatten)]
    pub session: Session,
    pub events: Vec<SessionEvent>,
}

/// One event of a session's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub seq: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `requested`, `region_chosen`, `connected`, `seat`, `ended`, ...
    pub kind: String,
    pub detail: Value,
}

/// `POST /v1/sessions/{id}/seat`: who holds the seat now, and who did before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatHanded {
    pub session: String,
    pub holder: Option<String>,
    pub previous: Option<String>,
}
