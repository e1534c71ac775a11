//! The tokens of a message, as our own classifier (`model.rs`) counts them: the way proven
//! statistical filters do it (SpamBayes' tokenizer, bogofilter's lexer), kept small.
//!
//! | token | from |
//! |---|---|
//! | `word` | words of 3..=12 characters of the decoded text and the text of the HTML (tags dropped), lower case |
//! | `skip:C N` | a longer word: its first character and its length in tens (SpamBayes' "skip" tokens) |
//! | `email:DOMAIN` | an address in the text |
//! | `subject:word` | words of the decoded subject, and its runs of `!`, `$` |
//! | `from:ADDR`, `from:@DOMAIN` | the header `From` |
//! | `reply-to:@DOMAIN`, `mid:@DOMAIN` | `Reply-To`, the `Message-ID`'s domain |
//! | `mailer:WORDS` | the first two words of `X-Mailer` / `User-Agent` |
//! | `ctype:TYPE` | the message's top `Content-Type` |
//! | `rcvd:NAME`, `rcvd-ip:A.B.C`, `rcvd-ip:A.B` | hosts and client networks named in `Received` |
//! | `url:HOST`, `url:DOMAIN` | URL hosts and their last two labels |
//! | `att:TYPE`, `att-ext:EXT` | attachments: the type by content, the name's extension |
//!
//! The same function reads a message at scan time and when it is taught (the teacher decodes
//! the original with the scanner's own decoder), so what is learnt is what is later looked up.
//! Tokens are hashed (64 bits) for the model; a message gives at most [`MAX_PER_MESSAGE`]
//! distinct tokens (the first ones: headers, subject, then the text).

use std::collections::HashSet;

use crate::engine::scan::check::Url;
use crate::engine::scan::decode::Decoded;

/// Distinct tokens taken from one message.
pub const MAX_PER_MESSAGE: usize = 2_000;

/// The message's distinct tokens, in order of first appearance.
pub fn tokenize(d: &Decoded<'_>, urls: &[Url]) -> Vec<String> {
    let mut t = Tokens::default();
    for (name, value) in &d.headers {
        let v = value.to_ascii_lowercase();
        match name.as_str() {
            "from" => {
                for a in &d.from {
                    t.push(format!("from:{a}"));
                    if let Some((_, dom)) = a.rsplit_once('@') {
                        t.push(format!("from:@{dom}"));
                    }
                }
            }
            "reply-to" => {
                if let Some(dom) = domain_of(&v) {
                    t.push(format!("reply-to:@{dom}"));
                }
            }
            "message-id" => {
                if let Some(dom) = domain_of(&v) {
                    t.push(format!("mid:@{dom}"));
                }
            }
            "x-mailer" | "user-agent" => {
                let w: Vec<&str> = v.split_whitespace().take(2).collect();
                t.push(format!("mailer:{}", w.join(" ")));
            }
            "content-type" => {
                let ty = v.split(';').next().unwrap_or_default().trim();
                t.push(format!("ctype:{ty}"));
            }
            "received" => received(&v, &mut t),
            _ => {}
        }
    }
    for w in d.subject.split_whitespace() {
        let w = w.to_lowercase();
        let trimmed = w.trim_matches(|c: char| !c.is_alphanumeric());
        if (1..=20).contains(&trimmed.chars().count()) {
            t.push(format!("subject:{trimmed}"));
        }
        for run in ["!!", "$"] {
            if w.contains(run) {
                t.push(format!("subject:{run}"));
            }
        }
    }
    for u in urls {
        t.push(format!("url:{}", u.host));
        let labels: Vec<&str> = u.host.rsplitn(3, '.').collect();
        if labels.len() >= 2 {
            t.push(format!("url:{}.{}", labels[1], labels[0]));
        }
    }
    for o in &d.objects {
        if o.name.is_some()
            || o.declared
                .as_deref()
                .is_some_and(|c| !c.starts_with("text/"))
        {
            t.push(format!("att:{}", o.kind.name()));
            if let Some(ext) = o.name.as_deref().and_then(|n| n.rsplit_once('.')) {
                t.push(format!("att-ext:{}", ext.1.to_ascii_lowercase()));
            }
        }
    }
    words(&d.text, &mut t);
    words(&strip_tags(&d.html), &mut t);
    t.out
}

#[derive(Default)]
struct Tokens {
    seen: HashSet<String>,
    out: Vec<String>,
}

impl Tokens {
    fn push(&mut self, tok: String) {
        if self.out.len() < MAX_PER_MESSAGE && !self.seen.contains(&tok) {
            self.seen.insert(tok.clone());
            self.out.push(tok);
        }
    }
}

fn words(text: &str, t: &mut Tokens) {
    for w in text.split_whitespace() {
        if t.out.len() >= MAX_PER_MESSAGE {
            return;
        }
        let w = w.trim_matches(|c: char| {
            matches!(
                c,
                '.' | ',' | ';' | ':' | '!' | '?' | '"' | '\'' | '(' | ')' | '[' | ']' | '<' | '>'
            )
        });
        let n = w.chars().count();
        if n < 3 {
            continue;
        }
        if n <= 12 {
            t.push(w.to_lowercase());
        } else if let Some(dom) = w.rsplit_once('@').map(|(_, d)| d) {
            t.push(format!("email:{}", dom.to_lowercase()));
        } else {
            let c = w.chars().next().unwrap_or('?').to_lowercase();
            t.push(format!("skip:{c} {}", n / 10 * 10));
        }
    }
}

/// The text of HTML source: tags, comments and entities' markup dropped.
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// `local@domain` inside a header value (`<x@y>`, `Name <x@y>`).
fn domain_of(v: &str) -> Option<&str> {
    let (_, rest) = v.rsplit_once('@')?;
    let dom = rest.split(|c: char| c == '>' || c.is_whitespace()).next()?;
    (!dom.is_empty()).then_some(dom)
}

/// Host names (their last two labels) and IPv4 networks of a `Received` field.
fn received(v: &str, t: &mut Tokens) {
    for part in v.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ';') {
        let p = part.trim_matches(|c: char| c == '[' || c == ']');
        let octets: Vec<&str> = p.split('.').collect();
        if octets.len() == 4 && octets.iter().all(|o| o.parse::<u8>().is_ok()) {
            t.push(format!("rcvd-ip:{}.{}.{}", octets[0], octets[1], octets[2]));
            t.push(format!("rcvd-ip:{}.{}", octets[0], octets[1]));
        } else if octets.len() >= 2
            && octets
                .iter()
                .all(|o| !o.is_empty() && o.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            && octets
                .last()
                .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_alphabetic()))
        {
            let n = octets.len();
            t.push(format!("rcvd:{}.{}", octets[n - 2], octets[n - 1]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::scan::budget::Budget;

    #[test]
    fn headers_subject_urls_and_words_become_tokens() {
        let raw = b"Received: from mx.example.net ([192.0.2.7]) by mail.acme.test\r\n\
From: Eve <eve@sender.example>\r\nSubject: FREE money!!\r\n\r\n\
Visit http://www.cheap.example/x now, supercalifragilistic word.\r\n";
        let limits = crate::config::policy::ScanLimits::default();
        let mut b = Budget::new(&limits, std::time::Instant::now());
        let d = crate::engine::scan::decode::decode(raw, &mut b, 1 << 20);
        let urls = crate::engine::scan::check::extract_urls(&d.text, &d.html);
        let t = tokenize(&d, &urls);
        for want in [
            "from:eve@sender.example",
            "from:@sender.example",
            "subject:free",
            "subject:!!",
            "rcvd-ip:192.0.2",
            "rcvd:example.net",
            "url:cheap.example",
            "visit",
            "skip:s 20",
        ] {
            assert!(t.iter().any(|x| x == want), "{want} not in {t:?}");
        }
    }
}
