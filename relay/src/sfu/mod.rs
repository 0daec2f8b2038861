//! The SFU: a game machine publishes once (WHIP); its player and spectators subscribe (WHEP);
//! only the seat holder's inputs reach the machine.
//!
//! `route` is the sans-IO routing core (who gets which packet, rewritten how; key-frame
//! throttling; retransmissions; the seat) and `keyframe` reads codecs' payload headers. `webrtc` wraps
//! str0m (the only module that names it) and `engine` joins peers and router, still sans-IO.

pub mod demux;
pub mod engine;
pub mod keyframe;
pub mod layer;
pub mod offer;
pub mod route;
pub mod stamp;
pub mod webrtc;

pub use engine::{Sfu, SfuError, SfuStats};
pub use keyframe::{Codec, is_keyframe};
pub use route::{Forward, KeyframeRequest, MediaIn, PeerId, Role, RouteError, RouteStats, Router};
