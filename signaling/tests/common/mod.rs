//! Starts the real signaling binary on a free port with a fresh store and talks to it over HTTP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

pub mod certs;
pub mod relay;

pub const JWT_KEY: &str = "test-jwt-key-0123456789abcdef0123456789";
pub const CLUSTER_TOKEN: &str = "test-cluster-token-0123";

pub struct Signaling {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
    pub http: reqwest::Client,
}

impl Drop for Signaling {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A config with three regions; `extra` is appended (TOML).
pub fn config(store: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
rate_limit_per_ip = 0
[store]
{store}
[auth]
jwt_key = "{JWT_KEY}"
cluster_token = "{CLUSTER_TOKEN}"
[turn]
secrets = ["test-turn-secret-0123456789"]
[machines]
heartbeat_secs = 1
offline_after_secs = 3
[log]
level = "warn"
{extra}
[[regions]]
id = "eu-central"
lat = 50.11
lon = 8.68
[[regions]]
id = "us-east"
lat = 39.04
lon = -77.49
[[regions]]
id = "ap-southeast"
lat = 1.29
lon = 103.85
"#
    )
}

/// The store section for the backend under test: SQLite in the test's directory, or a fresh
/// database on the PostgreSQL server that `SIGNALING_TEST_POSTGRES_URL` points at
/// (scripts/test.sh starts one; without it the PostgreSQL tests fail, they do not skip).
pub fn store_section(backend: &str, dir: &std::path::Path) -> String {
    match backend {
        "sqlite" => format!("data_dir = {:?}", dir.join("data").display().to_string()),
        "postgres" => format!("database_url = {:?}", fresh_postgres_database()),
        other => panic!("unknown backend {other}"),
    }
}

/// Creates an empty database for one signaling instance and returns its URL.
pub fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let base = std::env::var("SIGNALING_TEST_POSTGRES_URL").expect(
        "SIGNALING_TEST_POSTGRES_URL must point at a PostgreSQL server (scripts/test.sh installs and starts one)",
    );
    let name = format!("signaling_test_{}_{}", std::process::id(), rand_suffix());
    // Tests call this from inside their runtime; a thread of its own may block on another.
    let (url, db) = (base.clone(), name.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect to the test PostgreSQL server");
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {db}").as_str())
                .await
                .expect("create database");
        });
    })
    .join()
    .expect("creating the test database");
    let (prefix, _) = base.rsplit_once('/').expect("URL ends with /database");
    format!("{prefix}/{name}")
}

impl Signaling {
    pub fn start(backend: &str, extra: &str) -> Self {
        Self::start_args(backend, extra, &[])
    }

    /// Like `start`, with extra command-line flags.
    pub fn start_args(backend: &str, extra: &str, args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("signaling-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_in(dir.clone(), &store_section(backend, &dir), extra, args)
    }

    /// An instance on the given PostgreSQL database (several may share one).
    pub fn start_on_postgres(url: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("signaling-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_in(dir, &format!("database_url = {url:?}"), "", &[])
    }

    /// An instance with the given `[store]` section (TOML) and `extra` config, in a directory
    /// of its own.
    pub fn start_with_store(store: &str, extra: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("signaling-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_in(dir, store, extra, &[])
    }

    fn start_in(dir: PathBuf, store: &str, extra: &str, args: &[&str]) -> Self {
        let path = dir.join("signaling.toml");
        std::fs::write(&path, config(store, extra)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_signaling"))
            .arg("--config")
            .arg(&path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start signaling");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.trim().strip_prefix("API") {
                    let _ = tx.send(rest.trim().trim_end_matches("/v1/").to_owned());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).expect("signaling printed its API address");
        Self { child, url, dir, http: reqwest::Client::new() }
    }

    pub fn token(&self, sub: &str, role: &str) -> String {
        use signaling::auth::{Keys, Role};
        let role = match role {
            "player" => Role::Player,
            "machine" => Role::Machine,
            _ => Role::Admin,
        };
        Keys::new(JWT_KEY.as_bytes()).mint(sub, role, unix_now(), 3600).unwrap()
    }

    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
    }

    pub async fn heartbeat(&self, id: &str, region: &str, port: u16, state: &str, cpu: f64) -> (u16, Value) {
        self.call(
            "POST",
            "/v1/relays/heartbeat",
            Some(CLUSTER_TOKEN),
            Some(heartbeat_json(id, region, port, state, cpu)),
        )
        .await
    }
}

/// A relay heartbeat's body, as a relay sends it.
pub fn heartbeat_json(id: &str, region: &str, port: u16, state: &str, cpu: f64) -> Value {
    json!({
        "relay_id": id, "region": region, "version": "test", "public_host": "127.0.0.1",
        "turn_udp_port": port, "state": state,
        "load": {"allocations": 0, "max_allocations": 100, "cpu": cpu, "bandwidth_bps": 0, "bandwidth_cap_bps": 0},
        "secrets_version": 0, "started_at": unix_now(),
    })
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1_000_000
        + (SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() as u64)
}

/// Polls `f` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
