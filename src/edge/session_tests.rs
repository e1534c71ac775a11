//! The edge's session fed the client's and the engine's bytes: routing, replay, relaying in
//! order, the local phase's rules at the edge, smuggling, without sockets.

use super::*;
use crate::topology::TwoTenants as Tenants;

fn session(max_errors: u32) -> Session {
    let mut s = Session::new(SessionLimits {
        hostname: "edge.test".into(),
        max_message_size: 1 << 20,
        max_recipients: 0, // the session sets its own
        max_commands: u32::MAX,
        max_errors,
        max_line_length: 64,
        starttls: true,
        collect: true, // the session only finds the end, whatever it is given
        bare_newline: crate::config::BareNewline::Reject,
    });
    s.greet();
    take(&mut s);
    s
}

/// What the client has been sent since last asked.
fn take(s: &mut Session) -> String {
    String::from_utf8(std::mem::take(s.output())).unwrap()
}

fn to_engine(s: &mut Session) -> String {
    String::from_utf8(std::mem::take(s.engine_output())).unwrap()
}

/// Feeds client bytes until the session stops; returns (bytes used, the step it stopped at).
fn client(s: &mut Session, input: &[u8]) -> (usize, Step) {
    s.client(input, &Tenants)
}

/// A session with an engine connected for acme, its first transaction open (MAIL, one RCPT
/// relayed and answered).
fn connected() -> Session {
    let mut s = session(10);
    let input = b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@acme.example>\r\n";
    let (n, step) = client(&mut s, input);
    assert_eq!(n, input.len());
    assert!(matches!(step, Step::Route(TenantIdx(0))), "{step:?}");
    s.connected();
    to_engine(&mut s);
    s.engine(b"250 e.test\r\n250 2.1.0 ok\r\n250 2.1.5 rcpt ok\r\n")
        .unwrap();
    take(&mut s);
    s
}

#[test]
fn a_pipelined_transaction_is_routed_replayed_and_relayed_in_order() {
    let mut s = session(10);
    let batch =
        b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@acme.example>\r\nDATA\r\n";
    let (n, step) = client(&mut s, batch);
    assert!(matches!(step, Step::Route(TenantIdx(0))), "{step:?}");
    assert_eq!(&batch[n..], b"DATA\r\n", "DATA waits for the route");
    assert!(take(&mut s).ends_with("250-SMTPUTF8\r\n250 STARTTLS\r\n250 2.1.0 Sender OK\r\n"));
    s.connected();
    assert_eq!(
        to_engine(&mut s),
        "EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@acme.example>\r\n"
    );
    let (n2, step) = client(&mut s, &batch[n..]);
    assert_eq!(n2, 6);
    assert!(
        matches!(step, Step::WaitEngine),
        "the body waits for the engine's 354"
    );
    assert_eq!(to_engine(&mut s), "DATA\r\n");
    // The engine's answers to the replayed EHLO and MAIL are not the client's to see.
    s.engine(b"250-e.test\r\n250 PIPELINING\r\n250 2.1.0 ok\r\n250 2.1.5 rcpt ok\r\n354 go\r\n")
        .unwrap();
    assert_eq!(take(&mut s), "250 2.1.5 rcpt ok\r\n354 go\r\n");
    assert!(s.in_body());
    let rest = b"hello\r\n.\r\nQUIT\r\n";
    let (n, step) = client(&mut s, rest);
    assert!(matches!(step, Step::Forward));
    assert_eq!(
        &rest[..n],
        b"hello\r\n.\r\n",
        "the body, as sent, ends at <CRLF>.<CRLF>"
    );
    let (_, step) = client(&mut s, &rest[n..]);
    assert!(
        matches!(step, Step::WaitEngine),
        "Bye waits for the message's reply"
    );
    assert_eq!(take(&mut s), "");
    s.engine(b"250 2.0.0 queued\r\n").unwrap();
    assert_eq!(take(&mut s), "250 2.0.0 queued\r\n221 2.0.0 Bye\r\n");
    assert!(matches!(
        client(&mut s, b"").1,
        Step::Close(Ending::Protocol)
    ));
}

#[test]
fn local_replies_wait_behind_the_engines() {
    let mut s = connected();
    let (_, step) = client(
        &mut s,
        b"RCPT TO:<c@acme.example>\r\nNOOP\r\nRCPT TO:<d@other.example>\r\n",
    );
    assert!(matches!(step, Step::Unrouted(None)), "{step:?}");
    assert_eq!(to_engine(&mut s), "RCPT TO:<c@acme.example>\r\n");
    assert_eq!(take(&mut s), "", "nothing overtakes the engine's reply");
    s.engine(b"250 2.1.5 c ok\r\n").unwrap();
    assert_eq!(
        take(&mut s),
        "250 2.1.5 c ok\r\n250 2.0.0 OK\r\n550 5.7.1 Relaying denied\r\n"
    );
}

#[test]
fn one_tenant_per_transaction_and_a_new_route_for_the_next() {
    let mut s = connected();
    let (_, step) = client(&mut s, b"RCPT TO:<boss@globex.example>\r\n");
    assert!(
        matches!(step, Step::Unrouted(Some(TenantIdx(1)))),
        "{step:?}"
    );
    assert_eq!(
        take(&mut s),
        "452 4.5.3 Too many recipients in this transaction; retry later\r\n"
    );
    assert_eq!(to_engine(&mut s), "");
    // After RSET, globex routes (the engine is reset too, its reply swallowed).
    let (_, step) = client(
        &mut s,
        b"RSET\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<boss@globex.example>\r\n",
    );
    assert!(matches!(step, Step::Route(TenantIdx(1))), "{step:?}");
    assert_eq!(to_engine(&mut s), "RSET\r\n");
    assert!(
        s.awaiting_engine(),
        "the RSET's reply is owed before the engine may go"
    );
    s.engine(b"250 2.0.0 reset\r\n").unwrap();
    assert_eq!(
        take(&mut s),
        "250 2.0.0 Reset OK\r\n250 2.1.0 Sender OK\r\n"
    );
    s.disconnected();
    s.connected();
    assert_eq!(
        to_engine(&mut s),
        "EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<boss@globex.example>\r\n"
    );
}

#[test]
fn no_engine_is_a_451_and_the_next_recipient_routes_again() {
    let mut s = session(10);
    let (_, step) = client(
        &mut s,
        b"HELO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@acme.example>\r\n",
    );
    assert!(matches!(step, Step::Route(_)));
    s.unavailable();
    assert!(
        take(&mut s).ends_with(
            "451 4.4.0 No mail engine available for this recipient, try again later\r\n"
        )
    );
    let (_, step) = client(&mut s, b"DATA\r\nRCPT TO:<b@acme.example>\r\n");
    assert!(matches!(step, Step::Route(_)), "{step:?}");
    assert_eq!(take(&mut s), "554 5.5.1 No valid recipients\r\n");
}

#[test]
fn commands_out_of_order_and_the_edge_error_cap() {
    let mut s = session(3);
    let (_, step) = client(
        &mut s,
        b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@acme.example>\r\nHELO\r\nNOOP\r\n",
    );
    assert!(matches!(step, Step::Close(Ending::Protocol)), "{step:?}");
    assert_eq!(
        take(&mut s),
        "503 5.5.1 Send EHLO or HELO first\r\n503 5.5.1 Need MAIL before RCPT\r\n\
         421 4.7.0 Too many errors, closing connection\r\n"
    );
}

#[test]
fn long_lines_are_refused_at_the_edge() {
    let mut s = session(10);
    let mut long = b"NOOP ".to_vec();
    long.extend([b'x'; 100]);
    long.extend_from_slice(b"\r\nNOOP\r\n");
    let (n, step) = client(&mut s, &long);
    assert!(matches!(step, Step::More) && n == long.len());
    assert_eq!(take(&mut s), "500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n");
}

#[test]
fn starttls_is_offered_without_an_engine_and_forgets_the_hello() {
    let mut s = session(10);
    let (_, step) = client(&mut s, b"EHLO c.example\r\nSTARTTLS\r\n");
    assert!(matches!(step, Step::StartTls));
    assert!(take(&mut s).ends_with("250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n"));
    let (_, step) = client(
        &mut s,
        b"MAIL FROM:<a@x.example>\r\nEHLO c.example\r\nSTARTTLS\r\n",
    );
    assert!(matches!(step, Step::More));
    let out = take(&mut s);
    assert!(
        out.starts_with("503 5.5.1 Send EHLO or HELO first\r\n"),
        "{out}"
    );
    assert!(!out.contains("250 STARTTLS"), "{out}");
    assert!(
        out.ends_with("502 5.5.1 STARTTLS not available\r\n"),
        "{out}"
    );

    // With an engine connected the client's TLS was already told to it: not offered.
    let mut s = connected();
    s.engine_output().clear();
    let (_, step) = client(&mut s, b"STARTTLS\r\n");
    assert!(matches!(step, Step::More));
    assert_eq!(take(&mut s), "502 5.5.1 STARTTLS not available\r\n");
}

#[test]
fn ehlo_after_routing_is_answered_here_and_told_to_the_engine() {
    let mut s = connected();
    let (_, step) = client(&mut s, b"EHLO again.example\r\n");
    assert!(matches!(step, Step::More));
    assert_eq!(to_engine(&mut s), "EHLO again.example\r\n");
    assert_eq!(
        take(&mut s),
        "",
        "queued behind the engine's swallowed reply"
    );
    s.engine(b"250-e.test\r\n250 SIZE 1\r\n").unwrap();
    let out = take(&mut s);
    assert!(
        out.starts_with("250-edge.test\r\n"),
        "our capabilities: {out}"
    );
    assert!(!out.contains("STARTTLS"), "{out}");
}

#[test]
fn smuggled_ends_of_data_are_body_and_go_to_the_engine_as_sent() {
    let mut s = connected();
    client(&mut s, b"DATA\r\n");
    assert_eq!(to_engine(&mut s), "DATA\r\n");
    s.engine(b"354 go\r\n").unwrap();
    take(&mut s);
    let evil = b"x\n.\nMAIL FROM:<e@x.example>\r\nRCPT TO:<v@globex.example>\r\nDATA\r\n";
    let (n, step) = client(&mut s, evil);
    assert!(matches!(step, Step::Forward));
    assert_eq!(n, evil.len(), "all of it is message");
    assert!(s.in_body());
    let (n, step) = client(&mut s, b"\r\n.\nNOOP\r\n.\r\nNOOP\r\n");
    assert!(matches!(step, Step::Forward));
    assert_eq!(n, 13, "<CRLF>.<LF> is not the end either; <CRLF>.<CRLF> is");
    assert!(!s.in_body());
    assert_eq!(
        to_engine(&mut s),
        "",
        "no smuggled command reached the engine as one"
    );
}

#[test]
fn an_engine_that_does_not_speak_smtp_ends_the_session() {
    let mut s = connected();
    client(&mut s, b"NOOP\r\n");
    assert!(matches!(
        s.engine(b"HTTP/1.1 400 Bad Request\r\n"),
        Err(Ending::EngineGarbage(_))
    ));
}

#[test]
fn an_engine_without_recipients_of_the_open_transaction_may_go() {
    let mut s = connected();
    assert!(
        !s.engine_dispensable(),
        "it has the open transaction's recipient"
    );
    client(&mut s, b"RSET\r\n");
    s.engine(b"250 2.0.0 ok\r\n").unwrap();
    let (_, step) = client(&mut s, b"MAIL FROM:<a@x.example>\r\n");
    assert!(matches!(step, Step::More));
    assert!(s.engine_dispensable(), "MAIL is still the edge's own");
    s.disconnected();
    to_engine(&mut s);
    let (_, step) = client(&mut s, b"RCPT TO:<c@acme.example>\r\n");
    assert!(matches!(step, Step::Route(TenantIdx(0))));
    s.connected();
    assert_eq!(
        to_engine(&mut s),
        "EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<c@acme.example>\r\n",
        "the held MAIL goes to the new connection"
    );
}

/// The engine verifies recipients: a refusal it sends is relayed and the recipient leaves the
/// edge's transaction too, so DATA finds none and the next RCPT may be another tenant's.
#[test]
fn a_recipient_the_engine_refuses_is_taken_back_out_of_the_transaction() {
    let mut s = session(10);
    let input = b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<nobody@acme.example>\r\n";
    let (_, step) = client(&mut s, input);
    assert!(matches!(step, Step::Route(TenantIdx(0))), "{step:?}");
    s.connected();
    to_engine(&mut s);
    take(&mut s);
    s.engine(
        b"250 e.test\r\n250 2.1.0 ok\r\n550 5.1.1 Recipient address rejected: user unknown\r\n",
    )
    .unwrap();
    assert_eq!(
        take(&mut s),
        "550 5.1.1 Recipient address rejected: user unknown\r\n"
    );
    assert!(
        s.engine_dispensable(),
        "no recipient of the open transaction is at the engine"
    );
    let (_, step) = client(&mut s, b"DATA\r\n");
    assert!(matches!(step, Step::More));
    assert_eq!(take(&mut s), "554 5.5.1 No valid recipients\r\n");
    assert_eq!(to_engine(&mut s), "", "DATA is refused here");
    let (_, step) = client(&mut s, b"RCPT TO:<boss@globex.example>\r\n");
    assert!(
        matches!(step, Step::Route(TenantIdx(1))),
        "another tenant's recipient routes, no 452: {step:?}"
    );
}

/// A refusal that arrives after the client reset its transaction leaves the new one alone.
#[test]
fn a_late_refusal_touches_only_its_own_transaction() {
    let mut s = connected();
    let (_, step) = client(
        &mut s,
        b"RCPT TO:<c@acme.example>\r\nRSET\r\nMAIL FROM:<a@x.example>\r\n",
    );
    assert!(matches!(step, Step::More), "{step:?}");
    to_engine(&mut s);
    s.engine(b"451 4.4.3 try later\r\n250 2.0.0 reset\r\n")
        .unwrap();
    assert_eq!(
        take(&mut s),
        "451 4.4.3 try later\r\n250 2.0.0 Reset OK\r\n250 2.1.0 Sender OK\r\n"
    );
    let (_, step) = client(&mut s, b"RCPT TO:<c@acme.example>\r\n");
    assert!(matches!(step, Step::Route(TenantIdx(0))), "{step:?}");
    s.reused();
    s.engine(b"250 2.1.5 ok\r\n").unwrap();
    assert!(!s.engine_dispensable(), "c@ is in the new transaction");
}

/// An engine that gives up on the client (its error cap) answers 421 and closes: the edge
/// relays it and ends the client's session as well, rather than open a fresh engine session.
#[test]
fn an_engines_421_ends_the_clients_session() {
    let mut s = connected();
    client(&mut s, b"RCPT TO:<x@acme.example>\r\nNOOP\r\n");
    to_engine(&mut s);
    s.engine(b"421 4.7.0 Too many errors, closing connection\r\n")
        .unwrap();
    assert_eq!(
        take(&mut s),
        "421 4.7.0 Too many errors, closing connection\r\n250 2.0.0 OK\r\n"
    );
    assert!(matches!(
        client(&mut s, b"RCPT TO:<y@acme.example>\r\n").1,
        Step::Close(Ending::Protocol)
    ));
}
