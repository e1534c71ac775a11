//! `maildistiller user add|passwd|remove --config FILE --tenant ID ADDRESS [--admin]`: manages
//! webmail users without hand-editing hashes.
//!
//! The tenant is looked for in the main file, its `include` files and its `tenant_files`, in
//! that order; the file that defines it is edited with `toml_edit`, so comments and layout
//! stay. The result is validated as the running process would (`Snapshot::build` over the
//! config with the edited tenant) before anything is written; the file is then replaced
//! atomically (temporary file in the same directory, sync, rename, same permissions). The
//! running processes pick the change up on reload (SIGHUP).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value, value};

use crate::config::{ConfigErrors, RoleSet, TenantConfig, load};
use crate::snapshot::Snapshot;

/// The command line of `maildistiller user …` (the binary embeds it as a subcommand).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum UserCommand {
    /// Add a webmail user; the password is read from standard input.
    Add {
        /// The tenant id whose `[[tenant]]` entry gets the user.
        #[arg(long)]
        tenant: String,
        /// The user's address (in one of the tenant's domains).
        address: String,
        /// A tenant administrator: sees every mailbox of the tenant.
        #[arg(long)]
        admin: bool,
    },
    /// Change a user's password (read from standard input).
    Passwd {
        #[arg(long)]
        tenant: String,
        address: String,
    },
    /// Remove a user (their sessions end at the next reload).
    Remove {
        #[arg(long)]
        tenant: String,
        address: String,
    },
}

/// Runs `maildistiller user …`: done, bad input or a change that would not validate (usage,
/// 64), or an I/O error (1).
pub fn command(config: &Path, cmd: &UserCommand) -> Result<(), super::Failure> {
    let (tenant, address, action) = match cmd {
        UserCommand::Add {
            tenant,
            address,
            admin,
        } => (tenant, address, Action::Add { admin: *admin }),
        UserCommand::Passwd { tenant, address } => (tenant, address, Action::Passwd),
        UserCommand::Remove { tenant, address } => (tenant, address, Action::Remove),
    };
    let result = match action {
        Action::Remove => run(config, tenant, address, action, None),
        _ => read_password().and_then(|p| run(config, tenant, address, action, Some(&p))),
    };
    match result {
        Ok(msg) => {
            print!("{msg}");
            Ok(())
        }
        Err(e @ UserError::Io(_)) => Err(super::Failure::Runtime(e.to_string())),
        Err(e) => Err(super::Failure::Usage(e.to_string())),
    }
}

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Add { admin: bool },
    Passwd,
    Remove,
}

/// Why the command failed; every variant is the operator's to fix (exit 64) except `Io`.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Usage(String),
    #[error("{}: {message}", .path.display())]
    Toml { path: PathBuf, message: String },
    #[error("the change would make the config invalid:\n{0}")]
    Invalid(ConfigErrors),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads the new password from standard input: asked twice without echo on a terminal, one
/// line otherwise (for scripts).
pub fn read_password() -> Result<String, UserError> {
    let stdin = std::io::stdin();
    let read = |prompt: &str| -> Result<String, UserError> {
        let tty = stdin.is_terminal();
        let mut echo_off = false;
        if tty {
            eprint!("{prompt}");
            let _ = std::io::stderr().flush();
            echo_off = std::process::Command::new("stty")
                .arg("-echo")
                .stdin(std::process::Stdio::inherit())
                .status()
                .is_ok_and(|s| s.success());
        }
        let mut line = String::new();
        let r = stdin.lock().read_line(&mut line);
        if echo_off {
            let _ = std::process::Command::new("stty")
                .arg("echo")
                .stdin(std::process::Stdio::inherit())
                .status();
            eprintln!();
        }
        r?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    };
    let p = read("New password: ")?;
    if stdin.is_terminal() && read("Again: ")? != p {
        return Err(UserError::Usage("the passwords do not match".into()));
    }
    if p.chars().count() < MIN_PASSWORD {
        return Err(UserError::Usage(format!(
            "the password is too short (at least {MIN_PASSWORD} characters)"
        )));
    }
    Ok(p)
}

/// Files that may define tenants, in search order.
fn candidates(main: &Path) -> Result<Vec<PathBuf>, UserError> {
    let text = std::fs::read_to_string(main)?;
    let doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| UserError::Toml {
            path: main.to_path_buf(),
            message: e.to_string(),
        })?;
    let base = main.parent().map(Path::to_path_buf).unwrap_or_default();
    let strings = |key: &str| -> Vec<String> {
        doc.get(key)
            .and_then(Item::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = vec![main.to_path_buf()];
    out.extend(strings("include").iter().map(|f| base.join(f)));
    for entry in strings("tenant_files") {
        let p = base.join(entry);
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

fn user_address(t: &dyn toml_edit::TableLike) -> Option<String> {
    t.get("address")
        .and_then(Item::as_str)
        .map(str::to_ascii_lowercase)
}

/// Applies `action` to the tenant table's users. Returns what was done.
fn edit_tenant(
    t: &mut Table,
    address: &str,
    action: Action,
    hash: Option<&str>,
) -> Result<(), UserError> {
    let exists = |t: &Table| -> bool {
        match t.get("user") {
            Some(Item::ArrayOfTables(a)) => a
                .iter()
                .any(|u| user_address(u).as_deref() == Some(address)),
            Some(Item::Value(Value::Array(a))) => a
                .iter()
                .filter_map(Value::as_inline_table)
                .any(|u| user_address(u).as_deref() == Some(address)),
            _ => false,
        }
    };
    let found = exists(t);
    match action {
        Action::Add { .. } if found => {
            return Err(UserError::Usage(format!(
                "{address} already exists; use `maildistiller user passwd` to change its password"
            )));
        }
        Action::Passwd | Action::Remove if !found => {
            return Err(UserError::Usage(format!(
                "{address} is not a user of this tenant"
            )));
        }
        _ => {}
    }
    let hash = hash.unwrap_or_default();
    match (action, t.get_mut("user")) {
        (Action::Add { admin }, Some(Item::Value(Value::Array(a)))) => {
            let mut u = InlineTable::new();
            u.insert("address", address.into());
            u.insert("password_hash", hash.into());
            if admin {
                u.insert("admin", true.into());
            }
            a.push(u);
        }
        (Action::Add { admin }, existing) => {
            let mut u = Table::new();
            u["address"] = value(address);
            u["password_hash"] = value(hash);
            if admin {
                u["admin"] = value(true);
            }
            match existing {
                Some(Item::ArrayOfTables(a)) => a.push(u),
                _ => {
                    let mut a = ArrayOfTables::new();
                    a.push(u);
                    t.insert("user", Item::ArrayOfTables(a));
                }
            }
        }
        (Action::Passwd, Some(Item::ArrayOfTables(a))) => {
            for u in a.iter_mut() {
                if user_address(u).as_deref() == Some(address) {
                    u["password_hash"] = value(hash);
                }
            }
        }
        (Action::Passwd, Some(Item::Value(Value::Array(a)))) => {
            for u in a.iter_mut().filter_map(Value::as_inline_table_mut) {
                if user_address(u).as_deref() == Some(address) {
                    u.insert("password_hash", hash.into());
                }
            }
        }
        (Action::Remove, Some(Item::ArrayOfTables(a))) => {
            a.retain(|u| user_address(u).as_deref() != Some(address));
            if a.is_empty() {
                t.remove("user");
            }
        }
        (Action::Remove, Some(Item::Value(Value::Array(a)))) => {
            let keep: Array = a
                .iter()
                .filter(|v| {
                    v.as_inline_table().and_then(|u| user_address(u)).as_deref() != Some(address)
                })
                .cloned()
                .collect();
            *a = keep;
        }
        _ => {}
    }
    Ok(())
}

/// Does the whole command. `password` is needed for `add` and `passwd`. Returns the message
/// for the operator.
pub fn run(
    main: &Path,
    tenant: &str,
    address: &str,
    action: Action,
    password: Option<&str>,
) -> Result<String, UserError> {
    let address = address.trim().to_ascii_lowercase();
    if !address.contains('@') {
        return Err(UserError::Usage(format!(
            "{address:?} is not an email address"
        )));
    }
    let hash = match (action, password) {
        (Action::Remove, _) => None,
        (_, Some(p)) => Some(crate::webmail::secret::hash_password(p).map_err(UserError::Usage)?),
        (_, None) => return Err(UserError::Usage("a password is needed".into())),
    };
    for file in candidates(main)? {
        let text = std::fs::read_to_string(&file)?;
        let mut doc: DocumentMut =
            text.parse()
                .map_err(|e: toml_edit::TomlError| UserError::Toml {
                    path: file.clone(),
                    message: e.to_string(),
                })?;
        let Some(tenants) = doc.get_mut("tenant") else {
            continue;
        };
        let Some(tenants) = tenants.as_array_of_tables_mut() else {
            continue;
        };
        let Some(t) = tenants
            .iter_mut()
            .find(|t| t.get("id").and_then(Item::as_str) == Some(tenant))
        else {
            continue;
        };
        edit_tenant(t, &address, action, hash.as_deref())?;
        let new_text = doc.to_string();
        validate(main, &file, tenant, &new_text)?;
        write_atomically(&file, &new_text)?;
        let done = match action {
            Action::Add { admin: true } => "added (administrator)",
            Action::Add { admin: false } => "added",
            Action::Passwd => "password changed",
            Action::Remove => "removed",
        };
        return Ok(format!(
            "{address}: {done} in tenant {tenant} ({}).\nReload the running engines to apply it: \
             `systemctl reload maildistiller-engine` (SIGHUP) or POST /-/reload on their ops listener.\n",
            file.display()
        ));
    }
    Err(UserError::Usage(format!(
        "tenant {tenant:?} is not defined in {} or the files it includes",
        main.display()
    )))
}

/// Loads the config as the process would, with the edited tenant in place of the old one.
fn validate(main: &Path, file: &Path, tenant: &str, new_text: &str) -> Result<(), UserError> {
    let table: toml::Table = new_text
        .parse()
        .map_err(|e: toml::de::Error| UserError::Toml {
            path: file.to_path_buf(),
            message: e.to_string(),
        })?;
    let edited: TenantConfig = table
        .get("tenant")
        .and_then(toml::Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|t| t.get("id").and_then(toml::Value::as_str) == Some(tenant))
        })
        .cloned()
        .ok_or_else(|| UserError::Toml {
            path: file.to_path_buf(),
            message: "the tenant disappeared".into(),
        })?
        .try_into()
        .map_err(|e: toml::de::Error| UserError::Toml {
            path: file.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut read = load::read(main).map_err(UserError::Invalid)?;
    for t in read.config.tenants.iter_mut().filter(|t| t.id == tenant) {
        *t = edited.clone();
    }
    Snapshot::build(
        read,
        main,
        RoleSet::default(),
        None,
        crate::node::role_checks,
    )
    .map(|_| ())
    .map_err(UserError::Invalid)
}

fn write_atomically(file: &Path, text: &str) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("config");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Ok(meta) = std::fs::metadata(file) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_added_changed_and_removed_keeping_comments() {
        let mut doc: DocumentMut = "# the tenant\n[[tenant]]\nid = \"acme\" # ours\n"
            .parse()
            .unwrap();
        let t = doc["tenant"]
            .as_array_of_tables_mut()
            .unwrap()
            .get_mut(0)
            .unwrap();
        edit_tenant(
            t,
            "bob@acme.example",
            Action::Add { admin: true },
            Some("$argon2id$x"),
        )
        .unwrap();
        assert!(
            edit_tenant(
                t,
                "bob@acme.example",
                Action::Add { admin: false },
                Some("h")
            )
            .is_err()
        );
        edit_tenant(
            t,
            "amy@acme.example",
            Action::Add { admin: false },
            Some("$argon2id$a"),
        )
        .unwrap();
        edit_tenant(t, "bob@acme.example", Action::Passwd, Some("$argon2id$y")).unwrap();
        let text = doc.to_string();
        assert!(
            text.contains("# the tenant") && text.contains("# ours"),
            "{text}"
        );
        assert!(text.contains("[[tenant.user]]"), "{text}");
        assert!(
            text.contains("$argon2id$y") && !text.contains("$argon2id$x"),
            "{text}"
        );
        let t = doc["tenant"]
            .as_array_of_tables_mut()
            .unwrap()
            .get_mut(0)
            .unwrap();
        edit_tenant(t, "bob@acme.example", Action::Remove, None).unwrap();
        assert!(edit_tenant(t, "bob@acme.example", Action::Remove, None).is_err());
        let text = doc.to_string();
        assert!(!text.contains("bob@") && text.contains("amy@"), "{text}");
    }
}
