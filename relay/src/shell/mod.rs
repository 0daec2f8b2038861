//! The I/O shell: sockets, threads, timers, signals and the admin HTTP listener around the
//! sans-IO core. It moves bytes between the kernel and `turn::TurnServer` and nothing else.

pub mod admin;
pub mod banner;
pub mod busy_poll;
pub mod cluster;
pub mod control;
pub mod link_driver;
pub mod links;
pub mod metrics;
pub mod relays;
pub mod reload;
pub mod run;
pub mod sfu;
pub mod stream;
pub mod tls;
pub mod udp;
pub mod whip;
pub mod worker;

pub use run::{Relay, run};
