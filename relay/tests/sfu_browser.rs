//! The SFU with real browsers: headless Chromium (Debian's `chromium`, installed by
//! scripts/test.sh) publishes its fake camera over WHIP; a second Chromium subscribes over WHEP
//! and decodes it; a third subscribes with only the relay's TURN server and
//! `iceTransportPolicy: "relay"`, so its media reaches the SFU through the relay's own TURN on
//! the same UDP port. The pages report `getStats()` and data-channel messages back to this test
//! over HTTP.

use std::sync::Arc;
use std::time::Duration;

use cluster::media::MediaRole;
use cluster::pki::{Authority, Validity};
use common::browser::{Browser, PAGE_COMMON as COMMON, Reports, latest, serve_pages, url, wait_for};
use common::links::{relay_with_link, viewer_token_for};
use common::{RelayProcess, unix_now};
use relay::turn::auth::rest_password;
use serde_json::Value;

mod common;

const MACHINE: &str = "cab-1";
const SESSION: &str = "s-1";

const PUBLISHER: &str = r#"<title>machine</title><script>
(async () => {
  try {
    // `simulcast`: 720p in three layers (q, h, f: a quarter, half and full size), as a
    // browser publisher with simulcast sends them.
    const simulcast = q.get('simulcast') !== null;
    const video = simulcast ? {width: 1280, height: 720, frameRate: 30} : {width: 640, height: 360, frameRate: 30};
    const stream = await navigator.mediaDevices.getUserMedia({video, audio: true});
    const pc = new RTCPeerConnection();
    // `codecs` (e.g. "h264,vp8"): the camera once per codec, each transceiver offering only its
    // codec (a backup codec beside the first, as LiveKit's publishers send); else the defaults.
    const codecs = q.get('codecs') ? q.get('codecs').split(',') : null;
    for (const track of stream.getTracks()) {
      if (track.kind === 'video' && simulcast) {
        pc.addTransceiver(track, {direction: 'sendonly', sendEncodings: [
          {rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000},
          {rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000},
          {rid: 'f', maxBitrate: 1500000}]});
        continue;
      }
      if (track.kind !== 'video' || !codecs) { pc.addTransceiver(track, {direction: 'sendonly'}); continue; }
      for (const codec of codecs) {
        const t = pc.addTransceiver(track, {direction: 'sendonly'});
        const caps = RTCRtpSender.getCapabilities('video').codecs.filter((c) => c.mimeType.toLowerCase() === 'video/' + codec);
        if (!caps.length) { report({error: 'this browser cannot send ' + codec}); return; }
        t.setCodecPreferences(caps);
      }
    }
    // `channel=stamped`: the machine asks for its seat inputs stamped by the relays.
    const dc = pc.createDataChannel(q.get('channel') || 'input');
    dc.binaryType = 'arraybuffer';
    dc.onmessage = (e) => report({input: shown(e.data)});
    // The machine's own messages to its viewers: a string and bytes, in turn.
    let n = 0;
    dc.onopen = () => setInterval(() => dc.send(n++ % 2 ? 'state ' + n : new Uint8Array([1, 2, n & 0xff])), 250);
    if (!await exchange(pc, q.get('whip'))) return;
    setInterval(async () => {
      let frames = 0;
      (await pc.getStats()).forEach((s) => { if (s.type === 'outbound-rtp' && s.kind === 'video') frames += s.framesEncoded || 0; });
      report({state: pc.connectionState, framesEncoded: frames});
    }, 500);
  } catch (e) { report({error: String(e)}); }
})();
</script>"#;

const VIEWER: &str = r#"<title>viewer</title><body><script>
const name = q.get('name');
(async () => {
  try {
    const config = q.get('turn')
      ? {iceServers: [{urls: q.get('turn'), username: q.get('user'), credential: q.get('pass')}], iceTransportPolicy: 'relay'}
      : {};
    const pc = new RTCPeerConnection(config);
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
    const dc = pc.createDataChannel('input');
    dc.binaryType = 'arraybuffer';
    dc.onmessage = (e) => report({message: shown(e.data)});
    // Inputs as strings and as bytes (0xff and the viewer's name), in turn.
    let n = 0;
    dc.onopen = () => setInterval(() => dc.send(n++ % 2
      ? name + ' input ' + n
      : new Uint8Array([0xff, ...new TextEncoder().encode(name)])), 250);
    if (!await exchange(pc, q.get('whep'))) return;
    setInterval(async () => {
      const stats = await pc.getStats();
      let frames = 0, local = null, codec = null, width = null;
      stats.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') {
          frames += s.framesDecoded || 0;
          if (s.frameWidth) width = s.frameWidth;
          const c = s.codecId && stats.get(s.codecId);
          if (c) codec = c.mimeType;
        }
        if (s.type === 'transport' && s.selectedCandidatePairId) {
          const pair = stats.get(s.selectedCandidatePairId);
          const c = pair && stats.get(pair.localCandidateId);
          if (c) local = c.candidateType;
        }
      });
      report({state: pc.connectionState, framesDecoded: frames, localCandidate: local, codec, width});
    }, 500);
  } catch (e) { report({error: String(e)}); }
})();
</script>"#;

/// Serves the machine's and the viewer's pages, reporting into `reports`.
fn serve_sfu_pages(reports: &Reports) -> std::net::SocketAddr {
    serve_pages(
        vec![
            ("/publisher.html", format!("<!doctype html>{COMMON}{PUBLISHER}")),
            ("/viewer.html", format!("<!doctype html>{COMMON}{VIEWER}")),
        ],
        Arc::clone(reports),
    )
}

fn frames_decoded(reports: &Reports, name: &str) -> u64 {
    latest(reports, name, "framesDecoded").and_then(|v| v["framesDecoded"].as_u64()).unwrap_or(0)
}

#[test]
fn chromium_publishes_over_whip_and_chromium_watches_directly_and_through_turn_only() {
    let relay = RelayProcess::start("relay.toml", &[]);
    let sfu = relay.sfu_http();
    let reports: Reports = Arc::default();
    let pages = serve_sfu_pages(&reports);

    let publisher = common::media_token(MediaRole::Publisher, MACHINE, None, MACHINE);
    let _machine = Browser::open(&url(
        &format!("http://{pages}/publisher.html"),
        &[("name", "machine"), ("whip", &format!("{sfu}/whip/{MACHINE}")), ("token", &publisher)],
    ));
    wait_for("the machine to publish", Duration::from_secs(30), &reports, |r| {
        latest(r, "machine", "framesEncoded").is_some_and(|v| v["state"] == "connected")
    });

    // The player watches directly; the spectator has only the relay's TURN server (UDP), with
    // TURN REST credentials as signaling would hand out.
    let whep = format!("{sfu}/whep/{SESSION}");
    let player = common::media_token(MediaRole::Player, MACHINE, Some(SESSION), "player");
    let _player = Browser::open(&url(
        &format!("http://{pages}/viewer.html"),
        &[("name", "player"), ("whep", &whep), ("token", &player)],
    ));
    let spectator = common::media_token(MediaRole::Spectator, MACHINE, Some(SESSION), "spectator");
    let username = format!("{}:spectator", unix_now() + 600);
    let password = rest_password(common::MEDIA_SECRET.as_bytes(), &username);
    let turn = format!("turn:{}?transport=udp", relay.udp);
    let _spectator = Browser::open(&url(
        &format!("http://{pages}/viewer.html"),
        &[
            ("name", "spectator"),
            ("whep", &whep),
            ("token", &spectator),
            ("turn", &turn),
            ("user", &username),
            ("pass", &password),
        ],
    ));

    // Both decode video, and keep decoding.
    for name in ["player", "spectator"] {
        wait_for(&format!("{name} to decode frames"), Duration::from_secs(40), &reports, |r| {
            frames_decoded(r, name) >= 30
        });
    }
    let before: Vec<u64> = ["player", "spectator"].iter().map(|n| frames_decoded(&reports, n)).collect();
    for (name, before) in ["player", "spectator"].iter().zip(before) {
        wait_for(&format!("{name}'s framesDecoded to grow past {before}"), Duration::from_secs(20), &reports, |r| {
            frames_decoded(r, name) > before + 10
        });
    }
    let candidate = |name: &str| latest(&reports, name, "localCandidate").map(|v| v["localCandidate"].clone());
    assert_eq!(candidate("spectator"), Some(Value::from("relay")), "the spectator's media goes through TURN");
    assert_ne!(candidate("player"), Some(Value::from("relay")));

    // The player's inputs reach the machine's page, strings as strings and bytes as bytes; the
    // spectator's never do. The machine's messages reach both viewers with their types.
    let messages = |name: &str, key: &str| -> Vec<String> {
        let reports = reports.lock().unwrap();
        let list = reports.get(name).map(Vec::as_slice).unwrap_or_default();
        list.iter().filter_map(|v| v.get(key).and_then(Value::as_str).map(str::to_owned)).collect()
    };
    let both_kinds =
        |got: &[String]| got.iter().any(|m| m.starts_with("text:")) && got.iter().any(|m| m.starts_with("binary:"));
    wait_for("the player's string and binary inputs at the machine", Duration::from_secs(10), &reports, |_| {
        both_kinds(&messages("machine", "input"))
    });
    let inputs = messages("machine", "input");
    let player_bytes = format!("binary:ff{}", "player".bytes().map(|b| format!("{b:02x}")).collect::<String>());
    assert!(inputs.iter().all(|i| i.starts_with("text:player input ") || *i == player_bytes), "{inputs:?}");
    for name in ["player", "spectator"] {
        wait_for(
            &format!("the machine's string and binary messages at the {name}"),
            Duration::from_secs(10),
            &reports,
            |_| both_kinds(&messages(name, "message")),
        );
        let got = messages(name, "message");
        assert!(got.iter().all(|m| m.starts_with("text:state ") || m.starts_with("binary:0102")), "{name}: {got:?}");
    }

    // The TURN path is really this relay's: one allocation, relaying both ways.
    let metrics = relay.metrics();
    assert!(common::metric_value(&metrics, "relay_allocations_created_total") >= 1.0, "{metrics}");
    assert_eq!(common::metric_value(&metrics, "relay_sfu_subscribers{machine=\"cab-1\"}"), 2.0, "{metrics}");
    assert!(common::metric_value(&metrics, "relay_sfu_inputs_dropped_total") >= 1.0, "{metrics}");
    assert_eq!(common::metric_value(&metrics, "relay_sfu_peer_panics_total"), 0.0);
}

/// The SFU and a viewer that cannot decode H.264: headless Firefox (Debian's `firefox-esr` has no
/// H.264). Against a Chromium machine sending only H.264 it is refused at WHEP with a 422 that
/// names both sides' codecs; against one sending a VP8 backup beside H.264 it decodes the VP8
/// copy, while a Chromium viewer of the same machine gets the H.264 one.
#[test]
fn firefox_without_h264_is_refused_or_served_the_vp8_backup() {
    let relay = RelayProcess::start("relay.toml", &[]);
    let sfu = relay.sfu_http();
    let reports: Reports = Arc::default();
    let pages = serve_sfu_pages(&reports);
    let origin = format!("http://{pages}");
    let publish = |machine: &str, codecs: &str| {
        let token = common::media_token(MediaRole::Publisher, machine, None, machine);
        let browser = Browser::open(&url(
            &format!("{origin}/publisher.html"),
            &[("name", machine), ("whip", &format!("{sfu}/whip/{machine}")), ("token", &token), ("codecs", codecs)],
        ));
        wait_for(&format!("{machine} to publish {codecs}"), Duration::from_secs(30), &reports, |r| {
            latest(r, machine, "framesEncoded").is_some_and(|v| v["state"] == "connected")
        });
        browser
    };
    let watch = |name: &str, machine: &str, session: &str, firefox: bool| {
        let token = common::media_token(MediaRole::Spectator, machine, Some(session), name);
        let page = url(
            &format!("{origin}/viewer.html"),
            &[("name", name), ("whep", &format!("{sfu}/whep/{session}")), ("token", &token)],
        );
        if firefox { Browser::firefox(&page, &origin) } else { Browser::open(&page) }
    };

    // H.264 only: Firefox is refused, and told why.
    let _h264 = publish("cab-h264", "h264");
    let _refused = watch("firefox-refused", "cab-h264", "s-1", true);
    wait_for("Firefox's refusal", Duration::from_secs(30), &reports, |r| {
        latest(r, "firefox-refused", "refused").is_some()
    });
    let refusal = latest(&reports, "firefox-refused", "refused").unwrap();
    assert_eq!(refusal["refused"], 422, "{refusal}");
    let body: Value = serde_json::from_str(refusal["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["publisher_codecs"], serde_json::json!(["H264"]), "{body}");
    let theirs = body["viewer_codecs"].as_array().unwrap();
    assert!(theirs.contains(&Value::from("VP8")) && !theirs.contains(&Value::from("H264")), "{body}");

    // H.264 with a VP8 backup: Firefox decodes VP8, Chromium H.264.
    let _both = publish("cab-2", "h264,vp8");
    let _firefox = watch("firefox", "cab-2", "s-2", true);
    let _chromium = watch("chromium", "cab-2", "s-3", false);
    for name in ["firefox", "chromium"] {
        wait_for(&format!("{name} to decode frames"), Duration::from_secs(40), &reports, |r| {
            frames_decoded(r, name) >= 30
        });
    }
    let codec = |name: &str| latest(&reports, name, "codec").map(|v| v["codec"].clone()).unwrap_or_default();
    assert_eq!(codec("firefox"), Value::from("video/VP8"));
    assert_eq!(codec("chromium"), Value::from("video/H264"));
    assert_eq!(relay.metric("relay_sfu_codec_refusals_total"), 1.0);
}

/// Relays A (eu-1) and B (asia-1) with links from one cluster CA, the pages, and the machine's
/// page publishing at A (with `params` beside its name, WHIP URL and token), connected.
struct LinkedPair {
    a: RelayProcess,
    b: RelayProcess,
    b_sfu: String,
    a_link: std::net::SocketAddr,
    reports: Reports,
    pages: std::net::SocketAddr,
    _machine: Browser,
}

fn linked_pair_publishing(name: &str, params: &[(&str, &str)]) -> LinkedPair {
    let dir = common::temp_dir(name);
    let ca = Authority::generate("cluster", Validity::days_from(unix_now(), 10)).unwrap();
    let (a, a_sfu, a_link) = relay_with_link(&ca, &dir, "eu-1", "127.0.0.1:0");
    let (b, b_sfu, _) = relay_with_link(&ca, &dir, "asia-1", "127.0.0.1:0");
    let reports: Reports = Arc::default();
    let pages = serve_sfu_pages(&reports);
    let publisher = common::media_token(MediaRole::Publisher, MACHINE, None, MACHINE);
    let whip = format!("{a_sfu}/whip/{MACHINE}");
    let mut query = vec![("name", "machine"), ("whip", whip.as_str()), ("token", publisher.as_str())];
    query.extend_from_slice(params);
    let machine = Browser::open(&url(&format!("http://{pages}/publisher.html"), &query));
    wait_for("the machine to publish at A", Duration::from_secs(30), &reports, |r| {
        latest(r, "machine", "framesEncoded").is_some_and(|v| v["state"] == "connected")
    });
    LinkedPair { a, b, b_sfu, a_link, reports, pages, _machine: machine }
}

/// Relays forward a session to each other: Chromium publishes its camera at relay A (eu-1), in
/// H.264 with a VP8 backup; a Chromium player whose token sends it to relay B (asia-1) decodes
/// it there, B linking to A over QUIC with certificates from the cluster CA, and so does a
/// Firefox spectator at B (VP8: the backup crosses the link too). The player's inputs reach the
/// machine's page over the link, stamped by B; the machine's messages reach the player.
#[test]
fn chromium_plays_at_another_relay_over_a_relay_link_and_its_input_reaches_the_machine() {
    let LinkedPair { a, b, b_sfu, a_link, reports, pages, _machine } =
        linked_pair_publishing("sfu-browser-link", &[("codecs", "h264,vp8"), ("channel", "stamped")]);
    let player = viewer_token_for(MediaRole::Player, MACHINE, SESSION, "player", Some(("eu-1", a_link)));
    let _player = Browser::open(&url(
        &format!("http://{pages}/viewer.html"),
        &[("name", "player"), ("whep", &format!("{b_sfu}/whep/{SESSION}")), ("token", &player)],
    ));
    let spectator = viewer_token_for(MediaRole::Spectator, MACHINE, SESSION, "firefox", Some(("eu-1", a_link)));
    let origin = format!("http://{pages}");
    let _firefox = Browser::firefox(
        &url(
            &format!("{origin}/viewer.html"),
            &[("name", "firefox"), ("whep", &format!("{b_sfu}/whep/{SESSION}")), ("token", &spectator)],
        ),
        &origin,
    );
    for name in ["player", "firefox"] {
        wait_for(&format!("{name} at B to decode frames"), Duration::from_secs(40), &reports, |r| {
            frames_decoded(r, name) >= 30
        });
    }
    let codec = |name: &str| latest(&reports, name, "codec").map(|v| v["codec"].clone()).unwrap_or_default();
    assert_eq!(codec("firefox"), Value::from("video/VP8"), "Firefox gets the VP8 backup over the link");
    assert_eq!(codec("player"), Value::from("video/H264"));
    let before = frames_decoded(&reports, "player");
    wait_for("the player's framesDecoded to grow", Duration::from_secs(20), &reports, |r| {
        frames_decoded(r, "player") > before + 10
    });
    let inputs = || -> Vec<String> {
        let reports = reports.lock().unwrap();
        let list = reports.get("machine").map(Vec::as_slice).unwrap_or_default();
        list.iter().filter_map(|v| v.get("input").and_then(Value::as_str).map(str::to_owned)).collect()
    };
    wait_for("the player's inputs at the machine, over the link", Duration::from_secs(10), &reports, |_| {
        !inputs().is_empty()
    });
    // Stamped by B, the first relay to receive them, with the player's RTT once B knows it.
    let stamped: Vec<Value> = inputs()
        .iter()
        .map(|i| serde_json::from_str(i.strip_prefix("text:").expect("a string")).expect("a JSON envelope"))
        .collect();
    for s in &stamped {
        assert_eq!((s["type"].as_str(), s["relay"].as_str()), (Some("seat_input"), Some("asia-1")), "{s}");
        // Its inputs alternate: a string, and bytes (0xff, then its name) as base64.
        let text = s["text"].as_str().is_some_and(|t| t.starts_with("player input "));
        assert!(text || s["base64"] == "/3BsYXllcg==", "{s}");
        assert!(s["arrived_unix_ms"].as_u64().is_some_and(|ms| ms > 1_700_000_000_000), "{s}");
    }
    wait_for("an input stamped with the player's RTT", Duration::from_secs(10), &reports, |_| {
        inputs().iter().any(|i| i.contains("\"rtt_ms\":") && !i.contains("\"rtt_ms\":null"))
    });
    let spectators = inputs().into_iter().filter(|i| i.contains("firefox input") || i.contains("/2ZpcmVmb3g=")).count();
    assert_eq!(spectators, 0, "the spectator at B does not hold the seat");
    wait_for("the machine's messages at the player", Duration::from_secs(10), &reports, |r| {
        latest(r, "player", "message").is_some()
    });
    assert!(a.metric("relay_link_media_sent_total") > 0.0 && a.metric("relay_link_seat_inputs_total") > 0.0);
    assert_eq!(b.metric("relay_links_open"), 1.0);
    assert_eq!(b.metric("relay_sfu_peer_panics_total"), 0.0);
}

/// A machine publishing simulcast at A (Chromium, 720p in three layers) and a Chromium viewer
/// at B: the viewer decodes frames at the size of one layer, and only the layers B's viewers
/// use cross the link (A holds the others back).
#[test]
fn only_the_simulcast_layers_a_viewer_uses_cross_the_relay_link() {
    let LinkedPair { a, b, b_sfu, a_link, reports, pages, _machine } =
        linked_pair_publishing("sfu-browser-simulcast", &[("simulcast", "1")]);
    let token = viewer_token_for(MediaRole::Spectator, MACHINE, SESSION, "viewer", Some(("eu-1", a_link)));
    let _viewer = Browser::open(&url(
        &format!("http://{pages}/viewer.html"),
        &[("name", "viewer"), ("whep", &format!("{b_sfu}/whep/{SESSION}")), ("token", &token)],
    ));
    wait_for("the viewer at B to decode frames", Duration::from_secs(40), &reports, |r| {
        frames_decoded(r, "viewer") >= 60
    });
    let width = latest(&reports, "viewer", "width").and_then(|v| v["width"].as_u64()).unwrap_or(0);
    assert!([320, 640, 1280].contains(&width), "the size of one layer: {width}");
    // Every layer reaches A; only what B's viewer uses crosses.
    let (held_back, sent) = (a.metric("relay_link_layers_held_back_total"), a.metric("relay_link_media_sent_total"));
    assert!(held_back > 0.0 && sent > 0.0, "held back {held_back}, sent {sent}");
    let before = frames_decoded(&reports, "viewer");
    wait_for("the viewer's framesDecoded to grow", Duration::from_secs(20), &reports, |r| {
        frames_decoded(r, "viewer") > before + 30
    });
    assert!(a.metric("relay_link_layers_held_back_total") > held_back, "still held back");
    assert!(b.metric("relay_link_lost_total") == 0.0, "layers held back and taken again are no loss");
    assert_eq!(b.metric("relay_sfu_peer_panics_total") + a.metric("relay_sfu_peer_panics_total"), 0.0);
}
