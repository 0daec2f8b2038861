use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::turn::auth::CredentialKind;
use crate::turn::types::Username;

fn client(n: u16) -> ClientAddr {
    ClientAddr(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 10_000 + n))
}

fn alloc(c: u16, port: u16, expires: Instant) -> Allocation {
    Allocation::new(
        client(c),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        RelayPort(port),
        Username::new("u"),
        [0; 16],
        CredentialKind::Static,
        expires,
        [0; 12],
        tracing::Span::none(),
    )
}

#[test]
fn indexes_follow_insert_refresh_and_remove() {
    let t0 = Instant::now();
    let mut t = AllocationTable::default();
    let a = t.insert(alloc(1, 50_000, t0 + Duration::from_secs(10)));
    let b = t.insert(alloc(2, 50_002, t0 + Duration::from_secs(20)));
    t.check().unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t.by_client(client(1)).map(|(s, _)| s), Some(a));
    assert_eq!(t.by_port(RelayPort(50_002)).map(|(s, a)| (s, a.client)), Some((b, client(2))));
    assert!(t.by_port(RelayPort(50_001)).is_none());

    // A refresh leaves a stale entry behind: it is skipped, and the allocation expires later.
    t.set_expiry(a, t0 + Duration::from_secs(30));
    t.check().unwrap();
    assert_eq!(t.pop_expired(t0 + Duration::from_secs(15)), None, "a's old expiry is stale");
    assert_eq!(t.pop_expired(t0 + Duration::from_secs(25)), Some(b));
    assert_eq!(t.remove(b).map(|a| a.client), Some(client(2)));
    assert!(t.remove(b).is_none(), "a slot is removed once");
    t.check().unwrap();
    assert!(t.by_port(RelayPort(50_002)).is_none() && !t.contains(client(2)));

    // The freed slot is reused, and b's expiry entry does not expire its new tenant.
    let c = t.insert(alloc(3, 50_004, t0 + Duration::from_secs(100)));
    assert_eq!(c, b);
    t.check().unwrap();
    assert_eq!(t.pop_expired(t0 + Duration::from_secs(31)), Some(a));
    t.remove(a);
    assert_eq!(t.pop_expired(t0 + Duration::from_secs(99)), None);
    assert_eq!(t.next_expiry(), Some(t0 + Duration::from_secs(100)));
    t.check().unwrap();
}

#[test]
fn the_check_finds_a_broken_index() {
    let t0 = Instant::now();
    let mut t = AllocationTable::default();
    let a = t.insert(alloc(1, 50_000, t0));
    t.by_port[50_000] = 0;
    assert!(t.check().unwrap_err().contains("port 50000"), "{:?}", t.check());
    t.by_port[50_000] = 1;
    t.free.push(a.0);
    assert!(t.check().unwrap_err().contains("free list"));
    t.free.clear();
    t.by_client.insert(client(9), 0);
    assert!(t.check().is_err());
}

#[derive(Debug, Clone)]
enum Op {
    Insert { client: u16, port: u16, secs: u64 },
    Refresh { client: u16, secs: u64 },
    Remove { client: u16 },
    Expire { secs: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..16u16, 0..16u16, 1..60u64).prop_map(|(client, port, secs)| Op::Insert { client, port, secs }),
        (0..16u16, 1..60u64).prop_map(|(client, secs)| Op::Refresh { client, secs }),
        (0..16u16).prop_map(|client| Op::Remove { client }),
        (0..60u64).prop_map(|secs| Op::Expire { secs }),
    ]
}

proptest! {
    /// Any sequence of the core's operations keeps the invariants, and the table agrees with a
    /// plain map of client → (port, expiry).
    #[test]
    fn operations_keep_the_invariants(ops in proptest::collection::vec(op(), 1..200)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut t = AllocationTable::default();
        let mut model: BTreeMap<u16, (u16, Instant)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Insert { client: c, port, secs } => {
                    let port = 40_000 + port;
                    if !model.contains_key(&c) && model.values().all(|(p, _)| *p != port) {
                        t.insert(alloc(c, port, now + Duration::from_secs(secs)));
                        model.insert(c, (port, now + Duration::from_secs(secs)));
                    }
                }
                Op::Refresh { client: c, secs } => {
                    if let Some((slot, _)) = t.by_client(client(c)) {
                        t.set_expiry(slot, now + Duration::from_secs(secs));
                        model.get_mut(&c).unwrap().1 = now + Duration::from_secs(secs);
                    }
                }
                Op::Remove { client: c } => {
                    if let Some((slot, _)) = t.by_client(client(c)) {
                        t.remove(slot);
                    }
                    model.remove(&c);
                }
                Op::Expire { secs } => {
                    now += Duration::from_secs(secs);
                    while let Some(slot) = t.pop_expired(now) {
                        let c = t.get(slot).unwrap().client;
                        t.remove(slot);
                        let n = model.iter().find(|(k, _)| client(**k) == c).map(|(k, _)| *k).unwrap();
                        prop_assert!(model[&n].1 <= now, "expired early");
                        model.remove(&n);
                    }
                    prop_assert!(model.values().all(|(_, e)| *e > now), "an expired allocation was left");
                }
            }
            if let Err(e) = t.check() {
                prop_assert!(false, "{}", e);
            }
            prop_assert_eq!(t.len(), model.len());
            for (c, (port, expires)) in &model {
                let (slot, a) = t.by_client(client(*c)).unwrap();
                prop_assert_eq!((a.port, a.expires), (RelayPort(*port), *expires));
                prop_assert_eq!(t.by_port(RelayPort(*port)).map(|(s, _)| s), Some(slot));
            }
        }
    }
}
