//! What one process is: the config loaded with every check — the schema's (`config`) and the
//! roles' own (`dns::check_records`, `scan::compile::check`, `delivery::tls::check`) — into a [`Snapshot`].
//!
//! This is the top of the house: it may name every role, and nothing imports it but the binary,
//! the CLI and tests. Everything that loads a config to run or explain it comes through here, so
//! `maildistiller check`, startup and reload judge a file the same way.

use std::path::Path;

use crate::config::{Config, ConfigError, ConfigErrors, RoleSet};
use crate::snapshot::Snapshot;

/// The checks that need a role's code. They run whatever roles this process runs: one fleet
/// file serves every node, and a broken policy is worth refusing on an edge too. Recipient
/// files are the engines' alone (edges never read them), so only an engine checks them.
pub fn role_checks(c: &Config, roles: RoleSet) -> Vec<ConfigError> {
    let mut errors = crate::dns::check_records(c);
    errors.extend(crate::engine::scan::compile::check(c));
    errors.extend(crate::shared::check(c));
    errors.extend(crate::engine::delivery::tls::check(c));
    if roles.engine {
        errors.extend(recipient_files(c));
    }
    errors
}

/// Every tenant's `recipients_file` reads and parses (`engine::verify::list`).
fn recipient_files(c: &Config) -> Vec<ConfigError> {
    let with_files = c.tenants.iter().any(|t| t.recipients_file.is_some());
    if !with_files {
        return Vec::new();
    }
    let topology = crate::topology::Topology::build(c);
    topology
        .tenants
        .iter()
        .filter_map(|t| {
            let path = t.recipients_file.as_ref()?;
            let why = crate::engine::verify::list::read(path, t, &topology).err()?;
            Some(ConfigError::new(
                format!("tenant[{}].recipients_file", t.id),
                why,
            ))
        })
        .collect()
}

/// Reads, validates (schema and roles) and builds the snapshot of `path` for `roles`.
pub fn load(path: &Path, roles: RoleSet) -> Result<Snapshot, ConfigErrors> {
    Snapshot::load(path, roles, None, role_checks)
}
