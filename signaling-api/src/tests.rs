//! Every response type survives JSON unchanged, and reads the JSON signaling has always sent.

use cluster::heartbeat::{Load, RelayState};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use cluster::media::MediaRole;

use crate::admin::{Health, RelayCounts, Role, Rotated, SecretCounts, SessionCounts, Status, TokenIssued};
use crate::ice::{Alternate, IceConfig, IceServer, PassedOver, PassedOverReason, RelayRef, SelectionSummary};
use crate::machines::{HeartbeatReply, MachineInfo, MachineList, Publish, Registered};
use crate::regions::{ProbePolicy, ProbeTarget, RegionInfo, RegionList};
use crate::relays::{AdminStateChanged, Relay, RelayInfo, RelayList, RelayRemoved};
use crate::sessions::{
    SeatHanded, Session, SessionCreated, SessionDetail, SessionEvent, SessionList, SessionRecord, SfuViewer, Watch,
};

/// `value` → JSON → back, equal; and `wire` (the JSON as clients have seen it) reads as `value`.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T, wire: serde_json::Value) {
    let json = serde_json::to_value(&value).unwrap();
    assert_eq!(serde_json::from_value::<T>(json.clone()).unwrap(), value);
    assert_eq!(json, wire, "the wire format changed");
}

fn relay() -> RelayInfo {
    let relay = Relay {
        id: "eu-1".into(),
        region: "eu-central".into(),
        version: "0.1.0".into(),
        public_host: "2001:db8::1".into(),
        turn_udp_port: 3478,
        turn_tls_port: Some(443),
        sfu_url: None,
        link_port: Some(4433),
        link_rtts: [("ap-1".to_owned(), 162.5)].into_iter().collect(),
        links: vec![cluster::heartbeat::LinkReport {
            peer: "ap-1".into(),
            state: cluster::heartbeat::LinkState::Up,
            rtt_ms: Some(162.5),
            datagrams_sent: 10,
            datagrams_received: 2,
            bytes_sent: 12_000,
            bytes_received: 80,
            repaired: 1,
            lost: 0,
            resent: 0,
            watching: 0,
            serving: 1,
        }],
        state: RelayState::Serving,
        admin_state: RelayState::Draining,
        load: Load { allocations: 3, max_allocations: 100, cpu: 0.25, bandwidth_bps: 1000, bandwidth_cap_bps: 0 },
        utilisation: 0.25,
        started_at: 1_800_000_000,
        first_seen_ms: 1_800_000_000_000,
        last_seen_ms: 1_800_000_005_000,
    };
    RelayInfo { relay, status: "draining".into(), seen_ago_ms: 1200 }
}

#[test]
fn admin_responses() {
    round_trip(
        Status {
            version: "0.1.0".into(),
            uptime_secs: 42,
            store: "sqlite".into(),
            regions: 3,
            relays: RelayCounts { serving: 2, draining: 1, dead: 0 },
            machines: 5,
            sessions: SessionCounts { live: 1, total: 9 },
            secrets: SecretCounts { newest: 7, live: 2 },
        },
        json!({
            "version": "0.1.0", "uptime_secs": 42, "store": "sqlite", "regions": 3,
            "relays": { "serving": 2, "draining": 1, "dead": 0 }, "machines": 5,
            "sessions": { "live": 1, "total": 9 }, "secrets": { "newest": 7, "live": 2 },
        }),
    );
    round_trip(
        Rotated { version: 1793, live_secrets: 2, previous_retire_after_secs: 900 },
        json!({ "version": 1793, "live_secrets": 2, "previous_retire_after_secs": 900 }),
    );
}

#[test]
fn relay_responses() {
    round_trip(
        RelayList { relays: vec![relay()] },
        json!({ "relays": [{
            "id": "eu-1", "region": "eu-central", "version": "0.1.0", "public_host": "2001:db8::1",
            "turn_udp_port": 3478, "turn_tls_port": 443, "sfu_url": null, "link_port": 4433, "link_rtts": {"ap-1": 162.5},
            "links": [{ "peer": "ap-1", "state": "up", "rtt_ms": 162.5, "datagrams_sent": 10, "datagrams_received": 2,
                        "bytes_sent": 12_000, "bytes_received": 80, "repaired": 1, "lost": 0, "resent": 0,
                        "watching": 0, "serving": 1 }],
            "state": "serving",
            "admin_state": "draining",
            "load": { "allocations": 3, "max_allocations": 100, "cpu": 0.25, "bandwidth_bps": 1000, "bandwidth_cap_bps": 0 },
            "utilisation": 0.25, "started_at": 1_800_000_000u64, "first_seen_ms": 1_800_000_000_000u64,
            "last_seen_ms": 1_800_000_005_000u64, "status": "draining", "seen_ago_ms": 1200,
        }] }),
    );
    round_trip(
        AdminStateChanged { relay: "eu-1".into(), admin_state: RelayState::Draining },
        json!({ "relay": "eu-1", "admin_state": "draining" }),
    );
    round_trip(RelayRemoved { relay: "eu-1".into(), removed: true }, json!({ "relay": "eu-1", "removed": true }));
}

fn session() -> Session {
    let record = SessionRecord {
        id: "ses_1".into(),
        machine_id: "m1".into(),
        player: "alice".into(),
        mode: "sfu".into(),
        region: "eu-central".into(),
        relay_id: "eu-1".into(),
        source: "probes".into(),
        scores: json!({ "score_ms": 20.0, "sfu": { "relay": "eu-1" } }),
        client_ip: Some("192.0.2.7".into()),
        requested_ms: 1000,
        connected_ms: Some(1500),
        ended_ms: Some(61_000),
        end_reason: Some("bye".into()),
        ended_by: Some("player".into()),
    };
    // Status and duration follow from the record.
    let session = Session::from(record.clone());
    assert_eq!(session, Session { record, status: "ended".into(), duration_ms: Some(60_000) });
    session
}

#[test]
fn session_responses() {
    let wire = json!({
        "id": "ses_1", "machine_id": "m1", "player": "alice", "mode": "sfu", "region": "eu-central",
        "relay_id": "eu-1", "source": "probes", "scores": { "score_ms": 20.0, "sfu": { "relay": "eu-1" } },
        "client_ip": "192.0.2.7", "requested_ms": 1000, "connected_ms": 1500, "ended_ms": 61_000,
        "end_reason": "bye", "ended_by": "player", "status": "ended", "duration_ms": 60_000,
    });
    round_trip(session(), wire.clone());
    round_trip(SessionList { sessions: vec![session()] }, json!({ "sessions": [wire.clone()] }));
    let event = SessionEvent { seq: 1, at_ms: 1000, kind: "requested".into(), detail: json!({ "mode": "sfu" }) };
    let mut detail_wire = wire;
    detail_wire["events"] = json!([{ "seq": 1, "at_ms": 1000, "kind": "requested", "detail": { "mode": "sfu" } }]);
    round_trip(SessionDetail { session: session(), events: vec![event] }, detail_wire);
    round_trip(
        SeatHanded { session: "ses_1".into(), holder: Some("bob".into()), previous: None },
        json!({ "session": "ses_1", "holder": "bob", "previous": null }),
    );
}

#[test]
fn region_and_machine_responses() {
    round_trip(
        RegionList {
            regions: vec![RegionInfo {
                id: "eu-central".into(),
                lat: 50.1,
                lon: 8.7,
                available: true,
                probe_targets: vec![ProbeTarget {
                    relay: "eu-1".into(),
                    url: "stun:[2001:db8::1]:3478".into(),
                    host: "2001:db8::1".into(),
                    port: 3478,
                }],
            }],
            probe: ProbePolicy { attempts: 5, timeout_ms: 800, discard_first: true, parallel: true },
        },
        json!({
            "regions": [{ "id": "eu-central", "lat": 50.1, "lon": 8.7, "available": true, "probe_targets": [
                { "relay": "eu-1", "url": "stun:[2001:db8::1]:3478", "host": "2001:db8::1", "port": 3478 }
            ] }],
            "probe": { "attempts": 5, "timeout_ms": 800, "discard_first": true, "parallel": true },
        }),
    );
    let machine = |session_id| MachineInfo {
        id: "m1".into(),
        name: "Pusher 1".into(),
        status: "in_session".into(),
        last_seen_ms: 1000,
        seen_ago_ms: 20,
        rtts: [("eu-central".to_owned(), 12.5)].into(),
        session_id,
    };
    let wire = json!({ "id": "m1", "name": "Pusher 1", "status": "in_session", "last_seen_ms": 1000,
        "seen_ago_ms": 20, "rtts": { "eu-central": 12.5 } });
    // A player sees no session field; an admin sees the session, or null.
    round_trip(MachineList { machines: vec![machine(None)] }, json!({ "machines": [wire.clone()] }));
    let mut with = wire.clone();
    with["session_id"] = json!("ses_1");
    round_trip(machine(Some(Some("ses_1".into()))), with);
    let mut null = wire;
    null["session_id"] = json!(null);
    round_trip(machine(Some(None)), null);
}

#[test]
fn ice_config_responses() {
    let server = || IceServer {
        urls: vec!["turn:[2001:db8::1]:3478?transport=udp".into(), "turns:relay.example:443?transport=tcp".into()],
        username: "1800000600:alice".into(),
        credential: "c2VjcmV0".into(),
    };
    let relay = || RelayRef { id: "eu-1".into(), region: "eu-central".into(), host: "2001:db8::1".into() };
    let server_wire = json!({ "urls": ["turn:[2001:db8::1]:3478?transport=udp", "turns:relay.example:443?transport=tcp"],
        "username": "1800000600:alice", "credential": "c2VjcmV0" });
    let relay_wire = json!({ "id": "eu-1", "region": "eu-central", "host": "2001:db8::1" });
    let session = IceConfig {
        ice_servers: vec![server()],
        ice_transport_policy: "all".into(),
        bundle_policy: "max-bundle".into(),
        region: "eu-central".into(),
        relay: relay(),
        ttl: 600,
        expires_at: 1_800_000_600,
        refresh_after: 1_800_000_450,
        alternates: None,
        selection: None,
    };
    let mut wire = json!({ "iceServers": [server_wire.clone()], "iceTransportPolicy": "all",
        "bundlePolicy": "max-bundle", "region": "eu-central", "relay": relay_wire.clone(), "ttl": 600,
        "expires_at": 1_800_000_600u64, "refresh_after": 1_800_000_450u64 });
    // A session's refreshed credentials: no alternates, no selection.
    round_trip(session.clone(), wire.clone());
    // A new placement: both.
    let placed = IceConfig {
        alternates: Some(vec![Alternate { region: "eu-central".into(), relay: relay(), ice_servers: vec![server()] }]),
        selection: Some(SelectionSummary {
            source: geo::Source::Probes,
            score_ms: Some(21.5),
            scores: vec![],
            passed_over: vec![],
        }),
        ..session
    };
    wire["alternates"] = json!([{ "region": "eu-central", "relay": relay_wire, "iceServers": [server_wire] }]);
    wire["selection"] = json!({ "source": "probes", "score_ms": 21.5, "scores": [] });
    round_trip(placed.clone(), wire.clone());
    // A relay passed over, at its capacity, is named with its figures.
    let mut full = placed.clone();
    full.selection.as_mut().unwrap().passed_over = vec![PassedOver {
        relay: "eu-2".into(),
        region: "eu-central".into(),
        reason: PassedOverReason::Full,
        allocations: 49,
        capacity: 50,
    }];
    let mut full_wire = wire.clone();
    full_wire["selection"]["passed_over"] =
        json!([{ "relay": "eu-2", "region": "eu-central", "reason": "full", "allocations": 49, "capacity": 50 }]);
    round_trip(full, full_wire);

    // `POST /v1/sessions` repeats the placement's relay, selection and alternates at the top.
    let created = |sfu| SessionCreated {
        session_id: "ses_1".into(),
        machine_id: "m1".into(),
        mode: "direct".into(),
        region: "eu-central".into(),
        relay: relay(),
        selection: placed.selection.clone(),
        alternates: placed.alternates.clone(),
        ice: placed.clone(),
        sfu,
    };
    let mut created_wire = json!({ "session_id": "ses_1", "machine_id": "m1", "mode": "direct",
        "region": "eu-central", "relay": relay_wire, "selection": wire["selection"],
        "alternates": wire["alternates"], "ice": wire, "sfu": null });
    round_trip(created(None), created_wire.clone());
    let viewer = SfuViewer {
        relay: "eu-1".into(),
        region: "eu-central".into(),
        whep_url: "https://eu-1.example/whep/ses_1".into(),
        token: "tok".into(),
    };
    created_wire["sfu"] = json!({ "relay": "eu-1", "region": "eu-central",
        "whep_url": "https://eu-1.example/whep/ses_1", "token": "tok" });
    round_trip(created(Some(viewer)), created_wire);
}

#[test]
fn watch_health_token_and_machine_responses() {
    round_trip(
        Watch {
            relay: "eu-1".into(),
            whep_url: "https://eu-1.example/whep/ses_1".into(),
            token: "tok".into(),
            role: MediaRole::Spectator,
        },
        json!({ "relay": "eu-1", "whep_url": "https://eu-1.example/whep/ses_1", "token": "tok", "role": "spectator" }),
    );
    round_trip(
        Health { status: "ok".into(), store: "postgres".into() },
        json!({ "status": "ok", "store": "postgres" }),
    );
    round_trip(
        TokenIssued { token: "eyJ".into(), sub: "m1".into(), role: Role::Machine, expires_at: 1_800_003_600 },
        json!({ "token": "eyJ", "sub": "m1", "role": "machine", "expires_at": 1_800_003_600u64 }),
    );
    round_trip(
        Registered { machine_id: "m1".into(), heartbeat_secs: 5 },
        json!({ "machine_id": "m1", "heartbeat_secs": 5 }),
    );
    // No live session: both null.
    round_trip(
        HeartbeatReply { heartbeat_secs: 5, session: None, sfu: None },
        json!({ "heartbeat_secs": 5, "session": null, "sfu": null }),
    );
    // In an sfu session: the session's record (no status) and where to publish.
    let record = session().record;
    let record_wire = json!({
        "id": "ses_1", "machine_id": "m1", "player": "alice", "mode": "sfu", "region": "eu-central",
        "relay_id": "eu-1", "source": "probes", "scores": { "score_ms": 20.0, "sfu": { "relay": "eu-1" } },
        "client_ip": "192.0.2.7", "requested_ms": 1000, "connected_ms": 1500, "ended_ms": 61_000,
        "end_reason": "bye", "ended_by": "player",
    });
    round_trip(
        HeartbeatReply {
            heartbeat_secs: 5,
            session: Some(record),
            sfu: Some(Publish {
                relay: "eu-1".into(),
                whip_url: "https://eu-1.example/whip/m1".into(),
                token: "pub".into(),
            }),
        },
        json!({ "heartbeat_secs": 5, "session": record_wire,
            "sfu": { "relay": "eu-1", "whip_url": "https://eu-1.example/whip/m1", "token": "pub" } }),
    );
}
