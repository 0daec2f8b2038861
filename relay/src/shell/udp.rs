//! Batched, allocation-free UDP I/O for the per-core worker loop.
//!
//! Per-packet syscalls dominate a relay's cost (coturn measured kernel `udp_sendmsg` at about 36%
//! and syscall entry at about 23% of cycles), so the worker receives with `recvmmsg(2)` and sends
//! with `sendmmsg(2)`, up to [`BATCH`] datagrams per call, from buffers allocated once per worker.
//! Nothing on the packet path allocates.
//!
//! Receive buffers are written at an offset (the *headroom*), so the TURN core can rewrite a
//! peer's datagram in place: it prepends a 4-byte ChannelData header or a Data indication header
//! in the headroom and pads the end into the [`TAILROOM`], then the rewritten sub-range of the
//! same buffer is handed to [`SendBatch::push`]. The payload is never copied.
//!
//! The `mmsghdr`/`iovec` arrays hold raw pointers into the owning struct's boxed storage (and,
//! for sends, into the borrowed datagrams). They are rewritten from `&mut self` before every
//! syscall, so no pointer is ever trusted across calls or moves.

use std::io;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;

use libc::{c_int, c_uint, socklen_t};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::debug;

use crate::turn::stats::{DropReason, Stats};

/// Datagrams per `recvmmsg`/`sendmmsg` call. 32 amortises the syscall well while a batch's
/// buffers (32 × [`BUF_SIZE`] ≈ 66 KiB) still mostly fit in L2.
pub const BATCH: usize = 32;

/// Bytes per datagram buffer: an MTU-sized datagram plus headroom and tailroom, with margin.
/// 2112 is a multiple of 64, so every buffer starts on its own cache line (relative to the base).
pub const BUF_SIZE: usize = 2048 + 64;

/// Bytes kept free after the receive area of every buffer, so a datagram that fills the whole
/// receive area still leaves room for the core's padding (a Data indication pads to 4 bytes).
pub const TAILROOM: usize = 8;

/// The smallest receive area [`RecvBatch::new`] accepts: a full Ethernet-MTU datagram.
pub const MIN_ROOM: usize = 1500;

/// Creates a worker's listening socket bound to `addr`.
///
/// The socket is non-blocking and close-on-exec, with `SO_REUSEADDR` and `SO_REUSEPORT`, so every
/// worker binds its own socket to the same address and the kernel hashes each 4-tuple to one of
/// them: a client always lands on the same worker. An IPv6 socket is `IPV6_V6ONLY` (IPv4 is
/// served by its own listener). `rcvbuf`/`sndbuf` request socket buffer sizes (0 keeps the kernel
/// default); see [`bind_relay`] for how they are applied.
pub fn bind_listener(addr: SocketAddr, rcvbuf: usize, sndbuf: usize) -> io::Result<UdpSocket> {
    let socket = new_socket(addr)?;
    socket.set_reuse_address(true)?;
    // Must be set before bind, on every socket sharing the port.
    socket.set_reuse_port(true)?;
    set_buffers(&socket, rcvbuf, sndbuf)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Creates an allocation's relay socket bound to exactly `addr`.
///
/// No `SO_REUSEADDR`/`SO_REUSEPORT`: a port already in use fails with
/// [`io::ErrorKind::AddrInUse`], which is how the caller finds a free relay port. The socket is
/// non-blocking, close-on-exec and (for IPv6) `IPV6_V6ONLY`.
///
/// Buffer sizes (0 = kernel default) are set with `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` first, which
/// ignore `net.core.rmem_max`/`wmem_max` but need `CAP_NET_ADMIN`; without it they fall back to
/// `SO_RCVBUF`/`SO_SNDBUF`, which the kernel silently caps at those sysctls. As usual the kernel
/// doubles the value to account for its bookkeeping overhead.
pub fn bind_relay(addr: SocketAddr, rcvbuf: usize, sndbuf: usize) -> io::Result<UdpSocket> {
    let socket = new_socket(addr)?;
    set_buffers(&socket, rcvbuf, sndbuf)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A non-blocking UDP socket of `addr`'s family (socket2 also sets close-on-exec).
fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

fn set_buffers(socket: &Socket, rcvbuf: usize, sndbuf: usize) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    set_buffer(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, rcvbuf)?;
    set_buffer(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, sndbuf)
}

/// Sets one buffer size, preferring the `*FORCE` option (we normally run as root) and falling
/// back to the capped one when it is refused (EPERM without `CAP_NET_ADMIN`).
fn set_buffer(fd: RawFd, force: c_int, plain: c_int, size: usize) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    let value = c_int::try_from(size).unwrap_or(c_int::MAX);
    setsockopt_int(fd, force, value).or_else(|_| setsockopt_int(fd, plain, value))
}

fn setsockopt_int(fd: RawFd, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int for the duration of the call and we pass its exact size;
    // setsockopt only reads from the pointer. A bad fd is reported as an error, not UB.
    let r = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, name, (&raw const value).cast(), size_of::<c_int>() as socklen_t)
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Preallocated state for one `recvmmsg` call: [`BATCH`] buffers of [`BUF_SIZE`] bytes in one
/// contiguous allocation, plus the `mmsghdr`/`iovec`/`sockaddr_storage` arrays, all made once.
///
/// Datagram `i` of the last [`recv`](Self::recv) is written at `headroom` within buffer `i`. Its
/// metadata accessors take `i < n`, where `n` is what `recv` returned, and panic otherwise.
pub struct RecvBatch {
    /// BATCH × BUF_SIZE bytes; buffer `i` is `bufs[i * BUF_SIZE..(i + 1) * BUF_SIZE]`.
    bufs: Box<[u8]>,
    headroom: usize,
    /// Bytes the kernel may write per datagram: BUF_SIZE - headroom - TAILROOM.
    room: usize,
    hdrs: Box<[libc::mmsghdr; BATCH]>,
    iovs: Box<[libc::iovec; BATCH]>,
    addrs: Box<[libc::sockaddr_storage; BATCH]>,
    /// Datagrams filled by the last successful `recv`.
    count: usize,
}

// SAFETY: RecvBatch is !Send only because mmsghdr/iovec contain raw pointers. Those pointers only
// ever point into RecvBatch's own boxed storage, are rewritten from `&mut self` before every
// syscall and are never dereferenced by Rust code, so moving the whole struct (and with it the
// storage it points to) to another thread is sound.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Allocates the batch. Each datagram is received at `headroom` within its buffer, leaving
    /// `headroom` bytes in front of it and at least [`TAILROOM`] bytes after it.
    ///
    /// # Panics
    /// If `headroom` leaves less than [`MIN_ROOM`] bytes for the datagram, i.e. if
    /// `headroom > BUF_SIZE - TAILROOM - MIN_ROOM` (556). This is a configuration constant, so
    /// failing at startup is right.
    pub fn new(headroom: usize) -> Self {
        let room = BUF_SIZE.saturating_sub(headroom + TAILROOM);
        assert!(room >= MIN_ROOM, "RecvBatch headroom {headroom} leaves {room} < {MIN_ROOM} bytes per datagram");
        Self {
            bufs: vec![0u8; BATCH * BUF_SIZE].into_boxed_slice(),
            headroom,
            room,
            hdrs: Box::new([zeroed_mmsghdr(); BATCH]),
            iovs: Box::new([libc::iovec { iov_base: ptr::null_mut(), iov_len: 0 }; BATCH]),
            addrs: Box::new([zeroed_storage(); BATCH]),
            count: 0,
        }
    }

    /// The headroom given to [`new`](Self::new): where every datagram starts in its buffer.
    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// The largest datagram received whole; longer ones are [`truncated`](Self::truncated).
    pub fn room(&self) -> usize {
        self.room
    }

    /// How many datagrams the last successful [`recv`](Self::recv) returned (0 before the first
    /// and after a failed one).
    pub fn count(&self) -> usize {
        self.count
    }

    /// One `recvmmsg(MSG_DONTWAIT)` on `fd` for up to [`BATCH`] datagrams.
    ///
    /// Returns `Ok(n)` with `1 <= n <= BATCH`, or `Err` of kind [`io::ErrorKind::WouldBlock`] when
    /// nothing is queued; `EINTR` is retried. Any other error (e.g. `ECONNREFUSED` left by an
    /// ICMP error on a *connected* socket; unconnected sockets don't get those) consumes the
    /// socket's pending error, so datagrams may still be queued: call again rather than waiting
    /// for the next readiness edge. Receiving overwrites the previous batch.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.count = 0;
        // Re-point every header into our own storage. The boxes don't move when `self` does, but
        // deriving the pointers afresh here means no pointer outlives the borrow it came from.
        let bufs = self.bufs.as_mut_ptr();
        for (i, iov) in self.iovs.iter_mut().enumerate() {
            iov.iov_base = bufs.wrapping_add(i * BUF_SIZE + self.headroom).cast();
            iov.iov_len = self.room;
        }
        let iovs = self.iovs.as_mut_ptr();
        let addrs = self.addrs.as_mut_ptr();
        for (i, hdr) in self.hdrs.iter_mut().enumerate() {
            hdr.msg_hdr.msg_name = addrs.wrapping_add(i).cast();
            // The kernel overwrites the name length and flags with each datagram's; reset them.
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as socklen_t;
            hdr.msg_hdr.msg_iov = iovs.wrapping_add(i);
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
        let hdrs = self.hdrs.as_mut_ptr();
        loop {
            // SAFETY: `hdrs` points to BATCH initialised mmsghdrs. Each one's msg_name points to
            // its own sockaddr_storage with msg_namelen = its size, and its msg_iov to one iovec
            // describing `room` bytes inside `bufs` (headroom + room <= BUF_SIZE, so in bounds
            // and disjoint between datagrams). All of it is owned by `self`, which is mutably
            // borrowed for the call, so the kernel's writes alias nothing. A null timeout is
            // allowed. A bad fd is reported as an error, not UB.
            let r = unsafe { libc::recvmmsg(fd, hdrs, BATCH as c_uint, libc::MSG_DONTWAIT, ptr::null_mut()) };
            if r > 0 {
                self.count = r as usize;
                return Ok(self.count);
            }
            if r == 0 {
                // Not expected with vlen > 0 on a datagram socket; keep the n >= 1 promise.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The sender of datagram `i`, decoded from its `sockaddr_storage` (IPv4 or IPv6, with
    /// flowinfo and scope id). An IPv6 socket is V6ONLY, so no IPv4-mapped addresses appear.
    /// A UDP socket always reports a sender; should the kernel ever report none or another
    /// family, this returns `0.0.0.0:0` (and asserts in debug builds).
    pub fn source(&self, i: usize) -> SocketAddr {
        self.check(i);
        let decoded = decode(&self.addrs[i], self.hdrs[i].msg_hdr.msg_namelen);
        debug_assert!(decoded.is_some(), "recvmmsg reported no usable source address");
        decoded.unwrap_or(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))
    }

    /// Length of datagram `i` as received; at most [`room`](Self::room).
    pub fn len(&self, i: usize) -> usize {
        self.check(i);
        (self.hdrs[i].msg_len as usize).min(self.room)
    }

    /// Whether datagram `i` was longer than [`room`](Self::room) (`MSG_TRUNC`): only its first
    /// `room` bytes were kept, so the caller should drop and count it.
    pub fn truncated(&self, i: usize) -> bool {
        self.check(i);
        self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    /// Datagram `i`'s bytes.
    pub fn payload(&self, i: usize) -> &[u8] {
        let range = self.range(i);
        &self.buf(i)[range]
    }

    /// The whole [`BUF_SIZE`]-byte buffer of datagram `i` and where the datagram is inside it
    /// (starting at the headroom), for rewriting headers in place: there are `headroom` bytes
    /// before the range and at least [`TAILROOM`] after it. Receiving only ever writes inside the
    /// receive area, never into the headroom.
    pub fn buf_mut(&mut self, i: usize) -> (&mut [u8], Range<usize>) {
        let range = self.range(i);
        (&mut self.bufs[i * BUF_SIZE..(i + 1) * BUF_SIZE], range)
    }

    /// The whole [`BUF_SIZE`]-byte buffer of datagram `i`, e.g. to send a rewritten sub-range.
    pub fn buf(&self, i: usize) -> &[u8] {
        self.check(i);
        &self.bufs[i * BUF_SIZE..(i + 1) * BUF_SIZE]
    }

    fn range(&self, i: usize) -> Range<usize> {
        self.headroom..self.headroom + self.len(i)
    }

    fn check(&self, i: usize) {
        assert!(i < self.count, "datagram {i} of a batch of {}", self.count);
    }
}

/// Preallocated `sendmmsg` state: `mmsghdr`/`iovec`/`sockaddr_storage` arrays for [`BATCH`]
/// datagrams, allocated once per worker and reused by every [`SendBatch`].
pub struct SendQueue {
    hdrs: Box<[libc::mmsghdr; BATCH]>,
    iovs: Box<[libc::iovec; BATCH]>,
    addrs: Box<[libc::sockaddr_storage; BATCH]>,
}

// SAFETY: SendQueue is !Send only because mmsghdr/iovec contain raw pointers. The headers only
// ever point into SendQueue's own boxed storage and the iovecs into data borrowed by a live
// SendBatch, which mutably borrows the queue and so prevents moving it meanwhile. Between batches
// the pointers may dangle but are never dereferenced: every one is rewritten before the next
// syscall. So moving a SendQueue to another thread is sound.
unsafe impl Send for SendQueue {}

impl SendQueue {
    /// Allocates the arrays (the only allocation sending ever makes).
    pub fn new() -> Self {
        Self {
            hdrs: Box::new([zeroed_mmsghdr(); BATCH]),
            iovs: Box::new([libc::iovec { iov_base: ptr::null_mut(), iov_len: 0 }; BATCH]),
            addrs: Box::new([zeroed_storage(); BATCH]),
        }
    }
}

impl Default for SendQueue {
    fn default() -> Self {
        Self::new()
    }
}

/// What happened to the datagrams of one [`SendBatch`], accumulated over all its flushes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Datagrams dropped because the socket (or device queue) was full: `EAGAIN`/`ENOBUFS`.
    pub dropped_full: usize,
    /// Datagrams dropped on any other error, e.g. `ECONNREFUSED`/`EHOSTUNREACH` left by an ICMP
    /// error for an earlier send (connected sockets only), `EPERM` from a firewall, `EINVAL`,
    /// `EMSGSIZE`.
    pub dropped_error: usize,
    /// The kind of the last error counted in `dropped_error`.
    pub last_error: Option<io::ErrorKind>,
}

impl SendStats {
    /// All dropped datagrams.
    pub fn dropped(&self) -> usize {
        self.dropped_full + self.dropped_error
    }
}

/// A batch of datagrams to send from one socket with `sendmmsg`.
///
/// It borrows every datagram it queues (`'d`), so the data cannot be freed or changed before it
/// is sent, and the [`SendQueue`] (`'q`) for its arrays. Call [`flush`](Self::flush) when done:
/// dropping a batch with datagrams still queued is a bug (it asserts in debug builds; release
/// builds send them, but their counts are lost).
pub struct SendBatch<'q, 'd> {
    queue: &'q mut SendQueue,
    fd: RawFd,
    /// Entries `0..queued` of the queue's arrays are filled.
    queued: usize,
    stats: SendStats,
    /// The queue's iovecs point into data borrowed for `'d`.
    data: PhantomData<&'d [u8]>,
}

impl<'q, 'd> SendBatch<'q, 'd> {
    /// Starts an empty batch that sends from `fd`.
    pub fn new(queue: &'q mut SendQueue, fd: RawFd) -> Self {
        Self { queue, fd, queued: 0, stats: SendStats::default(), data: PhantomData }
    }

    /// Queues one datagram for `to`. If [`BATCH`] are already queued they are sent first, so a
    /// batch of any size goes out in full `sendmmsg` calls. Never allocates; outcomes are counted
    /// in [`stats`](Self::stats).
    pub fn push(&mut self, to: SocketAddr, data: &'d [u8]) {
        if self.queued == BATCH {
            self.send_queued();
        }
        let i = self.queued;
        let queue = &mut *self.queue;
        queue.hdrs[i].msg_hdr.msg_namelen = encode(to, &mut queue.addrs[i]);
        // sendmmsg only reads through iov_base; the *mut is just the C type.
        queue.iovs[i] = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
        self.queued += 1;
    }

    /// Datagrams queued and not yet sent.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The counts so far, including datagrams sent by automatic flushes in [`push`](Self::push).
    pub fn stats(&self) -> SendStats {
        self.stats
    }

    /// Sends everything queued and returns the batch's accumulated counts.
    ///
    /// Partial sends are continued and `EINTR` retried. When the socket is full
    /// (`EAGAIN`/`ENOBUFS`) the rest of the queue is dropped and counted in `dropped_full`: the
    /// next datagram would fail the same way, and retrying each one costs a syscall exactly when
    /// the worker is overloaded. On any other error only the failing datagram is dropped and
    /// counted in `dropped_error`, and sending continues with the next one.
    pub fn flush(&mut self) -> SendStats {
        self.send_queued();
        self.stats
    }

    fn send_queued(&mut self) {
        let fd = self.fd;
        // SAFETY: `send_queued_with` calls this only with a pointer to `len` headers it has just
        // pointed at live data, as `sendmmsg` requires.
        self.send_queued_with(|hdrs, len| unsafe { sendmmsg(fd, hdrs, len) });
    }

    /// The flush loop, with the syscall as a parameter so tests can script its results.
    fn send_queued_with(&mut self, mut sys: impl FnMut(*mut libc::mmsghdr, usize) -> io::Result<usize>) {
        let n = std::mem::take(&mut self.queued);
        if n == 0 {
            return;
        }
        let queue = &mut *self.queue;
        let iovs = queue.iovs.as_mut_ptr();
        let addrs = queue.addrs.as_mut_ptr();
        for (i, hdr) in queue.hdrs[..n].iter_mut().enumerate() {
            // msg_namelen was set by push; point the header at this entry's address and iovec.
            hdr.msg_hdr.msg_name = addrs.wrapping_add(i).cast();
            hdr.msg_hdr.msg_iov = iovs.wrapping_add(i);
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
            hdr.msg_hdr.msg_flags = 0;
        }
        let hdrs = queue.hdrs.as_mut_ptr();
        let mut start = 0;
        while start < n {
            // sendmmsg reports an error only when it sent nothing, so it is datagram `start`'s.
            let error = match sys(hdrs.wrapping_add(start), n - start) {
                Ok(sent) if sent > 0 => {
                    let sent = sent.min(n - start);
                    self.stats.sent += sent;
                    start += sent;
                    continue;
                }
                // Not expected for len > 0; counting it as an error guarantees progress.
                Ok(_) => io::Error::from(io::ErrorKind::Other),
                Err(error) => error,
            };
            match classify(&error) {
                Failure::Interrupted => {}
                Failure::Full => {
                    self.stats.dropped_full += n - start;
                    start = n;
                }
                Failure::Other(kind) => {
                    self.stats.dropped_error += 1;
                    self.stats.last_error = Some(kind);
                    start += 1;
                }
            }
        }
    }
}

/// `sendmmsg(MSG_DONTWAIT)` of `len` headers from `fd`: the number sent, or the error.
///
/// # Safety
/// `hdrs` must point to `len` initialised `mmsghdr`s, valid for writes (the kernel stores
/// `msg_len`), each with `msg_name`/`msg_namelen` describing a valid address and
/// `msg_iov`/`msg_iovlen` describing iovecs over live, readable memory.
unsafe fn sendmmsg(fd: RawFd, hdrs: *mut libc::mmsghdr, len: usize) -> io::Result<usize> {
    // SAFETY: the caller guarantees the headers and everything they point to; `len` is at most
    // BATCH, so it fits a c_uint. A bad fd is reported as an error, not UB.
    let r = unsafe { libc::sendmmsg(fd, hdrs, len as c_uint, libc::MSG_DONTWAIT) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

impl Drop for SendBatch<'_, '_> {
    fn drop(&mut self) {
        if self.queued == 0 {
            return;
        }
        // Don't turn an unwinding panic into an abort.
        if !std::thread::panicking() {
            debug_assert_eq!(self.queued, 0, "SendBatch dropped with unflushed datagrams: call flush()");
        }
        self.send_queued();
    }
}

/// Sends one datagram with `sendto(MSG_DONTWAIT)`, for control-plane responses. `EINTR` is
/// retried. Errors are classified like [`SendBatch::flush`]'s: a full socket (`EAGAIN` *or*
/// `ENOBUFS`) is returned as [`io::ErrorKind::WouldBlock`]; anything else as the OS error.
pub fn send_one(fd: RawFd, to: SocketAddr, data: &[u8]) -> io::Result<usize> {
    let mut storage = zeroed_storage();
    let len = encode(to, &mut storage);
    loop {
        // SAFETY: `data` is a live slice of `data.len()` bytes and `storage` holds an address of
        // `len` bytes, both only read by the kernel during the call. A bad fd is an error, not UB.
        let r = unsafe {
            libc::sendto(fd, data.as_ptr().cast(), data.len(), libc::MSG_DONTWAIT, (&raw const storage).cast(), len)
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let error = io::Error::last_os_error();
        match classify(&error) {
            Failure::Interrupted => {}
            Failure::Full if error.kind() != io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            _ => return Err(error),
        }
    }
}

/// How a failed send is handled.
enum Failure {
    /// EINTR: retry.
    Interrupted,
    /// The socket or device queue is full: the datagram (and likely the next) is dropped.
    Full,
    /// Anything else: this datagram is dropped.
    Other(io::ErrorKind),
}

fn classify(error: &io::Error) -> Failure {
    match error.raw_os_error() {
        Some(libc::EINTR) => Failure::Interrupted,
        // EWOULDBLOCK == EAGAIN on Linux. ENOBUFS (qdisc/device queue full) is surfaced only with
        // IP_RECVERR but means the same: no room right now.
        Some(libc::EAGAIN | libc::ENOBUFS) => Failure::Full,
        _ => Failure::Other(error.kind()),
    }
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct of integers and raw pointers; all-zero bytes are a valid
    // value (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is a plain C struct of integers; all-zero bytes are a valid value
    // (family AF_UNSPEC).
    unsafe { std::mem::zeroed() }
}

/// Writes `addr` into `storage` as a `sockaddr_in`/`sockaddr_in6` and returns its length.
/// Flowinfo and scope id are copied as std does (std's `flowinfo()` is the raw field).
fn encode(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> socklen_t {
    let storage: *mut libc::sockaddr_storage = storage;
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                // s_addr holds the address in network order, i.e. the octets as they are.
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is defined to be at least as large and as aligned as every
            // sockaddr type, and `storage` comes from a `&mut`, so it is valid for this write.
            unsafe { storage.cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>() as socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, sockaddr_storage has room and alignment for a sockaddr_in6.
            unsafe { storage.cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>() as socklen_t
        }
    }
}

/// Reads the address the kernel stored in `storage` (`len` bytes of it), if it is IPv4 or IPv6.
fn decode(storage: &libc::sockaddr_storage, len: socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    let storage: *const libc::sockaddr_storage = storage;
    // SAFETY: `storage` comes from a reference to an initialised sockaddr_storage, whose first
    // field is the family in every sockaddr layout.
    let family = c_int::from(unsafe { (*storage).ss_family });
    match family {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in, it is fully
            // initialised (it is a Rust value), and sockaddr_in is all integers, so any bytes are
            // a valid value; the family says the kernel wrote one.
            let sin = unsafe { &*storage.cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*storage.cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// WouldBlock ends a socket's turn. An ICMP error reported by a previous send (possible on
/// relay sockets) is consumed by this call and counted; the socket keeps its turn, since
/// datagrams may be queued behind the error and mio is edge-triggered. Anything else ends it.
pub fn recv_error(stats: &Stats, e: io::Error) -> bool {
    use io::ErrorKind::{ConnectionRefused, ConnectionReset, HostUnreachable, NetworkUnreachable, WouldBlock};
    match e.kind() {
        WouldBlock => false,
        ConnectionRefused | ConnectionReset | HostUnreachable | NetworkUnreachable => {
            stats.record_drop(DropReason::SendError);
            true
        }
        _ => {
            debug!(error = %e, "recvmmsg");
            stats.record_drop(DropReason::SendError);
            false
        }
    }
}

/// Sends one datagram ([`send_one`]), counting a failure as a drop.
pub fn send_counted(stats: &Stats, fd: RawFd, to: SocketAddr, data: &[u8]) {
    if let Err(e) = send_one(fd, to, data) {
        let full = e.kind() == io::ErrorKind::WouldBlock;
        stats.record_drop(if full { DropReason::SendBufferFull } else { DropReason::SendError });
    }
}

pub fn count_send(stats: &Stats, sent: &SendStats) {
    stats.dropped[DropReason::SendBufferFull as usize].add(sent.dropped_full as u64);
    stats.dropped[DropReason::SendError as usize].add(sent.dropped_error as u64);
}

#[cfg(test)]
mod tests;
