//! Configuration: the serde model (`model`), reading files with every error collected (`load`),
//! semantic validation (`validate`), human units (`units`), and the [`Snapshot`] that a running
//! process holds in an `ArcSwap` and replaces on SIGHUP (build, validate, swap).
//!
//! A session keeps the snapshot it started with; only new sessions see a new config.

pub mod load;
pub mod model;
pub mod units;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use model::*;
pub use units::{Bytes, Dur};
pub use validate::RoleSet;

use crate::geo::{Countries, DatabaseHandle, Locator, Override, Point};
use crate::topology::{SiloIdx, Topology};

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

/// A validated configuration with everything derived from it, ready to serve. Immutable: reload
/// builds a new one.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub topology: Topology,
    pub geo: Locator,
    /// The silo this node belongs to.
    pub local_silo: SiloIdx,
    /// Short hash of the files' text, shown in `/status` and logs.
    pub version: String,
    pub warnings: Vec<String>,
    pub path: PathBuf,
}

impl Snapshot {
    /// Reads, validates and builds. `previous` lends its geo database when the path is unchanged,
    /// so a reload does not re-read the file.
    pub fn load(
        path: &Path,
        roles: RoleSet,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigErrors> {
        let read = load::read(path)?;
        Self::build(read, path, roles, previous)
    }

    /// Validates what [`load::read`] got and builds the snapshot. Parse errors, validation
    /// errors and a geo database that will not open are reported together.
    pub fn build(
        read: load::Read,
        path: &Path,
        roles: RoleSet,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigErrors> {
        let load::Read {
            config,
            text,
            mut errors,
        } = read;
        let warnings = match validate::validate(&config, roles) {
            Ok(w) => w,
            Err(ConfigErrors(more)) => {
                errors.extend(more);
                Vec::new()
            }
        };
        let db = match &config.geo.database {
            None => None,
            Some(p) => {
                let reuse = previous
                    .and_then(|s| s.geo.database())
                    .filter(|h| h.path() == p.as_path())
                    .cloned();
                match reuse.map(Ok).unwrap_or_else(|| DatabaseHandle::open(p)) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        errors.push(ConfigError::new("geo.database", e.to_string()));
                        None
                    }
                }
            }
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let topology = Topology::build(&config);
        let local_silo = config
            .node
            .silo
            .as_deref()
            .and_then(|n| topology.silo_by_name(n))
            .unwrap_or(SiloIdx(0));
        let countries = Countries::embedded();
        let overrides = config
            .geo
            .overrides
            .iter()
            .filter_map(|o| {
                let point = match (o.lat, o.lon) {
                    (Some(lat), Some(lon)) => Point::new(lat, lon),
                    _ => countries.get(&o.country).map(|c| c.point),
                }?;
                Some(Override {
                    net: o.cidr,
                    country: o.country.to_ascii_uppercase(),
                    point,
                })
            })
            .collect();
        let local_point = topology.silos.get(local_silo.0).map(|s| s.point);
        let geo = Locator::new(db, overrides, local_point);
        Ok(Snapshot {
            version: version_hash(&text),
            config,
            topology,
            geo,
            local_silo,
            warnings,
            path: path.to_path_buf(),
        })
    }

    pub fn local_silo_name(&self) -> &str {
        &self.topology.silos[self.local_silo.0].name
    }
}

/// FNV-1a over the config text: stable across builds, short enough for a status page.
fn version_hash(text: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", h >> 16)
}

/// The config in force, swapped atomically on reload.
pub type Shared = Arc<arc_swap::ArcSwap<Snapshot>>;
