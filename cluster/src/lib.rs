//! The contract between relays and signaling, defined once so that both sides agree by
//! construction:
//!
//! - [`credentials`]: the TURN REST credential scheme (coturn's `use-auth-secret`), which
//!   signaling mints and every relay verifies.
//! - [`media`]: the tokens that open a relay SFU room (WHIP publish, WHEP watch).
//! - [`heartbeat`]: what a relay reports every [`heartbeat::INTERVAL`] and what signaling answers
//!   (commands and the current credential secrets), as JSON over HTTP.
//! - [`ids`]: region and relay ids as both sides accept them.
//! - [`pki`]: the cluster CA that signs the relays' link certificates.
//! - [`time`]: unix time as both sides count it, and UTC dates for people.
//! - [`log`] and [`config_overrides!`]: how both binaries set up logging and take flags and
//!   environment variables over their config files.

pub mod credentials;
pub mod heartbeat;
pub mod ids;
pub mod log;
pub mod media;
pub mod overrides;
pub mod pki;
pub mod time;
