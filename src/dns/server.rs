//! Sockets and loops: UDP worker threads, the TCP listener, the refresher, the ops hooks.
//!
//! Lifecycle: [`bind`] binds every listener (UDP and TCP on the same port of each `dns.listen`
//! address), builds the first plan and starts probing silo edges — nothing answers yet. [`Bound::serve`]
//! then runs until `ops.shutdown` is cancelled: UDP workers stop within their 200 ms read timeout,
//! TCP connections close at their next read, and `serve` returns once all have.
//!
//! UDP: `udp_threads` OS threads per address, each with its own socket in one SO_REUSEPORT
//! group, so the kernel spreads clients over them without locks. A classic BPF program on the
//! group (`sys::steer_reuseport_by_cpu`) picks the socket by the CPU the datagram arrived on
//! rather than by a hash of the client's address and port: a few busy resolvers no longer pile
//! onto one thread, and a query is answered on the CPU that received it (bench: CPU per query
//! 3.4 → 1.8–2.0 µs, against gdnsd's 2.7–3.2). A worker blocks in
//! `recvmmsg` for up to 32 waiting datagrams, answers each into its slot's reused buffer and
//! sends all answers with one `sendmmsg` (`sys::UdpBatch`): no allocation, no task spawned.
//! Queries over 4 KiB are cut (and then malformed).
//!
//! TCP (RFC 7766): at most `tcp_max_connections` connections (the permit is taken before
//! `accept`); each reads length-prefixed queries in order and answers each at once (answering
//! never waits, so in order is as soon as ready). Answers are written as soon as no further
//! whole query is already buffered: pipelined queries that came together get one write, and no
//! answer waits for the rest of a query still in transit. A connection idle for
//! `tcp_idle_timeout` (every answer written, no new query), one that does not take its answers
//! within that time, or one sending something not worth an answer, is closed.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::answer::{Scratch, respond};
use super::metrics::DnsMetrics;
use super::state::DnsState;
use crate::health::{Prober, SmtpBanner};
use crate::ops::Ops;

/// Largest query read from UDP.
const UDP_BUFFER: usize = 4096;
/// Datagrams taken per `recvmmsg`: enough to empty a busy socket in a few calls, small enough
/// that the last answer of a batch is not held back long.
const UDP_BATCH: usize = 32;
/// How often an idle UDP worker looks at the stop flag (and flushes its metrics).
const UDP_POLL: Duration = Duration::from_millis(200);
/// Kernel accept backlog of the TCP listeners.
const TCP_BACKLOG: i32 = 1024;
/// Most UDP threads per address.
const MAX_UDP_THREADS: usize = 64;
/// Read buffer of a TCP connection: room for many pipelined queries.
const TCP_READ_BUFFER: usize = 16 * 1024;
/// Answers to pipelined queries are written once this many bytes are waiting, at the latest.
const TCP_WRITE_BATCH: usize = 64 * 1024;

/// The role's listeners, bound and not yet serving.
#[derive(Debug)]
pub struct Bound {
    /// One per `dns.listen` address, with the port the kernel chose for port 0.
    pub udp_addrs: Vec<SocketAddr>,
    /// The TCP listener of each address (same port as its UDP sockets).
    pub tcp_addrs: Vec<SocketAddr>,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    state: Arc<DnsState>,
    ops: Arc<Ops>,
}

/// Binds the GeoDNS listeners of the config in force and starts probing silo edges. Call once
/// per process (it registers the role's metrics).
pub async fn bind(ops: &Arc<Ops>) -> io::Result<Bound> {
    let snap = ops.config.load_full();
    let cfg = &snap.config.dns;
    let threads = match cfg.udp_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(16)),
        n => (n as usize).min(MAX_UDP_THREADS),
    };
    let (mut udp, mut tcp, mut udp_addrs, mut tcp_addrs) = (vec![], vec![], vec![], vec![]);
    for &addr in &cfg.listen {
        let (first, listener) = bind_pair(addr)?;
        let local = first.local_addr()?;
        udp.extend(grow_group(first, threads)?);
        udp_addrs.push(local);
        tcp_addrs.push(listener.local_addr()?);
        tcp.push(listener);
    }
    let metrics = DnsMetrics::new(&ops.metrics);
    let prober = Prober::new(
        "dns",
        Arc::new(SmtpBanner),
        &ops.metrics,
        ops.shutdown.child_token(),
    );
    let state = DnsState::new(ops.clone(), prober, metrics);
    ops.add_status(Arc::new(super::status::StatusPage(state.clone())));
    ops.add_routes(super::status::routes(state.clone()));
    for a in &udp_addrs {
        tracing::info!(address = %a, zone = %cfg.zone, udp_threads = threads, "dns: listening on UDP and TCP");
    }
    Ok(Bound {
        udp_addrs,
        tcp_addrs,
        udp,
        tcp,
        state,
        ops: ops.clone(),
    })
}

impl Bound {
    /// The role's state, e.g. to drain a silo (`DnsState::set_drain`).
    pub fn state(&self) -> Arc<DnsState> {
        self.state.clone()
    }

    /// Answers until `ops.shutdown` is cancelled, then stops every worker.
    pub async fn serve(self) -> io::Result<()> {
        let Bound {
            udp,
            tcp,
            state,
            ops,
            ..
        } = self;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(udp.len());
        for (i, sock) in udp.into_iter().enumerate() {
            let (state, stop) = (state.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || udp_worker(sock, state, stop))?,
            );
        }
        let max = ops.config.load().config.dns.tcp_max_connections as usize;
        let limit = Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS)));
        let mut tasks = tokio::task::JoinSet::new();
        for listener in tcp {
            tasks.spawn(tcp_accept(
                listener,
                state.clone(),
                limit.clone(),
                ops.shutdown.clone(),
            ));
        }
        tasks.spawn(refresher(state.clone(), ops.shutdown.clone()));
        ops.shutdown.cancelled().await;
        stop.store(true, Ordering::Release);
        while tasks.join_next().await.is_some() {}
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        if joined.is_err() {
            tracing::error!("dns: a UDP worker panicked");
        }
        tracing::info!("dns: stopped");
        Ok(())
    }
}

/// Binds the first UDP socket and the TCP listener of one address on the same port. With port
/// 0 the kernel picks the UDP port; if that port is taken for TCP, another is tried.
fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let attempts = if addr.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = udp_socket(addr)?;
        let port = udp.local_addr()?.port();
        match tcp_listener(SocketAddr::new(addr.ip(), port)) {
            Ok(l) => return Ok((udp, l)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no port")))
}

/// The UDP sockets of one address: `threads` sockets in one SO_REUSEPORT group, steered by
/// CPU (see the module docs), each with the read timeout the workers poll their stop flag by.
/// Public so that bench/dns's no-op reflector gets exactly our sockets.
pub fn udp_group(addr: SocketAddr, threads: usize) -> io::Result<Vec<UdpSocket>> {
    grow_group(udp_socket(addr)?, threads)
}

/// Adds `threads - 1` sockets on the port of `first` and steers the group.
fn grow_group(first: UdpSocket, threads: usize) -> io::Result<Vec<UdpSocket>> {
    let local = first.local_addr()?;
    let mut group = vec![first];
    for _ in 1..threads {
        group.push(udp_socket(local)?);
    }
    // More threads than CPUs: steering by CPU would leave the extra sockets idle.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads > 1
        && threads <= cpus
        && let Err(e) = crate::sys::steer_reuseport_by_cpu(&group[0], threads as u32)
    {
        tracing::warn!(address = %local, error = %e, "dns: cannot steer UDP by CPU; the kernel's hash spreads queries");
    }
    for s in &group {
        s.set_read_timeout(Some(UDP_POLL))?;
    }
    Ok(group)
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    // Room for bursts; the kernel caps it at net.core.rmem_max.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(TCP_BACKLOG)?;
    s.set_nonblocking(true)?;
    TcpListener::from_std(s.into())
}

fn udp_worker(sock: UdpSocket, state: Arc<DnsState>, stop: Arc<AtomicBool>) {
    let mut batch = crate::sys::UdpBatch::new(UDP_BATCH, UDP_BUFFER);
    let mut scratch = Scratch::default();
    let mut reader = state.reader();
    let mut stats = state.metrics.local("udp");
    let mut send_errors = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match batch.recv(&sock) {
            Ok(n) => {
                let start = Instant::now();
                let plan = state.current(&mut reader);
                let mut outcomes = [None; UDP_BATCH];
                for (i, slot) in outcomes.iter_mut().enumerate().take(n) {
                    let (query, from, out) = batch.slot(i);
                    let Some(peer) = from else { continue };
                    *slot = respond(plan, query, peer.ip(), false, &mut scratch, out);
                    if slot.is_some() {
                        batch.answer(i);
                    }
                }
                if let (_, Some(e)) = batch.send(&sock) {
                    send_errors += 1;
                    if send_errors.is_power_of_two() {
                        tracing::warn!(error = %e, count = send_errors, "dns: UDP send failed");
                    }
                }
                // Receive to send, one clock read per batch: every query of a batch waited for
                // the whole batch.
                let now = Instant::now();
                for outcome in outcomes.into_iter().take(n) {
                    stats.record(plan, outcome, now - start, now);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                stats.flush(Instant::now());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => tracing::debug!(error = %e, "dns: UDP receive error"),
        }
    }
    stats.flush(Instant::now());
}

async fn tcp_accept(
    listener: TcpListener,
    state: Arc<DnsState>,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "dns: TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (state, shutdown) = (state.clone(), shutdown.clone());
        tokio::spawn(async move {
            tcp_connection(stream, peer, &state, &shutdown).await;
            drop(permit);
        });
    }
}

async fn tcp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: &DnsState,
    shutdown: &CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::with_capacity(TCP_READ_BUFFER, r);
    let mut reader = state.reader();
    let mut scratch = Scratch::default();
    let mut stats = state.metrics.local("tcp");
    // Answers not yet written, each with its length prefix (RFC 7766 8: prefix and message go
    // to the kernel in one write).
    let (mut msg, mut out, mut pending) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        // Every query read so far is answered and written: the connection is idle (RFC 7766 3).
        let idle = state.plan().snapshot.config.dns.tcp_idle_timeout.get();
        let len = tokio::select! {
            r = tokio::time::timeout(idle, r.read_u16()) => match r {
                Ok(Ok(n)) => usize::from(n),
                _ => break,
            },
            _ = shutdown.cancelled() => break,
        };
        msg.resize(len, 0);
        match tokio::time::timeout(idle, r.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let start = Instant::now();
        let plan = state.current(&mut reader).clone();
        let outcome = respond(&plan, &msg, peer.ip(), true, &mut scratch, &mut out);
        let answered = outcome.is_some();
        if answered {
            pending.extend_from_slice(&(out.len() as u16).to_be_bytes());
            pending.extend_from_slice(&out);
        }
        // Pipelined queries that arrived together are answered with one write; an answer never
        // waits for a query that is still on its way (RFC 7766 6.2.1.1).
        if !answered || !whole_message(r.buffer()) || pending.len() >= TCP_WRITE_BATCH {
            let sent = tokio::time::timeout(idle, w.write_all(&pending)).await;
            pending.clear();
            if !matches!(sent, Ok(Ok(()))) {
                break;
            }
        }
        let now = Instant::now();
        stats.record(&plan, outcome, now - start, now);
        if !answered {
            break;
        }
    }
    stats.flush(Instant::now());
}

/// Whether `buf` starts with a whole length-prefixed DNS message.
fn whole_message(buf: &[u8]) -> bool {
    buf.len() >= 2 && buf.len() - 2 >= usize::from(u16::from_be_bytes([buf[0], buf[1]]))
}

/// Rebuilds the plan on every health change and once a second, so probe targets follow config
/// reloads and transitions are logged even without queries.
async fn refresher(state: Arc<DnsState>, shutdown: CancellationToken) {
    let mut seen = state.prober().generation();
    loop {
        tokio::select! {
            g = state.prober().wait_change(seen) => seen = g,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
        state.refresh();
    }
}
