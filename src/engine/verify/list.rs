//! Recipient files (`tenant.recipients_file`): their format, reading them, and keeping each
//! tenant's list in force while the files change underneath.
//!
//! Format: UTF-8, one entry a line — `local@domain` (that address) or `@domain` (every address
//! of that domain: a catch-all). `#` at the start of a line or after a space starts a comment;
//! blank lines are ignored; case does not matter. Every domain must be one the tenant receives
//! for (as routing would find it, subdomains included when the tenant has them): a line for
//! another tenant's domain is a mistake, reported with its line number. A bare local part is
//! refused here (it is allowed in the inline `recipients` list only).
//!
//! Lifecycle, as the geo database's (`ops::watch_geo`): [`Lists::scan`] looks at every
//! configured file (size, mtime, inode) at start, after each config reload, and every
//! `engine.verify.reload_interval`; a file whose identity changed is read whole and parsed off
//! the runtime's threads, then swapped in atomically (readers keep the list they hold). A file
//! that cannot be read or does not parse keeps the list last read, and is logged and counted
//! once per change of the file; a tenant whose file was never read has no list, and its
//! recipients get `451 4.4.3` (never a `550` for a list we could not read).
//!
//! Bounds: a file larger than [`MAX_FILE_BYTES`] is refused (about a million addresses); one
//! list per tenant with a file, dropped when the tenant goes from the config.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::topology::{Tenant, Topology};

/// Largest recipients file read (64 MiB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Line errors reported of one file; the count of the rest is said.
const ERRORS_SHOWN: usize = 10;

/// One tenant's known recipients, lower case.
#[derive(Debug, Default)]
pub struct RecipientList {
    addresses: HashSet<String>,
    /// Catch-all domains (`@domain`), without trailing dot.
    domains: HashSet<String>,
}

impl RecipientList {
    pub fn contains(&self, address: &str) -> bool {
        let a = address.to_ascii_lowercase();
        self.addresses.contains(&a)
            || a.rsplit_once('@')
                .is_some_and(|(_, d)| self.domains.contains(d.trim_end_matches('.')))
    }

    /// Entries (addresses and catch-all domains).
    pub fn len(&self) -> usize {
        self.addresses.len() + self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses a file's text; `owns(domain)` says whether the tenant receives for a domain. Every
/// bad line is an error (`line N: why`); any error refuses the whole file.
pub fn parse(text: &str, owns: impl Fn(&str) -> bool) -> Result<RecipientList, Vec<String>> {
    let mut list = RecipientList::default();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let at = |why: String| format!("line {}: {why}", i + 1);
        let entry = line.to_ascii_lowercase();
        let (local, domain) = match entry.rsplit_once('@') {
            Some(parts) => parts,
            None => {
                errors.push(at(format!(
                    "{line:?} is not local@domain or @domain (a bare local part belongs in the \
                     tenant's `recipients` list)"
                )));
                continue;
            }
        };
        let domain = domain.trim_end_matches('.');
        let shaped = if local.is_empty() {
            crate::smtp::validate_address(&format!("x@{domain}"))
        } else {
            crate::smtp::validate_address(&entry)
        };
        if let Err(reply) = shaped {
            let why: Vec<&str> = reply.text_lines().collect();
            errors.push(at(format!("{line:?}: {}", why.join(" "))));
            continue;
        }
        if !owns(domain) {
            errors.push(at(format!(
                "{line:?}: {domain} is not a domain of this tenant"
            )));
            continue;
        }
        if local.is_empty() {
            list.domains.insert(domain.to_owned());
        } else {
            list.addresses.insert(format!("{local}@{domain}"));
        }
    }
    if errors.is_empty() {
        Ok(list)
    } else {
        Err(errors)
    }
}

/// The line without its comment: `#` at its start or after white space.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// Reads and parses `tenant`'s file, the tenant's domains judged by `topology`. The error is
/// one line: the path, then the first problems.
pub fn read(path: &Path, tenant: &Tenant, topology: &Topology) -> Result<RecipientList, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{shown}: {} bytes, more than the {MAX_FILE_BYTES} a recipients file may have",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let owns = |d: &str| {
        topology
            .tenant_for_domain(d)
            .is_some_and(|t| t.id == tenant.id)
    };
    parse(&text, owns).map_err(|errors| {
        let more = errors.len().saturating_sub(ERRORS_SHOWN);
        let mut s = format!(
            "{shown}: {}",
            errors[..errors.len().min(ERRORS_SHOWN)].join("; ")
        );
        if more > 0 {
            s.push_str(&format!("; and {more} more"));
        }
        s
    })
}

/// What identifies one version of a file: replaced by rename or rewritten, one of these moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Identity {
    /// The file's identity; a file that cannot be looked at has one too (all zero), so its
    /// absence is reported once, not at every look.
    fn of(path: &Path) -> Identity {
        match std::fs::metadata(path) {
            Ok(m) => Identity {
                modified: m.modified().ok(),
                len: m.len(),
                inode: std::os::unix::fs::MetadataExt::ino(&m),
            },
            Err(_) => Identity {
                modified: None,
                len: 0,
                inode: 0,
            },
        }
    }
}

/// One tenant's file as last looked at.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    /// The identity last looked at (read, or failed).
    seen: Identity,
    /// The list last read; `None` while the file has never been read.
    list: Option<Arc<RecipientList>>,
}

/// What one look at a file found (for logs and metrics).
#[derive(Debug)]
pub enum Change {
    /// Read: the tenant, and how many entries.
    Read(String, usize),
    /// Could not be read or parsed: the tenant, and why (its previous list stays).
    Failed(String, String),
}

/// Every tenant's list in force.
#[derive(Default)]
pub struct Lists {
    entries: ArcSwap<HashMap<String, Entry>>,
}

impl Lists {
    /// The list in force for `tenant` read from `path`; `None` when that file was never read.
    pub fn get(&self, tenant: &str, path: &Path) -> Option<Arc<RecipientList>> {
        let entries = self.entries.load();
        let e = entries.get(tenant)?;
        if e.path != path {
            return None;
        }
        e.list.clone()
    }

    /// Looks at every tenant's file in `topology` and reads the changed ones; swaps the result
    /// in. Blocking file I/O: call it off the runtime's threads. Only one scan runs at a time
    /// (the watcher's).
    pub fn scan(&self, topology: &Topology) -> Vec<Change> {
        let old = self.entries.load_full();
        let mut next = HashMap::new();
        let mut changes = Vec::new();
        for t in &topology.tenants {
            let Some(path) = &t.recipients_file else {
                continue;
            };
            let id = t.id.0.clone();
            let prev = old.get(&id).filter(|e| &e.path == path);
            let seen = Identity::of(path);
            if let Some(p) = prev
                && p.seen == seen
            {
                next.insert(id, p.clone());
                continue;
            }
            let list = match read(path, t, topology) {
                Ok(list) => {
                    changes.push(Change::Read(id.clone(), list.len()));
                    Some(Arc::new(list))
                }
                Err(why) => {
                    changes.push(Change::Failed(id.clone(), why));
                    prev.and_then(|p| p.list.clone())
                }
            };
            next.insert(
                id,
                Entry {
                    path: path.clone(),
                    seen,
                    list,
                },
            );
        }
        self.entries.store(Arc::new(next));
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme(d: &str) -> bool {
        d == "acme.example" || d.ends_with(".acme.example")
    }

    #[test]
    fn addresses_catch_alls_and_comments() {
        let list = parse(
            "# the sales team\nBob@Acme.Example\n  alice@acme.example   # since 2024\n\n@eu.acme.example\nodd#tag@acme.example\n",
            acme,
        )
        .unwrap();
        assert_eq!(list.len(), 4);
        assert!(list.contains("bob@acme.example"));
        assert!(list.contains("ALICE@acme.example"));
        assert!(list.contains("anyone@eu.acme.example"));
        assert!(list.contains("anyone@EU.acme.example."));
        assert!(
            list.contains("odd#tag@acme.example"),
            "# inside an address is not a comment"
        );
        assert!(!list.contains("carol@acme.example"));
        assert!(!list.contains("bob@other.example"));
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let errors = parse(
            "bob@acme.example\nbob\nx@globex.example\n@\nfoo@bar@\n a b@acme.example\n",
            acme,
        )
        .unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(
            errors[0].starts_with("line 2: \"bob\" is not local@domain"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with(
                "line 3: \"x@globex.example\": globex.example is not a domain of this tenant"
            ),
            "{errors:?}"
        );
        assert!(errors[2].starts_with("line 4:"), "{errors:?}");
        assert!(errors[3].starts_with("line 5:"), "{errors:?}");
        assert!(errors[4].starts_with("line 6:"), "{errors:?}");
    }
}
