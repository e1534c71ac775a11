//! Malformed queries, hand-encoded as gdnsd's `t/004misc/019bad.t` and the invalid cases of
//! `t/013clientsub/039clientsub.t` encode them, each with the whole answer it must get: FORMERR
//! with what could be parsed (the first question, the OPT record), never silence for a query
//! that has a header, never a crash.

use std::time::Duration;

use super::harness::Geo;
use super::raw::*;

const WAIT: Duration = Duration::from_secs(3);
const OPT: &str = "OPT payload=1232 version=0 flags=-";

#[track_caller]
fn check(g: &Geo, q: Query, expected: &str) {
    let bytes = q.bytes();
    assert_answer(
        &udp(g.udp, &bytes, WAIT).expect("an answer over UDP"),
        expected,
    );
    assert_answer(&tcp(g.tcp, &bytes), expected);
}

/// A FORMERR with no question and no OPT: nothing of the query could be trusted.
const BARE_FORMERR: &str = "id=4660 opcode=QUERY rcode=FORMERR flags=qr";

#[test]
fn broken_questions_are_formerr_without_the_question() {
    let g = Geo::start();
    let raw_question = |q: &[u8]| Query::empty().counts([1, 0, 0, 0]).tail(q);
    // A compression pointer in the question name (019bad test 3).
    check(
        &g,
        raw_question(b"\x03ggg\xC0\x01\x00\x01\x00\x01"),
        BARE_FORMERR,
    );
    // A name over 255 octets (test 4).
    let label = [b'0'; 63];
    let mut long = Vec::new();
    for _ in 0..5 {
        long.push(63);
        long.extend(label);
    }
    long.extend([0, 0, 1, 0, 1]);
    check(&g, raw_question(&long), BARE_FORMERR);
    // Cut inside the class, the type, the name (tests 5–7).
    let q = question("ggg.zzz", t::A, 1);
    for cut in [1, 3, 5] {
        check(&g, raw_question(&q[..q.len() - cut]), BARE_FORMERR);
    }
    // An obsolete label type (0x40, 0x80).
    check(
        &g,
        raw_question(b"\x43ggg\x00\x00\x01\x00\x01"),
        BARE_FORMERR,
    );
    check(
        &g,
        raw_question(b"\x83ggg\x00\x00\x01\x00\x01"),
        BARE_FORMERR,
    );
    // Counts promising questions and records that are not there.
    check(
        &g,
        Query::new("in.example.net", t::SOA).counts([1, 0, 0, 3]),
        "id=4660 opcode=QUERY rcode=FORMERR flags=qr
         QUESTION in.example.net. IN SOA",
    );
}

#[test]
fn broken_records_after_the_question_are_formerr_with_it() {
    let g = Geo::start();
    let with_q = |extra: &str| {
        format!(
            "id=4660 opcode=QUERY rcode=FORMERR flags=qr
             QUESTION example.com. IN A
             {extra}"
        )
    };
    let q = || Query::new("example.com", t::A);
    // QDCOUNT=2: the second question missing, cut in a label, cut in type/class, too long
    // (019bad tests 13–16).
    check(&g, q().counts([2, 0, 0, 0]), &with_q(""));
    check(&g, q().counts([2, 0, 0, 0]).tail(b"\x07abc"), &with_q(""));
    check(
        &g,
        q().counts([2, 0, 0, 0]).tail(b"\x07example\x00\x00\x01"),
        &with_q(""),
    );
    let mut long = Vec::new();
    for _ in 0..4 {
        long.push(63);
        long.extend([b'0'; 63]);
    }
    long.extend([0, 0, 0, 0, 0]);
    check(&g, q().counts([2, 0, 0, 0]).tail(&long), &with_q(""));
    // An answer record whose owner is a dangling pointer (test 18); an authority record one
    // octet short of its RDLENGTH, then of its RDATA (tests 19, 20).
    check(
        &g,
        q().counts([1, 1, 0, 0]).tail(b"\x07example\xC0"),
        &with_q(""),
    );
    check(
        &g,
        q().counts([1, 0, 1, 0])
            .tail(b"\xC0\x0C\x00\x01\x00\x01\x00\x00\x00\x01\x00"),
        &with_q(""),
    );
    check(
        &g,
        q().counts([1, 0, 1, 0])
            .tail(b"\xC0\x0C\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04\x01\x02\x02"),
        &with_q(""),
    );
    // A too-short OPT record is not an OPT record, just a broken one (test 8).
    check(
        &g,
        q().counts([1, 0, 0, 1]).tail(b"\x00\x00\x00"),
        &with_q(""),
    );
    // OPT records whose RDATA runs past the end, is too short for an option header, or holds
    // an option longer than itself (tests 22–24): FORMERR, with OPT.
    check(&g, q().edns(Opt::new().rdlen(1)), &with_q(OPT));
    check(&g, q().edns(Opt::new().raw_options(b"xxx")), &with_q(OPT));
    check(
        &g,
        q().edns(Opt::new().raw_options(b"\x55\x55\x00\x02\x01")),
        &with_q(OPT),
    );
    // An OPT record owned by a name other than the root.
    let mut named = Opt::new().bytes();
    named.splice(0..1, *b"\x01x\x00");
    check(&g, q().additional(named), &with_q(""));
}

/// RFC 7871 6 and 7.1 (gdnsd 039clientsub): an ECS option that breaks the format is FORMERR
/// with a plain OPT record (no ECS echoed); a well-formed one is echoed with its scope.
#[test]
fn client_subnet_options_are_checked_as_rfc_7871_says() {
    let g = Geo::start();
    let ask = |opt: Opt| Query::new("lon1.in.example.net", t::A).edns(opt);
    let formerr = format!(
        "id=4660 opcode=QUERY rcode=FORMERR flags=qr
         QUESTION lon1.in.example.net. IN A
         {OPT}"
    );
    for (what, opt) in [
        (
            "v4 source over 32",
            Opt::new().ecs(1, 33, 0, &[192, 0, 2, 0, 0]),
        ),
        ("v6 source over 128", Opt::new().ecs(2, 129, 0, &[0; 17])),
        ("too few octets, v4", Opt::new().ecs(1, 32, 0, &[0, 0, 0])),
        ("too few octets, v6", Opt::new().ecs(2, 128, 0, &[0; 15])),
        ("unknown family", Opt::new().ecs(3, 128, 0, &[0; 16])),
        ("junk family", Opt::new().ecs(42, 0, 0, &[])),
        ("option of one octet", Opt::new().option(8, &[1])),
        ("too many octets", Opt::new().ecs(1, 24, 0, &[192, 0, 2, 1])),
        (
            "bits beyond the source",
            Opt::new().ecs(1, 31, 0, &[192, 0, 2, 1]),
        ),
        ("a scope in a query", Opt::new().ecs(1, 24, 1, &[192, 0, 2])),
        (
            "two ECS options",
            Opt::new().ecs(1, 8, 0, &[1]).ecs(1, 8, 0, &[2]),
        ),
    ] {
        let bytes = ask(opt).bytes();
        let got = udp(g.udp, &bytes, WAIT).expect("an answer");
        assert_eq!(
            render(&got),
            formerr
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("\n"),
            "{what}"
        );
    }
    // Well formed: echoed; the scope is 0 for a name whose answer does not depend on where
    // the client is, including at a source prefix that does not end on an octet.
    let ok = |ecs: &str| {
        format!(
            "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa
             QUESTION lon1.in.example.net. IN A
             ANSWER lon1.in.example.net. 60 IN A 127.0.0.11
             OPT payload=1232 version=0 flags=- ECS={ecs}"
        )
    };
    check(
        &g,
        ask(Opt::new().ecs(1, 24, 0, &[192, 0, 2])),
        &ok("192.0.2.0/24/0"),
    );
    check(
        &g,
        ask(Opt::new().ecs(1, 27, 0, &[192, 0, 2, 0])),
        &ok("192.0.2.0/27/0"),
    );
    check(&g, ask(Opt::new().ecs(1, 0, 0, &[])), &ok("0.0.0.0/0/0"));
    check(
        &g,
        ask(Opt::new().ecs(2, 56, 0, &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 1])),
        &ok("2001:db8:0:100::/56/0"),
    );
}

/// Random damage to a good query never gets a malformed answer or none: every query with a
/// header is answered, with its ID, and the answer decodes exactly as its header counts say.
#[test]
fn damaged_queries_get_well_formed_answers() {
    let g = Geo::start();
    let base = Query::new("mx.in.example.net", t::A)
        .edns(Opt::new().flags(0x8000).ecs(1, 24, 0, &[81, 2, 69]))
        .bytes();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(19);
    let mut buf = vec![0u8; 65535];
    let mut answered = 0;
    for i in 0..400u16 {
        let mut m = base.clone();
        for _ in 0..rng.usize(1..4) {
            let at = rng.usize(4..m.len());
            m[at] = rng.u8(..);
        }
        m[..2].copy_from_slice(&i.to_be_bytes());
        m[2] &= 0x7F; // a query, so it is answered
        sock.send_to(&m, g.udp).unwrap();
        let n = sock
            .recv(&mut buf)
            .expect("every query with a header is answered");
        let text = render(&buf[..n]);
        assert!(text.starts_with(&format!("id={i} ")), "{text}");
        answered += 1;
    }
    assert_eq!(answered, 400);
}
