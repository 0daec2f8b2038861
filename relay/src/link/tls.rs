//! Mutual TLS on relay-to-relay links: each relay presents its certificate from the cluster CA
//! (`cluster::pki`) and accepts only peers whose certificate that CA signed, for a relay id.
//! The CA certificate is the only root: the system's roots play no part.
//!
//! Every refused certificate is counted by reason ([`Refusal`]), on the side that refused it:
//! the accepting relay refuses a connecting relay's certificate (or its lack of one), the
//! connecting relay refuses a certificate that is not for the relay it meant to reach.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use prometheus::IntCounterVec;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The ALPN protocol of relay links; a peer that does not speak it is refused in the handshake.
pub const ALPN: &[u8] = b"relay-link/1";

/// Why a peer's certificate was refused: the `reason` label of
/// `relay_link_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not signed by the cluster CA (another CA, or one with the same name but another key).
    UntrustedCa,
    /// Past its validity.
    Expired,
    /// Not valid yet (or the clocks disagree).
    NotYetValid,
    /// Valid, but for another relay than the one the connecting side meant to reach.
    WrongRelay,
    /// The connecting side presented none.
    NoCertificate,
    /// Anything else: malformed, wrong key usage, no relay id in it.
    BadCertificate,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::UntrustedCa,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::WrongRelay,
        Refusal::NoCertificate,
        Refusal::BadCertificate,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::UntrustedCa => "untrusted_ca",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::WrongRelay => "wrong_relay",
            Refusal::NoCertificate => "no_certificate",
            Refusal::BadCertificate => "bad_certificate",
        }
    }

    /// The refusal a TLS verification error stands for, if it is about the certificate.
    pub fn of(error: &rustls::Error) -> Option<Refusal> {
        let rustls::Error::InvalidCertificate(e) = error else { return None };
        Some(match e {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => Refusal::UntrustedCa,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => Refusal::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => Refusal::NotYetValid,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => Refusal::WrongRelay,
            _ => Refusal::BadCertificate,
        })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Counts refusals: `relay_link_refusals_total{side, reason}`, `side` being `accept` (this
/// relay refused a relay connecting to it) or `connect` (this relay refused the relay it
/// connected to).
#[derive(Clone)]
pub struct Refusals {
    counter: IntCounterVec,
}

impl Refusals {
    /// The counter vector; `side` and `reason` labels.
    pub fn new(counter: IntCounterVec) -> Self {
        // Every series exists from the start, at 0, so that a dashboard or an alert sees them.
        for side in ["accept", "connect"] {
            for r in Refusal::ALL {
                counter.with_label_values(&[side, r.label()]);
            }
        }
        Self { counter }
    }

    pub fn count(&self, side: &str, refusal: Refusal) {
        self.counter.with_label_values(&[side, refusal.label()]).inc();
    }

    pub fn get(&self, side: &str, refusal: Refusal) -> u64 {
        self.counter.with_label_values(&[side, refusal.label()]).get()
    }
}

impl fmt::Debug for Refusals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Refusals")
    }
}

/// A relay's link credentials: the cluster CA as the only root, its own certificate and key, and
/// the relay id its certificate is for.
pub struct LinkTls {
    relay_id: String,
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    refusals: Refusals,
}

impl LinkTls {
    /// A secret for QUIC stateless resets that stays the same across restarts (and differs
    /// from relay to relay): SHA-256 over a label and the relay's private key.
    pub fn stateless_reset_secret(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"relay-link stateless reset v1\0");
        ctx.update(self.key.secret_der());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

impl fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkTls").field("relay_id", &self.relay_id).finish_non_exhaustive()
    }
}

impl LinkTls {
    /// From PEM text: the CA certificate, this relay's certificate (chain) and key. The
    /// certificate must be for a relay id (see `cluster::pki`). Errors say which input is at fault
    /// with `keys` naming them (config keys, file paths).
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8], keys: [&str; 3], refusals: Refusals) -> anyhow::Result<Self> {
        let [ca_key, cert_key, key_key] = keys;
        let mut roots = rustls::RootCertStore::empty();
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{ca_key}: not a PEM certificate: {e}"))?;
        if cas.is_empty() {
            bail!("{ca_key}: no certificate in it");
        }
        for c in cas {
            roots.add(c).with_context(|| format!("{ca_key}: not a usable CA certificate"))?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{cert_key}: not a PEM certificate: {e}"))?;
        let Some(first) = chain.first() else { bail!("{cert_key}: no certificate in it") };
        let relay_id = cluster::pki::relay_id_of(first).with_context(|| {
            format!("{cert_key}: not a relay certificate (it names no relay id; issue one with `relayctl ca issue`)")
        })?;
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| anyhow::anyhow!("{key_key}: not a PEM private key: {e}"))?;
        let this = Self {
            relay_id,
            roots: Arc::new(roots),
            chain,
            key,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            refusals,
        };
        // Both configurations build now, so that a key that does not match its certificate fails
        // at start, not at the first link.
        this.server_config().with_context(|| format!("{key_key}: does not match {cert_key}"))?;
        Ok(this)
    }

    /// From the three PEM files.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path, keys: [&str; 3], refusals: Refusals) -> anyhow::Result<Self> {
        let read = |p: &Path, k: &str| std::fs::read(p).with_context(|| format!("{k}: cannot read {}", p.display()));
        Self::from_pem(&read(ca, keys[0])?, &read(cert, keys[1])?, &read(key, keys[2])?, keys, refusals)
    }

    /// The relay id this relay's certificate is for.
    pub fn relay_id(&self) -> &str {
        &self.relay_id
    }

    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// TLS 1.3 for accepting links: a client certificate from the CA is checked when one is
    /// presented. One that is absent is let through the handshake and refused right after it,
    /// as [`Refusal::NoCertificate`] (rustls would refuse it before any verifier could count it).
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::clone(&self.roots), Arc::clone(&self.provider))
            .allow_unauthenticated()
            .build()
            .context("client certificate verifier")?;
        let verifier = Arc::new(CountingClientVerifier { inner, refusals: self.refusals.clone() });
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// TLS 1.3 for opening links: the peer must present a certificate from the CA for the relay
    /// id given as the server name; this relay presents its own.
    pub fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::clone(&self.roots), Arc::clone(&self.provider))
            .build()
            .context("server certificate verifier")?;
        let verifier = Arc::new(CountingServerVerifier { inner, refusals: self.refusals.clone() });
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// The server name a link to `relay_id` verifies: the relay id as a DNS name.
pub fn server_name(relay_id: &str) -> anyhow::Result<ServerName<'static>> {
    cluster::pki::check_relay_id(relay_id).map_err(|e| anyhow::anyhow!("{e}"))?;
    ServerName::try_from(relay_id.to_owned()).map_err(|e| anyhow::anyhow!("relay id {relay_id:?}: {e}"))
}

/// webpki's client-certificate check, counting what it refuses.
#[derive(Debug)]
struct CountingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    refusals: Refusals,
}

impl ClientCertVerifier for CountingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now);
        let verified = verified.and_then(|v| match cluster::pki::relay_id_of(end_entity) {
            Some(_) => Ok(v),
            None => Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)),
        });
        if let Err(e) = &verified {
            self.refusals.count("accept", Refusal::of(e).unwrap_or(Refusal::BadCertificate));
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// webpki's server-certificate check (chain to the CA, relay id as the name), counting what it
/// refuses.
#[derive(Debug)]
struct CountingServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    refusals: Refusals,
}

impl ServerCertVerifier for CountingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if let Err(e) = &verified {
            self.refusals.count("connect", Refusal::of(e).unwrap_or(Refusal::BadCertificate));
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
