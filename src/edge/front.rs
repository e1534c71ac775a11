//! The SMTP-aware front session: the edge answers the banner, EHLO, STARTTLS and MAIL itself,
//! routes on the first RCPT (the recipient's tenant), connects an engine (PROXY v2 with the real
//! client and our TLVs), replays EHLO and MAIL there, and from then on relays: client commands
//! are still read line by line (a RCPT of another tenant gets `452 4.5.3`, a new transaction for
//! another tenant is routed afresh), DATA bodies are streamed and their end found exactly as the
//! engine finds it (`smtp::data::DataReader`), engine replies are relayed in order.
//!
//! Reply order under PIPELINING: every client command produces exactly one reply, either from the
//! engine or from the edge; `pending` holds them in command order, so a local reply waits behind
//! engine replies still to come.
//!
//! Lifecycle: banner -> local phase -> (first RCPT) connected -> relay, until QUIT, EOF, timeout,
//! shutdown (421 at the next command boundary) or the engine going away (421 4.4.2 — a 4xx, so
//! the sender retries and lands elsewhere).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::admission::Permit;
use super::backends::EngineConn;
use super::{EdgeShared, Stream};
use crate::proxy::ProxyInfo;
use crate::smtp::data::{DataReader, Feed};
use crate::smtp::{Command, Reply, parse_command, replies, reply};
use crate::snapshot::Snapshot;
use crate::topology::Tenant;

/// What reply a client command will get.
#[derive(Debug)]
enum Expect {
    /// The engine's reply is relayed.
    Relay,
    /// The engine's reply to DATA: 354 starts the body.
    Data,
    /// The engine's final reply to a message: the transaction ends.
    DataEnd,
    /// The engine's reply to QUIT: relay, then close.
    Quit,
    /// A reply to a command we replayed (EHLO, MAIL): not relayed.
    Swallow,
    /// Our own reply, sent when its turn comes.
    Local(Reply),
}

/// What woke the session loop.
enum Ev {
    Client(std::io::Result<usize>),
    Engine(std::io::Result<usize>),
    Timeout,
    Shutdown,
}

#[derive(Debug, PartialEq, Eq)]
enum Mode {
    Command,
    /// DATA forwarded; client bytes wait until the engine says 354 (or not).
    WaitData,
    Body,
}

/// Read sizes: commands and replies are short; message bodies stream in bigger reads.
const COMMAND_READ: usize = 2048;
const BODY_READ: usize = 16 * 1024;

struct Engine {
    conn: EngineConn,
    /// Reply bytes read but not yet parsed.
    buf: Vec<u8>,
    tenant: String,
    cluster: crate::topology::ClusterIdx,
}

struct Front<'a> {
    shared: &'a EdgeShared,
    snap: Arc<Snapshot>,
    client: Box<dyn Stream>,
    cbuf: Vec<u8>,
    out: Vec<u8>,
    info: ProxyInfo,
    engine: Option<Engine>,
    pending: VecDeque<Expect>,
    mode: Mode,
    reader: Option<DataReader>,
    helo: Option<String>,
    /// MAIL line (with CRLF) of the open transaction, and whether the engine has it.
    mail: Option<(Vec<u8>, bool)>,
    /// Tenant of the open transaction.
    tenant: Option<Arc<Tenant>>,
    tls: bool,
    errors: u32,
    rng: fastrand::Rng,
    close_after_flush: bool,
}

/// Serves one admitted client connection.
pub async fn serve(
    shared: Arc<EdgeShared>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    _permit: Permit,
) {
    let snap = shared.ops.config.load_full();
    let located = snap.geo.locate(peer.ip());
    let info = ProxyInfo {
        client: Some(peer),
        destination: Some(local),
        session_id: Some(format!("{:016x}", fastrand::u64(..))),
        tenant: None,
        country: located.country.clone(),
        tls: None,
    };
    let mut f = Front {
        shared: &shared,
        snap,
        client: Box::new(stream),
        cbuf: Vec::new(),
        out: Vec::with_capacity(512),
        info,
        engine: None,
        pending: VecDeque::new(),
        mode: Mode::Command,
        reader: None,
        helo: None,
        mail: None,
        tenant: None,
        tls: false,
        errors: 0,
        rng: fastrand::Rng::new(),
        close_after_flush: false,
    };
    shared.metrics.sessions.inc();
    if f.greet().await {
        let why = f.run().await;
        tracing::debug!(session = f.sid(), client = %peer, why, "session end");
    }
    let _ = f.flush().await;
    if let Some(mut e) = f.engine.take() {
        let _ = e.conn.stream.shutdown().await;
    }
    shared.metrics.sessions.dec();
}

impl Front<'_> {
    fn sid(&self) -> &str {
        self.info.session_id.as_deref().unwrap_or("")
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.client.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Pregreet check, then the banner. False: the client was refused.
    async fn greet(&mut self) -> bool {
        let delay = self.snap.config.edge.greeting_delay.get();
        if !delay.is_zero() {
            let mut b = [0u8; 512];
            if let Ok(Ok(n)) = tokio::time::timeout(delay, self.client.read(&mut b)).await {
                if n > 0 {
                    self.shared.metrics.refused("pregreet");
                    tracing::info!(session = self.sid(), client = ?self.info.client, "client talked before the banner: refused");
                    replies::PREGREET.write_to(&mut self.out);
                }
                return false;
            }
        }
        replies::banner(&self.shared.hostname).write_to(&mut self.out);
        self.flush().await.is_ok()
    }

    /// Queues a reply in command order.
    fn local(&mut self, r: Reply) {
        if self.pending.is_empty() {
            r.write_to(&mut self.out);
        } else {
            self.pending.push_back(Expect::Local(r));
        }
    }

    fn error(&mut self, r: Reply) {
        self.errors += 1;
        if self.errors >= 10 {
            self.local(replies::TOO_MANY_ERRORS);
            self.close_after_flush = true;
        } else {
            self.local(r);
        }
    }

    async fn run(&mut self) -> &'static str {
        let cfg = self.snap.config.edge.clone();
        let shutdown = self.shared.ops.shutdown.clone();
        // One timer for the session, re-armed per wait (no timer entry built per command).
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        loop {
            if let Some(why) = self.process_client_buffer().await {
                return why;
            }
            if self.flush().await.is_err() {
                return "client write failed";
            }
            if self.close_after_flush && self.pending.is_empty() {
                return "closed by protocol";
            }
            let idle = self.mode == Mode::Command && self.pending.is_empty();
            let timeout = if self.mode == Mode::Body {
                cfg.data_timeout.get()
            } else {
                cfg.command_timeout.get()
            };
            // Reads go straight into the session's buffers: no per-read copy, and an idle
            // session holds a small buffer instead of two 16 KiB arrays kept across the await
            // (10,000 idle clients: the difference between 60 and 390 MiB).
            let want = if self.mode == Mode::Body {
                BODY_READ
            } else {
                COMMAND_READ
            };
            if self.cbuf.capacity() - self.cbuf.len() < want / 2 {
                self.cbuf.reserve(want);
            }
            if let Some(e) = self.engine.as_mut()
                && e.buf.capacity() - e.buf.len() < COMMAND_READ / 2
            {
                e.buf.reserve(COMMAND_READ);
            }
            timer.as_mut().reset(tokio::time::Instant::now() + timeout);
            let want_client = self.mode != Mode::WaitData;
            let has_engine = self.engine.is_some();
            let ev = {
                let client = &mut self.client;
                let cbuf = &mut self.cbuf;
                let engine = self
                    .engine
                    .as_mut()
                    .map(|e| (&mut e.conn.stream, &mut e.buf));
                tokio::select! {
                    r = client.read_buf(cbuf), if want_client => Ev::Client(r),
                    r = async {
                        match engine {
                            Some((s, buf)) => s.read_buf(buf).await,
                            None => std::future::pending().await,
                        }
                    }, if has_engine => Ev::Engine(r),
                    _ = &mut timer => Ev::Timeout,
                    _ = shutdown.cancelled(), if idle => Ev::Shutdown,
                }
            };
            match ev {
                Ev::Client(Ok(0) | Err(_)) => return "client closed",
                Ev::Client(Ok(_)) => {}
                Ev::Engine(Ok(0) | Err(_)) => {
                    if idle && self.tenant.is_none() {
                        // An idle engine connection may go; the next RCPT connects again.
                        self.engine = None;
                        continue;
                    }
                    tracing::warn!(
                        session = self.sid(),
                        "engine connection lost mid-session: 421 to the client"
                    );
                    self.out.clear();
                    replies::ENGINE_LOST.write_to(&mut self.out);
                    return "engine lost";
                }
                Ev::Engine(Ok(_)) => {
                    if let Some(why) = self.process_engine_buffer() {
                        return why;
                    }
                }
                Ev::Timeout => {
                    replies::TIMEOUT.write_to(&mut self.out);
                    return "timeout";
                }
                Ev::Shutdown => {
                    replies::SHUTTING_DOWN.write_to(&mut self.out);
                    return "shutdown";
                }
            }
        }
    }

    /// Relays complete engine replies in order, with local replies queued behind them.
    fn process_engine_buffer(&mut self) -> Option<&'static str> {
        loop {
            let e = self.engine.as_mut()?;
            let parsed = match reply::parse(&e.buf) {
                Ok(Some((r, used))) => {
                    let raw = e.buf[..used].to_vec();
                    e.buf.drain(..used);
                    (r, raw)
                }
                Ok(None) => return None,
                Err(why) => {
                    tracing::warn!(session = self.sid(), why, "engine sent garbage");
                    self.out.clear();
                    replies::ENGINE_ERROR.write_to(&mut self.out);
                    return Some("engine protocol error");
                }
            };
            let (r, raw) = parsed;
            let mut quit = false;
            match self.pending.pop_front() {
                Some(Expect::Swallow) => {
                    if !r.is_positive() {
                        tracing::info!(session = self.sid(), code = r.code, text = %r.text(), "engine refused a replayed command");
                    }
                }
                Some(Expect::Relay) => self.out.extend_from_slice(&raw),
                Some(Expect::Data) => {
                    self.out.extend_from_slice(&raw);
                    if r.code == 354 {
                        self.mode = Mode::Body;
                        self.reader = Some(DataReader::new(usize::MAX, false));
                    } else {
                        self.mode = Mode::Command;
                    }
                }
                Some(Expect::DataEnd) => self.out.extend_from_slice(&raw),
                Some(Expect::Quit) => {
                    self.out.extend_from_slice(&raw);
                    quit = true;
                }
                Some(Expect::Local(l)) => {
                    // Cannot happen: locals are only queued behind engine expectations.
                    l.write_to(&mut self.out);
                    continue;
                }
                None => {
                    tracing::debug!(
                        session = self.sid(),
                        code = r.code,
                        "unsolicited engine reply dropped"
                    );
                }
            }
            while let Some(Expect::Local(_)) = self.pending.front() {
                if let Some(Expect::Local(l)) = self.pending.pop_front() {
                    l.write_to(&mut self.out);
                }
            }
            if quit {
                return Some("quit");
            }
        }
    }

    /// Handles what the client sent: body bytes in Body mode, commands otherwise.
    async fn process_client_buffer(&mut self) -> Option<&'static str> {
        let max_line = self.snap.config.edge.max_line_length.0 as usize;
        loop {
            match self.mode {
                Mode::WaitData => return None,
                Mode::Body => {
                    if self.cbuf.is_empty() {
                        return None;
                    }
                    let reader = self.reader.as_mut().expect("body mode has a reader");
                    let (n, done) = match reader.feed(&self.cbuf) {
                        Feed::Done(n) => (n, true),
                        Feed::More => (self.cbuf.len(), false),
                    };
                    let e = self.engine.as_mut().expect("body mode has an engine");
                    if e.conn.stream.write_all(&self.cbuf[..n]).await.is_err() {
                        self.out.clear();
                        replies::ENGINE_LOST.write_to(&mut self.out);
                        return Some("engine lost during DATA");
                    }
                    self.cbuf.drain(..n);
                    if done {
                        // The client's transaction is over now; its next MAIL may already follow.
                        self.mode = Mode::Command;
                        self.reader = None;
                        self.mail = None;
                        self.tenant = None;
                        self.pending.push_back(Expect::DataEnd);
                    }
                }
                Mode::Command => {
                    let Some(nl) = self.cbuf.iter().position(|&b| b == b'\n') else {
                        if self.cbuf.len() > max_line {
                            self.cbuf.clear();
                            self.error(replies::LINE_TOO_LONG);
                        }
                        return None;
                    };
                    let raw: Vec<u8> = self.cbuf.drain(..=nl).collect();
                    if raw.len() > max_line {
                        self.error(replies::LINE_TOO_LONG);
                        continue;
                    }
                    let line = raw
                        .strip_suffix(b"\n")
                        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                        .unwrap_or(&raw);
                    if let Some(why) = self.command(line).await {
                        return Some(why);
                    }
                    if self.close_after_flush {
                        return None;
                    }
                }
            }
        }
    }

    /// Sends a command line to the engine and records what its reply means.
    async fn forward(&mut self, line: &[u8], expect: Expect) -> bool {
        let Some(e) = self.engine.as_mut() else {
            return false;
        };
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.extend_from_slice(line);
        buf.extend_from_slice(b"\r\n");
        if e.conn.stream.write_all(&buf).await.is_err() {
            return false;
        }
        self.pending.push_back(expect);
        true
    }

    async fn command(&mut self, line: &[u8]) -> Option<&'static str> {
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(r) => {
                self.error(r);
                return None;
            }
        };
        let ok = match cmd {
            Command::Ehlo(d) | Command::Helo(d) if self.engine.is_some() => {
                self.mail = None;
                self.tenant = None;
                self.helo = Some(d);
                self.forward(line, Expect::Relay).await
            }
            Command::Ehlo(d) => {
                self.mail = None;
                self.tenant = None;
                self.helo = Some(d);
                self.local(replies::ehlo(
                    &self.shared.hostname,
                    self.snap.config.edge.max_message_size.0,
                    self.shared.tls.load().is_some() && !self.tls,
                ));
                true
            }
            Command::Helo(d) => {
                self.mail = None;
                self.tenant = None;
                self.helo = Some(d);
                self.local(replies::helo(&self.shared.hostname));
                true
            }
            Command::StartTls => return self.starttls().await,
            Command::Mail(_) if self.helo.is_none() => {
                self.error(replies::HELLO_FIRST);
                true
            }
            Command::Mail(_) if self.mail.is_some() => {
                self.error(replies::NESTED_MAIL);
                true
            }
            Command::Mail(m) => {
                if m.size
                    .is_some_and(|s| s > self.snap.config.edge.max_message_size.0)
                {
                    self.error(replies::message_too_big(
                        self.snap.config.edge.max_message_size.0,
                    ));
                } else {
                    let mut l = line.to_vec();
                    l.extend_from_slice(b"\r\n");
                    self.mail = Some((l, false));
                    self.local(replies::SENDER_OK);
                }
                true
            }
            Command::Rcpt(_) if self.mail.is_none() => {
                self.error(replies::MAIL_BEFORE_RCPT);
                true
            }
            Command::Rcpt(addr) => return self.rcpt(line, &addr).await,
            Command::Data if self.tenant.is_none() || self.engine.is_none() => {
                self.error(replies::NO_VALID_RECIPIENTS);
                true
            }
            Command::Data => {
                let ok = self.forward(line, Expect::Data).await;
                self.mode = Mode::WaitData;
                ok
            }
            Command::Rset => {
                self.mail = None;
                self.tenant = None;
                if self.engine.is_some() {
                    self.forward(line, Expect::Relay).await
                } else {
                    self.local(replies::RESET_OK);
                    true
                }
            }
            Command::Quit if self.engine.is_some() => self.forward(line, Expect::Quit).await,
            Command::Quit => {
                self.local(replies::BYE);
                self.close_after_flush = true;
                true
            }
            Command::Noop => {
                self.local(replies::OK);
                true
            }
            Command::Vrfy => {
                self.local(replies::CANNOT_VRFY);
                true
            }
            Command::Help => {
                self.local(replies::HELP);
                true
            }
            Command::NotImplemented(v) => {
                self.error(replies::not_implemented(&v));
                true
            }
        };
        if ok {
            None
        } else {
            self.out.clear();
            replies::ENGINE_LOST.write_to(&mut self.out);
            Some("engine lost")
        }
    }

    async fn starttls(&mut self) -> Option<&'static str> {
        let Some(cfg) = self.shared.tls.load_full() else {
            self.error(replies::STARTTLS_UNAVAILABLE);
            return None;
        };
        if self.tls || self.engine.is_some() || self.mail.is_some() || !self.pending.is_empty() {
            self.error(replies::STARTTLS_NOT_NOW);
            return None;
        }
        replies::READY_FOR_TLS.write_to(&mut self.out);
        if self.flush().await.is_err() {
            return Some("client write failed");
        }
        if !self.cbuf.is_empty() {
            // Commands pipelined after STARTTLS would be injected into the TLS session.
            return Some("plaintext after STARTTLS");
        }
        let plain = std::mem::replace(&mut self.client, Box::new(tokio::io::duplex(1).0));
        match tokio_rustls::TlsAcceptor::from(cfg).accept(plain).await {
            Ok(t) => {
                let (_, conn) = t.get_ref();
                let version = conn
                    .protocol_version()
                    .map(|v| format!("{v:?}").replace("TLSv1_", "TLSv1."))
                    .unwrap_or_else(|| "TLS".into());
                let cipher = conn
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default();
                self.info.tls = Some((version, cipher));
                self.client = Box::new(t);
                self.tls = true;
                self.helo = None;
                None
            }
            Err(e) => {
                tracing::info!(session = self.sid(), error = %e, "client TLS handshake failed");
                Some("tls handshake failed")
            }
        }
    }

    /// The first RCPT routes; later ones must belong to the same tenant.
    async fn rcpt(&mut self, line: &[u8], addr: &str) -> Option<&'static str> {
        let snap = self.snap.clone();
        let Some(tenant) = snap.topology.tenant_for_address(addr) else {
            self.shared.metrics.routed("", "", "no_tenant");
            self.error(replies::RELAYING_DENIED);
            return None;
        };
        if let Some(t) = &self.tenant {
            if t.id != tenant.id {
                self.shared.metrics.routed(&tenant.id.0, "", "other_tenant");
                self.local(replies::OTHER_TENANT);
                return None;
            }
            return if self.forward(line, Expect::Relay).await {
                None
            } else {
                self.lost()
            };
        }
        // First recipient of a transaction: route.
        let point = snap
            .geo
            .locate(
                self.info
                    .client
                    .map(|c| c.ip())
                    .unwrap_or([0, 0, 0, 0].into()),
            )
            .point;
        let route = {
            let map = self.shared.backends.map();
            let view = self.shared.backends.view(&map, &snap.topology);
            snap.topology.route(tenant, snap.local_silo, point, &view)
        };
        let reuse = self.engine.as_ref().is_some_and(|e| {
            e.tenant == tenant.id.0
                || route
                    .usable()
                    .next()
                    .is_some_and(|c| c.cluster == e.cluster)
        });
        if !reuse {
            if let Some(why) = self.drain_engine().await {
                return Some(why);
            }
            self.info.tenant = Some(tenant.id.0.clone());
            match self
                .shared
                .backends
                .connect(
                    &snap,
                    &route,
                    &self.info,
                    &self.shared.metrics,
                    &mut self.rng,
                    true,
                )
                .await
            {
                Ok(conn) => {
                    let cluster = snap.topology.engines[conn.engine.0].cluster;
                    tracing::info!(
                        session = self.sid(), client = ?self.info.client, tenant = %tenant.id,
                        cluster = %snap.topology.cluster_label(cluster), engine = %conn.address, "routed"
                    );
                    self.shared.metrics.routed(
                        &tenant.id.0,
                        &snap.topology.cluster_label(cluster),
                        "routed",
                    );
                    let buf = conn.leftover.clone();
                    self.engine = Some(Engine {
                        conn,
                        buf,
                        tenant: tenant.id.0.clone(),
                        cluster,
                    });
                    let helo = format!(
                        "EHLO {}",
                        self.helo.clone().unwrap_or_else(|| "unknown".into())
                    );
                    if !self.forward(helo.as_bytes(), Expect::Swallow).await {
                        return self.lost();
                    }
                }
                Err(e) => {
                    self.shared.metrics.routed(&tenant.id.0, "", "no_engine");
                    tracing::warn!(session = self.sid(), tenant = %tenant.id, tried = e.tried, "no engine of the tenant's regions could take the connection");
                    self.local(replies::NO_ENGINE);
                    return None;
                }
            }
        } else if let Some(e) = &mut self.engine {
            e.tenant = tenant.id.0.clone();
        }
        self.tenant = Some(Arc::new(tenant.clone()));
        if let Some((mail, false)) = self.mail.clone() {
            let m = mail.strip_suffix(b"\r\n").unwrap_or(&mail).to_vec();
            if !self.forward(&m, Expect::Swallow).await {
                return self.lost();
            }
            self.mail = Some((mail, true));
        }
        if self.forward(line, Expect::Relay).await {
            None
        } else {
            self.lost()
        }
    }

    fn lost(&mut self) -> Option<&'static str> {
        self.out.clear();
        replies::ENGINE_LOST.write_to(&mut self.out);
        Some("engine lost")
    }

    /// Waits for the current engine's outstanding replies, then says QUIT and drops it.
    async fn drain_engine(&mut self) -> Option<&'static str> {
        while self.engine.is_some() && self.pending.iter().any(|p| !matches!(p, Expect::Local(_))) {
            let mut chunk = [0u8; 4096];
            let e = self.engine.as_mut()?;
            let n =
                match tokio::time::timeout(Duration::from_secs(60), e.conn.stream.read(&mut chunk))
                    .await
                {
                    Ok(Ok(n)) if n > 0 => n,
                    _ => return self.lost(),
                };
            e.buf.extend_from_slice(&chunk[..n]);
            if let Some(why) = self.process_engine_buffer() {
                return Some(why);
            }
        }
        if let Some(mut e) = self.engine.take() {
            let _ = e.conn.stream.write_all(b"QUIT\r\n").await;
        }
        None
    }
}
