//! TURN REST credentials (draft-uberti-behave-turn-rest-00, coturn's `use-auth-secret`).
//!
//! The username is `<unix-expiry>[:<id>]` and the password is `base64(HMAC-SHA1(secret,
//! username))`. The relay needs no call-back: it recomputes the password from the username with
//! each secret it knows, and refuses an Allocate whose expiry has passed. Several secrets may be
//! live at once, which is how they are rotated without dropping sessions.

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;

/// RFC 8489 §14.3: USERNAME is under 513 bytes. Ids that would make it longer are refused.
pub const MAX_USERNAME_LEN: usize = 512;

/// The password of a TURN REST username under `secret`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    BASE64_STANDARD.encode(mac.finalize().into_bytes())
}

/// A TURN REST username for a credential valid until `expiry` (unix seconds), with an optional id.
pub fn rest_username(expiry: u64, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{expiry}:{id}"),
        None => expiry.to_string(),
    }
}

/// The expiry of a TURN REST username: the digits before the first `:` (or the whole username).
pub fn rest_expiry(username: &str) -> Option<u64> {
    let stamp = username.split_once(':').map_or(username, |(t, _)| t);
    if stamp.is_empty() || !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stamp.parse().ok()
}

/// A minted credential: what goes into an `RTCIceServer`'s `username` and `credential`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestCredential {
    pub username: String,
    pub credential: String,
    /// Unix seconds after which the relay refuses new allocations with it.
    pub expires_at: u64,
}

/// Why a credential could not be minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MintError {
    /// The id contains a character that would change the username's meaning or break SDP/JSON
    /// consumers (`:` is allowed: the expiry is what precedes the first one).
    BadId,
    /// The username would exceed [`MAX_USERNAME_LEN`].
    TooLong,
}

impl std::fmt::Display for MintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadId => f.write_str("credential id must be printable ASCII without spaces"),
            Self::TooLong => write!(f, "credential username would exceed {MAX_USERNAME_LEN} bytes"),
        }
    }
}

impl std::error::Error for MintError {}

/// Mints a credential valid for `ttl_secs` from `now_unix`, signed with `secret`.
pub fn mint(secret: &[u8], now_unix: u64, ttl_secs: u64, id: Option<&str>) -> Result<RestCredential, MintError> {
    if let Some(id) = id
        && (id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(MintError::BadId);
    }
    let expires_at = now_unix.saturating_add(ttl_secs);
    let username = rest_username(expires_at, id);
    if username.len() > MAX_USERNAME_LEN {
        return Err(MintError::TooLong);
    }
    let credential = rest_password(secret, &username);
    Ok(RestCredential { username, credential, expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_matches_openssl() {
        // printf '%s' 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(rest_password(b"secret", "1700000000:alice"), "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }

    #[test]
    fn mint_round_trips_through_expiry() {
        let c = mint(b"s", 1_000, 600, Some("ses_1:player")).unwrap();
        assert_eq!(c.username, "1600:ses_1:player");
        assert_eq!(rest_expiry(&c.username), Some(1600));
        assert_eq!(c.credential, rest_password(b"s", "1600:ses_1:player"));
        assert_eq!(mint(b"s", 5, 5, None).unwrap().username, "10");
    }

    #[test]
    fn mint_refuses_bad_ids() {
        assert_eq!(mint(b"s", 0, 1, Some("a b")), Err(MintError::BadId));
        assert_eq!(mint(b"s", 0, 1, Some("")), Err(MintError::BadId));
        assert_eq!(mint(b"s", 0, 1, Some(&"x".repeat(600))), Err(MintError::TooLong));
    }

    #[test]
    fn expiry_needs_leading_digits() {
        assert_eq!(rest_expiry("alice"), None);
        assert_eq!(rest_expiry(":1"), None);
        assert_eq!(rest_expiry("12a:b"), None);
        assert_eq!(rest_expiry("99999999999999999999999"), None);
    }
}
