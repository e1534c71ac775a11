//! Sans-I/O SMTP shared by the engine (server), the edge (front session) and delivery (client):
//! command parsing ([`parse_command`]), replies as values ([`Reply`]) and every reply we write,
//! named once ([`replies`]), the DATA end-of-data recogniser ([`data::DataReader`]) and reply
//! parsing for clients ([`reply`]).
//!
//! Nothing here reads a socket or a clock: callers feed bytes and get values or errors.

pub mod data;
pub mod date;
pub mod ending;
pub mod replies;
pub mod reply;
pub mod server;

use std::borrow::Cow;
use std::fmt;

/// The RFC 5321 limit for a command line, CRLF included (4.5.3.1.4). ESMTP parameters may
/// extend it; the session's own `max_line_length` is the enforced bound.
pub const COMMAND_LINE_LIMIT: usize = 512;

/// An enhanced status code (RFC 3463): `class.subject.detail`, e.g. `5.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enhanced {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl Enhanced {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Enhanced {
        Enhanced {
            class,
            subject,
            detail,
        }
    }
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// The text of a reply: one line (static for the canned replies of [`replies`], so writing
/// them allocates nothing) or several (EHLO).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Text {
    One(Cow<'static, str>),
    Lines(Vec<String>),
}

/// A reply as we decide it: code, enhanced status code, text. It travels as this value from
/// where it is decided (the session, the policy, admission) to where it is written; nothing
/// parses it back. Fixed replies are named once in [`replies`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `None` for replies that carry none (the banner, HELO, EHLO, 354).
    pub enhanced: Option<Enhanced>,
    text: Text,
}

impl Reply {
    /// A fixed reply, for the table in [`replies`]. The enhanced code's class must be the
    /// reply code's first digit (checked when the constant is compiled).
    pub const fn canned(code: u16, enhanced: Enhanced, text: &'static str) -> Reply {
        assert!(
            code / 100 == enhanced.class as u16,
            "enhanced class must match the code"
        );
        Reply {
            code,
            enhanced: Some(enhanced),
            text: Text::One(Cow::Borrowed(text)),
        }
    }

    /// A fixed reply without an enhanced code (354).
    pub const fn plain(code: u16, text: &'static str) -> Reply {
        Reply {
            code,
            enhanced: None,
            text: Text::One(Cow::Borrowed(text)),
        }
    }

    /// A reply whose text is built at run time.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<Cow<'static, str>>) -> Reply {
        debug_assert_eq!(code / 100, u16::from(enhanced.class));
        Reply {
            code,
            enhanced: Some(enhanced),
            text: Text::One(text.into()),
        }
    }

    /// A run-time reply without an enhanced code (banner, HELO).
    pub fn bare(code: u16, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced: None,
            text: Text::One(text.into()),
        }
    }

    /// A multi-line reply without enhanced codes (EHLO).
    pub fn lines(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            text: Text::Lines(lines),
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// The text lines, without code or enhanced code.
    pub fn text_lines(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match &self.text {
            Text::One(t) => (Some(t.as_ref()), None),
            Text::Lines(l) => (None, Some(l.iter().map(String::as_str))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    /// Wire form: `250-first\r\n250 last\r\n`, enhanced code on every line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let code = [
            b'0' + (self.code / 100 % 10) as u8,
            b'0' + (self.code / 10 % 10) as u8,
            b'0' + (self.code % 10) as u8,
        ];
        let mut line = |text: &str, last: bool| {
            out.extend_from_slice(&code);
            out.push(if last { b' ' } else { b'-' });
            if let Some(e) = self.enhanced {
                use std::io::Write;
                let _ = write!(out, "{e}");
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        match &self.text {
            Text::One(t) => line(t, true),
            Text::Lines(l) if l.is_empty() => line("", true),
            Text::Lines(l) => {
                for (i, t) in l.iter().enumerate() {
                    line(t, i + 1 == l.len());
                }
            }
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

/// Parses one command line (without CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| replies::INVALID_UTF8)?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim()),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let domain_arg = |rest: &str| -> Result<String, Reply> {
        let d = rest.split_whitespace().next().unwrap_or("");
        if d.is_empty() {
            Err(replies::DOMAIN_REQUIRED)
        } else if d.len() > 255 || d.bytes().any(|b| b.is_ascii_control()) {
            Err(replies::INVALID_DOMAIN_ARG)
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
        "DATA" => Err(replies::DATA_NO_ARGS),
        "RSET" => Ok(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => Ok(Command::Quit),
        "VRFY" | "EXPN" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "STARTTLS" if rest.is_empty() => Ok(Command::StartTls),
        "STARTTLS" => Err(replies::STARTTLS_NO_ARGS),
        "BDAT" | "AUTH" | "ETRN" | "TURN" | "ATRN" | "BURL" | "SEND" | "SOML" | "SAML" => {
            Ok(Command::NotImplemented(verb))
        }
        _ => Err(replies::UNRECOGNIZED),
    }
}

/// `FROM:<addr> [params]` (a space after the colon is tolerated, as most servers do).
fn parse_mail(rest: &str) -> Result<MailFrom, Reply> {
    let Some(arg) = strip_prefix_ci(rest, "FROM:") else {
        return Err(replies::MAIL_SYNTAX);
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
                m.size = Some(v.parse().map_err(|_| replies::INVALID_SIZE)?);
            }
            "BODY" => match v.to_ascii_uppercase().as_str() {
                "8BITMIME" => m.body_8bit = true,
                "7BIT" => {}
                _ => return Err(replies::UNSUPPORTED_BODY),
            },
            "SMTPUTF8" if v.is_empty() => m.smtputf8 = true,
            "AUTH" | "RET" | "ENVID" => {}
            _ => return Err(replies::UNSUPPORTED_MAIL_PARAM),
        }
    }
    if !m.smtputf8 && !m.address.is_ascii() {
        return Err(replies::NON_ASCII_NEEDS_SMTPUTF8);
    }
    Ok(m)
}

fn parse_rcpt(rest: &str) -> Result<String, Reply> {
    let Some(arg) = strip_prefix_ci(rest, "TO:") else {
        return Err(replies::RCPT_SYNTAX);
    };
    let (address, params) = path(arg.trim_start())?;
    for p in params.split_whitespace() {
        let k = p.split_once('=').map_or(p, |(k, _)| k).to_ascii_uppercase();
        if !matches!(k.as_str(), "NOTIFY" | "ORCPT") {
            return Err(replies::UNSUPPORTED_RCPT_PARAM);
        }
    }
    if address.is_empty() {
        return Err(replies::RECIPIENT_REQUIRED);
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
        return Err(replies::NO_ANGLE_BRACKETS);
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
    let end = end.ok_or(replies::MISSING_BRACKET)?;
    let mut addr = &inner_start[..end];
    let rest = &inner_start[end + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(replies::GARBAGE_AFTER_ADDRESS);
    }
    if addr.starts_with('@') {
        // RFC 5321 4.1.1.3: source routes are accepted and ignored.
        addr = addr
            .split_once(':')
            .map(|(_, a)| a)
            .ok_or(replies::INVALID_SOURCE_ROUTE)?;
    }
    if !addr.is_empty() {
        validate_address(addr)?;
    }
    Ok((addr.to_owned(), rest))
}

/// Checks `local@domain` shape and length (RFC 5321 4.5.3.1: 64 local, 255 domain).
pub fn validate_address(addr: &str) -> Result<(), Reply> {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err(replies::ADDRESS_SHAPE);
    };
    if local.is_empty() || local.len() > 64 {
        return Err(replies::INVALID_LOCAL_PART);
    }
    if domain.is_empty() || domain.len() > 255 {
        return Err(replies::INVALID_DOMAIN);
    }
    if addr
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' && !local.starts_with('"'))
    {
        return Err(replies::INVALID_ADDRESS_CHARS);
    }
    let literal = domain.starts_with('[') && domain.ends_with(']');
    if !literal
        && !domain.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
    {
        return Err(replies::INVALID_DOMAIN);
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
        let r = Reply::lines(250, vec!["mx".into(), "PIPELINING".into()]);
        assert_eq!(r.to_string(), "250-mx\r\n250 PIPELINING");
        let r = Reply::new(550, Enhanced::new(5, 7, 1), "Relaying denied");
        let mut v = Vec::new();
        r.write_to(&mut v);
        assert_eq!(v, b"550 5.7.1 Relaying denied\r\n");
    }
}
