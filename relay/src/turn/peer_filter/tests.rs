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
