//! The engine's SMTP listeners and session driver: PROXY handling, reading and writing with
//! PIPELINING, STARTTLS, and handing complete messages to scanning and the spool. The protocol
//! itself is the sans-I/O [`session`]. Mail to a tenant's report address is learnt, not
//! delivered (`report.rs`).
//!
//! PROXY is a property of the listener, never guessed: on `engine.proxy_listen` (the edges')
//! the peer must be in `engine.trusted_proxies` (else `554 5.7.0`) and must send a PROXY v1/v2
//! header first (else `421 4.7.0`); on `engine.listen` (direct senders) nobody may send one
//! (`554 5.7.0`: an untrusted client cannot choose the address we log, scan and trust). No
//! listener waits to see whether a header comes: the banner goes out as soon as the session
//! starts. A LOCAL header (the edge's health probe) makes the session quiet in the logs.
//!
//! Bounds: command lines `max_line_length`; messages `max_message_size` (counted while
//! streaming, the excess discarded); `max_commands` and `max_errors` per session; a command
//! timeout between commands, a data timeout for the whole DATA phase, and at most
//! [`PROXY_HEADER_WAIT`] for the PROXY header. Messages scanned at once:
//! `engine.max_processing`; beyond as many again waiting, new recipients get `451 4.3.2`
//! (`processing.rs`).

pub mod body;
pub mod processing;
mod report;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::Shared;
use super::scan;
use crate::config::OnShadowFailure;
use crate::proxy::{self, ProxyInfo};
use crate::shadow::Plan;
use crate::smtp::ending::Ending;
use crate::smtp::server::{Message, SessionLimits};
use crate::smtp::{Reply, replies};
use crate::snapshot::Snapshot;
use crate::store::{Dest, Envelope, Kind, QueueId, Status, now_secs};
use crate::topology::TenantIdx;
use body::Body;
use session::{Session, Step};

/// Longest wait for the PROXY header on a PROXY listener (or `engine.command_timeout`, if
/// shorter). Edges send it with their first bytes, so only a peer that is not an edge waits.
pub const PROXY_HEADER_WAIT: Duration = Duration::from_secs(10);

/// Any byte stream a session can run on (TCP, TLS over TCP, in-memory in tests).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What a listener expects before SMTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `engine.listen`: direct senders; a PROXY header is refused.
    Direct,
    /// `engine.proxy_listen`: edges; a PROXY header from `trusted_proxies` is required.
    Proxy,
}

/// Buffered connection: read buffer with a cursor, write buffer flushed before blocking reads
/// (that is what makes PIPELINING work: replies to a pipelined batch go out together).
pub struct Conn {
    stream: Box<dyn Stream>,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
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

    fn consume(&mut self, n: usize) {
        self.rpos += n;
    }

    /// Reads more bytes (compacting the buffer first). 0 means EOF. Cancel-safe: a read dropped
    /// by a timeout leaves the buffer as it was.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.rbuf.reserve(8192);
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// Flushes the replies, then reads more bytes before `deadline` (or `shutdown`, when
    /// given: the session is at a command boundary).
    async fn read_more(
        &mut self,
        deadline: Instant,
        in_body: bool,
        shutdown: Option<&tokio_util::sync::CancellationToken>,
    ) -> Result<(), Ending> {
        self.flush().await.map_err(Ending::ClientIo)?;
        let stop = async {
            match shutdown {
                Some(s) => s.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, self.fill()) => r,
            _ = stop => return Err(Ending::Shutdown),
        };
        match read {
            Err(_) if in_body => Err(Ending::DataTimeout),
            Err(_) => Err(Ending::Timeout),
            Ok(Err(e)) => Err(Ending::ClientIo(e)),
            Ok(Ok(0)) => Err(Ending::ClientClosed),
            Ok(Ok(_)) => Ok(()),
        }
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

/// Reads the PROXY header a PROXY listener requires, within `wait`.
async fn read_proxy(conn: &mut Conn, wait: Duration) -> Result<ProxyInfo, Ending> {
    let deadline = Instant::now() + wait;
    loop {
        let buf = conn.buffered();
        if !buf.is_empty() {
            match proxy::looks_like_proxy(buf) {
                Some(false) => return Err(Ending::ProxyMissing),
                Some(true) => match proxy::parse(buf) {
                    Ok((info, used)) => {
                        conn.consume(used);
                        return Ok(info);
                    }
                    Err(proxy::ProxyError::Incomplete) => {}
                    Err(e) => return Err(Ending::ProxyInvalid(e.to_string())),
                },
                None => {}
            }
        }
        match tokio::time::timeout_at(deadline, conn.fill()).await {
            Err(_) if conn.buffered().is_empty() => return Err(Ending::ProxyMissing),
            Err(_) => return Err(Ending::ProxyInvalid("incomplete".into())),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Ending::ClientClosed),
            Ok(Ok(_)) => {}
        }
    }
}

/// Serves one accepted connection to completion.
pub async fn serve(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: Listener,
) {
    let _ = stream.set_nodelay(true);
    let snap = shared.ops.config.load_full();
    let ecfg = &snap.config.engine;
    let mut conn = Conn::new(Box::new(stream));
    let mut info = ConnInfo {
        client: peer,
        session_id: String::new(),
        country: None,
        client_tls: false,
        proxied: false,
        quiet: false,
    };
    if listener == Listener::Proxy {
        let trusted = ecfg
            .trusted_proxies
            .iter()
            .any(|n| n.contains(peer.ip().to_canonical()));
        let wait = ecfg.command_timeout.get().min(PROXY_HEADER_WAIT);
        let header = if trusted {
            read_proxy(&mut conn, wait).await
        } else {
            Err(Ending::ProxyUntrusted)
        };
        match header {
            Ok(p) => {
                info.proxied = true;
                match p.client {
                    Some(c) => info.client = c,
                    None => info.quiet = true,
                }
                info.session_id = p.session_id.unwrap_or_default();
                info.country = p.country;
                info.client_tls = p.tls.is_some();
            }
            Err(ending) => {
                if let Some(r) = ending.reply() {
                    conn.reply(&r);
                }
                let _ = conn.flush().await;
                tracing::warn!(peer = %peer, error = %ending, "connection to a PROXY listener refused");
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
    let ending = run_session(&shared, &snap, &mut conn, &info).await;
    if let Some(r) = ending.reply() {
        conn.reply(&r);
    }
    let _ = conn.flush().await;
    tracing::debug!(session = %info.session_id, ending = ending.label(), "session end");
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
) -> Ending {
    let ecfg = &snap.config.engine;
    let mut session = Session::new(SessionLimits {
        hostname: shared.hostname.clone(),
        max_message_size: ecfg.max_message_size.0,
        max_recipients: ecfg.max_recipients as usize,
        max_commands: ecfg.max_commands,
        max_errors: ecfg.max_errors,
        max_line_length: ecfg.max_line_length.0 as usize,
        starttls: shared.tls.load().is_some(),
        collect: true,
        bare_newline: ecfg.bare_newline,
    });
    conn.reply(&session.banner());
    let mut body = Body::new(shared.bodies.clone());
    // The whole DATA transfer has one deadline, set when the body starts.
    let mut data_deadline: Option<Instant> = None;
    loop {
        let (used, step) = session.input(conn.buffered(), &snap.topology);
        conn.consume(used);
        match step {
            Step::More => {
                let in_body = session.in_body();
                if in_body && let Err(e) = body.track(&mut session) {
                    tracing::error!(session = %info.session_id, error = %e, "cannot spill a body to the spool: answering 4xx");
                    conn.reply(&replies::LOCAL_ERROR);
                    return Ending::Protocol;
                }
                let deadline = if in_body {
                    *data_deadline.get_or_insert_with(|| Instant::now() + ecfg.data_timeout.get())
                } else {
                    data_deadline = None;
                    Instant::now() + ecfg.command_timeout.get()
                };
                let shutdown = (!in_body).then_some(&shared.ops.shutdown);
                if let Err(e) = conn.read_more(deadline, in_body, shutdown).await {
                    if in_body && matches!(e, Ending::ClientClosed | Ending::ClientIo(_)) {
                        tracing::info!(session = %info.session_id, "connection lost during DATA: nothing accepted");
                    }
                    return e;
                }
            }
            Step::Reply(r) => conn.reply(&r),
            Step::Verify { address, owner } if shared.processing.busy() => {
                tracing::debug!(session = %info.session_id, client = %info.client, "busy: recipient refused before the body");
                let (reply, _) = session.verified(address, owner, replies::PROCESSING_BUSY);
                conn.reply(&reply);
            }
            Step::Verify { address, owner } => {
                let verdict = match snap.topology.tenants.get(owner.0) {
                    Some(tenant) => shared.verifier.check(snap, tenant, &address).await,
                    None => crate::engine::verify::Verdict::Accept,
                };
                let mut reply = verdict.reply();
                // Greylisting only for recipients that exist (an unknown one gets its 550 now).
                if reply.is_positive()
                    && let Some(r) = greylist(shared, snap, info, &session, &address, owner).await
                {
                    reply = r;
                }
                let (reply, close) = session.verified(address, owner, reply);
                conn.reply(&reply);
                if let Some(close) = close {
                    conn.reply(&close);
                    return Ending::Protocol;
                }
            }
            Step::Close(r) => {
                conn.reply(&r);
                return Ending::Protocol;
            }
            Step::StartTls(r) => {
                let Some(tls) = shared.tls.load_full() else {
                    return Ending::Protocol;
                };
                conn.reply(&r);
                if let Err(e) = conn.flush().await {
                    return Ending::ClientIo(e);
                }
                let plain = std::mem::replace(&mut conn.stream, Box::new(tokio::io::duplex(1).0));
                match tokio_rustls::TlsAcceptor::from(tls).accept(plain).await {
                    Ok(t) => conn.stream = Box::new(t),
                    Err(e) => {
                        tracing::info!(session = %info.session_id, error = %e, "TLS handshake failed");
                        return Ending::Tls(e);
                    }
                }
            }
            Step::Message(mut m) => {
                data_deadline = None;
                let reply = match body.complete(std::mem::take(&mut m.body)).await {
                    Ok(whole) => {
                        m.body = whole;
                        accept_message(shared, snap, info, &session, m).await
                    }
                    Err(e) => {
                        tracing::error!(session = %info.session_id, error = %e, "cannot read a spilled body back: answering 4xx");
                        replies::LOCAL_ERROR
                    }
                };
                body.release();
                conn.reply(&reply);
                if let Some(close) = session.answered(&reply) {
                    conn.reply(&close);
                    return Ending::Protocol;
                }
            }
        }
    }
}

/// Greylisting at RCPT, when the recipient's tenant's policy asks for it: `Some(451 4.7.1)`
/// for a triplet's first attempt (or a retry too soon). Never waits past `shared.timeout`.
async fn greylist(
    shared: &Arc<Shared>,
    snap: &Arc<Snapshot>,
    info: &ConnInfo,
    session: &Session,
    rcpt: &str,
    owner: TenantIdx,
) -> Option<Reply> {
    let tenant = snap.topology.tenants.get(owner.0)?;
    let scanner = shared.scanner(snap);
    let policy = scanner
        .policies()
        .live(tenant.id.0.as_str(), &tenant.policy);
    let cfg = &policy.config.greylist;
    if !cfg.enabled || info.quiet {
        return None;
    }
    let client = info.client.ip().to_canonical();
    let outcome = shared
        .fleet
        .greylist(cfg, client, session.sender(), rcpt, crate::shared::now_ms())
        .await;
    tracing::debug!(session = %info.session_id, client = %client, rcpt, outcome = outcome.as_str(), "greylisting");
    (!outcome.passes()).then_some(replies::GREYLISTED)
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

fn received_header(
    shared: &Shared,
    info: &ConnInfo,
    session: &Session,
    rcpts: &[String],
    id: &QueueId,
) -> String {
    let with = match (session.tls(), info.client_tls) {
        (true, _) | (_, true) => "ESMTPS",
        _ => "ESMTP",
    };
    let for_clause = match rcpts {
        [one] => format!("\r\n\tfor <{one}>"),
        _ => String::new(),
    };
    let helo: String = session
        .helo()
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
    m: Message<TenantIdx>,
) -> Reply {
    let id = QueueId::generate();
    let Some(tenant) = m.owner.and_then(|o| snap.topology.tenants.get(o.0)) else {
        return replies::NO_VALID_RECIPIENTS;
    };
    let tid = tenant.id.0.as_str();
    shared.metrics.received(tid);
    if let Some(problem) = m.problem {
        shared.metrics.rejected(tid, problem.label());
        tracing::info!(session = %info.session_id, client = %info.client, problem = problem.label(), "message refused");
        return problem.reply();
    }
    let body = m.body;
    let mail_from = m.mail.address;
    // Scanning waits its turn (`engine.max_processing`); spooling does not, so every message
    // that is ready shares the next fsync (group commit) however many are scanned at once. A
    // spool that falls behind still makes the engine busy (`processing.rs`).
    let _in_flight = shared.processing.arrived();
    let turn = shared.processing.slot().await;
    let scanner = shared.scanner(snap);
    let client = info.client.ip().to_canonical();
    let rcpts =
        match report::handle(snap, &scanner, tenant, client, &mail_from, m.rcpts, &body).await {
            report::Report::Deliver(rcpts) => rcpts,
            report::Report::Answer(reply) => return reply,
        };
    let mut message = received_header(shared, info, session, &rcpts, &id).into_bytes();
    message.extend_from_slice(&body);
    let verdict = scanner
        .scan(
            &scan::Arrival {
                session_id: &info.session_id,
                queue_id: id.as_str(),
                client_ip: info.client.ip().to_canonical(),
                client_country: info.country.as_deref(),
                helo: session.helo(),
                mail_from: &mail_from,
                rcpts: &rcpts,
                tenant,
                tls: session.tls() || info.client_tls,
            },
            &message,
        )
        .await;
    drop(turn);
    let status = match &verdict.action {
        scan::Action::Deliver => Status::Queued,
        // Every kind of finding of the verdict, not only the one its reason names: release
        // rights are decided by all of them (a virus that is also a blocked attachment).
        scan::Action::Quarantine { reason } => Status::quarantined(
            reason.clone(),
            verdict
                .report
                .iter()
                .flat_map(|r| &r.decision.findings)
                .map(|f| f.category.kind()),
        ),
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
        helo: session.helo().to_owned(),
        from: mail_from,
        rcpts,
        status: status.clone(),
        verdict: verdict.summary.clone(),
        subject: header_value(&body, "Subject"),
        header_from: header_value(&body, "From"),
        kind: Kind::Message,
        size: message.len() as u64,
    };
    let dest = Dest::Tenant(tid.to_owned());
    let (env, shadow) = match store_message(shared, info, tid, env, &message, dest).await {
        Ok(x) => x,
        Err(reply) => return reply,
    };
    shared.metrics.queued(tid, status.as_str());
    tracing::info!(
        session = %info.session_id, id = %id, tenant = tid, client = %info.client,
        from = %env.from, rcpts = env.rcpts.len(), size = env.size, status = status.as_str(),
        verdict = %verdict.summary, shadow = %shadow.as_deref().unwrap_or("-"), "message queued"
    );
    replies::queued(id.as_str())
}

/// Spools a message — and, when `engine.redundancy = "shadow"`, has a peer engine fsync its copy
/// at the same time (see `src/shadow/mod.rs`). Returns the envelope and the shadow's engine id,
/// or the reply that tells the sender to try again; nothing is deliverable from here unless the
/// sender hears 250.
async fn store_message(
    shared: &Arc<Shared>,
    info: &ConnInfo,
    tid: &str,
    env: Envelope,
    message: &[u8],
    dest: Dest,
) -> Result<(Arc<Envelope>, Option<String>), Reply> {
    let id = env.id.clone();
    let spool_failed = |e: std::io::Error| {
        shared.metrics.rejected(tid, "spool");
        tracing::error!(session = %info.session_id, id = %id, error = %e, "cannot spool message: answering 4xx");
        if e.kind() == std::io::ErrorKind::StorageFull {
            replies::STORAGE_FULL
        } else {
            replies::LOCAL_ERROR
        }
    };
    let Plan::Shadow(on_failure) = crate::shadow::plan(&shared.ops) else {
        return match shared.store.accept(env, message, dest).await {
            Ok(env) => Ok((env, None)),
            Err(e) => Err(spool_failed(e)),
        };
    };
    let frame = crate::shadow::wire::copy_frame(&env, message, None);
    let t0 = Instant::now();
    let local = async {
        let p = shared.store.prepare(env, message, dest).await;
        (p, t0.elapsed())
    };
    let copy = async {
        let c = match &shared.shadow {
            Some(r) => r.copy(&id, frame).await,
            None => Err(crate::shadow::CopyError::NoPeer),
        };
        (c, t0.elapsed())
    };
    let ((prepared, t_local), (copied, t_copy)) = tokio::join!(local, copy);
    let decided = |r: &Option<crate::shadow::Replicator>| {
        if let Some(r) = r {
            r.decided(&id);
        }
    };
    if let Some(r) = &shared.shadow {
        r.added_wait(t_copy.saturating_sub(t_local));
    }
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            if let (Some(r), Ok(_)) = (&shared.shadow, &copied) {
                r.discard(&id);
            }
            decided(&shared.shadow);
            return Err(spool_failed(e));
        }
    };
    match (copied, on_failure) {
        (Ok(peer), _) => {
            let env = prepared.commit();
            decided(&shared.shadow);
            Ok((env, Some(peer)))
        }
        (Err(e), OnShadowFailure::Tempfail) => {
            shared.metrics.rejected(tid, "shadow");
            tracing::warn!(session = %info.session_id, id = %id, error = %e, "no shadow copy: answering 451 (on_shadow_failure = tempfail)");
            if let Err(e) = prepared.abandon().await {
                tracing::error!(id = %id, error = %e, "cannot remove an unacknowledged message; it stays in the spool and is delivered after a restart");
            }
            decided(&shared.shadow);
            Err(replies::NO_SHADOW)
        }
        (Err(e), OnShadowFailure::Accept) => {
            let env = prepared.commit();
            decided(&shared.shadow);
            if let Some(r) = &shared.shadow {
                r.unshadowed();
            }
            tracing::warn!(session = %info.session_id, id = %id, error = %e, "no shadow copy: accepted with one copy (on_shadow_failure = accept); copied when a peer is back");
            Ok((env, None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read cut short by a timeout (the PROXY header wait) must leave nothing behind: a
    /// client that sends EHLO after the wait gets an answer to EHLO, not `500 Line too long`
    /// for 8 KiB of zeros in front of it.
    #[tokio::test]
    async fn a_timed_out_read_leaves_the_buffer_as_it_was() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut conn = Conn::new(Box::new(server));
        let waited = tokio::time::timeout(Duration::from_millis(20), conn.fill()).await;
        assert!(waited.is_err(), "nothing was sent yet");
        assert!(conn.buffered().is_empty());
        client.write_all(b"EHLO client.example\r\n").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        conn.read_more(deadline, false, None).await.unwrap();
        assert_eq!(conn.buffered(), b"EHLO client.example\r\n");
    }
}
