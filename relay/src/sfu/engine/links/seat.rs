//! One seat across relays. At the home relay of a machine the seat is held by one of its own
//! viewers, by a viewer at one linked relay, or by nobody:
//!
//! - An edge whose viewer takes the seat (a player joining there) says so before that viewer's
//!   first input ([`Control::SeatTaken`](crate::link::wire::Control::SeatTaken)): the last to
//!   take it holds it ([`LinkSet::seat_taken`]).
//! - The seat handed at the home relay (signaling's seat call, or an operator's) goes to a
//!   viewer there, or, when none of that name watches there, to one at a linked relay that
//!   reported the name ([`LinkSet::viewer_elsewhere`], [`LinkSet::hand_seat_to_link`]).
//! - Whichever relay loses the seat is told ([`Control::Seat`](crate::link::wire::Control::Seat)
//!   with no holder), so that its viewer stops sending inputs that would be dropped.
//!
//! At the edge, the home relay's word is carried out by the engine ([`LinkSet::seat_from_home`]
//! keeps the edge from claiming again a seat it was handed).

use tracing::info;

use super::{LinkSet, RemoteSeat, drain};
use crate::sfu::route::{PeerId, Router};

impl LinkSet {
    /// Whether seat inputs for `machine` (published here) from linked relay `relay` reach it.
    pub fn holds_seat(&self, machine: &str, relay: Option<&str>) -> bool {
        relay.is_some_and(|r| self.remote_seats.get(machine).is_some_and(|held| held.relay == r))
    }

    /// The name of the viewer at a linked relay who was handed `machine`'s seat, if one was.
    pub fn remote_holder(&self, machine: &str) -> Option<&str> {
        self.remote_seats.get(machine).and_then(|s| s.name.as_deref())
    }

    /// `machine`'s seat was handed here (to a viewer of this relay, or to nobody): no linked
    /// relay holds it any more, and the one that did is told.
    pub fn seat_handed_here(&mut self, machine: &str) {
        if let Some(lost) = self.remote_seats.remove(machine) {
            self.tell_seat(machine, &lost.relay, None);
        }
    }

    /// A viewer at `relay` took the seat of `machine` (published here): the last to take it
    /// holds it, so a viewer here loses it, and so does another relay's.
    pub(super) fn seat_taken(&mut self, router: &mut Router, machine: &str, relay: &str) {
        info!(relay, machine, "a viewer at a linked relay holds the seat");
        if router.seat(machine).is_some() {
            let _ = router.hand_seat(machine, None);
        }
        let held = RemoteSeat { relay: relay.to_owned(), name: None };
        if let Some(lost) = self.remote_seats.insert(machine.to_owned(), held).filter(|l| l.relay != relay) {
            self.tell_seat(machine, &lost.relay, None);
        }
    }

    /// A linked relay (the first by id, if several) where a viewer of `machine` known as
    /// `name` watches.
    pub fn viewer_elsewhere(&self, machine: &str, name: &str) -> Option<String> {
        let mut relays: Vec<&String> =
            self.links.iter().filter(|(_, l)| l.up && l.origin.has_viewer(machine, name)).map(|(id, _)| id).collect();
        relays.sort();
        relays.first().map(|r| (*r).clone())
    }

    /// Hands `machine`'s seat to the viewer `name` at linked relay `relay` (a viewer here that
    /// held it was relieved by the caller); the relay that held it before is told it lost it.
    /// Returns the name of the remote holder before, if known.
    pub fn hand_seat_to_link(&mut self, machine: &str, relay: &str, name: &str) -> Option<String> {
        let held = RemoteSeat { relay: relay.to_owned(), name: Some(name.to_owned()) };
        let before = self.remote_seats.insert(machine.to_owned(), held);
        if let Some(lost) = before.as_ref().filter(|l| l.relay != relay) {
            self.tell_seat(machine, &lost.relay, None);
        }
        self.tell_seat(machine, relay, Some(name));
        before.and_then(|b| b.name)
    }

    /// At an edge: the home relay handed `machine`'s seat to `holder` here (or to nobody
    /// here). The edge does not claim it again for that holder.
    pub fn seat_from_home(&mut self, machine: &str, holder: Option<PeerId>) {
        for state in self.links.values_mut().filter(|l| l.machines.contains_key(machine)) {
            match holder {
                Some(peer) => state.seats.insert(machine.to_owned(), peer),
                None => state.seats.remove(machine),
            };
        }
    }

    fn tell_seat(&mut self, machine: &str, relay: &str, holder: Option<&str>) {
        if let Some(state) = self.links.get_mut(relay) {
            state.origin.hand_seat(machine, holder);
            drain(state, &mut self.out);
        }
    }
}
