//! Silos, clusters, engines and tenants, and the routing decisions made over them.
//!
//! Pure: health and load come in as values through [`LoadView`]; probing them is the edge's work.
//! Routing answers two questions for a recipient's tenant:
//! 1. **Which clusters, in what order** ([`Topology::route`]): clusters with no healthy engine
//!    last (listed, never tried); then the tenant's allowed regions in the tenant's order; within
//!    a region, clusters with spare capacity before saturated ones (spill-over), then distance
//!    from the receiving silo. Tenants without regions take any cluster nearest to the client. Under
//!    `failover = "any"`, clusters outside the regions follow, nearest first; under
//!    `region-only` they are never candidates.
//! 2. **Which engine in a cluster** ([`Topology::pick_engine`]): power of two choices, sampled by
//!    weight, the one with fewer outstanding sessions per unit of weight wins.

pub mod egress;
mod route;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::config::{Config, DeliveryHost, Failover, ProxyProtocol};
use crate::geo::Point;

pub use route::{Candidate, EngineLoad, LoadView, Route, Tier, Unloaded};

/// Index of a silo in [`Topology::silos`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiloIdx(pub usize);
/// Index of a cluster in [`Topology::clusters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterIdx(pub usize);
/// Index of an engine in [`Topology::engines`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EngineIdx(pub usize);

/// Index of a tenant in [`Topology::tenants`] (stable for one snapshot; a session keeps its
/// snapshot, so it may hold one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantIdx(pub usize);

/// A tenant's stable id, as written in config.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub String);

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct Silo {
    pub name: String,
    pub hostname: String,
    pub point: Point,
    pub edge_addresses: Vec<IpAddr>,
    pub edge_port: u16,
    pub drain: bool,
    pub egress: Vec<ipnetwork::IpNetwork>,
    pub clusters: Vec<ClusterIdx>,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub silo: SiloIdx,
    pub region: String,
    pub engines: Vec<EngineIdx>,
}

#[derive(Debug, Clone)]
pub struct Engine {
    pub address: SocketAddr,
    pub ops: Option<SocketAddr>,
    /// Replication address (cluster redundancy), when it takes copies.
    pub shadow: Option<SocketAddr>,
    pub weight: u32,
    pub max_connections: u32,
    pub proxy: ProxyProtocol,
    pub drain: bool,
    pub cluster: ClusterIdx,
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: TenantId,
    pub name: Option<String>,
    /// Lower case, without trailing dot.
    pub domains: Vec<String>,
    pub subdomains: bool,
    pub regions: Vec<String>,
    pub failover: Failover,
    pub placement: crate::config::Placement,
    pub delivery: Vec<DeliveryHost>,
    pub policy: String,
    /// Known recipients, lower-cased (full addresses, or local parts meaning any listed domain).
    /// Empty: all accepted.
    pub recipients: std::collections::HashSet<String>,
    /// A file of known recipients (absolute path), read by the engine (`engine::verify`).
    pub recipients_file: Option<std::path::PathBuf>,
    /// How addresses outside the lists are judged.
    pub verify: crate::config::RecipientVerify,
    /// TLS towards the tenant's servers.
    pub tls: TenantTls,
    pub delivery_connections: Option<u32>,
    pub delivery_rate: Option<u32>,
}

/// A tenant's delivery TLS settings as written (`tls`, `tls_ca`, `tls_pin`); delivery turns
/// them into a policy (`engine::delivery::tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantTls {
    pub mode: crate::config::DeliveryTls,
    pub ca: Option<std::path::PathBuf>,
    /// Base64 SHA-256 SPKI hashes, checked by validation.
    pub pins: Vec<String>,
}

impl Tenant {
    /// Whether `address` may be taken as far as every node can tell: false only when the
    /// static `recipients` list is the tenant's whole truth and lacks it. A tenant with a
    /// `recipients_file` or call-ahead is judged by its engine ([`Tenant::engine_verifies`]),
    /// which sees the file, the cache and the tenant's server; the edge lets it through.
    pub fn knows(&self, address: &str) -> bool {
        self.recipients.is_empty() || self.engine_verifies() || self.listed(address)
    }

    /// Whether the static `recipients` list names `address` (in full, or its local part).
    pub fn listed(&self, address: &str) -> bool {
        let a = address.to_ascii_lowercase();
        let local = a.rsplit_once('@').map(|(l, _)| l).unwrap_or(&a);
        self.recipients.contains(&a) || self.recipients.contains(local)
    }

    /// Recipients are judged by the engine: a recipients file, or call-ahead.
    pub fn engine_verifies(&self) -> bool {
        self.recipients_file.is_some() || self.verify == crate::config::RecipientVerify::CallAhead
    }
}

/// The whole fleet as one process sees it. Built from a validated [`Config`].
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub silos: Vec<Silo>,
    pub clusters: Vec<Cluster>,
    pub engines: Vec<Engine>,
    pub tenants: Vec<Tenant>,
    /// Lower-case domain -> index into `tenants`.
    domains: HashMap<String, usize>,
    /// True when some tenant accepts subdomains (else lookups skip the parent walk).
    any_subdomains: bool,
}

impl Topology {
    /// Builds from a config that passed validation (unparseable entries are skipped, not panicked on).
    pub fn build(c: &Config) -> Topology {
        let mut t = Topology::default();
        for s in &c.silos {
            let sidx = SiloIdx(t.silos.len());
            let mut clusters = Vec::new();
            for cl in &s.clusters {
                let cidx = ClusterIdx(t.clusters.len());
                let mut engines = Vec::new();
                for e in &cl.engines {
                    engines.push(EngineIdx(t.engines.len()));
                    t.engines.push(Engine {
                        address: e.address,
                        ops: e.ops,
                        shadow: e.shadow,
                        weight: e.weight.max(1),
                        max_connections: e.max_connections,
                        proxy: e.proxy,
                        drain: e.drain,
                        cluster: cidx,
                    });
                }
                clusters.push(cidx);
                t.clusters.push(Cluster {
                    name: cl.name.clone(),
                    silo: sidx,
                    region: cl.region.clone(),
                    engines,
                });
            }
            t.silos.push(Silo {
                name: s.name.clone(),
                hostname: s.hostname.trim_end_matches('.').to_ascii_lowercase(),
                point: Point::new(s.lat, s.lon).unwrap_or(Point { lat: 0.0, lon: 0.0 }),
                edge_addresses: s.edge_addresses.clone(),
                edge_port: s.edge_port,
                drain: s.drain,
                egress: s.egress.clone(),
                clusters,
            });
        }
        for tc in &c.tenants {
            let idx = t.tenants.len();
            let domains: Vec<String> = tc
                .domains
                .iter()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .collect();
            for d in &domains {
                t.domains.entry(d.clone()).or_insert(idx);
            }
            t.any_subdomains |= tc.subdomains;
            t.tenants.push(Tenant {
                id: TenantId(tc.id.clone()),
                name: tc.name.clone(),
                domains,
                subdomains: tc.subdomains,
                regions: tc.regions.clone(),
                failover: tc.failover,
                placement: tc.placement,
                delivery: tc.delivery.iter().filter_map(|h| h.parse().ok()).collect(),
                policy: tc.policy.clone(),
                recipients: tc
                    .recipients
                    .iter()
                    .map(|r| r.to_ascii_lowercase())
                    .collect(),
                recipients_file: tc.recipients_file.clone(),
                verify: tc.verify,
                tls: TenantTls {
                    mode: tc.tls,
                    ca: tc.tls_ca.clone(),
                    pins: tc.tls_pin.clone(),
                },
                delivery_connections: tc.delivery_connections,
                delivery_rate: tc.delivery_rate,
            });
        }
        t
    }

    pub fn silo_by_name(&self, name: &str) -> Option<SiloIdx> {
        self.silos.iter().position(|s| s.name == name).map(SiloIdx)
    }

    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.id.0 == id)
    }

    /// The tenant that owns a recipient domain: exact match (case-insensitive, trailing dot
    /// ignored), else the nearest parent domain of a tenant that accepts subdomains.
    pub fn tenant_for_domain(&self, domain: &str) -> Option<&Tenant> {
        self.tenant_idx_for_domain(domain)
            .map(|i| &self.tenants[i.0])
    }

    fn tenant_idx_for_domain(&self, domain: &str) -> Option<TenantIdx> {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.domains.get(&d) {
            return Some(TenantIdx(i));
        }
        if !self.any_subdomains {
            return None;
        }
        let mut rest = d.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(&i) = self.domains.get(parent)
                && self.tenants[i].subdomains
            {
                return Some(TenantIdx(i));
            }
            rest = parent;
        }
        None
    }

    /// The tenant of a recipient address (`local@domain`); `None` for an address without domain.
    pub fn tenant_for_address(&self, address: &str) -> Option<&Tenant> {
        let (_, domain) = address.rsplit_once('@')?;
        self.tenant_for_domain(domain)
    }

    /// `silo/cluster`, for logs and explanations.
    pub fn cluster_label(&self, c: ClusterIdx) -> String {
        let cl = &self.clusters[c.0];
        format!("{}/{}", self.silos[cl.silo.0].name, cl.name)
    }
}

/// What an SMTP session asks about recipients: whose domain is it, does that tenant know the
/// user. One answer for the engine and the edge.
impl crate::smtp::server::Recipients for Topology {
    type Owner = TenantIdx;

    fn owner(&self, address: &str) -> Option<TenantIdx> {
        let (_, domain) = address.rsplit_once('@')?;
        self.tenant_idx_for_domain(domain)
    }

    fn knows(&self, owner: TenantIdx, address: &str) -> bool {
        self.tenants.get(owner.0).is_some_and(|t| t.knows(address))
    }
}

/// A stand-in for a topology in unit tests of SMTP sessions: `acme.example` is tenant 0 (it
/// knows everyone), `globex.example` tenant 1 (it knows only `boss@`).
#[cfg(test)]
pub struct TwoTenants;

#[cfg(test)]
impl crate::smtp::server::Recipients for TwoTenants {
    type Owner = TenantIdx;

    fn owner(&self, address: &str) -> Option<TenantIdx> {
        match address.rsplit_once('@')?.1 {
            "acme.example" => Some(TenantIdx(0)),
            "globex.example" => Some(TenantIdx(1)),
            _ => None,
        }
    }

    fn knows(&self, owner: TenantIdx, address: &str) -> bool {
        owner == TenantIdx(0) || address == "boss@globex.example"
    }
}
