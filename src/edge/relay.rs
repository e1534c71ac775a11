//! The layer-4 relay: bytes both ways between a client and a backend until both directions
//! have ended, each end's half-close passed on to the other side (a client that shuts down its
//! writing half still gets every reply).
//!
//! Why not `tokio::io::copy_bidirectional`: it keeps an 8 KiB buffer per direction for the
//! whole connection (16 KiB per idle client). Here a read goes into a buffer on the session
//! thread's stack for the length of one poll and is written on at once; only what the other
//! side cannot take right now is kept, in a per-direction [`Vec`] that is freed as soon as it
//! is written. An idle relayed connection holds no buffer at all, and a busy one needs two
//! syscalls per chunk (read, write); a short read tells tokio the socket is drained, so no
//! `EAGAIN` read follows (tokio's `poll_read` does that on epoll).
//!
//! A connection silent both ways for `idle` is closed (`TimedOut`): a client that never closes,
//! behind a backend that already has, would otherwise hold its connection for ever.
//!
//! Bounds: one [`CHUNK`] read per direction at a time; a direction whose writes block reads
//! nothing more until its leftover is out, so a connection holds at most two leftovers of at
//! most [`CHUNK`] bytes each.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The largest read: one loopback segment (64 KiB), on the stack only while a poll runs.
pub const CHUNK: usize = 64 * 1024;

/// One direction's state.
#[derive(Default)]
struct Half {
    /// Read but not yet written (the writer was full), and how much of it is written.
    left: Vec<u8>,
    pos: usize,
    /// The reader reached its end (and the writer has been shut down once `left` is out).
    eof: bool,
    shut: bool,
    /// Bytes carried.
    bytes: u64,
}

/// Bytes carried each way when the relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub client_to_backend: u64,
    pub backend_to_client: u64,
}

/// Relays until both directions have ended, an error on either side, or `idle` without a
/// byte either way.
pub async fn relay(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    idle: Duration,
) -> io::Result<Carried> {
    let mut up = Half::default();
    let mut down = Half::default();
    // The timer is armed for `idle` from the last time bytes moved; it is only moved when it
    // fires, so a busy connection costs one clock read per poll that carried bytes, no timer work.
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    let mut moved = 0u64;
    let mut last = tokio::time::Instant::now();
    poll_fn(|cx| {
        let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
        let a = pump(cx, &mut *client, &mut *backend, &mut up, &mut chunk)?;
        let b = pump(cx, &mut *backend, &mut *client, &mut down, &mut chunk)?;
        if let (Poll::Ready(()), Poll::Ready(())) = (a, b) {
            return Poll::Ready(Ok(Carried {
                client_to_backend: up.bytes,
                backend_to_client: down.bytes,
            }));
        }
        if up.bytes + down.bytes != moved {
            moved = up.bytes + down.bytes;
            last = tokio::time::Instant::now();
        }
        while timer.as_mut().poll(cx).is_ready() {
            if last + idle <= tokio::time::Instant::now() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "silent both ways for the idle timeout",
                )));
            }
            timer.as_mut().reset(last + idle);
        }
        Poll::Pending
    })
    .await
}

/// Moves `from`'s bytes to `to` until one of them has to wait (`Pending`, a waker registered)
/// or `from` has ended and `to` is shut down (`Ready`).
fn pump(
    cx: &mut Context<'_>,
    from: &mut TcpStream,
    to: &mut TcpStream,
    h: &mut Half,
    chunk: &mut [MaybeUninit<u8>],
) -> Poll<io::Result<()>> {
    loop {
        if h.pos < h.left.len() {
            let n = ready!(Pin::new(&mut *to).poll_write(cx, &h.left[h.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            h.pos += n;
            if h.pos < h.left.len() {
                continue;
            }
            // Written: give the memory back (an idle connection keeps none).
            h.left = Vec::new();
            h.pos = 0;
        }
        if h.eof {
            if !h.shut {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                h.shut = true;
            }
            return Poll::Ready(Ok(()));
        }
        let mut buf = ReadBuf::uninit(chunk);
        ready!(Pin::new(&mut *from).poll_read(cx, &mut buf))?;
        let data = buf.filled();
        if data.is_empty() {
            h.eof = true;
            continue;
        }
        h.bytes += data.len() as u64;
        match Pin::new(&mut *to).poll_write(cx, data) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) if n == data.len() => {}
            Poll::Ready(Ok(n)) => h.left = data[n..].to_vec(),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => h.left = data.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// client <-> (relay) <-> backend; returns the far ends and the relay's task.
    async fn relayed() -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<io::Result<Carried>>,
    ) {
        relayed_idle(Duration::from_secs(600)).await
    }

    async fn relayed_idle(
        idle: Duration,
    ) -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<io::Result<Carried>>,
    ) {
        let (client, mut client_near) = pair().await;
        let (mut backend_near, backend) = pair().await;
        let task =
            tokio::spawn(async move { relay(&mut client_near, &mut backend_near, idle).await });
        (client, backend, task)
    }

    /// Bytes that move keep a relayed connection open past the idle time; then the backend
    /// closes, the client never does and says nothing: the relay ends with `TimedOut` and the
    /// client's connection is closed.
    #[tokio::test]
    async fn a_connection_silent_both_ways_is_closed_after_the_idle_time() {
        let idle = Duration::from_secs(1);
        let (mut client, mut backend, task) = relayed_idle(idle).await;
        for _ in 0..25 {
            tokio::time::sleep(idle / 10).await;
            client.write_all(b"NOOP\r\n").await.unwrap();
            let mut b = [0u8; 6];
            backend.read_exact(&mut b).await.unwrap();
        }
        assert!(!task.is_finished(), "traffic keeps the connection open");
        drop(backend);
        let ended = tokio::time::timeout(Duration::from_secs(60), task).await;
        let e = ended
            .expect("the relay ends")
            .unwrap()
            .expect_err("it times out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0, "closed");
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    /// Many megabytes each way at once, both sides writing before reading (so the relay's
    /// writes block and leftovers are kept): every byte arrives, in order.
    #[tokio::test]
    async fn carries_megabytes_both_ways_byte_for_byte() {
        let (client, backend, task) = relayed().await;
        let up = pattern(6 << 20, 1);
        let down = pattern(5 << 20, 2);
        let side = |s: TcpStream, send: Vec<u8>, want: usize| async move {
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                w.write_all(&send).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            assert_eq!(got.len(), want);
            got
        };
        let (at_backend, at_client) = tokio::join!(
            side(backend, down.clone(), up.len()),
            side(client, up.clone(), down.len())
        );
        assert!(at_backend == up, "client -> backend bytes differ");
        assert!(at_client == down, "backend -> client bytes differ");
        let carried = task.await.unwrap().unwrap();
        assert_eq!(
            carried,
            Carried {
                client_to_backend: up.len() as u64,
                backend_to_client: down.len() as u64
            }
        );
    }

    /// A client that half-closes (QUIT, then shuts down its writing half) still gets the
    /// backend's answer: the backend sees the end of input, answers, and closes; then the
    /// relay ends.
    #[tokio::test]
    async fn a_client_half_close_reaches_the_backend_and_the_answer_still_comes_back() {
        let (mut client, mut backend, task) = relayed().await;
        client.write_all(b"QUIT\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got, b"QUIT\r\n",
            "the backend sees the command, then the end"
        );
        backend.write_all(b"221 2.0.0 bye\r\n").await.unwrap();
        drop(backend);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"221 2.0.0 bye\r\n");
        let carried = task.await.unwrap().unwrap();
        assert_eq!(carried.client_to_backend, 6);
        assert_eq!(carried.backend_to_client, 15);
    }
}
