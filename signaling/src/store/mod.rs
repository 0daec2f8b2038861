//! The store: relays, TURN secrets, machines, sessions and their events, in embedded SQLite (a
//! file under the data directory, created on first start) or in PostgreSQL when several
//! signaling instances share one database.
//!
//! One implementation serves both through sqlx's `Any` driver: the schema and every query are
//! written in the SQL the two engines share (text ids, BIGINT unix milliseconds, JSON as TEXT,
//! `$n` placeholders, which SQLite accepts too), so behaviour cannot drift between them and one
//! test suite runs against both. Invariants that matter across instances live in the database,
//! not in memory: "one live session per machine" is a unique partial index, so two instances
//! racing for the same machine get one success and one conflict.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use cluster::heartbeat::{Heartbeat, RelayState, Secrets};
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row};

use crate::config::StoreLocation;

mod sessions;

/// The schema, embedded so the binary needs no files beside it.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../../migrations/0001_initial.sql")),
    (2, "ws_messages", include_str!("../../migrations/0002_ws_messages.sql")),
    (3, "relay_sfu", include_str!("../../migrations/0003_relay_sfu.sql")),
    (4, "sessions_ended", include_str!("../../migrations/0004_sessions_ended.sql")),
    (5, "relay_link", include_str!("../../migrations/0005_relay_link.sql")),
    (6, "relay_link_rtts", include_str!("../../migrations/0006_relay_link_rtts.sql")),
    (7, "relay_links", include_str!("../../migrations/0007_relay_links.sql")),
];

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    kind: &'static str,
    /// The PostgreSQL URL, for the notification listener (None on SQLite).
    postgres_url: Option<String>,
}

/// A relay as the registry knows it (the API's type: the store keeps what clients see).
pub use signaling_api::relays::Relay as RelayRow;

#[derive(Debug, Clone, Serialize)]
pub struct MachineRow {
    pub id: String,
    pub name: String,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub rtts: std::collections::BTreeMap<String, f64>,
    pub registered_ms: i64,
    pub last_seen_ms: i64,
}

/// A session as signaling records it (the API's type).
pub use signaling_api::sessions::SessionRecord as SessionRow;

#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: String,
    pub detail: serde_json::Value,
}

/// Filters for the session list.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub machine: Option<String>,
    pub player: Option<String>,
    pub region: Option<String>,
    /// Only live (true) or only ended (false) sessions.
    pub live: Option<bool>,
    pub limit: i64,
}

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("machine already has a live session")]
    Busy,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn state_from(s: &str) -> RelayState {
    if s == "draining" { RelayState::Draining } else { RelayState::Serving }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

impl Store {
    /// Opens (creating if needed) the store and brings its schema up to date.
    pub async fn open(location: &StoreLocation) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let (url, kind, max) = match location {
            StoreLocation::Sqlite(path) => {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("store.data_dir: cannot create {}", dir.display()))?;
                let dir = dir.canonicalize().with_context(|| format!("store.data_dir: {}", dir.display()))?;
                let file = path.file_name().context("store.data_dir: no file name")?;
                let full = dir.join(file);
                // SQLite has one writer at a time; a few connections serve concurrent reads.
                (format!("sqlite://{}?mode=rwc", full.display()), "sqlite", 4)
            }
            StoreLocation::Postgres(url) => (url.clone(), "postgres", 16),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .with_context(|| format!("connecting to the {kind} store at {}", crate::config::redact_url(&url)))?;
        if kind == "sqlite" {
            // WAL lets readers proceed while a write is in progress; it persists in the file.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        let migrations: Vec<Migration> = MIGRATIONS
            .iter()
            .map(|(v, d, sql)| Migration::new(*v, (*d).into(), MigrationType::Simple, (*sql).into(), false))
            .collect();
        let migrator = Migrator { migrations: migrations.into(), ..Migrator::DEFAULT };
        migrator.run(&pool).await.context("migrating the store")?;
        let postgres_url = match location {
            StoreLocation::Postgres(url) => Some(url.clone()),
            StoreLocation::Sqlite(_) => None,
        };
        Ok(Self { pool, kind, postgres_url })
    }

    /// A consistent copy of the SQLite store at `to` (`VACUUM INTO`: online, while signaling
    /// runs, readers and writers go on). PostgreSQL is backed up with `pg_dump`.
    pub async fn backup_sqlite(&self, to: &Path) -> anyhow::Result<()> {
        anyhow::ensure!(self.kind == "sqlite", "the store is PostgreSQL: back it up with pg_dump");
        let to = to.to_str().context("the backup path is not UTF-8")?;
        sqlx::query("VACUUM INTO $1").bind(to).execute(&self.pool).await.context("VACUUM INTO")?;
        Ok(())
    }

    /// The PostgreSQL URL when several instances may share this store.
    pub fn postgres_url(&self) -> Option<&str> {
        self.postgres_url.as_deref()
    }

    // ---- messages between instances ----

    /// Stores a message for a party and notifies every instance (PostgreSQL only).
    pub async fn post_message(&self, role: &str, party: &str, body: &str, now_ms: i64) -> anyhow::Result<()> {
        // Ids sort in the order this process posted them (one socket's messages stay in order).
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{now_ms:014}-{seq:012}-{}", new_id("m"));
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO ws_messages (id, role, party, body, created_ms) VALUES ($1, $2, $3, $4, $5)")
            .bind(&id)
            .bind(role)
            .bind(party)
            .bind(body)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        // Delivered at commit, so a listener always finds the row.
        sqlx::query("SELECT pg_notify('signaling_ws', $1)").bind(format!("{role}:{party}")).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims (deletes and returns, oldest first) the messages waiting for a party.
    pub async fn claim_messages(&self, role: &str, party: &str, since_ms: i64) -> anyhow::Result<Vec<String>> {
        let rows = sqlx::query(
            "DELETE FROM ws_messages WHERE role = $1 AND party = $2 AND created_ms >= $3 RETURNING body, created_ms, id",
        )
        .bind(role)
        .bind(party)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<(String, String)> =
            rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("body")?))).collect::<anyhow::Result<_>>()?;
        out.sort();
        Ok(out.into_iter().map(|(_, body)| body).collect())
    }

    /// Drops messages nobody claimed in time.
    pub async fn sweep_messages(&self, before_ms: i64) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM ws_messages WHERE created_ms < $1").bind(before_ms).execute(&self.pool).await?;
        Ok(())
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- relays ----

    /// Records a heartbeat (registering the relay on its first) and returns the relay's row.
    /// One upsert (SQLite and PostgreSQL share `ON CONFLICT … DO UPDATE`), so two instances
    /// receiving a new relay's first heartbeats cannot race.
    pub async fn relay_heartbeat(&self, hb: &Heartbeat, now_ms: i64) -> anyhow::Result<RelayRow> {
        sqlx::query(
            "INSERT INTO relays (id, region, version, public_host, turn_udp_port, turn_tls_port, state, \
             admin_state, load_json, utilisation, started_at, first_seen_ms, last_seen_ms, sfu_url, link_port, \
             link_rtts_json, links_json) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'serving', $8, $9, $10, $11, $11, $12, $13, $14, $15) \
             ON CONFLICT (id) DO UPDATE SET region = excluded.region, version = excluded.version, \
             public_host = excluded.public_host, turn_udp_port = excluded.turn_udp_port, \
             turn_tls_port = excluded.turn_tls_port, state = excluded.state, load_json = excluded.load_json, \
             utilisation = excluded.utilisation, started_at = excluded.started_at, last_seen_ms = excluded.last_seen_ms, \
             sfu_url = excluded.sfu_url, link_port = excluded.link_port, link_rtts_json = excluded.link_rtts_json, \
             links_json = excluded.links_json",
        )
        .bind(&hb.relay_id)
        .bind(&hb.region)
        .bind(&hb.version)
        .bind(&hb.public_host)
        .bind(i64::from(hb.turn_udp_port))
        .bind(hb.turn_tls_port.map(i64::from))
        .bind(hb.state.as_str())
        .bind(serde_json::to_string(&hb.load)?)
        .bind(hb.load.utilisation())
        .bind(hb.started_at as i64)
        .bind(now_ms)
        .bind(hb.sfu_url.as_deref())
        .bind(hb.link_port.map(i64::from))
        .bind(serde_json::to_string(&hb.link_rtts)?)
        .bind(serde_json::to_string(&hb.links)?)
        .execute(&self.pool)
        .await?;
        self.relay(&hb.relay_id).await?.context("relay vanished after its heartbeat")
    }

    fn relay_row(row: &AnyRow) -> anyhow::Result<RelayRow> {
        Ok(RelayRow {
            id: row.try_get("id")?,
            region: row.try_get("region")?,
            version: row.try_get("version")?,
            public_host: row.try_get("public_host")?,
            turn_udp_port: u16::try_from(row.try_get::<i64, _>("turn_udp_port")?)?,
            turn_tls_port: row.try_get::<Option<i64>, _>("turn_tls_port")?.map(u16::try_from).transpose()?,
            sfu_url: row.try_get("sfu_url")?,
            link_port: row.try_get::<Option<i64>, _>("link_port")?.map(u16::try_from).transpose()?,
            link_rtts: serde_json::from_str(&row.try_get::<String, _>("link_rtts_json")?)?,
            links: serde_json::from_str(&row.try_get::<String, _>("links_json")?)?,
            state: state_from(&row.try_get::<String, _>("state")?),
            admin_state: state_from(&row.try_get::<String, _>("admin_state")?),
            load: serde_json::from_str(&row.try_get::<String, _>("load_json")?)?,
            utilisation: row.try_get("utilisation")?,
            started_at: row.try_get::<i64, _>("started_at")? as u64,
            first_seen_ms: row.try_get("first_seen_ms")?,
            last_seen_ms: row.try_get("last_seen_ms")?,
        })
    }

    const RELAY_COLUMNS: &str = "id, region, version, public_host, turn_udp_port, turn_tls_port, state, admin_state, \
                                 load_json, utilisation, started_at, first_seen_ms, last_seen_ms, sfu_url, link_port, \
                                 link_rtts_json, links_json";

    pub async fn relay(&self, id: &str) -> anyhow::Result<Option<RelayRow>> {
        let row = sqlx::query(&format!("SELECT {} FROM relays WHERE id = $1", Self::RELAY_COLUMNS))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::relay_row).transpose()
    }

    pub async fn relays(&self) -> anyhow::Result<Vec<RelayRow>> {
        let rows = sqlx::query(&format!("SELECT {} FROM relays ORDER BY region, id", Self::RELAY_COLUMNS))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::relay_row).collect()
    }

    /// Sets what an admin wants of a relay; false if there is no such relay.
    pub async fn set_relay_admin_state(&self, id: &str, state: RelayState) -> anyhow::Result<bool> {
        let r = sqlx::query("UPDATE relays SET admin_state = $2 WHERE id = $1")
            .bind(id)
            .bind(state.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Forgets one relay.
    pub async fn remove_relay(&self, id: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM relays WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Forgets relays silent for longer than `older_than_ms` (they re-register on their next
    /// heartbeat).
    pub async fn forget_relays(&self, older_than_ms: i64) -> anyhow::Result<u64> {
        let r =
            sqlx::query("DELETE FROM relays WHERE last_seen_ms < $1").bind(older_than_ms).execute(&self.pool).await?;
        Ok(r.rows_affected())
    }

    // ---- TURN secrets ----

    /// Makes sure a secret exists: seeds from `seed` (newest first) or generates one.
    pub async fn ensure_secrets(&self, seed: &[String], now_ms: i64) -> anyhow::Result<()> {
        let count: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM turn_secrets").fetch_one(&self.pool).await?.try_get("n")?;
        if count > 0 {
            return Ok(());
        }
        let mut secrets: Vec<String> = seed.iter().rev().cloned().collect();
        if secrets.is_empty() {
            secrets.push(new_secret());
        }
        let n = secrets.len();
        for (i, secret) in secrets.into_iter().enumerate() {
            let insert = sqlx::query(
                "INSERT INTO turn_secrets (version, secret, created_ms, retire_after_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(i as i64 + 1)
            .bind(secret)
            .bind(now_ms)
            // Seeded older secrets stay until an explicit rotation retires them.
            .bind(if i + 1 == n { None } else { Some(i64::MAX) })
            .execute(&self.pool)
            .await;
            match insert {
                Ok(_) => {}
                // Another instance seeded at the same time; its set wins.
                Err(e) if is_unique_violation(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The secrets relays must accept now, newest first, with the set's version.
    pub async fn live_secrets(&self, now_ms: i64) -> anyhow::Result<Secrets> {
        let rows = sqlx::query(
            "SELECT version, secret FROM turn_secrets WHERE retire_after_ms IS NULL OR retire_after_ms > $1 \
             ORDER BY version DESC",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut version = 0;
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            version = version.max(row.try_get::<i64, _>("version")?);
            keys.push(row.try_get("secret")?);
        }
        // The set also changes when an old key retires: fold the count into the version.
        Ok(Secrets { version: (version as u64) << 8 | keys.len() as u64, keys })
    }

    /// Adds a new newest secret; the previous ones retire `keep_ms` from now (the longest a
    /// credential they signed can still be used to allocate). Returns the new secret's version.
    pub async fn rotate_secret(&self, now_ms: i64, keep_ms: i64) -> anyhow::Result<i64> {
        let mut tx = self.pool.begin().await?;
        let max: Option<i64> =
            sqlx::query("SELECT MAX(version) AS v FROM turn_secrets").fetch_one(&mut *tx).await?.try_get("v")?;
        let version = max.unwrap_or(0) + 1;
        sqlx::query(
            "UPDATE turn_secrets SET retire_after_ms = $1 WHERE retire_after_ms IS NULL OR retire_after_ms > $1",
        )
        .bind(now_ms + keep_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO turn_secrets (version, secret, created_ms, retire_after_ms) VALUES ($1, $2, $3, NULL)",
        )
        .bind(version)
        .bind(new_secret())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    // ---- machines ----

    /// Registers a machine, or updates it (keeping when it first registered).
    pub async fn register_machine(&self, m: &MachineRow) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO machines (id, name, lat, lon, rtts_json, registered_ms, last_seen_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, lat = excluded.lat, lon = excluded.lon, \
             rtts_json = excluded.rtts_json, last_seen_ms = excluded.last_seen_ms",
        )
        .bind(&m.id)
        .bind(&m.name)
        .bind(m.lat)
        .bind(m.lon)
        .bind(serde_json::to_string(&m.rtts)?)
        .bind(m.last_seen_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a machine's heartbeat (and new RTTs if given); false if it never registered.
    pub async fn machine_heartbeat(
        &self,
        id: &str,
        rtts: Option<&std::collections::BTreeMap<String, f64>>,
        now_ms: i64,
    ) -> anyhow::Result<bool> {
        let r = match rtts {
            Some(rtts) => {
                sqlx::query("UPDATE machines SET last_seen_ms = $2, rtts_json = $3 WHERE id = $1")
                    .bind(id)
                    .bind(now_ms)
                    .bind(serde_json::to_string(rtts)?)
                    .execute(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("UPDATE machines SET last_seen_ms = $2 WHERE id = $1")
                    .bind(id)
                    .bind(now_ms)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(r.rows_affected() > 0)
    }

    fn machine_row(row: &AnyRow) -> anyhow::Result<MachineRow> {
        Ok(MachineRow {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            lat: row.try_get("lat")?,
            lon: row.try_get("lon")?,
            rtts: serde_json::from_str(&row.try_get::<String, _>("rtts_json")?)?,
            registered_ms: row.try_get("registered_ms")?,
            last_seen_ms: row.try_get("last_seen_ms")?,
        })
    }

    pub async fn machine(&self, id: &str) -> anyhow::Result<Option<MachineRow>> {
        let row = sqlx::query(
            "SELECT id, name, lat, lon, rtts_json, registered_ms, last_seen_ms FROM machines WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::machine_row).transpose()
    }

    /// Every machine with the id of its live session, if any.
    pub async fn machines(&self) -> anyhow::Result<Vec<(MachineRow, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT m.id, m.name, m.lat, m.lon, m.rtts_json, m.registered_ms, m.last_seen_ms, s.id AS session_id \
             FROM machines m LEFT JOIN sessions s ON s.machine_id = m.id AND s.ended_ms IS NULL ORDER BY m.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((Self::machine_row(r)?, r.try_get("session_id")?))).collect()
    }
}

/// A fresh random secret: 32 bytes, base64url.
pub fn new_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `id` has the shape [`new_id`] gives with `prefix`.
pub fn valid_generated_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|tail| tail.len() == 20 && tail.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()))
}

/// A fresh random id with a prefix, e.g. `ses_3kq9…` (16 bytes of randomness, base32-like).
pub fn new_id(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut rng = rand::rng();
    let tail: String = (0..20).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("{prefix}_{tail}")
}

/// End reasons are short tokens (they are stored and shown, never used as metric labels).
pub fn valid_reason(r: &str) -> bool {
    !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
