//! The edge (`--role edge`): owns port 25, keeps abusers out, finds the tenant from the
//! recipients and hands each connection to a healthy engine of the tenant's regional cluster.
//!
//! | file | owns |
//! |---|---|
//! | `admission.rs` | deny/allow, connection caps and rates per node, address and prefix (the fleet-wide rates of `edge.fleet_limits` come after it: `crate::shared::limits`) |
//! | `backends.rs` | engine health (probes, passive ejection), outstanding counts, connecting with failover |
//! | `session.rs` | the SMTP-aware session (default mode), sans-I/O: the local phase shared with the engine, routing on the first recipient, relaying |
//! | `front.rs` | its driver: client and engine sockets, pregreet, connecting engines, STARTTLS, timeouts |
//! | `tcp.rs` | layer-4 mode |
//! | `relay.rs` | its relay: both ways, half-closes passed on, no buffer per idle connection |
//! | `metrics.rs` | `maildistiller_edge_*` |
//!
//! Its settings are `[edge]` (`crate::config::edge`). Lifecycle: [`bind`] binds every listener
//! (SO_REUSEPORT, backlog, v6-only for v6 addresses: `crate::net`) on every session thread and
//! starts health probes; the returned future accepts (`crate::net::accept_loop`, admission
//! taking each client's permit) until shutdown, then stops
//! accepting and waits for sessions: idle ones get `421` at their next command boundary, DATA in
//! flight finishes (the process's grace period bounds it). Config reloads re-sync engine health
//! state and reload the TLS certificate.

mod admission;
mod backends;
mod front;
mod metrics;
mod relay;
mod session;
mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::net::TcpListener;

use crate::config::EdgeConfig;
use crate::engine::Serving;
pub use crate::engine::smtp::Stream;
use crate::ops::{Ops, StatusSection};
use crate::topology::{Tenant, TenantId};
pub use admission::{Admission, Refusal};
use metrics::EdgeMetrics;

/// How the edge introduces a client it just accepted to an engine (SMTP-aware and layer-4 modes
/// alike): its address, the edge's address it came to, a new session id (the same in the edge's
/// and the engine's logs), and where the geo database places it. Also returns that place.
fn introduce_client(
    snap: &crate::snapshot::Snapshot,
    peer: SocketAddr,
    local: SocketAddr,
) -> (crate::proxy::ProxyInfo, crate::geo::Located) {
    let located = snap.geo.locate(peer.ip());
    let info = crate::proxy::ProxyInfo {
        client: Some(peer),
        destination: Some(local),
        session_id: Some(format!("{:016x}", fastrand::u64(..))),
        tenant: None,
        country: located.country.clone(),
        tls: None,
    };
    (info, located)
}

/// Shared by every edge task.
pub struct EdgeShared {
    pub ops: Arc<Ops>,
    pub admission: Arc<Admission>,
    /// Fleet-wide sender rates (`edge.fleet_limits`, through `[shared]`).
    pub fleet: Arc<crate::shared::Fleet>,
    pub backends: Arc<backends::Backends>,
    metrics: EdgeMetrics,
    pub hostname: String,
    pub tls: ArcSwapOption<rustls::ServerConfig>,
    /// The pseudo-tenant of layer-4 mode: any region, nearest to the client.
    any_tenant: Tenant,
}

/// A bound edge.
pub struct Bound {
    pub serving: Serving,
    pub shared: Arc<EdgeShared>,
    /// SMTP-aware listener addresses, then layer-4 ones.
    pub smtp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
}

/// One listening socket per session thread for `addr`: the first bound to `addr`, the others
/// to the address it got (port 0 picks one port for all), so the kernel spreads new
/// connections across the threads by SO_REUSEPORT.
fn listeners(
    addr: SocketAddr,
    backlog: u32,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = crate::net::reuseport_listener(addr, backlog)?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(crate::net::reuseport_listener(bound, backlog)?);
    }
    Ok(all)
}

/// Session threads: one per CPU (at most 16), each with its own single-threaded runtime and
/// its own listening sockets. A session's client and engine sockets live on one thread: no
/// work stealing, no cross-thread wake-ups per packet (the layer-4 hot path is mostly wake-ups).
fn session_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(16))
}

fn tls_config(
    cfg: &EdgeConfig,
    ops: &Ops,
    hostname: &str,
) -> std::io::Result<Option<Arc<rustls::ServerConfig>>> {
    match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => {
            let names = crate::tls::self_signed_names(hostname);
            let (config, expiry) = crate::tls::listener_config(c, k, cfg.tls_self_signed, &names)
                .map_err(std::io::Error::other)?;
            ops.metrics.tls_expiry("edge", expiry);
            Ok(Some(config))
        }
        _ => Ok(None),
    }
}

pub async fn bind(ops: &Arc<Ops>) -> std::io::Result<Bound> {
    let snap = ops.config.load_full();
    let cfg = &snap.config.edge;
    let metrics = EdgeMetrics::new(&ops.metrics);
    let hostname = cfg.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    });
    let tls = tls_config(cfg, ops, &hostname)?;
    let fleet = crate::shared::Fleet::for_process(ops).await;
    let shared = Arc::new(EdgeShared {
        ops: ops.clone(),
        admission: Arc::new(Admission::default()),
        fleet,
        backends: Arc::new(backends::Backends::default()),
        metrics,
        hostname,
        tls: ArcSwapOption::new(tls),
        any_tenant: Tenant {
            id: TenantId("*".into()),
            name: None,
            domains: Vec::new(),
            subdomains: false,
            regions: Vec::new(),
            failover: crate::config::Failover::Any,
            placement: Default::default(),
            delivery: Vec::new(),
            policy: String::new(),
            recipients: Default::default(),
            recipients_file: None,
            verify: Default::default(),
            tls: Default::default(),
            delivery_connections: None,
            delivery_rate: None,
        },
    });
    let threads = session_threads();
    let mut smtp = Vec::new();
    // systemd socket activation (maildistiller-edge.socket): the passed sockets replace
    // `edge.listen`. One socket, shared by the session threads.
    let inherited = crate::sys::listen_fds()?;
    let activated = !inherited.is_empty();
    for (name, l) in inherited {
        tracing::info!(name, address = ?l.local_addr().ok(), "using a socket passed by systemd");
        l.set_nonblocking(true)?;
        let mut per_thread = Vec::with_capacity(threads);
        for _ in 1..threads {
            per_thread.push(l.try_clone()?);
        }
        per_thread.push(l);
        smtp.push(per_thread);
    }
    for a in cfg.listen.iter().filter(|_| !activated) {
        smtp.push(
            listeners(*a, cfg.backlog, threads)
                .map_err(|e| std::io::Error::new(e.kind(), format!("edge listener {a}: {e}")))?,
        );
    }
    let mut tcp = Vec::new();
    for a in &cfg.tcp_listen {
        tcp.push(
            listeners(*a, cfg.backlog, threads).map_err(|e| {
                std::io::Error::new(e.kind(), format!("edge tcp listener {a}: {e}"))
            })?,
        );
    }
    shared.backends.sync(ops, &shared.metrics, &snap);
    ops.add_status(Arc::new(Status(shared.clone())));
    ops.add_routes(api(shared.clone()));
    let bound = Bound {
        smtp: smtp.iter().filter_map(|l| l[0].local_addr().ok()).collect(),
        tcp: tcp.iter().filter_map(|l| l[0].local_addr().ok()).collect(),
        shared: shared.clone(),
        serving: Box::pin(run(shared, smtp, tcp, threads)),
    };
    Ok(bound)
}

/// Runs the session threads (each: its share of every listener, its sessions) until shutdown
/// and every session has ended; config and health follow-ups run on the caller's runtime.
async fn run(
    shared: Arc<EdgeShared>,
    smtp: Vec<Vec<std::net::TcpListener>>,
    tcp: Vec<Vec<std::net::TcpListener>>,
    threads: usize,
) -> std::io::Result<()> {
    let tracker = tokio_util::task::TaskTracker::new();
    let mut per_thread: Vec<Vec<(std::net::TcpListener, bool)>> =
        (0..threads).map(|_| Vec::new()).collect();
    for (set, layer4) in smtp
        .into_iter()
        .map(|l| (l, false))
        .chain(tcp.into_iter().map(|l| (l, true)))
    {
        for (i, l) in set.into_iter().enumerate() {
            per_thread[i % threads].push((l, layer4));
        }
    }
    for (i, mine) in per_thread.into_iter().enumerate() {
        let shared = shared.clone();
        let token = tracker.token();
        std::thread::Builder::new()
            .name(format!("edge-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "edge: cannot start a session thread");
                        shared.ops.shutdown.cancel();
                        return;
                    }
                };
                rt.block_on(async move {
                    let sessions = tokio_util::task::TaskTracker::new();
                    for (l, layer4) in mine {
                        match TcpListener::from_std(l) {
                            Ok(l) => {
                                sessions.spawn(accept_loop(
                                    shared.clone(),
                                    l,
                                    layer4,
                                    sessions.clone(),
                                ));
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "edge: cannot register a listener");
                                shared.ops.shutdown.cancel();
                            }
                        }
                    }
                    sessions.close();
                    sessions.wait().await;
                });
                drop(token);
            })?;
    }
    tracker.spawn(follow_config(shared.clone()));
    tracker.close();
    tracker.wait().await;
    tracing::info!("edge drained");
    Ok(())
}

/// One listener's accept loop on its session thread: admission takes the client's permit
/// (or refuses it with its reply), then the session runs in the SMTP-aware or layer-4 mode.
async fn accept_loop(
    shared: Arc<EdgeShared>,
    l: TcpListener,
    layer4: bool,
    tracker: tokio_util::task::TaskTracker,
) {
    let local = l.local_addr().ok();
    // A listener bound to one address: every connection's local address is that one (no
    // getsockname per connection). A wildcard listener asks each connection.
    let fixed_local = local.filter(|a| !a.ip().is_unspecified());
    let mode = if layer4 { "tcp" } else { "smtp" };
    let accepted_total = shared.metrics.connections.with_label_values(&[mode]);
    // Sockets we bound have TCP_NODELAY set before listen (accepted ones inherit it); sockets
    // from systemd may not.
    let inherit_nodelay = socket2::SockRef::from(&l).tcp_nodelay().unwrap_or(false);
    let admit = {
        let shared = shared.clone();
        move |peer: SocketAddr| {
            let snap = shared.ops.config.load();
            let permit = shared
                .admission
                .admit(peer.ip(), &snap.config.edge)
                .map_err(|refusal| {
                    shared.metrics.refused(refusal.label());
                    // Load refusals come by the thousand in an overload: counted, not logged.
                    if matches!(refusal, Refusal::Overloaded | Refusal::EnginesBusy) {
                        tracing::debug!(client = %peer, reason = refusal.label(), "connection refused");
                    } else {
                        tracing::info!(client = %peer, reason = refusal.label(), "connection refused");
                    }
                    refusal.reply()
                })?;
            // The local limits passed (the first line); now the fleet's count of this network.
            let limit = snap.config.edge.fleet_limits.connections_per_minute;
            let what = crate::shared::limits::What::Connection;
            if !shared
                .fleet
                .rates
                .admit(peer.ip(), what, limit, crate::shared::now_ms())
            {
                shared.metrics.refused("fleet_connection_rate");
                tracing::info!(client = %peer, reason = "fleet_connection_rate", "connection refused");
                return Err(crate::smtp::replies::CONNECTION_RATE);
            }
            Ok(permit)
        }
    };
    let serve = {
        let shared = shared.clone();
        move |stream: tokio::net::TcpStream, peer: SocketAddr, permit| {
            let local = fixed_local
                .or_else(|| stream.local_addr().ok())
                .or(local)
                .unwrap_or(peer);
            if !inherit_nodelay {
                let _ = stream.set_nodelay(true);
            }
            accepted_total.inc();
            let s = shared.clone();
            async move {
                if layer4 {
                    tcp::serve(s, stream, peer, local, permit).await;
                } else {
                    front::serve(s, stream, peer, local, permit).await;
                }
            }
        }
    };
    let shutdown = shared.ops.shutdown.clone();
    crate::net::accept_loop(l, shutdown, tracker, admit, serve).await;
}

/// Follows config reloads: engine health state, and the TLS certificate after every reload,
/// even of an unchanged file (a renewed certificate changes the PEM files, not the config).
async fn follow_config(shared: Arc<EdgeShared>) {
    let mut last = shared.ops.config.load_full();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shared.ops.shutdown.cancelled() => return,
        }
        let snap = shared.ops.config.load_full();
        if Arc::ptr_eq(&snap, &last) {
            continue;
        }
        if snap.version != last.version {
            shared.backends.sync(&shared.ops, &shared.metrics, &snap);
        }
        last = snap.clone();
        match tls_config(&snap.config.edge, &shared.ops, &shared.hostname) {
            Ok(t) => shared.tls.store(t),
            Err(e) => {
                tracing::error!(error = %e, "edge TLS certificate reload failed; keeping the previous one")
            }
        }
    }
}

/// Ops API of the edge: `GET /edge/engines` (health and sessions, one line each);
/// `POST /edge/engines/{address}/drain` and `/undrain` (no new sessions; current ones finish).
/// A drain lasts until undrained or the process restarts; for a permanent one set `drain = true`
/// on the engine in the config and reload.
fn api(shared: Arc<EdgeShared>) -> axum::Router {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    async fn list(State(s): State<Arc<EdgeShared>>) -> String {
        let snap = s.ops.config.load_full();
        let map = s.backends.map();
        let mut o = String::new();
        for e in &snap.topology.engines {
            let (up, n, drained) = map
                .get(&e.address)
                .map(|h| (h.healthy(), h.outstanding(), h.drained()))
                .unwrap_or((true, 0, false));
            o.push_str(&format!(
                "{} {} {} sessions={}{}\n",
                e.address,
                snap.topology.cluster_label(e.cluster),
                if up { "up" } else { "down" },
                n,
                if drained || e.drain { " drained" } else { "" }
            ));
        }
        o
    }
    async fn set(
        State(s): State<Arc<EdgeShared>>,
        Path((addr, action)): Path<(String, String)>,
    ) -> (StatusCode, String) {
        let Ok(a) = addr.parse::<SocketAddr>() else {
            return (
                StatusCode::BAD_REQUEST,
                format!("{addr:?} is not an address\n"),
            );
        };
        let map = s.backends.map();
        let Some(h) = map.get(&a) else {
            return (
                StatusCode::NOT_FOUND,
                format!("no engine {a} in the config\n"),
            );
        };
        match action.as_str() {
            "drain" => h.set_drained(true),
            "undrain" => h.set_drained(false),
            _ => return (StatusCode::NOT_FOUND, "actions: drain, undrain\n".into()),
        }
        tracing::info!(engine = %a, action, "engine drain changed by operator");
        (StatusCode::OK, format!("{a}: {action}ed\n"))
    }
    axum::Router::new()
        .route("/edge/engines", get(list))
        .route("/edge/engines/{addr}/{action}", post(set))
        .with_state(shared)
}

/// The edge's part of `/status`: every engine with its health and sessions.
struct Status(Arc<EdgeShared>);

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("edge status")
    }
}

impl StatusSection for Status {
    fn html(&self) -> String {
        use crate::ops::esc;
        use std::fmt::Write;
        let snap = self.0.ops.config.load_full();
        let map = self.0.backends.map();
        let mut o = format!(
            "<h2>Edge</h2><p>{} client connections open; {} addresses tracked.</p><table><tr><th>cluster</th><th>engine</th><th>health</th><th>sessions</th><th>max</th></tr>",
            self.0.admission.live(),
            self.0.admission.tracked()
        );
        for e in &snap.topology.engines {
            let (up, n, drained) = map
                .get(&e.address)
                .map(|h| (h.healthy(), h.outstanding(), h.drained()))
                .unwrap_or((true, 0, false));
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td class={}>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&snap.topology.cluster_label(e.cluster)),
                esc(&e.address.to_string()),
                if up { "up" } else { "down" },
                if e.drain || drained {
                    "drained"
                } else if up {
                    "up"
                } else {
                    "DOWN"
                },
                n,
                e.max_connections
            );
        }
        o.push_str("</table>");
        o
    }
}
