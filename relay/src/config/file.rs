//! What the operator writes: the TOML file's sections with their defaults, and the flags and
//! environment variables that override its keys ([`Overrides`], one declaration per key).

use std::path::Path;

use anyhow::{Context, bail};
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
    pub link: LinkSection,
}

/// `[link]`: relay-to-relay links (QUIC, mutual TLS with the cluster CA: `relayctl ca`); on
/// when `listen` is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LinkSection {
    /// UDP address of the link endpoint, e.g. "0.0.0.0:4433"; "" = no links.
    pub listen: String,
    /// The cluster CA's certificate (PEM), `ca.pem` of `relayctl ca init`.
    pub ca: String,
    /// This relay's certificate (PEM), from `relayctl ca issue RELAY_ID`.
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
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
            // No limit besides the relay port range (one port per allocation): a relay holds as
            // many allocations as its range has ports (`Capacity`).
            max_total: 0,
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

pub use cluster::log::LogSection;

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

cluster::config_overrides! {
    for FileConfig;
    /// server.listen: UDP address for STUN/TURN.
    #[arg(long, env = "RELAY_LISTEN")]
    listen: String => value server.listen;
    /// server.workers: worker threads (0 = one per core).
    #[arg(long, env = "RELAY_WORKERS")]
    workers: usize => value server.workers;
    /// server.realm: realm of the long-term credentials.
    #[arg(long, env = "RELAY_REALM")]
    realm: String => value server.realm;
    /// server.software: SOFTWARE attribute in responses ("" to omit).
    #[arg(long, env = "RELAY_SOFTWARE")]
    software: String => value server.software;
    /// server.socket_buffer_bytes: receive/send buffer of the listening sockets.
    #[arg(long, env = "RELAY_SOCKET_BUFFER_BYTES")]
    socket_buffer_bytes: usize => value server.socket_buffer_bytes;
    /// server.busy_poll_us: keep polling this long after traffic before sleeping (0 = off).
    #[arg(long, env = "RELAY_BUSY_POLL_US")]
    busy_poll_us: u64 => value server.busy_poll_us;
    /// relay.ip: address relay sockets bind to.
    #[arg(long, env = "RELAY_RELAY_IP")]
    relay_ip: String => some relay.ip;
    /// relay.external_ip: public address advertised behind 1:1 NAT.
    #[arg(long, env = "RELAY_EXTERNAL_IP")]
    external_ip: String => some relay.external_ip;
    /// relay.ipv6: an IPv6 relay address beside an IPv4 relay.ip (dual stack).
    #[arg(long, env = "RELAY_RELAY_IPV6")]
    relay_ipv6: String => some relay.ipv6;
    /// relay.external_ipv6: public IPv6 address advertised for relay.ipv6.
    #[arg(long, env = "RELAY_EXTERNAL_IPV6")]
    external_ipv6: String => some relay.external_ipv6;
    /// relay.min_port: lowest relay port.
    #[arg(long, env = "RELAY_MIN_PORT")]
    min_port: u16 => value relay.min_port;
    /// relay.max_port: highest relay port.
    #[arg(long, env = "RELAY_MAX_PORT")]
    max_port: u16 => value relay.max_port;
    /// relay.socket_buffer_bytes: receive/send buffer of each relay socket.
    #[arg(long, env = "RELAY_RELAY_SOCKET_BUFFER_BYTES")]
    relay_socket_buffer_bytes: usize => value relay.socket_buffer_bytes;
    /// allocations.default_lifetime_secs.
    #[arg(long, env = "RELAY_DEFAULT_LIFETIME_SECS")]
    default_lifetime_secs: u64 => value allocations.default_lifetime_secs;
    /// allocations.max_lifetime_secs.
    #[arg(long, env = "RELAY_MAX_LIFETIME_SECS")]
    max_lifetime_secs: u64 => value allocations.max_lifetime_secs;
    /// allocations.max_per_user (0 = no limit).
    #[arg(long, env = "RELAY_MAX_PER_USER")]
    max_per_user: u32 => value allocations.max_per_user;
    /// allocations.max_total (0 = no limit besides the relay port range).
    #[arg(long, env = "RELAY_MAX_TOTAL")]
    max_total: u32 => value allocations.max_total;
    /// allocations.max_permissions: per allocation.
    #[arg(long, env = "RELAY_MAX_PERMISSIONS")]
    max_permissions: usize => value allocations.max_permissions;
    /// allocations.max_channels: per allocation.
    #[arg(long, env = "RELAY_MAX_CHANNELS")]
    max_channels: usize => value allocations.max_channels;
    /// allocations.rfc5766_channel_numbers: also accept channels 0x5000-0x7FFF (older clients).
    #[arg(long, env = "RELAY_RFC5766_CHANNEL_NUMBERS")]
    rfc5766_channel_numbers: bool => value allocations.rfc5766_channel_numbers;
    /// auth.secrets: TURN REST shared secrets (repeat the flag, or comma-separate in the variable).
    #[arg(long = "auth-secret", env = "RELAY_AUTH_SECRETS", value_delimiter = ',', hide_env_values = true)]
    secrets: Vec<String> => value auth.secrets;
    /// auth.users: static users as username:password (repeatable; comma-separated in the variable).
    #[arg(long = "user", env = "RELAY_USERS", value_delimiter = ',', hide_env_values = true)]
    users: Vec<String> => custom auth.users;
    /// auth.nonce_lifetime_secs.
    #[arg(long, env = "RELAY_NONCE_LIFETIME_SECS")]
    nonce_lifetime_secs: u64 => value auth.nonce_lifetime_secs;
    /// peers.allow: CIDR ranges opened despite the default deny list (repeatable).
    #[arg(long = "allow-peer", env = "RELAY_ALLOW_PEERS", value_delimiter = ',')]
    allow_peers: Vec<String> => value peers.allow;
    /// peers.deny: extra CIDR ranges to refuse (repeatable).
    #[arg(long = "deny-peer", env = "RELAY_DENY_PEERS", value_delimiter = ',')]
    deny_peers: Vec<String> => value peers.deny;
    /// admin.listen: address of the metrics and health endpoint.
    #[arg(long, env = "RELAY_ADMIN_LISTEN")]
    admin_listen: String => value admin.listen;
    /// sfu.http_listen: address of the WHIP/WHEP endpoints ("" = no SFU).
    #[arg(long, env = "RELAY_SFU_HTTP_LISTEN")]
    sfu_http_listen: String => value sfu.http_listen;
    /// sfu.public_url: the WHIP/WHEP base URL clients use (default http://<public_host>:<port>).
    #[arg(long, env = "RELAY_SFU_PUBLIC_URL")]
    sfu_public_url: String => value sfu.public_url;
    /// sfu.tls_cert: PEM certificate chain; with sfu.tls_key, the WHIP/WHEP listener speaks HTTPS.
    #[arg(long, env = "RELAY_SFU_TLS_CERT")]
    sfu_tls_cert: String => value sfu.tls_cert;
    /// sfu.tls_key: PEM private key of sfu.tls_cert.
    #[arg(long, env = "RELAY_SFU_TLS_KEY")]
    sfu_tls_key: String => value sfu.tls_key;
    /// tcp.enabled: TURN over TCP.
    #[arg(long = "tcp", env = "RELAY_TCP")]
    tcp_enabled: bool => value tcp.enabled;
    /// tcp.listen: TCP address ("" = server.listen's).
    #[arg(long, env = "RELAY_TCP_LISTEN")]
    tcp_listen: String => value tcp.listen;
    /// tls.listen: TLS addresses (repeatable; default server.listen's IP, port 443).
    #[arg(long = "tls-listen", env = "RELAY_TLS_LISTEN", value_delimiter = ',')]
    tls_listen: Vec<String> => value tls.listen;
    /// tls.cert: PEM certificate chain for TURN over TLS (with tls.key).
    #[arg(long, env = "RELAY_TLS_CERT")]
    tls_cert: String => value tls.cert;
    /// tls.key: PEM private key of tls.cert.
    #[arg(long, env = "RELAY_TLS_KEY")]
    tls_key: String => value tls.key;
    /// tls.watch_secs: how often the certificate files are checked for renewal (0 = never).
    #[arg(long, env = "RELAY_TLS_WATCH_SECS")]
    tls_watch_secs: u64 => value tls.watch_secs;
    /// limits.unauthenticated_per_ip: answers per second per source without credentials.
    #[arg(long, env = "RELAY_UNAUTHENTICATED_PER_IP")]
    unauthenticated_per_ip: u32 => value limits.unauthenticated_per_ip;
    /// limits.unauthenticated_total: such answers per second in all.
    #[arg(long, env = "RELAY_UNAUTHENTICATED_TOTAL")]
    unauthenticated_total: u32 => value limits.unauthenticated_total;
    /// limits.connections_per_ip: open TCP/TLS connections per source IP.
    #[arg(long, env = "RELAY_CONNECTIONS_PER_IP")]
    connections_per_ip: u32 => value limits.connections_per_ip;
    /// limits.connections_total: open TCP/TLS connections in all.
    #[arg(long, env = "RELAY_CONNECTIONS_TOTAL")]
    connections_total: u32 => value limits.connections_total;
    /// limits.handshake_timeout_secs: TLS handshake and first message deadline.
    #[arg(long, env = "RELAY_HANDSHAKE_TIMEOUT_SECS")]
    handshake_timeout_secs: u64 => value limits.handshake_timeout_secs;
    /// limits.idle_timeout_secs: idle TCP/TLS connections without an allocation are closed.
    #[arg(long, env = "RELAY_IDLE_TIMEOUT_SECS")]
    idle_timeout_secs: u64 => value limits.idle_timeout_secs;
    /// limits.allocation_kbps: bandwidth cap per allocation in kbit/s (0 = none).
    #[arg(long, env = "RELAY_ALLOCATION_KBPS")]
    allocation_kbps: u64 => value limits.allocation_kbps;
    /// limits.total_mbps: bandwidth cap of the relay in Mbit/s (0 = none).
    #[arg(long, env = "RELAY_TOTAL_MBPS")]
    total_mbps: u64 => value limits.total_mbps;
    /// log.format: text or json.
    #[arg(long, env = "RELAY_LOG_FORMAT")]
    log_format: String => value log.format;
    /// log.level: a tracing filter such as info or relay=debug.
    #[arg(long, env = "RELAY_LOG_LEVEL")]
    log_level: String => value log.level;
    /// shutdown.grace_secs: how long SIGTERM waits for allocations to end.
    #[arg(long, env = "RELAY_SHUTDOWN_GRACE_SECS")]
    shutdown_grace_secs: u64 => value shutdown.grace_secs;
    /// cluster.signaling_url: signaling's base URL (http or https); unset = standalone relay.
    #[arg(long, env = "RELAY_SIGNALING_URL")]
    signaling_url: String => some cluster.signaling_url;
    /// cluster.token: bearer token for signaling (prefer the variable: flags show in `ps`).
    #[arg(long, env = "RELAY_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: String => some cluster.token;
    /// cluster.region: the region this relay serves, as signaling names it.
    #[arg(long, env = "RELAY_REGION")]
    region: String => some cluster.region;
    /// cluster.relay_id: unique, stable id of this relay (default: the host name).
    #[arg(long, env = "RELAY_RELAY_ID")]
    relay_id: String => some cluster.relay_id;
    /// cluster.public_host: host name or IP clients use (default: the advertised address).
    #[arg(long, env = "RELAY_PUBLIC_HOST")]
    public_host: String => some cluster.public_host;
    /// cluster.bandwidth_cap_mbps: link capacity reported to signaling (0 = unknown).
    #[arg(long, env = "RELAY_BANDWIDTH_CAP_MBPS")]
    bandwidth_cap_mbps: u64 => value cluster.bandwidth_cap_mbps;
    /// link.listen: UDP address for relay-to-relay links ("" = none).
    #[arg(long, env = "RELAY_LINK_LISTEN")]
    link_listen: String => value link.listen;
    /// link.ca: the cluster CA certificate (PEM).
    #[arg(long, env = "RELAY_LINK_CA")]
    link_ca: String => value link.ca;
    /// link.cert: this relay's link certificate (PEM).
    #[arg(long, env = "RELAY_LINK_CERT")]
    link_cert: String => value link.cert;
    /// link.key: its private key (PEM).
    #[arg(long, env = "RELAY_LINK_KEY")]
    link_key: String => value link.key;
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
        o.apply_plain(self);
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
