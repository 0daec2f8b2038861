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
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: String,
    pub workers: usize,
    pub realm: String,
    pub software: String,
    pub socket_buffer_bytes: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:3478".into(),
            workers: 0,
            realm: "relay".into(),
            software: concat!("relay/", env!("CARGO_PKG_VERSION")).into(),
            socket_buffer_bytes: 4 << 20,
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
    pub min_port: u16,
    pub max_port: u16,
    pub socket_buffer_bytes: usize,
}

impl Default for RelaySection {
    fn default() -> Self {
        // RFC 8656 §7.2 recommends the dynamic range 49152-65535. A 1 MiB buffer per relay socket
        // rides out scheduling hiccups at high packet rates; it is a limit, not an allocation:
        // the kernel charges only for datagrams actually queued.
        Self { ip: None, external_ip: None, min_port: 49152, max_port: 65535, socket_buffer_bytes: 1 << 20 }
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
    /// relay.ip: address relay sockets bind to.
    #[arg(long, env = "RELAY_RELAY_IP")]
    pub relay_ip: Option<String>,
    /// relay.external_ip: public address advertised behind 1:1 NAT.
    #[arg(long, env = "RELAY_EXTERNAL_IP")]
    pub external_ip: Option<String>,
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
    #[arg(long = "auth-secret", env = "RELAY_AUTH_SECRETS", value_delimiter = ',')]
    pub secrets: Option<Vec<String>>,
    /// auth.users: static users as username:password (repeatable; comma-separated in the variable).
    #[arg(long = "user", env = "RELAY_USERS", value_delimiter = ',')]
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
    /// log.format: text or json.
    #[arg(long, env = "RELAY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// log.level: a tracing filter such as info or relay=debug.
    #[arg(long, env = "RELAY_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// shutdown.grace_secs: how long SIGTERM waits for allocations to end.
    #[arg(long, env = "RELAY_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
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
        if o.relay_ip.is_some() {
            self.relay.ip = o.relay_ip.clone();
        }
        if o.external_ip.is_some() {
            self.relay.external_ip = o.external_ip.clone();
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
        set(&mut self.log.format, &o.log_format);
        set(&mut self.log.level, &o.log_level);
        set(&mut self.shutdown.grace_secs, &o.shutdown_grace_secs);
        Ok(())
    }

    /// A copy fit for printing: secrets and passwords replaced.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        c.auth.secrets.iter_mut().for_each(|s| *s = "<redacted>".into());
        c.auth.users.iter_mut().for_each(|u| u.password = "<redacted>".into());
        c
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub workers: usize,
    pub realm: String,
    pub software: String,
    pub socket_buffer_bytes: usize,
    pub relay_ip: IpAddr,
    pub external_ip: Option<IpAddr>,
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
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_grace: Duration,
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
        if file.auth.secrets.is_empty() && file.auth.users.is_empty() {
            bail!("auth: no credentials configured; set auth.secrets (TURN REST) or auth.users");
        }
        if file.auth.nonce_lifetime_secs == 0 {
            bail!("auth.nonce_lifetime_secs: must be positive");
        }
        let allow_peers =
            file.peers.allow.iter().map(|v| parse_net("peers.allow", v)).collect::<anyhow::Result<_>>()?;
        let deny_peers = file.peers.deny.iter().map(|v| parse_net("peers.deny", v)).collect::<anyhow::Result<_>>()?;
        let admin_listen = parse_key("admin.listen", &file.admin.listen)?;
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
            relay_ip,
            external_ip,
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
            log_format,
            log_level: file.log.level.clone(),
            shutdown_grace: Duration::from_secs(file.shutdown.grace_secs),
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
            (|f| f.relay.min_port = 3000, "relay.min_port"),
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
        let text = toml::to_string(&f.redacted()).unwrap();
        assert!(!text.contains("s3cret") && !text.contains("\"p\""), "{text}");
    }
}
