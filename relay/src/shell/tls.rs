//! TLS settings from PEM files, for TURN over TLS (`tls.cert`, `tls.key`, served by
//! `shell::stream`) and for HTTPS on the SFU's WHIP/WHEP listener (`sfu.tls_cert`,
//! `sfu.tls_key`), so a game page served over https can call the relay without a proxy in front.
//!
//! For WHIP/WHEP Handshakes run in their own tasks with a deadline and a cap on how
//! many run at once, so a slow or silent client holds up nobody else; the finished streams are
//! handed to axum through [`TlsListener`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;

/// Which config keys name the files, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    pub cert: &'static str,
    pub key: &'static str,
}

pub const TURN_KEYS: Keys = Keys { cert: "tls.cert", key: "tls.key" };
pub const SFU_KEYS: Keys = Keys { cert: "sfu.tls_cert", key: "sfu.tls_key" };

/// The rustls server settings (TLS 1.2 and 1.3) from the PEM files; errors name the config key
/// at fault. `alpn` is what the server agrees to (empty: no ALPN, whatever the client offers).
pub fn server_config(cert: &Path, key: &Path, keys: Keys, alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).and_then(|certs| certs.collect::<Result<_, _>>()).map_err(|e| {
            anyhow::anyhow!("{}: cannot read a PEM certificate chain from {}: {e}", keys.cert, cert.display())
        })?;
    if certs.is_empty() {
        bail!("{}: no certificate in {}", keys.cert, cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("{}: cannot read a PEM private key from {}: {e}", keys.key, key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .with_context(|| format!("{}: TLS settings", keys.cert))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("{}: does not match {}, or is of an unsupported kind", keys.key, keys.cert))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// When each certificate in use expires (its leaf's notAfter, unix seconds), by name (`turn_tls`,
/// `sfu_tls`, `link`): `relay_certificate_expiry_timestamp_seconds{certificate}`.
#[derive(Debug, Clone, Default)]
pub struct Expiries(Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>>);

impl Expiries {
    /// Records the first certificate of the PEM file `cert` (just loaded) as `name`'s.
    pub fn record(&self, name: &'static str, cert: &Path) {
        let leaf = CertificateDer::pem_file_iter(cert).ok().and_then(|mut certs| certs.next()?.ok());
        if let Some(not_after) = leaf.and_then(|c| cluster::pki::not_after_of(&c)) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(name, not_after);
        }
    }

    pub fn get(&self) -> Vec<(&'static str, u64)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// The current TLS settings of a listener, replaced when the files are renewed.
pub type TlsCell = Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>;

/// TLS connections whose handshake completed, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` in a background task (call within a Tokio runtime).
    /// Each connection gets the settings in `config` at the time it is accepted.
    pub fn new(tcp: TcpListener, config: TlsCell) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        warn!(error = %e, "WHIP/WHEP TLS listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let current = Arc::clone(&config.read().unwrap_or_else(|e| e.into_inner()));
                let (acceptor, tx) = (TlsAcceptor::from(current), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            drop(permit);
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended (its listener failed for good): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
