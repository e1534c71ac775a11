//! Human explanations of what the config means: the text of `maildistiller check`, `route` and
//! `geo`. Plain functions from a [`Snapshot`] to a `String`, so tests read exactly what an
//! operator reads.

use std::fmt::Write;
use std::net::IpAddr;

use crate::config::RoleSet;
use crate::geo::{Located, Point, Source};
use crate::snapshot::Snapshot;
use crate::topology::{EngineIdx, EngineLoad, LoadView, SiloIdx, Topology};

/// A what-if view for `route`: named clusters (`silo/cluster`), silos or engine addresses are down.
pub struct WhatIf<'a> {
    pub topology: &'a Topology,
    pub down: &'a [String],
}

impl LoadView for WhatIf<'_> {
    fn engine(&self, e: EngineIdx) -> EngineLoad {
        let t = self.topology;
        let eng = &t.engines[e.0];
        let cl = &t.clusters[eng.cluster.0];
        let label = t.cluster_label(eng.cluster);
        let silo = &t.silos[cl.silo.0].name;
        let addr = eng.address.to_string();
        let down = self
            .down
            .iter()
            .any(|d| *d == label || d == silo || *d == addr);
        EngineLoad {
            healthy: !down,
            outstanding: 0,
        }
    }
}

/// The one-screen summary of `maildistiller check`.
pub fn summary(s: &Snapshot, roles: RoleSet) -> String {
    let c = &s.config;
    let t = &s.topology;
    let mut o = String::new();
    let _ = writeln!(o, "config {} (version {}): OK", s.path.display(), s.version);
    let _ = writeln!(
        o,
        "node: silo {}{}",
        s.local_silo_name(),
        c.node
            .name
            .as_ref()
            .map(|n| format!(", name {n}"))
            .unwrap_or_default()
    );
    match s.geo.database().and_then(|h| h.current()) {
        Some(db) => {
            let _ = writeln!(
                o,
                "geo: {} ({}), {} overrides",
                db.path().display(),
                db.kind(),
                c.geo.overrides.len()
            );
        }
        None => {
            let _ = writeln!(o, "geo: no database, {} overrides", c.geo.overrides.len());
        }
    }
    let regions: Vec<String> = c
        .regions
        .iter()
        .map(|(k, r)| match &r.name {
            Some(n) => format!("{k} ({n})"),
            None => k.clone(),
        })
        .collect();
    let _ = writeln!(o, "regions: {}", regions.join(", "));
    let domains: usize = t.tenants.iter().map(|t| t.domains.len()).sum();
    let region_only = t
        .tenants
        .iter()
        .filter(|t| t.failover == crate::config::Failover::RegionOnly)
        .count();
    let _ = writeln!(
        o,
        "fleet: {} silos, {} clusters, {} engines; {} tenants ({} domains, {} region-only)",
        t.silos.len(),
        t.clusters.len(),
        t.engines.len(),
        t.tenants.len(),
        domains,
        region_only
    );
    for silo in &t.silos {
        let edges: Vec<String> = silo.edge_addresses.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            o,
            "  {:<8} {} ({:.2}, {:.2}) edges [{}]{}",
            silo.name,
            silo.hostname,
            silo.point.lat,
            silo.point.lon,
            edges.join(" "),
            if silo.drain { " DRAINED" } else { "" }
        );
        for &ci in &silo.clusters {
            let cl = &t.clusters[ci.0];
            let cap: u32 = cl
                .engines
                .iter()
                .map(|e| t.engines[e.0].max_connections)
                .sum();
            let tenants = t
                .tenants
                .iter()
                .filter(|x| x.regions.is_empty() || x.regions.contains(&cl.region))
                .count();
            let _ = writeln!(
                o,
                "    {:<10} region {:<4} {} engines, capacity {} sessions, {} tenants may land here",
                cl.name,
                cl.region,
                cl.engines.len(),
                cap,
                tenants
            );
        }
    }
    let _ = writeln!(o, "would run:");
    let list = |v: &[std::net::SocketAddr]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    if roles.edge {
        let _ = writeln!(
            o,
            "  edge    smtp {} (max {} connections, {} per IP)",
            list(&c.edge.listen),
            c.edge.max_connections,
            c.edge.max_connections_per_ip
        );
    }
    if roles.engine {
        let mut listeners = Vec::new();
        if !c.engine.proxy_listen.is_empty() {
            listeners.push(format!(
                "smtp+PROXY {} (from {})",
                list(&c.engine.proxy_listen),
                c.engine
                    .trusted_proxies
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !c.engine.listen.is_empty() {
            listeners.push(format!("smtp {}", list(&c.engine.listen)));
        }
        let _ = writeln!(
            o,
            "  engine  {} spool {} (max message {})",
            listeners.join(", "),
            c.engine.spool_dir.display(),
            c.engine.max_message_size
        );
        let e = &c.engine;
        if !e.shadow.listen.is_empty() || e.redundancy == crate::config::Redundancy::Shadow {
            let _ = writeln!(
                o,
                "  shadow  copies {} (redundancy {}, on_shadow_failure {}, takeover after {}, timeout {})",
                list(&e.shadow.listen),
                e.redundancy.as_str(),
                e.on_shadow_failure.as_str(),
                e.takeover_after,
                e.shadow.timeout
            );
        }
        let w = &c.engine.webmail;
        if !w.listen.is_empty() {
            let _ = writeln!(
                o,
                "  webmail https {}{} ({} users{})",
                list(&w.listen),
                if w.http_redirect_listen.is_empty() {
                    String::new()
                } else {
                    format!(", http redirect {}", list(&w.http_redirect_listen))
                },
                c.tenants.iter().map(|t| t.users.len()).sum::<usize>(),
                if w.tls_self_signed {
                    ", self-signed certificate made at first start"
                } else {
                    ""
                }
            );
        }
    }
    if roles.dns {
        let _ = writeln!(
            o,
            "  dns     udp+tcp {} zone {} (ttl {})",
            list(&c.dns.listen),
            c.dns.zone,
            c.dns.ttl
        );
    }
    let _ = writeln!(
        o,
        "  ops     http {} (grace period {})",
        c.ops.listen, c.ops.grace_period
    );
    for w in &s.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    o
}

fn describe_location(s: &Snapshot, l: &Located) -> String {
    let countries = s.geo.countries();
    let country = l
        .country
        .as_deref()
        .map(|c| match countries.get(c) {
            Some(x) => format!("{c} {} ({})", x.name, x.continent),
            None => c.to_owned(),
        })
        .unwrap_or_else(|| "unknown country".into());
    let why = match &l.source {
        Source::Override(n) => format!("config override {n}"),
        Source::Local => format!(
            "loopback/private address: the local silo {}",
            s.local_silo_name()
        ),
        Source::Database => format!("geo database, network /{}", l.prefix_len),
        Source::Unknown => "not in the geo database and no override".into(),
    };
    let point = l
        .point
        .map(|p| format!("{:.4}, {:.4}", p.lat, p.lon))
        .unwrap_or_else(|| "none (distance ordering falls back to the receiving silo)".into());
    format!("{country} — from {why}\npoint     {point}")
}

/// Silos by distance from a point.
fn nearest_silos(t: &Topology, p: Point) -> Vec<(SiloIdx, f64)> {
    let mut v: Vec<(SiloIdx, f64)> = t
        .silos
        .iter()
        .enumerate()
        .map(|(i, s)| (SiloIdx(i), p.distance_km(s.point)))
        .collect();
    v.sort_by(|a, b| a.1.total_cmp(&b.1));
    v
}

/// The text of `maildistiller geo IP`.
pub fn geo(s: &Snapshot, ip: IpAddr) -> String {
    let l = s.geo.locate(ip);
    let mut o = String::new();
    let _ = writeln!(o, "address   {ip}");
    let _ = writeln!(o, "country   {}", describe_location(s, &l));
    if let Some(p) = l.point {
        let _ = writeln!(o, "nearest silos:");
        for (i, (silo, km)) in nearest_silos(&s.topology, p).into_iter().enumerate() {
            let si = &s.topology.silos[silo.0];
            let _ = writeln!(
                o,
                "  {}. {:<8} {:<24} {:>7.0} km{}",
                i + 1,
                si.name,
                si.hostname,
                km,
                if si.drain { "  (drained)" } else { "" }
            );
        }
    }
    o
}

/// The text of `maildistiller route`; `Err` carries the explanation when there is no route (the
/// edge would answer with an error).
pub fn route(
    s: &Snapshot,
    rcpt: &str,
    client: IpAddr,
    edge_silo: Option<&str>,
    down: &[String],
) -> Result<String, String> {
    let t = &s.topology;
    let mut o = String::new();
    let _ = writeln!(o, "recipient {rcpt}");
    let Some((_, domain)) = rcpt.rsplit_once('@') else {
        return Err(format!(
            "{o}no route: {rcpt:?} has no domain -> the edge answers 501 5.1.3"
        ));
    };
    let Some(tenant) = t.tenant_for_domain(domain) else {
        return Err(format!(
            "{o}no route: no tenant owns {domain:?} -> the edge answers 550 5.7.1 (relaying denied)"
        ));
    };
    let edge = match edge_silo {
        Some(name) => t
            .silo_by_name(name)
            .ok_or_else(|| format!("{o}unknown silo {name:?}"))?,
        None => s.local_silo,
    };
    let _ = writeln!(
        o,
        "tenant    {}{} (domain {}), policy {}",
        tenant.id,
        tenant
            .name
            .as_ref()
            .map(|n| format!(" \"{n}\""))
            .unwrap_or_default(),
        domain.to_ascii_lowercase(),
        tenant.policy
    );
    let regions = if tenant.regions.is_empty() {
        "any (nearest to the client)".to_owned()
    } else {
        tenant.regions.join(" > ")
    };
    let _ = writeln!(
        o,
        "regions   {regions}; placement {}; failover {}",
        tenant.placement.as_str(),
        tenant.failover.as_str()
    );
    let l = s.geo.locate(client);
    let _ = writeln!(o, "client    {client}: {}", describe_location(s, &l));
    let _ = writeln!(o, "edge silo {}", t.silos[edge.0].name);
    if !down.is_empty() {
        let _ = writeln!(o, "assuming down: {}", down.join(", "));
    }
    let view = WhatIf { topology: t, down };
    let route = t.route(tenant, edge, l.point, &view);
    let mut rng = fastrand::Rng::with_seed(0);
    let _ = writeln!(o, "candidates, in order:");
    let mut any = false;
    for (i, c) in route.candidates.iter().enumerate() {
        let cl = &t.clusters[c.cluster.0];
        let state = if !c.usable() {
            "DOWN (no healthy engine)"
        } else if c.saturated() {
            "saturated (spill-over)"
        } else {
            "up"
        };
        let dist = c
            .distance_km
            .map(|d| format!("{d:.0} km"))
            .unwrap_or_else(|| "distance unknown".into());
        let _ = writeln!(
            o,
            "  {}. {:<14} region {:<4} {}; {}; {}/{} engines, {}/{} sessions; {}",
            i + 1,
            t.cluster_label(c.cluster),
            cl.region,
            c.tier,
            state,
            c.available_engines,
            cl.engines.len(),
            c.outstanding,
            c.capacity,
            dist
        );
        let pick = t.pick_engine(c.cluster, &view, &[], &mut rng);
        for &e in &cl.engines {
            let eng = &t.engines[e.0];
            let up = view.engine(e).healthy && !eng.drain;
            let _ = writeln!(
                o,
                "       engine {} weight {} max {} proxy {}{}{}",
                eng.address,
                eng.weight,
                eng.max_connections,
                eng.proxy.as_str(),
                if up {
                    ""
                } else if eng.drain {
                    " (drained)"
                } else {
                    " (down)"
                },
                if pick == Some(e) {
                    "  <- would pick (P2C, idle)"
                } else {
                    ""
                }
            );
        }
        any |= c.usable();
    }
    if !route.excluded.is_empty() {
        let _ = writeln!(o, "excluded:");
        for (c, why) in &route.excluded {
            let _ = writeln!(o, "  - {}: {why}", t.cluster_label(*c));
        }
    }
    if any {
        Ok(o)
    } else {
        Err(format!(
            "{o}no route: no usable cluster -> the edge answers 451 4.4.0 (sender retries later)"
        ))
    }
}
