//! The `raw` target: a bare UDP forwarder with a relay's socket pattern and nothing else, the
//! practical limit of this machine for a relay.
//!
//! Like a TURN relay it receives clients on one listening port (one SO_REUSEPORT socket per
//! worker) and sends to the peer from a socket of that client's own ("its allocation"), and back.
//! It uses the same batched I/O and socket buffers as the relay (recvmmsg/sendmmsg, 1 MiB per
//! relay socket), does no parsing, no
//! authentication and no lookups beyond one hash map per client batch. For tests it can also
//! drop every Nth client→peer packet and delay packets, to check that the bench measures loss and
//! latency right.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use relay::shell::udp::{self, RecvBatch, SendBatch, SendQueue};

#[derive(Debug, Clone)]
pub struct RawOptions {
    pub listen: SocketAddr,
    pub peer: SocketAddr,
    pub workers: usize,
    /// Drop every Nth datagram from a client (0 = none).
    pub drop_every: u64,
    /// Hold every datagram this long before forwarding it.
    pub delay: Duration,
}

/// Runs the forwarder until the process is killed. Prints the bound address once ready.
pub fn run(opts: RawOptions) -> anyhow::Result<()> {
    let first = udp::bind_listener(opts.listen, 8 << 20, 8 << 20)?;
    let listen = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..opts.workers.max(1) {
        listeners.push(udp::bind_listener(listen, 8 << 20, 8 << 20)?);
    }
    println!("raw forwarder ready udp://{listen}");
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let opts = opts.clone();
            std::thread::spawn(move || worker(l, &opts))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

struct Delayed {
    due: Instant,
    /// Index into `relays`, or `None` for the listening socket.
    from: Option<usize>,
    to: SocketAddr,
    data: Vec<u8>,
}

fn worker(listener: UdpSocket, opts: &RawOptions) {
    let Ok(mut poll) = Poll::new() else { return };
    let lfd = listener.as_raw_fd();
    if poll.registry().register(&mut SourceFd(&lfd), Token(usize::MAX), Interest::READABLE).is_err() {
        return;
    }
    // One socket per client, like one relayed address per allocation.
    let mut relays: Vec<(UdpSocket, SocketAddr)> = Vec::new();
    let mut by_client: HashMap<SocketAddr, usize> = HashMap::new();
    let mut recv = RecvBatch::new(0);
    let mut queue = SendQueue::new();
    let mut events = Events::with_capacity(1024);
    let mut pending: Vec<usize> = Vec::new();
    let mut delayed: VecDeque<Delayed> = VecDeque::new();
    let mut from_clients: u64 = 0;
    let mut targets: Vec<usize> = Vec::with_capacity(udp::BATCH);
    loop {
        let timeout = if !pending.is_empty() {
            Duration::ZERO
        } else if let Some(d) = delayed.front() {
            d.due.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(100)
        };
        let _ = poll.poll(&mut events, Some(timeout));
        for e in &events {
            if !pending.contains(&e.token().0) {
                pending.push(e.token().0);
            }
        }
        let mut i = 0;
        while i < pending.len() {
            let token = pending[i];
            let fd = if token == usize::MAX { lfd } else { relays[token].0.as_raw_fd() };
            let mut more = true;
            for _ in 0..8 {
                let n = match recv.recv(fd) {
                    Ok(n) => n,
                    Err(_) => {
                        more = false;
                        break;
                    }
                };
                if token == usize::MAX {
                    // Client → peer, from the client's own relay socket.
                    targets.clear();
                    for k in 0..n {
                        let client = recv.source(k);
                        let idx = match by_client.get(&client) {
                            Some(&idx) => idx,
                            None => {
                                let Ok(s) = udp::bind_relay(SocketAddr::new(opts.listen.ip(), 0), 1 << 20, 1 << 20)
                                else {
                                    targets.push(usize::MAX);
                                    continue;
                                };
                                let idx = relays.len();
                                let rfd = s.as_raw_fd();
                                let _ = poll.registry().register(&mut SourceFd(&rfd), Token(idx), Interest::READABLE);
                                relays.push((s, client));
                                by_client.insert(client, idx);
                                idx
                            }
                        };
                        from_clients += 1;
                        let dropped = opts.drop_every > 0 && from_clients.is_multiple_of(opts.drop_every);
                        targets.push(if dropped { usize::MAX } else { idx });
                    }
                    if !opts.delay.is_zero() {
                        for (k, &idx) in targets.iter().enumerate() {
                            if idx != usize::MAX {
                                let due = Instant::now() + opts.delay;
                                delayed.push_back(Delayed {
                                    due,
                                    from: Some(idx),
                                    to: opts.peer,
                                    data: recv.payload(k).to_vec(),
                                });
                            }
                        }
                        continue;
                    }
                    let mut k = 0;
                    while k < n {
                        let idx = targets[k];
                        if idx == usize::MAX {
                            k += 1;
                            continue;
                        }
                        let mut batch = SendBatch::new(&mut queue, relays[idx].0.as_raw_fd());
                        while k < n && targets[k] == idx {
                            batch.push(opts.peer, recv.payload(k));
                            k += 1;
                        }
                        batch.flush();
                    }
                } else {
                    // Peer → client, from the listening socket.
                    let client = relays[token].1;
                    if !opts.delay.is_zero() {
                        for k in 0..n {
                            let due = Instant::now() + opts.delay;
                            delayed.push_back(Delayed { due, from: None, to: client, data: recv.payload(k).to_vec() });
                        }
                        continue;
                    }
                    let mut batch = SendBatch::new(&mut queue, lfd);
                    for k in 0..n {
                        batch.push(client, recv.payload(k));
                    }
                    batch.flush();
                }
                // As the relay: a partial batch means the queue was empty (epoll is edge-triggered).
                if n < udp::BATCH {
                    more = false;
                    break;
                }
            }
            if more {
                i += 1;
            } else {
                pending.swap_remove(i);
            }
        }
        let now = Instant::now();
        while delayed.front().is_some_and(|d| d.due <= now) {
            let Some(d) = delayed.pop_front() else { break };
            let fd = d.from.map_or(lfd, |idx| relays[idx].0.as_raw_fd());
            let _ = udp::send_one(fd, d.to, &d.data);
        }
    }
}
