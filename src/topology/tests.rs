//! Routing tables: each case names the tenant, the receiving silo, the client, the engines that
//! are down or loaded, and the cluster order an operator expects.

use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::config::load;

const FLEET: &str = r#"
[regions.uk]
[regions.de]
[regions.us]

[[silo]]
name = "lon1"
hostname = "lon1.in.example.net"
lat = 51.5
lon = -0.12
  [[silo.cluster]]
  name = "uk"
  region = "uk"
    [[silo.cluster.engine]]
    address = "127.0.1.1:25"
    max_connections = 2
    [[silo.cluster.engine]]
    address = "127.0.1.2:25"
    max_connections = 2
  [[silo.cluster]]
  name = "de"
  region = "de"
    [[silo.cluster.engine]]
    address = "127.0.1.3:25"

[[silo]]
name = "man1"
hostname = "man1.in.example.net"
lat = 53.48
lon = -2.24
  [[silo.cluster]]
  name = "uk"
  region = "uk"
    [[silo.cluster.engine]]
    address = "127.0.2.1:25"

[[silo]]
name = "fra1"
hostname = "fra1.in.example.net"
lat = 50.11
lon = 8.68
  [[silo.cluster]]
  name = "de"
  region = "de"
    [[silo.cluster.engine]]
    address = "127.0.3.1:25"
  [[silo.cluster]]
  name = "uk"
  region = "uk"
    [[silo.cluster.engine]]
    address = "127.0.3.2:25"

[[silo]]
name = "nyc1"
hostname = "nyc1.in.example.net"
lat = 40.71
lon = -74.0
  [[silo.cluster]]
  name = "us"
  region = "us"
    [[silo.cluster.engine]]
    address = "127.0.4.1:25"
    weight = 3
    [[silo.cluster.engine]]
    address = "127.0.4.2:25"

[[tenant]]
id = "acme"
domains = ["acme.example"]
regions = ["uk"]
delivery = ["mx.acme.example"]

[[tenant]]
id = "globex"
domains = ["globex.example"]
subdomains = true
regions = ["de", "uk"]
failover = "any"
delivery = ["mx.globex.example:2525"]

[[tenant]]
id = "multi"
domains = ["multi.example"]
regions = ["uk", "us"]
placement = "nearest-to-sender"
delivery = ["mx.multi.example"]

[[tenant]]
id = "offices"
domains = ["offices.example"]
regions = ["us", "uk"]
placement = "nearest-to-silo"
delivery = ["mx.offices.example"]

[[tenant]]
id = "initech"
domains = ["Initech.Example"]
delivery = ["[2001:db8::25]:25"]
"#;

fn fleet() -> Topology {
    let c = load::from_str(FLEET, Path::new(".")).expect("fixture parses");
    crate::config::validate::validate(&c, Default::default()).expect("fixture validates");
    Topology::build(&c)
}

/// Engines by address -> (healthy, outstanding); unlisted engines are healthy and idle.
struct View(HashMap<SocketAddr, EngineLoad>, Vec<SocketAddr>);

impl View {
    fn new(t: &Topology, down: &[&str], busy: &[(&str, u32)]) -> View {
        let mut m = HashMap::new();
        for d in down {
            m.insert(
                d.parse().unwrap(),
                EngineLoad {
                    healthy: false,
                    outstanding: 0,
                },
            );
        }
        for (a, n) in busy {
            m.insert(
                a.parse().unwrap(),
                EngineLoad {
                    healthy: true,
                    outstanding: *n,
                },
            );
        }
        View(m, t.engines.iter().map(|e| e.address).collect())
    }
}

impl LoadView for View {
    fn engine(&self, e: EngineIdx) -> EngineLoad {
        *self.0.get(&self.1[e.0]).unwrap_or(&EngineLoad {
            healthy: true,
            outstanding: 0,
        })
    }
}

fn order(
    t: &Topology,
    tenant: &str,
    silo: &str,
    client: Option<(f64, f64)>,
    view: &View,
) -> Vec<String> {
    let tenant = t.tenant(tenant).unwrap();
    let route = t.route(
        tenant,
        t.silo_by_name(silo).unwrap(),
        client.and_then(|(a, b)| Point::new(a, b)),
        view,
    );
    route.usable().map(|c| t.cluster_label(c.cluster)).collect()
}

/// (tenant, receiving silo, client, engines down, engines busy, expected usable order)
type Case<'a> = (
    &'a str,
    &'a str,
    Option<(f64, f64)>,
    &'a [&'a str],
    &'a [(&'a str, u32)],
    &'a [&'a str],
);

#[test]
fn routing_table() {
    let t = fleet();
    let paris = Some((48.85, 2.35));
    let boston = Some((42.36, -71.06));
    // (tenant, receiving silo, client, down, busy, expected usable order)
    let cases: &[Case] = &[
        // A UK tenant at the London edge: London's UK cluster, then the nearer UK clusters.
        (
            "acme",
            "lon1",
            None,
            &[],
            &[],
            &["lon1/uk", "man1/uk", "fra1/uk"],
        ),
        // Arriving in Frankfurt, the local UK cluster is nearest.
        (
            "acme",
            "fra1",
            None,
            &[],
            &[],
            &["fra1/uk", "lon1/uk", "man1/uk"],
        ),
        // London's UK cluster down: the next UK cluster, never a DE or US one (region-only).
        (
            "acme",
            "lon1",
            None,
            &["127.0.1.1:25", "127.0.1.2:25"],
            &[],
            &["man1/uk", "fra1/uk"],
        ),
        // One engine of two down: the cluster is still first.
        (
            "acme",
            "lon1",
            None,
            &["127.0.1.1:25"],
            &[],
            &["lon1/uk", "man1/uk", "fra1/uk"],
        ),
        // Every UK cluster down: nothing (the edge answers 4xx), never another region.
        (
            "acme",
            "lon1",
            None,
            &[
                "127.0.1.1:25",
                "127.0.1.2:25",
                "127.0.2.1:25",
                "127.0.3.2:25",
            ],
            &[],
            &[],
        ),
        // London UK saturated (2+2 sessions of 2+2): spill over to Manchester, London kept last.
        (
            "acme",
            "lon1",
            None,
            &[],
            &[("127.0.1.1:25", 2), ("127.0.1.2:25", 2)],
            &["man1/uk", "fra1/uk", "lon1/uk"],
        ),
        // Globex prefers DE, then UK, then anything (failover = any).
        (
            "globex",
            "lon1",
            None,
            &[],
            &[],
            &[
                "lon1/de", "fra1/de", "lon1/uk", "man1/uk", "fra1/uk", "nyc1/us",
            ],
        ),
        // Every DE and UK cluster down: the US cluster takes it.
        (
            "globex",
            "fra1",
            None,
            &[
                "127.0.1.1:25",
                "127.0.1.2:25",
                "127.0.1.3:25",
                "127.0.2.1:25",
                "127.0.3.1:25",
                "127.0.3.2:25",
            ],
            &[],
            &["nyc1/us"],
        ),
        // No regions: nearest to the client, wherever it arrived.
        (
            "initech",
            "lon1",
            boston,
            &[],
            &[],
            &[
                "nyc1/us", "man1/uk", "lon1/uk", "lon1/de", "fra1/de", "fra1/uk",
            ],
        ),
        (
            "initech",
            "nyc1",
            paris,
            &[],
            &[],
            &[
                "lon1/uk", "lon1/de", "fra1/de", "fra1/uk", "man1/uk", "nyc1/us",
            ],
        ),
        // Multi-office, nearest to the sender, never outside its regions (region-only).
        (
            "multi",
            "lon1",
            boston,
            &[],
            &[],
            &["nyc1/us", "man1/uk", "lon1/uk", "fra1/uk"],
        ),
        (
            "multi",
            "nyc1",
            paris,
            &[],
            &[],
            &["lon1/uk", "fra1/uk", "man1/uk", "nyc1/us"],
        ),
        // Multi-office, nearest to the receiving silo whatever the listed order.
        (
            "offices",
            "fra1",
            None,
            &[],
            &[],
            &["fra1/uk", "lon1/uk", "man1/uk", "nyc1/us"],
        ),
        (
            "offices",
            "nyc1",
            None,
            &[],
            &[],
            &["nyc1/us", "man1/uk", "lon1/uk", "fra1/uk"],
        ),
        // Client unknown: nearest to the receiving silo.
        (
            "initech",
            "fra1",
            None,
            &[],
            &[],
            &[
                "fra1/de", "fra1/uk", "lon1/uk", "lon1/de", "man1/uk", "nyc1/us",
            ],
        ),
    ];
    for (i, (tenant, silo, client, down, busy, want)) in cases.iter().enumerate() {
        let view = View::new(&t, down, busy);
        let got = order(&t, tenant, silo, *client, &view);
        assert_eq!(got, *want, "case {i}: {tenant} at {silo}");
    }
}

#[test]
fn region_only_excludes_and_explains() {
    let t = fleet();
    let acme = t.tenant("acme").unwrap();
    let route = t.route(acme, SiloIdx(0), None, &Unloaded);
    let excluded: Vec<String> = route
        .excluded
        .iter()
        .map(|(c, _)| t.cluster_label(*c))
        .collect();
    assert_eq!(excluded, ["lon1/de", "fra1/de", "nyc1/us"]);
    assert!(
        route
            .candidates
            .iter()
            .all(|c| t.clusters[c.cluster.0].region == "uk")
    );
}

#[test]
fn drained_silo_and_engine_take_no_new_sessions() {
    let mut c = load::from_str(FLEET, Path::new(".")).unwrap();
    c.silos[0].drain = true;
    c.silos[1].clusters[0].engines[0].drain = true;
    let t = Topology::build(&c);
    let view = View::new(&t, &[], &[]);
    assert_eq!(order(&t, "acme", "lon1", None, &view), ["fra1/uk"]);
}

#[test]
fn tenant_by_domain_is_case_insensitive_and_subdomains_opt_in() {
    let t = fleet();
    let id = |d: &str| t.tenant_for_domain(d).map(|t| t.id.0.clone());
    assert_eq!(id("ACME.example"), Some("acme".into()));
    assert_eq!(id("acme.example."), Some("acme".into()));
    assert_eq!(id("initech.example"), Some("initech".into()));
    assert_eq!(id("eu.mail.globex.example"), Some("globex".into()));
    assert_eq!(
        id("sub.acme.example"),
        None,
        "acme did not ask for subdomains"
    );
    assert_eq!(id("example"), None);
    assert_eq!(id("nobody.example"), None);
    assert_eq!(
        t.tenant_for_address("Bob@Acme.Example")
            .map(|t| t.id.0.as_str()),
        Some("acme")
    );
    assert!(t.tenant_for_address("no-domain").is_none());
}

#[test]
fn p2c_prefers_less_loaded_and_respects_weight_and_limits() {
    let t = fleet();
    let lon_uk = ClusterIdx(0);
    let mut rng = fastrand::Rng::with_seed(7);
    // One engine busy: the idle one wins every time both are sampled (always, with two).
    let view = View::new(&t, &[], &[("127.0.1.1:25", 1)]);
    for _ in 0..100 {
        assert_eq!(
            t.engines[t.pick_engine(lon_uk, &view, &[], &mut rng).unwrap().0]
                .address
                .to_string(),
            "127.0.1.2:25"
        );
    }
    // At its limit an engine is not eligible; both at limit: none.
    let view = View::new(&t, &[], &[("127.0.1.2:25", 2)]);
    assert_eq!(t.eligible_engines(lon_uk, &view, &[]).len(), 1);
    let view = View::new(&t, &[], &[("127.0.1.1:25", 2), ("127.0.1.2:25", 2)]);
    assert_eq!(t.pick_engine(lon_uk, &view, &[], &mut rng), None);
    // Skipping the engine already tried.
    let view = View::new(&t, &[], &[]);
    let first = t.pick_engine(lon_uk, &view, &[], &mut rng).unwrap();
    let second = t.pick_engine(lon_uk, &view, &[first], &mut rng).unwrap();
    assert_ne!(first, second);
    // Idle engines of equal weight share new sessions (ties broken by the random draw, not by
    // index: regression, an idle cluster sent every session to its first engine).
    let firsts = (0..1000)
        .filter(|_| t.pick_engine(lon_uk, &view, &[], &mut rng) == Some(first.min(second)))
        .count();
    assert!(
        (350..=650).contains(&firsts),
        "first engine took {firsts} of 1000"
    );
    // Weighted 3:1 and idle: ties go to the heavier engine, so it takes (nearly) all picks.
    let nyc = ClusterIdx(5);
    let heavy = (0..1000)
        .filter(|_| t.engines[t.pick_engine(nyc, &view, &[], &mut rng).unwrap().0].weight == 3)
        .count();
    assert_eq!(heavy, 1000);
    // Equal load per weight: 3 sessions on the weight-3 engine equals 1 on the other.
    let view = View::new(&t, &[], &[("127.0.4.1:25", 4), ("127.0.4.2:25", 1)]);
    let light = (0..1000)
        .filter(|_| t.engines[t.pick_engine(nyc, &view, &[], &mut rng).unwrap().0].weight == 1)
        .count();
    assert_eq!(light, 1000, "4/3 sessions per weight loses to 1/1");
}

#[test]
fn delivery_hosts_parse() {
    let h: DeliveryHost = "mx.acme.example".parse().unwrap();
    assert_eq!((h.host.as_str(), h.port), ("mx.acme.example", 25));
    let h: DeliveryHost = "[2001:db8::25]:2525".parse().unwrap();
    assert_eq!(
        (h.host.as_str(), h.port, h.to_string()),
        ("2001:db8::25", 2525, "[2001:db8::25]:2525".to_string())
    );
    for bad in ["", "mx:0", "mx:port", "[::1", "[nope]:25", "bad host:25"] {
        assert!(bad.parse::<DeliveryHost>().is_err(), "{bad}");
    }
}
