//! Recipient verification: an engine answers a tenant's RCPT with `250` only for a recipient
//! the tenant's server will take, so it never accepts mail it would bounce later to a
//! (usually forged) sender. Who is verified: tenants with a `recipients_file` or
//! `verify = "call-ahead"`. Tenants with only the inline `recipients` list are judged by the
//! shared session (`smtp::server`, at the edge already); the others are judged here.
//!
//! # Where: the engine, not the edge
//!
//! The edge sees RCPT first, but the check needs what only engines have: the egress addresses
//! tenants' firewalls let in (a probe from an edge would be refused), the destination state
//! that says a tenant's server is down (delivery's), and one cache beside the mail it decides
//! about. The edge passes these tenants' RCPTs to the engine and relays its answer as it came
//! (`550 5.1.1` reaches the sender at RCPT time, through the edge), taking a refused
//! recipient back out of its own transaction. Recipient files are read by engines only.
//!
//! # The rule, in order
//!
//! 1. In `recipients` or `recipients_file` (address, local part of `recipients`, or `@domain`
//!    of the file): `250` (`listed`).
//! 2. A file configured but never read (missing or broken since start): no call-ahead →
//!    `451 4.4.3`; with call-ahead → go on at 4.
//! 3. No call-ahead: `550 5.1.1` (`unlisted`).
//! 4. Cache: a known answer younger than `positive_refresh` → `250` (`accepted`); an unknown
//!    answer younger than `negative_ttl` → `550 5.1.1` (`rejected`).
//! 5. The tenant's destination is marked down by delivery (its mail is held): a known answer
//!    younger than `positive_ttl` → `250`, the message is held (`accepted_while_down`); else
//!    `451 4.4.3` (`tempfail`). No probe is made to a server delivery already finds down.
//! 6. Probe the server (`probe.rs`): 2xx → `250`, remembered known; 5xx → `550 5.1.1`,
//!    remembered unknown; no answer within `engine.verify.timeout` (no connection, timeout,
//!    4xx, MAIL refused) → as in 5: a known answer younger than `positive_ttl` → `250`
//!    (`accepted_while_down`), else `451 4.4.3`.
//!
//! So while a tenant's server is down, every recipient it accepted in the last `positive_ttl`
//! (31 days by default) still gets mail, held for it; one never seen gets a tempfail, and its
//! sender retries — never a `250` that would bounce later.
//!
//! Bounds: the cache (`cache.rs`, `engine.verify.cache_size` per set), probe sessions
//! (`probe.rs`), one list per tenant with a file (`list.rs`).

mod cache;
pub mod list;
pub mod metrics;
pub mod probe;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::RecipientVerify;
use crate::ops::Ops;
use crate::smtp::{Reply, replies};
use crate::snapshot::Snapshot;
use crate::store::{Dest, Store};
use crate::topology::Tenant;
use cache::{Cache, Cached, Ttls};
use metrics::{VerifyMetrics, result};
use probe::{Probe, Prober};

/// What verification says about one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `250`.
    Accept,
    /// `550 5.1.1`.
    Unknown,
    /// `451 4.4.3`: ask again later.
    TempFail,
}

impl Verdict {
    pub fn reply(self) -> Reply {
        match self {
            Verdict::Accept => replies::RECIPIENT_OK,
            Verdict::Unknown => replies::USER_UNKNOWN,
            Verdict::TempFail => replies::RECIPIENT_UNVERIFIED,
        }
    }
}

/// The engine's recipient verification: lists, cache, probes.
pub struct Verifier {
    ops: Arc<Ops>,
    store: Store,
    lists: list::Lists,
    cache: Mutex<Cache>,
    prober: Prober,
    metrics: VerifyMetrics,
}

impl Verifier {
    /// Reads every tenant's recipients file (the config was checked: they parsed a moment ago).
    pub fn new(
        ops: Arc<Ops>,
        store: Store,
        delivery: Arc<crate::engine::delivery::Delivery>,
    ) -> Verifier {
        let snap = ops.config.load_full();
        let cap = snap.config.engine.verify.cache_size as usize;
        let metrics = VerifyMetrics::new(&ops.metrics);
        let v = Verifier {
            ops,
            store,
            lists: list::Lists::default(),
            cache: Mutex::new(Cache::new(cap)),
            prober: Prober::new(delivery),
            metrics,
        };
        v.scan_files(&snap);
        v
    }

    fn count(&self, tenant: &str, result: &str, verdict: Verdict) -> Verdict {
        self.metrics.verified(tenant, result);
        verdict
    }

    /// Judges `address`, a recipient of `tenant` the shared session let through.
    pub async fn check(&self, snap: &Snapshot, tenant: &Tenant, address: &str) -> Verdict {
        if !tenant.engine_verifies() {
            return Verdict::Accept;
        }
        let id = tenant.id.0.as_str();
        if tenant.listed(address) {
            return self.count(id, result::LISTED, Verdict::Accept);
        }
        if let Some(path) = &tenant.recipients_file {
            match self.lists.get(id, path) {
                Some(list) if list.contains(address) => {
                    return self.count(id, result::LISTED, Verdict::Accept);
                }
                Some(_) => {}
                None if tenant.verify == RecipientVerify::CallAhead => {}
                None => {
                    tracing::warn!(tenant = id, path = %path.display(), "recipients file not read: 451 until it is");
                    return self.count(id, result::TEMPFAIL, Verdict::TempFail);
                }
            }
        }
        if tenant.verify != RecipientVerify::CallAhead {
            return self.count(id, result::UNLISTED, Verdict::Unknown);
        }
        self.call_ahead(snap, id, address).await
    }

    async fn call_ahead(&self, snap: &Snapshot, id: &str, address: &str) -> Verdict {
        let cfg = &snap.config.engine.verify;
        let ttl = Ttls {
            positive: cfg.positive_ttl.get(),
            refresh: cfg.positive_refresh.get(),
            negative: cfg.negative_ttl.get(),
        };
        let now = std::time::Instant::now();
        let cached = {
            let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            let evicted = c.resize(cfg.cache_size as usize);
            self.metrics.cache_evictions.inc_by(evicted as u64);
            c.lookup(id, address, now, &ttl)
        };
        let (label, verdict) = match cached {
            Cached::Known => ("hit", Some((result::ACCEPTED, Verdict::Accept))),
            Cached::Unknown => ("hit", Some((result::REJECTED, Verdict::Unknown))),
            Cached::KnownStale => ("refresh", None),
            Cached::Nothing => ("miss", None),
        };
        self.metrics.cache(id, label);
        if let Some((r, v)) = verdict {
            return self.count(id, r, v);
        }
        let known = cached == Cached::KnownStale;
        let no_answer = |why: &str| {
            if known {
                tracing::info!(
                    tenant = id,
                    rcpt = address,
                    why,
                    "tenant's server gives no answer: a known recipient, accepted (its mail is held)"
                );
                self.count(id, result::ACCEPTED_WHILE_DOWN, Verdict::Accept)
            } else {
                tracing::info!(
                    tenant = id,
                    rcpt = address,
                    why,
                    "tenant's server gives no answer and the recipient is not known: 451 4.4.3"
                );
                self.count(id, result::TEMPFAIL, Verdict::TempFail)
            }
        };
        if self.store.dest_down(&Dest::Tenant(id.to_owned())) {
            return no_answer("destination down");
        }
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + cfg.timeout.get();
        let probe = self.prober.probe(id, address, &cfg.sender, deadline).await;
        let took = started.elapsed().as_secs_f64();
        let known_now = match &probe {
            Probe::Accepted => true,
            Probe::Refused(_) => false,
            Probe::Unanswered(why) => {
                self.metrics.probe("unanswered", took);
                return no_answer(why);
            }
        };
        self.metrics
            .probe(if known_now { "accepted" } else { "refused" }, took);
        let evicted = {
            let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            let n = c.record(id, address, known_now, std::time::Instant::now());
            let (k, u) = c.len();
            for (answer, held) in [("known", k), ("unknown", u)] {
                self.metrics
                    .cache_entries
                    .with_label_values(&[answer])
                    .set(held as i64);
            }
            n
        };
        self.metrics.cache_evictions.inc_by(evicted as u64);
        if let Probe::Refused(reply) = &probe {
            tracing::info!(tenant = id, rcpt = address, server = %reply, "tenant's server refused the recipient: 550 5.1.1");
            return self.count(id, result::REJECTED, Verdict::Unknown);
        }
        self.count(id, result::ACCEPTED, Verdict::Accept)
    }

    /// Looks at every recipients file of `snap`, reads the changed ones, logs and counts.
    fn scan_files(&self, snap: &Snapshot) {
        for change in self.lists.scan(&snap.topology) {
            match change {
                list::Change::Read(tenant, n) => {
                    tracing::info!(
                        tenant,
                        entries = n,
                        "recipients file read: new list in force"
                    );
                    self.metrics.file_reload(&tenant, "ok");
                    self.metrics
                        .file_entries
                        .with_label_values(&[&tenant])
                        .set(n as i64);
                }
                list::Change::Failed(tenant, why) => {
                    tracing::error!(tenant, error = %why, "recipients file reload failed; keeping the list last read");
                    self.metrics.file_reload(&tenant, "error");
                }
            }
        }
    }
}

/// Keeps recipient files current (every `engine.verify.reload_interval`, and at once after a
/// config reload) and closes idle probe sessions, until shutdown.
pub async fn watch(v: Arc<Verifier>) {
    const TICK: Duration = Duration::from_millis(500);
    let mut version = v.ops.config.load().version.clone();
    let mut last_scan = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = v.ops.shutdown.cancelled() => {
                v.prober.reap(true);
                return;
            }
        }
        v.prober.reap(false);
        let snap = v.ops.config.load_full();
        let interval = snap.config.engine.verify.reload_interval.get();
        if snap.version == version && last_scan.elapsed() < interval {
            continue;
        }
        version = snap.version.clone();
        last_scan = tokio::time::Instant::now();
        let v2 = v.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || v2.scan_files(&snap)).await {
            tracing::error!(error = %e, "recipients file scan failed");
        }
    }
}
