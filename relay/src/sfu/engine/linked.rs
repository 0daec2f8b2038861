//! The engine's side of its relay links: what the shell hands it from a link (up, down, a
//! datagram, a control message) and what it carries out for them (see [`super::links`]).

use std::time::Instant;

use tracing::info;

use super::Sfu;
use super::links::{LinkAction, LinkOutput, LinkStats, LinkView};
use crate::link::wire::Control;
use crate::sfu::route::PeerId;

impl Sfu {
    /// Relay links are configured: this relay is `own` in the cluster.
    pub fn attach_links(&mut self, own: &str) {
        self.links.attach(own);
    }

    pub fn link_stats(&self) -> &LinkStats {
        &self.links.stats
    }

    /// Each relay link as the SFU sees it, by peer relay id.
    pub fn link_views(&self) -> Vec<(String, LinkView)> {
        self.links.views()
    }

    /// The next thing for the shell to do on a link.
    pub fn poll_link_output(&mut self) -> Option<LinkOutput> {
        self.links.poll_output()
    }

    /// The link to `relay` is up (a new connection, either way).
    pub fn link_up(&mut self, now: Instant, relay: &str) {
        let peers = &self.peers;
        self.links.link_up(&mut self.router, &|p| peers.contains_key(&p), now, relay);
        self.layout += 1;
    }

    /// The link to `relay` is gone: its viewers here wait for it to come back.
    pub fn link_down(&mut self, now: Instant, relay: &str) {
        let peers = &self.peers;
        self.links.link_down(&mut self.router, &|p| peers.contains_key(&p), now, relay);
        self.layout += 1;
    }

    /// A media datagram from `relay`, for the viewers here of the machine it carries.
    pub fn link_datagram(&mut self, now: Instant, relay: &str, data: &[u8]) {
        let Some((stand_in, codec, pkt)) = self.links.datagram(now, relay, data) else { return };
        let mut queue = Vec::new();
        self.route(now, stand_in, codec, pkt, &mut queue);
        for id in queue {
            self.service(now, id);
        }
        self.links.flush(&mut self.router, now);
    }

    /// A control message from `relay`.
    pub fn link_control(&mut self, now: Instant, relay: &str, message: Control) {
        let mut queue = Vec::new();
        for action in self.links.control(&mut self.router, now, relay, message) {
            match action {
                LinkAction::Layout => self.layout += 1,
                LinkAction::Media { stand_in, codec, pkt } => self.route(now, stand_in, codec, pkt, &mut queue),
                LinkAction::KeyframesFor { machine } => {
                    if let Some(&publisher) = self.publishers.get(&machine) {
                        for track in 0..self.router.tracks(&machine).len() {
                            self.router.request_keyframe(now, publisher, track, u16::MAX);
                        }
                    }
                }
                LinkAction::HandSeat { machine, holder } => {
                    // The home relay's word: to that viewer here (gone meanwhile: nobody).
                    let to = holder.as_deref().and_then(|name| self.subscriber_named(&machine, name));
                    info!(
                        relay,
                        machine,
                        holder = holder.as_deref().unwrap_or("nobody"),
                        here = to.is_some(),
                        "seat handed by the home relay"
                    );
                    let _ = self.router.hand_seat(&machine, to);
                    self.links.seat_from_home(&machine, to);
                }
                LinkAction::ToViewers { machine, binary, data } => {
                    let viewers: Vec<PeerId> = self.router.subscribers(&machine).into_iter().map(|(p, _)| p).collect();
                    self.send_data(&viewers, binary, &data, &mut queue);
                }
                LinkAction::ToMachine { machine, binary, data, stamp } => {
                    // The edge let only its seat holder's input through; here the seat must not
                    // be held by a viewer of this relay, and that relay must have taken it last.
                    let held =
                        self.router.seat(&machine).is_none() && self.links.holds_seat(&machine, stamp.relay.as_deref());
                    match self.publishers.get(&machine).copied().filter(|_| held) {
                        Some(publisher) => {
                            self.links.stats.seat_inputs += 1;
                            self.send_input(publisher, binary, &data, &stamp, &mut queue);
                        }
                        None => self.links.stats.seat_inputs_dropped += 1,
                    }
                }
            }
        }
        self.deliver_to(now, &mut queue);
        for id in queue {
            self.service(now, id);
        }
    }
}
