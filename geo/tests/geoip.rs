//! GeoIP lookups against MaxMind's test databases (records listed in GeoLite2-City-Test.json next
//! to them).

use std::net::IpAddr;
use std::path::PathBuf;

use geo::{
    Coordinates, GeoIp, GeoIpError, GeoLocation, accuracy_penalty_ms, country_centroid, estimate_rtt_ms, haversine_km,
};

/// The shared test data sits beside the repository: `<repo>/../shared/testdata/geoip`.
fn testdata(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/geoip").join(file)
}

fn city_db() -> GeoIp {
    let path = testdata("GeoLite2-City-Test.mmdb");
    GeoIp::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address parses")
}

fn assert_near(location: &GeoLocation, lat: f64, lon: f64) {
    let c = location.coordinates;
    assert!((c.lat() - lat).abs() < 1e-6 && (c.lon() - lon).abs() < 1e-6, "{location:?} is not at {lat},{lon}");
}

#[test]
fn city_records() {
    let db = city_db();
    assert_eq!(db.database_type(), "GeoLite2-City");
    assert!(db.build_epoch() > 0);

    let london = db.lookup(ip("81.2.69.142")).expect("London is in the test database");
    assert_near(&london, 51.5142, -0.0931);
    assert_eq!(london.accuracy_radius_km, Some(10));
    assert_eq!(london.country.as_deref(), Some("GB"));

    let boxford = db.lookup(ip("2.125.160.216")).expect("Boxford is in the test database");
    assert_near(&boxford, 51.75, -1.25);
    assert_eq!((boxford.accuracy_radius_km, boxford.country.as_deref()), (Some(100), Some("GB")));

    let bhutan = db.lookup(ip("67.43.156.77")).expect("67.43.156.0/24 is in the test database");
    assert_near(&bhutan, 27.5, 90.5);
    assert_eq!((bhutan.accuracy_radius_km, bhutan.country.as_deref()), (Some(534), Some("BT")));
}

#[test]
fn ipv6_and_mapped_addresses() {
    let db = city_db();
    let tokyo = db.lookup(ip("2001:218::1")).expect("2001:218::/32 is in the test database");
    assert_eq!(tokyo.country.as_deref(), Some("JP"));
    assert_near(&tokyo, 35.68536, 139.75309);

    // Dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d.
    let mapped = db.lookup(ip("::ffff:81.2.69.142")).expect("mapped London address");
    assert_near(&mapped, 51.5142, -0.0931);

    // A record with coordinates but no country.
    let no_country = db.lookup(ip("2a02:d500::1")).expect("2a02:d500::/29 is in the test database");
    assert_eq!(no_country.country, None);
    assert_near(&no_country, 48.69096, 9.14062);
}

#[test]
fn non_global_and_unknown_addresses_give_none() {
    let db = city_db();
    for addr in ["10.0.0.1", "192.168.1.20", "127.0.0.1", "100.64.1.1", "169.254.0.9", "::1", "fe80::1", "fd12::1"] {
        assert_eq!(db.lookup(ip(addr)), None, "{addr}");
        assert!(matches!(db.try_lookup(ip(addr)), Ok(None)), "{addr}");
    }
    // Public, but not in the test database.
    assert_eq!(db.lookup(ip("1.1.1.1")), None);
    assert_eq!(db.lookup(ip("2606:4700::1111")), None);
}

#[test]
fn country_database_falls_back_to_the_centroid() {
    let path = testdata("GeoLite2-Country-Test.mmdb");
    let db = GeoIp::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    assert_eq!(db.database_type(), "GeoLite2-Country");
    let london = db.lookup(ip("81.2.69.142")).expect("81.2.69.142 is in the country test database");
    assert_eq!(london.country.as_deref(), Some("GB"));
    assert_eq!(Some(london.coordinates), country_centroid("GB"));
    assert_eq!(london.accuracy_radius_km, None);
}

#[test]
fn from_bytes_and_open_errors() {
    let bytes = std::fs::read(testdata("GeoLite2-City-Test.mmdb")).expect("test database is readable");
    let db = GeoIp::from_bytes(bytes).expect("valid database bytes");
    assert!(db.lookup(ip("81.2.69.142")).is_some());

    assert!(matches!(GeoIp::from_bytes(b"not a database".to_vec()), Err(GeoIpError::Invalid(_))));
    let missing = testdata("no-such.mmdb");
    match GeoIp::open(&missing) {
        Err(GeoIpError::Open { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an open error, got {other:?}"),
    }
}

#[test]
fn rtt_estimate_from_a_lookup() {
    let db = city_db();
    let frankfurt = Coordinates::new(50.11, 8.68).expect("in range");
    let london = db.lookup(ip("81.2.69.142")).expect("London is in the test database");
    // ~ 640 km: 2·1.6·640/200 + 10 ≈ 20 ms; a 10 km radius adds nothing.
    let estimate = london.estimate_rtt_ms(frankfurt);
    assert!((19.0..22.0).contains(&estimate), "{estimate}");

    // Bhutan's 534 km radius adds 5.34 ms.
    let bhutan = db.lookup(ip("67.43.156.1")).expect("Bhutan is in the test database");
    let expected = estimate_rtt_ms(haversine_km(bhutan.coordinates, frankfurt)) + 5.34;
    assert!((bhutan.estimate_rtt_ms(frankfurt) - expected).abs() < 1e-9);
    assert!((accuracy_penalty_ms(bhutan.accuracy_radius_km) - 5.34).abs() < 1e-9);
}
