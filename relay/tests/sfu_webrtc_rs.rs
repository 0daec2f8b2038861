//! The SFU in the real relay binary with webrtc-rs, a WebRTC stack we did not write, on both
//! ends: one machine publishes VP8 and Opus over WHIP, twenty viewers subscribe over WHEP on the
//! relay's TURN port. Every viewer gets the video intact and in order; the seat rules hold for
//! data-channel inputs, and after the seat is handed (`POST /seat/{machine}`, as signaling does)
//! the roles swap.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::media::MediaRole;
use common::RelayProcess;
use common::webrtc_client::vp8;
use webrtc::api::APIBuilder;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::data_channel::RTCDataChannel;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::data_channel_state::RTCDataChannelState;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp::header::Header;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTPCodecType};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

mod common;

const MACHINE: &str = "cab-1";
const SESSION: &str = "s-1";
const VIEWERS: usize = 20;
const PACKETS: u64 = 1000;

/// A webrtc-rs API with the default codecs and interceptors (NACK, RTCP reports, TWCC), on
/// loopback only.
fn api() -> webrtc::api::API {
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings.set_ip_filter(Box::new(|ip: IpAddr| ip.is_loopback()));
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    APIBuilder::new().with_media_engine(media).with_interceptor_registry(registry).with_setting_engine(settings).build()
}

/// Offers (after gathering), POSTs the offer to `url` with `token`, applies the answer; returns
/// the resource's Location.
async fn negotiate(pc: &RTCPeerConnection, http: &reqwest::Client, url: &str, token: &str) -> String {
    let offer = pc.create_offer(None).await.unwrap();
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await.unwrap();
    let _ = gathered.recv().await;
    let sdp = pc.local_description().await.unwrap().sdp;
    let res =
        http.post(url).bearer_auth(token).header("content-type", "application/sdp").body(sdp).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 201, "{url}");
    let location = res.headers().get("location").expect("a Location").to_str().unwrap().to_owned();
    let answer = res.text().await.unwrap();
    pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap()).await.unwrap();
    location
}

/// Messages a data channel received with their type: `text:` and the string, or `binary:` and
/// the bytes in hex, so a test sees a string that arrived as bytes (or the other way round).
fn collect(dc: &RTCDataChannel) -> Arc<Mutex<Vec<String>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    dc.on_message(Box::new(move |msg: DataChannelMessage| {
        let shown = if msg.is_string {
            format!("text:{}", String::from_utf8_lossy(&msg.data))
        } else {
            format!("binary:{}", msg.data.iter().map(|b| format!("{b:02x}")).collect::<String>())
        };
        sink.lock().unwrap().push(shown);
        Box::pin(async {})
    }));
    got
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

struct Viewer {
    pc: Arc<RTCPeerConnection>,
    dc: Arc<RTCDataChannel>,
    /// Indices (from the VP8 test payload) of the video packets received, in arrival order.
    video: Arc<Mutex<Vec<u64>>>,
    messages: Arc<Mutex<Vec<String>>>,
}

async fn viewer(api: &webrtc::api::API, http: &reqwest::Client, base: &str, i: usize) -> Viewer {
    let pc = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await.unwrap());
    for kind in [RTPCodecType::Video, RTPCodecType::Audio] {
        let init = RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, send_encodings: vec![] };
        pc.add_transceiver_from_kind(kind, Some(init)).await.unwrap();
    }
    let video = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&video);
    pc.on_track(Box::new(move |track, _, _| {
        let sink = Arc::clone(&sink);
        Box::pin(async move {
            if track.kind() != RTPCodecType::Video {
                return;
            }
            tokio::spawn(async move {
                while let Ok((pkt, _)) = track.read_rtp().await {
                    if let Some(index) = pkt.payload.get(2..10) {
                        sink.lock().unwrap().push(u64::from_be_bytes(index.try_into().unwrap()));
                    }
                }
            });
        })
    }));
    let dc = pc.create_data_channel("input", None).await.unwrap();
    let messages = collect(&dc);
    let role = if i == 0 { MediaRole::Player } else { MediaRole::Spectator };
    let token = common::media_token(role, MACHINE, Some(SESSION), &format!("viewer-{i}"));
    negotiate(&pc, http, &format!("{base}/whep/{SESSION}"), &token).await;
    Viewer { pc, dc, video, messages }
}

fn connected(pc: &RTCPeerConnection, dc: &RTCDataChannel) -> bool {
    pc.connection_state() == RTCPeerConnectionState::Connected && dc.ready_state() == RTCDataChannelState::Open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_machine_to_twenty_viewers_in_order_with_the_seat_rules() {
    let relay = RelayProcess::start("relay.toml", &[]);
    let base = relay.sfu_http();
    let http = reqwest::Client::new();
    let api = api();

    // The machine: send-only VP8 and Opus, and the data channel its inputs arrive on.
    let machine = api.new_peer_connection(RTCConfiguration::default()).await.unwrap();
    let capability = |mime: &str, clock_rate, channels| RTCRtpCodecCapability {
        mime_type: mime.to_owned(),
        clock_rate,
        channels,
        ..Default::default()
    };
    let video = Arc::new(TrackLocalStaticRTP::new(capability(MIME_TYPE_VP8, 90_000, 0), "video".into(), "cab".into()));
    let audio = Arc::new(TrackLocalStaticRTP::new(capability(MIME_TYPE_OPUS, 48_000, 2), "audio".into(), "cab".into()));
    for track in [Arc::clone(&video), Arc::clone(&audio)] {
        let init = RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Sendonly, send_encodings: vec![] };
        let transceiver =
            machine.add_transceiver_from_track(track as Arc<dyn TrackLocal + Send + Sync>, Some(init)).await.unwrap();
        // RTCP (PLIs, NACKs) must be read for the interceptors to act on it.
        let sender = transceiver.sender().await;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while sender.read(&mut buf).await.is_ok() {}
        });
    }
    let machine_dc = machine.create_data_channel("input", None).await.unwrap();
    let inputs = collect(&machine_dc);
    let publisher = common::media_token(MediaRole::Publisher, MACHINE, None, MACHINE);
    negotiate(&machine, &http, &format!("{base}/whip/{MACHINE}"), &publisher).await;
    wait_until("the machine to connect", || connected(&machine, &machine_dc)).await;

    let mut viewers = Vec::new();
    for i in 0..VIEWERS {
        viewers.push(viewer(&api, &http, &base, i).await);
    }
    wait_until("every viewer to connect", || viewers.iter().all(|v| connected(&v.pc, &v.dc))).await;

    // About 2.7 Mbit/s of video (1000-byte packets at ~330/s, a key frame every 100) and Opus.
    let mut tick = tokio::time::interval(Duration::from_millis(3));
    for i in 0..PACKETS {
        tick.tick().await;
        let header = Header {
            version: 2,
            marker: true,
            sequence_number: i as u16,
            timestamp: (i * 270) as u32,
            ..Default::default()
        };
        video.write_rtp(&Packet { header, payload: vp8(i.is_multiple_of(100), i).into() }).await.unwrap();
        if i.is_multiple_of(7) {
            let header = Header {
                version: 2,
                sequence_number: (i / 7) as u16,
                timestamp: (i / 7 * 960) as u32,
                ..Default::default()
            };
            audio.write_rtp(&Packet { header, payload: vec![0xfc; 120].into() }).await.unwrap();
        }
    }
    let want = (PACKETS * 99 / 100) as usize;
    wait_until("the video to arrive", || viewers.iter().all(|v| v.video.lock().unwrap().len() >= want)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, v) in viewers.iter().enumerate() {
        let got = v.video.lock().unwrap();
        assert!(got.len() >= want, "viewer {i}: {} of {PACKETS}", got.len());
        assert!(got.windows(2).all(|w| w[1] > w[0]), "viewer {i}: out of order or duplicated");
        assert!(got.iter().all(|&x| x < PACKETS), "viewer {i}: a packet that was never sent");
    }

    // The seat: the player's input reaches the machine, no spectator's does, and each message
    // keeps its type (a string stays a string, bytes stay bytes).
    for (i, v) in viewers.iter().enumerate() {
        v.dc.send_text(format!("input from viewer-{i}")).await.unwrap();
    }
    viewers[0].dc.send(&bytes::Bytes::from_static(&[0xff, 0x00, 0x7b])).await.unwrap();
    wait_until("the player's input", || inputs.lock().unwrap().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*inputs.lock().unwrap(), vec!["text:input from viewer-0".to_owned(), "binary:ff007b".to_owned()]);

    // The machine's messages reach every viewer, text as text and binary as binary.
    machine_dc.send_text("state 1").await.unwrap();
    machine_dc.send(&bytes::Bytes::from_static(b"\x01state")).await.unwrap();
    wait_until("the machine's messages everywhere", || viewers.iter().all(|v| v.messages.lock().unwrap().len() >= 2))
        .await;
    for (i, v) in viewers.iter().enumerate() {
        let got = v.messages.lock().unwrap();
        assert_eq!(*got, vec!["text:state 1".to_owned(), "binary:017374617465".to_owned()], "viewer {i}");
    }

    // Handing the seat: an operator token for the machine only, a known viewer only.
    let seat = |token: String, body: serde_json::Value| {
        let req = http.post(format!("{base}/seat/{MACHINE}")).bearer_auth(token).json(&body);
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json::<serde_json::Value>().await.unwrap())
        }
    };
    let operator = common::media_token(MediaRole::Operator, MACHINE, Some(SESSION), "signaling");
    let player = common::media_token(MediaRole::Player, MACHINE, Some(SESSION), "viewer-0");
    let elsewhere = common::media_token(MediaRole::Operator, "cab-2", None, "signaling");
    for (token, body, status) in [
        (player, serde_json::json!({ "to": "viewer-5" }), 403),
        (elsewhere, serde_json::json!({ "to": "viewer-5" }), 403),
        (operator.clone(), serde_json::json!({ "to": "nobody-here" }), 404),
        (operator.clone(), serde_json::json!({ "seat": "viewer-5" }), 400),
    ] {
        let (got, body) = seat(token, body).await;
        assert_eq!(got, status, "{body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
    let (status, body) = seat(operator, serde_json::json!({ "to": "viewer-5" })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["holder"], "viewer-5");
    assert_eq!(body["previous"], "viewer-0");

    // The roles have swapped.
    viewers[0].dc.send_text("late input from viewer-0").await.unwrap();
    viewers[5].dc.send_text("input from viewer-5, now seated").await.unwrap();
    wait_until("the new holder's input", || inputs.lock().unwrap().len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *inputs.lock().unwrap(),
        vec![
            "text:input from viewer-0".to_owned(),
            "binary:ff007b".to_owned(),
            "text:input from viewer-5, now seated".to_owned()
        ]
    );

    // The SFU publishes its figures once a second.
    let mut metrics = relay.metrics();
    for _ in 0..30 {
        if common::metric_value(&metrics, "relay_sfu_inputs_delivered_total") == 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = relay.metrics();
    }
    assert_eq!(common::metric_value(&metrics, "relay_sfu_inputs_delivered_total"), 3.0, "{metrics}");
    let dropped = common::metric_value(&metrics, "relay_sfu_inputs_dropped_total");
    assert_eq!(dropped, VIEWERS as f64, "{metrics}");
    assert_eq!(common::metric_value(&metrics, "relay_sfu_peer_panics_total"), 0.0);
    assert_eq!(common::metric_value(&metrics, "relay_sfu_subscribers{machine=\"cab-1\"}"), VIEWERS as f64);

    for v in &viewers {
        v.pc.close().await.unwrap();
    }
    machine.close().await.unwrap();
}
