//! Starting and stopping the relay: bind every socket first (so a bad address fails at start),
//! spawn one worker thread per core, serve the admin endpoint, and handle signals.
//!
//! - SIGTERM drains: workers refuse new allocations (508), existing ones keep relaying and can be
//!   refreshed, `/healthz` turns 503, and the process exits when the last allocation is gone or
//!   `shutdown.grace_secs` have passed, whichever is first.
//! - SIGINT (or a second signal during the drain) exits at once.
//! - SIGHUP (or `POST /reload` on the admin listener) re-reads the configuration and applies
//!   what can change live (`shell::reload`); renewed TLS certificate files are picked up on
//!   their own every `tls.watch_secs`.
//! - With `cluster.signaling_url` set, a task on this thread's runtime heartbeats to signaling
//!   (`shell::cluster`), which can drain and undrain the relay and rotate its TURN REST secrets
//!   without a restart. Signaling's drain keeps the process running; it is no shutdown.
//! - A worker thread that dies (a bug: the core never panics on input) takes the process down
//!   with an error, so the supervisor restarts it instead of leaving a silent hole in the
//!   SO_REUSEPORT group.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ::cluster::time::unix_now;
use anyhow::Context;
use rand::Rng;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use super::admin::{self, AdminState};
use super::cluster::{self, Heartbeater};
use super::control::ConnTable;
use super::control::{Control, WorkerLink};
use super::metrics::Metrics;
use super::reload::{self, Hooks, Live};
use super::stream::{self, StreamListener, StreamSettings, StreamWorker, Transport};
use super::udp;
use super::worker::{SocketSettings, Worker};
use super::{sfu, whip};
use crate::config::{Config, EXAMPLE_SECRET};
use crate::turn::auth::{Credentials, NonceSource};
use crate::turn::limit::{Bandwidth, Rates};
use crate::turn::peer_filter::PeerFilter;
use crate::turn::{OwnAddresses, PortPool, Quotas, RelayIp, ServerConfig, Shared, TurnServer};

pub use super::banner::Relay;

/// Tells the main thread when a worker exits, however it exits (including by panic).
struct ExitNotice(usize, tokio::sync::mpsc::UnboundedSender<usize>);

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// What the TURN core's settings are built from besides the config: fixed for the process.
#[derive(Clone)]
struct CoreBase {
    nonce_key: [u8; 32],
    epoch: Instant,
    own: OwnAddresses,
    sfu: Vec<SocketAddr>,
}

impl CoreBase {
    /// `listen` is the bound UDP address (its port may have been 0 in the config), `sfu` the
    /// SFU's candidates when it runs.
    fn new(config: &Config, listen: SocketAddr, sfu: Vec<SocketAddr>) -> Self {
        let mut nonce_key = [0u8; 32];
        rand::rng().fill(&mut nonce_key);
        let mut own_ips = vec![config.listen.ip(), config.relay_ip];
        own_ips.extend(config.external_ip);
        own_ips.extend(config.relay_ipv6.iter().flat_map(|(bind, advertised)| [*bind, *advertised]));
        // With a wildcard listen address every local address reaches the relay.
        match if_addrs::get_if_addrs() {
            Ok(ifaces) => own_ips.extend(ifaces.into_iter().map(|i| i.ip())),
            Err(e) => warn!(error = %e, "cannot list local addresses; self-relay check covers only configured ones"),
        }
        own_ips.sort_unstable();
        own_ips.dedup();
        Self {
            nonce_key,
            epoch: Instant::now(),
            own: OwnAddresses { ips: own_ips, ports: vec![listen.port()..=listen.port()] },
            sfu,
        }
    }

    /// The TURN core's settings under `config`.
    fn server_config(&self, config: &Config) -> ServerConfig {
        let credentials = Credentials::new(
            &config.realm,
            &config.users,
            config.secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
        );
        let limits = &config.limits;
        ServerConfig {
            software: config.software.clone(),
            credentials,
            nonces: NonceSource::new(self.nonce_key, self.epoch, config.nonce_lifetime),
            relay_ip: config.relay_ip,
            advertised_ip: config.advertised_ip(),
            relay_ip_other: config.relay_ipv6.map(|(bind, advertised)| RelayIp { bind, advertised }),
            default_lifetime: config.default_lifetime,
            max_lifetime: config.max_lifetime,
            max_permissions: config.max_permissions,
            max_channels: config.max_channels,
            rfc5766_channel_numbers: config.rfc5766_channel_numbers,
            peer_filter: PeerFilter::new(config.allow_peers.clone(), config.deny_peers.clone()),
            own: self.own.clone(),
            sfu: self.sfu.clone(),
            // The totals are relay-wide budgets every core (UDP worker, TCP or TLS listener)
            // draws from (`Shared`), not per-core shares.
            unauthenticated: Rates {
                per_source: limits.unauthenticated_per_ip as f32,
                total: limits.unauthenticated_total as f32,
            },
            bandwidth: Bandwidth { per_allocation_bps: limits.allocation_bps, total_bps: limits.total_bps },
        }
    }
}

/// Binds the TCP and TLS listening sockets: `workers` SO_REUSEPORT sockets per address, the
/// first deciding the port where the config says 0 (TCP on server.listen's address then takes
/// the UDP port). Returns the sockets per worker and the bound addresses.
fn bind_streams(config: &Config, udp: SocketAddr) -> anyhow::Result<StreamListeners> {
    let mut wanted: Vec<(SocketAddr, Transport, &str)> = Vec::new();
    if let Some(tcp) = config.tcp_listen {
        let tcp = if tcp == config.listen { udp } else { tcp };
        wanted.push((tcp, Transport::Tcp, "tcp.listen"));
    }
    for addr in config.tls.iter().flat_map(|t| &t.listen) {
        wanted.push((*addr, Transport::Tls, "tls.listen"));
    }
    let mut per_worker: Vec<Vec<StreamListener>> = (0..config.workers).map(|_| Vec::new()).collect();
    let (mut tcp, mut tls) = (None, Vec::new());
    for (addr, transport, key) in wanted {
        let first = stream::bind_listener(addr).with_context(|| format!("{key}: cannot bind TCP {addr}"))?;
        let bound = first.local_addr()?;
        per_worker[0].push(StreamListener { socket: first, transport });
        for worker in per_worker.iter_mut().skip(1) {
            let socket = stream::bind_listener(bound).with_context(|| format!("{key}: cannot bind TCP {bound}"))?;
            worker.push(StreamListener { socket, transport });
        }
        match transport {
            Transport::Tcp => tcp = Some(bound),
            Transport::Tls => tls.push(bound),
        }
    }
    Ok((per_worker, tcp, tls))
}

/// Starts a worker thread that tells the main thread (`notice`) when it exits, however it exits.
fn spawn(
    name: String,
    notice: ExitNotice,
    run: impl FnOnce() + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let _notice = notice;
            run();
        })
        .with_context(|| format!("spawning thread {name}"))
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

/// Runs the relay until a signal ends it. Blocks the calling thread. `hooks` serve reloads.
///
/// Phases: bind every socket ([`bind_listeners`], [`start_sfu`]), spawn the workers
/// ([`spawn_workers`]), serve HTTP and heartbeats ([`serve`]), wait for signals ([`supervise`]),
/// drain ([`drain`]), stop.
pub fn run(config: Config, hooks: Hooks) -> anyhow::Result<()> {
    let started_at = unix_now();
    raise_fd_limit();
    if config.secrets.iter().any(|s| s == EXAMPLE_SECRET) && !config.advertised_ip().is_loopback() {
        warn!("auth.secrets contains the example secret from configs/relay.toml; anyone can mint credentials");
    }
    if config.secrets.is_empty() && config.cluster.is_some() {
        info!("auth.secrets is empty: TURN REST credentials are refused until signaling's first reply brings secrets");
    }
    for warning in config.capacity().warnings() {
        warn!("{warning}");
    }
    let mut seed = rand::rng();
    let shared = Arc::new(Shared::new(
        PortPool::new(*config.ports.start(), *config.ports.end(), seed.random()),
        Quotas::new(config.max_per_user, config.max_total),
    ));

    // Bind all listening sockets before anything runs.
    let (udp, (stream_listeners, tcp_addr, tls_addrs)) = bind_listeners(&config)?;
    let listen = udp.listen;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let admin_listener = runtime.block_on(admin::bind(config.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    let sfu = start_sfu(&runtime, &config, &udp)?;
    let sfu_candidates =
        if sfu.is_some() { vec![SocketAddr::new(config.advertised_ip(), listen.port())] } else { Vec::new() };
    let base = CoreBase::new(&config, listen, sfu_candidates);
    let server_config = Arc::new(base.server_config(&config));
    let turn_tls = match &config.tls {
        Some(t) => Some(super::tls::server_config(&t.cert, &t.key, super::tls::TURN_KEYS, &[])?),
        None => None,
    };

    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::unbounded_channel();
    let (sfu_handle, sfu_thread, sfu_http) = match sfu {
        Some((handle, thread, http)) => (Some(handle), Some(thread), Some(http)),
        None => (None, None, None),
    };
    let cores = Cores { config: &config, server_config: &server_config, shared: &shared, exit: &exit_tx };
    let workers = spawn_workers(&cores, udp.sockets, stream_listeners, turn_tls, sfu_handle.as_ref())?;

    let control = Arc::new(Control::new(workers.links));
    control.set_config_auth(&config.realm, &config.users, &config.secrets);
    let sfu_addr = sfu_http.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    let metrics = Arc::new(Metrics::new(workers.stats, workers.udp, Arc::clone(&shared), control.draining_flag())?);
    if let Some(handle) = &sfu_handle {
        metrics.attach_sfu(handle.clone())?;
    }
    // The certificates just loaded; renewals update them (see `reload`).
    let expiries = metrics.certificate_expiries();
    if let Some(t) = &config.tls {
        expiries.record("turn_tls", &t.cert);
    }
    if let (Some((cert, _)), true) = (&config.sfu_tls, sfu_handle.is_some()) {
        expiries.record("sfu_tls", cert);
    }
    if let Some(link) = &config.link {
        expiries.record("link", &link.cert);
    }
    let links = match &config.link {
        Some(link) => {
            let relay_id = config.cluster.as_ref().map(|c| c.relay_id.as_str());
            let metrics = metrics.register_links()?;
            Some(runtime.block_on(async { super::links::Links::start(link, relay_id, metrics) })?)
        }
        None => None,
    };
    let sfu_cell = sfu_http.as_ref().and_then(|(_, tls)| tls.clone());
    let live = {
        let base = base.clone();
        Arc::new(Live::new(
            hooks,
            config.clone(),
            Box::new(move |c| base.server_config(c)),
            Arc::clone(&control),
            Arc::clone(&shared),
            sfu_cell,
            metrics.certificate_expiries(),
        ))
    };
    let admin_state =
        AdminState { metrics: Arc::clone(&metrics), draining: control.draining_flag(), live: Arc::clone(&live) };
    let heartbeater = match &config.cluster {
        Some(cluster) => {
            let settings = cluster::Settings {
                cluster: cluster.clone(),
                turn_udp_port: listen.port(),
                turn_tls_port: tls_addrs.first().map(SocketAddr::port),
                started_at,
                sfu_url: sfu_addr.map(|addr| super::banner::sfu_public_url(&config, &cluster.public_host, addr)),
                sfu: sfu_handle.clone(),
                link_port: links.as_ref().map(|l| l.local_addr().map(|a| a.port())).transpose()?,
                links: links.as_ref().map(super::links::Links::handle),
            };
            Some(Heartbeater::new(settings, Arc::clone(&control), Arc::clone(&metrics))?)
        }
        None => None,
    };
    // Handlers go in before the banner: whoever reads "ready" may signal us right away, and a
    // signal before the handler exists would kill the process without draining.
    let mut signals = runtime.block_on(Signals::install())?;
    let relay = Relay {
        listen,
        listen_v4: udp.listen_v4,
        admin: admin_addr,
        sfu_http: sfu_addr,
        tcp: tcp_addr,
        tls: tls_addrs,
        link: links.as_ref().map(super::links::Links::local_addr).transpose()?,
    };
    super::banner::print_banner(&config, &relay);
    info!(udp = %listen, admin = %admin_addr, workers = workers.threads.len(), "relay started");

    let outcome = runtime.block_on(async {
        let sfu_http = sfu_http.zip(sfu_handle.clone()).map(|((http, tls), sfu)| {
            let state = whip::HttpState {
                sfu,
                keys: control.media_keys(),
                draining: control.draining_flag(),
                ended_sessions: control.ended_sessions(),
            };
            (http, tls, state)
        });
        serve(admin_listener, admin_state, heartbeater, sfu_http)?;
        if let Some(links) = &links {
            links.serve(sfu_handle.clone())?;
        }
        if supervise(&config, &live, &mut signals, &mut exit_rx).await? == Stop::Drain {
            drain(&config, &control, &metrics, sfu_handle.as_ref(), &mut signals, &mut exit_rx).await?;
        }
        Ok(())
    });
    control.stop();
    if let Some(links) = &links {
        links.close();
    }
    if let Some(handle) = &sfu_handle {
        handle.stop();
    }
    for thread in workers.threads.into_iter().chain(sfu_thread) {
        let _ = thread.join();
    }
    outcome
}

/// The TCP and TLS listening sockets per worker and their addresses (see [`bind_streams`]).
type StreamListeners = (Vec<Vec<StreamListener>>, Option<SocketAddr>, Vec<SocketAddr>);

/// Binds UDP, then TCP and TLS. With `server.listen` on port 0 and TCP on the same address, the
/// port the UDP socket got may be taken for TCP; then both are bound again on another port (a
/// few times), so that port 0 means "any port free for both".
fn bind_listeners(config: &Config) -> anyhow::Result<(UdpListeners, StreamListeners)> {
    const ATTEMPTS: usize = 8;
    let mut attempt = 1;
    loop {
        let udp = bind_udp(config)?;
        match bind_streams(config, udp.listen) {
            Ok(streams) => return Ok((udp, streams)),
            Err(e) if config.listen.port() == 0 && attempt < ATTEMPTS && addr_in_use(&e) => {
                warn!(udp = %udp.listen, "the UDP port is taken for TCP; binding both on another port");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn addr_in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse))
}

/// The UDP listening sockets: `workers` on `server.listen` (with port 0 the first picks the port
/// and the others join its SO_REUSEPORT group), and as many on 0.0.0.0 for a dual-stack `[::]`.
struct UdpListeners {
    sockets: Vec<std::net::UdpSocket>,
    listen: SocketAddr,
    listen_v4: Option<SocketAddr>,
}

fn bind_udp(config: &Config) -> anyhow::Result<UdpListeners> {
    let buffer = config.socket_buffer_bytes;
    let first = udp::bind_listener(config.listen, buffer, buffer)
        .with_context(|| format!("server.listen: cannot bind UDP {}", config.listen))?;
    let listen = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..config.workers {
        sockets.push(
            udp::bind_listener(listen, buffer, buffer)
                .with_context(|| format!("server.listen: cannot bind UDP {listen}"))?,
        );
    }
    // Dual stack: `[::]` serves IPv4 too, with a second group of workers on 0.0.0.0 and the same
    // port (IPv6 sockets are v6-only here, so every worker sees one family of clients).
    let mut listen_v4 = None;
    if listen.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), listen.port());
        for _ in 0..config.workers {
            sockets.push(
                udp::bind_listener(v4, buffer, buffer)
                    .with_context(|| format!("server.listen: cannot bind UDP {v4} (dual stack with {listen})"))?,
            );
        }
        listen_v4 = Some(v4);
    }
    Ok(UdpListeners { sockets, listen, listen_v4 })
}

/// The SFU thread and its WHIP/WHEP listener (with its TLS settings), when `sfu.http_listen` is
/// set.
type SfuParts = (sfu::SfuHandle, std::thread::JoinHandle<()>, (tokio::net::TcpListener, Option<SfuTls>));

/// The WHIP/WHEP listener's TLS settings, replaced when its certificate is renewed.
type SfuTls = Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>;

/// Starts the SFU thread, if configured. The SFU shares the UDP port: it sends from a duplicate
/// of a listening socket and advertises the public address of that port as its one candidate.
fn start_sfu(
    runtime: &tokio::runtime::Runtime,
    config: &Config,
    udp: &UdpListeners,
) -> anyhow::Result<Option<SfuParts>> {
    let Some(addr) = config.sfu_http_listen else { return Ok(None) };
    let http = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("sfu.http_listen: cannot bind TCP {addr}"))?;
    let tls = match &config.sfu_tls {
        Some((cert, key)) => {
            let tls = super::tls::server_config(cert, key, super::tls::SFU_KEYS, &[b"http/1.1"])?;
            Some(Arc::new(std::sync::RwLock::new(tls)))
        }
        None => None,
    };
    let public = SocketAddr::new(config.advertised_ip(), udp.listen.port());
    // The SFU's candidate is the advertised address: its socket must be of that family (with a
    // dual-stack listener, the IPv4 group's for an IPv4 address).
    let family = udp
        .sockets
        .iter()
        .find(|l| l.local_addr().is_ok_and(|a| a.is_ipv6() == public.is_ipv6()))
        .unwrap_or(&udp.sockets[0]);
    let socket = family.try_clone().context("duplicating the listening socket for the SFU")?;
    let (handle, thread) = sfu::start(socket, public)?;
    Ok(Some((handle, thread, (http, tls))))
}

/// What every core is made with.
struct Cores<'a> {
    config: &'a Config,
    server_config: &'a Arc<ServerConfig>,
    shared: &'a Arc<Shared>,
    exit: &'a tokio::sync::mpsc::UnboundedSender<usize>,
}

/// The running workers: their threads, how to steer them, their counters.
struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    links: Vec<WorkerLink>,
    stats: Vec<Arc<crate::turn::stats::Stats>>,
    /// How many of them are UDP workers (the first ones).
    udp: usize,
}

/// Spawns a UDP worker per listening socket, and for TURN over TCP and TLS as many threads as
/// UDP workers, each with a core per listener.
fn spawn_workers(
    cores: &Cores<'_>,
    udp_sockets: Vec<std::net::UdpSocket>,
    stream_listeners: Vec<Vec<StreamListener>>,
    turn_tls: Option<Arc<rustls::ServerConfig>>,
    sfu: Option<&sfu::SfuHandle>,
) -> anyhow::Result<Workers> {
    let config = cores.config;
    let mut seed = rand::rng();
    let now = Instant::now();
    let core = |seed: &mut rand::rngs::ThreadRng| {
        TurnServer::new(Arc::clone(cores.server_config), Arc::clone(cores.shared), now, unix_now(), seed.random())
    };
    let mut w = Workers { threads: Vec::new(), links: Vec::new(), stats: Vec::new(), udp: udp_sockets.len() };
    for (i, listener) in udp_sockets.into_iter().enumerate() {
        let server = core(&mut seed);
        w.stats.push(server.stats());
        let (tx, rx) = mpsc::channel();
        let settings = SocketSettings {
            relay_buffer: config.relay_socket_buffer_bytes,
            sfu: sfu.cloned(),
            busy_poll: config.busy_poll,
        };
        let (worker, waker) = Worker::new(listener, server, settings, rx).context("creating worker event loop")?;
        w.threads.push(spawn(format!("relay-worker-{i}"), ExitNotice(i, cores.exit.clone()), move || worker.run())?);
        w.links.push(WorkerLink { commands: tx, waker });
    }
    let stream_settings = StreamSettings {
        relay_buffer: config.relay_socket_buffer_bytes,
        limits: reload::conn_limits(config),
        table: Arc::new(ConnTable::default()),
        tls: turn_tls,
    };
    for (i, listeners) in stream_listeners.into_iter().enumerate().filter(|(_, l)| !l.is_empty()) {
        let mut with_cores = Vec::new();
        for l in listeners {
            let server = core(&mut seed);
            w.stats.push(server.stats());
            with_cores.push((l, server));
        }
        let (tx, rx) = mpsc::channel();
        let (worker, waker) =
            StreamWorker::new(with_cores, stream_settings.clone(), rx).context("creating TCP/TLS event loop")?;
        let notice = ExitNotice(w.udp + i, cores.exit.clone());
        w.threads.push(spawn(format!("relay-stream-{i}"), notice, move || worker.run())?);
        w.links.push(WorkerLink { commands: tx, waker });
    }
    Ok(w)
}

/// The signals the relay answers.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    async fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }
}

/// Spawns the admin endpoint, the heartbeats to signaling and the WHIP/WHEP listener on the
/// current runtime.
fn serve(
    admin_listener: tokio::net::TcpListener,
    admin_state: AdminState,
    heartbeater: Option<Heartbeater>,
    sfu_http: Option<(tokio::net::TcpListener, Option<SfuTls>, whip::HttpState)>,
) -> anyhow::Result<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, admin::router(admin_state)).await {
            error!(error = %e, "admin listener failed");
        }
    });
    if let Some(heartbeater) = heartbeater {
        tokio::spawn(heartbeater.run());
    }
    if let Some((http, tls, state)) = sfu_http {
        let router = whip::router(state);
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
    Ok(())
}

/// How the supervision ended.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// SIGINT: exit at once.
    Now,
    /// SIGTERM: drain first.
    Drain,
}

/// Serves reloads (SIGHUP) and certificate renewals until SIGINT or SIGTERM; a worker that exits
/// is an error.
async fn supervise(
    config: &Config,
    live: &Arc<Live>,
    signals: &mut Signals,
    exit_rx: &mut tokio::sync::mpsc::UnboundedReceiver<usize>,
) -> anyhow::Result<Stop> {
    // Certificate renewals are looked for this often (an hour when neither listener has TLS: the
    // timer then finds nothing to do).
    let watch = config.tls.as_ref().and_then(|t| t.watch).unwrap_or(Duration::from_secs(3600));
    let mut watch = tokio::time::interval_at(tokio::time::Instant::now() + watch, watch);
    loop {
        tokio::select! {
            _ = signals.int.recv() => {
                info!("SIGINT: exiting now");
                return Ok(Stop::Now);
            }
            Some(i) = exit_rx.recv() => anyhow::bail!("worker {i} exited unexpectedly"),
            _ = signals.hup.recv() => {
                let live = Arc::clone(live);
                // Reading files: off the runtime's only thread.
                match tokio::task::spawn_blocking(move || live.reload()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => error!("SIGHUP: reload failed, settings unchanged: {e:#}"),
                    Err(e) => error!(error = %e, "SIGHUP: reload task failed"),
                }
            }
            _ = watch.tick() => {
                let live = Arc::clone(live);
                let _ = tokio::task::spawn_blocking(move || live.check_certificates()).await;
            }
            _ = signals.term.recv() => return Ok(Stop::Drain),
        }
    }
}

/// SIGTERM: no new allocations; waits until none are left (nor SFU sessions), the grace period
/// is over, or a second signal says stop now.
async fn drain(
    config: &Config,
    control: &Control,
    metrics: &Metrics,
    sfu: Option<&sfu::SfuHandle>,
    signals: &mut Signals,
    exit_rx: &mut tokio::sync::mpsc::UnboundedReceiver<usize>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    info!(allocations = metrics.allocations(), grace_s = config.shutdown_grace.as_secs(), "SIGTERM: draining");
    control.drain_for_shutdown();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = signals.int.recv() => { info!("SIGINT during drain: exiting now"); break; }
            _ = signals.term.recv() => { info!("second SIGTERM: exiting now"); break; }
            Some(i) = exit_rx.recv() => anyhow::bail!("worker {i} exited unexpectedly"),
        }
        let left = metrics.allocations() + sfu.map_or(0, |h| h.snapshot().peers as i64);
        if left == 0 {
            info!("drained: no allocations or SFU sessions left");
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(sessions = left, "grace period over: exiting with allocations or SFU sessions still active");
            break;
        }
    }
    Ok(())
}
