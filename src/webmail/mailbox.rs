//! Which messages of this engine a signed-in user may see, and the actions on them. Used by the
//! page for local mail and by the peer API when another engine of the cluster asks on a user's
//! behalf, so the rules are the same wherever the message sits.
//!
//! A user sees a message when it goes to their tenant's servers, one of its recipients still
//! pending is their address (any case; tenant admins: any recipient), and it is either
//! *held* (its destination is down) or *quarantined*. Everything else — mail being delivered
//! normally, mail an operator suspended, other tenants' mail — does not exist for the page.

use super::Local;
use super::sessions::Viewer;
use crate::config::webmail::FindingKind;
use crate::store::{Change, ChangeError, Dest, Kind, Listed, QueueId, State, Status};

/// Which list the inbox shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    #[default]
    All,
    Held,
    Quarantine,
}

impl View {
    pub fn parse(s: &str) -> View {
        match s {
            "held" => View::Held,
            "quarantine" => View::Quarantine,
            _ => View::All,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            View::All => "all",
            View::Held => "held",
            View::Quarantine => "quarantine",
        }
    }
}

/// One message as the page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: QueueId,
    /// Unix seconds.
    pub received: u64,
    pub size: u64,
    /// `None`: held (destination down); `Some(reason)`: quarantined.
    pub quarantine: Option<String>,
    /// Quarantined: every kind of finding of its verdict (release rights follow them).
    pub kinds: Vec<FindingKind>,
    /// Envelope sender (empty for the null sender).
    pub from: String,
    pub header_from: String,
    pub subject: String,
    pub rcpts: Vec<String>,
    /// Which engine holds it: `None` for this one, else the peer's ops address.
    pub peer: Option<std::net::SocketAddr>,
}

impl Row {
    pub fn state(&self) -> &'static str {
        if self.quarantine.is_some() {
            "quarantined"
        } else {
            "held"
        }
    }

    /// Newest first; the id breaks ties (it starts with the arrival time).
    pub fn newest_first(a: &Row, b: &Row) -> std::cmp::Ordering {
        b.received.cmp(&a.received).then_with(|| b.id.cmp(&a.id))
    }
}

/// What the inbox asks for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub view: View,
    /// Lower case; matched against sender, From, subject (and recipients for admins).
    pub search: String,
    /// Newest rows wanted (page × page size).
    pub limit: usize,
}

/// Counts and the newest matching rows.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub held: usize,
    pub quarantined: usize,
    /// Rows matching view and search.
    pub matching: usize,
    pub rows: Vec<Row>,
}

impl Listing {
    /// Adds another engine's listing; keeps the newest `limit` rows.
    pub fn merge(&mut self, other: Listing, limit: usize) {
        self.held += other.held;
        self.quarantined += other.quarantined;
        self.matching += other.matching;
        self.rows.extend(other.rows);
        self.rows.sort_by(Row::newest_first);
        self.rows.truncate(limit);
    }
}

/// Whether `viewer` may see `l`: `Some(true)` quarantined, `Some(false)` held, `None` not
/// theirs. Allocates nothing (it runs for every message of the engine on every inbox load).
fn visible(l: &Listed, viewer: &Viewer) -> Option<bool> {
    let Dest::Tenant(t) = &l.dest else {
        return None;
    };
    if *t != viewer.tenant || (l.env.kind == Kind::Message && l.env.tenant != viewer.tenant) {
        return None;
    }
    let quarantined = match l.state {
        State::Quarantined => true,
        // Held; or being tried once more as its destination went down: still held to the user.
        State::Held => false,
        State::Delivering if l.dest_down => false,
        _ => return None,
    };
    let pending = |i: usize| l.progress.rcpts.get(i).is_none_or(|r| r.is_none());
    let mine = l
        .env
        .rcpts
        .iter()
        .enumerate()
        .any(|(i, r)| pending(i) && (viewer.admin || r.eq_ignore_ascii_case(&viewer.address)));
    mine.then_some(quarantined)
}

fn row(l: &Listed) -> Row {
    Row {
        id: l.env.id.clone(),
        received: l.env.received,
        size: l.env.size,
        quarantine: match &l.progress.status {
            Status::Quarantined { reason, .. } => Some(reason.clone()),
            _ => None,
        },
        kinds: match &l.progress.status {
            Status::Quarantined { kinds, .. } => kinds.clone(),
            _ => Vec::new(),
        },
        from: l.env.from.clone(),
        header_from: super::render::decode_header("From", &l.env.header_from),
        subject: super::render::decode_header("Subject", &l.env.subject),
        rcpts: l.env.rcpts.clone(),
        peer: None,
    }
}

/// Case-insensitive substring search over sender, From, subject (decoded when encoded), and
/// for admins the recipients. `search` is lower case.
fn matches_search(l: &Listed, search: &str, admin: bool) -> bool {
    if search.is_empty() {
        return true;
    }
    let has = |s: &str| s.to_lowercase().contains(search);
    let decoded = |name: &str, s: &str| {
        if s.contains("=?") {
            has(&super::render::decode_header(name, s))
        } else {
            has(s)
        }
    };
    has(&l.env.from)
        || decoded("From", &l.env.header_from)
        || decoded("Subject", &l.env.subject)
        || (admin && l.env.rcpts.iter().any(|x| has(x)))
}

/// This engine's messages for `viewer`: counts, and the newest `f.limit` matching rows. Only
/// those rows are built; the rest is counted without allocating.
pub fn list(local: &Local, viewer: &Viewer, f: &Filter) -> Listing {
    let all = local.store.list();
    let mut out = Listing::default();
    let mut hits: Vec<&Listed> = Vec::new();
    for l in &all {
        let Some(quarantined) = visible(l, viewer) else {
            continue;
        };
        if quarantined {
            out.quarantined += 1;
        } else {
            out.held += 1;
        }
        let in_view = match f.view {
            View::All => true,
            View::Held => !quarantined,
            View::Quarantine => quarantined,
        };
        if in_view && matches_search(l, &f.search, viewer.admin) {
            hits.push(l);
        }
    }
    out.matching = hits.len();
    let newest = |a: &&Listed, b: &&Listed| {
        b.env
            .received
            .cmp(&a.env.received)
            .then_with(|| b.env.id.cmp(&a.env.id))
    };
    if f.limit > 0 && hits.len() > f.limit {
        hits.select_nth_unstable_by(f.limit - 1, newest);
        hits.truncate(f.limit);
    }
    hits.sort_by(newest);
    out.rows = hits.into_iter().take(f.limit).map(row).collect();
    out
}

/// One message of this engine, if `viewer` may see it.
pub fn get(local: &Local, viewer: &Viewer, id: &QueueId) -> Option<Row> {
    let l = local.store.get(id)?;
    visible(&l, viewer)?;
    Some(row(&l))
}

/// Why an action was refused; each maps to one HTTP status in `handlers.rs`.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// Not visible to this user (or gone): 404, the same as a message that never existed.
    #[error("no such message")]
    NotFound,
    #[error("{0}")]
    Forbidden(&'static str),
    /// Changed under us (being delivered right now): try again.
    #[error("{0}")]
    Conflict(String),
    #[error("cannot save the change: {0}")]
    Io(#[from] std::io::Error),
}

/// Whether `viewer` may release a quarantined message whose verdict found these kinds, under
/// the config in force (tenant admins always may): `users_may_release`, and none of the kinds
/// is in `admin_release_only`. Every finding counts, so a virus that is also a blocked
/// attachment is a virus whatever the reason line says.
pub fn may_release(local: &Local, viewer: &Viewer, kinds: &[FindingKind]) -> bool {
    if viewer.admin {
        return true;
    }
    let snap = local.ops.config.load();
    let cfg = &snap.config.engine.webmail;
    cfg.users_may_release && !kinds.iter().any(|k| cfg.admin_release_only.contains(k))
}

/// Whether `viewer` may delete: admins always; a user when every pending recipient is theirs
/// (deleting must not take mail away from colleagues).
fn may_delete(l: &Listed, viewer: &Viewer) -> bool {
    viewer.admin
        || l.env.rcpts.iter().enumerate().all(|(i, r)| {
            l.progress.rcpts.get(i).is_some_and(|o| o.is_some())
                || r.eq_ignore_ascii_case(&viewer.address)
        })
}

/// What the store said, as the page's error (the store has changed nothing).
impl From<ChangeError> for ActionError {
    fn from(e: ChangeError) -> ActionError {
        match e {
            ChangeError::NotFound => ActionError::NotFound,
            ChangeError::Io(e) => ActionError::Io(e),
            ChangeError::Moved { .. } => ActionError::Conflict(
                "this message changed meanwhile (delivered, released or deleted): reload the page"
                    .into(),
            ),
            e @ (ChangeError::Busy | ChangeError::Illegal(_) | ChangeError::NotPending) => {
                ActionError::Conflict(e.to_string())
            }
        }
    }
}

/// Releases a quarantined message for delivery, if it is still quarantined: for a user, to
/// their own address only (colleagues' copies stay quarantined for them to decide, as delete
/// leaves them alone); for a tenant admin, to everyone it waits for.
pub async fn release(local: &Local, viewer: &Viewer, id: &QueueId) -> Result<(), ActionError> {
    let l = local.store.get(id).ok_or(ActionError::NotFound)?;
    visible(&l, viewer).ok_or(ActionError::NotFound)?;
    let Status::Quarantined { kinds, .. } = &l.progress.status else {
        return Err(ActionError::Conflict(
            "this message is not quarantined: it is delivered when your server is back".into(),
        ));
    };
    if !may_release(local, viewer, kinds) {
        return Err(ActionError::Forbidden(
            "your organisation's policy lets only an administrator release this message",
        ));
    }
    let pending: Vec<usize> = l.progress.pending().collect();
    let mine: Vec<usize> = pending
        .iter()
        .copied()
        .filter(|&i| viewer.admin || l.env.rcpts[i].eq_ignore_ascii_case(&viewer.address))
        .collect();
    if mine.len() == pending.len() {
        local
            .store
            .change_from(id, State::Quarantined, Change::Release)
            .await?;
        tracing::info!(id = %id, tenant = %viewer.tenant, user = %viewer.address, "quarantined message released in webmail");
    } else {
        let copy = local.store.release_some(id, &mine).await?;
        tracing::info!(id = %id, copy = %copy, tenant = %viewer.tenant, user = %viewer.address, "quarantined message released in webmail for this user only");
    }
    Ok(())
}

/// Deletes a message (no DSN), if it is still in the state the user saw.
pub async fn delete(local: &Local, viewer: &Viewer, id: &QueueId) -> Result<(), ActionError> {
    let l = local.store.get(id).ok_or(ActionError::NotFound)?;
    visible(&l, viewer).ok_or(ActionError::NotFound)?;
    if !may_delete(&l, viewer) {
        return Err(ActionError::Forbidden(
            "this message is also addressed to colleagues: ask an administrator to delete it",
        ));
    }
    local.store.change_from(id, l.state, Change::Delete).await?;
    tracing::info!(id = %id, tenant = %viewer.tenant, user = %viewer.address, "message deleted in webmail");
    Ok(())
}

/// Whose allow lists "allow this sender" writes for `viewer` on this message: the user
/// themself, or for an admin every pending recipient.
pub fn allow_targets(row: &Row, viewer: &Viewer) -> Vec<String> {
    if viewer.admin {
        let mut v: Vec<String> = row.rcpts.iter().map(|r| r.to_ascii_lowercase()).collect();
        v.sort();
        v.dedup();
        v
    } else {
        vec![viewer.address.clone()]
    }
}

/// The sender "allow this sender" adds: the header From address when there is one, else the
/// envelope sender.
pub fn sender_of(row: &Row) -> String {
    let hf = &row.header_from;
    let from_header = match (hf.rfind('<'), hf.rfind('>')) {
        (Some(a), Some(b)) if a < b => hf[a + 1..b].trim().to_owned(),
        _ => hf.trim().to_owned(),
    };
    if from_header.contains('@') && !from_header.contains(' ') {
        from_header.to_ascii_lowercase()
    } else {
        row.from.to_ascii_lowercase()
    }
}
