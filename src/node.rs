//! What one process is: the config loaded with every check — the schema's (`config`) and the
//! roles' own (`dns::check_records`, `scan::compile::check`) — into a [`Snapshot`].
//!
//! This is the top of the house: it may name every role, and nothing imports it but the binary,
//! the CLI and tests. Everything that loads a config to run or explain it comes through here, so
//! `maildistiller check`, startup and reload judge a file the same way.

use std::path::Path;

use crate::config::{Config, ConfigError, ConfigErrors, RoleSet};
use crate::snapshot::Snapshot;

/// The checks that need a role's code. They run whatever roles this process runs: one fleet
/// file serves every node, and a broken policy is worth refusing on an edge too.
pub fn role_checks(c: &Config, _roles: RoleSet) -> Vec<ConfigError> {
    let mut errors = crate::dns::check_records(c);
    errors.extend(crate::engine::scan::compile::check(c));
    errors.extend(crate::shared::check(c));
    errors
}

/// Reads, validates (schema and roles) and builds the snapshot of `path` for `roles`.
pub fn load(path: &Path, roles: RoleSet) -> Result<Snapshot, ConfigErrors> {
    Snapshot::load(path, roles, None, role_checks)
}
