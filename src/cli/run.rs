//! Running roles: one tokio runtime, every role's listeners bound before the process says it
//! is ready, then serving until SIGTERM/SIGINT, then draining within `ops.grace_period`.

use std::sync::Arc;

use super::{Failure, LogFormat};
use crate::config::RoleSet;
use crate::ops::{self, Ops};
use crate::snapshot::Snapshot;

/// Logs on stderr, text or JSON, filtered by `level` (RUST_LOG wins).
pub fn init_tracing(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs `roles` until SIGTERM: binds every listener first (nothing is ready until all are),
/// then serves, then drains within `ops.grace_period`.
pub fn run(snap: Snapshot, roles: RoleSet) -> Result<(), Failure> {
    for w in &snap.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    if let Some(path) = &snap.config.ops.token_file {
        match crate::ops::auth::ensure_token_file(path) {
            Ok(true) => {
                tracing::info!(file = %path.display(), "operator token created (maildistiller queue reads it; send it as Authorization: Bearer)")
            }
            Ok(false) => {}
            Err(e) => {
                return Err(Failure::Runtime(format!(
                    "cannot create the operator token file {}: {e}",
                    path.display()
                )));
            }
        }
    }
    crate::sys::return_large_allocations();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Err(Failure::Runtime(format!("cannot start the runtime: {e}"))),
    };
    rt.block_on(async move {
        let ops_listen = snap.config.ops.listen;
        let grace = snap.config.ops.grace_period.get();
        let ops = Ops::new(snap);
        let listener = match tokio::net::TcpListener::bind(ops_listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(address = %ops_listen, error = %e, "cannot bind the ops listener");
                return Err(Failure::Bind { role: "ops", error: e });
            }
        };
        if let Ok(a) = listener.local_addr() {
            let _ = ops.ops_addr.set(a);
        }
        tracing::info!(
            ops = %ops_listen,
            silo = ops.config.load().local_silo_name(),
            version = %ops.config.load().version,
            roles = %ops::role_label(roles),
            "maildistiller started"
        );
        let mut tasks = tokio::task::JoinSet::new();
        // Bind every role's listeners before declaring readiness; a role's `bind` returns the
        // future that serves until `ops.shutdown` and then drains.
        // (role binds go here, one block per role, in the order engine, dns, edge)
        if roles.engine {
            match crate::engine::bind(&ops).await {
                Ok(bound) => {
                    tracing::info!(smtp = ?bound.addrs, "engine listening");
                    tasks.spawn(bound.serving);
                    // Webmail, beside the engine, on its store (when configured).
                    match crate::webmail::bind(&ops, &bound.store).await {
                        Ok(Some(web)) => {
                            tasks.spawn(web.serving);
                        }
                        Ok(None) => {}
                        Err(e) => return bind_failed("webmail", e),
                    }
                }
                Err(e) => return bind_failed("engine", e),
            }
        }
        if roles.edge {
            match crate::edge::bind(&ops).await {
                Ok(bound) => {
                    tracing::info!(smtp = ?bound.smtp, tcp = ?bound.tcp, "edge listening");
                    tasks.spawn(bound.serving);
                }
                Err(e) => return bind_failed("edge", e),
            }
        }
        // After the edge: with both roles in one process, GeoDNS's first probe of its own silo's
        // edge finds it listening (no spurious "silo down, fail open" at start).
        if roles.dns {
            match crate::dns::bind(&ops).await {
                Ok(bound) => {
                    tasks.spawn(bound.serve());
                }
                Err(e) => return bind_failed("dns", e),
            }
        }
        tasks.spawn(ops::serve(ops.clone(), listener));
        tasks.spawn(watch(ops.clone()));
        let watchdog_token = ops.shutdown.clone();
        ops.set_ready(true);
        ops::notify::ready(&format!("serving config {}", ops.config.load().version));
        tasks.spawn(async move {
            ops::notify::watchdog(watchdog_token).await;
            Ok(())
        });
        if let Err(e) = ops::handle_signals(ops.clone()).await {
            tracing::error!(error = %e, "cannot install signal handlers");
            ops.shutdown.cancel();
        }
        match tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await {
            Ok(()) => {
                tracing::info!("drained; bye");
                Ok(())
            }
            Err(_) => {
                tracing::error!(grace = ?grace, "grace period expired: cutting the remaining sessions");
                Err(Failure::GraceExpired)
            }
        }
    })
}

/// Logs a listener that could not be bound; the failure carries it to the exit code.
fn bind_failed(role: &'static str, error: std::io::Error) -> Result<(), Failure> {
    tracing::error!(role, error = %error, "cannot bind a listener; nothing started");
    Err(Failure::Bind { role, error })
}

async fn watch(ops: Arc<Ops>) -> std::io::Result<()> {
    ops::watch_geo(ops).await;
    Ok(())
}
