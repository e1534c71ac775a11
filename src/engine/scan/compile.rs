//! Compiling policies: the schema of `[policy.NAME]` (and each tenant's override merged into
//! it) becomes the checks to run and the lists to consult, once per config snapshot. What the
//! schema alone cannot judge — built-in finding names in `scores`, file type names, rule
//! patterns, scanner addresses — is checked here, because it takes the scanner's own code; the
//! snapshot builder (`node`) runs [`Policies::build`] too, so `maildistiller check` and reload
//! refuse such a policy with its path before anything is bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::check::{self, Check, Interner};
use super::magic::TYPE_NAMES;
use crate::config::policy::{DEFAULT, PolicyConfig, TenantOverride, cross_check, resolve};
use crate::config::{Config, ConfigError};
use crate::engine::policy::Lists;
use crate::engine::policy::finding::BUILTIN_SCORES;
use crate::hash::short_hex;

/// What only the scanner can check, for every policy and every tenant override, without
/// building anything that touches the system (resolvers, sockets): the snapshot builder runs
/// it (`node::role_checks`), so `check` and reload refuse such a policy before it is used.
pub fn check(c: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (name, p) in &c.policies {
        let path = format!("policy.{name}");
        scanner_checks(&path, p, &mut errors);
        for (id, ov) in &p.tenant {
            if let Ok(r) = resolve(p, ov) {
                scanner_checks(&format!("{path}.tenant.{id}"), &r, &mut errors);
            }
        }
    }
    errors
}

/// What only the scanner can check in one policy (as resolved for a tenant or not).
fn scanner_checks(path: &str, p: &PolicyConfig, errors: &mut Vec<ConfigError>) {
    for name in p.scores.keys() {
        if !BUILTIN_SCORES.iter().any(|(n, _)| n == name) {
            errors.push(ConfigError::new(
                format!("{path}.scores.{name}"),
                "not a built-in finding (rules and DNS lists carry their own scores)",
            ));
        }
    }
    for (i, t) in p.attachments.blocked_types.iter().enumerate() {
        if !TYPE_NAMES.contains(&t.to_ascii_lowercase().as_str()) {
            errors.push(ConfigError::new(
                format!("{path}.attachments.blocked_types[{i}]"),
                format!("unknown type {t:?} (known: {})", TYPE_NAMES.join(", ")),
            ));
        }
    }
    check::check_config(path, p, errors);
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
    /// The authserv-id our `Authentication-Results` carry, when this policy runs the `auth`
    /// check: incoming fields claiming it are forged and removed (RFC 8601 §5).
    pub authserv_id: Option<String>,
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
        Self::build_in(c, authserv_id, Interner::default())
    }

    /// [`Policies::build`], the checks sharing `interner` (which names the fleet client).
    pub fn build_in(
        c: &Config,
        authserv_id: &str,
        mut interner: Interner,
    ) -> Result<Policies, Vec<ConfigError>> {
        let mut errors = cross_check(c).0;
        interner.set_spool_dir(&c.engine.spool_dir);
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
            scanner_checks(&path, base, &mut errors);
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
                    Ok(r) => {
                        scanner_checks(&tp, &r, &mut errors);
                        r
                    }
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
    let authserv_id = checks
        .iter()
        .any(|c| c.name() == "auth")
        .then(|| authserv.to_owned());
    let mut text = toml::to_string(p).unwrap_or_default();
    if let Some((_, ov)) = tenant {
        text.push_str(&toml::to_string(ov).unwrap_or_default());
    }
    Ok(CompiledPolicy {
        name: name.to_owned(),
        version: short_hex(text.as_bytes()),
        tenant: tenant.map(|(id, _)| id.clone()),
        lists: Lists::new(&p.allow, &p.block, tenant.map(|(_, ov)| ov)),
        config: p.clone(),
        checks,
        authserv_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::load::from_str(text, std::path::Path::new(".")).unwrap()
    }

    #[test]
    fn what_only_the_scanner_knows_is_reported_with_paths() {
        let c = config(
            r#"
            [policy.p]
            scores = { "spf.fial" = 1.0 }
            attachments.blocked_types = ["exe", "pdff"]
            [[policy.p.rule]]
            name = "r"
            target = "body"
            pattern = "(unclosed"
            [policy.p.tenant.acme]
            attachments.blocked_types = ["docx", "nope"]
            "#,
        );
        let errs: Vec<String> = check(&c).iter().map(|e| e.to_string()).collect();
        for want in [
            "policy.p.scores.spf.fial",
            "policy.p.attachments.blocked_types[1]",
            "policy.p.rule[0].pattern",
            "policy.p.tenant.acme.attachments.blocked_types[1]",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{want} in {errs:#?}"
            );
        }
    }

    #[test]
    fn versions_change_with_what_decides() {
        let a = short_hex(
            toml::to_string(&PolicyConfig::default())
                .unwrap()
                .as_bytes(),
        );
        let mut p = PolicyConfig::default();
        p.thresholds.tag = 4.5;
        let b = short_hex(toml::to_string(&p).unwrap().as_bytes());
        assert_ne!(a, b);
        assert_eq!(a.len(), 12);
    }
}
