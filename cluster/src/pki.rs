//! The cluster's certificate authority. Relays authenticate each other on their QUIC links
//! (mutual TLS) with a certificate for their relay id signed by this CA: one CA per cluster,
//! made once by the operator (`relayctl ca init`), and one certificate per relay
//! (`relayctl ca issue RELAY_ID`). A relay trusts no other root on its links.
//!
//! A relay certificate names its relay id as its only DNS subject alternative name (and as its
//! common name), is valid for both TLS server and client authentication, and is signed directly
//! by the CA (no intermediates). The CA's key never leaves the operator's machine: relays hold
//! only the CA certificate, their own certificate and their own key.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};

/// How long `relayctl ca init` makes the CA valid: ten years.
pub const CA_VALID_DAYS: u64 = 3650;
/// How long `relayctl ca issue` makes a relay certificate valid: one year.
pub const RELAY_VALID_DAYS: u64 = 365;

/// Why a CA could not be made, loaded or used.
#[derive(Debug)]
pub enum PkiError {
    /// The relay id is not one the cluster accepts, or not a DNS name.
    BadRelayId(String),
    /// The CA certificate or key is not PEM of the expected kind, or they do not match.
    BadCa(String),
    /// The validity period is empty or out of range.
    BadValidity(String),
    /// rcgen refused (should not happen with checked inputs).
    Generate(rcgen::Error),
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRelayId(m) | Self::BadCa(m) | Self::BadValidity(m) => f.write_str(m),
            Self::Generate(e) => write!(f, "generating the certificate: {e}"),
        }
    }
}

impl std::error::Error for PkiError {}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        Self::Generate(e)
    }
}

/// A validity period in unix seconds, `not_before..not_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: u64,
    pub not_after: u64,
}

impl Validity {
    /// From `now` (less an hour, for clocks a little behind) for `days`.
    pub fn days_from(now: u64, days: u64) -> Self {
        Self { not_before: now.saturating_sub(3600), not_after: now + days * 86_400 }
    }

    fn apply(self, params: &mut CertificateParams) -> Result<(), PkiError> {
        if self.not_after <= self.not_before {
            return Err(PkiError::BadValidity("the certificate would expire before it is valid".into()));
        }
        let at = |secs: u64| {
            i64::try_from(secs)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .ok_or_else(|| PkiError::BadValidity(format!("{secs} is not a unix time a certificate can hold")))
        };
        params.not_before = at(self.not_before)?;
        params.not_after = at(self.not_after)?;
        Ok(())
    }
}

/// The cluster CA: its certificate (which every relay holds) and its signing key (which only
/// the operator holds).
pub struct Authority {
    cert_pem: String,
    key: KeyPair,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl Authority {
    /// A new CA named `name` (its common name, say the cluster's), valid for `validity`.
    pub fn generate(name: &str, validity: Validity) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity.apply(&mut params)?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), key })
    }

    /// The CA from its PEM certificate and PEM (PKCS#8) key, as [`Authority::cert_pem`] and
    /// [`Authority::key_pem`] wrote them.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadCa(format!("the CA key is not a PEM key: {e}")))?;
        let authority = Self { cert_pem: cert_pem.to_owned(), key };
        let der = authority.cert_der()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::BadCa(format!("the CA certificate does not parse: {e}")))?;
        if !cert.is_ca() {
            return Err(PkiError::BadCa("the CA certificate is not a CA (no basic constraints CA:true)".into()));
        }
        if cert.public_key().raw != authority.key.subject_public_key_info().as_slice() {
            return Err(PkiError::BadCa("the CA key does not belong to the CA certificate".into()));
        }
        Ok(authority)
    }

    /// The CA certificate, PEM: what every relay is given as `link.ca`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM (PKCS#8): keep it off the relays.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn cert_der(&self) -> Result<Vec<u8>, PkiError> {
        let block =
            pem::parse(&self.cert_pem).map_err(|e| PkiError::BadCa(format!("the CA certificate is not PEM: {e}")))?;
        if block.tag() != "CERTIFICATE" {
            return Err(PkiError::BadCa(format!(
                "the CA certificate file holds a {:?}, not a CERTIFICATE",
                block.tag()
            )));
        }
        Ok(block.into_contents())
    }

    /// A certificate and a new key for relay `relay_id`, valid for `validity`.
    pub fn issue(&self, relay_id: &str, validity: Validity) -> Result<Issued, PkiError> {
        check_relay_id(relay_id)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, relay_id);
        params.subject_alt_names = vec![SanType::DnsName(relay_id.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)
            .map_err(|e| PkiError::BadCa(format!("the CA certificate does not parse: {e}")))?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A relay's certificate and key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// A relay id that can be put in a certificate and checked by TLS: one the cluster accepts
/// ([`crate::ids::valid_relay_id`]) that is also a DNS name (no empty label, no label starting
/// or ending with `-`).
pub fn check_relay_id(relay_id: &str) -> Result<(), PkiError> {
    let dns = relay_id.split('.').all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
    if !crate::ids::valid_relay_id(relay_id) || !dns {
        return Err(PkiError::BadRelayId(format!(
            "relay id {relay_id:?}: a certificate needs {} in dot-separated labels that neither are empty \
             nor start or end with '-'",
            crate::ids::RELAY_ID_CHARS
        )));
    }
    Ok(())
}

/// The relay id a relay certificate (DER) is for: its DNS subject alternative name, if it has
/// exactly one and it is a relay id. Call it on a certificate TLS has already verified.
/// When a certificate (DER) expires: its notAfter, in unix seconds.
pub fn not_after_of(cert_der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

pub fn relay_id_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut names = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(*d),
        _ => None,
    });
    let name = names.next()?;
    (names.next().is_none() && check_relay_id(name).is_ok()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_ca_issues_relay_certificates_that_name_the_relay() {
        let ca = Authority::generate("test cluster", Validity::days_from(NOW, CA_VALID_DAYS)).unwrap();
        let issued = ca.issue("eu-1.example.org", Validity::days_from(NOW, RELAY_VALID_DAYS)).unwrap();
        let der = pem::parse(&issued.cert_pem).unwrap().into_contents();
        assert_eq!(relay_id_of(&der).as_deref(), Some("eu-1.example.org"));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = pem::parse(ca.cert_pem()).unwrap().into_contents();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key())).expect("signed by the CA");
        assert!(!cert.is_ca() && ca_cert.is_ca());
        assert_eq!(cert.validity().not_after.timestamp(), (NOW + RELAY_VALID_DAYS * 86_400) as i64);
        // The relay's key is its own, not the CA's.
        assert_ne!(issued.key_pem, ca.key_pem());
    }

    #[test]
    fn the_ca_reloads_from_its_files_and_still_issues() {
        let ca = Authority::generate("c", Validity::days_from(NOW, 10)).unwrap();
        let again = Authority::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        let issued = again.issue("us-1", Validity::days_from(NOW, 1)).unwrap();
        let der = pem::parse(&issued.cert_pem).unwrap().into_contents();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = pem::parse(ca.cert_pem()).unwrap().into_contents();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).expect("signed by the reloaded CA");
    }

    #[test]
    fn bad_inputs_are_refused_with_reasons() {
        let ca = Authority::generate("c", Validity::days_from(NOW, 10)).unwrap();
        let other = Authority::generate("other", Validity::days_from(NOW, 10)).unwrap();
        let err = Authority::load(ca.cert_pem(), &other.key_pem()).unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");
        let leaf = ca.issue("r1", Validity::days_from(NOW, 1)).unwrap();
        let err = Authority::load(&leaf.cert_pem, &leaf.key_pem).unwrap_err().to_string();
        assert!(err.contains("not a CA"), "{err}");
        let err = Authority::load(&leaf.key_pem, &leaf.key_pem).unwrap_err().to_string();
        assert!(err.contains("not a CERTIFICATE"), "{err}");
        let err = Authority::load("hello", &ca.key_pem()).unwrap_err().to_string();
        assert!(err.contains("not PEM"), "{err}");
        for bad in ["", "EU-1", "a..b", "-a", "a-.b", "a b"] {
            let err = ca.issue(bad, Validity::days_from(NOW, 1)).unwrap_err();
            assert!(matches!(err, PkiError::BadRelayId(_)), "{bad:?}: {err}");
        }
        let err = ca.issue("r1", Validity { not_before: NOW, not_after: NOW }).unwrap_err();
        assert!(matches!(err, PkiError::BadValidity(_)), "{err}");
        // A certificate without a relay id names none.
        assert_eq!(relay_id_of(b"not a certificate"), None);
    }
}
