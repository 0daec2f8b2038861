//! The SFU's WebRTC peers: the one module that names str0m (pinned in the workspace), so a str0m
//! upgrade touches only this file.
//!
//! A [`Peer`] is one str0m `Rtc` in ICE-lite, RTP-forwarding mode with BWE, answering an offer
//! (WHIP or WHEP). It speaks the engine's vocabulary: media by index in the order the offer
//! listed them, codecs as [`Codec`], events as [`PeerEvent`], datagrams as [`Transmit`]. Every
//! call into str0m runs under `catch_unwind`: str0m treats its own panics as bugs and documents
//! that dropping the `Rtc` after one is safe (it holds no locks or threads), so a panic becomes
//! [`PeerError::Panicked`] and the engine ends that peer alone.

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::format::Codec as StrCodec;
use str0m::ice::StunMessage;
use str0m::media::{KeyframeRequestKind, Media, MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use tracing::{debug, warn};

use super::keyframe::{Codec, is_keyframe};
use super::stamp::STAMPED_CHANNEL;

/// How often str0m reports per-media statistics (NACK counts).
const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a peer could not be created or must end.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("bad SDP offer: {0}")]
    BadOffer(String),
    #[error("the offer has no usable media for this role: {0}")]
    Unusable(&'static str),
    #[error("WebRTC error: {0}")]
    Rtc(String),
    #[error("the WebRTC stack panicked; the peer is closed")]
    Panicked,
}

/// A datagram to send from the SFU's port.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// A peer's output: see [`Peer::poll_output`].
#[derive(Debug, Clone)]
pub enum PeerOutput {
    /// Drained: nothing more until this time or the next input.
    Timeout(Instant),
    Transmit(Transmit),
    Event(PeerEvent),
}

/// What a peer reports to the engine.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// ICE and DTLS are up.
    Connected,
    /// ICE lost the peer (or it closed): the engine removes it.
    Disconnected,
    /// A media line of the offer: index, whether the peer sends it to us, its codec and layers.
    Media { index: usize, receiving: bool, codec: Option<Codec>, layers: usize },
    /// An RTP packet from the peer (a publisher).
    Rtp {
        media: usize,
        layer: u8,
        codec: Codec,
        seq: u64,
        timestamp: u32,
        marker: bool,
        keyframe: bool,
        payload: Arc<[u8]>,
    },
    /// The peer (a subscriber) asks for a key frame of this media.
    KeyframeRequest { media: usize },
    /// The bandwidth estimate towards the peer, bits per second.
    Bandwidth(u64),
    /// A data-channel message from the peer; `binary` keeps its type (a browser's string
    /// arrives as text, an ArrayBuffer or Blob as binary) so it is forwarded as it was sent.
    Data { binary: bool, data: Vec<u8> },
    /// NACKs the peer (a subscriber) sent since the last report; str0m answers them with RTX
    /// from its per-stream cache, which shares the payloads with every other subscriber.
    Nacks(u64),
}

struct MediaLine {
    mid: Mid,
    kind: MediaKind,
    /// Simulcast RIDs in layer order (lowest first); empty without simulcast.
    rids: Vec<Rid>,
    /// NACKs received for this line so far (str0m reports running totals).
    nacks: u64,
}

/// One WebRTC peer of the SFU.
pub struct Peer {
    rtc: Rtc,
    ufrag: String,
    media: Vec<MediaLine>,
    channel: Option<ChannelId>,
    /// The channel's label is [`STAMPED_CHANNEL`]: seat inputs go to it stamped.
    stamped: bool,
    /// The round trip from the last RTCP receiver report of any of its lines.
    rtt: Option<std::time::Duration>,
    /// The address ICE nominated (learned from the first accepted datagram).
    remote: Option<SocketAddr>,
    timeout: Instant,
    /// The offer's media lines (`a=mid`), known at once, before str0m reports them.
    offered: Vec<Mid>,
}

impl Peer {
    /// Answers `offer` (a publisher's when `publisher`, else a subscriber's) with an ICE-lite
    /// peer whose only candidate is `public`. Returns the peer and the SDP answer.
    pub fn answer(now: Instant, offer: &str, public: SocketAddr) -> Result<(Self, String), PeerError> {
        // Our checks first, then str0m's; its errors are logged, never shown (they can carry
        // a pointer value, see `offer`).
        super::offer::check(offer).map_err(PeerError::BadOffer)?;
        let offered: Vec<Mid> =
            offer.lines().filter_map(|l| l.trim().strip_prefix("a=mid:")).map(|m| Mid::from(m.trim())).collect();
        let parsed = SdpOffer::from_sdp_string(offer).map_err(|e| {
            debug!(error = %e, "the WebRTC stack does not parse an offer");
            PeerError::BadOffer("the SDP offer does not parse".into())
        })?;
        guard(|| {
            let mut rtc = RtcConfig::new()
                .set_ice_lite(true)
                .set_rtp_mode(true)
                .enable_bwe(Some(Bitrate::kbps(1000)))
                .clear_codecs()
                .enable_opus(true, false)
                .enable_h264(true)
                .enable_vp8(true)
                .enable_vp9(true)
                .set_stats_interval(Some(STATS_INTERVAL))
                .build(now);
            let candidate = Candidate::host(public, "udp").map_err(|e| {
                warn!(error = %e, %public, "the WebRTC stack refuses the SFU's address as a candidate");
                PeerError::Rtc("the SFU's address is not a usable ICE candidate".into())
            })?;
            rtc.add_local_candidate(candidate);
            let answer = rtc.sdp_api().accept_offer(parsed).map_err(|e| {
                debug!(error = %e, "the WebRTC stack cannot answer an offer");
                PeerError::BadOffer("the offer's media lines cannot be answered".into())
            })?;
            let answer = answer.to_sdp_string();
            super::offer::check_answer(offer, &answer).map_err(|e| {
                debug!(%answer, "the WebRTC stack answers with formats the offer does not list");
                PeerError::BadOffer(e)
            })?;
            let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
            Ok((
                Self {
                    rtc,
                    ufrag,
                    media: Vec::new(),
                    channel: None,
                    stamped: false,
                    rtt: None,
                    remote: None,
                    timeout: now,
                    offered,
                },
                answer,
            ))
        })?
    }

    /// Our ICE username fragment: STUN checks naming it belong to this peer.
    pub fn ufrag(&self) -> &str {
        &self.ufrag
    }

    /// The address the peer's media comes from, once known.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn timeout(&self) -> Instant {
        self.timeout
    }

    /// Feeds one datagram from `from` (received on `local`). False if str0m does not take it
    /// (a check not for this peer, a stranger's packet).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local: SocketAddr,
        data: &[u8],
    ) -> Result<bool, PeerError> {
        let Ok(receive) = Receive::new(Protocol::Udp, from, local, data) else { return Ok(false) };
        let input = Input::Receive(now, receive);
        let rtc = &mut self.rtc;
        let taken = guard(|| {
            if !rtc.accepts(&input) {
                return Ok(false);
            }
            rtc.handle_input(input).map(|()| true).map_err(|e| PeerError::Rtc(e.to_string()))
        })??;
        if taken {
            self.remote = Some(from);
        }
        Ok(taken)
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), PeerError> {
        let rtc = &mut self.rtc;
        guard(|| rtc.handle_input(Input::Timeout(now)).map_err(|e| PeerError::Rtc(e.to_string())))?
    }

    /// Closes the connection gracefully (RTCP BYE, SCTP shutdown, DTLS close_notify) and
    /// returns what that sends; the peer is done after this.
    pub fn close(&mut self) -> Result<Vec<Transmit>, PeerError> {
        let rtc = &mut self.rtc;
        guard(|| rtc.close().map_err(|e| PeerError::Rtc(e.to_string())))??;
        let mut transmits = Vec::new();
        loop {
            match self.poll_output()? {
                PeerOutput::Timeout(_) => return Ok(transmits),
                PeerOutput::Transmit(t) => transmits.push(t),
                PeerOutput::Event(_) => {}
            }
        }
    }

    /// The peer's next output, as str0m's `poll_output`: a datagram, an event, or (once drained)
    /// when [`handle_timeout`](Self::handle_timeout) is next due. Poll until `Timeout` after
    /// every input.
    pub fn poll_output(&mut self) -> Result<PeerOutput, PeerError> {
        loop {
            let rtc = &mut self.rtc;
            let output = guard(|| rtc.poll_output().map_err(|e| PeerError::Rtc(e.to_string())))??;
            match output {
                Output::Timeout(t) => {
                    self.timeout = t;
                    return Ok(PeerOutput::Timeout(t));
                }
                Output::Transmit(t) => {
                    return Ok(PeerOutput::Transmit(Transmit { to: t.destination, data: t.contents.to_vec() }));
                }
                // str0m events the engine has no use for are skipped.
                Output::Event(e) => {
                    if let Some(event) = self.on_event(e) {
                        return Ok(PeerOutput::Event(event));
                    }
                }
            }
        }
    }

    /// What a str0m event means to the engine, if anything.
    fn on_event(&mut self, event: Event) -> Option<PeerEvent> {
        match event {
            Event::Connected => Some(PeerEvent::Connected),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) | Event::Closed => {
                Some(PeerEvent::Disconnected)
            }
            Event::MediaAdded(m) => {
                let mut rids: Vec<Rid> =
                    m.simulcast.map(|s| s.recv.iter().map(|l| l.rid).collect()).unwrap_or_default();
                order_rids(&mut rids);
                let codec = self
                    .rtc
                    .media(m.mid)
                    .and_then(|media| media.remote_pts().first().copied())
                    .and_then(|pt| self.codec_of(pt));
                let event = PeerEvent::Media {
                    index: self.media.len(),
                    receiving: m.direction.is_receiving(),
                    codec,
                    layers: rids.len().max(1),
                };
                self.media.push(MediaLine { mid: m.mid, kind: m.kind, rids, nacks: 0 });
                Some(event)
            }
            Event::RtpPacket(p) => {
                let ssrc = p.header.ssrc;
                let (mid, rid) = self.rtc.direct_api().stream_rx(&ssrc).map(|s| (s.mid(), s.rid()))?;
                let media = self.media.iter().position(|m| m.mid == mid)?;
                let layer = rid.and_then(|r| self.media[media].rids.iter().position(|x| *x == r)).unwrap_or(0);
                let codec = self.codec_of(p.header.payload_type)?;
                Some(PeerEvent::Rtp {
                    media,
                    layer: layer as u8,
                    codec,
                    seq: *p.seq_no,
                    timestamp: p.header.timestamp,
                    marker: p.header.marker,
                    keyframe: is_keyframe(codec, &p.payload),
                    payload: p.payload,
                })
            }
            Event::KeyframeRequest(r) => {
                let media = self.media.iter().position(|m| m.mid == r.mid)?;
                Some(PeerEvent::KeyframeRequest { media })
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate: b, .. } | BweKind::Remb { estimate: b, .. }) => {
                Some(PeerEvent::Bandwidth(b.as_f64() as u64))
            }
            Event::ChannelOpen(id, label) => {
                if self.channel.is_none() {
                    self.channel = Some(id);
                    self.stamped = label == STAMPED_CHANNEL;
                }
                None
            }
            Event::ChannelData(d) => Some(PeerEvent::Data { binary: d.binary, data: d.data }),
            Event::MediaEgressStats(s) => {
                self.rtt = s.rtt.or(self.rtt);
                let line = self.media.iter_mut().find(|m| m.mid == s.mid).filter(|l| s.nacks > l.nacks)?;
                let new = s.nacks - line.nacks;
                line.nacks = s.nacks;
                Some(PeerEvent::Nacks(new))
            }
            Event::ChannelClose(id) if self.channel == Some(id) => {
                self.channel = None;
                self.stamped = false;
                None
            }
            _ => None,
        }
    }

    fn codec_of(&self, pt: Pt) -> Option<Codec> {
        let params = self.rtc.codec_config().find(|p| p.pt() == pt)?;
        match params.spec().codec {
            StrCodec::Opus => Some(Codec::Opus),
            StrCodec::H264 => Some(Codec::H264),
            StrCodec::Vp8 => Some(Codec::Vp8),
            StrCodec::Vp9 => Some(Codec::Vp9),
            StrCodec::Av1 => Some(Codec::Av1),
            _ => None,
        }
    }

    /// Indexes of this peer's media lines of one kind, in offer order.
    pub fn media_of_kind(&self, audio: bool) -> impl Iterator<Item = usize> + '_ {
        self.media.iter().enumerate().filter(move |(_, m)| (m.kind == MediaKind::Audio) == audio).map(|(i, _)| i)
    }

    /// Sends one RTP packet on media `media` with this peer's payload type for `codec`.
    /// False if the media or codec is not negotiated with this peer.
    #[allow(clippy::too_many_arguments)]
    pub fn write_rtp(
        &mut self,
        now: Instant,
        media: usize,
        codec: Codec,
        seq: u64,
        timestamp: u32,
        marker: bool,
        payload: Arc<[u8]>,
    ) -> Result<bool, PeerError> {
        let Some(line) = self.media.get(media) else { return Ok(false) };
        let mid = line.mid;
        let Some(pt) = self.pt_for(mid, codec) else { return Ok(false) };
        let rtc = &mut self.rtc;
        guard(|| {
            let mut api = rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(mid, None) else { return false };
            // Forwarded media is not paced: the rate is the publisher's, and the subscriber's
            // bandwidth estimate picks the layer instead.
            tx.set_unpaced(true);
            tx.write_rtp(RtpWrite::new(pt, SeqNo::from(seq), timestamp, now, payload).marker(marker).nackable(true));
            true
        })
    }

    /// The payload type for `codec` on media `mid`: one the peer offered for that line (and we
    /// answered), so never one it cannot decode.
    fn pt_for(&self, mid: Mid, codec: Codec) -> Option<Pt> {
        let media = self.rtc.media(mid)?;
        media.remote_pts().iter().copied().find(|&pt| self.codec_of(pt) == Some(codec))
    }

    /// The video codecs the offer takes on any of its lines (what we answered), known as soon as
    /// the offer is answered.
    pub fn offered_video_codecs(&self) -> Vec<Codec> {
        let mut codecs = Vec::new();
        for media in self.offered.iter().filter_map(|&mid| self.rtc.media(mid)).filter(|m| m.kind() == MediaKind::Video)
        {
            self.add_codecs(media, &mut codecs);
        }
        codecs
    }

    /// Appends the codecs `media` takes (its negotiated payload types) that `codecs` lacks.
    fn add_codecs(&self, media: &Media, codecs: &mut Vec<Codec>) {
        for codec in media.remote_pts().iter().filter_map(|&pt| self.codec_of(pt)) {
            if !codecs.contains(&codec) {
                codecs.push(codec);
            }
        }
    }

    /// Whether the offer has a video line.
    pub fn offers_video(&self) -> bool {
        self.offered.iter().filter_map(|&mid| self.rtc.media(mid)).any(|m| m.kind() == MediaKind::Video)
    }

    /// The codecs the peer takes on media `media` (for a subscriber: what its offer had for that
    /// line and we answered), in its order of preference.
    pub fn codecs(&self, media: usize) -> Vec<Codec> {
        let mut codecs = Vec::new();
        if let Some(m) = self.media.get(media).and_then(|line| self.rtc.media(line.mid)) {
            self.add_codecs(m, &mut codecs);
        }
        codecs
    }

    /// Asks the peer (a publisher) for a key frame of `media`'s `layer`, now: str0m queues the
    /// PLI for its next timer run, so the timer is run at once (the router already spaced the
    /// requests, and a late one would bunch with the next).
    pub fn request_keyframe(&mut self, now: Instant, media: usize, layer: u8) -> Result<(), PeerError> {
        let Some(line) = self.media.get(media) else { return Ok(()) };
        let (mid, rid) = (line.mid, line.rids.get(usize::from(layer)).copied());
        let rtc = &mut self.rtc;
        guard(|| {
            if let Some(rx) = rtc.direct_api().stream_rx_by_mid(mid, rid) {
                rx.request_keyframe(KeyframeRequestKind::Pli);
            }
            rtc.handle_input(Input::Timeout(now)).map_err(|e| PeerError::Rtc(e.to_string()))
        })?
    }

    /// Whether its data channel asks for stamped seat inputs (see [`crate::sfu::stamp`]).
    pub fn wants_stamps(&self) -> bool {
        self.stamped
    }

    /// Its round-trip time, from the last RTCP receiver report about the media it receives.
    pub fn rtt(&self) -> Option<std::time::Duration> {
        self.rtt
    }

    /// Sends a data-channel message, as text (`binary` false, a string at a browser) or as
    /// binary; false if no channel is open or its buffer is full.
    pub fn send_data(&mut self, binary: bool, data: &[u8]) -> Result<bool, PeerError> {
        let Some(id) = self.channel else { return Ok(false) };
        let rtc = &mut self.rtc;
        guard(|| rtc.channel(id).map(|mut ch| ch.write(binary, data).unwrap_or(false)).unwrap_or(false))
    }
}

/// The local ICE ufrag a STUN Binding request is addressed to (`USERNAME` = "ours:theirs").
pub fn stun_ufrag(data: &[u8]) -> Option<String> {
    let msg = StunMessage::parse(data).ok()?;
    if !msg.is_binding_request() {
        return None;
    }
    msg.split_username().map(|(ours, _)| ours.to_owned())
}

/// Puts simulcast RIDs lowest first: `q` < `h` < `f` (quarter, half, full, as Chrome's and
/// LiveKit's clients name them), `l` < `m` < `h`, or digits ascending; other names keep the
/// offer's order.
fn order_rids(rids: &mut [Rid]) {
    let names: Vec<String> = rids.iter().map(|r| r.to_string()).collect();
    let rank = |scheme: &[&str], n: &str| scheme.iter().position(|s| *s == n);
    for scheme in [&["q", "h", "f"][..], &["l", "m", "h"][..], &["0", "1", "2"][..]] {
        if names.iter().all(|n| rank(scheme, n).is_some()) {
            rids.sort_by_key(|r| rank(scheme, &r.to_string()));
            return;
        }
    }
}

/// Runs `f`, turning a panic into [`PeerError::Panicked`].
fn guard<T>(f: impl FnOnce() -> T) -> Result<T, PeerError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| PeerError::Panicked)
}
