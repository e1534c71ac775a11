//! The Maildistiller Engine (MDE, `--role engine`): SMTP reception, scanning, delivery to the
//! tenant's servers, quarantine expiry; every message it accepts lives in the [`Store`].
//!
//! Lifecycle: [`bind`] opens the store (the spool, every queued message recovered), binds the
//! SMTP listeners and returns the future that serves; it accepts until `ops.shutdown`, then
//! stops accepting, lets sessions reach a command boundary (`421`) or finish their DATA, lets
//! in-flight deliveries finish, and returns. Webmail is a room of its own beside the engine: the
//! process that runs the engine starts it on [`Bound::store`].
//!
//! Learning from users and operators (the report address, webmail's buttons, `maildistiller
//! learn`) is [`learn`]: rspamd's controller, dedup, limits, the audit log under the spool.
//!
//! Handles: SMTP reception gets [`Shared`] (the scanner, TLS, the store, metrics, recipient
//! verification); delivery gets its own [`delivery::Delivery`] (the store, config, metrics) and
//! the queue API the store alone. Recipient verification ([`verify`]) probes tenants' servers
//! through delivery's connections.

pub mod api;
pub mod delivery;
pub mod learn;
mod metrics;
pub mod policy;
pub mod scan;
pub mod smtp;
pub mod verify;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use tokio::net::TcpListener;

use crate::ops::Ops;
use crate::shadow::Replicator;
use crate::snapshot::Snapshot;
use crate::store::allow::AllowStore;
use crate::store::{Change, ChangeError, Listed, State, Status, Store, now_secs};
pub use metrics::EngineMetrics;

/// What SMTP reception shares (delivery and the queue API get narrower handles).
pub struct Shared {
    pub ops: Arc<Ops>,
    pub store: Store,
    pub metrics: EngineMetrics,
    pub hostname: String,
    /// STARTTLS config, when a certificate is configured.
    pub tls: ArcSwapOption<rustls::ServerConfig>,
    /// What the fleet knows (`[shared]`), or local knowledge only.
    pub fleet: Arc<crate::shared::Fleet>,
    /// Held outbreak suspects found to be outbreaks: they stay quarantined (bounded, 100 000).
    confirmed: Mutex<std::collections::HashSet<crate::store::QueueId>>,
    /// Judges recipients of tenants with a recipients file or call-ahead.
    pub verifier: Arc<verify::Verifier>,
    /// Cluster redundancy (when `engine.shadow.listen` is set): copies on a peer engine.
    pub shadow: Option<Replicator>,
    /// The scanner built for the config version in force (built at bind, so one always exists).
    scanner: Mutex<(String, Arc<scan::Scanner>)>,
    /// Users' own allow lists under the spool, which every scanner consults.
    allow: Arc<AllowStore>,
    /// Memory for bodies in flight (`engine.data_memory`), and where the others spill.
    pub bodies: Arc<smtp::body::Budget>,
    /// Messages scanned and spooled at once (`engine.max_processing`) and the busy signal.
    pub processing: smtp::processing::Processing,
    /// Scan counters (`maildistiller_scan_*`), one set for the process: every scanner built
    /// for a new config version counts into it.
    scan_metrics: scan::ScanMetrics,
}

impl Shared {
    /// The scanner for `snap`, rebuilt when the config version changes. A snapshot whose
    /// policies fail to build keeps the previous scanner (and says so).
    pub fn scanner(&self, snap: &Snapshot) -> Arc<scan::Scanner> {
        let mut g = self.scanner.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 != snap.version {
            match scan::Scanner::new_in(snap, self.fleet.clone()) {
                Ok(s) => {
                    *g = (
                        snap.version.clone(),
                        Arc::new(
                            s.with_allow(self.allow.clone())
                                .with_metrics(self.scan_metrics.clone()),
                        ),
                    )
                }
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
    /// The engine's messages (for webmail, and for tests to look at).
    pub store: Store,
    /// `engine.listen` addresses (the real ports when configured with port 0).
    pub addrs: Vec<std::net::SocketAddr>,
    /// `engine.proxy_listen` addresses.
    pub proxy_addrs: Vec<std::net::SocketAddr>,
    /// Cluster redundancy, when `engine.shadow.listen` is set.
    pub shadow: Option<Replicator>,
}

/// Opens the store (recovering the spool), binds the listeners, mounts the queue API on the ops
/// listener.
pub async fn bind(ops: &Arc<Ops>) -> std::io::Result<Bound> {
    bind_with(ops, Vec::new()).await
}

/// [`bind`], with the shadow listener(s) already bound (tests bind `127.0.0.1:0` first, then
/// name the address in the fleet).
pub async fn bind_with(
    ops: &Arc<Ops>,
    shadow_listeners: Vec<TcpListener>,
) -> std::io::Result<Bound> {
    let snap = ops.config.load_full();
    let ecfg = &snap.config.engine;
    let (store, problems) = Store::open(
        &ecfg.spool_dir,
        |env| delivery::route(&snap, env),
        ops.shutdown.clone(),
    )
    .await?;
    for p in &problems {
        tracing::error!(problem = %p, "spool recovery");
    }
    tracing::info!(messages = store.len(), spool = %ecfg.spool_dir.display(), "spool recovered");
    let route: crate::shadow::Route = {
        let ops = ops.clone();
        Arc::new(move |env| delivery::route(&ops.config.load(), env))
    };
    let shadow = crate::shadow::start(ops, &store, route, shadow_listeners).await?;
    let (shadow, shadow_serving) = match shadow {
        Some(s) => (Some(s.replicator), Some(s.serving)),
        None => (None, None),
    };
    let hostname = hostname(&snap);
    let tls = tls_config(&snap, ops, &hostname)?;
    let allow = Arc::new(AllowStore::new(&ecfg.spool_dir));
    let fleet = crate::shared::Fleet::for_process(ops).await;
    // This engine's lessons go to the fleet, the fleet's come into its model. Its name on the
    // lessons stream: the node's, and this run's own (two engines may share a name).
    let node = snap
        .config
        .node
        .name
        .clone()
        .unwrap_or_else(|| hostname.clone());
    crate::engine::learn::share(
        &ecfg.spool_dir,
        &fleet,
        &format!("{node}/{:08x}", fastrand::u32(..)),
    );
    let scan_metrics = scan::ScanMetrics::new();
    ops.metrics.register(Box::new(scan_metrics.clone()));
    let scanner = scan::Scanner::new_in(&snap, fleet.clone())
        .map_err(|e| std::io::Error::other(format!("policies: {e}")))?
        .with_allow(allow.clone())
        .with_metrics(scan_metrics.clone());
    let metrics = EngineMetrics::new(&ops.metrics);
    let delivery = Arc::new(delivery::Delivery::new(
        store.clone(),
        ops.clone(),
        metrics.clone(),
        hostname.clone(),
    ));
    let verifier = Arc::new(verify::Verifier::new(
        ops.clone(),
        store.clone(),
        delivery.clone(),
    ));
    let shared = Arc::new(Shared {
        ops: ops.clone(),
        store: store.clone(),
        metrics,
        hostname,
        tls: ArcSwapOption::new(tls),
        fleet,
        confirmed: Mutex::new(Default::default()),
        verifier,
        shadow: shadow.clone(),
        scanner: Mutex::new((snap.version.clone(), Arc::new(scanner))),
        allow,
        scan_metrics,
        processing: smtp::processing::Processing::new(ecfg.max_processing, &ops.metrics),
        bodies: Arc::new(smtp::body::Budget::new(
            &ecfg.spool_dir,
            ecfg.data_memory.0,
            ecfg.redundancy == crate::config::Redundancy::Shadow,
            &ops.metrics,
        )?),
    });
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
    ops.add_routes(api::routes(store.clone()));
    let serving = Box::pin(run(shared, delivery, listeners, shadow_serving));
    Ok(Bound {
        serving,
        store,
        addrs,
        proxy_addrs,
        shadow,
    })
}

async fn run(
    shared: Arc<Shared>,
    delivery: Arc<delivery::Delivery>,
    listeners: Vec<(TcpListener, smtp::Listener)>,
    shadow: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
) -> std::io::Result<()> {
    let tracker = tokio_util::task::TaskTracker::new();
    if let Some(s) = shadow {
        tracker.spawn(s);
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
    tracker.spawn(delivery::dispatcher(delivery));
    tracker.spawn(verify::watch(shared.verifier.clone()));
    tracker.spawn(gauges(shared.clone()));
    tracker.spawn(follow_tls(shared.clone()));
    tracker.close();
    tracker.wait().await;
    tracing::info!("engine drained");
    Ok(())
}

/// The STARTTLS config of `engine.tls_cert`/`tls_key` (made first when `tls_self_signed` and
/// missing), or `None` without a certificate.
fn tls_config(
    snap: &Snapshot,
    ops: &Ops,
    hostname: &str,
) -> std::io::Result<Option<Arc<rustls::ServerConfig>>> {
    let e = &snap.config.engine;
    let (Some(cert), Some(key)) = (&e.tls_cert, &e.tls_key) else {
        return Ok(None);
    };
    let names = crate::tls::self_signed_names(hostname);
    let (config, expiry) = crate::tls::listener_config(cert, key, e.tls_self_signed, &names)
        .map_err(std::io::Error::other)?;
    ops.metrics.tls_expiry("engine", expiry);
    Ok(Some(config))
}

/// Loads the STARTTLS certificate again after every config reload (a renewed certificate
/// changes the PEM files, not the config); a pair that does not load keeps the previous one.
async fn follow_tls(shared: Arc<Shared>) {
    let mut last = shared.ops.config.load_full();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = shared.ops.shutdown.cancelled() => return,
        }
        let snap = shared.ops.config.load_full();
        if Arc::ptr_eq(&snap, &last) {
            continue;
        }
        last = snap.clone();
        match tls_config(&snap, &shared.ops, &shared.hostname) {
            Ok(t) => shared.tls.store(t),
            Err(e) => {
                tracing::error!(error = %e, "engine TLS certificate reload failed; keeping the previous one")
            }
        }
    }
}

/// Deletes quarantined messages older than `engine.quarantine_lifetime` (checked with the
/// gauges, every 2 s). A message being released right now is left for the next round.
async fn expire_quarantine(shared: &Shared, list: &[Listed], now: u64) {
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
        if l.state != State::Quarantined || now.saturating_sub(l.env.received) < lifetime {
            continue;
        }
        match shared.store.change(&l.env.id, Change::Expire).await {
            Ok(_) => {
                shared.metrics.quarantine_expired(&l.env.tenant);
                tracing::info!(id = %l.env.id, tenant = %l.env.tenant, age_s = now.saturating_sub(l.env.received), "quarantined message expired and deleted");
            }
            Err(ChangeError::Io(e)) => {
                tracing::warn!(id = %l.env.id, error = %e, "cannot delete an expired quarantined message")
            }
            // Released, deleted or being changed meanwhile.
            Err(_) => {}
        }
    }
}

/// Mail held as an outbreak suspect (`outbreak.delay`), due for its second look: still
/// quarantined when the fleet marked one of its fingerprints an outbreak meanwhile, released
/// for delivery otherwise. While the store does not answer it waits, for at most
/// [`SECOND_LOOK_PATIENCE`] past its time, then goes out (fail open: held mail is not lost mail).
async fn second_look(shared: &Shared, list: &[Listed]) {
    let now = crate::shared::now_ms();
    for l in list {
        let Status::Quarantined { reason, .. } = &l.progress.status else {
            continue;
        };
        let Some((fps, due)) = scan::check::outbreak::parse_delay(reason) else {
            continue;
        };
        if now < due
            || shared
                .confirmed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&l.env.id)
        {
            continue;
        }
        let marked = shared.fleet.marked(&fps).await;
        let local = fps.iter().any(|fp| shared.fleet.outbreaks.is_marked(fp));
        let outbreak = local || marked.as_ref().is_some_and(|m| m.iter().any(|x| *x));
        let patient = now < due + SECOND_LOOK_PATIENCE.as_millis() as u64;
        if outbreak {
            let mut c = shared.confirmed.lock().unwrap_or_else(|e| e.into_inner());
            if c.len() >= 100_000 {
                c.clear();
            }
            c.insert(l.env.id.clone());
            shared
                .fleet
                .metrics
                .matched
                .with_label_values(&["confirmed"])
                .inc();
            tracing::info!(id = %l.env.id, tenant = %l.env.tenant, "outbreak suspect confirmed: stays quarantined");
        } else if marked.is_some() || !patient || !shared.fleet.enabled() {
            match shared.store.change(&l.env.id, Change::Release).await {
                Ok(_) => {
                    shared
                        .fleet
                        .metrics
                        .matched
                        .with_label_values(&["released"])
                        .inc();
                    tracing::info!(id = %l.env.id, tenant = %l.env.tenant, "outbreak suspect cleared: released for delivery");
                }
                Err(e) => {
                    tracing::debug!(id = %l.env.id, error = %e, "outbreak suspect not released now")
                }
            }
        }
    }
}

/// How long a due outbreak suspect waits for the store to answer before it is released.
pub const SECOND_LOOK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);

/// Refreshes queue gauges every few seconds (queue depth by state, held counts and ages per
/// tenant) and expires old quarantined mail.
async fn gauges(shared: Arc<Shared>) {
    loop {
        let list = shared.store.list();
        shared
            .ops
            .queue_depth
            .store(list.len() as i64, std::sync::atomic::Ordering::Relaxed);
        shared.metrics.queue_depth.reset();
        shared.metrics.held.reset();
        shared.metrics.oldest_held.reset();
        let now = now_secs();
        expire_quarantine(&shared, &list, now).await;
        second_look(&shared, &list).await;
        let mut oldest: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for l in &list {
            shared
                .metrics
                .queue_depth
                .with_label_values(&[&l.env.tenant, l.state.as_str()])
                .inc();
            if l.state == State::Held {
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
