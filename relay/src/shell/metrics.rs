//! Prometheus metrics, registered in an explicit registry (no globals) and filled from the
//! workers' `Stats` at scrape time: the packet path only bumps plain per-worker counters, and a
//! scrape sums them and advances the Prometheus counters by the difference since the last scrape.
//! Label sets are the closed enums of `turn::stats`, so cardinality is fixed (no usernames or
//! addresses as labels, which leaked memory in coturn, #666/#861).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use super::sfu::{SfuHandle, SfuSnapshot};

use crate::config::Capacity;
use crate::turn::Shared;
use crate::turn::stats::{AuthFailure, ConnEvent, Direction, DropReason, ERROR_CODES, Method, Refusal, Stats};

/// Reads one series' value from one worker's counters.
type Read = Box<dyn Fn(&Stats) -> u64 + Send + Sync>;

/// Running totals at the last scrape, per series, in the order the series are listed.
#[derive(Default)]
struct Seen(Vec<u64>);

pub struct Metrics {
    registry: Registry,
    workers: Vec<Arc<Stats>>,
    shared: Arc<Shared>,
    draining: Arc<AtomicBool>,
    allocations_active: IntGauge,
    relay_sockets_open: IntGauge,
    relay_ports_free: IntGauge,
    capacity: IntGauge,
    connections_open: IntGauge,
    draining_gauge: IntGauge,
    counters: Vec<(IntCounter, Read)>,
    seen: Mutex<Seen>,
    sfu: std::sync::OnceLock<SfuMetrics>,
    /// When each certificate in use expires (recorded at load and renewal).
    expiries: super::tls::Expiries,
    expiry: IntGaugeVec,
}

/// Reads one SFU series from the SFU thread's latest snapshot.
type SfuRead = fn(&SfuSnapshot) -> u64;

/// The SFU's series, filled at scrape time from [`SfuHandle::snapshot`].
struct SfuMetrics {
    handle: SfuHandle,
    peers: IntGauge,
    ingest: IntGaugeVec,
    subscribers: IntGaugeVec,
    counters: Vec<(IntCounter, SfuRead)>,
    seen: Mutex<Vec<u64>>,
}

impl Metrics {
    /// `workers` holds the counters of every `TurnServer`: the UDP workers' and the TCP/TLS
    /// listeners'; `threads` is the number of UDP worker threads.
    pub fn new(
        workers: Vec<Arc<Stats>>,
        threads: usize,
        shared: Arc<Shared>,
        draining: Arc<AtomicBool>,
    ) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let allocations_active = gauge("relay_allocations_active", "TURN allocations currently active.")?;
        let relay_sockets_open = gauge(
            "relay_relay_sockets_open",
            "Relay sockets open (an allocation opens one at its first permission or channel).",
        )?;
        let relay_ports_free = gauge("relay_relay_ports_free", "Relay ports free in the configured range.")?;
        let capacity = gauge(
            "relay_allocations_capacity",
            "Allocations the relay can hold: the smaller of its relay ports and allocations.max_total.",
        )?;
        let draining_gauge = gauge("relay_draining", "1 while the relay drains (takes no new allocations).")?;
        let workers_gauge = gauge("relay_workers", "Worker threads (one SO_REUSEPORT socket each).")?;
        workers_gauge.set(threads as i64);
        let connections_open = gauge("relay_connections_open", "TURN over TCP and TLS connections open.")?;

        let mut counters: Vec<(IntCounter, Read)> = Vec::new();
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let vec = |name: &str, help: &str, label: &str| -> prometheus::Result<IntCounterVec> {
            let v = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(v.clone()))?;
            Ok(v)
        };
        counters.push((
            counter("relay_allocations_created_total", "TURN allocations created.")?,
            Box::new(|s| s.allocations_created.get()),
        ));
        counters.push((
            counter("relay_auth_challenges_total", "401 challenges to requests without credentials.")?,
            Box::new(|s| s.auth_challenges.get()),
        ));
        // One series per label value, each created up front so it shows (as 0) before it moves.
        let mut labelled = |v: IntCounterVec, labels: Vec<String>, read: fn(&Stats, usize) -> u64| {
            for (i, label) in labels.iter().enumerate() {
                counters.push((v.with_label_values(&[label.as_str()]), Box::new(move |s| read(s, i))));
            }
        };
        labelled(
            vec("relay_auth_failures_total", "Authenticated requests refused, by reason.", "reason")?,
            AuthFailure::ALL.iter().map(|x| x.as_str().to_owned()).collect(),
            |s, i| s.auth_failures[i].get(),
        );
        let directions: Vec<String> = Direction::ALL.iter().map(|x| x.as_str().to_owned()).collect();
        labelled(
            vec("relay_relayed_packets_total", "Datagrams relayed, by direction.", "direction")?,
            directions.clone(),
            |s, i| s.relayed_packets[i].get(),
        );
        labelled(
            vec(
                "relay_relayed_bytes_total",
                "Application bytes relayed (without TURN framing), by direction.",
                "direction",
            )?,
            directions,
            |s, i| s.relayed_bytes[i].get(),
        );
        labelled(
            vec("relay_dropped_packets_total", "Datagrams dropped without an answer, by reason.", "reason")?,
            DropReason::ALL.iter().map(|x| x.as_str().to_owned()).collect(),
            |s, i| s.dropped[i].get(),
        );
        labelled(
            vec("relay_requests_total", "STUN/TURN requests received, by method.", "method")?,
            Method::ALL.iter().map(|x| x.as_str().to_owned()).collect(),
            |s, i| s.requests[i].get(),
        );
        labelled(
            vec(
                "relay_allocations_refused_total",
                "Allocates refused for want of room (508, and 486 for a user's quota), by reason.",
                "reason",
            )?,
            Refusal::ALL.iter().map(|x| x.as_str().to_owned()).collect(),
            |s, i| s.refusals[i].get(),
        );
        labelled(
            vec("relay_error_responses_total", "Error responses sent, by code.", "code")?,
            ERROR_CODES.iter().map(u16::to_string).collect(),
            |s, i| s.error_responses[i].get(),
        );
        labelled(
            vec("relay_connections_total", "TURN over TCP and TLS connections, by what happened.", "event")?,
            ConnEvent::ALL.iter().map(|x| x.as_str().to_owned()).collect(),
            |s, i| s.connections[i].get(),
        );

        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;

        let seen = Mutex::new(Seen(vec![0; counters.len()]));
        let expiry = IntGaugeVec::new(
            Opts::new(
                "relay_certificate_expiry_timestamp_seconds",
                "When each certificate in use expires (notAfter, unix seconds), by certificate (turn_tls, sfu_tls, link).",
            ),
            &["certificate"],
        )?;
        registry.register(Box::new(expiry.clone()))?;
        Ok(Self {
            expiries: super::tls::Expiries::default(),
            expiry,
            registry,
            workers,
            shared,
            draining,
            allocations_active,
            relay_sockets_open,
            relay_ports_free,
            capacity,
            connections_open,
            draining_gauge,
            counters,
            seen,
            sfu: std::sync::OnceLock::new(),
        })
    }

    /// Adds the SFU's series (once; later calls are ignored).
    pub fn attach_sfu(&self, handle: SfuHandle) -> prometheus::Result<()> {
        let registry = &self.registry;
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let per_machine = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let v = IntGaugeVec::new(Opts::new(name, help), &["machine"])?;
            registry.register(Box::new(v.clone()))?;
            Ok(v)
        };
        let mut counters: Vec<(IntCounter, SfuRead)> = Vec::new();
        let mut counter = |name: &str, help: &str, read: SfuRead| -> prometheus::Result<()> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            counters.push((c, read));
            Ok(())
        };
        counter("relay_sfu_ingest_packets_total", "RTP packets received from publishers.", |s| s.route.packets_in)?;
        counter("relay_sfu_egress_packets_total", "RTP packets forwarded to subscribers.", |s| s.route.packets_out)?;
        counter("relay_sfu_egress_bytes_total", "RTP payload bytes forwarded to subscribers.", |s| s.route.bytes_out)?;
        counter(
            "relay_sfu_held_back_packets_total",
            "Packets not sent to a subscriber waiting for a key frame or another layer.",
            |s| s.route.held_back,
        )?;
        counter(
            "relay_sfu_nacks_total",
            "NACKed packets from subscribers (answered with RTX from payloads shared per track).",
            |s| s.stats.nacks_received,
        )?;
        counter(
            "relay_sfu_keyframe_requests_forwarded_total",
            "Key-frame requests sent to publishers (at most one per track layer per 500 ms).",
            |s| s.route.keyframe_requests_forwarded,
        )?;
        counter(
            "relay_sfu_keyframe_requests_suppressed_total",
            "Subscribers' key-frame requests merged into one already sent or pending.",
            |s| s.route.keyframe_requests_suppressed,
        )?;
        counter("relay_sfu_layer_switches_total", "Simulcast layer switches.", |s| s.route.layer_switches)?;
        counter("relay_sfu_inputs_delivered_total", "Seat holders' messages delivered to machines.", |s| {
            s.route.inputs_delivered
        })?;
        counter("relay_sfu_inputs_dropped_total", "Subscribers' messages dropped (not the seat holder).", |s| {
            s.route.inputs_dropped
        })?;
        counter("relay_sfu_peers_created_total", "WebRTC peers created (WHIP and WHEP).", |s| s.stats.peers_created)?;
        counter("relay_sfu_peers_lost_total", "Peers ended by ICE, an error or a panic of their stack.", |s| {
            s.stats.peers_lost
        })?;
        counter(
            "relay_sfu_queue_full_total",
            "Datagrams and requests dropped: the SFU thread's queue was full.",
            |s| s.queue_full,
        )?;
        counter(
            "relay_sfu_peers_revoked_total",
            "Subscribers closed because signaling ended their session (its media tokens are refused).",
            |s| s.stats.peers_revoked,
        )?;
        counter(
            "relay_sfu_codec_refusals_total",
            "Viewers refused at WHEP, or closed when their machine published, because they decode none of its video codecs.",
            |s| s.stats.codec_refusals,
        )?;
        counter("relay_sfu_peer_panics_total", "Peers ended because their WebRTC stack panicked.", |s| s.stats.panics)?;
        counter(
            "relay_link_media_routed_total",
            "Media packets from relay links routed to viewers here (new, or repairing a loss).",
            |s| s.links.media_in,
        )?;
        counter(
            "relay_link_media_sent_total",
            "Packets of machines published here sent over links (first copies: one per packet and link).",
            |s| s.links.media_sent,
        )?;
        counter(
            "relay_link_layers_held_back_total",
            "Packets of simulcast layers not sent over links because no viewer at the peer relay uses them.",
            |s| s.links.layers_held_back,
        )?;
        counter("relay_link_resent_total", "Packets sent again over links, answering the peers' NACKs.", |s| {
            s.links.resent
        })?;
        counter(
            "relay_link_repaired_total",
            "Packets from links that filled a gap (the link's loss, repaired by NACK).",
            |s| s.links.repaired,
        )?;
        counter(
            "relay_link_early_total",
            "Link packets that came before their track's announcement (kept briefly, then routed).",
            |s| s.links.early,
        )?;
        counter("relay_link_nacked_total", "Packets missing from links, NACKed upstream (each try counts).", |s| {
            s.links.nacked
        })?;
        counter(
            "relay_link_lost_total",
            "Packets missing from links and given up on (not repaired after 3 NACKs).",
            |s| s.links.lost,
        )?;
        counter("relay_link_malformed_datagrams_total", "Link datagrams that did not decode (dropped).", |s| {
            s.links.malformed
        })?;
        counter("relay_link_seat_inputs_total", "Seat inputs from relay links delivered to machines here.", |s| {
            s.links.seat_inputs
        })?;
        counter(
            "relay_link_seat_inputs_dropped_total",
            "Seat inputs from relay links dropped (the machine is not here, or a viewer here holds its seat).",
            |s| s.links.seat_inputs_dropped,
        )?;
        let seen = Mutex::new(vec![0; counters.len()]);
        let metrics = SfuMetrics {
            handle,
            peers: gauge("relay_sfu_peers", "WebRTC peers of the SFU (publishers and subscribers).")?,
            ingest: per_machine(
                "relay_sfu_ingest_bitrate_bps",
                "Payload bitrate a machine publishes, over the last second (alert when it falls to 0).",
            )?,
            subscribers: per_machine("relay_sfu_subscribers", "Subscribers watching a machine.")?,
            counters,
            seen,
        };
        let _ = self.sfu.set(metrics);
        Ok(())
    }

    /// Total active allocations over all workers.
    pub fn allocations(&self) -> i64 {
        self.workers.iter().map(|w| w.allocations_active.get()).sum()
    }

    /// How many allocations the relay can hold now (a reload may change `max_total`).
    pub fn capacity(&self) -> u64 {
        Capacity::new(self.shared.port_count(), self.shared.quotas.total_limit()).allocations()
    }

    /// Application bytes relayed in both directions over all workers since start.
    pub fn relayed_bytes(&self) -> u64 {
        self.workers.iter().flat_map(|w| w.relayed_bytes.iter()).map(|c| c.get()).fold(0, u64::wrapping_add)
    }

    /// Registers the series of the heartbeat to signaling (only a relay in a cluster has them).
    pub fn register_cluster(&self) -> prometheus::Result<ClusterMetrics> {
        let heartbeats = IntCounterVec::new(
            Opts::new("relay_cluster_heartbeats_total", "Heartbeats sent to signaling, by result."),
            &["result"],
        )?;
        self.registry.register(Box::new(heartbeats.clone()))?;
        let last_ok = Gauge::new(
            "relay_cluster_last_heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat signaling answered (0 = none yet).",
        )?;
        self.registry.register(Box::new(last_ok.clone()))?;
        Ok(ClusterMetrics {
            ok: heartbeats.with_label_values(&["ok"]),
            error: heartbeats.with_label_values(&["error"]),
            last_ok,
        })
    }

    /// Registers the series of relay-to-relay links (only a relay with `[link]` has them).
    pub fn register_links(&self) -> prometheus::Result<super::link_driver::LinkMetrics> {
        let refusals = IntCounterVec::new(
            Opts::new(
                "relay_link_refusals_total",
                "Relay link certificates refused, by side (accept: a relay linking in; connect: the relay linked to) \
                 and reason.",
            ),
            &["side", "reason"],
        )?;
        self.registry.register(Box::new(refusals.clone()))?;
        let open = IntGauge::new("relay_links_open", "Links to other relays, either way.")?;
        self.registry.register(Box::new(open.clone()))?;
        let per_peer = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
            let v = IntCounterVec::new(Opts::new(name, help), labels)?;
            self.registry.register(Box::new(v.clone()))?;
            Ok(v)
        };
        let datagrams = per_peer(
            "relay_link_datagrams_total",
            "Media datagrams on links, by peer relay and direction (sent, received).",
            &["peer", "direction"],
        )?;
        let bytes = per_peer(
            "relay_link_datagram_bytes_total",
            "Media datagram bytes on links, by peer relay and direction.",
            &["peer", "direction"],
        )?;
        let dropped = per_peer(
            "relay_link_datagrams_dropped_total",
            "Media datagrams not sent on a link, by reason (too_large, unsupported, link_lost, no_link).",
            &["reason"],
        )?;
        let oversize = per_peer(
            "relay_link_oversize_total",
            "Media packets too large for a datagram on a link's path, sent on its reliable stream instead, by peer.",
            &["peer"],
        )?;
        let rtt = prometheus::GaugeVec::new(
            Opts::new("relay_link_rtt_seconds", "Round-trip time of each link, as QUIC measures it."),
            &["peer"],
        )?;
        self.registry.register(Box::new(rtt.clone()))?;
        let unknown_frames = IntCounter::new(
            "relay_link_control_frames_unknown_total",
            "Link control frames of a type this version does not know (sent by a newer relay), skipped.",
        )?;
        self.registry.register(Box::new(unknown_frames.clone()))?;
        Ok(super::link_driver::LinkMetrics {
            refusals: crate::link::tls::Refusals::new(refusals),
            open,
            datagrams,
            bytes,
            dropped,
            oversize,
            rtt,
            unknown_frames,
        })
    }

    /// Brings the Prometheus series up to date and renders them in the text format.
    /// Where the certificates' expiry times go (at load and at each renewal).
    pub fn certificate_expiries(&self) -> super::tls::Expiries {
        self.expiries.clone()
    }

    pub fn render(&self) -> String {
        self.expiry.reset();
        for (name, not_after) in self.expiries.get() {
            self.expiry.with_label_values(&[name]).set(i64::try_from(not_after).unwrap_or(i64::MAX));
        }
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            for (i, (counter, read)) in self.counters.iter().enumerate() {
                let total: u64 = self.workers.iter().map(|w| read(w)).sum();
                counter.inc_by(total.saturating_sub(seen.0[i]));
                seen.0[i] = total.max(seen.0[i]);
            }
        }
        self.allocations_active.set(self.allocations());
        self.relay_sockets_open.set(self.workers.iter().map(|w| w.relay_sockets_open.get()).sum());
        self.relay_ports_free.set(self.shared.free_ports() as i64);
        self.capacity.set(i64::try_from(self.capacity()).unwrap_or(i64::MAX));
        self.connections_open.set(self.workers.iter().map(|w| w.connections_open.get()).sum());
        self.draining_gauge.set(i64::from(self.draining.load(Ordering::Relaxed)));
        if let Some(sfu) = self.sfu.get() {
            let snap = sfu.handle.snapshot();
            let mut seen = sfu.seen.lock().unwrap_or_else(|e| e.into_inner());
            for (i, (counter, read)) in sfu.counters.iter().enumerate() {
                let total = read(&snap);
                counter.inc_by(total.saturating_sub(seen[i]));
                seen[i] = total.max(seen[i]);
            }
            sfu.peers.set(snap.peers as i64);
            // Machines that left disappear from the per-machine series.
            sfu.ingest.reset();
            sfu.subscribers.reset();
            for (machine, bps, subscribers) in &snap.machines {
                sfu.ingest.with_label_values(&[machine.as_str()]).set(*bps as i64);
                sfu.subscribers.with_label_values(&[machine.as_str()]).set(*subscribers as i64);
            }
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The heartbeat's series; the cluster task is their only writer.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// `result="ok"`: signaling answered 2xx with a reply that parsed.
    pub ok: IntCounter,
    /// `result="error"`: anything else (connection, timeout, status, body).
    pub error: IntCounter,
    pub last_ok: Gauge,
}
