//! A small SMTP client for delivery: connect, EHLO (HELO fallback), STARTTLS as the
//! destination's TLS [`Plan`] says, then any number of transactions over one connection with
//! PIPELINING when offered, then QUIT.
//!
//! STARTTLS (RFC 3207): offered and the plan allows it -> `STARTTLS`, `220`, handshake (judged by
//! `tls::client`), EHLO again, and everything learnt from the first EHLO is forgotten. A plan
//! that requires TLS gets an error ([`ClientError::Tls`]) before anything of the mail is written
//! when STARTTLS is not offered (a downgrade strips it), is refused, or the handshake or the
//! certificate fails. An opportunistic plan whose handshake fails connects once more and
//! delivers in clear, as MTAs do.
//!
//! Every read has a timeout and a size bound; a server that misbehaves costs a deferral, never a
//! hang or unbounded memory.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::tls::Plan;
use crate::config::DeliveryTls;
use crate::net::connect_from;
use crate::smtp::data::stuff;
use crate::smtp::reply::{self, Received};
use crate::tls::client::{Facts, handshake};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("{0}: timed out waiting for a reply")]
    Timeout(&'static str),
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered the greeting or EHLO with an error.
    #[error("refused: {0}")]
    Refused(String),
    /// No connection could meet the destination's TLS plan (the reason of the last one).
    #[error("{0}")]
    Policy(String),
    /// The destination's TLS plan cannot be met on this connection; nothing was sent.
    #[error("{host} [{addr}]: {why}; TLS required ({by}): not sent in clear")]
    Tls {
        by: &'static str,
        host: String,
        addr: SocketAddr,
        why: String,
    },
}

/// Either side of STARTTLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open session with a destination server.
pub struct Client {
    stream: Box<dyn Io>,
    buf: Vec<u8>,
    pub peer: SocketAddr,
    pub pipelining: bool,
    pub size_limit: Option<u64>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// The TLS of this session; `None` in clear.
    pub tls: Option<Facts>,
    /// The last EHLO offered STARTTLS.
    offers_starttls: bool,
    timeout: Duration,
}

/// What the server said to one transaction.
#[derive(Debug)]
pub struct TransactionResult {
    pub mail: Received,
    /// Per recipient, in the order given.
    pub rcpts: Vec<Received>,
    /// The final reply to the message; `None` when DATA was refused or no recipient was accepted.
    pub data: Option<Received>,
    /// The reply to the DATA command itself when it was not 354 (a refusal).
    pub data_refused: Option<Received>,
}

/// Where a connection goes and how it must use TLS.
pub struct Target<'a> {
    pub addr: SocketAddr,
    /// The host name the certificate must be valid for (the tenant's delivery host or the MX).
    pub host: &'a str,
    pub plan: &'a Plan,
}

/// How an opportunistic STARTTLS ended when it did not give TLS.
enum Upgrade {
    Done,
    /// The handshake broke the connection: connect again in clear.
    Broken(String),
}

impl Client {
    /// Connects (from `source` if given), greets and does STARTTLS as `to.plan` says. `helo`
    /// is our name.
    pub async fn connect(
        to: &Target<'_>,
        source: Option<std::net::IpAddr>,
        helo: &str,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let mut c = Client::greet(to.addr, source, helo, connect_timeout, timeout).await?;
        match c.upgrade(to, helo).await? {
            Upgrade::Done => Ok(c),
            Upgrade::Broken(why) => {
                tracing::info!(host = to.host, address = %to.addr, error = %why, "STARTTLS handshake failed; delivering in clear (opportunistic)");
                Client::greet(to.addr, source, helo, connect_timeout, timeout).await
            }
        }
    }

    /// TCP, the greeting, EHLO (HELO when EHLO is refused).
    async fn greet(
        addr: SocketAddr,
        source: Option<std::net::IpAddr>,
        helo: &str,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let stream = tokio::time::timeout(connect_timeout, connect_from(addr, source))
            .await
            .map_err(|_| ClientError::ConnectTimeout(addr))?
            .map_err(|e| ClientError::Connect(addr, e))?;
        let _ = stream.set_nodelay(true);
        let mut c = Client {
            stream: Box::new(stream),
            buf: Vec::with_capacity(4096),
            peer: addr,
            pipelining: false,
            size_limit: None,
            eight_bit: false,
            smtputf8: false,
            tls: None,
            offers_starttls: false,
            timeout,
        };
        let greeting = c.read_reply("greeting").await?;
        if greeting.code != 220 {
            return Err(ClientError::Refused(format!(
                "{} {}",
                greeting.code,
                greeting.text()
            )));
        }
        c.hello(helo).await?;
        Ok(c)
    }

    /// EHLO (HELO when refused); learns the extensions.
    async fn hello(&mut self, helo: &str) -> Result<(), ClientError> {
        self.send(format!("EHLO {helo}\r\n").as_bytes()).await?;
        let ehlo = self.read_reply("EHLO").await?;
        if ehlo.code == 250 {
            self.pipelining = ehlo.has_extension("PIPELINING");
            self.eight_bit = ehlo.has_extension("8BITMIME");
            self.smtputf8 = ehlo.has_extension("SMTPUTF8");
            self.size_limit = ehlo
                .lines
                .iter()
                .skip(1)
                .find_map(|l| l.strip_prefix("SIZE ").and_then(|n| n.trim().parse().ok()))
                .filter(|n| *n > 0);
            self.offers_starttls = ehlo.has_extension("STARTTLS");
            return Ok(());
        }
        self.offers_starttls = false;
        self.pipelining = false;
        self.eight_bit = false;
        self.smtputf8 = false;
        self.size_limit = None;
        self.send(format!("HELO {helo}\r\n").as_bytes()).await?;
        let r = self.read_reply("HELO").await?;
        if r.code != 250 {
            return Err(ClientError::Refused(format!("{} {}", r.code, r.text())));
        }
        Ok(())
    }

    /// STARTTLS as the plan says (see the module docs).
    async fn upgrade(&mut self, to: &Target<'_>, helo: &str) -> Result<Upgrade, ClientError> {
        let required = to.plan.requires_tls();
        let refuse = |why: String| ClientError::Tls {
            by: to.plan.source,
            host: to.host.to_owned(),
            addr: to.addr,
            why,
        };
        if to.plan.mode == DeliveryTls::Never {
            return Ok(Upgrade::Done);
        }
        if !self.offers_starttls {
            return match required {
                true => Err(refuse("STARTTLS not offered".into())),
                false => Ok(Upgrade::Done),
            };
        }
        self.send(b"STARTTLS\r\n").await?;
        let r = self.read_reply("STARTTLS").await?;
        if r.code != 220 {
            return match required {
                true => Err(refuse(format!("STARTTLS refused: {} {}", r.code, r.text()))),
                false => Ok(Upgrade::Done),
            };
        }
        if !self.buf.is_empty() {
            // Bytes after the 220 came in clear and would be read as if over TLS (the
            // STARTTLS command injection of CVE-2011-0411, the other way round).
            return Err(ClientError::Protocol(
                "data after the 220 to STARTTLS".into(),
            ));
        }
        let plain = std::mem::replace(&mut self.stream, Box::new(tokio::io::empty()));
        let shake = tokio::time::timeout(self.timeout, handshake(plain, to.host, &to.plan.policy));
        match shake.await {
            Ok(Ok((tls, facts))) => {
                self.stream = Box::new(tls);
                self.tls = Some(facts);
                self.hello(helo).await?;
                Ok(Upgrade::Done)
            }
            Ok(Err(e)) if required => Err(refuse(e.to_string())),
            Err(_) if required => Err(refuse("TLS handshake timed out".into())),
            Ok(Err(e)) => Ok(Upgrade::Broken(e.to_string())),
            Err(_) => Ok(Upgrade::Broken("TLS handshake timed out".into())),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        tokio::time::timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| ClientError::Timeout("write"))??;
        Ok(())
    }

    pub async fn read_reply(&mut self, what: &'static str) -> Result<Received, ClientError> {
        self.read_reply_within(what, self.timeout).await
    }

    async fn read_reply_within(
        &mut self,
        what: &'static str,
        limit: Duration,
    ) -> Result<Received, ClientError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match reply::parse(&self.buf).map_err(ClientError::Protocol)? {
                Some((r, used)) => {
                    self.buf.drain(..used);
                    return Ok(r);
                }
                None => {
                    let mut chunk = [0u8; 4096];
                    let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                        .await
                        .map_err(|_| ClientError::Timeout(what))??;
                    if n == 0 {
                        return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    /// One transaction. `message` is not dot-stuffed; this stuffs it.
    pub async fn transaction(
        &mut self,
        from: &str,
        rcpts: &[&str],
        message: &[u8],
        data_timeout: Duration,
    ) -> Result<TransactionResult, ClientError> {
        let mut mail = format!("MAIL FROM:<{from}>");
        if self.size_limit.is_some() {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        if self.eight_bit && !message.is_ascii() {
            mail.push_str(" BODY=8BITMIME");
        }
        if self.smtputf8 && (!from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii())) {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        let mut out = mail.into_bytes();
        let mut replies = Vec::with_capacity(rcpts.len() + 1);
        if self.pipelining {
            for r in rcpts {
                out.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
            }
            out.extend_from_slice(b"DATA\r\n");
            self.send(&out).await?;
            for _ in 0..rcpts.len() + 2 {
                replies.push(self.read_reply("MAIL/RCPT/DATA").await?);
            }
        } else {
            self.send(&out).await?;
            let m = self.read_reply("MAIL").await?;
            let ok = m.is_positive();
            replies.push(m);
            if ok {
                for r in rcpts {
                    self.send(format!("RCPT TO:<{r}>\r\n").as_bytes()).await?;
                    replies.push(self.read_reply("RCPT").await?);
                }
                if replies[1..].iter().any(Received::is_positive) {
                    self.send(b"DATA\r\n").await?;
                    replies.push(self.read_reply("DATA").await?);
                }
            }
        }
        let mail = replies.remove(0);
        if !mail.is_positive() {
            // MAIL refused: nothing else counts; reset in case DATA was pipelined.
            let rcpts = rcpts.iter().map(|_| mail.clone()).collect();
            self.rset_after_failure(&replies).await?;
            return Ok(TransactionResult {
                mail,
                rcpts,
                data: None,
                data_refused: None,
            });
        }
        let rcpt_replies: Vec<Received> = replies.drain(..rcpts.len().min(replies.len())).collect();
        let data_go = replies.pop();
        let any_ok = rcpt_replies.iter().any(Received::is_positive);
        match data_go {
            Some(r) if r.code == 354 && any_ok => {
                self.send(&data_body(message)).await?;
                let fin = self.read_reply_within("end of data", data_timeout).await?;
                Ok(TransactionResult {
                    mail,
                    rcpts: rcpt_replies,
                    data: Some(fin),
                    data_refused: None,
                })
            }
            Some(r) if r.code == 354 => {
                // Pipelined DATA was accepted although no recipient was: send an empty message
                // terminator? No: RFC 2920 says the server must not do this; end it cleanly.
                self.send(b".\r\n").await?;
                let _ = self.read_reply("end of data").await?;
                Ok(TransactionResult {
                    mail,
                    rcpts: rcpt_replies,
                    data: None,
                    data_refused: None,
                })
            }
            refused => Ok(TransactionResult {
                mail,
                rcpts: rcpt_replies,
                data: None,
                data_refused: refused,
            }),
        }
    }

    async fn rset_after_failure(&mut self, _pending: &[Received]) -> Result<(), ClientError> {
        self.send(b"RSET\r\n").await?;
        let _ = self.read_reply("RSET").await?;
        Ok(())
    }

    /// Resets between transactions when the previous one ended in an error reply.
    pub async fn rset(&mut self) -> Result<(), ClientError> {
        self.send(b"RSET\r\n").await?;
        let r = self.read_reply("RSET").await?;
        if r.code != 250 {
            return Err(ClientError::Protocol(format!("RSET answered {}", r.code)));
        }
        Ok(())
    }

    /// Sends one command line (without CRLF) and reads its reply: the recipient call-ahead's
    /// MAIL, RCPT and RSET (`engine::verify`).
    pub async fn command(
        &mut self,
        line: &str,
        what: &'static str,
    ) -> Result<Received, ClientError> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply(what).await
    }

    pub async fn quit(mut self) {
        if self.send(b"QUIT\r\n").await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.read_reply("QUIT")).await;
        }
    }
}

/// The DATA body: `message` dot-stuffed and terminated. Most messages have no line starting
/// with a dot, and for them this is one `memcpy` instead of [`stuff`]'s byte-by-byte copy
/// (a tenth of the engine's CPU for 100 KiB messages).
fn data_body(message: &[u8]) -> Vec<u8> {
    let dot_line =
        message.first() == Some(&b'.') || memchr::memmem::find(message, b"\n.").is_some();
    let mut body =
        Vec::with_capacity(message.len() + if dot_line { message.len() / 64 } else { 0 } + 5);
    if dot_line {
        stuff(message, &mut body);
    } else {
        body.extend_from_slice(message);
        if !message.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b".\r\n");
    }
    body
}

/// Is there an SMTP server? Connect, read a 220, QUIT (the cheap probe for down destinations).
/// Is the destination back? Connect (from the egress `source`, as deliveries do: a firewall
/// that lets only the egress ranges in would refuse anything else), read the 220, QUIT, and
/// wait up to `QUIT_WAIT` for the server to close, so the probe's session is over before the
/// first delivery connection opens (the destination never sees more than its connection cap).
pub async fn probe(addr: SocketAddr, source: Option<std::net::IpAddr>, timeout: Duration) -> bool {
    const QUIT_WAIT: Duration = Duration::from_secs(1);
    let attempt = async {
        let mut s = connect_from(addr, source).await.ok()?;
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some((r, _)) = reply::parse(&buf).ok()? {
                let _ = s.write_all(b"QUIT\r\n").await;
                return Some((r.code == 220, s));
            }
        }
    };
    let Some((up, mut s)) = tokio::time::timeout(timeout, attempt).await.ok().flatten() else {
        return false;
    };
    // The 221 and the close; a server that does neither within QUIT_WAIT is still up.
    let _ = tokio::time::timeout(QUIT_WAIT, async {
        let mut chunk = [0u8; 256];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    up
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_body_matches_stuff_with_and_without_dot_lines() {
        for m in [
            &b"Subject: x\r\n\r\nhello\r\n"[..],
            b"no final newline",
            b".starts with a dot\r\n",
            b"a\r\n.\r\n..two\r\nend.\r\n",
            b"",
        ] {
            let mut want = Vec::new();
            stuff(m, &mut want);
            assert_eq!(data_body(m), want, "{:?}", String::from_utf8_lossy(m));
        }
    }

    /// The probe leaves from the egress address and its session is over (the server saw it
    /// close) when it reports the destination up (regression: the first delivery connection
    /// could overlap the probe's, two connections to a destination capped at one).
    #[tokio::test]
    async fn probe_uses_the_egress_address_and_finishes_its_session() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = closed.clone();
        let server = tokio::spawn(async move {
            let (mut s, peer) = l.accept().await.unwrap();
            s.write_all(b"220 tenant.test ESMTP\r\n").await.unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"QUIT\r\n");
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.write_all(b"221 bye\r\n").await.unwrap();
            drop(s);
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            peer.ip()
        });
        let source = "127.0.0.9".parse().ok();
        assert!(probe(addr, source, Duration::from_secs(5)).await);
        assert!(
            closed.load(std::sync::atomic::Ordering::SeqCst),
            "probe returned mid-session"
        );
        assert_eq!(server.await.unwrap(), source.unwrap());
    }
}
