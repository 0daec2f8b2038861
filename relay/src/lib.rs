//! The relay: a TURN/STUN server (RFC 8489, RFC 8656) for live remote play, built as a sans-IO
//! protocol core (`turn`) driven by a thin I/O shell (`shell`): one worker thread per core on
//! SO_REUSEPORT sockets with batched receive and send, plus an admin HTTP listener for metrics
//! and health. `config` turns the TOML file, flags and environment into a validated `Config`.

pub mod config;
pub mod link;
pub mod sfu;
pub mod shell;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod turn;
