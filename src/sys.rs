//! The one place that needs `unsafe`: adopting listening sockets passed by systemd socket
//! activation (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`; sd_listen_fds(3)). File descriptors
//! 3.. are owned by this process once `LISTEN_PID` names it; each is adopted at most once (the
//! caller takes them at bind time) and checked to be a TCP listener before use. Also the
//! GeoDNS UDP batches (`recvmmsg`/`sendmmsg`) and its SO_REUSEPORT CPU steering program, the
//! spool's free-space check (`statvfs`), the monotonic clock systemd's notify protocol uses,
//! and the allocator's threshold for large blocks (`mallopt`).

#![allow(unsafe_code)]

use std::os::fd::FromRawFd;

/// First descriptor systemd passes (SD_LISTEN_FDS_START).
const FIRST_FD: i32 = 3;

/// Sockets passed by systemd for this process, with their names. Empty when not socket-activated.
pub fn listen_fds() -> std::io::Result<Vec<(String, std::net::TcpListener)>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let n: i32 = match std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        Some(n) if pid_ok && (1..=64).contains(&n) => n,
        _ => return Ok(Vec::new()),
    };
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .unwrap_or_default()
        .split(':')
        .map(str::to_owned)
        .collect();
    let mut out = Vec::new();
    for i in 0..n {
        let fd = FIRST_FD + i;
        // SAFETY: systemd passed descriptors FIRST_FD..FIRST_FD+n to this process (LISTEN_PID is
        // ours) and nothing else in the process owns them; each is wrapped exactly once here.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        l.local_addr().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("socket-activated fd {fd} is not a TCP listener: {e}"),
            )
        })?;
        l.set_nonblocking(true)?;
        out.push((names.get(i as usize).cloned().unwrap_or_default(), l));
    }
    Ok(out)
}

/// Batched UDP: `recvmmsg(2)` takes up to `n` waiting datagrams in one system call and
/// `sendmmsg(2)` sends the answers in one more (gdnsd does the same). Under load that is two
/// system calls per batch instead of two per query; with one datagram waiting it costs what
/// `recv_from` + `send_to` cost.
///
/// The headers point into the batch's own buffers; they are rebuilt before every call, so a
/// reply buffer that grew (and moved) is never read through a stale pointer.
pub struct UdpBatch {
    size: usize,
    bufs: Vec<u8>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    replies: Vec<Vec<u8>>,
    send: Vec<bool>,
    /// Slots answered in this batch, in order (reused: no allocation per batch).
    answered: Vec<usize>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    received: usize,
}

// SAFETY: the raw pointers in `iovs`/`hdrs` only ever point into the batch's own buffers and are
// rebuilt before each system call; the batch is used by one thread at a time.
unsafe impl Send for UdpBatch {}

impl UdpBatch {
    /// Room for `n` datagrams of at most `size` bytes each.
    pub fn new(n: usize, size: usize) -> UdpBatch {
        let n = n.max(1);
        UdpBatch {
            size,
            bufs: vec![0; n * size],
            lens: vec![0; n],
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid (AF_UNSPEC) value.
            addrs: vec![unsafe { std::mem::zeroed() }; n],
            addr_lens: vec![0; n],
            replies: (0..n).map(|_| Vec::with_capacity(size)).collect(),
            send: vec![false; n],
            answered: Vec::with_capacity(n),
            iovs: Vec::with_capacity(n),
            hdrs: Vec::with_capacity(n),
            received: 0,
        }
    }

    /// Waits for at least one datagram (up to the socket's read timeout), then takes every
    /// one already waiting, up to the batch size. Returns how many.
    pub fn recv(&mut self, sock: &std::net::UdpSocket) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let n = self.lens.len();
        self.iovs.clear();
        self.hdrs.clear();
        for i in 0..n {
            self.iovs.push(libc::iovec {
                iov_base: self.bufs[i * self.size..].as_mut_ptr().cast(),
                iov_len: self.size,
            });
        }
        for i in 0..n {
            // SAFETY: msghdr is plain data; zero is "no control data, no flags".
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = std::ptr::addr_of_mut!(self.addrs[i]).cast();
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = std::ptr::addr_of_mut!(self.iovs[i]);
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        // SAFETY: `hdrs` holds `n` headers whose name and iovec pointers point into `addrs`,
        // `iovs` and `bufs`, all alive, not moved and large enough for the lengths given.
        let r = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            self.received = 0;
            return Err(std::io::Error::last_os_error());
        }
        self.received = r as usize;
        for i in 0..self.received {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.addr_lens[i] = self.hdrs[i].msg_hdr.msg_namelen;
            self.send[i] = false;
        }
        Ok(self.received)
    }

    /// Datagram `i` of the last `recv`: its bytes (cut at the buffer size), where it came from,
    /// and the buffer for its answer (cleared).
    pub fn slot(&mut self, i: usize) -> (&[u8], Option<std::net::SocketAddr>, &mut Vec<u8>) {
        let len = self.lens[i].min(self.size);
        let from = socket_addr(&self.addrs[i], self.addr_lens[i]);
        let reply = &mut self.replies[i];
        reply.clear();
        (&self.bufs[i * self.size..i * self.size + len], from, reply)
    }

    /// Datagram `i` gets its answer (written into the slot's buffer) at the next `send`.
    pub fn answer(&mut self, i: usize) {
        self.send[i] = true;
    }

    /// Sends every answer of this batch, each to where its query came from. Returns the
    /// number sent and the first error (a failed datagram is skipped, not retried).
    pub fn send(&mut self, sock: &std::net::UdpSocket) -> (usize, Option<std::io::Error>) {
        use std::os::fd::AsRawFd;
        self.iovs.clear();
        self.hdrs.clear();
        self.answered.clear();
        for i in (0..self.received).filter(|&i| self.send[i]) {
            self.answered.push(i);
            self.iovs.push(libc::iovec {
                iov_base: self.replies[i].as_mut_ptr().cast(),
                iov_len: self.replies[i].len(),
            });
        }
        for (k, &i) in self.answered.iter().enumerate() {
            // SAFETY: as in `recv`.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = std::ptr::addr_of_mut!(self.addrs[i]).cast();
            h.msg_hdr.msg_namelen = self.addr_lens[i];
            h.msg_hdr.msg_iov = std::ptr::addr_of_mut!(self.iovs[k]);
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        let (mut sent, mut ok, mut first_err) = (0, 0, None);
        while sent < self.hdrs.len() {
            // SAFETY: headers `sent..` point into `addrs`, `iovs` and `replies`, alive and not
            // moved since they were built above.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs[sent..].as_mut_ptr(),
                    (self.hdrs.len() - sent) as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                first_err.get_or_insert(e);
                sent += 1; // skip the datagram that failed
            } else {
                sent += r as usize;
                ok += r as usize;
            }
        }
        (ok, first_err)
    }
}

/// The IPv4 or IPv6 address the kernel wrote into `ss` (`len` bytes); `None` for other families.
fn socket_addr(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    let len = len as usize;
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is that long;
            // sockaddr_storage is aligned for every socket address type.
            let a = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*std::ptr::from_ref(ss).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Steers each datagram of a SO_REUSEPORT group to socket `cpu % n`, `cpu` being the CPU that
/// received it (`SO_ATTACH_REUSEPORT_CBPF`), instead of the kernel's hash of the 4-tuple: a few
/// busy resolvers (few source ports) then still spread over every socket, and a datagram is
/// answered by the thread whose socket belongs to the CPU it arrived on. Attach to any one
/// socket of the group, after it is bound; the sockets' order in the group is their bind order.
pub fn steer_reuseport_by_cpu(sock: &std::net::UdpSocket, n: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SKF_AD_OFF + SKF_AD_CPU: "load the current CPU" in classic BPF.
    const LOAD_CPU: u32 = (-0x1000i32 + 36) as u32;
    let mut program = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: LOAD_CPU,
        },
        libc::sock_filter {
            code: (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: n.max(1),
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_A) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Bytes an unprivileged writer can still use on the file system holding `path` (`statvfs`).
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: statvfs is plain data (all-zero is valid); `c` is a valid NUL-terminated string
    // and `st` a valid out pointer for the duration of the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r == 0 {
        Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// CLOCK_MONOTONIC in microseconds: what systemd's `MONOTONIC_USEC=` (sd_notify, around a
/// reload) is measured in.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer for the duration of the call; CLOCK_MONOTONIC exists
    // on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000)
        .saturating_add(ts.tv_nsec as u64 / 1000)
}

/// Large allocations (message bodies of 1 MiB and more) get pages of their own from the kernel
/// and give them back when freed. glibc's default threshold starts at 128 KiB but rises to
/// 32 MiB as large blocks are freed, after which a burst of big messages leaves its memory in
/// the heap for good (measured: RSS stayed 300 MiB after 100 bodies of 20 MiB were spooled).
/// Setting it fixes it. Other C libraries: nothing to do.
pub fn return_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tunable of the allocator; called before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Duration;

    use super::UdpBatch;

    /// Several waiting datagrams come in one `recv`, each with its sender, and each answer
    /// goes back to the socket that asked (IPv4 and IPv6).
    #[test]
    fn a_batch_receives_waiting_datagrams_and_answers_each_sender() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(server) = UdpSocket::bind(any) else {
                continue; // no IPv6 loopback here
            };
            server
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let clients: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind(any).unwrap()).collect();
            for (i, c) in clients.iter().enumerate() {
                c.send_to(
                    format!("query {i}").as_bytes(),
                    server.local_addr().unwrap(),
                )
                .unwrap();
            }
            let mut batch = UdpBatch::new(8, 64);
            let mut got = 0;
            while got < 3 {
                let n = batch.recv(&server).unwrap();
                for i in 0..n {
                    let (q, from, out) = batch.slot(i);
                    let from = from.expect("an IP sender");
                    let who = clients
                        .iter()
                        .position(|c| c.local_addr().unwrap() == from)
                        .expect("the sender is one of the clients");
                    assert_eq!(q, format!("query {who}").as_bytes());
                    out.extend_from_slice(format!("answer {who}").as_bytes());
                    batch.answer(i);
                }
                let (sent, err) = batch.send(&server);
                assert!(err.is_none(), "{err:?}");
                assert_eq!(sent, n);
                got += n;
            }
            for (i, c) in clients.iter().enumerate() {
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 64];
                let n = c.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], format!("answer {i}").as_bytes());
            }
        }
    }

    /// A datagram longer than the slot is cut to the slot, not written past it.
    #[test]
    fn an_oversized_datagram_is_cut_to_the_slot() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(&[7u8; 300], server.local_addr().unwrap())
            .unwrap();
        let mut batch = UdpBatch::new(2, 100);
        assert_eq!(batch.recv(&server).unwrap(), 1);
        let (q, _, _) = batch.slot(0);
        assert_eq!(q, &[7u8; 100][..]);
    }

    /// The steering program is accepted by the kernel and every datagram still reaches a
    /// socket of the group.
    #[test]
    fn reuseport_steering_by_cpu_keeps_every_datagram() {
        use socket2::{Domain, Protocol, Socket, Type};
        let bind = |addr: std::net::SocketAddr| {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&addr.into()).unwrap();
            let s: std::net::UdpSocket = s.into();
            s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
                .unwrap();
            s
        };
        let first = bind("127.0.0.1:0".parse().unwrap());
        let second = bind(first.local_addr().unwrap());
        super::steer_reuseport_by_cpu(&first, 2).expect("the kernel takes the program");
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..50u8 {
            client.send_to(&[i], first.local_addr().unwrap()).unwrap();
        }
        let mut got = Vec::new();
        for sock in [&first, &second] {
            let mut buf = [0u8; 8];
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        got.sort_unstable();
        assert_eq!(got, (0..50u8).collect::<Vec<_>>());
    }
}
