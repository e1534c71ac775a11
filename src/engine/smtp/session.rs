//! The engine's SMTP server as a sans-I/O state machine: it takes command lines and gives
//! replies or instructions (start DATA, start TLS, close). The driver (`mod.rs`) does the I/O,
//! the scanning and the spooling.
//!
//! Lifecycle: `Fresh` (banner sent) -> EHLO/HELO -> `Ready` -> MAIL -> `Mail` -> RCPT (one tenant
//! per transaction) -> DATA -> driver reads the message -> [`Session::data_done`] -> `Ready`.
//! RSET and a completed transaction return to `Ready`; EHLO resets too. Too many errors or
//! commands end the session with 421.

use std::sync::Arc;

use crate::smtp::{Command, MailFrom, Reply, parse_command, replies};
use crate::snapshot::Snapshot;
use crate::topology::Tenant;

/// Per-session limits, from `[engine]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_commands: u32,
    pub max_errors: u32,
    pub hostname: String,
    /// STARTTLS is offered (a certificate is configured and the session is not TLS yet).
    pub starttls: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Fresh,
    Ready,
    Mail,
}

/// What the driver must do after a command.
#[derive(Debug, PartialEq)]
pub enum Step {
    Reply(Reply),
    /// Send this 354 and read the message.
    Data(Reply),
    /// Send this 220 and start TLS.
    StartTls(Reply),
    /// Send this reply and close.
    Close(Reply),
}

/// One SMTP session's protocol state.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    phase: Phase,
    pub helo: String,
    esmtp: bool,
    pub mail: Option<MailFrom>,
    pub rcpts: Vec<String>,
    /// The tenant of this transaction's recipients.
    pub tenant: Option<Arc<Tenant>>,
    pub tls: bool,
    errors: u32,
    commands: u32,
}

impl Session {
    pub fn new(limits: Limits) -> Session {
        Session {
            limits,
            phase: Phase::Fresh,
            helo: String::new(),
            esmtp: false,
            mail: None,
            rcpts: Vec::new(),
            tenant: None,
            tls: false,
            errors: 0,
            commands: 0,
        }
    }

    pub fn banner(&self) -> Reply {
        replies::banner(&self.limits.hostname)
    }

    fn reset(&mut self) {
        self.mail = None;
        self.rcpts.clear();
        self.tenant = None;
        if self.phase == Phase::Mail {
            self.phase = Phase::Ready;
        }
    }

    /// Counts an error reply; after `max_errors` the session ends.
    fn error(&mut self, r: Reply) -> Step {
        self.errors += 1;
        if self.errors >= self.limits.max_errors {
            return Step::Close(replies::TOO_MANY_ERRORS);
        }
        Step::Reply(r)
    }

    /// A line that was too long (the driver discarded it).
    pub fn line_too_long(&mut self) -> Step {
        self.error(replies::LINE_TOO_LONG)
    }

    /// One command line (without CRLF).
    pub fn command(&mut self, line: &[u8], snap: &Snapshot) -> Step {
        self.commands += 1;
        if self.commands > self.limits.max_commands {
            return Step::Close(replies::TOO_MANY_COMMANDS);
        }
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(r) => return self.error(r),
        };
        match cmd {
            Command::Ehlo(d) => {
                self.reset();
                self.helo = d;
                self.esmtp = true;
                self.phase = Phase::Ready;
                Step::Reply(self.ehlo_reply())
            }
            Command::Helo(d) => {
                self.reset();
                self.helo = d;
                self.esmtp = false;
                self.phase = Phase::Ready;
                Step::Reply(replies::helo(&self.limits.hostname))
            }
            Command::StartTls if !self.limits.starttls || self.tls => {
                self.error(replies::STARTTLS_UNAVAILABLE)
            }
            Command::StartTls => {
                // RFC 3207: forget everything learned before TLS.
                self.reset();
                self.phase = Phase::Fresh;
                self.tls = true;
                self.limits.starttls = false;
                Step::StartTls(replies::READY_FOR_TLS)
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
                Step::Reply(replies::SENDER_OK)
            }
            Command::Rcpt(_) if self.mail.is_none() => self.error(replies::MAIL_BEFORE_RCPT),
            Command::Rcpt(addr) => self.rcpt(addr, snap),
            Command::Data if self.mail.is_none() => self.error(replies::MAIL_BEFORE_DATA),
            Command::Data if self.rcpts.is_empty() => self.error(replies::NO_VALID_RECIPIENTS),
            Command::Data => Step::Data(replies::START_DATA),
            Command::Rset => {
                self.reset();
                Step::Reply(replies::RESET_OK)
            }
            Command::Noop => Step::Reply(replies::OK),
            Command::Quit => Step::Close(replies::BYE),
            Command::Vrfy => Step::Reply(replies::CANNOT_VRFY),
            Command::Help => Step::Reply(replies::HELP),
            Command::NotImplemented(v) => self.error(replies::not_implemented(&v)),
        }
    }

    fn rcpt(&mut self, addr: String, snap: &Snapshot) -> Step {
        if self.rcpts.len() >= self.limits.max_recipients {
            return Step::Reply(replies::TOO_MANY_RECIPIENTS);
        }
        if !self.esmtp_utf8_ok(&addr) {
            return self.error(replies::NON_ASCII_NEEDS_SMTPUTF8);
        }
        let Some(tenant) = snap.topology.tenant_for_address(&addr) else {
            return self.error(replies::RELAYING_DENIED);
        };
        if let Some(t) = &self.tenant
            && t.id != tenant.id
        {
            // One tenant per transaction: the sender retries the rest in another one.
            return Step::Reply(replies::OTHER_TENANT);
        }
        if !tenant.knows(&addr) {
            return self.error(replies::USER_UNKNOWN);
        }
        if self.rcpts.iter().any(|r| r.eq_ignore_ascii_case(&addr)) {
            return Step::Reply(replies::RECIPIENT_DUPLICATE);
        }
        if self.tenant.is_none() {
            self.tenant = Some(Arc::new(tenant.clone()));
        }
        self.rcpts.push(addr);
        Step::Reply(replies::RECIPIENT_OK)
    }

    fn esmtp_utf8_ok(&self, addr: &str) -> bool {
        addr.is_ascii() || self.mail.as_ref().is_some_and(|m| m.smtputf8)
    }

    fn ehlo_reply(&self) -> Reply {
        replies::ehlo(
            &self.limits.hostname,
            self.limits.max_message_size,
            self.limits.starttls && !self.tls,
        )
    }

    /// After the driver has dealt with the message: the transaction is over.
    pub fn data_done(&mut self) {
        self.reset();
    }

    /// Counts an error reply the driver produced (e.g. a rejected message).
    pub fn count_error(&mut self) -> bool {
        self.errors += 1;
        self.errors >= self.limits.max_errors
    }
}
