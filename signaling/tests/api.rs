//! The API against the running service. The same suite runs on every store backend.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{CLUSTER_TOKEN, Signaling, eventually, unix_now};
use serde_json::{Value, json};

const SEED_SECRET: &str = "test-turn-secret-0123456789";

fn probes(eu: f64, us: f64, ap: f64) -> Value {
    let five = |ms: f64| json!([ms * 3.0, ms, ms + 1.0, ms - 1.0, ms]);
    json!({ "eu-central": five(eu), "us-east": five(us), "ap-southeast": five(ap) })
}

fn hmac_b64(secret: &str, username: &str) -> String {
    cluster::credentials::rest_password(secret.as_bytes(), username)
}

/// Every relay of the test keeps heartbeating while the suite runs.
async fn heartbeat_all(s: &Signaling, relays: &[(&str, &str, u16, f64)]) {
    for (id, region, port, cpu) in relays {
        let (status, body) = s.heartbeat(id, region, *port, "serving", *cpu).await;
        assert_eq!(status, 200, "{body}");
    }
}

async fn suite(backend: &str) {
    let s = Signaling::start(backend, "");
    let admin = s.token("ops", "admin");
    let player = s.token("alice", "player");
    let player2 = s.token("bob", "player");
    let machine = s.token("cab-1", "machine");
    let relays =
        [("eu-1", "eu-central", 40001, 0.1), ("us-1", "us-east", 40002, 0.1), ("ap-1", "ap-southeast", 40003, 0.1)];
    heartbeat_all(&s, &relays).await;

    // Health and metrics.
    assert_eq!(s.call("GET", "/healthz", None, None).await.0, 200);

    // Regions with probe targets.
    let (st, regions) = s.call("GET", "/v1/regions", None, None).await;
    assert_eq!(st, 200);
    let eu = &regions["regions"][0];
    assert_eq!(eu["id"], "eu-central");
    assert_eq!(eu["probe_targets"][0]["url"], "stun:127.0.0.1:40001");
    assert_eq!(regions["probe"]["attempts"], 5);

    // An ICE config follows the probes, with a credential the relay can verify.
    let (st, ice) =
        s.call("POST", "/v1/ice-config", Some(&player), Some(json!({ "probes": probes(90.0, 20.0, 200.0) }))).await;
    assert_eq!(st, 200, "{ice}");
    assert_eq!(ice["region"], "us-east");
    assert_eq!(ice["selection"]["source"], "probes");
    let server = &ice["iceServers"][0];
    assert_eq!(server["urls"][0], "turn:127.0.0.1:40002?transport=udp");
    let username = server["username"].as_str().unwrap();
    let expiry = cluster::credentials::rest_expiry(username).unwrap();
    assert!((unix_now() + 590..=unix_now() + 610).contains(&expiry), "expiry {expiry}");
    assert!(username.ends_with(":alice"), "{username}");
    assert_eq!(server["credential"], hmac_b64(SEED_SECRET, username));
    let alternates = ice["alternates"].as_array().unwrap();
    assert_eq!(alternates.len(), 2);
    assert_eq!(alternates[0]["region"], "eu-central");
    assert_ne!(alternates[0]["iceServers"][0]["urls"], server["urls"]);

    // Machines.
    let (st, body) = s
        .call(
            "POST",
            "/v1/machines/register",
            Some(&machine),
            Some(
                json!({ "name": "Cabinet 1", "rtts": { "eu-central": 15.0, "us-east": 95.0, "ap-southeast": 180.0 } }),
            ),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let (_, list) = s.call("GET", "/v1/machines", Some(&player), None).await;
    assert_eq!(list["machines"][0]["status"], "available");

    // A session chooses for the whole path: the player is nearer us-east, but the machine is in
    // Europe, so eu-central wins (20+95 > 60+15).
    let (st, session) = s
        .call(
            "POST",
            "/v1/sessions",
            Some(&player),
            Some(json!({ "machine_id": "cab-1", "probes": probes(60.0, 20.0, 200.0) })),
        )
        .await;
    assert_eq!(st, 201, "{session}");
    assert_eq!(session["region"], "eu-central");
    let id = session["session_id"].as_str().unwrap().to_owned();
    assert!(session["ice"]["iceServers"][0]["username"].as_str().unwrap().ends_with(&id));
    assert!(session["selection"]["scores"].as_array().unwrap().len() == 3);

    // The machine is busy now.
    let (st, busy) = s.call("POST", "/v1/sessions", Some(&player2), Some(json!({ "machine_id": "cab-1" }))).await;
    assert_eq!(st, 409, "{busy}");
    assert_eq!(busy["error"]["code"], "conflict");
    let (_, list) = s.call("GET", "/v1/machines", Some(&admin), None).await;
    assert_eq!(list["machines"][0]["status"], "in_session");
    assert_eq!(list["machines"][0]["session_id"], id.as_str());

    // The machine learns about it on its heartbeat, reports connected; the player ends it.
    let (_, hb) = s.call("POST", "/v1/machines/heartbeat", Some(&machine), Some(json!({}))).await;
    assert_eq!(hb["session"]["id"], id.as_str());
    assert_eq!(s.call("POST", &format!("/v1/sessions/{id}/connected"), Some(&machine), None).await.0, 204);
    // Someone else's session does not exist for bob.
    assert_eq!(s.call("GET", &format!("/v1/sessions/{id}"), Some(&player2), None).await.0, 404);
    let (st, ended) = s
        .call("POST", &format!("/v1/sessions/{id}/end"), Some(&player), Some(json!({ "reason": "player_left" })))
        .await;
    assert_eq!(st, 200, "{ended}");
    assert_eq!(ended["status"], "ended");
    assert_eq!(s.call("POST", &format!("/v1/sessions/{id}/end"), Some(&player), None).await.0, 409);
    let (_, detail) = s.call("GET", &format!("/v1/sessions/{id}"), Some(&admin), None).await;
    let kinds: Vec<&str> = detail["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["requested", "region_chosen", "connected", "ended"]);
    assert_eq!(detail["events"][3]["detail"]["reason"], "player_left");
    assert_eq!(detail["end_reason"], "player_left");
    assert_eq!(detail["events"][1]["detail"]["region"], "eu-central");

    // History: filters.
    let (_, all) = s.call("GET", "/v1/sessions?machine=cab-1&status=ended", Some(&admin), None).await;
    assert_eq!(all["sessions"].as_array().unwrap().len(), 1);
    let (_, none) = s.call("GET", "/v1/sessions?status=live", Some(&admin), None).await;
    assert_eq!(none["sessions"].as_array().unwrap().len(), 0);

    // Drain: the relay is told, and new configs avoid it.
    let (st, _) = s.call("POST", "/v1/relays/us-1/drain", Some(&admin), None).await;
    assert_eq!(st, 200);
    let (_, reply) = s.heartbeat("us-1", "us-east", 40002, "serving", 0.1).await;
    assert_eq!(reply["commands"], json!([{ "type": "drain" }]));
    let (_, ice) =
        s.call("POST", "/v1/ice-config", Some(&player), Some(json!({ "probes": probes(90.0, 20.0, 200.0) }))).await;
    assert_eq!(ice["region"], "eu-central", "{ice}");
    let (_, reply) = s.heartbeat("us-1", "us-east", 40002, "draining", 0.1).await;
    assert_eq!(reply["commands"], json!([]));
    s.call("POST", "/v1/relays/us-1/undrain", Some(&admin), None).await;
    let (_, reply) = s.heartbeat("us-1", "us-east", 40002, "draining", 0.1).await;
    assert_eq!(reply["commands"], json!([{ "type": "undrain" }]));
    heartbeat_all(&s, &relays).await;

    // Key rotation: relays get both secrets, new credentials use the new one.
    let (_, before) = s.heartbeat("eu-1", "eu-central", 40001, "serving", 0.1).await;
    let (st, rotated) = s.call("POST", "/v1/admin/keys/rotate", Some(&admin), None).await;
    assert_eq!(st, 200, "{rotated}");
    let (_, after) = s.heartbeat("eu-1", "eu-central", 40001, "serving", 0.1).await;
    assert_ne!(before["secrets"]["version"], after["secrets"]["version"]);
    let keys = after["secrets"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[1], SEED_SECRET);
    let (_, ice) = s.call("POST", "/v1/ice-config", Some(&player), Some(json!({}))).await;
    let server = &ice["iceServers"][0];
    assert_eq!(server["credential"], hmac_b64(keys[0].as_str().unwrap(), server["username"].as_str().unwrap()));

    // Tokens minted by the admin API work.
    let (_, minted) = s
        .call(
            "POST",
            "/v1/admin/tokens",
            Some(&admin),
            Some(json!({ "sub": "carol", "role": "player", "ttl_secs": 60 })),
        )
        .await;
    let carol = minted["token"].as_str().unwrap();
    assert_eq!(s.call("GET", "/v1/machines", Some(carol), None).await.0, 200);
    let (st, status) = s.call("GET", "/v1/admin/status", Some(&admin), None).await;
    assert_eq!(st, 200);
    assert_eq!(status["relays"]["serving"], 3);

    // A relay that stops heartbeating leaves rotation within DEAD_AFTER (6 s).
    let started = std::time::Instant::now();
    let gone = eventually(Duration::from_secs(8), || async {
        s.heartbeat("eu-1", "eu-central", 40001, "serving", 0.1).await;
        s.heartbeat("ap-1", "ap-southeast", 40003, "serving", 0.1).await;
        s.call("POST", "/v1/machines/heartbeat", Some(&machine), Some(json!({}))).await;
        let (_, ice) =
            s.call("POST", "/v1/ice-config", Some(&player), Some(json!({ "probes": probes(90.0, 20.0, 200.0) }))).await;
        (ice["region"] != "us-east").then_some(())
    })
    .await;
    assert!(gone.is_some(), "silent relay still handed out");
    assert!(started.elapsed() <= Duration::from_millis(6_900), "left rotation after {:?}", started.elapsed());
    let (_, listed) = s.call("GET", "/v1/relays", Some(&admin), None).await;
    let us = listed["relays"].as_array().unwrap().iter().find(|r| r["id"] == "us-1").unwrap().clone();
    assert_eq!(us["status"], "dead");
    // A live relay cannot be removed (it would register again); a dead one can.
    let (st, body) = s.call("DELETE", "/v1/relays/eu-1", Some(&admin), None).await;
    assert_eq!(st, 409, "{body}");
    let (st, body) = s.call("DELETE", "/v1/relays/us-1", Some(&admin), None).await;
    assert_eq!(st, 200, "{body}");
    let (_, listed) = s.call("GET", "/v1/relays", Some(&admin), None).await;
    assert!(listed["relays"].as_array().unwrap().iter().all(|r| r["id"] != "us-1"));

    // A machine that goes silent ends its session (offline_after_secs = 3).
    let (st, session) = s.call("POST", "/v1/sessions", Some(&player), Some(json!({ "machine_id": "cab-1" }))).await;
    assert_eq!(st, 201, "{session}");
    let id = session["session_id"].as_str().unwrap().to_owned();
    let ended = eventually(Duration::from_secs(8), || async {
        s.heartbeat("eu-1", "eu-central", 40001, "serving", 0.1).await;
        let (_, d) = s.call("GET", &format!("/v1/sessions/{id}"), Some(&admin), None).await;
        (d["status"] == "ended").then_some(d)
    })
    .await
    .expect("session of an offline machine ended");
    assert_eq!(ended["end_reason"], "machine_offline");
    let (_, list) = s.call("GET", "/v1/machines", Some(&player), None).await;
    assert_eq!(list["machines"][0]["status"], "offline");
    let (st, _) = s.call("POST", "/v1/sessions", Some(&player), Some(json!({ "machine_id": "cab-1" }))).await;
    assert_eq!(st, 409);

    bad_input(&s, &admin, &player, &machine).await;
    let (_, metrics) = s.call("GET", "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(metrics.contains("signaling_sessions_created_total{region=\"eu-central\"} 2"), "{metrics}");
    assert!(!metrics.contains("status=\"500\""), "a 5xx was served:\n{metrics}");
    // The alert rules shipped in deploy/ speak of series signaling exports.
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus/signaling-rules.yml"))
            .unwrap();
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("signaling_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 2, "{names:?}");
    for name in names {
        let exported = metrics.lines().any(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(['{', ' '])));
        assert!(
            exported,
            "deploy/prometheus/signaling-rules.yml uses {name}, which signaling does not export:\n{metrics}"
        );
    }
}

/// Every endpoint, fed what clients get wrong: always a 4xx with a JSON error, never a 5xx.
async fn bad_input(s: &Signaling, admin: &str, player: &str, machine: &str) {
    let expired = {
        use signaling::auth::{Keys, Role};
        Keys::new(common::JWT_KEY.as_bytes()).mint("alice", Role::Player, unix_now() - 7200, 60).unwrap()
    };
    let forged = {
        use signaling::auth::{Keys, Role};
        Keys::new(&[9u8; 32]).mint("ops", Role::Admin, unix_now(), 60).unwrap()
    };
    let unsigned = {
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none"}"#),
            b64(&format!(r#"{{"sub":"x","role":"admin","exp":{}}}"#, unix_now() + 60))
        )
    };
    let big = "x".repeat(70 * 1024);
    let ghost = s.token("ghost", "machine");
    // (method, path, token, raw body, expected status)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<String>, u16);
    let cases: Vec<Case<'_>> = vec![
        ("POST", "/v1/ice-config", Some(player), Some("{not json".into()), 400),
        ("POST", "/v1/ice-config", Some(player), Some(r#"{"probes": {"eu-central": "fast"}}"#.into()), 400),
        ("POST", "/v1/ice-config", Some(player), Some(r#"{"probes": {"mars": [1,2,3]}}"#.into()), 400),
        ("POST", "/v1/ice-config", Some(player), Some(r#"{"probes": {"eu-central": [-5, 1, 2]}}"#.into()), 400),
        ("POST", "/v1/ice-config", Some(player), Some(r#"{"surprise": 1}"#.into()), 400),
        ("POST", "/v1/ice-config", Some(player), Some(format!(r#"{{"pad": "{big}"}}"#)), 413),
        ("POST", "/v1/ice-config", Some(player), Some(r#"{"machine_id": "nope"}"#.into()), 404),
        ("POST", "/v1/ice-config", None, Some("{}".into()), 401),
        ("POST", "/v1/ice-config", Some("garbage"), Some("{}".into()), 401),
        ("POST", "/v1/ice-config", Some(&expired), Some("{}".into()), 401),
        ("POST", "/v1/ice-config", Some(&forged), Some("{}".into()), 401),
        ("POST", "/v1/ice-config", Some(&unsigned), Some("{}".into()), 401),
        ("POST", "/v1/ice-config", Some(machine), Some("{}".into()), 403),
        ("POST", "/v1/sessions", Some(player), Some(r#"{"machine_id": 5}"#.into()), 400),
        ("POST", "/v1/sessions", Some(player), Some(r#"{}"#.into()), 400),
        ("POST", "/v1/sessions", Some(player), Some(r#"{"machine_id": "nope"}"#.into()), 404),
        (
            "POST",
            "/v1/sessions",
            Some(player),
            Some(r#"{"machine_id": "cab-1", "mode": "carrier-pigeon"}"#.into()),
            400,
        ),
        ("POST", "/v1/sessions", Some(machine), Some(r#"{"machine_id": "cab-1"}"#.into()), 403),
        ("POST", "/v1/sessions", Some(player), Some(format!(r#"{{"machine_id": "{big}"}}"#)), 413),
        ("GET", "/v1/sessions", Some(player), None, 403),
        ("GET", "/v1/sessions?limit=abc", Some(admin), None, 400),
        ("GET", "/v1/sessions?limit=0", Some(admin), None, 400),
        ("GET", "/v1/sessions?status=weird", Some(admin), None, 400),
        ("GET", "/v1/sessions/ses_nope", Some(admin), None, 404),
        ("GET", "/v1/sessions/%20%00", Some(admin), None, 404),
        ("POST", "/v1/sessions/ses_nope/end", Some(admin), None, 404),
        ("POST", "/v1/sessions/ses_nope/end", Some(admin), Some(r#"{"reason": 7}"#.into()), 400),
        ("POST", "/v1/sessions/ses_nope/connected", Some(player), None, 404),
        ("POST", "/v1/machines/register", Some(player), Some("{}".into()), 403),
        ("POST", "/v1/machines/register", Some(machine), Some(r#"{"rtts": {"eu-central": -1}}"#.into()), 400),
        ("POST", "/v1/machines/register", Some(machine), Some(r#"{"rtts": {"mars": 1}}"#.into()), 400),
        ("POST", "/v1/machines/register", Some(machine), Some(r#"{"lat": 95, "lon": 0}"#.into()), 400),
        ("POST", "/v1/machines/register", Some(machine), Some(r#"{"lat": 5}"#.into()), 400),
        ("POST", "/v1/machines/heartbeat", Some(&ghost), Some("{}".into()), 404),
        ("POST", "/v1/machines/heartbeat", Some(machine), Some(r#""a string""#.into()), 400),
        ("GET", "/v1/machines", None, None, 401),
        ("GET", "/v1/relays", Some(player), None, 403),
        ("POST", "/v1/relays/nope/drain", Some(admin), None, 404),
        ("DELETE", "/v1/relays/nope", Some(admin), None, 404),
        ("DELETE", "/v1/relays/eu-1", Some(player), None, 403),
        ("POST", "/v1/relays/eu-1/drain", Some(player), None, 403),
        ("POST", "/v1/relays/heartbeat", Some("wrong-token-wrong-token"), Some("{}".into()), 401),
        ("POST", "/v1/relays/heartbeat", Some(CLUSTER_TOKEN), Some("{}".into()), 400),
        ("POST", "/v1/relays/heartbeat", Some(CLUSTER_TOKEN), Some(r#"{"relay_id": "x"}"#.into()), 400),
        ("POST", "/v1/admin/keys/rotate", Some(player), None, 403),
        ("POST", "/v1/admin/tokens", Some(admin), Some(r#"{"sub": "a:b", "role": "player"}"#.into()), 400),
        ("POST", "/v1/admin/tokens", Some(admin), Some(r#"{"sub": "a", "role": "god"}"#.into()), 400),
        ("POST", "/v1/admin/tokens", Some(admin), Some(r#"{"sub": "a", "role": "player", "ttl_secs": 0}"#.into()), 400),
        ("POST", "/v1/admin/tokens", Some(machine), Some(r#"{"sub": "a", "role": "admin"}"#.into()), 403),
        ("GET", "/v1/admin/status", Some(machine), None, 403),
        ("GET", "/v1/nothing-here", None, None, 404),
        ("DELETE", "/v1/sessions", Some(admin), None, 405),
        ("GET", "/v1/ice-config", Some(player), None, 405),
        ("POST", "/v1/sessions/ses_nope/ice-config", Some(player), None, 404),
        ("POST", "/v1/sessions/ses_00000000000000000000/ice-config", Some(machine), None, 404),
        ("GET", "/v1/ws", None, None, 401),
        ("GET", "/v1/ws?token=garbage", None, None, 401),
    ];
    for (method, path, token, body, expected) in cases {
        let mut req = s.http.request(method.parse().unwrap(), format!("{}{path}", s.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body.clone() {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let short: String = body.unwrap_or_default().chars().take(60).collect();
        assert_eq!(status, expected, "{method} {path} {short}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert!(v["error"]["code"].is_string() && v["error"]["message"].is_string(), "{method} {path}: {v}");
    }
    // A body without a JSON content type.
    let resp = s.http.post(format!("{}/v1/ice-config", s.url)).bearer_auth(player).body("{}").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 415);
}

/// A relay heartbeat that reports an SFU at `sfu_url`.
async fn heartbeat_sfu(s: &Signaling, id: &str, region: &str, port: u16, sfu_url: Option<&str>) -> (u16, Value) {
    let mut hb = common::heartbeat_json(id, region, port, "serving", 0.1);
    hb["sfu_url"] = json!(sfu_url);
    s.call("POST", "/v1/relays/heartbeat", Some(CLUSTER_TOKEN), Some(hb)).await
}

/// Relays' link ports in the registry.
async fn link_port_suite(backend: &str) {
    // A relay's link port is registered with it, and forgotten when it stops reporting one (on a
    // signaling of its own: this relay takes no part in the SFU suite's placements).
    let s = Signaling::start(backend, "");
    let admin = s.token("ops", "admin");
    let link = |port: Value| {
        let mut hb = common::heartbeat_json("link-1", "eu-central", 3999, "serving", 0.1);
        hb["link_port"] = port;
        hb
    };
    let listed_link = || async {
        let (_, listed) = s.call("GET", "/v1/relays", Some(&admin), None).await;
        listed["relays"].as_array().unwrap().iter().find(|r| r["id"] == "link-1").unwrap()["link_port"].clone()
    };
    let (status, body) = s.call("POST", "/v1/relays/heartbeat", Some(CLUSTER_TOKEN), Some(link(json!(4433)))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(listed_link().await, json!(4433));
    let (status, body) = s.call("POST", "/v1/relays/heartbeat", Some(CLUSTER_TOKEN), Some(link(json!(0)))).await;
    assert_eq!((status, body["error"]["message"].as_str()), (400, Some("link_port: must be a port (1-65535)")));
    let (status, _) = s.call("POST", "/v1/relays/heartbeat", Some(CLUSTER_TOKEN), Some(link(json!(null)))).await;
    assert_eq!(status, 200);
    assert_eq!(listed_link().await, json!(null));
}

/// SFU sessions: the machine's home SFU relay, WHEP/WHIP URLs and media tokens the relays verify
/// with the TURN secret, spectators.
async fn sfu_suite(backend: &str) {
    use cluster::media::{MediaRole, verify};
    let s = Signaling::start(backend, "");
    let alice = s.token("alice", "player");
    let bob = s.token("bob", "player");
    let admin = s.token("ops", "admin");
    let machine = s.token("cab-1", "machine");
    for bad in ["ftp://127.0.0.1:8088", "http://127.0.0.1:8088/?q=1", "not a url"] {
        let (st, body) = heartbeat_sfu(&s, "eu-1", "eu-central", 40001, Some(bad)).await;
        assert_eq!(st, 400, "{bad}: {body}");
    }
    heartbeat_sfu(&s, "eu-1", "eu-central", 40001, Some("http://127.0.0.1:8088")).await;
    heartbeat_sfu(&s, "us-1", "us-east", 40002, Some("https://sfu-us.example.com")).await;
    heartbeat_sfu(&s, "ap-1", "ap-southeast", 40003, None).await;
    let rtts = json!({ "name": "Cabinet 1", "rtts": { "eu-central": 90.0, "us-east": 30.0, "ap-southeast": 20.0 } });
    let (st, body) = s.call("POST", "/v1/machines/register", Some(&machine), Some(rtts)).await;
    assert_eq!(st, 200, "{body}");

    let (st, body) =
        s.call("POST", "/v1/sessions", Some(&alice), Some(json!({ "machine_id": "cab-1", "mode": "mesh" }))).await;
    assert_eq!(st, 400, "{body}");
    // The machine is nearest ap-southeast, which has no SFU: its home SFU is us-east.
    let (st, session) = s
        .call(
            "POST",
            "/v1/sessions",
            Some(&alice),
            Some(json!({ "machine_id": "cab-1", "mode": "sfu", "probes": probes(10.0, 80.0, 200.0) })),
        )
        .await;
    assert_eq!(st, 201, "{session}");
    let id = session["session_id"].as_str().unwrap().to_owned();
    assert_eq!(session["mode"], "sfu");
    assert_eq!(session["sfu"]["relay"], "us-1");
    assert_eq!(session["sfu"]["whep_url"], format!("https://sfu-us.example.com/whep/{id}"));
    let keys = [SEED_SECRET.as_bytes().to_vec()];
    let claims = verify(&keys, session["sfu"]["token"].as_str().unwrap(), unix_now()).unwrap();
    assert_eq!((claims.role, claims.machine.as_str(), claims.sub.as_str()), (MediaRole::Player, "cab-1", "alice"));
    assert_eq!(claims.session.as_deref(), Some(id.as_str()));
    // The player still gets TURN for its own region, to reach the SFU through.
    assert!(session["ice"]["iceServers"][0]["urls"][0].as_str().unwrap().starts_with("turn:"));

    // The machine learns where to publish from its heartbeat.
    let (_, hb) = s.call("POST", "/v1/machines/heartbeat", Some(&machine), Some(json!({}))).await;
    assert_eq!(hb["sfu"]["whip_url"], "https://sfu-us.example.com/whip/cab-1");
    let claims = verify(&keys, hb["sfu"]["token"].as_str().unwrap(), unix_now()).unwrap();
    assert_eq!((claims.role, claims.machine.as_str()), (MediaRole::Publisher, "cab-1"));

    // Spectators watch the same room; the session's player watching again is the player.
    let (st, watch) = s.call("POST", &format!("/v1/sessions/{id}/watch"), Some(&bob), None).await;
    assert_eq!(st, 200, "{watch}");
    assert_eq!(watch["whep_url"], session["sfu"]["whep_url"]);
    assert_eq!(verify(&keys, watch["token"].as_str().unwrap(), unix_now()).unwrap().role, MediaRole::Spectator);
    let (_, again) = s.call("POST", &format!("/v1/sessions/{id}/watch"), Some(&alice), None).await;
    assert_eq!(again["role"], "player");
    assert_eq!(s.call("POST", "/v1/sessions/ses_nope/watch", Some(&bob), None).await.0, 404);
    assert_eq!(s.call("POST", &format!("/v1/sessions/{id}/watch"), Some(&machine), None).await.0, 403);

    let (_, detail) = s.call("GET", &format!("/v1/sessions/{id}"), Some(&admin), None).await;
    let kinds: Vec<&str> = detail["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["requested", "region_chosen", "sfu_relay_chosen"]);
    // Every relay's heartbeat reply lists the sfu sessions that have ended (their media tokens
    // are refused): none while this one is live.
    let (_, reply) = heartbeat_sfu(&s, "eu-1", "eu-central", 40001, Some("http://127.0.0.1:8088")).await;
    assert_eq!(reply["ended_sessions"], json!([]), "{reply}");
    assert_eq!(s.call("POST", &format!("/v1/sessions/{id}/end"), Some(&alice), None).await.0, 200);
    assert_eq!(s.call("POST", &format!("/v1/sessions/{id}/watch"), Some(&bob), None).await.0, 409);
    for (relay, region, port, sfu) in
        [("eu-1", "eu-central", 40001, Some("http://127.0.0.1:8088")), ("ap-1", "ap-southeast", 40003, None)]
    {
        let (_, reply) = heartbeat_sfu(&s, relay, region, port, sfu).await;
        assert_eq!(reply["ended_sessions"], json!([id]), "{relay}: {reply}");
    }

    // A direct session cannot be watched.
    let (st, direct) = s.call("POST", "/v1/sessions", Some(&alice), Some(json!({ "machine_id": "cab-1" }))).await;
    assert_eq!(st, 201, "{direct}");
    assert!(direct["sfu"].is_null());
    let did = direct["session_id"].as_str().unwrap();
    assert_eq!(s.call("POST", &format!("/v1/sessions/{did}/watch"), Some(&bob), None).await.0, 409);
    assert_eq!(s.call("POST", &format!("/v1/sessions/{did}/end"), Some(&alice), None).await.0, 200);
    // It has no media tokens to refuse.
    let (_, reply) = heartbeat_sfu(&s, "us-1", "us-east", 40002, Some("https://sfu-us.example.com")).await;
    assert_eq!(reply["ended_sessions"], json!([id]), "{reply}");

    // With no SFU relay in rotation an sfu session is refused (503), a direct one is not.
    for id in ["eu-1", "us-1"] {
        assert_eq!(s.call("POST", &format!("/v1/relays/{id}/drain"), Some(&admin), None).await.0, 200);
    }
    let (st, body) =
        s.call("POST", "/v1/sessions", Some(&alice), Some(json!({ "machine_id": "cab-1", "mode": "sfu" }))).await;
    assert_eq!(st, 503, "{body}");
}

/// The whole path of an sfu session: a player far from the machine's home relay watches at its
/// own region's relay, linked to the home relay, when that path is shorter end to end (the
/// relays' link RTTs from their heartbeats); a player near the home relay watches there.
async fn linked_path_suite(backend: &str) {
    use cluster::media::{HomeRelay, verify};
    let s = Signaling::start(backend, "");
    let alice = s.token("alice", "player");
    let machine = s.token("cab-1", "machine");
    let admin = s.token("ops", "admin");
    let relay = |id: &str, region: &str, port: u16, link_port: u16, rtts: Value| {
        let mut hb = common::heartbeat_json(id, region, port, "serving", 0.1);
        hb["sfu_url"] = json!(format!("https://sfu-{id}.example.com"));
        hb["link_port"] = json!(link_port);
        hb["link_rtts"] = rtts;
        hb
    };
    let hb = |body: Value| s.call("POST", "/v1/relays/heartbeat", Some(CLUSTER_TOKEN), Some(body));
    let (st, eu) = hb(relay("eu-1", "eu-central", 40001, 4433, json!({ "ap-1": 150.0 }))).await;
    assert_eq!(st, 200, "{eu}");
    let (st, ap) = hb(relay("ap-1", "ap-southeast", 40003, 4434, json!({ "eu-1": 160.0 }))).await;
    assert_eq!(st, 200, "{ap}");
    // Each relay is told the others that take links.
    assert_eq!(ap["link_peers"], json!([{ "id": "eu-1", "link": "127.0.0.1:4433" }]), "{ap}");
    let (_, eu) = hb(relay("eu-1", "eu-central", 40001, 4433, json!({ "ap-1": 150.0 }))).await;
    assert_eq!(eu["link_peers"], json!([{ "id": "ap-1", "link": "127.0.0.1:4434" }]), "{eu}");
    for bad in [json!({ "ap-1": -1.0 }), json!({ "Not An Id": 3.0 }), json!({ "ap-1": "fast" })] {
        let (st, body) = hb(relay("eu-1", "eu-central", 40001, 4433, bad.clone())).await;
        assert_eq!(st, 400, "{bad}: {body}");
    }
    let (_, listed) = s.call("GET", "/v1/relays", Some(&admin), None).await;
    let eu_row = listed["relays"].as_array().unwrap().iter().find(|r| r["id"] == "eu-1").unwrap().clone();
    assert_eq!(eu_row["link_rtts"], json!({ "ap-1": 150.0 }), "{eu_row}");
    // The machine is in Europe: its home relay is eu-1.
    let rtts = json!({ "name": "Cabinet 1", "rtts": { "eu-central": 5.0, "us-east": 90.0, "ap-southeast": 200.0 } });
    assert_eq!(s.call("POST", "/v1/machines/register", Some(&machine), Some(rtts)).await.0, 200);
    let keys = [SEED_SECRET.as_bytes().to_vec()];

    // Far: 20 ms to ap, 250 ms to eu; 20 + 150 + 1 < 250.
    let (st, far) = s
        .call(
            "POST",
            "/v1/sessions",
            Some(&alice),
            Some(json!({ "machine_id": "cab-1", "mode": "sfu", "probes": probes(250.0, 300.0, 20.0) })),
        )
        .await;
    assert_eq!(st, 201, "{far}");
    let id = far["session_id"].as_str().unwrap().to_owned();
    assert_eq!(
        (far["sfu"]["relay"].as_str(), far["sfu"]["region"].as_str()),
        (Some("ap-1"), Some("ap-southeast")),
        "{far}"
    );
    assert_eq!(far["sfu"]["whep_url"], format!("https://sfu-ap-1.example.com/whep/{id}"));
    let claims = verify(&keys, far["sfu"]["token"].as_str().unwrap(), unix_now()).unwrap();
    assert_eq!(claims.home, Some(HomeRelay { id: "eu-1".into(), link: "127.0.0.1:4433".into() }));
    // The machine still publishes at home.
    let (_, mhb) = s.call("POST", "/v1/machines/heartbeat", Some(&machine), Some(json!({}))).await;
    assert_eq!(mhb["sfu"]["whip_url"], "https://sfu-eu-1.example.com/whip/cab-1", "{mhb}");
    let (_, detail) = s.call("GET", &format!("/v1/sessions/{id}"), Some(&admin), None).await;
    let kinds: Vec<&str> = detail["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["requested", "region_chosen", "sfu_relay_chosen", "sfu_viewer_relay_chosen"]);
    // A far spectator with its probes watches at its own region's relay too; without probes, at
    // home.
    let bob = s.token("bob", "player");
    let watch_path = format!("/v1/sessions/{id}/watch");
    let watch = |body: Option<Value>| s.call("POST", &watch_path, Some(&bob), body);
    let (st, far_watch) = watch(Some(json!({ "probes": probes(250.0, 300.0, 20.0) }))).await;
    assert_eq!((st, far_watch["relay"].as_str()), (200, Some("ap-1")), "{far_watch}");
    assert_eq!(far_watch["whep_url"], format!("https://sfu-ap-1.example.com/whep/{id}"));
    let claims = verify(&keys, far_watch["token"].as_str().unwrap(), unix_now()).unwrap();
    assert_eq!(claims.home.map(|h| h.id).as_deref(), Some("eu-1"));
    let (st, home_watch) = watch(None).await;
    assert_eq!((st, home_watch["relay"].as_str()), (200, Some("eu-1")), "{home_watch}");
    assert_eq!(verify(&keys, home_watch["token"].as_str().unwrap(), unix_now()).unwrap().home, None);
    let (st, bad) = watch(Some(json!({ "probes": { "mars": [1.0] } }))).await;
    assert_eq!(st, 400, "{bad}");
    assert_eq!(s.call("POST", &format!("/v1/sessions/{id}/end"), Some(&alice), None).await.0, 200);

    // Near: 20 ms to ap, 30 ms to eu; 171 > 30: at home, and the token names no other relay.
    let (st, near) = s
        .call(
            "POST",
            "/v1/sessions",
            Some(&alice),
            Some(json!({ "machine_id": "cab-1", "mode": "sfu", "probes": probes(30.0, 300.0, 20.0) })),
        )
        .await;
    assert_eq!(st, 201, "{near}");
    assert_eq!(near["sfu"]["relay"], "eu-1", "{near}");
    assert_eq!(verify(&keys, near["sfu"]["token"].as_str().unwrap(), unix_now()).unwrap().home, None);
}

/// A relay at its allocation capacity (one relay port per allocation) gets no new sessions: they
/// go to its region's other relay, then, when both are full, to the next region; the session's
/// selection says which relays were passed over and why; with no relay left with room, 503.
async fn capacity_suite(backend: &str) {
    let s = Signaling::start(backend, "");
    let alice = s.token("alice", "player");
    let machine = s.token("cab-1", "machine");
    let admin = s.token("ops", "admin");
    let s = &s;
    let relay = |id: &'static str, region: &'static str, port: u16, allocations: u64| async move {
        let mut hb = common::heartbeat_json(id, region, port, "serving", 0.1);
        hb["load"]["allocations"] = json!(allocations);
        hb["load"]["max_allocations"] = json!(1000);
        let (st, body) = s.call("POST", "/v1/relays/heartbeat", Some(CLUSTER_TOKEN), Some(hb)).await;
        assert_eq!(st, 200, "{body}");
    };
    relay("eu-1", "eu-central", 40001, 100).await;
    relay("eu-2", "eu-central", 40011, 300).await;
    relay("us-1", "us-east", 40002, 0).await;
    let rtts = json!({ "name": "Cabinet 1", "rtts": { "eu-central": 5.0, "us-east": 90.0, "ap-southeast": 200.0 } });
    assert_eq!(s.call("POST", "/v1/machines/register", Some(&machine), Some(rtts)).await.0, 200);
    // The player is in Europe too: eu-central, its least loaded relay, unless it is full.
    let session = || async {
        let body = json!({ "machine_id": "cab-1", "probes": probes(20.0, 90.0, 250.0) });
        let (st, created) = s.call("POST", "/v1/sessions", Some(&alice), Some(body)).await;
        if st == 201 {
            let id = created["session_id"].as_str().unwrap();
            assert_eq!(s.call("POST", &format!("/v1/sessions/{id}/end"), Some(&alice), None).await.0, 200);
        }
        (st, created)
    };

    let (st, created) = session().await;
    assert_eq!((st, created["relay"]["id"].as_str()), (201, Some("eu-1")), "{created}");
    assert!(created["selection"].get("passed_over").is_none(), "nobody passed over: {created}");

    // eu-1 reports 990 of 1,000 allocations: within the margin (2%), full.
    relay("eu-1", "eu-central", 40001, 990).await;
    let (st, created) = session().await;
    assert_eq!((st, created["relay"]["id"].as_str()), (201, Some("eu-2")), "{created}");
    assert_eq!(created["region"], "eu-central");
    assert_eq!(
        created["selection"]["passed_over"],
        json!([{ "relay": "eu-1", "region": "eu-central", "reason": "full", "allocations": 990, "capacity": 1000 }])
    );
    // The session's record keeps the why.
    let id = created["session_id"].as_str().unwrap();
    let (_, detail) = s.call("GET", &format!("/v1/sessions/{id}"), Some(&admin), None).await;
    assert_eq!(detail["events"][1]["detail"]["passed_over"][0]["relay"], "eu-1", "{detail}");

    // eu-2 fills up too: the next region, and the breakdown says why eu-central was not chosen.
    relay("eu-2", "eu-central", 40011, 1000).await;
    let (st, created) = session().await;
    assert_eq!((st, created["relay"]["id"].as_str()), (201, Some("us-1")), "{created}");
    let scores = created["selection"]["scores"].as_array().unwrap();
    let eu = scores.iter().find(|r| r["region"] == "eu-central").unwrap();
    assert_eq!((&eu["eligible"], &eu["excluded_reason"]), (&json!(false), &json!("full")), "{eu}");
    let passed: Vec<&str> =
        created["selection"]["passed_over"].as_array().unwrap().iter().map(|p| p["relay"].as_str().unwrap()).collect();
    assert_eq!(passed, ["eu-1", "eu-2"]);

    // Nothing with room: 503, saying so; room again, sessions again.
    relay("us-1", "us-east", 40002, 995).await;
    let (st, body) = session().await;
    assert_eq!(st, 503, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("allocation capacity"), "{body}");
    relay("eu-1", "eu-central", 40001, 10).await;
    let (st, created) = session().await;
    assert_eq!((st, created["relay"]["id"].as_str()), (201, Some("eu-1")), "{created}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_on_sqlite() {
    capacity_suite("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_on_postgres() {
    capacity_suite("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sfu_sessions_on_sqlite() {
    link_port_suite("sqlite").await;
    sfu_suite("sqlite").await;
    linked_path_suite("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sfu_sessions_on_postgres() {
    link_port_suite("postgres").await;
    sfu_suite("postgres").await;
    linked_path_suite("postgres").await;
}

/// The database going away under signaling shows in its metrics (and so in the alert
/// `SignalingDatabaseDown` of deploy/prometheus/signaling-rules.yml).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_gone_shows_in_the_metrics() {
    use sqlx::Connection;
    let url = common::fresh_postgres_database();
    let s = Signaling::start_on_postgres(&url);
    let up = |metrics: &str| metrics.lines().find_map(|l| l.strip_prefix("signaling_database_up ")).map(str::to_owned);
    let metrics = || async { s.call("GET", "/metrics", None, None).await.1.as_str().unwrap_or_default().to_owned() };
    let seen =
        eventually(Duration::from_secs(5), || async { (up(&metrics().await).as_deref() == Some("1")).then_some(()) })
            .await;
    assert!(seen.is_some(), "signaling_database_up 1 while the database answers");
    let base = std::env::var("SIGNALING_TEST_POSTGRES_URL").unwrap();
    let name = url.rsplit_once('/').unwrap().1.to_owned();
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::Executor::execute(&mut admin, format!("DROP DATABASE {name} WITH (FORCE)").as_str()).await.unwrap();
    let seen =
        eventually(Duration::from_secs(10), || async { (up(&metrics().await).as_deref() == Some("0")).then_some(()) })
            .await;
    assert!(seen.is_some(), "signaling_database_up 0 once the database is gone:\n{}", metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_on_sqlite() {
    suite("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_on_postgres() {
    suite("postgres").await;
}
