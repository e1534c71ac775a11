//! Operations: the metrics registry, the ops HTTP listener (`/metrics`, `/healthz`, `/readyz`,
//! `/status`, `POST /-/reload`), config and geo reload, and the one shutdown path.
//!
//! Signals: SIGHUP reloads the config (build, validate, swap; a broken file is refused, logged
//! error by error, and the old config keeps serving). SIGTERM and SIGINT start a graceful
//! shutdown: listeners stop accepting, sessions get `grace_period` to finish, then are cut and the
//! process says so loudly.

pub mod auth;
mod http;
pub mod metrics;
pub mod notify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigErrors, RoleSet};
use crate::snapshot::{Live, Snapshot};

pub use http::{esc, serve};
pub use metrics::Metrics;

/// Shared by every role of one process: the config in force, metrics, readiness and the
/// shutdown token.
#[derive(Debug)]
pub struct Ops {
    pub config: Live,
    pub roles: RoleSet,
    pub metrics: Metrics,
    /// Cancelled when the process starts draining.
    pub shutdown: CancellationToken,
    ready: AtomicBool,
    /// Why a role says this process should get no new work although it runs (e.g. an engine
    /// that would answer 451 to every message for want of a shadow): `/readyz` says 503 with
    /// them, and edges route elsewhere.
    unready: std::sync::Mutex<std::collections::BTreeSet<&'static str>>,
    /// Live sessions across roles (for `/readyz` load reports).
    pub sessions: AtomicI64,
    /// Messages in the spool (engine), for `/readyz`.
    pub queue_depth: AtomicI64,
    /// Bound ops listener, once bound.
    pub ops_addr: std::sync::OnceLock<SocketAddr>,
    /// Sections roles add to `/status` (health tables, queues).
    status: std::sync::RwLock<Vec<Arc<dyn StatusSection>>>,
    /// Routes roles add to the ops listener (e.g. the engine's `/queue` API); mounted by
    /// [`serve`] behind the operator credential, so roles add them at bind time.
    routes: std::sync::Mutex<Vec<axum::Router>>,
    /// Routes that authenticate themselves (engine-to-engine webmail calls signed with the
    /// cluster's peer secret): mounted without the operator credential.
    peer_routes: std::sync::Mutex<Vec<axum::Router>>,
    /// One value per type for the rooms above this one that a process needs once whatever
    /// roles it runs (the shared-store client: the engine and the edge of one process use one).
    extensions: std::sync::Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
}

/// A block of HTML a role contributes to `/status`. Implementations escape what they print.
pub trait StatusSection: Send + Sync + std::fmt::Debug {
    fn html(&self) -> String;
}

impl Ops {
    pub fn new(snapshot: Snapshot) -> Arc<Ops> {
        let roles = snapshot.roles;
        let metrics = Metrics::new(&role_label(roles), snapshot.local_silo_name());
        metrics.config_info(&snapshot.version);
        Arc::new(Ops {
            config: Arc::new(ArcSwap::from_pointee(snapshot)),
            roles,
            metrics,
            shutdown: CancellationToken::new(),
            ready: AtomicBool::new(false),
            unready: std::sync::Mutex::default(),
            sessions: AtomicI64::new(0),
            queue_depth: AtomicI64::new(0),
            ops_addr: std::sync::OnceLock::new(),
            status: std::sync::RwLock::new(Vec::new()),
            routes: std::sync::Mutex::new(Vec::new()),
            peer_routes: std::sync::Mutex::new(Vec::new()),
            extensions: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Called once every listener of every role is bound.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && !self.shutdown.is_cancelled()
            && self.unready_reasons().is_empty()
    }

    /// A role's reason to take no new work, set (`on`) or cleared.
    pub fn hold_readiness(&self, reason: &'static str, on: bool) {
        let mut g = self.unready.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            g.insert(reason);
        } else {
            g.remove(reason);
        }
    }

    /// The reasons set with [`Ops::hold_readiness`].
    pub fn unready_reasons(&self) -> Vec<&'static str> {
        self.unready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    pub fn add_routes(&self, r: axum::Router) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }

    pub fn take_routes(&self) -> Vec<axum::Router> {
        std::mem::take(&mut *self.routes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Routes that check their own credential (see `peer_routes`).
    pub fn add_peer_routes(&self, r: axum::Router) {
        self.peer_routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }

    pub fn take_peer_routes(&self) -> Vec<axum::Router> {
        std::mem::take(&mut *self.peer_routes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The process's value of type `T`, if one was set.
    pub fn extension<T: std::any::Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let g = self.extensions.lock().unwrap_or_else(|e| e.into_inner());
        g.iter().find_map(|v| v.clone().downcast::<T>().ok())
    }

    /// Sets the process's value of type `T`, unless one is set; returns the one in force.
    pub fn set_extension<T: std::any::Any + Send + Sync>(&self, v: Arc<T>) -> Arc<T> {
        let mut g = self.extensions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = g.iter().find_map(|x| x.clone().downcast::<T>().ok()) {
            return old;
        }
        g.push(v.clone());
        v
    }

    pub fn add_status(&self, section: Arc<dyn StatusSection>) {
        self.status
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(section);
    }

    pub fn status_sections(&self) -> Vec<Arc<dyn StatusSection>> {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Build, validate, swap. On error the old snapshot stays and every error is logged.
    /// systemd hears `RELOADING=1` before and `READY=1` after, either way.
    pub fn reload(&self) -> Result<Arc<Snapshot>, ConfigErrors> {
        notify::reloading();
        let result = self.reload_inner();
        notify::ready(&match &result {
            Ok(s) => format!("config {}", s.version),
            Err(e) => format!("reload refused ({} errors)", e.0.len()),
        });
        result
    }

    fn reload_inner(&self) -> Result<Arc<Snapshot>, ConfigErrors> {
        let old = self.config.load_full();
        match old.reload() {
            Ok(new) => {
                if new.local_silo_name() != old.local_silo_name() {
                    tracing::warn!(
                        old = old.local_silo_name(),
                        new = new.local_silo_name(),
                        "node.silo changed: metrics keep the old silo label until restart"
                    );
                }
                for w in &new.warnings {
                    tracing::warn!(warning = %w, "config warning");
                }
                tracing::info!(version = %new.version, previous = %old.version, "config reloaded");
                self.metrics.reload("ok");
                self.metrics.config_info(&new.version);
                let new = Arc::new(new);
                self.config.store(new.clone());
                Ok(new)
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(path = %e.path, "config reload refused: {}", e.message);
                }
                tracing::error!(
                    errors = errors.0.len(),
                    version = %old.version,
                    "config reload failed; still serving the previous config"
                );
                self.metrics.reload("error");
                Err(errors)
            }
        }
    }
}

/// The `role` label value: the roles this process runs, joined by `+`.
pub fn role_label(r: RoleSet) -> String {
    if r == RoleSet::ALL {
        return "all".into();
    }
    let mut v = Vec::new();
    if r.edge {
        v.push("edge");
    }
    if r.dns {
        v.push("dns");
    }
    if r.engine {
        v.push("engine");
    }
    if v.is_empty() {
        v.push("ops");
    }
    v.join("+")
}

/// SIGHUP -> reload; SIGTERM/SIGINT -> cancel `ops.shutdown`. Runs until shutdown.
pub async fn handle_signals(ops: Arc<Ops>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading config");
                let ops = ops.clone();
                // Reading a large tenant directory is blocking file I/O.
                let _ = tokio::task::spawn_blocking(move || ops.reload()).await;
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining");
                notify::stopping();
                ops.shutdown.cancel();
                return Ok(());
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: draining");
                notify::stopping();
                ops.shutdown.cancel();
                return Ok(());
            }
            _ = ops.shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Checks the geo database file every `geo.reload_interval` and swaps it in when replaced.
pub async fn watch_geo(ops: Arc<Ops>) {
    loop {
        let interval = ops.config.load().config.geo.reload_interval.get();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = ops.shutdown.cancelled() => return,
        }
        let snap = ops.config.load_full();
        let Some(handle) = snap.geo.database().cloned() else {
            continue;
        };
        match tokio::task::spawn_blocking(move || handle.reload_if_changed()).await {
            Ok(Ok(true)) => {
                tracing::info!("geo database replaced on disk: new version in force");
                ops.metrics.geo_reload("ok");
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "geo database reload failed; keeping the loaded one");
                ops.metrics.geo_reload("error");
            }
            Err(e) => tracing::error!(error = %e, "geo reload task failed"),
        }
    }
}
