//! The driver of the SMTP-aware front session: the sockets (client, engine), the pregreet
//! check, routing and connecting engines, the STARTTLS handshake, timeouts and shutdown. The
//! protocol is the sans-I/O [`super::session::Session`]; this file only moves bytes and acts on
//! its [`Step`]s.
//!
//! Lifecycle: pregreet check → banner → the session's steps, until it closes, the client goes,
//! a timeout, shutdown (`421` at the next command boundary) or the engine going away (`421
//! 4.4.2`: a 4xx, so the sender retries and lands elsewhere). At the end the engine gets QUIT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::admission::Permit;
use super::backends::EngineConn;
use super::session::{Session, Step};
use super::{EdgeShared, Stream};
use crate::proxy::ProxyInfo;
use crate::shared::limits::What;
use crate::smtp::ending::Ending;
use crate::smtp::server::SessionLimits;
use crate::snapshot::Snapshot;
use crate::topology::{ClusterIdx, TenantIdx};

/// Read sizes: commands and replies are short (read through the stack, [`read_into`]);
/// message bodies stream in bigger reads.
const COMMAND_READ: usize = 2048;
const BODY_READ: usize = 16 * 1024;

/// How long the edge waits for an engine's outstanding replies before it drops the engine to
/// route a new transaction elsewhere.
const DRAIN_WAIT: Duration = Duration::from_secs(60);

struct Engine {
    conn: EngineConn,
    /// Reply bytes read but not yet used.
    buf: Vec<u8>,
    /// The tenant it was routed for, and its cluster (whether it can serve the next route).
    tenant: TenantIdx,
    cluster: ClusterIdx,
}

/// What woke the session loop.
enum Ev {
    Client(std::io::Result<usize>),
    Engine(std::io::Result<usize>),
    Timeout,
    Shutdown,
}

struct Front<'a> {
    shared: &'a EdgeShared,
    snap: Arc<Snapshot>,
    client: Box<dyn Stream>,
    /// Client bytes read; `cpos` of them used.
    cbuf: Vec<u8>,
    cpos: usize,
    info: ProxyInfo,
    engine: Option<Engine>,
    session: Session,
    rng: fastrand::Rng,
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
    let (info, _) = super::introduce_client(&snap, peer, local);
    let cfg = &snap.config.edge;
    let session = Session::new(SessionLimits {
        hostname: shared.hostname.clone(),
        max_message_size: cfg.max_message_size.0,
        max_recipients: super::session::MAX_RECIPIENTS,
        // The edge counts no commands: each engine session it opens has `engine.max_commands`.
        max_commands: u32::MAX,
        max_errors: cfg.max_errors,
        max_line_length: cfg.max_line_length.0 as usize,
        starttls: shared.tls.load().is_some(),
        collect: false,
        // The edge relays the body byte for byte and only finds its end; the engine that takes
        // the message applies its own `engine.bare_newline` to the same bytes.
        bare_newline: crate::config::BareNewline::Normalize,
    });
    let mut f = Front {
        shared: &shared,
        snap,
        client: Box::new(stream),
        cbuf: Vec::new(),
        cpos: 0,
        info,
        engine: None,
        session,
        rng: fastrand::Rng::new(),
    };
    shared.metrics.sessions.inc();
    let ending = f.run().await;
    if let Some(r) = ending.reply() {
        r.write_to(f.session.output());
    }
    if matches!(ending, Ending::EngineLost | Ending::EngineGarbage(_)) {
        tracing::warn!(session = f.sid(), error = %ending, "engine connection lost mid-session: 421 to the client");
    } else {
        tracing::debug!(session = f.sid(), client = %peer, ending = ending.label(), "session end");
    }
    let _ = f.flush_client().await;
    if let Some(mut e) = f.engine.take() {
        // QUIT, then the close sends the FIN (no separate shutdown: one syscall less).
        let _ = e.conn.stream.write_all(b"QUIT\r\n").await;
    }
    shared.metrics.sessions.dec();
}

impl Front<'_> {
    fn sid(&self) -> &str {
        self.info.session_id.as_deref().unwrap_or("")
    }

    async fn flush_client(&mut self) -> Result<(), Ending> {
        let out = self.session.output();
        if !out.is_empty() {
            self.client.write_all(out).await.map_err(Ending::ClientIo)?;
            out.clear();
        }
        Ok(())
    }

    async fn flush_engine(&mut self) -> Result<(), Ending> {
        let out = self.session.engine_output();
        if out.is_empty() {
            return Ok(());
        }
        let Some(e) = self.engine.as_mut() else {
            out.clear();
            return Ok(());
        };
        let written = e.conn.stream.write_all(out).await;
        out.clear();
        written.map_err(|_| Ending::EngineLost)
    }

    /// Pregreet check, then the banner.
    async fn greet(&mut self) -> Result<(), Ending> {
        let delay = self.snap.config.edge.greeting_delay.get();
        if !delay.is_zero() {
            let mut b = [0u8; 512];
            if let Ok(read) = tokio::time::timeout(delay, self.client.read(&mut b)).await {
                return match read {
                    Ok(n) if n > 0 => {
                        self.shared.metrics.refused("pregreet");
                        tracing::info!(session = self.sid(), client = ?self.info.client, "client talked before the banner: refused");
                        Err(Ending::Pregreet)
                    }
                    Ok(_) => Err(Ending::ClientClosed),
                    Err(e) => Err(Ending::ClientIo(e)),
                };
            }
        }
        self.session.greet();
        self.flush_client().await
    }

    async fn run(&mut self) -> Ending {
        if let Err(e) = self.greet().await {
            return e;
        }
        let (data_timeout, command_timeout) = {
            let cfg = &self.snap.config.edge;
            (cfg.data_timeout.get(), cfg.command_timeout.get())
        };
        let shutdown = self.shared.ops.shutdown.clone();
        // One timer for the session, re-armed per wait (no timer entry built per command).
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        loop {
            let want_client = match self.client_input().await {
                Ok(w) => w,
                Err(e) => return e,
            };
            if let Err(e) = self.flush_client().await {
                return e;
            }
            if let Err(e) = self.flush_engine().await {
                return e;
            }
            let body = self.session.in_body();
            let idle = self.session.idle();
            let timeout = if body { data_timeout } else { command_timeout };
            // An idle session holds no read buffer: at a command boundary a read goes through
            // a buffer on the stack and only the bytes read are kept (commands are short, and
            // they are used up before the next wait); a body is read straight into `cbuf` in
            // big reads. 10,000 idle clients: see bench/edge/README.md.
            if self.cpos > 0 {
                self.cbuf.drain(..self.cpos);
                self.cpos = 0;
            }
            if self.cbuf.is_empty() && !body {
                self.cbuf = Vec::new();
                self.session.release_buffers();
            } else if body && self.cbuf.capacity() - self.cbuf.len() < BODY_READ / 2 {
                self.cbuf.reserve(BODY_READ);
            }
            if let Some(e) = self.engine.as_mut()
                && e.buf.is_empty()
            {
                e.buf = Vec::new();
            }
            timer.as_mut().reset(tokio::time::Instant::now() + timeout);
            let has_engine = self.engine.is_some();
            let ev = {
                let client = &mut self.client;
                let cbuf = &mut self.cbuf;
                let engine = self
                    .engine
                    .as_mut()
                    .map(|e| (&mut e.conn.stream, &mut e.buf));
                tokio::select! {
                    r = read_into(client, cbuf), if want_client => Ev::Client(r),
                    r = async {
                        match engine {
                            Some((s, buf)) => read_into(s, buf).await,
                            None => std::future::pending().await,
                        }
                    }, if has_engine => Ev::Engine(r),
                    _ = &mut timer => Ev::Timeout,
                    _ = shutdown.cancelled(), if idle => Ev::Shutdown,
                }
            };
            match ev {
                Ev::Client(Ok(0)) => return Ending::ClientClosed,
                Ev::Client(Err(e)) => return Ending::ClientIo(e),
                Ev::Client(Ok(_)) => {}
                Ev::Engine(Ok(0) | Err(_)) => {
                    if self.session.engine_dispensable() {
                        // An idle engine connection may go; the next RCPT connects again.
                        self.engine = None;
                        self.session.disconnected();
                        continue;
                    }
                    return Ending::EngineLost;
                }
                Ev::Engine(Ok(_)) => {
                    if let Err(e) = self.engine_input() {
                        return e;
                    }
                }
                Ev::Timeout if body => return Ending::DataTimeout,
                Ev::Timeout => return Ending::Timeout,
                Ev::Shutdown => return Ending::Shutdown,
            }
        }
    }

    /// Feeds the engine's buffered replies to the session.
    fn engine_input(&mut self) -> Result<(), Ending> {
        if let Some(e) = self.engine.as_mut() {
            let used = self.session.engine(&e.buf)?;
            e.buf.drain(..used);
            for _ in 0..self.session.take_busy() {
                self.shared.admission.engine_busy();
            }
        }
        Ok(())
    }

    /// Feeds the client's buffered bytes to the session and acts on its steps, until it needs
    /// more. `Ok(true)`: read the client next; `Ok(false)`: only the engine.
    async fn client_input(&mut self) -> Result<bool, Ending> {
        loop {
            let (used, step) = self
                .session
                .client(&self.cbuf[self.cpos..], &self.snap.topology);
            let start = self.cpos;
            self.cpos += used;
            match step {
                Step::More => return Ok(true),
                Step::WaitEngine => return Ok(false),
                Step::Forward => {
                    self.flush_engine().await?;
                    let Some(e) = self.engine.as_mut() else {
                        return Err(Ending::EngineLost);
                    };
                    e.conn
                        .stream
                        .write_all(&self.cbuf[start..start + used])
                        .await
                        .map_err(|_| Ending::EngineLost)?;
                }
                // Boxed: routing (connecting an engine) and the TLS handshake are big futures
                // that only run for a moment; inline they would size every idle session.
                Step::Route(tenant) => Box::pin(self.route(tenant)).await?,
                Step::Unrouted(tenant) => {
                    let (id, result) = match tenant {
                        Some(t) => (
                            self.snap.topology.tenants[t.0].id.0.as_str(),
                            "other_tenant",
                        ),
                        None => ("", "no_tenant"),
                    };
                    self.shared.metrics.routed(id, "", result);
                }
                Step::StartTls => Box::pin(self.starttls()).await?,
                Step::Close(e) => return Err(e),
            }
        }
    }

    async fn starttls(&mut self) -> Result<(), Ending> {
        let Some(cfg) = self.shared.tls.load_full() else {
            return Err(Ending::Protocol);
        };
        self.flush_client().await?;
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
                Ok(())
            }
            Err(e) => {
                tracing::info!(session = self.sid(), error = %e, "client TLS handshake failed");
                Err(Ending::Tls(e))
            }
        }
    }

    /// The first RCPT of a transaction: reuse the engine when it serves the route, else drop
    /// it (once it has answered everything) and connect the route's best engine.
    async fn route(&mut self, tenant_idx: TenantIdx) -> Result<(), Ending> {
        let snap = self.snap.clone();
        let tenant = &snap.topology.tenants[tenant_idx.0];
        let client_ip = self
            .info
            .client
            .map(|c| c.ip())
            .unwrap_or([0, 0, 0, 0].into());
        let limit = snap.config.edge.fleet_limits.messages_per_minute;
        let rates = &self.shared.fleet.rates;
        if !rates.admit(client_ip, What::Message, limit, crate::shared::now_ms()) {
            self.shared.metrics.refused("fleet_message_rate");
            tracing::info!(session = self.sid(), client = %client_ip, "fleet-wide message rate of the client's network reached: 451");
            self.session
                .refuse_route(crate::smtp::replies::MESSAGE_RATE);
            return Ok(());
        }
        // The connected engine was routed for this tenant: it serves it again, whatever the
        // route says now (a session keeps its engine), so no need to compute the route.
        if let Some(e) = self.engine.as_ref()
            && e.tenant == tenant_idx
        {
            self.session.reused();
            return Ok(());
        }
        let point = snap.geo.locate(client_ip).point;
        let route = {
            let map = self.shared.backends.map();
            let view = self.shared.backends.view(&map, &snap.topology);
            snap.topology.route(tenant, snap.local_silo, point, &view)
        };
        if let Some(e) = self.engine.as_mut()
            && route
                .usable()
                .next()
                .is_some_and(|c| c.cluster == e.cluster)
        {
            e.tenant = tenant_idx;
            self.session.reused();
            return Ok(());
        }
        self.drain_engine().await?;
        self.info.tenant = Some(tenant.id.0.clone());
        let connected = self
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
            .await;
        match connected {
            Ok(conn) => {
                let cluster = snap.topology.engines[conn.engine.0].cluster;
                let label = snap.topology.cluster_label(cluster);
                tracing::info!(
                    session = self.sid(), client = ?self.info.client, tenant = %tenant.id,
                    cluster = %label, engine = %conn.address, "routed"
                );
                self.shared.metrics.routed(&tenant.id.0, &label, "routed");
                let buf = conn.leftover.clone();
                self.engine = Some(Engine {
                    conn,
                    buf,
                    tenant: tenant_idx,
                    cluster,
                });
                self.session.connected();
            }
            Err(e) => {
                self.shared.metrics.routed(&tenant.id.0, "", "no_engine");
                tracing::warn!(session = self.sid(), tenant = %tenant.id, tried = e.tried, "no engine of the tenant's regions could take the connection");
                // Not one tried although some are up: every one is at its connection limit.
                // The edge is the bottleneck now; the next new connections are turned away at
                // their banner, as after an engine's busy answer, instead of costing a session
                // up to this recipient to get the same 451.
                if e.tried == 0 && route.usable().next().is_some() {
                    self.shared.admission.engine_busy();
                }
                self.session.unavailable();
            }
        }
        Ok(())
    }

    /// Waits for the current engine's outstanding replies (relaying them), then says QUIT and
    /// drops it.
    async fn drain_engine(&mut self) -> Result<(), Ending> {
        self.flush_engine().await?;
        while self.session.awaiting_engine() {
            let Some(e) = self.engine.as_mut() else {
                break;
            };
            match tokio::time::timeout(DRAIN_WAIT, read_into(&mut e.conn.stream, &mut e.buf)).await
            {
                Ok(Ok(n)) if n > 0 => self.engine_input()?,
                _ => return Err(Ending::EngineLost),
            }
        }
        if let Some(mut e) = self.engine.take() {
            let _ = e.conn.stream.write_all(b"QUIT\r\n").await;
            self.session.disconnected();
        }
        Ok(())
    }
}

/// Reads once from `s` and appends what came to `buf`: into `buf`'s spare room when it has at
/// least [`COMMAND_READ`] bytes of it (a body), else through a buffer on the stack, so a
/// buffer that was empty gets just the bytes read (no allocation sized for a read that has not
/// come yet, nothing held across the wait).
async fn read_into<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() >= COMMAND_READ {
        return s.read_buf(buf).await;
    }
    std::future::poll_fn(|cx| {
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); COMMAND_READ];
        let mut rb = tokio::io::ReadBuf::uninit(&mut stack);
        std::task::ready!(std::pin::Pin::new(&mut *s).poll_read(cx, &mut rb))?;
        buf.extend_from_slice(rb.filled());
        std::task::Poll::Ready(Ok(rb.filled().len()))
    })
    .await
}
