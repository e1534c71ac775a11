//! Configuration: the schema operators write, read with every error collected, and checked.
//!
//! This module is the floor of the house: every role reads it, and it imports no role. One file
//! per section: the topology and the sections every node has (`model`: node, ops, geo, regions,
//! silos, tenants), and one per role or part (`edge`, `engine`, `dns`, `health`, `policy` with
//! `outbreak`, `shared`, `webmail`, `verify`). Each section checks what it can see alone (ranges, names, both-or-neither);
//! `validate` checks the whole file (references, duplicates, listener clashes). Checks that need
//! a role's own code (DNS record syntax, policies compiled by the scanner) run where the snapshot
//! is built ([`crate::node`]), so `maildistiller check` still reports them, with their paths.
//!
//! What a running process holds is a [`crate::snapshot::Snapshot`]: this config and everything
//! built from it.

pub mod detect;
pub mod dns;
pub mod edge;
pub mod engine;
pub mod health;
pub mod load;
pub mod model;
pub mod outbreak;
pub mod policy;
pub mod shadow;
pub mod shared;
pub mod units;
pub mod validate;
pub mod verify;
pub mod webmail;

use std::fmt;

pub use dns::DnsConfig;
pub use edge::EdgeConfig;
pub use engine::{BareNewline, DeliveryConfig, EngineConfig};
pub use health::HealthConfig;
pub use model::*;
pub use policy::PolicyConfig;
pub use shadow::{OnShadowFailure, Redundancy, ShadowConfig};
pub use shared::SharedConfig;
pub use units::{Bytes, DeliveryHost, Dur};
pub use validate::RoleSet;
pub use verify::VerifyConfig;
pub use webmail::WebmailConfig;

/// One problem in a configuration, with the path of the value at fault
/// (`tenant[acme].regions[1]: unknown region "xx"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
