//! Signaling's Prometheus metrics, registered in a registry of their own (no globals). Labels are
//! bounded: routes are the router's patterns, regions and reasons come from fixed sets; no
//! session, machine or player ids.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::auth::Role;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub heartbeats: IntCounterVec,
    pub relays: IntGaugeVec,
    pub sessions_created: IntCounterVec,
    pub sessions_ended: IntCounterVec,
    pub sessions_live: IntGaugeVec,
    pub selections: IntCounterVec,
    pub credentials_minted: IntCounterVec,
    pub database_up: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let metrics = Self {
            http_requests: counter(
                "signaling_http_requests_total",
                "HTTP responses by route and status",
                &["route", "status"],
            )?,
            heartbeats: counter(
                "signaling_relay_heartbeats_total",
                "Relay heartbeats received, by region",
                &["region"],
            )?,
            relays: gauge(
                "signaling_relays",
                "Relays by region and state (serving, draining, dead)",
                &["region", "state"],
            )?,
            sessions_created: counter("signaling_sessions_created_total", "Sessions created, by region", &["region"])?,
            sessions_ended: counter("signaling_sessions_ended_total", "Sessions ended, by reason", &["reason"])?,
            sessions_live: gauge("signaling_sessions_live", "Live sessions", &[])?,
            selections: counter(
                "signaling_region_selections_total",
                "Region choices, by what decided them",
                &["source"],
            )?,
            credentials_minted: counter(
                "signaling_turn_credentials_minted_total",
                "TURN credentials minted, by region",
                &["region"],
            )?,
            database_up: gauge(
                "signaling_database_up",
                "1 while signaling's upkeep (its database's queries, every second) succeeds, 0 after a round failed: \
                 the database is unreachable or failing",
                &[],
            )?,
            registry,
        };
        Ok(metrics)
    }

    /// Creates every series whose labels are known up front at 0 (regions, what ends a session,
    /// what decides a region), so that dashboards and `rate()` see them before they first move.
    pub fn init_series(&self, regions: &[&str]) {
        for region in regions {
            for counter in [&self.sessions_created, &self.heartbeats, &self.credentials_minted] {
                counter.with_label_values(&[*region]);
            }
        }
        // Ended by signaling (store::overdue_sessions), or by a client, counted by its role.
        let roles = [Role::Player, Role::Machine, Role::Admin].map(|r| format!("by_{}", r.as_str()));
        for reason in ["timeout", "max_duration", "machine_offline"].iter().map(|r| r.to_string()).chain(roles) {
            self.sessions_ended.with_label_values(&[reason.as_str()]);
        }
        for source in geo::select::Source::ALL {
            self.selections.with_label_values(&[source.as_str()]);
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
