//! What the relay prints when it is ready (the addresses it bound, where to look), and the SFU's
//! public URL it reports to signaling.

use std::net::SocketAddr;

use crate::config::Config;

/// Addresses the relay actually bound, for the start-up banner and for tests.
#[derive(Debug, Clone)]
pub struct Relay {
    pub listen: SocketAddr,
    /// The IPv4 half of a dual-stack `[::]` listener.
    pub listen_v4: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// The WHIP/WHEP endpoint, when the SFU runs.
    pub sfu_http: Option<SocketAddr>,
    /// TURN over TCP, when on.
    pub tcp: Option<SocketAddr>,
    /// TURN over TLS.
    pub tls: Vec<SocketAddr>,
    /// Relay-to-relay links, when on.
    pub link: Option<SocketAddr>,
}

pub(super) fn sfu_public_url(config: &Config, public_host: &str, bound: SocketAddr) -> String {
    if let Some(url) = &config.sfu_public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = if public_host.contains(':') { format!("[{public_host}]") } else { public_host.to_owned() };
    format!("{}://{host}:{}", sfu_scheme(config), bound.port())
}

fn sfu_scheme(config: &Config) -> &'static str {
    if config.sfu_tls.is_some() { "https" } else { "http" }
}

pub(super) fn print_banner(config: &Config, relay: &Relay) {
    let host = match config.advertised_ip() {
        ip if relay.listen.ip().is_unspecified() => ip,
        _ => relay.listen.ip(),
    };
    let uri_host = if host.is_ipv6() { format!("[{host}]") } else { host.to_string() };
    println!("relay {} ready", env!("CARGO_PKG_VERSION"));
    println!("  STUN/TURN   udp://{}  ({} worker threads)", relay.listen, config.workers);
    if let Some(v4) = relay.listen_v4 {
        println!("  STUN/TURN   udp://{v4}  (dual stack, {} worker threads)", config.workers);
    }
    if let Some(tcp) = relay.tcp {
        println!("  TURN/TCP    tcp://{tcp}");
    }
    for tls in &relay.tls {
        println!("  TURN/TLS    tls://{tls}");
    }
    let capacity = config.capacity();
    println!(
        "  relay ports {}-{} on {}, advertised as {}; capacity {} allocations",
        config.ports.start(),
        config.ports.end(),
        config.relay_ip,
        config.advertised_ip(),
        capacity.allocations(),
    );
    for warning in capacity.warnings() {
        println!("  warning     {warning}");
    }
    if let Some(http) = relay.sfu_http {
        println!(
            "  SFU         WHIP {scheme}://{http}/whip/{{machine}}, WHEP {scheme}://{http}/whep/{{session}} (media on udp {})",
            relay.listen,
            scheme = sfu_scheme(config),
        );
    }
    if let Some(link) = relay.link {
        println!("  links       quic://{link}  (mutual TLS with the cluster CA)");
    }
    println!("  metrics     http://{}/metrics", relay.admin);
    println!("  health      http://{}/healthz", relay.admin);
    let mut urls = vec![format!("stun:{uri_host}:{}", relay.listen.port())];
    urls.push(format!("turn:{uri_host}:{}?transport=udp", relay.listen.port()));
    urls.extend(relay.tcp.map(|a| format!("turn:{uri_host}:{}?transport=tcp", a.port())));
    // turns: needs the certificate's host name; the address stands in for it here.
    urls.extend(relay.tls.first().map(|a| format!("turns:{uri_host}:{}?transport=tcp", a.port())));
    println!("  ICE server  {{\"urls\": {}, ...}}", serde_json::to_string(&urls).unwrap_or_default());
    match &config.cluster {
        Some(c) => println!(
            "  cluster     signaling {} as relay {:?} in region {:?}, public host {}",
            c.signaling_url, c.relay_id, c.region, c.public_host
        ),
        None => println!("  cluster     none (standalone: cluster.signaling_url is not set)"),
    }
    println!("  credentials relay credentials --config <this config>   (prints a ready RTCIceServer entry)");
}
