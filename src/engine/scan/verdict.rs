//! How a decision is told: the SMTP replies, the one-line summary (logs, `queue show`), the
//! `X-Maildistiller-Verdict` header and the spam headers, and rewriting the message's header
//! block when it is spooled (our headers first, forged copies of them removed, the subject
//! prefix of `tag`).
//!
//! Everything here is text built from findings whose details are already one line and
//! clipped; replies to the sender carry only a fixed phrase and the reference id, never
//! anything quoted from the message.

use std::fmt::Write as _;

use crate::engine::policy::finding::Category;
use crate::engine::policy::finding::clip;
use crate::engine::policy::{Decision, Grounds, ListHit};
use crate::smtp::{Enhanced, Reply};

/// Header fields that only we may write: removed from incoming messages.
pub const OWN_HEADERS: &[&str] = &["x-maildistiller-verdict"];

/// A reference id as it may appear in replies and headers.
pub fn safe_ref(id: &str) -> String {
    let s: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    if s.is_empty() { "none".into() } else { s }
}

/// The 550 for a rejection: a fixed phrase for the grounds and the reference id, nothing
/// quoted from the message.
pub fn reject_reply(grounds: Grounds, reference: &str) -> Reply {
    let phrase = match grounds {
        Grounds::Virus => "Message rejected: virus detected",
        Grounds::Spam => "Message rejected as spam",
        Grounds::Attachment => "Message rejected: attachment type not allowed",
        Grounds::Unscannable => "Message rejected: it could not be scanned",
        Grounds::Policy | Grounds::Clean | Grounds::Failure => "Message rejected by policy",
    };
    Reply::new(
        550,
        Enhanced::new(5, 7, 1),
        format!("{phrase} (ref {})", safe_ref(reference)),
    )
}

/// The 451 when a scanner failed and the policy says temp-fail.
pub fn tempfail_reply(reference: &str) -> Reply {
    Reply::new(
        451,
        Enhanced::new(4, 7, 1),
        format!(
            "Message could not be scanned now, try again later (ref {})",
            safe_ref(reference)
        ),
    )
}

/// Findings worth citing in a short form: those that scored or that are not only spam signals.
fn cited(d: &Decision) -> impl Iterator<Item = &crate::engine::policy::finding::Finding> {
    d.findings
        .iter()
        .filter(|f| f.score != 0.0 || f.category != Category::Spam)
}

/// `X-Maildistiller-Verdict: action=tag; score=6.5; policy=default@…; ref=…; [failed=…;]
/// [listed=LEVEL allow|block ENTRY;] findings=…` (a list entry is an address, a domain or a
/// network from the config or a user's own list: no message text).
pub fn verdict_header(action: &str, d: &Decision, policy: &str, reference: &str) -> String {
    let mut findings: Vec<String> = cited(d)
        .take(20)
        .map(|f| format!("{}({:+.1})", f.name, f.score))
        .collect();
    if findings.is_empty() {
        findings.push("none".into());
    }
    let mut parts = vec![
        format!("action={action}"),
        format!("score={:.1}", d.score),
        format!("policy={policy}"),
        format!("ref={}", safe_ref(reference)),
    ];
    if !d.failures.is_empty() {
        let failed: Vec<&str> = d.failures.iter().map(|f| f.scanner).collect();
        parts.push(format!("failed={}", failed.join(",")));
    }
    match &d.list {
        ListHit::None => {}
        ListHit::Allow { level, entry } => parts.push(format!("listed={level} allow {entry}")),
        ListHit::Block { level, entry } => parts.push(format!("listed={level} block {entry}")),
    }
    parts.push(format!("findings={}", findings.join(" ")));
    fold("X-Maildistiller-Verdict", &parts)
}

/// A header field from `; `-separated parts, folded before 78 columns where it can be.
fn fold(name: &str, parts: &[String]) -> String {
    let mut out = format!("{name}:");
    let mut col = out.len();
    for (i, p) in parts.iter().enumerate() {
        let sep = if i + 1 < parts.len() { ";" } else { "" };
        for (j, word) in p.split(' ').enumerate() {
            let piece = if j + 1 == p.split(' ').count() {
                format!("{word}{sep}")
            } else {
                word.to_owned()
            };
            if col + 1 + piece.len() > 76 && col > name.len() + 1 {
                out.push_str("\r\n\t");
                col = 1;
            } else {
                out.push(' ');
                col += 1;
            }
            out.push_str(&piece);
            col += piece.len();
        }
    }
    out.push_str("\r\n");
    out
}

/// The one line for logs and `queue show`.
pub fn summary(
    action: &str,
    d: &Decision,
    policy: &str,
    tenant: &str,
    reference: &str,
    shadows: &[(String, Decision)],
    extra: &str,
) -> String {
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "action={action} ref={} tenant={tenant} policy={policy} score={:.1} reason=\"{}\"",
        safe_ref(reference),
        d.score,
        clip(&d.reason, 200).replace('"', "'")
    );
    let findings: Vec<String> = d
        .findings
        .iter()
        .take(40)
        .map(|f| format!("{}={:+.1} ({})", f.name, f.score, clip(&f.detail, 100)))
        .collect();
    let _ = write!(s, " findings=\"{}\"", findings.join("; ").replace('"', "'"));
    if !d.failures.is_empty() {
        let failed: Vec<String> = d
            .failures
            .iter()
            .map(|f| format!("{}: {}", f.scanner, clip(&f.error, 100)))
            .collect();
        let _ = write!(s, " failures=\"{}\"", failed.join("; ").replace('"', "'"));
    }
    match &d.list {
        ListHit::None => {}
        ListHit::Allow { level, entry } => {
            let _ = write!(s, " listed=\"{level} allow {entry}\"");
        }
        ListHit::Block { level, entry } => {
            let _ = write!(s, " listed=\"{level} block {entry}\"");
        }
    }
    for (label, sd) in shadows {
        let _ = write!(
            s,
            " shadow=\"{label} {} score={:.1}\"",
            sd.disposition.as_str(),
            sd.score
        );
    }
    s.push(' ');
    s.push_str(extra);
    s
}

/// The message as spooled: the message's own header fields minus our headers (and
/// `Authentication-Results` claiming our authserv-id, RFC 8601 §5), with `add` (header fields
/// ending in CRLF) right below the first field when that is a `Received:` (the engine's own:
/// this hop's trace block stays together and the top `Received:` stays this hop's) or at the
/// top otherwise; the subject prefixed when `prefix` is set; the body untouched.
pub fn rewrite(
    message: Vec<u8>,
    add: &str,
    prefix: Option<&str>,
    authserv_id: Option<&str>,
) -> Vec<u8> {
    let head_len = header_len(&message);
    let mut out = Vec::with_capacity(message.len() + add.len() + 64);
    let mut saw_subject = false;
    let mut fields = Vec::new();
    let mut start = 0;
    let head = &message[..head_len];
    // Split the header block into fields (a field ends before a line that does not start
    // with white space).
    let mut i = 0;
    while i < head.len() {
        let end = head[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head.len(), |p| i + p + 1);
        let next_starts_field = end >= head.len() || !matches!(head[end], b' ' | b'\t');
        if next_starts_field {
            fields.push(&head[start..end]);
            start = end;
        }
        i = end;
    }
    let below_received = fields
        .first()
        .is_some_and(|f| f.len() > 9 && f[..9].eq_ignore_ascii_case(b"received:"));
    let mut added = false;
    if !below_received {
        out.extend_from_slice(add.as_bytes());
        added = true;
    }
    for (i, f) in fields.into_iter().enumerate() {
        if i == 1 && !added {
            out.extend_from_slice(add.as_bytes());
            added = true;
        }
        let colon = f.iter().position(|&b| b == b':');
        let name = colon.map(|c| String::from_utf8_lossy(&f[..c]).trim().to_ascii_lowercase());
        let value = colon.map(|c| &f[c + 1..]).unwrap_or_default();
        match name.as_deref() {
            Some(n) if OWN_HEADERS.contains(&n) => continue,
            Some("authentication-results") if authserv_id.is_some_and(|id| claims(value, id)) => {
                continue;
            }
            Some("subject") if prefix.is_some() && !saw_subject => {
                saw_subject = true;
                let p = prefix.unwrap_or_default();
                let v = String::from_utf8_lossy(value);
                if v.trim_start().starts_with(p.trim()) {
                    out.extend_from_slice(f);
                } else {
                    out.extend_from_slice(b"Subject: ");
                    out.extend_from_slice(p.as_bytes());
                    out.extend_from_slice(v.trim_start().as_bytes());
                }
                continue;
            }
            _ => {}
        }
        out.extend_from_slice(f);
    }
    let tail_more = !added && !add.is_empty() || prefix.is_some() && !saw_subject;
    if tail_more && !out.is_empty() && !out.ends_with(b"\n") {
        // A header block that ends without a line end (a message without body).
        out.extend_from_slice(b"\r\n");
    }
    if !added {
        // The header block held only the Received field.
        out.extend_from_slice(add.as_bytes());
    }
    if let (Some(p), false) = (prefix, saw_subject) {
        out.extend_from_slice(format!("Subject: {}\r\n", p.trim()).as_bytes());
    }
    out.extend_from_slice(&message[head_len..]);
    out
}

/// Whether an `Authentication-Results` value starts with this authserv-id.
fn claims(value: &[u8], id: &str) -> bool {
    let v = String::from_utf8_lossy(value);
    let first = v
        .trim_start()
        .split(|c: char| c == ';' || c.is_whitespace())
        .next()
        .unwrap_or_default();
    first.eq_ignore_ascii_case(id)
}

/// Length of the header block up to and excluding the empty line (or everything when there
/// is none).
fn header_len(m: &[u8]) -> usize {
    if m.starts_with(b"\r\n") || m.starts_with(b"\n") {
        return 0;
    }
    let mut i = 0;
    while let Some(p) = m[i..].iter().position(|&b| b == b'\n') {
        let line_start = i + p + 1;
        if m[line_start..].starts_with(b"\r\n") || m[line_start..].starts_with(b"\n") {
            return line_start;
        }
        i = line_start;
    }
    m.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_adds_strips_and_prefixes() {
        let msg = b"Received: by us\r\nX-Maildistiller-Verdict: action=deliver;\r\n\tforged=yes\r\nAuthentication-Results: mx.us.example; spf=pass\r\nAuthentication-Results: other.example; spf=fail\r\nSubject: hello\r\n world\r\n\r\nbody\r\nSubject: not a header\r\n".to_vec();
        let out = rewrite(
            msg,
            "X-Maildistiller-Verdict: action=tag\r\n",
            Some("[SPAM] "),
            Some("mx.us.example"),
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "Received: by us\r\nX-Maildistiller-Verdict: action=tag\r\nAuthentication-Results: other.example; spf=fail\r\nSubject: [SPAM] hello\r\n world\r\n\r\nbody\r\nSubject: not a header\r\n"
        );
    }

    #[test]
    fn rewrite_without_subject_or_body() {
        let out = rewrite(b"From: a@b.example\r\n".to_vec(), "", Some("[SPAM] "), None);
        assert_eq!(out, b"From: a@b.example\r\nSubject: [SPAM]\r\n");
    }

    #[test]
    fn replies_quote_nothing_from_the_message() {
        assert_eq!(
            reject_reply(Grounds::Virus, "Q1\r\n250 ok").to_string(),
            "550 5.7.1 Message rejected: virus detected (ref Q1250ok)"
        );
        assert!(tempfail_reply("Q2").to_string().starts_with("451 4.7.1 "));
    }

    #[test]
    fn folded_header_lines_stay_short() {
        let parts: Vec<String> = (0..30).map(|i| format!("k{i}=value{i}")).collect();
        let h = fold("X-Test", &parts);
        assert!(h.ends_with("\r\n"));
        for line in h.split("\r\n") {
            assert!(line.len() <= 78, "{line:?}");
        }
    }
}
