//! Delivery: a dispatcher starts connection workers for destinations with ready mail (per
//! destination and global caps), each worker sends messages over one reused connection, results
//! update the spool, failures become DSNs, and a down destination is watched by a cheap probe
//! that releases all its held mail the moment it answers again.
//!
//! Delivery works with [`Delivery`]: the store (it takes messages from it and settles them
//! there), the config and metrics — not the engine's whole shared state.
//!
//! How a destination's connections use TLS is its plan (`tls.rs`: a tenant's `tls`, `tls_ca`,
//! `tls_pin`, or MTA-STS for mail by MX, `mta_sts.rs`); `connect.rs` finds the hosts and gets a
//! session that meets the plan, or the reason none does, which defers the mail (never in clear).
//!
//! Bounds: `delivery.max_connections` workers in all, `connections_per_destination` per
//! destination, one probe task per down destination; one rate limiter per tenant with a
//! `delivery_rate`.

pub mod client;
mod connect;
pub mod dsn;
pub mod mta_sts;
mod mx;
mod outcome;
pub mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::EngineMetrics;
use crate::config::DeliveryConfig;
use crate::ops::Ops;
use crate::snapshot::Snapshot;
use crate::store::{Dest, Envelope, InFlight, Kind, QueueId, Status, Store, now_secs};
use client::ClientError;
use connect::Connected;
pub use outcome::{Outcome, apply};

/// What delivery works with.
pub struct Delivery {
    pub store: Store,
    ops: Arc<Ops>,
    metrics: EngineMetrics,
    /// Our name in EHLO and in DSNs.
    hostname: String,
    /// Per-tenant delivery rate limiters (tenant id -> (rate, limiter)); bounded by the tenants.
    limiters: Mutex<HashMap<String, (u32, Arc<ratelimit::Ratelimiter>)>>,
    /// Each tenant's TLS plan for the config in force.
    plans: connect::Plans,
    /// MTA-STS policies of domains mail goes to by MX.
    mta_sts: mta_sts::MtaSts,
}

impl Delivery {
    pub fn new(store: Store, ops: Arc<Ops>, metrics: EngineMetrics, hostname: String) -> Delivery {
        Delivery {
            store,
            ops,
            metrics,
            hostname,
            limiters: Mutex::new(HashMap::new()),
            plans: Default::default(),
            mta_sts: connect::mta_sts(),
        }
    }

    fn config(&self) -> DeliveryConfig {
        self.ops.config.load().config.engine.delivery.clone()
    }

    /// How long a message may wait for delivery before it expires (`engine.message_lifetime`).
    fn message_lifetime(&self) -> Duration {
        self.ops.config.load().config.engine.message_lifetime.get()
    }

    /// The delivery rate limiter of a tenant destination with `delivery_rate` set (rebuilt when
    /// the rate changes).
    fn rate_limiter(&self, dest: &Dest) -> Option<Arc<ratelimit::Ratelimiter>> {
        let Dest::Tenant(id) = dest else {
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
}

/// Where a message goes: a received message to its tenant's servers; a DSN to the tenant of
/// its recipient (the original sender) when there is one, else to that address's domain.
pub fn route(snap: &Snapshot, env: &Envelope) -> Dest {
    match env.kind {
        Kind::Message => Dest::Tenant(env.tenant.clone()),
        Kind::Dsn => address_dest(snap, &env.rcpts[0]),
    }
}

fn address_dest(snap: &Snapshot, address: &str) -> Dest {
    match snap.topology.tenant_for_address(address) {
        Some(t) => Dest::Tenant(t.id.0.clone()),
        None => Dest::Domain(crate::smtp::domain_of(address).unwrap_or_default()),
    }
}

/// Runs until shutdown: starts workers when there is work.
pub async fn dispatcher(shared: Arc<Delivery>) {
    let permits = Arc::new(Semaphore::new(shared.config().max_connections as usize));
    let shutdown = shared.ops.shutdown.clone();
    // Workers stop taking messages at shutdown; the one in flight is finished and recorded
    // before the engine exits, or a message the server just took would be sent again.
    let workers = tokio_util::task::TaskTracker::new();
    loop {
        let cfg = shared.config();
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
        let (start, earliest) = shared.store.plan(&cap, budget);
        drop(snap);
        for dest in start {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                shared.store.released(&dest);
                continue;
            };
            let s = shared.clone();
            workers.spawn(async move {
                worker(&s, &dest).await;
                drop(permit);
                s.store.released(&dest);
            });
        }
        let wait = earliest
            .map(|e| Duration::from_secs(e.saturating_sub(now_secs()).max(1)))
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        tokio::select! {
            _ = shared.store.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    workers.close();
    workers.wait().await;
}

/// A session with the first host of `dest` that answers and meets its TLS plan, opened
/// exactly as a delivery opens one (the same hosts in order, egress source address, STARTTLS
/// as the tenant's `tls` says, timeouts): what the recipient call-ahead (`engine::verify`)
/// talks to, so a tenant that requires TLS never sees its recipients' addresses in clear.
/// `None` when no host gave one.
pub async fn open_session(shared: &Delivery, dest: &Dest) -> Option<client::Client> {
    match connect::connect(shared, dest).await {
        Connected::Session(c) => Some(c),
        Connected::Unreachable | Connected::Refused(_) | Connected::NullMx => None,
    }
}

async fn worker(shared: &Arc<Delivery>, dest: &Dest) {
    let cfg = shared.config();
    // At shutdown nothing is in flight yet: stop connecting at once.
    let connected = tokio::select! {
        c = connect::connect(shared, dest) => c,
        _ = shared.ops.shutdown.cancelled() => return,
    };
    let mut client = match connected {
        Connected::Session(c) => c,
        Connected::NullMx => return refuse_all(shared, dest).await,
        Connected::Unreachable | Connected::Refused(_) => {
            let down = shared.store.connect_failed(dest, cfg.dead_after);
            if let Connected::Refused(why) = connected {
                defer_for_tls(shared, dest, &why).await;
            }
            if down {
                tracing::warn!(destination = %dest, "destination down: holding its mail and probing every {}", cfg.probe_interval);
                shared.metrics.destination_up(dest, false);
                spawn_probe(shared.clone(), dest.clone());
            }
            return;
        }
    };
    let tls = tls::describe(client.tls.as_ref());
    let tls_result = tls::result_label(client.tls.as_ref());
    shared.store.connect_ok(dest);
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
        let Some(msg) = shared.store.take(dest) else {
            break;
        };
        let (env, state) = (msg.envelope().clone(), msg.progress().clone());
        let message = match shared.store.read(&env.id).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(id = %env.id, error = %e, "cannot read spooled message; suspending it for an operator");
                let why = format!("spool read failed: {e}");
                if let Err(e) = msg.set_aside(state, why).await {
                    tracing::warn!(id = %env.id, error = %e, "stopping before the message was set aside");
                }
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
        shared.metrics.delivery_tls(&env.tenant, tls_result);
        let outcome = apply(&env, &state, &pending, result, now_secs(), lifetime, &cfg);
        finish(shared, msg, &message, outcome, &tls).await;
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
async fn refuse_all(shared: &Arc<Delivery>, dest: &Dest) {
    tracing::warn!(destination = %dest, "null MX: the domain takes no mail; failing its messages");
    let cfg = shared.config();
    let lifetime = shared.message_lifetime();
    while let Some(msg) = shared.store.take(dest) {
        let (env, state) = (msg.envelope(), msg.progress());
        let pending: Vec<usize> = state.pending().collect();
        let outcome = apply(
            env,
            state,
            &pending,
            Ok(outcome::null_mx()),
            now_secs(),
            lifetime,
            &cfg,
        );
        finish(shared, msg, &[], outcome, "none").await;
    }
}

/// Defers the mail waiting for a destination whose servers answer but cannot meet its TLS
/// plan (at most `messages_per_connection` at a time, as one connection would have taken):
/// each message records `why` (`queue show`) and waits for its next try; nothing was sent.
async fn defer_for_tls(shared: &Arc<Delivery>, dest: &Dest, why: &str) {
    let cfg = shared.config();
    let lifetime = shared.message_lifetime();
    for _ in 0..cfg.messages_per_connection {
        let Some(msg) = shared.store.take(dest) else {
            break;
        };
        let (env, state) = (msg.envelope().clone(), msg.progress().clone());
        let pending: Vec<usize> = state.pending().collect();
        shared.metrics.delivery_tls(&env.tenant, "failed_required");
        let err = Err(ClientError::Policy(why.to_owned()));
        let outcome = apply(&env, &state, &pending, err, now_secs(), lifetime, &cfg);
        finish(shared, msg, &[], outcome, "refused").await;
    }
}

/// Records an outcome in the store (DSNs first), and counts it. `tls` describes the
/// connection for the log line (`tls::describe`).
async fn finish(shared: &Arc<Delivery>, msg: InFlight, message: &[u8], o: Outcome, tls: &str) {
    let env = msg.envelope().clone();
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
            let body = dsn::build(&shared.hostname, &env, message, &failures, now_secs());
            if let Err(e) = queue_dsn(shared, &env, body).await {
                tracing::error!(id = %env.id, error = %e, "cannot queue DSN; suspending the message for an operator");
                let why = format!("cannot queue a DSN: {e}");
                if let Err(e) = msg.set_aside(o.state, why).await {
                    tracing::warn!(id = %env.id, error = %e, "stopping before the message was set aside");
                }
                return;
            }
        } else {
            tracing::info!(id = %env.id, "permanent failure for a null-sender or DSN message: no DSN (no loops)");
        }
    }
    let (done, attempts, error) = (o.done, o.state.attempts, o.state.error.clone());
    if let Err(e) = msg.settle(o.state).await {
        tracing::warn!(id = %env.id, error = %e, "stopping before the outcome was written; the message stays as last written");
        return;
    }
    if done {
        tracing::info!(id = %env.id, tenant, delivered = o.delivered.len(), failed = o.failures.len(), tls, "message done");
    } else {
        shared.metrics.deferred(tenant);
        tracing::info!(id = %env.id, tenant, attempts, error = %error, tls, "delivery deferred");
    }
}

/// Spools a DSN to the original sender.
async fn queue_dsn(
    shared: &Arc<Delivery>,
    original: &Envelope,
    body: Vec<u8>,
) -> std::io::Result<()> {
    let dest = address_dest(&shared.ops.config.load(), &original.from);
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
    shared
        .store
        .accept_child(env, &body, dest, &original.id)
        .await?;
    Ok(())
}

fn spawn_probe(shared: Arc<Delivery>, dest: Dest) {
    if !shared.store.claim_probe(&dest) {
        return;
    }
    tokio::spawn(async move {
        loop {
            let interval = shared.config().probe_interval.get();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shared.ops.shutdown.cancelled() => return,
            }
            if let Some(a) = connect::probe(&shared, &dest).await {
                let n = shared.store.dest_up(&dest);
                shared.metrics.destination_up(&dest, true);
                tracing::info!(destination = %dest, address = %a, held = n, "destination is back: delivering held mail now");
                return;
            }
        }
    });
}
