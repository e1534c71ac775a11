//! The receiving side of an SMTP session, sans-I/O: the local phase the engine and the edge
//! share (greeting → EHLO → STARTTLS → MAIL → RCPT → DATA), so the two cannot drift. It takes
//! the client's bytes and returns [`Event`]s; what a recipient or DATA leads to is the caller's
//! decision (the engine accepts and reads the message; the edge routes and relays).
//!
//! One call of [`Server::input`] handles at most one command line or one run of message bytes
//! and says how many bytes it used; the rest stays with the caller (PIPELINING: the caller
//! calls again before it reads more).
//!
//! Lifecycle: `Fresh` (banner sent, or TLS just started) → EHLO/HELO → `Ready` → MAIL → `Mail`
//! → RCPT (the caller accepts each with [`Server::accept_rcpt`], and may take one back with
//! [`Server::withdraw_rcpt`]; one owner — tenant — per transaction) → DATA → the caller calls
//! [`Server::begin_data`] → `Body` → end of data ([`Event::Message`]) → `Ready`. RSET and EHLO reset the transaction; STARTTLS forgets the
//! EHLO too (RFC 3207). `max_errors` error replies or `max_commands` commands end the session.
//!
//! Rules of the input, the same on both sides:
//! - A command line is at most `max_line_length` bytes with its CRLF; a longer one is read to
//!   its end and discarded, and answered `500 5.5.2` (an error).
//! - The first bytes of a session are not a PROXY header: a client that sends one is refused
//!   (`554 5.7.0`), since it would choose the address we log and trust. Listeners that take
//!   PROXY read the header before the session starts.
//! - Commands pipelined behind STARTTLS are refused and the session closed (RFC 3207 §5:
//!   they would be injected into the TLS session).
//! - The message ends at `<CRLF>.<CRLF>` only ([`DataReader`]); a bare CR or LF in it is never
//!   taken as the end (no SMTP smuggling). A bare CR is flagged ([`Problem::BareNewline`]); a
//!   bare LF is written as CRLF (`BareNewline::Normalize`) or flagged (`Reject`).

use super::data::{DataReader, Feed};
use super::{Command, MailFrom, Reply, parse_command, replies};
use crate::config::BareNewline;

/// Who receives mail here: the only question the session asks its caller about recipients.
pub trait Recipients {
    /// Groups the recipients of one transaction (our tenants).
    type Owner: Copy + Eq + std::fmt::Debug;
    /// The owner of a recipient's domain; `None`: not ours (relaying denied).
    fn owner(&self, address: &str) -> Option<Self::Owner>;
    /// Whether the owner knows this recipient (a tenant with a recipient list).
    fn knows(&self, owner: Self::Owner, address: &str) -> bool;
}

/// Per-session limits, from the role's config section.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Name in the banner and EHLO.
    pub hostname: String,
    /// Announced in EHLO SIZE; a larger MAIL SIZE is refused, a larger message flagged.
    pub max_message_size: u64,
    /// RCPTs accepted per transaction; beyond it `452 4.5.3`.
    pub max_recipients: usize,
    /// Commands per session before `421`.
    pub max_commands: u32,
    /// Error replies per session before `421`.
    pub max_errors: u32,
    /// Longest command line, CRLF included.
    pub max_line_length: usize,
    /// STARTTLS is offered (a certificate is configured and the session is not TLS yet).
    pub starttls: bool,
    /// Keep the message's bytes (the engine) or only find its end (the edge).
    pub collect: bool,
    /// What a bare LF in a message leads to (`engine.bare_newline`).
    pub bare_newline: BareNewline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Fresh,
    Ready,
    Mail,
    Body,
}

/// What one call of [`Server::input`] found.
#[derive(Debug, PartialEq)]
pub enum Event<O> {
    /// Every byte given was used or is an incomplete line: read more.
    More,
    /// Answer with this (NOOP, VRFY, HELP, a refused command: errors are already counted).
    Reply(Reply),
    /// EHLO or HELO answered with this; the transaction was reset.
    Hello(Reply),
    /// MAIL accepted with this reply.
    Mail(Reply),
    /// RSET answered with this.
    Reset(Reply),
    /// Send this reply and close (QUIT, or a limit reached).
    Close(Reply),
    /// Send this 220, then start TLS. The session has forgotten its EHLO and transaction.
    StartTls(Reply),
    /// A recipient that passed every shared check: ours, the transaction's owner, known, not
    /// a duplicate. The caller accepts it ([`Server::accept_rcpt`]) and answers.
    Rcpt { address: String, owner: O },
    /// A recipient refused for whose it is (the edge counts these by cause).
    RcptRefused { reply: Reply, cause: Unroutable<O> },
    /// DATA is in order (a sender and a recipient): the caller answers it, and calls
    /// [`Server::begin_data`] when the body may start.
    Data,
    /// Message bytes, not yet its end.
    Body,
    /// The end of the message: these bytes ended it; the transaction is over.
    Message(Message<O>),
}

/// Why a recipient cannot be taken in this transaction, as far as its owner goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable<O> {
    /// No owner: not our domain (relaying denied).
    NotOurs,
    /// Another owner than the transaction's (`452 4.5.3`: the sender retries it apart).
    OtherOwner(O),
}

/// What a transaction gathered, handed over at its end of data.
#[derive(Debug, PartialEq)]
pub struct Message<O> {
    pub mail: MailFrom,
    pub rcpts: Vec<String>,
    pub owner: Option<O>,
    /// The message, dot-unstuffed (empty when the session does not collect).
    pub body: Vec<u8>,
    /// Decoded size (also beyond the limit, where the bytes were not kept).
    pub size: usize,
    /// Why the message may not be accepted as it is.
    pub problem: Option<Problem>,
}

/// What is wrong with a message as received (not what a policy decides about it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A bare CR (or, with `bare_newline = "reject"`, a bare LF): refused, since another server
    /// may take it as a line end (smuggling).
    BareNewline,
    /// Larger than `max_message_size` (the limit).
    TooBig(u64),
}

impl Problem {
    /// The reply a message with this problem gets.
    pub fn reply(self) -> Reply {
        match self {
            Problem::BareNewline => replies::BARE_NEWLINE,
            Problem::TooBig(limit) => replies::message_too_big(limit),
        }
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Problem::BareNewline => "bare-newline",
            Problem::TooBig(_) => "size",
        }
    }
}

/// One session's protocol state.
#[derive(Debug)]
pub struct Server<O> {
    limits: SessionLimits,
    phase: Phase,
    helo: String,
    esmtp: bool,
    tls: bool,
    mail: Option<MailFrom>,
    rcpts: Vec<String>,
    owner: Option<O>,
    errors: u32,
    commands: u32,
    /// Inside a command line longer than the limit: its bytes are dropped up to its end.
    discarding: bool,
    /// Some byte has arrived (the PROXY check is done).
    started: bool,
    reader: Option<DataReader>,
}

impl<O: Copy + Eq + std::fmt::Debug> Server<O> {
    pub fn new(limits: SessionLimits) -> Server<O> {
        Server {
            limits,
            phase: Phase::Fresh,
            helo: String::new(),
            esmtp: false,
            tls: false,
            mail: None,
            rcpts: Vec::new(),
            owner: None,
            errors: 0,
            commands: 0,
            discarding: false,
            started: false,
            reader: None,
        }
    }

    pub fn banner(&self) -> Reply {
        replies::banner(&self.limits.hostname)
    }

    /// The client's EHLO/HELO name (empty before one).
    pub fn helo(&self) -> &str {
        &self.helo
    }

    /// STARTTLS happened in this session.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Reading a message body.
    pub fn in_body(&self) -> bool {
        self.phase == Phase::Body
    }

    /// Body bytes of the open transaction kept in memory and not yet taken.
    pub fn body_kept(&self) -> usize {
        self.reader.as_ref().map_or(0, DataReader::kept)
    }

    /// Memory the body kept so far occupies.
    pub fn body_memory(&self) -> usize {
        self.reader.as_ref().map_or(0, DataReader::memory)
    }

    /// Takes the body bytes kept so far (to spill them): the [`Message`] at the end of data
    /// then carries only the bytes that came after.
    pub fn take_body(&mut self) -> Vec<u8> {
        self.reader
            .as_mut()
            .map(DataReader::take_kept)
            .unwrap_or_default()
    }

    /// The owner of the open transaction's recipients.
    pub fn owner(&self) -> Option<O> {
        self.owner
    }

    /// Whether STARTTLS is offered from now on (the edge withdraws it while an engine is
    /// connected: the engine was told about the client's TLS when it was connected).
    pub fn offer_starttls(&mut self, offer: bool) {
        self.limits.starttls = offer && !self.tls;
    }

    /// Handles the start of `buf`: returns how many bytes it used and what they meant.
    pub fn input<R: Recipients<Owner = O>>(&mut self, buf: &[u8], rcpts: &R) -> (usize, Event<O>) {
        if buf.is_empty() {
            return (0, Event::More);
        }
        if !self.started {
            match crate::proxy::looks_like_proxy(buf) {
                None => return (0, Event::More),
                Some(true) => return (buf.len(), Event::Close(replies::PROXY_NOT_ACCEPTED)),
                Some(false) => self.started = true,
            }
        }
        if self.phase == Phase::Body {
            return self.body(buf);
        }
        let Some(nl) = memchr::memchr(b'\n', buf) else {
            if buf.len() > self.limits.max_line_length {
                self.discarding = true;
                return (buf.len(), Event::More);
            }
            return (0, Event::More);
        };
        let used = nl + 1;
        if std::mem::take(&mut self.discarding) {
            return (used, self.error(replies::LINE_TOO_LONG));
        }
        let line = &buf[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() + 2 > self.limits.max_line_length {
            return (used, self.error(replies::LINE_TOO_LONG));
        }
        let event = self.command(line, rcpts);
        if matches!(event, Event::StartTls(_)) && buf.len() > used {
            return (buf.len(), Event::Close(replies::STARTTLS_PIPELINED));
        }
        (used, event)
    }

    fn body(&mut self, buf: &[u8]) -> (usize, Event<O>) {
        let Some(reader) = self.reader.as_mut() else {
            self.phase = Phase::Ready;
            return (0, Event::More);
        };
        match reader.feed(buf) {
            Feed::More => (buf.len(), Event::Body),
            Feed::Done(n) => (n, Event::Message(self.finish())),
        }
    }

    fn finish(&mut self) -> Message<O> {
        self.phase = Phase::Ready;
        let reader = self
            .reader
            .take()
            .unwrap_or_else(|| DataReader::new(0, false));
        let refused_lf = reader.bare_lf && self.limits.bare_newline == BareNewline::Reject;
        let problem = if reader.bare_cr || refused_lf {
            Some(Problem::BareNewline)
        } else if reader.oversized() {
            Some(Problem::TooBig(self.limits.max_message_size))
        } else {
            None
        };
        let size = reader.size();
        Message {
            mail: self.mail.take().unwrap_or_default(),
            rcpts: std::mem::take(&mut self.rcpts),
            owner: self.owner.take(),
            body: reader.into_message(),
            size,
            problem,
        }
    }

    fn reset(&mut self) {
        self.mail = None;
        self.rcpts.clear();
        self.owner = None;
        self.reader = None;
        if matches!(self.phase, Phase::Mail | Phase::Body) {
            self.phase = Phase::Ready;
        }
    }

    /// Counts an error reply; at `max_errors` the session ends instead.
    fn error(&mut self, r: Reply) -> Event<O> {
        self.errors += 1;
        if self.errors >= self.limits.max_errors {
            return Event::Close(replies::TOO_MANY_ERRORS);
        }
        Event::Reply(r)
    }

    /// After the caller answered something itself (a message's fate, an unreachable engine):
    /// a negative reply counts as an error; `Some` is the reply that ends the session.
    pub fn answered(&mut self, reply: &Reply) -> Option<Reply> {
        if reply.is_positive() {
            return None;
        }
        self.errors += 1;
        (self.errors >= self.limits.max_errors).then_some(replies::TOO_MANY_ERRORS)
    }

    /// The open transaction's reverse path (empty for `<>`), once MAIL was accepted.
    pub fn sender(&self) -> Option<&str> {
        self.mail.as_ref().map(|m| m.address.as_str())
    }

    /// Takes a recipient [`Event::Rcpt`] offered.
    pub fn accept_rcpt(&mut self, address: String, owner: O) {
        self.owner = Some(owner);
        self.rcpts.push(address);
    }

    /// Takes back a recipient of the open transaction that was accepted here but refused
    /// where it was verified (the edge relays the engine's refusal): it no longer counts for
    /// DATA, and a transaction left without recipients has no owner again (its next RCPT may
    /// be another tenant's).
    pub fn withdraw_rcpt(&mut self, address: &str) {
        if let Some(i) = self.rcpts.iter().rposition(|r| r == address) {
            self.rcpts.remove(i);
        }
        if self.rcpts.is_empty() {
            self.owner = None;
        }
    }

    /// The body starts now (after the 354); returns our 354.
    pub fn begin_data(&mut self) -> Reply {
        self.phase = Phase::Body;
        let max = if self.limits.collect {
            usize::try_from(self.limits.max_message_size).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        };
        self.reader = Some(
            DataReader::new(max, self.limits.collect)
                .normalizing(self.limits.bare_newline == BareNewline::Normalize),
        );
        replies::START_DATA
    }

    fn command<R: Recipients<Owner = O>>(&mut self, line: &[u8], rcpts: &R) -> Event<O> {
        self.commands += 1;
        if self.commands > self.limits.max_commands {
            return Event::Close(replies::TOO_MANY_COMMANDS);
        }
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(r) => return self.error(r),
        };
        match cmd {
            Command::Ehlo(d) => self.hello(d, true),
            Command::Helo(d) => self.hello(d, false),
            Command::StartTls if !self.limits.starttls || self.tls => {
                self.error(replies::STARTTLS_UNAVAILABLE)
            }
            Command::StartTls if self.mail.is_some() => self.error(replies::STARTTLS_NOT_NOW),
            Command::StartTls => {
                // RFC 3207 §4.2: forget everything learned before TLS.
                self.reset();
                self.helo.clear();
                self.esmtp = false;
                self.phase = Phase::Fresh;
                self.tls = true;
                self.limits.starttls = false;
                Event::StartTls(replies::READY_FOR_TLS)
            }
            Command::Mail(_) if self.phase == Phase::Fresh => self.error(replies::HELLO_FIRST),
            Command::Mail(_) if self.mail.is_some() => self.error(replies::NESTED_MAIL),
            Command::Mail(m) => {
                if m.size.is_some_and(|s| s > self.limits.max_message_size) {
                    return self.error(replies::message_too_big(self.limits.max_message_size));
                }
                if (m.body_8bit || m.smtputf8) && !self.esmtp {
                    return self.error(replies::PARAMETERS_NEED_EHLO);
                }
                self.mail = Some(m);
                self.phase = Phase::Mail;
                Event::Mail(replies::SENDER_OK)
            }
            Command::Rcpt(_) if self.mail.is_none() => self.error(replies::MAIL_BEFORE_RCPT),
            Command::Rcpt(address) => self.rcpt(address, rcpts),
            Command::Data if self.mail.is_none() => self.error(replies::MAIL_BEFORE_DATA),
            Command::Data if self.rcpts.is_empty() => self.error(replies::NO_VALID_RECIPIENTS),
            Command::Data => Event::Data,
            Command::Rset => {
                self.reset();
                Event::Reset(replies::RESET_OK)
            }
            Command::Noop => Event::Reply(replies::OK),
            Command::Quit => Event::Close(replies::BYE),
            Command::Vrfy => Event::Reply(replies::CANNOT_VRFY),
            Command::Help => Event::Reply(replies::HELP),
            Command::NotImplemented(v) => self.error(replies::not_implemented(&v)),
        }
    }

    fn hello(&mut self, domain: String, esmtp: bool) -> Event<O> {
        self.reset();
        self.helo = domain;
        self.esmtp = esmtp;
        self.phase = Phase::Ready;
        Event::Hello(if esmtp {
            replies::ehlo(
                &self.limits.hostname,
                self.limits.max_message_size,
                self.limits.starttls,
            )
        } else {
            replies::helo(&self.limits.hostname)
        })
    }

    fn rcpt<R: Recipients<Owner = O>>(&mut self, address: String, rcpts: &R) -> Event<O> {
        if self.rcpts.len() >= self.limits.max_recipients {
            return Event::Reply(replies::TOO_MANY_RECIPIENTS);
        }
        if !address.is_ascii() && !self.mail.as_ref().is_some_and(|m| m.smtputf8) {
            return self.error(replies::NON_ASCII_NEEDS_SMTPUTF8);
        }
        let Some(owner) = rcpts.owner(&address) else {
            return match self.error(replies::RELAYING_DENIED) {
                Event::Reply(reply) => Event::RcptRefused {
                    reply,
                    cause: Unroutable::NotOurs,
                },
                close => close,
            };
        };
        if self.owner.is_some_and(|o| o != owner) {
            // One tenant per transaction: the sender retries the rest in another one.
            return Event::RcptRefused {
                reply: replies::OTHER_TENANT,
                cause: Unroutable::OtherOwner(owner),
            };
        }
        if !rcpts.knows(owner, &address) {
            return self.error(replies::USER_UNKNOWN);
        }
        if self.rcpts.iter().any(|r| r.eq_ignore_ascii_case(&address)) {
            return Event::Reply(replies::RECIPIENT_DUPLICATE);
        }
        Event::Rcpt { address, owner }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
