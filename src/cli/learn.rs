//! `maildistiller learn --spam|--ham PATH…`: an operator's bulk training, through the same
//! teacher as users' reports (`engine::learn`: rspamd's controller, fuzzy hashes for spam,
//! dedup, the audit log under the engine's spool directory), with rspamd's bulk learning
//! (`Learn-Type: bulk`: every message is learnt, also those its Bayes already gets right) and
//! no hourly limit. `--audit` prints the audit log instead.
//!
//! A PATH is a message file, an mbox (a file whose first line starts with `From `), or a
//! directory (every file under it, recursively, in name order: a Maildir's `cur/` and `new/`,
//! a corpus). The controller and its password come from the policy's `[learning]` section
//! (`--policy`, default `default`, as overridden for `--tenant` when given).
//!
//! With `[shared]`, the lessons that changed this spool's own model are published to the
//! fleet when the run is done (`shared/lessons.rs`): every engine's model learns them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::Failure;
use crate::config::policy::{DEFAULT, resolve};
use crate::engine::learn::{self, Taught, Teller};
use crate::engine::scan::check::LearnAs;
use crate::snapshot::Snapshot;

/// Lessons sent at once (rspamd's controller learns them in parallel on its own workers).
const IN_FLIGHT: usize = 4;
/// Largest file read as one message or mbox.
const MAX_FILE: u64 = 256 << 20;

#[derive(clap::Args, Debug)]
pub struct LearnArgs {
    /// Teach these as spam.
    #[arg(long, conflicts_with = "ham")]
    pub spam: bool,
    /// Teach these as ham (legitimate mail).
    #[arg(long)]
    pub ham: bool,
    /// Print the audit log (who taught what, when) and exit.
    #[arg(long, conflicts_with_all = ["spam", "ham"])]
    pub audit: bool,
    /// The policy whose `[learning]` section names the controller.
    #[arg(long, default_value = DEFAULT)]
    pub policy: String,
    /// Use that policy as overridden for this tenant (and name the tenant in the audit log).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Message files, mboxes, directories.
    pub paths: Vec<PathBuf>,
}

pub fn command(snap: Arc<Snapshot>, args: &LearnArgs) -> Result<(), Failure> {
    let teacher = learn::teacher(&snap.config.engine.spool_dir);
    if args.audit {
        let text = std::fs::read_to_string(teacher.audit_path()).unwrap_or_default();
        print!("{text}");
        return Ok(());
    }
    let class = match (args.spam, args.ham) {
        (true, false) => LearnAs::Spam,
        (false, true) => LearnAs::Ham,
        _ => return Err(Failure::Usage("say --spam or --ham (or --audit)".into())),
    };
    if args.paths.is_empty() {
        return Err(Failure::Usage("name at least one FILE, DIR or MBOX".into()));
    }
    let base = snap
        .config
        .policies
        .get(&args.policy)
        .cloned()
        .or_else(|| (args.policy == DEFAULT).then(Default::default))
        .ok_or_else(|| Failure::Usage(format!("no policy {:?} in the config", args.policy)))?;
    let cfg = match args.tenant.as_ref().and_then(|t| base.tenant.get(t)) {
        Some(ov) => resolve(&base, ov).map_err(|e| Failure::Usage(e.to_string()))?,
        None => base,
    }
    .learning;
    if !cfg.enabled() {
        return Err(Failure::Usage(format!(
            "policy {:?} has no learning.controller: learning is off",
            args.policy
        )));
    }
    let mut messages = Vec::new();
    for p in &args.paths {
        collect(p, &mut messages).map_err(|e| Failure::Usage(format!("{}: {e}", p.display())))?;
    }
    let who = Teller {
        source: "operator",
        user: std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "operator".into()),
        tenant: args.tenant.clone().unwrap_or_else(|| "-".into()),
        bulk: true,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    let spool = &snap.config.engine.spool_dir;
    let publisher = crate::shared::lessons::Publisher::new(&snap.config.shared, messages.len());
    if let Some(p) = &publisher {
        let node = snap
            .config
            .node
            .name
            .clone()
            .unwrap_or_else(|| "operator".into());
        learn::share(
            spool,
            &p.fleet,
            &format!("{node}/learn-{}", std::process::id()),
        );
    }
    let start = Instant::now();
    let total = messages.len();
    let (counts, first_error) = rt.block_on(async {
        let mut counts = [0usize; 4];
        let mut first_error = None;
        let mut queue = messages.into_iter();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < IN_FLIGHT {
                let Some(m) = queue.next() else { break };
                let (t, c, w) = (teacher.clone(), cfg.clone(), who.clone());
                running.spawn(async move { t.teach(&c, &w, class, &m).await });
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            match done
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                Ok(Taught::Learnt) => counts[0] += 1,
                Ok(Taught::AlreadyKnown) => counts[1] += 1,
                Ok(Taught::Duplicate) => counts[2] += 1,
                Err(e) => {
                    counts[3] += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        (counts, first_error)
    });
    let class = if class == LearnAs::Spam {
        "spam"
    } else {
        "ham"
    };
    println!(
        "{total} messages as {class} in {:.1}s: {} learnt, {} already known to rspamd, {} taught before, {} failed",
        start.elapsed().as_secs_f64(),
        counts[0],
        counts[1],
        counts[2],
        counts[3]
    );
    if let Some(p) = publisher {
        match rt.block_on(p.send()) {
            Ok(n) => println!("{n} lessons published to the fleet"),
            Err(e) => {
                return Err(Failure::Runtime(format!(
                    "taught, but not published to the fleet (only this spool's model and \
                     rspamd have them): {e}"
                )));
            }
        }
    }
    match first_error {
        Some(e) => Err(Failure::Runtime(format!("first failure: {e}"))),
        None => Ok(()),
    }
}

/// The messages under `path`: one file, an mbox split at its `From ` lines, or a directory's
/// files in name order.
fn collect(path: &Path, out: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            collect(&e, out)?;
        }
        return Ok(());
    }
    if meta.len() > MAX_FILE || meta.len() == 0 {
        return Ok(());
    }
    let data = std::fs::read(path)?;
    if data.starts_with(b"From ") {
        out.extend(split_mbox(&data));
    } else {
        out.push(data);
    }
    Ok(())
}

/// The messages of an mbox (mboxrd: `>From ` lines lose one `>`).
pub fn split_mbox(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some(m) = cur.take().filter(|m| !m.is_empty()) {
                out.push(m);
            }
            cur = Some(Vec::new());
            continue;
        }
        let Some(m) = cur.as_mut() else { continue };
        let unquoted = line
            .iter()
            .position(|&b| b != b'>')
            .filter(|&i| i > 0 && line[i..].starts_with(b"From "))
            .map_or(line, |_| &line[1..]);
        m.extend_from_slice(unquoted);
    }
    if let Some(m) = cur.filter(|m| !m.is_empty()) {
        out.push(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mbox_splits_at_from_lines_and_unquotes() {
        let mbox = b"From a@b Mon Dec  7 10:00:00 2026\nSubject: one\n\n>From the start\n>>From deeper\n\nFrom c@d Mon Dec  7 10:01:00 2026\nSubject: two\n\nbody\n";
        let got = split_mbox(mbox);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            b"Subject: one\n\nFrom the start\n>From deeper\n\n".to_vec()
        );
        assert_eq!(got[1], b"Subject: two\n\nbody\n".to_vec());
    }
}
