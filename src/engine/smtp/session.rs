//! The engine's SMTP session as a sans-I/O state machine: the shared local phase
//! ([`crate::smtp::server`]) with the engine's own decisions: every recipient that passed the
//! shared checks goes to the driver to be verified ([`Step::Verify`]: recipient files,
//! call-ahead, `crate::engine::verify`), DATA is answered 354 at once, and a complete message
//! goes to the driver ([`Step::Message`]) unless it is malformed. The driver (`mod.rs`) does the
//! I/O, the verifying, the scanning and the spooling.
//!
//! Lifecycle: banner → [`Session::input`] until [`Step::Close`]; after each [`Step::Verify`]
//! the driver calls [`Session::verified`] with the verdict's reply; after each
//! [`Step::Message`] it answers and calls [`Session::answered`].

use crate::smtp::Reply;
use crate::smtp::server::{Event, Message, Recipients, Server, SessionLimits};
use crate::topology::TenantIdx;

/// What the driver must do next.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Read more bytes (flushing replies first: that is what answers a pipelined batch at once).
    More,
    /// Send this reply, then call [`Session::input`] again.
    Reply(Reply),
    /// Send this 220 and start TLS (no bytes may be buffered: the session checked).
    StartTls(Reply),
    /// Send this reply and close.
    Close(Reply),
    /// A recipient that passed the shared checks: verify it (recipient lists, call-ahead),
    /// greylist it when its policy says so, then [`Session::verified`] (before any more input).
    Verify { address: String, owner: TenantIdx },
    /// A complete message with its envelope: scan, spool, answer, then [`Session::answered`].
    Message(Message<TenantIdx>),
}

/// One SMTP session's protocol state.
#[derive(Debug)]
pub struct Session {
    server: Server<TenantIdx>,
}

impl Session {
    pub fn new(limits: SessionLimits) -> Session {
        Session {
            server: Server::new(limits),
        }
    }

    pub fn banner(&self) -> Reply {
        self.server.banner()
    }

    pub fn helo(&self) -> &str {
        self.server.helo()
    }

    /// STARTTLS happened in this session.
    pub fn tls(&self) -> bool {
        self.server.tls()
    }

    pub fn in_body(&self) -> bool {
        self.server.in_body()
    }

    /// Body bytes kept in memory so far (see [`super::body`]).
    pub fn body_kept(&self) -> usize {
        self.server.body_kept()
    }

    /// Memory the body kept so far occupies.
    pub fn body_memory(&self) -> usize {
        self.server.body_memory()
    }

    /// Takes the body bytes kept so far, to spill them to a file.
    pub fn take_body(&mut self) -> Vec<u8> {
        self.server.take_body()
    }

    /// Handles the start of `buf`; returns how many bytes it used and what to do.
    pub fn input(
        &mut self,
        buf: &[u8],
        recipients: &impl Recipients<Owner = TenantIdx>,
    ) -> (usize, Step) {
        let (used, event) = self.server.input(buf, recipients);
        let step = match event {
            Event::More | Event::Body => Step::More,
            Event::Reply(r)
            | Event::Hello(r)
            | Event::Mail(r)
            | Event::Reset(r)
            | Event::RcptRefused { reply: r, .. } => Step::Reply(r),
            Event::Close(r) => Step::Close(r),
            Event::StartTls(r) => Step::StartTls(r),
            Event::Rcpt { address, owner } => Step::Verify { address, owner },
            Event::Data => Step::Reply(self.server.begin_data()),
            Event::Message(m) => Step::Message(m),
        };
        (used, step)
    }

    /// The verdict on a [`Step::Verify`] recipient, as its reply: a positive one takes the
    /// recipient; a permanent refusal (`550 5.1.1`) counts as an error, a tempfail does not (a
    /// tenant's server being down is not the sender's fault). Returns what to send: the reply,
    /// then the one that ends the session when the errors are used up.
    pub fn verified(
        &mut self,
        address: String,
        owner: TenantIdx,
        reply: Reply,
    ) -> (Reply, Option<Reply>) {
        if reply.is_positive() {
            self.server.accept_rcpt(address, owner);
            return (reply, None);
        }
        let close = if reply.code >= 500 {
            self.server.answered(&reply)
        } else {
            None
        };
        (reply, close)
    }

    /// The open transaction's reverse path (empty for `<>`).
    pub fn sender(&self) -> &str {
        self.server.sender().unwrap_or_default()
    }

    /// After the driver answered a message: a refusal counts as an error; `Some` is the reply
    /// that ends the session.
    pub fn answered(&mut self, reply: &Reply) -> Option<Reply> {
        self.server.answered(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::replies;
    use crate::smtp::server::Problem;
    use crate::topology::TwoTenants as Tenants;

    fn session() -> Session {
        Session::new(SessionLimits {
            hostname: "mde.test".into(),
            max_message_size: 1 << 20,
            max_recipients: 100,
            max_commands: 1000,
            max_errors: 3,
            max_line_length: 4096,
            starttls: false,
            collect: true,
            bare_newline: crate::config::BareNewline::Reject,
        })
    }

    /// Feeds everything, answering messages with `answer`; returns the wire transcript.
    fn transcript(
        s: &mut Session,
        input: &[u8],
        answer: &Reply,
    ) -> (String, Vec<Message<TenantIdx>>) {
        let mut out = Vec::new();
        let mut messages = Vec::new();
        let mut pos = 0;
        loop {
            let (n, step) = s.input(&input[pos..], &Tenants);
            pos += n;
            match step {
                Step::More if pos == input.len() || n == 0 => break,
                Step::More => {}
                Step::Reply(r) => r.write_to(&mut out),
                Step::Verify { address, owner } => {
                    let verdict = if address.starts_with("unverified@") {
                        replies::USER_UNKNOWN
                    } else {
                        replies::RECIPIENT_OK
                    };
                    let (r, close) = s.verified(address, owner, verdict);
                    r.write_to(&mut out);
                    if let Some(c) = close {
                        c.write_to(&mut out);
                        break;
                    }
                }
                Step::StartTls(r) | Step::Close(r) => {
                    r.write_to(&mut out);
                    break;
                }
                Step::Message(m) => {
                    messages.push(m);
                    answer.write_to(&mut out);
                    if let Some(r) = s.answered(answer) {
                        r.write_to(&mut out);
                        break;
                    }
                }
            }
        }
        (String::from_utf8(out).unwrap(), messages)
    }

    #[test]
    fn a_pipelined_transaction_gets_every_reply_and_hands_over_the_message() {
        let mut s = session();
        let (wire, msgs) = transcript(
            &mut s,
            b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@acme.example>\r\n\
              RCPT TO:<boss@globex.example>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n",
            &replies::queued("Q1"),
        );
        assert_eq!(
            wire,
            "250-mde.test\r\n250-PIPELINING\r\n250-SIZE 1048576\r\n250-8BITMIME\r\n\
             250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n250 2.1.0 Sender OK\r\n\
             250 2.1.5 Recipient OK\r\n\
             452 4.5.3 Too many recipients in this transaction; retry later\r\n\
             354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as Q1\r\n221 2.0.0 Bye\r\n"
        );
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].owner, Some(TenantIdx(0)));
        assert_eq!(msgs[0].body, b"hello\r\n");
        assert_eq!(s.helo(), "c.example");
    }

    #[test]
    fn refused_messages_count_towards_the_error_cap() {
        let mut s = session();
        let one = b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@acme.example>\r\nDATA\r\nx\r\n.\r\n";
        let mut input = b"EHLO c.example\r\n".to_vec();
        for _ in 0..4 {
            input.extend_from_slice(one);
        }
        let (wire, msgs) = transcript(&mut s, &input, &replies::STORAGE_FULL);
        assert_eq!(msgs.len(), 3, "the third refusal ends the session");
        assert!(
            wire.ends_with("452 4.3.1 Insufficient system storage, try again later\r\n421 4.7.0 Too many errors, closing connection\r\n"),
            "{wire}"
        );
    }

    #[test]
    fn verified_refusals_are_not_taken_and_count_as_errors_tempfails_do_not() {
        let mut s = session();
        let (wire, msgs) = transcript(
            &mut s,
            b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<unverified@acme.example>\r\n\
              DATA\r\nRCPT TO:<b@acme.example>\r\nDATA\r\nhi\r\n.\r\n",
            &replies::queued("Q1"),
        );
        assert!(
            wire.contains(
                "550 5.1.1 Recipient address rejected: user unknown\r\n\
                 554 5.5.1 No valid recipients\r\n250 2.1.5 Recipient OK\r\n354"
            ),
            "{wire}"
        );
        assert_eq!(msgs[0].rcpts, ["b@acme.example"]);
        // A tempfail leaves the error count alone; a third 550 ends the session (max_errors 3,
        // the 554 above was the second error).
        let (_, close) = s.verified(
            "t@acme.example".into(),
            TenantIdx(0),
            replies::RECIPIENT_UNVERIFIED,
        );
        assert_eq!(close, None);
        let (_, close) = s.verified("u@acme.example".into(), TenantIdx(0), replies::USER_UNKNOWN);
        assert_eq!(close, Some(replies::TOO_MANY_ERRORS));
    }

    #[test]
    fn a_smuggled_end_of_data_is_one_flagged_message() {
        let mut s = session();
        let (wire, msgs) = transcript(
            &mut s,
            b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@acme.example>\r\nDATA\r\n\
              hi\n.\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<boss@globex.example>\r\nDATA\r\n\
              evil\r\n.\r\nNOOP\r\n",
            &replies::BARE_NEWLINE,
        );
        assert_eq!(msgs.len(), 1, "one message, whatever it contains");
        assert_eq!(msgs[0].problem, Some(Problem::BareNewline));
        assert_eq!(msgs[0].rcpts, ["b@acme.example"]);
        assert!(
            wire.ends_with(
                "354 End data with <CR><LF>.<CR><LF>\r\n550 5.6.0 Message contains bare CR or LF; \
                 lines must end with CRLF (RFC 5321 2.3.8)\r\n250 2.0.0 OK\r\n"
            ),
            "{wire}"
        );
    }

    #[test]
    fn unknown_users_and_foreign_domains_are_refused() {
        let mut s = session();
        let (wire, _) = transcript(
            &mut s,
            b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<x@globex.example>\r\n\
              RCPT TO:<x@other.example>\r\nDATA\r\n",
            &replies::OK,
        );
        assert!(
            wire.ends_with(
                "550 5.1.1 Recipient address rejected: user unknown\r\n\
                 550 5.7.1 Relaying denied\r\n421 4.7.0 Too many errors, closing connection\r\n"
            ),
            "{wire}"
        );
    }
}
