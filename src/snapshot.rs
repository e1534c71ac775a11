//! The [`Snapshot`]: one validated configuration with everything built from it (topology, geo
//! locator), immutable, held by a running process in an `ArcSwap` ([`Live`]) and replaced on
//! SIGHUP or `POST /-/reload` (build, validate, swap). A session keeps the snapshot it started
//! with; only new sessions see a new config.
//!
//! It sits above `config`, `geo` and `topology` and below every role. The checks that need a
//! role's own code are handed in as [`RoleChecks`] (by `node`, which knows the roles), so this
//! module never imports a role.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, ConfigError, ConfigErrors, RoleSet, load, validate};
use crate::geo::{Countries, DatabaseHandle, Locator, Override, Point};
use crate::hash::short_hex;
use crate::topology::{SiloIdx, Topology};

/// The checks of a config that need a role's own code (DNS record syntax, policies compiled by
/// the scanner); they run after the schema's. `node::role_checks` is the real one.
pub type RoleChecks = fn(&Config, RoleSet) -> Vec<ConfigError>;

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
    /// The roles it was validated for, and the role checks it passed: a reload checks the new
    /// file the same way.
    pub roles: RoleSet,
    pub role_checks: RoleChecks,
}

impl Snapshot {
    /// Reads, validates and builds. `previous` lends its geo database when the path is unchanged,
    /// so a reload does not re-read the file. Callers outside the roles use `node::load`, which
    /// supplies the role checks.
    pub fn load(
        path: &Path,
        roles: RoleSet,
        previous: Option<&Snapshot>,
        role_checks: RoleChecks,
    ) -> Result<Snapshot, ConfigErrors> {
        let read = load::read(path)?;
        Self::build(read, path, roles, previous, role_checks)
    }

    /// Reads the file this snapshot came from again and builds its successor, checked the same
    /// way (reload).
    pub fn reload(&self) -> Result<Snapshot, ConfigErrors> {
        Self::load(&self.path, self.roles, Some(self), self.role_checks)
    }

    /// Validates what [`load::read`] got and builds the snapshot. Parse errors, validation
    /// errors and a geo database that will not open are reported together.
    pub fn build(
        read: load::Read,
        path: &Path,
        roles: RoleSet,
        previous: Option<&Snapshot>,
        role_checks: RoleChecks,
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
        // What only a role's code can judge: reported with the schema's errors, so one run
        // of `check` shows every problem.
        errors.extend(role_checks(&config, roles));
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
            version: short_hex(&text),
            config,
            topology,
            geo,
            local_silo,
            warnings,
            path: path.to_path_buf(),
            roles,
            role_checks,
        })
    }

    pub fn local_silo_name(&self) -> &str {
        &self.topology.silos[self.local_silo.0].name
    }
}

/// The config in force, swapped atomically on reload. A session loads it once and keeps that
/// snapshot to its end.
pub type Live = Arc<arc_swap::ArcSwap<Snapshot>>;
