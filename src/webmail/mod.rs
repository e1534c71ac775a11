//! Webmail: while a tenant's mail server is down, its users read the mail held for them (and
//! their quarantined mail) on an HTTPS page served by the engines, straight from the engine's
//! message store.
//!
//! A room of its own beside the engine: it talks to the [`Store`] (list, read, release, delete)
//! and to the process's [`Ops`] (config, shutdown, metrics, the ops listener for the peer API),
//! never to the engine itself. The process that runs an engine starts it on that engine's store
//! (`cli/run.rs`).
//!
//! # Layout
//!
//! | file | owns |
//! |---|---|
//! | `serve.rs` | the TLS listener for axum, connection bounds and idle timeout, security headers, HTTP→HTTPS |
//! | `sessions.rs` | sessions, per-session message tokens, the sign-in limiter |
//! | `secret.rs` | random tokens, constant-time compare, argon2 checks |
//! | `auth.rs` | sign-in, sign-out, CSRF |
//! | `mailbox.rs` | who sees which message; release and delete |
//! | `handlers.rs` | inbox, message, downloads, actions, allowed senders |
//! | `render.rs` | parsing and sanitising a message |
//! | `pages.rs` + `webmail.css` | the HTML |
//! | `peer.rs` | the cluster-internal API (on the ops listener) and its client |
//!
//! "Allow this sender" writes the user's allow list, which lives with the engine's messages
//! (`store/allow.rs`), where the scanner reads it.
//!
//! # Lifecycle
//!
//! [`bind`] (called with the engine's store once the engine is bound) mounts the peer API on the ops listener when a peer
//! secret is set, loads the certificate (made first when `tls_self_signed` and missing; its
//! SHA-256 fingerprint is logged with the page's URL), binds the HTTPS and redirect listeners
//! and returns the future that serves them; it stops accepting on `ops.shutdown` and lets requests in flight
//! finish. Config reloads apply to the next request (users, limits, page size, peers); the
//! listeners, certificate and `max_concurrent_logins` are read at start only.
//!
//! # Bounds
//!
//! `max_connections` connections (idle ones closed after `idle_timeout`), `max_sessions`
//! sessions with at most `sessions::MAX_TOKENS` message tokens each, `max_concurrent_logins`
//! password checks, `sessions::MAX_TRACKED` limiter entries, inbox pages up to
//! `handlers::MAX_PAGE`, peer answers up to `peer::MAX_BODY` within `peer_timeout`.

mod auth;
mod handlers;
mod mailbox;
mod pages;
pub mod peer;
mod render;
pub mod secret;
mod serve;
mod sessions;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::{get, post};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::ops::Ops;
use crate::snapshot::Snapshot;
use crate::store::Store;
pub use crate::store::allow::{AllowError, AllowStore, entries as allow_entries, sender_allowed};

/// `maildistiller_webmail_*` metrics.
#[derive(Debug, Clone)]
pub struct WebMetrics {
    logins: IntCounterVec,
    actions: IntCounterVec,
    pub csrf_refused: IntCounter,
    pub peer_errors: IntCounter,
    pub sessions: IntGauge,
}

impl WebMetrics {
    fn new(m: &crate::ops::Metrics) -> WebMetrics {
        let logins = IntCounterVec::new(
            Opts::new("webmail_logins_total", "Webmail sign-ins by result."),
            &["result"],
        )
        .expect("valid metric");
        let actions = IntCounterVec::new(
            Opts::new("webmail_actions_total", "Webmail actions on messages."),
            &["action", "result"],
        )
        .expect("valid metric");
        let csrf_refused = IntCounter::new(
            "webmail_csrf_refused_total",
            "State-changing requests refused for a missing or wrong CSRF token.",
        )
        .expect("valid metric");
        let peer_errors = IntCounter::new(
            "webmail_peer_errors_total",
            "Cluster peers that did not answer a webmail request.",
        )
        .expect("valid metric");
        let sessions =
            IntGauge::new("webmail_sessions", "Webmail sessions in memory.").expect("valid metric");
        m.register(Box::new(logins.clone()));
        m.register(Box::new(actions.clone()));
        m.register(Box::new(csrf_refused.clone()));
        m.register(Box::new(peer_errors.clone()));
        m.register(Box::new(sessions.clone()));
        for r in ["ok", "failed", "locked", "csrf", "busy"] {
            logins.with_label_values(&[r]);
        }
        WebMetrics {
            logins,
            actions,
            csrf_refused,
            peer_errors,
            sessions,
        }
    }

    pub fn login(&self, result: &str) {
        self.logins.with_label_values(&[result]).inc();
    }

    pub fn action(&self, action: &str, ok: bool) {
        self.actions
            .with_label_values(&[action, if ok { "ok" } else { "refused" }])
            .inc();
    }
}

/// What webmail works with on this node: the process's ops handle and this engine's store
/// (cheap to clone).
#[derive(Clone)]
pub struct Local {
    pub ops: Arc<Ops>,
    pub store: Store,
}

/// What every webmail request shares.
pub struct Web {
    pub local: Local,
    sessions: sessions::Sessions,
    limiter: sessions::Limiter,
    /// Password checks running at once.
    logins: Arc<Semaphore>,
    /// (config version, dummy hash for unknown addresses).
    dummy: Mutex<(String, String)>,
    metrics: WebMetrics,
}

impl Web {
    /// The dummy hash for the config in force (its parameters follow the configured users').
    fn dummy_hash(&self, snap: &Snapshot) -> String {
        let mut g = self.dummy.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 != snap.version {
            let like = snap
                .config
                .tenants
                .iter()
                .flat_map(|t| &t.users)
                .map(|u| u.password_hash.as_str())
                .next();
            *g = (snap.version.clone(), secret::dummy_hash(like));
        }
        g.1.clone()
    }

    /// `engine.webmail.public_url` in force.
    fn public_url(&self) -> Option<String> {
        let snap = self.local.ops.config.load();
        snap.config.engine.webmail.public_url.clone()
    }

    /// The peer client, when the config in force has a peer secret.
    fn peer_client(&self) -> Option<peer::Client> {
        let snap = self.local.ops.config.load();
        let c = &snap.config.engine.webmail;
        c.peer_secret.as_ref().map(|s| peer::Client {
            secret: s.clone(),
            timeout: c.peer_timeout.get(),
        })
    }
}

/// The page's routes.
fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(auth::index))
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/inbox", get(handlers::inbox))
        .route(
            "/allowed",
            get(handlers::allowed).post(handlers::allowed_change),
        )
        .route("/m/{token}", get(handlers::message))
        .route("/m/{token}/body", get(handlers::body))
        .route("/m/{token}/raw", get(handlers::raw))
        .route("/m/{token}/part/{n}", get(handlers::part))
        .route("/m/{token}/{action}", post(handlers::act))
        .route("/static/webmail.css", get(handlers::css))
        .fallback(handlers::fallback)
        .layer(axum::middleware::map_response(serve::security_headers))
        .with_state(web)
}

/// The webmail listeners bound, and the future that serves them until shutdown.
pub struct Bound {
    pub serving: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>,
    /// The HTTPS addresses (the real ports when configured with port 0).
    pub addrs: Vec<SocketAddr>,
}

/// Mounts the peer API when a peer secret is set, and binds the webmail listeners when
/// configured (`None` when `engine.webmail.listen` is empty).
pub async fn bind(ops: &Arc<Ops>, store: &Store) -> std::io::Result<Option<Bound>> {
    let local = Local {
        ops: ops.clone(),
        store: store.clone(),
    };
    let snap = ops.config.load_full();
    let cfg = snap.config.engine.webmail.clone();
    if cfg.peer_secret.is_some() {
        ops.add_peer_routes(peer::routes(local.clone()));
        if peer::peers(&local).is_empty() {
            tracing::info!(
                "webmail: no cluster peers found for this engine in the topology; showing local mail only"
            );
        }
    }
    if cfg.listen.is_empty() {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Err(std::io::Error::other(
            "webmail: tls_cert and tls_key are required",
        ));
    };
    let mut names = crate::tls::self_signed_names(
        snap.config
            .engine
            .hostname
            .as_deref()
            .unwrap_or("localhost"),
    );
    for a in &cfg.listen {
        let ip = a.ip().to_string();
        if !a.ip().is_unspecified() && !names.contains(&ip) {
            names.push(ip);
        }
    }
    let (tls, expiry) = crate::tls::listener_config(cert, key, cfg.tls_self_signed, &names)
        .map_err(|e| std::io::Error::other(format!("webmail certificate: {e}")))?;
    let fingerprint = crate::tls::fingerprint_sha256(cert).unwrap_or_default();
    ops.metrics.tls_expiry("webmail", expiry);
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(tls);
    let mut https = Vec::new();
    for a in &cfg.listen {
        https.push(
            TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("webmail listener {a}: {e}")))?,
        );
    }
    let mut plain = Vec::new();
    for a in &cfg.http_redirect_listen {
        plain.push(TcpListener::bind(a).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("webmail redirect listener {a}: {e}"))
        })?);
    }
    let addrs: Vec<SocketAddr> = https.iter().filter_map(|l| l.local_addr().ok()).collect();
    let web = Arc::new(Web {
        local,
        sessions: sessions::Sessions::new(cfg.max_sessions as usize),
        limiter: sessions::Limiter::default(),
        logins: Arc::new(Semaphore::new(cfg.max_concurrent_logins as usize)),
        dummy: Mutex::new((String::new(), String::new())),
        metrics: WebMetrics::new(&ops.metrics),
    });
    // Made now, so the first unknown address does not pay for it.
    let (w2, s2) = (web.clone(), snap.clone());
    let _ = tokio::task::spawn_blocking(move || w2.dummy_hash(&s2)).await;
    let url = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| match addrs.first() {
            Some(a) => format!("https://{a}/"),
            None => String::new(),
        });
    tracing::info!(%url, https = ?addrs, redirect = ?cfg.http_redirect_listen, certificate_sha256 = %fingerprint, "webmail listening (a browser that warns about the certificate should show this fingerprint)");
    let https_port = addrs.first().map_or(443, |a| a.port());
    let names = serve::redirect_names(snap.config.engine.hostname.as_deref(), &addrs);
    Ok(Some(Bound {
        serving: Box::pin(run(web, https, plain, tls, https_port, names)),
        addrs,
    }))
}

async fn run(
    web: Arc<Web>,
    https: Vec<TcpListener>,
    plain: Vec<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    https_port: u16,
    names: Vec<String>,
) -> std::io::Result<()> {
    let shutdown = web.local.ops.shutdown.clone();
    let cfg = web.local.ops.config.load().config.engine.webmail.clone();
    let idle = cfg.idle_timeout.get();
    let max = cfg.max_connections as usize;
    let tracker = tokio_util::task::TaskTracker::new();
    for l in https {
        let listener =
            serve::TlsListener::start(l, Some(tls.clone()), max, idle, shutdown.clone())?;
        let app = router(web.clone()).into_make_service_with_connect_info::<serve::ClientAddr>();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "webmail server failed");
            }
        });
    }
    for l in plain {
        let listener = serve::TlsListener::start(l, None, max, idle, shutdown.clone())?;
        let w = web.clone();
        let names = Arc::new(names.clone());
        let app = Router::new().fallback(move |req: axum::extract::Request| {
            let (w, names) = (w.clone(), names.clone());
            async move { serve::redirect(&req, w.public_url().as_deref(), &names, https_port) }
        });
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
    }
    // Expired sessions are dropped once a minute (requests also check expiry themselves).
    let w = web.clone();
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
                _ = w.local.ops.shutdown.cancelled() => return,
            }
            let c = w.local.ops.config.load().config.engine.webmail.clone();
            let n = w
                .sessions
                .sweep(c.session_idle.get(), c.session_lifetime.get());
            w.metrics.sessions.set(n as i64);
        }
    });
    tracker.close();
    tracker.wait().await;
    tracing::info!("webmail stopped");
    Ok(())
}
