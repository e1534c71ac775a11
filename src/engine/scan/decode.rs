//! Decoding and unpacking one message under its [`Budget`]: headers (RFC 2047 words), every
//! MIME part, base64 / quoted-printable, charsets, nested `message/rfc822` (also beyond
//! mail-parser's three encoded levels, and `.eml` files inside archives), and zip archives at
//! any depth. The result, [`Decoded`], is what the content scanners look at.
//!
//! Lifecycle of one message:
//! 1. **Pre-flight** (no allocation): one pass over the raw bytes counts header lines,
//!    boundary-like lines and `message/*` types. mail-parser parses a message in one call and
//!    cannot be stopped midway; its memory grows with those counts (a part or a header line is
//!    a struct) and with decoded sizes (at most about three times the raw size, charset
//!    conversion being the only step that grows text). A message whose counts already exceed
//!    the limits is not handed to it.
//! 2. **Parse** with mail-parser (iterative: deep nesting does not recurse).
//! 3. **Walk** the parsed tree with an explicit work list, charging the budget for every part
//!    (count, depth, decoded bytes) and checking the deadline between steps. Leaves become
//!    [`Object`]s typed by content; zips are unpacked (see `archive.rs`) and their entries
//!    walked like attachments, one level deeper.
//!
//! The first budget refusal stops the walk: what was decoded so far is still scanned, and
//! [`Decoded::exceeded`] says why the rest was not.

use std::borrow::Cow;

use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::parsers::MessageStream;
use mail_parser::{
    Encoding, GetHeader, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};

use super::archive::{self, ArchiveError};
use super::budget::{Budget, Exceeded, Stats};
use super::magic::{self, FileType};
use crate::engine::policy::finding::clip;

/// Everything the scanners need to know about a message's content.
#[derive(Debug, Default)]
pub struct Decoded<'a> {
    /// Decoded `Subject`.
    pub subject: String,
    /// Addresses of the header `From`, lower case.
    pub from: Vec<String>,
    /// Top-level header fields: lower-case name, decoded value.
    pub headers: Vec<(String, String)>,
    /// Decoded text of the `text/plain` body parts, at most `max_text_bytes`.
    pub text: String,
    /// Decoded source of the `text/html` body parts, within the same bound.
    pub html: String,
    /// Every leaf: body parts, attachments, archive entries.
    pub objects: Vec<Object<'a>>,
    /// Malformed MIME, bad encodings, unknown charsets, broken archives.
    pub problems: Vec<String>,
    /// The limit that stopped decoding, if one did.
    pub exceeded: Option<Exceeded>,
    /// Whether mail-parser found a header block at all.
    pub parsed: bool,
    pub stats: Stats,
}

/// A leaf of the message: a body part, an attachment or an archive entry.
#[derive(Debug)]
pub struct Object<'a> {
    /// Where it is, for findings: `"forward.eml/invoice.zip/eicar.com"`.
    pub path: String,
    /// The file name it carries (attachment or archive entry name), if any.
    pub name: Option<String>,
    /// Declared `type/subtype`, if any.
    pub declared: Option<String>,
    /// The type by content.
    pub kind: FileType,
    /// Decoded content (empty for encrypted archive entries).
    pub data: Cow<'a, [u8]>,
    pub depth: u32,
    pub in_archive: bool,
    /// An encrypted archive entry (its content cannot be read).
    pub encrypted: bool,
    /// An Office document carrying VBA macros.
    pub macros: bool,
}

/// Decodes `raw` within `budget`; text for rules is cut at `max_text` bytes.
pub fn decode<'a>(raw: &'a [u8], budget: &mut Budget, max_text: usize) -> Decoded<'a> {
    let mut d = Decoded::default();
    let mut walker = Walker {
        work: Vec::new(),
        max_text,
    };
    let result = preflight(raw, budget).and_then(|()| {
        match parse(raw) {
            Some(msg) => {
                d.parsed = true;
                top_headers(&msg, raw, &mut d);
                walker.work.push(Work::Message {
                    msg,
                    depth: 0,
                    path: String::new(),
                });
            }
            None => {
                d.problems.push("no header block".into());
                walker.work.push(Work::Blob(Blob {
                    data: Cow::Borrowed(raw),
                    name: None,
                    declared: None,
                    path: "message".into(),
                    depth: 0,
                    in_archive: false,
                }));
            }
        }
        walker.run(budget, &mut d)
    });
    if let Err(e) = result {
        d.exceeded = Some(e);
    }
    d.stats = budget.stats();
    d
}

/// Parses a message with mail-parser; see [`single_text_part`] for the shortcut.
fn parse(raw: &[u8]) -> Option<Message<'_>> {
    single_text_part(raw).or_else(|| MessageParser::new().parse(raw))
}

/// The same [`Message`] mail-parser builds, for a message that is one `text/plain` or
/// `text/html` part (or has no `Content-Type`) in no transfer encoding, built from its headers
/// alone: mail-parser turns such a body into text with `String::from_utf8_lossy`, a byte at a
/// time (a tenth of the engine's CPU for 100 KiB messages); a valid body is borrowed after
/// std's word-at-a-time check, an invalid one gets the very same lossy copy. Anything else
/// (multipart, `message/*`, base64, quoted-printable, no body) is `None`: parse it whole.
fn single_text_part(raw: &[u8]) -> Option<Message<'_>> {
    let parser = MessageParser::new();
    let mut stream = MessageStream::new(raw);
    let mut headers = Vec::new();
    if !stream.parse_headers(&parser, &mut headers) {
        return None;
    }
    let offset_body = stream.offset();
    let mut part = MessagePart {
        headers,
        is_encoding_problem: false,
        body: PartType::default(),
        encoding: Encoding::None,
        offset_header: 0,
        offset_body: u32::try_from(offset_body).ok()?,
        offset_end: u32::try_from(raw.len()).ok()?,
    };
    // The same lookup and match as mail-parser's own (the last such header counts).
    if let Some(HeaderValue::Text(cte)) = part
        .headers
        .header_value(&mail_parser::HeaderName::ContentTransferEncoding)
        && (cte.eq_ignore_ascii_case("base64") || cte.eq_ignore_ascii_case("quoted-printable"))
    {
        return None;
    }
    let html = match part.content_type() {
        None => false,
        Some(ct) if ct.ctype() == "text" && ct.subtype() == Some("plain") => false,
        Some(ct) if ct.ctype() == "text" && ct.subtype() == Some("html") => true,
        Some(_) => return None,
    };
    let bytes = &raw[offset_body..];
    let text = match part
        .content_type()
        .and_then(|ct| ct.attribute("charset"))
        .and_then(|c| charset_decoder(c.as_bytes()))
    {
        Some(decode) => Cow::Owned(decode(bytes)),
        None => match std::str::from_utf8(bytes) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(bytes),
        },
    };
    part.body = if html {
        PartType::Html(text)
    } else {
        PartType::Text(text)
    };
    // mail-parser offers a lone text part as both the text and the HTML body.
    Some(Message {
        html_body: vec![0],
        text_body: vec![0],
        attachments: Vec::new(),
        parts: vec![part],
        raw_message: Cow::Borrowed(raw),
    })
}

/// Most `message/*` types a message handed to mail-parser may name. mail-parser builds nested
/// messages as a tree and drops it recursively, so a chain this long must fit on a thread's
/// stack; a chain longer than `limits.max_depth` is refused later anyway, so only messages
/// carrying more than this many messages side by side (large digests) pay for the bound: they
/// are unscannable.
pub const MAX_NESTED_MESSAGES: u32 = 256;

/// Counts what mail-parser would allocate structures for, without allocating; refuses a
/// message whose counts exceed the limits (see the module docs).
pub fn preflight(raw: &[u8], budget: &Budget) -> Result<(), Exceeded> {
    let max_lines = budget.max_header_lines;
    let max_parts = budget.max_parts_hint();
    let (mut lines, mut boundaries, mut nested) = (0u32, 0u32, 0u32);
    let mut in_header = true;
    let mut nested_next = false;
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', raw).chain(std::iter::once(raw.len()));
    for end in ends {
        let line = &raw[start..end];
        start = end + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if in_header {
            if line.is_empty() {
                in_header = nested_next;
                nested_next = false;
                continue;
            }
            // mail-parser makes a header of every line with a colon that does not continue
            // the previous one; other lines it skips.
            let continues = line.first().is_some_and(|&c| c == b' ' || c == b'\t');
            if !continues && line.contains(&b':') {
                lines += 1;
                if lines > max_lines {
                    return Err(Exceeded::HeaderLines(max_lines));
                }
            }
            if contains_ci(line, b"message/rfc822") || contains_ci(line, b"message/global") {
                nested_next = true;
                nested += 1;
                // Every nested message is a part, and a chain of them is as deep as it is long.
                if nested > max_parts.min(MAX_NESTED_MESSAGES) {
                    return Err(Exceeded::Parts(max_parts));
                }
            }
        } else if line.starts_with(b"--") {
            boundaries += 1;
            in_header = true;
        }
        if boundaries > max_parts.saturating_mul(2).saturating_add(8) {
            return Err(Exceeded::Parts(max_parts));
        }
    }
    Ok(())
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    // Header lines only; the body is never searched with this.
    hay.len() >= needle.len()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

fn top_headers(msg: &Message<'_>, raw: &[u8], d: &mut Decoded<'_>) {
    d.subject = msg.subject().unwrap_or_default().to_owned();
    if let Some(from) = msg.from() {
        d.from = from
            .iter()
            .filter_map(|a| a.address())
            .map(str::to_ascii_lowercase)
            .collect();
    }
    for h in msg.root_part().headers() {
        let value = match h.value() {
            HeaderValue::Text(t) => t.to_string(),
            HeaderValue::TextList(l) => l.join(", "),
            _ => {
                let (s, e) = (h.offset_start() as usize, h.offset_end() as usize);
                let v = raw.get(s..e).unwrap_or_default();
                String::from_utf8_lossy(v).trim().to_owned()
            }
        };
        d.headers.push((h.name().to_ascii_lowercase(), value));
    }
}

enum Work<'a> {
    Message {
        msg: Message<'a>,
        depth: u32,
        path: String,
    },
    Blob(Blob<'a>),
}

struct Blob<'a> {
    data: Cow<'a, [u8]>,
    name: Option<String>,
    declared: Option<String>,
    path: String,
    depth: u32,
    in_archive: bool,
}

struct Walker<'a> {
    /// Bounded by the budget: every item pushed was charged as a part or an archive entry.
    work: Vec<Work<'a>>,
    max_text: usize,
}

impl<'a> Walker<'a> {
    fn run(&mut self, b: &mut Budget, d: &mut Decoded<'a>) -> Result<(), Exceeded> {
        while let Some(item) = self.work.pop() {
            b.time()?;
            match item {
                Work::Message { msg, depth, path } => self.message(msg, depth, &path, b, d)?,
                Work::Blob(blob) => self.blob(blob, b, d)?,
            }
        }
        Ok(())
    }

    fn message(
        &mut self,
        mut msg: Message<'a>,
        depth: u32,
        path: &str,
        b: &mut Budget,
        d: &mut Decoded<'a>,
    ) -> Result<(), Exceeded> {
        let mut ids = vec![(0u32, depth)];
        let mut index = 0usize;
        while let Some((id, depth)) = ids.pop() {
            b.time()?;
            b.part()?;
            b.depth(depth)?;
            index += 1;
            let Some(part) = msg.parts.get_mut(id as usize) else {
                continue;
            };
            let name = part
                .attachment_name()
                .map(|n| archive::clean_name(n.as_bytes()));
            let declared = part.content_type().map(|c| {
                format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")).to_ascii_lowercase()
            });
            let here = join(path, name.as_deref().unwrap_or(&format!("part{index}")));
            if part.is_encoding_problem {
                d.problems.push(format!("{here}: bad transfer encoding"));
            }
            let attached = name.is_some()
                || part
                    .content_disposition()
                    .is_some_and(|cd| cd.ctype().eq_ignore_ascii_case("attachment"));
            if let Some(cs) = part.content_type().and_then(|c| c.attribute("charset"))
                && charset_decoder(cs.as_bytes()).is_none()
                && !is_utf8_name(cs)
            {
                d.problems
                    .push(format!("{here}: unknown charset {:?}", clip(cs, 40)));
            }
            let encoding_problem = part.is_encoding_problem;
            let body = std::mem::take(&mut part.body);
            let blob = |data: Cow<'a, [u8]>| Blob {
                data,
                name: name.clone(),
                declared: declared.clone(),
                path: here.clone(),
                depth,
                in_archive: false,
            };
            match body {
                PartType::Multipart(children) => {
                    ids.extend(children.into_iter().rev().map(|c| (c, depth + 1)));
                }
                PartType::Text(s) | PartType::Html(s) => {
                    b.charge_bytes(s.len() as u64)?;
                    let is_html = declared.as_deref() == Some("text/html");
                    if !attached {
                        let room = self.max_text.saturating_sub(d.text.len() + d.html.len());
                        let buf = if is_html { &mut d.html } else { &mut d.text };
                        push_bounded(buf, &s, room);
                    }
                    self.work.push(Work::Blob(blob(str_bytes(s))));
                }
                PartType::Binary(bytes) | PartType::InlineBinary(bytes) => {
                    b.charge_bytes(bytes.len() as u64)?;
                    let is_message = declared
                        .as_deref()
                        .is_some_and(|t| t == "message/rfc822" || t == "message/global");
                    if is_message && encoding_problem {
                        // Beyond mail-parser's encoded nesting: parse it ourselves.
                        self.nested(&bytes, depth + 1, &here, b, d)?;
                    } else {
                        self.work.push(Work::Blob(blob(bytes)));
                    }
                }
                PartType::Message(inner) => self.work.push(Work::Message {
                    msg: inner,
                    depth: depth + 1,
                    path: here,
                }),
            }
        }
        Ok(())
    }

    /// A message inside a part or an archive: parsed under the same budget.
    // The `Cow` says whether the bytes live as long as the message (parsed in place) or not.
    #[allow(clippy::ptr_arg)]
    fn nested(
        &mut self,
        bytes: &Cow<'a, [u8]>,
        depth: u32,
        path: &str,
        b: &mut Budget,
        d: &mut Decoded<'a>,
    ) -> Result<(), Exceeded> {
        b.depth(depth)?;
        preflight(bytes, b)?;
        match bytes {
            Cow::Borrowed(s) => match parse(s) {
                Some(msg) => self.work.push(Work::Message {
                    msg,
                    depth,
                    path: path.to_owned(),
                }),
                None => d.problems.push(format!("{path}: unparseable message")),
            },
            Cow::Owned(v) => self.nested_owned(v, depth, path, b, d)?,
        }
        Ok(())
    }

    /// A message in a buffer of our own (decoded from base64, inflated from a zip): walked to
    /// the end here, while the buffer lives, and only its leaves copied out. (mail-parser's
    /// `into_owned` would copy the whole tree recursively, one stack frame per nesting level.)
    fn nested_owned(
        &mut self,
        v: &[u8],
        depth: u32,
        path: &str,
        b: &mut Budget,
        d: &mut Decoded<'a>,
    ) -> Result<(), Exceeded> {
        let Some(msg) = parse(v) else {
            d.problems.push(format!("{path}: unparseable message"));
            return Ok(());
        };
        let mut sub = Decoded::default();
        let mut walker = Walker {
            work: vec![Work::Message {
                msg,
                depth,
                path: path.to_owned(),
            }],
            max_text: self.max_text.saturating_sub(d.text.len() + d.html.len()),
        };
        let result = walker.run(b, &mut sub);
        d.text.push_str(&sub.text);
        d.html.push_str(&sub.html);
        d.problems.append(&mut sub.problems);
        for o in sub.objects {
            // Borrowed leaves point into `v`: copying them out is a new allocation.
            if let Cow::Borrowed(data) = &o.data {
                b.charge_bytes(data.len() as u64)?;
            }
            d.objects.push(Object {
                data: Cow::Owned(o.data.into_owned()),
                path: o.path,
                name: o.name,
                declared: o.declared,
                kind: o.kind,
                depth: o.depth,
                in_archive: o.in_archive,
                encrypted: o.encrypted,
                macros: o.macros,
            });
        }
        result
    }

    fn blob(
        &mut self,
        blob: Blob<'a>,
        b: &mut Budget,
        d: &mut Decoded<'a>,
    ) -> Result<(), Exceeded> {
        let kind = magic::detect(&blob.data);
        let mut object = Object {
            macros: magic::has_macros(kind, &blob.data),
            path: blob.path,
            name: blob.name,
            declared: blob.declared,
            kind,
            data: Cow::Borrowed(&[]),
            depth: blob.depth,
            in_archive: blob.in_archive,
            encrypted: false,
        };
        let mut result = Ok(());
        if kind.is_zip_family() {
            result = self.unpack(&blob.data, &mut object, b, d);
        } else if kind == FileType::Email && (blob.in_archive || object.name.is_some()) {
            // An .eml attachment or archive entry: scan what it carries too.
            result = self.nested(&blob.data, blob.depth + 1, &object.path, b, d);
        }
        object.data = blob.data;
        d.objects.push(object);
        result
    }

    fn unpack(
        &mut self,
        data: &[u8],
        object: &mut Object<'a>,
        b: &mut Budget,
        d: &mut Decoded<'a>,
    ) -> Result<(), Exceeded> {
        let depth = object.depth + 1;
        b.depth(depth)?;
        let mut entries = Vec::new();
        let outcome = archive::unpack_zip(data, b, |e| entries.push(e));
        for e in entries {
            if e.name.to_ascii_lowercase().ends_with("vbaproject.bin") {
                object.macros = true;
            }
            let path = join(&object.path, &e.name);
            if e.encrypted {
                d.objects.push(Object {
                    path,
                    name: Some(e.name),
                    declared: None,
                    kind: FileType::Unknown,
                    data: Cow::Borrowed(&[]),
                    depth,
                    in_archive: true,
                    encrypted: true,
                    macros: false,
                });
                continue;
            }
            self.work.push(Work::Blob(Blob {
                data: Cow::Owned(e.data),
                name: Some(e.name),
                declared: None,
                path,
                depth,
                in_archive: true,
            }));
        }
        match outcome {
            Ok(problems) => {
                for p in problems {
                    d.problems.push(format!("{}: {p}", object.path));
                }
                Ok(())
            }
            Err(ArchiveError::Malformed(m)) => {
                d.problems.push(format!("{}: {m}", object.path));
                Ok(())
            }
            Err(ArchiveError::Exceeded(e)) => Err(e),
        }
    }
}

fn str_bytes(s: Cow<'_, str>) -> Cow<'_, [u8]> {
    match s {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    }
}

fn is_utf8_name(cs: &str) -> bool {
    let cs = cs.trim().to_ascii_lowercase();
    matches!(
        cs.as_str(),
        "utf-8" | "utf8" | "unicode-1-1-utf-8" | "unicode-2-0-utf-8" | "x-unicode20utf8"
    )
}

/// Appends at most `room` bytes of `s`, cut at a character boundary.
fn push_bounded(buf: &mut String, s: &str, room: usize) {
    if room == 0 {
        return;
    }
    let mut end = s.len().min(room);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    buf.push_str(&s[..end]);
    if !buf.ends_with('\n') {
        buf.push('\n');
    }
}

fn join(path: &str, name: &str) -> String {
    let mut p = if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}/{name}")
    };
    if p.len() > 300 {
        let mut cut = p.len() - 300;
        while !p.is_char_boundary(cut) {
            cut += 1;
        }
        p = format!("…{}", &p[cut..]);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use crate::config::policy::ScanLimits;
    use std::time::Instant;

    fn run(raw: &[u8], limits: ScanLimits) -> Decoded<'_> {
        let mut b = Budget::new(&limits, Instant::now());
        decode(raw, &mut b, 1 << 20)
    }

    #[test]
    fn plain_message() {
        let raw = b"From: A <a@X.example>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\nhello\r\n";
        let d = run(raw, ScanLimits::default());
        assert!(d.exceeded.is_none());
        assert_eq!(d.subject, "caf\u{e9}");
        assert_eq!(d.from, ["a@x.example"]);
        assert!(d.text.contains("hello"));
        assert_eq!(d.objects.len(), 1);
        assert_eq!(d.objects[0].kind, FileType::Text);
    }

    /// The shortcut for single text parts builds exactly the message mail-parser builds, and
    /// leaves everything else to mail-parser.
    #[test]
    fn single_text_parts_parse_as_mail_parser_does() {
        let short: &[&[u8]] = &[
            b"From: a@x.example\r\nSubject: hi\r\n\r\nhello\r\nworld\r\n",
            b"Subject: lf only\n\nbody\n",
            b"Content-Type: text/plain; charset=utf-8\r\n\r\ncaf\xc3\xa9\r\n",
            b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\ncaf\xe9\r\n",
            b"Content-Type: TEXT/HTML\r\nContent-Transfer-Encoding: 8bit\r\n\r\n<p>x</p>\r\n",
            b"Subject: broken utf-8\r\n\r\nab\xff\xfecd\xc3\r\n",
            b"Subject: empty body\r\n\r\n",
            b"Content-Type: text/plain\r\nContent-Type: text/html\r\n\r\nlast one counts\r\n",
        ];
        for raw in short {
            let fast = single_text_part(raw)
                .unwrap_or_else(|| panic!("no shortcut for {:?}", String::from_utf8_lossy(raw)));
            assert_eq!(Some(fast), MessageParser::new().parse(*raw), "{raw:?}");
        }
        let whole: &[&[u8]] = &[
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
            b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n",
            b"Content-Transfer-Encoding: Quoted-Printable\r\n\r\ncaf=C3=A9\r\n",
            b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nx\r\n",
            b"Content-Type: application/pdf\r\n\r\n%PDF-1.4\r\n",
            b"Content-Type: text/calendar\r\n\r\nBEGIN:VCALENDAR\r\n",
            b"Subject: no body at all\r\n",
            b"Subject: folded\r\n  twice\r\n \r\nbody after a blank-ish line\r\n",
        ];
        for raw in whole {
            assert!(single_text_part(raw).is_none(), "{raw:?}");
            assert_eq!(parse(raw), MessageParser::new().parse(*raw));
        }
    }

    #[test]
    fn preflight_refuses_too_many_parts_before_parsing() {
        let mut raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        for _ in 0..100 {
            raw.extend_from_slice(b"--b\r\n\r\nx\r\n");
        }
        raw.extend_from_slice(b"--b--\r\n");
        let limits = ScanLimits {
            max_parts: 10,
            ..ScanLimits::default()
        };
        let d = run(&raw, limits);
        assert_eq!(d.exceeded, Some(Exceeded::Parts(10)));
        assert!(!d.parsed, "mail-parser never saw it");
    }

    #[test]
    fn time_is_checked_between_steps() {
        let limits = ScanLimits {
            max_time: Dur::secs(0),
            ..ScanLimits::default()
        };
        let d = run(b"Subject: x\r\n\r\nbody\r\n", limits);
        assert!(matches!(d.exceeded, Some(Exceeded::Time(_))));
    }
}
