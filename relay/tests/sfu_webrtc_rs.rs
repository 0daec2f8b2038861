//! The SFU in the real relay binary with webrtc-rs, a WebRTC stack we did not write, on both
//! ends: one machine publishes VP8 and Opus over WHIP, twenty viewers subscribe over WHEP on the
//! relay's TURN port. Every viewer gets the video intact and in order; the seat rules hold for
//! data-channel inputs, and after the seat is handed (`POST /seat/{machine}`, as signaling does)
//! the roles swap. Viewers that decode only some codecs get a track in one they decode, or a
//! 422 naming both sides' codecs.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::media::MediaRole;
use common::RelayProcess;
use common::webrtc_client::vp8;
use webrtc::api::APIBuilder;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MIME_TYPE_VP9, MediaEngine};
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
use webrtc::rtp_transceiver::RTCPFeedback;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType};
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
    api_with(media)
}

/// H.264 as browsers offer it (constrained baseline, packetization mode 1).
const H264_FMTP: &str = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

/// A video codec's parameters in [`api_decoding`]'s media engine: the `i`th of its list.
fn video_codec(mime: &str, i: usize) -> RTCRtpCodecParameters {
    let fmtp = if mime == MIME_TYPE_H264 { H264_FMTP } else { "" };
    let feedback = ["nack", "nack pli", "ccm fir", "goog-remb"]
        .map(|f| {
            let (typ, parameter) = f.split_once(' ').unwrap_or((f, ""));
            RTCPFeedback { typ: typ.into(), parameter: parameter.into() }
        })
        .to_vec();
    RTCRtpCodecParameters {
        capability: RTCRtpCodecCapability {
            mime_type: mime.into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: fmtp.into(),
            rtcp_feedback: feedback,
        },
        payload_type: 96 + 2 * i as u8,
        ..Default::default()
    }
}

/// A webrtc-rs API that takes only the `video` codecs (MIME types, in that order) and Opus: a
/// browser without H.264 (Debian's Firefox ESR) or without VP8.
fn api_decoding(video: &[&str]) -> webrtc::api::API {
    let mut media = MediaEngine::default();
    for (i, mime) in video.iter().enumerate() {
        media.register_codec(video_codec(mime, i), RTPCodecType::Video).unwrap();
    }
    let opus = RTCRtpCodecParameters {
        capability: RTCRtpCodecCapability {
            mime_type: MIME_TYPE_OPUS.into(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
            rtcp_feedback: vec![],
        },
        payload_type: 111,
        ..Default::default()
    };
    media.register_codec(opus, RTPCodecType::Audio).unwrap();
    api_with(media)
}

fn api_with(mut media: MediaEngine) -> webrtc::api::API {
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

/// The offer of a recvonly viewer (video, audio) after gathering.
async fn recvonly_offer(pc: &RTCPeerConnection) -> String {
    for kind in [RTPCodecType::Video, RTPCodecType::Audio] {
        let init = RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, send_encodings: vec![] };
        pc.add_transceiver_from_kind(kind, Some(init)).await.unwrap();
    }
    let offer = pc.create_offer(None).await.unwrap();
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await.unwrap();
    let _ = gathered.recv().await;
    pc.local_description().await.unwrap().sdp
}

/// What a viewer's video track received: its codec's MIME type, and per packet the payload type
/// and the first payload byte (0x65 or 0x41: our H.264; 0x10: our VP8).
type Received = Arc<Mutex<Vec<(String, u8, u8)>>>;

/// A viewer of `machine` in `session` decoding only `video`: the WHEP status, the JSON of a
/// refusal, and what it receives.
async fn codec_viewer(
    http: &reqwest::Client,
    base: &str,
    machine: &str,
    session: &str,
    video: &[&str],
) -> (u16, serde_json::Value, Received, RTCPeerConnection) {
    let pc = api_decoding(video).new_peer_connection(RTCConfiguration::default()).await.unwrap();
    let got: Received = Arc::default();
    let sink = Arc::clone(&got);
    pc.on_track(Box::new(move |track, _, _| {
        let sink = Arc::clone(&sink);
        Box::pin(async move {
            if track.kind() != RTPCodecType::Video {
                return;
            }
            let mime = track.codec().capability.mime_type.clone();
            tokio::spawn(async move {
                while let Ok((pkt, _)) = track.read_rtp().await {
                    let first = pkt.payload.first().copied().unwrap_or(0);
                    sink.lock().unwrap().push((mime.clone(), pkt.header.payload_type, first));
                }
            });
        })
    }));
    let sdp = recvonly_offer(&pc).await;
    let token = common::media_token(MediaRole::Spectator, machine, Some(session), &format!("{session}-viewer"));
    let res = http
        .post(format!("{base}/whep/{session}"))
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body(sdp)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = res.text().await.unwrap();
    if status == 201 {
        pc.set_remote_description(RTCSessionDescription::answer(body).unwrap()).await.unwrap();
        (status, serde_json::Value::Null, got, pc)
    } else {
        (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("a JSON refusal: {body}")), got, pc)
    }
}

/// A machine publishing one camera in each of `video` (H.264 first, then a VP8 backup, as a
/// LiveKit publisher sends a backup codec), each transceiver offering only its codec; returned
/// as soon as its WHIP offer is answered, before it connects.
async fn codec_machine(
    http: &reqwest::Client,
    base: &str,
    machine: &str,
    video: &[&str],
) -> (RTCPeerConnection, Arc<RTCDataChannel>, Vec<Arc<TrackLocalStaticRTP>>) {
    let pc = api_decoding(video).new_peer_connection(RTCConfiguration::default()).await.unwrap();
    let mut tracks = Vec::new();
    for (i, mime) in video.iter().enumerate() {
        let params = video_codec(mime, i);
        let track = Arc::new(TrackLocalStaticRTP::new(params.capability.clone(), format!("camera-{i}"), "cab".into()));
        let init = RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Sendonly, send_encodings: vec![] };
        let transceiver = pc
            .add_transceiver_from_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>, Some(init))
            .await
            .unwrap();
        transceiver.set_codec_preferences(vec![params]).await.unwrap();
        let sender = transceiver.sender().await;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while sender.read(&mut buf).await.is_ok() {}
        });
        tracks.push(track);
    }
    let dc = pc.create_data_channel("input", None).await.unwrap();
    let token = common::media_token(MediaRole::Publisher, machine, None, machine);
    negotiate(&pc, http, &format!("{base}/whip/{machine}"), &token).await;
    (pc, dc, tracks)
}

/// Sends `n` packets on each track: H.264 (IDR or not) or VP8, a key frame every 30.
async fn send_video(tracks: &[Arc<TrackLocalStaticRTP>], video: &[&str], n: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for i in 0..n {
        tick.tick().await;
        for (track, mime) in tracks.iter().zip(video) {
            let key = i.is_multiple_of(30);
            let payload = if *mime == MIME_TYPE_H264 {
                let mut p = vec![if key { 0x65 } else { 0x41 }];
                p.resize(800, 0xab);
                p
            } else {
                vp8(key, i)
            };
            let header = Header {
                version: 2,
                marker: true,
                sequence_number: i as u16,
                timestamp: (i * 3000) as u32,
                ..Default::default()
            };
            track.write_rtp(&Packet { header, payload: payload.into() }).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_viewers_get_a_codec_they_decode_or_a_422_naming_both_sides() {
    let relay = RelayProcess::start("relay.toml", &[]);
    let base = relay.sfu_http();
    let http = reqwest::Client::new();

    // An H.264-only machine: a viewer without H.264 (Firefox ESR's case) is refused, naming both
    // sides' codecs; a viewer with H.264 watches.
    let only = [MIME_TYPE_H264];
    // The refusal does not wait for the machine to connect (found with aiortc, whose viewer came
    // first): what the machine offered is what it may send.
    let (m1, dc1, h264_tracks) = codec_machine(&http, &base, "cab-h264", &only).await;
    let (status, refusal, _, _p) = codec_viewer(&http, &base, "cab-h264", "s-a", &[MIME_TYPE_VP8, MIME_TYPE_VP9]).await;
    assert_eq!(status, 422, "{refusal}");
    assert_eq!(refusal["publisher_codecs"], serde_json::json!(["H264"]), "{refusal}");
    assert_eq!(refusal["viewer_codecs"], serde_json::json!(["VP8", "VP9"]), "{refusal}");
    assert!(refusal["error"].as_str().is_some_and(|e| e.contains("cannot decode")), "{refusal}");
    wait_until("the H.264 machine to connect", || connected(&m1, &dc1)).await;
    let (status, _, h264_viewer, _p1) =
        codec_viewer(&http, &base, "cab-h264", "s-b", &[MIME_TYPE_VP8, MIME_TYPE_H264]).await;
    assert_eq!(status, 201);

    // A machine sending its camera in H.264 and in a VP8 backup: a VP8-only viewer gets the VP8
    // copy, a viewer taking both gets the H.264 one (the first), a VP9-only viewer is refused.
    let both = [MIME_TYPE_H264, MIME_TYPE_VP8];
    let (m2, dc2, tracks) = codec_machine(&http, &base, "cab-2", &both).await;
    wait_until("the dual-codec machine to connect", || connected(&m2, &dc2)).await;
    let (status, _, vp8_viewer, _p2) = codec_viewer(&http, &base, "cab-2", "s-c", &[MIME_TYPE_VP8]).await;
    assert_eq!(status, 201);
    let (status, _, both_viewer, _p3) =
        codec_viewer(&http, &base, "cab-2", "s-d", &[MIME_TYPE_VP8, MIME_TYPE_H264]).await;
    assert_eq!(status, 201);
    let (status, refusal, _, _p4) = codec_viewer(&http, &base, "cab-2", "s-e", &[MIME_TYPE_VP9]).await;
    assert_eq!(status, 422, "{refusal}");
    assert_eq!(refusal["publisher_codecs"], serde_json::json!(["H264", "VP8"]), "{refusal}");
    assert_eq!(refusal["viewer_codecs"], serde_json::json!(["VP9"]), "{refusal}");

    tokio::join!(send_video(&h264_tracks, &only, 300), send_video(&tracks, &both, 300));
    let enough = |r: &Received| r.lock().unwrap().len() >= 250;
    wait_until("every viewer's video", || [&h264_viewer, &vp8_viewer, &both_viewer].iter().all(|r| enough(r))).await;
    // Each gets one codec, the one its answer names, with the payload type of its own offer.
    let check = |name: &str, r: &Received, mime: &str, pt: u8, first: &[u8]| {
        let got = r.lock().unwrap();
        assert!(!got.is_empty(), "{name}: nothing");
        for (m, p, f) in got.iter() {
            assert_eq!((m.as_str(), *p), (mime, pt), "{name}");
            assert!(first.contains(f), "{name}: a packet starting {f:#x}, not {mime}");
        }
    };
    check("H.264 viewer of the H.264 machine", &h264_viewer, MIME_TYPE_H264, 98, &[0x65, 0x41]);
    check("VP8-only viewer", &vp8_viewer, MIME_TYPE_VP8, 96, &[0x10]);
    check("viewer taking both", &both_viewer, MIME_TYPE_H264, 98, &[0x65, 0x41]);

    // A viewer that came before its machine, which then offers only what it cannot decode, is
    // closed when the machine publishes; its next offer is refused with the reason.
    let (status, _, _, _p5) = codec_viewer(&http, &base, "cab-late", "s-f", &[MIME_TYPE_VP9]).await;
    assert_eq!(status, 201, "nothing to check before the machine publishes");
    let (_m3, _dc3, _) = codec_machine(&http, &base, "cab-late", &only).await;
    let refusals = || relay.metric("relay_sfu_codec_refusals_total");
    wait_until("the early VP9 viewer to be closed", || refusals() == 3.0).await;
    let (status, refusal, _, _p6) = codec_viewer(&http, &base, "cab-late", "s-f", &[MIME_TYPE_VP9]).await;
    assert_eq!(status, 422, "{refusal}");
    wait_until("four refusals counted", || refusals() == 4.0).await;
}
