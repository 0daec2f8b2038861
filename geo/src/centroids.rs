//! Approximate geographic centres of countries, by ISO 3166-1 alpha-2 code.
//!
//! For when only a country is known: a `CF-IPCountry` header, a GeoIP Country database, or a City
//! record without a location. The table (`data/country_centroids.csv`) covers the 249 ISO 3166-1
//! codes plus `XK` (Kosovo). Its figures are approximate centres of each territory's area, written
//! from general knowledge in the manner of the public Google DSPL `countries.csv`; they are good
//! to tens of km for small countries and can be 1000 km from where people live in large ones (the
//! centre of the United States is in Kansas, of Russia in Siberia). Use a centroid as a coarse prior
//! only.

use std::sync::LazyLock;

use crate::distance::Coordinates;

const CSV: &str = include_str!("../data/country_centroids.csv");

struct Centroid {
    iso: &'static str,
    name: &'static str,
    location: Coordinates,
}

/// Parsed once. The file is compiled in and `every_row_parses_and_codes_are_unique_and_sorted`
/// checks it, so a parse failure here is a bug in this crate, never bad input.
static TABLE: LazyLock<Vec<Centroid>> = LazyLock::new(|| {
    CSV.lines()
        .skip(1) // header: iso,lat,lon,name
        .filter(|line| !line.trim().is_empty())
        .map(|line| parse_row(line).unwrap_or_else(|| panic!("bad row in country_centroids.csv: {line}")))
        .collect()
});

fn parse_row(line: &'static str) -> Option<Centroid> {
    // Names may contain commas, so split off the three leading fields only.
    let mut fields = line.splitn(4, ',');
    let iso = fields.next()?;
    let lat = fields.next()?.parse().ok()?;
    let lon = fields.next()?.parse().ok()?;
    let name = fields.next()?;
    let valid_code = iso.len() == 2 && iso.bytes().all(|b| b.is_ascii_uppercase());
    valid_code.then_some(())?;
    Some(Centroid { iso, name, location: Coordinates::new(lat, lon).ok()? })
}

/// The approximate centre of a country, by ISO 3166-1 alpha-2 code (case-insensitive).
pub fn country_centroid(iso_code: &str) -> Option<Coordinates> {
    find(iso_code).map(|c| c.location)
}

/// The English short name of a country in the table, by ISO 3166-1 alpha-2 code (case-insensitive).
pub fn country_name(iso_code: &str) -> Option<&'static str> {
    find(iso_code).map(|c| c.name)
}

fn find(iso_code: &str) -> Option<&'static Centroid> {
    let table = &*TABLE;
    let code = iso_code.trim().to_ascii_uppercase();
    // The table is sorted by code (checked by a test), so binary search works.
    table.binary_search_by(|c| c.iso.cmp(code.as_str())).ok().map(|i| &table[i])
}

/// Every ISO code in the table, in ascending order.
pub fn country_codes() -> impl Iterator<Item = &'static str> {
    TABLE.iter().map(|c| c.iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_parses_and_codes_are_unique_and_sorted() {
        let rows = CSV.lines().skip(1).filter(|l| !l.trim().is_empty()).count();
        assert_eq!(TABLE.len(), rows, "every row must parse");
        assert!(TABLE.windows(2).all(|w| w[0].iso < w[1].iso), "codes must be unique and sorted");
        assert_eq!(TABLE.len(), 250, "249 ISO 3166-1 codes plus XK");
    }

    #[test]
    fn lookups_are_case_insensitive() {
        let de = country_centroid("DE").expect("Germany is in the table");
        assert!((de.lat() - 51.17).abs() < 0.1 && (de.lon() - 10.45).abs() < 0.1);
        assert_eq!(country_centroid("de"), Some(de));
        assert_eq!(country_name("gb"), Some("United Kingdom"));
        assert_eq!(country_centroid("ZZ"), None);
        assert_eq!(country_centroid(""), None);
        assert_eq!(country_centroid("DEU"), None);
    }

    #[test]
    fn centroids_sit_on_the_right_side_of_the_world() {
        // Coarse hemisphere checks catch swapped or sign-flipped coordinates.
        let south_west = ["AR", "BR", "CL", "PE", "UY"];
        let south_east = ["AU", "NZ", "ZA", "MG", "MZ"];
        let north_west = ["US", "CA", "MX", "CU", "GL"];
        let north_east = ["DE", "RU", "CN", "IN", "JP"];
        for (codes, lat_sign, lon_sign) in
            [(south_west, -1.0, -1.0), (south_east, -1.0, 1.0), (north_west, 1.0, -1.0), (north_east, 1.0, 1.0)]
        {
            for code in codes {
                let c = country_centroid(code).expect("listed country is in the table");
                assert!(c.lat() * lat_sign > 0.0 && c.lon() * lon_sign > 0.0, "{code}: {c:?}");
            }
        }
    }
}
