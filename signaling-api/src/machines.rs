//! `GET /v1/machines`, `POST /v1/machines/register` and `POST /v1/machines/heartbeat`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::sessions::SessionRecord;

/// `GET /v1/machines`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineList {
    pub machines: Vec<MachineInfo>,
}

/// A machine and whether it can be played.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub id: String,
    pub name: String,
    /// `available`, `in_session` or `offline`.
    pub status: String,
    /// Unix milliseconds.
    pub last_seen_ms: i64,
    pub seen_ago_ms: i64,
    /// Its round-trip times to regions, in ms.
    pub rtts: BTreeMap<String, f64>,
    /// Its live session, shown to admins only: `None` (absent) for others, `Some(None)` (null)
    /// for an admin when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub session_id: Option<Option<String>>,
}

/// A field that is present, even as null, is `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `POST /v1/machines/register`: the machine's id (its token's subject) and how often to send
/// heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub machine_id: String,
    pub heartbeat_secs: u64,
}

/// `POST /v1/machines/heartbeat`: the machine's live session, if any, and in an `sfu` session
/// where to publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub heartbeat_secs: u64,
    pub session: Option<SessionRecord>,
    pub sfu: Option<Publish>,
}

/// Where a machine publishes its camera (WHIP) in an `sfu` session, and with what media token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The SFU relay's id.
    pub relay: String,
    pub whip_url: String,
    pub token: String,
}
