//! Our own first line: what a gateway sees that a content filter alone does not — the real
//! client (PROXY from the edge) and its reverse DNS, the envelope beside the header, where the
//! message's links go, who it claims to be addressed to, and whether this engine has ever seen
//! the sender's domain. In-process and cheap: no lookup but one cached PTR + A/AAAA pair.
//!
//! | finding | when | default score |
//! |---|---|---|
//! | `gateway.no_fcrdns` | a public client address without a PTR name whose A/AAAA leads back to it (the answers say so; a failing resolver adds nothing); not with `scanners.rspamd`, which checks rDNS itself | 1.0 |
//! | `gateway.envelope_mismatch` | envelope sender and header From in different organisations, and no sign of a mailing list or a forwarder (`List-Id`, `List-Unsubscribe`, `Sender`, `Resent-From`, `Precedence: list/bulk`) | 1.0 |
//! | `gateway.url_unrelated` | links to three or more organisations, none of them the sender's (envelope or From) | 1.0 |
//! | `gateway.undisclosed` | no `To`/`Cc`, an empty or "undisclosed" one, or the recipient named nowhere in them (outside mailing lists) | 1.0 |
//! | `gateway.new_sender_domain` | the sender's organisation never seen by this engine — counted only beside another gateway finding | 0.5 |
//!
//! An "organisation" is a domain's last two labels (three under a two-letter country code whose
//! second level is short: `example.co.uk`), a stand-in for the public-suffix list. Scores are the
//! policy's to change (`scores."gateway.envelope_mismatch" = 2.0`); they are deliberately small:
//! each signal is common in legitimate mail on its own, and only together do they say much.
//!
//! Bounds: [`MAX_URL_ORGS`] URL hosts examined per message; the seen-domains memory holds
//! `gateway.remember_domains` organisations (a full memory starts afresh).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::{Check, Subject};
use crate::config::policy::GatewayConfig;
use crate::engine::policy::finding::{Category, CheckError, Finding, Outcome, clip};

const NAME: &str = "gateway";
/// URL hosts looked at per message.
const MAX_URL_ORGS: usize = 200;

pub struct GatewayCheck {
    resolver: Option<Arc<mail_auth::MessageAuthenticator>>,
    remember: usize,
    seen: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for GatewayCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayCheck")
            .field("fcrdns", &self.resolver.is_some())
            .field("remember", &self.remember)
            .finish()
    }
}

impl GatewayCheck {
    /// `resolver` is the policy's (for FCrDNS); `None` turns that signal off.
    pub fn new(
        cfg: &GatewayConfig,
        resolver: Option<Arc<mail_auth::MessageAuthenticator>>,
    ) -> GatewayCheck {
        GatewayCheck {
            resolver: resolver.filter(|_| cfg.fcrdns),
            remember: cfg.remember_domains as usize,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// Remembers `org`; true when it was new.
    fn first_sight(&self, org: &str) -> bool {
        if self.remember == 0 || org.is_empty() {
            return false;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(org) {
            return false;
        }
        if seen.len() >= self.remember {
            seen.clear();
        }
        seen.insert(org.to_owned());
        true
    }
}

/// The organisation of a domain (see the module doc), lower case.
pub fn org(domain: &str) -> String {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = d.split('.').filter(|l| !l.is_empty()).collect();
    let n = labels.len();
    if n <= 2 {
        return labels.join(".");
    }
    let tld = labels[n - 1];
    let second = labels[n - 2];
    let keep = if tld.len() == 2 && second.len() <= 3 {
        3
    } else {
        2
    };
    labels[n - keep.min(n)..].join(".")
}

fn domain_of(addr: &str) -> Option<&str> {
    addr.rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

fn public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

fn finding(name: &str, detail: String) -> Finding {
    Finding::builtin(NAME, name, Category::Spam, detail)
}

/// The signals that need no lookup, in the order of the module doc's table.
pub fn header_signals(s: &Subject<'_>) -> Vec<Finding> {
    let d = s.decoded;
    let mut out = Vec::new();
    if !d.parsed {
        return out;
    }
    let header = |name: &str| {
        d.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let listish = ["list-id", "list-unsubscribe", "list-post", "mailing-list"]
        .iter()
        .any(|h| header(h).is_some())
        || header("precedence").is_some_and(|p| {
            let p = p.to_ascii_lowercase();
            p.contains("list") || p.contains("bulk")
        });
    let forwarded = header("sender").is_some() || header("resent-from").is_some();
    let env_org = domain_of(s.envelope.mail_from).map(org);
    let from_org = d.from.first().and_then(|f| domain_of(f)).map(org);
    if let (Some(e), Some(f)) = (&env_org, &from_org)
        && e != f
        && !listish
        && !forwarded
    {
        out.push(finding(
            "gateway.envelope_mismatch",
            format!("envelope {e}, From {f}"),
        ));
    }
    let mut orgs: Vec<String> = Vec::new();
    for u in s.urls.iter().take(MAX_URL_ORGS) {
        if u.host.parse::<IpAddr>().is_ok() {
            continue; // bare IPs are content's `heuristic.url_ip_host`
        }
        let o = org(&u.host);
        if !orgs.contains(&o) {
            orgs.push(o);
        }
    }
    let own = |o: &String| Some(o) == env_org.as_ref() || Some(o) == from_org.as_ref();
    if orgs.len() >= 3 && !orgs.iter().any(own) {
        out.push(finding(
            "gateway.url_unrelated",
            clip(
                &format!(
                    "{} link domains, none the sender's: {}",
                    orgs.len(),
                    orgs.join(" ")
                ),
                120,
            ),
        ));
    }
    let to = [header("to"), header("cc")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase();
    let named = s
        .envelope
        .rcpts
        .iter()
        .any(|r| to.contains(&r.to_ascii_lowercase()));
    let why = if to.trim().is_empty() {
        Some("no To or Cc")
    } else if to.contains("undisclosed") {
        Some("undisclosed recipients")
    } else if !named && !listish && !forwarded {
        Some("recipient not in To/Cc")
    } else {
        None
    };
    if let Some(w) = why {
        out.push(finding("gateway.undisclosed", w.into()));
    }
    out
}

#[async_trait::async_trait]
impl Check for GatewayCheck {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, s: &Subject<'_>) -> Result<Outcome, CheckError> {
        let mut findings = header_signals(s);
        let ip = s.envelope.client_ip;
        if let Some(r) = &self.resolver
            && public(ip)
        {
            // A resolver in trouble says nothing about the client: no finding then.
            if let Ok(None) = super::super::dns::fcrdns(r, ip).await {
                findings.push(finding(
                    "gateway.no_fcrdns",
                    format!("{ip} has no forward-confirmed PTR"),
                ));
            }
        }
        let sender_org = domain_of(s.envelope.mail_from)
            .or_else(|| s.decoded.from.first().and_then(|f| domain_of(f)))
            .map(org)
            .unwrap_or_default();
        if self.first_sight(&sender_org) && !findings.is_empty() {
            findings.push(finding(
                "gateway.new_sender_domain",
                format!("{sender_org} first seen here"),
            ));
        }
        Ok(Outcome {
            findings,
            headers: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organisations() {
        assert_eq!(org("mail.news.example.com"), "example.com");
        assert_eq!(org("shop.example.co.uk"), "example.co.uk");
        assert_eq!(org("Example.COM."), "example.com");
        assert_eq!(org("www.example.de"), "example.de");
        assert_eq!(org("localhost"), "localhost");
    }

    #[test]
    fn a_new_domain_is_new_once_and_memory_is_bounded() {
        let g = GatewayCheck::new(
            &GatewayConfig {
                fcrdns: false,
                remember_domains: 2,
            },
            None,
        );
        assert!(g.first_sight("a.test"));
        assert!(!g.first_sight("a.test"));
        assert!(g.first_sight("b.test"));
        assert!(g.first_sight("c.test"), "full: starts afresh");
        assert!(g.first_sight("a.test"));
    }
}
