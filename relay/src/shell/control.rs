//! What the main thread, the cluster task and a reload use to steer running workers: whether
//! they take new allocations, which credentials they accept, and their settings.
//!
//! Credentials have two sources: the config (`auth.*`, re-read on reload) and signaling's
//! secrets (heartbeat replies). Either changing rebuilds them from both: signaling's secrets
//! first (newest), then the config's, then the static users. Running allocations keep the key
//! they were created with.
//!
//! Two things drain the relay: SIGTERM (shutdown) and signaling's drain command. They are kept
//! apart so that signaling's undrain cannot reverse a shutdown: the relay drains while either asks.
//! The effective state is mirrored in one flag that `/healthz` and the metrics read, and workers
//! are told only when it changes. Changes are made under a lock and sent while holding it, so every
//! worker sees them in the same order.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use cluster::heartbeat::RelayState;

use crate::turn::ServerConfig;
use crate::turn::auth::Credentials;
use crate::turn::stats::ConnEvent;

/// What the main thread can tell a worker.
#[derive(Clone)]
pub enum Command {
    /// Stop (true) or resume (false) accepting new allocations: SIGTERM, or signaling's drain
    /// command. The main thread decides which wins (`shell::control`).
    SetDraining(bool),
    /// Accept these credentials for new allocations from now on (secrets from signaling, reload).
    SetCredentials(Arc<Credentials>),
    /// New core settings (reload): peer filter, lifetimes, caps, rate limits.
    SetConfig(Arc<ServerConfig>),
    /// A renewed TLS certificate for new connections (TCP/TLS workers only).
    SetTls(Arc<rustls::ServerConfig>),
    /// New connection limits (TCP/TLS workers only).
    SetConnLimits(ConnLimits),
    /// Exit the loop now.
    Stop,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SetDraining(on) => f.debug_tuple("SetDraining").field(on).finish(),
            // Credentials hold keys: never print them.
            Self::SetCredentials(_) => f.write_str("SetCredentials(..)"),
            Self::SetConfig(_) => f.write_str("SetConfig(..)"),
            Self::SetTls(_) => f.write_str("SetTls(..)"),
            Self::SetConnLimits(l) => f.debug_tuple("SetConnLimits").field(l).finish(),
            Self::Stop => f.write_str("Stop"),
        }
    }
}

/// Limits on connections; counts of 0 mean no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub per_ip: u32,
    pub total: u32,
    /// TLS handshake done and a first message framed within this long of accepting.
    pub handshake_timeout: Duration,
    /// Closed after this long without a message, unless it holds an allocation.
    pub idle_timeout: Duration,
}

/// Open connections per source IP and in total, over all TCP/TLS workers. Touched on accept and
/// close only.
#[derive(Debug, Default)]
pub struct ConnTable {
    inner: Mutex<(HashMap<IpAddr, u32>, u32)>,
}

impl ConnTable {
    /// Counts a new connection from `ip`, unless a limit says no.
    pub fn open(&self, ip: IpAddr, limits: &ConnLimits) -> Result<(), ConnEvent> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (per_ip, total) = &mut *guard;
        if limits.total != 0 && *total >= limits.total {
            return Err(ConnEvent::RefusedTotal);
        }
        let n = per_ip.entry(ip).or_insert(0);
        if limits.per_ip != 0 && *n >= limits.per_ip {
            return Err(ConnEvent::RefusedPerIp);
        }
        *n += 1;
        *total += 1;
        Ok(())
    }

    pub fn close(&self, ip: IpAddr) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (per_ip, total) = &mut *guard;
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
            *total -= 1;
        }
    }
}

/// Where credentials come from.
#[derive(Debug, Clone, Default)]
struct AuthSources {
    realm: String,
    users: Vec<(String, String)>,
    config_secrets: Vec<String>,
    /// `None` until signaling's first secrets.
    signaling_secrets: Option<Vec<String>>,
}

/// Why the relay takes no new allocations, if it does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReasons {
    /// SIGTERM: the process is on its way out. Never undone.
    pub shutdown: bool,
    /// Signaling's drain command, until its undrain.
    pub signaling: bool,
}

impl DrainReasons {
    pub fn draining(self) -> bool {
        self.shutdown || self.signaling
    }
}

/// One worker's command channel and the waker that makes it look.
pub struct WorkerLink {
    pub commands: mpsc::Sender<Command>,
    pub waker: Arc<mio::Waker>,
}

pub struct Control {
    workers: Vec<WorkerLink>,
    draining: Arc<AtomicBool>,
    reasons: Mutex<DrainReasons>,
    /// The secrets media tokens (WHIP/WHEP) are checked with: the TURN REST secrets in force.
    media_keys: Arc<std::sync::RwLock<Vec<Vec<u8>>>>,
    /// Sessions signaling has ended: their media tokens are refused (WHEP).
    ended_sessions: Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
    auth: Mutex<AuthSources>,
}

impl Control {
    pub fn new(workers: Vec<WorkerLink>) -> Self {
        Self {
            workers,
            draining: Arc::new(AtomicBool::new(false)),
            reasons: Mutex::new(DrainReasons::default()),
            media_keys: Arc::default(),
            ended_sessions: Arc::default(),
            auth: Mutex::default(),
        }
    }

    /// The config's credentials (at start and on reload). Workers get credentials built from
    /// these and signaling's secrets; media tokens are checked with the same secrets.
    pub fn set_config_auth(&self, realm: &str, users: &[(String, String)], secrets: &[String]) {
        let mut auth = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        auth.realm = realm.to_owned();
        auth.users = users.to_vec();
        auth.config_secrets = secrets.to_vec();
        self.apply_auth(&auth);
    }

    /// Signaling's secrets (newest first), from a heartbeat reply.
    pub fn set_signaling_secrets(&self, secrets: &[String]) {
        let mut auth = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        auth.signaling_secrets = Some(secrets.to_vec());
        self.apply_auth(&auth);
    }

    fn apply_auth(&self, auth: &AuthSources) {
        let keys = merged_secrets(auth.signaling_secrets.as_deref().unwrap_or_default(), &auth.config_secrets);
        self.set_media_keys(keys.clone());
        self.set_credentials(Arc::new(Credentials::new(&auth.realm, &auth.users, keys)));
    }

    /// Sends a command to every worker (settings on reload).
    pub fn broadcast(&self, command: Command) {
        self.tell_all(&command);
    }

    /// The secrets media tokens are checked with, shared with the WHIP/WHEP handlers.
    pub fn media_keys(&self) -> Arc<std::sync::RwLock<Vec<Vec<u8>>>> {
        Arc::clone(&self.media_keys)
    }

    /// Media tokens signed with any of `keys` are accepted from now on.
    pub fn set_media_keys(&self, keys: Vec<Vec<u8>>) {
        *self.media_keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// The sessions signaling has ended, shared with the WHIP/WHEP handlers.
    pub fn ended_sessions(&self) -> Arc<std::sync::RwLock<std::collections::HashSet<String>>> {
        Arc::clone(&self.ended_sessions)
    }

    /// Replaces the set of ended sessions (the full list of a heartbeat reply); the set as it
    /// now is.
    pub fn set_ended_sessions(&self, sessions: &[String]) -> std::collections::HashSet<String> {
        let set: std::collections::HashSet<String> = sessions.iter().cloned().collect();
        set.clone_into(&mut self.ended_sessions.write().unwrap_or_else(|e| e.into_inner()));
        set
    }

    /// The effective drain state, for `/healthz` and the metrics.
    pub fn draining_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.draining)
    }

    pub fn state(&self) -> RelayState {
        if self.draining.load(Ordering::Relaxed) { RelayState::Draining } else { RelayState::Serving }
    }

    pub fn reasons(&self) -> DrainReasons {
        *self.lock()
    }

    /// SIGTERM: drain for good.
    pub fn drain_for_shutdown(&self) {
        self.update(|r| r.shutdown = true);
    }

    /// Signaling's drain (true) or undrain (false). Returns the reasons in force afterwards.
    pub fn set_signaling_drain(&self, on: bool) -> DrainReasons {
        self.update(|r| r.signaling = on)
    }

    /// Every worker accepts `credentials` for new allocations from now on.
    pub fn set_credentials(&self, credentials: Arc<Credentials>) {
        self.tell_all(&Command::SetCredentials(credentials));
    }

    /// Every worker leaves its loop.
    pub fn stop(&self) {
        self.tell_all(&Command::Stop);
    }

    fn update(&self, change: impl FnOnce(&mut DrainReasons)) -> DrainReasons {
        let mut reasons = self.lock();
        let before = reasons.draining();
        change(&mut reasons);
        let after = reasons.draining();
        if after != before {
            self.draining.store(after, Ordering::Relaxed);
            self.tell_all(&Command::SetDraining(after));
        }
        *reasons
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DrainReasons> {
        // The guarded value is two bools, always consistent: a panic elsewhere cannot break it.
        self.reasons.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tell_all(&self, command: &Command) {
        for w in &self.workers {
            // A worker that already exited has nothing left to be told.
            let _ = w.commands.send(command.clone());
            let _ = w.waker.wake();
        }
    }
}

/// The REST secrets to accept: signaling's (newest first, as it sends them), then the config's,
/// without empty keys (anyone could sign with those) or repeats.
fn merged_secrets(signaling: &[String], config: &[String]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(signaling.len() + config.len());
    for key in signaling.iter().chain(config) {
        if !key.is_empty() && !out.iter().any(|k| k == key.as_bytes()) {
            out.push(key.as_bytes().to_vec());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_table_enforces_both_limits() {
        let t = ConnTable::default();
        let limits = ConnLimits {
            per_ip: 2,
            total: 3,
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(t.open(a, &limits), Ok(()));
        assert_eq!(t.open(a, &limits), Ok(()));
        assert_eq!(t.open(a, &limits), Err(ConnEvent::RefusedPerIp));
        assert_eq!(t.open(b, &limits), Ok(()));
        assert_eq!(t.open(b, &limits), Err(ConnEvent::RefusedTotal));
        t.close(a);
        assert_eq!(t.open(b, &limits), Ok(()));
    }

    fn control() -> (Control, mpsc::Receiver<Command>, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (tx, rx) = mpsc::channel();
        (Control::new(vec![WorkerLink { commands: tx, waker }]), rx, poll)
    }

    fn drained(rx: &mpsc::Receiver<Command>) -> Vec<bool> {
        rx.try_iter()
            .filter_map(|c| match c {
                Command::SetDraining(on) => Some(on),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn signaling_drains_and_undrains() {
        let (control, rx, _poll) = control();
        assert_eq!(control.state(), RelayState::Serving);
        control.set_signaling_drain(true);
        control.set_signaling_drain(true);
        assert_eq!(control.state(), RelayState::Draining);
        assert!(control.draining_flag().load(Ordering::Relaxed));
        control.set_signaling_drain(false);
        assert_eq!(control.state(), RelayState::Serving);
        assert_eq!(drained(&rx), vec![true, false], "workers hear only changes");
    }

    #[test]
    fn undrain_does_not_reverse_a_shutdown() {
        let (control, rx, _poll) = control();
        control.set_signaling_drain(true);
        control.drain_for_shutdown();
        let reasons = control.set_signaling_drain(false);
        assert_eq!(reasons, DrainReasons { shutdown: true, signaling: false });
        assert_eq!(control.state(), RelayState::Draining);
        control.drain_for_shutdown();
        control.set_signaling_drain(false);
        assert_eq!(drained(&rx), vec![true]);
        assert_eq!(control.reasons(), DrainReasons { shutdown: true, signaling: false });
    }

    #[test]
    fn signaling_secrets_come_first_without_empties_or_repeats() {
        let merged = merged_secrets(&["new".into(), "".into(), "old".into()], &["old".into(), "cfg".into()]);
        assert_eq!(merged, vec![b"new".to_vec(), b"old".to_vec(), b"cfg".to_vec()]);
        assert!(merged_secrets(&[], &[]).is_empty());
    }

    #[test]
    fn config_and_signaling_secrets_both_count_after_either_changes() {
        let (control, rx, _poll) = control();
        control.set_config_auth("r", &[], &["cfg".into()]);
        control.set_signaling_secrets(&["sig".into()]);
        control.set_config_auth("r", &[], &["cfg2".into()]);
        let keys = control.media_keys().read().unwrap().clone();
        assert_eq!(keys, vec![b"sig".to_vec(), b"cfg2".to_vec()], "signaling's stay when the config is reloaded");
        assert_eq!(rx.try_iter().filter(|c| matches!(c, Command::SetCredentials(_))).count(), 3);
    }

    #[test]
    fn credentials_reach_every_worker() {
        let (control, rx, _poll) = control();
        control.set_credentials(Arc::new(Credentials::new("r", &[], vec![b"k".to_vec()])));
        assert!(matches!(rx.try_recv(), Ok(Command::SetCredentials(_))));
        control.stop();
        assert!(matches!(rx.try_recv(), Ok(Command::Stop)));
    }
}
