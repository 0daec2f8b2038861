//! Tables and summaries for people, made from signaling's JSON (whose shapes `signaling::api`
//! defines). Renderers are lenient: a missing field shows as `-` rather than failing, so an older
//! or newer signaling still gets a readable table; `--json` is the exact form for scripts.
//!
//! Text from the server is printed only after control characters are replaced, so a machine name
//! cannot carry terminal escape sequences to an operator's screen.

use std::fmt::Write as _;

use cluster::heartbeat::{LinkReport, RelayState};
use serde_json::Value;
use signaling_api::admin::{Rotated, Status};
use signaling_api::machines::MachineList;
use signaling_api::regions::RegionList;
use signaling_api::relays::{AdminStateChanged, RelayList, RelayRemoved};
use signaling_api::sessions::{SeatHanded, Session, SessionDetail, SessionList};

/// Column alignment: text left, numbers right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Aligned columns separated by two spaces, with an upper-case header; no trailing spaces.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self { columns: columns.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "a row has one cell per column");
        self.rows.push(cells.into_iter().map(|c| clean(&c)).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let width = |i: usize| {
            let cells = self.rows.iter().map(|r| r[i].chars().count());
            cells.chain([self.columns[i].0.len()]).max().unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.columns.len()).map(width).collect();
        let header: Vec<String> = self.columns.iter().map(|(name, _)| (*name).to_owned()).collect();
        let mut out = String::new();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                match self.columns[i].1 {
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key  value` lines with the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs.iter().map(|(k, v)| format!("{k:width$}  {}\n", clean(v))).collect()
}

/// Control characters (escape sequences, newlines) replaced.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect()
}

/// An optional string as a cell: `-` for none.
fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// A JSON value as a cell: strings as they are, `-` for null or missing.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => other.to_string(),
    }
}

/// Milliseconds with the precision that matters at their size (loopback RTTs are fractions of a
/// millisecond; intercontinental ones are hundreds).
pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else if v < 100.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// A duration: `850ms`, `12.4s`, `5m 03s`, `2h 07m`, `3d 04h`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m {:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn ago(ms: i64) -> String {
    format!("{} ago", duration(ms))
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SSZ` (UTC).
pub fn utc(ms: i64) -> String {
    let (y, m, d, h, min, sec) = cluster::time::utc(ms.div_euclid(1000));
    format!("{y:04}-{m:02}-{d:02} {h:02}:{min:02}:{sec:02}Z")
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map_or(&[], Vec::as_slice)
}

// ---- one renderer per command ----

pub fn status(v: &Status) -> String {
    let r = &v.relays;
    fields(&[
        ("version", v.version.clone()),
        ("uptime", duration(v.uptime_secs as i64 * 1000)),
        ("store", v.store.clone()),
        ("regions", v.regions.to_string()),
        ("relays", format!("{} serving, {} draining, {} dead", r.serving, r.draining, r.dead)),
        ("machines", v.machines.to_string()),
        ("sessions", format!("{} live, {} total", v.sessions.live, v.sessions.total)),
        ("secrets", format!("newest {}, {} live", v.secrets.newest, v.secrets.live)),
    ])
}

pub fn regions(v: &RegionList) -> String {
    let mut t = Table::new(&[
        ("REGION", Align::Left),
        ("LAT", Align::Right),
        ("LON", Align::Right),
        ("AVAILABLE", Align::Left),
        ("PROBE TARGETS", Align::Left),
    ]);
    for r in &v.regions {
        let targets: Vec<&str> = r.probe_targets.iter().map(|t| t.url.as_str()).collect();
        t.row(vec![
            r.id.clone(),
            format!("{:.2}", r.lat),
            format!("{:.2}", r.lon),
            if r.available { "yes" } else { "no" }.into(),
            if targets.is_empty() { "-".into() } else { targets.join(", ") },
        ]);
    }
    let mut out = t.render();
    let p = &v.probe;
    let _ = writeln!(
        out,
        "\nclients probe with {} STUN Binding requests per target, {} ms timeout each{}{}",
        p.attempts,
        p.timeout_ms,
        if p.parallel { ", regions in parallel" } else { "" },
        if p.discard_first { ", first sample discarded" } else { "" },
    );
    out
}

pub fn relays(v: &RelayList) -> String {
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("REGION", Align::Left),
        ("STATUS", Align::Left),
        ("ADMIN", Align::Left),
        ("HOST:PORT", Align::Left),
        ("LINK", Align::Right),
        ("LOAD", Align::Right),
        ("ALLOCATIONS", Align::Right),
        ("CAPACITY", Align::Right),
        ("SEEN", Align::Left),
    ]);
    for info in &v.relays {
        let r = &info.relay;
        let host = if r.public_host.contains(':') { format!("[{}]", r.public_host) } else { r.public_host.clone() };
        let (n, max) = (r.load.allocations, r.load.max_allocations);
        // A serving relay within signaling's margin of its capacity gets no new sessions.
        let status = if info.status == "serving" && r.load.is_full() { "full".into() } else { info.status.clone() };
        t.row(vec![
            r.id.clone(),
            r.region.clone(),
            status,
            r.admin_state.as_str().into(),
            format!("{host}:{}", r.turn_udp_port),
            r.link_port.map_or_else(|| "-".into(), |p| p.to_string()),
            format!("{:.0}%", r.utilisation * 100.0),
            n.to_string(),
            if max > 0 { max.to_string() } else { "-".into() },
            ago(info.seen_ago_ms),
        ]);
    }
    if t.is_empty() { "no relays have registered\n".into() } else { t.render() }
}

/// Each link a relay reports (from its last heartbeat): the relay, the peer, the link's state
/// and RTT, media datagrams and bytes each way, losses repaired and given up on, the machines
/// watched through it each way, and the peer's status in the registry. A relay that reports
/// only RTTs (an older version) gets a row per RTT with the rest as `-`.
pub fn links(v: &RelayList) -> String {
    let mut t = Table::new(&[
        ("RELAY", Align::Left),
        ("REGION", Align::Left),
        ("PEER", Align::Left),
        ("PEER REGION", Align::Left),
        ("STATE", Align::Left),
        ("RTT", Align::Right),
        ("SENT", Align::Right),
        ("RECEIVED", Align::Right),
        ("REPAIRED", Align::Right),
        ("LOST", Align::Right),
        ("WATCHING", Align::Right),
        ("SERVING", Align::Right),
        ("PEER STATUS", Align::Left),
    ]);
    for info in &v.relays {
        let r = &info.relay;
        // An older relay reports RTTs only: its links are up, their counters unknown.
        let rows: Vec<(&str, &str, Option<f64>, Option<&LinkReport>)> = if r.links.is_empty() {
            r.link_rtts.iter().map(|(peer, rtt)| (peer.as_str(), "up", Some(*rtt), None)).collect()
        } else {
            r.links.iter().map(|l| (l.peer.as_str(), l.state.as_str(), l.rtt_ms, Some(l))).collect()
        };
        for (peer, state, rtt, report) in rows {
            let other = v.relays.iter().find(|o| o.relay.id == peer);
            let count = |f: fn(&LinkReport) -> String| report.map_or_else(|| "-".to_owned(), f);
            t.row(vec![
                r.id.clone(),
                r.region.clone(),
                peer.to_owned(),
                other.map_or_else(|| "-".into(), |o| o.relay.region.clone()),
                state.to_owned(),
                rtt.map_or_else(|| "-".into(), |rtt| format!("{rtt:.1} ms")),
                count(|l| traffic(l.datagrams_sent, l.bytes_sent)),
                count(|l| traffic(l.datagrams_received, l.bytes_received)),
                count(|l| l.repaired.to_string()),
                count(|l| l.lost.to_string()),
                count(|l| l.watching.to_string()),
                count(|l| l.serving.to_string()),
                other.map_or_else(|| "unknown".into(), |o| o.status.clone()),
            ]);
        }
    }
    if t.is_empty() { "no relay reports a link to another\n".into() } else { t.render() }
}

/// Datagrams and bytes, as `12345 pkts / 14.2 MB`.
fn traffic(datagrams: u64, bytes: u64) -> String {
    let size = match bytes {
        b if b >= 1_000_000_000 => format!("{:.1} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    };
    format!("{datagrams} pkts / {size}")
}

pub fn admin_state(v: &AdminStateChanged) -> String {
    let relay = clean(&v.relay);
    match v.admin_state {
        RelayState::Draining => format!("relay {relay} is draining: it keeps its sessions and takes no new ones\n"),
        RelayState::Serving => format!("relay {relay} is back in rotation\n"),
    }
}

pub fn removed(v: &RelayRemoved) -> String {
    format!("relay {} removed from the registry\n", clean(&v.relay))
}

pub fn machines(v: &MachineList) -> String {
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("NAME", Align::Left),
        ("STATUS", Align::Left),
        ("SESSION", Align::Left),
        ("LAST SEEN", Align::Left),
        ("RTTS", Align::Left),
    ]);
    for m in &v.machines {
        let rtts: Vec<String> = m.rtts.iter().map(|(region, rtt)| format!("{region} {}", ms(*rtt))).collect();
        t.row(vec![
            m.id.clone(),
            m.name.clone(),
            m.status.clone(),
            // Only admins are shown sessions; a player's token sees `-`.
            opt(&m.session_id.clone().flatten()),
            // signaling's clock against ours: a small skew shows as "0ms ago".
            ago(m.seen_ago_ms),
            if rtts.is_empty() { "-".into() } else { rtts.join(", ") },
        ]);
    }
    if t.is_empty() { "no machines have registered\n".into() } else { t.render() }
}

pub fn sessions(v: &SessionList) -> String {
    let now = cluster::time::unix_now_ms();
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("MACHINE", Align::Left),
        ("PLAYER", Align::Left),
        ("REGION", Align::Left),
        ("RELAY", Align::Left),
        ("STATUS", Align::Left),
        ("REQUESTED", Align::Left),
        ("DURATION", Align::Right),
        ("END REASON", Align::Left),
    ]);
    for info in &v.sessions {
        let s = &info.record;
        let length = match info.duration_ms {
            Some(d) => duration(d),
            None => format!("{} so far", duration(now - s.requested_ms)),
        };
        t.row(vec![
            s.id.clone(),
            s.machine_id.clone(),
            s.player.clone(),
            s.region.clone(),
            s.relay_id.clone(),
            info.status.clone(),
            utc(s.requested_ms),
            length,
            opt(&s.end_reason),
        ]);
    }
    if t.is_empty() { "no sessions match\n".into() } else { t.render() }
}

/// One session's fields, then its event timeline relative to the request.
pub fn session(v: &SessionDetail) -> String {
    let s = &v.session.record;
    let requested = s.requested_ms;
    let since = |at: Option<i64>| at.map(|at| format!("+{}", duration(at - requested)));
    let mut pairs = vec![
        ("session", s.id.clone()),
        ("status", v.session.status.clone()),
        ("machine", s.machine_id.clone()),
        ("player", s.player.clone()),
        ("mode", s.mode.clone()),
        ("region", s.region.clone()),
        ("relay", s.relay_id.clone()),
        ("chosen by", s.source.clone()),
        ("score", s.scores["score_ms"].as_f64().map_or("-".into(), ms)),
        ("client ip", opt(&s.client_ip)),
        ("requested", utc(requested)),
        ("connected", since(s.connected_ms).unwrap_or_else(|| "-".into())),
    ];
    if let Some(ended) = since(s.ended_ms) {
        pairs.push(("ended", format!("{ended}, {} by {}", opt(&s.end_reason), opt(&s.ended_by))));
    }
    let mut out = fields(&pairs);
    let mut t = Table::new(&[("TIME", Align::Right), ("EVENT", Align::Left), ("DETAIL", Align::Left)]);
    for e in &v.events {
        let at = format!("+{:.3}s", (e.at_ms - requested) as f64 / 1000.0);
        let detail = match e.kind.as_str() {
            "region_chosen" => region_chosen(&e.detail),
            _ => key_values(&e.detail),
        };
        t.row(vec![at, e.kind.clone(), detail]);
    }
    out.push('\n');
    out.push_str(&t.render());
    out
}

/// `eu-central via eu-1 (probes); eu-central 75 ms, us-east 115 ms, ap-southeast excluded (dead)`.
fn region_chosen(d: &Value) -> String {
    let scores: Vec<String> = list(d, "scores")
        .iter()
        .map(|s| {
            let region = text(&s["region"]);
            match (s["total_ms"].as_f64(), s["excluded_reason"].as_str()) {
                (_, Some(why)) => format!("{region} excluded ({why})"),
                (Some(total), None) => format!("{region} {}", ms(total)),
                (None, None) => format!("{region} no estimate"),
            }
        })
        .collect();
    let mut out = format!("{} via {} ({})", text(&d["region"]), text(&d["relay"]), text(&d["source"]));
    if !scores.is_empty() {
        let _ = write!(out, "; scores: {}", scores.join(", "));
    }
    out
}

/// `key=value ...` of an object's scalar members.
fn key_values(d: &Value) -> String {
    match d.as_object() {
        Some(o) if !o.is_empty() => o.iter().map(|(k, v)| format!("{k}={}", text(v))).collect::<Vec<_>>().join(" "),
        _ if d.is_null() => String::new(),
        _ => d.to_string(),
    }
}

pub fn seat(v: &SeatHanded) -> String {
    let who = |x: &Option<String>| x.as_deref().map_or_else(|| "nobody".to_owned(), clean);
    format!("session {}: the seat is now {}'s (was {}'s)\n", clean(&v.session), who(&v.holder), who(&v.previous))
}

pub fn ended(v: &Session) -> String {
    let s = &v.record;
    format!(
        "session {} ended ({}, by {}) after {}\n",
        clean(&s.id),
        clean(&opt(&s.end_reason)),
        clean(&opt(&s.ended_by)),
        v.duration_ms.map_or("-".into(), duration),
    )
}

pub fn rotated(v: &Rotated) -> String {
    format!(
        "TURN secret rotated: version {} is current, {} secrets accepted; the older ones retire after {} s\n",
        v.version, v.live_secrets, v.previous_retire_after_secs,
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let mut t = Table::new(&[("ID", Align::Left), ("LOAD", Align::Right), ("NOTE", Align::Left)]);
        t.row(vec!["eu-1".into(), "5%".into(), "".into()]);
        t.row(vec!["ap-southeast-2".into(), "100%".into(), "hot\x1b[31m".into()]);
        assert_eq!(
            t.render(),
            "ID              LOAD  NOTE\n\
             eu-1              5%\n\
             ap-southeast-2  100%  hot\u{fffd}[31m\n"
        );
    }

    #[test]
    fn times_read_naturally() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_400), "12.4s");
        assert_eq!(duration(303_000), "5m 03s");
        assert_eq!(duration(7_620_000), "2h 07m");
        assert_eq!(duration(-5), "0ms");
        assert_eq!(ms(0.123), "0.12 ms");
        assert_eq!(ms(42.26), "42.3 ms");
        assert_eq!(ms(180.4), "180 ms");
    }

    #[test]
    fn region_chosen_summarises_every_region() {
        let d = json!({
            "region": "eu-central", "relay": "eu-1", "source": "probes", "score_ms": 75.0,
            "scores": [
                {"region": "eu-central", "total_ms": 75.0, "excluded_reason": null},
                {"region": "us-east", "total_ms": 115.5, "excluded_reason": null},
                {"region": "ap-southeast", "total_ms": null, "excluded_reason": "dead"},
            ],
        });
        assert_eq!(
            region_chosen(&d),
            "eu-central via eu-1 (probes); scores: eu-central 75.0 ms, us-east 116 ms, ap-southeast excluded (dead)"
        );
    }
}
