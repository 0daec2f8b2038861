//! Relay-to-relay links: one QUIC connection (quinn) per pair of relays, opened by the edge
//! relay that has viewers for a machine published at another (home) relay, with mutual TLS from
//! the cluster CA.
//!
//! - [`tls`]: the link's TLS: the cluster CA as the only root, certificates for relay ids,
//!   refusals counted by reason.
//! - [`endpoint`]: the QUIC endpoint a relay listens on and opens links from; the admission of
//!   a connecting relay (certificate, then a welcome stream that confirms it).
//! - [`node`]: the same links sans-IO (`quinn-proto`): an endpoint and its connections driven
//!   by the thread that owns them, with no task in between.
//! - [`wire`]: what travels on a link, sans-IO: media datagrams and control frames.
//! - [`stream`]: control frames read from and written to a link's reliable stream.
//! - [`edge`]: the edge relay's side, sans-IO: one subscription per machine, merged key-frame
//!   requests, layer masks, loss repair by NACK.
//! - [`origin`]: the home relay's side, sans-IO: what crosses (subscribed machines, wanted
//!   layers), NACKs answered from a per-layer buffer, events for the router.

pub mod edge;
pub mod endpoint;
pub mod node;
pub mod origin;
pub mod stream;
pub mod tls;
pub mod wire;
