//! `[dns]` keys set away from their defaults, each with the answer a resolver or an operator
//! would see change: TTLs of static data, the SOA's fields and the negative TTL, the SPF
//! record's name, the largest UDP answer, the number of UDP threads and the TCP connection cap.
//! The other tests run with the defaults (3600 s static TTL, `spf`, 1232 bytes), so each case
//! here fails if its key is read and then ignored.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use super::conformance::both;
use super::harness::{Geo, bulk_silo};
use super::raw::*;
use super::tcp::framed;
use crate::support::*;

const WAIT: Duration = Duration::from_secs(3);

/// `static_ttl` gives SOA, NS, glue and records their TTL unless a record has its own `ttl`;
/// every `[dns.soa]` field is what the SOA says; the negative TTL is min(static_ttl, minimum);
/// `spf_name` moves the generated SPF record.
#[test]
fn static_ttl_soa_record_ttl_and_spf_name_are_what_resolvers_get() {
    let g = Geo::start_with(
        "",
        r#"
static_ttl = "2h"
spf_name = "_spf"
[[dns.record]]
name = "short"
type = "TXT"
value = "short-lived"
ttl = "5m"
[dns.soa]
mname = "ns9.example.org."
rname = "dns-admin"
serial = 2024060101
refresh = "1h"
retry = "10m"
expire = "7d"
minimum = "30s"
"#,
    );
    let soa = "in.example.net. 7200 IN SOA ns9.example.org. dns-admin.in.example.net. \
               2024060101 3600 600 604800 30";
    both(
        &g,
        Query::new("in.example.net", t::SOA),
        &format!(
            "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
             QUESTION in.example.net. IN SOA
             ANSWER {soa}"
        ),
    );
    both(
        &g,
        Query::new("in.example.net", t::NS),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
         QUESTION in.example.net. IN NS
         ANSWER in.example.net. 7200 IN NS ns1.in.example.net.
         ADDITIONAL ns1.in.example.net. 7200 IN A 127.0.0.53",
    );
    both(
        &g,
        Query::new("in.example.net", t::CAA),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
         QUESTION in.example.net. IN CAA
         ANSWER in.example.net. 7200 IN CAA 0 issue \"letsencrypt.org\"",
    );
    both(
        &g,
        Query::new("short.in.example.net", t::TXT),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
         QUESTION short.in.example.net. IN TXT
         ANSWER short.in.example.net. 300 IN TXT short-lived",
    );
    both(
        &g,
        Query::new("_spf.in.example.net", t::TXT),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
         QUESTION _spf.in.example.net. IN TXT
         ANSWER _spf.in.example.net. 7200 IN TXT v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/25 ip6:2001:db8:20::/48 -all",
    );
    // The default name is free again: NXDOMAIN, with the SOA at min(static_ttl, minimum).
    both(
        &g,
        Query::new("spf.in.example.net", t::TXT),
        &format!(
            "id=4660 opcode=QUERY rcode=NXDOMAIN flags=qr,aa
             QUESTION spf.in.example.net. IN TXT
             AUTHORITY {}",
            soa.replacen(" 7200 ", " 30 ", 1)
        ),
    );
}

/// `udp_payload` raised to 4096: the 100 addresses of `bulk` (about 1.6 KB) come whole over
/// UDP to a client that offers 4096, where the default 1232 truncates them.
#[test]
fn udp_payload_is_the_largest_udp_answer() {
    let g = Geo::start_with(&bulk_silo(), "udp_payload = 4096\n");
    let q = Query::new("bulk.in.example.net", t::A).edns(Opt::new().payload(4096));
    let answer = udp(g.udp, &q.bytes(), WAIT).expect("an answer");
    let text = render(&answer);
    assert!(answer.len() > 1232, "{} bytes", answer.len());
    assert!(
        text.starts_with("id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa\n"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ANSWER")).count(),
        100
    );
    assert!(
        text.ends_with("\nOPT payload=4096 version=0 flags=-"),
        "{text}"
    );
    // A client offering less still gets at most what it offered.
    let q = Query::new("bulk.in.example.net", t::A).edns(Opt::new().payload(1232));
    let text = render(&udp(g.udp, &q.bytes(), WAIT).expect("an answer"));
    assert!(
        text.starts_with("id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa,tc\n"),
        "{text}"
    );
}

/// `tcp_max_connections = 1`: a second connection is not served while the first is open, and
/// is served as soon as it closes.
#[test]
fn tcp_max_connections_holds_further_connections_until_one_closes() {
    let g = Geo::start_with("", "tcp_max_connections = 1\ntcp_idle_timeout = \"30s\"\n");
    let q = framed(&Query::new("lon1.in.example.net", t::A));
    let mut first = TcpStream::connect(g.tcp).unwrap();
    first.set_read_timeout(Some(WAIT)).unwrap();
    first.write_all(&q).unwrap();
    assert!(
        read_framed(&mut first).is_some(),
        "the first connection is served"
    );

    let mut second = TcpStream::connect(g.tcp).unwrap();
    second.write_all(&q).unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut b = [0u8; 1];
    let early = second.read(&mut b);
    assert!(
        early.is_err(),
        "the second connection was answered while the first held the only slot: {early:?}"
    );
    drop(first);
    second.set_read_timeout(Some(WAIT)).unwrap();
    assert!(
        read_framed(&mut second).is_some(),
        "served once the first closed"
    );
}

/// `udp_threads = 5`: the process runs five UDP workers (`dns-udp-N` in `ps -T`), whatever
/// the number of CPUs (the default is one per CPU).
#[test]
fn udp_threads_is_the_number_of_udp_workers() {
    let dir = tempfile::tempdir().unwrap();
    let ops_port = free_port();
    let cfg = write(
        dir.path(),
        "md.toml",
        &fleet_config(&format!(
            "[ops]\nlisten = \"127.0.0.1:{ops_port}\"\n[dns]\nlisten = [\"127.0.0.1:0\"]\nudp_threads = 5\n"
        )),
    );
    let mut child = bin()
        .args(["--role", "dns", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn maildistiller");
    let ops = std::net::SocketAddr::from(([127, 0, 0, 1], ops_port));
    let ready = eventually(Duration::from_secs(20), || {
        http(ops, "GET", "/readyz").filter(|(s, _)| *s == 200)
    });
    let workers = || -> usize {
        std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .map(|tasks| {
                tasks
                    .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                    .filter(|c| c.starts_with("dns-udp-"))
                    .count()
            })
            .unwrap_or(0)
    };
    // Workers start right after the listeners are bound; give them a moment, then count.
    let _ = eventually(Duration::from_secs(5), || (workers() >= 5).then_some(()));
    let counted = workers();
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready.is_some(), "the dns role became ready");
    assert_eq!(counted, 5, "dns-udp-* threads");
}
