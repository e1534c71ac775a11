//! Where a destination's mail goes and how to get a session there: the hosts to try (a
//! tenant's `delivery`, the relay, or MX records filtered by MTA-STS), the TLS plan their
//! connections must meet, and the connection itself, trying hosts in order.
//!
//! A host whose connection cannot meet the plan (no STARTTLS under `required`, a certificate
//! that does not verify, a pin that does not match) is passed over like one that does not
//! answer, and its reason is kept: when no host gives a session, the worker defers the
//! destination's mail with it ([`Connected::Refused`]) rather than leave it unexplained.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::{Client, ClientError, Target};
use super::mta_sts::MtaSts;
use super::tls::Plan;
use super::{Delivery, mx};
use crate::snapshot::Snapshot;
use crate::store::Dest;

/// What [`resolve`] found.
pub struct Route {
    /// (host name, address) in the order to try; the name is what certificates must match.
    pub targets: Vec<(String, SocketAddr)>,
    pub plan: Arc<Plan>,
    /// Why there is nothing to try although the domain has MX hosts (MTA-STS allows none).
    pub refused: Option<String>,
}

/// A destination whose domain publishes a null MX (RFC 7505): it takes no mail.
pub struct NullMx;

/// The outcome of [`connect`].
pub enum Connected {
    Session(Client),
    /// No host answered.
    Unreachable,
    /// Hosts answered, but none could meet the TLS plan (or MTA-STS allowed none): the reason.
    Refused(String),
    NullMx,
}

/// Each tenant's TLS plan, built once per config snapshot (a reload rebuilds it, re-reading
/// `tls_ca`). Bounded by the tenants.
#[derive(Default)]
pub struct Plans(Mutex<HashMap<String, Built>>);

/// A plan and the snapshot it was built from.
type Built = (Arc<Snapshot>, Arc<Plan>);

impl Plans {
    fn tenant(&self, snap: &Arc<Snapshot>, id: &str) -> Arc<Plan> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, p)) = g.get(id)
            && Arc::ptr_eq(s, snap)
        {
            return p.clone();
        }
        let plan = Arc::new(
            snap.topology
                .tenant(id)
                .map(|t| Plan::for_tenant(&t.tls))
                .unwrap_or_else(Plan::opportunistic),
        );
        g.insert(id.to_owned(), (snap.clone(), plan.clone()));
        plan
    }
}

/// The hosts of a destination and the TLS plan for them.
pub async fn resolve(shared: &Delivery, dest: &Dest) -> Result<Route, NullMx> {
    // Read what is needed from the config snapshot, then let it go before any lookup.
    let (hosts, relay, plan) = {
        let snap = shared.ops.config.load_full();
        match dest {
            Dest::Tenant(id) => {
                let hosts: Vec<(String, u16)> = snap
                    .topology
                    .tenant(id)
                    .map(|t| {
                        t.delivery
                            .iter()
                            .map(|h| (h.host.clone(), h.port))
                            .collect()
                    })
                    .unwrap_or_default();
                (hosts, None, Some(shared.plans.tenant(&snap, id)))
            }
            Dest::Domain(_) => (Vec::new(), snap.config.engine.delivery.relay.clone(), None),
        }
    };
    let (hosts, plan, refused) = match (dest, plan, relay) {
        (Dest::Tenant(_), Some(plan), _) => (hosts, plan, None),
        (Dest::Domain(_), _, Some(r)) => (
            r.parse::<crate::config::DeliveryHost>()
                .map(|h| vec![(h.host, h.port)])
                .unwrap_or_default(),
            Arc::new(Plan::opportunistic()),
            None,
        ),
        // MX records, lowest preference first; the domain itself only without any MX.
        (Dest::Domain(domain), _, _) => match mx::exchanges(domain).await {
            mx::Exchanges::Hosts(hosts) => {
                let policy = shared.mta_sts.policy(domain).await;
                match shared.mta_sts.plan(policy.as_ref(), hosts) {
                    Ok((plan, allowed)) => (
                        allowed.into_iter().map(|h| (h, 25)).collect(),
                        Arc::new(plan),
                        None,
                    ),
                    Err(why) => (Vec::new(), Arc::new(Plan::mta_sts_enforce()), Some(why)),
                }
            }
            mx::Exchanges::Null => return Err(NullMx),
            mx::Exchanges::Unknown(e) => {
                tracing::info!(%domain, error = %e, "MX lookup failed; will retry");
                (Vec::new(), Arc::new(Plan::opportunistic()), None)
            }
        },
        (Dest::Tenant(_), None, _) => (Vec::new(), Arc::new(Plan::opportunistic()), None),
    };
    let mut targets = Vec::new();
    for (host, port) in hosts {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            targets.push((host, SocketAddr::new(ip, port)));
        } else if let Ok(addrs) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
            && let Ok(addrs) = addrs
        {
            targets.extend(addrs.map(|a| (host.clone(), a)));
        }
    }
    Ok(Route {
        targets,
        plan,
        refused,
    })
}

/// A session with the first host of `dest` that answers and meets the TLS plan.
pub async fn connect(shared: &Delivery, dest: &Dest) -> Connected {
    let cfg = shared.config();
    let route = match resolve(shared, dest).await {
        Ok(r) => r,
        Err(NullMx) => return Connected::NullMx,
    };
    let mut refused = route.refused;
    for (host, addr) in &route.targets {
        let source = crate::net::source_for(&cfg.source_addresses, *addr);
        let target = Target {
            addr: *addr,
            host,
            plan: &route.plan,
        };
        match Client::connect(
            &target,
            source,
            &shared.hostname,
            cfg.connect_timeout.get(),
            cfg.command_timeout.get(),
        )
        .await
        {
            Ok(c) => {
                if let Some(why) = route.plan.would_refuse(c.tls.as_ref()) {
                    shared.metrics.mta_sts("testing", "would_fail");
                    tracing::warn!(destination = %dest, %host, address = %addr, %why, "MTA-STS testing: enforce would not deliver over this connection; delivering (report only)");
                }
                return Connected::Session(c);
            }
            Err(e @ ClientError::Tls { .. }) => {
                tracing::warn!(destination = %dest, %host, address = %addr, error = %e, "delivery connection does not meet the TLS policy");
                refused = Some(e.to_string());
            }
            Err(e) => {
                tracing::info!(destination = %dest, address = %addr, error = %e, "delivery connection failed")
            }
        }
    }
    if refused.is_some() && route.plan.source.starts_with("MTA-STS") {
        shared.metrics.mta_sts("enforce", "failed");
    }
    match refused {
        Some(why) => Connected::Refused(why),
        None => Connected::Unreachable,
    }
}

/// Is a down destination back? Connect, greet and QUIT (`client::probe`) for a plan without
/// a TLS requirement; a whole STARTTLS and certificate check for one with it, or a server
/// still showing a bad certificate would come "up", fail its mail at once, and go down again.
pub async fn probe(shared: &Delivery, dest: &Dest) -> Option<SocketAddr> {
    let route = resolve(shared, dest).await.ok()?;
    let cfg = shared.config();
    let timeout = cfg.connect_timeout.get().min(Duration::from_secs(5));
    for (host, a) in &route.targets {
        let source = crate::net::source_for(&cfg.source_addresses, *a);
        let up = if route.plan.requires_tls() {
            let target = Target {
                addr: *a,
                host,
                plan: &route.plan,
            };
            match Client::connect(&target, source, &shared.hostname, timeout, timeout).await {
                Ok(c) => {
                    c.quit().await;
                    true
                }
                Err(_) => false,
            }
        } else {
            super::client::probe(*a, source, timeout).await
        };
        if up {
            return Some(*a);
        }
    }
    None
}

/// The MTA-STS state of a [`Delivery`]: policies fetched over HTTPS, checked against the
/// system's trust anchors.
pub fn mta_sts() -> MtaSts {
    MtaSts::new(super::mta_sts::Fetcher::system())
}
