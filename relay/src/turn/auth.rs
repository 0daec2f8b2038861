//! The long-term credential mechanism (RFC 8489 §9.2) with two sources of credentials, and
//! stateless nonces.
//!
//! - **Static users** from the config: username and password, turned into the MD5 key once.
//! - **TURN REST credentials** (draft-uberti-behave-turn-rest, coturn's `use-auth-secret`):
//!   username `<unix-expiry>[:<id>]`, password `base64(HMAC-SHA1(secret, username))`. Several
//!   secrets may be configured at once; a credential signed by any of them is accepted, so an
//!   operator rotates by adding the new secret, waiting out the credential TTL, then removing the
//!   old one. Expiry is checked when an allocation is created; an allocation keeps the key it was
//!   created with, so removing a secret never drops a running session (as coturn and LiveKit do;
//!   eturnal's `strict_expiry` is the other choice).
//!
//! **Nonces are stateless** (as coturn's `--stateless-nonce` and pion's nonce.go): a nonce is the
//! time it was issued (seconds since the process's epoch) and an HMAC-SHA256 over that time and the
//! client's transport address, so a 401 creates no state and a nonce cannot be moved to another
//! client. A nonce older than the configured lifetime, from a previous process, or tampered with is
//! "no longer valid" and gets 438 (RFC 8489 §9.2.4), after which the client retries with the fresh
//! nonce the 438 carries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::wire::{ATTR_MESSAGE_INTEGRITY, STUN_HEADER};

/// MD5(username ":" realm ":" password), the long-term key (RFC 8489 §9.2.2).
pub type Key = [u8; 16];

pub fn long_term_key(username: &str, realm: &str, password: &str) -> Key {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

// The TURN REST scheme itself is shared with signaling, which mints what this module verifies.
pub use cluster::credentials::{rest_expiry, rest_password, rest_username};

/// Where a username's key came from, which decides whether its expiry is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Static,
    Rest { expiry: u64 },
}

/// The credentials the relay accepts.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    realm: String,
    users: HashMap<String, Key>,
    secrets: Vec<Vec<u8>>,
}

/// The keys a username could be using: one per configured secret for REST usernames.
#[derive(Debug, Default)]
pub struct Candidates {
    pub kind: Option<CredentialKind>,
    pub keys: Vec<Key>,
}

impl Credentials {
    pub fn new(realm: &str, users: &[(String, String)], secrets: Vec<Vec<u8>>) -> Self {
        let users = users.iter().map(|(name, password)| (name.clone(), long_term_key(name, realm, password))).collect();
        Self { realm: realm.to_owned(), users, secrets }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The candidate keys for `username`; empty if the username is unknown. A static user of the
    /// same name as a REST username takes precedence.
    pub fn candidates(&self, username: &str) -> Candidates {
        if let Some(key) = self.users.get(username) {
            return Candidates { kind: Some(CredentialKind::Static), keys: vec![*key] };
        }
        match rest_expiry(username) {
            Some(expiry) if !self.secrets.is_empty() => Candidates {
                kind: Some(CredentialKind::Rest { expiry }),
                keys: self
                    .secrets
                    .iter()
                    .map(|secret| long_term_key(username, &self.realm, &rest_password(secret, username)))
                    .collect(),
            },
            _ => Candidates::default(),
        }
    }
}

/// Checks MESSAGE-INTEGRITY (RFC 8489 §14.5): HMAC-SHA1 with `key` over the message up to the
/// attribute, with the header's length field set as if the attribute ended the message.
/// Constant-time comparison. `integrity_at` is the offset of the attribute's type field.
pub fn verify_integrity(packet: &[u8], integrity_at: usize, key: &Key) -> bool {
    let Some(attr) = packet.get(integrity_at..integrity_at + 24) else {
        return false;
    };
    if u16::from_be_bytes([attr[0], attr[1]]) != ATTR_MESSAGE_INTEGRITY || integrity_at < STUN_HEADER {
        return false;
    }
    let expected = integrity(&packet[..integrity_at], key);
    expected.ct_eq(&attr[4..24]).into()
}

/// HMAC-SHA1 over `message` (header and attributes before MESSAGE-INTEGRITY), length-adjusted to
/// include the 24-byte MESSAGE-INTEGRITY attribute.
pub fn integrity(message: &[u8], key: &Key) -> [u8; 20] {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    let len = (message.len() - STUN_HEADER + 24) as u16;
    mac.update(&message[..2]);
    mac.update(&len.to_be_bytes());
    mac.update(&message[4..]);
    mac.finalize().into_bytes().into()
}

/// Issues and checks stateless nonces. One per process (shared by all workers), so a client's nonce
/// stays valid whichever worker sees it.
#[derive(Clone)]
pub struct NonceSource {
    key: [u8; 32],
    epoch: Instant,
    lifetime: Duration,
}

impl std::fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceSource").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

/// Nonce layout: 16 hex digits of issue time, 32 hex digits of MAC (128 bits). 48 characters, well
/// under RFC 8489's 128-character limit, and plain ASCII as the quoted-string grammar wants.
const NONCE_LEN: usize = 48;

impl NonceSource {
    pub fn new(key: [u8; 32], epoch: Instant, lifetime: Duration) -> Self {
        Self { key, epoch, lifetime }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The same source (nonces it issued stay valid) with another lifetime (config reload).
    pub fn with_lifetime(&self, lifetime: Duration) -> Self {
        Self { lifetime, ..self.clone() }
    }

    pub fn issue(&self, now: Instant, client: SocketAddr) -> String {
        let issued = now.saturating_duration_since(self.epoch).as_secs();
        let mac = self.mac(issued, client);
        let mut out = String::with_capacity(NONCE_LEN);
        push_hex(&mut out, &issued.to_be_bytes());
        push_hex(&mut out, &mac);
        out
    }

    /// True if `nonce` was issued by this source to `client` within the lifetime.
    pub fn is_valid(&self, now: Instant, client: SocketAddr, nonce: &str) -> bool {
        let b = nonce.as_bytes();
        if b.len() != NONCE_LEN {
            return false;
        }
        let (Some(issued), Some(mac)) = (parse_hex::<8>(&b[..16]), parse_hex::<16>(&b[16..])) else {
            return false;
        };
        let issued = u64::from_be_bytes(issued);
        let expected = self.mac(issued, client);
        if !bool::from(expected.ct_eq(&mac)) {
            return false;
        }
        let age = now.saturating_duration_since(self.epoch).as_secs().checked_sub(issued);
        matches!(age, Some(age) if age < self.lifetime.as_secs())
    }

    fn mac(&self, issued: u64, client: SocketAddr) -> [u8; 16] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(&issued.to_be_bytes());
        match client {
            SocketAddr::V4(a) => mac.update(&a.ip().octets()),
            SocketAddr::V6(a) => mac.update(&a.ip().octets()),
        }
        mac.update(&client.port().to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xF)] as char);
    }
}

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_coturn_formula() {
        // Known value computed with: printf '%s' 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(rest_password(b"secret", "1700000000:alice"), "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }

    #[test]
    fn rest_expiry_parses_the_timestamp_prefix() {
        assert_eq!(rest_expiry("1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry("1700000000:alice"), Some(1_700_000_000));
        assert_eq!(rest_expiry("1700000000:a:b"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice"), None);
        assert_eq!(rest_expiry(":alice"), None);
        assert_eq!(rest_expiry("+17:alice"), None);
        assert_eq!(rest_expiry("99999999999999999999999"), None);
    }

    #[test]
    fn candidates_one_key_per_secret_and_static_first() {
        let creds = Credentials::new("r", &[("alice".into(), "pw".into())], vec![b"one".to_vec(), b"two".to_vec()]);
        let c = creds.candidates("alice");
        assert_eq!(c.kind, Some(CredentialKind::Static));
        assert_eq!(c.keys, vec![long_term_key("alice", "r", "pw")]);
        let c = creds.candidates("42:bob");
        assert_eq!(c.kind, Some(CredentialKind::Rest { expiry: 42 }));
        assert_eq!(c.keys.len(), 2);
        assert_eq!(c.keys[1], long_term_key("42:bob", "r", &rest_password(b"two", "42:bob")));
        assert!(creds.candidates("bob").keys.is_empty());
        assert!(Credentials::new("r", &[], vec![]).candidates("42").keys.is_empty());
    }

    #[test]
    fn nonces_are_bound_to_client_and_time() {
        let epoch = Instant::now();
        let source = NonceSource::new([9; 32], epoch, Duration::from_secs(600));
        let client: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        let nonce = source.issue(epoch + Duration::from_secs(10), client);
        assert_eq!(nonce.len(), NONCE_LEN);
        assert!(source.is_valid(epoch + Duration::from_secs(11), client, &nonce));
        assert!(source.is_valid(epoch + Duration::from_secs(609), client, &nonce));
        assert!(!source.is_valid(epoch + Duration::from_secs(610), client, &nonce), "expired");
        let other: SocketAddr = "198.51.100.1:5001".parse().unwrap();
        assert!(!source.is_valid(epoch + Duration::from_secs(11), other, &nonce), "other client");
        let mut tampered = nonce.clone().into_bytes();
        tampered[15] = if tampered[15] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(!source.is_valid(epoch + Duration::from_secs(11), client, &tampered), "tampered");
        let restarted = NonceSource::new([8; 32], epoch, Duration::from_secs(600));
        assert!(!restarted.is_valid(epoch + Duration::from_secs(11), client, &nonce), "other key");
        assert!(!source.is_valid(epoch, client, "zz"), "garbage");
        assert!(!source.is_valid(epoch, client, &"g".repeat(NONCE_LEN)), "not hex");
    }

    #[test]
    fn integrity_matches_the_stun_crate() {
        use stun::message::{Message, Setter};
        let key = long_term_key("u", "r", "p");
        let mut m = Message::new();
        m.typ = stun::message::BINDING_REQUEST;
        m.transaction_id = stun::agent::TransactionId([3; 12]);
        m.write_header();
        stun::textattrs::TextAttribute::new(stun::attributes::ATTR_USERNAME, "u".into()).add_to(&mut m).unwrap();
        stun::integrity::MessageIntegrity(key.to_vec()).add_to(&mut m).unwrap();
        stun::fingerprint::FINGERPRINT.add_to(&mut m).unwrap();
        let at = m.raw.len() - 8 - 24;
        assert!(verify_integrity(&m.raw, at, &key));
        assert!(!verify_integrity(&m.raw, at, &long_term_key("u", "r", "q")));
        assert!(!verify_integrity(&m.raw, at + 4, &key));
        assert!(!verify_integrity(&m.raw, m.raw.len(), &key));
    }
}
