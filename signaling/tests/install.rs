//! deploy/install.sh in a throwaway root (its `--root` prefix), from a dist directory made by
//! scripts/dist.sh out of this build's binaries: a relay and a signaling install write what they
//! should, read by the tools that will read them on a VPS (`relay check-config`, signaling
//! starting on its installed config and secrets, `nft -c` on the firewall rules, the sysctl keys
//! against this kernel); a second run changes nothing; a binary whose SHA-256 differs from
//! SHA256SUMS installs nothing; an upgrade replaces only the binary and keeps the operator's
//! config; bad options fail naming the option; a VPS with both roles lets through, with real
//! packets, what either role's rules accept and nothing else.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::certs::{link_dir, self_signed};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_signaling")).parent().unwrap().to_path_buf()
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(label: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("install-test-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// scripts/dist.sh on this build's binaries into `out`.
fn dist(out: &Path) {
    let o = run(Command::new(repo_root().join("scripts/dist.sh")).arg("--from").arg(bin_dir()).arg("--out").arg(out));
    assert!(o.status.success(), "dist.sh: {}", text(&o));
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 3, "{sums}");
}

fn install(role: &str, root: &Path, dist: &Path, args: &[&str]) -> Output {
    run(Command::new(repo_root().join("deploy/install.sh"))
        .arg(role)
        .arg("--root")
        .arg(root)
        .arg("--dist")
        .arg(dist)
        .args(args))
}

/// Every file under `root`: its mode and content.
fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, (u32, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(&path, root, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, (meta.permissions().mode() & 0o7777, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

/// The `KEY=value` lines of an env file.
fn env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

const RELAY_ARGS: &[&str] = &[
    "--region",
    "eu-central",
    "--public-ip",
    "203.0.113.10",
    "--relay-id",
    "eu-fra-1",
    "--signaling-url",
    "https://signaling.example.com",
    "--link-peer",
    "198.51.100.7",
    "--admin-listen",
    "10.0.1.10:9090",
    "--monitor-from",
    "10.0.0.0/8",
];

#[test]
fn the_relay_installs_checked_by_its_readers_and_a_second_run_changes_nothing() {
    let s = scratch("relay");
    let (dist_dir, root) = (s.0.join("dist"), s.0.join("root"));
    dist(&dist_dir);
    let token = s.0.join("token");
    std::fs::write(&token, "cluster-token-0123456789\n").unwrap();
    let link = link_dir(&s.0, "eu-fra-1");
    let (cert, key) = self_signed(&s.0, "turn-fra-1.example.com", 90);
    let mut args = RELAY_ARGS.to_vec();
    args.extend(["--cluster-token-file", token.to_str().unwrap(), "--link-dir", link.to_str().unwrap()]);
    args.extend(["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);

    let first = install("relay", &root, &dist_dir, &args);
    assert!(first.status.success(), "{}", text(&first));
    let installed = tree(&root);
    let expected = [
        ("usr/local/bin/relay", 0o755),
        ("usr/local/bin/relayctl", 0o755),
        ("etc/relay/relay.toml", 0o644),
        ("etc/relay/relay.toml.dist", 0o644),
        ("etc/relay/secrets.env", 0o600),
        ("etc/systemd/system/relay.service", 0o644),
        ("etc/sysctl.d/60-relay.conf", 0o644),
        ("etc/nftables.d/relay.nft", 0o644),
        ("etc/systemd/journald.conf.d/60-remote-play.conf", 0o644),
        ("etc/relay/link/ca.pem", 0o644),
        ("etc/relay/link/eu-fra-1.pem", 0o644),
        ("etc/relay/link/eu-fra-1.key", 0o600),
        ("etc/systemd/system/relay.service.d/50-link-key.conf", 0o644),
        ("etc/relay/tls/fullchain.pem", 0o644),
        ("etc/relay/tls/privkey.pem", 0o640),
        ("etc/systemd/system/relay.service.d/50-tls.conf", 0o644),
    ];
    let names: Vec<_> = installed.keys().collect();
    assert_eq!(installed.len(), expected.len(), "{names:?}");
    for (path, mode) in expected {
        let (m, _) = installed.get(Path::new(path)).unwrap_or_else(|| panic!("{path} not installed: {names:?}"));
        assert_eq!(*m, mode, "{path}: mode {m:o}");
    }
    assert!(text(&first).contains("relay: 16 changed, 0 unchanged"), "{}", text(&first));
    assert_eq!(installed[Path::new("usr/local/bin/relay")].1, std::fs::read(dist_dir.join("relay")).unwrap());
    assert_eq!(
        installed[Path::new("etc/systemd/system/relay.service")].1,
        std::fs::read(repo_root().join("deploy/relay.service")).unwrap()
    );

    // The relay accepts its installed config, with the token from secrets.env and the link key
    // as systemd hands it over (the drop-in's credential), as it would start.
    let secrets = env_file(&root.join("etc/relay/secrets.env"));
    assert_eq!(secrets, vec![("RELAY_CLUSTER_TOKEN".to_owned(), "cluster-token-0123456789".to_owned())]);
    let dropin = std::fs::read_to_string(root.join("etc/systemd/system/relay.service.d/50-link-key.conf")).unwrap();
    assert!(dropin.contains("LoadCredential=link-key:/etc/relay/link/eu-fra-1.key"), "{dropin}");
    assert!(dropin.contains("Environment=RELAY_LINK_KEY=%d/link-key"), "{dropin}");
    let check = run(Command::new(root.join("usr/local/bin/relay"))
        .args(["check-config", "--config"])
        .arg(root.join("etc/relay/relay.toml"))
        .envs(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RELAY_LINK_KEY", root.join("etc/relay/link/eu-fra-1.key")));
    let out = text(&check);
    assert!(check.status.success(), "{out}");
    for want in [
        "region = \"eu-central\"",
        "external_ip = \"203.0.113.10\"",
        "relay_id = \"eu-fra-1\"",
        "grace_secs = 14400",
        "listen = \"0.0.0.0:4433\"",
        "cert = \"/etc/relay/tls/fullchain.pem\"",
        "public_url = \"https://203.0.113.10:8443\"",
    ] {
        assert!(out.contains(want), "check-config does not show {want}:\n{out}");
    }

    // nftables parses the rules (check mode: nothing is loaded), and they name the config's ports.
    let nft = root.join("etc/nftables.d/relay.nft");
    let o = run(Command::new("nft").arg("-c").arg("-f").arg(&nft));
    assert!(o.status.success(), "nft -c: {}", text(&o));
    let rules = std::fs::read_to_string(&nft).unwrap();
    for port in [
        "udp dport 3478",
        "tcp dport 3478",
        "tcp dport 8443",
        "udp dport 49152-65535",
        "udp dport 4433 ip saddr { 198.51.100.7 }",
        "tcp dport 9090 ip saddr 10.0.0.0/8",
        "tcp dport 22",
        "tcp dport 443",
        "tcp dport 80",
        "policy drop",
    ] {
        assert!(rules.contains(port), "{port} not in relay.nft:\n{rules}");
    }
    // Every sysctl it sets is one this kernel has, and the ephemeral ports end below the range.
    let sysctls = std::fs::read_to_string(root.join("etc/sysctl.d/60-relay.conf")).unwrap();
    let keys: Vec<&str> =
        sysctls.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(" = ").next()).collect();
    assert!(keys.len() >= 4, "{sysctls}");
    for key in keys {
        assert!(Path::new("/proc/sys").join(key.replace('.', "/")).exists(), "no such sysctl: {key}");
    }
    assert!(sysctls.contains("net.ipv4.ip_local_port_range = 32768 49151"), "{sysctls}");

    // Again: nothing changes, not a byte or a mode.
    let second = install("relay", &root, &dist_dir, &args);
    assert!(second.status.success(), "{}", text(&second));
    assert!(text(&second).contains("relay: 0 changed, 16 unchanged"), "{}", text(&second));
    assert!(tree(&root) == installed, "the second run changed the tree");

    // The operator edits the config; a binary tampered with after its checksum was published is
    // refused and nothing is written, neither into this root nor into a fresh one.
    let config = root.join("etc/relay/relay.toml");
    let edited = std::fs::read_to_string(&config).unwrap().replace("format = \"json\"", "format = \"text\"");
    std::fs::write(&config, &edited).unwrap();
    let edited_tree = tree(&root);
    let mut relay = std::fs::read(dist_dir.join("relay")).unwrap();
    relay.extend_from_slice(b"tampered");
    std::fs::write(dist_dir.join("relay"), &relay).unwrap();
    for target in [root.clone(), s.0.join("fresh")] {
        let o = install("relay", &target, &dist_dir, &args);
        assert!(!o.status.success(), "a tampered binary installed: {}", text(&o));
        assert!(text(&o).contains("does not match SHA256SUMS") && text(&o).contains("not installing"), "{}", text(&o));
    }
    assert!(tree(&root) == edited_tree, "a refused install changed the tree");
    assert!(!s.0.join("fresh").exists(), "a refused install wrote into a fresh root");

    // An upgrade: a new build (its own SHA256SUMS) replaces the binary alone; the config stays
    // the operator's.
    let sums = std::fs::read_to_string(dist_dir.join("SHA256SUMS")).unwrap();
    let sum = run(Command::new("sha256sum").arg(dist_dir.join("relay")));
    let new_sum = String::from_utf8_lossy(&sum.stdout).split_whitespace().next().unwrap().to_owned();
    let sums: String = sums
        .lines()
        .map(|l| if l.ends_with(" relay") { format!("{new_sum}  relay\n") } else { format!("{l}\n") })
        .collect();
    std::fs::write(dist_dir.join("SHA256SUMS"), sums).unwrap();
    let upgrade = install("relay", &root, &dist_dir, &args);
    assert!(upgrade.status.success(), "{}", text(&upgrade));
    assert!(text(&upgrade).contains("relay: 1 changed, 15 unchanged"), "{}", text(&upgrade));
    assert_eq!(std::fs::read(root.join("usr/local/bin/relay")).unwrap(), relay);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    assert!(text(&upgrade).contains("kept /etc/relay/relay.toml (yours: delete it"), "{}", text(&upgrade));

    // New options (here another admin address) keep the operator's config, say so, and give
    // what they would write as relay.toml.dist to merge.
    let dist_config = root.join("etc/relay/relay.toml.dist");
    let before = std::fs::read_to_string(&dist_config).unwrap();
    let moved: Vec<&str> = args.iter().map(|a| if *a == "10.0.1.10:9090" { "10.0.1.10:9091" } else { a }).collect();
    let o = install("relay", &root, &dist_dir, &moved);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    // (relay.toml.dist, and the firewall rule for the new port.)
    assert!(out.contains("relay: 2 changed, 14 unchanged"), "{out}");
    assert!(
        out.contains("kept /etc/relay/relay.toml (yours), but these options give another: diff /etc/relay/relay.toml /etc/relay/relay.toml.dist"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    let after = std::fs::read_to_string(&dist_config).unwrap();
    assert_eq!(after, before.replace("10.0.1.10:9090", "10.0.1.10:9091"));
    assert_ne!(after, before);
    // The operator takes it: the config is again what the options give.
    std::fs::copy(&dist_config, &config).unwrap();
    let o = install("relay", &root, &dist_dir, &moved);
    assert!(text(&o).contains("kept /etc/relay/relay.toml (as these options give it)"), "{}", text(&o));
    assert!(text(&o).contains("relay: 0 changed, 16 unchanged"), "{}", text(&o));
}

#[test]
fn signaling_installs_starts_on_what_was_installed_and_keeps_its_secrets() {
    let s = scratch("signaling");
    let (dist_dir, root) = (s.0.join("dist"), s.0.join("root"));
    dist(&dist_dir);
    let args = [
        "--region",
        "eu-central:50.11:8.68",
        "--region",
        "us-east:39.04:-77.49",
        "--region",
        "ap-southeast:1.29:103.85",
    ];
    let first = install("signaling", &root, &dist_dir, &args);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("signaling: 10 changed, 0 unchanged"), "{}", text(&first));
    let installed = tree(&root);
    assert_eq!(installed[Path::new("etc/signaling/secrets.env")].0, 0o600);
    let secrets = env_file(&root.join("etc/signaling/secrets.env"));
    let keys: Vec<&str> = secrets.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["SIGNALING_JWT_KEY", "SIGNALING_CLUSTER_TOKEN"]);
    assert!(secrets.iter().all(|(_, v)| v.len() == 64), "{secrets:?}");
    let o = run(Command::new("nft").arg("-c").arg("-f").arg(root.join("etc/nftables.d/signaling.nft")));
    assert!(o.status.success(), "nft -c: {}", text(&o));

    // The installed binary starts on the installed config with the installed secrets, as systemd
    // would run it (its state directory and a free port given as the unit and a test do).
    let data = s.0.join("state");
    let mut child = Command::new(root.join("usr/local/bin/signaling"))
        .arg("--config")
        .arg(root.join("etc/signaling/signaling.toml"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .envs(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader};
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut banner = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        let done = line.trim_start().starts_with("regions");
        banner.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let banner = banner.join("\n");
    assert!(banner.contains("regions     eu-central, us-east, ap-southeast"), "{banner}");

    // Again: nothing changes, the secrets least of all (relays and players' tokens depend on them).
    let second = install("signaling", &root, &dist_dir, &args);
    assert!(text(&second).contains("signaling: 0 changed, 10 unchanged"), "{}", text(&second));
    assert!(tree(&root) == installed, "the second run changed the tree");
}

#[test]
fn bad_options_fail_naming_the_option_and_write_nothing() {
    let s = scratch("bad");
    let dist_dir = s.0.join("dist");
    dist(&dist_dir);
    let root = s.0.join("root");
    let cases: &[(&str, &[&str], &str)] = &[
        ("relay", &["--public-ip", "203.0.113.10", "--signaling-url", "https://s.example"], "--region"),
        ("relay", &["--region", "EU central", "--public-ip", "1.2.3.4", "--signaling-url", "https://s"], "--region"),
        ("relay", &["--region", "eu", "--public-ip", "1.2.3.4", "--signaling-url", "ftp://s"], "--signaling-url"),
        (
            "relay",
            &["--region", "eu", "--public-ip", "1.2.3.4", "--signaling-url", "https://s"],
            "--cluster-token-file",
        ),
        (
            "relay",
            &["--region", "eu", "--public-ip", "1.2.3.4", "--signaling-url", "https://s", "--min-port", "30000"],
            "--min-port",
        ),
        (
            "relay",
            &["--region", "eu", "--public-ip", "1.2.3.4", "--signaling-url", "https://s", "--listen-port", "70000"],
            "--listen-port",
        ),
        ("signaling", &["--region", "eu-central"], "--region"),
        ("signaling", &["--firewall", "ufw", "--region", "eu:1:2"], "--firewall"),
        ("signaling", &["--bogus", "1"], "--bogus"),
    ];
    for (role, args, names) in cases {
        let o = install(role, &root, &dist_dir, args);
        assert!(!o.status.success(), "{role} {args:?} succeeded: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(names), "{role} {args:?}: {}", text(&o));
        assert!(!root.exists(), "{role} {args:?} wrote files");
    }
}

/// The relay and signaling configurations of deploy/compose.yaml and deploy/k8s/ (ConfigMaps,
/// read with Python's yaml, as the cluster would mount them) are accepted by the binaries with
/// the environment those files give them: `relay check-config`, and signaling starting.
#[test]
fn the_container_deployments_configs_are_accepted_by_the_binaries() {
    let s = scratch("containers");
    let deploy = repo_root().join("deploy");
    // The ConfigMaps' files.
    let script = r#"
import sys, yaml
for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc.get("kind") == "ConfigMap":
            for name, body in doc["data"].items():
                open(sys.argv[1] + "/k8s-" + name, "w").write(body)
"#;
    let o = run(Command::new("python3")
        .args(["-c", script])
        .arg(&s.0)
        .arg(deploy.join("k8s/relay.yaml"))
        .arg(deploy.join("k8s/signaling.yaml")));
    assert!(o.status.success(), "{}", text(&o));
    let link = link_dir(&s.0, "node-1");
    let relay = bin_dir().join("relay");
    let cases: Vec<(PathBuf, Vec<(&str, String)>)> = vec![
        (
            deploy.join("compose/relay.toml"),
            vec![
                ("RELAY_REGION", "eu-central".into()),
                ("RELAY_RELAY_ID", "lab-eu-1".into()),
                ("RELAY_LISTEN", "0.0.0.0:3478".into()),
                ("RELAY_ADMIN_LISTEN", "0.0.0.0:9190".into()),
                ("RELAY_SFU_HTTP_LISTEN", "0.0.0.0:8088".into()),
                ("RELAY_MIN_PORT", "49152".into()),
                ("RELAY_MAX_PORT", "57343".into()),
                ("RELAY_CLUSTER_TOKEN", "lab-cluster-token-0123456789".into()),
            ],
        ),
        (
            s.0.join("k8s-relay.toml"),
            vec![
                ("RELAY_RELAY_ID", "node-1".into()),
                ("RELAY_EXTERNAL_IP", "203.0.113.10".into()),
                ("RELAY_REGION", "eu-central".into()),
                ("RELAY_LINK_CERT", link.join("node-1.pem").display().to_string()),
                ("RELAY_LINK_KEY", link.join("node-1.key").display().to_string()),
                ("RELAY_CLUSTER_TOKEN", "token-0123456789".into()),
            ],
        ),
    ];
    for (config, env) in cases {
        // The k8s config names the CA where the Secret is mounted; here it is in `link`.
        let text_config = std::fs::read_to_string(&config)
            .unwrap()
            .replace("/etc/relay/link/ca.pem", link.join("ca.pem").to_str().unwrap());
        let local = s.0.join(format!("checked-{}", config.file_name().unwrap().to_str().unwrap()));
        std::fs::write(&local, text_config).unwrap();
        let o = run(Command::new(&relay)
            .args(["check-config", "--config"])
            .arg(&local)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str()))));
        assert!(o.status.success(), "{}: {}", config.display(), text(&o));
        assert!(text(&o).contains("region = \"eu-central\""), "{}: {}", config.display(), text(&o));
    }
    for config in [deploy.join("compose/signaling.toml"), s.0.join("k8s-signaling.toml")] {
        let mut child = Command::new(bin_dir().join("signaling"))
            .arg("--config")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(s.0.join("data"))
            .env("SIGNALING_JWT_KEY", "lab-jwt-key-0123456789abcdef0123456789")
            .env("SIGNALING_CLUSTER_TOKEN", "lab-cluster-token-0123456789")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut banner = String::new();
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        while let Some(Ok(line)) = lines.next() {
            banner.push_str(&line);
            banner.push('\n');
            if line.trim_start().starts_with("regions") {
                break;
            }
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert!(
            banner.contains("regions     eu-central"),
            "{}: {banner}{}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One network namespace, removed on drop.
struct Netns(String);

impl Netns {
    fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.0]));
    }
}

/// Listens (`serve PORTS`: TCP accepts, UDP echoes) or probes (`probe HOST PORTS`: prints
/// `tcp/80 open` or `closed` per port, a UDP port open when its echo comes back).
const PORTS_PY: &str = r#"
import socket, sys, threading, time
def ports(args): return [(p.split("/")[0], int(p.split("/")[1])) for p in args]
if sys.argv[1] == "serve":
    for proto, port in ports(sys.argv[2:]):
        if proto == "tcp":
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port)); s.listen()
            threading.Thread(target=lambda s=s: [s.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
            def echo(s=s):
                while True:
                    data, addr = s.recvfrom(100); s.sendto(data, addr)
            threading.Thread(target=echo, daemon=True).start()
    print("ready", flush=True)
    time.sleep(60)
else:
    for proto, port in ports(sys.argv[3:]):
        if proto == "tcp":
            s = socket.socket(); s.settimeout(1)
            try: s.connect((sys.argv[2], port)); state = "open"
            except OSError: state = "closed"
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
            s.sendto(b"probe", (sys.argv[2], port))
            try: state = "open" if s.recv(100) == b"probe" else "closed"
            except OSError: state = "closed"
        print(f"{proto}/{port} {state}", flush=True)
"#;

/// A VPS with both roles (the README's Frankfurt: signaling and a relay): the rules install.sh
/// wrote for each, loaded by the kernel in a network namespace in either order (as
/// /etc/nftables.conf includes them, and as install.sh applies one), accept what either role
/// needs and drop the rest, probed with real packets from another namespace. Two tables that
/// each dropped by policy once let only what both accepted through: signaling was unreachable.
#[test]
fn a_vps_with_both_roles_accepts_what_either_needs_and_drops_the_rest() {
    let s = scratch("both");
    let (dist_dir, root) = (s.0.join("dist"), s.0.join("root"));
    dist(&dist_dir);
    let token = s.0.join("token");
    std::fs::write(&token, "cluster-token-0123456789\n").unwrap();
    let mut args = RELAY_ARGS.to_vec();
    args.extend(["--cluster-token-file", token.to_str().unwrap()]);
    let o = install("relay", &root, &dist_dir, &args);
    assert!(o.status.success(), "{}", text(&o));
    let o = install("signaling", &root, &dist_dir, &["--region", "eu-central:50.11:8.68"]);
    assert!(o.status.success(), "{}", text(&o));
    let relay_nft = root.join("etc/nftables.d/relay.nft");
    let signaling_nft = root.join("etc/nftables.d/signaling.nft");

    let id = std::process::id();
    let (vps, player) = (Netns(format!("fw-vps-{id}")), Netns(format!("fw-player-{id}")));
    for ns in [&vps, &player] {
        let o = run(Command::new("ip").args(["netns", "add", &ns.0]));
        assert!(o.status.success(), "ip netns add: {}", text(&o));
    }
    let veth = format!("fwv{id}");
    for cmd in [
        format!("link add {veth} netns {} type veth peer name eth0 netns {}", vps.0, player.0),
        format!("-n {} link set {veth} name eth0", vps.0),
        format!("-n {} addr add 192.168.77.1/24 dev eth0", vps.0),
        format!("-n {} addr add 192.168.77.2/24 dev eth0", player.0),
        format!("-n {} link set eth0 up", vps.0),
        format!("-n {} link set eth0 up", player.0),
        format!("-n {} link set lo up", vps.0),
    ] {
        let o = run(Command::new("ip").args(cmd.split(' ')));
        assert!(o.status.success(), "ip {cmd}: {}", text(&o));
    }
    let ruleset = |files: &[&Path]| {
        let o = run(vps.exec().args(["nft", "flush", "ruleset"]));
        assert!(o.status.success(), "{}", text(&o));
        for f in files {
            let o = run(vps.exec().arg("nft").arg("-f").arg(f));
            assert!(o.status.success(), "nft -f {}: {}", f.display(), text(&o));
        }
        let o = run(vps.exec().args(["nft", "list", "ruleset"]));
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    // Either order, and a role's file loaded again (install.sh applying a change), give one set.
    let both = ruleset(&[&relay_nft, &signaling_nft]);
    assert_eq!(ruleset(&[&signaling_nft, &relay_nft, &relay_nft]), both);
    assert_eq!(ruleset(&[&relay_nft, &signaling_nft, &signaling_nft]), both);

    // The ports: signaling's proxy, the relay's, and some the rules do not admit from here (the
    // metrics are for 10.0.0.0/8, links need --link-dir, 9999 is nobody's).
    let want = [
        ("tcp/22", "open"),
        ("tcp/80", "open"),
        ("tcp/443", "open"),
        ("tcp/3478", "open"),
        ("udp/3478", "open"),
        ("tcp/8443", "open"),
        ("udp/50000", "open"),
        ("tcp/9090", "closed"),
        ("udp/4433", "closed"),
        ("tcp/9999", "closed"),
        ("udp/9999", "closed"),
    ];
    let ports: Vec<&str> = want.iter().map(|(p, _)| *p).collect();
    let mut server = vps
        .exec()
        .args(["python3", "-c", PORTS_PY, "serve"])
        .args(&ports)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("python3");
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.take().unwrap()), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let probe = run(player.exec().args(["python3", "-c", PORTS_PY, "probe", "192.168.77.1"]).args(&ports));
    let _ = server.kill();
    let _ = server.wait();
    assert!(probe.status.success(), "{}", text(&probe));
    let seen = String::from_utf8(probe.stdout).unwrap();
    let expected: String = want.iter().map(|(p, s)| format!("{p} {s}\n")).collect();
    assert_eq!(seen, expected);
}
