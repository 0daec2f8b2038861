//! `GET /v1/sessions`, `GET /v1/sessions/{id}`, `POST /v1/sessions/{id}/end` and
//! `POST /v1/sessions/{id}/seat`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
