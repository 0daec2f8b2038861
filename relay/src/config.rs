//! The relay's configuration: a TOML file (documented key by key in `configs/relay.toml`), every
//! key overridable by a command-line flag or an environment variable (flag > environment > file >
//! default). Raw values are parsed, then validated once into [`Config`]; an invalid value stops the
//! relay at start with a message that names the key. Unknown keys are errors, so a typo cannot
//! silently leave a default in place.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The file's contents. Every section and key is optional; defaults are in the `Default` impls.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerSection,
    pub relay: RelaySection,
    pub allocations: AllocationSection,
    pub auth: AuthSection,
    pub peers: PeerSection,
    pub admin: AdminSection,
    pub log: LogSection,
    pub shutdown: ShutdownSection,
    pub cluster: ClusterSection,
    pub sfu: SfuSection,
    pub tcp: TcpSection,
    pub tls: TlsSection,
    pub limits: LimitsSection,
}

/// `[tcp]`: TURN over TCP (RFC 8656 framing), with UDP relays toward peers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TcpSection {
    pub enabled: bool,
    /// "" = server.listen's address and port.
    pub listen: String,
}

impl Default for TcpSection {
    fn default() -> Self {
        Self { enabled: true, listen: String::new() }
    }
}

/// `[tls]`: TURN over TLS (turns:), on when `cert` and `key` are set.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// Addresses of the TLS listeners; empty = server.listen's IP on port 443.
    pub listen: Vec<String>,
    pub cert: String,
    pub key: String,
    /// How often the files are checked for a renewal (0 = only on reload).
    pub watch_secs: u64,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self { listen: Vec::new(), cert: String::new(), key: String::new(), watch_secs: 60 }
    }
}

/// `[limits]`: abuse controls.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Answers per second to one source IP (an IPv6 /64) that has no allocation and sent no
    /// credentials (401 challenges, Binding responses); 0 = no limit.
    pub unauthenticated_per_ip: u32,
    /// The same answers per second from the whole relay; 0 = no limit.
    pub unauthenticated_total: u32,
    /// Open TCP/TLS connections from one IP; 0 = no limit.
    pub connections_per_ip: u32,
    /// Open TCP/TLS connections in all; 0 = no limit.
    pub connections_total: u32,
    /// Time a TCP/TLS connection has to complete its TLS handshake and send a first message.
    pub handshake_timeout_secs: u64,
    /// A TCP/TLS connection without an allocation is closed after this long without a message.
    pub idle_timeout_secs: u64,
    /// Relayed bandwidth of one allocation, both directions together, in kbit/s; 0 = no cap.
    pub allocation_kbps: u64,
    /// Relayed bandwidth of the whole relay in Mbit/s; 0 = no cap.
    pub total_mbps: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            // A browser's ICE gathering costs one or two unauthenticated answers per TURN URL; 50/s
            // lets a few hundred users behind one NAT start at once and a flood get nothing useful.
            unauthenticated_per_ip: 50,
            unauthenticated_total: 5000,
            // Players behind one office or campus NAT share an address: room for a few hundred.
            connections_per_ip: 256,
            connections_total: 20_000,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 60,
            allocation_kbps: 0,
            total_mbps: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: String,
    pub workers: usize,
    pub realm: String,
    pub software: String,
    pub socket_buffer_bytes: usize,
    pub busy_poll_us: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:3478".into(),
            workers: 0,
            realm: "relay".into(),
            software: concat!("relay/", env!("CARGO_PKG_VERSION")).into(),
            socket_buffer_bytes: 4 << 20,
            busy_poll_us: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_ip: Option<String>,
    /// A second, IPv6 relay address beside an IPv4 relay.ip (dual stack, RFC 6156).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_ipv6: Option<String>,
    pub min_port: u16,
    pub max_port: u16,
    pub socket_buffer_bytes: usize,
}

impl Default for RelaySection {
    fn default() -> Self {
        // RFC 8656 §7.2 recommends the dynamic range 49152-65535. A 1 MiB buffer per relay socket
        // rides out scheduling hiccups at high packet rates; it is a limit, not an allocation:
        // the kernel charges only for datagrams actually queued.
        Self {
            ip: None,
            external_ip: None,
            ipv6: None,
            external_ipv6: None,
            min_port: 49152,
            max_port: 65535,
            socket_buffer_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AllocationSection {
    pub default_lifetime_secs: u64,
    pub max_lifetime_secs: u64,
    pub max_per_user: u32,
    pub max_total: u32,
    pub max_permissions: usize,
    pub max_channels: usize,
    pub rfc5766_channel_numbers: bool,
}

impl Default for AllocationSection {
    fn default() -> Self {
        Self {
            // RFC 8656 §7.2: default allocation lifetime 600 s; a one-hour maximum as coturn's default.
            default_lifetime_secs: 600,
            max_lifetime_secs: 3600,
            max_per_user: 10,
            max_total: 50_000,
            max_permissions: 32,
            max_channels: 32,
            rfc5766_channel_numbers: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub secrets: Vec<String>,
    pub users: Vec<StaticUser>,
    pub nonce_lifetime_secs: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        // Ten minutes, as coturn's stale-nonce default.
        Self { secrets: Vec::new(), users: Vec::new(), nonce_lifetime_secs: 600 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PeerSection {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// `[sfu]`: the selective forwarding unit on the shared UDP port.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SfuSection {
    /// HTTP address of the WHIP/WHEP endpoints; "" = no SFU.
    pub http_listen: String,
    /// Public base URL of those endpoints as clients reach them (e.g. behind a TLS proxy);
    /// "" = `http(s)://<cluster.public_host>:<http_listen's port>`.
    pub public_url: String,
    /// PEM certificate chain for HTTPS on http_listen; "" = plain HTTP (e.g. behind a proxy).
    pub tls_cert: String,
    /// PEM private key of tls_cert.
    pub tls_key: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub listen: String,
}

impl Default for AdminSection {
    fn default() -> Self {
        // Loopback only: metrics are not for the internet (eturnal's default of `any` is a pitfall).
        Self { listen: "127.0.0.1:9090".into() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: String,
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self { format: "text".into(), level: "info".into() }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    pub grace_secs: u64,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self { grace_secs: 30 }
    }
}

/// Membership in a cluster run by a signaling service (`cluster::heartbeat`). Without
/// `signaling_url` the relay stands alone and sends no heartbeats.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signaling_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_host: Option<String>,
    pub bandwidth_cap_mbps: u64,
}

/// Flags and environment variables; each overrides the file key named in its help.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// server.listen: UDP address for STUN/TURN.
    #[arg(long, env = "RELAY_LISTEN")]
    pub listen: Option<String>,
    /// server.workers: worker threads (0 = one per core).
    #[arg(long, env = "RELAY_WORKERS")]
    pub workers: Option<usize>,
    /// server.realm: realm of the long-term credentials.
    #[arg(long, env = "RELAY_REALM")]
    pub realm: Option<String>,
    /// server.software: SOFTWARE attribute in responses ("" to omit).
    #[arg(long, env = "RELAY_SOFTWARE")]
    pub software: Option<String>,
    /// server.socket_buffer_bytes: receive/send buffer of the listening sockets.
    #[arg(long, env = "RELAY_SOCKET_BUFFER_BYTES")]
    pub socket_buffer_bytes: Option<usize>,
    /// server.busy_poll_us: keep polling this long after traffic before sleeping (0 = off).
    #[arg(long, env = "RELAY_BUSY_POLL_US")]
    pub busy_poll_us: Option<u64>,
    /// relay.ip: address relay sockets bind to.
    #[arg(long, env = "RELAY_RELAY_IP")]
    pub relay_ip: Option<String>,
    /// relay.external_ip: public address advertised behind 1:1 NAT.
    #[arg(long, env = "RELAY_EXTERNAL_IP")]
    pub external_ip: Option<String>,
    /// relay.ipv6: an IPv6 relay address beside an IPv4 relay.ip (dual stack).
    #[arg(long, env = "RELAY_RELAY_IPV6")]
    pub relay_ipv6: Option<String>,
    /// relay.external_ipv6: public IPv6 address advertised for relay.ipv6.
    #[arg(long, env = "RELAY_EXTERNAL_IPV6")]
    pub external_ipv6: Option<String>,
    /// relay.min_port: lowest relay port.
    #[arg(long, env = "RELAY_MIN_PORT")]
    pub min_port: Option<u16>,
    /// relay.max_port: highest relay port.
    #[arg(long, env = "RELAY_MAX_PORT")]
    pub max_port: Option<u16>,
    /// relay.socket_buffer_bytes: receive/send buffer of each relay socket.
    #[arg(long, env = "RELAY_RELAY_SOCKET_BUFFER_BYTES")]
    pub relay_socket_buffer_bytes: Option<usize>,
    /// allocations.default_lifetime_secs.
    #[arg(long, env = "RELAY_DEFAULT_LIFETIME_SECS")]
    pub default_lifetime_secs: Option<u64>,
    /// allocations.max_lifetime_secs.
    #[arg(long, env = "RELAY_MAX_LIFETIME_SECS")]
    pub max_lifetime_secs: Option<u64>,
    /// allocations.max_per_user (0 = no limit).
    #[arg(long, env = "RELAY_MAX_PER_USER")]
    pub max_per_user: Option<u32>,
    /// allocations.max_total (0 = no limit).
    #[arg(long, env = "RELAY_MAX_TOTAL")]
    pub max_total: Option<u32>,
    /// allocations.max_permissions: per allocation.
    #[arg(long, env = "RELAY_MAX_PERMISSIONS")]
    pub max_permissions: Option<usize>,
    /// allocations.max_channels: per allocation.
    #[arg(long, env = "RELAY_MAX_CHANNELS")]
    pub max_channels: Option<usize>,
    /// allocations.rfc5766_channel_numbers: also accept channels 0x5000-0x7FFF (older clients).
    #[arg(long, env = "RELAY_RFC5766_CHANNEL_NUMBERS")]
    pub rfc5766_channel_numbers: Option<bool>,
    /// auth.secrets: TURN REST shared secrets (repeat the flag, or comma-separate in the variable).
    #[arg(long = "auth-secret", env = "RELAY_AUTH_SECRETS", value_delimiter = ',', hide_env_values = true)]
    pub secrets: Option<Vec<String>>,
    /// auth.users: static users as username:password (repeatable; comma-separated in the variable).
    #[arg(long = "user", env = "RELAY_USERS", value_delimiter = ',', hide_env_values = true)]
    pub users: Option<Vec<String>>,
    /// auth.nonce_lifetime_secs.
    #[arg(long, env = "RELAY_NONCE_LIFETIME_SECS")]
    pub nonce_lifetime_secs: Option<u64>,
    /// peers.allow: CIDR ranges opened despite the default deny list (repeatable).
    #[arg(long = "allow-peer", env = "RELAY_ALLOW_PEERS", value_delimiter = ',')]
    pub allow_peers: Option<Vec<String>>,
    /// peers.deny: extra CIDR ranges to refuse (repeatable).
    #[arg(long = "deny-peer", env = "RELAY_DENY_PEERS", value_delimiter = ',')]
    pub deny_peers: Option<Vec<String>>,
    /// admin.listen: address of the metrics and health endpoint.
    #[arg(long, env = "RELAY_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// sfu.http_listen: address of the WHIP/WHEP endpoints ("" = no SFU).
    #[arg(long, env = "RELAY_SFU_HTTP_LISTEN")]
    pub sfu_http_listen: Option<String>,
    /// sfu.public_url: the WHIP/WHEP base URL clients use (default http://<public_host>:<port>).
    #[arg(long, env = "RELAY_SFU_PUBLIC_URL")]
    pub sfu_public_url: Option<String>,
    /// sfu.tls_cert: PEM certificate chain; with sfu.tls_key, the WHIP/WHEP listener speaks HTTPS.
    #[arg(long, env = "RELAY_SFU_TLS_CERT")]
    pub sfu_tls_cert: Option<String>,
    /// sfu.tls_key: PEM private key of sfu.tls_cert.
    #[arg(long, env = "RELAY_SFU_TLS_KEY")]
    pub sfu_tls_key: Option<String>,
    /// tcp.enabled: TURN over TCP.
    #[arg(long = "tcp", env = "RELAY_TCP")]
    pub tcp_enabled: Option<bool>,
    /// tcp.listen: TCP address ("" = server.listen's).
    #[arg(long, env = "RELAY_TCP_LISTEN")]
    pub tcp_listen: Option<String>,
    /// tls.listen: TLS addresses (repeatable; default server.listen's IP, port 443).
    #[arg(long = "tls-listen", env = "RELAY_TLS_LISTEN", value_delimiter = ',')]
    pub tls_listen: Option<Vec<String>>,
    /// tls.cert: PEM certificate chain for TURN over TLS (with tls.key).
    #[arg(long, env = "RELAY_TLS_CERT")]
    pub tls_cert: Option<String>,
    /// tls.key: PEM private key of tls.cert.
    #[arg(long, env = "RELAY_TLS_KEY")]
    pub tls_key: Option<String>,
    /// tls.watch_secs: how often the certificate files are checked for renewal (0 = never).
    #[arg(long, env = "RELAY_TLS_WATCH_SECS")]
    pub tls_watch_secs: Option<u64>,
    /// limits.unauthenticated_per_ip: answers per second per source without credentials.
    #[arg(long, env = "RELAY_UNAUTHENTICATED_PER_IP")]
    pub unauthenticated_per_ip: Option<u32>,
    /// limits.unauthenticated_total: such answers per second in all.
    #[arg(long, env = "RELAY_UNAUTHENTICATED_TOTAL")]
    pub unauthenticated_total: Option<u32>,
    /// limits.connections_per_ip: open TCP/TLS connections per source IP.
    #[arg(long, env = "RELAY_CONNECTIONS_PER_IP")]
    pub connections_per_ip: Option<u32>,
    /// limits.connections_total: open TCP/TLS connections in all.
    #[arg(long, env = "RELAY_CONNECTIONS_TOTAL")]
    pub connections_total: Option<u32>,
    /// limits.handshake_timeout_secs: TLS handshake and first message deadline.
    #[arg(long, env = "RELAY_HANDSHAKE_TIMEOUT_SECS")]
    pub handshake_timeout_secs: Option<u64>,
    /// limits.idle_timeout_secs: idle TCP/TLS connections without an allocation are closed.
    #[arg(long, env = "RELAY_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// limits.allocation_kbps: bandwidth cap per allocation in kbit/s (0 = none).
    #[arg(long, env = "RELAY_ALLOCATION_KBPS")]
    pub allocation_kbps: Option<u64>,
    /// limits.total_mbps: bandwidth cap of the relay in Mbit/s (0 = none).
    #[arg(long, env = "RELAY_TOTAL_MBPS")]
    pub total_mbps: Option<u64>,
    /// log.format: text or json.
    #[arg(long, env = "RELAY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// log.level: a tracing filter such as info or relay=debug.
    #[arg(long, env = "RELAY_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// shutdown.grace_secs: how long SIGTERM waits for allocations to end.
    #[arg(long, env = "RELAY_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// cluster.signaling_url: signaling's base URL (http or https); unset = standalone relay.
    #[arg(long, env = "RELAY_SIGNALING_URL")]
    pub signaling_url: Option<String>,
    /// cluster.token: bearer token for signaling (prefer the variable: flags show in `ps`).
    #[arg(long, env = "RELAY_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// cluster.region: the region this relay serves, as signaling names it.
    #[arg(long, env = "RELAY_REGION")]
    pub region: Option<String>,
    /// cluster.relay_id: unique, stable id of this relay (default: the host name).
    #[arg(long, env = "RELAY_RELAY_ID")]
    pub relay_id: Option<String>,
    /// cluster.public_host: host name or IP clients use (default: the advertised address).
    #[arg(long, env = "RELAY_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// cluster.bandwidth_cap_mbps: link capacity reported to signaling (0 = unknown).
    #[arg(long, env = "RELAY_BANDWIDTH_CAP_MBPS")]
    pub bandwidth_cap_mbps: Option<u64>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        // toml's message names the key and the line, e.g. "unknown field `lisen`".
        Ok(toml::from_str(text)?)
    }

    /// Applies flags and environment variables over the file's values.
    pub fn apply(&mut self, o: &Overrides) -> anyhow::Result<()> {
        fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *slot = v.clone();
            }
        }
        set(&mut self.server.listen, &o.listen);
        set(&mut self.server.workers, &o.workers);
        set(&mut self.server.realm, &o.realm);
        set(&mut self.server.software, &o.software);
        set(&mut self.server.socket_buffer_bytes, &o.socket_buffer_bytes);
        set(&mut self.server.busy_poll_us, &o.busy_poll_us);
        if o.relay_ip.is_some() {
            self.relay.ip = o.relay_ip.clone();
        }
        if o.external_ip.is_some() {
            self.relay.external_ip = o.external_ip.clone();
        }
        if o.relay_ipv6.is_some() {
            self.relay.ipv6 = o.relay_ipv6.clone();
        }
        if o.external_ipv6.is_some() {
            self.relay.external_ipv6 = o.external_ipv6.clone();
        }
        set(&mut self.relay.min_port, &o.min_port);
        set(&mut self.relay.max_port, &o.max_port);
        set(&mut self.relay.socket_buffer_bytes, &o.relay_socket_buffer_bytes);
        set(&mut self.allocations.default_lifetime_secs, &o.default_lifetime_secs);
        set(&mut self.allocations.max_lifetime_secs, &o.max_lifetime_secs);
        set(&mut self.allocations.max_per_user, &o.max_per_user);
        set(&mut self.allocations.max_total, &o.max_total);
        set(&mut self.allocations.max_permissions, &o.max_permissions);
        set(&mut self.allocations.max_channels, &o.max_channels);
        set(&mut self.allocations.rfc5766_channel_numbers, &o.rfc5766_channel_numbers);
        set(&mut self.auth.secrets, &o.secrets);
        if let Some(users) = &o.users {
            self.auth.users = users
                .iter()
                .map(|u| match u.split_once(':') {
                    Some((username, password)) if !username.is_empty() => {
                        Ok(StaticUser { username: username.into(), password: password.into() })
                    }
                    _ => bail!("auth.users (--user): expected username:password, got {u:?}"),
                })
                .collect::<anyhow::Result<_>>()?;
        }
        set(&mut self.auth.nonce_lifetime_secs, &o.nonce_lifetime_secs);
        set(&mut self.peers.allow, &o.allow_peers);
        set(&mut self.peers.deny, &o.deny_peers);
        set(&mut self.admin.listen, &o.admin_listen);
        set(&mut self.sfu.http_listen, &o.sfu_http_listen);
        set(&mut self.sfu.public_url, &o.sfu_public_url);
        set(&mut self.sfu.tls_cert, &o.sfu_tls_cert);
        set(&mut self.sfu.tls_key, &o.sfu_tls_key);
        set(&mut self.tcp.enabled, &o.tcp_enabled);
        set(&mut self.tcp.listen, &o.tcp_listen);
        set(&mut self.tls.listen, &o.tls_listen);
        set(&mut self.tls.cert, &o.tls_cert);
        set(&mut self.tls.key, &o.tls_key);
        set(&mut self.tls.watch_secs, &o.tls_watch_secs);
        let l = &mut self.limits;
        set(&mut l.unauthenticated_per_ip, &o.unauthenticated_per_ip);
        set(&mut l.unauthenticated_total, &o.unauthenticated_total);
        set(&mut l.connections_per_ip, &o.connections_per_ip);
        set(&mut l.connections_total, &o.connections_total);
        set(&mut l.handshake_timeout_secs, &o.handshake_timeout_secs);
        set(&mut l.idle_timeout_secs, &o.idle_timeout_secs);
        set(&mut l.allocation_kbps, &o.allocation_kbps);
        set(&mut l.total_mbps, &o.total_mbps);
        set(&mut self.log.format, &o.log_format);
        set(&mut self.log.level, &o.log_level);
        set(&mut self.shutdown.grace_secs, &o.shutdown_grace_secs);
        let c = &mut self.cluster;
        for (slot, value) in [
            (&mut c.signaling_url, &o.signaling_url),
            (&mut c.token, &o.cluster_token),
            (&mut c.region, &o.region),
            (&mut c.relay_id, &o.relay_id),
            (&mut c.public_host, &o.public_host),
        ] {
            if value.is_some() {
                slot.clone_from(value);
            }
        }
        set(&mut c.bandwidth_cap_mbps, &o.bandwidth_cap_mbps);
        Ok(())
    }

    /// A copy fit for printing: secrets and passwords replaced.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        c.auth.secrets.iter_mut().for_each(|s| *s = "<redacted>".into());
        c.auth.users.iter_mut().for_each(|u| u.password = "<redacted>".into());
        c.cluster.token.iter_mut().for_each(|t| *t = "<redacted>".into());
        c
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub workers: usize,
    pub realm: String,
    pub software: String,
    pub socket_buffer_bytes: usize,
    /// How long a UDP worker keeps polling after traffic before sleeping (zero = off).
    pub busy_poll: Duration,
    pub relay_ip: IpAddr,
    pub external_ip: Option<IpAddr>,
    /// The IPv6 relay address (bind, advertised) beside an IPv4 relay_ip.
    pub relay_ipv6: Option<(IpAddr, IpAddr)>,
    pub ports: RangeInclusive<u16>,
    pub relay_socket_buffer_bytes: usize,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub max_per_user: u32,
    pub max_total: u32,
    pub max_permissions: usize,
    pub max_channels: usize,
    pub rfc5766_channel_numbers: bool,
    pub secrets: Vec<String>,
    pub users: Vec<(String, String)>,
    pub nonce_lifetime: Duration,
    pub allow_peers: Vec<IpNet>,
    pub deny_peers: Vec<IpNet>,
    pub admin_listen: SocketAddr,
    /// WHIP/WHEP HTTP address; `None` = no SFU.
    pub sfu_http_listen: Option<SocketAddr>,
    /// The WHIP/WHEP base URL given to signaling; `None` = derived from the public host.
    pub sfu_public_url: Option<String>,
    /// HTTPS on the WHIP/WHEP listener: certificate chain and key files.
    pub sfu_tls: Option<(PathBuf, PathBuf)>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_grace: Duration,
    /// Heartbeats to signaling; `None` for a standalone relay.
    pub cluster: Option<ClusterConfig>,
    /// TURN over TCP: the listening address (`None` = off).
    pub tcp_listen: Option<SocketAddr>,
    /// TURN over TLS: listening addresses, certificate chain and key files (`None` = off).
    pub tls: Option<TlsConfig>,
    pub limits: Limits,
}

/// The validated `[tls]` section, when TLS is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `None` = the files are re-read only on reload.
    pub watch: Option<Duration>,
}

/// The validated `[limits]` section (0 = no limit where a count).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub unauthenticated_per_ip: u32,
    pub unauthenticated_total: u32,
    pub connections_per_ip: u32,
    pub connections_total: u32,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// Bits per second; 0 = no cap.
    pub allocation_bps: u64,
    pub total_bps: u64,
}

/// The validated `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Signaling's base URL as configured (http or https, no query, fragment or user info).
    pub signaling_url: reqwest::Url,
    /// Where heartbeats go: the base URL followed by `cluster::heartbeat::PATH`.
    pub heartbeat_url: reqwest::Url,
    pub token: ClusterToken,
    /// `[a-z0-9-]+`, as signaling names its regions.
    pub region: String,
    /// `[a-z0-9.-]+`; the host name (lowercased) unless configured.
    pub relay_id: String,
    /// A DNS name or a bare IP address (IPv6 without brackets).
    pub public_host: String,
    /// 0 = unknown.
    pub bandwidth_cap_bps: u64,
}

/// The cluster's bearer token. Its `Debug` prints no key material, so a `Config` can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterToken(pub String);

impl std::fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterToken(<redacted>)")
    }
}

/// Longest region and relay id accepted: 64 bytes, what signaling accepts for its ids.
const MAX_REGION_LEN: usize = 64;
const MAX_RELAY_ID_LEN: usize = 64;

/// The example secret shipped in `configs/relay.toml` for the local deployment; the relay warns
/// when it is used on a public address.
pub const EXAMPLE_SECRET: &str = "local-dev-secret-change-me";

fn parse_key<T: FromStr>(key: &str, value: &str) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e| anyhow::anyhow!("{key}: invalid value {value:?}: {e}"))
}

/// A CIDR range, or a bare address meaning just that address.
fn parse_net(key: &str, value: &str) -> anyhow::Result<IpNet> {
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    match value.parse::<IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => bail!("{key}: invalid CIDR range {value:?} (expected e.g. 10.0.0.0/8 or 192.0.2.1)"),
    }
}

impl Config {
    /// Validates `file` (after overrides). Every error names the key.
    pub fn from_file(file: &FileConfig) -> anyhow::Result<Self> {
        let listen: SocketAddr = parse_key("server.listen", &file.server.listen)?;
        let workers = match file.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n if n > 1024 => bail!("server.workers: {n} is more than 1024"),
            n => n,
        };
        if file.server.busy_poll_us > 1000 {
            bail!("server.busy_poll_us: {} is more than 1000 (a millisecond)", file.server.busy_poll_us);
        }
        if file.server.realm.is_empty() || file.server.realm.len() > 763 {
            bail!("server.realm: must be 1 to 763 bytes (RFC 8489 §14.9)");
        }
        if file.server.software.len() > 763 {
            bail!("server.software: must be at most 763 bytes (RFC 8489 §14.14)");
        }
        let relay_ip = match &file.relay.ip {
            Some(ip) => parse_key("relay.ip", ip)?,
            None if !listen.ip().is_unspecified() => listen.ip(),
            None => default_relay_ip(listen.ip()).context(
                "relay.ip: the listen address is unspecified and no local address could be found; set relay.ip",
            )?,
        };
        if relay_ip.is_unspecified() || relay_ip.is_multicast() {
            bail!("relay.ip: {relay_ip} cannot be advertised to clients; set a unicast address");
        }
        let external_ip = match &file.relay.external_ip {
            Some(ip) => {
                let ip: IpAddr = parse_key("relay.external_ip", ip)?;
                if ip.is_ipv4() != relay_ip.is_ipv4() {
                    bail!("relay.external_ip: {ip} is not of the same address family as relay.ip {relay_ip}");
                }
                Some(ip)
            }
            None => None,
        };
        let relay_ipv6 = match (&file.relay.ipv6, &file.relay.external_ipv6) {
            (None, None) => None,
            (None, Some(_)) => bail!("relay.external_ipv6: needs relay.ipv6"),
            (Some(ip), external) => {
                let ip: IpAddr = parse_key("relay.ipv6", ip)?;
                if !ip.is_ipv6() || ip.is_unspecified() || ip.is_multicast() {
                    bail!("relay.ipv6: {ip} is not a unicast IPv6 address");
                }
                if relay_ip.is_ipv6() {
                    bail!("relay.ipv6: relay.ip {relay_ip} is IPv6 already; relay.ipv6 adds IPv6 to an IPv4 relay");
                }
                let advertised = match external {
                    Some(v) => {
                        let e: IpAddr = parse_key("relay.external_ipv6", v)?;
                        if !e.is_ipv6() {
                            bail!("relay.external_ipv6: {e} is not an IPv6 address");
                        }
                        e
                    }
                    None => ip,
                };
                Some((ip, advertised))
            }
        };
        let (min, max) = (file.relay.min_port, file.relay.max_port);
        if min == 0 || min > max {
            bail!("relay.min_port/relay.max_port: need 1 <= min_port <= max_port, got {min}..{max}");
        }
        if (min..=max).contains(&listen.port()) {
            bail!("relay.min_port/relay.max_port: the range {min}..{max} contains server.listen's port");
        }
        let a = &file.allocations;
        if a.default_lifetime_secs == 0 {
            bail!("allocations.default_lifetime_secs: must be positive");
        }
        if a.max_lifetime_secs < a.default_lifetime_secs {
            bail!("allocations.max_lifetime_secs: must be at least allocations.default_lifetime_secs");
        }
        if a.max_lifetime_secs > u64::from(u32::MAX) {
            bail!("allocations.max_lifetime_secs: must fit the 32-bit LIFETIME attribute");
        }
        if a.max_permissions == 0 || a.max_channels == 0 {
            bail!("allocations.max_permissions/max_channels: must be at least 1");
        }
        if a.max_channels > 4096 {
            bail!("allocations.max_channels: at most 4096 channel numbers exist (RFC 8656 §12)");
        }
        for (i, s) in file.auth.secrets.iter().enumerate() {
            if s.is_empty() {
                bail!("auth.secrets[{i}]: empty secret");
            }
        }
        for (i, u) in file.auth.users.iter().enumerate() {
            if u.username.is_empty() || u.username.len() > 513 {
                bail!("auth.users[{i}].username: must be 1 to 513 bytes (RFC 8489 §14.3)");
            }
        }
        // Parsed before the credential check: with signaling, TURN REST secrets come from there.
        let cluster = cluster_config(&file.cluster, external_ip.unwrap_or(relay_ip))?;
        if file.auth.secrets.is_empty() && file.auth.users.is_empty() && cluster.is_none() {
            bail!(
                "auth: no credentials configured; set auth.secrets (TURN REST) or auth.users, or \
                 cluster.signaling_url to receive secrets from signaling"
            );
        }
        if file.auth.nonce_lifetime_secs == 0 {
            bail!("auth.nonce_lifetime_secs: must be positive");
        }
        let allow_peers =
            file.peers.allow.iter().map(|v| parse_net("peers.allow", v)).collect::<anyhow::Result<_>>()?;
        let deny_peers = file.peers.deny.iter().map(|v| parse_net("peers.deny", v)).collect::<anyhow::Result<_>>()?;
        let admin_listen = parse_key("admin.listen", &file.admin.listen)?;
        let sfu_http_listen = match file.sfu.http_listen.trim() {
            "" => None,
            v => Some(parse_key("sfu.http_listen", v)?),
        };
        let sfu_public_url = match file.sfu.public_url.trim() {
            "" => None,
            v => {
                let url: reqwest::Url = parse_key("sfu.public_url", v)?;
                if !matches!(url.scheme(), "http" | "https") || url.query().is_some() || url.fragment().is_some() {
                    bail!("sfu.public_url: expected an http or https URL without query or fragment, got {v:?}");
                }
                Some(v.trim_end_matches('/').to_owned())
            }
        };
        let sfu_tls = match (file.sfu.tls_cert.trim(), file.sfu.tls_key.trim()) {
            ("", "") => None,
            ("", _) => bail!("sfu.tls_cert: required with sfu.tls_key"),
            (_, "") => bail!("sfu.tls_key: required with sfu.tls_cert"),
            (cert, key) => Some((PathBuf::from(cert), PathBuf::from(key))),
        };
        let tcp_listen = match (file.tcp.enabled, file.tcp.listen.trim()) {
            (false, _) => None,
            (true, "") => Some(listen),
            (true, v) => Some(parse_key("tcp.listen", v)?),
        };
        let tls = match (file.tls.cert.trim(), file.tls.key.trim()) {
            ("", "") => None,
            ("", _) => bail!("tls.cert: required with tls.key"),
            (_, "") => bail!("tls.key: required with tls.cert"),
            (cert, key) => {
                let listen = if file.tls.listen.is_empty() {
                    vec![SocketAddr::new(listen.ip(), 443)]
                } else {
                    file.tls.listen.iter().map(|v| parse_key("tls.listen", v)).collect::<anyhow::Result<_>>()?
                };
                let watch = (file.tls.watch_secs > 0).then(|| Duration::from_secs(file.tls.watch_secs));
                Some(TlsConfig { listen, cert: PathBuf::from(cert), key: PathBuf::from(key), watch })
            }
        };
        if file.tls.cert.trim().is_empty() && !file.tls.listen.is_empty() {
            bail!("tls.listen: set tls.cert and tls.key to serve TURN over TLS");
        }
        let l = &file.limits;
        if l.handshake_timeout_secs == 0 {
            bail!("limits.handshake_timeout_secs: must be positive");
        }
        if l.idle_timeout_secs == 0 {
            bail!("limits.idle_timeout_secs: must be positive");
        }
        let limits = Limits {
            unauthenticated_per_ip: l.unauthenticated_per_ip,
            unauthenticated_total: l.unauthenticated_total,
            connections_per_ip: l.connections_per_ip,
            connections_total: l.connections_total,
            handshake_timeout: Duration::from_secs(l.handshake_timeout_secs),
            idle_timeout: Duration::from_secs(l.idle_timeout_secs),
            allocation_bps: l
                .allocation_kbps
                .checked_mul(1000)
                .with_context(|| format!("limits.allocation_kbps: {} is too large", l.allocation_kbps))?,
            total_bps: l
                .total_mbps
                .checked_mul(1_000_000)
                .with_context(|| format!("limits.total_mbps: {} is too large", l.total_mbps))?,
        };
        let log_format = match file.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => bail!("log.format: expected \"text\" or \"json\", got {other:?}"),
        };
        tracing_subscriber::EnvFilter::try_new(&file.log.level)
            .map_err(|e| anyhow::anyhow!("log.level: invalid filter {:?}: {e}", file.log.level))?;
        Ok(Self {
            listen,
            workers,
            realm: file.server.realm.clone(),
            software: file.server.software.clone(),
            socket_buffer_bytes: file.server.socket_buffer_bytes,
            busy_poll: Duration::from_micros(file.server.busy_poll_us),
            relay_ip,
            external_ip,
            relay_ipv6,
            ports: min..=max,
            relay_socket_buffer_bytes: file.relay.socket_buffer_bytes,
            default_lifetime: Duration::from_secs(a.default_lifetime_secs),
            max_lifetime: Duration::from_secs(a.max_lifetime_secs),
            max_per_user: a.max_per_user,
            max_total: a.max_total,
            max_permissions: a.max_permissions,
            max_channels: a.max_channels,
            rfc5766_channel_numbers: a.rfc5766_channel_numbers,
            secrets: file.auth.secrets.clone(),
            users: file.auth.users.iter().map(|u| (u.username.clone(), u.password.clone())).collect(),
            nonce_lifetime: Duration::from_secs(file.auth.nonce_lifetime_secs),
            allow_peers,
            deny_peers,
            admin_listen,
            sfu_http_listen,
            sfu_public_url,
            sfu_tls,
            log_format,
            log_level: file.log.level.clone(),
            shutdown_grace: Duration::from_secs(file.shutdown.grace_secs),
            cluster,
            tcp_listen,
            tls,
            limits,
        })
    }

    /// Loads the file at `path` (if any), applies overrides and validates.
    pub fn load(path: Option<&PathBuf>, overrides: &Overrides) -> anyhow::Result<(FileConfig, Self)> {
        let mut file = match path {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        file.apply(overrides)?;
        let config = Self::from_file(&file)?;
        Ok((file, config))
    }

    /// The address clients are told to use for relayed traffic.
    pub fn advertised_ip(&self) -> IpAddr {
        self.external_ip.unwrap_or(self.relay_ip)
    }
}

/// Validates `[cluster]`; `None` without a signaling URL. The other keys are checked even then, so a
/// typo shows up before the URL is added.
fn cluster_config(c: &ClusterSection, advertised_ip: IpAddr) -> anyhow::Result<Option<ClusterConfig>> {
    if let Some(region) = &c.region {
        check_id("cluster.region", region, MAX_REGION_LEN, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
        })?;
    }
    if let Some(id) = &c.relay_id {
        check_id("cluster.relay_id", id, MAX_RELAY_ID_LEN, is_relay_id_byte)?;
    }
    if let Some(host) = &c.public_host {
        check_host("cluster.public_host", host)?;
    }
    if let Some(token) = &c.token
        && (token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()))
    {
        // It goes into an Authorization header as is.
        bail!("cluster.token: must be non-empty printable ASCII without spaces");
    }
    let bandwidth_cap_bps = c
        .bandwidth_cap_mbps
        .checked_mul(1_000_000)
        .with_context(|| format!("cluster.bandwidth_cap_mbps: {} is too large", c.bandwidth_cap_mbps))?;
    let Some(url) = &c.signaling_url else {
        return Ok(None);
    };
    let signaling_url =
        reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("cluster.signaling_url: invalid URL {url:?}: {e}"))?;
    if !matches!(signaling_url.scheme(), "http" | "https") || signaling_url.host().is_none() {
        bail!("cluster.signaling_url: expected an http:// or https:// URL with a host, got {url:?}");
    }
    if signaling_url.query().is_some() || signaling_url.fragment().is_some() {
        bail!("cluster.signaling_url: must not have a query or fragment, got {url:?}");
    }
    if !signaling_url.username().is_empty() || signaling_url.password().is_some() {
        bail!("cluster.signaling_url: must not carry credentials; set cluster.token");
    }
    // Appended to the path, so that signaling may sit under a prefix (https://host/api).
    let heartbeat_url =
        reqwest::Url::parse(&format!("{}{}", signaling_url.as_str().trim_end_matches('/'), cluster::heartbeat::PATH))
            .map_err(|e| anyhow::anyhow!("cluster.signaling_url: cannot append {}: {e}", cluster::heartbeat::PATH))?;
    let Some(token) = &c.token else {
        bail!("cluster.token: required with cluster.signaling_url (env RELAY_CLUSTER_TOKEN)");
    };
    let Some(region) = &c.region else {
        bail!("cluster.region: required with cluster.signaling_url");
    };
    let relay_id = match &c.relay_id {
        Some(id) => id.clone(),
        None => {
            let host = host_name().context("cluster.relay_id: cannot read the host name; set cluster.relay_id")?;
            // Host names are case-insensitive; ids are compared as strings.
            let id = host.to_ascii_lowercase();
            check_id("cluster.relay_id", &id, MAX_RELAY_ID_LEN, is_relay_id_byte)
                .context("cluster.relay_id: the host name is not a valid relay id; set cluster.relay_id")?;
            id
        }
    };
    Ok(Some(ClusterConfig {
        signaling_url,
        heartbeat_url,
        token: ClusterToken(token.clone()),
        region: region.clone(),
        relay_id,
        public_host: c.public_host.clone().unwrap_or_else(|| advertised_ip.to_string()),
        bandwidth_cap_bps,
    }))
}

fn is_relay_id_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
}

fn check_id(key: &str, value: &str, max_len: usize, allowed: fn(u8) -> bool) -> anyhow::Result<()> {
    if value.is_empty() || value.len() > max_len || !value.bytes().all(allowed) {
        let chars = if allowed(b'.') { "a-z, 0-9, '-' and '.'" } else { "a-z, 0-9 and '-'" };
        bail!("{key}: {value:?} must be 1 to {max_len} characters of {chars}");
    }
    Ok(())
}

/// An IP address, or a DNS name (RFC 1123 labels), which clients put in `turn:` URIs.
fn check_host(key: &str, value: &str) -> anyhow::Result<()> {
    if value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if value.is_empty() || value.len() > 253 || !value.split('.').all(label_ok) {
        bail!("{key}: {value:?} is neither an IP address (IPv6 without brackets) nor a host name");
    }
    Ok(())
}

/// The kernel's host name (gethostname(2)).
fn host_name() -> anyhow::Result<String> {
    // 255 bytes is HOST_NAME_MAX on Linux (64 in practice); one more for the terminating NUL.
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(std::str::from_utf8(&buf[..len])?.to_owned())
}

/// The address the host would use to reach the internet: what a socket "connected" to a public
/// address gets as its local address (connect on UDP sends nothing). Falls back to loopback on a
/// host without a route, which is only useful for local testing.
fn default_relay_ip(family_of: IpAddr) -> anyhow::Result<IpAddr> {
    let (bind, probe): (SocketAddr, SocketAddr) = if family_of.is_ipv4() {
        (([0, 0, 0, 0], 0).into(), ([192, 0, 2, 1], 9).into())
    } else {
        (("::".parse::<IpAddr>()?, 0).into(), ("2001:db8::1".parse::<IpAddr>()?, 9).into())
    };
    let socket = UdpSocket::bind(bind)?;
    match socket.connect(probe).and_then(|()| socket.local_addr()) {
        Ok(addr) if !addr.ip().is_unspecified() => Ok(addr.ip()),
        _ => Ok(if family_of.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> FileConfig {
        let mut f = FileConfig::default();
        f.server.listen = "127.0.0.1:3478".into();
        f.auth.secrets = vec!["s3cret".into()];
        f
    }

    #[test]
    fn defaults_validate_with_a_secret() {
        let c = Config::from_file(&valid()).unwrap();
        assert_eq!(c.relay_ip, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.default_lifetime, Duration::from_secs(600));
        assert_eq!(c.ports, 49152..=65535);
        assert_eq!(c.admin_listen, "127.0.0.1:9090".parse().unwrap());
    }

    #[test]
    fn errors_name_the_key() {
        type Mutate = fn(&mut FileConfig);
        let cases: Vec<(Mutate, &str)> = vec![
            (|f| f.server.listen = "nope".into(), "server.listen"),
            (|f| (f.relay.min_port, f.relay.max_port) = (60000, 50000), "relay.min_port"),
            (|f| f.relay.ip = Some("0.0.0.0".into()), "relay.ip"),
            (|f| f.relay.external_ip = Some("::1".into()), "relay.external_ip"),
            (|f| f.allocations.max_lifetime_secs = 10, "allocations.max_lifetime_secs"),
            (|f| f.auth.secrets.clear(), "auth"),
            (|f| f.peers.allow = vec!["10.0.0.0/33".into()], "peers.allow"),
            (|f| f.log.format = "xml".into(), "log.format"),
            (|f| f.admin.listen = "localhost".into(), "admin.listen"),
            (|f| f.sfu.http_listen = "localhost:80".into(), "sfu.http_listen"),
            (|f| f.sfu.public_url = "ftp://sfu.example.com".into(), "sfu.public_url"),
            (|f| f.sfu.public_url = "https://sfu.example.com/?x=1".into(), "sfu.public_url"),
            (|f| f.relay.min_port = 3000, "relay.min_port"),
            (|f| f.server.busy_poll_us = 5000, "server.busy_poll_us"),
        ];
        for (mutate, key) in cases {
            let mut f = valid();
            mutate(&mut f);
            let err = Config::from_file(&f).unwrap_err().to_string();
            assert!(err.contains(key), "{err:?} should name {key}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = FileConfig::parse("[server]\nlisen = \"1.2.3.4:1\"\n").unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = FileConfig::parse("[srever]\n").unwrap_err().to_string();
        assert!(err.contains("srever"), "{err}");
    }

    #[test]
    fn overrides_win_over_the_file() {
        let mut f = FileConfig::parse("[server]\nlisten = \"127.0.0.1:1000\"\n[auth]\nsecrets = [\"a\"]\n").unwrap();
        let o = Overrides {
            listen: Some("127.0.0.1:2000".into()),
            secrets: Some(vec!["b".into(), "c".into()]),
            users: Some(vec!["alice:pw:with:colons".into()]),
            allow_peers: Some(vec!["127.0.0.1".into()]),
            ..Default::default()
        };
        f.apply(&o).unwrap();
        let c = Config::from_file(&f).unwrap();
        assert_eq!(c.listen.port(), 2000);
        assert_eq!(c.secrets, vec!["b", "c"]);
        assert_eq!(c.users, vec![("alice".to_string(), "pw:with:colons".to_string())]);
        assert_eq!(c.allow_peers, vec!["127.0.0.1/32".parse::<IpNet>().unwrap()]);
        let bad = Overrides { users: Some(vec!["nocolon".into()]), ..Default::default() };
        assert!(f.apply(&bad).unwrap_err().to_string().contains("auth.users"));
    }

    #[test]
    fn redacted_hides_secrets() {
        let mut f = valid();
        f.auth.users.push(StaticUser { username: "u".into(), password: "p".into() });
        f.cluster.token = Some("cluster-t0ken".into());
        let text = toml::to_string(&f.redacted()).unwrap();
        assert!(!text.contains("s3cret") && !text.contains("\"p\"") && !text.contains("t0ken"), "{text}");
    }

    fn clustered() -> FileConfig {
        let mut f = valid();
        f.cluster.signaling_url = Some("https://signal.example.com".into());
        f.cluster.token = Some("t0ken".into());
        f.cluster.region = Some("eu-west".into());
        f.cluster.relay_id = Some("eu-fra-1".into());
        f
    }

    #[test]
    fn no_signaling_url_means_standalone() {
        assert!(Config::from_file(&valid()).unwrap().cluster.is_none());
        // The other keys alone do not make a cluster member, but they are still checked.
        let mut f = valid();
        f.cluster.region = Some("eu-west".into());
        assert!(Config::from_file(&f).unwrap().cluster.is_none());
        f.cluster.region = Some("EU".into());
        assert!(Config::from_file(&f).unwrap_err().to_string().contains("cluster.region"));
    }

    #[test]
    fn cluster_section_validates_with_defaults() {
        let c = Config::from_file(&clustered()).unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.heartbeat_url.as_str(), "https://signal.example.com/v1/relays/heartbeat");
        assert_eq!(cluster.token.0, "t0ken");
        assert!(!format!("{cluster:?}").contains("t0ken"), "Debug hides the token");
        assert_eq!((cluster.region.as_str(), cluster.relay_id.as_str()), ("eu-west", "eu-fra-1"));
        assert_eq!(cluster.public_host, "127.0.0.1", "the advertised address by default");
        assert_eq!(cluster.bandwidth_cap_bps, 0);

        let mut f = clustered();
        f.cluster.signaling_url = Some("http://10.0.0.1:8080/api/".into());
        f.cluster.public_host = Some("turn-eu.example.com".into());
        f.relay.external_ip = Some("198.51.100.7".into());
        f.cluster.bandwidth_cap_mbps = 1000;
        let cluster = Config::from_file(&f).unwrap().cluster.unwrap();
        assert_eq!(cluster.heartbeat_url.as_str(), "http://10.0.0.1:8080/api/v1/relays/heartbeat");
        assert_eq!(cluster.public_host, "turn-eu.example.com");
        assert_eq!(cluster.bandwidth_cap_bps, 1_000_000_000);
        f.cluster.public_host = None;
        assert_eq!(Config::from_file(&f).unwrap().cluster.unwrap().public_host, "198.51.100.7");
    }

    #[test]
    fn relay_id_defaults_to_the_host_name() {
        let mut f = clustered();
        f.cluster.relay_id = None;
        let host = host_name().unwrap().to_ascii_lowercase();
        match Config::from_file(&f) {
            Ok(c) => assert_eq!(c.cluster.unwrap().relay_id, host),
            // A host name outside the charset (e.g. with '_') must be named, not used.
            Err(e) => assert!(format!("{e:#}").contains("cluster.relay_id"), "{e:#}"),
        }
    }

    #[test]
    fn with_signaling_the_secrets_may_come_from_there() {
        let mut f = clustered();
        f.auth.secrets.clear();
        let c = Config::from_file(&f).unwrap();
        assert!(c.secrets.is_empty() && c.users.is_empty());
        // An empty entry is still a mistake.
        f.auth.secrets = vec![String::new()];
        assert!(Config::from_file(&f).unwrap_err().to_string().contains("auth.secrets[0]"));
    }

    #[test]
    fn cluster_errors_name_the_key() {
        type Mutate = fn(&mut FileConfig);
        let cases: Vec<(Mutate, &str)> = vec![
            (|f| f.cluster.signaling_url = Some("signal.example.com".into()), "cluster.signaling_url"),
            (|f| f.cluster.signaling_url = Some("ftp://signal.example.com".into()), "cluster.signaling_url"),
            (|f| f.cluster.signaling_url = Some("https://s.example.com/?a=1".into()), "cluster.signaling_url"),
            (|f| f.cluster.signaling_url = Some("https://u:p@s.example.com".into()), "cluster.signaling_url"),
            (|f| f.cluster.token = None, "cluster.token"),
            (|f| f.cluster.token = Some(String::new()), "cluster.token"),
            (|f| f.cluster.token = Some("two words".into()), "cluster.token"),
            (|f| f.cluster.region = None, "cluster.region"),
            (|f| f.cluster.region = Some(String::new()), "cluster.region"),
            (|f| f.cluster.region = Some("eu_west".into()), "cluster.region"),
            (|f| f.cluster.region = Some("eu.west".into()), "cluster.region"),
            (|f| f.cluster.region = Some("x".repeat(65)), "cluster.region"),
            (|f| f.cluster.relay_id = Some("x".repeat(65)), "cluster.relay_id"),
            (|f| f.cluster.relay_id = Some("Relay-1".into()), "cluster.relay_id"),
            (|f| f.cluster.relay_id = Some(String::new()), "cluster.relay_id"),
            (|f| f.cluster.relay_id = Some("a b".into()), "cluster.relay_id"),
            (|f| f.cluster.public_host = Some("[::1]".into()), "cluster.public_host"),
            (|f| f.cluster.public_host = Some("-bad.example.com".into()), "cluster.public_host"),
            (|f| f.cluster.public_host = Some("a..b".into()), "cluster.public_host"),
            (|f| f.cluster.public_host = Some(String::new()), "cluster.public_host"),
            (|f| f.cluster.bandwidth_cap_mbps = u64::MAX, "cluster.bandwidth_cap_mbps"),
        ];
        for (mutate, key) in cases {
            let mut f = clustered();
            mutate(&mut f);
            let err = Config::from_file(&f).unwrap_err().to_string();
            assert!(err.contains(key), "{err:?} should name {key}");
        }
        // Accepted forms.
        for host in ["203.0.113.9", "2001:db8::1", "turn.example.com", "relay-1"] {
            let mut f = clustered();
            f.cluster.public_host = Some(host.into());
            assert_eq!(Config::from_file(&f).unwrap().cluster.unwrap().public_host, host);
        }
        let mut f = clustered();
        f.cluster.relay_id = Some("eu-fra-1.example.com".into());
        assert!(Config::from_file(&f).is_ok());
    }

    #[test]
    fn cluster_keys_parse_and_override() {
        let text = "[cluster]\nsignaling_url = \"http://127.0.0.1:8080\"\ntoken = \"t\"\nregion = \"r1\"\n\
                    relay_id = \"a\"\npublic_host = \"h.example\"\nbandwidth_cap_mbps = 10\n";
        let mut f = FileConfig::parse(text).unwrap();
        assert_eq!(f.cluster.region.as_deref(), Some("r1"));
        assert_eq!(f.cluster.bandwidth_cap_mbps, 10);
        let err = FileConfig::parse("[cluster]\nsignalling_url = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("signalling_url"), "{err}");
        let o = Overrides {
            signaling_url: Some("https://s.example".into()),
            cluster_token: Some("from-env".into()),
            region: Some("r2".into()),
            relay_id: Some("b".into()),
            public_host: Some("192.0.2.1".into()),
            bandwidth_cap_mbps: Some(20),
            ..Default::default()
        };
        f.apply(&o).unwrap();
        let c = Config::from_file(&f).unwrap().cluster.unwrap();
        assert_eq!(c.signaling_url.as_str(), "https://s.example/");
        assert_eq!(c.token.0, "from-env");
        assert_eq!((c.region.as_str(), c.relay_id.as_str(), c.public_host.as_str()), ("r2", "b", "192.0.2.1"));
        assert_eq!(c.bandwidth_cap_bps, 20_000_000);
    }
}
