//! `[dns]`: the GeoDNS role's settings.
//!
//! Names may be written relative to the zone (`mx`, `_mta-sts`), as `@` for the zone itself, or
//! absolute (`mx.in.example.net`, with or without the final dot); every name must be inside the
//! zone. Host names of name servers and the SOA are relative when they are one label (`ns1`),
//! absolute otherwise. Names inside record values (MX, CNAME, SRV targets) are absolute.
//!
//! What needs the rest of the config (tenant ids in `[dns.tenant.ID]`, silo host names clashing
//! with other names) is checked when the zone is built, where a clash drops the lower-precedence
//! name with a warning (see `dns/zone.rs`); the syntax of record values is checked by the DNS role
//! (`dns::check_records`) where the snapshot is built; everything else is an error here, before
//! any port is bound.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::health::HealthConfig;
use super::units::Dur;
use super::validate::{Checker, is_domain};

/// Record types `[[dns.record]]` may hold. SOA and NS come from `[dns.soa]` and `[[dns.ns]]`.
pub const STATIC_TYPES: &[&str] = &[
    "A", "AAAA", "CAA", "CNAME", "HINFO", "HTTPS", "MX", "NAPTR", "PTR", "SRV", "SSHFP", "SVCB",
    "TLSA", "TXT",
];

/// `--role dns`: the authoritative GeoDNS server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP and TCP listeners (both on each address). Default `127.0.0.1:5353`. On a host with
    /// several addresses list each one rather than `0.0.0.0`, so UDP answers leave from the
    /// address the query came to.
    pub listen: Vec<SocketAddr>,
    /// The zone served, e.g. `in.example.net`. Queries for names outside it get REFUSED.
    pub zone: String,
    /// Names answered (A/AAAA) with the edges of the nearest healthy silo. Default `["mx"]`.
    pub service_names: Vec<String>,
    /// Names answered (MX) with one exchange per healthy silo, nearest first, preferences 10,
    /// 20, 30 …, and the silo host names' addresses as additional data. Default none.
    pub mx_names: Vec<String>,
    /// `<tenant-id>.<zone>` answers A/AAAA and MX with only the silos that hold clusters of the
    /// tenant's regions. Default true.
    pub tenant_names: bool,
    /// More names pinned to a tenant: `[dns.tenant.acme] names = ["acme-mx"]`.
    #[serde(rename = "tenant")]
    pub tenants: BTreeMap<String, TenantNames>,
    /// How many further silos' addresses follow the nearest one's in A/AAAA answers (resolvers
    /// may reorder records, so this is a hint; MX preferences are the reliable fail-over).
    /// Default 0, at most 8.
    pub next_silos: u32,
    /// TTL of answers that follow location or health: service, tenant and MX names, silo host
    /// names. Default 60 s.
    pub ttl: Dur,
    /// TTL of static data: SOA, NS, glue, `[[dns.record]]`. Default 1 h.
    pub static_ttl: Dur,
    pub soa: SoaConfig,
    /// The zone's name servers; in-zone ones need `addresses` (glue).
    pub ns: Vec<NsConfig>,
    /// Static records.
    #[serde(rename = "record")]
    pub records: Vec<RecordConfig>,
    /// The TXT record listing the engines' egress ranges (`v=spf1 ip4:… -all`), generated from
    /// the silos' `egress` (the list `maildistiller egress` prints), so tenants can
    /// `include:spf.<zone>` and lock port 25 to exactly those ranges. Default `spf`; `""` to
    /// not publish it. Not published when no silo declares egress.
    pub spf_name: String,
    /// MTA-STS policy id: publishes `_mta-sts.<zone> TXT "v=STSv1; id=…"`. Default none.
    pub mta_sts_id: Option<String>,
    /// TLS-RPT report URIs (`mailto:…`, `https://…`, comma-separated): publishes
    /// `_smtp._tls.<zone> TXT "v=TLSRPTv1; rua=…"`. Default none.
    pub tls_rpt: Option<String>,
    /// Largest UDP answer we send to EDNS clients (they may ask for less). Default 1232 (the
    /// DNS flag day 2020 value), allowed 512..=4096. Clients without EDNS get 512.
    pub udp_payload: u16,
    /// Threads answering UDP, each with its own socket (SO_REUSEPORT). Default 0: one per CPU,
    /// at most 16. Read at start.
    pub udp_threads: u32,
    /// Most concurrent TCP connections. Default 1000. Read at start.
    pub tcp_max_connections: u32,
    /// A TCP connection with no query for this long is closed. Default 10 s.
    pub tcp_idle_timeout: Dur,
    /// Answer EDNS NSID (RFC 5001) queries with this identifier, e.g. the node name. Default none.
    pub nsid: Option<String>,
    /// Health probe settings for silo edges (SMTP: connect, 220, QUIT).
    pub health: HealthConfig,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 5353))],
            zone: "in.example.net".to_owned(),
            service_names: vec!["mx".to_owned()],
            mx_names: Vec::new(),
            tenant_names: true,
            tenants: BTreeMap::new(),
            next_silos: 0,
            ttl: Dur::secs(60),
            static_ttl: Dur::secs(3600),
            soa: SoaConfig::default(),
            ns: Vec::new(),
            records: Vec::new(),
            spf_name: "spf".to_owned(),
            mta_sts_id: None,
            tls_rpt: None,
            udp_payload: 1232,
            udp_threads: 0,
            tcp_max_connections: 1000,
            tcp_idle_timeout: Dur::secs(10),
            nsid: None,
            health: HealthConfig::default(),
        }
    }
}

/// `[dns.soa]`. The negative-caching TTL of NXDOMAIN/NODATA answers is the smaller of
/// `static_ttl` and `minimum` (RFC 2308).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SoaConfig {
    /// Primary name server. Default: the first `[[dns.ns]]`, else `ns1.<zone>`.
    pub mname: Option<String>,
    /// Contact mailbox in DNS form (`hostmaster` = `hostmaster@<zone>`). Default `hostmaster`.
    pub rname: String,
    /// Zone serial. We do no zone transfers, so it only needs to match across GeoDNS nodes.
    /// Default 1.
    pub serial: u32,
    /// Default 2 h.
    pub refresh: Dur,
    /// Default 30 min.
    pub retry: Dur,
    /// Default 14 d.
    pub expire: Dur,
    /// Negative-caching TTL. Default 60 s, so a new tenant's name resolves soon.
    pub minimum: Dur,
}

impl Default for SoaConfig {
    fn default() -> Self {
        SoaConfig {
            mname: None,
            rname: "hostmaster".to_owned(),
            serial: 1,
            refresh: Dur::secs(7200),
            retry: Dur::secs(1800),
            expire: Dur::secs(14 * 86_400),
            minimum: Dur::secs(60),
        }
    }
}

/// `[[dns.ns]]`: one name server of the zone.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NsConfig {
    pub name: String,
    /// Glue addresses; required when the name is inside the zone.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

/// `[[dns.record]]`: one static record.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    pub name: String,
    /// One of [`STATIC_TYPES`].
    #[serde(rename = "type")]
    pub rtype: String,
    /// Presentation format (`10 mail.example.net.`, `0 issue "letsencrypt.org"`). For TXT, a
    /// value not starting with `"` is one string, split into 255-byte pieces as needed.
    pub value: String,
    /// Default `static_ttl`.
    pub ttl: Option<Dur>,
}

/// `[dns.tenant.ID]`: names pinned to one tenant's regions.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantNames {
    /// Answer A/AAAA.
    pub names: Vec<String>,
    /// Answer MX.
    pub mx_names: Vec<String>,
}

/// A name made absolute against `zone`: lower case, no final dot. `Err` when outside the zone
/// or not a DNS name.
pub fn absolute(name: &str, zone: &str) -> Result<String, String> {
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    let n = name.trim().to_ascii_lowercase();
    let full = if n == "@" {
        zone.clone()
    } else if let Some(abs) = n.strip_suffix('.') {
        abs.to_owned()
    } else if in_zone(&n, &zone) {
        n
    } else {
        format!("{n}.{zone}")
    };
    let labels_ok = full.len() <= 253
        && full
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_graphic()));
    if !labels_ok {
        return Err(format!("{name:?} is not a DNS name"));
    }
    if !in_zone(&full, &zone) {
        return Err(format!("{name:?} is outside the zone {zone}"));
    }
    Ok(full)
}

/// Whether an absolute name is the zone or below it.
pub fn in_zone(name: &str, zone: &str) -> bool {
    name == zone
        || (name.len() > zone.len()
            && name.ends_with(zone)
            && name.as_bytes()[name.len() - zone.len() - 1] == b'.')
}

/// A host name as written for NS, SOA mname and rname: one label (`ns1`) is relative to the
/// zone, anything with a dot is absolute (a final dot is allowed). Lower case, no final dot.
pub fn host_name(name: &str, zone: &str) -> Result<String, String> {
    let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let full = if n.contains('.') {
        n
    } else {
        format!("{n}.{zone}")
    };
    if is_domain(&full) {
        Ok(full)
    } else {
        Err(format!("{name:?} is not a DNS name"))
    }
}

impl DnsConfig {
    pub fn check(&self, k: &mut Checker) {
        let zone_ok = is_domain(&self.zone);
        if !zone_ok {
            k.err("dns.zone", format!("{:?} is not a DNS name", self.zone));
        }
        k.dur("dns.ttl", self.ttl, 0, 86_400);
        k.dur("dns.static_ttl", self.static_ttl, 0, 7 * 86_400);
        k.range("dns.next_silos", self.next_silos.into(), 0, 8);
        k.range("dns.udp_payload", self.udp_payload.into(), 512, 4096);
        k.range("dns.udp_threads", self.udp_threads.into(), 0, 64);
        k.range(
            "dns.tcp_max_connections",
            self.tcp_max_connections.into(),
            1,
            1_000_000,
        );
        k.dur("dns.tcp_idle_timeout", self.tcp_idle_timeout, 100, 3600);
        let s = &self.soa;
        k.dur("dns.soa.refresh", s.refresh, 1000, 365 * 86_400);
        k.dur("dns.soa.retry", s.retry, 1000, 365 * 86_400);
        k.dur("dns.soa.expire", s.expire, 1000, 365 * 86_400);
        k.dur("dns.soa.minimum", s.minimum, 0, 86_400);
        if let Some(n) = &self.nsid
            && (n.is_empty() || n.len() > 128)
        {
            k.err("dns.nsid", "must be 1..=128 bytes");
        }
        if !self.spf_name.is_empty() {
            match absolute(&self.spf_name, &self.zone) {
                Err(e) => k.err("dns.spf_name", e),
                Ok(spf) => {
                    for (i, r) in self.records.iter().enumerate() {
                        if r.rtype.eq_ignore_ascii_case("txt")
                            && absolute(&r.name, &self.zone).is_ok_and(|n| n == spf)
                        {
                            k.err(
                                format!("dns.record[{i}]"),
                                format!(
                                    "{spf} TXT is generated from the silos' egress (dns.spf_name); \
                                     remove this record or set spf_name = \"\""
                                ),
                            );
                        }
                    }
                }
            }
        }
        if let Some(id) = &self.mta_sts_id
            && (id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            k.err("dns.mta_sts_id", "1..=32 letters and digits (RFC 8461)");
        }
        if let Some(r) = &self.tls_rpt
            && !r.split(',').all(|u| {
                let u = u.trim();
                u.starts_with("mailto:") || u.starts_with("https://")
            })
        {
            k.err(
                "dns.tls_rpt",
                "comma-separated mailto: or https:// URIs (RFC 8460)",
            );
        }
        for (i, a) in self.listen.iter().enumerate() {
            if a.ip().is_unspecified() {
                k.warn(format!(
                    "dns.listen[{i}]: {a} is a wildcard address; on a host with several addresses \
                     UDP answers may leave from another one: list each address instead"
                ));
            }
        }
        self.health.check("dns.health", k);
        if zone_ok {
            self.check_names(k);
        }
    }

    /// Every name resolves inside the zone; static records parse and do not clash with the
    /// names GeoDNS answers itself.
    fn check_names(&self, k: &mut Checker) {
        let zone = self.zone.trim_end_matches('.').to_ascii_lowercase();
        let abs = |path: String, name: &str, k: &mut Checker| match absolute(name, &zone) {
            Ok(n) => Some(n),
            Err(e) => {
                k.err(path, e);
                None
            }
        };
        let mut geo_a: HashSet<String> = HashSet::new();
        let mut geo_mx: HashSet<String> = HashSet::new();
        for (i, n) in self.service_names.iter().enumerate() {
            geo_a.extend(abs(format!("dns.service_names[{i}]"), n, k));
        }
        for (i, n) in self.mx_names.iter().enumerate() {
            geo_mx.extend(abs(format!("dns.mx_names[{i}]"), n, k));
        }
        let mut pinned: HashMap<String, String> = HashMap::new();
        for (id, t) in &self.tenants {
            for (field, list, mx) in [("names", &t.names, false), ("mx_names", &t.mx_names, true)] {
                for (i, n) in list.iter().enumerate() {
                    let p = format!("dns.tenant.{id}.{field}[{i}]");
                    let Some(n) = abs(p.clone(), n, k) else {
                        continue;
                    };
                    let service =
                        (geo_a.contains(&n) || geo_mx.contains(&n)) && !pinned.contains_key(&n);
                    if service {
                        k.err(&p, format!("{n} is already a service name"));
                    } else if let Some(other) = pinned.get(&n)
                        && other != id
                    {
                        k.err(&p, format!("{n} is already pinned to tenant {other:?}"));
                    }
                    pinned.insert(n.clone(), id.clone());
                    if mx {
                        geo_mx.insert(n);
                    } else {
                        geo_a.insert(n);
                    }
                }
            }
        }
        if let Some(m) = &self.soa.mname
            && host_name(m, &zone).is_err()
        {
            k.err("dns.soa.mname", format!("{m:?} is not a DNS name"));
        }
        if host_name(&self.soa.rname, &zone).is_err() {
            k.err(
                "dns.soa.rname",
                format!("{:?} is not a DNS name", self.soa.rname),
            );
        }
        for (i, ns) in self.ns.iter().enumerate() {
            let p = format!("dns.ns[{i}]");
            match host_name(&ns.name, &zone) {
                Err(e) => k.err(format!("{p}.name"), e),
                Ok(n) if in_zone(&n, &zone) && ns.addresses.is_empty() => k.warn(format!(
                    "{p}: {n} is inside the zone but has no addresses (glue): resolvers cannot reach it"
                )),
                Ok(_) => {}
            }
        }
        if self.ns.is_empty() {
            k.warn(
                "dns.ns is empty: the zone has no NS records (answers still work; delegation \
                 checkers will complain)",
            );
        }
        let mut types_at: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, r) in self.records.iter().enumerate() {
            let p = format!("dns.record[{i}]");
            let Some(name) = abs(format!("{p}.name"), &r.name, k) else {
                continue;
            };
            if let Some(ttl) = r.ttl {
                k.dur(&format!("{p}.ttl"), ttl, 0, 7 * 86_400);
            }
            // The value's syntax is checked by the DNS role where the snapshot is built
            // (`dns::check_records`): parsing it is hickory's business.
            let rt = r.rtype.to_ascii_uppercase();
            if !STATIC_TYPES.contains(&rt.as_str()) {
                k.err(
                    format!("{p}.value"),
                    format!(
                        "type {:?} is not served from [[dns.record]] (allowed: {})",
                        r.rtype,
                        STATIC_TYPES.join(", ")
                    ),
                );
                continue;
            }
            let clash = match rt.as_str() {
                "A" | "AAAA" => geo_a.contains(&name),
                "MX" => geo_mx.contains(&name),
                "CNAME" => geo_a.contains(&name) || geo_mx.contains(&name) || name == zone,
                _ => false,
            };
            if clash {
                k.err(
                    &p,
                    format!("{rt} at {name} clashes with the answers GeoDNS makes for that name"),
                );
            }
            types_at.entry(name).or_default().push(rt);
        }
        for (name, types) in &types_at {
            if types.iter().any(|t| t == "CNAME") && types.len() > 1 {
                k.err(
                    "dns.record",
                    format!("{name}: a CNAME cannot stand beside other records (RFC 1034 3.6.2)"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_against_the_zone() {
        let z = "in.example.net";
        assert_eq!(absolute("@", z).unwrap(), "in.example.net");
        assert_eq!(absolute("MX", z).unwrap(), "mx.in.example.net");
        assert_eq!(
            absolute("mx.in.example.net", z).unwrap(),
            "mx.in.example.net"
        );
        assert_eq!(
            absolute("mx.in.example.net.", z).unwrap(),
            "mx.in.example.net"
        );
        assert_eq!(
            absolute("_smtp._tls", z).unwrap(),
            "_smtp._tls.in.example.net"
        );
        assert!(
            absolute("mx.example.org.", z)
                .unwrap_err()
                .contains("outside")
        );
        assert!(absolute("a..b", z).is_err());
        assert!(!in_zone("xin.example.net", z));
        assert_eq!(host_name("ns1", z).unwrap(), "ns1.in.example.net");
        assert_eq!(host_name("ns.example.org.", z).unwrap(), "ns.example.org");
    }
}
