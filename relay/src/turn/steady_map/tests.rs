use std::collections::{HashMap, VecDeque};
use std::hash::RandomState;

use super::*;

/// The soak's pattern, on one worker: a thousand new keys a minute for an hour, half removed
/// after 20 s and half after 10 min (their lifetime), so about 5,000 are held once the first ten
/// minutes are over. Calls `watch(minute)` every simulated second.
fn churn(mut insert: impl FnMut(u64), mut remove: impl FnMut(u64), mut watch: impl FnMut(u64)) {
    let mut due: VecDeque<(u64, u64)> = VecDeque::new();
    let mut late: VecDeque<(u64, u64)> = VecDeque::new();
    let mut key = 0u64;
    for tenth in 0..60 * 600u64 {
        for _ in tenth * 1000 / 600..(tenth + 1) * 1000 / 600 {
            key += 1;
            insert(key);
            if key.is_multiple_of(2) {
                due.push_back((tenth + 200, key));
            } else {
                late.push_back((tenth + 6000, key));
            }
        }
        for q in [&mut due, &mut late] {
            while q.front().is_some_and(|(t, _)| *t <= tenth) {
                remove(q.pop_front().unwrap().1);
            }
        }
        if tenth.is_multiple_of(10) {
            watch(tenth / 600);
        }
    }
}

#[test]
fn under_steady_churn_the_table_stops_growing_after_its_peak() {
    let map = std::cell::RefCell::new(SteadyMap::<u64, u32, RandomState>::default());
    let mut room_at_10 = 0;
    let mut peak = 0;
    churn(
        |k| assert!(map.borrow_mut().insert(k, 1).is_none()),
        |k| assert_eq!(map.borrow_mut().remove(&k), Some(1)),
        |minute| {
            let m = map.borrow();
            assert!(m.len() * 2 <= m.room(), "more than half full: {} of {}", m.len(), m.room());
            assert!(m.capacity() <= m.room(), "the map resized on its own: {} > {}", m.capacity(), m.room());
            peak = peak.max(m.len());
            if minute == 10 {
                room_at_10 = m.room();
            } else if minute > 10 {
                assert_eq!(m.room(), room_at_10, "the table was replaced at minute {minute} ({} entries)", m.len());
            }
        },
    );
    let m = map.into_inner();
    assert!((4_500..5_500).contains(&m.len()), "the pattern holds about 5,000 keys, not {}", m.len());
    assert!(room_at_10 >= 2 * peak && room_at_10 <= 8 * peak, "room {room_at_10} for a peak of {peak}");
}

/// What the map is for: `std`'s own map, under the same churn, grows to a new table long after
/// its entries stopped growing (if this ever fails, hashbrown changed, and `SteadyMap` may no
/// longer be needed).
#[test]
fn a_plain_map_under_the_same_churn_grows_late() {
    let map = std::cell::RefCell::new(HashMap::<u64, u32, RandomState>::default());
    let (mut at_10, mut max_after) = (0, 0);
    churn(
        |k| assert!(map.borrow_mut().insert(k, 1).is_none()),
        |k| assert_eq!(map.borrow_mut().remove(&k), Some(1)),
        |minute| {
            let cap = map.borrow().capacity();
            if minute == 10 {
                at_10 = at_10.max(cap);
            } else if minute > 10 {
                max_after = max_after.max(cap);
            }
        },
    );
    assert!(max_after > at_10 * 3 / 2, "capacity {at_10} at minute 10, at most {max_after} later");
}

#[test]
fn it_is_a_map() {
    let mut m = SteadyMap::<&str, u32, RandomState>::default();
    assert!(m.is_empty());
    assert_eq!(m.insert("a", 1), None);
    assert_eq!(m.insert("a", 2), Some(1));
    *m.get_mut("a").unwrap() += 1;
    assert_eq!(m.get("a"), Some(&3));
    assert!(m.contains_key("a") && !m.contains_key("b"));
    assert_eq!(m.len(), 1);
    assert_eq!(m.remove("a"), Some(3));
    assert_eq!(m.remove("a"), None);
    assert!(m.is_empty() && m.room() >= 2);
}
