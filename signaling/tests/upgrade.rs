//! A relay upgrade by deploy/install.sh during a live session keeps the session. The relay runs
//! as install.sh installs it on a VPS: under systemd, here a real systemd booted in a container
//! (`systemd-nspawn` on a throwaway root: a tmpfs with this host's /usr, installed by
//! scripts/test.sh as Debian's systemd-container), sharing the host's network. install.sh installs
//! and starts it from one build's dist directory; a TURN client (webrtc-rs `turn`) allocates
//! through it and sends numbered packets to a peer; install.sh runs again with a new build: the
//! old relay drains (no new allocations, the running one goes on) and systemd starts the new
//! binary once the session has ended. Every packet sent during the upgrade arrives, and the new
//! binary (checked by its SHA-256) serves the next session. Its TLS certificate, renewed by
//! certbot's deploy hook during the session, is served at once by the same process. And
//! signaling, installed the same way, serves, and its daily backup runs beside it as the same
//! dynamic user.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{CLUSTER_TOKEN, Signaling, eventually, unix_now};
use serde_json::Value;
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

const TURN_SECRET: &str = "test-turn-secret-0123456789";
const TURN_PORT: u16 = 23478;
const ADMIN: &str = "127.0.0.1:29090";
/// Where certbot keeps the relay's certificate in the container.
const LINEAGE: &str = "/etc/letsencrypt/live/relay.test";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// systemd booted by systemd-nspawn on a volatile root (tmpfs, the host's /usr read-only) with
/// the host's network; `/usr/local` and the given directories bound in. Killed when dropped.
struct Container {
    nspawn: Child,
    leader: u32,
}

impl Container {
    fn boot(name: &str, log: &Path, binds: &[String]) -> Self {
        let mut nspawn = Command::new("systemd-nspawn")
            .args(["--directory=/", "--volatile=yes", "--register=no", "--keep-unit", "--boot"])
            .arg(format!("--machine={name}"))
            .args(binds)
            // Only the basic system: none of the host's services; nftables stays off (the host's
            // network is shared).
            .args(["--", "systemd.unit=basic.target", "systemd.firstboot=off", "systemd.mask=nftables.service"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("systemd-nspawn is installed (scripts/test.sh installs Debian's systemd-container)");
        let pid = nspawn.id();
        let start = Instant::now();
        let leader = loop {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            if let Some(leader) = children.split_whitespace().next().and_then(|p| p.parse().ok()) {
                break leader;
            }
            if start.elapsed() > Duration::from_secs(20) || nspawn.try_wait().unwrap().is_some() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("systemd-nspawn did not start a container:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let c = Self { nspawn, leader };
        // Booted: the basic system up (degraded is fine: nftables is masked).
        let mut state = String::new();
        while start.elapsed() < Duration::from_secs(60) {
            state = String::from_utf8_lossy(&c.sh("systemctl is-system-running").stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                return c;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "the container's systemd is {state:?} after 60 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// Runs `script` with sh inside the container.
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .arg("--target")
            .arg(self.leader.to_string())
            .args(["--mount", "--uts", "--ipc", "--pid", "--", "/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("nsenter (util-linux)")
    }

    /// The relay service's main process id (0 when none) and its state.
    fn relay(&self) -> (u32, String) {
        let out = self.sh("systemctl show --property=MainPID --property=ActiveState relay");
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |k: &str| out.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_default().to_owned();
        (field("MainPID=").parse().unwrap_or(0), field("ActiveState="))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Killing the container's init ends its PID namespace, every process in it.
        let _ = Command::new("kill").args(["-KILL", &self.leader.to_string()]).status();
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// A TURN allocation at the relay with a REST credential from the cluster's secret.
async fn allocate() -> (Client, impl Conn) {
    let cred = cluster::credentials::mint(TURN_SECRET.as_bytes(), unix_now(), 3600, Some("player")).unwrap();
    let server = format!("127.0.0.1:{TURN_PORT}");
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.clone(),
        turn_serv_addr: server,
        username: cred.username,
        password: cred.credential,
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    let relayed = client.allocate().await.expect("an allocation at the relay");
    (client, relayed)
}

/// The expiry (Unix seconds) of the relay's certificate `which`, from its metrics.
async fn expiry(http: &reqwest::Client, which: &str) -> Option<f64> {
    let metrics = http.get(format!("http://{ADMIN}/metrics")).send().await.ok()?.text().await.ok()?;
    let series = format!("relay_certificate_expiry_timestamp_seconds{{certificate=\"{which}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok())
}

async fn healthz(http: &reqwest::Client) -> Option<Value> {
    http.get(format!("http://{ADMIN}/healthz")).send().await.ok()?.json().await.ok()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_upgraded_by_install_sh_during_a_live_session_keeps_it() {
    let scratch = std::env::temp_dir().join(format!("upgrade-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    for d in ["usr-local", "dist1", "dist2"] {
        std::fs::create_dir_all(scratch.join(d)).unwrap();
    }
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let s = Signaling::start("sqlite", "");

    // Two builds: this one (scripts/dist.sh), and a "new" one whose relay differs by its bytes.
    let bins = PathBuf::from(env!("CARGO_BIN_EXE_signaling")).parent().unwrap().to_path_buf();
    let o = Command::new(repo_root().join("scripts/dist.sh"))
        .arg("--from")
        .arg(&bins)
        .arg("--out")
        .arg(scratch.join("dist1"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    for bin in ["relay", "relayctl", "signaling"] {
        let mut bytes = std::fs::read(scratch.join("dist1").join(bin)).unwrap();
        if bin == "relay" {
            bytes.extend_from_slice(b"\0build 2");
        }
        let path = scratch.join("dist2").join(bin);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let o = Command::new("sh")
        .arg("-c")
        .arg("sha256sum relay relayctl signaling > SHA256SUMS")
        .current_dir(scratch.join("dist2"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let new_relay = sha256(&scratch.join("dist2/relay"));
    assert_ne!(new_relay, sha256(&scratch.join("dist1/relay")));
    std::fs::write(scratch.join("token"), CLUSTER_TOKEN).unwrap();
    // Its link certificate from a cluster CA (scratch/link); its TLS certificate as certbot
    // keeps it (localhost-30) and the renewal certbot will bring (localhost-90), in scratch/tls.
    common::certs::link_dir(&scratch, "upgrade-1");
    for days in [30, 90] {
        common::certs::self_signed(&scratch.join("tls"), "localhost", days);
    }

    let bind = |from: &str, to: &str, ro: bool| {
        format!("--bind{}={}:{to}", if ro { "-ro" } else { "" }, scratch.join(from).display())
    };
    let binds = [
        bind("usr-local", "/usr/local", false),
        bind("dist1", "/opt/dist1", true),
        bind("dist2", "/opt/dist2", true),
        bind("token", "/opt/token", true),
        bind("link", "/opt/link", true),
        bind("tls", "/opt/tls", true),
        format!("--bind-ro={}:/opt/deploy", repo_root().join("deploy").display()),
        // The volatile root's /etc starts empty: Debian's alternatives (awk) are the host's.
        "--bind-ro=/etc/alternatives".to_owned(),
    ];
    let c = Container::boot(&format!("upgrade-{}", std::process::id()), &scratch.join("container.log"), &binds);
    let install = |dist: &str| {
        c.sh(&format!(
            "/opt/deploy/install.sh relay --dist {dist} --region eu-central --public-ip 127.0.0.1 --relay-id upgrade-1 \
             --signaling-url {} --cluster-token-file /opt/token --firewall none --listen-port {TURN_PORT} \
             --sfu-port 28443 --link-port 24433 --admin-listen {ADMIN} --min-port 26000 --max-port 26999 \
             --allow-peer 127.0.0.0/8 --link-dir /opt/link --tls-cert {LINEAGE}/fullchain.pem \
             --tls-key {LINEAGE}/privkey.pem --tls-port 28444",
            s.url
        ))
    };

    // certbot's files, as it keeps them.
    let o = c.sh(&format!(
        "mkdir -p {LINEAGE} && cp /opt/tls/localhost-30.pem {LINEAGE}/fullchain.pem && \
         install -m 600 /opt/tls/localhost-30.key {LINEAGE}/privkey.pem"
    ));
    assert!(o.status.success(), "{}", text(&o));

    // The first install starts the relay under systemd; it registers with signaling.
    let o = install("/opt/dist1");
    assert!(o.status.success() && text(&o).contains("started relay"), "{}", text(&o));
    let admin = s.token("ops", "admin");
    eventually(Duration::from_secs(20), || async {
        let (_, relays) = s.call("GET", "/v1/relays", Some(&admin), None).await;
        relays["relays"].as_array()?.iter().any(|r| r["id"] == "upgrade-1" && r["status"] == "serving").then_some(())
    })
    .await
    .unwrap_or_else(|| {
        let journal = c.sh("journalctl -u relay --no-pager | tail -30");
        panic!("the installed relay did not register with signaling; its journal:\n{}", text(&journal))
    });
    let (old_pid, state) = c.relay();
    assert!(old_pid > 0 && state == "active", "{old_pid} {state}");
    // Its link key (root's, mode 600) reached the relay's dynamic user as a systemd credential,
    // and its TLS key (root:relay-tls, 640) through the group: all three certificates are in use.
    for cert in ["link", "turn_tls", "sfu_tls"] {
        assert!(expiry(&http, cert).await.is_some(), "the {cert} certificate is not in use");
    }
    let first_expiry = expiry(&http, "turn_tls").await.unwrap();

    // A live session: numbered packets through the relay to a peer, every 10 ms.
    let (client, relayed) = allocate().await;
    let relayed = Arc::new(relayed);
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let counter = {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut next = 0u64;
            while let Ok((n, _)) = peer.recv_from(&mut buf).await {
                // In order, each once: a gap or a repeat is a failure the sender's count shows.
                if n == 8 && u64::from_be_bytes(buf[..8].try_into().unwrap()) == next {
                    next += 1;
                    received.store(next, Ordering::Relaxed);
                }
            }
        })
    };
    let (sent, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let sender = {
        let (sent, stop, relayed) = (Arc::clone(&sent), Arc::clone(&stop), Arc::clone(&relayed));
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                relayed.send_to(&seq.to_be_bytes(), peer_addr).await.expect("send through the relay");
                seq += 1;
                sent.store(seq, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    eventually(Duration::from_secs(5), || async { (received.load(Ordering::Relaxed) >= 100).then_some(()) })
        .await
        .expect("packets flow through the relay");

    // certbot renews the certificate: its deploy hook (written by install.sh) hands the new files
    // to the running relay, which serves them at once (TURN/TLS and the SFU's HTTPS).
    let o = c.sh(&format!(
        "cp /opt/tls/localhost-90.pem {LINEAGE}/fullchain.pem && install -m 600 /opt/tls/localhost-90.key {LINEAGE}/privkey.pem && \
         RENEWED_LINEAGE={LINEAGE} /etc/letsencrypt/renewal-hooks/deploy/50-relay.sh"
    ));
    assert!(o.status.success(), "the deploy hook: {}", text(&o));
    for cert in ["turn_tls", "sfu_tls"] {
        eventually(Duration::from_secs(10), || async {
            expiry(&http, cert).await.filter(|t| *t > first_expiry + 50.0 * 86400.0).map(|_| ())
        })
        .await
        .unwrap_or_else(|| panic!("the relay does not serve the renewed {cert} certificate"));
    }
    assert_eq!(c.relay().0, old_pid, "the renewal restarted the relay");

    // The upgrade: the binary is replaced and the old relay drains; the session goes on.
    let before = sent.load(Ordering::Relaxed);
    let o = install("/opt/dist2");
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("relay: 1 changed") && out.contains("restarting relay: draining"), "{out}");
    let draining = eventually(Duration::from_secs(10), || async {
        healthz(&http).await.filter(|h| h["status"] == "draining").map(|_| Instant::now())
    })
    .await
    .unwrap_or_else(|| panic!("the old relay does not drain: {:?}", c.relay()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (pid, state) = c.relay();
    assert_eq!((pid, state.as_str()), (old_pid, "deactivating"), "the old relay still serves its session");
    let health = healthz(&http).await.unwrap();
    assert_eq!(health["allocations"], 1, "{health}");

    // The session ends: every packet arrived, in order, across the upgrade.
    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();
    let total = sent.load(Ordering::Relaxed);
    eventually(Duration::from_secs(3), || async { (received.load(Ordering::Relaxed) == total).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("{} of {total} packets arrived", received.load(Ordering::Relaxed)));
    relayed.close().await.unwrap();
    client.close().await.unwrap();
    let ended = Instant::now();

    // The old relay exits with its last allocation gone; systemd starts the new binary.
    let new_pid = eventually(Duration::from_secs(30), || async {
        let (pid, state) = c.relay();
        (pid != 0 && pid != old_pid && state == "active").then_some(pid)
    })
    .await
    .unwrap_or_else(|| panic!("the new relay did not start: {:?}", c.relay()));
    let took = ended.elapsed();
    eventually(Duration::from_secs(20), || async { healthz(&http).await.filter(|h| h["status"] == "ok").map(|_| ()) })
        .await
        .expect("the new relay serves");
    // Serving, so past its exec (until then /proc/PID/exe is systemd's, setting the sandbox up).
    let exe = c.sh(&format!("sha256sum /proc/{new_pid}/exe"));
    assert!(text(&exe).starts_with(&new_relay), "the running relay is not the new build: {}", text(&exe));
    let (client, relayed) = allocate().await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relayed.send_to(b"after", peer.local_addr().unwrap()).await.unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), peer.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"after");
    relayed.close().await.unwrap();
    client.close().await.unwrap();
    counter.abort();
    eprintln!(
        "upgrade: {total} packets sent, all received in order ({} after the upgrade began, {:.1?} of them while \
         the old relay drained); the new relay ran {took:.1?} after the session ended",
        total - before,
        ended.duration_since(draining)
    );
    drop(c);
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Signaling as install.sh installs it, under systemd: it serves on its installed config and
/// generated secrets, and the backup timer's service (the same dynamic user) writes a backup
/// while it runs, after which signaling still writes to its store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_installed_under_systemd_serves_and_its_backup_runs_beside_it() {
    let scratch = std::env::temp_dir().join(format!("signaling-systemd-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("usr-local")).unwrap();
    let bins = PathBuf::from(env!("CARGO_BIN_EXE_signaling")).parent().unwrap().to_path_buf();
    let o = Command::new(repo_root().join("scripts/dist.sh"))
        .arg("--from")
        .arg(&bins)
        .arg("--out")
        .arg(scratch.join("dist"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let binds = [
        format!("--bind={}:/usr/local", scratch.join("usr-local").display()),
        format!("--bind-ro={}:/opt/dist", scratch.join("dist").display()),
        format!("--bind-ro={}:/opt/deploy", repo_root().join("deploy").display()),
        "--bind-ro=/etc/alternatives".to_owned(),
    ];
    let c = Container::boot(&format!("signaling-{}", std::process::id()), &scratch.join("container.log"), &binds);
    let o = c.sh("/opt/deploy/install.sh signaling --dist /opt/dist --region eu-central:50.11:8.68 --firewall none \
         --listen 127.0.0.1:28080");
    assert!(o.status.success() && text(&o).contains("started signaling"), "{}", text(&o));
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = "http://127.0.0.1:28080";
    eventually(Duration::from_secs(20), || async {
        let res = http.get(format!("{url}/healthz")).send().await.ok()?;
        res.status().is_success().then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!("signaling does not serve: {}", text(&c.sh("journalctl -u signaling --no-pager | tail -20")))
    });
    let timer = c.sh("systemctl is-enabled signaling-backup.timer; systemctl is-active signaling-backup.timer");
    assert_eq!(String::from_utf8_lossy(&timer.stdout).split_whitespace().collect::<Vec<_>>(), ["enabled", "active"]);

    // A backup now, as the timer would start it.
    let o = c.sh("systemctl start signaling-backup.service && ls /var/lib/signaling/backups");
    let listed = text(&o);
    assert!(
        o.status.success() && listed.lines().any(|l| l.starts_with("signaling-") && l.ends_with(".db")),
        "{listed}\n{}",
        text(&c.sh("journalctl -u signaling-backup --no-pager | tail -20"))
    );
    // The backup ran as signaling's own dynamic user: the store still belongs to the running
    // signaling (another user would have had systemd chown the state directory under it).
    let owners = c.sh("stat -c %u /var/lib/private/signaling/signaling.db; \
         ps -o uid= -p $(systemctl show --property=MainPID --value signaling)");
    let owners: Vec<String> = String::from_utf8_lossy(&owners.stdout).split_whitespace().map(str::to_owned).collect();
    assert!(owners.len() == 2 && owners[0] == owners[1], "store owner and signaling's uid: {owners:?}");
    // Signaling still writes its store: a machine registers (the heartbeat reaches the database).
    let key = c.sh("sed -n 's/^SIGNALING_JWT_KEY=//p' /etc/signaling/secrets.env");
    let key = String::from_utf8_lossy(&key.stdout).trim().to_owned();
    let token = signaling::auth::Keys::new(key.as_bytes())
        .mint("cab-9", signaling::auth::Role::Machine, unix_now(), 600)
        .unwrap();
    let res = http
        .post(format!("{url}/v1/machines/register"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "name": "Cabinet 9", "rtts": { "eu-central": 10.0 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{}", res.text().await.unwrap_or_default());
    drop(c);
    let _ = std::fs::remove_dir_all(&scratch);
}
