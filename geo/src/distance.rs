//! Coordinates, great-circle distance and the distance → RTT heuristic.
//!
//! [`estimate_rtt_ms`] is a rule of thumb that no measurement backs (notes/geo-routing.md §4): light
//! in fiber covers about 200 km per millisecond, real routes are 1.5–2× the great-circle distance,
//! and the last mile adds 5–15 ms. So the round trip over `d` km is
//! `2·(1.6·d/200) + 10` ms. It is used only when the client could not probe a region, and to
//! estimate the machine's leg when the machine has not measured it.

use serde::{Deserialize, Serialize};

/// Mean Earth radius (IUGG). LiveKit's region-aware selector uses the equatorial 6378.1 km; the
/// difference (0.1%) is far below the heuristic's error.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;
/// Propagation speed in fiber, km per millisecond (≈ c/1.5).
pub const FIBER_KM_PER_MS: f64 = 200.0;
/// Real routes are 1.5–2× the great-circle distance; 1.6 is the notes' working value.
pub const PATH_STRETCH: f64 = 1.6;
/// Access network and processing, added once per round trip (the notes give 5–15 ms).
pub const LAST_MILE_MS: f64 = 10.0;
/// A GeoIP accuracy radius above this many km makes the location suspect (notes §8 step 1).
pub const ACCURACY_PENALTY_MIN_KM: u16 = 500;
/// Milliseconds added per km of accuracy radius once it is above [`ACCURACY_PENALTY_MIN_KM`].
pub const ACCURACY_PENALTY_MS_PER_KM: f64 = 0.01;

/// A point on Earth in degrees. Latitude is within −90..=90 and longitude within −180..=180; the
/// constructor and the deserializer both enforce it, so every value of this type is finite and in
/// range.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawCoordinates")]
pub struct Coordinates {
    lat: f64,
    lon: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordinates {
    lat: f64,
    lon: f64,
}

/// A latitude or longitude out of range (NaN included).
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum CoordinatesError {
    #[error("latitude {0} is not within -90..=90 degrees")]
    Latitude(f64),
    #[error("longitude {0} is not within -180..=180 degrees")]
    Longitude(f64),
}

impl Coordinates {
    pub fn new(lat: f64, lon: f64) -> Result<Self, CoordinatesError> {
        // `contains` is false for NaN, so NaN is rejected here too.
        if !(-90.0..=90.0).contains(&lat) {
            return Err(CoordinatesError::Latitude(lat));
        }
        if !(-180.0..=180.0).contains(&lon) {
            return Err(CoordinatesError::Longitude(lon));
        }
        Ok(Self { lat, lon })
    }

    /// Latitude in degrees, north positive.
    pub fn lat(self) -> f64 {
        self.lat
    }

    /// Longitude in degrees, east positive.
    pub fn lon(self) -> f64 {
        self.lon
    }
}

impl TryFrom<RawCoordinates> for Coordinates {
    type Error = CoordinatesError;

    fn try_from(raw: RawCoordinates) -> Result<Self, Self::Error> {
        Self::new(raw.lat, raw.lon)
    }
}

/// Great-circle distance in km (haversine formula, spherical Earth of radius [`EARTH_RADIUS_KM`]).
pub fn haversine_km(a: Coordinates, b: Coordinates) -> f64 {
    let (phi1, phi2) = (a.lat.to_radians(), b.lat.to_radians());
    let d_phi = phi2 - phi1;
    let d_lambda = (b.lon - a.lon).to_radians();
    let h = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    // Rounding can push `h` a hair above 1 for antipodal points, where asin is undefined.
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Estimated round-trip time over `km` of great-circle distance: `2·(1.6·km/200) + 10` ms.
///
/// A heuristic (see the module docs); negative or NaN distances count as 0.
pub fn estimate_rtt_ms(km: f64) -> f64 {
    let km = if km.is_nan() { 0.0 } else { km.max(0.0) };
    2.0 * (PATH_STRETCH * km / FIBER_KM_PER_MS) + LAST_MILE_MS
}

/// Extra milliseconds for an imprecise GeoIP location: `0.01·radius` when the accuracy radius is
/// above 500 km, else 0. MaxMind's radius is the 67%-confidence radius in km.
pub fn accuracy_penalty_ms(accuracy_radius_km: Option<u16>) -> f64 {
    match accuracy_radius_km {
        Some(radius) if radius > ACCURACY_PENALTY_MIN_KM => ACCURACY_PENALTY_MS_PER_KM * f64::from(radius),
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lat: f64, lon: f64) -> Coordinates {
        Coordinates::new(lat, lon).expect("test coordinates are in range")
    }

    #[test]
    fn coordinates_reject_out_of_range_and_nan() {
        assert_eq!(Coordinates::new(90.5, 0.0), Err(CoordinatesError::Latitude(90.5)));
        assert_eq!(Coordinates::new(0.0, -180.5), Err(CoordinatesError::Longitude(-180.5)));
        assert!(Coordinates::new(f64::NAN, 0.0).is_err());
        assert!(Coordinates::new(0.0, f64::INFINITY).is_err());
        assert!(Coordinates::new(-90.0, 180.0).is_ok());
    }

    #[test]
    fn coordinates_deserialize_through_validation() {
        let ok: Coordinates = serde_json::from_str(r#"{"lat":51.5,"lon":-0.1}"#).expect("valid JSON coordinates");
        assert_eq!(ok, at(51.5, -0.1));
        assert!(serde_json::from_str::<Coordinates>(r#"{"lat":95,"lon":0}"#).is_err());
        assert!(serde_json::from_str::<Coordinates>(r#"{"lat":1,"lon":0,"alt":3}"#).is_err());
        assert_eq!(serde_json::to_string(&ok).expect("serializable"), r#"{"lat":51.5,"lon":-0.1}"#);
    }

    #[test]
    fn haversine_matches_known_distances() {
        // London–Frankfurt is about 637 km; London–New York about 5570 km.
        let london = at(51.5074, -0.1278);
        let frankfurt = at(50.1109, 8.6821);
        let new_york = at(40.7128, -74.0060);
        assert!((haversine_km(london, frankfurt) - 637.0).abs() < 5.0);
        assert!((haversine_km(london, new_york) - 5570.0).abs() < 15.0);
        assert_eq!(haversine_km(london, london), 0.0);
        // Antipodes: half the circumference, no NaN.
        let half = std::f64::consts::PI * EARTH_RADIUS_KM;
        assert!((haversine_km(at(0.0, 0.0), at(0.0, 180.0)) - half).abs() < 1e-6);
    }

    #[test]
    fn rtt_heuristic_follows_the_notes() {
        assert_eq!(estimate_rtt_ms(0.0), 10.0);
        // 1000 km: 2 · 1.6 · 1000 / 200 + 10 = 26 ms.
        assert!((estimate_rtt_ms(1000.0) - 26.0).abs() < 1e-9);
        assert_eq!(estimate_rtt_ms(-5.0), 10.0);
        assert_eq!(estimate_rtt_ms(f64::NAN), 10.0);
    }

    #[test]
    fn accuracy_penalty_only_above_500_km() {
        assert_eq!(accuracy_penalty_ms(None), 0.0);
        assert_eq!(accuracy_penalty_ms(Some(500)), 0.0);
        assert!((accuracy_penalty_ms(Some(534)) - 5.34).abs() < 1e-9);
        assert!((accuracy_penalty_ms(Some(1000)) - 10.0).abs() < 1e-9);
    }
}
