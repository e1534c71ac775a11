//! Sockets of the roles that speak SMTP: listening ones (edge, engine) bound as operators
//! expect, the one accept loop both use, and outgoing connections from a configured source
//! address (the edge to its engines, the engine to tenants' servers: [`connect_from`]).
//!
//! # The accept loop
//!
//! [`accept_loop`] accepts until shutdown. For each connection it first takes the session's
//! permit from the role's `admit` (the engine's `max_sessions` semaphore; the edge's
//! admission: caps and rates per node, address and prefix), before anything is spawned: a
//! connection either holds a permit for its whole session or is refused at once. A refusal is
//! one non-blocking `send` of the reply on the fresh socket (its send buffer is empty, so a
//! one-line reply fits; nothing waits, not even a timeout's worth), then the socket is closed:
//! refusing costs no task and no memory, however many clients are refused.
//!
//! Bounds: sessions, by the role's permits; refusals, none needed (nothing outlives the
//! accept); after a failed `accept` (EMFILE and friends) the loop pauses [`ACCEPT_BACKOFF`]
//! instead of spinning.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::smtp::Reply;

/// Pause after a failed `accept` (out of file descriptors, memory): long enough that a
/// saturated process does not spin, short enough that it notices freed descriptors soon.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listening socket as operators expect: SO_REUSEPORT (several processes or threads may
/// share a port), the configured backlog, v6 sockets v6-only, TCP_NODELAY inherited by
/// accepted sockets.
pub fn reuseport_listener(
    addr: SocketAddr,
    backlog: u32,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Accepts connections on `listener` until `shutdown`: `admit` takes the session's permit or
/// says why not (the reply the client gets); `serve` starts the session, tracked by `sessions`
/// (so a drain can wait for it), holding the permit until it ends.
pub async fn accept_loop<P, A, S, F>(
    listener: TcpListener,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    mut admit: A,
    mut serve: S,
) where
    A: FnMut(SocketAddr) -> Result<P, Reply>,
    S: FnMut(TcpStream, SocketAddr, P) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; pausing");
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        match admit(peer) {
            Ok(permit) => {
                sessions.spawn(serve(stream, peer, permit));
            }
            Err(reply) => refuse(&stream, &reply),
        }
    }
}

/// Writes `reply` without waiting (one non-blocking send; a client that cannot take 100 bytes
/// on a new connection gets nothing) and lets the caller drop the socket.
fn refuse(stream: &TcpStream, reply: &Reply) {
    let mut out = Vec::with_capacity(96);
    reply.write_to(&mut out);
    let _ = socket2::SockRef::from(stream).send(&out);
}

/// The configured source address of `addr`'s family, if any (`edge.source_addresses`,
/// `engine.delivery.source_addresses`: the first of the right family is used).
pub fn source_for(sources: &[std::net::IpAddr], addr: SocketAddr) -> Option<std::net::IpAddr> {
    sources
        .iter()
        .find(|s| s.is_ipv4() == addr.is_ipv4())
        .copied()
}

/// Connects to `addr`, from `source` when given (the address a firewall or `trusted_proxies`
/// on the other side expects), else from whatever the kernel picks.
pub async fn connect_from(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::replies;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One permit: the first client is served (and holds it), the second refused at once with
    /// the reply; when the first ends, the next is served again.
    #[tokio::test]
    async fn the_permit_is_taken_before_the_session_and_refusals_are_written() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let served = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (p, s) = (permits.clone(), served.clone());
        tokio::spawn(accept_loop(
            l,
            shutdown.clone(),
            tracker.clone(),
            move |_| {
                p.clone()
                    .try_acquire_owned()
                    .map_err(|_| replies::TOO_MANY_SESSIONS)
            },
            move |mut stream, _, permit| {
                s.fetch_add(1, Ordering::SeqCst);
                async move {
                    let _ = stream.write_all(b"220 hi\r\n").await;
                    let mut b = [0u8; 16];
                    let _ = stream.read(&mut b).await;
                    drop(permit);
                }
            },
        ));
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 8];
        first.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"220 hi\r\n");
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut refused = String::new();
        second.read_to_string(&mut refused).await.unwrap();
        assert_eq!(refused, "421 4.3.2 Too many sessions, try again later\r\n");
        drop(first);
        // The permit comes back when the first session's task ends.
        let mut served_again = false;
        for _ in 0..200 {
            let mut third = TcpStream::connect(addr).await.unwrap();
            let mut b = [0u8; 8];
            third.read_exact(&mut b).await.unwrap();
            if &b == b"220 hi\r\n" {
                served_again = true;
                break;
            }
            assert!(b.starts_with(b"421"), "{b:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(served_again);
        assert_eq!(served.load(Ordering::SeqCst), 2);
        shutdown.cancel();
    }
}
