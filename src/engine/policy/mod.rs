//! Per-tenant filtering policy: named policies in config (`[policy.NAME]`, see `model.rs`),
//! assigned per tenant, overridden per tenant, compiled once per config snapshot, and the
//! decision from findings to an action (`decide.rs`).
//!
//! Lifecycle: `maildistiller check` and reload validate every policy ([`PolicyConfig::check`]
//! per policy, [`check_all`] for references between policies and tenants); the engine's
//! scanner builds [`Policies`] once per snapshot — every policy, and every policy as
//! overridden for each tenant that has an override, each with its version (a hash of what it
//! decides by) — and looks one up per message by tenant.

mod decide;
mod lists;
mod model;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use decide::{Decision, Disposition, Failure, decide};
pub use lists::{Entry, ListHit, Lists};
pub use model::*;

use crate::config::validate::{Checker, is_domain};
use crate::config::{Config, ConfigError};
use crate::engine::scan::check::{self, Check, Interner};
use crate::engine::scan::finding::BUILTIN_SCORES;
use crate::engine::scan::magic::TYPE_NAMES;

/// The name every tenant gets unless it names another; exists even when not written.
pub const DEFAULT: &str = "default";

impl PolicyConfig {
    /// Checks this policy and each of its tenant overrides (merged into it).
    pub fn check(&self, path: &str, k: &mut Checker) {
        for e in self.errors(path) {
            k.err(e.path, e.message);
        }
    }

    /// Every problem of this policy alone, with its path.
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

    fn check_own(&self, path: &str, errors: &mut Vec<ConfigError>) {
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
            if !BUILTIN_SCORES.iter().any(|(n, _)| n == name) {
                err(
                    &format!("scores.{name}"),
                    "not a built-in finding (rules and DNS lists carry their own scores)".into(),
                );
            } else if !v.is_finite() {
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
        for (i, t) in self.attachments.blocked_types.iter().enumerate() {
            if !TYPE_NAMES.contains(&t.to_ascii_lowercase().as_str()) {
                err(
                    &format!("attachments.blocked_types[{i}]"),
                    format!("unknown type {t:?} (known: {})", TYPE_NAMES.join(", ")),
                );
            }
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
        if !self.rspamd.weight.is_finite() {
            err("rspamd.weight", "must be a finite number".into());
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
        check::check_config(path, self, errors);
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

/// Everything `validate` should run for policies: each one's checks and the cross-references.
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

/// One policy, resolved for a tenant or not, ready to decide.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub name: String,
    /// Short hash of everything this policy decides by (its settings, the tenant's override).
    pub version: String,
    /// The tenant whose override this includes.
    pub tenant: Option<String>,
    pub config: PolicyConfig,
    pub lists: Lists,
    pub checks: Vec<Arc<dyn Check>>,
}

impl CompiledPolicy {
    /// `name@version`, as verdicts cite it.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Every policy of a snapshot, compiled.
#[derive(Debug, Default)]
pub struct Policies {
    base: HashMap<String, Arc<CompiledPolicy>>,
    /// (policy, tenant) -> that policy with the tenant's override.
    overridden: HashMap<(String, String), Arc<CompiledPolicy>>,
    /// Live policy -> its shadows.
    shadows: BTreeMap<String, Vec<String>>,
}

impl Policies {
    /// Compiles every policy (and `default`, when not written). `authserv_id` is the default
    /// of `auth.authserv_id`.
    pub fn build(c: &Config, authserv_id: &str) -> Result<Policies, Vec<ConfigError>> {
        let mut errors = cross_check(c).0;
        let mut interner = Interner::default();
        let mut out = Policies::default();
        let default = PolicyConfig::default();
        let mut names: Vec<&String> = c.policies.keys().collect();
        let default_name = DEFAULT.to_owned();
        if !c.policies.contains_key(DEFAULT) {
            names.push(&default_name);
        }
        for name in names {
            let base = c.policies.get(name).unwrap_or(&default);
            let path = format!("policy.{name}");
            errors.extend(base.errors(&path));
            if let Some(live) = &base.shadow_of {
                out.shadows
                    .entry(live.clone())
                    .or_default()
                    .push(name.clone());
            }
            match compile(name, base, None, &path, authserv_id, &mut interner) {
                Ok(p) => {
                    out.base.insert(name.clone(), Arc::new(p));
                }
                Err(e) => errors.extend(e),
            }
            for (id, ov) in &base.tenant {
                let tp = format!("{path}.tenant.{id}");
                let resolved = match resolve(base, ov) {
                    Ok(r) => r,
                    Err(e) => {
                        errors.push(ConfigError::new(format!("{tp}.{}", e.path), e.message));
                        continue;
                    }
                };
                match compile(
                    name,
                    &resolved,
                    Some((id, ov)),
                    &tp,
                    authserv_id,
                    &mut interner,
                ) {
                    Ok(p) => {
                        out.overridden
                            .insert((name.clone(), id.clone()), Arc::new(p));
                    }
                    Err(e) => errors.extend(e),
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            errors.dedup();
            Err(errors)
        }
    }

    /// The policy that decides for `tenant` (with its override, if any); `default` for a
    /// policy name that does not exist (validation prevents that).
    pub fn live(&self, tenant: &str, policy: &str) -> Arc<CompiledPolicy> {
        self.resolved(tenant, policy)
            .or_else(|| self.resolved(tenant, DEFAULT))
            .expect("the default policy is always compiled")
    }

    /// The shadow policies evaluated beside `policy` for `tenant`.
    pub fn shadows(&self, tenant: &str, policy: &str) -> Vec<Arc<CompiledPolicy>> {
        self.shadows
            .get(policy)
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| self.resolved(tenant, n))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn resolved(&self, tenant: &str, policy: &str) -> Option<Arc<CompiledPolicy>> {
        self.overridden
            .get(&(policy.to_owned(), tenant.to_owned()))
            .or_else(|| self.base.get(policy))
            .cloned()
    }

    /// Every compiled policy with its label, for `check`'s explanation and logs.
    pub fn labels(&self) -> Vec<String> {
        let mut v: Vec<String> = self.base.values().map(|p| p.label()).collect();
        v.extend(self.overridden.values().map(|p| {
            format!(
                "{} (tenant {})",
                p.label(),
                p.tenant.as_deref().unwrap_or("?")
            )
        }));
        v.sort();
        v
    }
}

fn compile(
    name: &str,
    p: &PolicyConfig,
    tenant: Option<(&String, &TenantOverride)>,
    path: &str,
    default_authserv: &str,
    interner: &mut Interner,
) -> Result<CompiledPolicy, Vec<ConfigError>> {
    let authserv = p.auth.authserv_id.as_deref().unwrap_or(default_authserv);
    let checks = check::build(path, p, authserv, interner)?;
    let mut text = toml::to_string(p).unwrap_or_default();
    if let Some((_, ov)) = tenant {
        text.push_str(&toml::to_string(ov).unwrap_or_default());
    }
    Ok(CompiledPolicy {
        name: name.to_owned(),
        version: short_hash(text.as_bytes()),
        tenant: tenant.map(|(id, _)| id.clone()),
        lists: Lists::new(&p.allow, &p.block, tenant.map(|(_, ov)| ov)),
        config: p.clone(),
        checks,
    })
}

/// FNV-1a, 12 hex digits: stable across builds and processes.
fn short_hash(text: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", h >> 16)
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
            scores = { "spf.fial" = 1.0 }
            attachments.blocked_types = ["exe", "pdff"]
            [[rule]]
            name = "r"
            target = "body"
            pattern = "(unclosed"
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
            "policy.p.scores.spf.fial",
            "policy.p.attachments.blocked_types[1]",
            "policy.p.rule[0].pattern",
            "policy.p.tenant.acme.thresholds.quarantine",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{want} in {errs:#?}"
            );
        }
    }

    #[test]
    fn versions_change_with_what_decides() {
        let a = short_hash(
            toml::to_string(&PolicyConfig::default())
                .unwrap()
                .as_bytes(),
        );
        let mut p = PolicyConfig::default();
        p.thresholds.tag = 4.5;
        let b = short_hash(toml::to_string(&p).unwrap().as_bytes());
        assert_ne!(a, b);
        assert_eq!(a.len(), 12);
    }
}
