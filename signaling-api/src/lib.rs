//! Signaling's public HTTP API as types. Signaling's handlers return these, and its clients
//! (relayctl first) deserialize them, so a change to a response is a change both sides compile
//! against. Every type round-trips through JSON unchanged (tested below).
//!
//! Responses not yet here are still built as JSON in signaling (`signaling::api`); they move
//! here one resource at a time.

pub mod admin;
pub mod ice;
pub mod machines;
pub mod regions;
pub mod relays;
pub mod sessions;

#[cfg(test)]
mod tests;
