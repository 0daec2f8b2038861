//! The SFU: a game machine publishes once (WHIP); its player and spectators subscribe (WHEP);
//! only the seat holder's inputs reach the machine.
//!
//! `route` is the sans-IO routing core (who gets which packet, rewritten how; key-frame
//! throttling; retransmissions; the seat) and `keyframe` reads codecs' payload headers. The
//! WebRTC peers themselves (str0m) live behind the shell.

pub mod keyframe;
pub mod route;

pub use keyframe::{Codec, is_keyframe};
pub use route::{Forward, KeyframeRequest, MediaIn, PeerId, Role, RouteError, RouteStats, Router};
