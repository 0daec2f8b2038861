use super::*;

fn valid() -> FileConfig {
    let mut f = FileConfig::default();
    f.server.listen = "127.0.0.1:3478".into();
    f.auth.secrets = vec!["s3cret".into()];
    f
}

#[test]
fn defaults_validate_with_a_secret() {
    let c = Config::from_file(&valid()).unwrap();
    assert_eq!(c.relay_ip, IpAddr::from([127, 0, 0, 1]));
    assert_eq!(c.default_lifetime, Duration::from_secs(600));
    assert_eq!(c.ports, 49152..=65535);
    assert_eq!(c.admin_listen, "127.0.0.1:9090".parse().unwrap());
}

#[test]
fn errors_name_the_key() {
    type Mutate = fn(&mut FileConfig);
    let cases: Vec<(Mutate, &str)> = vec![
        (|f| f.server.listen = "nope".into(), "server.listen"),
        (|f| (f.relay.min_port, f.relay.max_port) = (60000, 50000), "relay.min_port"),
        (|f| f.relay.ip = Some("0.0.0.0".into()), "relay.ip"),
        (|f| f.relay.external_ip = Some("::1".into()), "relay.external_ip"),
        (|f| f.allocations.max_lifetime_secs = 10, "allocations.max_lifetime_secs"),
        (|f| f.auth.secrets.clear(), "auth"),
        (|f| f.peers.allow = vec!["10.0.0.0/33".into()], "peers.allow"),
        (|f| f.log.format = "xml".into(), "log.format"),
        (|f| f.admin.listen = "localhost".into(), "admin.listen"),
        (|f| f.sfu.http_listen = "localhost:80".into(), "sfu.http_listen"),
        (|f| f.sfu.public_url = "ftp://sfu.example.com".into(), "sfu.public_url"),
        (|f| f.sfu.public_url = "https://sfu.example.com/?x=1".into(), "sfu.public_url"),
        (|f| f.relay.min_port = 3000, "relay.min_port"),
        (|f| f.server.busy_poll_us = 5000, "server.busy_poll_us"),
        (|f| f.link.listen = "0.0.0.0".into(), "link.listen"),
        (|f| f.link.ca = "ca.pem".into(), "link.listen: required with link.ca"),
        (|f| f.link.key = "r.key".into(), "link.listen: required with link.key"),
        (|f| link(f, "", "r.pem", "r.key"), "link.ca: required with link.listen"),
        (|f| link(f, "ca.pem", " ", "r.key"), "link.cert: required"),
        (|f| link(f, "ca.pem", "r.pem", ""), "link.key: required"),
    ];
    for (mutate, key) in cases {
        let mut f = valid();
        mutate(&mut f);
        let err = Config::from_file(&f).unwrap_err().to_string();
        assert!(err.contains(key), "{err:?} should name {key}");
    }
}

fn link(f: &mut FileConfig, ca: &str, cert: &str, key: &str) {
    f.link = LinkSection { listen: "0.0.0.0:4433".into(), ca: ca.into(), cert: cert.into(), key: key.into() };
}

#[test]
fn links_are_off_by_default_and_on_with_all_four_keys() {
    assert_eq!(Config::from_file(&valid()).unwrap().link, None);
    let mut f = valid();
    link(&mut f, "/etc/relay/ca.pem", "/etc/relay/eu-1.pem", "/etc/relay/eu-1.key");
    assert_eq!(
        Config::from_file(&f).unwrap().link,
        Some(LinkConfig {
            listen: "0.0.0.0:4433".parse().unwrap(),
            ca: "/etc/relay/ca.pem".into(),
            cert: "/etc/relay/eu-1.pem".into(),
            key: "/etc/relay/eu-1.key".into(),
        })
    );
}

#[test]
fn unknown_keys_are_errors() {
    let err = FileConfig::parse("[server]\nlisen = \"1.2.3.4:1\"\n").unwrap_err().to_string();
    assert!(err.contains("lisen"), "{err}");
    let err = FileConfig::parse("[srever]\n").unwrap_err().to_string();
    assert!(err.contains("srever"), "{err}");
}

#[test]
fn overrides_win_over_the_file() {
    let mut f = FileConfig::parse("[server]\nlisten = \"127.0.0.1:1000\"\n[auth]\nsecrets = [\"a\"]\n").unwrap();
    let o = Overrides {
        listen: Some("127.0.0.1:2000".into()),
        secrets: Some(vec!["b".into(), "c".into()]),
        users: Some(vec!["alice:pw:with:colons".into()]),
        allow_peers: Some(vec!["127.0.0.1".into()]),
        ..Default::default()
    };
    f.apply(&o).unwrap();
    let c = Config::from_file(&f).unwrap();
    assert_eq!(c.listen.port(), 2000);
    assert_eq!(c.secrets, vec!["b", "c"]);
    assert_eq!(c.users, vec![("alice".to_string(), "pw:with:colons".to_string())]);
    assert_eq!(c.allow_peers, vec!["127.0.0.1/32".parse::<IpNet>().unwrap()]);
    let bad = Overrides { users: Some(vec!["nocolon".into()]), ..Default::default() };
    assert!(f.apply(&bad).unwrap_err().to_string().contains("auth.users"));
}

#[test]
fn redacted_hides_secrets() {
    let mut f = valid();
    f.auth.users.push(StaticUser { username: "u".into(), password: "p".into() });
    f.cluster.token = Some("cluster-t0ken".into());
    let text = toml::to_string(&f.redacted()).unwrap();
    assert!(!text.contains("s3cret") && !text.contains("\"p\"") && !text.contains("t0ken"), "{text}");
}

fn clustered() -> FileConfig {
    let mut f = valid();
    f.cluster.signaling_url = Some("https://signal.example.com".into());
    f.cluster.token = Some("t0ken".into());
    f.cluster.region = Some("eu-west".into());
    f.cluster.relay_id = Some("eu-fra-1".into());
    f
}

#[test]
fn no_signaling_url_means_standalone() {
    assert!(Config::from_file(&valid()).unwrap().cluster.is_none());
    // The other keys alone do not make a cluster member, but they are still checked.
    let mut f = valid();
    f.cluster.region = Some("eu-west".into());
    assert!(Config::from_file(&f).unwrap().cluster.is_none());
    f.cluster.region = Some("EU".into());
    assert!(Config::from_file(&f).unwrap_err().to_string().contains("cluster.region"));
}

#[test]
fn cluster_section_validates_with_defaults() {
    let c = Config::from_file(&clustered()).unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.heartbeat_url.as_str(), "https://signal.example.com/v1/relays/heartbeat");
    assert_eq!(cluster.token.0, "t0ken");
    assert!(!format!("{cluster:?}").contains("t0ken"), "Debug hides the token");
    assert_eq!((cluster.region.as_str(), cluster.relay_id.as_str()), ("eu-west", "eu-fra-1"));
    assert_eq!(cluster.public_host, "127.0.0.1", "the advertised address by default");
    assert_eq!(cluster.bandwidth_cap_bps, 0);

    let mut f = clustered();
    f.cluster.signaling_url = Some("http://10.0.0.1:8080/api/".into());
    f.cluster.public_host = Some("turn-eu.example.com".into());
    f.relay.external_ip = Some("198.51.100.7".into());
    f.cluster.bandwidth_cap_mbps = 1000;
    let cluster = Config::from_file(&f).unwrap().cluster.unwrap();
    assert_eq!(cluster.heartbeat_url.as_str(), "http://10.0.0.1:8080/api/v1/relays/heartbeat");
    assert_eq!(cluster.public_host, "turn-eu.example.com");
    assert_eq!(cluster.bandwidth_cap_bps, 1_000_000_000);
    f.cluster.public_host = None;
    assert_eq!(Config::from_file(&f).unwrap().cluster.unwrap().public_host, "198.51.100.7");
}

#[test]
fn relay_id_defaults_to_the_host_name() {
    let mut f = clustered();
    f.cluster.relay_id = None;
    let host = host_name().unwrap().to_ascii_lowercase();
    match Config::from_file(&f) {
        Ok(c) => assert_eq!(c.cluster.unwrap().relay_id, host),
        // A host name outside the charset (e.g. with '_') must be named, not used.
        Err(e) => assert!(format!("{e:#}").contains("cluster.relay_id"), "{e:#}"),
    }
}

#[test]
fn with_signaling_the_secrets_may_come_from_there() {
    let mut f = clustered();
    f.auth.secrets.clear();
    let c = Config::from_file(&f).unwrap();
    assert!(c.secrets.is_empty() && c.users.is_empty());
    // An empty entry is still a mistake.
    f.auth.secrets = vec![String::new()];
    assert!(Config::from_file(&f).unwrap_err().to_string().contains("auth.secrets[0]"));
}

#[test]
fn cluster_errors_name_the_key() {
    type Mutate = fn(&mut FileConfig);
    let cases: Vec<(Mutate, &str)> = vec![
        (|f| f.cluster.signaling_url = Some("signal.example.com".into()), "cluster.signaling_url"),
        (|f| f.cluster.signaling_url = Some("ftp://signal.example.com".into()), "cluster.signaling_url"),
        (|f| f.cluster.signaling_url = Some("https://s.example.com/?a=1".into()), "cluster.signaling_url"),
        (|f| f.cluster.signaling_url = Some("https://u:p@s.example.com".into()), "cluster.signaling_url"),
        (|f| f.cluster.token = None, "cluster.token"),
        (|f| f.cluster.token = Some(String::new()), "cluster.token"),
        (|f| f.cluster.token = Some("two words".into()), "cluster.token"),
        (|f| f.cluster.region = None, "cluster.region"),
        (|f| f.cluster.region = Some(String::new()), "cluster.region"),
        (|f| f.cluster.region = Some("eu_west".into()), "cluster.region"),
        (|f| f.cluster.region = Some("eu.west".into()), "cluster.region"),
        (|f| f.cluster.region = Some("x".repeat(65)), "cluster.region"),
        (|f| f.cluster.relay_id = Some("x".repeat(65)), "cluster.relay_id"),
        (|f| f.cluster.relay_id = Some("Relay-1".into()), "cluster.relay_id"),
        (|f| f.cluster.relay_id = Some(String::new()), "cluster.relay_id"),
        (|f| f.cluster.relay_id = Some("a b".into()), "cluster.relay_id"),
        (|f| f.cluster.public_host = Some("[::1]".into()), "cluster.public_host"),
        (|f| f.cluster.public_host = Some("-bad.example.com".into()), "cluster.public_host"),
        (|f| f.cluster.public_host = Some("a..b".into()), "cluster.public_host"),
        (|f| f.cluster.public_host = Some(String::new()), "cluster.public_host"),
        (|f| f.cluster.bandwidth_cap_mbps = u64::MAX, "cluster.bandwidth_cap_mbps"),
    ];
    for (mutate, key) in cases {
        let mut f = clustered();
        mutate(&mut f);
        let err = Config::from_file(&f).unwrap_err().to_string();
        assert!(err.contains(key), "{err:?} should name {key}");
    }
    // Accepted forms.
    for host in ["203.0.113.9", "2001:db8::1", "turn.example.com", "relay-1"] {
        let mut f = clustered();
        f.cluster.public_host = Some(host.into());
        assert_eq!(Config::from_file(&f).unwrap().cluster.unwrap().public_host, host);
    }
    let mut f = clustered();
    f.cluster.relay_id = Some("eu-fra-1.example.com".into());
    assert!(Config::from_file(&f).is_ok());
}

#[test]
fn cluster_keys_parse_and_override() {
    let text = "[cluster]\nsignaling_url = \"http://127.0.0.1:8080\"\ntoken = \"t\"\nregion = \"r1\"\n\
                relay_id = \"a\"\npublic_host = \"h.example\"\nbandwidth_cap_mbps = 10\n";
    let mut f = FileConfig::parse(text).unwrap();
    assert_eq!(f.cluster.region.as_deref(), Some("r1"));
    assert_eq!(f.cluster.bandwidth_cap_mbps, 10);
    let err = FileConfig::parse("[cluster]\nsignalling_url = \"x\"\n").unwrap_err().to_string();
    assert!(err.contains("signalling_url"), "{err}");
    let o = Overrides {
        signaling_url: Some("https://s.example".into()),
        cluster_token: Some("from-env".into()),
        region: Some("r2".into()),
        relay_id: Some("b".into()),
        public_host: Some("192.0.2.1".into()),
        bandwidth_cap_mbps: Some(20),
        ..Default::default()
    };
    f.apply(&o).unwrap();
    let c = Config::from_file(&f).unwrap().cluster.unwrap();
    assert_eq!(c.signaling_url.as_str(), "https://s.example/");
    assert_eq!(c.token.0, "from-env");
    assert_eq!((c.region.as_str(), c.relay_id.as_str(), c.public_host.as_str()), ("r2", "b", "192.0.2.1"));
    assert_eq!(c.bandwidth_cap_bps, 20_000_000);
}

#[test]
fn every_override_names_the_key_it_sets() {
    use clap::Args;
    let command = Overrides::augment_args(clap::Command::new("relay"));
    assert!(Overrides::KEYS.len() >= 50, "{} overrides", Overrides::KEYS.len());
    cluster::overrides::check_help(&command, Overrides::KEYS).unwrap();
    // And each one lands where it says: a value of the right type for every key.
    let mut file = FileConfig::default();
    let o = Overrides {
        listen: Some("127.0.0.1:1".into()),
        relay_ip: Some("192.0.2.9".into()),
        region: Some("r".into()),
        ..Default::default()
    };
    file.apply(&o).unwrap();
    assert_eq!(
        (file.server.listen.as_str(), file.relay.ip.as_deref(), file.cluster.region.as_deref()),
        ("127.0.0.1:1", Some("192.0.2.9"), Some("r"))
    );
}

#[test]
fn capacity_is_the_smaller_of_ports_and_max_total() {
    let capacity = |min: u16, max: u16, total: u32| {
        let mut f = valid();
        (f.relay.min_port, f.relay.max_port, f.allocations.max_total) = (min, max, total);
        Config::from_file(&f).unwrap().capacity()
    };
    // The defaults: no warning, as many allocations as the range has ports.
    let c = Config::from_file(&valid()).unwrap().capacity();
    assert_eq!((c.ports, c.max_total, c.allocations()), (16_384, 0, 16_384));
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    // max_total below the range: it decides, quietly.
    let c = capacity(49152, 65535, 10_000);
    assert_eq!(c.allocations(), 10_000);
    assert!(c.warnings().is_empty());
    // Above the range: the range decides, and both keys are named.
    let c = capacity(49152, 65535, 50_000);
    assert_eq!(c.allocations(), 16_384);
    let [w] = &c.warnings()[..] else { panic!("{:?}", c.warnings()) };
    assert!(w.contains("allocations.max_total = 50000") && w.contains("relay.min_port..relay.max_port"), "{w}");
    // A small range: warned about even with no max_total.
    let c = capacity(40000, 40999, 0);
    assert_eq!(c.allocations(), 1000);
    let [w] = &c.warnings()[..] else { panic!("{:?}", c.warnings()) };
    assert!(w.contains("holds only 1000 ports"), "{w}");
    assert_eq!(capacity(40000, 40049, 1000).warnings().len(), 2);
}
