//! The scan tests' helper language: a config with the test policy and a loopback DNS server,
//! a `Scanner` built from it exactly as the engine builds one, envelopes, and fixture cases
//! (`tests/fixtures/scan/cases.toml`).

use std::net::IpAddr;
use std::path::PathBuf;

use maildistiller::config::RoleSet;
use maildistiller::engine::policy::Disposition;
use maildistiller::engine::scan::{Arrival, Scanner, Verdict};
use maildistiller::snapshot::Snapshot;

use super::dns::{self, TestDns};
use crate::support::{fleet_config, repo, write};

/// The scan tests' policy. `{resolver}` is the test DNS server.
pub const POLICY: &str = r#"
[policy.default]
description = "the scan tests' policy"
tag = { subject_prefix = "[SPAM] " }
scores = { "spf.fail" = 6.0 }
dnsbl = [{ zone = "bl.test", weight = 6.0 }]
rule = [
  { name = "money-subject", target = "subject", pattern = "(?i)million dollars", score = 4.0 },
  { name = "wire-fee", target = "body", pattern = "(?i)wire the processing fee", score = 2.0 },
  { name = "claim", target = "body", pattern = "(?i)claim a million", score = 2.0 },
]
[policy.default.dns]
resolver = "{resolver}"
timeout = "2s"
[policy.default.urls]
block_domains = ["blocked.test"]
uribl = [{ zone = "uribl.test", weight = 5.0 }]
"#;

pub struct Harness {
    _dir: tempfile::TempDir,
    pub snap: Snapshot,
    pub scanner: Scanner,
    _dns: TestDns,
}

/// The test policy plus `extra` TOML (sub-tables of `policy.default`, more policies…).
pub async fn harness(extra: &str) -> Harness {
    try_harness(extra).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`harness`], but returns the config errors.
pub async fn try_harness(extra: &str) -> Result<Harness, String> {
    let dns = dns::start().await;
    let text =
        fleet_config(&format!("{POLICY}\n{extra}")).replace("{resolver}", &dns.addr.to_string());
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "scan.toml", &text);
    let snap = maildistiller::node::load(&path, RoleSet::ALL).map_err(|e| e.to_string())?;
    let scanner = Scanner::new(&snap).map_err(|e| e.to_string())?;
    Ok(Harness {
        _dir: dir,
        snap,
        scanner,
        _dns: dns,
    })
}

/// One message's envelope, with the defaults of `cases.toml`.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub helo: String,
    pub client: IpAddr,
    pub rcpts: Vec<String>,
    pub tenant: String,
    pub queue_id: String,
}

impl Mail {
    pub fn from(sender: &str) -> Mail {
        Mail {
            from: sender.to_owned(),
            helo: "mail.good.test".into(),
            client: "192.0.2.10".parse().unwrap(),
            rcpts: vec!["bob@acme.example".into()],
            tenant: "acme".into(),
            queue_id: "Q0TEST".into(),
        }
    }
}

impl Harness {
    pub async fn scan(&self, mail: &Mail, raw: &[u8]) -> Verdict {
        self.scan_with(&self.scanner, mail, raw).await
    }

    /// Like [`Harness::scan`], with another scanner built from this config (one with metrics).
    pub async fn scan_with(&self, scanner: &Scanner, mail: &Mail, raw: &[u8]) -> Verdict {
        let tenant = self
            .snap
            .topology
            .tenant(&mail.tenant)
            .unwrap_or_else(|| panic!("no tenant {}", mail.tenant));
        let env = Arrival {
            session_id: "S0TEST",
            queue_id: &mail.queue_id,
            client_ip: mail.client,
            client_country: None,
            helo: &mail.helo,
            mail_from: &mail.from,
            rcpts: &mail.rcpts,
            tenant,
            tls: false,
        };
        scanner.scan(&env, raw).await
    }

    pub async fn scan_fixture(&self, mail: &Mail, file: &str) -> Verdict {
        self.scan(mail, &fixture(file)).await
    }
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/scan")
}

pub fn fixture(file: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The live decision's disposition.
pub fn disposition(v: &Verdict) -> Disposition {
    v.disposition().expect("a scanned verdict has a report")
}

/// Names of the live decision's findings.
pub fn names(v: &Verdict) -> Vec<String> {
    v.report
        .as_ref()
        .map(|r| r.decision.findings.iter().map(|f| f.name.clone()).collect())
        .unwrap_or_default()
}

pub fn has(v: &Verdict, name: &str) -> bool {
    names(v).iter().any(|n| n == name)
}

#[derive(Debug, serde::Deserialize)]
struct Manifest {
    case: Vec<Case>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub file: String,
    pub from: String,
    pub helo: Option<String>,
    pub client: Option<IpAddr>,
    pub action: String,
    #[serde(default)]
    pub findings: Vec<String>,
    #[serde(default)]
    pub absent: Vec<String>,
    /// Text some finding's detail must contain.
    pub detail: Option<String>,
}

pub fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("cases.toml")).unwrap();
    toml::from_str::<Manifest>(&text).unwrap().case
}

/// Runs the named case of `cases.toml` and checks everything it expects.
pub async fn case(name: &str) -> Verdict {
    let c = cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name:?} in cases.toml"));
    let h = harness("").await;
    let mut mail = Mail::from(&c.from);
    if let Some(helo) = &c.helo {
        mail.helo.clone_from(helo);
    }
    if let Some(ip) = c.client {
        mail.client = ip;
    }
    let v = h.scan_fixture(&mail, &c.file).await;
    let got = disposition(&v);
    assert_eq!(got.as_str(), c.action, "{name}: {}", v.summary);
    for f in &c.findings {
        assert!(has(&v, f), "{name}: no finding {f}: {}", v.summary);
    }
    for f in &c.absent {
        assert!(!has(&v, f), "{name}: unexpected finding {f}: {}", v.summary);
    }
    if let Some(d) = &c.detail {
        let details: Vec<&str> = v
            .report
            .as_ref()
            .unwrap()
            .decision
            .findings
            .iter()
            .map(|f| f.detail.as_str())
            .collect();
        assert!(
            details.iter().any(|x| x.contains(d.as_str())),
            "{name}: no detail with {d:?} in {details:?}"
        );
    }
    v
}
