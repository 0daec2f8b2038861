//! A WebRTC client for SFU tests, on str0m with full ICE (the controlling side): one video and
//! one audio line in one direction plus a data channel, recording what it receives.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::channel::ChannelId;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

pub struct Client {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub video: Mid,
    pub audio: Mid,
    pub channel: ChannelId,
    pub open: bool,
    pub connected: bool,
    /// The SFU closed the connection (DTLS close_notify or SCTP shutdown arrived).
    pub closed: bool,
    /// (mid, sequence number, payload) of every RTP packet received.
    pub rtp: Vec<(Mid, u64, Vec<u8>)>,
    pub data: Vec<Vec<u8>>,
    pub keyframe_requests: Vec<Instant>,
    pub timeout: Instant,
}

impl Client {
    /// A client with one video and one audio line in `direction` and a data channel; returns
    /// it with its SDP offer.
    pub fn new(now: Instant, addr: SocketAddr, direction: Direction) -> (Self, String, str0m::change::SdpPendingOffer) {
        Self::with_channel(now, addr, direction, "input")
    }

    /// The same, with its data channel labelled `label`.
    pub fn with_channel(
        now: Instant,
        addr: SocketAddr,
        direction: Direction,
        label: &str,
    ) -> (Self, String, str0m::change::SdpPendingOffer) {
        let mut rtc =
            RtcConfig::new().set_rtp_mode(true).clear_codecs().enable_vp8(true).enable_opus(true, false).build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let video = api.add_media(MediaKind::Video, direction, None, None, None);
        let audio = api.add_media(MediaKind::Audio, direction, None, None, None);
        let channel = api.add_channel(label.into());
        let (offer, pending) = api.apply().unwrap();
        let client = Self {
            rtc,
            addr,
            video,
            audio,
            channel,
            open: false,
            connected: false,
            closed: false,
            rtp: Vec::new(),
            data: Vec::new(),
            keyframe_requests: Vec::new(),
            timeout: now,
        };
        (client, offer.to_sdp_string(), pending)
    }

    pub fn accept(&mut self, pending: str0m::change::SdpPendingOffer, answer: &str) {
        let answer = SdpAnswer::from_sdp_string(answer).unwrap();
        self.rtc.sdp_api().accept_answer(pending, answer).unwrap();
    }

    /// Drains output: datagrams to the SFU go into `wire`.
    pub fn poll(&mut self, now: Instant, wire: &mut Vec<(SocketAddr, Vec<u8>)>) {
        loop {
            match self.rtc.poll_output().unwrap() {
                Output::Timeout(t) => {
                    self.timeout = t;
                    return;
                }
                Output::Transmit(t) => wire.push((self.addr, t.contents.to_vec())),
                Output::Event(e) => match e {
                    Event::Connected => self.connected = true,
                    Event::ChannelOpen(..) => self.open = true,
                    Event::ChannelData(d) => self.data.push(d.data),
                    Event::RtpPacket(p) => {
                        let mid = self.rtc.direct_api().stream_rx(&p.header.ssrc).map(|s| s.mid());
                        if let Some(mid) = mid {
                            self.rtp.push((mid, *p.seq_no, p.payload.to_vec()));
                        }
                    }
                    Event::KeyframeRequest(_) => self.keyframe_requests.push(now),
                    Event::Closed => self.closed = true,
                    _ => {}
                },
            }
        }
    }

    pub fn send_rtp(&mut self, now: Instant, video: bool, seq: u64, ts: u32, payload: Vec<u8>) {
        let mid = if video { self.video } else { self.audio };
        let pt = {
            let want = if video { str0m::format::Codec::Vp8 } else { str0m::format::Codec::Opus };
            self.rtc.codec_config().find(|p| p.spec().codec == want).unwrap().pt()
        };
        let mut api = self.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).expect("a sending stream");
        tx.write_rtp(RtpWrite::new(pt, SeqNo::from(seq), ts, now, payload).marker(true).nackable(true));
    }

    pub fn send_data(&mut self, msg: &[u8]) {
        let mut ch = self.rtc.channel(self.channel).expect("channel open");
        assert!(ch.write(true, msg).unwrap());
    }

    /// Sends a string message (what a browser's `send("...")` sends).
    pub fn send_text(&mut self, msg: &str) {
        let mut ch = self.rtc.channel(self.channel).expect("channel open");
        assert!(ch.write(false, msg.as_bytes()).unwrap());
    }

    pub fn request_keyframe(&mut self) {
        let mut api = self.rtc.direct_api();
        if let Some(rx) = api.stream_rx_by_mid(self.video, None) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
        }
    }
}

/// A VP8 payload: descriptor with S=1, PID=0, then the payload header (P=0 for a key frame),
/// then `seq` so the receiver can tell packets apart.
pub fn vp8(key: bool, seq: u64) -> Vec<u8> {
    let mut p = vec![0x10, if key { 0x00 } else { 0x01 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.resize(1000, 0xab);
    p
}

/// A blocking HTTP client for WHIP/WHEP calls.
pub struct Http {
    pub rt: tokio::runtime::Runtime,
    pub client: reqwest::Client,
    pub base: String,
}

impl Http {
    pub fn new(base: String, client: reqwest::Client) -> Self {
        Self { rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(), client, base }
    }

    /// POSTs `body` as `content_type`; returns status, Location and body.
    pub fn post(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &str,
    ) -> (u16, Option<String>, String) {
        self.rt.block_on(async {
            let mut req = self
                .client
                .post(format!("{}{path}", self.base))
                .header("content-type", content_type)
                .body(body.to_owned());
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let location = res.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
            (status, location, res.text().await.unwrap())
        })
    }

    pub fn delete(&self, path: &str, token: &str) -> u16 {
        self.rt.block_on(async {
            let res = self.client.delete(format!("{}{path}", self.base)).bearer_auth(token).send().await.unwrap();
            res.status().as_u16()
        })
    }
}

/// A client on its own loopback socket, talking to the relay's UDP port.
pub struct Peer {
    pub client: Client,
    pub socket: UdpSocket,
    pub relay: SocketAddr,
}

impl Peer {
    pub fn new(relay: SocketAddr, direction: Direction) -> (Self, String, str0m::change::SdpPendingOffer) {
        Self::with_channel(relay, direction, "input")
    }

    /// A peer whose data channel is labelled `label` (`stamped`: a machine that wants seat
    /// inputs with their stamps).
    pub fn with_channel(
        relay: SocketAddr,
        direction: Direction,
        label: &str,
    ) -> (Self, String, str0m::change::SdpPendingOffer) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let (client, offer, pending) =
            Client::with_channel(Instant::now(), socket.local_addr().unwrap(), direction, label);
        (Self { client, socket, relay }, offer, pending)
    }

    /// Receives what is queued, runs timers, sends what the client wants to send.
    pub fn pump(&mut self) {
        let now = Instant::now();
        let mut buf = vec![0u8; 2048];
        let mut wire = Vec::new();
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            if let Ok(r) = Receive::new(Protocol::Udp, from, self.client.addr, &buf[..n]) {
                self.client.rtc.handle_input(Input::Receive(now, r)).unwrap();
                // Drained after every input, as str0m requires: in RTP mode it holds only the
                // last packet received for the next poll, so a batch of packets read before
                // polling would lose all but one.
                self.client.poll(now, &mut wire);
            }
        }
        if self.client.timeout <= now {
            self.client.rtc.handle_input(Input::Timeout(now)).unwrap();
        }
        self.client.poll(now, &mut wire);
        for (_, data) in wire {
            self.socket.send_to(&data, self.relay).unwrap();
        }
    }
}

/// Pumps every peer for `d`.
pub fn pump_all(peers: &mut [&mut Peer], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        for p in peers.iter_mut() {
            p.pump();
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}
