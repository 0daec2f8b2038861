//! `relayctl`, the real binary, against a running signaling: every command's table and JSON, the
//! effects of the admin commands as relays and clients see them, the STUN probe against a real
//! responder, and the exit codes scripts rely on (0 ok, 1 server error, 2 usage, 3 unreachable).

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{JWT_KEY, Signaling, unix_now};
use serde_json::{Value, json};
use tokio::process::Command;

/// What a run of relayctl left behind.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The stdout of a run that must have succeeded.
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "relayctl failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        &self.stdout
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Asserts the exit code and that stderr mentions every one of `needles`.
    fn fails(&self, code: i32, needles: &[&str]) {
        assert_eq!(self.code, code, "stdout: {}\nstderr: {}", self.stdout, self.stderr);
        for needle in needles {
            assert!(self.stderr.contains(needle), "stderr lacks {needle:?}: {}", self.stderr);
        }
    }
}

/// relayctl pointed at `s` through RELAYCTL_URL, with `token` in RELAYCTL_TOKEN, and nothing of
/// the environment it runs in: no other RELAYCTL_* variable, a HOME without a config file.
fn relayctl(s: &Signaling, token: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relayctl"));
    for var in ["RELAYCTL_URL", "RELAYCTL_TOKEN", "RELAYCTL_CONFIG", "RELAYCTL_JWT_KEY"] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", &s.dir).env("RELAYCTL_URL", &s.url);
    if let Some(token) = token {
        cmd.env("RELAYCTL_TOKEN", token);
    }
    cmd
}

async fn run(cmd: &mut Command, args: &[&str]) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.args(args).output())
        .await
        .unwrap_or_else(|_| panic!("relayctl {args:?} hung"))
        .expect("relayctl runs");
    Run {
        code: out.status.code().expect("relayctl exited rather than being killed"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// The line of a table that starts with `first` (its first column).
fn line<'a>(table: &'a str, first: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{table}"))
}

async fn heartbeat_ok(s: &Signaling, id: &str, region: &str, port: u16) {
    let (status, body) = s.heartbeat(id, region, port, "serving", 0.1).await;
    assert_eq!(status, 200, "{body}");
}

/// One relay per region, on ports nothing needs to answer on.
async fn three_relays(s: &Signaling) {
    heartbeat_ok(s, "eu-1", "eu-central", 40001).await;
    heartbeat_ok(s, "us-1", "us-east", 40002).await;
    heartbeat_ok(s, "ap-1", "ap-southeast", 40003).await;
}

/// A port on 127.0.0.1 that nothing listens on (bound, then closed).
fn closed_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn closed_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_minted_with_the_key_is_accepted_as_admin() {
    let s = Signaling::start("sqlite", "");
    // The first admin token: offline, with signaling's key from the environment.
    let minted =
        run(relayctl(&s, None).env("RELAYCTL_JWT_KEY", JWT_KEY), &["token", "mint", "--sub", "ops", "--role", "admin"])
            .await;
    let admin = minted.ok().trim().to_owned();
    assert_eq!(minted.stdout.lines().count(), 1, "only the token is printed: {}", minted.stdout);
    assert_eq!(s.call("GET", "/v1/admin/status", Some(&admin), None).await.0, 200);

    // --key on the command line, --json, a TTL: a player token, and only that.
    let player = run(
        &mut relayctl(&s, None),
        &["token", "mint", "--key", JWT_KEY, "--sub", "bob", "--role", "player", "--ttl-secs", "60", "--json"],
    )
    .await
    .json();
    assert_eq!((player["sub"].as_str(), player["role"].as_str()), (Some("bob"), Some("player")));
    let expires = player["expires_at"].as_u64().unwrap();
    assert!((unix_now() + 55..=unix_now() + 61).contains(&expires), "{player}");
    let player = player["token"].as_str().unwrap();
    assert_eq!(s.call("GET", "/v1/machines", Some(player), None).await.0, 200);
    assert_eq!(s.call("GET", "/v1/admin/status", Some(player), None).await.0, 403);

    // Without a key, signaling mints it for an admin.
    let machine = run(&mut relayctl(&s, Some(&admin)), &["token", "mint", "--sub", "cab-9", "--role", "machine"]).await;
    let machine = machine.ok().trim();
    let (st, body) = s.call("POST", "/v1/machines/register", Some(machine), Some(json!({}))).await;
    assert_eq!(st, 200, "{body}");
    // ... and not for a player.
    run(&mut relayctl(&s, Some(player)), &["token", "mint", "--sub", "x", "--role", "admin"])
        .await
        .fails(1, &["403", "player"]);

    // A key that cannot be signaling's, and a subject signaling would refuse.
    run(&mut relayctl(&s, None), &["token", "mint", "--key", "short", "--sub", "a", "--role", "admin"])
        .await
        .fails(2, &["32 bytes"]);
    run(&mut relayctl(&s, None), &["token", "mint", "--key", JWT_KEY, "--sub", "a:b", "--role", "admin"])
        .await
        .fails(2, &["--sub"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_regions_print_tables_and_json() {
    let s = Signaling::start("sqlite", "");
    let admin = s.token("ops", "admin");
    heartbeat_ok(&s, "eu-1", "eu-central", 40001).await;

    let table = run(&mut relayctl(&s, Some(&admin)), &["status"]).await;
    let table = table.ok();
    assert!(line(table, "relays").ends_with("1 serving, 0 draining, 0 dead"), "{table}");
    assert!(line(table, "store").ends_with("sqlite"), "{table}");
    assert!(line(table, "sessions").ends_with("0 live, 0 total"), "{table}");
    let status = run(&mut relayctl(&s, Some(&admin)), &["status", "--json"]).await.json();
    assert_eq!(status["relays"]["serving"], 1);
    assert_eq!(status["regions"], 3);
    assert!(status["version"].is_string());

    // Regions need no token.
    let table = run(&mut relayctl(&s, None), &["regions"]).await;
    let table = table.ok();
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("REGION") && header.contains("PROBE TARGETS"), "{table}");
    let eu = line(table, "eu-central");
    assert!(eu.contains("50.11") && eu.contains("yes") && eu.ends_with("stun:127.0.0.1:40001"), "{table}");
    assert!(line(table, "us-east").contains(" no "), "{table}");
    // Columns line up: every row's available column starts where the header's does.
    let at = header.find("AVAILABLE").unwrap();
    assert!(table.lines().take(4).skip(1).all(|l| matches!(&l[at..at + 2], "ye" | "no")), "{table}");
    let regions = run(&mut relayctl(&s, None), &["regions", "--json"]).await.json();
    assert_eq!(regions["regions"][0]["probe_targets"][0]["port"], 40001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_drain_and_undrain_reach_the_relay() {
    let s = Signaling::start("sqlite", "");
    let admin = s.token("ops", "admin");
    heartbeat_ok(&s, "eu-1", "eu-central", 40001).await;
    heartbeat_ok(&s, "us-1", "us-east", 40002).await;
    // eu-1 takes links from other relays on UDP 4433; us-1 none.
    let mut hb = common::heartbeat_json("eu-1", "eu-central", 40001, "serving", 0.1);
    hb["link_port"] = json!(4433);
    assert_eq!(s.call("POST", "/v1/relays/heartbeat", Some(common::CLUSTER_TOKEN), Some(hb.clone())).await.0, 200);

    let table = run(&mut relayctl(&s, Some(&admin)), &["relays"]).await;
    let us = line(table.ok(), "us-1");
    for cell in ["us-east", "serving", "127.0.0.1:40002", "10%", "ago"] {
        assert!(us.contains(cell), "{cell:?} not in {us:?}");
    }
    let header: Vec<&str> = line(table.ok(), "ID").split_whitespace().collect();
    let at = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("a {name} column"));
    let cell = |l: &str, column: usize| l.split_whitespace().nth(column).map(str::to_owned);
    assert_eq!(cell(line(table.ok(), "eu-1"), at("LINK")).as_deref(), Some("4433"));
    assert_eq!(cell(us, at("LINK")).as_deref(), Some("-"));
    assert_eq!((cell(us, at("ALLOCATIONS")), cell(us, at("CAPACITY"))), (Some("0".into()), Some("100".into())));
    // A relay within signaling's margin of its capacity shows as full.
    let mut full = common::heartbeat_json("us-1", "us-east", 40002, "serving", 0.1);
    full["load"]["allocations"] = json!(97);
    assert_eq!(s.call("POST", "/v1/relays/heartbeat", Some(common::CLUSTER_TOKEN), Some(full)).await.0, 200);
    let table = run(&mut relayctl(&s, Some(&admin)), &["relays"]).await;
    let us = line(table.ok(), "us-1");
    assert_eq!(cell(us, at("STATUS")).as_deref(), Some("full"), "{us}");
    assert_eq!(cell(us, at("ALLOCATIONS")).as_deref(), Some("97"), "{us}");
    heartbeat_ok(&s, "us-1", "us-east", 40002).await;
    let none = run(&mut relayctl(&s, Some(&admin)), &["relays", "links"]).await;
    assert!(none.ok().contains("no relay reports a link"), "{}", none.stdout);
    hb["link_rtts"] = json!({ "us-1": 81.25 });
    assert_eq!(s.call("POST", "/v1/relays/heartbeat", Some(common::CLUSTER_TOKEN), Some(hb.clone())).await.0, 200);
    let links = run(&mut relayctl(&s, Some(&admin)), &["relays", "links"]).await;
    let row: Vec<&str> = line(links.ok(), "eu-1").split_whitespace().collect();
    let dashes = ["-"; 6];
    let expected: Vec<&str> = ["eu-1", "eu-central", "us-1", "us-east", "up", "81.2", "ms"]
        .into_iter()
        .chain(dashes)
        .chain(["serving"])
        .collect();
    assert_eq!(row, expected, "an RTT alone (an older relay): {}", links.stdout);
    // A relay that reports its links in full: one row per link, with its traffic and repairs.
    hb["links"] = json!([
        { "peer": "us-1", "state": "up", "rtt_ms": 80.5, "datagrams_sent": 12345, "datagrams_received": 7,
          "bytes_sent": 14_200_000, "bytes_received": 900, "repaired": 42, "lost": 1, "resent": 3,
          "watching": 0, "serving": 2 },
        { "peer": "ap-9", "state": "retrying" }
    ]);
    assert_eq!(s.call("POST", "/v1/relays/heartbeat", Some(common::CLUSTER_TOKEN), Some(hb.clone())).await.0, 200);
    let links = run(&mut relayctl(&s, Some(&admin)), &["relays", "links"]).await;
    let header: Vec<&str> = line(links.ok(), "RELAY").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "RELAY", "REGION", "PEER", "PEER", "REGION", "STATE", "RTT", "SENT", "RECEIVED", "REPAIRED", "LOST",
            "WATCHING", "SERVING", "PEER", "STATUS"
        ]
    );
    let rows: Vec<Vec<&str>> = links.ok().lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        [
            vec![
                "eu-1",
                "eu-central",
                "us-1",
                "us-east",
                "up",
                "80.5",
                "ms",
                "12345",
                "pkts",
                "/",
                "14.2",
                "MB",
                "7",
                "pkts",
                "/",
                "900",
                "B",
                "42",
                "1",
                "0",
                "2",
                "serving"
            ],
            vec![
                "eu-1",
                "eu-central",
                "ap-9",
                "-",
                "retrying",
                "-",
                "0",
                "pkts",
                "/",
                "0",
                "B",
                "0",
                "pkts",
                "/",
                "0",
                "B",
                "0",
                "0",
                "0",
                "0",
                "unknown"
            ],
        ],
        "{}",
        links.stdout
    );
    let json = run(&mut relayctl(&s, Some(&admin)), &["relays", "--json"]).await.json();
    let eu = json["relays"].as_array().unwrap().iter().find(|r| r["id"] == "eu-1").unwrap().clone();
    assert_eq!(eu["links"][0]["repaired"], 42, "{eu}");
    // Reports signaling cannot trust are refused, naming the field.
    for bad in [
        json!([{ "peer": "Not An Id", "state": "up" }]),
        json!([{ "peer": "us-1", "state": "up" }, { "peer": "us-1", "state": "up" }]),
        json!([{ "peer": "us-1", "state": "up", "rtt_ms": -1.0 }]),
        json!([{ "peer": "us-1", "state": "sideways" }]),
    ] {
        let mut bad_hb = hb.clone();
        bad_hb["links"] = bad.clone();
        let (status, body) = s.call("POST", "/v1/relays/heartbeat", Some(common::CLUSTER_TOKEN), Some(bad_hb)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.to_string().contains("links"), "{bad}: {body}");
    }
    let listed = run(&mut relayctl(&s, Some(&admin)), &["relays", "list"]).await;
    let ids: Vec<&str> = listed.ok().lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(ids, ["eu-1", "us-1"], "{}", listed.stdout);

    let drained = run(&mut relayctl(&s, Some(&admin)), &["relays", "drain", "us-1"]).await;
    assert!(drained.ok().contains("us-1 is draining"), "{}", drained.stdout);
    let (_, reply) = s.heartbeat("us-1", "us-east", 40002, "serving", 0.1).await;
    assert_eq!(reply["commands"], json!([{ "type": "drain" }]));
    let listed = run(&mut relayctl(&s, Some(&admin)), &["relays", "--json"]).await.json();
    let us = listed["relays"].as_array().unwrap().iter().find(|r| r["id"] == "us-1").unwrap().clone();
    assert_eq!((us["admin_state"].as_str(), us["status"].as_str()), (Some("draining"), Some("draining")));

    let undrained = run(&mut relayctl(&s, Some(&admin)), &["relays", "undrain", "us-1", "--json"]).await.json();
    assert_eq!(undrained, json!({ "relay": "us-1", "admin_state": "serving" }));
    let (_, reply) = s.heartbeat("us-1", "us-east", 40002, "draining", 0.1).await;
    assert_eq!(reply["commands"], json!([{ "type": "undrain" }]));

    run(&mut relayctl(&s, Some(&admin)), &["relays", "drain", "nope"]).await.fails(1, &["no relay", "404"]);
    run(&mut relayctl(&s, Some(&admin)), &["relays", "drain", "Not_An_Id"]).await.fails(2, &["relay id"]);

    // A live relay is not removed; ids with dots (host names) are accepted.
    run(&mut relayctl(&s, Some(&admin)), &["relays", "remove", "us-1"]).await.fails(1, &["is live", "409"]);
    run(&mut relayctl(&s, Some(&admin)), &["relays", "remove", "relay.example"]).await.fails(1, &["no relay", "404"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_and_sessions_list_show_and_end() {
    let s = Signaling::start("sqlite", "");
    let admin = s.token("ops", "admin");
    let player = s.token("alice", "player");
    let machine = s.token("cab-1", "machine");
    three_relays(&s).await;
    let rtts = json!({ "eu-central": 15.0, "us-east": 95.0, "ap-southeast": 180.0 });
    let (st, body) = s
        .call("POST", "/v1/machines/register", Some(&machine), Some(json!({ "name": "Cabinet 1", "rtts": rtts })))
        .await;
    assert_eq!(st, 200, "{body}");

    let table = run(&mut relayctl(&s, Some(&admin)), &["machines"]).await;
    let cab = line(table.ok(), "cab-1");
    assert!(cab.contains("Cabinet 1") && cab.contains("available") && cab.contains("eu-central 15.0 ms"), "{cab}");

    // A session, created as a player's client does; the machine is well within its 3 s.
    let five = |ms: f64| json!([ms, ms, ms, ms, ms]);
    let probes = json!({ "eu-central": five(60.0), "us-east": five(20.0), "ap-southeast": five(200.0) });
    let (st, created) =
        s.call("POST", "/v1/sessions", Some(&player), Some(json!({ "machine_id": "cab-1", "probes": probes }))).await;
    assert_eq!(st, 201, "{created}");
    let id = created["session_id"].as_str().unwrap().to_owned();

    let table = run(&mut relayctl(&s, Some(&admin)), &["machines"]).await;
    let cab = line(table.ok(), "cab-1");
    assert!(cab.contains("in_session") && cab.contains(&id), "{cab}");

    let table = run(&mut relayctl(&s, Some(&admin)), &["sessions"]).await;
    let row = line(table.ok(), &id);
    for cell in ["cab-1", "alice", "eu-central", "eu-1", "requested", "so far"] {
        assert!(row.contains(cell), "{cell:?} not in {row:?}");
    }
    let ended = run(&mut relayctl(&s, Some(&admin)), &["sessions", "--status", "ended"]).await;
    assert_eq!(ended.ok(), "no sessions match\n");
    let live = run(
        &mut relayctl(&s, Some(&admin)),
        &["sessions", "list", "--machine", "cab-1", "--status", "live", "--limit", "5", "--json"],
    )
    .await
    .json();
    assert_eq!(live["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(live["sessions"][0]["id"], id.as_str());
    let other = run(&mut relayctl(&s, Some(&admin)), &["sessions", "--player", "bob", "--json"]).await.json();
    assert_eq!(other["sessions"], json!([]));

    // One session: its fields, then the timeline with the region choice explained.
    let shown = run(&mut relayctl(&s, Some(&admin)), &["sessions", "show", &id]).await;
    let shown = shown.ok();
    assert!(line(shown, "player").ends_with("alice"), "{shown}");
    assert!(line(shown, "region").ends_with("eu-central"), "{shown}");
    assert!(line(shown, "status").ends_with("requested"), "{shown}");
    let requested = shown.lines().find(|l| l.contains("requested") && l.contains("player=alice")).expect(shown);
    assert!(requested.trim_start().starts_with("+0."), "{requested}");
    let chosen = shown.lines().find(|l| l.contains("region_chosen")).expect(shown);
    assert!(chosen.contains("eu-central via eu-1 (probes)"), "{chosen}");
    // The whole path: 60 + 15 for eu-central, 20 + 95 for us-east.
    assert!(
        chosen.contains("eu-central 75") && chosen.contains("us-east 115") && chosen.contains("ap-southeast"),
        "{chosen}"
    );

    let ended = run(&mut relayctl(&s, Some(&admin)), &["sessions", "end", &id, "--reason", "maintenance"]).await;
    assert!(ended.ok().starts_with(&format!("session {id} ended (maintenance, by admin) after ")), "{}", ended.stdout);
    let detail = run(&mut relayctl(&s, Some(&admin)), &["sessions", "show", &id, "--json"]).await.json();
    let kinds: Vec<&str> = detail["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["requested", "region_chosen", "ended"]);
    assert_eq!(detail["end_reason"], "maintenance");
    let table = run(&mut relayctl(&s, Some(&admin)), &["machines"]).await;
    assert!(line(table.ok(), "cab-1").contains("available"), "{}", table.stdout);

    run(&mut relayctl(&s, Some(&admin)), &["sessions", "end", &id]).await.fails(1, &["already ended", "409"]);
    run(&mut relayctl(&s, Some(&admin)), &["sessions", "show", "ses_nope"]).await.fails(1, &["no session", "404"]);
    run(&mut relayctl(&s, Some(&admin)), &["sessions", "end", &id, "--reason", "no spaces"])
        .await
        .fails(2, &["reason"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_changes_the_secrets_relays_get() {
    let s = Signaling::start("sqlite", "");
    let admin = s.token("ops", "admin");
    let (_, before) = s.heartbeat("eu-1", "eu-central", 40001, "serving", 0.1).await;
    let rotated = run(&mut relayctl(&s, Some(&admin)), &["keys", "rotate"]).await;
    assert!(rotated.ok().starts_with("TURN secret rotated: version "), "{}", rotated.stdout);
    let (_, after) = s.heartbeat("eu-1", "eu-central", 40001, "serving", 0.1).await;
    assert_ne!(before["secrets"]["version"], after["secrets"]["version"]);
    assert_eq!(after["secrets"]["keys"].as_array().unwrap().len(), 2);
    let again = run(&mut relayctl(&s, Some(&admin)), &["keys", "rotate", "--json"]).await.json();
    assert_eq!(again["live_secrets"], 3, "{again}");
    let (_, latest) = s.heartbeat("eu-1", "eu-central", 40001, "serving", 0.1).await;
    assert_eq!(latest["secrets"]["keys"].as_array().unwrap().len(), 3);
    // The relays' secrets version folds the newest secret's version with the count (store.rs).
    assert_eq!(latest["secrets"]["version"].as_u64().unwrap() >> 8, again["version"].as_u64().unwrap(), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_config_follows_the_probes_given() {
    let s = Signaling::start("sqlite", "");
    let player = s.token("alice", "player");
    three_relays(&s).await;
    let out = run(
        &mut relayctl(&s, Some(&player)),
        &["ice-config", "--probe", "eu-central=90", "--probe", "us-east=20", "--probe", "ap-southeast=200"],
    )
    .await;
    assert!(out.ok().lines().count() > 10, "pretty-printed for pasting: {}", out.stdout);
    let ice = out.json();
    assert_eq!(ice["region"], "us-east");
    assert_eq!(ice["selection"]["source"], "probes");
    assert_eq!(ice["iceServers"][0]["urls"][0], "turn:127.0.0.1:40002?transport=udp");
    assert!(ice["iceServers"][0]["credential"].is_string());

    run(&mut relayctl(&s, None), &["ice-config"]).await.fails(2, &["needs a token"]);
    run(&mut relayctl(&s, Some(&player)), &["ice-config", "--probe", "mars=5"]).await.fails(1, &["mars", "400"]);
    run(&mut relayctl(&s, Some(&player)), &["ice-config", "--probe", "eu-central"]).await.fails(2, &["REGION=MS"]);
}

/// A STUN server on 127.0.0.1 built with the `stun` crate, an implementation relayctl's
/// hand-made requests have to satisfy. Answers Binding requests with XOR-MAPPED-ADDRESS and
/// FINGERPRINT until dropped.
struct StunResponder {
    port: u16,
    answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl StunResponder {
    fn start() -> Self {
        use stun::message::{BINDING_REQUEST, BINDING_SUCCESS, Message, Setter};
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let port = socket.local_addr().unwrap().port();
        let answered = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, done) = (answered.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !done.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                let mut request = Message::new();
                if request.unmarshal_binary(&buf[..n]).is_err() || request.typ != BINDING_REQUEST {
                    continue;
                }
                let mut response = Message::new();
                response.typ = BINDING_SUCCESS;
                response.transaction_id = request.transaction_id;
                response.write_header();
                stun::xoraddr::XorMappedAddress { ip: from.ip(), port: from.port() }.add_to(&mut response).unwrap();
                stun::fingerprint::FINGERPRINT.add_to(&mut response).unwrap();
                // Counted before it leaves: the client may read the answer (and the test the
                // count) before this thread runs again.
                count.fetch_add(1, Ordering::Relaxed);
                socket.send_to(&response.raw, from).unwrap();
            }
        });
        Self { port, answered, stop }
    }
}

impl Drop for StunResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_measures_a_real_stun_responder_and_feeds_ice_config() {
    // A default region that is not the one the probes favour, so a choice by probes shows.
    let s = Signaling::start("sqlite", "[selection]\ndefault_region = \"us-east\"");
    let player = s.token("alice", "player");
    let responder = StunResponder::start();
    heartbeat_ok(&s, "eu-1", "eu-central", responder.port).await;
    heartbeat_ok(&s, "us-1", "us-east", closed_udp_port()).await;
    heartbeat_ok(&s, "ap-1", "ap-southeast", closed_udp_port()).await;

    let started = Instant::now();
    let report = run(&mut relayctl(&s, None), &["probe", "--attempts", "3", "--timeout-ms", "200", "--json"]).await;
    assert!(started.elapsed() < Duration::from_secs(3), "probing took {:?}", started.elapsed());
    let report = report.json();
    let probes = report["probes"].as_object().unwrap();
    assert_eq!(probes.len(), 3, "{report}");
    let eu = probes["eu-central"].as_array().unwrap();
    assert_eq!(eu.len(), 3);
    assert!(eu.iter().all(|ms| ms.as_f64().is_some_and(|ms| (0.0..200.0).contains(&ms))), "{report}");
    for lost in ["us-east", "ap-southeast"] {
        assert_eq!(probes[lost], json!([null, null, null]), "{report}");
    }
    assert!(responder.answered.load(Ordering::Relaxed) >= 3);

    let table = run(&mut relayctl(&s, None), &["probe", "--attempts", "3", "--timeout-ms", "200"]).await;
    let table = table.ok();
    let eu = line(table, "eu-central");
    assert!(
        eu.contains(&format!("stun:127.0.0.1:{}", responder.port)) && eu.contains(" ms") && eu.contains(" 0%"),
        "{table}"
    );
    assert!(line(table, "us-east").contains("100%"), "{table}");
    assert!(table.contains("best region: eu-central ("), "{table}");

    // The JSON is what signaling takes: fed back, it decides the region. Five attempts, so
    // that the four counted after warm-up are enough for signaling to trust them.
    let report =
        run(&mut relayctl(&s, None), &["probe", "--attempts", "5", "--timeout-ms", "200", "--json"]).await.json();
    assert_eq!(report["probes"]["us-east"], json!([null, null, null, null, null]), "{report}");
    let file = s.dir.join("probes.json");
    std::fs::write(&file, serde_json::to_string(&report).unwrap()).unwrap();
    let ice = run(&mut relayctl(&s, Some(&player)), &["ice-config", "--probes-from", path(&file)]).await.json();
    assert_eq!(ice["region"], "eu-central", "{ice}");
    assert_eq!(ice["selection"]["source"], "probes", "{ice}");
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_exit_codes() {
    let s = Signaling::start("sqlite", "");
    let player = s.token("alice", "player");

    // 1: signaling said no, and stderr says what it said.
    run(&mut relayctl(&s, Some("not-a-jwt")), &["status"]).await.fails(1, &["token is malformed", "HTTP 401"]);
    let forged = {
        use signaling::auth::{Keys, Role};
        Keys::new(&[9u8; 32]).mint("ops", Role::Admin, unix_now(), 60).unwrap()
    };
    run(&mut relayctl(&s, Some(&forged)), &["relays"]).await.fails(1, &["signature is invalid", "401"]);
    run(&mut relayctl(&s, Some(&player)), &["status"]).await.fails(1, &["a player token cannot do this", "HTTP 403"]);

    // 3: nothing listening, or nothing answering.
    let dead = format!("http://127.0.0.1:{}", closed_tcp_port());
    run(&mut relayctl(&s, Some(&player)), &["status", "--url", &dead]).await.fails(3, &["unreachable", "refused"]);
    run(&mut relayctl(&s, None), &["probe", "--url", &dead]).await.fails(3, &["unreachable"]);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    run(&mut relayctl(&s, None), &["regions", "--url", &silent_url, "--timeout-secs", "1"])
        .await
        .fails(3, &["no answer within 1 s"]);
    assert!(started.elapsed() < Duration::from_secs(5));

    // 2: the command line or the settings are wrong; nothing is sent.
    for args in [
        &["frobnicate"][..],
        &["status", "--frobnicate"],
        &[],
        &["sessions", "--status", "weird"],
        &["sessions", "--limit", "0"],
        &["sessions", "--limit", "5", "show", "x"],
        &["sessions", "show"],
        &["probe", "--attempts", "0"],
        &["probe", "--timeout-ms", "20000"],
        &["token", "mint", "--sub", "a", "--role", "god"],
        &["status", "--timeout-secs", "0"],
    ] {
        let out = run(&mut relayctl(&s, Some(&player)), args).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stdout.is_empty() && !out.stderr.is_empty(), "{args:?}: {out:?}");
    }
    run(&mut relayctl(&s, None), &["status"]).await.fails(2, &["needs a token"]);
    run(&mut relayctl(&s, Some(&player)), &["status", "--url", "ftp://example.com"]).await.fails(2, &["--url", "http"]);
    let missing = s.dir.join("missing.toml");
    run(&mut relayctl(&s, Some(&player)), &["status", "--config", path(&missing)])
        .await
        .fails(2, &["cannot read config file"]);
    let typo = s.dir.join("typo.toml");
    std::fs::write(&typo, "url = \"http://127.0.0.1:1\"\ntokn = \"x\"\n").unwrap();
    run(&mut relayctl(&s, Some(&player)), &["status", "--config", path(&typo)]).await.fails(2, &["tokn"]);

    // Help and version are not errors.
    assert!(run(&mut relayctl(&s, None), &["--help"]).await.ok().contains("relays"));
    assert!(run(&mut relayctl(&s, None), &["--version"]).await.ok().starts_with("relayctl "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_flag_then_env_then_config_file() {
    let s = Signaling::start("sqlite", "");
    let admin = s.token("ops", "admin");
    let dead = format!("http://127.0.0.1:{}", closed_tcp_port());

    // The default file, ~/.config/relayctl/config.toml, with url and token.
    let dir = s.dir.join(".config/relayctl");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), format!("url = {:?}\ntoken = {admin:?}\n", s.url)).unwrap();
    let mut from_file = relayctl(&s, None);
    from_file.env_remove("RELAYCTL_URL");
    assert!(run(&mut from_file, &["status"]).await.ok().contains("serving"));

    // The environment wins over the file; a flag wins over the environment.
    let mut env_url = relayctl(&s, None);
    env_url.env("RELAYCTL_URL", &dead);
    run(&mut env_url, &["status"]).await.fails(3, &["unreachable"]);
    let mut flag_url = relayctl(&s, None);
    flag_url.env("RELAYCTL_URL", &dead);
    run(&mut flag_url, &["status", "--url", &s.url]).await.ok();
    run(&mut relayctl(&s, Some("bad-env-token")), &["status"]).await.fails(1, &["401"]);
    run(&mut relayctl(&s, Some("bad-env-token")), &["status", "--token", &admin]).await.ok();

    // RELAYCTL_CONFIG names another file, instead of the default one.
    let other = s.dir.join("other.toml");
    std::fs::write(&other, format!("url = {dead:?}\n")).unwrap();
    let mut named = relayctl(&s, Some(&admin));
    named.env_remove("RELAYCTL_URL").env("RELAYCTL_CONFIG", &other);
    run(&mut named, &["status"]).await.fails(3, &["unreachable"]);
}

/// relayctl with nothing of the environment, for the offline commands: a config file that does
/// not parse must not stop them.
fn offline_relayctl(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relayctl"));
    for var in ["RELAYCTL_URL", "RELAYCTL_TOKEN", "RELAYCTL_JWT_KEY"] {
        cmd.env_remove(var);
    }
    let config = dir.join("broken-config.toml");
    std::fs::write(&config, "this is = not [toml").unwrap();
    cmd.env("HOME", dir).env("RELAYCTL_CONFIG", config);
    cmd
}

/// `openssl` on the files, for an independent reading of what relayctl wrote.
fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl").args(args).output().expect("openssl (scripts/test.sh installs it)");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_init_and_issue_make_certificates_openssl_accepts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("relayctl-ca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca_dir = dir.join("ca");
    let ca = path(&ca_dir);
    let text = run(&mut offline_relayctl(&dir), &["ca", "init", "--dir", ca, "--name", "test cluster"]).await;
    assert!(text.ok().contains("relayctl ca issue RELAY_ID"), "says what is next: {}", text.stdout);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600, "the CA key is the operator's alone");
    let issued =
        run(&mut offline_relayctl(&dir), &["--json", "ca", "issue", "eu-1.example.org", "--dir", ca]).await.json();
    let cert = issued["cert"].as_str().unwrap().to_owned();
    assert_eq!(cert, path(&ca_dir.join("eu-1.example.org.pem")));
    assert_eq!(mode(Path::new(issued["key"].as_str().unwrap())), 0o600);
    // openssl agrees: signed by the CA, for the relay id, for both ends of a TLS connection.
    let ca_pem = path(&ca_dir.join("ca.pem")).to_owned();
    let verify = openssl(&["verify", "-CAfile", &ca_pem, "-purpose", "sslclient", &cert]);
    assert!(verify.contains(": OK"), "{verify}");
    let verify = openssl(&["verify", "-CAfile", &ca_pem, "-purpose", "sslserver", &cert]);
    assert!(verify.contains(": OK"), "{verify}");
    let san = openssl(&["x509", "-in", &cert, "-noout", "-ext", "subjectAltName"]);
    assert!(san.contains("DNS:eu-1.example.org"), "{san}");
    let issuer = openssl(&["x509", "-in", &cert, "-noout", "-issuer"]);
    assert!(issuer.contains("test cluster"), "{issuer}");
    // A certificate from another CA does not verify against this one.
    let other = path(&dir.join("other")).to_owned();
    run(&mut offline_relayctl(&dir), &["ca", "init", "--dir", &other]).await.ok();
    let verify = openssl(&["verify", "-CAfile", &format!("{other}/ca.pem"), &cert]);
    assert!(!verify.contains(": OK"), "{verify}");

    // Nothing is overwritten without --force; --force renews.
    run(&mut offline_relayctl(&dir), &["ca", "init", "--dir", ca]).await.fails(2, &["ca.", "exists", "--force"]);
    run(&mut offline_relayctl(&dir), &["ca", "issue", "eu-1.example.org", "--dir", ca]).await.fails(2, &["exists"]);
    let before = std::fs::read(&cert).unwrap();
    run(&mut offline_relayctl(&dir), &["ca", "issue", "eu-1.example.org", "--dir", ca, "--force"]).await.ok();
    assert_ne!(std::fs::read(&cert).unwrap(), before, "renewed");
    // Bad input: a relay id no certificate can hold, a directory without a CA, a key that is
    // not the CA's.
    run(&mut offline_relayctl(&dir), &["ca", "issue", "a..b", "--dir", ca]).await.fails(2, &["relay id \"a..b\""]);
    let empty = path(&dir.join("empty")).to_owned();
    run(&mut offline_relayctl(&dir), &["ca", "issue", "eu-2", "--dir", &empty]).await.fails(2, &["relayctl ca init"]);
    std::fs::copy(format!("{other}/ca.key"), ca_dir.join("ca.key")).unwrap();
    run(&mut offline_relayctl(&dir), &["ca", "issue", "eu-2", "--dir", ca]).await.fails(2, &["does not belong"]);
    let _ = std::fs::remove_dir_all(&dir);
}
