//! Relays with link certificates from a test cluster CA, and viewer tokens that send a viewer
//! to a relay other than the machine's home, as signaling does.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cluster::media::{HomeRelay, MediaClaims, MediaRole};
use cluster::pki::{Authority, Validity};

use super::RelayProcess;

/// A relay with a link certificate for `id` from `ca`, listening for links on `listen`: the
/// process, its WHIP/WHEP base URL and its link address.
pub fn relay_with_link(ca: &Authority, dir: &Path, id: &str, listen: &str) -> (RelayProcess, String, SocketAddr) {
    let (ca_pem, cert, key) = (dir.join("ca.pem"), dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
    // Issued once: a relay that restarts keeps its key and certificate.
    if !key.exists() {
        let issued = ca.issue(id, Validity::days_from(cluster::time::unix_now(), 1)).unwrap();
        std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
    }
    let [ca_pem, cert, key] = [ca_pem, cert, key].map(|p| p.to_str().unwrap().to_owned());
    let relay = RelayProcess::start(
        "relay.toml",
        &["--link-listen", listen, "--link-ca", &ca_pem, "--link-cert", &cert, "--link-key", &key],
    );
    let (http, link) = addresses(&relay);
    (relay, http, link)
}

/// The SFU's base URL and the link address, from the banner.
pub fn addresses(relay: &RelayProcess) -> (String, SocketAddr) {
    let mut banner: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        banner.extend(relay.stdout.try_iter());
        let sfu = banner.iter().find_map(|l| l.trim().strip_prefix("SFU         WHIP ")).and_then(|r| {
            let (scheme, rest) = r.split_once("://")?;
            Some(format!("{scheme}://{}", rest.split('/').next()?))
        });
        let link = banner
            .iter()
            .find_map(|l| l.trim().strip_prefix("links       quic://"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
        if let (Some(sfu), Some(link)) = (sfu, link) {
            return (sfu, link);
        }
        assert!(Instant::now() < deadline, "no SFU or links line in the banner: {banner:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A viewer's token for machine `cab-1` in session `s-1` (see [`viewer_token_for`]).
pub fn viewer_token(role: MediaRole, sub: &str, home: Option<(&str, SocketAddr)>) -> String {
    viewer_token_for(role, "cab-1", "s-1", sub, home)
}

/// A viewer's media token whose claims may send it to a relay other than the machine's home
/// (`home`: the home relay's id and link address), as signaling mints them.
pub fn viewer_token_for(
    role: MediaRole,
    machine: &str,
    session: &str,
    sub: &str,
    home: Option<(&str, SocketAddr)>,
) -> String {
    let mut claims = MediaClaims::new(sub, machine, Some(session), role, super::unix_now(), 600);
    claims.home = home.map(|(id, link)| HomeRelay { id: id.to_owned(), link: link.to_string() });
    cluster::media::mint(super::MEDIA_SECRET.as_bytes(), claims).unwrap()
}
