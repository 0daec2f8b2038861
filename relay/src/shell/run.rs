//! Starting and stopping the relay: bind every socket first (so a bad address fails at start),
//! spawn one worker thread per core, serve the admin endpoint, and handle signals.
//!
//! - SIGTERM drains: workers refuse new allocations (508), existing ones keep relaying and can be
//!   refreshed, `/healthz` turns 503, and the process exits when the last allocation is gone or
//!   `shutdown.grace_secs` have passed, whichever is first.
//! - SIGINT (or a second signal during the drain) exits at once.
//! - With `cluster.signaling_url` set, a task on this thread's runtime heartbeats to signaling
//!   (`shell::cluster`), which can drain and undrain the relay and rotate its TURN REST secrets
//!   without a restart. Signaling's drain keeps the process running; it is no shutdown.
//! - A worker thread that dies (a bug: the core never panics on input) takes the process down
//!   with an error, so the supervisor restarts it instead of leaving a silent hole in the
//!   SO_REUSEPORT group.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rand::Rng;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use super::admin::{self, AdminState};
use super::cluster::{self, Heartbeater};
use super::control::{Control, WorkerLink};
use super::metrics::Metrics;
use super::sfu;
use super::udp;
use super::worker::{SocketSettings, Worker};
use crate::config::{Config, EXAMPLE_SECRET};
use crate::turn::auth::{Credentials, NonceSource};
use crate::turn::peer_filter::PeerFilter;
use crate::turn::{OwnAddresses, PortPool, Quotas, ServerConfig, Shared, TurnServer};

/// Addresses the relay actually bound, for the start-up banner and for tests.
#[derive(Debug, Clone)]
pub struct Relay {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// The WHIP/WHEP endpoint, when the SFU runs.
    pub sfu_http: Option<SocketAddr>,
}

/// Tells the main thread when a worker exits, however it exits (including by panic).
struct ExitNotice(usize, tokio::sync::mpsc::UnboundedSender<usize>);

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// The TURN core's settings; `listen` is the bound listening address (its port may have been 0
/// in the config), `sfu` the SFU's candidates when it runs.
fn server_config(config: &Config, listen: SocketAddr, sfu: Vec<SocketAddr>) -> anyhow::Result<ServerConfig> {
    let mut nonce_key = [0u8; 32];
    rand::rng().fill(&mut nonce_key);
    let credentials =
        Credentials::new(&config.realm, &config.users, config.secrets.iter().map(|s| s.as_bytes().to_vec()).collect());
    let mut own_ips = vec![config.listen.ip(), config.relay_ip];
    own_ips.extend(config.external_ip);
    // With a wildcard listen address every local address reaches the relay.
    match if_addrs::get_if_addrs() {
        Ok(ifaces) => own_ips.extend(ifaces.into_iter().map(|i| i.ip())),
        Err(e) => warn!(error = %e, "cannot list local addresses; self-relay check covers only configured ones"),
    }
    own_ips.sort_unstable();
    own_ips.dedup();
    Ok(ServerConfig {
        software: config.software.clone(),
        credentials,
        nonces: NonceSource::new(nonce_key, Instant::now(), config.nonce_lifetime),
        relay_ip: config.relay_ip,
        advertised_ip: config.advertised_ip(),
        default_lifetime: config.default_lifetime,
        max_lifetime: config.max_lifetime,
        max_permissions: config.max_permissions,
        max_channels: config.max_channels,
        rfc5766_channel_numbers: config.rfc5766_channel_numbers,
        peer_filter: PeerFilter::new(config.allow_peers.clone(), config.deny_peers.clone()),
        own: OwnAddresses { ips: own_ips, ports: vec![listen.port()..=listen.port(), config.ports.clone()] },
        sfu,
    })
}

/// Raises the open-file limit to its hard maximum: every allocation holds a socket.
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                warn!("could not raise the open-file limit");
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Runs the relay until a signal ends it. Blocks the calling thread.
pub fn run(config: Config) -> anyhow::Result<()> {
    let started_at = unix_now();
    raise_fd_limit();
    if config.secrets.iter().any(|s| s == EXAMPLE_SECRET) && !config.advertised_ip().is_loopback() {
        warn!("auth.secrets contains the example secret from configs/relay.toml; anyone can mint credentials");
    }
    if config.secrets.is_empty() && config.cluster.is_some() {
        info!("auth.secrets is empty: TURN REST credentials are refused until signaling's first reply brings secrets");
    }
    let mut seed = rand::rng();
    let shared = Arc::new(Shared::new(
        PortPool::new(*config.ports.start(), *config.ports.end(), seed.random()),
        Quotas::new(config.max_per_user, config.max_total),
    ));

    // Bind all listening sockets before anything runs. With port 0 the first socket picks the
    // port and the others join its SO_REUSEPORT group.
    let first = udp::bind_listener(config.listen, config.socket_buffer_bytes, config.socket_buffer_bytes)
        .with_context(|| format!("server.listen: cannot bind UDP {}", config.listen))?;
    let listen = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..config.workers {
        listeners.push(
            udp::bind_listener(listen, config.socket_buffer_bytes, config.socket_buffer_bytes)
                .with_context(|| format!("server.listen: cannot bind UDP {listen}"))?,
        );
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let admin_listener = runtime.block_on(admin::bind(config.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    // The SFU shares the UDP port: it sends from a duplicate of the first listening socket and
    // advertises the public address of that port as its one ICE candidate.
    let sfu = match config.sfu_http_listen {
        Some(addr) => {
            let http = runtime
                .block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("sfu.http_listen: cannot bind TCP {addr}"))?;
            let tls = match &config.sfu_tls {
                Some((cert, key)) => Some(super::tls::server_config(cert, key)?),
                None => None,
            };
            let public = SocketAddr::new(config.advertised_ip(), listen.port());
            let socket = listeners[0].try_clone().context("duplicating the listening socket for the SFU")?;
            let (handle, thread) = sfu::start(socket, public)?;
            Some((handle, thread, (http, tls)))
        }
        None => None,
    };

    let sfu_candidates =
        if sfu.is_some() { vec![SocketAddr::new(config.advertised_ip(), listen.port())] } else { Vec::new() };
    let server_config = Arc::new(server_config(&config, listen, sfu_candidates)?);

    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::unbounded_channel();
    let now = Instant::now();
    let mut threads = Vec::new();
    let mut links = Vec::new();
    let mut stats = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let server = TurnServer::new(Arc::clone(&server_config), Arc::clone(&shared), now, unix_now(), seed.random());
        stats.push(server.stats());
        let (tx, rx) = mpsc::channel();
        let settings = SocketSettings {
            relay_ip: config.relay_ip,
            relay_buffer: config.relay_socket_buffer_bytes,
            sfu: sfu.as_ref().map(|(handle, ..)| handle.clone()),
        };
        let (worker, waker) = Worker::new(listener, server, settings, rx).context("creating worker event loop")?;
        let notice = ExitNotice(i, exit_tx.clone());
        let thread = std::thread::Builder::new()
            .name(format!("relay-worker-{i}"))
            .spawn(move || {
                let _notice = notice;
                worker.run();
            })
            .context("spawning worker thread")?;
        threads.push(thread);
        links.push(WorkerLink { commands: tx, waker });
    }

    let control = Arc::new(Control::new(links));
    control.set_media_keys(config.secrets.iter().filter(|s| !s.is_empty()).map(|s| s.as_bytes().to_vec()).collect());
    let (sfu_handle, sfu_thread, sfu_http) = match sfu {
        Some((handle, thread, http)) => (Some(handle), Some(thread), Some(http)),
        None => (None, None, None),
    };
    let sfu_addr = sfu_http.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    let metrics = Arc::new(Metrics::new(stats, Arc::clone(&shared), control.draining_flag())?);
    if let Some(handle) = &sfu_handle {
        metrics.attach_sfu(handle.clone())?;
    }
    let state = AdminState { metrics: Arc::clone(&metrics), draining: control.draining_flag() };
    let heartbeater = match &config.cluster {
        Some(cluster) => {
            let settings = cluster::Settings {
                cluster: cluster.clone(),
                turn_udp_port: listen.port(),
                max_allocations: u64::from(config.max_total),
                realm: config.realm.clone(),
                users: config.users.clone(),
                config_secrets: config.secrets.clone(),
                started_at,
                sfu_url: sfu_addr.map(|addr| sfu_public_url(&config, &cluster.public_host, addr)),
            };
            Some(Heartbeater::new(settings, Arc::clone(&control), Arc::clone(&metrics))?)
        }
        None => None,
    };
    // Handlers go in before the banner: whoever reads "ready" may signal us right away, and a
    // signal before the handler exists would kill the process without draining.
    let (mut term, mut int) = runtime.block_on(async {
        let term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        anyhow::Ok((term, int))
    })?;
    let relay = Relay { listen, admin: admin_addr, sfu_http: sfu_addr };
    print_banner(&config, &relay);
    info!(udp = %listen, admin = %admin_addr, workers = threads.len(), "relay started");

    let outcome = runtime.block_on(async {
        tokio::spawn(async move {
            if let Err(e) = axum::serve(admin_listener, admin::router(state)).await {
                error!(error = %e, "admin listener failed");
            }
        });
        if let Some(heartbeater) = heartbeater {
            tokio::spawn(heartbeater.run());
        }
        if let (Some((http, tls)), Some(handle)) = (sfu_http, &sfu_handle) {
            let state =
                sfu::HttpState { sfu: handle.clone(), keys: control.media_keys(), draining: control.draining_flag() };
            let router = sfu::router(state);
            match tls {
                Some(tls) => {
                    let listener = super::tls::TlsListener::new(http, tls)?;
                    tokio::spawn(async move {
                        if let Err(e) = axum::serve(listener, router).await {
                            error!(error = %e, "WHIP/WHEP listener failed");
                        }
                    });
                }
                None => {
                    tokio::spawn(async move {
                        if let Err(e) = axum::serve(http, router).await {
                            error!(error = %e, "WHIP/WHEP listener failed");
                        }
                    });
                }
            }
        }
        tokio::select! {
            _ = int.recv() => {
                info!("SIGINT: exiting now");
                return Ok(());
            }
            Some(i) = exit_rx.recv() => anyhow::bail!("worker {i} exited unexpectedly"),
            _ = term.recv() => {}
        }
        let deadline = tokio::time::Instant::now() + config.shutdown_grace;
        info!(allocations = metrics.allocations(), grace_s = config.shutdown_grace.as_secs(), "SIGTERM: draining");
        control.drain_for_shutdown();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = int.recv() => { info!("SIGINT during drain: exiting now"); break; }
                _ = term.recv() => { info!("second SIGTERM: exiting now"); break; }
                Some(i) = exit_rx.recv() => anyhow::bail!("worker {i} exited unexpectedly"),
            }
            let left = metrics.allocations();
            if left == 0 {
                info!("drained: no allocations left");
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(allocations = left, "grace period over: exiting with allocations still active");
                break;
            }
        }
        Ok(())
    });
    control.stop();
    if let Some(handle) = &sfu_handle {
        handle.stop();
    }
    for thread in threads.into_iter().chain(sfu_thread) {
        let _ = thread.join();
    }
    outcome
}

/// The SFU's public base URL for signaling: `sfu.public_url` when set (behind a TLS proxy),
/// else HTTP or HTTPS (with `sfu.tls_cert`) on the public host and the port the WHIP/WHEP
/// listener bound.
fn sfu_public_url(config: &Config, public_host: &str, bound: SocketAddr) -> String {
    if let Some(url) = &config.sfu_public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = if public_host.contains(':') { format!("[{public_host}]") } else { public_host.to_owned() };
    format!("{}://{host}:{}", sfu_scheme(config), bound.port())
}

fn sfu_scheme(config: &Config) -> &'static str {
    if config.sfu_tls.is_some() { "https" } else { "http" }
}

fn print_banner(config: &Config, relay: &Relay) {
    let host = match config.advertised_ip() {
        ip if relay.listen.ip().is_unspecified() => ip,
        _ => relay.listen.ip(),
    };
    let uri_host = if host.is_ipv6() { format!("[{host}]") } else { host.to_string() };
    println!("relay {} ready", env!("CARGO_PKG_VERSION"));
    println!("  STUN/TURN   udp://{}  ({} worker threads)", relay.listen, config.workers);
    println!(
        "  relay ports {}-{} on {}, advertised as {}",
        config.ports.start(),
        config.ports.end(),
        config.relay_ip,
        config.advertised_ip()
    );
    if let Some(http) = relay.sfu_http {
        println!(
            "  SFU         WHIP {scheme}://{http}/whip/{{machine}}, WHEP {scheme}://{http}/whep/{{session}} (media on udp {})",
            relay.listen,
            scheme = sfu_scheme(config),
        );
    }
    println!("  metrics     http://{}/metrics", relay.admin);
    println!("  health      http://{}/healthz", relay.admin);
    println!(
        "  ICE server  {{\"urls\": [\"stun:{uri_host}:{0}\", \"turn:{uri_host}:{0}?transport=udp\"], ...}}",
        relay.listen.port()
    );
    match &config.cluster {
        Some(c) => println!(
            "  cluster     signaling {} as relay {:?} in region {:?}, public host {}",
            c.signaling_url, c.relay_id, c.region, c.public_host
        ),
        None => println!("  cluster     none (standalone: cluster.signaling_url is not set)"),
    }
    println!("  credentials relay credentials --config <this config>   (prints a ready RTCIceServer entry)");
}
