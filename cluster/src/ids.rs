//! Region and relay ids, as both sides accept them: they appear in URLs, metrics labels and the
//! heartbeat, so a relay configured with an id signaling would refuse fails at start instead.

/// Longest region or relay id: 64 bytes.
pub const MAX_ID_LEN: usize = 64;

/// A region id: 1 to [`MAX_ID_LEN`] of `a-z`, `0-9` and `-`.
pub fn valid_region_id(s: &str) -> bool {
    valid(s, is_region_byte)
}

/// A relay id: like a region id, plus `.` (relays default to their host name).
pub fn valid_relay_id(s: &str) -> bool {
    valid(s, |b| is_region_byte(b) || b == b'.')
}

/// What a region id may hold, in words, for error messages.
pub const REGION_ID_CHARS: &str = "a-z, 0-9 and '-'";
/// What a relay id may hold, in words.
pub const RELAY_ID_CHARS: &str = "a-z, 0-9, '-' and '.'";

fn is_region_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

fn valid(s: &str, allowed: fn(u8) -> bool) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && s.bytes().all(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_and_relay_ids() {
        for ok in ["eu-central", "a", "us-east-1"] {
            assert!(valid_region_id(ok) && valid_relay_id(ok), "{ok}");
        }
        assert!(valid_relay_id("relay-1.example.org") && !valid_region_id("relay-1.example.org"));
        for bad in ["", "EU", "eu_central", "eu central", "é"] {
            assert!(!valid_region_id(bad) && !valid_relay_id(bad), "{bad:?}");
        }
        assert!(valid_relay_id(&"a".repeat(64)) && !valid_relay_id(&"a".repeat(65)));
    }
}
