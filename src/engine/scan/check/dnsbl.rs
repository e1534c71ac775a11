//! DNS block and allow lists on the real client address (from the edge's PROXY header), and URI
//! block lists on the hosts of URLs in the text.
//!
//! A listing is an A record under `REVERSED-ADDRESS.ZONE` (RFC 5782; IPv6 by nibbles) or
//! `HOST.ZONE` for URI lists. Only answers in 127.0.0.0/8 count (minus 127.255.255.0/24, the
//! "query refused" codes of public lists), or exactly the zone's configured `answers`. All
//! lookups of a message run concurrently; a zone that does not answer is recorded as a
//! `dnsbl.error` finding (score 0) and decides nothing.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use mail_auth::MessageAuthenticator;

use super::{Check, Subject, join_all};
use crate::config::policy::{DnsListConfig, PolicyConfig};
use crate::engine::policy::finding::{CheckError, Finding, Outcome};

const NAME: &str = "dnsbl";

type LookupResult = mail_auth::Result<mail_auth::common::resolver::DnsEntry<Arc<[Ipv4Addr]>>>;

#[derive(Debug, Clone)]
struct Zone {
    zone: String,
    weight: f64,
    answers: Vec<Ipv4Addr>,
}

impl Zone {
    fn from(c: &DnsListConfig) -> Zone {
        Zone {
            zone: c.zone.trim_matches('.').to_ascii_lowercase(),
            weight: c.weight,
            answers: c.answers.clone(),
        }
    }

    fn counts(&self, a: Ipv4Addr) -> bool {
        if self.answers.is_empty() {
            let o = a.octets();
            o[0] == 127 && !(o[1] == 255 && o[2] == 255)
        } else {
            self.answers.contains(&a)
        }
    }
}

pub struct DnsblCheck {
    dns: Arc<MessageAuthenticator>,
    block: Vec<Zone>,
    allow: Vec<Zone>,
    uri: Vec<Zone>,
    max_lookups: usize,
}

impl std::fmt::Debug for DnsblCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsblCheck")
            .field("block", &self.block)
            .field("allow", &self.allow)
            .field("uri", &self.uri)
            .finish()
    }
}

impl DnsblCheck {
    /// `None` when the policy lists no zones.
    pub fn new(dns: Arc<MessageAuthenticator>, p: &PolicyConfig) -> Option<DnsblCheck> {
        if p.dnsbl.is_empty() && p.dnswl.is_empty() && p.urls.uribl.is_empty() {
            return None;
        }
        Some(DnsblCheck {
            dns,
            block: p.dnsbl.iter().map(Zone::from).collect(),
            allow: p.dnswl.iter().map(Zone::from).collect(),
            uri: p.urls.uribl.iter().map(Zone::from).collect(),
            max_lookups: p.urls.max_lookups as usize,
        })
    }
}

/// What one lookup is for.
#[derive(Clone, Copy)]
enum Kind {
    Block,
    Allow,
    Uri,
}

#[async_trait::async_trait]
impl Check for DnsblCheck {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, s: &Subject<'_>) -> Result<Outcome, CheckError> {
        let rev = reverse(s.envelope.client_ip);
        let mut queries: Vec<(Kind, &Zone, String, String)> = Vec::new();
        for (kind, zones) in [(Kind::Block, &self.block), (Kind::Allow, &self.allow)] {
            for z in zones {
                let what = s.envelope.client_ip.to_string();
                queries.push((kind, z, format!("{rev}.{}.", z.zone), what));
            }
        }
        if !self.uri.is_empty() {
            let mut hosts: Vec<&str> = Vec::new();
            for u in s.urls {
                if hosts.len() >= self.max_lookups {
                    break;
                }
                if u.host.parse::<IpAddr>().is_err() && !hosts.contains(&u.host.as_str()) {
                    hosts.push(&u.host);
                }
            }
            for h in hosts {
                for z in &self.uri {
                    queries.push((Kind::Uri, z, format!("{h}.{}.", z.zone), h.to_owned()));
                }
            }
        }
        type Lookup<'f> = std::pin::Pin<Box<dyn Future<Output = LookupResult> + Send + 'f>>;
        let futs: Vec<Lookup<'_>> = queries
            .iter()
            .map(|(_, _, q, _)| Box::pin(self.dns.ipv4_lookup_raw(q)) as Lookup<'_>)
            .collect();
        let answers = join_all(futs).await;
        let mut out = Outcome::default();
        for ((kind, zone, _, what), answer) in queries.iter().zip(answers) {
            let addrs = match answer {
                Ok(entry) => entry.entry,
                Err(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_))) => continue,
                Err(e) => {
                    out.findings.push(Finding::configured(
                        NAME,
                        "dnsbl.error".into(),
                        0.0,
                        None,
                        format!("{}: {e}", zone.zone),
                    ));
                    continue;
                }
            };
            let Some(hit) = addrs.iter().find(|a| zone.counts(**a)) else {
                continue;
            };
            let (prefix, score) = match kind {
                Kind::Block => ("dnsbl", zone.weight),
                Kind::Allow => ("dnswl", -zone.weight),
                Kind::Uri => ("uribl", zone.weight),
            };
            out.findings.push(Finding::configured(
                NAME,
                format!("{prefix}.{}", zone.zone),
                score,
                None,
                format!("{what} listed ({hit})"),
            ));
        }
        Ok(out)
    }
}

/// `192.0.2.1` -> `1.2.0.192`; IPv6 -> 32 nibbles, least significant first.
pub fn reverse(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return reverse(IpAddr::V4(v4));
            }
            let mut parts = Vec::with_capacity(32);
            for b in v6.octets().iter().rev() {
                parts.push(format!("{:x}", b & 0xf));
                parts.push(format!("{:x}", b >> 4));
            }
            parts.join(".")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_names() {
        assert_eq!(reverse("192.0.2.1".parse().unwrap()), "1.2.0.192");
        assert_eq!(reverse("::ffff:192.0.2.1".parse().unwrap()), "1.2.0.192");
        let v6 = reverse("2001:db8::1".parse().unwrap());
        assert!(
            v6.starts_with("1.0.0.0.") && v6.ends_with(".8.b.d.0.1.0.0.2"),
            "{v6}"
        );
        assert_eq!(v6.split('.').count(), 32);
    }

    #[test]
    fn only_listing_answers_count() {
        let z = Zone::from(&DnsListConfig {
            zone: "bl.test".into(),
            weight: 1.0,
            answers: vec![],
        });
        assert!(z.counts(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(!z.counts(Ipv4Addr::new(127, 255, 255, 254)));
        assert!(!z.counts(Ipv4Addr::new(10, 0, 0, 1)));
    }
}
