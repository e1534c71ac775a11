//! What a user's report teaches: the original message inside it, and the key under which it is
//! learnt once.
//!
//! A user reports by forwarding. Mail clients forward either as an attachment (a
//! `message/rfc822` part: the original, whole — Thunderbird, Outlook "forward as attachment",
//! Apple Mail) or inline (the original's text under a marker such as `---------- Forwarded
//! message ---------` or `-----Original Message-----`, with a few of its header fields). The
//! first attached message wins; failing that, the inline block is rebuilt into a message from
//! the header fields it quotes and the text under them; failing that, the report's own text is
//! what we have.
//!
//! Before learning, our own verdict headers (`X-Maildistiller-*`, `X-Spam-*`) are removed: the
//! classifier must learn the message, not our opinion of it.

use mail_parser::{MessageParser, PartType};

/// The original message carried by `report` (raw bytes, as close to the original as the
/// report allows), with our own verdict headers removed.
pub fn extract(report: &[u8]) -> Vec<u8> {
    let Some(msg) = MessageParser::default().parse(report) else {
        return strip_ours(report);
    };
    for part in &msg.parts {
        if let PartType::Message(inner) = &part.body {
            let raw = inner.raw_message();
            if !raw.is_empty() {
                return strip_ours(raw);
            }
        }
    }
    let text = msg.body_text(0).unwrap_or_default();
    if let Some(rebuilt) = inline_forward(&text) {
        return rebuilt;
    }
    let subject = msg.subject().unwrap_or_default();
    let subject = strip_forward_prefix(subject);
    let mut out = format!("Subject: {subject}\r\n\r\n").into_bytes();
    out.extend_from_slice(crlf(&text).as_bytes());
    out
}

/// Markers mail clients put above an inline-forwarded message.
const MARKERS: &[&str] = &[
    "---------- forwarded message",
    "-----original message-----",
    "begin forwarded message:",
    "-------- original message --------",
    "-------- forwarded message --------",
];

/// Header fields an inline forward quotes, kept when the message is rebuilt.
const QUOTED_FIELDS: &[&str] = &["from", "date", "subject", "to", "cc", "sent", "reply-to"];

/// The inline-forwarded message under the first marker of `text`, rebuilt: the quoted header
/// fields it starts with, a blank line, the rest.
fn inline_forward(text: &str) -> Option<Vec<u8>> {
    let lower = text.to_ascii_lowercase();
    let at = MARKERS.iter().filter_map(|m| lower.find(m)).min()?;
    let after = &text[at..];
    let mut lines = after.lines().skip(1).peekable();
    let mut head = String::new();
    while let Some(line) = lines.peek() {
        let l = line.trim_start_matches('>').trim();
        if l.is_empty() && head.is_empty() {
            lines.next();
            continue;
        }
        let Some((k, v)) = l.split_once(':') else {
            break;
        };
        let key = k.trim().to_ascii_lowercase();
        if !QUOTED_FIELDS.contains(&key.as_str()) {
            break;
        }
        let key = if key == "sent" { "date".into() } else { key };
        head.push_str(&format!("{}: {}\r\n", capitalise(&key), v.trim()));
        lines.next();
    }
    if head.is_empty() {
        return None;
    }
    // The blank line under the quoted fields is the header block's end, written below.
    if lines.peek().is_some_and(|l| l.trim().is_empty()) {
        lines.next();
    }
    let body: Vec<&str> = lines.collect();
    let mut out = head.into_bytes();
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(crlf(&body.join("\n")).as_bytes());
    Some(out)
}

fn capitalise(key: &str) -> String {
    key.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

fn strip_forward_prefix(subject: &str) -> &str {
    let mut s = subject.trim();
    loop {
        let lower = s.to_ascii_lowercase();
        let cut = ["fwd:", "fw:", "tr:", "wg:"]
            .iter()
            .find(|p| lower.starts_with(*p))
            .map(|p| p.len());
        match cut {
            Some(n) => s = s[n..].trim_start(),
            None => return s,
        }
    }
}

/// Whether a header field is one of ours (a verdict, not the sender's).
fn ours(name: &[u8]) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with(b"x-maildistiller-") || n.starts_with(b"x-spam-")
}

/// `message` without our verdict header fields (folded continuations included).
pub fn strip_ours(message: &[u8]) -> Vec<u8> {
    let end = header_end(message);
    let mut out = Vec::with_capacity(message.len());
    let mut skipping = false;
    for line in message[..end].split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            skipping = line
                .iter()
                .position(|&b| b == b':')
                .is_some_and(|i| ours(&line[..i]));
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&message[end..]);
    out
}

/// Offset of the blank line that ends the header block (the whole message when none).
fn header_end(m: &[u8]) -> usize {
    let crlf = memchr::memmem::find(m, b"\r\n\r\n").map(|i| i + 2);
    let lf = memchr::memmem::find(m, b"\n\n").map(|i| i + 1);
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(m.len()),
    }
}

/// The key under which a message is learnt once: SHA-256 over its `Message-ID` and its body
/// (line ends normalised, trailing white space and blank lines dropped), so the same message reported by two
/// users, each copy with other trace headers in front, is one message; without a
/// `Message-ID` the `Subject` stands in.
pub fn digest(message: &[u8]) -> [u8; 32] {
    let end = header_end(message);
    let head = String::from_utf8_lossy(&message[..end]);
    let field = |name: &str| {
        let mut v: Option<String> = None;
        for line in head.lines() {
            match &mut v {
                Some(val) if line.starts_with([' ', '\t']) => val.push_str(line.trim()),
                Some(_) => break,
                None => {
                    if let Some((k, val)) = line.split_once(':')
                        && k.trim().eq_ignore_ascii_case(name)
                    {
                        v = Some(val.trim().to_owned());
                    }
                }
            }
        }
        v.unwrap_or_default()
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let id = field("Message-ID");
    if id.is_empty() {
        ctx.update(b"subject:");
        ctx.update(field("Subject").as_bytes());
    } else {
        ctx.update(b"id:");
        ctx.update(id.as_bytes());
    }
    ctx.update(b"\n");
    // Trailing blank lines do not count (an mbox keeps one before its next `From ` line).
    for line in message[end..].trim_ascii_end().split(|&b| b == b'\n') {
        let line = line.trim_ascii_end();
        ctx.update(line);
        ctx.update(b"\n");
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str = "From: Pitch <pitch@sender.test>\r\nTo: bob@acme.test\r\nSubject: Cheap watches\r\nMessage-ID: <p1@sender.test>\r\nX-Maildistiller-Verdict: action=deliver score=0.5\r\nX-Spam-Flag: NO\r\n\r\nBuy now.\r\n";

    #[test]
    fn an_attached_message_is_the_original() {
        let report = format!(
            "From: bob@acme.test\r\nTo: report-spam@acme.test\r\nSubject: Fwd: Cheap watches\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nthis is spam\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n{ORIGINAL}\r\n--b--\r\n"
        );
        let got = String::from_utf8(extract(report.as_bytes())).unwrap();
        assert!(
            got.starts_with("From: Pitch <pitch@sender.test>\r\n"),
            "{got}"
        );
        assert!(got.contains("Message-ID: <p1@sender.test>"), "{got}");
        assert!(
            !got.contains("X-Maildistiller"),
            "our verdict is not learnt: {got}"
        );
        assert!(!got.contains("X-Spam-Flag"), "{got}");
        assert!(got.contains("Buy now."), "{got}");
        assert_eq!(digest(got.as_bytes()), digest(ORIGINAL.as_bytes()));
    }

    #[test]
    fn an_inline_forward_is_rebuilt() {
        let report = "From: bob@acme.test\r\nSubject: Fwd: Cheap watches\r\n\r\nspam, please block\r\n\r\n---------- Forwarded message ---------\r\nFrom: Pitch <pitch@sender.test>\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\nSubject: Cheap watches\r\nTo: <bob@acme.test>\r\n\r\nBuy now.\r\n";
        let got = String::from_utf8(extract(report.as_bytes())).unwrap();
        assert!(
            got.starts_with("From: Pitch <pitch@sender.test>\r\nDate: Mon"),
            "{got}"
        );
        assert!(
            got.contains("Subject: Cheap watches\r\nTo: <bob@acme.test>\r\n\r\nBuy now."),
            "{got}"
        );
        assert!(
            !got.contains("please block"),
            "the user's note is not the original: {got}"
        );
    }

    #[test]
    fn without_a_forward_the_report_text_is_learnt() {
        let got =
            extract(b"From: bob@acme.test\r\nSubject: Fwd: FW: Cheap watches\r\n\r\nBuy now.\r\n");
        assert_eq!(got, b"Subject: Cheap watches\r\n\r\nBuy now.\r\n");
    }

    #[test]
    fn the_same_message_with_other_trace_headers_is_one_message() {
        let a = b"Received: from a\r\nMessage-ID: <x@y>\r\n\r\nbody  \r\nline\r\n";
        let b = b"Received: from b\r\nReceived: from c\r\nMessage-Id: <x@y>\r\n\r\nbody\nline\n";
        assert_eq!(digest(a), digest(b));
        assert_ne!(digest(a), digest(b"Message-ID: <x@y>\r\n\r\nother\r\n"));
    }
}
