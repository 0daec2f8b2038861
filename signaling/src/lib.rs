//! Signaling: the relay registry, region selection for the whole media path, ICE configurations
//! with short-lived TURN credentials, game machines, sessions and their history, and the admin
//! API behind `relayctl`. One axum service; state lives in the store (SQLite or PostgreSQL) so
//! several instances can run behind a load balancer.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod placement;
pub mod state;
pub mod store;
pub mod ws;
