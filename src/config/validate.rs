//! Semantic checks on a parsed [`Config`]: references resolve, names are unique, limits make
//! sense, every tenant can be reached. Every problem is reported with its path; nothing stops at
//! the first. Warnings are things that work but that an operator probably did not mean.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use super::model::*;
use super::units::DeliveryHost;
use super::{ConfigError, ConfigErrors};
use crate::geo::{Countries, Point};

/// Which roles this process runs: listeners of roles not run are not checked for clashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoleSet {
    pub edge: bool,
    pub dns: bool,
    pub engine: bool,
}

impl RoleSet {
    pub const ALL: RoleSet = RoleSet {
        edge: true,
        dns: true,
        engine: true,
    };
}

/// Collects problems while checking; role modules check their own sections with it.
#[derive(Default)]
pub struct Checker {
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Checker {
    /// The errors found so far.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }
    pub fn warn(&mut self, msg: impl Into<String>) {
        self.warnings.push(msg.into());
    }
    pub fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(ConfigError::new(path, msg));
    }
    pub fn range(&mut self, path: &str, v: u64, lo: u64, hi: u64) {
        if v < lo || v > hi {
            self.err(path, format!("{v} is out of range (allowed {lo}..={hi})"));
        }
    }
    pub fn dur(&mut self, path: &str, v: crate::config::Dur, lo_ms: u64, hi_s: u64) {
        let ms = v.get().as_millis() as u64;
        if ms < lo_ms || ms > hi_s * 1000 {
            self.err(
                path,
                format!(
                    "{v} is out of range (allowed {}..={})",
                    crate::config::Dur::millis(lo_ms),
                    crate::config::Dur::secs(hi_s)
                ),
            );
        }
    }
}

/// Checks everything; returns warnings on success.
pub fn validate(c: &Config, roles: RoleSet) -> Result<Vec<String>, ConfigErrors> {
    let mut k = Checker {
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let countries = Countries::embedded();

    for (i, o) in c.geo.overrides.iter().enumerate() {
        let p = format!("geo.override[{i}]");
        if countries.get(&o.country).is_none() {
            k.err(
                format!("{p}.country"),
                format!("unknown country code {:?}", o.country),
            );
        }
        match (o.lat, o.lon) {
            (None, None) => {}
            (Some(lat), Some(lon)) if Point::new(lat, lon).is_some() => {}
            (Some(_), Some(_)) => k.err(&p, "lat must be within -90..90 and lon within -180..180"),
            _ => k.err(&p, "give both lat and lon, or neither"),
        }
    }
    k.dur("geo.reload_interval", c.geo.reload_interval, 1000, 86_400);
    if c.geo.database.is_none() {
        k.warnings.push(
            "geo.database is not set and the shipped database was not found: only overrides and the local silo place clients".into(),
        );
    }

    for name in c.regions.keys() {
        if !is_name(name) {
            k.err(
                format!("regions.{name}"),
                "region names are lowercase letters, digits and '-'",
            );
        }
    }
    if c.regions.is_empty() {
        k.err("regions", "at least one region is required");
    }

    check_silos(c, &mut k);
    check_tenants(c, &mut k);

    if let Some(s) = &c.node.silo
        && !c.silos.iter().any(|x| &x.name == s)
    {
        k.err("node.silo", format!("unknown silo {s:?}"));
    }
    // Engines must deliver from their silo's declared egress, or tenants' firewalls and the
    // SPF record would disagree with reality.
    let local = c
        .node
        .silo
        .as_ref()
        .and_then(|n| c.silos.iter().find(|s| &s.name == n))
        .or(c.silos.first());
    if let Some(silo) = local
        && !silo.egress.is_empty()
    {
        for (i, a) in c.engine.delivery.source_addresses.iter().enumerate() {
            if !silo.egress.iter().any(|n| n.contains(*a)) {
                k.err(
                    format!("engine.delivery.source_addresses[{i}]"),
                    format!("{a} is outside silo {:?}'s egress ranges", silo.name),
                );
            }
        }
    }
    if c.silos.is_empty() {
        k.err("silo", "at least one [[silo]] is required");
    }

    k.dur("ops.grace_period", c.ops.grace_period, 0, 3600);
    c.edge.check(&mut k);
    c.engine.check(&mut k);
    c.dns.check(&mut k);
    c.shared.check(&mut k);
    super::policy::check_all(c, &mut k);
    check_listeners(c, roles, &mut k);
    super::shadow::check_redundancy(c, roles, &mut k);

    if k.errors.is_empty() {
        Ok(k.warnings)
    } else {
        Err(ConfigErrors(k.errors))
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

/// A DNS name: labels of letters, digits and '-', at least two labels.
pub fn is_domain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn check_silos(c: &Config, k: &mut Checker) {
    let mut silo_names = HashSet::new();
    let mut engine_addrs: HashMap<SocketAddr, String> = HashMap::new();
    for s in &c.silos {
        let p = format!("silo[{}]", s.name);
        if !is_name(&s.name) {
            k.err(
                format!("{p}.name"),
                "silo names are lowercase letters, digits and '-'",
            );
        }
        if !silo_names.insert(&s.name) {
            k.err(&p, "duplicate silo name");
        }
        if !is_domain(&s.hostname) {
            k.err(
                format!("{p}.hostname"),
                format!("{:?} is not a DNS name", s.hostname),
            );
        }
        if Point::new(s.lat, s.lon).is_none() {
            k.err(&p, "lat must be within -90..90 and lon within -180..180");
        }
        if s.clusters.is_empty() {
            k.warnings
                .push(format!("{p}: no clusters (an edge-only site)"));
        }
        let mut cluster_names = HashSet::new();
        for cl in &s.clusters {
            let cp = format!("{p}.cluster[{}]", cl.name);
            if !is_name(&cl.name) {
                k.err(
                    format!("{cp}.name"),
                    "cluster names are lowercase letters, digits and '-'",
                );
            }
            if !cluster_names.insert(&cl.name) {
                k.err(&cp, "duplicate cluster name in this silo");
            }
            if !c.regions.contains_key(&cl.region) {
                k.err(
                    format!("{cp}.region"),
                    format!("unknown region {:?}", cl.region),
                );
            }
            if cl.engines.is_empty() {
                k.err(&cp, "a cluster needs at least one [[silo.cluster.engine]]");
            }
            for (i, e) in cl.engines.iter().enumerate() {
                let ep = format!("{cp}.engine[{i}]");
                if let Some(prev) = engine_addrs.insert(e.address, ep.clone()) {
                    k.err(
                        format!("{ep}.address"),
                        format!("{} is already used by {prev}", e.address),
                    );
                }
                k.range(&format!("{ep}.weight"), e.weight.into(), 1, 1000);
                k.range(
                    &format!("{ep}.max_connections"),
                    e.max_connections.into(),
                    1,
                    1_000_000,
                );
            }
        }
    }
}

fn check_tenants(c: &Config, k: &mut Checker) {
    let mut ids = HashSet::new();
    let mut domains: HashMap<String, String> = HashMap::new();
    let regions_with_clusters: BTreeMap<&str, usize> = c
        .silos
        .iter()
        .flat_map(|s| &s.clusters)
        .fold(BTreeMap::new(), |mut m, cl| {
            *m.entry(cl.region.as_str()).or_default() += 1;
            m
        });
    for t in &c.tenants {
        let p = format!("tenant[{}]", t.id);
        if !is_name(&t.id) {
            k.err(
                format!("{p}.id"),
                "tenant ids are lowercase letters, digits and '-'",
            );
        }
        if !ids.insert(&t.id) {
            k.err(&p, "duplicate tenant id");
        }
        if t.domains.is_empty() {
            k.err(format!("{p}.domains"), "a tenant needs at least one domain");
        }
        for (i, d) in t.domains.iter().enumerate() {
            let dp = format!("{p}.domains[{i}]");
            if !is_domain(d) {
                k.err(&dp, format!("{d:?} is not a domain name"));
                continue;
            }
            let norm = d.trim_end_matches('.').to_ascii_lowercase();
            if let Some(other) = domains.insert(norm.clone(), t.id.clone()) {
                let msg = if other == t.id {
                    format!("domain {norm:?} is listed twice")
                } else {
                    format!("domain {norm:?} already belongs to tenant {other:?}")
                };
                k.err(&dp, msg);
            }
        }
        let mut seen = HashSet::new();
        for (i, r) in t.regions.iter().enumerate() {
            let rp = format!("{p}.regions[{i}]");
            if !c.regions.contains_key(r) {
                k.err(&rp, format!("unknown region {r:?}"));
            } else if !seen.insert(r) {
                k.err(&rp, format!("region {r:?} is listed twice"));
            }
        }
        let reachable = if t.regions.is_empty() {
            !regions_with_clusters.is_empty()
        } else {
            t.regions
                .iter()
                .any(|r| regions_with_clusters.contains_key(r.as_str()))
        };
        if !reachable && t.regions.iter().all(|r| c.regions.contains_key(r)) {
            k.err(
                &p,
                format!(
                    "unreachable: no cluster serves any of its regions {:?}",
                    t.regions
                ),
            );
        } else if t.failover == Failover::RegionOnly
            && t.regions.len() == 1
            && regions_with_clusters.get(t.regions[0].as_str()) == Some(&1)
        {
            k.warnings.push(format!(
                "{p}: region-only with a single cluster in region {:?}: no failover site",
                t.regions[0]
            ));
        }
        if t.delivery.is_empty() {
            k.err(
                format!("{p}.delivery"),
                "a tenant needs at least one delivery host",
            );
        }
        for (i, h) in t.delivery.iter().enumerate() {
            if let Err(e) = h.parse::<DeliveryHost>() {
                k.err(format!("{p}.delivery[{i}]"), e);
            }
        }
        // The pins' and tls_ca's contents are judged by delivery (`engine::delivery::tls`).
        if !t.tls_pin.is_empty() && t.tls == DeliveryTls::Never {
            k.err(
                format!("{p}.tls_pin"),
                "pins need TLS: tls = \"never\" and tls_pin contradict each other",
            );
        }
        if let Some(n) = t.delivery_connections {
            k.range(&format!("{p}.delivery_connections"), n.into(), 1, 10_000);
        }
        if let Some(n) = t.delivery_rate {
            k.range(&format!("{p}.delivery_rate"), n.into(), 1, 1_000_000);
        }
        if t.policy != "default" && !c.policies.contains_key(&t.policy) {
            k.err(
                format!("{p}.policy"),
                format!("unknown policy {:?}", t.policy),
            );
        }
        let mut users = HashSet::new();
        for (i, u) in t.users.iter().enumerate() {
            let up = format!("{p}.user[{i}]");
            let addr = u.address.to_ascii_lowercase();
            let domain_ok = addr.rsplit_once('@').is_some_and(|(l, d)| {
                !l.is_empty() && t.domains.iter().any(|td| td.eq_ignore_ascii_case(d))
            });
            if !domain_ok {
                k.err(
                    format!("{up}.address"),
                    format!("{:?} is not an address in the tenant's domains", u.address),
                );
            }
            if !users.insert(addr) {
                k.err(&up, "duplicate user");
            }
            if !u.password_hash.starts_with("$argon2") {
                k.err(
                    format!("{up}.password_hash"),
                    "must be an argon2 PHC string (never a plain password)",
                );
            }
        }
    }
}

/// Two listeners of the roles this process runs on one address would fail at bind time: say so
/// before binding anything.
fn check_listeners(c: &Config, roles: RoleSet, k: &mut Checker) {
    let mut seen: HashMap<SocketAddr, String> = HashMap::new();
    let mut add = |k: &mut Checker, path: String, a: SocketAddr| {
        if a.port() == 0 {
            return;
        }
        if let Some(prev) = seen.insert(a, path.clone()) {
            k.err(path, format!("{a} is also the listener of {prev}"));
        }
    };
    add(k, "ops.listen".into(), c.ops.listen);
    let sections: [(bool, &str, &[SocketAddr]); 5] = [
        (roles.edge, "edge.listen", &c.edge.listen),
        (roles.engine, "engine.listen", &c.engine.listen),
        (roles.engine, "engine.proxy_listen", &c.engine.proxy_listen),
        (
            roles.engine,
            "engine.shadow.listen",
            &c.engine.shadow.listen,
        ),
        (roles.dns, "dns.listen", &c.dns.listen),
    ];
    for (on, name, list) in sections {
        if !on {
            continue;
        }
        for (i, a) in list.iter().enumerate() {
            add(k, format!("{name}[{i}]"), *a);
        }
    }
    let required: [(bool, &str, bool); 3] = [
        (roles.edge, "edge.listen", c.edge.listen.is_empty()),
        (
            roles.engine,
            "engine.listen",
            c.engine.listen.is_empty() && c.engine.proxy_listen.is_empty(),
        ),
        (roles.dns, "dns.listen", c.dns.listen.is_empty()),
    ];
    for (on, name, empty) in required {
        if on && empty {
            k.err(name, "at least one listener is required for this role");
        }
    }
    if roles.engine {
        check_proxy_listeners(c, k);
    }
}

/// The fleet says how edges introduce clients to each engine address (`proxy`); the engine's
/// listener for that address must expect the same, or every session the edges open fails.
fn check_proxy_listeners(c: &Config, k: &mut Checker) {
    let fleet: HashMap<SocketAddr, (String, ProxyProtocol)> = c
        .silos
        .iter()
        .flat_map(|s| {
            s.clusters.iter().flat_map(move |cl| {
                cl.engines.iter().enumerate().map(move |(i, e)| {
                    let path = format!("silo[{}].cluster[{}].engine[{i}]", s.name, cl.name);
                    (e.address, (path, e.proxy))
                })
            })
        })
        .collect();
    for (i, a) in c.engine.listen.iter().enumerate() {
        if let Some((path, proxy)) = fleet.get(a)
            && *proxy != ProxyProtocol::None
        {
            k.err(
                format!("engine.listen[{i}]"),
                format!(
                    "edges connect to {a} ({path}) with a PROXY header (proxy = \"{}\"): \
                     list it in engine.proxy_listen instead",
                    proxy.as_str()
                ),
            );
        }
    }
    for (i, a) in c.engine.proxy_listen.iter().enumerate() {
        if let Some((path, ProxyProtocol::None)) = fleet.get(a) {
            k.err(
                format!("engine.proxy_listen[{i}]"),
                format!(
                    "edges connect to {a} ({path}) without a PROXY header (proxy = \"none\"): \
                     list it in engine.listen, or let edges send one"
                ),
            );
        }
    }
}
