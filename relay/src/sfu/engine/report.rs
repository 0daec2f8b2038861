//! What the SFU engine reports: its counters and why it refused a request.

use crate::sfu::keyframe::Codec;
use crate::sfu::route::RouteError;
use crate::sfu::webrtc::PeerError;

/// What the engine counts besides the router's [`super::RouteStats`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SfuStats {
    pub peers_created: u64,
    pub peers_connected: u64,
    /// Peers ended by an error or a panic of their WebRTC stack, or by ICE.
    pub peers_lost: u64,
    pub panics: u64,
    /// Datagrams the SFU took (matched to a peer).
    pub datagrams_in: u64,
    /// Datagrams matched to a peer that its stack refused.
    pub datagrams_refused: u64,
    /// NACKs received from subscribers (answered by str0m's RTX from shared payloads).
    pub nacks_received: u64,
    /// Subscribers closed because their session ended (signaling revoked its media tokens).
    pub peers_revoked: u64,
    /// Subscribers refused because they could decode none of the publisher's video codecs.
    pub codec_refusals: u64,
}

/// Why a publish or subscribe request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("no subscriber {0:?} in machine {1:?}'s room")]
    NoSubscriber(String, String),
    #[error("session {0:?} has ended")]
    SessionEnded(String),
    #[error("machine {machine:?} is published at relay {home:?}, and this relay has no [link] to reach it")]
    NoLinks { machine: String, home: String },
    #[error(
        "the viewer cannot decode the machine's video: the machine sends {}, the offer takes {}",
        names(publisher),
        names(viewer)
    )]
    NoCommonCodec { publisher: Vec<Codec>, viewer: Vec<Codec> },
}

/// Codecs by their SDP names, for messages: "H264, VP8" (or "none").
fn names(codecs: &[Codec]) -> String {
    if codecs.is_empty() {
        return "none".into();
    }
    codecs.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}
