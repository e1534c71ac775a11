//! Egress: the source ranges engines deliver from. Tenants lock port 25 to these ranges, so the
//! list operators hand out (`maildistiller egress`), the SPF record GeoDNS serves and the
//! addresses engines bind are all derived from the same `[[silo]] egress` config here.

use std::fmt::Write;

use ipnetwork::IpNetwork;

use super::Topology;

/// Every silo's egress ranges, in config order, without duplicates.
pub fn ranges(t: &Topology) -> Vec<IpNetwork> {
    let mut out: Vec<IpNetwork> = Vec::new();
    for s in &t.silos {
        for n in &s.egress {
            if !out.contains(n) {
                out.push(*n);
            }
        }
    }
    out
}

/// The SPF record listing exactly the egress ranges (`-all`: nothing else sends for the tenant
/// through us). `None` when no silo declares egress.
pub fn spf(t: &Topology) -> Option<String> {
    let r = ranges(t);
    if r.is_empty() {
        return None;
    }
    let mut o = String::from("v=spf1");
    for n in r {
        let (kind, full) = match n {
            IpNetwork::V4(v) => ("ip4", v.prefix() == 32),
            IpNetwork::V6(v) => ("ip6", v.prefix() == 128),
        };
        if full {
            let _ = write!(o, " {kind}:{}", n.ip());
        } else {
            let _ = write!(o, " {kind}:{}/{}", n.network(), n.prefix());
        }
    }
    o.push_str(" -all");
    Some(o)
}

/// The text of `maildistiller egress`.
pub fn explain(t: &Topology) -> String {
    let mut o = String::new();
    for s in &t.silos {
        let list: Vec<String> = s.egress.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(
            o,
            "{:<10} {}",
            s.name,
            if list.is_empty() {
                "(none configured)".into()
            } else {
                list.join(" ")
            }
        );
    }
    match spf(t) {
        Some(r) => {
            let _ = writeln!(
                o,
                "\nSPF (served by GeoDNS as TXT; tenants may include it):\n{r}"
            );
        }
        None => {
            o.push_str("\nno egress configured: engines use the host's default source address\n")
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;

    #[test]
    fn spf_lists_exactly_the_configured_ranges() {
        let text = r#"
[regions.uk]
[[silo]]
name = "a"
hostname = "a.example.net"
lat = 0.0
lon = 0.0
egress = ["192.0.2.16/28", "2001:db8:1::/64", "198.51.100.7/32"]
[[silo]]
name = "b"
hostname = "b.example.net"
lat = 0.0
lon = 1.0
egress = ["192.0.2.16/28", "2001:db8:2::25/128"]
"#;
        let c = load::from_str(text, std::path::Path::new(".")).unwrap();
        let t = Topology::build(&c);
        assert_eq!(
            spf(&t).unwrap(),
            "v=spf1 ip4:192.0.2.16/28 ip6:2001:db8:1::/64 ip4:198.51.100.7 ip6:2001:db8:2::25 -all"
        );
        assert!(explain(&t).contains("b          192.0.2.16/28 2001:db8:2::25/128"));
    }
}
