//! Direct mode over WebSockets: a machine learns about a new session on its socket, SDP and
//! candidates pass between player and machine (and nobody else), and `bye` ends the session.

mod common;

use std::time::Duration;

use common::Signaling;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(s: &Signaling, token: &str, in_query: bool) -> Socket {
    let base = s.url.replace("http://", "ws://");
    let (ws, _) = if in_query {
        tokio_tungstenite::connect_async(format!("{base}/v1/ws?token={token}")).await.expect("connect")
    } else {
        let mut req = format!("{base}/v1/ws").into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.expect("connect")
    };
    ws
}

async fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON text message (pings skipped), or panics after 5 s.
async fn next(ws: &mut Socket) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a message within 5 s");
        match msg.expect("socket open").expect("no error") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(_) => panic!("socket closed"),
            _ => {}
        }
    }
}

/// Asserts nothing arrives for a short while.
async fn silent(ws: &mut Socket) {
    if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
        panic!("unexpected message {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdp_and_candidates_flow_between_the_parties() {
    let s = Signaling::start("sqlite", "");
    let (player, machine, mallory) =
        (s.token("alice", "player"), s.token("cab-1", "machine"), s.token("mallory", "player"));
    s.heartbeat("eu-1", "eu-central", 40001, "serving", 0.1).await;
    s.call("POST", "/v1/machines/register", Some(&machine), Some(json!({ "rtts": { "eu-central": 10.0 } }))).await;

    // Unauthenticated or admin sockets are refused before the upgrade.
    let base = s.url.replace("http://", "ws://");
    assert!(tokio_tungstenite::connect_async(format!("{base}/v1/ws")).await.is_err());
    assert!(tokio_tungstenite::connect_async(format!("{base}/v1/ws?token=nope")).await.is_err());
    assert!(tokio_tungstenite::connect_async(format!("{base}/v1/ws?token={}", s.token("ops", "admin"))).await.is_err());

    let mut m = connect(&s, &machine, false).await;
    let (st, session) = s.call("POST", "/v1/sessions", Some(&player), Some(json!({ "machine_id": "cab-1" }))).await;
    assert_eq!(st, 201, "{session}");
    let id = session["session_id"].as_str().unwrap().to_owned();

    // The machine hears about the session, with its own credentials for the same relay.
    let notice = next(&mut m).await;
    assert_eq!(notice["type"], "session");
    assert_eq!(notice["session"]["id"], id.as_str());
    assert_eq!(notice["ice"]["relay"]["id"], "eu-1");
    assert!(notice["ice"]["iceServers"][0]["credential"].is_string());

    // The player opens its socket after sending the offer: the offer waits for nobody, and the
    // machine's answer, sent before the player connects, is queued for it.
    let mut p0 = connect(&s, &player, true).await;
    send(&mut p0, json!({ "type": "offer", "session_id": id, "sdp": "v=0 offer" })).await;
    let offer = next(&mut m).await;
    assert_eq!(offer, json!({ "type": "offer", "session_id": id, "sdp": "v=0 offer", "from": "player" }));
    drop(p0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut m, json!({ "type": "answer", "session_id": id, "sdp": "v=0 answer" })).await;
    let mut p = connect(&s, &player, true).await;
    let answer = next(&mut p).await;
    assert_eq!(answer["type"], "answer");
    assert_eq!(answer["from"], "machine");

    // Candidates both ways, extra fields passed through.
    let cand = json!({ "type": "candidate", "session_id": id, "candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ relay", "sdpMid": "0", "sdpMLineIndex": 0 });
    send(&mut p, cand.clone()).await;
    let got = next(&mut m).await;
    assert_eq!(got["candidate"], cand["candidate"]);
    assert_eq!(got["sdpMid"], "0");
    send(&mut m, json!({ "type": "candidate", "session_id": id, "candidate": "" })).await;
    assert_eq!(next(&mut p).await["from"], "machine");

    // Another player cannot inject into the session, nor learn it exists.
    let mut x = connect(&s, &mallory, true).await;
    send(&mut x, json!({ "type": "offer", "session_id": id, "sdp": "evil" })).await;
    let refused = next(&mut x).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["message"], "no such session");
    silent(&mut m).await;

    // Malformed frames get an error, and the socket stays usable.
    p.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(next(&mut p).await["type"], "error");
    send(&mut p, json!({ "type": "teleport", "session_id": id })).await;
    assert!(next(&mut p).await["message"].as_str().unwrap().contains("unknown message type"));
    send(&mut p, json!({ "type": "offer" })).await;
    assert!(next(&mut p).await["message"].as_str().unwrap().contains("session_id"));
    p.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(next(&mut p).await["type"], "error");

    // Connected, then the machine says bye: both learn it ended, and the history shows it.
    // The two sockets are served concurrently: wait until "connected" is recorded before "bye".
    send(&mut p, json!({ "type": "connected", "session_id": id })).await;
    let admin = s.token("ops", "admin");
    let recorded = common::eventually(Duration::from_secs(5), || async {
        let (_, d) = s.call("GET", &format!("/v1/sessions/{id}"), Some(&admin), None).await;
        (d["status"] == "connected").then_some(())
    })
    .await;
    assert!(recorded.is_some(), "connected was recorded");
    send(&mut m, json!({ "type": "bye", "session_id": id, "reason": "game_over" })).await;
    let ended = next(&mut p).await;
    assert_eq!(ended, json!({ "type": "ended", "session_id": id, "reason": "game_over" }));
    assert_eq!(next(&mut m).await["type"], "ended");
    let (_, detail) = s.call("GET", &format!("/v1/sessions/{id}"), Some(&s.token("ops", "admin")), None).await;
    let kinds: Vec<&str> = detail["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["requested", "region_chosen", "connected", "ended"]);
    assert_eq!(detail["ended_by"], "machine");
    send(&mut p, json!({ "type": "offer", "session_id": id, "sdp": "late" })).await;
    assert_eq!(next(&mut p).await["message"], "session has ended");

    // An oversized frame closes that socket only.
    let huge = "x".repeat(100 * 1024);
    let _ = p.send(Message::Text(json!({ "type": "offer", "session_id": id, "sdp": huge }).to_string().into())).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match p.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "oversized frame did not close the socket");
    assert_eq!(s.call("GET", "/healthz", None, None).await.0, 200);
}

/// Two signaling instances on one PostgreSQL database, as behind a load balancer: the machine's
/// socket is on one, the player's requests and socket on the other, and messages still flow,
/// including one sent before its recipient connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_instances_on_postgres() {
    let url = common::fresh_postgres_database();
    let a = Signaling::start_on_postgres(&url);
    let b = Signaling::start_on_postgres(&url);
    let (player, machine) = (a.token("alice", "player"), a.token("cab-1", "machine"));
    a.heartbeat("eu-1", "eu-central", 40001, "serving", 0.1).await;
    a.call("POST", "/v1/machines/register", Some(&machine), Some(json!({}))).await;

    let mut m = connect(&a, &machine, false).await;
    // The listener of each instance is up shortly after start; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, session) = b.call("POST", "/v1/sessions", Some(&player), Some(json!({ "machine_id": "cab-1" }))).await;
    assert_eq!(st, 201, "{session}");
    let id = session["session_id"].as_str().unwrap().to_owned();
    let notice = next(&mut m).await;
    assert_eq!(notice["type"], "session");
    assert_eq!(notice["session"]["id"], id.as_str());

    // The machine answers before the player has a socket anywhere: it waits in the store.
    send(&mut m, json!({ "type": "candidate", "session_id": id, "candidate": "early" })).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut p = connect(&b, &player, true).await;
    assert_eq!(next(&mut p).await["candidate"], "early");

    // Many messages both ways keep their order.
    for i in 0..20 {
        send(&mut p, json!({ "type": "candidate", "session_id": id, "candidate": format!("p{i}") })).await;
    }
    for i in 0..20 {
        assert_eq!(next(&mut m).await["candidate"], format!("p{i}"));
    }
    for i in 0..20 {
        send(&mut m, json!({ "type": "candidate", "session_id": id, "candidate": format!("m{i}") })).await;
    }
    for i in 0..20 {
        assert_eq!(next(&mut p).await["candidate"], format!("m{i}"));
    }
    silent(&mut m).await;

    // Ending through instance A reaches the player on B.
    let (st, _) =
        a.call("POST", &format!("/v1/sessions/{id}/end"), Some(&machine), Some(json!({ "reason": "done" }))).await;
    assert_eq!(st, 200);
    assert_eq!(next(&mut p).await, json!({ "type": "ended", "session_id": id, "reason": "done" }));
    assert_eq!(next(&mut m).await["type"], "ended");
}
