//! Media tokens: what lets a machine publish to a relay's SFU (WHIP) and a player or spectator
//! watch it (WHEP).
//!
//! Signaling mints them; relays verify them. They are HS256 JWTs signed with the TURN REST secret
//! that signaling hands every relay in heartbeat replies (the newest one), so there is one secret
//! set to rotate and no extra key to distribute: a relay accepts a token signed by any secret it
//! currently accepts TURN credentials with. The audience `relay-media` keeps a media token from
//! passing for any other kind of token signed with the same key, and the claims name the machine
//! (and, for viewers, the session), so a token opens one room only.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The `aud` of every media token.
pub const AUDIENCE: &str = "relay-media";

/// What the bearer may do in the machine's room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaRole {
    /// The machine: publishes (WHIP).
    Publisher,
    /// The session's player: watches and holds the seat.
    Player,
    /// Watches only.
    Spectator,
    /// Signaling (or an admin through it): hands the machine's seat (`POST /seat/{machine}`).
    Operator,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaClaims {
    /// Who: the machine id for a publisher, the viewer's id otherwise (the seat is handed to a
    /// viewer by this id).
    pub sub: String,
    pub machine: String,
    /// The session a viewer belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub role: MediaRole,
    /// For a viewer sent to a relay other than the machine's home relay: the home relay, which
    /// the viewer's relay links to for the machine's media. Signed like the rest, so a viewer
    /// cannot point a relay at an address of its choosing (and a link goes only to a relay
    /// whose certificate from the cluster CA names this id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<HomeRelay>,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

/// A machine's home relay, as a viewer's media token names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeRelay {
    /// Its relay id (what its link certificate names).
    pub id: String,
    /// Where it listens for links: `host:port`.
    pub link: String,
}

impl MediaClaims {
    /// Claims issued at `now_unix`, valid for `ttl_secs` (`aud` is set when minted).
    pub fn new(sub: &str, machine: &str, session: Option<&str>, role: MediaRole, now_unix: u64, ttl_secs: u64) -> Self {
        Self {
            sub: sub.to_owned(),
            machine: machine.to_owned(),
            session: session.map(str::to_owned),
            role,
            home: None,
            aud: String::new(),
            iat: now_unix,
            exp: now_unix + ttl_secs,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// No secret signed it, or it is malformed, or of another audience.
    Invalid,
    /// It was valid once.
    Expired,
    /// No secret is configured to sign or verify with.
    NoKey,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Invalid => "invalid media token",
            Self::Expired => "expired media token",
            Self::NoKey => "no secret to sign or verify media tokens with",
        })
    }
}

impl std::error::Error for TokenError {}

/// Signs `claims` (its `aud` is set to [`AUDIENCE`]) with `secret`.
pub fn mint(secret: &[u8], mut claims: MediaClaims) -> Result<String, TokenError> {
    if secret.is_empty() {
        return Err(TokenError::NoKey);
    }
    claims.aud = AUDIENCE.to_owned();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .map_err(|_| TokenError::Invalid)
}

/// Checks `token` against every secret in `secrets` (rotation: any live one will do), with 30 s
/// of leeway for clock skew. Only HS256 is accepted.
pub fn verify(secrets: &[Vec<u8>], token: &str, now_unix: u64) -> Result<MediaClaims, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    // Expiry is checked below against the caller's clock, so that tests can move it.
    validation.validate_exp = false;
    let mut expired = false;
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if let Ok(data) = jsonwebtoken::decode::<MediaClaims>(token, &DecodingKey::from_secret(secret), &validation) {
            if data.claims.exp + 30 < now_unix {
                expired = true;
                continue;
            }
            return Ok(data.claims);
        }
    }
    if secrets.iter().all(|s| s.is_empty()) {
        return Err(TokenError::NoKey);
    }
    Err(if expired { TokenError::Expired } else { TokenError::Invalid })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: MediaRole, exp: u64) -> MediaClaims {
        MediaClaims {
            sub: "alice".into(),
            machine: "cab-1".into(),
            session: Some("s-1".into()),
            role,
            home: None,
            aud: String::new(),
            iat: 1000,
            exp,
        }
    }

    #[test]
    fn verifies_with_any_live_secret() {
        let token = mint(b"new", claims(MediaRole::Player, 2000)).unwrap();
        let got = verify(&[b"old".to_vec(), b"new".to_vec()], &token, 1500).unwrap();
        assert_eq!((got.role, got.machine.as_str(), got.aud.as_str()), (MediaRole::Player, "cab-1", AUDIENCE));
        assert_eq!(verify(&[b"old".to_vec()], &token, 1500), Err(TokenError::Invalid));
        assert_eq!(verify(&[b"new".to_vec()], &token, 2031), Err(TokenError::Expired));
        assert_eq!(verify(&[], &token, 1500), Err(TokenError::NoKey));
        assert_eq!(mint(b"", claims(MediaRole::Player, 2000)), Err(TokenError::NoKey));
    }

    #[test]
    fn refuses_other_audiences_and_algorithms() {
        let mut c = claims(MediaRole::Publisher, 2000);
        c.aud = "something-else".into();
        let other = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &EncodingKey::from_secret(b"k")).unwrap();
        assert_eq!(verify(&[b"k".to_vec()], &other, 1500), Err(TokenError::Invalid));
        let good = mint(b"k", claims(MediaRole::Publisher, 2000)).unwrap();
        // The same token with "alg": "none" and no signature.
        let parts: Vec<&str> = good.split('.').collect();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert_eq!(verify(&[b"k".to_vec()], &none, 1500), Err(TokenError::Invalid));
        assert_eq!(verify(&[b"k".to_vec()], "garbage", 1500), Err(TokenError::Invalid));
    }
}
