//! Regions and their live state as the relays report it.
//!
//! A region is a place with one or more relays (`eu-central`, `us-east`). Signaling keeps a
//! [`RegionStatus`] per region from the relays' heartbeats (notes/geo-routing.md §8: state and the
//! cpu, egress and allocation ratios every 2 s); this crate only reads it.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::distance::Coordinates;

/// A region's name as configured, e.g. `eu-central`. Serialized as a bare string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegionId(String);

impl RegionId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for RegionId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

impl From<String> for RegionId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl AsRef<str> for RegionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by `RegionId` be queried with a `&str`. Sound because `RegionId`'s `Eq`, `Ord`
/// and `Hash` are those of the inner string.
impl Borrow<str> for RegionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A region and where its relays are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Region {
    pub id: RegionId,
    pub location: Coordinates,
}

/// A region's lifecycle state (LiveKit's node states: `SERVING`, `SHUTTING_DOWN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionState {
    /// Accepting new sessions.
    Serving,
    /// Finishing its sessions; takes no new ones.
    Draining,
    /// Heartbeats stale or the external prober failing.
    Dead,
    /// Serving, but every serving relay is at its allocation capacity: a new session there
    /// would be refused (TURN's 508), so it takes none.
    Full,
}

/// How busy a region is: the largest of its cpu, bandwidth and allocation ratios, within 0..=1.
///
/// Ratios above 1 (egress briefly over the configured cap) are clamped to 1, which already means
/// "full"; negative or NaN ratios are errors.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Load(f64);

/// A load or ratio that is negative, NaN or infinite.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("load ratio {0} is not a finite, non-negative number")]
pub struct LoadError(pub f64);

impl Load {
    pub const IDLE: Load = Load(0.0);

    pub fn new(ratio: f64) -> Result<Self, LoadError> {
        if !ratio.is_finite() || ratio < 0.0 {
            return Err(LoadError(ratio));
        }
        Ok(Self(ratio.min(1.0)))
    }

    /// `max(cpu, bandwidth, allocations)`, each a used/capacity ratio (notes §8 step 3).
    pub fn from_ratios(cpu: f64, bandwidth: f64, allocations: f64) -> Result<Self, LoadError> {
        let (cpu, bandwidth, allocations) = (Self::new(cpu)?, Self::new(bandwidth)?, Self::new(allocations)?);
        Ok(Self(cpu.0.max(bandwidth.0).max(allocations.0)))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Load {
    type Error = LoadError;

    fn try_from(ratio: f64) -> Result<Self, Self::Error> {
        Self::new(ratio)
    }
}

impl From<Load> for f64 {
    fn from(load: Load) -> f64 {
        load.0
    }
}

/// A region's state as of its latest heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionStatus {
    pub region: RegionId,
    pub state: RegionState,
    pub load: Load,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn region_id_is_a_bare_string_and_borrows_as_str() {
        let id = RegionId::new("eu-central");
        assert_eq!(serde_json::to_string(&id).expect("serializable"), r#""eu-central""#);
        let back: RegionId = serde_json::from_str(r#""eu-central""#).expect("a JSON string");
        assert_eq!(back, id);
        let map = BTreeMap::from([(id.clone(), 1)]);
        assert_eq!(map.get("eu-central"), Some(&1));
        assert_eq!(id.to_string(), "eu-central");
    }

    #[test]
    fn load_is_validated_and_clamped() {
        assert_eq!(Load::new(0.4).map(Load::get), Ok(0.4));
        assert_eq!(Load::new(1.7).map(Load::get), Ok(1.0));
        assert!(Load::new(-0.1).is_err());
        assert!(Load::new(f64::NAN).is_err());
        assert_eq!(Load::from_ratios(0.2, 0.7, 0.5).map(Load::get), Ok(0.7));
        assert!(Load::from_ratios(0.2, f64::INFINITY, 0.5).is_err());
        assert!(serde_json::from_str::<Load>("-1").is_err());
        let status: RegionStatus =
            serde_json::from_str(r#"{"region":"us-east","state":"draining","load":0.5}"#).expect("valid status JSON");
        assert_eq!(status.state, RegionState::Draining);
    }
}
