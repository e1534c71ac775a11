//! Learning from users and operators: "this is spam" and "not spam" become rspamd's
//! `learn_spam` / `learn_ham` (its Bayes classifier) and, for spam, `fuzzy_add` (its fuzzy
//! storage, which makes near-copies match at once), deduplicated, limited per user, audited,
//! and reversible.
//!
//! Three ways in, one [`Teacher`]:
//!
//! | who | how | source |
//! |---|---|---|
//! | a user | forwards a delivered message to the tenant's report address (`learning.report_address`) | `report` |
//! | a user | the "This is spam" / "Not spam" buttons in webmail (not spam also releases) | `webmail` |
//! | an operator | `maildistiller learn --spam\|--ham FILE\|DIR\|MBOX` (rspamd's bulk learning) | `operator` |
//!
//! # Scope
//!
//! What is learnt is fleet-wide: every engine of the fleet asks an rspamd whose Bayes and fuzzy
//! hashes live in the fleet's Redis, so a message one tenant's user reports changes the verdict
//! of its near-copies for every tenant, in every silo. What is per tenant: whether learning is
//! on and the report address (the tenant's policy), who may report (the tenant's own senders,
//! `report_networks`), and the audit trail (each entry names the tenant and the user).
//!
//! # Once, limited, audited, reversible
//!
//! - **Once**: a message is keyed by [`original::digest`] (its `Message-ID` and body); teaching
//!   the class it already has is answered [`Taught::Duplicate`] without asking rspamd (rspamd
//!   would answer 208 anyway, on every engine: its own key is in Redis).
//! - **Limited**: a user teaches at most `learning.per_user_hourly` messages per clock hour
//!   ([`LearnError::RateLimited`]); operators are not limited.
//! - **Audited**: one line per lesson in `SPOOL/learning/audit.log`, appended and fsynced before
//!   the lesson is reported done (see `audit.rs` for the format); `maildistiller learn --audit`
//!   prints it.
//! - **Reversible**: teaching the other class relearns (rspamd moves the message's tokens from
//!   one class to the other) and, from spam to ham, removes its fuzzy hashes (`fuzzy_del`).
//!
//! # Our own model
//!
//! Every lesson rspamd took also trains our own classifier ([`model`]: the message's
//! [`tokens`] counted per class, durable in `SPOOL/learning/model.journal`; a relearn moves
//! the counts from one class to the other), read by the `learnt` scanner of every engine
//! using this spool directory, from the next message on. With `[shared]` ([`share`]), the
//! lesson also goes to every other engine's model (`shared/lessons.rs`), once per message
//! fleet-wide.
//!
//! # Bounds
//!
//! [`MAX_REMEMBERED`] digests with their class in memory (beyond that, new lessons are still
//! audited and sent, and rspamd's own 208 still deduplicates them); [`MAX_USERS`] users'
//! hourly counters (a new hour starts them all afresh).

mod audit;
pub mod model;
pub mod original;
pub mod tokens;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::config::detect::{LearningConfig, read_password};
use crate::engine::policy::finding::CheckError;
use crate::engine::scan::check::{LearnAs, Learned, RspamdController};
pub use audit::Entry;

/// Digests remembered with their class (about 48 bytes each).
pub const MAX_REMEMBERED: usize = 1_000_000;
/// Users whose hourly count is kept; when full, the counts of past hours are dropped first,
/// then (a flood of new users within one hour) everyone's.
pub const MAX_USERS: usize = 100_000;

/// Who asked, and through what.
#[derive(Debug, Clone)]
pub struct Teller {
    /// `report`, `webmail`, `operator`.
    pub source: &'static str,
    /// The user's address (or the operator's name).
    pub user: String,
    /// The tenant the lesson came from (`-` for an operator's corpus).
    pub tenant: String,
    /// Operators' lessons: rspamd's bulk learning, no hourly limit.
    pub bulk: bool,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taught {
    /// rspamd learnt it (Bayes, and fuzzy hashes for spam).
    Learnt,
    /// rspamd's Bayes already put it in this class (it learns only what it got wrong, unless
    /// bulk); for spam, its fuzzy hashes were added all the same.
    AlreadyKnown,
    /// This message was taught as this class before: nothing was sent.
    Duplicate,
}

impl Taught {
    pub fn as_str(self) -> &'static str {
        match self {
            Taught::Learnt => "learnt",
            Taught::AlreadyKnown => "known",
            Taught::Duplicate => "duplicate",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error("learning is off (no learning.controller in the policy)")]
    Off,
    #[error("{0} has taught {1} messages this hour, the limit")]
    RateLimited(String, u32),
    #[error("rspamd controller: {0}")]
    Controller(CheckError),
    #[error("{0}")]
    Config(String),
    #[error("audit log: {0}")]
    Audit(std::io::Error),
}

impl LearnError {
    /// Worth retrying later (the sender of a report gets 451, not 550).
    pub fn transient(&self) -> bool {
        matches!(
            self,
            LearnError::RateLimited(..) | LearnError::Controller(_) | LearnError::Audit(_)
        )
    }
}

fn class_str(c: LearnAs) -> &'static str {
    match c {
        LearnAs::Spam => "spam",
        LearnAs::Ham => "ham",
    }
}

struct State {
    /// digest (first 16 bytes) -> class last taught.
    known: HashMap<[u8; 16], LearnAs>,
    /// user -> (hour, lessons in it).
    hourly: HashMap<String, (u64, u32)>,
}

/// The teacher of one spool directory (one per engine; `maildistiller learn` makes its own).
pub struct Teacher {
    dir: PathBuf,
    state: Mutex<Option<State>>,
    /// The engine's fleet client, when it shares lessons (see [`share`]).
    fleet: Mutex<std::sync::Weak<crate::shared::Fleet>>,
}

/// With `[shared]`: the lessons taught on this spool go to the fleet, and the fleet's lessons
/// come into this spool's model (`shared/lessons.rs`); `node` names this engine's own on the
/// stream. Called by the engine at start.
pub fn share(spool_dir: &Path, fleet: &Arc<crate::shared::Fleet>, node: &str) {
    if !fleet.enabled() {
        return;
    }
    *teacher(spool_dir)
        .fleet
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(fleet);
    fleet.follow_lessons(model::store(spool_dir), node);
}

/// One teacher per spool directory in this process, so the engine's report address and its
/// webmail buttons share the dedup memory and the hourly counts.
pub fn teacher(spool_dir: &Path) -> Arc<Teacher> {
    static ALL: PerSpool<Teacher> = OnceLock::new();
    per_spool(&ALL, spool_dir, || Teacher {
        dir: spool_dir.join("learning"),
        state: Mutex::new(None),
        fleet: Mutex::new(std::sync::Weak::new()),
    })
}

/// One value per spool directory in this process.
pub(crate) type PerSpool<T> = OnceLock<Mutex<HashMap<PathBuf, Arc<T>>>>;

/// The value of `spool_dir` in `all`, made by `make` the first time it is asked for.
pub(crate) fn per_spool<T>(
    all: &PerSpool<T>,
    spool_dir: &Path,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let mut all = all
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    all.entry(spool_dir.to_path_buf())
        .or_insert_with(|| Arc::new(make()))
        .clone()
}

impl Teacher {
    fn spool(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    fn fleet(&self) -> Option<Arc<crate::shared::Fleet>> {
        self.fleet
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade()
    }

    /// The audit log's path.
    pub fn audit_path(&self) -> PathBuf {
        self.dir.join(audit::FILE)
    }

    /// Teaches `message` (the original, as it should be learnt) as `class`.
    pub async fn teach(
        &self,
        cfg: &LearningConfig,
        who: &Teller,
        class: LearnAs,
        message: &[u8],
    ) -> Result<Taught, LearnError> {
        if !cfg.enabled() {
            return Err(LearnError::Off);
        }
        let digest = original::digest(message);
        let key: [u8; 16] = digest[..16].try_into().unwrap_or_default();
        let previous = {
            let mut g = self.load()?;
            let st = g.as_mut().ok_or(LearnError::Off)?;
            if !who.bulk {
                count(st, &who.user, cfg.per_user_hourly)?;
            }
            st.known.get(&key).copied()
        };
        if previous == Some(class) {
            self.record(who, class, &digest, Taught::Duplicate, message)?;
            return Ok(Taught::Duplicate);
        }
        let password = read_password(cfg).map_err(|e| LearnError::Config(e.to_string()))?;
        let ctl = RspamdController::new(&cfg.controller, password, cfg.timeout.get())
            .map_err(LearnError::Config)?
            .bulk(who.bulk);
        let learned = ctl
            .learn(class, message)
            .await
            .map_err(LearnError::Controller)?;
        // A message without hashable content (short text alone) gets no fuzzy hashes; its
        // Bayes lesson stands, so that is no failure.
        if cfg.fuzzy_flag != 0 {
            match class {
                LearnAs::Spam => ctl
                    .fuzzy_add(message, cfg.fuzzy_flag, cfg.fuzzy_weight)
                    .await
                    .map_err(LearnError::Controller)?,
                LearnAs::Ham if previous == Some(LearnAs::Spam) => ctl
                    .fuzzy_del(message, cfg.fuzzy_flag)
                    .await
                    .map_err(LearnError::Controller)?,
                LearnAs::Ham => false,
            };
        }
        let taught = match learned {
            Learned::Now => Taught::Learnt,
            Learned::Already | Learned::NotNeeded => Taught::AlreadyKnown,
        };
        // Our own model learns every lesson rspamd took (also those its Bayes already got
        // right): its counts are the evidence, not its mistakes. With `[shared]`, so does
        // every other engine's (`shared/lessons.rs`).
        let taught_here = model::store(self.spool())
            .teach(key, class, previous, &tokens_of(message))
            .map_err(LearnError::Audit)?;
        if let (Some(hashes), Some(fleet)) = (taught_here, self.fleet()) {
            fleet.publish_lesson(&key, class == LearnAs::Spam, &hashes);
        }
        self.record(who, class, &digest, taught, message)?;
        let mut g = self.load()?;
        if let Some(st) = g.as_mut()
            && (st.known.len() < MAX_REMEMBERED || st.known.contains_key(&key))
        {
            st.known.insert(key, class);
        }
        Ok(taught)
    }

    /// The state, read from the audit log at first use.
    fn load(&self) -> Result<std::sync::MutexGuard<'_, Option<State>>, LearnError> {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            let mut known = HashMap::new();
            for e in audit::read(&self.audit_path()).map_err(LearnError::Audit)? {
                if e.outcome == "duplicate" || known.len() >= MAX_REMEMBERED {
                    continue;
                }
                let class = if e.class == "spam" {
                    LearnAs::Spam
                } else {
                    LearnAs::Ham
                };
                if let Some(k) = audit::key(&e.digest) {
                    known.insert(k, class);
                }
            }
            *g = Some(State {
                known,
                hourly: HashMap::new(),
            });
        }
        Ok(g)
    }

    fn record(
        &self,
        who: &Teller,
        class: LearnAs,
        digest: &[u8; 32],
        taught: Taught,
        message: &[u8],
    ) -> Result<(), LearnError> {
        let e = Entry::new(who, class_str(class), digest, taught.as_str(), message);
        audit::append(&self.dir, &e).map_err(LearnError::Audit)
    }
}

/// The tokens our model counts for a raw message (decoded by the scanner's own decoder
/// within the default scan limits, so a lesson and a later scan see the same tokens).
pub fn tokens_of(message: &[u8]) -> Vec<String> {
    use crate::engine::scan::{budget::Budget, check::extract_urls, decode::decode};
    let limits = crate::config::policy::ScanLimits::default();
    let mut budget = Budget::new(&limits, std::time::Instant::now());
    let d = decode(message, &mut budget, limits.max_text_bytes.0 as usize);
    let urls = extract_urls(&d.text, &d.html);
    tokens::tokenize(&d, &urls)
}

/// The `[learning]` section of `tenant`'s policy (its override merged), as webmail and the
/// command line need it without a compiled scanner. Learning is off for an unknown tenant.
pub fn config_for(snap: &crate::snapshot::Snapshot, tenant: &str) -> LearningConfig {
    use crate::config::policy::{DEFAULT, resolve};
    let Some(t) = snap.topology.tenant(tenant) else {
        return LearningConfig::default();
    };
    let policies = &snap.config.policies;
    let Some(base) = policies.get(&t.policy).or_else(|| policies.get(DEFAULT)) else {
        return LearningConfig::default();
    };
    match base.tenant.get(tenant) {
        Some(ov) => resolve(base, ov).map(|p| p.learning).unwrap_or_default(),
        None => base.learning.clone(),
    }
}

/// Counts one lesson of `user` in this clock hour; refuses past `limit`.
fn count(st: &mut State, user: &str, limit: u32) -> Result<(), LearnError> {
    let hour = crate::store::now_secs() / 3600;
    if st.hourly.len() >= MAX_USERS && !st.hourly.contains_key(user) {
        st.hourly.retain(|_, (h, _)| *h == hour);
        if st.hourly.len() >= MAX_USERS {
            st.hourly.clear();
        }
    }
    let slot = st.hourly.entry(user.to_owned()).or_insert((hour, 0));
    if slot.0 != hour {
        *slot = (hour, 0);
    }
    if slot.1 >= limit {
        return Err(LearnError::RateLimited(user.to_owned(), slot.1));
    }
    slot.1 += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hourly_limit_is_per_user() {
        let mut st = State {
            known: HashMap::new(),
            hourly: HashMap::new(),
        };
        for _ in 0..3 {
            count(&mut st, "bob@acme.test", 3).unwrap();
        }
        assert!(matches!(
            count(&mut st, "bob@acme.test", 3),
            Err(LearnError::RateLimited(_, 3))
        ));
        count(&mut st, "eve@acme.test", 3).unwrap();
        // A past hour's count does not hold.
        st.hourly.get_mut("bob@acme.test").unwrap().0 -= 1;
        count(&mut st, "bob@acme.test", 3).unwrap();
    }
}
