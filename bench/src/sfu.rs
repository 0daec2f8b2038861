//! `bench sfu`: one machine publishing a 720p-like stream to N viewers through the relay's SFU.
//!
//! The publisher and the viewers are str0m WebRTC clients in this process (full ICE, DTLS,
//! SRTP: the relay cannot tell them from browsers), each on its own loopback UDP socket, driven
//! by one mio loop. The publisher sends what a 720p encoder at about 2.5 Mbit/s sends: 30
//! frames a second packetized into RTP of up to 1,200 bytes, a key frame (about 50 KB) every
//! 2 seconds and delta frames of about 9.5 KB between, plus Opus at 50 packets a second. Every
//! video payload carries its send time and index, so each viewer counts loss and the latency
//! from publisher send to the datagram's arrival in the viewer's socket (stamped by the kernel:
//! how long this one busy process takes to read and decrypt 20 viewers' copies is left out).
//!
//! The number of viewers ramps up step by step; each step reports delivered packets, loss, the
//! relay's CPU (all its threads, from /proc) per forwarded packet, and egress packets per second
//! per core (egress rate divided by the share of a core the relay used).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mio::net::UdpSocket as MioSocket;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use crate::stats::{Latency, LatencySummary};

/// Bytes of our stamp at the start of every video payload after the VP8 descriptor.
const STAMP: usize = 16;
const MTU_PAYLOAD: usize = 1200;
const FPS: u64 = 30;
const KEY_BYTES: usize = 50_000;
const DELTA_BYTES: usize = 9_500;

/// One step of the ramp.
#[derive(Debug, Clone, Serialize)]
pub struct SfuStep {
    pub viewers: usize,
    pub secs: f64,
    /// Video packets the publisher sent.
    pub sent: u64,
    /// Video packets all viewers received (unique).
    pub delivered: u64,
    pub loss: f64,
    /// Packets the relay forwarded per second (its `relay_sfu_egress_packets_total`, all media).
    pub egress_pps: f64,
    /// Share of one core the relay used (1.0 = one core busy).
    pub relay_cores: f64,
    /// Relay CPU microseconds per forwarded packet.
    pub cpu_us_per_packet: f64,
    /// `egress_pps / relay_cores`.
    pub egress_pps_per_core: f64,
    pub latency: LatencySummary,
    /// Share of a core this process (all clients) used: near 1.0 means the clients, not the
    /// relay, were the limit.
    pub bench_cores: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SfuReport {
    pub steps: Vec<SfuStep>,
    /// The most viewers with under 1% loss.
    pub max_viewers: usize,
    /// The best egress packets per second per core over the steps with under 1% loss.
    pub best_egress_pps_per_core: f64,
}

/// A WebRTC client (publisher or viewer).
struct Client {
    rtc: Rtc,
    socket: MioSocket,
    addr: SocketAddr,
    /// The relay's media address it talks to.
    relay: SocketAddr,
    video: Mid,
    audio: Mid,
    timeout: Instant,
    connected: bool,
    /// Viewer: indices of the video packets received, and when (ns since the epoch, kernel's
    /// arrival stamp), in the order they came.
    seen: Vec<u64>,
    arrived: Vec<u64>,
    latency: Latency,
    /// When the kernel received the datagram being handled (latency ends there, not when this
    /// busy process got round to reading it).
    arrival: Option<Instant>,
}

impl Client {
    fn new(now: Instant, relay: SocketAddr, direction: Direction) -> anyhow::Result<(Self, String, SdpPendingOffer)> {
        let std_socket = UdpSocket::bind("127.0.0.1:0")?;
        let sock = socket2::SockRef::from(&std_socket);
        let _ = sock.set_recv_buffer_size(4 << 20);
        let _ = sock.set_send_buffer_size(4 << 20);
        std_socket.set_nonblocking(true)?;
        crate::sys::enable_arrival_stamps(std::os::fd::AsRawFd::as_raw_fd(&std_socket))?;
        let addr = std_socket.local_addr()?;
        let mut rtc =
            RtcConfig::new().set_rtp_mode(true).clear_codecs().enable_vp8(true).enable_opus(true, false).build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp")?);
        let mut api = rtc.sdp_api();
        let video = api.add_media(MediaKind::Video, direction, None, None, None);
        let audio = api.add_media(MediaKind::Audio, direction, None, None, None);
        let (offer, pending) = api.apply().context("no offer")?;
        let client = Self {
            rtc,
            socket: MioSocket::from_std(std_socket),
            addr,
            relay,
            video,
            audio,
            timeout: now,
            connected: false,
            seen: Vec::new(),
            arrived: Vec::new(),
            latency: Latency::new(),
            arrival: None,
        };
        Ok((client, offer.to_sdp_string(), pending))
    }

    fn accept(&mut self, pending: SdpPendingOffer, answer: &str) -> anyhow::Result<()> {
        let answer = SdpAnswer::from_sdp_string(answer)?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        Ok(())
    }

    /// Runs str0m's output: sends datagrams to its relay, records received video.
    fn drive(&mut self, epoch: Instant) {
        let relay = self.relay;
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.send_to(&t.contents, relay);
                }
                Ok(Output::Event(Event::Connected)) => self.connected = true,
                Ok(Output::Event(Event::RtpPacket(p))) => {
                    if p.payload.len() >= 2 + STAMP {
                        let sent = u64::from_be_bytes(p.payload[2..10].try_into().unwrap_or_default());
                        let index = u64::from_be_bytes(p.payload[10..18].try_into().unwrap_or_default());
                        let at = self.arrival.unwrap_or_else(Instant::now);
                        let now = at.saturating_duration_since(epoch).as_nanos() as u64;
                        self.latency.record(now.saturating_sub(sent));
                        self.seen.push(index);
                        self.arrived.push(now);
                    }
                }
                Ok(Output::Event(_)) => {}
                Err(_) => return,
            }
        }
    }

    fn receive(&mut self, buf: &mut [u8], epoch: Instant) {
        loop {
            match crate::sys::recv_stamped(std::os::fd::AsRawFd::as_raw_fd(&self.socket), buf) {
                Ok((n, from, arrival)) => {
                    let now = Instant::now();
                    if let Ok(r) = Receive::new(Protocol::Udp, from, self.addr, &buf[..n]) {
                        let _ = self.rtc.handle_input(Input::Receive(now, r));
                    }
                    self.arrival = arrival;
                    self.drive(epoch);
                    self.arrival = None;
                }
                Err(_) => return,
            }
        }
    }

    fn tick(&mut self, now: Instant, epoch: Instant) {
        if self.timeout <= now {
            let _ = self.rtc.handle_input(Input::Timeout(now));
            self.drive(epoch);
        }
    }

    fn send(&mut self, now: Instant, video: bool, seq: u64, ts: u32, marker: bool, payload: Vec<u8>) {
        let (mid, codec) =
            if video { (self.video, str0m::format::Codec::Vp8) } else { (self.audio, str0m::format::Codec::Opus) };
        let Some(pt) = self.rtc.codec_config().find(|p| p.spec().codec == codec).map(|p| p.pt()) else { return };
        let mut api = self.rtc.direct_api();
        if let Some(tx) = api.stream_tx_by_mid(mid, None) {
            tx.write_rtp(RtpWrite::new(pt, SeqNo::from(seq), ts, now, payload).marker(marker).nackable(true));
        }
    }
}

/// What the loop calls on the publisher each time round.
type Sender<'a> = dyn FnMut(&mut Client, Instant) + 'a;

/// A plain HTTP/1.1 request to the relay's SFU listener; returns status, Location and body.
fn http(addr: SocketAddr, method: &str, path: &str, token: &str, body: &str) -> anyhow::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status")?;
    let location = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("location")).map(|(_, v)| v.trim()))
        .unwrap_or_default()
        .to_owned();
    Ok((status, location, body.to_owned()))
}

/// One counter of the relay's `/metrics` (a series without labels).
pub fn metric(admin: SocketAddr, series: &str) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {series} in the relay's metrics"))
}

fn egress_packets(admin: SocketAddr) -> anyhow::Result<f64> {
    metric(admin, "relay_sfu_egress_packets_total")
}

/// What the bench needs of the relay it started.
pub struct Target {
    pub pid: u32,
    pub udp: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// Its link endpoint, when it takes links.
    pub link: Option<SocketAddr>,
    pub secret: String,
}

/// What the home relay did during a step whose viewers watched at another relay.
#[derive(Debug, Clone, Copy, Default)]
pub struct HomeFigures {
    /// CPU seconds the home relay used.
    pub cpu_s: f64,
    /// Packets it received from the machine, and first copies it sent over links.
    pub ingest: f64,
    pub link_sent: f64,
    /// Packets it sent to its own viewers (the reference viewer).
    pub egress: f64,
    /// With a reference viewer at the home relay: per video packet, the first copy to reach a
    /// viewer at the other relay less the copy that reached the reference viewer (the hop,
    /// without the publisher's side and without the fan-out at either relay).
    pub hop: Option<LatencySummary>,
}

/// Per packet index, the earliest arrival among `viewers`.
fn first_arrivals<'a>(viewers: impl IntoIterator<Item = &'a Client>) -> HashMap<u64, u64> {
    let mut first = HashMap::new();
    for c in viewers {
        for (&index, &at) in c.seen.iter().zip(&c.arrived) {
            first.entry(index).and_modify(|t: &mut u64| *t = (*t).min(at)).or_insert(at);
        }
    }
    first
}

fn token(
    secret: &str,
    role: cluster::media::MediaRole,
    machine: &str,
    session: Option<&str>,
    sub: &str,
    home: Option<&cluster::media::HomeRelay>,
) -> String {
    let now = cluster::time::unix_now();
    let mut claims = cluster::media::MediaClaims::new(sub, machine, session, role, now, 3600);
    claims.home = home.cloned();
    cluster::media::mint(secret.as_bytes(), claims).expect("a non-empty secret")
}

/// Runs one step: `viewers` viewers for `secs` seconds.
pub fn step(target: &Target, viewers: usize, secs: f64, step_no: usize) -> anyhow::Result<SfuStep> {
    Ok(step_via(target, target, None, viewers, secs, step_no)?.0)
}

/// One step with the machine publishing at `home` and the viewers watching at `watch`, their
/// tokens naming `link` as the machine's home relay when `watch` is another relay. The step's
/// CPU and egress figures are `watch`'s; the home relay's come apart when it is another, and
/// then one more viewer, a reference outside the step's figures, watches at `home` to time the
/// hop packet by packet.
pub fn step_via(
    home: &Target,
    target: &Target,
    link: Option<cluster::media::HomeRelay>,
    viewers: usize,
    secs: f64,
    step_no: usize,
) -> anyhow::Result<(SfuStep, HomeFigures)> {
    use cluster::media::MediaRole;
    let machine = format!("bench-{step_no}");
    let session = format!("bench-session-{step_no}");
    let epoch = Instant::now();
    let publisher_token = token(&home.secret, MediaRole::Publisher, &machine, None, &machine, None);
    let (mut publisher, offer, pending) = Client::new(Instant::now(), home.udp, Direction::SendOnly)?;
    let (status, publisher_location, answer) =
        http(home.http, "POST", &format!("/whip/{machine}"), &publisher_token, &offer)?;
    if status != 201 {
        bail!("WHIP answered {status}: {answer}");
    }
    publisher.accept(pending, &answer)?;
    let mut clients = vec![publisher];
    let mut locations = Vec::new();
    for i in 0..viewers {
        let role = if i == 0 { MediaRole::Player } else { MediaRole::Spectator };
        let viewer_token = token(&target.secret, role, &machine, Some(&session), &format!("viewer-{i}"), link.as_ref());
        let (c, location) = watch(target, &session, &viewer_token)?;
        clients.push(c);
        locations.push((location, viewer_token));
    }
    let elsewhere = home.pid != target.pid;
    let mut reference_location = None;
    if elsewhere {
        let reference_token = token(&home.secret, MediaRole::Spectator, &machine, Some(&session), "reference", None);
        let (c, location) = watch(home, &session, &reference_token)?;
        clients.push(c);
        reference_location = Some((location, reference_token));
    }

    let mut poll = Poll::new()?;
    for (i, c) in clients.iter_mut().enumerate() {
        poll.registry().register(&mut c.socket, Token(i), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 2048];
    let mut run = |clients: &mut Vec<Client>, until: Instant, mut each: Option<&mut Sender<'_>>| {
        let mut next_tick = Instant::now();
        while Instant::now() < until {
            let now = Instant::now();
            let wait = until.min(next_tick).saturating_duration_since(now).min(Duration::from_millis(2));
            let _ = poll.poll(&mut events, Some(wait));
            for e in events.iter() {
                if let Some(c) = clients.get_mut(e.token().0) {
                    c.receive(&mut buf, epoch);
                }
            }
            let now = Instant::now();
            if let Some(f) = each.as_mut() {
                f(&mut clients[0], now);
            }
            if now >= next_tick {
                for c in clients.iter_mut() {
                    c.tick(now, epoch);
                }
                next_tick = now + Duration::from_millis(5);
            }
        }
    };
    // Connect everyone (ICE, DTLS), then give the SFU a moment to settle the subscriptions.
    for c in clients.iter_mut() {
        c.drive(epoch);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !clients.iter().all(|c| c.connected) {
        if Instant::now() > deadline {
            let n = clients.iter().filter(|c| c.connected).count();
            bail!("only {n} of {} clients connected within 20 s", clients.len());
        }
        run(&mut clients, Instant::now() + Duration::from_millis(100), None);
    }
    run(&mut clients, Instant::now() + Duration::from_millis(500), None);

    // The stream.
    let frame_every = Duration::from_nanos(1_000_000_000 / FPS);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut frame = 0u64;
    let mut next_frame = start;
    let mut video_seq = 0u64;
    let mut audio_seq = 0u64;
    let mut next_audio = start;
    let mut sent = 0u64;
    let cpu_before = crate::sys::cpu_seconds(target.pid)?;
    let own_before = crate::sys::cpu_seconds(std::process::id())?;
    let egress_before = egress_packets(target.admin)?;
    let home_before = if elsewhere { home_figures(home)? } else { HomeFigures::default() };
    let mut send = |c: &mut Client, now: Instant| {
        if now >= next_frame && now < end {
            let key = frame.is_multiple_of(2 * FPS);
            let bytes = if key { KEY_BYTES } else { DELTA_BYTES };
            let packets = bytes.div_ceil(MTU_PAYLOAD);
            let ts = (frame * 90_000 / FPS) as u32;
            for p in 0..packets {
                let mut payload = Vec::with_capacity(MTU_PAYLOAD);
                // VP8 descriptor: S=1 on a frame's first packet; P=0 in a key frame's header.
                payload.push(if p == 0 { 0x10 } else { 0x00 });
                payload.push(if key { 0x00 } else { 0x01 });
                payload.extend_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
                payload.extend_from_slice(&sent.to_be_bytes());
                payload.resize(MTU_PAYLOAD.min(bytes - p * MTU_PAYLOAD).max(2 + STAMP), 0x5a);
                c.send(now, true, video_seq, ts, p + 1 == packets, payload);
                video_seq += 1;
                sent += 1;
            }
            frame += 1;
            next_frame += frame_every;
        }
        if now >= next_audio && now < end {
            c.send(now, false, audio_seq, (audio_seq * 960) as u32, true, vec![0xfc; 100]);
            audio_seq += 1;
            next_audio += Duration::from_millis(20);
        }
        c.drive(epoch);
    };
    run(&mut clients, end, Some(&mut send));
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = crate::sys::cpu_seconds(target.pid)? - cpu_before;
    let own = crate::sys::cpu_seconds(std::process::id())? - own_before;
    let home_cpu = if elsewhere { crate::sys::cpu_seconds(home.pid)? - home_before.cpu_s } else { 0.0 };
    // Stragglers; then the relay's figures, which it publishes once a second, catch up.
    run(&mut clients, Instant::now() + Duration::from_millis(1200), None);
    let egress = egress_packets(target.admin)? - egress_before;
    let home_figures = if elsewhere {
        let after = home_figures(home)?;
        let at_home = first_arrivals(clients.last());
        let first_here = first_arrivals(&clients[1..=viewers]);
        let mut hop = Latency::new();
        for (index, at) in first_here {
            if let Some(&reference) = at_home.get(&index) {
                hop.record(at.saturating_sub(reference));
            }
        }
        HomeFigures {
            cpu_s: home_cpu,
            ingest: after.ingest - home_before.ingest,
            link_sent: after.link_sent - home_before.link_sent,
            egress: after.egress - home_before.egress,
            hop: Some(hop.summary()),
        }
    } else {
        HomeFigures::default()
    };

    let mut latency = Latency::new();
    let mut delivered = 0u64;
    for c in &mut clients[1..=viewers] {
        c.seen.sort_unstable();
        c.seen.dedup();
        delivered += c.seen.len() as u64;
        latency.merge(&c.latency);
    }
    // End the step's peers so the next step starts with an empty SFU.
    for (location, token) in &locations {
        let _ = http(target.http, "DELETE", location, token, "");
    }
    if let Some((location, token)) = &reference_location {
        let _ = http(home.http, "DELETE", location, token, "");
    }
    let _ = http(home.http, "DELETE", &publisher_location, &publisher_token, "");

    let expected = sent * viewers as u64;
    let relay_cores = cpu / elapsed;
    let egress_pps = egress / elapsed;
    let step = SfuStep {
        viewers,
        secs: elapsed,
        sent,
        delivered,
        loss: crate::stats::loss(expected, delivered),
        egress_pps,
        relay_cores,
        cpu_us_per_packet: if egress > 0.0 { cpu * 1e6 / egress } else { 0.0 },
        egress_pps_per_core: if relay_cores > 0.0 { egress_pps / relay_cores } else { 0.0 },
        latency: latency.summary(),
        bench_cores: own / elapsed,
    };
    Ok((step, home_figures))
}

/// A viewer of `session` at `at` with `token` (WHEP): the connected-to-be client and its
/// resource's location.
fn watch(at: &Target, session: &str, token: &str) -> anyhow::Result<(Client, String)> {
    let (mut c, offer, pending) = Client::new(Instant::now(), at.udp, Direction::RecvOnly)?;
    let (status, location, answer) = http(at.http, "POST", &format!("/whep/{session}"), token, &offer)?;
    if status != 201 {
        bail!("WHEP at {} answered {status}: {answer}", at.http);
    }
    c.accept(pending, &answer)?;
    Ok((c, location))
}

/// The home relay's CPU seconds so far and its ingest and link counters.
fn home_figures(home: &Target) -> anyhow::Result<HomeFigures> {
    Ok(HomeFigures {
        cpu_s: crate::sys::cpu_seconds(home.pid)?,
        ingest: metric(home.admin, "relay_sfu_ingest_packets_total")?,
        link_sent: metric(home.admin, "relay_link_media_sent_total")?,
        egress: egress_packets(home.admin)?,
        hop: None,
    })
}

/// The ramp: `viewers` in order, stopping after the first step with 1% loss or more.
pub fn ramp(
    target: &Target,
    viewers: &[usize],
    secs: f64,
    mut progress: impl FnMut(&SfuStep),
) -> anyhow::Result<SfuReport> {
    let mut steps = Vec::new();
    for (i, &n) in viewers.iter().enumerate() {
        let s = step(target, n, secs, i)?;
        progress(&s);
        let lossy = s.loss >= 0.01;
        steps.push(s);
        if lossy {
            break;
        }
    }
    let good = steps.iter().filter(|s| s.loss < 0.01);
    let max_viewers = good.clone().map(|s| s.viewers).max().unwrap_or(0);
    let best = good.map(|s| s.egress_pps_per_core).fold(0.0, f64::max);
    Ok(SfuReport { steps, max_viewers, best_egress_pps_per_core: best })
}

/// The head of [`markdown`]'s table.
pub const HEADER: &str = "| viewers | video pkts sent | delivered | loss | egress pkt/s | relay cores | relay µs/pkt | egress pkt/s per core | latency p50 / p99 (ms) | bench cores |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";

/// The report as a markdown table.
pub fn markdown(r: &SfuReport) -> String {
    let mut out = String::from(HEADER);
    for s in &r.steps {
        out.push_str(&row(s));
    }
    out.push_str(&format!(
        "\nMost viewers with under 1% loss: {}; best egress rate per relay core: {:.0} packets/s.\n",
        r.max_viewers, r.best_egress_pps_per_core
    ));
    out
}

/// One step as a row of [`markdown`]'s table (also the bench's progress line).
pub fn row(s: &SfuStep) -> String {
    format!(
        "| {} | {} | {} | {:.3}% | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} / {:.2} | {:.2} |\n",
        s.viewers,
        s.sent,
        s.delivered,
        s.loss * 100.0,
        s.egress_pps,
        s.relay_cores,
        s.cpu_us_per_packet,
        s.egress_pps_per_core,
        s.latency.p50_us / 1000.0,
        s.latency.p99_us / 1000.0,
        s.bench_cores,
    )
}

/// Parses the banner lines the relay printed into the addresses the bench needs.
pub fn addresses(banner: &HashMap<&'static str, String>) -> anyhow::Result<(SocketAddr, SocketAddr, SocketAddr)> {
    let get = |k: &str| banner.get(k).with_context(|| format!("no {k:?} line in the relay's banner"));
    let udp = get("STUN/TURN   udp://")?.split_whitespace().next().context("udp address")?.parse()?;
    let http = get("SFU         WHIP http://")?.split('/').next().context("SFU address")?.parse()?;
    let admin = get("metrics     http://")?.trim_end_matches("/metrics").parse()?;
    Ok((udp, http, admin))
}
