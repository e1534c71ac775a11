//! The engine's SMTP server as a sans-I/O state machine: it takes command lines and gives
//! replies or instructions (start DATA, start TLS, close). The driver (`mod.rs`) does the I/O,
//! the scanning and the spooling.
//!
//! Lifecycle: `Fresh` (banner sent) -> EHLO/HELO -> `Ready` -> MAIL -> `Mail` -> RCPT (one tenant
//! per transaction) -> DATA -> driver reads the message -> [`Session::data_done`] -> `Ready`.
//! RSET and a completed transaction return to `Ready`; EHLO resets too. Too many errors or
//! commands end the session with 421.

use std::sync::Arc;

use crate::smtp::{Command, MailFrom, Reply, parse_command};
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
        Reply::new(
            220,
            "",
            format!("{} ESMTP maildistiller", self.limits.hostname),
        )
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
            return Step::Close(Reply::new(
                421,
                "4.7.0",
                "Too many errors, closing connection",
            ));
        }
        Step::Reply(r)
    }

    /// A line that was too long (the driver discarded it).
    pub fn line_too_long(&mut self) -> Step {
        self.error(Reply::new(500, "5.5.2", "Line too long"))
    }

    /// One command line (without CRLF).
    pub fn command(&mut self, line: &[u8], snap: &Snapshot) -> Step {
        self.commands += 1;
        if self.commands > self.limits.max_commands {
            return Step::Close(Reply::new(
                421,
                "4.7.0",
                "Too many commands, closing connection",
            ));
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
                Step::Reply(Reply::new(250, "", self.limits.hostname.clone()))
            }
            Command::StartTls if !self.limits.starttls || self.tls => {
                self.error(Reply::new(502, "5.5.1", "STARTTLS not available"))
            }
            Command::StartTls => {
                // RFC 3207: forget everything learned before TLS.
                self.reset();
                self.phase = Phase::Fresh;
                self.tls = true;
                self.limits.starttls = false;
                Step::StartTls(Reply::new(220, "2.0.0", "Ready to start TLS"))
            }
            Command::Mail(_) if self.phase == Phase::Fresh => {
                self.error(Reply::new(503, "5.5.1", "Send EHLO or HELO first"))
            }
            Command::Mail(_) if self.mail.is_some() => {
                self.error(Reply::new(503, "5.5.1", "Nested MAIL command"))
            }
            Command::Mail(m) => {
                if m.size.is_some_and(|s| s > self.limits.max_message_size) {
                    return self.error(Reply::new(
                        552,
                        "5.3.4",
                        format!(
                            "Message size exceeds fixed limit of {} bytes",
                            self.limits.max_message_size
                        ),
                    ));
                }
                if (m.body_8bit || m.smtputf8) && !self.esmtp {
                    return self.error(Reply::new(501, "5.5.4", "Parameters need EHLO"));
                }
                self.mail = Some(m);
                self.phase = Phase::Mail;
                Step::Reply(Reply::new(250, "2.1.0", "Sender OK"))
            }
            Command::Rcpt(_) if self.mail.is_none() => {
                self.error(Reply::new(503, "5.5.1", "Need MAIL before RCPT"))
            }
            Command::Rcpt(addr) => self.rcpt(addr, snap),
            Command::Data if self.mail.is_none() => {
                self.error(Reply::new(503, "5.5.1", "Need MAIL command"))
            }
            Command::Data if self.rcpts.is_empty() => {
                self.error(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Command::Data => Step::Data(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")),
            Command::Rset => {
                self.reset();
                Step::Reply(Reply::new(250, "2.0.0", "Reset OK"))
            }
            Command::Noop => Step::Reply(Reply::new(250, "2.0.0", "OK")),
            Command::Quit => Step::Close(Reply::new(221, "2.0.0", "Bye")),
            Command::Vrfy => Step::Reply(Reply::new(
                252,
                "2.5.2",
                "Cannot VRFY user, but will accept message",
            )),
            Command::Help => Step::Reply(Reply::new(214, "2.0.0", "See RFC 5321")),
            Command::NotImplemented(v) => {
                self.error(Reply::new(502, "5.5.1", format!("{v} not implemented")))
            }
        }
    }

    fn rcpt(&mut self, addr: String, snap: &Snapshot) -> Step {
        if self.rcpts.len() >= self.limits.max_recipients {
            return Step::Reply(Reply::new(452, "4.5.3", "Too many recipients"));
        }
        if !self.esmtp_utf8_ok(&addr) {
            return self.error(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII address requires SMTPUTF8",
            ));
        }
        let Some(tenant) = snap.topology.tenant_for_address(&addr) else {
            return self.error(Reply::new(550, "5.7.1", "Relaying denied"));
        };
        if let Some(t) = &self.tenant
            && t.id != tenant.id
        {
            // One tenant per transaction: the sender retries the rest in another one.
            return Step::Reply(Reply::new(
                452,
                "4.5.3",
                "Too many recipients in this transaction; retry later",
            ));
        }
        if !tenant.knows(&addr) {
            return self.error(Reply::new(
                550,
                "5.1.1",
                "Recipient address rejected: user unknown",
            ));
        }
        if self.rcpts.iter().any(|r| r.eq_ignore_ascii_case(&addr)) {
            return Step::Reply(Reply::new(250, "2.1.5", "Recipient OK (duplicate)"));
        }
        if self.tenant.is_none() {
            self.tenant = Some(Arc::new(tenant.clone()));
        }
        self.rcpts.push(addr);
        Step::Reply(Reply::new(250, "2.1.5", "Recipient OK"))
    }

    fn esmtp_utf8_ok(&self, addr: &str) -> bool {
        addr.is_ascii() || self.mail.as_ref().is_some_and(|m| m.smtputf8)
    }

    fn ehlo_reply(&self) -> Reply {
        let mut lines = vec![
            self.limits.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", self.limits.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
        ];
        if self.limits.starttls && !self.tls {
            lines.push("STARTTLS".into());
        }
        Reply {
            code: 250,
            enhanced: "",
            lines,
        }
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
