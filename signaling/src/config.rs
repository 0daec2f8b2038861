//! Signaling's configuration: a TOML file (documented key by key in `configs/signaling.toml`),
//! with the keys an operator changes per deployment overridable by flags and environment
//! variables (flag > environment > file > default). The raw file is validated once into
//! [`Config`]; an invalid value stops signaling at start with a message naming the key, and
//! unknown keys are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use geo::{Coordinates, Region, RegionId};
use serde::{Deserialize, Serialize};

/// The file's contents. Every key has a default except the regions and the two keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerSection,
    pub store: StoreSection,
    pub auth: AuthSection,
    pub turn: TurnSection,
    pub selection: SelectionSection,
    pub machines: MachineSection,
    pub sessions: SessionSection,
    pub log: LogSection,
    pub regions: Vec<RegionEntry>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: String,
    /// Largest request body accepted, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Requests per second per client IP on the public endpoints (0 = no limit); 429 above.
    pub rate_limit_per_ip: u32,
    /// Trust `X-Forwarded-For` from these proxy addresses when finding the client's IP.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 64 * 1024,
            rate_limit_per_ip: 50,
            trusted_proxies: vec![],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Directory of the embedded SQLite database (`signaling.db`), created on first start.
    pub data_dir: String,
    /// `postgres://…` to use PostgreSQL instead (several signaling instances share it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self { data_dir: "data".into(), database_url: None }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// HS256 key that signs and checks bearer tokens (at least 32 bytes).
    pub jwt_key: String,
    /// The token relays present on heartbeats (at least 16 bytes).
    pub cluster_token: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TurnSection {
    /// Lifetime of minted TURN credentials (checked by relays at Allocate).
    pub credential_ttl_secs: u64,
    /// Secrets to seed the store with when it has none (the newest first); otherwise one is
    /// generated. Rotate with `relayctl keys rotate`.
    pub secrets: Vec<String>,
    /// Whether ICE configs advertise TURN over TLS where relays offer it.
    pub offer_tls: bool,
}

impl Default for TurnSection {
    fn default() -> Self {
        Self { credential_ttl_secs: 600, secrets: vec![], offer_tls: true }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SelectionSection {
    /// Region used when nothing else decides (must be one of `regions`).
    pub default_region: String,
    /// A MaxMind-format City database (GeoLite2-City or DB-IP City Lite) for the GeoIP prior.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geoip_db: Option<String>,
    /// Alternates (other regions) returned with every ICE config, for client-side failover.
    pub alternates: usize,
}

impl Default for SelectionSection {
    fn default() -> Self {
        Self { default_region: String::new(), geoip_db: None, alternates: 2 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MachineSection {
    /// How often machines are told to heartbeat.
    pub heartbeat_secs: u64,
    /// Silence after which a machine is offline (and its live session ends).
    pub offline_after_secs: u64,
}

impl Default for MachineSection {
    fn default() -> Self {
        Self { heartbeat_secs: 5, offline_after_secs: 15 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSection {
    /// A session not reported connected within this ends with reason `timeout`.
    pub connect_timeout_secs: u64,
    /// Any session ends after this (reason `max_duration`).
    pub max_duration_secs: u64,
    /// Ended sessions and their timelines are forgotten this many days after they ended (export
    /// them first: `signaling export`); 0 keeps them for ever.
    pub retention_days: u64,
}

impl Default for SessionSection {
    fn default() -> Self {
        Self { connect_timeout_secs: 60, max_duration_secs: 4 * 3600, retention_days: 0 }
    }
}

pub use cluster::log::LogSection;

/// One `[[regions]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionEntry {
    pub id: String,
    pub lat: f64,
    pub lon: f64,
}

cluster::config_overrides! {
    for FileConfig;
    /// server.listen: HTTP address.
    #[arg(long, env = "SIGNALING_LISTEN")]
    listen: String => value server.listen;
    /// store.data_dir: directory of the embedded SQLite database.
    #[arg(long, env = "SIGNALING_DATA_DIR")]
    data_dir: String => value store.data_dir;
    /// store.database_url: postgres://… to use PostgreSQL instead of SQLite.
    #[arg(long, env = "SIGNALING_DATABASE_URL")]
    database_url: String => some store.database_url;
    /// auth.jwt_key: HS256 key for bearer tokens.
    #[arg(long, env = "SIGNALING_JWT_KEY", hide_env_values = true)]
    jwt_key: String => value auth.jwt_key;
    /// auth.cluster_token: the token relays present.
    #[arg(long, env = "SIGNALING_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: String => value auth.cluster_token;
    /// turn.credential_ttl_secs: lifetime of minted TURN credentials.
    #[arg(long, env = "SIGNALING_CREDENTIAL_TTL_SECS")]
    credential_ttl_secs: u64 => value turn.credential_ttl_secs;
    /// selection.geoip_db: MaxMind-format City database.
    #[arg(long, env = "SIGNALING_GEOIP_DB")]
    geoip_db: String => some selection.geoip_db;
    /// selection.default_region.
    #[arg(long, env = "SIGNALING_DEFAULT_REGION")]
    default_region: String => value selection.default_region;
    /// log.format: text or json.
    #[arg(long, env = "SIGNALING_LOG_FORMAT")]
    log_format: String => value log.format;
    /// log.level: a tracing filter.
    #[arg(long, env = "SIGNALING_LOG_LEVEL")]
    log_level: String => value log.level;
    /// sessions.retention_days: forget ended sessions this many days after they ended (0: never).
    #[arg(long, env = "SIGNALING_RETENTION_DAYS")]
    retention_days: u64 => value sessions.retention_days;
}

pub use cluster::log::LogFormat;

/// Where sessions and history live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub rate_limit_per_ip: u32,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub store: StoreLocation,
    pub jwt_key: Vec<u8>,
    pub cluster_token: String,
    pub credential_ttl: Duration,
    pub seed_secrets: Vec<String>,
    pub offer_tls: bool,
    pub regions: Vec<Region>,
    pub default_region: RegionId,
    pub geoip_db: Option<PathBuf>,
    pub alternates: usize,
    pub machine_heartbeat: Duration,
    pub machine_offline_after: Duration,
    pub connect_timeout: Duration,
    pub max_session: Duration,
    /// How long ended sessions are kept (None: for ever).
    pub retention: Option<Duration>,
    pub log_format: LogFormat,
    pub log_level: String,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// Applies flags and environment variables over the file's values.
    pub fn apply(&mut self, o: &Overrides) {
        o.apply_plain(self);
    }
}

impl Config {
    pub fn from_file(file: &FileConfig) -> anyhow::Result<Self> {
        let listen = file
            .server
            .listen
            .parse()
            .map_err(|e| anyhow::anyhow!("server.listen: {:?} is not an address: {e}", file.server.listen))?;
        if file.server.max_body_bytes < 1024 {
            bail!("server.max_body_bytes: must be at least 1024");
        }
        let trusted_proxies = file
            .server
            .trusted_proxies
            .iter()
            .map(|p| p.parse().map_err(|e| anyhow::anyhow!("server.trusted_proxies: {p:?}: {e}")))
            .collect::<anyhow::Result<_>>()?;
        let store = match &file.store.database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                StoreLocation::Postgres(url.clone())
            }
            Some(url) => bail!("store.database_url: expected postgres://…, got {:?}", redact_url(url)),
            None if file.store.data_dir.is_empty() => bail!("store.data_dir: must not be empty"),
            None => StoreLocation::Sqlite(PathBuf::from(&file.store.data_dir).join("signaling.db")),
        };
        if file.auth.jwt_key.len() < 32 {
            bail!("auth.jwt_key: must be at least 32 bytes (HS256 key)");
        }
        if file.auth.cluster_token.len() < 16 {
            bail!("auth.cluster_token: must be at least 16 bytes");
        }
        if !(5..=86_400).contains(&file.turn.credential_ttl_secs) {
            bail!("turn.credential_ttl_secs: must be between 5 and 86400");
        }
        for (i, s) in file.turn.secrets.iter().enumerate() {
            if s.len() < 16 {
                bail!("turn.secrets[{i}]: must be at least 16 bytes");
            }
        }
        if file.regions.is_empty() {
            bail!("regions: at least one [[regions]] entry is needed");
        }
        let mut regions: Vec<Region> = Vec::new();
        for (i, r) in file.regions.iter().enumerate() {
            if !cluster::ids::valid_region_id(&r.id) {
                bail!("regions[{i}].id: {:?} must be 1-64 of a-z, 0-9 and -", r.id);
            }
            if regions.iter().any(|x| x.id.as_str() == r.id) {
                bail!("regions[{i}].id: {:?} appears twice", r.id);
            }
            let location =
                Coordinates::new(r.lat, r.lon).map_err(|e| anyhow::anyhow!("regions[{i}] ({}): lat/lon: {e}", r.id))?;
            regions.push(Region { id: RegionId::new(&r.id), location });
        }
        let default_region = if file.selection.default_region.is_empty() {
            regions[0].id.clone()
        } else if regions.iter().any(|r| r.id.as_str() == file.selection.default_region) {
            RegionId::new(&file.selection.default_region)
        } else {
            bail!("selection.default_region: {:?} is not one of the regions", file.selection.default_region);
        };
        let geoip_db = file.selection.geoip_db.as_ref().map(PathBuf::from);
        if file.machines.heartbeat_secs == 0 || file.machines.offline_after_secs < 2 * file.machines.heartbeat_secs {
            bail!("machines.offline_after_secs: must be at least twice machines.heartbeat_secs (and that positive)");
        }
        if file.sessions.connect_timeout_secs == 0
            || file.sessions.max_duration_secs < file.sessions.connect_timeout_secs
        {
            bail!("sessions.max_duration_secs: must be at least sessions.connect_timeout_secs (and that positive)");
        }
        if file.sessions.retention_days > 36_500 {
            bail!("sessions.retention_days: at most 36500 (a century); 0 keeps sessions for ever");
        }
        let log_format = cluster::log::validate(&file.log.format, &file.log.level).map_err(anyhow::Error::msg)?;
        Ok(Self {
            listen,
            max_body_bytes: file.server.max_body_bytes,
            rate_limit_per_ip: file.server.rate_limit_per_ip,
            trusted_proxies,
            store,
            jwt_key: file.auth.jwt_key.as_bytes().to_vec(),
            cluster_token: file.auth.cluster_token.clone(),
            credential_ttl: Duration::from_secs(file.turn.credential_ttl_secs),
            seed_secrets: file.turn.secrets.clone(),
            offer_tls: file.turn.offer_tls,
            regions,
            default_region,
            geoip_db,
            alternates: file.selection.alternates,
            machine_heartbeat: Duration::from_secs(file.machines.heartbeat_secs),
            machine_offline_after: Duration::from_secs(file.machines.offline_after_secs),
            connect_timeout: Duration::from_secs(file.sessions.connect_timeout_secs),
            max_session: Duration::from_secs(file.sessions.max_duration_secs),
            retention: (file.sessions.retention_days > 0)
                .then(|| Duration::from_secs(file.sessions.retention_days.saturating_mul(86_400))),
            log_format,
            log_level: file.log.level.clone(),
        })
    }

    pub fn load(path: Option<&PathBuf>, overrides: &Overrides) -> anyhow::Result<Self> {
        let mut file = match path {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        file.apply(overrides);
        Self::from_file(&file)
    }
}

/// A database URL with its password replaced, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_override_names_the_key_it_sets() {
        use clap::Args;
        let command = Overrides::augment_args(clap::Command::new("signaling"));
        assert_eq!(Overrides::KEYS.len(), 11);
        cluster::overrides::check_help(&command, Overrides::KEYS).unwrap();
        let mut file = FileConfig::default();
        let o = Overrides {
            database_url: Some("postgres://x".into()),
            log_level: Some("debug".into()),
            retention_days: Some(30),
            ..Default::default()
        };
        file.apply(&o);
        assert_eq!((file.store.database_url.as_deref(), file.log.level.as_str()), (Some("postgres://x"), "debug"));
        assert_eq!(file.sessions.retention_days, 30);
    }

    pub(crate) fn valid() -> FileConfig {
        let mut f = FileConfig::default();
        f.auth.jwt_key = "k".repeat(32);
        f.auth.cluster_token = "c".repeat(16);
        f.regions = vec![
            RegionEntry { id: "eu-central".into(), lat: 50.1, lon: 8.7 },
            RegionEntry { id: "us-east".into(), lat: 39.0, lon: -77.5 },
        ];
        f
    }

    #[test]
    fn defaults_validate() {
        let c = Config::from_file(&valid()).unwrap();
        assert_eq!(c.default_region.as_str(), "eu-central");
        assert_eq!(c.credential_ttl, Duration::from_secs(600));
        assert_eq!(c.store, StoreLocation::Sqlite(PathBuf::from("data/signaling.db")));
    }

    #[test]
    fn errors_name_the_key() {
        type Mutate = fn(&mut FileConfig);
        let cases: Vec<(Mutate, &str)> = vec![
            (|f| f.server.listen = "x".into(), "server.listen"),
            (|f| f.auth.jwt_key = "short".into(), "auth.jwt_key"),
            (|f| f.auth.cluster_token.clear(), "auth.cluster_token"),
            (|f| f.turn.credential_ttl_secs = 4, "turn.credential_ttl_secs"),
            (|f| f.turn.secrets = vec!["x".into()], "turn.secrets[0]"),
            (|f| f.regions.clear(), "regions"),
            (|f| f.regions[1].id = "EU".into(), "regions[1].id"),
            (|f| f.regions[1].id = "eu-central".into(), "regions[1].id"),
            (|f| f.regions[0].lat = 91.0, "regions[0]"),
            (|f| f.selection.default_region = "mars".into(), "selection.default_region"),
            (|f| f.store.database_url = Some("mysql://u:pw@h/db".into()), "store.database_url"),
            (|f| f.machines.offline_after_secs = 1, "machines.offline_after_secs"),
            (|f| f.sessions.retention_days = u64::MAX / 86_400 + 1, "sessions.retention_days"),
            (|f| f.log.format = "xml".into(), "log.format"),
        ];
        for (mutate, key) in cases {
            let mut f = valid();
            mutate(&mut f);
            let err = Config::from_file(&f).unwrap_err().to_string();
            assert!(err.starts_with(key), "expected an error naming {key}, got {err}");
            assert!(!err.contains("pw@"), "password leaked: {err}");
        }
    }

    #[test]
    fn example_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/signaling.toml");
        let file = FileConfig::load(&path).unwrap();
        let c = Config::from_file(&file).unwrap();
        assert_eq!(c.regions.len(), 3);
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        // Every documented default equals the built-in one.
        let mut defaults =
            FileConfig { auth: file.auth.clone(), regions: file.regions.clone(), ..FileConfig::default() };
        defaults.selection.default_region = file.selection.default_region.clone();
        assert_eq!(file, defaults);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = FileConfig::parse("[server]\nlisen = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn postgres_url_selects_postgres() {
        let mut f = valid();
        f.store.database_url = Some("postgres://u:p@localhost/db".into());
        assert!(matches!(Config::from_file(&f).unwrap().store, StoreLocation::Postgres(_)));
        assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }
}
