//! End to end on loopback with the real binaries: three relays (one per region) register with
//! signaling; a player's ICE config names the relay its probes favour and its TURN credential
//! allocates there with an independent client (webrtc-rs `turn`), while an expired one is
//! refused; a killed relay leaves ICE configs within 6 s; `relayctl relays drain` stops new
//! sessions on a relay. In `sfu` mode, `relayctl sessions seat` hands the seat through signaling
//! to the session's SFU relay, and ending a session cuts its connected viewer (webrtc-rs) off and
//! makes the relay refuse its media token within one heartbeat.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::relay::Relay;
use common::{Signaling, eventually};
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

fn probes_favouring(region: &str) -> Value {
    let mut p = serde_json::Map::new();
    for r in ["eu-central", "us-east", "ap-southeast"] {
        let ms = if r == region { 20.0 } else { 150.0 };
        p.insert(r.into(), json!([ms * 2.0, ms, ms + 1.0, ms, ms - 1.0]));
    }
    Value::Object(p)
}

fn turn_addr(ice: &Value) -> SocketAddr {
    let url = ice["iceServers"][0]["urls"][0].as_str().unwrap();
    let hostport = url.strip_prefix("turn:").unwrap().split('?').next().unwrap();
    hostport.parse().unwrap()
}

/// Allocates with the webrtc-rs TURN client using the ICE config's first server, relays one
/// datagram to a loopback peer and back. Err if the allocation is refused.
async fn allocate_and_relay(ice: &Value) -> Result<(), String> {
    let server = turn_addr(ice).to_string();
    let conn = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.clone(),
        turn_serv_addr: server,
        username: ice["iceServers"][0]["username"].as_str().unwrap().into(),
        password: ice["iceServers"][0]["credential"].as_str().unwrap().into(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .map_err(|e| e.to_string())?;
    client.listen().await.map_err(|e| e.to_string())?;
    let relayed = client.allocate().await.map_err(|e| e.to_string())?;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relayed.send_to(b"hello", peer.local_addr().unwrap()).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(Duration::from_secs(3), peer.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"hello");
    peer.send_to(b"back", from).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), relayed.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"back");
    let _ = relayed.close().await;
    client.close().await.ok();
    Ok(())
}

fn relayctl(s: &Signaling, token: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_relayctl"))
        .args(["--url", &s.url, "--token", token])
        .args(args)
        .output()
        .expect("run relayctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_register_and_serve_the_ice_configs_signaling_hands_out() {
    let s = Signaling::start("sqlite", "");
    let admin = s.token("ops", "admin");
    let player = s.token("alice", "player");
    let mut relays = vec![
        Relay::start(&s.url, "eu-1", "eu-central", (20000, 20999)),
        Relay::start(&s.url, "us-1", "us-east", (21000, 21999)),
        Relay::start(&s.url, "ap-1", "ap-southeast", (22000, 22999)),
    ];
    let serving = eventually(Duration::from_secs(10), || async {
        let (_, r) = s.call("GET", "/v1/relays", Some(&admin), None).await;
        let n = r["relays"].as_array().map_or(0, |a| a.iter().filter(|r| r["status"] == "serving").count());
        (n == 3).then_some(())
    })
    .await;
    assert!(serving.is_some(), "three relays registered");

    // The ICE config names the relay the probes favour, and its credential works there.
    for (region, relay) in [("us-east", 1), ("ap-southeast", 2), ("eu-central", 0)] {
        let (st, ice) =
            s.call("POST", "/v1/ice-config", Some(&player), Some(json!({ "probes": probes_favouring(region) }))).await;
        assert_eq!(st, 200, "{ice}");
        assert_eq!(ice["region"], region);
        assert_eq!(turn_addr(&ice), relays[relay].udp, "{ice}");
        allocate_and_relay(&ice).await.unwrap_or_else(|e| panic!("allocation on {region} refused: {e}"));
        // The alternates' credentials work on their relays too.
        let alt = json!({ "iceServers": ice["alternates"][0]["iceServers"].clone() });
        allocate_and_relay(&alt).await.unwrap_or_else(|e| panic!("alternate refused: {e}"));
    }

    // After a key rotation, new credentials use the new secret, which relays learn from their
    // next heartbeat; credentials signed with the old one keep working meanwhile.
    let (_, old) = s.call("POST", "/v1/ice-config", Some(&player), Some(json!({}))).await;
    let (code, out) = relayctl(&s, &admin, &["keys", "rotate"]);
    assert_eq!(code, 0, "{out}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, new) = s.call("POST", "/v1/ice-config", Some(&player), Some(json!({}))).await;
    assert_ne!(old["iceServers"][0]["credential"], new["iceServers"][0]["credential"]);
    allocate_and_relay(&new).await.expect("credential from the rotated secret");
    allocate_and_relay(&old).await.expect("credential from the previous secret");

    // `relayctl relays drain` stops new sessions on a relay; the relay itself refuses new
    // allocations once told.
    let (code, out) = relayctl(&s, &admin, &["relays", "drain", "us-1"]);
    assert_eq!(code, 0, "{out}");
    let (_, before_drain) =
        s.call("POST", "/v1/ice-config", Some(&player), Some(json!({ "probes": probes_favouring("us-east") }))).await;
    assert_ne!(before_drain["region"], "us-east", "a drained relay got a new session");
    let drained = eventually(Duration::from_secs(6), || async {
        let (_, r) = s.call("GET", "/v1/relays", Some(&admin), None).await;
        let us = r["relays"].as_array()?.iter().find(|r| r["id"] == "us-1")?.clone();
        (us["state"] == "draining").then_some(())
    })
    .await;
    assert!(drained.is_some(), "the relay reported draining after the command");
    let mint = |secret: &str| {
        let c = cluster::credentials::mint(secret.as_bytes(), common::unix_now(), 600, Some("direct")).unwrap();
        json!({ "iceServers": [{ "urls": [format!("turn:{}?transport=udp", relays[1].udp)], "username": c.username, "credential": c.credential }] })
    };
    let (_, hb) = s.heartbeat("probe-only", "us-east", 9, "draining", 0.0).await;
    let secret = hb["secrets"]["keys"][0].as_str().unwrap().to_owned();
    assert!(allocate_and_relay(&mint(&secret)).await.is_err(), "a draining relay took a new allocation");
    let (code, out) = relayctl(&s, &admin, &["relays", "undrain", "us-1"]);
    assert_eq!(code, 0, "{out}");
    let back = eventually(Duration::from_secs(6), || async {
        let (_, ice) = s
            .call("POST", "/v1/ice-config", Some(&player), Some(json!({ "probes": probes_favouring("us-east") })))
            .await;
        (ice["region"] == "us-east").then_some(ice)
    })
    .await
    .expect("undrained relay back in rotation");
    allocate_and_relay(&back).await.expect("allocation after undrain");

    // A killed relay leaves the ICE configs within 6 s.
    let mut us = relays.remove(1);
    us.child.kill().unwrap();
    us.child.wait().unwrap();
    let killed = Instant::now();
    let gone = eventually(Duration::from_secs(8), || async {
        let (_, ice) = s
            .call("POST", "/v1/ice-config", Some(&player), Some(json!({ "probes": probes_favouring("us-east") })))
            .await;
        let names_it = ice["region"] == "us-east"
            || ice["alternates"].as_array().is_some_and(|a| a.iter().any(|x| x["region"] == "us-east"));
        (!names_it).then(|| killed.elapsed())
    })
    .await
    .expect("killed relay left rotation");
    println!("killed relay left the ICE configs after {gone:?}");
    assert!(gone <= Duration::from_millis(6_200), "took {gone:?}");

    // An expired credential from signaling is refused by the relay it names (credentials live
    // 5 s here, so that one expires without a long wait).
    let short = Signaling::start_args("sqlite", "", &["--credential-ttl-secs", "5"]);
    let _eu = Relay::start(&short.url, "eu-9", "eu-central", (23000, 23999));
    let ice = eventually(Duration::from_secs(10), || async {
        let (st, ice) =
            short.call("POST", "/v1/ice-config", Some(&short.token("alice", "player")), Some(json!({}))).await;
        (st == 200).then_some(ice)
    })
    .await
    .expect("ICE config from the short-TTL signaling");
    // The relay applies the secrets of signaling's first reply a moment after signaling lists
    // it (the reply is what brings them): a first attempt in that window gets 401.
    let mut fresh = Err(String::new());
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        fresh = allocate_and_relay(&ice).await;
        if fresh.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fresh.expect("fresh credential");
    let expires = ice["expires_at"].as_u64().unwrap();
    while common::unix_now() <= expires + 1 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let refused = allocate_and_relay(&ice).await;
    assert!(refused.is_err(), "an expired credential allocated");
}

/// An SDP offer from a real WebRTC stack (str0m): video and audio in `direction`, and a data
/// channel, as a WHIP publisher or WHEP viewer sends.
fn offer(direction: str0m::media::Direction) -> String {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut rtc = str0m::RtcConfig::new().build(Instant::now());
    rtc.add_local_candidate(str0m::Candidate::host(addr, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(str0m::media::MediaKind::Video, direction, None, None, None);
    api.add_media(str0m::media::MediaKind::Audio, direction, None, None, None);
    api.add_channel("input".into());
    api.apply().unwrap().0.to_sdp_string()
}

async fn post_sdp(url: &str, token: &str, sdp: String) -> u16 {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = client.post(url).bearer_auth(token).header("content-type", "application/sdp").body(sdp).send().await;
    res.unwrap().status().as_u16()
}

/// Signaling and one relay with an SFU (eu-central, relay ports in `ports`), machine cab-1
/// registered and publishing over WHIP (a str0m offer), and alice's `sfu` session on it; returns
/// the session as signaling answered it.
async fn sfu_session(ports: (u16, u16)) -> (Signaling, Relay, Value) {
    let s = Signaling::start("sqlite", "");
    let admin = s.token("ops", "admin");
    let alice = s.token("alice", "player");
    let machine = s.token("cab-1", "machine");
    let relay = Relay::start(&s.url, "eu-1", "eu-central", ports);
    eventually(Duration::from_secs(10), || async {
        let (_, relays) = s.call("GET", "/v1/relays", Some(&admin), None).await;
        relays["relays"].as_array().is_some_and(|r| r.iter().any(|r| r["sfu_url"].is_string())).then_some(())
    })
    .await
    .expect("the relay registers with its SFU URL");
    let rtts = json!({ "name": "Cabinet 1", "rtts": { "eu-central": 20.0 } });
    assert_eq!(s.call("POST", "/v1/machines/register", Some(&machine), Some(rtts)).await.0, 200);
    let body = json!({ "machine_id": "cab-1", "mode": "sfu", "probes": probes_favouring("eu-central") });
    let (st, session) = s.call("POST", "/v1/sessions", Some(&alice), Some(body)).await;
    assert_eq!(st, 201, "{session}");
    let (_, hb) = s.call("POST", "/v1/machines/heartbeat", Some(&machine), Some(json!({}))).await;
    let whip = hb["sfu"]["whip_url"].as_str().unwrap();
    let sdp = offer(str0m::media::Direction::SendOnly);
    assert_eq!(post_sdp(whip, hb["sfu"]["token"].as_str().unwrap(), sdp).await, 201);
    (s, relay, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayctl_hands_an_sfu_sessions_seat_through_the_relay() {
    use str0m::media::Direction;
    let (s, _relay, session) = sfu_session((31000, 31999)).await;
    let admin = s.token("ops", "admin");
    let alice = s.token("alice", "player");
    let bob = s.token("bob", "player");
    let machine = s.token("cab-1", "machine");
    let id = session["session_id"].as_str().unwrap().to_owned();

    // The machine publishes (above), the player and a spectator subscribe (the SFU takes them
    // into the room on their offers; ICE need not complete for the seat).
    let whep = session["sfu"]["whep_url"].as_str().unwrap();
    assert_eq!(post_sdp(whep, session["sfu"]["token"].as_str().unwrap(), offer(Direction::RecvOnly)).await, 201);
    let (_, watch) = s.call("POST", &format!("/v1/sessions/{id}/watch"), Some(&bob), None).await;
    assert_eq!(post_sdp(whep, watch["token"].as_str().unwrap(), offer(Direction::RecvOnly)).await, 201);

    // Only an admin or the session's player hands the seat, to a viewer that is there.
    let seat = format!("/v1/sessions/{id}/seat");
    assert_eq!(s.call("POST", &seat, Some(&bob), Some(json!({ "to": "bob" }))).await.0, 404);
    assert_eq!(s.call("POST", &seat, Some(&machine), Some(json!({ "to": "bob" }))).await.0, 403);
    assert_eq!(s.call("POST", &seat, Some(&admin), Some(json!({ "seat": "bob" }))).await.0, 400);
    let (st, body) = s.call("POST", &seat, Some(&admin), Some(json!({ "to": "carol" }))).await;
    assert_eq!(st, 404, "{body}");
    let (code, out) = relayctl(&s, &admin, &["sessions", "seat", &id, "--to", "bob"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the seat is now bob's (was alice's)"), "{out}");
    // The player can take it back; or nobody can hold it.
    let (st, body) = s.call("POST", &seat, Some(&alice), Some(json!({ "to": "alice" }))).await;
    assert_eq!((st, body["previous"].as_str()), (200, Some("bob")), "{body}");
    let (code, out) = relayctl(&s, &admin, &["sessions", "seat", &id, "--nobody"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the seat is now nobody's (was alice's)"), "{out}");
    let (_, detail) = s.call("GET", &format!("/v1/sessions/{id}"), Some(&admin), None).await;
    let seats = detail["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "seat").count();
    assert_eq!(seats, 3, "{detail}");
    // An ended session, and a session that is not sfu, have no seat.
    assert_eq!(s.call("POST", &format!("/v1/sessions/{id}/end"), Some(&alice), None).await.0, 200);
    assert_eq!(s.call("POST", &seat, Some(&admin), Some(json!({ "to": "bob" }))).await.0, 409);
    let (_, direct) = s.call("POST", "/v1/sessions", Some(&alice), Some(json!({ "machine_id": "cab-1" }))).await;
    let did = direct["session_id"].as_str().unwrap();
    let (st, _) = s.call("POST", &format!("/v1/sessions/{did}/seat"), Some(&admin), Some(json!({ "to": "bob" }))).await;
    assert_eq!(st, 409);
}

/// Signaling's seat call reaches a viewer watching at another relay: a spectator far from the
/// machine's home relay (eu-central) is placed at its own region's relay (ap-southeast), which
/// links to the home relay; handing the seat to it by name goes through the home relay and over
/// the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seat_goes_to_a_spectator_watching_at_another_relay() {
    use str0m::media::Direction;
    let s = Signaling::start("sqlite", "");
    let (admin, alice, bob) = (s.token("ops", "admin"), s.token("alice", "player"), s.token("bob", "player"));
    let machine = s.token("cab-1", "machine");
    let dir = std::env::temp_dir().join(format!("e2e-linked-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca =
        cluster::pki::Authority::generate("cluster", cluster::pki::Validity::days_from(cluster::time::unix_now(), 1))
            .unwrap();
    let _home = Relay::linked(&s.url, "eu-1", "eu-central", (33000, 33499), &ca, &dir);
    let _edge = Relay::linked(&s.url, "ap-1", "ap-southeast", (33500, 33999), &ca, &dir);
    // Both registered, and linked to each other with an RTT each reports.
    eventually(Duration::from_secs(20), || async {
        let (_, relays) = s.call("GET", "/v1/relays", Some(&admin), None).await;
        let list = relays["relays"].as_array()?;
        let linked = |r: &&Value| r["links"].as_array().is_some_and(|l| l.iter().any(|l| l["rtt_ms"].is_number()));
        (list.len() == 2 && list.iter().filter(linked).count() == 2).then_some(())
    })
    .await
    .expect("the two relays register and link");
    let rtts = json!({ "name": "Cabinet 1", "rtts": { "eu-central": 20.0 } });
    assert_eq!(s.call("POST", "/v1/machines/register", Some(&machine), Some(rtts)).await.0, 200);
    let body = json!({ "machine_id": "cab-1", "mode": "sfu", "probes": probes_favouring("eu-central") });
    let (st, session) = s.call("POST", "/v1/sessions", Some(&alice), Some(body)).await;
    assert_eq!(st, 201, "{session}");
    let id = session["session_id"].as_str().unwrap().to_owned();
    let (_, hb) = s.call("POST", "/v1/machines/heartbeat", Some(&machine), Some(json!({}))).await;
    let whip = hb["sfu"]["whip_url"].as_str().unwrap();
    assert_eq!(post_sdp(whip, hb["sfu"]["token"].as_str().unwrap(), offer(Direction::SendOnly)).await, 201);
    let whep = session["sfu"]["whep_url"].as_str().unwrap();
    assert_eq!(post_sdp(whep, session["sfu"]["token"].as_str().unwrap(), offer(Direction::RecvOnly)).await, 201);

    // Bob, near ap-southeast, is sent to the relay there (linked to the home relay).
    let probes = json!({ "probes": probes_favouring("ap-southeast") });
    let (st, watch) = s.call("POST", &format!("/v1/sessions/{id}/watch"), Some(&bob), Some(probes)).await;
    assert_eq!((st, watch["relay"].as_str()), (200, Some("ap-1")), "{watch}");
    assert_eq!(
        post_sdp(watch["whep_url"].as_str().unwrap(), watch["token"].as_str().unwrap(), offer(Direction::RecvOnly))
            .await,
        201
    );

    // The seat goes to bob through the home relay once the edge has told it bob watches there.
    let seat = format!("/v1/sessions/{id}/seat");
    let handed = eventually(Duration::from_secs(5), || async {
        let (st, body) = s.call("POST", &seat, Some(&alice), Some(json!({ "to": "bob" }))).await;
        (st == 200).then_some(body)
    })
    .await
    .expect("the seat reaches bob at ap-1");
    assert_eq!((handed["holder"].as_str(), handed["previous"].as_str()), (Some("bob"), Some("alice")), "{handed}");
    let (st, body) = s.call("POST", &seat, Some(&admin), Some(json!({ "to": "carol" }))).await;
    assert_eq!(st, 404, "nobody of that name at any relay: {body}");
    let (st, body) = s.call("POST", &seat, Some(&admin), Some(json!({ "to": "alice" }))).await;
    assert_eq!((st, body["previous"].as_str()), (200, Some("bob")), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A webrtc-rs viewer of `whep_url` (recvonly video and audio, a data channel), connected.
async fn webrtc_viewer(
    whep_url: &str,
    token: &str,
) -> (webrtc::peer_connection::RTCPeerConnection, Arc<webrtc::data_channel::RTCDataChannel>) {
    use webrtc::api::APIBuilder;
    use webrtc::api::interceptor_registry::register_default_interceptors;
    use webrtc::api::media_engine::MediaEngine;
    use webrtc::api::setting_engine::SettingEngine;
    use webrtc::ice::mdns::MulticastDnsMode;
    use webrtc::ice::network_type::NetworkType;
    use webrtc::interceptor::registry::Registry;
    use webrtc::peer_connection::configuration::RTCConfiguration;
    use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
    use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
    use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
    use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;

    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings.set_ip_filter(Box::new(|ip: std::net::IpAddr| ip.is_loopback()));
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build();
    let pc = api.new_peer_connection(RTCConfiguration::default()).await.unwrap();
    for kind in [RTPCodecType::Video, RTPCodecType::Audio] {
        let init = RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, send_encodings: vec![] };
        pc.add_transceiver_from_kind(kind, Some(init)).await.unwrap();
    }
    let dc = pc.create_data_channel("input", None).await.unwrap();
    let offer = pc.create_offer(None).await.unwrap();
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await.unwrap();
    let _ = gathered.recv().await;
    let sdp = pc.local_description().await.unwrap().sdp;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = client.post(whep_url).bearer_auth(token).header("content-type", "application/sdp").body(sdp).send().await;
    let res = res.unwrap();
    assert_eq!(res.status().as_u16(), 201, "WHEP {whep_url}");
    let answer = res.text().await.unwrap();
    pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap()).await.unwrap();
    (pc, dc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_session_cuts_its_viewer_off_and_revokes_its_token() {
    use str0m::media::Direction;
    use webrtc::data_channel::data_channel_state::RTCDataChannelState;
    use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
    let (s, _relay, session) = sfu_session((32000, 32999)).await;
    let admin = s.token("ops", "admin");
    let id = session["session_id"].as_str().unwrap().to_owned();

    // The player's viewer connects (ICE, DTLS, SCTP: its data channel opens).
    let whep = session["sfu"]["whep_url"].as_str().unwrap();
    let token = session["sfu"]["token"].as_str().unwrap();
    let (pc, dc) = webrtc_viewer(whep, token).await;
    let live =
        || pc.connection_state() == RTCPeerConnectionState::Connected && dc.ready_state() == RTCDataChannelState::Open;
    eventually(Duration::from_secs(15), || async { live().then_some(()) }).await.expect("the viewer connects");

    // An admin ends the session: within one heartbeat the relay closes the viewer's connection
    // (its data channel closes: the relay shut SCTP and DTLS down, not an ICE timeout), and the
    // same token is refused.
    let (st, body) = s.call("POST", &format!("/v1/sessions/{id}/end"), Some(&admin), None).await;
    assert_eq!(st, 200, "{body}");
    let ended = Instant::now();
    let within = cluster::heartbeat::INTERVAL + Duration::from_secs(2);
    eventually(within, || async { (!live()).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the viewer was still connected {within:?} after the session ended"));
    eprintln!(
        "viewer cut off {:?} after the session ended (pc {}, data channel {})",
        ended.elapsed(),
        pc.connection_state(),
        dc.ready_state()
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = client
        .post(whep)
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body(offer(Direction::RecvOnly))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    let refusal: Value = res.json().await.unwrap();
    assert!(refusal["error"].as_str().is_some_and(|e| e.contains("has ended")), "{refusal}");
    pc.close().await.unwrap();
}
