//! Sans-I/O SMTP shared by the engine (server), the edge (front session) and delivery (client):
//! command parsing ([`parse_command`]), replies ([`Reply`]), the DATA end-of-data recogniser
//! ([`data::DataReader`]) and reply parsing for clients ([`reply`]).
//!
//! Nothing here reads a socket or a clock: callers feed bytes and get values or errors.

pub mod data;
pub mod date;
pub mod reply;

use std::fmt;

/// The RFC 5321 limit for a command line, CRLF included (4.5.3.1.4). ESMTP parameters may
/// extend it; the session's own `max_line_length` is the enforced bound.
pub const COMMAND_LINE_LIMIT: usize = 512;

/// A reply: code, enhanced status code and text (one line per element of `lines`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `x.y.z` or empty for replies that carry none (220, 221 carry one anyway in our server).
    pub enhanced: &'static str,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Wire form: `250-first\r\n250 last\r\n`, enhanced code on every line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep as u8);
            if !self.enhanced.is_empty() {
                out.extend_from_slice(self.enhanced.as_bytes());
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = Vec::new();
        self.write_to(&mut v);
        f.write_str(String::from_utf8_lossy(&v).trim_end())
    }
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail(MailFrom),
    Rcpt(String),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    /// BDAT, AUTH, ETRN, ...: recognised verbs we do not offer.
    NotImplemented(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailFrom {
    /// Without brackets; empty for the null reverse path `<>`.
    pub address: String,
    pub size: Option<u64>,
    pub body_8bit: bool,
    pub smtputf8: bool,
}

/// Why a command line was refused, already as the reply to send.
pub type ParseError = Reply;

fn syntax(text: &str) -> Reply {
    Reply::new(501, "5.5.4", text)
}

/// Parses one command line (without CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let line = std::str::from_utf8(line)
        .map_err(|_| Reply::new(500, "5.5.2", "Invalid UTF-8 in command"))?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim()),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let domain_arg = |rest: &str| -> Result<String, Reply> {
        let d = rest.split_whitespace().next().unwrap_or("");
        if d.is_empty() {
            Err(syntax("Domain name required"))
        } else if d.len() > 255 || d.bytes().any(|b| b.is_ascii_control()) {
            Err(syntax("Invalid domain name"))
        } else {
            Ok(d.to_owned())
        }
    };
    match verb.as_str() {
        "HELO" => domain_arg(rest).map(Command::Helo),
        "EHLO" => domain_arg(rest).map(Command::Ehlo),
        "MAIL" => parse_mail(rest).map(Command::Mail),
        "RCPT" => parse_rcpt(rest).map(Command::Rcpt),
        "DATA" if rest.is_empty() => Ok(Command::Data),
        "DATA" => Err(syntax("DATA takes no arguments")),
        "RSET" => Ok(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => Ok(Command::Quit),
        "VRFY" | "EXPN" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "STARTTLS" if rest.is_empty() => Ok(Command::StartTls),
        "STARTTLS" => Err(syntax("STARTTLS takes no arguments")),
        "BDAT" | "AUTH" | "ETRN" | "TURN" | "ATRN" | "BURL" | "SEND" | "SOML" | "SAML" => {
            Ok(Command::NotImplemented(verb))
        }
        _ => Err(Reply::new(500, "5.5.1", "Command unrecognized")),
    }
}

/// `FROM:<addr> [params]` (a space after the colon is tolerated, as most servers do).
fn parse_mail(rest: &str) -> Result<MailFrom, Reply> {
    let Some(arg) = strip_prefix_ci(rest, "FROM:") else {
        return Err(syntax("Syntax: MAIL FROM:<address>"));
    };
    let (address, params) = path(arg.trim_start())?;
    let mut m = MailFrom {
        address,
        ..MailFrom::default()
    };
    for p in params.split_whitespace() {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match k.to_ascii_uppercase().as_str() {
            "SIZE" => {
                m.size = Some(v.parse().map_err(|_| syntax("Invalid SIZE parameter"))?);
            }
            "BODY" => match v.to_ascii_uppercase().as_str() {
                "8BITMIME" => m.body_8bit = true,
                "7BIT" => {}
                _ => return Err(Reply::new(501, "5.5.4", "Unsupported BODY type")),
            },
            "SMTPUTF8" if v.is_empty() => m.smtputf8 = true,
            "AUTH" | "RET" | "ENVID" => {}
            _ => return Err(Reply::new(555, "5.5.4", "Unsupported MAIL parameter")),
        }
    }
    if !m.smtputf8 && !m.address.is_ascii() {
        return Err(Reply::new(
            553,
            "5.6.7",
            "Non-ASCII address requires SMTPUTF8",
        ));
    }
    Ok(m)
}

fn parse_rcpt(rest: &str) -> Result<String, Reply> {
    let Some(arg) = strip_prefix_ci(rest, "TO:") else {
        return Err(syntax("Syntax: RCPT TO:<address>"));
    };
    let (address, params) = path(arg.trim_start())?;
    for p in params.split_whitespace() {
        let k = p.split_once('=').map_or(p, |(k, _)| k).to_ascii_uppercase();
        if !matches!(k.as_str(), "NOTIFY" | "ORCPT") {
            return Err(Reply::new(555, "5.5.4", "Unsupported RCPT parameter"));
        }
    }
    if address.is_empty() {
        return Err(syntax("Recipient address required"));
    }
    Ok(address)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix))
    .then(|| &s[prefix.len()..])
}

/// `<path> rest`: the address inside the brackets (source route dropped) and what follows.
fn path(s: &str) -> Result<(String, &str), Reply> {
    let Some(inner_start) = s.strip_prefix('<') else {
        return Err(syntax("Address must be in angle brackets"));
    };
    // A quoted local part may contain '>'.
    let mut quoted = false;
    let mut end = None;
    let bytes = inner_start.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                end = Some(i);
                break;
            }
            _ => {}
        }
        i += 1;
    }
    let end = end.ok_or_else(|| syntax("Missing closing angle bracket"))?;
    let mut addr = &inner_start[..end];
    let rest = &inner_start[end + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(syntax("Garbage after address"));
    }
    if addr.starts_with('@') {
        // RFC 5321 4.1.1.3: source routes are accepted and ignored.
        addr = addr
            .split_once(':')
            .map(|(_, a)| a)
            .ok_or_else(|| syntax("Invalid source route"))?;
    }
    if !addr.is_empty() {
        validate_address(addr)?;
    }
    Ok((addr.to_owned(), rest))
}

/// Checks `local@domain` shape and length (RFC 5321 4.5.3.1: 64 local, 255 domain).
pub fn validate_address(addr: &str) -> Result<(), Reply> {
    let bad = |t: &str| Err(Reply::new(553, "5.1.3", t.to_owned()));
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return bad("Address must be local-part@domain");
    };
    if local.is_empty() || local.len() > 64 {
        return bad("Invalid local part");
    }
    if domain.is_empty() || domain.len() > 255 {
        return bad("Invalid domain");
    }
    if addr
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' && !local.starts_with('"'))
    {
        return bad("Invalid characters in address");
    }
    let literal = domain.starts_with('[') && domain.ends_with(']');
    if !literal
        && !domain.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
    {
        return bad("Invalid domain");
    }
    Ok(())
}

/// The domain of an address, lower-cased.
pub fn domain_of(addr: &str) -> Option<String> {
    addr.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_like_real_mtas_send_them() {
        assert_eq!(
            parse_command(b"ehlo mx.example.org"),
            Ok(Command::Ehlo("mx.example.org".into()))
        );
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME"),
            Ok(Command::Mail(MailFrom {
                address: "a@b.example".into(),
                size: Some(1000),
                body_8bit: true,
                smtputf8: false
            }))
        );
        assert_eq!(
            parse_command(b"MAIL FROM: <>"),
            Ok(Command::Mail(MailFrom::default()))
        );
        assert_eq!(
            parse_command(b"rcpt to:<@relay.example:bob@acme.example>"),
            Ok(Command::Rcpt("bob@acme.example".into()))
        );
        assert_eq!(
            parse_command(b"RCPT TO:<\"odd>name\"@acme.example> NOTIFY=NEVER"),
            Ok(Command::Rcpt("\"odd>name\"@acme.example".into()))
        );
        assert_eq!(parse_command(b"DATA"), Ok(Command::Data));
        assert_eq!(
            parse_command(b"BDAT 100 LAST"),
            Ok(Command::NotImplemented("BDAT".into()))
        );
    }

    #[test]
    fn bad_commands_get_the_right_codes() {
        let code = |l: &[u8]| parse_command(l).unwrap_err().code;
        assert_eq!(code(b"FOO bar"), 500);
        assert_eq!(code(b"HELO"), 501);
        assert_eq!(code(b"MAIL FROM:a@b.example"), 501);
        assert_eq!(code(b"MAIL FROM:<a@b.example> SIZE=big"), 501);
        assert_eq!(code(b"MAIL FROM:<a@b.example> XFOO=1"), 555);
        assert_eq!(code(b"MAIL FROM:<j\xc3\xb6rg@b.example>"), 553);
        assert!(parse_command("MAIL FROM:<jörg@b.example> SMTPUTF8".as_bytes()).is_ok());
        assert_eq!(code(b"RCPT TO:<>"), 501);
        assert_eq!(code(b"RCPT TO:<nodomain>"), 553);
        assert_eq!(code(b"RCPT TO:<a@b.example"), 501);
        assert_eq!(code(b"RCPT TO:<a@bad_domain!>"), 553);
        assert_eq!(code(b"DATA now"), 501);
        assert_eq!(code(b"\xff\xfe"), 500);
    }

    #[test]
    fn replies_render_multiline_with_enhanced_codes() {
        let r = Reply {
            code: 250,
            enhanced: "",
            lines: vec!["mx".into(), "PIPELINING".into()],
        };
        assert_eq!(r.to_string(), "250-mx\r\n250 PIPELINING");
        let r = Reply::new(550, "5.7.1", "Relaying denied");
        let mut v = Vec::new();
        r.write_to(&mut v);
        assert_eq!(v, b"550 5.7.1 Relaying denied\r\n");
    }
}
