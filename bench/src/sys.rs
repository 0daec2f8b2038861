//! What the bench reads from the operating system about a server process: CPU time and resident
//! memory from /proc, and the open-file limit every allocation's socket counts against.

use std::io;

/// User plus system CPU seconds consumed so far by process `pid` (all its threads).
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces; fields after it are
    // space-separated: state is field 3, utime field 14, stime field 15 (proc(5)).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or_else(|| io::Error::other("bad /proc stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> io::Result<u64> {
        fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(|| io::Error::other("bad /proc stat field"))
    };
    // `after` starts at field 3, so field n is at index n - 3.
    let total = ticks(14 - 3)? + ticks(15 - 3)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(total as f64 / hz)
}

/// Seconds of steal time so far, summed over this machine's CPUs: time a virtual CPU had work
/// but the hypervisor ran something else (the `steal` column of /proc/stat's `cpu` line).
pub fn host_steal_seconds() -> io::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().find(|l| l.starts_with("cpu ")).ok_or_else(|| io::Error::other("no cpu line"))?;
    // cpu user nice system idle iowait irq softirq steal ...
    let steal: u64 = line
        .split_whitespace()
        .nth(8)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("no steal column in /proc/stat"))?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(steal as f64 / hz)
}

/// Resident set size of process `pid`, in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other("no VmRSS in /proc status"))
}

/// Open file descriptors of process `pid` (the entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> io::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// Threads of process `pid` (`Threads:` in /proc/PID/status).
pub fn threads(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads in /proc status"))
}

/// Raises this process's open-file limit (soft and, as root, hard) to at least `want`, so
/// children started afterwards (the servers under test) inherit it. Returns the soft limit.
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(limit.rlim_max);
        let target = want.min(nr_open).max(limit.rlim_cur);
        let raised = libc::rlimit { rlim_cur: target, rlim_max: target.max(limit.rlim_max) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return target;
        }
        // Not allowed to raise the hard limit: at least take the soft one up to it.
        let soft = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return limit.rlim_max;
        }
        limit.rlim_cur
    }
}

/// Restricts the calling thread (and threads and processes it creates afterwards) to `cpus`.
pub fn pin_to(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it; sched_setaffinity reads
    // `size_of::<cpu_set_t>()` bytes from it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Restricts every thread process `pid` has now to `cpus` (threads it starts later inherit
/// their creator's set).
pub fn pin_process(pid: u32, cpus: &[usize]) -> io::Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = task?.file_name().to_str().and_then(|t| t.parse::<libc::pid_t>().ok()) else { continue };
        // SAFETY: as in `pin_to`; `tid` names a thread (one that has exited since fails, ESRCH).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            for &cpu in cpus {
                libc::CPU_SET(cpu, &mut set);
            }
            if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Asks the kernel to stamp every datagram `fd` receives with its arrival time
/// (`SO_TIMESTAMPNS`), which [`recv_stamped`] returns.
pub fn enable_arrival_stamps(fd: std::os::fd::RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` lives across the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Receives one datagram from a nonblocking UDP socket, with its sender and the time the kernel
/// received it as an `Instant` (`None` without `SO_TIMESTAMPNS`). A measurement taken from this
/// time leaves out how long the datagram waited in the socket for this process to get to it.
pub fn recv_stamped(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, std::net::SocketAddr, Option<std::time::Instant>)> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = [0u64; 16];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut name).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` points at a live buffer of the length given beside it.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut kernel = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                kernel = Some(std::time::UNIX_EPOCH + std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    let from = match i32::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: libc::sockaddr_in = unsafe { std::ptr::read_unaligned((&raw const name).cast()) };
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { std::ptr::read_unaligned((&raw const name).cast()) };
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            ))
        }
        family => return Err(io::Error::other(format!("datagram from address family {family}"))),
    };
    // The stamp is wall-clock time; carried over to the monotonic clock at this instant.
    let arrival = kernel.map(|at| {
        let (now, wall) = (std::time::Instant::now(), std::time::SystemTime::now());
        now.checked_sub(wall.duration_since(at).unwrap_or_default()).unwrap_or(now)
    });
    Ok((n as usize, from, arrival))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let start = cpu_seconds(me).unwrap();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(me).unwrap() >= start);
        assert!(rss_bytes(me).unwrap() > 1 << 20);
        let steal = host_steal_seconds().unwrap();
        assert!(steal >= 0.0 && host_steal_seconds().unwrap() >= steal);
    }

    #[test]
    fn stamps_arrival_in_the_kernel() {
        use std::os::fd::AsRawFd;
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        enable_arrival_stamps(rx.as_raw_fd()).unwrap();
        // The first socket to ask turns stamping on in the kernel a moment later (a deferred
        // static key); until then a datagram is stamped when it is read. The bench's clients
        // ask long before they measure.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = std::time::Instant::now();
        tx.send_to(b"stamp me", rx.local_addr().unwrap()).unwrap();
        // The datagram waits in the socket; the stamp says when it arrived, not when it is read.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut buf = [0u8; 64];
        let (n, from, arrival) = recv_stamped(rx.as_raw_fd(), &mut buf).unwrap();
        let read_at = std::time::Instant::now();
        assert_eq!((&buf[..n], from), (&b"stamp me"[..], tx.local_addr().unwrap()));
        let arrival = arrival.expect("SO_TIMESTAMPNS gave no stamp");
        assert!(read_at.duration_since(arrival) >= std::time::Duration::from_millis(40), "{arrival:?} {read_at:?}");
        assert!(arrival + std::time::Duration::from_millis(5) >= before, "{arrival:?} before {before:?}");
        // Nothing waiting: an error, not a datagram.
        assert!(recv_stamped(rx.as_raw_fd(), &mut buf).is_err());
    }
}
