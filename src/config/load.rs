//! Reading configuration files into the model, collecting every error instead of the first.
//!
//! The file is parsed as TOML once (a syntax error stops there: nothing after it can be trusted),
//! then each top-level section — and each element of `[[silo]]` and `[[tenant]]` — is
//! deserialised on its own with `serde_path_to_error`, so a typo in one tenant does not hide a
//! wrong type in a silo. Tenants may also come from `tenant_files` (files or directories of
//! `*.toml` files), since operators have thousands.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::model::*;
use super::{ConfigError, ConfigErrors};

/// What [`read`] got: the model (sections that failed to parse hold their defaults or are
/// left out), the text it was read from (for the version hash), and the errors met on the way.
pub struct Read {
    pub config: Config,
    pub text: Vec<u8>,
    pub errors: Vec<ConfigError>,
}

/// Reads `path` and every file it includes. Paths in the result are made absolute against the
/// directory of the file that named them. `Err` only when the main file cannot be read or is not
/// TOML at all; otherwise every parse error is in [`Read::errors`], so validation can still
/// report the problems of the parts that did parse.
pub fn read(path: &Path) -> Result<Read, ConfigErrors> {
    let mut errors = Vec::new();
    let mut sources = Vec::new();
    let text = read_text(path, &mut sources).map_err(|e| ConfigErrors(vec![e]))?;
    let mut table = parse_toml(path, &text).map_err(|e| ConfigErrors(vec![e]))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    merge_includes(&mut table, &base, &mut sources, &mut errors);
    let mut config = from_table(table, &base, &mut errors);

    let tenant_files = std::mem::take(&mut config.tenant_files);
    for entry in &tenant_files {
        for file in expand_tenant_path(entry, &mut errors) {
            let Ok(text) = read_text(&file, &mut sources).map_err(|e| errors.push(e)) else {
                continue;
            };
            let Ok(mut table) = parse_toml(&file, &text).map_err(|e| errors.push(e)) else {
                continue;
            };
            let prefix = format!("{}: ", file.display());
            if let Some(v) = table.remove("tenant") {
                let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
                let mut tenants = elements::<TenantConfig>(v, "tenant", &prefix, &mut errors);
                tenants.iter_mut().for_each(|t| t.resolve_paths(&dir));
                config.tenants.extend(tenants);
            }
            for key in table.keys() {
                errors.push(ConfigError::new(
                    format!("{prefix}{key}"),
                    "a tenant file holds only [[tenant]] entries",
                ));
            }
        }
    }
    config.tenant_files = tenant_files;
    Ok(Read {
        config,
        text: sources,
        errors,
    })
}

/// Parses one file's text alone (no tenant files): used by tests and by `from_str` callers.
pub fn from_str(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
    let table = parse_toml(Path::new("<config>"), text).map_err(|e| ConfigErrors(vec![e]))?;
    let mut errors = Vec::new();
    let config = from_table(table, base, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn read_text(path: &Path, sources: &mut Vec<u8>) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path.display().to_string(), format!("cannot read: {e}")))?;
    sources.extend_from_slice(text.as_bytes());
    Ok(text)
}

/// `include = ["fleet.toml"]`: files (relative to the including file) whose top-level keys are
/// merged in. Arrays of tables (`[[silo]]`, `[[tenant]]`) are concatenated, `regions` and `policy`
/// merged name by name; any other key defined twice is an error. Includes do not nest. This lets
/// every node of a fleet share one topology file and keep its own role sections.
fn merge_includes(
    table: &mut Table,
    base: &Path,
    sources: &mut Vec<u8>,
    errors: &mut Vec<ConfigError>,
) {
    let Some(inc) = table.remove("include") else {
        return;
    };
    let files: Vec<String> = match serde_path_to_error::deserialize(inc) {
        Ok(f) => f,
        Err(e) => {
            errors.push(ConfigError::new(
                "include",
                format!("expected a list of file names: {}", e.into_inner()),
            ));
            return;
        }
    };
    for name in files {
        let file = base.join(&name);
        let Ok(text) = read_text(&file, sources).map_err(|e| errors.push(e)) else {
            continue;
        };
        let Ok(included) = parse_toml(&file, &text).map_err(|e| errors.push(e)) else {
            continue;
        };
        for (key, value) in included {
            let at = format!("{}: {key}", file.display());
            match (table.get_mut(&key), value) {
                (_, _) if key == "include" => {
                    errors.push(ConfigError::new(at, "includes do not nest"))
                }
                (None, v) => {
                    table.insert(key, v);
                }
                (Some(Value::Array(mine)), Value::Array(theirs)) => mine.extend(theirs),
                (Some(Value::Table(mine)), Value::Table(theirs))
                    if key == "regions" || key == "policy" =>
                {
                    for (name, v) in theirs {
                        if mine.contains_key(&name) {
                            errors.push(ConfigError::new(
                                format!("{at}.{name}"),
                                "defined in both files",
                            ));
                        } else {
                            mine.insert(name, v);
                        }
                    }
                }
                (Some(_), _) => errors.push(ConfigError::new(
                    at,
                    "defined both here and in the including file",
                )),
            }
        }
    }
}

fn parse_toml(path: &Path, text: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(":{line}")
            })
            .unwrap_or_default();
        ConfigError::new(
            format!("{}{at}", path.display()),
            format!("invalid TOML: {}", e.message()),
        )
    })
}

fn from_table(mut table: Table, base: &Path, errors: &mut Vec<ConfigError>) -> Config {
    removed_keys(&mut table, "engine", super::engine::REMOVED_KEYS, errors);
    let mut c = Config {
        node: section(&mut table, "node", errors),
        ops: section(&mut table, "ops", errors),
        geo: section(&mut table, "geo", errors),
        regions: section(&mut table, "regions", errors),
        policies: section(&mut table, "policy", errors),
        edge: section(&mut table, "edge", errors),
        engine: section(&mut table, "engine", errors),
        dns: section(&mut table, "dns", errors),
        shared: section(&mut table, "shared", errors),
        tenant_files: section(&mut table, "tenant_files", errors),
        silos: table
            .remove("silo")
            .map(|v| elements(v, "silo", "", errors))
            .unwrap_or_default(),
        tenants: table
            .remove("tenant")
            .map(|v| elements(v, "tenant", "", errors))
            .unwrap_or_default(),
    };
    for key in table.keys() {
        errors.push(ConfigError::new(
            key.clone(),
            "unknown section (expected include, node, ops, geo, regions, silo, tenant, \
             tenant_files, policy, edge, engine, dns or shared)",
        ));
    }
    c.geo.database = match &c.geo.database {
        Some(db) => Some(base.join(db)),
        None => shipped_geo_database(base),
    };
    c.engine.spool_dir = base.join(&c.engine.spool_dir);
    let join = |p: &mut Option<PathBuf>| *p = p.as_ref().map(|p| base.join(p));
    join(&mut c.edge.tls_cert);
    join(&mut c.edge.tls_key);
    join(&mut c.engine.tls_cert);
    join(&mut c.engine.tls_key);
    join(&mut c.engine.webmail.tls_cert);
    join(&mut c.engine.webmail.tls_key);
    c.tenants.iter_mut().for_each(|t| t.resolve_paths(base));
    c.ops.token_file = c.ops.token_file.as_ref().map(|p| base.join(p));
    c.tenant_files = c.tenant_files.iter().map(|p| base.join(p)).collect();
    c
}

/// Takes keys that were removed out of `[section]`, each reported with what to write instead.
fn removed_keys(
    table: &mut Table,
    section: &str,
    removed: &[(&str, &str)],
    errors: &mut Vec<ConfigError>,
) {
    let Some(Value::Table(t)) = table.get_mut(section) else {
        return;
    };
    for (key, fix) in removed {
        if t.remove(*key).is_some() {
            errors.push(ConfigError::new(format!("{section}.{key}"), *fix));
        }
    }
}

/// Where the geo database shipped with maildistiller lives: beside the config in a checkout
/// (`config/../geo/`), or where the package installs it. Used when `geo.database` is not set.
pub const SHIPPED_GEO: &str = "geo-whois-asn-country.mmdb";

fn shipped_geo_database(base: &Path) -> Option<PathBuf> {
    [
        base.join("../geo").join(SHIPPED_GEO),
        Path::new("/usr/share/maildistiller").join(SHIPPED_GEO),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Deserialises one top-level key; a missing key gives the section's defaults.
fn section<T: DeserializeOwned + Default>(
    table: &mut Table,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> T {
    match table.remove(key) {
        None => T::default(),
        Some(v) => typed(v, key, errors).unwrap_or_default(),
    }
}

/// Deserialises an array of tables element by element; paths name elements by `name` or `id`.
fn elements<T: DeserializeOwned>(
    value: Value,
    key: &str,
    prefix: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<T> {
    let Value::Array(items) = value else {
        errors.push(ConfigError::new(
            format!("{prefix}{key}"),
            format!("expected an array of tables ([[{key}]])"),
        ));
        return Vec::new();
    };
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let label = item
                .get("id")
                .or_else(|| item.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("#{i}"));
            typed(item, &format!("{prefix}{key}[{label}]"), errors)
        })
        .collect()
}

fn typed<T: DeserializeOwned>(
    value: Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let full = if inner == "." || inner.is_empty() {
                path.to_owned()
            } else {
                format!("{path}.{inner}")
            };
            // toml appends "in `key`" on a second line; the path already says where.
            let msg = e.into_inner().to_string();
            let first = msg.lines().next().unwrap_or_default().trim().to_owned();
            errors.push(ConfigError::new(full, first));
            None
        }
    }
}

fn expand_tenant_path(path: &Path, errors: &mut Vec<ConfigError>) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_path_buf()];
    }
    match std::fs::read_dir(path) {
        Ok(dir) => {
            let mut files: Vec<PathBuf> = dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            files
        }
        Err(e) => {
            errors.push(ConfigError::new(
                path.display().to_string(),
                format!("cannot read directory: {e}"),
            ));
            Vec::new()
        }
    }
}
