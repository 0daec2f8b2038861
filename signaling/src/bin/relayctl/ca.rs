//! `relayctl ca`: the cluster's certificate authority for relay-to-relay links
//! (`cluster::pki`), on the operator's machine, without signaling and without openssl.
//!
//! - `relayctl ca init --dir DIR` makes the CA: `DIR/ca.pem` (the certificate every relay is
//!   given as `link.ca`) and `DIR/ca.key` (mode 0600; it stays here, never on a relay).
//! - `relayctl ca issue RELAY_ID --dir DIR` makes a relay's certificate and key,
//!   `RELAY_ID.pem` and `RELAY_ID.key` (0600), for its `link.cert` and `link.key`.
//!
//! Neither overwrites a file unless `--force` is given (renewing a relay's certificate is
//! `issue --force`; re-running `init` would make a new CA every relay would refuse).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use cluster::pki::{Authority, CA_VALID_DAYS, RELAY_VALID_DAYS, Validity};
use serde_json::{Value, json};

use crate::failure::Failure;

#[derive(Debug, Subcommand)]
pub enum CaAction {
    /// Make the cluster CA: DIR/ca.pem (for every relay) and DIR/ca.key (keep it here)
    Init {
        /// Where to write ca.pem and ca.key (created if missing)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The CA's name (its certificate's common name)
        #[arg(long, default_value = "relay cluster CA")]
        name: String,
        /// Days the CA is valid
        #[arg(long, default_value_t = CA_VALID_DAYS, value_parser = clap::value_parser!(u64).range(1..=36_500))]
        days: u64,
        /// Replace an existing CA (every relay certificate it issued stops being accepted)
        #[arg(long)]
        force: bool,
    },
    /// Issue a relay's link certificate: RELAY_ID.pem and RELAY_ID.key
    Issue {
        /// The relay's id (its `relay.id` in the relay config)
        relay_id: String,
        /// Where the CA is (ca.pem, ca.key)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where to write the certificate and key [default: the CA's directory]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Days the certificate is valid
        #[arg(long, default_value_t = RELAY_VALID_DAYS, value_parser = clap::value_parser!(u64).range(1..=3650))]
        days: u64,
        /// Replace an existing certificate and key for this relay (renewal)
        #[arg(long)]
        force: bool,
    },
}

/// Runs a `ca` command; returns the text for people and the JSON for scripts.
pub fn run(action: CaAction, now: u64) -> anyhow::Result<(String, Value)> {
    match action {
        CaAction::Init { dir, name, days, force } => {
            if name.is_empty() || name.len() > 64 {
                return Err(Failure::Usage("--name: 1-64 characters".into()).into());
            }
            let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
            refuse_existing(&[&cert, &key], force)?;
            let ca = Authority::generate(&name, Validity::days_from(now, days))?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write(&key, ca.key_pem().as_bytes(), 0o600, force)?;
            write(&cert, ca.cert_pem().as_bytes(), 0o644, force)?;
            let text = format!(
                "cluster CA {name:?} valid {days} days\n  certificate {}  (give it to every relay: link.ca)\n  key         {}  (keep it here, never on a relay)\nnext: relayctl ca issue RELAY_ID --dir {}\n",
                cert.display(),
                key.display(),
                dir.display()
            );
            Ok((text, json!({ "ca_cert": cert, "ca_key": key, "name": name, "days": days })))
        }
        CaAction::Issue { relay_id, dir, out, days, force } => {
            cluster::pki::check_relay_id(&relay_id).map_err(|e| Failure::Usage(e.to_string()))?;
            let read = |p: PathBuf| {
                std::fs::read_to_string(&p).map_err(|e| {
                    Failure::Usage(format!("{}: {e} (make the CA first: relayctl ca init --dir DIR)", p.display()))
                })
            };
            let ca = Authority::load(&read(dir.join("ca.pem"))?, &read(dir.join("ca.key"))?)
                .map_err(|e| Failure::Usage(format!("the CA in {}: {e}", dir.display())))?;
            let out = out.unwrap_or(dir);
            let (cert, key) = (out.join(format!("{relay_id}.pem")), out.join(format!("{relay_id}.key")));
            refuse_existing(&[&cert, &key], force)?;
            let issued = ca.issue(&relay_id, Validity::days_from(now, days))?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            write(&key, issued.key_pem.as_bytes(), 0o600, force)?;
            write(&cert, issued.cert_pem.as_bytes(), 0o644, force)?;
            let text = format!(
                "relay {relay_id}: certificate valid {days} days\n  link.cert = {}\n  link.key  = {}\n",
                cert.display(),
                key.display()
            );
            Ok((text, json!({ "relay_id": relay_id, "cert": cert, "key": key, "days": days })))
        }
    }
}

fn refuse_existing(paths: &[&Path], force: bool) -> anyhow::Result<()> {
    if let Some(p) = paths.iter().find(|p| p.exists()).filter(|_| !force) {
        return Err(Failure::Usage(format!("{} exists; --force replaces it", p.display())).into());
    }
    Ok(())
}

/// Writes `bytes` to `path` with `mode` (a key is never readable by others, not even for a
/// moment: the mode is set when the file is created).
fn write(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> anyhow::Result<()> {
    if replace {
        let _ = std::fs::remove_file(path);
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
