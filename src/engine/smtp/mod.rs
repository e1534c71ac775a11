//! The engine's SMTP listener and session driver: PROXY handling, the command loop with
//! PIPELINING, DATA, and handing complete messages to scanning and the spool.
//!
//! PROXY rules: a peer in `engine.trusted_proxies` may send a PROXY v1/v2 header first; with
//! `require_proxy` it must (else `421 4.7.0`), without it the engine waits `proxy_wait` for one
//! before the banner. A PROXY header from any other address is refused with `554 5.7.0` and the
//! connection closed: an untrusted client cannot choose the address we log, scan and trust.
//! A LOCAL header (the edge's health probe) makes the session quiet in the logs.
//!
//! Bounds: command lines `max_line_length`; messages `max_message_size` (counted while
//! streaming, the excess discarded); `max_commands` and `max_errors` per session; a command
//! timeout between commands and a data timeout for the whole DATA phase.

pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Shared;
use super::queue::{Dest, now_secs};
use super::scan;
use super::spool::{Envelope, Kind, QueueId, State, Status};
use crate::proxy::{self, ProxyInfo};
use crate::smtp::data::{DataReader, Feed};
use crate::smtp::{Reply, replies};
use crate::snapshot::Snapshot;
use session::{Limits, Session, Step};

/// Any byte stream a session can run on (TCP, TLS over TCP, in-memory in tests).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Buffered connection: read buffer with a cursor, write buffer flushed before blocking reads
/// (that is what makes PIPELINING work: replies to a pipelined batch go out together).
pub struct Conn {
    stream: Box<dyn Stream>,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
}

/// Why reading a line stopped.
enum LineError {
    Closed,
    TooLong,
    Timeout,
    Shutdown,
    Io,
}

impl Conn {
    pub fn new(stream: Box<dyn Stream>) -> Conn {
        Conn {
            stream,
            rbuf: Vec::with_capacity(4096),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    /// Reads more bytes (compacting the buffer first). 0 means EOF. Cancel-safe: a read dropped
    /// by a timeout (the PROXY wait, the early-talker check) leaves the buffer as it was.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.rbuf.reserve(8192);
        self.stream.read_buf(&mut self.rbuf).await
    }

    pub fn reply(&mut self, r: &Reply) {
        r.write_to(&mut self.wbuf);
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.stream.flush().await
    }

    /// Next line without CRLF. Flushes pending replies before blocking.
    async fn line(
        &mut self,
        max: usize,
        timeout: Duration,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<Vec<u8>, LineError> {
        let mut discarding = false;
        loop {
            if let Some(nl) = self.buffered().iter().position(|&b| b == b'\n') {
                let start = self.rpos;
                self.rpos += nl + 1;
                if discarding {
                    return Err(LineError::TooLong);
                }
                let mut line = &self.rbuf[start..start + nl];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                if line.len() + 2 > max {
                    return Err(LineError::TooLong);
                }
                return Ok(line.to_vec());
            }
            if self.buffered().len() > max {
                discarding = true;
                self.rpos = self.rbuf.len();
            }
            if self.flush().await.is_err() {
                return Err(LineError::Io);
            }
            let read = tokio::select! {
                r = tokio::time::timeout(timeout, self.fill()) => r,
                _ = shutdown.cancelled() => return Err(LineError::Shutdown),
            };
            match read {
                Err(_) => return Err(LineError::Timeout),
                Ok(Err(_)) => return Err(LineError::Io),
                Ok(Ok(0)) => return Err(LineError::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Reads a DATA body into `reader` until end of data (or error).
    async fn data(
        &mut self,
        reader: &mut DataReader,
        deadline: tokio::time::Instant,
    ) -> Result<(), LineError> {
        loop {
            if !self.buffered().is_empty()
                && let Feed::Done(n) = reader.feed(&self.rbuf[self.rpos..])
            {
                self.rpos += n;
                return Ok(());
            }
            self.rpos = self.rbuf.len();
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => return Err(LineError::Timeout),
                Ok(Err(_)) => return Err(LineError::Io),
                Ok(Ok(0)) => return Err(LineError::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Facts about the connection that do not change during the session.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub session_id: String,
    pub country: Option<String>,
    /// TLS between the client and the edge (from PROXY), or our own STARTTLS.
    pub client_tls: bool,
    pub proxied: bool,
    /// A health probe (PROXY LOCAL): log quietly.
    pub quiet: bool,
}

pub fn new_session_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Reads the PROXY header a trusted peer may (or must) send. `Ok(None)`: no header.
async fn read_proxy(conn: &mut Conn, wait: Duration) -> Result<Option<ProxyInfo>, String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let buf = conn.buffered();
        if !buf.is_empty() {
            match proxy::looks_like_proxy(buf) {
                Some(false) => return Ok(None),
                Some(true) => match proxy::parse(buf) {
                    Ok((info, used)) => {
                        conn.rpos += used;
                        return Ok(Some(info));
                    }
                    Err(proxy::ProxyError::Incomplete) => {}
                    Err(e) => return Err(e.to_string()),
                },
                None => {}
            }
        }
        match tokio::time::timeout_at(deadline, conn.fill()).await {
            Err(_) if conn.buffered().is_empty() => return Ok(None),
            Err(_) => return Err("incomplete PROXY header".into()),
            Ok(Ok(0)) | Ok(Err(_)) => return Err("connection closed before PROXY header".into()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Serves one accepted connection to completion.
pub async fn serve(shared: Arc<Shared>, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let snap = shared.ops.config.load_full();
    let ecfg = &snap.config.engine;
    let mut conn = Conn::new(Box::new(stream));
    let trusted = ecfg
        .trusted_proxies
        .iter()
        .any(|n| n.contains(peer.ip().to_canonical()));
    let mut info = ConnInfo {
        client: peer,
        session_id: String::new(),
        country: None,
        client_tls: false,
        proxied: false,
        quiet: false,
    };
    if trusted {
        let wait = if ecfg.require_proxy {
            ecfg.command_timeout.get().min(Duration::from_secs(10))
        } else {
            ecfg.proxy_wait.get()
        };
        match read_proxy(&mut conn, wait).await {
            Ok(Some(p)) => {
                info.proxied = true;
                match p.client {
                    Some(c) => info.client = c,
                    None => info.quiet = true,
                }
                info.session_id = p.session_id.unwrap_or_default();
                info.country = p.country;
                info.client_tls = p.tls.is_some();
            }
            Ok(None) if ecfg.require_proxy => {
                conn.reply(&replies::PROXY_REQUIRED);
                let _ = conn.flush().await;
                tracing::info!(peer = %peer, "connection without the required PROXY header refused");
                return;
            }
            Ok(None) => {}
            Err(e) => {
                conn.reply(&replies::PROXY_INVALID);
                let _ = conn.flush().await;
                tracing::warn!(peer = %peer, error = %e, "invalid PROXY header");
                return;
            }
        }
    }
    if info.session_id.is_empty() {
        info.session_id = new_session_id();
    }
    shared.metrics.sessions.inc();
    shared
        .ops
        .sessions
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if info.quiet {
        tracing::debug!(session = %info.session_id, peer = %peer, "health probe");
    } else {
        tracing::debug!(session = %info.session_id, client = %info.client, peer = %peer, proxied = info.proxied, "session start");
    }
    run_session(&shared, &snap, &mut conn, &info, trusted).await;
    let _ = conn.flush().await;
    shared.metrics.sessions.dec();
    shared
        .ops
        .sessions
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

async fn run_session(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    conn: &mut Conn,
    info: &ConnInfo,
    trusted: bool,
) {
    let ecfg = &snap.config.engine;
    let limits = Limits {
        max_message_size: ecfg.max_message_size.0,
        max_recipients: ecfg.max_recipients as usize,
        max_commands: ecfg.max_commands,
        max_errors: ecfg.max_errors,
        hostname: shared.hostname.clone(),
        starttls: shared.tls.load().is_some(),
    };
    let max_line = ecfg.max_line_length.0 as usize;
    let mut session = Session::new(limits);
    conn.reply(&session.banner());
    let mut first = true;
    loop {
        if first && !trusted {
            first = false;
            // An untrusted peer speaking PROXY is trying to choose its own address.
            if conn.flush().await.is_err() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), async {
                if conn.buffered().is_empty() {
                    let _ = conn.fill().await;
                }
            })
            .await;
            if proxy::looks_like_proxy(conn.buffered()) == Some(true) {
                conn.reply(&replies::PROXY_NOT_ACCEPTED);
                tracing::warn!(session = %info.session_id, peer = %info.client, "untrusted peer sent a PROXY header: refused");
                return;
            }
        }
        let line = match conn
            .line(max_line, ecfg.command_timeout.get(), &shared.ops.shutdown)
            .await
        {
            Ok(l) => l,
            Err(LineError::TooLong) => {
                match session.line_too_long() {
                    Step::Close(r) => {
                        conn.reply(&r);
                        return;
                    }
                    Step::Reply(r) | Step::Data(r) | Step::StartTls(r) => conn.reply(&r),
                }
                continue;
            }
            Err(LineError::Timeout) => {
                conn.reply(&replies::TIMEOUT);
                return;
            }
            Err(LineError::Shutdown) => {
                conn.reply(&replies::SHUTTING_DOWN);
                return;
            }
            Err(LineError::Closed | LineError::Io) => return,
        };
        match session.command(&line, snap) {
            Step::Reply(r) => conn.reply(&r),
            Step::Close(r) => {
                conn.reply(&r);
                return;
            }
            Step::StartTls(r) => {
                let Some(tls) = shared.tls.load_full() else {
                    return;
                };
                conn.reply(&r);
                if conn.flush().await.is_err() || !conn.buffered().is_empty() {
                    // Data pipelined after STARTTLS is an injection attempt (RFC 3207 5.1).
                    return;
                }
                let plain = std::mem::replace(&mut conn.stream, Box::new(tokio::io::duplex(1).0));
                match tokio_rustls::TlsAcceptor::from(tls).accept(plain).await {
                    Ok(t) => conn.stream = Box::new(t),
                    Err(e) => {
                        tracing::info!(session = %info.session_id, error = %e, "TLS handshake failed");
                        return;
                    }
                }
            }
            Step::Data(r) => {
                conn.reply(&r);
                if conn.flush().await.is_err() {
                    return;
                }
                let mut reader = DataReader::new(ecfg.max_message_size.0 as usize, true);
                let deadline = tokio::time::Instant::now() + ecfg.data_timeout.get();
                match conn.data(&mut reader, deadline).await {
                    Ok(()) => {}
                    Err(LineError::Timeout) => {
                        conn.reply(&replies::DATA_TIMEOUT);
                        return;
                    }
                    Err(_) => {
                        tracing::info!(session = %info.session_id, "connection lost during DATA: nothing accepted");
                        return;
                    }
                }
                let reply = accept_message(shared, snap, info, &session, reader).await;
                let failed = !reply.is_positive();
                conn.reply(&reply);
                session.data_done();
                if failed && session.count_error() {
                    conn.reply(&replies::TOO_MANY_ERRORS);
                    return;
                }
            }
        }
    }
}

/// The first value of a header (unfolded, truncated), for listings.
fn header_value(msg: &[u8], name: &str) -> String {
    let end = memchr::memmem::find(msg, b"\r\n\r\n").unwrap_or(msg.len().min(64 * 1024));
    let head = String::from_utf8_lossy(&msg[..end]);
    let mut found: Option<String> = None;
    for line in head.split("\r\n") {
        match &mut found {
            Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
            Some(_) => break,
            None => {
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case(name)
                {
                    found = Some(v.trim().to_owned());
                }
            }
        }
    }
    found
        .map(|v| v.chars().take(300).collect())
        .unwrap_or_default()
}

fn received_header(shared: &Shared, info: &ConnInfo, session: &Session, id: &QueueId) -> String {
    let with = match (session.tls, info.client_tls) {
        (true, _) | (_, true) => "ESMTPS",
        _ => "ESMTP",
    };
    let for_clause = match session.rcpts.as_slice() {
        [one] => format!("\r\n\tfor <{one}>"),
        _ => String::new(),
    };
    let helo: String = session
        .helo
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {host} (maildistiller) with {with} id {id}{for_clause};\r\n\t{date}\r\n",
        ip = info.client.ip().to_canonical(),
        host = shared.hostname,
        date = crate::smtp::date::rfc5322(now_secs()),
    )
}

/// Decides and spools a complete message; returns the reply to DATA.
async fn accept_message(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    info: &ConnInfo,
    session: &Session,
    reader: DataReader,
) -> Reply {
    let id = QueueId::generate();
    let Some(tenant) = session.tenant.clone() else {
        return replies::NO_VALID_RECIPIENTS;
    };
    let tid = tenant.id.0.as_str();
    shared.metrics.received(tid);
    if reader.bare_newline {
        shared.metrics.rejected(tid, "bare-newline");
        tracing::info!(session = %info.session_id, client = %info.client, "message with bare CR/LF refused");
        return replies::BARE_NEWLINE;
    }
    if reader.oversized() {
        shared.metrics.rejected(tid, "size");
        return replies::message_too_big(snap.config.engine.max_message_size.0);
    }
    let body = reader.into_message();
    let mut message = received_header(shared, info, session, &id).into_bytes();
    message.extend_from_slice(&body);
    let mail_from = session
        .mail
        .as_ref()
        .map(|m| m.address.clone())
        .unwrap_or_default();
    let scanner = shared.scanner(snap);
    let verdict = scanner
        .scan(
            &scan::Envelope {
                session_id: &info.session_id,
                queue_id: id.as_str(),
                client_ip: info.client.ip().to_canonical(),
                client_country: info.country.as_deref(),
                helo: &session.helo,
                mail_from: &mail_from,
                rcpts: &session.rcpts,
                tenant: &tenant,
                tls: session.tls || info.client_tls,
            },
            &message,
        )
        .await;
    let status = match &verdict.action {
        scan::Action::Deliver => Status::Queued,
        scan::Action::Quarantine { reason } => Status::Quarantined {
            reason: reason.clone(),
        },
        scan::Action::Reject { reply } | scan::Action::TempFail { reply } => {
            shared.metrics.rejected(tid, "policy");
            tracing::info!(session = %info.session_id, id = %id, tenant = tid, client = %info.client, verdict = %verdict.summary, "message refused by policy");
            return reply.clone();
        }
    };
    let message = verdict.apply(message);
    let env = Envelope {
        id: id.clone(),
        received: now_secs(),
        tenant: tid.to_owned(),
        session: info.session_id.clone(),
        client: info.client.ip().to_canonical(),
        helo: session.helo.clone(),
        from: mail_from,
        rcpts: session.rcpts.clone(),
        status: status.clone(),
        verdict: verdict.summary.clone(),
        subject: header_value(&body, "Subject"),
        header_from: header_value(&body, "From"),
        kind: Kind::Message,
        size: message.len() as u64,
    };
    if let Err(e) = shared.spool.store(&env, &message).await {
        shared.metrics.rejected(tid, "spool");
        tracing::error!(session = %info.session_id, id = %id, error = %e, "cannot spool message: answering 4xx");
        return if e.kind() == std::io::ErrorKind::StorageFull {
            replies::STORAGE_FULL
        } else {
            replies::LOCAL_ERROR
        };
    }
    shared.metrics.queued(tid, status.as_str());
    tracing::info!(
        session = %info.session_id, id = %id, tenant = tid, client = %info.client,
        from = %env.from, rcpts = env.rcpts.len(), size = env.size, status = status.as_str(),
        verdict = %verdict.summary, "message queued"
    );
    let state = State::initial(&env);
    shared
        .queue
        .insert(Arc::new(env), state, Dest::Tenant(tid.to_owned()));
    replies::queued(id.as_str(), matches!(status, Status::Quarantined { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read cut short by a timeout (the 50 ms early-talker check, the PROXY wait) must leave
    /// nothing behind: a client that sends EHLO after the wait gets an answer to EHLO, not
    /// `500 Line too long` for 8 KiB of zeros in front of it.
    #[tokio::test]
    async fn a_timed_out_read_leaves_the_buffer_as_it_was() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut conn = Conn::new(Box::new(server));
        let waited = tokio::time::timeout(Duration::from_millis(20), conn.fill()).await;
        assert!(waited.is_err(), "nothing was sent yet");
        assert!(conn.buffered().is_empty());
        client.write_all(b"EHLO client.example\r\n").await.unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let line = conn.line(512, Duration::from_secs(5), &shutdown).await;
        assert_eq!(line.ok().as_deref(), Some(&b"EHLO client.example"[..]));
    }
}
