//! A message as the page shows it: the headers that matter, the text part, the HTML part made
//! inert, and the attachments. mail-parser decodes (MIME, base64/QP, charsets); ammonia
//! sanitises.
//!
//! What sanitised HTML may contain: ammonia's safe tag set, no `<script>`, `<style>`, `<form>`,
//! `<iframe>`, `<object>`, no event handlers, no `javascript:`/`data:` links (only `http`,
//! `https` and `mailto`), no relative URLs; `style` attributes only with layout-harmless
//! properties and never a `url(...)`; images only from the message itself (`cid:` parts become
//! `data:` URLs, at most `MAX_INLINE_IMAGES` bytes in all) unless the user asked for remote
//! images. Every link opens in a new tab with `noopener noreferrer` and is followed by its real
//! target in plain text, so a link cannot pretend to go somewhere else. The result is served in
//! a sandboxed frame with its own CSP (see `handlers.rs`): even a sanitiser bug cannot run script.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::{
    BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};
use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::secret::base64;

/// Bytes of `cid:` images inlined into one message's HTML.
pub const MAX_INLINE_IMAGES: usize = 5 << 20;

/// An attachment as listed.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub index: usize,
    pub name: String,
    pub content_type: String,
    pub size: usize,
}

/// The parts of a message the page shows.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub from: String,
    pub to: String,
    pub cc: String,
    pub reply_to: String,
    pub subject: String,
    pub date: String,
    pub text: Option<String>,
    pub has_html: bool,
    pub attachments: Vec<Attachment>,
}

fn addresses(a: Option<&mail_parser::Address<'_>>) -> String {
    let Some(a) = a else { return String::new() };
    a.iter()
        .map(|x| match (x.name(), x.address()) {
            (Some(n), Some(ad)) => format!("{n} <{ad}>"),
            (None, Some(ad)) => ad.to_owned(),
            (Some(n), None) => n.to_owned(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decodes RFC 2047 encoded words of a raw header value as the spool keeps it (`Subject`,
/// `From`); other values are returned as they are (cheap: most values have none).
pub fn decode_header(name: &str, raw: &str) -> String {
    if !raw.contains("=?") {
        return raw.to_owned();
    }
    let text = format!("{name}: {raw}\r\n\r\n");
    let Some(m) = MessageParser::default().parse_headers(text.as_bytes()) else {
        return raw.to_owned();
    };
    let decoded = match name {
        "From" => Some(addresses(m.from())),
        _ => m.subject().map(str::to_owned),
    };
    decoded
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| raw.to_owned())
}

/// Parses a message for the page. Blocking (decoding a large message takes a while).
pub fn view(raw: &[u8]) -> View {
    let Some(m) = MessageParser::default().parse(raw) else {
        return View {
            text: Some(String::from_utf8_lossy(raw).into_owned()),
            ..View::default()
        };
    };
    let real_text = m
        .text_bodies()
        .find(|p| matches!(p.body, PartType::Text(_)))
        .and_then(|p| p.text_contents().map(str::to_owned));
    let has_html = m.html_bodies().any(|p| matches!(p.body, PartType::Html(_)));
    let text = real_text.or_else(|| m.body_text(0).map(Cow::into_owned));
    let attachments = m
        .attachments()
        .enumerate()
        .map(|(index, p)| Attachment {
            index,
            name: part_name(p, index),
            content_type: p
                .content_type()
                .map(|c| match c.subtype() {
                    Some(s) => format!("{}/{s}", c.ctype()),
                    None => c.ctype().to_owned(),
                })
                .unwrap_or_else(|| "application/octet-stream".into()),
            size: p.contents().len(),
        })
        .collect();
    View {
        from: addresses(m.from()),
        to: addresses(m.to()),
        cc: addresses(m.cc()),
        reply_to: addresses(m.reply_to()),
        subject: m.subject().unwrap_or("").to_owned(),
        date: m.date().map(|d| d.to_rfc822()).unwrap_or_default(),
        text,
        has_html,
        attachments,
    }
}

/// A file name for a part: its own (made safe for a download header), else `part-N.bin`.
fn part_name(p: &mail_parser::MessagePart<'_>, index: usize) -> String {
    let name: String = p
        .attachment_name()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\\' | '/' | ';'))
        .take(200)
        .collect();
    let name = name.trim().trim_start_matches('.').to_owned();
    if name.is_empty() {
        let ext = if p.message().is_some() { "eml" } else { "bin" };
        format!("part-{}.{ext}", index + 1)
    } else {
        name
    }
}

/// Attachment `index`: (file name, decoded bytes).
pub fn attachment(raw: &[u8], index: usize) -> Option<(String, Vec<u8>)> {
    let m = MessageParser::default().parse(raw)?;
    let p = m.attachments().nth(index)?;
    Some((part_name(p, index), p.contents().to_vec()))
}

/// The sanitised HTML part (see the module docs), or `None` when there is none.
pub fn safe_html(raw: &[u8], remote: bool) -> Option<String> {
    let m = MessageParser::default().parse(raw)?;
    let html = m.html_bodies().find_map(|p| match &p.body {
        PartType::Html(h) => Some(h.clone()),
        _ => None,
    })?;
    let mut inline = HashMap::new();
    let mut budget = MAX_INLINE_IMAGES;
    for p in m.attachments() {
        let (Some(cid), Some(ct)) = (p.content_id(), p.content_type()) else {
            continue;
        };
        let image = ct.ctype().eq_ignore_ascii_case("image")
            && ct.subtype().is_some_and(|s| {
                ["png", "jpeg", "jpg", "gif", "webp"].contains(&s.to_ascii_lowercase().as_str())
            });
        let data = p.contents();
        if image && data.len() <= budget {
            budget -= data.len();
            let sub = ct.subtype().unwrap_or("png").to_ascii_lowercase();
            inline.insert(
                cid.trim_matches(['<', '>']).to_owned(),
                format!("data:image/{sub};base64,{}", base64(data)),
            );
        }
    }
    Some(sanitise(&html, remote, inline))
}

/// Style properties kept in `style` attributes: text and box cosmetics, nothing that moves
/// content out of its place or loads anything.
const STYLE_PROPERTIES: &[&str] = &[
    "color",
    "background-color",
    "font-family",
    "font-size",
    "font-style",
    "font-weight",
    "text-align",
    "text-decoration",
    "line-height",
    "vertical-align",
    "margin",
    "margin-top",
    "margin-bottom",
    "margin-left",
    "margin-right",
    "padding",
    "padding-top",
    "padding-bottom",
    "padding-left",
    "padding-right",
    "border",
    "border-collapse",
    "border-color",
    "border-style",
    "border-width",
    "width",
    "max-width",
    "height",
];

/// Sanitises `html`. `inline` maps content ids to `data:` URLs; `remote` keeps `http(s)` images.
pub fn sanitise(html: &str, remote: bool, inline: HashMap<String, String>) -> String {
    let mut b = ammonia::Builder::default();
    b.url_schemes(HashSet::from(["http", "https", "mailto", "cid", "data"]))
        .url_relative(ammonia::UrlRelative::Deny)
        .link_rel(Some("noopener noreferrer nofollow"))
        .add_generic_attributes(["style", "align", "bgcolor", "valign"])
        .add_tag_attributes("img", ["width", "height"])
        .add_tag_attributes("td", ["width", "height", "colspan", "rowspan"])
        .set_tag_attribute_value("a", "target", "_blank")
        .filter_style_properties(STYLE_PROPERTIES.iter().copied().collect())
        .attribute_filter(move |element, attribute, value| {
            let v = value.trim();
            let lower = v.to_ascii_lowercase();
            match (element, attribute) {
                (_, "style")
                    if ["url(", "expression(", "image-set(", "@import", "\\"]
                        .iter()
                        .any(|x| lower.contains(x)) =>
                {
                    None
                }
                ("img", "src") => {
                    if let Some(cid) = lower.strip_prefix("cid:") {
                        inline
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(cid))
                            .map(|(_, d)| Cow::Owned(d.clone()))
                    } else if remote && (lower.starts_with("https:") || lower.starts_with("http:"))
                    {
                        Some(value.into())
                    } else {
                        None
                    }
                }
                // `cid:` and `data:` are allowed schemes only for images (above).
                (_, "href") if lower.starts_with("cid:") || lower.starts_with("data:") => None,
                _ => Some(value.into()),
            }
        });
    show_link_targets(&b.clean(html).to_string())
}

/// Text for HTML: every character that could start markup or an entity is escaped.
fn escape_text(s: &str) -> String {
    crate::ops::esc(s)
}

/// An attribute value for a double-quoted attribute.
fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes the sanitised markup back token by token (as html5ever's tokenizer reads it, the way
/// a browser does) and, after each `</a>`, the link's real target in plain text: the `href`
/// attribute *as parsed*, so text that merely looks like `href="…"` inside another attribute's
/// value (`<a title="x href=" href="https://evil.example/">`) cannot stand in for it.
struct LinkTargets {
    out: std::cell::RefCell<String>,
    /// The `href` of the `<a>` open now.
    href: std::cell::RefCell<Option<String>>,
}

impl TokenSink for LinkTargets {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        let mut out = self.out.borrow_mut();
        match token {
            Token::TagToken(tag) => {
                let name: &str = &tag.name;
                match tag.kind {
                    TagKind::StartTag => {
                        out.push('<');
                        out.push_str(name);
                        for a in &tag.attrs {
                            out.push(' ');
                            if let Some(p) = &a.name.prefix {
                                out.push_str(p);
                                out.push(':');
                            }
                            out.push_str(&a.name.local);
                            out.push_str("=\"");
                            out.push_str(&escape_attr(&a.value));
                            out.push('"');
                        }
                        out.push('>');
                        if name == "a" {
                            *self.href.borrow_mut() = tag
                                .attrs
                                .iter()
                                .find(|a| a.name.prefix.is_none() && &*a.name.local == "href")
                                .map(|a| a.value.to_string());
                        }
                    }
                    TagKind::EndTag => {
                        out.push_str("</");
                        out.push_str(name);
                        out.push('>');
                        if name == "a"
                            && let Some(target) = self.href.borrow_mut().take()
                        {
                            let shown = target.strip_prefix("mailto:").unwrap_or(&target);
                            out.push_str(&format!(
                                " <span class=\"link-target\">[{}]</span>",
                                escape_text(shown)
                            ));
                        }
                    }
                }
            }
            Token::CharacterTokens(t) => out.push_str(&escape_text(&t)),
            // The sanitiser wrote no comments or doctype; a NUL has no business in a page.
            Token::CommentToken(_)
            | Token::DoctypeToken(_)
            | Token::NullCharacterToken
            | Token::EOFToken
            | Token::ParseError(_) => {}
        }
        TokenSinkResult::Continue
    }
}

/// After each `<a href=…>…</a>` of sanitised markup, adds the link's real target in plain text
/// (see [`LinkTargets`]).
fn show_link_targets(clean: &str) -> String {
    let sink = LinkTargets {
        out: std::cell::RefCell::new(String::with_capacity(clean.len() + 64)),
        href: std::cell::RefCell::new(None),
    };
    let tokenizer = Tokenizer::new(sink, TokenizerOpts::default());
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(clean));
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    tokenizer.sink.out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = r#"<html><head><style>body{background:url(https://evil.example/bg)}</style>
<script>document.title='pwned'</script><link rel=stylesheet href="https://evil.example/x.css"></head>
<body onload="alert(1)"><p style="position:fixed;top:0;color:red">Hi</p>
<img src="https://evil.example/track.png" onerror="alert(2)"><img src=cid:logo@x>
<a href="javascript:alert(3)">click</a> <a href="https://bank.example.evil.example/login">https://bank.example/</a>
<form action="https://evil.example/steal"><input name=pw></form>
<iframe src="https://evil.example/"></iframe><svg onload=alert(4)></svg>
<div style="background-image:url(https://evil.example/x)">bg</div><a href="/inbox">rel</a></body></html>"#;

    #[test]
    fn hostile_html_is_inert_and_links_show_their_target() {
        let inline =
            HashMap::from([("logo@x".to_owned(), "data:image/png;base64,AAAA".to_owned())]);
        let out = sanitise(HOSTILE, false, inline);
        let lower = out.to_lowercase();
        for bad in [
            "<script",
            "<style",
            "<link",
            "<form",
            "<input",
            "<iframe",
            "<svg",
            "onload",
            "onerror",
            "javascript:",
            "evil.example/track",
            "evil.example/bg",
            "url(",
            "position",
            "href=\"/inbox",
        ] {
            assert!(!lower.contains(bad), "{bad} survived: {out}");
        }
        assert!(out.contains("color:red"), "{out}");
        assert!(out.contains("src=\"data:image/png;base64,AAAA\""), "{out}");
        assert!(
            out.contains("https://bank.example/</a> <span class=\"link-target\">[https://bank.example.evil.example/login]</span>"),
            "{out}"
        );
        assert!(
            out.contains("target=\"_blank\"") && out.contains("noopener"),
            "{out}"
        );
        let with_remote = sanitise(HOSTILE, true, HashMap::new());
        assert!(
            with_remote.contains("https://evil.example/track.png"),
            "{with_remote}"
        );
        assert!(!with_remote.contains("onerror"));
    }

    /// The target shown is the `href` the browser follows, whatever other attributes hold:
    /// `href="` inside a title, a `>` or a whole `<a href=…>` inside an attribute value.
    #[test]
    fn link_targets_come_from_the_parsed_attribute() {
        for (html, real) in [
            (
                r#"<a title="x href=" href="https://evil.example/steal">https://bank.example/</a>"#,
                "https://evil.example/steal",
            ),
            (
                r#"<a title='href="https://bank.example/"' href="https://evil.example/a">x</a>"#,
                "https://evil.example/a",
            ),
            (
                r#"<a title="a > b" href="https://evil.example/b">x</a>"#,
                "https://evil.example/b",
            ),
            (
                r#"<a title="<a href=&quot;https://bank.example/&quot;>" href="https://evil.example/c">x</a>"#,
                "https://evil.example/c",
            ),
        ] {
            let out = sanitise(html, false, HashMap::new());
            let shown: Vec<&str> = out
                .split("<span class=\"link-target\">[")
                .skip(1)
                .map(|s| s.split(']').next().unwrap())
                .collect();
            assert_eq!(shown, [real], "{html} -> {out}");
            assert!(
                !out.contains("[https://bank.example/]"),
                "the decoy is not shown as the target: {out}"
            );
            assert_eq!(out.matches("<a ").count(), 1, "{out}");
        }
        // No link, no target; a link without href shows none.
        assert!(
            !sanitise("<p>a &lt;b&gt; c</p><a>x</a>", false, HashMap::new())
                .contains("link-target")
        );
    }

    #[test]
    fn link_targets_are_escaped_text() {
        let out = sanitise(
            r#"<a href="https://x.example/?a=1&amp;b=<b>">x</a>"#,
            false,
            HashMap::new(),
        );
        assert!(!out.contains("<b>"), "{out}");
        assert!(
            out.contains("[https://x.example/?a=1&amp;b=%3Cb%3E]") || out.contains("&lt;b&gt;"),
            "{out}"
        );
    }

    #[test]
    fn views_find_parts_and_attachments() {
        let raw = b"From: Alice <a@x.example>\r\nTo: bob@acme.example\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
--b\r\nContent-Type: application/pdf; name=\"../../inv\\\"oice.pdf\"\r\nContent-Disposition: attachment\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n";
        let v = view(raw);
        assert_eq!(v.subject, "café");
        assert_eq!(v.from, "Alice <a@x.example>");
        assert_eq!(v.text.as_deref().map(str::trim), Some("hello"));
        assert!(!v.has_html);
        assert_eq!(v.attachments.len(), 1);
        assert_eq!(v.attachments[0].content_type, "application/pdf");
        assert!(!v.attachments[0].name.contains('/') && !v.attachments[0].name.contains('"'));
        assert_eq!(attachment(raw, 0).unwrap().1, b"%PDF-");
        assert!(attachment(raw, 1).is_none());
        assert_eq!(
            decode_header("Subject", "=?utf-8?q?caf=C3=A9?= ok"),
            "café ok"
        );
        assert_eq!(
            decode_header("From", "=?utf-8?q?Jos=C3=A9?= <j@x.example>"),
            "José <j@x.example>"
        );
        assert_eq!(decode_header("Subject", "plain"), "plain");
    }
}
