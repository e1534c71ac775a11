//! Content: GTUBE, the policy's header/subject/body/URL rules (regexes compiled once per policy
//! per snapshot), blocked URL domains, size rules, and a few built-in heuristics whose scores
//! feed the spam score (`heuristic.*`, `malformed.mime`).
//!
//! Rules see decoded text only, bounded by `limits.max_text_bytes`; every regex is compiled with
//! a size limit, and the `regex` crate matches in linear time, so a rule cannot be made to run
//! away on hostile input.

use regex::{Regex, RegexBuilder};

use super::{Check, Subject};
use crate::config::ConfigError;
use crate::config::policy::{PolicyAction, PolicyConfig};
use crate::engine::policy::finding::clip;
use crate::engine::policy::finding::{Category, CheckError, Finding, Outcome};

const NAME: &str = "content";

/// The Generic Test for Unsolicited Bulk Email (SpamAssassin's).
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// Largest compiled program of one rule.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// URLs kept per message.
const MAX_URLS: usize = 500;

#[derive(Debug, Clone)]
enum Target {
    Subject,
    Body,
    From,
    Header(String),
    AttachmentName,
    Url,
}

#[derive(Debug)]
struct Rule {
    name: String,
    target: Target,
    re: Regex,
    score: f64,
    action: Option<PolicyAction>,
}

#[derive(Debug)]
struct Size {
    name: String,
    above: u64,
    score: f64,
    action: Option<PolicyAction>,
}

#[derive(Debug)]
pub struct ContentCheck {
    rules: Vec<Rule>,
    sizes: Vec<Size>,
    block_domains: Vec<String>,
}

impl ContentCheck {
    /// Compiles the policy's rules; every bad rule is reported with its path.
    pub fn new(path: &str, p: &PolicyConfig) -> Result<ContentCheck, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        for (i, r) in p.rules.iter().enumerate() {
            let rp = format!("{path}.rule[{i}]");
            if !valid_name(&r.name) {
                errors.push(ConfigError::new(
                    format!("{rp}.name"),
                    "rule names are letters, digits, '-' and '_'",
                ));
            }
            let target = match parse_target(&r.target) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(ConfigError::new(format!("{rp}.target"), e));
                    continue;
                }
            };
            match RegexBuilder::new(&r.pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(re) => rules.push(Rule {
                    name: format!("rule.{}", r.name),
                    target,
                    re,
                    score: r.score,
                    action: r.action,
                }),
                Err(e) => errors.push(ConfigError::new(
                    format!("{rp}.pattern"),
                    format!("invalid regular expression: {}", first_line(&e.to_string())),
                )),
            }
        }
        for (i, s) in p.sizes.iter().enumerate() {
            if !valid_name(&s.name) {
                errors.push(ConfigError::new(
                    format!("{path}.size[{i}].name"),
                    "size rule names are letters, digits, '-' and '_'",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ContentCheck {
            rules,
            sizes: p
                .sizes
                .iter()
                .map(|s| Size {
                    name: format!("size.{}", s.name),
                    above: s.above.0,
                    score: s.score,
                    action: s.action,
                })
                .collect(),
            block_domains: p
                .urls
                .block_domains
                .iter()
                .map(|d| d.trim_matches('.').to_ascii_lowercase())
                .collect(),
        })
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_owned()
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_target(t: &str) -> Result<Target, String> {
    Ok(match t {
        "subject" => Target::Subject,
        "body" => Target::Body,
        "from" => Target::From,
        "attachment_name" => Target::AttachmentName,
        "url" => Target::Url,
        _ => match t.strip_prefix("header:") {
            Some(h) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b':') => {
                Target::Header(h.to_ascii_lowercase())
            }
            _ => {
                return Err(format!(
                    "{t:?} is not a target (subject, body, from, header:NAME, attachment_name, url)"
                ));
            }
        },
    })
}

#[async_trait::async_trait]
impl Check for ContentCheck {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, s: &Subject<'_>) -> Result<Outcome, CheckError> {
        let d = s.decoded;
        let mut out = Outcome::default();
        let f = &mut out.findings;
        // memmem (SIMD) rather than str::contains: this runs over every byte of every message.
        let gtube = |t: &str| memchr::memmem::find(t.as_bytes(), GTUBE.as_bytes()).is_some();
        if gtube(&d.text) || gtube(&d.html) {
            f.push(Finding::builtin(
                NAME,
                "gtube",
                Category::Spam,
                "GTUBE test string",
            ));
        }
        for r in &self.rules {
            if let Some(hit) = self.first_match(r, s) {
                f.push(Finding::configured(
                    NAME,
                    r.name.clone(),
                    r.score,
                    r.action,
                    format!("matched {:?}", clip(&hit, 60)),
                ));
            }
        }
        for u in s.urls {
            let host = u.host.as_str();
            if let Some(dom) = self
                .block_domains
                .iter()
                .find(|b| host == b.as_str() || host.ends_with(&format!(".{b}")))
            {
                f.push(Finding::builtin(
                    NAME,
                    "url.blocked",
                    Category::Spam,
                    format!("{} is under {dom}", clip(host, 80)),
                ));
                break;
            }
        }
        let size = s.raw.len() as u64;
        for z in &self.sizes {
            if size > z.above {
                f.push(Finding::configured(
                    NAME,
                    z.name.clone(),
                    z.score,
                    z.action,
                    format!("{size} bytes > {}", z.above),
                ));
            }
        }
        heuristics(s, f);
        Ok(out)
    }
}

impl ContentCheck {
    /// The first matching text of a rule (`None` when it does not match).
    fn first_match(&self, r: &Rule, s: &Subject<'_>) -> Option<String> {
        let d = s.decoded;
        let one = |text: &str| r.re.find(text).map(|m| m.as_str().to_owned());
        match &r.target {
            Target::Subject => one(&d.subject),
            Target::Body => one(&d.text).or_else(|| one(&d.html)),
            Target::From => d.from.iter().find_map(|a| one(a)),
            Target::Header(h) => d
                .headers
                .iter()
                .filter(|(n, _)| n == h)
                .find_map(|(_, v)| one(v)),
            Target::AttachmentName => d
                .objects
                .iter()
                .filter_map(|o| o.name.as_deref())
                .find_map(one),
            Target::Url => s.urls.iter().find_map(|u| one(&u.url)),
        }
    }
}

fn heuristics(s: &Subject<'_>, f: &mut Vec<Finding>) {
    let d = s.decoded;
    if !d.parsed {
        return;
    }
    let has = |name: &str| d.headers.iter().any(|(n, _)| n == name);
    if !has("date") {
        f.push(Finding::builtin(
            NAME,
            "heuristic.missing_date",
            Category::Spam,
            "no Date header",
        ));
    }
    if !has("message-id") {
        f.push(Finding::builtin(
            NAME,
            "heuristic.missing_message_id",
            Category::Spam,
            "no Message-ID header",
        ));
    }
    let letters: Vec<char> = d.subject.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.len() >= 10 && letters.iter().all(|c| c.is_uppercase()) {
        f.push(Finding::builtin(
            NAME,
            "heuristic.subject_all_caps",
            Category::Spam,
            clip(&d.subject, 60),
        ));
    }
    if d.text.trim().is_empty() && !d.html.trim().is_empty() {
        f.push(Finding::builtin(
            NAME,
            "heuristic.html_only",
            Category::Spam,
            "HTML without a text alternative",
        ));
    }
    if let Some(u) = s
        .urls
        .iter()
        .find(|u| u.host.parse::<std::net::IpAddr>().is_ok())
    {
        f.push(Finding::builtin(
            NAME,
            "heuristic.url_ip_host",
            Category::Spam,
            clip(&u.url, 80),
        ));
    }
    if let Some(p) = d.problems.first() {
        let more = d.problems.len() - 1;
        let detail = if more > 0 {
            format!("{p} (+{more} more)")
        } else {
            p.clone()
        };
        f.push(Finding::builtin(
            NAME,
            "malformed.mime",
            Category::Spam,
            detail,
        ));
    }
}

/// A URL found in the text, with its host (lower case, no port, no user info).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub url: String,
    pub host: String,
}

/// URLs in decoded text and HTML source: `http(s)://…` and `www.…`, at most [`MAX_URLS`].
pub fn extract_urls(text: &str, html: &str) -> Vec<Url> {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r#"(?i)\b(?:https?://|www\.)[^\s<>"'(){}\\^`|]+"#).expect("valid regex")
    });
    let mut out = Vec::new();
    for text in [text, html] {
        for m in re.find_iter(text) {
            if out.len() >= MAX_URLS {
                return out;
            }
            let url = m.as_str().trim_end_matches(['.', ',', ';', ':', '!', '?']);
            if let Some(host) = host_of(url) {
                out.push(Url {
                    url: url.to_owned(),
                    host,
                });
            }
        }
    }
    out
}

fn host_of(url: &str) -> Option<String> {
    let rest = match url.find("://") {
        Some(i) => &url[i + 3..],
        None => url,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        host_port.split(':').next()?
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty() && host.len() <= 253).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_hosts() {
        let u = extract_urls(
            "see https://User@Evil.Example:8080/x?y, and www.two.example.",
            "<a href=\"http://[2001:db8::1]/p\">x</a>",
        );
        let hosts: Vec<&str> = u.iter().map(|u| u.host.as_str()).collect();
        assert_eq!(hosts, ["evil.example", "www.two.example", "2001:db8::1"]);
        assert_eq!(u[1].url, "www.two.example");
    }

    #[test]
    fn bad_rules_are_reported_with_their_path() {
        let p = PolicyConfig {
            rules: vec![
                crate::config::policy::RuleConfig {
                    name: "bad name".into(),
                    target: "subjekt".into(),
                    pattern: "(".into(),
                    score: 1.0,
                    action: None,
                },
                crate::config::policy::RuleConfig {
                    name: "ok".into(),
                    target: "header:X-Mailer".into(),
                    pattern: "(".into(),
                    score: 1.0,
                    action: None,
                },
            ],
            ..PolicyConfig::default()
        };
        let errs: Vec<String> = ContentCheck::new("policy.x", &p)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(
            errs.iter().any(|e| e.starts_with("policy.x.rule[0].name")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("policy.x.rule[0].target")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("policy.x.rule[1].pattern")),
            "{errs:?}"
        );
    }
}
