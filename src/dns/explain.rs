//! `maildistiller dns-explain`: which silo a name is answered with for a client, and why.
//!
//! It builds the same zone and plan the server builds, assumes every edge up (except silos
//! named with `--down`; config drains apply), sends a real query through the server's answer
//! function and decodes the bytes with hickory-proto, so what it prints is what the server
//! would send.

use std::collections::HashSet;
use std::fmt::Write;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RecordType};
use ipnetwork::IpNetwork;

use super::answer::{Scratch, order_silos, respond, scope_for};
use super::state::{FailOpen, Plan};
use super::zone::{Role, Zone, unit, wire_name};
use crate::geo::{Located, Source};
use crate::snapshot::Snapshot;

/// The text of `maildistiller dns-explain`. `Err` for a bad argument.
pub fn explain(
    snap: Snapshot,
    name: &str,
    qtype: &str,
    client: IpAddr,
    ecs: Option<&str>,
    down: &[String],
) -> Result<String, String> {
    let rtype = RecordType::from_str(&qtype.to_ascii_uppercase())
        .map_err(|_| format!("unknown record type {qtype:?}"))?;
    let ecs: Option<IpNetwork> = ecs
        .map(|e| {
            e.parse()
                .map_err(|_| format!("--ecs {e:?} is not ADDRESS/PREFIX"))
        })
        .transpose()?;
    let qname = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|e| format!("{name:?} is not a DNS name: {e}"))?;
    for d in down {
        if snap.topology.silo_by_name(d).is_none() {
            return Err(format!("--down {d:?}: no such silo"));
        }
    }
    let snap = Arc::new(snap);
    let zone = Arc::new(Zone::build(&snap));
    let down_edges: HashSet<_> = zone
        .silos
        .iter()
        .filter(|s| down.contains(&s.name))
        .flat_map(|s| s.edges.iter().copied())
        .collect();
    let plan = Plan::new(
        zone.clone(),
        snap.clone(),
        0,
        &|a| Some(!down_edges.contains(&a)),
        &HashSet::new(),
    );

    let mut o = String::new();
    let via = match ecs {
        Some(n) => format!("resolver {client}, ECS {n}"),
        None => format!("resolver {client} (no ECS)"),
    };
    let _ = writeln!(
        o,
        "query     {} {rtype} from {via}",
        name.trim_end_matches('.')
    );
    let (addr, source) = match ecs {
        Some(n) if n.prefix() > 0 => (n.network(), Some(n.prefix())),
        _ => (client, None),
    };
    let located = snap.geo.locate(addr);
    let _ = writeln!(o, "location  {addr}: {}", describe(&snap, &located));
    if !down.is_empty() {
        let _ = writeln!(o, "assuming  down: {}", down.join(", "));
    }
    let wire = wire_name(&qname.to_ascii());
    match (zone.apex_offset(&wire), zone.node(&wire)) {
        (None, _) => {
            let _ = writeln!(o, "name      outside the zone {}: REFUSED", zone.name);
        }
        (Some(_), None) => {
            let _ = writeln!(o, "name      no such name in {}: NXDOMAIN", zone.name);
        }
        (Some(_), Some(node)) => {
            let _ = writeln!(o, "name      {}", role_text(&plan, &node.role));
            let set = match rtype {
                RecordType::MX => node.mx,
                RecordType::A | RecordType::AAAA | RecordType::ANY => node.address.or(node.mx),
                _ => None,
            };
            if let Some(set) = set {
                silos(&mut o, &plan, set, located.point.map(unit));
                if node.address == Some(set) && zone.next_silos > 0 {
                    let _ = writeln!(
                        o,
                        "          A/AAAA answers carry the first {} silos' addresses",
                        1 + zone.next_silos
                    );
                }
                if plan.eligible[set].silos.len() > 1
                    && let Some(src) = source
                {
                    let scope = scope_for(addr, &located, src, &zone.refine);
                    let _ = writeln!(
                        o,
                        "ecs scope /{scope}: the prefix this location decision depended on"
                    );
                }
            } else if let Some(i) = node
                .silo
                .filter(|_| matches!(rtype, RecordType::A | RecordType::AAAA))
            {
                let _ = writeln!(
                    o,
                    "          silo {}'s edge addresses, whatever its health (ECS scope 0)",
                    zone.silos[i].name
                );
            }
        }
    }

    // What the server sends.
    let mut q = Message::query();
    q.add_query(Query::query(qname, rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(zone.udp_payload);
    if let Some(n) = ecs {
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(
                n.network(),
                n.prefix(),
                0,
            )));
    }
    q.set_edns(edns);
    let bytes = q.to_vec().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    respond(
        &plan,
        &bytes,
        client,
        true,
        &mut Scratch::default(),
        &mut out,
    )
    .ok_or("the query was not answered")?;
    let resp = Message::from_vec(&out).map_err(|e| format!("cannot decode our own answer: {e}"))?;
    let scope = resp
        .edns
        .as_ref()
        .and_then(|e| e.option(EdnsCode::Subnet))
        .and_then(|opt| match opt {
            EdnsOption::Subnet(c) => Some(c.scope_prefix()),
            _ => None,
        });
    let _ = writeln!(
        o,
        "answer    {}{}{}, {} bytes",
        resp.metadata.response_code,
        if resp.metadata.authoritative {
            ", authoritative"
        } else {
            ""
        },
        scope
            .map(|s| format!(", ECS scope /{s}"))
            .unwrap_or_default(),
        out.len()
    );
    for (section, records) in [
        ("answer", &resp.answers),
        ("authority", &resp.authorities),
        ("additional", &resp.additionals),
    ] {
        for r in records {
            let _ = writeln!(o, "  {section:<10} {r}");
        }
    }
    Ok(o)
}

fn describe(snap: &Snapshot, l: &Located) -> String {
    let country = l.country.as_deref().unwrap_or("unknown country");
    let why = match &l.source {
        Source::Override(n) => format!("config override {n}"),
        Source::Local => format!(
            "loopback/private: the local silo {}",
            snap.local_silo_name()
        ),
        Source::Database => format!("geo database, network /{}", l.prefix_len),
        Source::Unknown => format!(
            "not in the geo database: answered as if at this node's silo {}",
            snap.local_silo_name()
        ),
    };
    match l.point {
        Some(p) => format!("{country} ({why}) at {:.2}, {:.2}", p.lat, p.lon),
        None => format!("{country} ({why})"),
    }
}

fn role_text(plan: &Plan, role: &Role) -> String {
    match role {
        Role::Apex => "the zone apex (SOA, NS, static records; MX if in mx_names)".to_owned(),
        Role::Static => {
            "static records ([[dns.record]], the SPF of the egress, MTA-STS, TLS-RPT)".to_owned()
        }
        Role::NameServer => "a name server (glue addresses)".to_owned(),
        Role::Service => "a service name: the nearest healthy silo".to_owned(),
        Role::SiloHost(i) => format!("the host name of silo {}", plan.zone.silos[*i].name),
        Role::Tenant(t) => format!("pinned to tenant {t}: only silos holding its regions"),
        Role::EmptyNonTerminal => "an empty non-terminal (exists, no records: NODATA)".to_owned(),
    }
}

fn silos(o: &mut String, plan: &Plan, set: usize, client: Option<[f64; 3]>) {
    let zone = &plan.zone;
    let s = &zone.sets[set];
    let e = &plan.eligible[set];
    let _ = writeln!(o, "candidates {} ({} silos)", s.label, s.members.len());
    let client = client.unwrap_or(zone.local_unit);
    let mut order = Vec::new();
    order_silos(plan, set, Some(client), &mut order);
    let point_of = |u: [f64; 3]| crate::geo::Point {
        lat: u[2].asin().to_degrees(),
        lon: u[1].atan2(u[0]).to_degrees(),
    };
    let from = point_of(client);
    for (k, &(_, i)) in order.iter().enumerate() {
        let si = &zone.silos[usize::from(i)];
        let _ = writeln!(
            o,
            "  {}. {:<8} {:<26} {:>6.0} km  {}{}",
            k + 1,
            si.name,
            si.hostname,
            from.distance_km(si.point),
            plan.silo_state[usize::from(i)].as_str(),
            if k == 0 { "  <- answered first" } else { "" }
        );
    }
    for &m in &s.members {
        if !e.silos.contains(&m) {
            let si = &zone.silos[usize::from(m)];
            let _ = writeln!(
                o,
                "  -  {:<8} left out: {}",
                si.name,
                plan.silo_state[usize::from(m)].as_str()
            );
        }
    }
    match e.fail_open {
        Some(FailOpen::AllDown) => {
            let _ = writeln!(
                o,
                "          every candidate is down: answering with all of them (fail open)"
            );
        }
        Some(FailOpen::AllDrained) => {
            let _ = writeln!(
                o,
                "          every candidate is drained: answering with all of them (fail open)"
            );
        }
        None => {}
    }
}
