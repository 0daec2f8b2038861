//! The alert drill: the monitoring shipped in deploy/ against a live deployment on loopback.
//! Debian's `prometheus` and `prometheus-alertmanager` (installed by scripts/test.sh) run with
//! deploy/prometheus/ and deploy/alertmanager/ as shipped, only their addresses rewritten to
//! loopback; signaling and a relay with its SFU run as in production; a machine publishes its
//! camera from headless Chromium over WHIP and a player watches it in another Chromium over WHEP.
//! Then the machine's video stops (its browser is killed, the machine itself still heartbeats):
//! the MachineVideoStopped alert for that machine must reach the game hall's Telegram chat (a
//! local HTTP receiver speaking Telegram's Bot API, where Alertmanager's `api_url` points) within
//! 90 seconds, naming the machine. The time from the stop to the message is printed. Then every
//! PromQL expression of the Grafana dashboard (deploy/grafana/remote-play.json) must return data
//! from that Prometheus: a panel that shows nothing is a bug. Two relays in two regions, linked,
//! so that the regions' and links' panels have something to show.

mod common;
// The relay's headless-browser helpers (serve pages, open Chromium, collect their reports).
#[path = "../../relay/tests/common/browser.rs"]
#[allow(dead_code)]
mod browser;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use browser::{Browser, PAGE_COMMON as COMMON, Reports, serve_pages, url};
use common::relay::Relay;
use common::{Signaling, eventually, unix_now};
use serde_json::{Value, json};

/// The machine of the drill: its id is what the alert must name.
const MACHINE: &str = "hall7-coin-pusher";
/// The deadline of issue 20's Done-when 2.
const DEADLINE: Duration = Duration::from_secs(90);

/// The machine: its fake camera and microphone over WHIP.
const PUBLISHER: &str = r#"<title>machine</title><script>
(async () => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 360, frameRate: 30}, audio: true});
    const pc = new RTCPeerConnection();
    for (const track of stream.getTracks()) pc.addTransceiver(track, {direction: 'sendonly'});
    pc.createDataChannel('input');
    if (!await exchange(pc, q.get('whip'))) return;
    setInterval(async () => {
      let frames = 0;
      (await pc.getStats()).forEach((s) => { if (s.type === 'outbound-rtp' && s.kind === 'video') frames += s.framesEncoded || 0; });
      report({state: pc.connectionState, framesEncoded: frames});
    }, 500);
  } catch (e) { report({error: String(e)}); }
})();
</script>"#;

/// The player: watches over WHEP and reports the frames it decodes.
const VIEWER: &str = r#"<title>player</title><body><script>
(async () => {
  try {
    const pc = new RTCPeerConnection();
    pc.addTransceiver('video', {direction: 'recvonly'});
    pc.addTransceiver('audio', {direction: 'recvonly'});
    pc.ontrack = (e) => {
      if (e.track.kind !== 'video') return;
      const v = document.createElement('video');
      v.muted = true; v.autoplay = true; v.playsInline = true;
      v.srcObject = new MediaStream([e.track]);
      document.body.appendChild(v);
      v.play().catch(() => {});
    };
    pc.createDataChannel('input');
    if (!await exchange(pc, q.get('whep'))) return;
    setInterval(async () => {
      let frames = 0;
      (await pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') frames += s.framesDecoded || 0; });
      report({state: pc.connectionState, framesDecoded: frames});
    }, 500);
  } catch (e) { report({error: String(e)}); }
})();
</script>"#;

/// A process killed (and reaped) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the receiver was sent: when, the request path, and the body.
type Received = Arc<Mutex<Vec<(Instant, String, String)>>>;

/// A local stand-in for Telegram's Bot API (`POST /bot<token>/<method>`, answered as Telegram
/// answers) and for the generic webhook (`POST /alerts`), recording every request.
async fn receiver(received: Received) -> SocketAddr {
    use axum::extract::{OriginalUri, State};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .fallback(|State(r): State<Received>, OriginalUri(uri): OriginalUri, body: String| async move {
            let path = uri.path().to_owned();
            r.lock().unwrap().push((Instant::now(), path.clone(), body));
            let chat = json!({ "id": -1000000000000_i64, "type": "supergroup", "title": "hall operators" });
            let bot = json!({ "id": 1, "is_bot": true, "first_name": "alerts", "username": "halls_alerts_bot" });
            let result = if path.ends_with("/getMe") {
                bot
            } else {
                json!({ "message_id": 1, "date": unix_now(), "chat": chat, "from": bot, "text": "" })
            };
            axum::Json(json!({ "ok": true, "result": result }))
        })
        .with_state(received);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A free loopback port (bound and released; the daemon that gets it binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// deploy/prometheus/prometheus.yml with each example target in `targets` replaced by its
/// address here and the other example targets (relays of regions not in the drill) left out,
/// its Alertmanager at `alertmanager`.
fn prometheus_config(targets: &[(&str, String)], alertmanager: SocketAddr) -> String {
    let shipped = std::fs::read_to_string(repo_root().join("deploy/prometheus/prometheus.yml")).unwrap();
    let mut out = Vec::new();
    let mut used = 0;
    let mut skip_labels = false;
    for line in shipped.lines() {
        if skip_labels && line.trim_start().starts_with("labels:") {
            skip_labels = false;
            continue;
        }
        skip_labels = false;
        if line.contains("\"127.0.0.1:9093\"") {
            out.push(line.replace("127.0.0.1:9093", &alertmanager.to_string()));
            used += 1;
        } else if line.trim_start().starts_with("- targets: [\"10.") {
            match targets.iter().find(|(example, _)| line.contains(&format!("\"{example}\""))) {
                Some((example, here)) => {
                    out.push(line.replace(example, here));
                    used += 1;
                }
                None => skip_labels = true,
            }
        } else {
            out.push(line.to_owned());
        }
    }
    assert_eq!(used, targets.len() + 1, "every target rewritten:\n{}", out.join("\n"));
    out.join("\n") + "\n"
}

/// deploy/alertmanager/alertmanager.yml with Telegram's API and the webhook at `receiver`.
fn alertmanager_config(receiver: SocketAddr) -> String {
    let shipped = std::fs::read_to_string(repo_root().join("deploy/alertmanager/alertmanager.yml")).unwrap();
    for shipped_url in ["api_url: https://api.telegram.org", "url: http://127.0.0.1:9099/alerts"] {
        assert_eq!(shipped.matches(shipped_url).count(), 1, "{shipped_url} in alertmanager.yml");
    }
    shipped
        .replace("api_url: https://api.telegram.org", &format!("api_url: http://{receiver}"))
        .replace("url: http://127.0.0.1:9099/alerts", &format!("url: http://{receiver}/alerts"))
}

/// Starts Prometheus and Alertmanager in `dir` with the rewritten configurations.
fn start_monitoring(
    dir: &Path,
    prometheus: SocketAddr,
    alertmanager: SocketAddr,
    config: (String, String),
) -> [Daemon; 2] {
    for rules in ["relay-rules.yml", "signaling-rules.yml"] {
        std::fs::copy(repo_root().join("deploy/prometheus").join(rules), dir.join(rules)).unwrap();
    }
    std::fs::write(dir.join("prometheus.yml"), config.0).unwrap();
    std::fs::write(dir.join("alertmanager.yml"), config.1).unwrap();
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let am = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", dir.join("alertmanager.yml").display()))
        .arg(format!("--storage.path={}", dir.join("alertmanager-data").display()))
        .arg(format!("--web.listen-address={alertmanager}"))
        // One Alertmanager: no gossip port.
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(log("alertmanager.log"))
        .spawn()
        .expect("prometheus-alertmanager is installed (scripts/test.sh installs it)");
    let am = Daemon(am);
    let prom = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()))
        .arg(format!("--web.listen-address={prometheus}"))
        .stdout(Stdio::null())
        .stderr(log("prometheus.log"))
        .spawn()
        .expect("prometheus is installed (scripts/test.sh installs it)");
    [Daemon(prom), am]
}

/// An instant query against Prometheus's HTTP API: the result vector.
async fn query(http: &reqwest::Client, prometheus: SocketAddr, promql: &str) -> Option<Vec<Value>> {
    let res = http.get(format!("http://{prometheus}/api/v1/query")).query(&[("query", promql)]).send().await.ok()?;
    let body: Value = res.json().await.ok()?;
    assert_ne!(body["status"], "error", "{promql}: {body}");
    body["data"]["result"].as_array().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_whose_video_stops_pages_the_halls_telegram_chat_within_90_seconds() {
    let dir = std::env::temp_dir().join(format!("alert-drill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // The deployment: signaling, two relays with their SFUs in two regions, linked, and the
    // machine heartbeating as its agent would (every second, before and after its video stops).
    let s = Signaling::start("sqlite", "");
    let admin = s.token("ops", "admin");
    let player = s.token("alice", "player");
    let machine = s.token(MACHINE, "machine");
    let ca = cluster::pki::Authority::generate("cluster", cluster::pki::Validity::days_from(unix_now(), 1)).unwrap();
    let relay = Relay::linked(&s.url, "eu-1", "eu-central", (34000, 34499), &ca, &dir);
    let edge = Relay::linked(&s.url, "ap-1", "ap-southeast", (34500, 34999), &ca, &dir);
    eventually(Duration::from_secs(20), || async {
        let (_, relays) = s.call("GET", "/v1/relays", Some(&admin), None).await;
        let list = relays["relays"].as_array()?;
        let linked = |r: &&Value| r["links"].as_array().is_some_and(|l| l.iter().any(|l| l["rtt_ms"].is_number()));
        (list.iter().filter(|r| r["sfu_url"].is_string()).count() == 2 && list.iter().filter(linked).count() == 2)
            .then_some(())
    })
    .await
    .expect("the relays register with their SFU URLs and link");
    let rtts = json!({ "name": "Hall 7 coin pusher", "rtts": { "eu-central": 20.0 } });
    assert_eq!(s.call("POST", "/v1/machines/register", Some(&machine), Some(rtts)).await.0, 200);
    let beat = {
        let (http, url, token) = (http.clone(), format!("{}/v1/machines/heartbeat", s.url), machine.clone());
        tokio::spawn(async move {
            loop {
                let _ = http.post(&url).bearer_auth(&token).json(&json!({})).send().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let probes = json!({ "eu-central": [20.0, 21.0, 20.0], "us-east": [120.0, 121.0], "ap-southeast": [200.0] });
    let body = json!({ "machine_id": MACHINE, "mode": "sfu", "probes": probes });
    let (st, session) = s.call("POST", "/v1/sessions", Some(&player), Some(body)).await;
    assert_eq!(st, 201, "{session}");
    let (_, hb) = s.call("POST", "/v1/machines/heartbeat", Some(&machine), Some(json!({}))).await;

    // The monitoring, from the shipped files.
    let received: Received = Arc::default();
    let tg = receiver(Arc::clone(&received)).await;
    let (prometheus, alertmanager): (SocketAddr, SocketAddr) =
        (format!("127.0.0.1:{}", free_port()).parse().unwrap(), format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let signaling_addr = s.url.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let targets = [
        ("10.0.1.10:9090", relay.admin.to_string()),
        ("10.0.3.10:9090", edge.admin.to_string()),
        ("10.0.1.20:8080", signaling_addr),
    ];
    let config = (prometheus_config(&targets, alertmanager), alertmanager_config(tg));
    let _monitoring = start_monitoring(&dir, prometheus, alertmanager, config);

    // The machine publishes; the player watches and decodes its video.
    let reports: Reports = Arc::default();
    let pages = serve_pages(
        vec![
            ("/machine.html", format!("<!doctype html>{COMMON}{PUBLISHER}")),
            ("/player.html", format!("<!doctype html>{COMMON}{VIEWER}")),
        ],
        Arc::clone(&reports),
    );
    let whip = [("name", "machine"), ("whip", hb["sfu"]["whip_url"].as_str().unwrap())];
    let publisher = Browser::open(&url(
        &format!("http://{pages}/machine.html"),
        &[whip[0], whip[1], ("token", hb["sfu"]["token"].as_str().unwrap())],
    ));
    let _player = Browser::open(&url(
        &format!("http://{pages}/player.html"),
        &[
            ("name", "player"),
            ("whep", session["sfu"]["whep_url"].as_str().unwrap()),
            ("token", session["sfu"]["token"].as_str().unwrap()),
        ],
    ));
    let decoded = |min: u64| {
        browser::latest(&reports, "player", "framesDecoded").and_then(|v| v["framesDecoded"].as_u64()).unwrap_or(0)
            >= min
    };
    eventually(Duration::from_secs(40), || async { decoded(30).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the player decodes the machine's video; reports: {:?}", reports.lock().unwrap()));
    let id = session["session_id"].as_str().unwrap();
    let (st, body) = s.call("POST", &format!("/v1/sessions/{id}/connected"), Some(&player), None).await;
    assert!(st < 300, "{st} {body}");

    // Prometheus scrapes both and sees the machine publishing to a watcher.
    let live = [
        format!("relay_sfu_ingest_bitrate_bps{{machine=\"{MACHINE}\"}} > 0"),
        format!("relay_sfu_subscribers{{machine=\"{MACHINE}\"}} > 0"),
        "up{job=\"relay\"} == 1".to_owned(),
        "up{job=\"signaling\"} == 1".to_owned(),
    ];
    for promql in &live {
        eventually(Duration::from_secs(40), || async {
            query(&http, prometheus, promql).await.filter(|r| !r.is_empty()).map(|_| ())
        })
        .await
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
            panic!("Prometheus never saw {promql}; its log:\n{log}")
        });
    }
    assert!(
        !received
            .lock()
            .unwrap()
            .iter()
            .any(|(_, _, body)| body.contains("MachineVideoStopped") || body.contains(MACHINE)),
        "an alert about the machine while it published: {:?}",
        received.lock().unwrap()
    );

    // The machine's video stops.
    drop(publisher);
    let stopped = Instant::now();
    let telegram = eventually(DEADLINE, || async {
        let got = received.lock().unwrap();
        got.iter()
            .find(|(_, path, body)| path.ends_with("/sendMessage") && body.contains(MACHINE))
            .map(|(at, path, body)| (*at, path.clone(), body.clone()))
    })
    .await;
    let Some((at, path, body)) = telegram else {
        let alerts = query(&http, prometheus, "ALERTS").await;
        let log = std::fs::read_to_string(dir.join("alertmanager.log")).unwrap_or_default();
        panic!(
            "no Telegram message naming {MACHINE} within {DEADLINE:?} of the stop; Prometheus's ALERTS: {alerts:?}; \
             received: {:?}; Alertmanager's log:\n{log}",
            received.lock().unwrap()
        );
    };
    let took = at.duration_since(stopped);
    assert!(took <= DEADLINE, "the message came {took:?} after the stop");
    eprintln!(
        "alert drill: MachineVideoStopped for {MACHINE} reached the Telegram chat {took:.1?} after its video stopped"
    );

    // It is Telegram's sendMessage for the configured bot and chat, firing, naming the machine.
    assert!(path.starts_with("/bot0000000000:replace-with-the-bot-token-from-BotFather/"), "{path}");
    let msg: Value = serde_json::from_str(&body).unwrap_or_else(|_| {
        // Older clients post a form.
        let pairs: serde_json::Map<String, Value> = reqwest::Url::parse(&format!("http://x/?{body}"))
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect();
        Value::Object(pairs)
    });
    assert_eq!(msg["chat_id"].to_string().trim_matches('"'), "-1000000000000", "{msg}");
    let text = msg["text"].as_str().unwrap_or_default();
    assert!(text.contains("FIRING") && text.contains(MACHINE) && text.contains("while players watch"), "{text}");
    // The generic webhook had it as well, as Alertmanager's JSON.
    let hook = eventually(Duration::from_secs(10), || async {
        let got = received.lock().unwrap();
        got.iter()
            .find(|(_, path, body)| path == "/alerts" && body.contains("MachineVideoStopped"))
            .map(|r| r.2.clone())
    })
    .await
    .expect("the webhook gets the alert too");
    let hook: Value = serde_json::from_str(&hook).unwrap();
    let alert = &hook["alerts"][0];
    assert_eq!(alert["labels"]["machine"], MACHINE, "{hook}");
    assert_eq!(alert["labels"]["severity"], "page", "{hook}");

    // Every expression of the Grafana dashboard returns data from this Prometheus.
    dashboard_queries_return_data(&http, prometheus).await;
    beat.abort();
    drop((relay, edge));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs every PromQL expression of deploy/grafana/remote-play.json against `prometheus`, with
/// its variables at "All" (and Grafana's `$__rate_interval` at 1m), and fails naming each one
/// that returns no series; the variables' `label_values(...)` queries must find values too.
async fn dashboard_queries_return_data(http: &reqwest::Client, prometheus: SocketAddr) {
    let file = repo_root().join("deploy/grafana/remote-play.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).expect("the dashboard is JSON");
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_else(|| panic!("a target without expr: {panel}"));
                out.push((panel["title"].as_str().unwrap_or_default().to_owned(), expr.to_owned()));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    assert!(exprs.len() >= 20, "the dashboard's expressions: {exprs:?}");
    let all = |e: &str| e.replace("$__rate_interval", "1m").replace("$region", ".*").replace("$machine", ".*");
    let mut empty = Vec::new();
    for (title, expr) in &exprs {
        assert!(!all(expr).contains('$'), "{title}: a variable the test does not know in {expr}");
        let found = eventually(Duration::from_secs(20), || async {
            query(http, prometheus, &all(expr)).await.filter(|r| !r.is_empty()).map(|_| ())
        })
        .await;
        if found.is_none() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    // The variables: `label_values(SELECTOR, LABEL)` finds values of LABEL (the drill's machine
    // and both regions among them).
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let mut checked = 0;
    for var in variables.iter().filter(|v| v["type"] == "query") {
        let q = var["query"]["query"].as_str().unwrap();
        let (selector, label) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(", "))
            .unwrap();
        let series = query(http, prometheus, selector).await.unwrap_or_default();
        let values: Vec<&str> = series.iter().filter_map(|s| s["metric"][label].as_str()).collect();
        let expected: &[&str] = match label {
            "machine" => &[MACHINE],
            "region" => &["eu-central", "ap-southeast"],
            other => panic!("a variable the test does not know: {other}"),
        };
        assert!(expected.iter().all(|e| values.contains(e)), "variable {}: {values:?}", var["name"]);
        checked += 1;
    }
    assert_eq!(checked, 2, "the dashboard's variables: {variables:?}");
    assert!(empty.is_empty(), "dashboard panels with no data:\n{}", empty.join("\n"));
    eprintln!("alert drill: all {} dashboard expressions returned data", exprs.len());
}
