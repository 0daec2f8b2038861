//! Changing a running relay's settings without dropping a call: SIGHUP, `POST /reload` on the
//! admin listener, and renewed TLS certificate files.
//!
//! A reload re-reads the configuration as at start (file, environment, flags) and validates it
//! whole; an invalid one changes nothing and says why. Of a valid one, these apply at once:
//! credentials (`auth.*`, `server.realm`), the peer filter, allocation lifetimes, caps and
//! quotas, `server.software`, `limits.*`, `log.level`, and the TLS certificate files of TURN
//! over TLS and of the WHIP/WHEP listener. Running allocations keep what they have: the key they
//! were created with, their permissions and channels; open TLS connections keep their session.
//! Every other key (addresses, ports, thread count, cluster membership) needs a restart; a
//! reload that changes one reports it and keeps the running value, so the report repeats until
//! the restart.
//!
//! Certificate files are also checked every `tls.watch_secs` (by modification time and size),
//! so a certbot renewal is picked up without anyone signalling the relay. A renewed file that
//! does not load (a half-written key, a mismatched pair) is logged and the working certificate
//! stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tracing::{info, warn};

use super::control::Control;
use super::control::{Command, ConnLimits};
use super::tls::{self, Expiries, Keys, TlsCell};
use crate::config::{Config, TlsConfig};
use crate::turn::{ServerConfig, Shared};

/// Re-reads and validates the configuration as at start.
pub type LoadConfig = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;
/// Applies a new `log.level` filter.
pub type SetLogLevel = Box<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

/// What the shell gives a reload to work with.
pub struct Hooks {
    pub load: LoadConfig,
    pub set_log_level: SetLogLevel,
}

/// The outcome of a reload, as `POST /reload` returns it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Keys whose new values are in force.
    pub applied: Vec<String>,
    /// Keys that changed but keep their running values until a restart.
    pub restart_required: Vec<String>,
}

/// A certificate and key file pair as last loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    stamp: Option<Stamp>,
}

/// Modification times and sizes of the two files.
type Stamp = [(SystemTime, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let one = |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
    Some([one(cert)?, one(key)?])
}

/// One TLS listener kind's certificate: its files and where new settings go.
struct Cert {
    /// Its name in `relay_certificate_expiry_timestamp_seconds`.
    name: &'static str,
    expiries: Expiries,
    keys: Keys,
    alpn: &'static [&'static [u8]],
    files: Mutex<Files>,
    apply: Box<dyn Fn(Arc<rustls::ServerConfig>) + Send + Sync>,
}

impl Cert {
    /// Loads the files again if they (or their paths) changed; true if new settings went out.
    fn refresh(&self, cert: &Path, key: &Path) -> anyhow::Result<bool> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(cert, key);
        let same = files.cert == cert && files.key == key && files.stamp == now;
        if same {
            return Ok(false);
        }
        let config = tls::server_config(cert, key, self.keys, self.alpn)?;
        (self.apply)(config);
        self.expiries.record(self.name, cert);
        *files = Files { cert: cert.to_owned(), key: key.to_owned(), stamp: now };
        Ok(true)
    }
}

/// Everything a reload touches.
pub struct Live {
    hooks: Hooks,
    /// The settings in force (keys needing a restart keep their start values).
    config: Mutex<Config>,
    core: Box<dyn Fn(&Config) -> ServerConfig + Send + Sync>,
    control: Arc<Control>,
    shared: Arc<Shared>,
    turn_tls: Option<Cert>,
    sfu_tls: Option<Cert>,
}

/// Connection limits from the config.
pub fn conn_limits(config: &Config) -> ConnLimits {
    let l = &config.limits;
    ConnLimits {
        per_ip: l.connections_per_ip,
        total: l.connections_total,
        handshake_timeout: l.handshake_timeout,
        idle_timeout: l.idle_timeout,
    }
}

impl Live {
    /// `core` builds the TURN core's settings from a config (with the running nonce source and
    /// own addresses). `turn_tls` and `sfu_tls` are the listeners' TLS settings at start.
    pub fn new(
        hooks: Hooks,
        config: Config,
        core: Box<dyn Fn(&Config) -> ServerConfig + Send + Sync>,
        control: Arc<Control>,
        shared: Arc<Shared>,
        sfu_tls: Option<TlsCell>,
        expiries: Expiries,
    ) -> Self {
        let files = |cert: &Path, key: &Path| {
            Mutex::new(Files { cert: cert.to_owned(), key: key.to_owned(), stamp: stamp(cert, key) })
        };
        let turn_tls = config.tls.as_ref().map(|t| {
            let control = Arc::clone(&control);
            Cert {
                name: "turn_tls",
                expiries: expiries.clone(),
                keys: tls::TURN_KEYS,
                alpn: &[],
                files: files(&t.cert, &t.key),
                apply: Box::new(move |c| control.broadcast(Command::SetTls(c))),
            }
        });
        let sfu_tls = match (&config.sfu_tls, sfu_tls) {
            (Some((cert, key)), Some(cell)) => Some(Cert {
                name: "sfu_tls",
                expiries: expiries.clone(),
                keys: tls::SFU_KEYS,
                alpn: &[b"http/1.1"],
                files: files(cert, key),
                apply: Box::new(move |c| *cell.write().unwrap_or_else(|e| e.into_inner()) = c),
            }),
            _ => None,
        };
        Self { hooks, config: Mutex::new(config), core, control, shared, turn_tls, sfu_tls }
    }

    /// Re-reads the configuration and applies what can change live.
    pub fn reload(&self) -> anyhow::Result<Report> {
        let new = (self.hooks.load)()?;
        let mut current = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let old = current.clone();
        let mut report = Report::default();
        let mut effective = new.clone();

        // Keys that need a restart keep their running values.
        macro_rules! restart {
            ($($field:ident => $key:literal),+ $(,)?) => {$(
                if new.$field != old.$field {
                    report.restart_required.push($key.to_owned());
                    effective.$field = old.$field.clone();
                }
            )+};
        }
        restart!(
            listen => "server.listen",
            workers => "server.workers",
            socket_buffer_bytes => "server.socket_buffer_bytes",
            busy_poll => "server.busy_poll_us",
            relay_ip => "relay.ip",
            relay_ipv6 => "relay.ipv6",
            external_ip => "relay.external_ip",
            ports => "relay.min_port/relay.max_port",
            relay_socket_buffer_bytes => "relay.socket_buffer_bytes",
            admin_listen => "admin.listen",
            sfu_http_listen => "sfu.http_listen",
            sfu_public_url => "sfu.public_url",
            log_format => "log.format",
            shutdown_grace => "shutdown.grace_secs",
            cluster => "cluster",
            tcp_listen => "tcp",
        );
        // TLS: the files may change; turning it on or off, or its addresses, may not.
        let listeners = |t: &Option<TlsConfig>| t.as_ref().map(|t| (t.listen.clone(), t.watch));
        if listeners(&new.tls) != listeners(&old.tls) {
            report.restart_required.push("tls.listen".to_owned());
            // The running listeners, with the new files where there are any.
            effective.tls = old.tls.as_ref().map(|o| TlsConfig {
                listen: o.listen.clone(),
                watch: o.watch,
                ..new.tls.clone().unwrap_or_else(|| o.clone())
            });
        }
        if old.sfu_tls.is_some() != new.sfu_tls.is_some() {
            report.restart_required.push("sfu.tls_cert".to_owned());
            effective.sfu_tls = old.sfu_tls.clone();
        }

        // Live keys.
        macro_rules! changed {
            ($($field:ident => $key:literal),+ $(,)?) => {{
                let mut any = false;
                $(
                    if effective.$field != old.$field {
                        report.applied.push($key.to_owned());
                        any = true;
                    }
                )+
                any
            }};
        }
        let auth = changed!(realm => "server.realm", secrets => "auth.secrets", users => "auth.users");
        let core = changed!(
            software => "server.software",
            default_lifetime => "allocations.default_lifetime_secs",
            max_lifetime => "allocations.max_lifetime_secs",
            max_permissions => "allocations.max_permissions",
            max_channels => "allocations.max_channels",
            rfc5766_channel_numbers => "allocations.rfc5766_channel_numbers",
            nonce_lifetime => "auth.nonce_lifetime_secs",
            allow_peers => "peers.allow",
            deny_peers => "peers.deny",
        );
        let quotas = changed!(max_per_user => "allocations.max_per_user", max_total => "allocations.max_total");
        let limits = changed!(limits => "limits");
        let log = changed!(log_level => "log.level");

        if log && let Err(e) = (self.hooks.set_log_level)(&effective.log_level) {
            // Validated with the config, so this is unexpected; keep the old filter.
            warn!(error = %e, "log.level: cannot apply");
            effective.log_level = old.log_level.clone();
            report.applied.retain(|k| k != "log.level");
        }
        if auth {
            self.control.set_config_auth(&effective.realm, &effective.users, &effective.secrets);
        }
        if core || limits {
            self.control.broadcast(Command::SetConfig(Arc::new((self.core)(&effective))));
        }
        if quotas {
            self.shared.quotas.set_limits(effective.max_per_user, effective.max_total);
        }
        if limits {
            self.control.broadcast(Command::SetConnLimits(conn_limits(&effective)));
        }
        // Certificates: loaded again if their paths or files changed. A failure keeps the old
        // certificate and fails the reload's report, naming the key; the certificate watch keeps
        // trying the configured files.
        let mut tls_error = None;
        for (cert, files) in self.certificates(&effective) {
            match cert.refresh(files.0, files.1) {
                Ok(true) => report.applied.push(cert.keys.cert.to_owned()),
                Ok(false) => {}
                Err(e) => {
                    tls_error.get_or_insert(e);
                }
            }
        }
        *current = effective;
        drop(current);
        info!(applied = ?report.applied, restart_required = ?report.restart_required, "configuration reloaded");
        match tls_error {
            Some(e) => Err(e.context(format!("reload applied {:?}, but the certificate stays", report.applied))),
            None => Ok(report),
        }
    }

    /// Each TLS listener kind's certificate with the files `config` names for it.
    fn certificates<'a>(&'a self, config: &'a Config) -> impl Iterator<Item = (&'a Cert, (&'a Path, &'a Path))> {
        let turn = self.turn_tls.as_ref().zip(config.tls.as_ref().map(|t| (t.cert.as_path(), t.key.as_path())));
        let sfu = self.sfu_tls.as_ref().zip(config.sfu_tls.as_ref().map(|(c, k)| (c.as_path(), k.as_path())));
        turn.into_iter().chain(sfu)
    }

    /// Loads certificate files that changed on disk since they were last loaded (a renewal).
    pub fn check_certificates(&self) {
        let config = self.config.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (cert, (path, key)) in self.certificates(&config) {
            match cert.refresh(path, key) {
                Ok(true) => info!(cert = %path.display(), "{}: renewed certificate loaded", cert.keys.cert),
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "{}: renewed files do not load; keeping the current certificate", cert.keys.cert);
                }
            }
        }
    }
}
