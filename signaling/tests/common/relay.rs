//! The workspace's relay binary, started for signaling's end-to-end tests: registered with a
//! signaling instance in a region, on loopback, with its SFU.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::CLUSTER_TOKEN;

/// The relay binary of this workspace: beside signaling's, built there if missing.
pub fn relay_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_signaling")).with_file_name("relay");
    if !bin.exists() {
        // Built with the profile of this test's build (its directory's name; `debug` is `dev`).
        let dir = bin.parent().and_then(|d| d.file_name()).and_then(|d| d.to_str()).unwrap_or("release");
        let profile = if dir == "debug" { "dev" } else { dir };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--profile", profile, "-p", "relay", "--bin", "relay"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the relay failed");
    }
    bin
}

pub struct Relay {
    pub child: Child,
    pub udp: SocketAddr,
    /// Its admin listener (`/metrics`, `/healthz`).
    pub admin: SocketAddr,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    pub fn start(signaling: &str, id: &str, region: &str, ports: (u16, u16)) -> Self {
        Self::start_with(signaling, id, region, ports, &[])
    }

    /// A relay that links to the others with a certificate for `id` from `ca` (files in `dir`).
    pub fn linked(
        signaling: &str,
        id: &str,
        region: &str,
        ports: (u16, u16),
        ca: &cluster::pki::Authority,
        dir: &std::path::Path,
    ) -> Self {
        let validity = cluster::pki::Validity::days_from(cluster::time::unix_now(), 1);
        let issued = ca.issue(id, validity).unwrap();
        let (ca_pem, cert, key) = (dir.join("ca.pem"), dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
        std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        let [ca_pem, cert, key] = [ca_pem, cert, key].map(|p| p.to_str().unwrap().to_owned());
        let link = ["--link-listen", "127.0.0.1:0", "--link-ca", &ca_pem, "--link-cert", &cert, "--link-key", &key];
        Self::start_with(signaling, id, region, ports, &link)
    }

    pub fn start_with(signaling: &str, id: &str, region: &str, ports: (u16, u16), more: &[&str]) -> Self {
        let mut child = Command::new(relay_bin())
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--workers", "1"])
            .args(["--min-port", &ports.0.to_string(), "--max-port", &ports.1.to_string()])
            .args(["--signaling-url", signaling, "--region", region, "--relay-id", id, "--public-host", "127.0.0.1"])
            .args(["--allow-peer", "127.0.0.0/8", "--sfu-http-listen", "127.0.0.1:0"])
            .args(more)
            .env("RELAY_CLUSTER_TOKEN", CLUSTER_TOKEN)
            .env("RELAY_LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start relay");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut udp, mut admin) = (None, None);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let line = line.trim();
                if let Some(addr) = line.strip_prefix("STUN/TURN").and_then(|r| r.trim().strip_prefix("udp://")) {
                    udp = addr.split_whitespace().next().and_then(|a| a.parse::<SocketAddr>().ok());
                }
                if let Some(rest) = line.strip_prefix("metrics").and_then(|r| r.trim().strip_prefix("http://")) {
                    admin = rest.strip_suffix("/metrics").and_then(|a| a.parse::<SocketAddr>().ok());
                }
                if let (Some(u), Some(a)) = (udp, admin) {
                    let _ = tx.send((u, a));
                    udp = None;
                }
            }
        });
        let (udp, admin) = rx.recv_timeout(Duration::from_secs(30)).expect("relay banner");
        Self { child, udp, admin }
    }
}
