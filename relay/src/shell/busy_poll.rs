//! Busy polling before sleeping (`server.busy_poll_us`): trading idle CPU for wake-up latency.
//!
//! A worker that sleeps in `epoll_wait` between datagrams pays a wake-up for each one that
//! arrives while it sleeps. On a virtual machine that is the largest part of a relayed round
//! trip at light load: the idle vCPU halts, and the hypervisor must schedule it again before the
//! datagram is read (tens of microseconds, and more when the host is busy). A worker that keeps
//! polling for a moment after its last datagram reads the next one at once if it comes within
//! that moment. That is the guest halt-polling the kernel can do for a whole VM
//! (`haltpoll.guest_halt_poll_ns`, often disabled by providers), or Seastar's idle polling, done
//! by the worker for its own sockets only.
//!
//! The price is CPU time while polling, so the policy is bounded:
//! - it only follows traffic: polling starts after a turn that served datagrams and stops
//!   `window` after the last one; an idle relay sleeps as before;
//! - it stops when the worker is loaded: if the worker was busy for more than half of the last
//!   period, its core is needed for datagrams, and at that load they mostly arrive while it works
//!   anyway (batched), so there is little wake-up latency left to save;
//! - polling takes at most half of any period, so a light but steady flow costs at most half a
//!   core per worker.
//!
//! Off (window zero) by default.

use std::time::{Duration, Instant};

/// Load and polling time are measured over periods this long.
const PERIOD: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct BusyPoll {
    window: Duration,
    period_start: Instant,
    /// Time spent serving (from each wake-up to the end of its work) in this period.
    busy: Duration,
    /// Time spent polling in this period.
    polled: Duration,
    /// Whether the previous period's load allows polling in this one.
    allowed: bool,
    /// When the last turn that served datagrams ended.
    last_traffic: Option<Instant>,
}

impl BusyPoll {
    pub fn new(window: Duration, now: Instant) -> Self {
        Self {
            window,
            period_start: now,
            busy: Duration::ZERO,
            polled: Duration::ZERO,
            allowed: true,
            last_traffic: None,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// Accounts one turn of the loop: woken at `woke`, work finished at `done`, and whether it
    /// served any datagram.
    pub fn turn(&mut self, woke: Instant, done: Instant, traffic: bool) {
        self.busy += done.saturating_duration_since(woke);
        if traffic {
            self.last_traffic = Some(done);
        }
        let elapsed = done.saturating_duration_since(self.period_start);
        if elapsed >= PERIOD {
            self.allowed = self.busy * 2 <= elapsed;
            self.period_start = done;
            self.busy = Duration::ZERO;
            self.polled = Duration::ZERO;
        }
    }

    /// Until when to poll instead of sleeping, as of `now` (the end of the last turn); `None` to
    /// sleep at once.
    pub fn poll_until(&self, now: Instant) -> Option<Instant> {
        if self.window.is_zero() || !self.allowed {
            return None;
        }
        let until = self.last_traffic? + self.window;
        // The period's polling budget: half of it.
        let budget = (PERIOD / 2).saturating_sub(self.polled);
        let until = until.min(now + budget);
        (until > now).then_some(until)
    }

    /// Accounts time spent polling.
    pub fn polled(&mut self, spent: Duration) {
        self.polled += spent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn off_never_polls() {
        let t = Instant::now();
        let mut b = BusyPoll::new(Duration::ZERO, t);
        b.turn(t, t + us(5), true);
        assert!(!b.enabled());
        assert_eq!(b.poll_until(t + us(5)), None);
    }

    #[test]
    fn polls_only_after_traffic_and_for_the_window() {
        let t = Instant::now();
        let mut b = BusyPoll::new(us(200), t);
        // A wake-up with no datagram (a timer): nothing to follow.
        b.turn(t, t + us(2), false);
        assert_eq!(b.poll_until(t + us(2)), None);
        b.turn(t + us(10), t + us(20), true);
        assert_eq!(b.poll_until(t + us(20)), Some(t + us(220)));
        // A later turn without traffic keeps the window anchored at the last datagram.
        b.turn(t + us(100), t + us(105), false);
        assert_eq!(b.poll_until(t + us(105)), Some(t + us(220)));
        assert_eq!(b.poll_until(t + us(220)), None);
    }

    #[test]
    fn stops_when_the_worker_is_loaded() {
        let t = Instant::now();
        let mut b = BusyPoll::new(us(200), t);
        // Turns of 60 µs every 100 µs: the worker is busy 60% of the time. The turn that ends
        // past the period's end closes it.
        let mut now = t;
        while now <= t + PERIOD {
            b.turn(now, now + us(60), true);
            now += us(100);
        }
        let done = now - us(40);
        assert_eq!(b.poll_until(done), None, "{b:?}");
        // A period at 10% load allows polling again.
        let start = now;
        while now <= start + PERIOD {
            b.turn(now, now + us(10), true);
            now += us(100);
        }
        let done = now - us(90);
        assert_eq!(b.poll_until(done), Some(done + us(200)), "{b:?}");
    }

    #[test]
    fn polling_takes_at_most_half_of_a_period() {
        let t = Instant::now();
        let mut b = BusyPoll::new(us(1000), t);
        b.turn(t, t + us(1), true);
        b.polled(PERIOD / 2 - us(300));
        assert_eq!(b.poll_until(t + us(1)), Some(t + us(301)));
        b.polled(us(300));
        assert_eq!(b.poll_until(t + us(1)), None);
        // A new period brings a new budget.
        let later = t + PERIOD + us(1);
        b.turn(later - us(1), later, true);
        assert_eq!(b.poll_until(later), Some(later + us(1000)));
    }
}
