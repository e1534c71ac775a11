//! Every reply the service writes to an SMTP client, named once. The engine's session, the
//! edge's session, their drivers, admission and the policy's verdicts all take their replies
//! from here, so one wording (and one enhanced code) per situation, and a grep finds who says it.
//!
//! Fixed replies are constants (writing one allocates nothing); replies with a value in them
//! (a size, a queue id, a host name) are functions beside them. Policy verdicts phrase their
//! refusals in `engine::scan::verdict` (they carry the policy's reason and a reference id).

use super::{Enhanced, Reply};

const fn e(class: u8, subject: u16, detail: u16) -> Enhanced {
    Enhanced::new(class, subject, detail)
}

// ---- Greeting and hello ---------------------------------------------------------------------

/// `220 host ESMTP maildistiller`: the banner of the engine and of the edge.
pub fn banner(hostname: &str) -> Reply {
    Reply::bare(220, format!("{hostname} ESMTP maildistiller"))
}

/// The answer to HELO.
pub fn helo(hostname: &str) -> Reply {
    Reply::bare(250, hostname.to_owned())
}

/// The answer to EHLO: our capabilities (the same on edge and engine).
pub fn ehlo(hostname: &str, max_message_size: u64, starttls: bool) -> Reply {
    let mut lines = vec![
        hostname.to_owned(),
        "PIPELINING".into(),
        format!("SIZE {max_message_size}"),
        "8BITMIME".into(),
        "ENHANCEDSTATUSCODES".into(),
        "SMTPUTF8".into(),
    ];
    if starttls {
        lines.push("STARTTLS".into());
    }
    Reply::lines(250, lines)
}

pub const READY_FOR_TLS: Reply = Reply::canned(220, e(2, 0, 0), "Ready to start TLS");
pub const STARTTLS_UNAVAILABLE: Reply = Reply::canned(502, e(5, 5, 1), "STARTTLS not available");
pub const STARTTLS_NOT_NOW: Reply = Reply::canned(503, e(5, 5, 1), "STARTTLS not allowed now");
pub const STARTTLS_PIPELINED: Reply = Reply::canned(
    554,
    e(5, 5, 1),
    "Commands pipelined after STARTTLS are not accepted (RFC 3207)",
);

// ---- Commands that need no decision -------------------------------------------------------

pub const OK: Reply = Reply::canned(250, e(2, 0, 0), "OK");
pub const RESET_OK: Reply = Reply::canned(250, e(2, 0, 0), "Reset OK");
pub const BYE: Reply = Reply::canned(221, e(2, 0, 0), "Bye");
pub const HELP: Reply = Reply::canned(214, e(2, 0, 0), "See RFC 5321");
pub const CANNOT_VRFY: Reply =
    Reply::canned(252, e(2, 5, 2), "Cannot VRFY user, but will accept message");

/// BDAT, AUTH, ETRN…: recognised verbs we do not offer.
pub fn not_implemented(verb: &str) -> Reply {
    Reply::new(502, e(5, 5, 1), format!("{verb} not implemented"))
}

// ---- Syntax (what `parse_command` refuses) -------------------------------------------------

pub const LINE_TOO_LONG: Reply = Reply::canned(500, e(5, 5, 2), "Line too long");
pub const INVALID_UTF8: Reply = Reply::canned(500, e(5, 5, 2), "Invalid UTF-8 in command");
pub const UNRECOGNIZED: Reply = Reply::canned(500, e(5, 5, 1), "Command unrecognized");
pub const DOMAIN_REQUIRED: Reply = Reply::canned(501, e(5, 5, 4), "Domain name required");
pub const INVALID_DOMAIN_ARG: Reply = Reply::canned(501, e(5, 5, 4), "Invalid domain name");
pub const DATA_NO_ARGS: Reply = Reply::canned(501, e(5, 5, 4), "DATA takes no arguments");
pub const STARTTLS_NO_ARGS: Reply = Reply::canned(501, e(5, 5, 4), "STARTTLS takes no arguments");
pub const MAIL_SYNTAX: Reply = Reply::canned(501, e(5, 5, 4), "Syntax: MAIL FROM:<address>");
pub const RCPT_SYNTAX: Reply = Reply::canned(501, e(5, 5, 4), "Syntax: RCPT TO:<address>");
pub const INVALID_SIZE: Reply = Reply::canned(501, e(5, 5, 4), "Invalid SIZE parameter");
pub const UNSUPPORTED_BODY: Reply = Reply::canned(501, e(5, 5, 4), "Unsupported BODY type");
pub const UNSUPPORTED_MAIL_PARAM: Reply =
    Reply::canned(555, e(5, 5, 4), "Unsupported MAIL parameter");
pub const UNSUPPORTED_RCPT_PARAM: Reply =
    Reply::canned(555, e(5, 5, 4), "Unsupported RCPT parameter");
pub const RECIPIENT_REQUIRED: Reply = Reply::canned(501, e(5, 5, 4), "Recipient address required");
pub const NO_ANGLE_BRACKETS: Reply =
    Reply::canned(501, e(5, 5, 4), "Address must be in angle brackets");
pub const MISSING_BRACKET: Reply = Reply::canned(501, e(5, 5, 4), "Missing closing angle bracket");
pub const GARBAGE_AFTER_ADDRESS: Reply = Reply::canned(501, e(5, 5, 4), "Garbage after address");
pub const INVALID_SOURCE_ROUTE: Reply = Reply::canned(501, e(5, 5, 4), "Invalid source route");
pub const PARAMETERS_NEED_EHLO: Reply = Reply::canned(501, e(5, 5, 4), "Parameters need EHLO");
pub const ADDRESS_SHAPE: Reply =
    Reply::canned(553, e(5, 1, 3), "Address must be local-part@domain");
pub const INVALID_LOCAL_PART: Reply = Reply::canned(553, e(5, 1, 3), "Invalid local part");
pub const INVALID_DOMAIN: Reply = Reply::canned(553, e(5, 1, 3), "Invalid domain");
pub const INVALID_ADDRESS_CHARS: Reply =
    Reply::canned(553, e(5, 1, 3), "Invalid characters in address");
pub const NON_ASCII_NEEDS_SMTPUTF8: Reply =
    Reply::canned(553, e(5, 6, 7), "Non-ASCII address requires SMTPUTF8");

// ---- Order of commands --------------------------------------------------------------------

pub const HELLO_FIRST: Reply = Reply::canned(503, e(5, 5, 1), "Send EHLO or HELO first");
pub const NESTED_MAIL: Reply = Reply::canned(503, e(5, 5, 1), "Nested MAIL command");
pub const MAIL_BEFORE_RCPT: Reply = Reply::canned(503, e(5, 5, 1), "Need MAIL before RCPT");
pub const MAIL_BEFORE_DATA: Reply = Reply::canned(503, e(5, 5, 1), "Need MAIL command");
pub const NO_VALID_RECIPIENTS: Reply = Reply::canned(554, e(5, 5, 1), "No valid recipients");

// ---- The transaction ----------------------------------------------------------------------

pub const SENDER_OK: Reply = Reply::canned(250, e(2, 1, 0), "Sender OK");
pub const RECIPIENT_OK: Reply = Reply::canned(250, e(2, 1, 5), "Recipient OK");
/// The engine is processing as many messages as it can and as many again wait: a new
/// recipient is refused before its sender sends a body (`src/engine/smtp/processing.rs`).
pub const PROCESSING_BUSY: Reply = Reply::canned(451, e(4, 3, 2), "System busy, try again later");
/// Greylisting (a tenant's policy): the first attempt of a new triplet; its retry passes.
pub const GREYLISTED: Reply = Reply::canned(
    451,
    e(4, 7, 1),
    "Greylisted, please try again in a few minutes",
);
pub const RECIPIENT_DUPLICATE: Reply = Reply::canned(250, e(2, 1, 5), "Recipient OK (duplicate)");
pub const RELAYING_DENIED: Reply = Reply::canned(550, e(5, 7, 1), "Relaying denied");
pub const USER_UNKNOWN: Reply =
    Reply::canned(550, e(5, 1, 1), "Recipient address rejected: user unknown");
/// Recipient verification could not get an answer (the tenant's server did not answer the
/// call-ahead and nothing known about the address is cached, or its recipient file was never
/// read): a tempfail, never a `250` that would bounce later.
pub const RECIPIENT_UNVERIFIED: Reply = Reply::canned(
    451,
    e(4, 4, 3),
    "Recipient address verification is not possible now, try again later",
);
pub const TOO_MANY_RECIPIENTS: Reply = Reply::canned(452, e(4, 5, 3), "Too many recipients");
/// One tenant per transaction: the sender retries the other tenant's recipients in another one.
pub const OTHER_TENANT: Reply = Reply::canned(
    452,
    e(4, 5, 3),
    "Too many recipients in this transaction; retry later",
);
pub const START_DATA: Reply = Reply::plain(354, "End data with <CR><LF>.<CR><LF>");

/// SIZE above our limit (at MAIL) or a message that grew beyond it (after DATA).
pub fn message_too_big(limit: u64) -> Reply {
    Reply::new(
        552,
        e(5, 3, 4),
        format!("Message size exceeds fixed limit of {limit} bytes"),
    )
}

pub const BARE_NEWLINE: Reply = Reply::canned(
    550,
    e(5, 6, 0),
    "Message contains bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)",
);

/// The 250 after DATA: the message is spooled. The same words whatever the policy decided
/// (delivered or quarantined): the sender learns that we took the message, not what we made of
/// it, so a spammer cannot probe which of its messages were caught.
pub fn queued(id: &str) -> Reply {
    Reply::new(250, e(2, 0, 0), format!("Ok: queued as {id}"))
}

/// A report to the tenant's report address was learnt (it goes nowhere else).
pub const REPORT_TAKEN: Reply = Reply::canned(
    250,
    e(2, 0, 0),
    "Report taken: learnt as spam, not delivered",
);
/// A report from outside the tenant (or from a client not in its `report_networks`).
pub const REPORT_REFUSED: Reply = Reply::canned(
    550,
    e(5, 7, 1),
    "Reports are taken from the tenant's own users only",
);
/// A report that could not be learnt now (classifier down, the user's hourly limit).
pub const REPORT_LATER: Reply =
    Reply::canned(451, e(4, 3, 0), "Report not learnt now, try again later");

pub const STORAGE_FULL: Reply = Reply::canned(
    452,
    e(4, 3, 1),
    "Insufficient system storage, try again later",
);
/// Cluster redundancy with `on_shadow_failure = "tempfail"`: no second engine fsynced a copy in
/// time, and a single copy is never acknowledged.
pub const NO_SHADOW: Reply = Reply::canned(
    451,
    e(4, 3, 0),
    "Cannot store a second copy right now, try again later",
);
pub const LOCAL_ERROR: Reply = Reply::canned(
    451,
    e(4, 3, 0),
    "Local error in processing, try again later",
);

// ---- Ends of sessions ---------------------------------------------------------------------

pub const TOO_MANY_ERRORS: Reply =
    Reply::canned(421, e(4, 7, 0), "Too many errors, closing connection");
pub const TOO_MANY_COMMANDS: Reply =
    Reply::canned(421, e(4, 7, 0), "Too many commands, closing connection");
pub const TIMEOUT: Reply = Reply::canned(421, e(4, 4, 2), "Timeout, closing connection");
pub const DATA_TIMEOUT: Reply =
    Reply::canned(421, e(4, 4, 2), "Timeout during DATA, closing connection");
pub const SHUTTING_DOWN: Reply =
    Reply::canned(421, e(4, 3, 2), "Service shutting down, try again later");

// ---- Admission (before the banner) --------------------------------------------------------

pub const TOO_MANY_SESSIONS: Reply =
    Reply::canned(421, e(4, 3, 2), "Too many sessions, try again later");
pub const ACCESS_DENIED: Reply = Reply::canned(554, e(5, 7, 1), "Access denied");
pub const SERVICE_BUSY: Reply = Reply::canned(421, e(4, 3, 2), "Service busy, try again later");
pub const NETWORK_CONCURRENCY: Reply = Reply::canned(
    421,
    e(4, 7, 0),
    "Too many connections from your network, try again later",
);
pub const CONNECTION_RATE: Reply = Reply::canned(
    421,
    e(4, 7, 0),
    "Connection rate limit exceeded, try again later",
);
/// Fleet-wide message rate per client network (`edge.fleet_limits`), at the first RCPT.
pub const MESSAGE_RATE: Reply = Reply::canned(
    451,
    e(4, 7, 1),
    "Message rate limit exceeded for your network, try again later",
);
pub const PREGREET: Reply =
    Reply::canned(554, e(5, 5, 1), "Protocol error: talking before the banner");

// ---- PROXY protocol (engine listeners) -----------------------------------------------------

/// A `proxy_listen` listener, and the peer sent no PROXY header.
pub const PROXY_REQUIRED: Reply = Reply::canned(421, e(4, 7, 0), "PROXY protocol header required");
pub const PROXY_INVALID: Reply = Reply::canned(421, e(4, 7, 0), "Invalid PROXY protocol header");
/// A `proxy_listen` listener, and the peer is not in `trusted_proxies`.
pub const PROXY_UNTRUSTED: Reply = Reply::canned(
    554,
    e(5, 7, 0),
    "This listener takes connections from trusted proxies only",
);
/// A plain listener, and the client sent a PROXY header: it would choose its own address.
pub const PROXY_NOT_ACCEPTED: Reply = Reply::canned(
    554,
    e(5, 7, 0),
    "PROXY protocol not accepted on this listener",
);

// ---- The edge and its engines -------------------------------------------------------------

pub const ENGINE_LOST: Reply = Reply::canned(
    421,
    e(4, 4, 2),
    "Connection to the mail engine lost, try again later",
);
pub const ENGINE_ERROR: Reply =
    Reply::canned(421, e(4, 4, 2), "Mail engine error, try again later");
pub const NO_ENGINE: Reply = Reply::canned(
    451,
    e(4, 4, 0),
    "No mail engine available for this recipient, try again later",
);
/// Layer-4 mode: no backend could be reached.
pub const NO_BACKEND: Reply =
    Reply::canned(421, e(4, 4, 0), "No mail server available, try again later");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_replies_render_on_the_wire() {
        let mut v = Vec::new();
        RELAYING_DENIED.write_to(&mut v);
        START_DATA.write_to(&mut v);
        assert_eq!(
            v,
            b"550 5.7.1 Relaying denied\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
        );
        assert_eq!(
            ehlo("mx.example", 1000, true).to_string(),
            "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 STARTTLS"
        );
        assert_eq!(
            banner("mx.example").to_string(),
            "220 mx.example ESMTP maildistiller"
        );
    }
}
