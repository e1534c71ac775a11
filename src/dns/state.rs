//! The GeoDNS role's live state: the [`Plan`] answers are made from, and how it follows config
//! reloads, health changes and operator drains.
//!
//! Lifecycle: a `Plan` is the zone of one config snapshot ([`Zone`], expensive, built once per
//! snapshot) plus a health overlay (which silos may answer each geo name, cheap). It is held in
//! an `ArcSwap`; every query checks — two pointer/integer comparisons through per-worker caches
//! — that its plan was built from the snapshot in force and the current health generation, and
//! rebuilds it under a mutex when not. So a reload, a drain or a health transition is in force
//! from the next query on, and a quiet server rebuilds nothing. A background task also refreshes
//! once a second and on every health change, to keep probe targets and logs current without
//! traffic.
//!
//! Which silos may answer (per candidate set): the healthy ones that are not drained (config
//! `drain = true` or the ops API); when none is left, fail open: every candidate that is not
//! drained (all down), else every candidate (all drained).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Cache};

use super::metrics::DnsMetrics;
use super::zone::Zone;
use crate::health::Prober;
use crate::ops::Ops;
use crate::snapshot::Snapshot;

/// A silo as the answers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiloState {
    /// At least one edge passes its probe.
    Up,
    /// No edge passes its probe.
    Down,
    /// `drain = true` in the config.
    Drained,
    /// Drained through the ops API.
    AdminDrained,
    /// No edge addresses: never answered.
    NoEdges,
}

impl SiloState {
    pub fn as_str(self) -> &'static str {
        match self {
            SiloState::Up => "up",
            SiloState::Down => "down",
            SiloState::Drained => "drained (config)",
            SiloState::AdminDrained => "drained (ops API)",
            SiloState::NoEdges => "no edge addresses",
        }
    }
}

/// Why a set answers with silos that are not up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailOpen {
    AllDown,
    AllDrained,
}

/// The silos that may answer one candidate set.
#[derive(Debug, Clone)]
pub(crate) struct Eligible {
    pub silos: Vec<u16>,
    pub fail_open: Option<FailOpen>,
}

/// What answers are made from; see the module docs.
#[derive(Debug)]
pub(crate) struct Plan {
    pub zone: Arc<Zone>,
    pub snapshot: Arc<Snapshot>,
    /// The health generation it reflects.
    pub generation: u64,
    /// Per candidate set of the zone.
    pub eligible: Vec<Eligible>,
    /// Per silo of the zone.
    pub silo_state: Vec<SiloState>,
}

impl Plan {
    /// Overlays health on a zone. `up` says whether a probe target is up (`None`: not probed,
    /// counts as up); `admin` holds silos drained through the ops API.
    pub fn new(
        zone: Arc<Zone>,
        snapshot: Arc<Snapshot>,
        generation: u64,
        up: &dyn Fn(SocketAddr) -> Option<bool>,
        admin: &HashSet<String>,
    ) -> Plan {
        let silo_state: Vec<SiloState> = zone
            .silos
            .iter()
            .map(|s| {
                if s.edges.is_empty() {
                    SiloState::NoEdges
                } else if admin.contains(&s.name) {
                    SiloState::AdminDrained
                } else if s.drain {
                    SiloState::Drained
                } else if s.edges.iter().any(|e| up(*e) != Some(false)) {
                    SiloState::Up
                } else {
                    SiloState::Down
                }
            })
            .collect();
        let eligible = zone
            .sets
            .iter()
            .map(|set| {
                let with = |want: &dyn Fn(SiloState) -> bool| -> Vec<u16> {
                    set.members
                        .iter()
                        .copied()
                        .filter(|&i| want(silo_state[usize::from(i)]))
                        .collect()
                };
                let healthy = with(&|s| s == SiloState::Up);
                if !healthy.is_empty() || set.members.is_empty() {
                    return Eligible {
                        silos: healthy,
                        fail_open: None,
                    };
                }
                let down = with(&|s| s == SiloState::Down);
                if !down.is_empty() {
                    Eligible {
                        silos: down,
                        fail_open: Some(FailOpen::AllDown),
                    }
                } else {
                    Eligible {
                        silos: set.members.clone(),
                        fail_open: Some(FailOpen::AllDrained),
                    }
                }
            })
            .collect();
        Plan {
            zone,
            snapshot,
            generation,
            eligible,
            silo_state,
        }
    }
}

/// Per-worker caches of the config and the plan: reading them costs one atomic load each.
pub(crate) struct Reader {
    config: Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>,
    plan: Cache<Arc<ArcSwap<Plan>>, Arc<Plan>>,
}

/// The role's shared state: one per process.
#[derive(Debug)]
pub struct DnsState {
    ops: Arc<Ops>,
    prober: Arc<Prober>,
    plan: Arc<ArcSwap<Plan>>,
    /// Silos drained through the ops API; they stay drained across reloads until undrained.
    admin: Mutex<HashSet<String>>,
    admin_generation: AtomicU64,
    rebuild: Mutex<()>,
    pub(crate) metrics: DnsMetrics,
}

impl DnsState {
    /// Builds the first plan from the config in force and starts probing its silos' edges.
    pub(crate) fn new(ops: Arc<Ops>, prober: Arc<Prober>, metrics: DnsMetrics) -> Arc<DnsState> {
        let snap = ops.config.load_full();
        let zone = Arc::new(Zone::build(&snap));
        for w in &zone.warnings {
            tracing::warn!(warning = %w, "dns zone");
        }
        prober.set_targets(&zone.targets, &snap.config.dns.health);
        let generation = prober.generation();
        let plan = Plan::new(
            zone,
            snap,
            generation,
            &|a| prober.is_up(a),
            &HashSet::new(),
        );
        metrics.silo_states(&plan);
        Arc::new(DnsState {
            ops,
            prober,
            plan: Arc::new(ArcSwap::from_pointee(plan)),
            admin: Mutex::new(HashSet::new()),
            admin_generation: AtomicU64::new(0),
            rebuild: Mutex::new(()),
            metrics,
        })
    }

    fn generation(&self) -> u64 {
        self.prober
            .generation()
            .wrapping_add(self.admin_generation.load(Ordering::Acquire))
    }

    pub(crate) fn reader(&self) -> Reader {
        Reader {
            config: Cache::new(self.ops.config.clone()),
            plan: Cache::new(self.plan.clone()),
        }
    }

    /// The plan for the config and health in force, rebuilt first if stale.
    pub(crate) fn current<'r>(&self, r: &'r mut Reader) -> &'r Arc<Plan> {
        let snap = Arc::as_ptr(r.config.load());
        let generation = self.generation();
        let plan = r.plan.load();
        if !std::ptr::eq(Arc::as_ptr(&plan.snapshot), snap) || plan.generation != generation {
            self.refresh();
        }
        r.plan.load()
    }

    /// The plan in force (for status pages and tests); not refreshed.
    pub(crate) fn plan(&self) -> Arc<Plan> {
        self.plan.load_full()
    }

    pub(crate) fn prober(&self) -> &Arc<Prober> {
        &self.prober
    }

    /// Rebuilds the plan if the config or health changed since it was built.
    pub(crate) fn refresh(&self) {
        let _guard = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let snap = self.ops.config.load_full();
        let current = self.plan.load_full();
        let same_config = Arc::ptr_eq(&current.snapshot, &snap);
        if same_config && current.generation == self.generation() {
            return;
        }
        let zone = if same_config {
            current.zone.clone()
        } else {
            let zone = Arc::new(Zone::build(&snap));
            for w in &zone.warnings {
                tracing::warn!(warning = %w, "dns zone");
            }
            self.prober
                .set_targets(&zone.targets, &snap.config.dns.health);
            self.metrics.rebuilt("config");
            zone
        };
        if same_config {
            self.metrics.rebuilt("health");
        }
        let generation = self.generation();
        let admin = self.admin.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let plan = Plan::new(zone, snap, generation, &|a| self.prober.is_up(a), &admin);
        log_changes(&current, &plan);
        self.metrics.silo_states(&plan);
        self.plan.store(Arc::new(plan));
    }

    /// Drains (or undrains) a silo through the ops API: it leaves (rejoins) the answers at the
    /// next query and stays so across config reloads. `Err` for an unknown silo.
    pub fn set_drain(&self, silo: &str, drain: bool) -> Result<(), String> {
        let snap = self.ops.config.load();
        if snap.topology.silo_by_name(silo).is_none() {
            return Err(format!("no silo named {silo:?}"));
        }
        let changed = {
            let mut admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
            if drain {
                admin.insert(silo.to_owned())
            } else {
                admin.remove(silo)
            }
        };
        if changed {
            tracing::info!(silo, drain, "dns: silo drain set through the ops API");
            self.admin_generation.fetch_add(1, Ordering::AcqRel);
            self.refresh();
        }
        Ok(())
    }
}

/// Logs silos entering or leaving the answers.
fn log_changes(old: &Plan, new: &Plan) {
    for (i, s) in new.zone.silos.iter().enumerate() {
        let now = new.silo_state[i];
        let before = old
            .zone
            .silos
            .iter()
            .position(|o| o.name == s.name)
            .map(|j| old.silo_state[j]);
        if before.is_some_and(|b| b != now) {
            if now == SiloState::Up {
                tracing::info!(silo = %s.name, "dns: silo is back in the answers");
            } else {
                tracing::warn!(silo = %s.name, state = now.as_str(), "dns: silo leaves the answers");
            }
        }
    }
    for (set, e) in new.zone.sets.iter().zip(&new.eligible) {
        let was = old
            .zone
            .sets
            .iter()
            .position(|s| s.members == set.members)
            .and_then(|j| old.eligible.get(j))
            .and_then(|o| o.fail_open);
        if e.fail_open.is_some() && was.is_none() {
            tracing::error!(set = %set.label, "dns: no silo of this set is up: answering with all of them (fail open)");
        }
    }
}
