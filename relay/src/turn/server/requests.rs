//! The request handlers of the TURN core (RFC 8489 §9.2.4 authentication, RFC 8656 Allocate,
//! Refresh, CreatePermission, ChannelBind); dispatch, the data path and responses are in
//! [`super`]. Each handler answers the request itself (a success or an error response queued
//! for `poll_transmit`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::message::Message;
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tracing::{debug, info, warn};

use super::{RelaySockets, Transmit, TurnServer};
use crate::turn::allocation::{Allocation, BindConflict};
use crate::turn::auth::{CredentialKind, Key, verify_integrity};
use crate::turn::limit::ByteBucket;
use crate::turn::message::*;
use crate::turn::shared::QuotaError;
use crate::turn::stats::{AuthFailure, Refusal};
use crate::turn::table::Slot;
use crate::turn::types::{ChannelNumber, ClientAddr, RelayPort, Username};
use crate::turn::wire::StunFrame;

/// How many random ports an Allocate tries before giving up with 508; a port can be taken by
/// another program on the host even though the pool thinks it free.
const BIND_ATTEMPTS: usize = 16;

/// Which relay port an Allocate gets.
#[derive(Debug, Clone, Copy)]
enum PortChoice {
    Any {
        even: bool,
    },
    /// EVEN-PORT with R: an even port, the next one reserved.
    Pair,
    /// A port reserved earlier, claimed by RESERVATION-TOKEN.
    Reserved(RelayPort),
}

/// Who a request was authenticated as.
pub(super) struct Authenticated {
    username: Username,
    key: Key,
    credential: CredentialKind,
}

impl TurnServer {
    /// RFC 8489 §9.2.4. Sends the error response itself and returns `None` on failure.
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        from: ClientAddr,
        packet: &[u8],
        frame: &StunFrame,
        msg: &Message,
    ) -> Option<Authenticated> {
        let Some(integrity_at) = frame.integrity_at else {
            self.stats.auth_challenges.inc();
            self.challenge(now, from, frame, 401);
            return None;
        };
        let text = |attr| TextAttribute::get_from_as(msg, attr).ok().map(|t| t.text);
        let (Some(username), Some(_realm), Some(nonce)) = (text(ATTR_USERNAME), text(ATTR_REALM), text(ATTR_NONCE))
        else {
            self.stats.auth_failure(AuthFailure::MissingAttributes);
            self.error(from, frame, 400, None);
            return None;
        };

        let existing = self.allocations.by_client(from).map(|(_, a)| a);
        let (key, credential) = match existing {
            Some(alloc) if alloc.username.as_str() != username => {
                // RFC 8656 §5: requests on an allocation must use the credentials that created it.
                self.stats.auth_failure(AuthFailure::WrongCredentials);
                debug!(client = %from, "request with other credentials than its allocation's");
                self.error(from, frame, 441, None);
                return None;
            }
            Some(alloc) => {
                if !verify_integrity(packet, integrity_at, &alloc.key) {
                    self.stats.auth_failure(AuthFailure::BadIntegrity);
                    self.challenge(now, from, frame, 401);
                    return None;
                }
                (alloc.key, alloc.credential)
            }
            None => {
                let candidates = self.credentials.candidates(&username);
                let Some(kind) = candidates.kind else {
                    self.stats.auth_failure(AuthFailure::UnknownUser);
                    debug!(client = %from, "unknown username");
                    self.challenge(now, from, frame, 401);
                    return None;
                };
                let Some(key) = candidates.keys.iter().find(|k| verify_integrity(packet, integrity_at, k)) else {
                    self.stats.auth_failure(AuthFailure::BadIntegrity);
                    debug!(client = %from, "MESSAGE-INTEGRITY mismatch");
                    self.challenge(now, from, frame, 401);
                    return None;
                };
                (*key, kind)
            }
        };
        if !self.config.nonces.is_valid(now, from.0, &nonce) {
            self.stats.auth_failure(AuthFailure::StaleNonce);
            self.challenge(now, from, frame, 438);
            return None;
        }
        Some(Authenticated { username: Username::new(&username), key, credential })
    }

    /// A 401 or 438 carrying REALM and a fresh NONCE (RFC 8489 §9.2.4).
    pub(super) fn challenge(&mut self, now: Instant, from: ClientAddr, frame: &StunFrame, code: u16) {
        let mut reply = Reply::error(frame, code);
        reply.add(&TextAttribute::new(ATTR_REALM, self.credentials.realm().to_owned()));
        reply.add(&TextAttribute::new(ATTR_NONCE, self.config.nonces.issue(now, from.0)));
        self.send(from, reply, None);
    }

    pub(super) fn allocate(
        &mut self,
        now: Instant,
        from: ClientAddr,
        frame: &StunFrame,
        msg: &Message,
        auth: Authenticated,
        sockets: &mut impl RelaySockets,
    ) {
        let key = Some(auth.key);
        if let Some((_, alloc)) = self.allocations.by_client(from) {
            if alloc.allocate_transaction == frame.transaction_id {
                // A retransmission: the same answer again (RFC 8656 §7.2).
                let payload = alloc.allocate_response.clone();
                self.transmits.push_back(Transmit { to: from, payload });
                return;
            }
            return self.error(from, frame, 437, key);
        }

        match attr(msg, ATTR_REQUESTED_TRANSPORT) {
            Some([PROTOCOL_UDP, _, _, _]) => {}
            Some([_, _, _, _]) => return self.error(from, frame, 442, key),
            _ => return self.error(from, frame, 400, key),
        }
        // EVEN-PORT (RFC 8656 §14.6): an even port, and with the R bit the next port reserved
        // for the client's RTCP allocation, which it claims with the RESERVATION-TOKEN we return.
        let choice = match attr(msg, ATTR_EVEN_PORT) {
            None => PortChoice::Any { even: false },
            Some([flags]) if flags & 0x80 != 0 => PortChoice::Pair,
            Some([_]) => PortChoice::Any { even: true },
            Some(_) => return self.error(from, frame, 400, key),
        };
        let family = attr(msg, ATTR_REQUESTED_ADDRESS_FAMILY);
        let token = attr(msg, ATTR_RESERVATION_TOKEN);
        if token.is_some() && (msg_has(msg, ATTR_EVEN_PORT) || family.is_some()) {
            // RFC 8656 §7.2: a token with EVEN-PORT or REQUESTED-ADDRESS-FAMILY is a bad request.
            return self.error(from, frame, 400, key);
        }
        // RFC 6156: the family asked for, or 440 if the relay has none of it. Unasked, the family
        // the client came in with (browsers ask only for IPv6, and only when they reach the
        // server over IPv6), else whatever the relay has.
        let relay = match family {
            None => {
                let v6 = from.0.ip().to_canonical().is_ipv6();
                self.config.relay_for(v6).or_else(|| self.config.relay_for(!v6))
            }
            Some([1, _, _, _]) => self.config.relay_for(false),
            Some([2, _, _, _]) => self.config.relay_for(true),
            Some(_) => None,
        };
        let Some(relay) = relay else {
            return self.error(from, frame, 440, key);
        };
        if self.draining {
            self.stats.refusal(Refusal::Draining);
            return self.error(from, frame, 508, key);
        }
        let unix_now = self.unix_now(now);
        if let CredentialKind::Rest { expiry } = auth.credential
            && expiry <= unix_now
        {
            self.stats.auth_failure(AuthFailure::Expired);
            debug!(client = %from, expiry, unix_now, "expired REST credential");
            return self.challenge(now, from, frame, 401);
        }
        let choice = match token {
            // An unknown or expired token: 508, as RFC 8656 §7.2 says.
            Some(token) => match self.shared.redeem(token, now) {
                Some(port) => PortChoice::Reserved(port),
                None => {
                    self.stats.refusal(Refusal::Reservation);
                    return self.error(from, frame, 508, key);
                }
            },
            None => choice,
        };
        match self.shared.quotas.acquire(&auth.username) {
            Ok(()) => {}
            Err(QuotaError::User) => {
                self.release_choice(choice);
                self.stats.refusal(Refusal::PerUser);
                return self.error(from, frame, 486, key);
            }
            Err(QuotaError::Total) => {
                self.release_choice(choice);
                self.stats.refusal(Refusal::MaxTotal);
                return self.error(from, frame, 508, key);
            }
        }
        let Some((port, reservation)) = self.open_relay(now, choice, relay.bind, sockets) else {
            self.shared.quotas.release(&auth.username);
            self.stats.refusal(match choice {
                PortChoice::Reserved(_) => Refusal::Reservation,
                PortChoice::Any { .. } | PortChoice::Pair => Refusal::Ports,
            });
            return self.error(from, frame, 508, key);
        };

        let lifetime = self.lifetime(msg);
        let span = tracing::info_span!("allocation", client = %from, relay = %port, user = %auth.username);
        let mut alloc = Allocation::new(
            from,
            relay.bind,
            port,
            auth.username,
            auth.key,
            auth.credential,
            now + lifetime,
            frame.transaction_id,
            span,
        );
        let mut reply = Reply::success(frame);
        reply.add(&turn::proto::relayaddr::RelayedAddress { ip: relay.advertised, port: port.0 });
        reply.add(&turn::proto::lifetime::Lifetime(lifetime));
        reply.add(&XorMappedAddress { ip: from.0.ip(), port: from.0.port() });
        if let Some(token) = reservation {
            reply.add(&turn::proto::rsrvtoken::ReservationToken(token.to_vec()));
        }
        let response = reply.finish(&self.config.software, key.as_ref());
        alloc.allocate_response = response.clone();
        alloc.bandwidth = ByteBucket::new(self.config.bandwidth.per_allocation_bps, now);
        alloc.span.in_scope(|| info!(lifetime_s = lifetime.as_secs(), "allocation created"));

        self.allocations.insert(alloc);
        self.stats.allocations_created.inc();
        self.stats.allocations_active.add(1);
        self.transmits.push_back(Transmit { to: from, payload: response });
    }

    /// A reserved port that will not be used goes back to the pool.
    fn release_choice(&self, choice: PortChoice) {
        if let PortChoice::Reserved(port) = choice {
            self.shared.put_port(port);
        }
    }

    /// Takes a port as `choice` says and binds it, trying other random ports when one is in use.
    /// With `PortChoice::Pair` the port's successor is reserved and its token returned.
    fn open_relay(
        &mut self,
        now: Instant,
        choice: PortChoice,
        ip: IpAddr,
        sockets: &mut impl RelaySockets,
    ) -> Option<(RelayPort, Option<[u8; 8]>)> {
        if let PortChoice::Reserved(port) = choice {
            return match sockets.probe(ip, port) {
                Ok(()) => Some((port, None)),
                Err(e) => {
                    debug!(%port, error = %e, "reserved relay port unavailable");
                    self.shared.put_port(port);
                    None
                }
            };
        }
        let mut busy = Vec::new();
        let mut opened = None;
        for _ in 0..BIND_ATTEMPTS {
            let (port, next) = match choice {
                PortChoice::Pair => match self.shared.take_pair() {
                    Some((port, next)) => (port, Some(next)),
                    None => break,
                },
                PortChoice::Any { even } => match self.shared.take_port(even) {
                    Some(port) => (port, None),
                    None => break,
                },
                PortChoice::Reserved(_) => unreachable!("handled above"),
            };
            match sockets.probe(ip, port) {
                Ok(()) => {
                    let token = next.map(|next| {
                        let token: [u8; 8] = self.next_transaction_id()[..8].try_into().expect("12 > 8 bytes");
                        self.shared.reserve(token, next, now);
                        token
                    });
                    opened = Some((port, token));
                    break;
                }
                Err(e) => {
                    debug!(%port, error = %e, "relay port unavailable");
                    busy.push(port);
                    busy.extend(next);
                    if e.kind() != io::ErrorKind::AddrInUse {
                        break;
                    }
                }
            }
        }
        // Ports in use by someone else go back: they may be free by the time they come round again.
        for port in busy {
            self.shared.put_port(port);
        }
        opened
    }

    /// RFC 8656 §7.2: min(requested, maximum), but no less than the default.
    fn lifetime(&self, msg: &Message) -> Duration {
        let requested = match attr(msg, ATTR_LIFETIME) {
            Some(&[a, b, c, d]) => Duration::from_secs(u64::from(u32::from_be_bytes([a, b, c, d]))),
            _ => self.config.default_lifetime,
        };
        requested.min(self.config.max_lifetime).max(self.config.default_lifetime.min(self.config.max_lifetime))
    }

    /// RFC 8656 §7.3 (Refresh): LIFETIME 0 deletes the allocation; otherwise it is extended.
    pub(super) fn refresh(
        &mut self,
        now: Instant,
        from: ClientAddr,
        frame: &StunFrame,
        msg: &Message,
        auth: &Authenticated,
    ) {
        let key = Some(auth.key);
        let Some((slot, relay_ip)) = self.own_allocation(from, frame, key) else { return };
        if let Some(family) = attr(msg, ATTR_REQUESTED_ADDRESS_FAMILY) {
            let ours = if relay_ip.is_ipv4() { 1 } else { 2 };
            if family.first() != Some(&ours) {
                return self.error(from, frame, 443, key);
            }
        }
        let zero = matches!(attr(msg, ATTR_LIFETIME), Some([0, 0, 0, 0]));
        let lifetime = if zero { Duration::ZERO } else { self.lifetime(msg) };
        let mut reply = Reply::success(frame);
        reply.add(&turn::proto::lifetime::Lifetime(lifetime));
        self.send(from, reply, key.as_ref());
        if zero {
            self.remove(slot, "deleted by client");
        } else {
            self.allocations.set_expiry(slot, now + lifetime);
            if let Some(alloc) = self.allocations.get_mut(slot) {
                alloc.sweep(now);
                alloc.span.in_scope(|| debug!(lifetime_s = lifetime.as_secs(), "allocation refreshed"));
            }
        }
    }

    /// The requester's allocation (its slot and relay address); `None`, answered with 437
    /// (Allocation Mismatch), if it has none.
    fn own_allocation(&mut self, from: ClientAddr, frame: &StunFrame, key: Option<Key>) -> Option<(Slot, IpAddr)> {
        let found = self.allocations.by_client(from).map(|(slot, a)| (slot, a.relay_ip));
        if found.is_none() {
            self.error(from, frame, 437, key);
        }
        found
    }

    /// Whether the relay may use every one of `peers` from an allocation on `relay_ip`; if not,
    /// answers 403 for a filtered peer (RFC 8656 §9.1 lets the server restrict peers) or 443 for
    /// one of the other family, and returns false. `check_port`: the peer's port is known (not
    /// in CreatePermission), so relaying to the relay's own listening ports is refused too.
    fn checked_peers(
        &mut self,
        from: ClientAddr,
        frame: &StunFrame,
        key: Option<Key>,
        peers: &[SocketAddr],
        check_port: bool,
        relay_ip: IpAddr,
    ) -> bool {
        let refused = peers.iter().find_map(|&peer| {
            // The SFU's candidate is allowed exactly, port included, even in CreatePermission
            // (whose port RFC 8656 otherwise ignores; browsers put the candidate's port there): a
            // loopback or private SFU address must not open its IP's other ports.
            let sfu = self.config.sfu.contains(&peer);
            if !sfu
                && (self.config.peer_filter.check(peer.ip()).is_err() || (check_port && self.config.own.contains(peer)))
            {
                Some(403)
            } else if peer.is_ipv4() != relay_ip.is_ipv4() {
                Some(443)
            } else {
                None
            }
        });
        let Some(code) = refused else { return true };
        if code == 403 {
            debug!(client = %from, "a request for a forbidden peer");
        }
        self.error(from, frame, code, key);
        false
    }

    /// RFC 8656 §9.2: installs or refreshes permissions for every XOR-PEER-ADDRESS, all or none.
    pub(super) fn create_permission(
        &mut self,
        now: Instant,
        from: ClientAddr,
        frame: &StunFrame,
        msg: &Message,
        auth: &Authenticated,
        sockets: &mut impl RelaySockets,
    ) {
        let key = Some(auth.key);
        let Some((slot, relay_ip)) = self.own_allocation(from, frame, key) else { return };
        let peers = match peer_addresses(msg) {
            Ok(peers) if !peers.is_empty() => peers,
            Ok(_) | Err(_) => return self.error(from, frame, 400, key),
        };
        if !self.checked_peers(from, frame, key, &peers, false, relay_ip) {
            return;
        }
        let ips: Vec<IpAddr> = peers.iter().map(SocketAddr::ip).collect();
        let max = self.config.max_permissions;
        let full = self
            .allocations
            .get(slot)
            .is_none_or(|a| a.permission_count(now) + a.new_permissions_needed(&ips, now) > max);
        if full || !self.bind_relay(slot, sockets) {
            return self.error(from, frame, 508, key);
        }
        let Some(alloc) = self.allocations.get_mut(slot) else { return };
        for ip in &ips {
            alloc.permit(*ip, now);
        }
        alloc.span.in_scope(|| debug!(peers = ?ips, "permissions installed"));
        self.send(from, Reply::success(frame), key.as_ref());
    }

    /// RFC 8656 §12.2: binds a channel number to a peer, and installs its permission.
    pub(super) fn channel_bind(
        &mut self,
        now: Instant,
        from: ClientAddr,
        frame: &StunFrame,
        msg: &Message,
        auth: &Authenticated,
        sockets: &mut impl RelaySockets,
    ) {
        let key = Some(auth.key);
        let Some((slot, relay_ip)) = self.own_allocation(from, frame, key) else { return };
        let raw_number = match attr(msg, ATTR_CHANNEL_NUMBER) {
            Some(&[a, b, _, _]) => Some(u16::from_be_bytes([a, b])),
            _ => None,
        };
        let number = raw_number.and_then(|n| ChannelNumber::new_in(n, self.config.rfc5766_channel_numbers));
        if raw_number.is_some() && number.is_none() {
            debug!(client = %from, number = ?raw_number, "ChannelBind outside 0x4000-0x4FFF");
        }
        let peer = match peer_addresses(msg).as_deref() {
            Ok([peer, ..]) => Some(*peer),
            _ => None,
        };
        let (Some(number), Some(peer)) = (number, peer) else {
            return self.error(from, frame, 400, key);
        };
        if !self.checked_peers(from, frame, key, &[peer], true, relay_ip) {
            return;
        }
        let (max_channels, max_permissions) = (self.config.max_channels, self.config.max_permissions);
        let full = self
            .allocations
            .get(slot)
            .is_none_or(|a| !a.permits(peer.ip(), now) && a.permission_count(now) >= max_permissions);
        if full || !self.bind_relay(slot, sockets) {
            return self.error(from, frame, 508, key);
        }
        let Some(alloc) = self.allocations.get_mut(slot) else { return };
        match alloc.bind_channel(number.get(), peer, now, max_channels) {
            Ok(()) => {}
            Err(BindConflict::TooMany) => return self.error(from, frame, 508, key),
            Err(conflict) => {
                alloc.span.in_scope(|| debug!(channel = %number, %peer, ?conflict, "ChannelBind refused"));
                return self.error(from, frame, 400, key);
            }
        }
        alloc.permit(peer.ip(), now);
        alloc.span.in_scope(|| debug!(channel = %number, %peer, "channel bound"));
        self.send(from, Reply::success(frame), key.as_ref());
    }

    /// Opens the allocation's relay socket if it has none yet; false if the port cannot be bound.
    fn bind_relay(&mut self, slot: Slot, sockets: &mut impl RelaySockets) -> bool {
        let Some(alloc) = self.allocations.get_mut(slot) else { return false };
        if alloc.bound {
            return true;
        }
        match sockets.open(alloc.relay_ip, alloc.port) {
            Ok(()) => {
                alloc.bound = true;
                self.stats.relay_sockets_open.add(1);
                true
            }
            Err(e) => {
                alloc.span.in_scope(|| warn!(error = %e, "relay port taken since Allocate; cannot relay"));
                false
            }
        }
    }
}
