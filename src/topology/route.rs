//! Ordering clusters for a tenant and picking an engine inside one (see the module docs of
//! `topology` for the rules). Everything here is a pure function of the topology, the load view
//! and, for the engine pick, a random source that tests can seed.

use std::cmp::Ordering;
use std::fmt;

use super::{ClusterIdx, EngineIdx, SiloIdx, Tenant, Topology};
use crate::config::{Failover, Placement};
use crate::geo::Point;

/// Live state of one engine, as the edge's health checks and load reports see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLoad {
    pub healthy: bool,
    /// Sessions this node currently has open to the engine.
    pub outstanding: u32,
}

/// Health and load inputs to routing.
pub trait LoadView {
    fn engine(&self, e: EngineIdx) -> EngineLoad;
}

/// Every engine healthy and idle: what `maildistiller route` assumes without live data.
pub struct Unloaded;

impl LoadView for Unloaded {
    fn engine(&self, _: EngineIdx) -> EngineLoad {
        EngineLoad {
            healthy: true,
            outstanding: 0,
        }
    }
}

/// Why a cluster is where it is in the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// In the tenant's n-th allowed region (0 = first choice).
    Region(usize),
    /// Tenant without regions: any cluster, nearest to the client.
    Nearest,
    /// Outside the tenant's regions, allowed by `failover = "any"`.
    Failover,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tier::Region(n) => write!(f, "allowed region #{}", n + 1),
            // (with `placement = nearest-*` every allowed region is #1)
            Tier::Nearest => f.write_str("any region (tenant has none), nearest to client"),
            Tier::Failover => f.write_str("outside tenant regions (failover = any)"),
        }
    }
}

/// One cluster in a routing decision, with the facts that ordered it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub cluster: ClusterIdx,
    pub tier: Tier,
    /// Healthy, non-drained engines.
    pub available_engines: usize,
    pub outstanding: u32,
    /// Sum of `max_connections` over available engines.
    pub capacity: u32,
    /// From the receiving silo (or the client, for tenants without regions); `None` if unknown.
    pub distance_km: Option<f64>,
}

impl Candidate {
    /// Some engine can take a new session.
    pub fn usable(&self) -> bool {
        self.available_engines > 0
    }

    /// Every available engine is at its connection limit: spill over to the next cluster.
    pub fn saturated(&self) -> bool {
        self.outstanding >= self.capacity
    }
}

/// The ordered candidates, plus what was left out and why.
#[derive(Debug, Clone)]
pub struct Route {
    pub candidates: Vec<Candidate>,
    pub excluded: Vec<(ClusterIdx, &'static str)>,
}

impl Route {
    /// Clusters worth trying, in order (unusable ones sort last and are skipped here).
    pub fn usable(&self) -> impl Iterator<Item = &Candidate> {
        self.candidates.iter().filter(|c| c.usable())
    }
}

impl Topology {
    /// Orders the clusters that may take mail for `tenant` arriving at `edge_silo` from a client
    /// at `client` (if known).
    pub fn route(
        &self,
        tenant: &Tenant,
        edge_silo: SiloIdx,
        client: Option<Point>,
        view: &dyn LoadView,
    ) -> Route {
        let edge_point = self.silos.get(edge_silo.0).map(|s| s.point);
        let mut candidates = Vec::new();
        let mut excluded = Vec::new();
        for (i, cl) in self.clusters.iter().enumerate() {
            let cidx = ClusterIdx(i);
            let rank = tenant.regions.iter().position(|r| *r == cl.region);
            let (tier, origin) = match (rank, tenant.regions.is_empty(), tenant.failover) {
                // Multi-office tenants: every allowed region ranks the same, nearest first.
                (Some(_), _, _) if tenant.placement == Placement::NearestToSilo => {
                    (Tier::Region(0), edge_point)
                }
                (Some(_), _, _) if tenant.placement == Placement::NearestToSender => {
                    (Tier::Region(0), client.or(edge_point))
                }
                (Some(n), _, _) => (Tier::Region(n), edge_point),
                (None, true, _) => (Tier::Nearest, client.or(edge_point)),
                (None, false, Failover::Any) => (Tier::Failover, edge_point),
                (None, false, Failover::RegionOnly) => {
                    excluded.push((cidx, "outside the tenant's regions (region-only)"));
                    continue;
                }
            };
            let silo = &self.silos[cl.silo.0];
            if silo.drain {
                excluded.push((cidx, "silo drained by operator"));
                continue;
            }
            let (mut available, mut outstanding, mut capacity) = (0, 0u32, 0u32);
            for &e in &cl.engines {
                let eng = &self.engines[e.0];
                let load = view.engine(e);
                if load.healthy && !eng.drain {
                    available += 1;
                    outstanding = outstanding.saturating_add(load.outstanding);
                    capacity = capacity.saturating_add(eng.max_connections);
                }
            }
            candidates.push(Candidate {
                cluster: cidx,
                tier,
                available_engines: available,
                outstanding,
                capacity,
                distance_km: origin.map(|o| o.distance_km(silo.point)),
            });
        }
        candidates.sort_by(|a, b| {
            b.usable()
                .cmp(&a.usable())
                .then(a.tier.cmp(&b.tier))
                .then(a.saturated().cmp(&b.saturated()))
                .then(cmp_distance(a.distance_km, b.distance_km))
                .then(a.cluster.cmp(&b.cluster))
        });
        Route {
            candidates,
            excluded,
        }
    }

    /// Engines of `cluster` that can take a new session: healthy, not drained, under their
    /// limit, and not in `skip` (engines already tried for this client).
    pub fn eligible_engines(
        &self,
        cluster: ClusterIdx,
        view: &dyn LoadView,
        skip: &[EngineIdx],
    ) -> Vec<(EngineIdx, EngineLoad)> {
        self.clusters[cluster.0]
            .engines
            .iter()
            .filter(|e| !skip.contains(e))
            .filter_map(|&e| {
                let eng = &self.engines[e.0];
                let load = view.engine(e);
                (load.healthy && !eng.drain && load.outstanding < eng.max_connections)
                    .then_some((e, load))
            })
            .collect()
    }

    /// Power of two choices: two engines sampled by weight (without replacement), the one with
    /// fewer outstanding sessions per unit of weight wins (ties: higher weight, then lower index).
    pub fn pick_engine(
        &self,
        cluster: ClusterIdx,
        view: &dyn LoadView,
        skip: &[EngineIdx],
        rng: &mut fastrand::Rng,
    ) -> Option<EngineIdx> {
        let pool = self.eligible_engines(cluster, view, skip);
        let weight = |e: EngineIdx| u64::from(self.engines[e.0].weight);
        match pool.len() {
            0 => None,
            1 => Some(pool[0].0),
            _ => {
                let total: u64 = pool.iter().map(|(e, _)| weight(*e)).sum();
                let first = weighted_index(&pool, total, None, &weight, rng);
                let rest = total - weight(pool[first].0);
                let second = weighted_index(&pool, rest, Some(first), &weight, rng);
                let score = |i: usize| {
                    let (e, l) = pool[i];
                    // outstanding / weight, compared by cross-multiplication (no floats).
                    (u64::from(l.outstanding), weight(e), e)
                };
                let (a, b) = (score(first), score(second));
                let a_better = match (a.0 * b.1).cmp(&(b.0 * a.1)) {
                    Ordering::Less => true,
                    Ordering::Greater => false,
                    // Equal load: the heavier engine; equal weights too: the first draw,
                    // which is already random (by index, idle clusters sent everything to
                    // their first engine; the fleet test found it).
                    Ordering::Equal => b.1 <= a.1,
                };
                Some(if a_better { a.2 } else { b.2 })
            }
        }
    }
}

fn weighted_index(
    pool: &[(EngineIdx, EngineLoad)],
    total: u64,
    skip: Option<usize>,
    weight: &dyn Fn(EngineIdx) -> u64,
    rng: &mut fastrand::Rng,
) -> usize {
    let mut pick = rng.u64(0..total.max(1));
    for (i, (e, _)) in pool.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        let w = weight(*e);
        if pick < w {
            return i;
        }
        pick -= w;
    }
    // Unreachable with consistent weights; fall back to the last eligible entry.
    (0..pool.len())
        .rev()
        .find(|&i| Some(i) != skip)
        .unwrap_or(0)
}

fn cmp_distance(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}
