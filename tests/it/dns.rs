//! GeoDNS in-process on loopback, spoken to with hickory-proto messages over real UDP and TCP
//! sockets (and hickory-resolver as a real stub resolver): geo answers by ECS and resolver
//! address, ECS scope, tenant pinning, MX order, static and negative answers, truncation and TCP,
//! health and drains, reloads, and malformed input.
//!
//! Three silos, each with a stub SMTP edge on its own loopback address: lon1 (127.0.0.11),
//! fra1 (127.0.0.12), nyc1 (127.0.0.13). Tenants: acme (uk), globex (de, us), initech (any).

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsCode;
use hickory_proto::rr::{DNSClass, RData, RecordType};

use crate::support::*;

mod conformance; // whole answers to gdnsd's t/ cases, RFC 6891, 3225, 8906
mod harness;
mod keys; // [dns] keys away from their defaults: TTLs, SOA, SPF name, UDP payload and threads, TCP cap
mod malformed; // hand-encoded broken queries (gdnsd 019bad, 039clientsub)
mod raw; // queries byte by byte, answers rendered whole
mod tcp; // RFC 7766: pipelining, idle timeouts; truncation
use harness::*;

#[test]
fn clients_in_different_countries_get_their_nearest_silo() {
    let g = Geo::start();
    let a = |ecs: &str| g.ask("mx.in.example.net.", RecordType::A).ecs(ecs).udp();
    assert_eq!(a(GB).addrs(), ip(0), "GB -> lon1");
    assert_eq!(a(DE).addrs(), ip(1), "DE -> fra1");
    assert_eq!(a(US).addrs(), ip(2), "US -> nyc1");
    assert_eq!(a("2a01:4f8::/32").addrs(), ip(1), "IPv6 ECS, DE -> fra1");
    let r = a(GB);
    assert!(r.aa() && r.rcode() == ResponseCode::NoError);
    // Without ECS the resolver's address decides: a CIDR override puts 127.0.0.4 in the US,
    // and other loopback addresses are this node's silo.
    let by_resolver = |from: &str| g.ask("mx.in.example.net.", RecordType::A).from(from).udp();
    assert_eq!(by_resolver("127.0.0.4").addrs(), ip(2));
    assert_eq!(by_resolver("127.0.0.1").addrs(), ip(0));
    assert_eq!(
        by_resolver("127.0.0.4").scope(),
        None,
        "no ECS asked, none echoed"
    );
    // An override inside a database network: 81.2.69.160/32 is placed in the US.
    assert_eq!(a("81.2.69.160/32").addrs(), ip(2));
}

#[test]
fn the_ecs_scope_is_the_prefix_the_decision_depended_on() {
    let g = Geo::start();
    let scope = |name: &str, t, ecs: &str| g.ask(name, t).ecs(ecs).udp().scope();
    // The database network of 8.8.8.0 is a /15: the answer holds for all of it.
    assert_eq!(scope("mx.in.example.net.", RecordType::A, US), Some(15));
    // 81.2.69.0/24 is GB in an /18, but 81.2.69.160/32 is overridden: the scope must exclude it.
    assert_eq!(scope("mx.in.example.net.", RecordType::A, GB), Some(25));
    assert_eq!(
        scope("mx.in.example.net.", RecordType::A, "81.2.69.160/32"),
        Some(32)
    );
    // Answers that do not depend on location: scope 0.
    assert_eq!(scope("in.example.net.", RecordType::SOA, US), Some(0));
    assert_eq!(scope("nosuch.in.example.net.", RecordType::A, US), Some(0));
    assert_eq!(scope("lon1.in.example.net.", RecordType::A, US), Some(0));
    assert_eq!(
        scope("acme.in.example.net.", RecordType::A, US),
        Some(0),
        "one silo holds uk"
    );
    // Source prefix 0: the client asks not to be located; the resolver's address decides.
    let r = g
        .ask("mx.in.example.net.", RecordType::A)
        .ecs("0.0.0.0/0")
        .from("127.0.0.4")
        .udp();
    assert_eq!((r.addrs(), r.scope()), (ip(2), Some(0)));
}

#[test]
fn tenant_names_answer_only_silos_in_the_tenants_regions() {
    let g = Geo::start();
    let a = |name: &str, ecs: &str| g.ask(name, RecordType::A).ecs(ecs).udp().addrs();
    assert_eq!(
        a("acme.in.example.net.", US),
        ip(0),
        "uk tenant from the US: still lon1"
    );
    assert_eq!(
        a("globex.in.example.net.", GB),
        ip(1),
        "de+us tenant from GB: fra1, not lon1"
    );
    assert_eq!(a("globex.in.example.net.", US), ip(2));
    assert_eq!(
        a("mail-globex.in.example.net.", GB),
        ip(1),
        "extra pinned name"
    );
    assert_eq!(
        a("initech.in.example.net.", US),
        ip(2),
        "no regions: any silo"
    );
    let mx = g
        .ask("globex.in.example.net.", RecordType::MX)
        .ecs(GB)
        .udp()
        .mx();
    assert_eq!(
        mx,
        vec![
            (10, "fra1.in.example.net.".into()),
            (20, "nyc1.in.example.net.".into())
        ]
    );
    let mx = g
        .ask("globex-mx.in.example.net.", RecordType::MX)
        .ecs(US)
        .udp()
        .mx();
    assert_eq!(mx[0], (10, "nyc1.in.example.net.".into()));
}

#[test]
fn mx_answers_list_every_silo_nearest_first_with_their_addresses() {
    let g = Geo::start();
    let r = g.ask("in.example.net.", RecordType::MX).ecs(US).udp();
    assert_eq!(
        r.mx(),
        vec![
            (10, "nyc1.in.example.net.".into()),
            (20, "lon1.in.example.net.".into()),
            (30, "fra1.in.example.net.".into())
        ]
    );
    let extra: Vec<(String, String)> = r
        .msg
        .additionals
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::A(a) => Some((rec.name.to_ascii(), a.0.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(
        extra,
        vec![
            ("nyc1.in.example.net.".into(), "127.0.0.13".into()),
            ("lon1.in.example.net.".into(), "127.0.0.11".into()),
            ("fra1.in.example.net.".into(), "127.0.0.12".into())
        ]
    );
    let r = g.ask("in.example.net.", RecordType::MX).ecs(DE).udp();
    assert_eq!(r.mx()[0].1, "fra1.in.example.net.");
    // The silo host names answer their own edges, whatever the client.
    assert_eq!(
        g.ask("nyc1.in.example.net.", RecordType::A)
            .ecs(GB)
            .udp()
            .addrs(),
        ip(2)
    );
}

#[test]
fn static_records_are_served_authoritatively() {
    let g = Geo::start();
    let r = g.ask("in.example.net.", RecordType::SOA).udp();
    assert!(r.aa() && r.types() == [RecordType::SOA]);
    let r = g.ask("in.example.net.", RecordType::NS).udp();
    assert_eq!(r.types(), [RecordType::NS]);
    assert_eq!(
        r.msg.additionals[0].name.to_ascii(),
        "ns1.in.example.net.",
        "glue"
    );
    let txt = |name: &str| {
        let r = g.ask(name, RecordType::TXT).udp();
        match &r.msg.answers[0].data {
            RData::TXT(t) => t.to_string(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        txt("spf.in.example.net."),
        "v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/25 ip6:2001:db8:20::/48 -all",
        "generated from every silo's egress, each range once"
    );
    assert_eq!(txt("_mta-sts.in.example.net."), "v=STSv1; id=2024");
    assert_eq!(
        txt("_smtp._tls.in.example.net."),
        "v=TLSRPTv1; rua=mailto:tls@example.net"
    );
    assert_eq!(
        g.ask("in.example.net.", RecordType::CAA).udp().types(),
        [RecordType::CAA]
    );
    assert_eq!(
        g.ask("ns1.in.example.net.", RecordType::A).udp().addrs(),
        ["127.0.0.53"]
    );
    let r = g.ask("mx.in.example.net.", RecordType::A).udp();
    assert_eq!(r.msg.answers[0].ttl, 60, "geo TTL");
    let nsid = r
        .msg
        .edns
        .as_ref()
        .and_then(|e| e.option(EdnsCode::NSID).cloned());
    assert!(nsid.is_none(), "NSID only when asked");
}

#[test]
fn negative_and_error_answers() {
    let g = Geo::start();
    let r = g.ask("nosuch.in.example.net.", RecordType::A).udp();
    assert_eq!(r.rcode(), ResponseCode::NXDomain);
    assert!(r.aa() && r.soa_in_authority());
    assert_eq!(
        r.msg.authorities[0].ttl, 60,
        "negative TTL = min(static_ttl, soa.minimum)"
    );
    let r = g.ask("below.mx.in.example.net.", RecordType::A).udp();
    assert_eq!(r.rcode(), ResponseCode::NXDomain);
    // NODATA: the name exists, the type does not; an empty non-terminal exists too.
    for (name, t) in [
        ("mx.in.example.net.", RecordType::TXT),
        ("_tls.in.example.net.", RecordType::TXT),
        ("lon1.in.example.net.", RecordType::AAAA),
    ] {
        let r = g.ask(name, t).udp();
        assert_eq!(r.rcode(), ResponseCode::NoError, "{name}");
        assert!(r.aa() && r.soa_in_authority(), "{name}");
    }
    let r = g.ask("example.org.", RecordType::A).udp();
    assert_eq!(r.rcode(), ResponseCode::Refused);
    assert!(!r.aa());
    let r = g.ask("xin.example.net.", RecordType::A).udp();
    assert_eq!(r.rcode(), ResponseCode::Refused, "a suffix is not a parent");
    let r = g.ask("in.example.net.", RecordType::AXFR).tcp();
    assert_eq!(r.rcode(), ResponseCode::Refused, "no zone transfers");
    let r = g
        .ask("mx.in.example.net.", RecordType::A)
        .edit(|m| {
            m.queries[0].set_query_class(DNSClass::CH);
        })
        .udp();
    assert_eq!(r.rcode(), ResponseCode::Refused);
    let r = g
        .ask("mx.in.example.net.", RecordType::A)
        .edit(|m| m.metadata.op_code = OpCode::Update)
        .udp();
    assert_eq!(r.rcode(), ResponseCode::NotImp);
    let r = g
        .ask("mx.in.example.net.", RecordType::A)
        .edit(|m| {
            m.edns.as_mut().unwrap().set_version(1);
        })
        .udp();
    assert_eq!(u16::from(r.rcode()), 16, "BADVERS");
    // Case-insensitive, and the question comes back as asked (resolvers' 0x20 check).
    let r = g.ask("Mx.IN.eXample.NET.", RecordType::A).ecs(GB).udp();
    assert_eq!(r.addrs(), ip(0));
    assert_eq!(r.msg.queries[0].name().to_ascii(), "Mx.IN.eXample.NET.");
    // ANY gets one RRset (RFC 8482).
    assert_eq!(
        g.ask("in.example.net.", RecordType::ANY)
            .udp()
            .types()
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1
    );
    // Garbage: FORMERR with the ID kept.
    let mut raw = g
        .ask("mx.in.example.net.", RecordType::A)
        .no_edns()
        .msg
        .to_vec()
        .unwrap();
    raw.truncate(raw.len() - 3);
    let r = Answer::parse(&udp_exchange(g.udp, "127.0.0.1".parse().unwrap(), &raw).unwrap());
    assert_eq!(r.rcode(), ResponseCode::FormErr);
    assert_eq!(r.msg.metadata.id, u16::from_be_bytes([raw[0], raw[1]]));
}

#[test]
fn big_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let g = Geo::start_with(&bulk_silo(), "");
    let plain = g.ask("bulk.in.example.net.", RecordType::A).no_edns().udp();
    assert!(
        plain.tc() && plain.msg.answers.is_empty(),
        "512 bytes without EDNS"
    );
    let edns = g.ask("bulk.in.example.net.", RecordType::A).udp();
    assert!(edns.tc() && edns.len <= 1232, "our EDNS payload is 1232");
    let tcp = g.ask("bulk.in.example.net.", RecordType::A).tcp();
    assert!(!tcp.tc());
    assert_eq!(tcp.addrs().len(), 100);
    // MX answers lose their additional records before they would be truncated.
    let mx = g
        .ask("in.example.net.", RecordType::MX)
        .ecs(GB)
        .no_edns()
        .udp();
    assert!(!mx.tc() && mx.mx().len() == 4 && mx.msg.additionals.is_empty());
    let mx = g.ask("in.example.net.", RecordType::MX).ecs(GB).tcp();
    assert_eq!(
        mx.msg.additionals.len(),
        103,
        "every silo's addresses over TCP"
    );

    // A real stub resolver gets TC and retries over TCP by itself.
    let port = g.udp.port();
    let all = g.rt.block_on(async move {
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
        let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
        udp.port = port;
        tcp.port = port;
        let ns = NameServerConfig::new("127.0.0.1".parse().unwrap(), true, vec![udp, tcp]);
        let resolver = hickory_resolver::Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        )
        .build()
        .unwrap();
        let big = resolver
            .lookup("bulk.in.example.net.", RecordType::A)
            .await
            .unwrap();
        let mx = resolver
            .lookup("in.example.net.", RecordType::MX)
            .await
            .unwrap();
        (big.answers().len(), mx.answers().len())
    });
    assert_eq!(all, (100, 4));
}

#[test]
fn tcp_answers_pipelined_queries_in_order() {
    let g = Geo::start();
    let names = ["mx", "acme", "lon1", "nosuch", "spf", "globex"];
    let queries: Vec<Vec<u8>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut m = g
                .ask(&format!("{n}.in.example.net."), RecordType::A)
                .ecs(US)
                .msg;
            m.metadata.id = 1000 + i as u16;
            m.to_vec().unwrap()
        })
        .collect();
    let mut s = TcpStream::connect(g.tcp).unwrap();
    let answers = tcp_exchange(&mut s, &queries);
    let ids: Vec<u16> = answers
        .iter()
        .map(|a| Answer::parse(a).msg.metadata.id)
        .collect();
    assert_eq!(ids, [1000, 1001, 1002, 1003, 1004, 1005]);
    assert_eq!(Answer::parse(&answers[0]).addrs(), ip(2));
    assert_eq!(Answer::parse(&answers[3]).rcode(), ResponseCode::NXDomain);
    // The same connection keeps working, then closes when idle.
    let again = tcp_exchange(&mut s, &queries[..1]);
    assert_eq!(Answer::parse(&again[0]).msg.metadata.id, 1000);
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        s.read(&mut [0; 1]).unwrap_or(0),
        0,
        "closed after tcp_idle_timeout"
    );
}

#[test]
fn a_silo_whose_edges_stop_leaves_the_answers_and_comes_back() {
    let mut g = Geo::start();
    let a = |g: &Geo| {
        g.ask("mx.in.example.net.", RecordType::A)
            .ecs(GB)
            .udp()
            .addrs()
    };
    let mx = |g: &Geo| g.ask("in.example.net.", RecordType::MX).ecs(GB).udp().mx();
    assert_eq!(a(&g), ip(0));
    g.edge_down(0);
    // Probes every 100 ms, two failures: gone within about 200 ms (polled up to 10 s).
    g.until("lon1 leaves", |g| a(g) == ip(1));
    assert_eq!(mx(&g).len(), 2, "MX lists only healthy silos");
    assert_eq!(mx(&g)[0].1, "fra1.in.example.net.");
    assert_eq!(
        g.ask("acme.in.example.net.", RecordType::A)
            .ecs(US)
            .udp()
            .addrs(),
        ip(0),
        "acme's only silo is down: fail open, answer it anyway"
    );
    g.edge_up(0);
    g.until("lon1 returns", |g| a(g) == ip(0));
    let m = g.metrics();
    let target = g.edges[0].addr;
    for to in ["down", "up"] {
        let line =
            format!("maildistiller_dns_health_transitions_total{{target=\"{target}\",to=\"{to}\",");
        assert!(m.lines().any(|l| l.starts_with(&line)), "{line} in\n{m}");
    }
}

#[test]
fn when_every_silo_is_down_all_of_them_are_answered() {
    let mut g = Geo::start();
    for i in 0..3 {
        g.edge_down(i);
    }
    g.until("all down", |g| (0..3).all(|i| !g.in_answers(i)));
    assert_eq!(
        g.ask("mx.in.example.net.", RecordType::A)
            .ecs(DE)
            .udp()
            .addrs(),
        ip(1)
    );
    assert_eq!(
        g.ask("in.example.net.", RecordType::MX)
            .ecs(DE)
            .udp()
            .mx()
            .len(),
        3
    );
    let m = g.metrics();
    assert!(
        m.lines().any(
            |l| l.starts_with("maildistiller_dns_fail_open{set=\"every silo\",")
                && l.ends_with(" 1")
        ),
        "the fail-open gauge is raised for the set of every silo:\n{m}"
    );
}

#[test]
fn a_drained_silo_leaves_at_the_next_query_by_reload_or_ops_api() {
    let g = Geo::start();
    let a = |g: &Geo| {
        g.ask("mx.in.example.net.", RecordType::A)
            .ecs(GB)
            .udp()
            .addrs()
    };
    assert_eq!(a(&g), ip(0));
    // The ops API.
    g.state.set_drain("lon1", true).unwrap();
    assert_eq!(a(&g), ip(1));
    assert!(g.state.set_drain("nope", true).is_err());
    g.state.set_drain("lon1", false).unwrap();
    assert_eq!(a(&g), ip(0));
    // A reload with drain = true; no waiting.
    let text = std::fs::read_to_string(&g.path).unwrap();
    let drained = text.replacen("edge_port =", "drain = true\nedge_port =", 1);
    g.reload(&drained).unwrap();
    assert_eq!(a(&g), ip(1));
    // A broken file is refused and the previous zone keeps answering.
    let err = g
        .reload(&drained.replace("type = \"CAA\"", "type = \"SOA\""))
        .unwrap_err();
    assert!(err.contains("dns.record[0].value"), "{err}");
    assert_eq!(a(&g), ip(1));
    g.reload(&text).unwrap();
    assert_eq!(a(&g), ip(0));
}

#[test]
fn the_drain_api_is_on_the_ops_listener() {
    let g = Geo::start();
    let listener =
        g.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
    let ops_addr = listener.local_addr().unwrap();
    g.rt.spawn(maildistiller::ops::serve(g.ops.clone(), listener));
    let (code, body) = http_operator(ops_addr, "POST", "/-/dns/drain?silo=lon1").unwrap();
    assert_eq!((code, body.as_str()), (200, "silo lon1 drained\n"));
    assert_eq!(
        g.ask("mx.in.example.net.", RecordType::A)
            .ecs(GB)
            .udp()
            .addrs(),
        ip(1)
    );
    assert_eq!(
        http_operator(ops_addr, "POST", "/-/dns/undrain?silo=lon1")
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        http_operator(ops_addr, "POST", "/-/dns/drain?silo=mars")
            .unwrap()
            .0,
        404
    );
    let (_, status) = http(ops_addr, "GET", "/status").unwrap();
    assert!(status.contains("GeoDNS: zone in.example.net"), "{status}");
}

#[test]
fn malformed_packets_never_crash_or_hang_the_server() {
    let g = Geo::start();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let base = g
        .ask("mx.in.example.net.", RecordType::A)
        .ecs(GB)
        .msg
        .to_vec()
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    let mut sent = 0;
    let mut answers = 0;
    let mut buf = vec![0; 65535];
    for round in 0..40 {
        for i in 0..100 {
            let msg: Vec<u8> = match i % 4 {
                0 => (0..rng.usize(0..700)).map(|_| rng.u8(..)).collect(),
                1 => base[..rng.usize(0..base.len())].to_vec(),
                2 => {
                    // A compression pointer loop in the question and in an additional record.
                    let mut m = base[..12].to_vec();
                    m[5] = 1;
                    m[11] = 1;
                    m.extend([
                        0xC0, 12, 0, 1, 0, 1, 0xC0, 18, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0,
                    ]);
                    m
                }
                _ => {
                    let mut m = base.clone();
                    for _ in 0..rng.usize(1..8) {
                        let at = rng.usize(2..m.len());
                        m[at] = rng.u8(..);
                    }
                    m
                }
            };
            sock.send_to(&msg, g.udp).unwrap();
            sent += 1;
        }
        // Whatever comes back is a well-formed DNS response.
        while let Ok(n) = sock.recv(&mut buf) {
            let m = Message::from_vec(&buf[..n]).unwrap_or_else(|e| {
                panic!("round {round}: undecodable answer {:?}: {e}", &buf[..n])
            });
            assert_eq!(
                m.metadata.message_type,
                hickory_proto::op::MessageType::Response
            );
            answers += 1;
        }
    }
    assert!(answers > 0 && answers <= sent);
    // TCP: garbage, a length promising more than is sent, a zero length.
    for bad in [
        vec![0, 5, 1, 2],
        vec![0xFF, 0xFF, 1, 2, 3],
        vec![0, 0],
        vec![0, 20, 0, 1, 0x80, 0],
    ] {
        use std::io::Write;
        let mut s = TcpStream::connect(g.tcp).unwrap();
        s.write_all(&bad).unwrap();
        drop(s);
    }
    // Still answering, on both transports.
    assert_eq!(
        g.ask("mx.in.example.net.", RecordType::A)
            .ecs(GB)
            .udp()
            .addrs(),
        ip(0)
    );
    assert_eq!(
        g.ask("mx.in.example.net.", RecordType::A)
            .ecs(GB)
            .tcp()
            .addrs(),
        ip(0)
    );
    g.until("counted as dropped or FORMERR", |g| {
        let m = g.metrics();
        m.contains("rcode=\"FORMERR\"")
            && m.lines()
                .any(|l| l.contains("rcode=\"dropped\"") && !l.ends_with(" 0"))
    });
}

#[test]
fn metrics_count_queries_by_type_and_rcode_ecs_and_silo() {
    let g = Geo::start();
    g.ask("mx.in.example.net.", RecordType::A).ecs(US).udp();
    g.ask("mx.in.example.net.", RecordType::AAAA).udp();
    g.ask("nosuch.in.example.net.", RecordType::MX).udp();
    g.until("metrics flushed", |g| {
        let m = g.metrics();
        let has = |s: &str| m.lines().any(|l| l.starts_with(s) && !l.ends_with(" 0"));
        has("maildistiller_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"")
            && has("maildistiller_dns_queries_total{qtype=\"MX\",rcode=\"NXDOMAIN\"")
            && has("maildistiller_dns_ecs_total{present=\"yes\"")
            && has("maildistiller_dns_ecs_total{present=\"no\"")
            && has("maildistiller_dns_answers_total{answered=\"nyc1\"")
            && has("maildistiller_dns_answer_seconds_count{transport=\"udp\"")
    });
}

#[test]
fn dns_explain_says_which_silo_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let edges: Vec<SocketAddr> = SILOS
        .iter()
        .map(|(_, ip)| format!("{ip}:2525").parse().unwrap())
        .collect();
    let path = write(dir.path(), "md.toml", &config(&edges, "", ""));
    let p = path.to_str().unwrap();
    let o = run(&[
        "dns-explain",
        "--config",
        p,
        "--client",
        "127.0.0.1",
        "--ecs",
        GB,
        "mx.in.example.net",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("GB (geo database, network /18)"), "{out}");
    assert!(
        out.contains("1. lon1") && out.contains("<- answered first"),
        "{out}"
    );
    assert!(out.contains("ECS scope /25"), "{out}");
    assert!(
        out.contains("mx.in.example.net. 60 IN A 127.0.0.11"),
        "{out}"
    );
    let o = run(&[
        "dns-explain",
        "--config",
        p,
        "--client",
        "81.2.69.160",
        "--type",
        "MX",
        "--down",
        "lon1",
        "acme.in.example.net",
    ]);
    let out = stdout(&o);
    assert!(out.contains("pinned to tenant acme"), "{out}");
    assert!(out.contains("fail open"), "{out}");
    let o = run(&[
        "dns-explain",
        "--config",
        p,
        "--client",
        "127.0.0.1",
        "www.example.org",
    ]);
    assert!(stdout(&o).contains("outside the zone"), "{}", stdout(&o));
}
