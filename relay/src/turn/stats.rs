//! Counters the TURN core keeps, read by the metrics endpoint.
//!
//! Each `TurnServer` owns one `Stats` and is the only writer; the admin thread only reads. So a
//! counter is bumped with a relaxed load and store (no locked instruction, no contention on the
//! packet path) and read with a relaxed load; the reader sees each counter's latest value within
//! a scrape's accuracy. The label sets are closed enums, so metric cardinality is fixed.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A counter with a single writer (see the module docs).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a plain read-modify-write cannot lose updates.
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge with a single writer.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn add(&self, n: i64) {
        self.0.store(self.0.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const COUNT: usize = Self::ALL.len();

            /// The metric label value.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }
    };
}

label_enum! {
    /// Which way relayed data went.
    Direction { ClientToPeer => "client_to_peer", PeerToClient => "peer_to_client" }
}

label_enum! {
    /// Why a datagram was dropped without an answer.
    DropReason {
        Malformed => "malformed",
        BadFingerprint => "bad_fingerprint",
        NotTurn => "not_turn",
        Truncated => "truncated",
        UnexpectedMessage => "unexpected_message",
        NoAllocation => "no_allocation",
        NoChannel => "no_channel",
        NoPermission => "no_permission",
        PeerBlocked => "peer_blocked",
        SelfRelay => "self_relay",
        UnknownAttribute => "unknown_attribute",
        SendBufferFull => "send_buffer_full",
        SendError => "send_error",
        RateLimited => "rate_limited",
        BandwidthCap => "bandwidth_cap",
    }
}

label_enum! {
    /// What happened to TCP and TLS connections (the shell counts these; the core has none).
    ConnEvent {
        Accepted => "accepted",
        RefusedPerIp => "refused_per_ip",
        RefusedTotal => "refused_total",
        HandshakeFailed => "handshake_failed",
        HandshakeTimeout => "handshake_timeout",
        BadFraming => "bad_framing",
        IdleClosed => "idle_closed",
        ClosedByClient => "closed_by_client",
        Error => "error",
    }
}

label_enum! {
    /// Why an authenticated request was refused.
    AuthFailure {
        MissingAttributes => "missing_attributes",
        UnknownUser => "unknown_user",
        BadIntegrity => "bad_integrity",
        StaleNonce => "stale_nonce",
        Expired => "expired",
        WrongCredentials => "wrong_credentials",
    }
}

label_enum! {
    /// Why an Allocate was refused for want of room (RFC 8656: 508 Insufficient Capacity, and
    /// 486 Allocation Quota Reached for a username's quota): no free relay port (the range is
    /// used up, or its free ports could not be bound); `allocations.max_total` reached; the relay
    /// drains; a RESERVATION-TOKEN unknown, expired or its port no longer free;
    /// `allocations.max_per_user` reached (486).
    Refusal {
        Ports => "ports",
        MaxTotal => "max_total",
        Draining => "draining",
        Reservation => "reservation",
        PerUser => "per_user",
    }
}

label_enum! {
    /// STUN/TURN methods, for request counts.
    Method {
        Binding => "binding",
        Allocate => "allocate",
        Refresh => "refresh",
        CreatePermission => "create_permission",
        ChannelBind => "channel_bind",
        Other => "other",
    }
}

/// Error codes the relay sends, for response counts (RFC 8489 §14.8, RFC 8656 §19).
pub const ERROR_CODES: &[u16] = &[400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 500, 508];

/// Everything one core counts.
#[derive(Debug, Default)]
pub struct Stats {
    pub allocations_active: Gauge,
    /// Allocations whose relay socket is open (see `server`: sockets open at the first permission).
    pub relay_sockets_open: Gauge,
    pub allocations_created: Counter,
    pub auth_challenges: Counter,
    pub auth_failures: [Counter; AuthFailure::COUNT],
    pub relayed_packets: [Counter; Direction::COUNT],
    pub relayed_bytes: [Counter; Direction::COUNT],
    pub dropped: [Counter; DropReason::COUNT],
    pub requests: [Counter; Method::COUNT],
    pub error_responses: [Counter; ERROR_CODES.len()],
    /// Allocates refused for want of room, by reason.
    pub refusals: [Counter; Refusal::COUNT],
    /// TCP and TLS connections open, and what happened to them.
    pub connections_open: Gauge,
    pub connections: [Counter; ConnEvent::COUNT],
}

impl Stats {
    #[inline]
    pub fn relayed(&self, dir: Direction, bytes: usize) {
        self.relayed_packets[dir as usize].inc();
        self.relayed_bytes[dir as usize].add(bytes as u64);
    }

    #[inline]
    pub fn record_drop(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }

    pub fn auth_failure(&self, reason: AuthFailure) {
        self.auth_failures[reason as usize].inc();
    }

    pub fn error_response(&self, code: u16) {
        if let Some(i) = ERROR_CODES.iter().position(|&c| c == code) {
            self.error_responses[i].inc();
        }
    }

    pub fn refusal(&self, reason: Refusal) {
        self.refusals[reason as usize].inc();
    }

    pub fn connection(&self, event: ConnEvent) {
        self.connections[event as usize].inc();
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].get()
    }
}
