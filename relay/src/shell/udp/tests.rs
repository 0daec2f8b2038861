use super::*;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const HEADROOM: usize = 48;

fn local(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, 0)
}

fn v4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// Waits until `fd` is readable or `deadline` passes.
fn wait_readable(fd: RawFd, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, borrowed mutably for the call.
    let r = unsafe { libc::poll(&raw mut pfd, 1, left.as_millis().max(1) as c_int) };
    r > 0
}

/// Receives until `want` datagrams arrived or 5 s passed, calling `each` for every one.
fn recv_until(batch: &mut RecvBatch, fd: RawFd, want: usize, mut each: impl FnMut(&mut RecvBatch, usize)) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = 0;
    while got < want {
        match batch.recv(fd) {
            Ok(n) => {
                assert!((1..=BATCH).contains(&n));
                for i in 0..n {
                    each(batch, i);
                }
                got += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(wait_readable(fd, deadline), "timed out with {got}/{want} datagrams");
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
    assert_eq!(got, want);
}

fn datagram(k: usize) -> Vec<u8> {
    // Sizes spread over 1..=1500 including both ends; the first byte (k * 31 mod 256, a
    // bijection for k < 256) identifies the datagram.
    let size = match k {
        0 => 1,
        1 => 1500,
        _ => 1 + (k * 577) % 1500,
    };
    (0..size).map(|j| (k * 31 + j * 7) as u8).collect()
}

fn roundtrip(ip: IpAddr) {
    let listener = bind_listener(local(ip), 1 << 21, 1 << 21).unwrap();
    let to = listener.local_addr().unwrap();
    let senders: Vec<UdpSocket> = (0..4).map(|_| bind_relay(local(ip), 0, 0).unwrap()).collect();
    let data: Vec<Vec<u8>> = (0..100).map(datagram).collect();

    let mut queue = SendQueue::new();
    for (s, sender) in senders.iter().enumerate() {
        let mut batch = SendBatch::new(&mut queue, sender.as_raw_fd());
        let mut pushed = 0;
        for d in data.iter().skip(s).step_by(senders.len()) {
            batch.push(to, d);
            pushed += 1;
        }
        let stats = batch.flush();
        assert_eq!(stats, SendStats { sent: pushed, ..SendStats::default() });
    }

    let mut batch = RecvBatch::new(HEADROOM);
    let mut seen = HashMap::new();
    recv_until(&mut batch, listener.as_raw_fd(), data.len(), |b, i| {
        assert!(!b.truncated(i));
        let payload = b.payload(i);
        let k = data.iter().position(|d| d[0] == payload[0]).expect("unknown datagram");
        assert_eq!(b.len(i), data[k].len());
        assert_eq!(payload, &data[k][..]);
        assert_eq!(b.source(i), senders[k % senders.len()].local_addr().unwrap());
        // The datagram sits at the headroom; the headroom itself was never written.
        let buf = b.buf(i);
        assert_eq!(buf.len(), BUF_SIZE);
        assert_eq!(&buf[HEADROOM..HEADROOM + payload.len()], &data[k][..]);
        assert!(buf[..HEADROOM].iter().all(|&x| x == 0));
        assert!(seen.insert(k, ()).is_none(), "datagram {k} twice");
    });
    assert_eq!(seen.len(), data.len());
}

#[test]
fn batch_roundtrip_v4() {
    roundtrip(v4());
}

#[test]
fn batch_roundtrip_v6() {
    let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
    if let Err(e) = UdpSocket::bind(local(ip)) {
        eprintln!("SKIPPED batch_roundtrip_v6: cannot bind [::1] in this environment: {e}");
        return;
    }
    roundtrip(ip);
}

#[test]
fn headroom_untouched_and_rewritable_in_place() {
    let listener = bind_listener(local(v4()), 0, 0).unwrap();
    let to = listener.local_addr().unwrap();
    let sender = bind_relay(local(v4()), 0, 0).unwrap();
    let fd = listener.as_raw_fd();
    let mut batch = RecvBatch::new(HEADROOM);
    assert_eq!((batch.headroom(), batch.room()), (HEADROOM, BUF_SIZE - HEADROOM - TAILROOM));

    send_one(sender.as_raw_fd(), to, b"first").unwrap();
    recv_until(&mut batch, fd, 1, |_, _| {});
    let (buf, range) = batch.buf_mut(0);
    assert_eq!(buf.len(), BUF_SIZE);
    assert_eq!(range, HEADROOM..HEADROOM + 5);
    assert!(buf.len() - range.end >= TAILROOM);
    buf[..HEADROOM].fill(0xAA);

    // The next datagram lands in the same buffer and must leave the headroom alone.
    send_one(sender.as_raw_fd(), to, b"second!").unwrap();
    recv_until(&mut batch, fd, 1, |_, _| {});
    assert_eq!(batch.payload(0), b"second!");
    let (buf, range) = batch.buf_mut(0);
    assert!(buf[..HEADROOM].iter().all(|&x| x == 0xAA));

    // Prepend a 4-byte header and pad the tail in place, then send that sub-range.
    buf[range.start - 4..range.start].copy_from_slice(&[0x40, 0x00, 0x00, 0x07]);
    buf[range.end] = 0;
    let message = range.start - 4..range.end + 1;
    let back = bind_relay(local(v4()), 0, 0).unwrap();
    let mut queue = SendQueue::new();
    let mut send = SendBatch::new(&mut queue, fd);
    send.push(back.local_addr().unwrap(), &batch.buf(0)[message]);
    assert_eq!(send.flush().sent, 1);

    let mut other = RecvBatch::new(0);
    recv_until(&mut other, back.as_raw_fd(), 1, |b, i| {
        assert_eq!(b.payload(i), b"\x40\x00\x00\x07second!\x00");
        assert_eq!(b.source(i), to);
    });
}

#[test]
fn oversized_datagram_is_truncated() {
    let listener = bind_listener(local(v4()), 0, 0).unwrap();
    let to = listener.local_addr().unwrap();
    let sender = bind_relay(local(v4()), 0, 1 << 20).unwrap();
    let mut batch = RecvBatch::new(HEADROOM);
    assert_eq!(send_one(sender.as_raw_fd(), to, &[7u8; 3000]).unwrap(), 3000);
    assert_eq!(send_one(sender.as_raw_fd(), to, &[8u8; 100]).unwrap(), 100);
    let mut results = Vec::new();
    recv_until(&mut batch, listener.as_raw_fd(), 2, |b, i| results.push((b.truncated(i), b.len(i))));
    assert_eq!(results, [(true, batch.room()), (false, 100)]);
}

#[test]
fn empty_socket_would_block() {
    let listener = bind_listener(local(v4()), 0, 0).unwrap();
    let mut batch = RecvBatch::new(HEADROOM);
    let e = batch.recv(listener.as_raw_fd()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    assert_eq!(batch.count(), 0);
}

#[test]
fn relay_port_in_use() {
    let first = bind_relay(local(v4()), 0, 0).unwrap();
    let e = bind_relay(first.local_addr().unwrap(), 0, 0).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    // A listener without SO_REUSEPORT on the relay's side can't share the port either.
    let e = bind_listener(first.local_addr().unwrap(), 0, 0).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
}

#[test]
fn listeners_share_a_port() {
    let first = bind_listener(local(v4()), 0, 0).unwrap();
    let addr = first.local_addr().unwrap();
    let second = bind_listener(addr, 0, 0).unwrap();
    assert_eq!(second.local_addr().unwrap(), addr);
}

#[test]
fn buffer_sizes_applied() {
    let want = 3 << 20;
    let socket = bind_listener(local(v4()), want, want).unwrap();
    let socket = socket2::SockRef::from(&socket);
    let read_max = |name: &str| -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}")).map_or(0, |s| s.trim().parse().unwrap())
    };
    // FORCE gives 2 × want; the capped fallback at least min(want, max) (doubled, too).
    assert!(socket.recv_buffer_size().unwrap() >= want.min(read_max("rmem_max")));
    assert!(socket.send_buffer_size().unwrap() >= want.min(read_max("wmem_max")));
}

#[test]
fn more_than_batch_auto_flushes() {
    let listener = bind_listener(local(v4()), 1 << 21, 0).unwrap();
    let to = listener.local_addr().unwrap();
    let sender = bind_relay(local(v4()), 0, 1 << 21).unwrap();
    let data: Vec<[u8; 2]> = (0..100u16).map(u16::to_be_bytes).collect();
    let mut queue = SendQueue::new();
    let mut batch = SendBatch::new(&mut queue, sender.as_raw_fd());
    for (k, d) in data.iter().enumerate() {
        batch.push(to, d);
        // A full queue is sent when the next datagram arrives.
        assert_eq!(batch.stats().sent, k / BATCH * BATCH);
        assert_eq!(batch.queued(), k % BATCH + 1);
    }
    assert_eq!(batch.flush(), SendStats { sent: 100, ..SendStats::default() });
    assert_eq!(batch.queued(), 0);
    drop(batch);

    let mut seen = vec![false; data.len()];
    recv_until(&mut RecvBatch::new(HEADROOM), listener.as_raw_fd(), data.len(), |b, i| {
        let k = usize::from(u16::from_be_bytes(b.payload(i).try_into().unwrap()));
        assert!(!std::mem::replace(&mut seen[k], true));
    });
}

/// A port that was just bound and released, so nothing listens there.
fn closed_port() -> SocketAddr {
    let socket = UdpSocket::bind(local(v4())).unwrap();
    socket.local_addr().unwrap()
}

#[test]
fn send_to_closed_port_unconnected() {
    // Linux doesn't report ICMP errors to unconnected sockets without IP_RECVERR; whatever it
    // does, every datagram must be accounted for and nothing may panic.
    let closed = closed_port();
    let sender = bind_relay(local(v4()), 0, 0).unwrap();
    let mut queue = SendQueue::new();
    let mut batch = SendBatch::new(&mut queue, sender.as_raw_fd());
    for _ in 0..3 {
        batch.push(closed, b"x");
    }
    batch.flush();
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..3 {
        batch.push(closed, b"y");
    }
    let stats = batch.flush();
    assert_eq!(stats.sent + stats.dropped(), 6);
    let _ = send_one(sender.as_raw_fd(), closed, b"z");
}

#[test]
fn icmp_error_drops_one_datagram_and_sends_the_rest() {
    // A connected socket does get the ICMP port unreachable as ECONNREFUSED on its next send.
    let closed = closed_port();
    let listener = bind_listener(local(v4()), 0, 0).unwrap();
    let open = listener.local_addr().unwrap();
    let sender = bind_relay(local(v4()), 0, 0).unwrap();
    sender.connect(closed).unwrap();
    let mut queue = SendQueue::new();

    let mut batch = SendBatch::new(&mut queue, sender.as_raw_fd());
    batch.push(closed, b"probe");
    assert_eq!(batch.flush().sent, 1);
    drop(batch);
    std::thread::sleep(Duration::from_millis(50));

    let mut batch = SendBatch::new(&mut queue, sender.as_raw_fd());
    batch.push(closed, b"refused");
    batch.push(open, b"after");
    let stats = batch.flush();
    assert_eq!(stats.sent + stats.dropped(), 2);
    assert_eq!(stats.dropped_error, 1, "{stats:?}");
    assert_eq!(stats.last_error, Some(io::ErrorKind::ConnectionRefused));
    recv_until(&mut RecvBatch::new(HEADROOM), listener.as_raw_fd(), 1, |b, i| {
        assert_eq!(b.payload(i), b"after");
    });
}

#[test]
fn recv_batch_moves_between_threads() {
    let listener = bind_listener(local(v4()), 0, 0).unwrap();
    let to = listener.local_addr().unwrap();
    let sender = bind_relay(local(v4()), 0, 0).unwrap();
    send_one(sender.as_raw_fd(), to, b"moved").unwrap();
    let batch = Box::new(RecvBatch::new(HEADROOM));
    let queue = SendQueue::new();
    let fd = listener.as_raw_fd();
    std::thread::spawn(move || {
        let mut batch = *batch;
        let mut queue = queue;
        recv_until(&mut batch, fd, 1, |b, i| assert_eq!(b.payload(i), b"moved"));
        let mut send = SendBatch::new(&mut queue, fd);
        send.push(sender.local_addr().unwrap(), batch.payload(0));
        assert_eq!(send.flush().sent, 1);
    })
    .join()
    .unwrap();
}

#[test]
fn flush_loop_handles_partial_sends_and_errors() {
    // A socket buffer can't be filled over loopback (lo orphans skbs on transmit), so script
    // the syscall: partial sends, EINTR, an ICMP-style error and finally a full socket.
    let sink: SocketAddr = "192.0.2.1:9".parse().unwrap();
    let data = [0u8; 4];
    let mut queue = SendQueue::new();
    let base = queue.hdrs.as_ptr() as usize;
    let mut batch = SendBatch::new(&mut queue, -1);
    for _ in 0..10 {
        batch.push(sink, &data);
    }
    let os = io::Error::from_raw_os_error;
    let mut script = vec![
        (0, 10, Ok(3)),
        (3, 7, Err(os(libc::EINTR))),
        (3, 7, Err(os(libc::ECONNREFUSED))),
        (4, 6, Ok(2)),
        (6, 4, Ok(0)),
        (7, 3, Err(os(libc::EAGAIN))),
    ]
    .into_iter();
    batch.send_queued_with(|hdrs, len| {
        let (start, want_len, result) = script.next().expect("unexpected call");
        assert_eq!(((hdrs as usize - base) / size_of::<libc::mmsghdr>(), len), (start, want_len));
        // SAFETY: the loop passes a pointer into the queue's header array.
        let hdr = unsafe { &(*hdrs).msg_hdr };
        assert_eq!((hdr.msg_iovlen, hdr.msg_namelen as usize), (1, size_of::<libc::sockaddr_in>()));
        result
    });
    assert!(script.next().is_none());
    let stats = SendStats { sent: 5, dropped_full: 3, dropped_error: 2, last_error: Some(io::ErrorKind::Other) };
    assert_eq!(batch.stats(), stats);
    assert_eq!(batch.flush(), stats);

    // ENOBUFS counts as full, too.
    batch.push(sink, &data);
    batch.send_queued_with(|_, _| Err(os(libc::ENOBUFS)));
    assert_eq!(batch.stats().dropped_full, 4);
}

#[test]
fn addresses_roundtrip() {
    let addrs = [
        "192.0.2.1:3478".parse().unwrap(),
        "0.0.0.0:0".parse().unwrap(),
        SocketAddr::V6(SocketAddrV6::new("2001:db8::1".parse().unwrap(), 49152, 0x12345, 7)),
        "[::1]:65535".parse().unwrap(),
    ];
    for addr in addrs {
        let mut storage = zeroed_storage();
        let len = encode(addr, &mut storage);
        assert_eq!(decode(&storage, len), Some(addr));
        assert_eq!(decode(&storage, len - 1), None);
    }
    assert_eq!(decode(&zeroed_storage(), size_of::<libc::sockaddr_storage>() as socklen_t), None);
}

#[test]
#[should_panic(expected = "datagram 0 of a batch of 0")]
fn accessors_check_the_index() {
    RecvBatch::new(HEADROOM).payload(0);
}

#[test]
#[should_panic(expected = "RecvBatch headroom")]
fn headroom_too_large() {
    RecvBatch::new(BUF_SIZE - TAILROOM - MIN_ROOM + 1);
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "unflushed")]
fn dropping_unflushed_batch_asserts() {
    let sink = bind_relay(local(v4()), 0, 0).unwrap();
    let mut queue = SendQueue::new();
    let mut batch = SendBatch::new(&mut queue, sink.as_raw_fd());
    batch.push(sink.local_addr().unwrap(), b"lost");
}
