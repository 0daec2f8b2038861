//! The WebSocket connections of this instance, by party, and the messages waiting for parties
//! that are not connected (on SQLite; PostgreSQL keeps them in a table, see [`crate::ws`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::auth::Role;

/// Messages kept for a party that is not connected.
pub const PENDING_MAX: usize = 64;
/// How long they are kept.
pub const PENDING_TTL: Duration = Duration::from_secs(30);

/// Who is on the other end of a socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Party {
    pub role: Role,
    pub id: String,
}

#[derive(Default)]
struct HubState {
    sockets: HashMap<Party, Vec<(u64, mpsc::UnboundedSender<String>)>>,
    pending: HashMap<Party, VecDeque<(Instant, String)>>,
    next_id: u64,
}

/// Connected parties on this instance.
#[derive(Default)]
pub struct Hub {
    state: Mutex<HubState>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        // Critical sections are map updates that cannot panic; a poisoned lock holds valid data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The parties connected here.
    pub fn parties(&self) -> Vec<Party> {
        self.lock().sockets.keys().cloned().collect()
    }

    /// Adds a connection of `party`, handing it what waited for it; returns the connection's id.
    pub fn join(&self, party: &Party, tx: mpsc::UnboundedSender<String>) -> u64 {
        let mut s = self.lock();
        s.next_id += 1;
        let id = s.next_id;
        if let Some(queue) = s.pending.remove(party) {
            for (at, msg) in queue {
                if at.elapsed() < PENDING_TTL {
                    let _ = tx.send(msg);
                }
            }
        }
        s.sockets.entry(party.clone()).or_default().push((id, tx));
        id
    }

    /// Removes the connection `id` of `party`.
    pub fn leave(&self, party: &Party, id: u64) {
        let mut s = self.lock();
        if let Some(list) = s.sockets.get_mut(party) {
            list.retain(|(i, _)| *i != id);
            if list.is_empty() {
                s.sockets.remove(party);
            }
        }
    }

    /// Sends to every connection of `party`, or queues the message if it has none. Returns
    /// whether it was delivered now.
    pub fn send(&self, party: &Party, msg: &Value) -> bool {
        let text = msg.to_string();
        let mut s = self.lock();
        if let Some(list) = s.sockets.get_mut(party) {
            list.retain(|(_, tx)| tx.send(text.clone()).is_ok());
            if !list.is_empty() {
                return true;
            }
        }
        let queue = s.pending.entry(party.clone()).or_default();
        queue.retain(|(at, _)| at.elapsed() < PENDING_TTL);
        if queue.len() >= PENDING_MAX {
            queue.pop_front();
        }
        queue.push_back((Instant::now(), text));
        false
    }

    /// Sends to the party's local connections only; false if it has none here.
    pub fn send_local(&self, party: &Party, text: &str) -> bool {
        let mut s = self.lock();
        match s.sockets.get_mut(party) {
            Some(list) => {
                list.retain(|(_, tx)| tx.send(text.to_owned()).is_ok());
                !list.is_empty()
            }
            None => false,
        }
    }

    pub fn is_connected(&self, party: &Party) -> bool {
        self.lock().sockets.contains_key(party)
    }

    /// Drops expired queues (called from upkeep).
    pub fn sweep(&self) {
        let mut s = self.lock();
        s.pending.retain(|_, q| {
            q.retain(|(at, _)| at.elapsed() < PENDING_TTL);
            !q.is_empty()
        });
    }

    pub fn connections(&self) -> usize {
        self.lock().sockets.values().map(Vec::len).sum()
    }
}
