//! The shared receiving session fed bytes, as a client sends them: every rule of the local
//! phase, without sockets.

use super::*;

/// `acme.example` is owner 1 (it does not know `nobody@`), `globex.example` owner 2.
struct Fake;

impl Recipients for Fake {
    type Owner = u8;
    fn owner(&self, address: &str) -> Option<u8> {
        match address.rsplit_once('@')?.1 {
            "acme.example" => Some(1),
            "globex.example" => Some(2),
            _ => None,
        }
    }
    fn knows(&self, _: u8, address: &str) -> bool {
        !address.starts_with("nobody@")
    }
}

fn limits() -> SessionLimits {
    SessionLimits {
        hostname: "mx.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_commands: 50,
        max_errors: 10,
        max_line_length: 64,
        starttls: true,
        collect: true,
        bare_newline: crate::config::BareNewline::Reject,
    }
}

/// What a client saw: every reply as text, and the messages that ended.
#[derive(Debug, Default)]
struct Seen {
    replies: Vec<String>,
    messages: Vec<Message<u8>>,
    closed: bool,
    tls: bool,
}

/// Feeds `input` the way the engine does (accept every offered recipient, 354 at DATA),
/// until the session wants more bytes or closes. Returns the bytes left over.
fn feed(s: &mut Server<u8>, input: &[u8], seen: &mut Seen) -> usize {
    let mut pos = 0;
    loop {
        let (n, ev) = s.input(&input[pos..], &Fake);
        pos += n;
        match ev {
            Event::More => return input.len() - pos,
            Event::Body => {}
            Event::Reply(r)
            | Event::Hello(r)
            | Event::Mail(r)
            | Event::Reset(r)
            | Event::RcptRefused { reply: r, .. } => seen.replies.push(r.to_string()),
            Event::Close(r) => {
                seen.replies.push(r.to_string());
                seen.closed = true;
                return input.len() - pos;
            }
            Event::StartTls(r) => {
                seen.replies.push(r.to_string());
                seen.tls = true;
                return input.len() - pos;
            }
            Event::Rcpt { address, owner } => {
                s.accept_rcpt(address, owner);
                seen.replies.push(replies::RECIPIENT_OK.to_string());
            }
            Event::Data => seen.replies.push(s.begin_data().to_string()),
            Event::Message(m) => {
                seen.replies.push("(message)".into());
                seen.messages.push(m);
            }
        }
    }
}

fn session(input: &[u8]) -> (Server<u8>, Seen) {
    let mut s = Server::new(limits());
    let mut seen = Seen::default();
    feed(&mut s, input, &mut seen);
    (s, seen)
}

fn codes(seen: &Seen) -> Vec<&str> {
    seen.replies.iter().map(|r| &r[..r.len().min(9)]).collect()
}

#[test]
fn commands_out_of_order_are_refused() {
    let (_, seen) = session(
        b"MAIL FROM:<a@x.example>\r\nEHLO c.example\r\nRCPT TO:<b@acme.example>\r\nDATA\r\n\
          MAIL FROM:<a@x.example>\r\nDATA\r\nMAIL FROM:<a@x.example>\r\n",
    );
    assert_eq!(
        seen.replies,
        [
            "503 5.5.1 Send EHLO or HELO first",
            &replies::ehlo("mx.test", 1000, true).to_string(),
            "503 5.5.1 Need MAIL before RCPT",
            "503 5.5.1 Need MAIL command",
            "250 2.1.0 Sender OK",
            "554 5.5.1 No valid recipients",
            "503 5.5.1 Nested MAIL command",
        ]
    );
}

#[test]
fn a_pipelined_batch_is_answered_in_order_and_the_message_handed_over() {
    let batch = b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@acme.example>\r\n\
                  RCPT TO:<c@acme.example>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
    let (_, seen) = session(batch);
    assert_eq!(
        codes(&seen),
        [
            "250-mx.te",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "354 End d",
            "(message)",
            "221 2.0.0"
        ]
    );
    assert!(seen.closed);
    let m = &seen.messages[0];
    assert_eq!(m.body, b"Subject: x\r\n\r\n.dot\r\n");
    assert_eq!((m.mail.address.as_str(), m.owner), ("a@x.example", Some(1)));
    assert_eq!(m.rcpts, ["b@acme.example", "c@acme.example"]);
    assert_eq!(m.problem, None);
}

#[test]
fn a_command_split_across_reads_waits_for_its_end() {
    let mut s = Server::new(limits());
    let mut seen = Seen::default();
    assert_eq!(
        feed(&mut s, b"EHLO c.exa", &mut seen),
        10,
        "kept for the next read"
    );
    assert!(seen.replies.is_empty());
    feed(&mut s, b"EHLO c.example\r\n", &mut seen);
    assert_eq!(codes(&seen), ["250-mx.te"]);
}

#[test]
fn starttls_forgets_the_session_and_is_offered_once() {
    let (mut s, mut seen) = session(b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nSTARTTLS\r\n");
    assert!(
        seen.replies[0].contains("250 STARTTLS"),
        "{:?}",
        seen.replies
    );
    assert_eq!(seen.replies[2], "503 5.5.1 STARTTLS not allowed now");
    feed(&mut s, b"RSET\r\nSTARTTLS\r\n", &mut seen);
    assert!(seen.tls && s.tls());
    let mut after = Seen::default();
    feed(
        &mut s,
        b"MAIL FROM:<a@x.example>\r\nEHLO c.example\r\nSTARTTLS\r\n",
        &mut after,
    );
    assert_eq!(after.replies[0], "503 5.5.1 Send EHLO or HELO first");
    assert!(
        !after.replies[1].contains("STARTTLS"),
        "{}",
        after.replies[1]
    );
    assert_eq!(after.replies[2], "502 5.5.1 STARTTLS not available");
}

#[test]
fn commands_pipelined_behind_starttls_close_the_session() {
    let (_, seen) = session(b"EHLO c.example\r\nSTARTTLS\r\nMAIL FROM:<evil@x.example>\r\n");
    assert!(seen.closed && !seen.tls);
    assert!(
        seen.replies[1].starts_with("554 5.5.1"),
        "{:?}",
        seen.replies
    );
}

#[test]
fn recipients_are_limited_to_one_known_owner_and_a_count() {
    let (_, seen) = session(
        b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@elsewhere.example>\r\n\
          RCPT TO:<b@acme.example>\r\nRCPT TO:<b@globex.example>\r\nRCPT TO:<nobody@acme.example>\r\n\
          RCPT TO:<B@acme.example>\r\nRCPT TO:<c@acme.example>\r\nRCPT TO:<d@acme.example>\r\n\
          RCPT TO:<e@acme.example>\r\nRCPT TO:<j\xc3\xb6rg@acme.example>\r\n",
    );
    assert_eq!(
        seen.replies[2..],
        [
            "550 5.7.1 Relaying denied",
            "250 2.1.5 Recipient OK",
            "452 4.5.3 Too many recipients in this transaction; retry later",
            "550 5.1.1 Recipient address rejected: user unknown",
            "250 2.1.5 Recipient OK (duplicate)",
            "250 2.1.5 Recipient OK",
            "250 2.1.5 Recipient OK",
            "452 4.5.3 Too many recipients",
            "452 4.5.3 Too many recipients",
        ]
    );
}

#[test]
fn non_ascii_recipients_need_smtputf8() {
    let (_, seen) = session(
        "EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<jörg@acme.example>\r\nRSET\r\n\
         MAIL FROM:<a@x.example> SMTPUTF8\r\nRCPT TO:<jörg@acme.example>\r\n"
            .as_bytes(),
    );
    assert_eq!(
        codes(&seen),
        [
            "250-mx.te",
            "250 2.1.0",
            "553 5.6.7",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.1.5"
        ]
    );
}

#[test]
fn the_error_cap_ends_the_session_and_counts_what_the_caller_refused() {
    let mut s: Server<u8> = Server::new(SessionLimits {
        max_errors: 5,
        ..limits()
    });
    let mut seen = Seen::default();
    feed(
        &mut s,
        b"FOO\r\nBAR\r\nBAZ\r\nQUX\r\nNOOP\r\nXYZZY\r\nNOOP\r\n",
        &mut seen,
    );
    assert_eq!(
        codes(&seen),
        [
            "500 5.5.1",
            "500 5.5.1",
            "500 5.5.1",
            "500 5.5.1",
            "250 2.0.0",
            "421 4.7.0"
        ]
    );
    assert!(
        seen.closed,
        "the fifth error closes; nothing after it is read"
    );

    let mut s: Server<u8> = Server::new(SessionLimits {
        max_errors: 2,
        ..limits()
    });
    assert_eq!(s.answered(&replies::OK), None);
    assert_eq!(s.answered(&replies::BARE_NEWLINE), None);
    assert_eq!(
        s.answered(&replies::BARE_NEWLINE),
        Some(replies::TOO_MANY_ERRORS)
    );
}

#[test]
fn the_command_cap_ends_the_session() {
    let mut s: Server<u8> = Server::new(SessionLimits {
        max_commands: 3,
        ..limits()
    });
    let mut seen = Seen::default();
    feed(
        &mut s,
        b"NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n",
        &mut seen,
    );
    assert_eq!(
        codes(&seen),
        ["250 2.0.0", "250 2.0.0", "250 2.0.0", "421 4.7.0"]
    );
}

#[test]
fn long_lines_are_read_to_their_end_and_refused_once() {
    let mut s = Server::new(limits());
    let mut seen = Seen::default();
    // 62 bytes + CRLF = 64: at the limit.
    let ok = format!("NOOP {}\r\n", "x".repeat(57));
    assert_eq!(ok.len(), 64);
    feed(&mut s, ok.as_bytes(), &mut seen);
    feed(
        &mut s,
        format!("NOOP {}\r\n", "x".repeat(58)).as_bytes(),
        &mut seen,
    );
    // Longer than the limit with no end yet: dropped as it comes, one error at its end, and
    // its tail is not taken for a command.
    assert_eq!(feed(&mut s, &[b'A'; 100], &mut seen), 0);
    feed(&mut s, b"MAIL FROM:<a@x.example>\r\nNOOP\r\n", &mut seen);
    assert_eq!(
        seen.replies,
        [
            "250 2.0.0 OK",
            "500 5.5.2 Line too long",
            "500 5.5.2 Line too long",
            "250 2.0.0 OK"
        ]
    );
}

#[test]
fn smuggled_ends_of_data_do_not_end_the_message() {
    let (_, seen) = session(
        b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@acme.example>\r\nDATA\r\n\
          Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<c@acme.example>\r\n\
          DATA\r\nsmuggled\r\n.\r\nNOOP\r\n",
    );
    assert_eq!(
        codes(&seen),
        [
            "250-mx.te",
            "250 2.1.0",
            "250 2.1.5",
            "354 End d",
            "(message)",
            "250 2.0.0"
        ],
        "one message, ended at the real <CRLF>.<CRLF>; the smuggled commands are its body"
    );
    let m = &seen.messages[0];
    assert_eq!(m.problem, Some(Problem::BareNewline));
    assert_eq!(m.rcpts, ["b@acme.example"]);
    assert_eq!(
        m.problem.map(|p| p.reply().to_string()).as_deref(),
        Some(replies::BARE_NEWLINE.to_string().as_str())
    );
    let (_, seen) = session(
        b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@acme.example>\r\nDATA\r\n\
          hi\r\n.\nNOOP\r\n",
    );
    assert_eq!(
        seen.messages.len(),
        0,
        "<CRLF>.<LF> does not end the message either"
    );
}

#[test]
fn sizes_are_checked_at_mail_and_while_reading() {
    let (_, seen) = session(
        b"EHLO c.example\r\nMAIL FROM:<a@x.example> SIZE=1001\r\nMAIL FROM:<a@x.example> SIZE=1000\r\n",
    );
    assert_eq!(
        seen.replies[1],
        "552 5.3.4 Message size exceeds fixed limit of 1000 bytes"
    );
    assert_eq!(seen.replies[2], "250 2.1.0 Sender OK");
    let mut input =
        b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@acme.example>\r\nDATA\r\n"
            .to_vec();
    input.extend(std::iter::repeat_n(b'x', 2000));
    input.extend_from_slice(b"\r\n.\r\n");
    let (_, seen) = session(&input);
    let m = &seen.messages[0];
    assert_eq!(m.problem, Some(Problem::TooBig(1000)));
    assert_eq!(m.size, 2002, "counted beyond the limit");
    assert!(m.body.len() <= 1000, "not kept beyond it");
}

#[test]
fn eight_bit_parameters_need_ehlo() {
    let (_, seen) = session(b"HELO c.example\r\nMAIL FROM:<a@x.example> BODY=8BITMIME\r\n");
    assert_eq!(
        seen.replies,
        ["250 mx.test", "501 5.5.4 Parameters need EHLO"]
    );
}

#[test]
fn a_proxy_header_from_the_client_is_refused() {
    let mut s: Server<u8> = Server::new(limits());
    assert_eq!(
        s.input(b"PRO", &Fake),
        (0, Event::More),
        "could still be one"
    );
    let (_, seen) = session(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 25\r\nEHLO c.example\r\n");
    assert_eq!(
        seen.replies,
        ["554 5.7.0 PROXY protocol not accepted on this listener"]
    );
    assert!(seen.closed);
    let mut v2 = crate::proxy::V2_SIGNATURE.to_vec();
    v2.extend_from_slice(b"\x21\x11\x00\x0c");
    let (_, seen) = session(&v2);
    assert!(seen.closed);
    // Later in the session the words are just an unknown command.
    let (_, seen) = session(b"NOOP\r\nPROXY TCP4 1.2.3.4 5.6.7.8 1 25\r\n");
    assert_eq!(codes(&seen), ["250 2.0.0", "500 5.5.1"]);
}

#[test]
fn an_edge_style_caller_only_finds_the_end_of_data() {
    let mut s: Server<u8> = Server::new(SessionLimits {
        collect: false,
        ..limits()
    });
    let mut pos = 0;
    let input = b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@acme.example>\r\n";
    while pos < input.len() {
        let (n, ev) = s.input(&input[pos..], &Fake);
        pos += n;
        if let Event::Rcpt { address, owner } = ev {
            s.accept_rcpt(address, owner);
        }
    }
    assert_eq!(s.input(b"DATA\r\n", &Fake), (6, Event::Data));
    s.begin_data();
    let body = vec![b'x'; 5000];
    assert_eq!(
        s.input(&body, &Fake),
        (5000, Event::Body),
        "no size limit: the engine has it"
    );
    let (n, ev) = s.input(b"\r\n.\r\nQUIT\r\n", &Fake);
    assert_eq!(n, 5);
    let Event::Message(m) = ev else {
        panic!("{ev:?}")
    };
    assert!(m.body.is_empty() && m.problem.is_none());
}
