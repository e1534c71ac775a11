//! Protocol conformance, ported from gdnsd's `t/` suite (002simple, 003complex/009broken,
//! 004misc/018misc and 019bad, 013clientsub) to our zone, plus what RFC 6891 (EDNS), RFC 3225
//! (DO), RFC 7871 (ECS), RFC 7766 (TCP) and RFC 8906 (unknown opcodes, classes, flags and
//! options) ask of an authoritative server. Each case sends a query built byte by byte and
//! asserts the whole answer as a resolver sees it (see `raw.rs`): header bits, rcode, every
//! section, the OPT record.
//!
//! Where we answer differently from gdnsd, by choice: zone transfers (AXFR, IXFR) are REFUSED
//! rather than NOTIMP; we do not implement DNS cookies (RFC 7873 lets a server ignore them);
//! CHAOS-class queries are REFUSED (gdnsd answers a version string).

use std::time::Duration;

use super::harness::Geo;
use super::raw::*;

/// How long a UDP query waits for its answer.
const WAIT: Duration = Duration::from_secs(3);

const SOA: &str = "in.example.net. 3600 IN SOA ns1.in.example.net. hostmaster.in.example.net. 1 7200 1800 1209600 60";
/// The SOA of negative answers: TTL = min(static_ttl, minimum) (RFC 2308).
const NEG_SOA: &str = "AUTHORITY in.example.net. 60 IN SOA ns1.in.example.net. hostmaster.in.example.net. 1 7200 1800 1209600 60";
/// The plain OPT record of our answers.
const OPT: &str = "OPT payload=1232 version=0 flags=-";

fn ask_udp(g: &Geo, q: &Query) -> Vec<u8> {
    udp(g.udp, &q.bytes(), WAIT).expect("an answer over UDP")
}

/// The same whole answer over UDP and over TCP.
#[track_caller]
pub(super) fn both(g: &Geo, q: Query, expected: &str) {
    assert_answer(&ask_udp(g, &q), expected);
    assert_answer(&tcp(g.tcp, &q.bytes()), expected);
}

/// UDP only (malformed input is judged the same way over TCP; see the TCP tests).
#[track_caller]
fn over_udp(g: &Geo, q: Query, expected: &str) {
    assert_answer(&ask_udp(g, &q), expected);
}

/// gdnsd 002noerr: data answers, whole.
#[test]
fn data_answers_carry_exactly_their_records() {
    let g = Geo::start();
    both(
        &g,
        Query::new("in.example.net", t::SOA),
        &format!(
            "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
             QUESTION in.example.net. IN SOA
             ANSWER {SOA}"
        ),
    );
    both(
        &g,
        Query::new("in.example.net", t::NS),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
         QUESTION in.example.net. IN NS
         ANSWER in.example.net. 3600 IN NS ns1.in.example.net.
         ADDITIONAL ns1.in.example.net. 3600 IN A 127.0.0.53",
    );
    both(
        &g,
        Query::new("ns1.in.example.net", t::A).edns(Opt::new()),
        &format!(
            "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
             QUESTION ns1.in.example.net. IN A
             ANSWER ns1.in.example.net. 3600 IN A 127.0.0.53
             {OPT}"
        ),
    );
    // The apex MX from GB: every silo, nearest first, each exchange's address in the additional
    // section; the ECS scope is the prefix the decision depended on.
    both(
        &g,
        Query::new("in.example.net", t::MX).edns(Opt::new().ecs(1, 24, 0, &[81, 2, 69])),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
         QUESTION in.example.net. IN MX
         ANSWER in.example.net. 60 IN MX 10 lon1.in.example.net.
         ANSWER in.example.net. 60 IN MX 20 fra1.in.example.net.
         ANSWER in.example.net. 60 IN MX 30 nyc1.in.example.net.
         ADDITIONAL lon1.in.example.net. 60 IN A 127.0.0.11
         ADDITIONAL fra1.in.example.net. 60 IN A 127.0.0.12
         ADDITIONAL nyc1.in.example.net. 60 IN A 127.0.0.13
         OPT payload=1232 version=0 flags=- ECS=81.2.69.0/24/25",
    );
    both(
        &g,
        Query::new("mx.in.example.net", t::A).edns(Opt::new().ecs(1, 24, 0, &[8, 8, 8])),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
         QUESTION mx.in.example.net. IN A
         ANSWER mx.in.example.net. 60 IN A 127.0.0.13
         OPT payload=1232 version=0 flags=- ECS=8.8.8.0/24/15",
    );
    // The question comes back as asked, case and all (the 0x20 check of resolvers), and RD is
    // copied (gdnsd 009broken's last case).
    both(
        &g,
        Query::new("LON1.In.Example.Net", t::A).flags(flag::RD),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa,rd
         QUESTION LON1.In.Example.Net. IN A
         ANSWER LON1.In.Example.Net. 60 IN A 127.0.0.11",
    );
    both(
        &g,
        Query::new("spf.in.example.net", t::TXT),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
         QUESTION spf.in.example.net. IN TXT
         ANSWER spf.in.example.net. 3600 IN TXT v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/25 ip6:2001:db8:20::/48 -all",
    );
    both(
        &g,
        Query::new("in.example.net", t::CAA),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
         QUESTION in.example.net. IN CAA
         ANSWER in.example.net. 3600 IN CAA 0 issue \"letsencrypt.org\"",
    );
    // ANY: one RRset (RFC 8482); at the apex, the MX.
    both(
        &g,
        Query::new("in.example.net", t::ANY).edns(Opt::new().ecs(1, 24, 0, &[5, 9, 0])),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
         QUESTION in.example.net. IN ANY
         ANSWER in.example.net. 60 IN MX 10 fra1.in.example.net.
         ANSWER in.example.net. 60 IN MX 20 lon1.in.example.net.
         ANSWER in.example.net. 60 IN MX 30 nyc1.in.example.net.
         ADDITIONAL fra1.in.example.net. 60 IN A 127.0.0.12
         ADDITIONAL lon1.in.example.net. 60 IN A 127.0.0.11
         ADDITIONAL nyc1.in.example.net. 60 IN A 127.0.0.13
         OPT payload=1232 version=0 flags=- ECS=5.9.0.0/24/16",
    );
    // QCLASS ANY is answered like IN (gdnsd 019bad test 12); the question keeps its class.
    both(
        &g,
        Query::new("lon1.in.example.net", t::A).class(255),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
         QUESTION lon1.in.example.net. ANY A
         ANSWER lon1.in.example.net. 60 IN A 127.0.0.11",
    );
}

/// gdnsd 003simple_errs and 009broken: NODATA, NXDOMAIN, REFUSED, unknown types.
#[test]
fn negative_answers_carry_the_soa_and_nothing_else() {
    let g = Geo::start();
    let nodata = |name: &str, qtype: u16, shown: &str| {
        both(
            &g,
            Query::new(name, qtype),
            &format!(
                "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
                 QUESTION {name}. IN {shown}
                 {NEG_SOA}"
            ),
        )
    };
    nodata("mx.in.example.net", t::TXT, "TXT");
    nodata("_tls.in.example.net", t::TXT, "TXT"); // an empty non-terminal
    nodata("lon1.in.example.net", t::AAAA, "AAAA");
    nodata("mx.in.example.net", t::KEY, "KEY"); // a type we never have
    nodata("mx.in.example.net", 300, "TYPE300");
    nodata("mx.in.example.net", 666, "TYPE666"); // RFC 8906 8.2.4
    for name in [
        "nosuch.in.example.net",
        "below.mx.in.example.net",
        "x.y.z.nosuch.in.example.net",
    ] {
        both(
            &g,
            Query::new(name, t::A).edns(Opt::new()),
            &format!(
                "id=4660 opcode=QUERY rcode=NXDOMAIN flags=qr,aa
                 QUESTION {name}. IN A
                 {NEG_SOA}
                 {OPT}"
            ),
        );
    }
    // Outside the zone: REFUSED, not authoritative, nothing but the question.
    for name in ["example.org", "xin.example.net", "net", "."] {
        let shown = if name == "." {
            ".".to_owned()
        } else {
            format!("{name}.")
        };
        both(
            &g,
            Query::new(name, t::A),
            &format!(
                "id=4660 opcode=QUERY rcode=REFUSED flags=qr
                 QUESTION {shown} IN A"
            ),
        );
    }
    // Zone transfers are refused; so are classes we do not serve (HS, CH, unknown).
    both(
        &g,
        Query::new("in.example.net", t::AXFR),
        "id=4660 opcode=QUERY rcode=REFUSED flags=qr
         QUESTION in.example.net. IN AXFR",
    );
    both(
        &g,
        Query::new("in.example.net", t::IXFR),
        "id=4660 opcode=QUERY rcode=REFUSED flags=qr
         QUESTION in.example.net. IN IXFR",
    );
    for (class, shown) in [(4, "HS"), (3, "CH"), (0x1234, "CLASS4660")] {
        both(
            &g,
            Query::new("in.example.net", t::SOA).class(class),
            &format!(
                "id=4660 opcode=QUERY rcode=REFUSED flags=qr
                 QUESTION in.example.net. {shown} SOA"
            ),
        );
    }
    // Other meta types: NOTIMP; a question for OPT itself: FORMERR.
    both(
        &g,
        Query::new("in.example.net", 253),
        "id=4660 opcode=QUERY rcode=NOTIMP flags=qr
         QUESTION in.example.net. IN TYPE253",
    );
    both(
        &g,
        Query::new("in.example.net", t::OPT),
        "id=4660 opcode=QUERY rcode=FORMERR flags=qr
         QUESTION in.example.net. IN OPT",
    );
}

/// RFC 8906 3.1.2/3.1.3 and gdnsd 009broken: header bits and opcodes.
#[test]
fn header_bits_and_opcodes_are_answered_as_rfc_8906_asks() {
    let g = Geo::start();
    // Z and AD are cleared, CD is copied, TC and AA in a query are ignored; RA is never set.
    both(
        &g,
        Query::new("lon1.in.example.net", t::A)
            .flags(flag::Z | flag::AD | flag::CD | flag::TC | flag::AA | flag::RA),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa,cd
         QUESTION lon1.in.example.net. IN A
         ANSWER lon1.in.example.net. 60 IN A 127.0.0.11",
    );
    // An RCODE in a query means nothing.
    both(
        &g,
        Query::new("lon1.in.example.net", t::A).flags(0x000F),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
         QUESTION lon1.in.example.net. IN A
         ANSWER lon1.in.example.net. 60 IN A 127.0.0.11",
    );
    // Other opcodes: NOTIMP, opcode and question echoed, OPT answered (RFC 6891 7).
    for (op, shown) in [(1, "IQUERY"), (2, "STATUS"), (4, "NOTIFY"), (5, "UPDATE")] {
        both(
            &g,
            Query::new("in.example.net", t::SOA)
                .opcode(op)
                .edns(Opt::new()),
            &format!(
                "id=4660 opcode={shown} rcode=NOTIMP flags=qr
                 QUESTION in.example.net. IN SOA
                 {OPT}"
            ),
        );
    }
    // dig +header-only +opcode=15: no question at all (RFC 8906 8.2.3), and DSO over UDP
    // (gdnsd 019bad test 31).
    both(
        &g,
        Query::empty().opcode(15).edns(Opt::new()),
        &format!(
            "id=4660 opcode=15 rcode=NOTIMP flags=qr
             {OPT}"
        ),
    );
    over_udp(
        &g,
        Query::empty().opcode(6),
        "id=4660 opcode=DSO rcode=NOTIMP flags=qr",
    );
    // QR set: a response, never answered (no loops). The next query still is.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let response = Query::new("lon1.in.example.net", t::A).id(1).flags(0x8000);
    sock.send_to(&response.bytes(), g.udp).unwrap();
    let query = Query::new("lon1.in.example.net", t::A).id(2);
    sock.send_to(&query.bytes(), g.udp).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..2], [0, 2], "only the query is answered");
    assert_eq!(render(&buf[..n]).lines().count(), 3);
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(sock.recv(&mut buf).is_err(), "the response got no answer");
}

/// RFC 6891 6–7, RFC 3225 3, RFC 8906 3.2, gdnsd 018misc and 009broken: the OPT record.
#[test]
fn every_answer_to_a_query_with_opt_has_opt() {
    let g = Geo::start();
    let soa = |opt: Opt| Query::new("in.example.net", t::SOA).edns(opt);
    let ok = |extra: &str| {
        format!(
            "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
             QUESTION in.example.net. IN SOA
             ANSWER {SOA}
             {extra}"
        )
    };
    // No OPT in, none out (RFC 8906 8.2.1); a plain one: ours, version 0, our payload.
    both(&g, Query::new("in.example.net", t::SOA), &ok(""));
    both(&g, soa(Opt::new()), &ok(OPT));
    // DO is copied (RFC 3225 3), unknown flags are not (RFC 6891 6.1.4, RFC 8906 8.2.6).
    both(
        &g,
        soa(Opt::new().flags(0x8000)),
        &ok("OPT payload=1232 version=0 flags=do"),
    );
    both(&g, soa(Opt::new().flags(0x4000 | 0x0001)), &ok(OPT));
    // Unknown options are ignored, with data or empty (RFC 6891 6.1.2, RFC 8906 8.2.5).
    both(&g, soa(Opt::new().option(100, b"")), &ok(OPT));
    both(&g, soa(Opt::new().option(0x5555, b"foo")), &ok(OPT));
    // Two cookies: we do not do cookies, so nothing is echoed (gdnsd 019bad test 27).
    let cookie = [1, 2, 3, 4, 5, 6, 7, 8];
    both(
        &g,
        soa(Opt::new().option(10, &cookie).option(10, &cookie)),
        &ok(OPT),
    );
    // NSID asked: ours (RFC 5001); with data in the query: FORMERR (gdnsd 009broken).
    both(
        &g,
        soa(Opt::new().option(3, b"")),
        &ok("OPT payload=1232 version=0 flags=- NSID=\"it-ns\""),
    );
    both(
        &g,
        soa(Opt::new().option(3, b"example")),
        &format!(
            "id=4660 opcode=QUERY rcode=FORMERR flags=qr
             QUESTION in.example.net. IN SOA
             {OPT}"
        ),
    );
    // Payloads under 512 count as 512; the answer states ours.
    both(&g, soa(Opt::new().payload(1)), &ok(OPT));
    // A version above 0: BADVERS (extended rcode 1), OPT of version 0, no data; its options are
    // not ours to read (so a "bad" ECS of version 1 is not FORMERR), DO still copied
    // (RFC 6891 6.1.3, RFC 8906 8.2.2, 8.2.7, 8.2.8).
    let badvers = |extra: &str| {
        format!(
            "id=4660 opcode=QUERY rcode=BADVERS flags=qr
             QUESTION in.example.net. IN SOA
             OPT payload=1232 version=0 flags={extra}"
        )
    };
    both(&g, soa(Opt::new().version(1)), &badvers("-"));
    both(
        &g,
        soa(Opt::new().version(1).option(100, b"")),
        &badvers("-"),
    );
    both(&g, soa(Opt::new().version(1).flags(0x8000)), &badvers("do"));
    both(&g, soa(Opt::new().version(1).flags(0x0080)), &badvers("-"));
    both(
        &g,
        soa(Opt::new().version(255).ecs(9, 99, 9, &[1])),
        &badvers("-"),
    );
    // Errors carry OPT too: no question at all (gdnsd 018misc), DO copied.
    both(
        &g,
        Query::empty().edns(Opt::new().flags(0x8000)),
        "id=4660 opcode=QUERY rcode=FORMERR flags=qr
         OPT payload=1232 version=0 flags=do",
    );
    both(
        &g,
        Query::empty(),
        "id=4660 opcode=QUERY rcode=FORMERR flags=qr",
    );
    // Two questions: FORMERR with the first echoed (gdnsd 009broken), OPT answered.
    both(
        &g,
        Query::new("in.example.net", t::SOA)
            .question(question("in.example.net", t::SOA, 1))
            .edns(Opt::new()),
        &format!(
            "id=4660 opcode=QUERY rcode=FORMERR flags=qr
             QUESTION in.example.net. IN SOA
             {OPT}"
        ),
    );
    // Two OPT records (RFC 6891 6.1.1): FORMERR, still with one OPT.
    both(
        &g,
        soa(Opt::new()).edns(Opt::new()),
        &format!(
            "id=4660 opcode=QUERY rcode=FORMERR flags=qr
             QUESTION in.example.net. IN SOA
             {OPT}"
        ),
    );
    // Outside the zone: REFUSED with OPT.
    both(
        &g,
        Query::new("example.org", t::A).edns(Opt::new().flags(0x8000)),
        "id=4660 opcode=QUERY rcode=REFUSED flags=qr
         QUESTION example.org. IN A
         OPT payload=1232 version=0 flags=do",
    );
}

/// gdnsd 018misc and 019bad: records a query should not carry are skipped; the OPT record is
/// found among them, before or after.
#[test]
fn other_records_in_a_query_are_skipped() {
    let g = Geo::start();
    let expected = |opt: &str| {
        format!(
            "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
             QUESTION lon1.in.example.net. IN A
             ANSWER lon1.in.example.net. 60 IN A 127.0.0.11
             {opt}"
        )
    };
    let long = "this.is.an.rr.thats.longer.than.an.opt.rr.in.order.to.make.coverage.work";
    let mut q = Query::new("lon1.in.example.net", t::A);
    for i in 0..15 {
        q = q.answer(a_record(".", [192, 0, 2, i]));
    }
    for i in 0..13 {
        q = q.authority(a_record(long, [192, 0, 2, i]));
    }
    for i in 0..11 {
        q = q.additional(a_record("example", [1, 2, 3, i]));
    }
    both(&g, q.clone(), &expected(""));
    both(&g, q.clone().edns(Opt::new()), &expected(OPT));
    let opt_first = Query::new("lon1.in.example.net", t::A)
        .edns(Opt::new())
        .additional(a_record("example", [1, 2, 3, 4]));
    both(&g, opt_first, &expected(OPT));
    // A compressed owner name pointing at the question.
    let mut ptr = vec![0xC0, 12];
    ptr.extend([0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
    both(
        &g,
        Query::new("lon1.in.example.net", t::A)
            .additional(ptr)
            .edns(Opt::new()),
        &expected(OPT),
    );
}
