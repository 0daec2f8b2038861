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
mod tests;
