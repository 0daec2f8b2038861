//! The relay's configuration: a TOML file (documented key by key in `configs/relay.toml`), every
//! key overridable by a command-line flag or an environment variable (flag > environment > file >
//! default). Raw values are parsed, then validated once into [`Config`]; an invalid value stops the
//! relay at start with a message that names the key. Unknown keys are errors, so a typo cannot
//! silently leave a default in place.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use cluster::ids::{MAX_ID_LEN, REGION_ID_CHARS, RELAY_ID_CHARS, valid_region_id, valid_relay_id};
use ipnet::IpNet;

mod file;

pub use file::*;

pub use cluster::log::LogFormat;

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
    /// Relay-to-relay links (`None` = off).
    pub link: Option<LinkConfig>,
}

/// The validated `[link]` section, when links are on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    pub listen: SocketAddr,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
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
        let link = match file.link.listen.trim() {
            "" => {
                if let Some(key) =
                    [("link.ca", &file.link.ca), ("link.cert", &file.link.cert), ("link.key", &file.link.key)]
                        .iter()
                        .find_map(|(k, v)| (!v.trim().is_empty()).then_some(k))
                {
                    bail!("link.listen: required with {key} (relay links are off without it)");
                }
                None
            }
            v => {
                let listen = parse_key("link.listen", v)?;
                let file_key = |key: &str, value: &str| -> anyhow::Result<PathBuf> {
                    match value.trim() {
                        "" => bail!("{key}: required with link.listen (see `relayctl ca`)"),
                        v => Ok(PathBuf::from(v)),
                    }
                };
                Some(LinkConfig {
                    listen,
                    ca: file_key("link.ca", &file.link.ca)?,
                    cert: file_key("link.cert", &file.link.cert)?,
                    key: file_key("link.key", &file.link.key)?,
                })
            }
        };
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
        let log_format = cluster::log::validate(&file.log.format, &file.log.level).map_err(anyhow::Error::msg)?;
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
            link,
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

    /// How many allocations the relay can hold: see [`Capacity`].
    pub fn capacity(&self) -> Capacity {
        Capacity::new(self.ports.len(), self.max_total)
    }
}

/// Below this many relay ports, the port range caps the relay at fewer allocations than a
/// region's relay is expected to hold, and the relay says so at start and in `check-config`.
pub const FEW_PORTS: u64 = 2000;

/// How many allocations a relay can hold: every allocation takes a relay port of its own from
/// `relay.min_port..=relay.max_port` (one pool serves both address families, so a port taken for
/// IPv4 is not handed out for IPv6 as well), and `allocations.max_total` (0 = no limit) caps
/// them besides. The capacity is the smaller of the two; it is what the heartbeat reports,
/// `/healthz` shows and signaling compares the relay's allocations with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Relay ports in the range.
    pub ports: u64,
    /// `allocations.max_total` (0 = no limit).
    pub max_total: u32,
}

impl Capacity {
    pub fn new(ports: usize, max_total: u32) -> Self {
        Self { ports: u64::try_from(ports).unwrap_or(u64::MAX), max_total }
    }

    /// The allocations the relay can hold.
    pub fn allocations(self) -> u64 {
        match self.max_total {
            0 => self.ports,
            max => self.ports.min(u64::from(max)),
        }
    }

    /// What an operator should know about the capacity: `allocations.max_total` beyond what the
    /// port range holds, and a range too small for a region's relay. Each names the keys.
    pub fn warnings(self) -> Vec<String> {
        let mut warnings = Vec::new();
        if u64::from(self.max_total) > self.ports {
            warnings.push(format!(
                "allocations.max_total = {} exceeds what relay.min_port..relay.max_port can hold ({} ports, one per \
                 allocation): the relay holds at most {} allocations; widen the port range or lower max_total",
                self.max_total, self.ports, self.ports
            ));
        }
        if self.ports < FEW_PORTS {
            warnings.push(format!(
                "relay.min_port..relay.max_port holds only {} ports: the relay can hold at most {} allocations \
                 (a relay serving a region usually wants several thousand)",
                self.ports, self.ports
            ));
        }
        warnings
    }
}

/// Validates `[cluster]`; `None` without a signaling URL. The other keys are checked even then, so a
/// typo shows up before the URL is added.
fn cluster_config(c: &ClusterSection, advertised_ip: IpAddr) -> anyhow::Result<Option<ClusterConfig>> {
    if let Some(region) = &c.region {
        check_id("cluster.region", region, valid_region_id(region), REGION_ID_CHARS)?;
    }
    if let Some(id) = &c.relay_id {
        check_id("cluster.relay_id", id, valid_relay_id(id), RELAY_ID_CHARS)?;
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
            check_id("cluster.relay_id", &id, valid_relay_id(&id), RELAY_ID_CHARS)
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

/// An id as signaling accepts it (`cluster::ids`), or an error naming the key.
fn check_id(key: &str, value: &str, valid: bool, chars: &str) -> anyhow::Result<()> {
    if !valid {
        bail!("{key}: {value:?} must be 1 to {MAX_ID_LEN} characters of {chars}");
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
mod tests;
