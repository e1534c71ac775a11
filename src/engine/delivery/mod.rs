//! Delivery: a dispatcher starts connection workers for destinations with ready mail (per
//! destination and global caps), each worker sends messages over one reused connection, results
//! update the spool, failures become DSNs, and a down destination is watched by a cheap probe
//! that releases all its held mail the moment it answers again.
//!
//! Bounds: `delivery.max_connections` workers in all, `connections_per_destination` per
//! destination, one probe task per down destination.

pub mod client;
pub mod dsn;
mod mx;
mod outcome;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::Shared;
use crate::store::index::{Dest, now_secs};
use crate::store::spool::{Envelope, Kind, QueueId, State, Status};
use client::Client;
pub use outcome::{Outcome, apply};

/// Runs until shutdown: starts workers when there is work.
pub async fn dispatcher(shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(shared.delivery().max_connections as usize));
    let shutdown = shared.ops.shutdown.clone();
    // Workers stop taking messages at shutdown; the one in flight is finished and recorded
    // before the engine exits, or a message the server just took would be sent again.
    let workers = tokio_util::task::TaskTracker::new();
    loop {
        let cfg = shared.delivery();
        let budget = permits.available_permits() as u32;
        let snap = shared.ops.config.load_full();
        let cap = |d: &Dest| match d {
            Dest::Tenant(id) => snap
                .topology
                .tenant(id)
                .and_then(|t| t.delivery_connections)
                .unwrap_or(cfg.connections_per_destination),
            Dest::Domain(_) => cfg.connections_per_destination,
        };
        let (start, earliest) = shared.queue.plan(&cap, budget);
        drop(snap);
        for dest in start {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                shared.queue.released(&dest);
                continue;
            };
            let s = shared.clone();
            workers.spawn(async move {
                worker(&s, &dest).await;
                drop(permit);
                s.queue.released(&dest);
            });
        }
        let wait = earliest
            .map(|e| Duration::from_secs(e.saturating_sub(now_secs()).max(1)))
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        tokio::select! {
            _ = shared.queue.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    workers.close();
    workers.wait().await;
}

/// Addresses to try for a destination, in order.
/// A destination whose domain publishes a null MX (RFC 7505): it takes no mail.
struct NullMx;

async fn resolve(shared: &Shared, dest: &Dest) -> Result<Vec<SocketAddr>, NullMx> {
    // Read what is needed from the config snapshot, then let it go before any lookup.
    let (tenant_hosts, relay) = {
        let snap = shared.ops.config.load();
        let hosts: Vec<(String, u16)> = match dest {
            Dest::Tenant(id) => snap
                .topology
                .tenant(id)
                .map(|t| {
                    t.delivery
                        .iter()
                        .map(|h| (h.host.clone(), h.port))
                        .collect()
                })
                .unwrap_or_default(),
            Dest::Domain(_) => Vec::new(),
        };
        (hosts, snap.config.engine.delivery.relay.clone())
    };
    let hosts: Vec<(String, u16)> = match (dest, relay) {
        (Dest::Tenant(_), _) => tenant_hosts,
        (Dest::Domain(_), Some(r)) => r
            .parse::<crate::config::DeliveryHost>()
            .map(|h| vec![(h.host, h.port)])
            .unwrap_or_default(),
        // MX records, lowest preference first; the domain itself only without any MX.
        (Dest::Domain(domain), None) => match mx::exchanges(domain).await {
            mx::Exchanges::Hosts(hosts) => hosts.into_iter().map(|h| (h, 25)).collect(),
            mx::Exchanges::Null => return Err(NullMx),
            mx::Exchanges::Unknown(e) => {
                tracing::info!(%domain, error = %e, "MX lookup failed; will retry");
                Vec::new()
            }
        },
    };
    let mut out = Vec::new();
    for (host, port) in hosts {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            out.push(SocketAddr::new(ip, port));
        } else if let Ok(addrs) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
            && let Ok(addrs) = addrs
        {
            out.extend(addrs);
        }
    }
    Ok(out)
}

async fn connect(shared: &Shared, dest: &Dest) -> Result<Option<Client>, NullMx> {
    let cfg = shared.delivery();
    for addr in resolve(shared, dest).await? {
        let source = cfg
            .source_addresses
            .iter()
            .find(|s| s.is_ipv4() == addr.is_ipv4())
            .copied();
        match Client::connect(
            addr,
            source,
            &shared.hostname,
            cfg.connect_timeout.get(),
            cfg.command_timeout.get(),
        )
        .await
        {
            Ok(c) => return Ok(Some(c)),
            Err(e) => {
                tracing::info!(destination = %dest, address = %addr, error = %e, "delivery connection failed")
            }
        }
    }
    Ok(None)
}

async fn worker(shared: &Arc<Shared>, dest: &Dest) {
    let cfg = shared.delivery();
    // At shutdown nothing is in flight yet: stop connecting at once.
    let connected = tokio::select! {
        c = connect(shared, dest) => c,
        _ = shared.ops.shutdown.cancelled() => return,
    };
    let connected = match connected {
        Ok(c) => c,
        Err(NullMx) => return refuse_all(shared, dest).await,
    };
    let Some(mut client) = connected else {
        if shared.queue.connect_failed(dest, cfg.dead_after) {
            tracing::warn!(destination = %dest, "destination down: holding its mail and probing every {}", cfg.probe_interval);
            shared.metrics.destination_up(dest, false);
            spawn_probe(shared.clone(), dest.clone());
        }
        return;
    };
    shared.queue.connect_ok(dest);
    shared.metrics.destination_up(dest, true);
    for _ in 0..cfg.messages_per_connection {
        if shared.ops.shutdown.is_cancelled() {
            break;
        }
        if let Some(limiter) = shared.rate_limiter(dest) {
            // Per-tenant delivery rate: wait for a token, but never past shutdown.
            while limiter.try_wait().is_err() {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
                    _ = shared.ops.shutdown.cancelled() => break,
                }
            }
        }
        let Some((env, state)) = shared.queue.take(dest) else {
            break;
        };
        let message = match shared.spool.read_message(&env.id).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(id = %env.id, error = %e, "cannot read spooled message; leaving it for an operator");
                let mut st = state.clone();
                st.status = Status::Hold;
                st.error = format!("spool read failed: {e}");
                shared.queue.finish(&env.id, st, false);
                continue;
            }
        };
        let pending: Vec<usize> = state.pending().collect();
        let rcpts: Vec<&str> = pending.iter().map(|&i| env.rcpts[i].as_str()).collect();
        let data_timeout = cfg.command_timeout.get().max(Duration::from_secs(600));
        let result = client
            .transaction(&env.from, &rcpts, &message, data_timeout)
            .await;
        let broken = result.is_err();
        // A transaction that got the reply to its data is over (RFC 5321 4.1.1.4); one that
        // stopped before (DATA refused) leaves MAIL and RCPT state on the server to reset.
        let unfinished = matches!(&result, Ok(r) if r.data.is_none() && r.mail.is_positive());
        let lifetime = shared.message_lifetime();
        let outcome = apply(&env, &state, &pending, result, now_secs(), lifetime, &cfg);
        finish(shared, &env, &message, outcome).await;
        if broken {
            return;
        }
        if unfinished && client.rset().await.is_err() {
            return;
        }
    }
    client.quit().await;
}

/// Fails every message waiting for a destination that takes no mail (null MX) at once, rather
/// than holding it for days: such mail can only be DSNs to senders of that domain (tenants'
/// mail goes to their configured hosts), which are never bounced in turn.
async fn refuse_all(shared: &Arc<Shared>, dest: &Dest) {
    tracing::warn!(destination = %dest, "null MX: the domain takes no mail; failing its messages");
    let cfg = shared.delivery();
    let lifetime = shared.message_lifetime();
    while let Some((env, state)) = shared.queue.take(dest) {
        let pending: Vec<usize> = state.pending().collect();
        let outcome = apply(
            &env,
            &state,
            &pending,
            Ok(outcome::null_mx()),
            now_secs(),
            lifetime,
            &cfg,
        );
        finish(shared, &env, &[], outcome).await;
    }
}

/// Persists an outcome, queues DSNs, updates metrics and the index.
pub async fn finish(shared: &Arc<Shared>, env: &Arc<Envelope>, message: &[u8], o: Outcome) {
    let tenant = env.tenant.as_str();
    if !o.delivered.is_empty() {
        shared.metrics.delivered(
            tenant,
            o.delivered.len(),
            now_secs().saturating_sub(env.received),
        );
    }
    if !o.failures.is_empty() {
        shared.metrics.bounced(tenant, o.failures.len());
        if !env.from.is_empty() && env.kind == Kind::Message {
            let failures: Vec<dsn::Failure<'_>> = o
                .failures
                .iter()
                .map(|(i, text, remote)| dsn::Failure {
                    rcpt: &env.rcpts[*i],
                    diagnostic: text,
                    remote: *remote,
                })
                .collect();
            let body = dsn::build(&shared.hostname, env, message, &failures, now_secs());
            if let Err(e) = queue_dsn(shared, env, body).await {
                tracing::error!(id = %env.id, error = %e, "cannot queue DSN; keeping the message on hold");
                let mut st = o.state.clone();
                st.status = Status::Hold;
                let _ = shared.spool.write_state(&env.id, &st).await;
                shared.queue.finish(&env.id, st, false);
                return;
            }
        } else {
            tracing::info!(id = %env.id, "permanent failure for a null-sender or DSN message: no DSN (no loops)");
        }
    }
    if o.done {
        let _ = shared.spool.retire(&env.id).await;
        shared.queue.finish(&env.id, o.state, true);
        tracing::info!(id = %env.id, tenant, delivered = o.delivered.len(), failed = o.failures.len(), "message done");
    } else {
        shared.metrics.deferred(tenant);
        if let Err(e) = shared.spool.write_state(&env.id, &o.state).await {
            tracing::error!(id = %env.id, error = %e, "cannot persist delivery state (will retry from the last saved state)");
        }
        tracing::info!(id = %env.id, tenant, attempts = o.state.attempts, error = %o.state.error, "delivery deferred");
        shared.queue.finish(&env.id, o.state, false);
    }
}

/// Spools a DSN to the original sender.
async fn queue_dsn(
    shared: &Arc<Shared>,
    original: &Envelope,
    body: Vec<u8>,
) -> std::io::Result<()> {
    let snap = shared.ops.config.load();
    let dest = match snap.topology.tenant_for_address(&original.from) {
        Some(t) => Dest::Tenant(t.id.0.clone()),
        None => Dest::Domain(crate::smtp::domain_of(&original.from).unwrap_or_default()),
    };
    let env = Envelope {
        id: QueueId::generate(),
        received: now_secs(),
        tenant: original.tenant.clone(),
        session: original.session.clone(),
        client: original.client,
        helo: shared.hostname.clone(),
        from: String::new(),
        rcpts: vec![original.from.clone()],
        status: Status::Queued,
        verdict: format!("dsn for {}", original.id),
        subject: "Undelivered Mail Returned to Sender".into(),
        header_from: format!("MAILER-DAEMON@{}", shared.hostname),
        kind: Kind::Dsn,
        size: body.len() as u64,
    };
    shared.spool.store(&env, &body).await?;
    let state = State::initial(&env);
    shared.queue.insert(Arc::new(env), state, dest);
    Ok(())
}

fn spawn_probe(shared: Arc<Shared>, dest: Dest) {
    if !shared.queue.claim_probe(&dest) {
        return;
    }
    tokio::spawn(async move {
        loop {
            let interval = shared.delivery().probe_interval.get();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shared.ops.shutdown.cancelled() => return,
            }
            let addrs = resolve(&shared, &dest).await.unwrap_or_default();
            let timeout = shared
                .delivery()
                .connect_timeout
                .get()
                .min(Duration::from_secs(5));
            let sources = shared.delivery().source_addresses.clone();
            for a in addrs {
                let source = sources.iter().find(|s| s.is_ipv4() == a.is_ipv4()).copied();
                if client::probe(a, source, timeout).await {
                    let n = shared.queue.dest_up(&dest);
                    shared.metrics.destination_up(&dest, true);
                    tracing::info!(destination = %dest, address = %a, held = n, "destination is back: delivering held mail now");
                    return;
                }
            }
        }
    });
}
