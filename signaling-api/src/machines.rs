//! `GET /v1/machines`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

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
