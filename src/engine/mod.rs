//! The Maildistiller Engine (MDE, `--role engine`): SMTP reception, scanning, durable spool,
//! delivery to the tenant's servers, held mail.
//!
//! Lifecycle: [`bind`] opens the spool, recovers every queued message into the index, binds the
//! SMTP listeners and returns the future that serves; it accepts until `ops.shutdown`, then
//! stops accepting, lets sessions reach a command boundary (`421`) or finish their DATA, lets
//! in-flight deliveries finish, and returns.

pub mod api;
pub mod delivery;
mod metrics;
pub mod policy;
pub mod queue;
pub mod scan;
pub mod smtp;
pub mod spool;
pub mod webmail;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use tokio::net::TcpListener;

use crate::config::DeliveryConfig;
use crate::ops::Ops;
use crate::snapshot::Snapshot;
pub use metrics::EngineMetrics;
use queue::{Dest, Queue};
use spool::Spool;

/// What every engine task shares.
pub struct Shared {
    pub ops: Arc<Ops>,
    pub spool: Spool,
    pub queue: Arc<Queue>,
    pub metrics: EngineMetrics,
    pub hostname: String,
    /// STARTTLS config, when a certificate is configured.
    pub tls: ArcSwapOption<rustls::ServerConfig>,
    /// The scanner built for the config version in force (built at bind, so one always exists).
    scanner: Mutex<(String, Arc<scan::Scanner>)>,
    /// Per-tenant delivery rate limiters (tenant id -> (rate, limiter)); bounded by the tenants.
    limiters: Mutex<std::collections::HashMap<String, (u32, Arc<ratelimit::Ratelimiter>)>>,
}

impl Shared {
    pub fn delivery(&self) -> DeliveryConfig {
        self.ops.config.load().config.engine.delivery.clone()
    }

    /// How long a message may wait for delivery before it expires (`engine.message_lifetime`).
    pub fn message_lifetime(&self) -> std::time::Duration {
        self.ops.config.load().config.engine.message_lifetime.get()
    }

    /// The delivery rate limiter of a tenant destination with `delivery_rate` set (rebuilt when
    /// the rate changes).
    pub fn rate_limiter(&self, dest: &queue::Dest) -> Option<Arc<ratelimit::Ratelimiter>> {
        let queue::Dest::Tenant(id) = dest else {
            return None;
        };
        let rate = self
            .ops
            .config
            .load()
            .topology
            .tenant(id)
            .and_then(|t| t.delivery_rate)?;
        let mut g = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        match g.get(id) {
            Some((r, l)) if *r == rate => Some(l.clone()),
            _ => {
                let r = u64::from(rate.max(1));
                let l = Arc::new(
                    ratelimit::Ratelimiter::builder(r)
                        .max_tokens(r)
                        .initial_available(r)
                        .build()
                        .unwrap_or_else(|_| ratelimit::Ratelimiter::new(r)),
                );
                g.insert(id.clone(), (rate, l.clone()));
                Some(l)
            }
        }
    }

    /// The scanner for `snap`, rebuilt when the config version changes. A snapshot whose
    /// policies fail to build keeps the previous scanner (and says so).
    pub fn scanner(&self, snap: &Snapshot) -> Arc<scan::Scanner> {
        let mut g = self.scanner.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 != snap.version {
            match scan::Scanner::new(snap) {
                Ok(s) => *g = (snap.version.clone(), Arc::new(s)),
                Err(e) => {
                    tracing::error!(errors = %e, "policies of the new config do not build; keeping the previous scanner");
                    g.0 = snap.version.clone();
                }
            }
        }
        g.1.clone()
    }
}

/// The host name for banners and headers: `engine.hostname`, else the system's.
fn hostname(snap: &Snapshot) -> String {
    snap.config.engine.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    })
}

/// A role bound and ready: the future serves until shutdown and drains.
pub type Serving = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// A bound engine.
pub struct Bound {
    /// Serves until shutdown, then drains.
    pub serving: Serving,
    pub shared: Arc<Shared>,
    /// `engine.listen` addresses (the real ports when configured with port 0).
    pub addrs: Vec<std::net::SocketAddr>,
    /// `engine.proxy_listen` addresses.
    pub proxy_addrs: Vec<std::net::SocketAddr>,
}

/// Opens the spool, recovers it, binds the listeners, mounts the queue API on the ops listener.
pub async fn bind(ops: &Arc<Ops>) -> std::io::Result<Bound> {
    let snap = ops.config.load_full();
    let ecfg = &snap.config.engine;
    let spool = Spool::open(&ecfg.spool_dir)?;
    let tls = match (&ecfg.tls_cert, &ecfg.tls_key) {
        (Some(c), Some(k)) => {
            let (config, expiry) =
                crate::tls::server_config_with_expiry(c, k).map_err(std::io::Error::other)?;
            ops.metrics.tls_expiry("engine", expiry);
            Some(config)
        }
        _ => None,
    };
    let scanner =
        scan::Scanner::new(&snap).map_err(|e| std::io::Error::other(format!("policies: {e}")))?;
    let shared = Arc::new(Shared {
        ops: ops.clone(),
        spool: spool.clone(),
        queue: Arc::new(Queue::default()),
        metrics: EngineMetrics::new(&ops.metrics),
        hostname: hostname(&snap),
        tls: ArcSwapOption::new(tls),
        scanner: Mutex::new((snap.version.clone(), Arc::new(scanner))),
        limiters: Mutex::new(std::collections::HashMap::new()),
    });
    let s2 = spool.clone();
    let (found, problems) = tokio::task::spawn_blocking(move || s2.recover())
        .await
        .map_err(std::io::Error::other)??;
    for p in &problems {
        tracing::error!(problem = %p, "spool recovery");
    }
    let n = found.len();
    for r in found {
        let dest = match r.envelope.kind {
            spool::Kind::Dsn => match snap.topology.tenant_for_address(&r.envelope.rcpts[0]) {
                Some(t) => Dest::Tenant(t.id.0.clone()),
                None => {
                    Dest::Domain(crate::smtp::domain_of(&r.envelope.rcpts[0]).unwrap_or_default())
                }
            },
            spool::Kind::Message => Dest::Tenant(r.envelope.tenant.clone()),
        };
        shared.queue.insert(Arc::new(r.envelope), r.state, dest);
    }
    tracing::info!(messages = n, spool = %ecfg.spool_dir.display(), "spool recovered");
    let mut listeners = Vec::new();
    let configured = ecfg
        .listen
        .iter()
        .map(|a| (a, smtp::Listener::Direct, "engine.listen"))
        .chain(
            ecfg.proxy_listen
                .iter()
                .map(|a| (a, smtp::Listener::Proxy, "engine.proxy_listen")),
        );
    for (addr, kind, key) in configured {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("{key} {addr}: {e}")))?;
        listeners.push((l, kind));
    }
    let bound_of = |want: smtp::Listener| {
        listeners
            .iter()
            .filter(|(_, k)| *k == want)
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    };
    let addrs = bound_of(smtp::Listener::Direct);
    let proxy_addrs = bound_of(smtp::Listener::Proxy);
    ops.add_routes(api::routes(shared.clone()));
    let webmail = webmail::bind(&shared).await?;
    let serving = Box::pin(run(shared.clone(), listeners, webmail));
    Ok(Bound {
        serving,
        shared,
        addrs,
        proxy_addrs,
    })
}

async fn run(
    shared: Arc<Shared>,
    listeners: Vec<(TcpListener, smtp::Listener)>,
    webmail: Option<Serving>,
) -> std::io::Result<()> {
    let tracker = tokio_util::task::TaskTracker::new();
    if let Some(w) = webmail {
        tracker.spawn(w);
    }
    // Sessions of all listeners together: at most `engine.max_sessions` (read at start);
    // beyond it a client gets `421 4.3.2` at once.
    let max_sessions = shared.ops.config.load().config.engine.max_sessions as usize;
    let sessions = Arc::new(tokio::sync::Semaphore::new(max_sessions));
    for (l, kind) in listeners {
        let (s, permits) = (shared.clone(), sessions.clone());
        tracker.spawn(crate::net::accept_loop(
            l,
            shared.ops.shutdown.clone(),
            tracker.clone(),
            move |_| {
                permits
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| crate::smtp::replies::TOO_MANY_SESSIONS)
            },
            move |stream, peer, permit| {
                let s = s.clone();
                async move {
                    smtp::serve(s, stream, peer, kind).await;
                    drop(permit);
                }
            },
        ));
    }
    tracker.spawn(delivery::dispatcher(shared.clone()));
    tracker.spawn(gauges(shared.clone()));
    tracker.close();
    tracker.wait().await;
    tracing::info!("engine drained");
    Ok(())
}

/// Refreshes queue gauges every few seconds (queue depth, held counts and ages per tenant).
/// Deletes quarantined messages older than `engine.quarantine_lifetime` (checked with the
/// gauges, every 2 s). A message being released right now is left for the next round.
async fn expire_quarantine(shared: &Shared, list: &[queue::Listed], now: u64) {
    let lifetime = shared
        .ops
        .config
        .load()
        .config
        .engine
        .quarantine_lifetime
        .get()
        .as_secs();
    for l in list {
        if l.display != "quarantined" || now.saturating_sub(l.env.received) < lifetime {
            continue;
        }
        if shared.queue.remove(&l.env.id).is_err() {
            continue;
        }
        match shared.spool.remove(&l.env.id).await {
            Ok(()) => {
                shared.metrics.quarantine_expired(&l.env.tenant);
                tracing::info!(id = %l.env.id, tenant = %l.env.tenant, age_s = now.saturating_sub(l.env.received), "quarantined message expired and deleted");
            }
            Err(e) => {
                tracing::warn!(id = %l.env.id, error = %e, "cannot delete an expired quarantined message")
            }
        }
    }
}

async fn gauges(shared: Arc<Shared>) {
    loop {
        let list = shared.queue.list();
        shared
            .ops
            .queue_depth
            .store(list.len() as i64, std::sync::atomic::Ordering::Relaxed);
        shared.metrics.queue_depth.reset();
        shared.metrics.held.reset();
        shared.metrics.oldest_held.reset();
        let now = queue::now_secs();
        expire_quarantine(&shared, &list, now).await;
        let mut oldest: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for l in &list {
            shared
                .metrics
                .queue_depth
                .with_label_values(&[&l.env.tenant, l.display])
                .inc();
            if l.display == "held" {
                shared
                    .metrics
                    .held
                    .with_label_values(&[&l.env.tenant])
                    .inc();
                let age = now.saturating_sub(l.env.received);
                let e = oldest.entry(&l.env.tenant).or_default();
                *e = (*e).max(age);
            }
        }
        for (t, age) in oldest {
            shared
                .metrics
                .oldest_held
                .with_label_values(&[t])
                .set(age as i64);
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = shared.ops.shutdown.cancelled() => return,
        }
    }
}
