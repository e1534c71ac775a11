//! Per-tenant filtering policy: named policies in config, assigned per tenant.

use serde::{Deserialize, Serialize};

use crate::config::validate::Checker;

/// A named filtering policy. The scanning issue fills in the rules; the name is referenced by
/// tenants and checked here. `default` always exists.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    pub description: Option<String>,
}

impl PolicyConfig {
    pub fn check(&self, _path: &str, _k: &mut Checker) {}
}
