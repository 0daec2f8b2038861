//! Simulcast across relay links: an edge asks its home relay only for the layers its viewers
//! use, and chooses their layers from the rates the home relay reports.
//!
//! - **Origin side**: every [`LAYER_TICK`](super::LAYER_TICK) (and when a track is announced) the rates of each
//!   simulcast track's layers as the router here receives them go to the edge, when they
//!   changed ([`Control::LayerRates`](crate::link::wire::Control::LayerRates)).
//! - **Edge side**: the stand-in's layers take those rates ([`Router::set_layer_rates`]), so a
//!   layer the edge does not receive still looks live and its bitrate still counts against a
//!   viewer's budget. The mask asked for is the union of every viewer's current and target
//!   layers ([`Router::layers_in_use`]): a layer a viewer switches to is asked for before its
//!   key frame request goes up; one nobody uses any more is dropped at the next tick.

use std::time::Instant;

use super::{LAYER_TICK, LinkSet, drain, split_link_track};
use crate::sfu::route::Router;

impl LinkSet {
    /// Whether any link carries a simulcast track, either way.
    fn has_simulcast(&self) -> bool {
        self.links.values().any(|l| l.tracks.values().any(|t| t.3 > 1) || l.origin.has_simulcast())
    }

    /// Reports rates to the edges and asks the origins for the layers in use.
    pub(super) fn tend_layers(&mut self, router: &Router, now: Instant) {
        for state in self.links.values_mut().filter(|l| l.up) {
            for id in state.origin.simulcast_tracks() {
                let (publisher, track) = split_link_track(id);
                state.origin.report_rates(id, &router.layer_rates(now, publisher, track));
            }
            let mut tracks: Vec<u64> = state.tracks.keys().copied().collect();
            tracks.sort_unstable();
            for id in tracks {
                state.ask_for_layers(router, id);
            }
            drain(state, &mut self.out);
        }
        self.layers_at = self.has_simulcast().then_some(now + LAYER_TICK);
    }
}
