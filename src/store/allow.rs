//! Users' own allow lists ("allow this sender" in webmail), kept in small files under the spool:
//!
//! ```text
//! SPOOL/allow/<tenant>/<address>.txt    one entry a line: an address, or a domain (`@example.com`
//!                                       or `example.com`, which also covers its subdomains)
//! ```
//!
//! The address in the file name is lower-cased, and any byte other than letters, digits and
//! `.-_+@` is written `%XX`, so a file name is always safe. Files are replaced atomically (write a
//! temporary file, sync, rename), so a reader sees the old list or the new one.
//!
//! Webmail writes them ([`change`]); the scanner reads them through [`AllowStore::allowed`] (or
//! [`sender_allowed`] for a one-off check): a message whose every recipient allows its sender
//! skips the spam actions, never the virus ones (`engine::scan`). [`AllowStore`] caches each
//! file and re-reads it when its modification time or size changes, so a check costs one
//! `stat` per recipient. Bounds: `MAX_ENTRIES` entries per user; the cache holds at most
//! `MAX_CACHED` users (cleared when full).
//!
//! In a cluster, webmail writes the entry on every engine it can reach (`webmail/peer.rs`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Entries one user may have.
pub const MAX_ENTRIES: usize = 1000;
/// Users whose list the cache keeps.
pub const MAX_CACHED: usize = 50_000;

/// Where a user's list lives. `None` when the tenant id is not a safe name (never for a valid
/// config: ids are lowercase letters, digits and `-`).
pub fn path(spool_dir: &Path, tenant: &str, user: &str) -> Option<PathBuf> {
    let safe_tenant = !tenant.is_empty()
        && !tenant.starts_with('.')
        && tenant
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !safe_tenant || user.is_empty() {
        return None;
    }
    let mut name = String::new();
    for b in user.to_ascii_lowercase().bytes() {
        if b.is_ascii_alphanumeric() || b"-_+@".contains(&b) || (b == b'.' && !name.is_empty()) {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    Some(
        spool_dir
            .join("allow")
            .join(tenant)
            .join(format!("{name}.txt")),
    )
}

/// Normalises what a user asked to allow: a lower-cased address or `@domain`. `None` for
/// anything else (empty, spaces, control characters, no domain).
pub fn normalise(entry: &str) -> Option<String> {
    let e = entry.trim().trim_end_matches('.').to_ascii_lowercase();
    let (local, domain) = match e.rsplit_once('@') {
        Some((l, d)) => (l, d),
        None => ("", e.as_str()),
    };
    let ok = !domain.is_empty()
        && domain.contains('.')
        && e.len() <= 320
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !local.chars().any(|c| c.is_control() || c.is_whitespace());
    ok.then(|| format!("{local}@{domain}"))
}

fn matches(entry: &str, sender: &str) -> bool {
    match entry.strip_prefix('@') {
        Some(domain) => sender
            .rsplit_once('@')
            .is_some_and(|(_, d)| d == domain || d.ends_with(&format!(".{domain}"))),
        None => entry == sender,
    }
}

fn read(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter_map(|l| {
                    let l = l.trim();
                    if l.is_empty() || l.starts_with('#') {
                        None
                    } else {
                        normalise(l)
                    }
                })
                .take(MAX_ENTRIES)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `sender` (an address) is on `user`'s own allow list. Reads the file; prefer an
/// [`AllowStore`] for repeated checks.
pub fn sender_allowed(spool_dir: &Path, tenant: &str, user: &str, sender: &str) -> bool {
    let s = sender.trim().to_ascii_lowercase();
    path(spool_dir, tenant, user).is_some_and(|p| read(&p).iter().any(|e| matches(e, &s)))
}

/// The entries of a user's list, in file order.
pub fn entries(spool_dir: &Path, tenant: &str, user: &str) -> Vec<String> {
    path(spool_dir, tenant, user)
        .map(|p| read(&p))
        .unwrap_or_default()
}

/// Why a list could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum AllowError {
    #[error("{0:?} is not an address or a domain")]
    Invalid(String),
    #[error("the list is full ({MAX_ENTRIES} entries)")]
    Full,
    #[error("cannot write the allow list: {0}")]
    Io(#[from] std::io::Error),
}

/// Adds (`add = true`) or removes an entry; returns the normalised entry. Blocking file I/O.
pub fn change(
    spool_dir: &Path,
    tenant: &str,
    user: &str,
    entry: &str,
    add: bool,
) -> Result<String, AllowError> {
    let e = normalise(entry).ok_or_else(|| AllowError::Invalid(entry.to_owned()))?;
    let p = path(spool_dir, tenant, user).ok_or_else(|| AllowError::Invalid(user.to_owned()))?;
    let mut list = read(&p);
    let present = list.contains(&e);
    match (add, present) {
        (true, true) | (false, false) => return Ok(e),
        (true, false) if list.len() >= MAX_ENTRIES => return Err(AllowError::Full),
        (true, false) => list.push(e.clone()),
        (false, true) => list.retain(|x| *x != e),
    }
    let dir = p.parent().expect("a list path has a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        p.file_name().and_then(|n| n.to_str()).unwrap_or("list")
    ));
    let mut text = format!("# allow list of {user}, written by maildistiller webmail\n");
    for x in &list {
        text.push_str(x);
        text.push('\n');
    }
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    std::fs::rename(&tmp, &p)?;
    Ok(e)
}

/// One user's list as last read, keyed by the file's (modification time, size) stamp.
type Cached = (Option<(SystemTime, u64)>, Vec<String>);

/// A cache of allow lists for the scanner: `allowed` costs one `stat` when nothing changed.
#[derive(Debug)]
pub struct AllowStore {
    spool_dir: PathBuf,
    cache: Mutex<HashMap<PathBuf, Cached>>,
}

impl AllowStore {
    pub fn new(spool_dir: &Path) -> AllowStore {
        AllowStore {
            spool_dir: spool_dir.to_path_buf(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The entry of `user`'s list that allows one of `senders` (envelope sender, header From;
    /// any case), if any.
    pub fn allowed(&self, tenant: &str, user: &str, senders: &[String]) -> Option<String> {
        let p = path(&self.spool_dir, tenant, user)?;
        let stamp = std::fs::metadata(&p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let mut g = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = g.get(&p).is_some_and(|(s, _)| *s == stamp);
        if !fresh {
            if g.len() >= MAX_CACHED {
                g.clear();
            }
            let list = if stamp.is_some() {
                read(&p)
            } else {
                Vec::new()
            };
            g.insert(p.clone(), (stamp, list));
        }
        let list = &g.get(&p)?.1;
        senders.iter().find_map(|s| {
            let s = s.trim().to_ascii_lowercase();
            list.iter().find(|e| matches(e, &s)).cloned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_written_atomically_and_matched_by_address_or_domain() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let store = AllowStore::new(d);
        let senders = |s: &str| vec![s.to_owned()];
        assert!(!sender_allowed(
            d,
            "acme",
            "Bob@Acme.example",
            "a@partner.example"
        ));
        assert_eq!(
            store.allowed("acme", "bob@acme.example", &senders("a@partner.example")),
            None
        );
        change(d, "acme", "Bob@Acme.example", "A@Partner.Example", true).unwrap();
        change(d, "acme", "bob@acme.example", "@friends.example", true).unwrap();
        assert!(sender_allowed(
            d,
            "acme",
            "bob@acme.example",
            "a@partner.example"
        ));
        assert!(sender_allowed(
            d,
            "acme",
            "BOB@acme.example",
            "x@mail.friends.example"
        ));
        assert!(!sender_allowed(
            d,
            "acme",
            "bob@acme.example",
            "b@partner.example"
        ));
        assert!(!sender_allowed(
            d,
            "acme",
            "eve@acme.example",
            "a@partner.example"
        ));
        assert!(!sender_allowed(
            d,
            "globex",
            "bob@acme.example",
            "a@partner.example"
        ));
        assert_eq!(
            store.allowed("acme", "bob@acme.example", &senders("A@partner.example")),
            Some("a@partner.example".into())
        );
        change(d, "acme", "bob@acme.example", "a@partner.example", false).unwrap();
        assert_eq!(entries(d, "acme", "bob@acme.example"), ["@friends.example"]);
        assert!(matches!(
            change(d, "acme", "bob@acme.example", "not an address", true),
            Err(AllowError::Invalid(_))
        ));
        // Hostile user names stay inside the tenant's directory.
        let p = path(d, "acme", "../../etc/passwd").unwrap();
        assert!(p.starts_with(d.join("allow/acme")), "{}", p.display());
        assert!(!p.file_name().unwrap().to_str().unwrap().contains('/'));
        assert!(path(d, "../x", "bob@acme.example").is_none());
    }
}
