//! MTA-STS (RFC 8461) for mail sent by MX (DSNs to senders' domains when no relay is set):
//! whether a domain asks that mail to it go only to listed MX hosts over TLS that verifies.
//!
//! # One lookup
//!
//! 1. `_mta-sts.<domain>` TXT: exactly one `v=STSv1; id=…` record, else the domain has no
//!    policy (but a cached, unexpired one still applies: section 5.1).
//! 2. Its `id` is the cached policy's: the cached policy. Otherwise the policy is fetched:
//!    `GET https://mta-sts.<domain>/.well-known/mta-sts.txt`, the certificate verified for that
//!    name, no redirects, at most [`MAX_POLICY`] bytes within [`FETCH_TIMEOUT`]; a fetch that
//!    fails falls back to the cached policy while it is unexpired.
//! 3. The policy (`version: STSv1`, `mode`, `mx` patterns, `max_age`) is cached by domain until
//!    `max_age` runs out.
//!
//! `enforce`: only MX hosts that match a pattern are tried, over TLS that verifies for the MX
//! name (`tls::Plan::mta_sts_enforce`); none matching defers the mail. `testing`: delivery as
//! without a policy; what enforce would refuse is logged and counted. `none`: no policy.
//!
//! Bounds: [`MAX_DOMAINS`] cached policies (the one expiring first makes room), one fetch of
//! [`MAX_POLICY`] bytes per domain and id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::hickory_resolver::proto::rr::RData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tls::Plan;
use crate::tls::client::{self, Policy as TlsPolicy};

/// Policies cached at once (domains that DSNs go to: a few thousand at most).
pub const MAX_DOMAINS: usize = 10_000;
/// Largest policy body read (RFC 8461 section 3.3 suggests 64 KiB).
pub const MAX_POLICY: usize = 64 * 1024;
/// Longest a policy fetch (connect, TLS, request, body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `max_age` honoured (RFC 8461: 31557600 s, a year).
const MAX_AGE_LIMIT: u64 = 31_557_600;

/// A policy's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// `mail.example.com` or `*.example.com` (one leftmost label), lower case.
    pub mx: Vec<String>,
    pub max_age: u64,
}

impl Policy {
    /// Parses a policy body (section 3.2); `Err` says what is wrong.
    pub fn parse(body: &str) -> Result<Policy, String> {
        let (mut version, mut mode, mut mx, mut max_age) = (None, None, Vec::new(), None);
        for line in body.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "version" => version = Some(v.to_owned()),
                "mode" => {
                    mode = Some(match v {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(format!("unknown mode {other:?}")),
                    })
                }
                "mx" => mx.push(v.trim_end_matches('.').to_ascii_lowercase()),
                "max_age" => {
                    max_age = Some(
                        v.parse::<u64>()
                            .map_err(|_| format!("max_age {v:?} is not a number"))?
                            .min(MAX_AGE_LIMIT),
                    )
                }
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err("version is not STSv1".into());
        }
        let mode = mode.ok_or("no mode")?;
        let max_age = max_age.ok_or("no max_age")?;
        if mode != Mode::None && mx.is_empty() {
            return Err("no mx".into());
        }
        Ok(Policy { mode, mx, max_age })
    }

    /// Whether the MX host `host` matches one of the patterns (section 4.1).
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => *p == host,
        })
    }
}

/// The `id` of a domain's `v=STSv1` TXT record: `None` when there is not exactly one.
pub fn record_id(records: &[String]) -> Option<String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=STSv1"))
        .collect();
    let [one] = sts.as_slice() else {
        return None;
    };
    one.split(';')
        .filter_map(|f| f.trim().split_once('='))
        .find(|(k, _)| k.trim() == "id")
        .map(|(_, v)| v.trim().to_owned())
        .filter(|id| {
            !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// Where policies come from. [`Fetcher::system`] in production; tests point it at their own DNS
/// server, HTTPS port and CA.
#[derive(Clone)]
pub struct Fetcher {
    /// A DNS server (`ip:port`); `None`: the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// 443, as the RFC fixes it.
    pub https_port: u16,
    /// Trust anchors for the policy host's certificate and for `enforce`d MX certificates.
    pub roots: Arc<rustls::RootCertStore>,
}

impl Fetcher {
    pub fn system() -> Fetcher {
        Fetcher {
            resolver: None,
            https_port: 443,
            roots: client::system_roots(),
        }
    }

    fn resolver(&self) -> Result<TokioResolver, String> {
        match self.resolver {
            None => TokioResolver::builder_tokio()
                .and_then(|b| b.build())
                .map_err(|e| format!("no resolver: {e}")),
            Some(addr) => TokioResolver::builder_with_config(
                crate::engine::scan::dns::one_server(addr),
                TokioRuntimeProvider::default(),
            )
            .build()
            .map_err(|e| format!("no resolver: {e}")),
        }
    }

    /// The TXT records of `_mta-sts.<domain>`: `Ok(empty)` when there are none.
    async fn txt(&self, resolver: &TokioResolver, domain: &str) -> Result<Vec<String>, String> {
        let name = format!("_mta-sts.{}.", domain.trim_end_matches('.'));
        match tokio::time::timeout(FETCH_TIMEOUT, resolver.txt_lookup(name.as_str())).await {
            Err(_) => Err("TXT lookup timed out".into()),
            Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(l)) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
        }
    }

    /// Fetches and parses `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
    async fn fetch(&self, resolver: &TokioResolver, domain: &str) -> Result<Policy, String> {
        let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
        let work = async {
            let ips = resolver
                .lookup_ip(format!("{host}.").as_str())
                .await
                .map_err(|e| format!("{host}: {e}"))?;
            let mut last = format!("{host}: no address");
            for ip in ips.iter() {
                match self.get(SocketAddr::new(ip, self.https_port), &host).await {
                    Ok(body) => return Policy::parse(&body),
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        tokio::time::timeout(FETCH_TIMEOUT, work)
            .await
            .map_err(|_| format!("{host}: policy fetch timed out"))?
    }

    /// One HTTPS GET of the policy from `addr` (HTTP/1.0: no chunked body, the server closes).
    async fn get(&self, addr: SocketAddr, host: &str) -> Result<String, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{host} [{addr}]: {e}"))?;
        let policy = TlsPolicy {
            roots: self.roots.clone(),
            require_verified: true,
            pins: Vec::new(),
        };
        let (mut tls, _) = client::handshake(tcp, host, &policy)
            .await
            .map_err(|e| format!("{host} [{addr}]: {e}"))?;
        let req = format!(
            "GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\nUser-Agent: maildistiller\r\n\r\n"
        );
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        (&mut tls)
            .take((MAX_POLICY + 8192) as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{host}: no HTTP response"))?;
        let status = head.split_whitespace().nth(1).unwrap_or_default();
        if status != "200" {
            return Err(format!(
                "{host}: HTTP {status} (redirects are not followed)"
            ));
        }
        let text_plain = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case("content-type")
                    && v.trim().to_ascii_lowercase().starts_with("text/plain")
            })
        });
        if !text_plain {
            return Err(format!("{host}: the policy is not text/plain"));
        }
        if body.len() > MAX_POLICY {
            return Err(format!("{host}: policy larger than {MAX_POLICY} bytes"));
        }
        Ok(body.to_owned())
    }
}

struct Cached {
    id: String,
    policy: Policy,
    expires: Instant,
}

/// Policies by domain, with their fetcher.
pub struct MtaSts {
    fetcher: Fetcher,
    cache: Mutex<HashMap<String, Cached>>,
}

impl MtaSts {
    pub fn new(fetcher: Fetcher) -> MtaSts {
        MtaSts {
            fetcher,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The policy in force for `domain` (see the module docs), `None` without one. Failures
    /// are logged; they never stop delivery by themselves (a domain whose policy cannot be
    /// fetched and was never cached has none, as the RFC says).
    pub async fn policy(&self, domain: &str) -> Option<Policy> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let cached = |want: Option<&str>| {
            let g = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            g.get(&domain)
                .filter(|c| c.expires > Instant::now() && want.is_none_or(|id| id == c.id))
                .map(|c| c.policy.clone())
        };
        let resolver = match self.fetcher.resolver() {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(%domain, error = %e, "MTA-STS: no resolver; using any cached policy");
                return cached(None);
            }
        };
        let id = match self.fetcher.txt(&resolver, &domain).await {
            Ok(records) => record_id(&records),
            Err(e) => {
                tracing::info!(%domain, error = %e, "MTA-STS: TXT lookup failed; using any cached policy");
                return cached(None);
            }
        };
        let Some(id) = id else {
            return cached(None);
        };
        if let Some(p) = cached(Some(&id)) {
            return Some(p);
        }
        match self.fetcher.fetch(&resolver, &domain).await {
            Ok(policy) => {
                tracing::info!(%domain, %id, mode = policy.mode.as_str(), mx = ?policy.mx, max_age = policy.max_age, "MTA-STS policy fetched");
                self.store(&domain, id, policy.clone());
                Some(policy)
            }
            Err(e) => {
                tracing::warn!(%domain, error = %e, "MTA-STS policy fetch failed; using any cached policy");
                cached(None)
            }
        }
    }

    fn store(&self, domain: &str, id: String, policy: Policy) {
        let mut g = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() >= MAX_DOMAINS && !g.contains_key(domain) {
            let now = Instant::now();
            g.retain(|_, c| c.expires > now);
            if g.len() >= MAX_DOMAINS
                && let Some(first) = g
                    .iter()
                    .min_by_key(|(_, c)| c.expires)
                    .map(|(d, _)| d.clone())
            {
                g.remove(&first);
            }
        }
        let expires = Instant::now() + Duration::from_secs(policy.max_age);
        g.insert(
            domain.to_owned(),
            Cached {
                id,
                policy,
                expires,
            },
        );
    }

    /// The TLS plan for a destination under `policy`, and the MX hosts it allows from `hosts`
    /// (in order). `Err` when `enforce` allows none of them.
    pub fn plan(
        &self,
        policy: Option<&Policy>,
        hosts: Vec<String>,
    ) -> Result<(Plan, Vec<String>), String> {
        let roots = self.fetcher.roots.clone();
        let with_roots = |mut p: Plan| {
            p.policy.roots = roots.clone();
            p
        };
        match policy.map(|p| (p.mode, p)) {
            None | Some((Mode::None, _)) => Ok((Plan::opportunistic(), hosts)),
            Some((Mode::Testing, p)) => {
                for h in hosts.iter().filter(|h| !p.allows(h)) {
                    tracing::warn!(mx = %h, patterns = ?p.mx, "MTA-STS testing: this MX matches no pattern of the policy (enforce would skip it)");
                }
                Ok((with_roots(Plan::mta_sts_testing()), hosts))
            }
            Some((Mode::Enforce, p)) => {
                let allowed: Vec<String> = hosts.iter().filter(|h| p.allows(h)).cloned().collect();
                if allowed.is_empty() {
                    return Err(format!(
                        "MTA-STS enforce: no MX ({}) matches the policy's mx ({})",
                        hosts.join(", "),
                        p.mx.join(", ")
                    ));
                }
                Ok((with_roots(Plan::mta_sts_enforce()), allowed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_match_as_the_rfc_says() {
        let p = Policy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert!(p.allows("mail.example.com") && p.allows("MAIL.example.com."));
        assert!(p.allows("mx1.example.net"));
        // The wildcard is one label: neither the parent nor a grandchild.
        assert!(!p.allows("example.net") && !p.allows("a.b.example.net"));
        assert!(!p.allows("mail.example.org"));
        assert!(Policy::parse("version: STSv1\nmode: enforce\nmax_age: 5\n").is_err());
        assert!(Policy::parse("version: STSv2\nmode: none\nmax_age: 5\n").is_err());
        assert_eq!(
            Policy::parse("version: STSv1\nmode: none\nmax_age: 99999999999\n")
                .unwrap()
                .max_age,
            MAX_AGE_LIMIT
        );
    }

    #[test]
    fn exactly_one_sts_record_counts() {
        let r = |v: &[&str]| record_id(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            r(&["v=STSv1; id=20240101T0000;"]).as_deref(),
            Some("20240101T0000")
        );
        assert_eq!(
            r(&["v=spf1 -all", "v=STSv1; id=abc"]).as_deref(),
            Some("abc")
        );
        assert_eq!(r(&["v=STSv1; id=a", "v=STSv1; id=b"]), None);
        assert_eq!(r(&["v=STSv1; id=not-alnum"]), None);
        assert_eq!(r(&[]), None);
    }
}
