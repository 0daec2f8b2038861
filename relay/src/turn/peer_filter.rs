//! Which peer addresses the relay may send to or accept from.
//!
//! RFC 8656 §21.3 warns that an open TURN relay lets any authenticated client reach whatever the
//! relay host can reach. Relaying into the operator's own networks (loopback services, cloud
//! metadata at 169.254.169.254 / 100.100.100.200, RFC 1918 LANs) is the classic TURN SSRF (the
//! 2020 Slack TURN report reached AWS metadata this way), so every peer address is refused unless
//! it is globally reachable. Known bypasses this module is written against:
//!
//! - coturn CVE-2020-26262: `0.0.0.0`, `::` and `::1` were not treated as loopback. An
//!   unspecified destination means "this host" on Linux, so they are refused here as
//!   [`Blocked::Unspecified`] / [`Blocked::Loopback`].
//! - coturn CVE-2026-27624: `::ffff:127.0.0.1` slipped past the loopback ban and IPv4 deny ranges
//!   never matched IPv4-mapped IPv6 peers. Here every address is first rewritten by
//!   [`canonical`] to the address a packet would really reach, and all rules run on that.
//! - coturn commit 6c13608c: IPv6 ranges compared per byte under-blocked ranges whose prefix is
//!   not byte aligned. Here every range check, default or configured, is a numeric `u32` /
//!   `u128` masked compare.
//!
//! # Contract
//!
//! [`PeerFilter::check`] returns `Ok(())` if the relay may exchange packets with `ip`, or the
//! reason it may not. It runs on CreatePermission, ChannelBind and every Send indication, so it
//! never allocates or locks: canonicalisation, a few table scans and integer compares.
//!
//! # Precedence
//!
//! 1. Canonicalise ([`canonical`]): IPv4-mapped, IPv4-compatible, NAT64 well-known-prefix and
//!    6to4 addresses become the IPv4 address they lead to.
//! 2. Explicit deny list, matched against the canonical address *and* the original address: a
//!    match in either gives [`Blocked::Denied`]. Deny wins over everything, including allow.
//! 3. Unspecified (`0.0.0.0/8`, `::`) is refused as [`Blocked::Unspecified`] no matter what the
//!    allow list says: on Linux a datagram to `0.0.0.0` is delivered to the relay host itself, so
//!    an `allow = ["0.0.0.0/0"]` meant to "open everything" must not open the host's own ports.
//! 4. Explicit allow list, matched against the canonical address *or* the original address: a
//!    match gives `Ok`. Matching the original form means an allow entry covering an IPv6
//!    translation prefix (e.g. `::/0`, `64:ff9b::/96`, `2002::/16`) also opens the IPv4 addresses
//!    reachable through it; allow entries should be as narrow as the deployment needs.
//! 5. The default non-global rules below, on the canonical address.
//!
//! # Teredo (RFC 4380, `2001::/32`)
//!
//! A Teredo address `2001:0:SSSS:SSSS:flags:port:CCCC:CCCC` embeds two IPv4 addresses: the Teredo
//! server (bits 32..64) and the client's public mapped address (last 32 bits, XOR `0xffffffff`).
//! It cannot be canonicalised to one address, so [`canonical`] leaves it alone and `check`
//! handles it specially:
//!
//! - deny list: matched against the Teredo address and the client IPv4 → [`Blocked::Denied`];
//! - either embedded IPv4 being unspecified → [`Blocked::Unspecified`], always;
//! - allow list matching the Teredo address itself → `Ok` (the operator opened Teredo explicitly);
//! - otherwise the client IPv4 (the real destination of relayed traffic) must pass the allow list
//!   or the default rules, *and* the server IPv4 must pass the default rules. A Teredo address
//!   whose server is non-global is forged or internal, and refusing it costs no legitimate peer.
//!   The allow/deny lists are not applied to the server: no relayed packet is sent to it.
//!
//! # Default refused ranges
//!
//! From the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and updates) plus the
//! multicast and unallocated space. IPv4:
//!
//! | Range              | Variant         | Source                                             |
//! |--------------------|-----------------|----------------------------------------------------|
//! | `0.0.0.0/8`        | `Unspecified`   | RFC 791 §3.2 / RFC 1122 §3.2.1.3 "this network"    |
//! | `10.0.0.0/8`       | `Private`       | RFC 1918                                           |
//! | `100.64.0.0/10`    | `Private`       | RFC 6598 shared address space (CGNAT)              |
//! | `127.0.0.0/8`      | `Loopback`      | RFC 1122 §3.2.1.3                                  |
//! | `169.254.0.0/16`   | `LinkLocal`     | RFC 3927 (includes cloud metadata 169.254.169.254) |
//! | `172.16.0.0/12`    | `Private`       | RFC 1918                                           |
//! | `192.0.0.0/24`     | `Reserved`      | RFC 6890 IETF protocol assignments                 |
//! | `192.0.2.0/24`     | `Documentation` | RFC 5737 TEST-NET-1                                |
//! | `192.88.99.0/24`   | `Reserved`      | RFC 7526 deprecated 6to4 relay anycast             |
//! | `192.168.0.0/16`   | `Private`       | RFC 1918                                           |
//! | `198.18.0.0/15`    | `Private`       | RFC 2544 benchmarking                              |
//! | `198.51.100.0/24`  | `Documentation` | RFC 5737 TEST-NET-2                                |
//! | `203.0.113.0/24`   | `Documentation` | RFC 5737 TEST-NET-3                                |
//! | `224.0.0.0/4`      | `Multicast`     | RFC 5771                                           |
//! | `255.255.255.255`  | `Broadcast`     | RFC 919 / RFC 8190 limited broadcast               |
//! | `240.0.0.0/4`      | `Reserved`      | RFC 1112 §4 (reserved for future use)              |
//!
//! IANA marks `192.0.0.9` (PCP anycast) and `192.0.0.10` (TURN anycast, RFC 8155) as globally
//! reachable; they are refused anyway because neither is a legitimate relay peer.
//!
//! IPv6: everything outside global unicast `2000::/3` (RFC 4291 §2.4) is refused, with a precise
//! variant where one exists; inside `2000::/3` a few special-purpose blocks are refused too:
//!
//! | Range               | Variant         | Source                                          |
//! |---------------------|-----------------|-------------------------------------------------|
//! | `::/128`            | `Unspecified`   | RFC 4291 §2.5.2                                 |
//! | `::1/128`           | `Loopback`      | RFC 4291 §2.5.3                                 |
//! | `64:ff9b:1::/48`    | `Reserved`      | RFC 8215 local-use IPv4/IPv6 translation        |
//! | `100::/64`          | `Reserved`      | RFC 6666 discard-only                           |
//! | `fc00::/7`          | `Private`       | RFC 4193 unique local                           |
//! | `fe80::/10`         | `LinkLocal`     | RFC 4291 §2.5.6                                 |
//! | `fec0::/10`         | `LinkLocal`     | RFC 3879 deprecated site-local                  |
//! | `ff00::/8`          | `Multicast`     | RFC 4291 §2.7                                   |
//! | rest of `!2000::/3` | `Reserved`      | unallocated/special, e.g. `5f00::/16` (RFC 9602) |
//! | `2001:2::/48`       | `Private`       | RFC 5180 benchmarking                           |
//! | `2001:db8::/32`     | `Documentation` | RFC 3849                                        |
//! | `2001::/23`         | `Reserved`      | RFC 2928 IETF protocol assignments (not Teredo) |
//! | `3fff::/20`         | `Documentation` | RFC 9637                                        |
//!
//! A few blocks inside `2001::/23` (PCP/TURN anycast `2001:1::1`/`2001:1::2`, AMT `2001:3::/32`,
//! ORCHIDv2 `2001:20::/28`, ...) are globally reachable per IANA but, like their IPv4
//! counterparts, are not legitimate relay peers, so the whole block is refused.
//! `::ffff:0:0/96`, `::/96`, `64:ff9b::/96` and `2002::/16` never reach these rules: they are
//! canonicalised to IPv4 first.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why a peer address was refused. [`Blocked::as_str`] gives a stable snake_case label for
/// metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Blocked {
    /// Matched the operator's explicit deny list.
    Denied,
    /// `0.0.0.0/8` or `::`: "this host / this network", never a valid destination. Refused even
    /// if the allow list covers it.
    Unspecified,
    /// `127.0.0.0/8` or `::1`.
    Loopback,
    /// Private-use space: RFC 1918, CGNAT `100.64.0.0/10`, ULA `fc00::/7`, benchmarking
    /// `198.18.0.0/15` and `2001:2::/48`.
    Private,
    /// `169.254.0.0/16` (including cloud metadata `169.254.169.254`), `fe80::/10`, and the
    /// deprecated site-local `fec0::/10`.
    LinkLocal,
    /// `224.0.0.0/4` or `ff00::/8`.
    Multicast,
    /// IPv4 limited broadcast `255.255.255.255`.
    Broadcast,
    /// Documentation ranges: `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`,
    /// `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// Every other non-global range: `192.0.0.0/24`, `192.88.99.0/24`, `240.0.0.0/4`,
    /// `100::/64`, `64:ff9b:1::/48`, `2001::/23`, anything outside `2000::/3`, ...
    Reserved,
}

impl Blocked {
    /// Stable snake_case label, for metrics labels and structured logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Blocked::Denied => "denied",
            Blocked::Unspecified => "unspecified",
            Blocked::Loopback => "loopback",
            Blocked::Private => "private",
            Blocked::LinkLocal => "link_local",
            Blocked::Multicast => "multicast",
            Blocked::Broadcast => "broadcast",
            Blocked::Documentation => "documentation",
            Blocked::Reserved => "reserved",
        }
    }
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Blocked {}

/// Peer address policy: the default non-global rules plus the operator's allow and deny lists.
/// See the module docs for the precedence.
#[derive(Debug, Clone, Default)]
pub struct PeerFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl PeerFilter {
    /// `allow` opens ranges that are refused by default (tests, private deployments);
    /// `deny` refuses extra ranges (e.g. the operator's own networks). Deny wins over allow.
    /// Unspecified addresses stay refused whatever `allow` says.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        // Host bits are ignored by the matcher anyway; truncating keeps Debug output honest.
        let trunc = |v: Vec<IpNet>| v.into_iter().map(|n| n.trunc()).collect();
        Self { allow: trunc(allow), deny: trunc(deny) }
    }

    /// The allow list (host bits cleared).
    pub fn allow(&self) -> &[IpNet] {
        &self.allow
    }

    /// The deny list (host bits cleared).
    pub fn deny(&self) -> &[IpNet] {
        &self.deny
    }

    /// Ok if the relay may send to / accept from `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        let canon = canonical(ip);
        if let IpAddr::V6(v6) = canon
            && let Some((server, client)) = teredo(v6)
        {
            return self.check_teredo(canon, server, client);
        }
        if any_contains(&self.deny, canon) || any_contains(&self.deny, ip) {
            return Err(Blocked::Denied);
        }
        match default_rules(canon) {
            Ok(()) => Ok(()),
            Err(Blocked::Unspecified) => Err(Blocked::Unspecified),
            Err(_) if any_contains(&self.allow, canon) || any_contains(&self.allow, ip) => Ok(()),
            Err(why) => Err(why),
        }
    }

    /// Teredo policy, see the module docs.
    fn check_teredo(&self, ip: IpAddr, server: Ipv4Addr, client: Ipv4Addr) -> Result<(), Blocked> {
        let client = IpAddr::V4(client);
        if any_contains(&self.deny, ip) || any_contains(&self.deny, client) {
            return Err(Blocked::Denied);
        }
        let client_verdict = default_rules(client);
        let server_verdict = default_rules(IpAddr::V4(server));
        if client_verdict == Err(Blocked::Unspecified) || server_verdict == Err(Blocked::Unspecified) {
            return Err(Blocked::Unspecified);
        }
        if any_contains(&self.allow, ip) {
            return Ok(());
        }
        if client_verdict.is_err() && !any_contains(&self.allow, client) {
            return client_verdict;
        }
        server_verdict
    }
}

/// The address a packet to `ip` would really reach, for filtering: IPv4-mapped
/// (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2) and IPv4-compatible (`::a.b.c.d`, RFC 4291 §2.5.5.1,
/// except `::` and `::1`) become IPv4; the NAT64 well-known prefix `64:ff9b::/96` (RFC 6052)
/// becomes the embedded IPv4; 6to4 `2002:AABB:CCDD::/48` (RFC 3056) becomes `AA.BB.CC.DD`.
/// Anything else (including Teredo, which embeds two addresses) is returned unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    let x = v6.to_bits();
    let low32 = Ipv4Addr::from_bits(x as u32);
    match x >> 32 {
        // IPv4-mapped: the kernel sends these as plain IPv4 on dual-stack sockets.
        0xffff => return IpAddr::V4(low32),
        // IPv4-compatible (deprecated); `::` and `::1` keep their IPv6 meaning.
        0 if x > 1 => return IpAddr::V4(low32),
        // NAT64 well-known prefix: a NAT64 gateway forwards to the embedded address.
        NAT64_WKP_96 => return IpAddr::V4(low32),
        _ => {}
    }
    if x >> 112 == 0x2002 {
        // 6to4: any 6to4 relay decapsulates towards the embedded IPv4 (bits 16..48).
        return IpAddr::V4(Ipv4Addr::from_bits((x >> 80) as u32));
    }
    ip
}

/// `64:ff9b::/96` (RFC 6052) shifted right by 32 bits.
const NAT64_WKP_96: u128 = 0x0064_ff9b_0000_0000_0000_0000;

/// If `ip` is Teredo (RFC 4380 `2001::/32`), its (server, client) IPv4 addresses.
fn teredo(ip: Ipv6Addr) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let x = ip.to_bits();
    if x >> 96 != 0x2001_0000 {
        return None;
    }
    let server = Ipv4Addr::from_bits((x >> 64) as u32);
    // RFC 4380 §4: the client's mapped address is stored with all bits inverted.
    let client = Ipv4Addr::from_bits(!(x as u32));
    Some((server, client))
}

/// Whether any net in `nets` contains `ip`. Numeric masked compare on the whole address (never
/// per byte, see coturn 6c13608c); a net of the other family never matches.
fn any_contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|net| match (net, ip) {
        (IpNet::V4(n), IpAddr::V4(a)) => {
            let m = mask32(n.prefix_len());
            a.to_bits() & m == n.addr().to_bits() & m
        }
        (IpNet::V6(n), IpAddr::V6(a)) => {
            let m = mask128(n.prefix_len());
            a.to_bits() & m == n.addr().to_bits() & m
        }
        _ => false,
    })
}

/// Netmask for a prefix length; 0 gives 0, lengths past 32 saturate to all ones.
const fn mask32(len: u8) -> u32 {
    let len = if len > 32 { 32 } else { len as u32 };
    match u32::MAX.checked_shl(32 - len) {
        Some(m) => m,
        None => 0,
    }
}

/// Netmask for a prefix length; 0 gives 0, lengths past 128 saturate to all ones.
const fn mask128(len: u8) -> u128 {
    let len = if len > 128 { 128 } else { len as u32 };
    match u128::MAX.checked_shl(128 - len) {
        Some(m) => m,
        None => 0,
    }
}

/// One default-refused IPv4 range.
struct Rule4 {
    net: u32,
    mask: u32,
    why: Blocked,
}

const fn r4(a: u8, b: u8, c: u8, d: u8, len: u8, why: Blocked) -> Rule4 {
    Rule4 { net: Ipv4Addr::new(a, b, c, d).to_bits(), mask: mask32(len), why }
}

/// Default-refused IPv4 ranges (IANA IPv4 Special-Purpose Address Registry, RFC 6890). First
/// match wins, so the more specific broadcast entry precedes `240.0.0.0/4`.
const V4_RULES: [Rule4; 16] = [
    r4(0, 0, 0, 0, 8, Blocked::Unspecified),      // RFC 791 / RFC 1122 "this network"
    r4(10, 0, 0, 0, 8, Blocked::Private),         // RFC 1918
    r4(100, 64, 0, 0, 10, Blocked::Private),      // RFC 6598 CGNAT
    r4(127, 0, 0, 0, 8, Blocked::Loopback),       // RFC 1122
    r4(169, 254, 0, 0, 16, Blocked::LinkLocal),   // RFC 3927
    r4(172, 16, 0, 0, 12, Blocked::Private),      // RFC 1918
    r4(192, 0, 0, 0, 24, Blocked::Reserved),      // RFC 6890 IETF protocol assignments
    r4(192, 0, 2, 0, 24, Blocked::Documentation), // RFC 5737
    r4(192, 88, 99, 0, 24, Blocked::Reserved),    // RFC 7526 6to4 relay anycast
    r4(192, 168, 0, 0, 16, Blocked::Private),     // RFC 1918
    r4(198, 18, 0, 0, 15, Blocked::Private),      // RFC 2544 benchmarking
    r4(198, 51, 100, 0, 24, Blocked::Documentation), // RFC 5737
    r4(203, 0, 113, 0, 24, Blocked::Documentation), // RFC 5737
    r4(224, 0, 0, 0, 4, Blocked::Multicast),      // RFC 5771
    r4(255, 255, 255, 255, 32, Blocked::Broadcast), // RFC 919 / RFC 8190
    r4(240, 0, 0, 0, 4, Blocked::Reserved),       // RFC 1112 §4
];

/// One default-refused IPv6 range.
struct Rule6 {
    net: u128,
    mask: u128,
    why: Blocked,
}

const fn r6(segs: [u16; 8], len: u8, why: Blocked) -> Rule6 {
    let [a, b, c, d, e, f, g, h] = segs;
    Rule6 { net: Ipv6Addr::new(a, b, c, d, e, f, g, h).to_bits(), mask: mask128(len), why }
}

/// Default-refused IPv6 ranges with a specific variant (IANA IPv6 Special-Purpose Address
/// Registry). First match wins, so specific entries precede the blocks containing them. Anything
/// not listed here is refused as `Reserved` if outside `2000::/3`.
const V6_RULES: [Rule6; 12] = [
    r6([0, 0, 0, 0, 0, 0, 0, 0], 128, Blocked::Unspecified), // RFC 4291 §2.5.2
    r6([0, 0, 0, 0, 0, 0, 0, 1], 128, Blocked::Loopback),    // RFC 4291 §2.5.3
    r6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, Blocked::Reserved), // RFC 8215
    r6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, Blocked::Reserved), // RFC 6666 discard-only
    r6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, Blocked::Private),  // RFC 4193 ULA
    r6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, Blocked::LinkLocal), // RFC 4291 §2.5.6
    r6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, Blocked::LinkLocal), // RFC 3879 site-local
    r6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, Blocked::Multicast), // RFC 4291 §2.7
    // Inside 2000::/3:
    r6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, Blocked::Private), // RFC 5180 benchmarking
    r6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, Blocked::Documentation), // RFC 3849
    r6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, Blocked::Reserved), // RFC 2928 IETF protocol assignments
    r6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, Blocked::Documentation), // RFC 9637
];

/// `2000::/3`, global unicast (RFC 4291 §2.4, IANA IPv6 Address Space registry).
const V6_GLOBAL_NET: u128 = 0x2000 << 112;
const V6_GLOBAL_MASK: u128 = mask128(3);

/// The default non-global rules, on an already canonical address.
fn default_rules(ip: IpAddr) -> Result<(), Blocked> {
    match ip {
        IpAddr::V4(a) => {
            let x = a.to_bits();
            match V4_RULES.iter().find(|r| x & r.mask == r.net) {
                Some(r) => Err(r.why),
                None => Ok(()),
            }
        }
        IpAddr::V6(a) => {
            let x = a.to_bits();
            if let Some(r) = V6_RULES.iter().find(|r| x & r.mask == r.net) {
                return Err(r.why);
            }
            if x & V6_GLOBAL_MASK != V6_GLOBAL_NET {
                return Err(Blocked::Reserved);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Blocked::*;
    use super::*;

    const OK: Result<(), Blocked> = Ok(());

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test literal is an IP address")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test literal is a CIDR")
    }

    fn filter(allow: &[&str], deny: &[&str]) -> PeerFilter {
        PeerFilter::new(allow.iter().map(|s| net(s)).collect(), deny.iter().map(|s| net(s)).collect())
    }

    fn assert_table(f: &PeerFilter, table: &[(&str, Result<(), Blocked>)]) {
        for &(addr, want) in table {
            assert_eq!(f.check(ip(addr)), want, "check({addr})");
        }
    }

    #[test]
    fn default_v4_ranges_first_middle_last() {
        assert_table(
            &PeerFilter::default(),
            &[
                ("0.0.0.0", Err(Unspecified)),
                ("0.128.0.0", Err(Unspecified)),
                ("0.255.255.255", Err(Unspecified)),
                ("10.0.0.0", Err(Private)),
                ("10.128.0.1", Err(Private)),
                ("10.255.255.255", Err(Private)),
                ("100.64.0.0", Err(Private)),
                ("100.96.0.0", Err(Private)),
                ("100.127.255.255", Err(Private)),
                ("127.0.0.0", Err(Loopback)),
                ("127.128.0.0", Err(Loopback)),
                ("127.255.255.255", Err(Loopback)),
                ("169.254.0.0", Err(LinkLocal)),
                ("169.254.128.0", Err(LinkLocal)),
                ("169.254.255.255", Err(LinkLocal)),
                ("172.16.0.0", Err(Private)),
                ("172.24.0.0", Err(Private)),
                ("172.31.255.255", Err(Private)),
                ("192.0.0.0", Err(Reserved)),
                ("192.0.0.128", Err(Reserved)),
                ("192.0.0.255", Err(Reserved)),
                ("192.0.2.0", Err(Documentation)),
                ("192.0.2.128", Err(Documentation)),
                ("192.0.2.255", Err(Documentation)),
                ("192.88.99.0", Err(Reserved)),
                ("192.88.99.128", Err(Reserved)),
                ("192.88.99.255", Err(Reserved)),
                ("192.168.0.0", Err(Private)),
                ("192.168.128.0", Err(Private)),
                ("192.168.255.255", Err(Private)),
                ("198.18.0.0", Err(Private)),
                ("198.19.0.0", Err(Private)),
                ("198.19.255.255", Err(Private)),
                ("198.51.100.0", Err(Documentation)),
                ("198.51.100.128", Err(Documentation)),
                ("198.51.100.255", Err(Documentation)),
                ("203.0.113.0", Err(Documentation)),
                ("203.0.113.128", Err(Documentation)),
                ("203.0.113.255", Err(Documentation)),
                ("224.0.0.0", Err(Multicast)),
                ("232.0.0.0", Err(Multicast)),
                ("239.255.255.255", Err(Multicast)),
                ("240.0.0.0", Err(Reserved)),
                ("248.0.0.0", Err(Reserved)),
                ("255.255.255.254", Err(Reserved)),
                ("255.255.255.255", Err(Broadcast)),
            ],
        );
    }

    #[test]
    fn default_v4_neighbours_are_global() {
        // One past each edge, to catch off-by-one prefix lengths.
        assert_table(
            &PeerFilter::default(),
            &[
                ("1.0.0.0", OK),
                ("9.255.255.255", OK),
                ("11.0.0.0", OK),
                ("100.63.255.255", OK),
                ("100.128.0.0", OK),
                ("126.255.255.255", OK),
                ("128.0.0.0", OK),
                ("169.253.255.255", OK),
                ("169.255.0.0", OK),
                ("172.15.255.255", OK),
                ("172.32.0.0", OK),
                ("191.255.255.255", OK),
                ("192.0.1.0", OK),
                ("192.0.3.0", OK),
                ("192.88.98.255", OK),
                ("192.88.100.0", OK),
                ("192.167.255.255", OK),
                ("192.169.0.0", OK),
                ("198.17.255.255", OK),
                ("198.20.0.0", OK),
                ("198.51.99.255", OK),
                ("198.51.101.0", OK),
                ("203.0.112.255", OK),
                ("203.0.114.0", OK),
                ("223.255.255.255", OK),
            ],
        );
    }

    #[test]
    fn default_v6_ranges_first_middle_last() {
        assert_table(
            &PeerFilter::default(),
            &[
                ("::", Err(Unspecified)),
                ("::1", Err(Loopback)),
                ("64:ff9b:1::", Err(Reserved)),
                ("64:ff9b:1:8000::1", Err(Reserved)),
                ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", Err(Reserved)),
                ("100::", Err(Reserved)),
                ("100::8000:0:0:0", Err(Reserved)),
                ("100::ffff:ffff:ffff:ffff", Err(Reserved)),
                ("fc00::", Err(Private)),
                ("fd00::1", Err(Private)),
                ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Err(Private)),
                ("fe80::", Err(LinkLocal)),
                ("fe80::1", Err(LinkLocal)),
                ("fea0::", Err(LinkLocal)),
                ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Err(LinkLocal)),
                ("fec0::", Err(LinkLocal)),
                ("fee0::1", Err(LinkLocal)),
                ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Err(LinkLocal)),
                ("ff00::", Err(Multicast)),
                ("ff02::1", Err(Multicast)),
                ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Err(Multicast)),
                // Outside 2000::/3 without a more specific entry.
                ("::2:0:0", Err(Reserved)),
                ("1::", Err(Reserved)),
                ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Err(Reserved)),
                ("4000::", Err(Reserved)),
                ("5f00::", Err(Reserved)),
                ("5f00:8000::1", Err(Reserved)),
                ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Err(Reserved)),
                ("fb00::1", Err(Reserved)),
                // SIIT IPv4-translated form (RFC 2765) is not canonicalised but is non-global.
                ("::ffff:0:7f00:1", Err(Reserved)),
                // Inside 2000::/3.
                ("2001:2::", Err(Private)),
                ("2001:2:0:8000::", Err(Private)),
                ("2001:2:0:ffff:ffff:ffff:ffff:ffff", Err(Private)),
                ("2001:db8::", Err(Documentation)),
                ("2001:db8:8000::1", Err(Documentation)),
                ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", Err(Documentation)),
                ("2001:1::", Err(Reserved)),
                ("2001:1::2", Err(Reserved)),
                ("2001:100::", Err(Reserved)),
                ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", Err(Reserved)),
                ("3fff::", Err(Documentation)),
                ("3fff:800::1", Err(Documentation)),
                ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", Err(Documentation)),
            ],
        );
    }

    #[test]
    fn default_v6_neighbours_are_global() {
        assert_table(
            &PeerFilter::default(),
            &[
                ("2000::", OK),
                ("2001:200::", OK),
                ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", OK),
                ("2001:db9::", OK),
                ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", OK),
                ("3fff:1000::", OK),
                ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", OK),
            ],
        );
    }

    #[test]
    fn global_addresses_allowed() {
        assert_table(
            &PeerFilter::default(),
            &[
                ("8.8.8.8", OK),
                ("1.1.1.1", OK),
                ("2606:4700::1111", OK),
                ("2a00:1450::1", OK),
                ("::ffff:8.8.8.8", OK),
                ("64:ff9b::808:808", OK),
                ("2002:808:808::1", OK),
            ],
        );
    }

    #[test]
    fn bypass_forms_refused() {
        assert_table(
            &PeerFilter::default(),
            &[
                ("127.0.0.1", Err(Loopback)),
                ("::1", Err(Loopback)),
                ("::ffff:127.0.0.1", Err(Loopback)),
                ("::ffff:7f00:1", Err(Loopback)),
                ("0:0:0:0:0:ffff:7f00:0001", Err(Loopback)),
                ("::127.0.0.1", Err(Loopback)),
                ("64:ff9b::7f00:1", Err(Loopback)),
                ("64:ff9b::a00:1", Err(Private)),
                ("64:ff9b::a9fe:a9fe", Err(LinkLocal)),
                ("2002:7f00:1::1", Err(Loopback)),
                ("2002:a9fe:a9fe::1", Err(LinkLocal)),
                ("::", Err(Unspecified)),
                ("0.0.0.0", Err(Unspecified)),
                ("::ffff:0.0.0.0", Err(Unspecified)),
                ("::2", Err(Unspecified)),
                ("0.1.2.3", Err(Unspecified)),
                ("169.254.169.254", Err(LinkLocal)),
                ("::ffff:169.254.169.254", Err(LinkLocal)),
                ("100.100.100.200", Err(Private)),
                ("10.0.0.1", Err(Private)),
                ("192.168.1.1", Err(Private)),
                ("172.31.255.255", Err(Private)),
                ("224.0.0.1", Err(Multicast)),
                ("255.255.255.255", Err(Broadcast)),
                ("::ffff:255.255.255.255", Err(Broadcast)),
                ("fd00::1", Err(Private)),
                ("fe80::1", Err(LinkLocal)),
                ("ff02::1", Err(Multicast)),
            ],
        );
    }

    /// Builds a Teredo address (RFC 4380 §4) from server and client IPv4 addresses.
    fn teredo_addr(server: [u8; 4], client: [u8; 4]) -> IpAddr {
        let s = u128::from(u32::from_be_bytes(server));
        let c = u128::from(!u32::from_be_bytes(client));
        // Flags 0x8000 (cone) and an obfuscated port in bits 64..96.
        let bits = (0x2001_0000u128 << 96) | (s << 64) | (0x8000_63bfu128 << 32) | c;
        IpAddr::V6(Ipv6Addr::from_bits(bits))
    }

    #[test]
    fn teredo_checks_both_embedded_addresses() {
        let f = PeerFilter::default();
        let server = [65, 54, 227, 120];
        assert_eq!(f.check(teredo_addr(server, [8, 8, 8, 8])), OK);
        assert_eq!(f.check(teredo_addr(server, [127, 0, 0, 1])), Err(Loopback));
        assert_eq!(f.check(teredo_addr([10, 0, 0, 1], [8, 8, 8, 8])), Err(Private));
        assert_eq!(f.check(teredo_addr(server, [169, 254, 169, 254])), Err(LinkLocal));
        assert_eq!(f.check(teredo_addr(server, [0, 0, 0, 0])), Err(Unspecified));
        // RFC 4380 §4 example: its client 192.0.2.45 is a documentation address.
        assert_eq!(f.check(ip("2001:0:4136:e378:8000:63bf:3fff:fdd2")), Err(Documentation));
        // Teredo is not canonicalised: it embeds two addresses.
        let t = teredo_addr(server, [127, 0, 0, 1]);
        assert_eq!(canonical(t), t);

        // Allow/deny lists apply to the client; the server still needs the default rules.
        let f = filter(&["127.0.0.0/8"], &["8.8.8.0/24"]);
        assert_eq!(f.check(teredo_addr(server, [127, 0, 0, 1])), OK);
        assert_eq!(f.check(teredo_addr(server, [8, 8, 8, 8])), Err(Denied));
        assert_eq!(f.check(teredo_addr([127, 0, 0, 1], [1, 1, 1, 1])), Err(Loopback));
        // Allowing the Teredo prefix itself opens non-global embedded addresses, but not
        // unspecified ones; denying it refuses everything.
        let f = filter(&["2001::/32"], &[]);
        assert_eq!(f.check(teredo_addr([10, 0, 0, 1], [127, 0, 0, 1])), OK);
        assert_eq!(f.check(teredo_addr([0, 0, 0, 0], [1, 1, 1, 1])), Err(Unspecified));
        let f = filter(&[], &["2001::/32"]);
        assert_eq!(f.check(teredo_addr(server, [8, 8, 8, 8])), Err(Denied));
    }

    #[test]
    fn canonical_forms() {
        for (from, to) in [
            ("::ffff:1.2.3.4", "1.2.3.4"),
            ("::1.2.3.4", "1.2.3.4"),
            ("::2", "0.0.0.2"),
            ("64:ff9b::1.2.3.4", "1.2.3.4"),
            ("2002:102:304::1", "1.2.3.4"),
            ("2002:102:304:ffff:ffff:ffff:ffff:ffff", "1.2.3.4"),
            ("::", "::"),
            ("::1", "::1"),
            ("64:ff9b:1::102:304", "64:ff9b:1::102:304"),
            ("2606:4700::1111", "2606:4700::1111"),
            ("1.2.3.4", "1.2.3.4"),
        ] {
            assert_eq!(canonical(ip(from)), ip(to), "canonical({from})");
        }
    }

    #[test]
    fn allow_list_opens_ranges_in_every_form() {
        let f = filter(&["127.0.0.0/8"], &[]);
        assert_table(
            &f,
            &[
                ("127.0.0.1", OK),
                ("::ffff:127.0.0.1", OK),
                ("64:ff9b::7f00:1", OK),
                ("10.0.0.1", Err(Private)),
                ("::1", Err(Loopback)),
            ],
        );
        let f = filter(&["fd00::/8", "10.0.0.0/8"], &[]);
        assert_table(&f, &[("fd12::1", OK), ("fc00::1", Err(Private)), ("64:ff9b::a00:1", OK), ("2002:a00:1::1", OK)]);
    }

    #[test]
    fn allow_everything_still_refuses_unspecified() {
        let f = filter(&["0.0.0.0/0", "::/0"], &[]);
        assert_table(
            &f,
            &[
                ("0.0.0.0", Err(Unspecified)),
                ("0.1.2.3", Err(Unspecified)),
                ("::", Err(Unspecified)),
                ("::ffff:0.0.0.0", Err(Unspecified)),
                ("64:ff9b::", Err(Unspecified)),
                ("127.0.0.1", OK),
                ("::1", OK),
                ("10.0.0.1", OK),
                ("fe80::1", OK),
            ],
        );
    }

    #[test]
    fn deny_list_refuses_global_in_every_form() {
        let f = filter(&[], &["8.8.8.0/24"]);
        assert_table(
            &f,
            &[
                ("8.8.8.8", Err(Denied)),
                ("::ffff:8.8.8.8", Err(Denied)),
                ("64:ff9b::808:808", Err(Denied)),
                ("2002:808:808::1", Err(Denied)),
                ("::8.8.8.8", Err(Denied)),
                ("8.8.4.4", OK),
            ],
        );
        // Deny on the original (IPv6) form also applies.
        let f = filter(&[], &["64:ff9b::/96"]);
        assert_eq!(f.check(ip("64:ff9b::808:808")), Err(Denied));
        assert_eq!(f.check(ip("8.8.8.8")), OK);
    }

    #[test]
    fn deny_beats_allow() {
        let f = filter(&["10.0.0.0/8", "8.8.8.0/24"], &["10.1.0.0/16", "8.8.8.8/32"]);
        assert_table(
            &f,
            &[
                ("10.0.0.1", OK),
                ("10.1.2.3", Err(Denied)),
                ("::ffff:10.1.2.3", Err(Denied)),
                ("8.8.8.8", Err(Denied)),
                ("8.8.8.9", OK),
            ],
        );
    }

    #[test]
    fn unaligned_v6_deny_range() {
        // /118 ends mid-byte: 2001:4860:4860::8800 - 2001:4860:4860::8bff.
        let f = filter(&[], &["2001:4860:4860::8800/118"]);
        assert_table(
            &f,
            &[
                ("2001:4860:4860::8888", Err(Denied)),
                ("2001:4860:4860::8800", Err(Denied)),
                ("2001:4860:4860::8bff", Err(Denied)),
                ("2001:4860:4860::87ff", OK),
                ("2001:4860:4860::8c00", OK),
            ],
        );
        // Host bits in the configured net are ignored.
        let g = filter(&[], &["2001:4860:4860::8888/118"]);
        assert_eq!(g.deny(), f.deny());
        assert_eq!(g.check(ip("2001:4860:4860::8bff")), Err(Denied));
        assert_eq!(g.check(ip("2001:4860:4860::8c00")), OK);
    }

    #[test]
    fn masks() {
        assert_eq!(mask32(0), 0);
        assert_eq!(mask32(1), 0x8000_0000);
        assert_eq!(mask32(32), u32::MAX);
        assert_eq!(mask32(200), u32::MAX);
        assert_eq!(mask128(0), 0);
        assert_eq!(mask128(118), u128::MAX << 10);
        assert_eq!(mask128(128), u128::MAX);
    }

    #[test]
    fn labels_are_stable() {
        for (b, s) in [
            (Denied, "denied"),
            (Unspecified, "unspecified"),
            (Loopback, "loopback"),
            (Private, "private"),
            (LinkLocal, "link_local"),
            (Multicast, "multicast"),
            (Broadcast, "broadcast"),
            (Documentation, "documentation"),
            (Reserved, "reserved"),
        ] {
            assert_eq!(b.as_str(), s);
            assert_eq!(b.to_string(), s);
        }
    }

    #[test]
    fn v4_and_mapped_v6_agree() {
        let filters = [
            PeerFilter::default(),
            filter(&["127.0.0.0/8", "10.0.0.0/8"], &["8.0.0.0/6", "10.9.0.0/16"]),
            filter(&["0.0.0.0/0"], &["203.0.113.0/25"]),
        ];
        // xorshift32: cheap, deterministic, and spread over the whole u32 space.
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v4 = Ipv4Addr::from_bits(x);
            let forms = [
                IpAddr::V6(v4.to_ipv6_mapped()),
                IpAddr::V6(Ipv6Addr::from_bits((NAT64_WKP_96 << 32) | u128::from(x))),
                IpAddr::V6(Ipv6Addr::from_bits((0x2002u128 << 112) | (u128::from(x) << 80) | 1)),
            ];
            for f in &filters {
                let want = f.check(IpAddr::V4(v4));
                for form in forms {
                    assert_eq!(f.check(form), want, "{v4} vs {form}");
                }
            }
        }
    }
}
