//! DNS over TCP as RFC 7766 asks (gdnsd `t/004misc/019bad.t` test 28, `t/026tcp`): pipelined
//! queries all answered, each answer written as soon as it is ready — never held back for a
//! query still in transit — idle connections closed; and truncation over UDP against the whole answer over TCP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::harness::{Geo, bulk_silo};
use super::raw::*;

/// A query with its TCP length prefix.
pub(super) fn framed(q: &Query) -> Vec<u8> {
    let b = q.bytes();
    let mut f = (b.len() as u16).to_be_bytes().to_vec();
    f.extend(b);
    f
}

fn connect(g: &Geo) -> TcpStream {
    let s = TcpStream::connect(g.tcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Five REFUSED root queries and one real one in a single write: six answers, in order
/// (019bad test 28).
#[test]
fn pipelined_queries_sent_together_are_all_answered() {
    let g = Geo::start();
    let mut all = Vec::new();
    for i in 0..5 {
        all.extend(framed(&Query::new(".", t::A).id(100 + i)));
    }
    all.extend(framed(
        &Query::new("lon1.in.example.net", t::A)
            .id(105)
            .edns(Opt::new()),
    ));
    let mut s = connect(&g);
    s.write_all(&all).unwrap();
    for i in 0..5 {
        assert_answer(
            &read_framed(&mut s).unwrap(),
            &format!(
                "id={} opcode=QUERY rcode=REFUSED flags=qr
                 QUESTION . IN A",
                100 + i
            ),
        );
    }
    assert_answer(
        &read_framed(&mut s).unwrap(),
        "id=105 opcode=QUERY rcode=NOERROR flags=qr,aa
         QUESTION lon1.in.example.net. IN A
         ANSWER lon1.in.example.net. 60 IN A 127.0.0.11
         OPT payload=1232 version=0 flags=-",
    );
}

/// A query followed by part of the next: the first answer comes before the rest of the second
/// query is sent (it used to wait for it, or for the idle timeout), and the connection then
/// answers the second query too.
#[test]
fn an_answer_never_waits_for_the_next_query() {
    let g = Geo::start_with("", "tcp_idle_timeout = \"60s\"");
    let first = framed(&Query::new("lon1.in.example.net", t::A).id(1));
    let second = framed(&Query::new("fra1.in.example.net", t::A).id(2));
    for cut in [1, 2, 7] {
        let mut s = connect(&g);
        let mut sent = first.clone();
        sent.extend(&second[..cut]);
        s.write_all(&sent).unwrap();
        // The read timeout (10 s) is far below the idle timeout (60 s): a held answer fails.
        let a = read_framed(&mut s).expect("the first answer, before the second query is whole");
        assert_eq!(&a[..2], [0, 1]);
        s.write_all(&second[cut..]).unwrap();
        assert_answer(
            &read_framed(&mut s).unwrap(),
            "id=2 opcode=QUERY rcode=NOERROR flags=qr,aa
             QUESTION fra1.in.example.net. IN A
             ANSWER fra1.in.example.net. 60 IN A 127.0.0.12",
        );
    }
}

/// Something not worth an answer (a response) closes the connection, after every answer
/// already due has been written.
#[test]
fn a_response_on_tcp_closes_the_connection_after_the_answers_due() {
    let g = Geo::start();
    let mut s = connect(&g);
    let mut all = framed(&Query::new("lon1.in.example.net", t::A).id(7));
    all.extend(framed(
        &Query::new("lon1.in.example.net", t::A).flags(0x8000),
    ));
    all.extend(framed(&Query::new("lon1.in.example.net", t::A).id(8)));
    s.write_all(&all).unwrap();
    let a = read_framed(&mut s).unwrap();
    assert_eq!(&a[..2], [0, 7]);
    assert_eq!(
        read_framed(&mut s),
        None,
        "closed, the query after it not read"
    );
}

/// RFC 7766 6.2.3: a connection that has all its answers and sends nothing more is closed
/// after `tcp_idle_timeout` (1 s here); one that stops in the middle of a query too.
#[test]
fn idle_connections_are_closed() {
    let g = Geo::start();
    let mut s = connect(&g);
    s.write_all(&framed(&Query::new("lon1.in.example.net", t::A)))
        .unwrap();
    assert!(read_framed(&mut s).is_some());
    assert_eq!(read_framed(&mut s), None, "closed when idle");
    let mut s = connect(&g);
    s.write_all(&[0, 40, 1, 2]).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap_or(0), 0, "closed mid-query");
}

/// Truncation (gdnsd 005big): over UDP an answer too big for the client's payload (512 without
/// EDNS) loses its records and sets TC, keeping the question and OPT; over TCP it is whole.
#[test]
fn truncated_udp_answers_keep_only_question_and_opt() {
    let g = Geo::start_with(&bulk_silo(), "");
    let wait = Duration::from_secs(3);
    let q = Query::new("bulk.in.example.net", t::A);
    assert_answer(
        &udp(g.udp, &q.bytes(), wait).unwrap(),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa,tc
         QUESTION bulk.in.example.net. IN A",
    );
    let q = q.edns(Opt::new().payload(4096).flags(0x8000));
    assert_answer(
        &udp(g.udp, &q.bytes(), wait).unwrap(),
        "id=4660 opcode=QUERY rcode=NOERROR flags=qr,aa,tc
         QUESTION bulk.in.example.net. IN A
         OPT payload=1232 version=0 flags=do",
    );
    let text = render(&tcp(g.tcp, &q.bytes()));
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ANSWER")).count(),
        100
    );
    assert!(
        text.ends_with("\nOPT payload=1232 version=0 flags=do"),
        "{text}"
    );
}
