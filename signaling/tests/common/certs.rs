//! Certificates as an operator makes them, for the deployment tests: a relay's link certificate
//! from a new cluster CA (relayctl), and a self-signed TLS certificate (openssl) standing in for
//! certbot's.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command, what: &str) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(o.status.success(), "{what}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// A link certificate for `relay_id` from a new cluster CA in DIR/ca, made with relayctl:
/// DIR/link holds ca.pem, RELAY_ID.pem and RELAY_ID.key (install.sh's `--link-dir`).
pub fn link_dir(dir: &Path, relay_id: &str) -> PathBuf {
    let (ca, link) = (dir.join("ca"), dir.join("link"));
    let relayctl = env!("CARGO_BIN_EXE_relayctl");
    run(Command::new(relayctl).args(["ca", "init", "--dir"]).arg(&ca), "relayctl ca init");
    run(
        Command::new(relayctl).args(["ca", "issue", relay_id, "--dir"]).arg(&ca).arg("--out").arg(&link),
        "relayctl ca issue",
    );
    std::fs::copy(ca.join("ca.pem"), link.join("ca.pem")).unwrap();
    link
}

/// A self-signed certificate for `name`, valid `days`, made by openssl (installed by
/// scripts/test.sh) in `dir`: (NAME-DAYS.pem, NAME-DAYS.key).
pub fn self_signed(dir: &Path, name: &str, days: u32) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = (dir.join(format!("{name}-{days}.pem")), dir.join(format!("{name}-{days}.key")));
    run(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj"])
            .arg(format!("/CN={name}"))
            .arg("-addext")
            .arg(format!("subjectAltName=DNS:{name}"))
            .args(["-days", &days.to_string(), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "openssl req",
    );
    (cert, key)
}
