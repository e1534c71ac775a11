//! `[policy.NAME]` as operators write it: a serde model that refuses unknown keys, with every
//! default documented on its field (and given by the `Default` impls below).
//!
//! A policy is complete on its own: a tenant names one (`policy = "NAME"`, default `default`),
//! and `[policy.NAME.tenant.ID]` overrides any of its keys for one tenant (tables merge, other
//! values replace) and adds tenant- and user-level allow/block lists. A policy with
//! `shadow_of = "LIVE"` is evaluated next to `LIVE` for every message `LIVE` decides, logged,
//! and never acted on. Semantic checks (ranges, patterns, references) live in `check.rs`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

pub use super::detect::{GatewayConfig, LearningConfig, LearntConfig, RspamdConfig};
use super::outbreak::{GreylistConfig, OutbreakConfig};
use super::units::{Bytes, Dur};
use super::validate::{Checker, is_domain};
use super::{Config, ConfigError};

/// A named filtering policy. `default` always exists (all defaults when not written).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    pub description: Option<String>,
    /// Makes this a shadow policy: evaluated and logged next to the named live policy for every
    /// message that policy decides, never acted on. A shadow policy cannot be assigned to tenants.
    pub shadow_of: Option<String>,
    /// Which scanners run.
    pub scanners: ScannersConfig,
    /// Spam-score thresholds.
    pub thresholds: Thresholds,
    /// Actions for findings that are not just a score.
    pub actions: ActionsConfig,
    /// What `tag` adds to a delivered message.
    pub tag: TagConfig,
    /// Score of a built-in finding by name (`"spf.fail" = 3.0`), replacing its default.
    pub scores: BTreeMap<String, f64>,
    /// The budget of one message: decoding, unpacking and scanning stop when it is spent.
    pub limits: ScanLimits,
    /// Resolver for SPF, DKIM, DMARC, DNSBL and URI lists.
    pub dns: LookupConfig,
    pub auth: AuthConfig,
    /// DNS block lists queried with the client address; each hit adds its weight.
    pub dnsbl: Vec<DnsListConfig>,
    /// DNS allow lists queried with the client address; each hit subtracts its weight.
    pub dnswl: Vec<DnsListConfig>,
    /// Header, subject and body rules.
    #[serde(rename = "rule")]
    pub rules: Vec<RuleConfig>,
    /// URLs found in the text.
    pub urls: UrlConfig,
    /// Size rules.
    #[serde(rename = "size")]
    pub sizes: Vec<SizeRule>,
    pub attachments: AttachmentConfig,
    /// External antivirus (clamd INSTREAM); runs when `scanners.clamd`.
    pub clamd: ClamdConfig,
    /// External spam scanner (rspamd `/checkv2`); runs when `scanners.rspamd`. How its score
    /// combines with ours: `config/detect.rs`.
    pub rspamd: RspamdConfig,
    /// Our own gateway signals (`scanners.gateway`).
    pub gateway: GatewayConfig,
    /// Learning from users' reports and operators' corpora (rspamd's controller).
    pub learning: LearningConfig,
    /// Our own classifier trained by those lessons; runs when `scanners.learnt`.
    pub learnt: LearntConfig,
    /// Fleet-wide outbreak detection (`config/outbreak.rs`); runs when `scanners.outbreak`.
    pub outbreak: OutbreakConfig,
    /// Greylisting at RCPT (`config/outbreak.rs`); off unless `greylist.enabled`.
    pub greylist: GreylistConfig,
    /// Policy-wide allow list: spam scoring does not decide (viruses, blocked attachments and
    /// unscannable mail still do).
    pub allow: ListConfig,
    /// Policy-wide block list: `actions.blocklist` without scanning.
    pub block: ListConfig,
    /// Per-tenant overrides and lists, keyed by tenant id.
    pub tenant: BTreeMap<String, TenantOverride>,
}

/// The action a finding or a threshold asks for, from mildest to strongest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyAction {
    Deliver,
    /// Deliver with spam headers (and the subject prefix, when set).
    Tag,
    Quarantine,
    /// Refuse in-session with 550 and a reference id.
    Reject,
}

impl PolicyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyAction::Deliver => "deliver",
            PolicyAction::Tag => "tag",
            PolicyAction::Quarantine => "quarantine",
            PolicyAction::Reject => "reject",
        }
    }
}

/// What to do when an external scanner is down, times out or answers nonsense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Fail open: decide without that scanner (the failure is in the verdict).
    Accept,
    /// Answer 451 so the sender retries later.
    Tempfail,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScannersConfig {
    /// SPF, DKIM, DMARC (mail-auth) and the `Authentication-Results` header. Default true.
    pub auth: bool,
    /// `dnsbl` / `dnswl` zones and URI block lists. Default true (no zones are listed by default).
    pub dnsbl: bool,
    /// GTUBE, rules, URLs, size rules, built-in heuristics. Default true.
    pub content: bool,
    /// Blocked types and extensions (inside archives too), encrypted archives, macros. Default true.
    pub attachments: bool,
    /// Built-in antivirus (EICAR). Default true.
    pub antivirus: bool,
    /// clamd over INSTREAM (`[policy.NAME.clamd]`). Default false.
    pub clamd: bool,
    /// rspamd over `/checkv2` (`[policy.NAME.rspamd]`). Default false.
    pub rspamd: bool,
    /// Our gateway signals: the client's reverse DNS, envelope vs header, URL domains,
    /// recipients, new sender domains (`[policy.NAME.gateway]`). Default true.
    pub gateway: bool,
    /// Fingerprints counted fleet-wide, the operator's intelligence feed
    /// (`[policy.NAME.outbreak]`). Default false.
    pub outbreak: bool,
    /// Our own classifier, learnt from users' and operators' lessons (`[policy.NAME.learnt]`).
    /// Default false: beside a trained rspamd it counts the same lessons a second time (measured
    /// in `bench/detection/`: more hard ham quarantined and rejected); without rspamd's scan it
    /// is the better filter of the two.
    pub learnt: bool,
}

impl Default for ScannersConfig {
    fn default() -> Self {
        ScannersConfig {
            auth: true,
            dnsbl: true,
            content: true,
            attachments: true,
            antivirus: true,
            clamd: false,
            rspamd: false,
            gateway: true,
            outbreak: false,
            learnt: false,
        }
    }
}

/// Score thresholds; the strongest one reached applies. `inf` disables one.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Default 5.
    pub tag: f64,
    /// Default 10.
    pub quarantine: f64,
    /// Default 20.
    pub reject: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            tag: 5.0,
            quarantine: 10.0,
            reject: 20.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionsConfig {
    /// A virus (EICAR, clamd). Default `reject`.
    pub virus: PolicyAction,
    /// The message's budget was exceeded (bomb, too many parts, too deep, too slow): it could
    /// not be scanned completely. Default `quarantine`: never a silent pass.
    pub unscannable: PolicyAction,
    /// DMARC failed and the author domain publishes `p=reject`. Default `reject`.
    pub dmarc_reject: PolicyAction,
    /// DMARC failed and the author domain publishes `p=quarantine`. Default `quarantine`.
    pub dmarc_quarantine: PolicyAction,
    /// Sender or client on a block list. Default `reject`.
    pub blocklist: PolicyAction,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        ActionsConfig {
            virus: PolicyAction::Reject,
            unscannable: PolicyAction::Quarantine,
            dmarc_reject: PolicyAction::Reject,
            dmarc_quarantine: PolicyAction::Quarantine,
            blocklist: PolicyAction::Reject,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TagConfig {
    /// Put before the subject of tagged mail, e.g. `"[SPAM] "`. Default none.
    pub subject_prefix: Option<String>,
    /// Add `X-Spam-Flag: YES` and `X-Spam-Score` to tagged mail. Default true.
    pub headers: bool,
}

impl Default for TagConfig {
    fn default() -> Self {
        TagConfig {
            subject_prefix: None,
            headers: true,
        }
    }
}

/// The budget of one message, shared by decoding, unpacking and every scanner. Spending past
/// it is the finding `unscannable.<limit>`, and `actions.unscannable` decides.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanLimits {
    /// Bytes produced by decoding (base64, quoted-printable, charsets) and inflating archives,
    /// counted before they are allocated. Default 64 MiB.
    pub max_decoded_bytes: Bytes,
    /// MIME parts, nested messages included. Default 1000.
    pub max_parts: u32,
    /// Nesting of multiparts, `message/rfc822` and archives. Default 16.
    pub max_depth: u32,
    /// Header lines in all header blocks (counted before parsing). Default 10 000.
    pub max_header_lines: u32,
    /// Archive entries in the whole message. Default 1000.
    pub max_archive_entries: u32,
    /// Largest inflated/compressed ratio of an archive entry. Default 100.
    pub max_archive_ratio: u32,
    /// Wall time for decoding and all scanners, external ones included. Default 20 s.
    pub max_time: Dur,
    /// Decoded text examined by rules, GTUBE and URL extraction. Default 1 MiB.
    pub max_text_bytes: Bytes,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_decoded_bytes: Bytes(64 << 20),
            max_parts: 1000,
            max_depth: 16,
            max_header_lines: 10_000,
            max_archive_entries: 1000,
            max_archive_ratio: 100,
            max_time: Dur::secs(20),
            max_text_bytes: Bytes(1 << 20),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LookupConfig {
    /// A DNS server (`ip:port`, UDP then TCP). Default: the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// Per attempt. Default 2 s.
    pub timeout: Dur,
    /// Attempts per query (a lost UDP packet costs one `timeout`). Default 2.
    pub attempts: u32,
    /// Least time a "no such record" answer is cached, even when the server gives no TTL
    /// for it: most senders have no DMARC record and many no SPF, and asking again for every
    /// message of a busy sender is what gets a resolver to drop queries. Default 60 s.
    pub negative_ttl: Dur,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            resolver: None,
            timeout: Dur::secs(2),
            attempts: 2,
            negative_ttl: Dur::secs(60),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The authserv-id of our `Authentication-Results`. Default: the local silo's hostname.
    pub authserv_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsListConfig {
    /// E.g. `zen.spamhaus.org`.
    pub zone: String,
    /// Added to the score on a hit (subtracted for `dnswl`). Default 4.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Only these answers count. Default: any address in 127.0.0.0/8 except 127.255.255.0/24
    /// (the "your resolver is blocked" answers some lists give).
    #[serde(default)]
    pub answers: Vec<Ipv4Addr>,
}

fn default_weight() -> f64 {
    4.0
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Names the finding `rule.NAME`: letters, digits, `-` and `_`.
    pub name: String,
    /// `subject`, `body` (decoded text and HTML), `from` (header From addresses),
    /// `header:NAME` (every value of that header), `attachment_name`, or `url`.
    pub target: String,
    /// A regular expression (Rust `regex` syntax; `(?i)` for case-insensitive).
    pub pattern: String,
    /// Added to the score on a match. Default 1.
    #[serde(default = "one")]
    pub score: f64,
    /// At least this action on a match. Default none (score only).
    #[serde(default)]
    pub action: Option<PolicyAction>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UrlConfig {
    /// URLs whose host is one of these domains or below it: finding `url.blocked`.
    pub block_domains: Vec<String>,
    /// URI block lists (e.g. `dbl.spamhaus.org`) queried with each URL's host.
    pub uribl: Vec<DnsListConfig>,
    /// Distinct hosts looked up per message. Default 20.
    pub max_lookups: u32,
}

impl Default for UrlConfig {
    fn default() -> Self {
        UrlConfig {
            block_domains: Vec::new(),
            uribl: Vec::new(),
            max_lookups: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SizeRule {
    /// Names the finding `size.NAME`.
    pub name: String,
    /// Matches messages larger than this.
    pub above: Bytes,
    /// Default 0.
    #[serde(default)]
    pub score: f64,
    /// At least this action on a match. Default none.
    #[serde(default)]
    pub action: Option<PolicyAction>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttachmentConfig {
    /// File types by content (see `maildistiller check` for the names): default `exe`, `elf`,
    /// `macho`, `lnk`, `msi`.
    pub blocked_types: Vec<String>,
    /// File name extensions, case-insensitive, without the dot. Default: Windows executables
    /// and scripts (`exe`, `scr`, `com`, `pif`, `bat`, `cmd`, `js`, `jse`, `vbs`, `vbe`, `wsf`,
    /// `hta`, `lnk`, `msi`, `jar`, `ps1`, `cpl`, `reg`).
    pub blocked_extensions: Vec<String>,
    /// For a blocked type or extension, at any depth. Default `quarantine`.
    pub action: PolicyAction,
    /// For an encrypted archive (its content cannot be scanned). Default `quarantine`.
    pub encrypted_archives: PolicyAction,
    /// For an Office document carrying macros. Default `quarantine`.
    pub macro_documents: PolicyAction,
}

impl Default for AttachmentConfig {
    fn default() -> Self {
        AttachmentConfig {
            blocked_types: ["exe", "elf", "macho", "lnk", "msi"]
                .map(String::from)
                .to_vec(),
            blocked_extensions: [
                "exe", "scr", "com", "pif", "bat", "cmd", "js", "jse", "vbs", "vbe", "wsf", "hta",
                "lnk", "msi", "jar", "ps1", "cpl", "reg",
            ]
            .map(String::from)
            .to_vec(),
            action: PolicyAction::Quarantine,
            encrypted_archives: PolicyAction::Quarantine,
            macro_documents: PolicyAction::Quarantine,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClamdConfig {
    /// `tcp:HOST:PORT` or `unix:/PATH`. Default `unix:/run/clamav/clamd.ctl`.
    pub address: String,
    /// For the whole exchange. Default 10 s.
    pub timeout: Dur,
    /// When clamd is down or times out. Default `tempfail`.
    pub on_failure: OnFailure,
    /// Larger messages are not sent (clamd's own `StreamMaxLength` is 25 MiB by default); that
    /// counts as a failure. Default 25 MiB.
    pub max_size: Bytes,
}

impl Default for ClamdConfig {
    fn default() -> Self {
        ClamdConfig {
            address: "unix:/run/clamav/clamd.ctl".to_owned(),
            timeout: Dur::secs(10),
            on_failure: OnFailure::Tempfail,
            max_size: Bytes(25 << 20),
        }
    }
}

/// Who is allowed or blocked. Entries are case-insensitive.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListConfig {
    /// Whole addresses, matched against the envelope sender and the header From.
    pub senders: Vec<String>,
    /// Domains (and their subdomains) of those addresses.
    pub domains: Vec<String>,
    /// Client networks (the real client, from the edge).
    pub networks: Vec<IpNetwork>,
}

impl ListConfig {
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty() && self.domains.is_empty() && self.networks.is_empty()
    }
}

/// `[policy.NAME.tenant.ID]`: lists for one tenant and its users, and any policy key
/// overridden for that tenant (e.g. `thresholds.quarantine = 8.0`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct TenantOverride {
    #[serde(default)]
    pub allow: ListConfig,
    #[serde(default)]
    pub block: ListConfig,
    /// Lists of one user (a recipient address of the tenant).
    #[serde(default)]
    pub user: BTreeMap<String, UserLists>,
    /// Everything else: policy keys for this tenant (checked by merging them into the policy).
    #[serde(flatten)]
    pub set: toml::Table,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserLists {
    pub allow: ListConfig,
    pub block: ListConfig,
}

/// The name every tenant gets unless it names another; exists even when not written.
pub const DEFAULT: &str = "default";

impl PolicyConfig {
    /// Checks this policy and each of its tenant overrides (merged into it), as far as the
    /// schema can: what needs the scanner's code (built-in finding names, file type names,
    /// rule patterns, scanner addresses) is checked when the scanner compiles the policy.
    pub fn check(&self, path: &str, k: &mut Checker) {
        for e in self.errors(path) {
            k.err(e.path, e.message);
        }
    }

    /// Every problem of this policy alone that the schema can see, with its path.
    pub fn errors(&self, path: &str) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        self.check_own(path, &mut errors);
        for (id, ov) in &self.tenant {
            let tp = format!("{path}.tenant.{id}");
            for key in ["tenant", "shadow_of"] {
                if ov.set.contains_key(key) {
                    errors.push(ConfigError::new(
                        format!("{tp}.{key}"),
                        "cannot be set per tenant",
                    ));
                }
            }
            for addr in ov.user.keys() {
                if !addr.contains('@') {
                    errors.push(ConfigError::new(
                        format!("{tp}.user.{addr}"),
                        "user lists are keyed by address",
                    ));
                }
            }
            match resolve(self, ov) {
                Ok(r) => r.check_own(&tp, &mut errors),
                Err(e) => errors.push(ConfigError::new(format!("{tp}.{}", e.path), e.message)),
            }
        }
        errors
    }

    pub fn check_own(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut err = |p: &str, m: String| errors.push(ConfigError::new(format!("{path}.{p}"), m));
        let t = &self.thresholds;
        for (name, v) in [
            ("tag", t.tag),
            ("quarantine", t.quarantine),
            ("reject", t.reject),
        ] {
            if v.is_nan() {
                err(
                    &format!("thresholds.{name}"),
                    "must be a number (or inf)".into(),
                );
            }
        }
        if !(t.tag <= t.quarantine && t.quarantine <= t.reject) {
            err(
                "thresholds",
                format!(
                    "must rise: tag {} <= quarantine {} <= reject {}",
                    t.tag, t.quarantine, t.reject
                ),
            );
        }
        let l = &self.limits;
        let ranges: [(&str, u64, u64, u64); 8] = [
            ("dns.attempts", self.dns.attempts.into(), 1, 5),
            (
                "limits.max_decoded_bytes",
                l.max_decoded_bytes.0,
                1 << 10,
                4 << 30,
            ),
            ("limits.max_parts", l.max_parts.into(), 1, 1_000_000),
            ("limits.max_depth", l.max_depth.into(), 1, 128),
            (
                "limits.max_header_lines",
                l.max_header_lines.into(),
                10,
                10_000_000,
            ),
            (
                "limits.max_archive_entries",
                l.max_archive_entries.into(),
                0,
                1_000_000,
            ),
            (
                "limits.max_archive_ratio",
                l.max_archive_ratio.into(),
                1,
                1_000_000,
            ),
            ("limits.max_text_bytes", l.max_text_bytes.0, 0, 1 << 30),
        ];
        for (p, v, lo, hi) in ranges {
            if v < lo || v > hi {
                err(p, format!("{v} is out of range (allowed {lo}..={hi})"));
            }
        }
        let durations = [
            ("limits.max_time", l.max_time, 0, 3600),
            ("dns.timeout", self.dns.timeout, 10, 60),
            ("dns.negative_ttl", self.dns.negative_ttl, 0, 86_400),
            ("clamd.timeout", self.clamd.timeout, 10, 600),
            ("rspamd.timeout", self.rspamd.timeout, 10, 600),
        ];
        for (p, d, lo_ms, hi_s) in durations {
            let ms = d.get().as_millis() as u64;
            if ms < lo_ms || ms > hi_s * 1000 {
                err(p, format!("{d} is out of range ({lo_ms}ms..={hi_s}s)"));
            }
        }
        for (name, v) in &self.scores {
            // Whether `name` is a built-in finding is the scanner's to say (`scan::compile`).
            if !v.is_finite() {
                err(&format!("scores.{name}"), "must be a finite number".into());
            }
        }
        for (list, zones) in [
            ("dnsbl", &self.dnsbl),
            ("dnswl", &self.dnswl),
            ("urls.uribl", &self.urls.uribl),
        ] {
            for (i, z) in zones.iter().enumerate() {
                if !is_domain(&z.zone) {
                    err(
                        &format!("{list}[{i}].zone"),
                        format!("{:?} is not a DNS name", z.zone),
                    );
                }
                if !z.weight.is_finite() {
                    err(
                        &format!("{list}[{i}].weight"),
                        "must be a finite number".into(),
                    );
                }
            }
        }
        for (i, d) in self.urls.block_domains.iter().enumerate() {
            if !is_domain(d) {
                err(
                    &format!("urls.block_domains[{i}]"),
                    format!("{d:?} is not a domain"),
                );
            }
        }
        if self.urls.max_lookups > 1000 {
            err("urls.max_lookups", "at most 1000".into());
        }
        if let Some(prefix) = &self.tag.subject_prefix
            && (prefix.chars().any(char::is_control) || prefix.len() > 64)
        {
            err(
                "tag.subject_prefix",
                "at most 64 characters, no control characters".into(),
            );
        }
        if let Some(id) = &self.auth.authserv_id
            && !is_domain(id)
        {
            err("auth.authserv_id", format!("{id:?} is not a host name"));
        }
        super::detect::check(&self.rspamd, &self.learning, &mut err);
        super::detect::check_learnt(&self.learnt, &mut err);
        let mut fleet = Vec::new();
        super::outbreak::errors(&self.outbreak, &self.greylist, &mut fleet);
        for (p, m) in fleet {
            err(&p, m);
        }
        for (i, s) in self.sizes.iter().enumerate() {
            if !s.score.is_finite() {
                err(
                    &format!("size[{i}].score"),
                    "must be a finite number".into(),
                );
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            if !r.score.is_finite() {
                err(
                    &format!("rule[{i}].score"),
                    "must be a finite number".into(),
                );
            }
        }
    }
}

/// A policy as overridden for one tenant: its table with the override's keys merged in (tables
/// merge key by key, other values replace). Lists stay separate (see `lists.rs`).
pub fn resolve(base: &PolicyConfig, ov: &TenantOverride) -> Result<PolicyConfig, ConfigError> {
    let value = toml::Value::try_from(base)
        .map_err(|e| ConfigError::new("", format!("cannot serialise the policy: {e}")))?;
    let toml::Value::Table(mut table) = value else {
        return Err(ConfigError::new("", "the policy is not a table"));
    };
    table.remove("tenant");
    merge(&mut table, &ov.set);
    serde_path_to_error::deserialize::<_, PolicyConfig>(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        ConfigError::new(path, msg.lines().next().unwrap_or_default().trim())
    })
}

fn merge(into: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (into.get_mut(k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// References between policies and tenants: shadows name live policies, tenants name
/// non-shadow policies, overrides name tenants. Errors, then warnings.
pub fn cross_check(c: &Config) -> (Vec<ConfigError>, Vec<String>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let exists = |n: &str| n == DEFAULT || c.policies.contains_key(n);
    let is_shadow = |n: &str| c.policies.get(n).is_some_and(|p| p.shadow_of.is_some());
    for (name, p) in &c.policies {
        let path = format!("policy.{name}");
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            errors.push(ConfigError::new(
                &path,
                "policy names are lowercase letters, digits, '-' and '_'",
            ));
        }
        if let Some(live) = &p.shadow_of {
            if !exists(live) {
                errors.push(ConfigError::new(
                    format!("{path}.shadow_of"),
                    format!("unknown policy {live:?}"),
                ));
            } else if live == name || is_shadow(live) {
                errors.push(ConfigError::new(
                    format!("{path}.shadow_of"),
                    format!("{live:?} is not a live policy"),
                ));
            }
        }
        let live_name = p.shadow_of.as_deref().unwrap_or(name);
        for (id, ov) in &p.tenant {
            let Some(t) = c.tenants.iter().find(|t| &t.id == id) else {
                errors.push(ConfigError::new(
                    format!("{path}.tenant.{id}"),
                    format!("unknown tenant {id:?}"),
                ));
                continue;
            };
            if t.policy != live_name {
                warnings.push(format!(
                    "{path}.tenant.{id}: tenant {id:?} uses policy {:?}; this override has no effect",
                    t.policy
                ));
            }
            for addr in ov.user.keys() {
                let dom = addr.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
                if !t.domains.iter().any(|d| d.eq_ignore_ascii_case(dom)) {
                    warnings.push(format!(
                        "{path}.tenant.{id}.user.{addr}: not an address in the tenant's domains"
                    ));
                }
            }
        }
    }
    for t in &c.tenants {
        if is_shadow(&t.policy) {
            errors.push(ConfigError::new(
                format!("tenant[{}].policy", t.id),
                format!(
                    "{:?} is a shadow policy; it runs beside its live policy",
                    t.policy
                ),
            ));
        }
    }
    (errors, warnings)
}

/// Everything `validate` runs for policies: each one's checks and the cross-references.
pub fn check_all(c: &Config, k: &mut Checker) {
    for (name, p) in &c.policies {
        p.check(&format!("policy.{name}"), k);
    }
    let (errors, warnings) = cross_check(c);
    for e in errors {
        k.err(e.path, e.message);
    }
    for w in warnings {
        k.warn(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> PolicyConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn tenant_override_merges_tables_and_replaces_values() {
        let base = policy(
            r#"
            thresholds = { tag = 4.0, quarantine = 9.0 }
            attachments.blocked_extensions = ["exe"]
            [tenant.acme]
            thresholds.quarantine = 7.0
            attachments = { blocked_extensions = ["zip"] }
            allow.domains = ["partner.example"]
            "#,
        );
        let r = resolve(&base, &base.tenant["acme"]).unwrap();
        assert_eq!(r.thresholds.tag, 4.0, "kept");
        assert_eq!(r.thresholds.quarantine, 7.0, "overridden");
        assert_eq!(r.attachments.blocked_extensions, ["zip"]);
        assert!(r.tenant.is_empty());
        assert!(r.allow.is_empty(), "tenant lists stay tenant lists");
    }

    #[test]
    fn bad_override_and_bad_values_are_reported_with_paths() {
        let base = policy(
            r#"
            thresholds = { tag = 30.0 }
            scores = { "spf.fail" = inf }
            dnsbl = [{ zone = "not a zone" }]
            [tenant.acme]
            thresholds.quarantine = "high"
            "#,
        );
        let errs: Vec<String> = base
            .errors("policy.p")
            .iter()
            .map(|e| e.to_string())
            .collect();
        for want in [
            "policy.p.thresholds: must rise",
            "policy.p.scores.spf.fail: must be a finite number",
            "policy.p.dnsbl[0].zone",
            "policy.p.tenant.acme.thresholds.quarantine",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{want} in {errs:#?}"
            );
        }
    }
}
