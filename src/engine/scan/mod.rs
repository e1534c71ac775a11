//! The seam between "message received" and "message queued": decode, unpack and scan a message,
//! apply the tenant's policy, and return a [`Verdict`] while the sender is still connected.
//!
//! The engine calls exactly this API (see `src/engine/smtp/`): build a [`Scanner`] per config
//! snapshot with [`Scanner::new`], then for every message [`Scanner::scan`], act on
//! [`Verdict::action`], store [`Verdict::summary`] with the message, and spool
//! [`Verdict::apply`]'s output.

use std::net::IpAddr;

use crate::config::{ConfigErrors, Snapshot};
use crate::topology::Tenant;

/// What the engine knows about a message when it is complete.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// Same id on the edge and the engine for one connection.
    pub session_id: &'a str,
    /// Queue id the message will get if accepted (for reference ids in replies).
    pub queue_id: &'a str,
    /// The real client (from PROXY when the edge sent one).
    pub client_ip: IpAddr,
    /// Client country as the edge placed it (PROXY TLV), if known.
    pub client_country: Option<&'a str>,
    pub helo: &'a str,
    /// Reverse path without brackets; empty for the null sender.
    pub mail_from: &'a str,
    pub rcpts: &'a [String],
    pub tenant: &'a Tenant,
    /// Whether the client used TLS (to the edge or to us).
    pub tls: bool,
}

/// What to do with the message.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue for delivery (possibly with added headers / subject tag).
    Deliver,
    /// Keep in the spool, not delivered; `reason` is shown to users and operators.
    Quarantine { reason: String },
    /// Refuse in-session with this full SMTP reply (e.g. `550 5.7.1 Message rejected (ref ID)`):
    /// no backscatter.
    Reject { reply: String },
    /// A scanner failed and the policy says temp-fail: answer this 4xx reply.
    TempFail { reply: String },
}

/// A decision with everything needed to explain it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub action: Action,
    /// One line for logs and `maildistiller queue show`: findings, scores, policy + version.
    pub summary: String,
    /// Header lines (each ending in CRLF) to prepend to the message when delivered or quarantined.
    pub headers: String,
}

impl Verdict {
    /// The message as it is to be spooled: `message` (which already starts with our
    /// `Received:`) with the verdict's headers added.
    pub fn apply(&self, message: Vec<u8>) -> Vec<u8> {
        if self.headers.is_empty() {
            return message;
        }
        let mut out = Vec::with_capacity(self.headers.len() + message.len());
        out.extend_from_slice(self.headers.as_bytes());
        out.extend_from_slice(&message);
        out
    }
}

/// Scanners and compiled policies for one config snapshot.
#[derive(Debug)]
pub struct Scanner {}

impl Scanner {
    pub fn new(_snapshot: &Snapshot) -> Result<Scanner, ConfigErrors> {
        Ok(Scanner {})
    }

    /// Scans one complete message (header + body, CRLF line ends, dot-unstuffed).
    pub async fn scan(&self, _envelope: &Envelope<'_>, _message: &[u8]) -> Verdict {
        Verdict {
            action: Action::Deliver,
            summary: "not scanned".into(),
            headers: String::new(),
        }
    }
}
