//! Bearer tokens: HS256 JWTs with a role claim, as hosted media services issue them (LiveKit's
//! access tokens, Twilio's): `{"sub": "...", "role": "player|machine|admin", "iat": .., "exp": ..}`.
//!
//! - a **player** token's `sub` is the player's id; it may ask for ICE configs and sessions;
//! - a **machine** token's `sub` is the machine's id; the machine registers and heartbeats as
//!   that id and nothing else;
//! - an **admin** token may do everything, including the admin API behind `relayctl`.
//!
//! Relays do not use JWTs: they present the cluster token from the config (compared in constant
//! time), because they are configured by the operator rather than issued to users.
//!
//! Tokens are checked for signature, algorithm (only HS256 is accepted: no `none`, no key
//! confusion), expiry (with 30 s leeway for clock skew) and a well-formed subject.

use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// What a token allows (declared with the API, which names it in token answers).
pub use signaling_api::admin::Role;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
}

/// Longest subject accepted (it ends up in TURN usernames, which must stay under 513 bytes).
pub const MAX_SUBJECT: usize = 128;

/// Subjects are ids: printable ASCII without spaces or `:` (the TURN REST username separator).
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SUBJECT && s.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Signs and checks tokens with one HS256 key.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    /// Mints a token for `sub` with `role`, valid for `ttl_secs` from `now_unix`.
    pub fn mint(&self, sub: &str, role: Role, now_unix: u64, ttl_secs: u64) -> anyhow::Result<String> {
        anyhow::ensure!(valid_subject(sub), "subject must be 1-{MAX_SUBJECT} printable ASCII characters without ':'");
        let claims = Claims { sub: sub.to_owned(), role, iat: now_unix, exp: now_unix + ttl_secs };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::InvalidSignature => "token signature is invalid",
                ErrorKind::InvalidAlgorithm => "token algorithm is not HS256",
                _ => "token is malformed",
            };
            ApiError::Unauthorized(why.into())
        })?;
        if !valid_subject(&data.claims.sub) {
            return Err(ApiError::Unauthorized("token subject is malformed".into()));
        }
        Ok(data.claims)
    }
}

/// The bearer token of a request, verified. Handlers take this and check the role they need.
#[derive(Debug, Clone)]
pub struct Bearer(pub Claims);

impl Bearer {
    /// Passes if the token has one of `roles` (admin always passes).
    pub fn require(&self, roles: &[Role]) -> Result<&Claims, ApiError> {
        if self.0.role == Role::Admin || roles.contains(&self.0.role) {
            Ok(&self.0)
        } else {
            Err(ApiError::Forbidden(format!("a {} token cannot do this", self.0.role.as_str())))
        }
    }

    pub fn is_admin(&self) -> bool {
        self.0.role == Role::Admin
    }
}

/// The raw bearer string of a request.
pub fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer token".into()))?;
    let value = value.to_str().map_err(|_| ApiError::Unauthorized("Authorization header is not ASCII".into()))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(ApiError::Unauthorized("expected Authorization: Bearer <token>".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_verify() {
        let keys = Keys::new(&[7u8; 32]);
        let now = cluster::time::unix_now();
        let t = keys.mint("alice", Role::Player, now, 60).unwrap();
        let c = keys.verify(&t).unwrap();
        assert_eq!((c.sub.as_str(), c.role), ("alice", Role::Player));
        assert!(
            matches!(keys.verify(&keys.mint("alice", Role::Player, now - 1000, 60).unwrap()), Err(ApiError::Unauthorized(m)) if m == "token expired")
        );
        let other = Keys::new(&[8u8; 32]);
        assert!(matches!(other.verify(&t), Err(ApiError::Unauthorized(m)) if m.contains("signature")));
        assert!(keys.mint("a:b", Role::Player, now, 60).is_err());
        assert!(keys.verify("not.a.jwt").is_err());
    }

    #[test]
    fn alg_none_is_refused() {
        let keys = Keys::new(&[7u8; 32]);
        // {"alg":"none","typ":"JWT"} . {"sub":"x","role":"admin","iat":0,"exp":9999999999} .
        let token =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4Iiwicm9sZSI6ImFkbWluIiwiaWF0IjowLCJleHAiOjk5OTk5OTk5OTl9.";
        assert!(keys.verify(token).is_err());
    }
}
