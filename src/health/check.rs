//! What one probe does to one target. [`SmtpBanner`] is the check GeoDNS runs against silo
//! edges (connect, read the 220 greeting, send QUIT); the edge will add its own (EHLO, PROXY v2
//! LOCAL) behind the same [`Check`] trait.
//!
//! A check only says whether the target answered as a healthy SMTP server should. Time limits
//! are the prober's: it wraps every call in the configured timeout.

use std::net::SocketAddr;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a probe failed, as logged and shown on `/status`.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("closed before a complete greeting")]
    Closed,
    #[error("read: {0}")]
    Read(std::io::Error),
    #[error("greeting is not 220: {0:?}")]
    NotReady(String),
    #[error("greeting is not SMTP")]
    Garbage,
}

/// One kind of probe. Implementations must not retry internally: the rise/fall counts do that.
#[async_trait]
pub trait Check: Send + Sync + std::fmt::Debug + 'static {
    /// Probes `target` once. The caller bounds the time it may take.
    async fn check(&self, target: SocketAddr) -> Result<(), ProbeError>;
}

/// Largest greeting read, in bytes; a server that sends more is not healthy.
pub const MAX_GREETING: usize = 4096;

/// Connect, read the whole greeting (multi-line `220-` continuations allowed), require 220,
/// send `QUIT`. Reading the 221 is not waited for: the greeting already proved the server works.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmtpBanner;

#[async_trait]
impl Check for SmtpBanner {
    async fn check(&self, target: SocketAddr) -> Result<(), ProbeError> {
        let mut stream = TcpStream::connect(target)
            .await
            .map_err(ProbeError::Connect)?;
        let mut buf = [0u8; MAX_GREETING];
        let mut have = 0;
        loop {
            let n = stream
                .read(&mut buf[have..])
                .await
                .map_err(ProbeError::Read)?;
            if n == 0 {
                return Err(ProbeError::Closed);
            }
            have += n;
            match greeting(&buf[..have]) {
                Greeting::Incomplete if have < buf.len() => continue,
                Greeting::Incomplete => return Err(ProbeError::Garbage),
                Greeting::Bad => return Err(ProbeError::Garbage),
                Greeting::Done(220) => break,
                Greeting::Done(_) => {
                    let first = String::from_utf8_lossy(&buf[..have.min(120)]);
                    return Err(ProbeError::NotReady(first.trim_end().to_owned()));
                }
            }
        }
        // Best effort: a server that closes first is still healthy.
        let _ = stream.write_all(b"QUIT\r\n").await;
        let _ = stream.shutdown().await;
        Ok(())
    }
}

/// Where reading an SMTP greeting stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greeting {
    /// No final line yet.
    Incomplete,
    /// The reply code of a complete greeting.
    Done(u16),
    /// Not an SMTP reply.
    Bad,
}

/// Parses the greeting read so far: lines of `NNN-text` continue, `NNN text` or `NNN` ends it.
/// Every line must carry the same code (RFC 5321 4.2.1).
pub fn greeting(buf: &[u8]) -> Greeting {
    let mut code = None;
    let mut rest = buf;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        rest = &rest[end + 1..];
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Greeting::Bad;
        }
        let c = line[..3]
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        if code.is_some_and(|prev| prev != c) {
            return Greeting::Bad;
        }
        code = Some(c);
        match line.get(3) {
            None | Some(b' ') => return Greeting::Done(c),
            Some(b'-') => continue,
            Some(_) => return Greeting::Bad,
        }
    }
    Greeting::Incomplete
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot server that sends `greeting` to its first client.
    async fn server(greeting: &'static [u8]) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                if greeting.is_empty() {
                    return; // close without a word
                }
                let _ = s.write_all(greeting).await;
                let mut quit = [0; 6];
                let _ = s.read_exact(&mut quit).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_smtp_banner_check_wants_a_220() {
        let ok = server(b"220-mx.example ESMTP\r\n220 ready\r\n").await;
        assert!(SmtpBanner.check(ok).await.is_ok());
        let busy = server(b"421 too busy\r\n").await;
        assert!(matches!(
            SmtpBanner.check(busy).await,
            Err(ProbeError::NotReady(_))
        ));
        let closed = server(b"").await;
        assert!(matches!(
            SmtpBanner.check(closed).await,
            Err(ProbeError::Closed)
        ));
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(matches!(
            SmtpBanner.check(refused).await,
            Err(ProbeError::Connect(_))
        ));
    }

    #[test]
    fn greetings() {
        assert_eq!(greeting(b"220 mx ESMTP\r\n"), Greeting::Done(220));
        assert_eq!(greeting(b"220\r\n"), Greeting::Done(220));
        assert_eq!(
            greeting(b"220-hello\r\n220-there\r\n220 ok\r\n"),
            Greeting::Done(220)
        );
        assert_eq!(greeting(b"220-hello\r\n220 o"), Greeting::Incomplete);
        assert_eq!(greeting(b"220 mx"), Greeting::Incomplete);
        assert_eq!(greeting(b""), Greeting::Incomplete);
        assert_eq!(greeting(b"421 busy\r\n"), Greeting::Done(421));
        assert_eq!(
            greeting(b"554 no\n"),
            Greeting::Done(554),
            "bare LF accepted"
        );
        assert_eq!(greeting(b"SSH-2.0-OpenSSH\r\n"), Greeting::Bad);
        assert_eq!(
            greeting(b"220-a\r\n250 b\r\n"),
            Greeting::Bad,
            "codes must agree"
        );
        assert_eq!(greeting(b"220x\r\n"), Greeting::Bad);
    }
}
