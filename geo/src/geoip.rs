//! Client location from a MaxMind DB (GeoLite2 City, GeoIP2 City, or DB-IP Lite City, which uses
//! the same layout), read with the `maxminddb` crate.
//!
//! A lookup yields a [`GeoLocation`]: coordinates, MaxMind's accuracy radius (km at 67% confidence)
//! and the ISO country code. Addresses that are not globally routable (private, loopback,
//! link-local, CGNAT, documentation, multicast…) give `None` without touching the database: they
//! say nothing about where the client is, and usually mean signaling sits behind a proxy whose
//! forwarding header was not trusted. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as dual-stack
//! sockets report them) are looked up as IPv4.
//!
//! When a record has a country but no coordinates (a Country database, or a City record without a
//! location) the country's approximate centre ([`crate::country_centroid`]) stands in, with no
//! accuracy radius.
//!
//! Licences: GeoLite2 needs an account and attribution and must be kept up to date (MaxMind asks
//! that old copies be destroyed; Elastic reads it as 30 days), see [`GeoIp::build_epoch`]. DB-IP
//! Lite is CC BY 4.0, attribution only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use maxminddb::{MaxMindDbError, Reader, geoip2};
use serde::{Deserialize, Serialize};

use crate::centroids::country_centroid;
use crate::distance::{Coordinates, accuracy_penalty_ms, estimate_rtt_ms, haversine_km};

/// Where GeoIP puts a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeoLocation {
    pub coordinates: Coordinates,
    /// MaxMind's accuracy radius in km (67% confidence); `None` if the database gives none or the
    /// coordinates are a country centroid.
    pub accuracy_radius_km: Option<u16>,
    /// ISO 3166-1 alpha-2 code.
    pub country: Option<String>,
}

impl GeoLocation {
    /// The centre of a country, for when only the country is known (e.g. Cloudflare's
    /// `CF-IPCountry` header). `None` for codes not in the centroid table.
    pub fn from_country(iso_code: &str) -> Option<Self> {
        let coordinates = country_centroid(iso_code)?;
        Some(Self { coordinates, accuracy_radius_km: None, country: Some(iso_code.trim().to_ascii_uppercase()) })
    }

    /// Heuristic RTT from here to `to`: [`estimate_rtt_ms`] of the distance plus
    /// [`accuracy_penalty_ms`] of this location's radius.
    pub fn estimate_rtt_ms(&self, to: Coordinates) -> f64 {
        estimate_rtt_ms(haversine_km(self.coordinates, to)) + accuracy_penalty_ms(self.accuracy_radius_km)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    #[error("cannot open GeoIP database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: MaxMindDbError,
    },
    #[error("not a valid GeoIP database")]
    Invalid(#[source] MaxMindDbError),
    #[error("GeoIP lookup of {ip} failed")]
    Lookup {
        ip: IpAddr,
        #[source]
        source: MaxMindDbError,
    },
}

/// An open MaxMind DB, held in memory. Lookups take `&self`; share it behind an `Arc` and swap the
/// whole value to reload a newer database.
pub struct GeoIp {
    reader: Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let metadata = self.reader.metadata();
        f.debug_struct("GeoIp")
            .field("database_type", &metadata.database_type)
            .field("build_epoch", &metadata.build_epoch)
            .finish()
    }
}

impl GeoIp {
    /// Reads the whole database file into memory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GeoIpError> {
        let path = path.as_ref();
        let reader =
            Reader::open_readfile(path).map_err(|source| GeoIpError::Open { path: path.to_path_buf(), source })?;
        Ok(Self { reader })
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GeoIpError> {
        Ok(Self { reader: Reader::from_source(bytes).map_err(GeoIpError::Invalid)? })
    }

    /// The database's type, e.g. `GeoLite2-City`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// When the database was built, in seconds since the Unix epoch; for checking it is current.
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// The client's location, or `None` if the address is not globally routable, not in the
    /// database, has neither coordinates nor a known country, or the record cannot be decoded. Use
    /// [`GeoIp::try_lookup`] to tell the last case apart.
    pub fn lookup(&self, ip: IpAddr) -> Option<GeoLocation> {
        self.try_lookup(ip).ok().flatten()
    }

    /// Like [`GeoIp::lookup`], but a database error (a corrupt record, an IPv6 address in an
    /// IPv4-only database) is an `Err` rather than `None`.
    pub fn try_lookup(&self, ip: IpAddr) -> Result<Option<GeoLocation>, GeoIpError> {
        let ip = ip.to_canonical();
        if !is_globally_routable(ip) {
            return Ok(None);
        }
        let lookup_error = |source| GeoIpError::Lookup { ip, source };
        let result = self.reader.lookup(ip).map_err(lookup_error)?;
        let Some(city) = result.decode::<geoip2::City<'_>>().map_err(lookup_error)? else {
            return Ok(None);
        };
        let country = city.country.iso_code.map(str::to_owned);
        let location = &city.location;
        let coordinates = match (location.latitude, location.longitude) {
            (Some(lat), Some(lon)) => Coordinates::new(lat, lon).ok(),
            _ => None,
        };
        Ok(match (coordinates, country) {
            (Some(coordinates), country) => {
                Some(GeoLocation { coordinates, accuracy_radius_km: location.accuracy_radius, country })
            }
            (None, Some(country)) => GeoLocation::from_country(&country),
            (None, None) => None,
        })
    }
}

/// False for addresses that cannot identify a client's location: the special-purpose ranges of
/// RFC 6890 and its successors that are not forwardable on the public Internet. Expects a canonical
/// address (IPv4-mapped IPv6 already converted).
fn is_globally_routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0 // "this network", RFC 791
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT), RFC 6598
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments, RFC 6890
        || (a == 198 && (18..20).contains(&b)) // benchmarking, RFC 2544
        || a >= 240) // reserved, RFC 1112
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local, RFC 4193
        || (first & 0xffc0) == 0xfe80 // link-local unicast, RFC 4291
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation, RFC 3849
        || (first == 0x0100 && ip.segments()[1..4] == [0, 0, 0])) // discard-only, RFC 6666
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_purpose_addresses_are_not_routable() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "2001:db8::1",
            "ff02::1",
            "100::1",
        ] {
            let ip: IpAddr = ip.parse().expect("test address parses");
            assert!(!is_globally_routable(ip.to_canonical()), "{ip}");
        }
        for ip in ["81.2.69.142", "8.8.8.8", "100.128.0.1", "2001:218::1", "2a02:d180::1"] {
            let ip: IpAddr = ip.parse().expect("test address parses");
            assert!(is_globally_routable(ip), "{ip}");
        }
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("test address parses");
        assert!(!is_globally_routable(mapped.to_canonical()));
    }

    #[test]
    fn from_country_uses_the_centroid() {
        let loc = GeoLocation::from_country("de").expect("Germany is in the table");
        assert_eq!(loc.country.as_deref(), Some("DE"));
        assert_eq!(loc.accuracy_radius_km, None);
        assert_eq!(Some(loc.coordinates), country_centroid("DE"));
        assert_eq!(GeoLocation::from_country("ZZ"), None);
    }
}
