//! The zone as wire-format pieces, built once per config snapshot so that answering a query is
//! copying bytes, not encoding records.
//!
//! Lifecycle: [`Zone::build`] runs when a new config snapshot is first seen (never per query).
//! It encodes every record with hickory-proto and stores it as it will appear in an answer:
//! records owned by the query name start with the compression pointer `C0 0C` (the question
//! name always sits at offset 12), so an RRset is one `memcpy`. Per silo it keeps the edge
//! A/AAAA records and its MX record; per geo name it keeps which silo set answers it. Health is
//! not in here: `state.rs` overlays it on the zone and rebuilds only that overlay on a health
//! change.
//!
//! Names and what they answer (a clash drops the later kind, with a warning):
//! 1. the apex: SOA, NS (+ glue), static records; in-zone NS names answer their glue;
//! 2. `[[dns.record]]`, the SPF TXT generated from the silos' egress (`spf_name`), `mta_sts_id`,
//!    `tls_rpt`: static RRsets;
//! 3. `service_names` (A/AAAA) and `mx_names` (MX): every silo with edge addresses;
//! 4. silo host names inside the zone: that silo's edge addresses, whatever its health;
//! 5. tenant names (`<id>.<zone>`, `[dns.tenant.ID]`): the silos holding the tenant's regions.
//!
//! Parents of names that exist are empty non-terminals (NODATA, not NXDOMAIN).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};

use hickory_proto::rr::rdata::{A, AAAA, MX, NS, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use ipnetwork::IpNetwork;

use super::records::parse_rdata;
use crate::config::dns::{DnsConfig, absolute, host_name, in_zone};
use crate::geo::Point;
use crate::snapshot::Snapshot;

/// Record type numbers used on the hot path.
pub(crate) mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
    pub const CAA: u16 = 257;
}

/// The name table's hasher: keys are short and ours (lower-case wire names), so a fast
/// non-keyed hash is fine (hash flooding would need control of the config file). It takes 8
/// bytes per multiply (FxHash's step) rather than FNV's one: the lookup is on the hot path of
/// every query (bench profile: `Zone::node` was the largest user-space symbol).
#[derive(Default)]
pub(crate) struct NameHasher(u64);

impl NameHasher {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

/// One RRset, ready to copy into the answer section.
#[derive(Debug, Clone)]
pub(crate) struct RRset {
    pub rtype: u16,
    pub count: u16,
    /// The records, each starting with the pointer `C0 0C` to the question name.
    pub rrs: Vec<u8>,
    /// Additional-section records (NS glue), owner names written out in full.
    pub glue: Vec<u8>,
    pub glue_count: u16,
}

/// What a name is, for `dns-explain` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    Apex,
    Static,
    NameServer,
    Service,
    SiloHost(usize),
    Tenant(String),
    EmptyNonTerminal,
}

/// Everything a name answers.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub name: String,
    pub role: Role,
    pub statics: Vec<RRset>,
    /// A/AAAA from the nearest healthy silo of this set.
    pub address: Option<usize>,
    /// MX, one per healthy silo of this set.
    pub mx: Option<usize>,
    /// A/AAAA: this silo's edges.
    pub silo: Option<usize>,
}

impl Node {
    fn new(name: &str, role: Role) -> Node {
        Node {
            name: name.to_owned(),
            role,
            statics: Vec::new(),
            address: None,
            mx: None,
            silo: None,
        }
    }

    pub fn rrset(&self, t: u16) -> Option<&RRset> {
        self.statics.iter().find(|r| r.rtype == t)
    }
}

/// One silo's answer pieces.
#[derive(Debug, Clone)]
pub(crate) struct SiloRecords {
    pub name: String,
    pub hostname: String,
    pub point: Point,
    /// `point` on the unit sphere: ordering by distance is ordering by dot product.
    pub unit: [f64; 3],
    /// A records of the edges, each `C0 0C` + 14 bytes.
    pub a: Vec<u8>,
    pub a_count: u16,
    /// AAAA records of the edges, each `C0 0C` + 26 bytes.
    pub aaaa: Vec<u8>,
    pub aaaa_count: u16,
    /// `C0 0C` + MX record with preference 0 (patched per answer); the exchange name starts at
    /// byte [`MX_EXCHANGE_AT`].
    pub mx: Vec<u8>,
    /// The host name is in the zone: its addresses go in the additional section of MX answers.
    pub host_in_zone: bool,
    /// Health probe targets: each edge address at `edge_port`.
    pub edges: Vec<SocketAddr>,
    pub drain: bool,
}

/// Offset of the preference in [`SiloRecords::mx`].
pub(crate) const MX_PREF_AT: usize = 12;
/// Offset of the exchange name in [`SiloRecords::mx`].
pub(crate) const MX_EXCHANGE_AT: usize = 14;
/// Length of one A record in [`SiloRecords::a`].
pub(crate) const A_LEN: usize = 16;
/// Length of one AAAA record in [`SiloRecords::aaaa`].
pub(crate) const AAAA_LEN: usize = 28;

/// A set of silos that may answer a geo name.
#[derive(Debug, Clone)]
pub(crate) struct SiloSet {
    pub members: Vec<u16>,
    pub label: String,
}

/// The zone of one config snapshot.
#[derive(Debug)]
pub(crate) struct Zone {
    pub name: String,
    /// Lower-case wire form of the zone name.
    pub apex: Vec<u8>,
    nodes: HashMap<Box<[u8]>, Node, BuildHasherDefault<NameHasher>>,
    /// The SOA record without owner, TTL = negative-caching TTL, for NXDOMAIN/NODATA.
    pub soa_negative: Vec<u8>,
    pub silos: Vec<SiloRecords>,
    pub sets: Vec<SiloSet>,
    /// Every probe target, deduplicated.
    pub targets: Vec<SocketAddr>,
    pub warnings: Vec<String>,
    pub udp_payload: u16,
    pub next_silos: usize,
    pub nsid: Option<Vec<u8>>,
    /// Where clients of unknown location are assumed to be: this node's silo.
    pub local_unit: [f64; 3],
    /// Networks that can make a geo decision more specific than the rule that matched (CIDR
    /// overrides, local ranges): the ECS scope must exclude them.
    pub refine: Vec<IpNetwork>,
}

/// Ranges `geo` places at the local silo.
const LOCAL_RANGES: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
];

/// Lower-case wire form of an absolute name written as text (no final dot needed).
pub(crate) fn wire_name(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    for label in text
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    out
}

fn hickory_name(text: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.", text.trim_end_matches('.'))).ok()
}

/// `type class ttl rdlength rdata` of one record, names uncompressed.
fn body(rdata: RData, ttl: u32) -> Vec<u8> {
    let rec = Record::from_rdata(Name::root(), ttl, rdata);
    let mut buf = Vec::with_capacity(64);
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_name_encoding(NameEncoding::Uncompressed);
    // Encoding validated data cannot fail short of a 64 KiB record.
    if rec.emit(&mut enc).is_err() {
        return Vec::new();
    }
    buf.split_off(1) // drop the root owner name
}

pub(crate) fn unit(p: Point) -> [f64; 3] {
    let (lat, lon) = (p.lat.to_radians(), p.lon.to_radians());
    [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
}

fn ttl_of(d: crate::config::Dur) -> u32 {
    u32::try_from(d.get().as_secs()).unwrap_or(u32::MAX)
}

/// Collects RRsets per (name, type) before they become nodes.
#[derive(Default)]
struct Builder {
    nodes: BTreeMap<String, Node>,
    warnings: Vec<String>,
}

impl Builder {
    fn node(&mut self, name: &str, role: Role) -> &mut Node {
        self.nodes
            .entry(name.to_owned())
            .or_insert_with(|| Node::new(name, role))
    }

    fn add_static(&mut self, name: &str, role: Role, rdata: RData, ttl: u32) {
        let t = u16::from(rdata.record_type());
        let mut rr = vec![0xC0, 0x0C];
        rr.extend(body(rdata, ttl));
        let node = self.node(name, role);
        match node.statics.iter_mut().find(|s| s.rtype == t) {
            Some(set) => {
                set.rrs.extend(rr);
                set.count += 1;
            }
            None => node.statics.push(RRset {
                rtype: t,
                count: 1,
                rrs: rr,
                glue: Vec::new(),
                glue_count: 0,
            }),
        }
    }

    /// Claims `name` for geo answers of A/AAAA (`address`) and/or MX; `false` (with a warning)
    /// when the name already answers those types (or is a CNAME).
    fn claim(&mut self, name: &str, role: &Role, what: &str, address: bool, mx: bool) -> bool {
        if let Some(x) = self.nodes.get(name) {
            let clash = x.rrset(rtype::CNAME).is_some()
                || (address
                    && (x.address.is_some()
                        || x.silo.is_some()
                        || x.rrset(rtype::A).is_some()
                        || x.rrset(rtype::AAAA).is_some()))
                || (mx && (x.mx.is_some() || x.rrset(rtype::MX).is_some()));
            if clash {
                self.warnings.push(format!(
                    "dns: {name} is not answered as {what}: it already answers those types ({:?})",
                    x.role
                ));
                return false;
            }
        }
        let node = self.node(name, role.clone());
        if matches!(node.role, Role::EmptyNonTerminal | Role::Static) {
            node.role = role.clone();
        }
        true
    }
}

impl Zone {
    /// Builds the zone of a validated snapshot. Never fails: clashes that only the whole config
    /// shows are dropped with a warning (see the module docs).
    pub fn build(snap: &Snapshot) -> Zone {
        let cfg: &DnsConfig = &snap.config.dns;
        let zone = cfg.zone.trim_end_matches('.').to_ascii_lowercase();
        let ttl = ttl_of(cfg.ttl);
        let static_ttl = ttl_of(cfg.static_ttl);
        let mut b = Builder::default();

        // 1. The apex: SOA, NS, glue.
        let ns_names: Vec<String> = cfg
            .ns
            .iter()
            .filter_map(|n| host_name(&n.name, &zone).ok())
            .collect();
        let mname = cfg
            .soa
            .mname
            .as_deref()
            .and_then(|m| host_name(m, &zone).ok())
            .or_else(|| ns_names.first().cloned())
            .unwrap_or_else(|| format!("ns1.{zone}"));
        let rname =
            host_name(&cfg.soa.rname, &zone).unwrap_or_else(|_| format!("hostmaster.{zone}"));
        let secs = |d: crate::config::Dur| i32::try_from(d.get().as_secs()).unwrap_or(i32::MAX);
        let soa = SOA::new(
            hickory_name(&mname).unwrap_or_else(Name::root),
            hickory_name(&rname).unwrap_or_else(Name::root),
            cfg.soa.serial,
            secs(cfg.soa.refresh),
            secs(cfg.soa.retry),
            secs(cfg.soa.expire),
            ttl_of(cfg.soa.minimum),
        );
        let negative_ttl = static_ttl.min(ttl_of(cfg.soa.minimum));
        let soa_negative = body(RData::SOA(soa.clone()), negative_ttl);
        b.add_static(&zone, Role::Apex, RData::SOA(soa), static_ttl);
        for (ns, name) in cfg.ns.iter().zip(&ns_names) {
            let Some(n) = hickory_name(name) else {
                continue;
            };
            b.add_static(&zone, Role::Apex, RData::NS(NS(n)), static_ttl);
            if in_zone(name, &zone) {
                for ip in &ns.addresses {
                    b.add_static(name, Role::NameServer, address_rdata(*ip), static_ttl);
                }
                let mut glue = Vec::new();
                let mut count = 0;
                for ip in &ns.addresses {
                    glue.extend(wire_name(name));
                    glue.extend(body(address_rdata(*ip), static_ttl));
                    count += 1;
                }
                let apex = b.node(&zone, Role::Apex);
                if let Some(set) = apex.statics.iter_mut().find(|s| s.rtype == rtype::NS) {
                    set.glue.extend(glue);
                    set.glue_count += count;
                }
            }
        }

        // 2. Static records.
        for r in &cfg.records {
            let (Ok(name), Ok(rdata)) = (absolute(&r.name, &zone), parse_rdata(&r.rtype, &r.value))
            else {
                continue; // refused by DnsConfig::check before we get here
            };
            let role = if name == zone {
                Role::Apex
            } else {
                Role::Static
            };
            b.add_static(&name, role, rdata, r.ttl.map(ttl_of).unwrap_or(static_ttl));
        }
        if !cfg.spf_name.is_empty()
            && let Ok(name) = absolute(&cfg.spf_name, &zone)
            && let Some(spf) = crate::topology::egress::spf(&snap.topology)
            && let Ok(rdata) = parse_rdata("TXT", &spf)
        {
            b.add_static(&name, Role::Static, rdata, static_ttl);
        }
        if let Some(id) = &cfg.mta_sts_id {
            let txt = TXT::new(vec![format!("v=STSv1; id={id}")]);
            b.add_static(
                &format!("_mta-sts.{zone}"),
                Role::Static,
                RData::TXT(txt),
                static_ttl,
            );
        }
        if let Some(rua) = &cfg.tls_rpt {
            let txt = TXT::new(vec![format!("v=TLSRPTv1; rua={}", rua.replace(' ', ""))]);
            b.add_static(
                &format!("_smtp._tls.{zone}"),
                Role::Static,
                RData::TXT(txt),
                static_ttl,
            );
        }

        // 3. Silos and the sets that answer geo names.
        let topo = &snap.topology;
        let mut silos = Vec::with_capacity(topo.silos.len());
        let mut targets = Vec::new();
        for s in &topo.silos {
            let mut rec = SiloRecords {
                name: s.name.clone(),
                hostname: s.hostname.clone(),
                point: s.point,
                unit: unit(s.point),
                a: Vec::new(),
                a_count: 0,
                aaaa: Vec::new(),
                aaaa_count: 0,
                mx: vec![0xC0, 0x0C],
                host_in_zone: in_zone(&s.hostname, &zone),
                edges: Vec::new(),
                drain: s.drain,
            };
            for ip in &s.edge_addresses {
                let rr = body(address_rdata(*ip), ttl);
                let (buf, n) = match ip {
                    IpAddr::V4(_) => (&mut rec.a, &mut rec.a_count),
                    IpAddr::V6(_) => (&mut rec.aaaa, &mut rec.aaaa_count),
                };
                buf.extend([0xC0, 0x0C]);
                buf.extend(rr);
                *n += 1;
                rec.edges.push(SocketAddr::new(*ip, s.edge_port));
            }
            let exchange = hickory_name(&s.hostname).unwrap_or_else(Name::root);
            rec.mx.extend(body(RData::MX(MX::new(0, exchange)), ttl));
            if rec.edges.is_empty() {
                b.warnings.push(format!(
                    "dns: silo {} has no edge_addresses: it is never in geo answers",
                    s.name
                ));
            } else {
                targets.extend(rec.edges.iter().copied());
            }
            silos.push(rec);
        }
        targets.sort();
        targets.dedup();
        let with_edges = |i: usize| !silos[i].edges.is_empty();
        let mut sets = vec![SiloSet {
            members: (0..silos.len())
                .filter(|&i| with_edges(i))
                .map(|i| i as u16)
                .collect(),
            label: "every silo".to_owned(),
        }];
        let mut set_of: HashMap<Vec<u16>, usize> = HashMap::new();
        set_of.insert(sets[0].members.clone(), 0);

        // 3b. Service names.
        for n in &cfg.service_names {
            if let Ok(name) = absolute(n, &zone)
                && b.claim(&name, &Role::Service, "a service name", true, false)
            {
                b.node(&name, Role::Service).address = Some(0);
            }
        }
        for n in &cfg.mx_names {
            if let Ok(name) = absolute(n, &zone)
                && b.claim(&name, &Role::Service, "an MX name", false, true)
            {
                b.node(&name, Role::Service).mx = Some(0);
            }
        }

        // 4. Silo host names.
        for (i, s) in silos.iter().enumerate() {
            if !s.host_in_zone {
                continue;
            }
            if b.claim(
                &s.hostname,
                &Role::SiloHost(i),
                "a silo host name",
                true,
                false,
            ) {
                b.node(&s.hostname, Role::SiloHost(i)).silo = Some(i);
            }
        }

        // 5. Tenant names.
        for t in &topo.tenants {
            let regions = &t.regions;
            let members: Vec<u16> = topo
                .silos
                .iter()
                .enumerate()
                .filter(|&(i, s)| {
                    with_edges(i)
                        && s.clusters.iter().any(|c| {
                            regions.is_empty() || regions.contains(&topo.clusters[c.0].region)
                        })
                })
                .map(|(i, _)| i as u16)
                .collect();
            if members.is_empty() {
                b.warnings.push(format!(
                    "dns: tenant {} has no silo with edge addresses in its regions: its names answer NODATA",
                    t.id
                ));
            }
            let set = *set_of.entry(members.clone()).or_insert_with(|| {
                sets.push(SiloSet {
                    members,
                    label: if regions.is_empty() {
                        "silos with clusters (tenant has no regions)".to_owned()
                    } else {
                        format!("silos with clusters in {}", regions.join(", "))
                    },
                });
                sets.len() - 1
            });
            let extra = cfg.tenants.get(&t.id.0);
            let mut names: Vec<(String, bool, bool)> = Vec::new();
            if cfg.tenant_names {
                names.push((format!("{}.{zone}", t.id), true, true));
            }
            for n in extra.iter().flat_map(|e| &e.names) {
                names.extend(absolute(n, &zone).ok().map(|n| (n, true, false)));
            }
            for n in extra.iter().flat_map(|e| &e.mx_names) {
                names.extend(absolute(n, &zone).ok().map(|n| (n, false, true)));
            }
            let role = Role::Tenant(t.id.0.clone());
            for (name, address, mx) in names {
                let what = format!("tenant {}'s name", t.id);
                if b.claim(&name, &role, &what, address, mx) {
                    let node = b.node(&name, role.clone());
                    if address {
                        node.address = Some(set);
                    }
                    if mx {
                        node.mx = Some(set);
                    }
                }
            }
        }
        for id in cfg.tenants.keys() {
            if topo.tenant(id).is_none() {
                b.warnings.push(format!(
                    "dns.tenant.{id}: no such tenant; its names are not answered"
                ));
            }
        }

        // Empty non-terminals.
        let names: Vec<String> = b.nodes.keys().cloned().collect();
        for name in names {
            let mut rest = name.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if !in_zone(parent, &zone) || parent == zone {
                    break;
                }
                b.node(parent, Role::EmptyNonTerminal);
                rest = parent;
            }
        }

        let mut refine: Vec<IpNetwork> = snap.config.geo.overrides.iter().map(|o| o.cidr).collect();
        refine.extend(
            LOCAL_RANGES
                .iter()
                .filter_map(|r| r.parse::<IpNetwork>().ok()),
        );
        let local_point = topo
            .silos
            .get(snap.local_silo.0)
            .map(|s| s.point)
            .unwrap_or(Point { lat: 0.0, lon: 0.0 });
        let nodes = b
            .nodes
            .into_values()
            .map(|n| (wire_name(&n.name).into_boxed_slice(), n))
            .collect();
        Zone {
            apex: wire_name(&zone),
            name: zone,
            nodes,
            soa_negative,
            silos,
            sets,
            targets,
            warnings: b.warnings,
            udp_payload: cfg.udp_payload.clamp(512, 4096),
            next_silos: cfg.next_silos.min(8) as usize,
            nsid: cfg.nsid.as_ref().map(|s| s.as_bytes().to_vec()),
            local_unit: unit(local_point),
            refine,
        }
    }

    /// The node of a lower-case wire name.
    pub fn node(&self, wire: &[u8]) -> Option<&Node> {
        self.nodes.get(wire)
    }

    /// Offset of the zone's name inside `wire` (a lower-case wire name) when `wire` is the zone
    /// or below it; `None` for names outside the zone.
    pub fn apex_offset(&self, wire: &[u8]) -> Option<usize> {
        let mut pos = 0;
        while pos < wire.len() {
            if wire.len() - pos == self.apex.len() {
                return (wire[pos..] == self.apex[..]).then_some(pos);
            }
            if wire.len() - pos < self.apex.len() {
                return None;
            }
            pos += 1 + usize::from(wire[pos]);
        }
        None
    }
}

fn address_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}
