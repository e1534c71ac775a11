//! The message store: the one owner of every accepted message and its state. It owns the
//! durable spool (`spool/`, the truth on disk) and its in-memory index (`index.rs`: what waits
//! for which destination, what is due, what is claimed), and keeps them in step itself: every
//! change of a message is one call that writes the change durably and then updates the index, or
//! fails and changes neither. Nobody else can reach the spool or the index.
//!
//! # Layout
//!
//! | file | owns |
//! |---|---|
//! | `state.rs` | [`State`] (`queued`, `deferred`, `delivering`, `held`, `suspended`, `quarantined`), the persisted [`Status`], and the one table of allowed moves |
//! | `spool/` | the files: format, durability (fsync before 250, group commit, shards, file recycling) |
//! | `index.rs` | the in-memory index: destinations, due times, claims |
//! | `allow.rs` | users' own allow lists ("allow this sender" in webmail), beside the spool: written by webmail, read by the scanner |
//! | `follow.rs` | the [`Follower`] that hears every durable change (shadow copies), and two-step acceptance ([`Prepared`]) |
//!
//! # Who calls what
//!
//! | caller | calls |
//! |---|---|
//! | SMTP reception | [`Store::accept`]: on disk (synced) first, then in the index; with a shadow, [`Store::prepare`] then [`Prepared::commit`] or [`Prepared::abandon`] |
//! | DSNs, adoption of another engine's copies | [`Store::accept_child`], [`Store::adopt`] |
//! | cluster redundancy | [`Store::follow`]: a [`Follower`] hears every change once it is durable |
//! | delivery | [`Store::plan`], [`Store::take`] → an [`InFlight`] message → [`InFlight::settle`], [`InFlight::set_aside`] or [`InFlight::give_back`]; destination health ([`Store::connect_failed`], [`Store::dest_up`], …) |
//! | queue API, webmail, quarantine expiry | [`Store::list`], [`Store::get`], [`Store::read`], [`Store::change`] (suspend, release, delete, expire), [`Store::release_some`], [`Store::flush`] |
//!
//! # Why one call cannot leave the two apart
//!
//! - A new message is written and synced before it enters the index; a failed write leaves no
//!   trace in either.
//! - A delivery worker holds its message as an [`InFlight`] value: nobody else can change the
//!   message meanwhile, and only that value can settle it. The outcome is written first; the
//!   index follows once it is on disk. While the disk refuses the write, the worker keeps the
//!   message and retries ([`RETRY_MAX`] between tries), so the index never runs ahead of the disk
//!   (and a recipient just delivered is not sent again); at shutdown it gives up and the message
//!   stays as last written (sent again after the restart: at least once, never lost). An
//!   `InFlight` dropped without an outcome (its task cancelled) gives the message back.
//! - A change claims the message in the index (nobody takes or changes it meanwhile), checks the
//!   move against [`State::next`], writes, then applies; when the write fails the claim is
//!   dropped and everything is as it was.
//!
//! # Cost
//!
//! The hot path pays what it paid before the store existed: reception one spool write (synced,
//! group-committed) and one index insert; delivery one index lock to take, one read, one state
//! write or retire, and one index lock to settle. The state checks are a `match` under locks
//! already taken. Bounds: the index holds one small entry per spooled message (no bodies).

pub mod allow;
mod follow;
mod index;
mod spool;
pub mod state;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use index::{Dest, Listed, now_secs};
pub use spool::{Envelope, Kind, Progress, QueueId, RcptOutcome};
pub use state::{Event, Illegal, Next, State, Status};

pub use follow::{Follower, Prepared};
use index::Index;
use spool::Spool;
#[cfg(test)]
pub(crate) use spool::test_envelope;

/// A message as the spool writes it (envelope header, empty line, the message): what a shadow
/// copy carries to another engine.
pub fn encode_record(env: &Envelope, message: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(message.len() + 512);
    env.encode(&mut buf);
    buf.extend_from_slice(message);
    buf
}

/// A record made by [`encode_record`], split back into its envelope and message.
pub fn decode_record(data: &[u8]) -> Result<(Envelope, &[u8]), String> {
    let env = Envelope::decode(data)?;
    let start = spool::body_offset(data).ok_or("no end of envelope")?;
    Ok((env, &data[start..]))
}

/// Longest pause between two tries of writing a delivery outcome the disk refused.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// What an operator, a webmail user or quarantine expiry may do to a message (the moves of
/// delivery go through [`InFlight`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `queue suspend`: not delivered until released.
    Suspend,
    /// `queue release`, webmail's release: due for delivery now.
    Release,
    /// Gone, without a DSN.
    Delete,
    /// Quarantined past `engine.quarantine_lifetime`: gone.
    Expire,
}

impl Change {
    pub fn event(self) -> Event {
        match self {
            Change::Suspend => Event::Suspend,
            Change::Release => Event::Release,
            Change::Delete => Event::Delete,
            Change::Expire => Event::Expire,
        }
    }
}

/// Why a change was not made; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no such message")]
    NotFound,
    /// Another change of this message is being written right now.
    #[error("another change of this message is being written; try again")]
    Busy,
    /// The message moved on since the caller looked at it.
    #[error("the message is {now} now, no longer {want}")]
    Moved { want: State, now: State },
    #[error(transparent)]
    Illegal(#[from] Illegal),
    /// [`Store::release_some`]: none of those recipients is still waiting in the quarantine.
    #[error("those recipients were released or removed already")]
    NotPending,
    #[error("cannot write the change: {0}")]
    Io(#[from] io::Error),
}

/// The store (cheap to clone: every clone is the same store).
#[derive(Debug, Clone)]
pub struct Store {
    spool: Spool,
    index: Arc<Index>,
    /// Cancelled at shutdown: writes of delivery outcomes stop retrying.
    stopping: CancellationToken,
    /// Who hears every durable change (set once, when the engine replicates). Weak: the
    /// follower holds the store, and its owner decides how long it lives.
    follower: Arc<std::sync::OnceLock<std::sync::Weak<dyn Follower>>>,
}

impl Store {
    /// Opens the spool in `dir` (creating it), recovers every message into the index with the
    /// destination `route` gives it, and returns the store with the problems recovery found
    /// (files left in place for an operator). Must run inside the tokio runtime.
    pub async fn open(
        dir: &Path,
        route: impl Fn(&Envelope) -> Dest,
        stopping: CancellationToken,
    ) -> io::Result<(Store, Vec<String>)> {
        let spool = Spool::open(dir)?;
        let s2 = spool.clone();
        let (found, problems) = tokio::task::spawn_blocking(move || s2.recover())
            .await
            .map_err(io::Error::other)??;
        let index = Arc::new(Index::default());
        for r in found {
            let dest = route(&r.envelope);
            index.insert(Arc::new(r.envelope), r.progress, dest);
        }
        Ok((
            Store {
                spool,
                index,
                stopping,
                follower: Arc::default(),
            },
            problems,
        ))
    }

    /// Stores a new message for `dest`: returns once it is on disk (synced: safe to say 250)
    /// and in the index. On error it is in neither.
    pub async fn accept(
        &self,
        env: Envelope,
        message: &[u8],
        dest: Dest,
    ) -> io::Result<Arc<Envelope>> {
        self.spool.store(&env, message).await?;
        Ok(self.insert(env, dest))
    }

    /// [`Store::accept`] for a message born of another (a DSN reporting on `parent`): its
    /// follower hears of it with its parent, before the parent's outcome.
    pub async fn accept_child(
        &self,
        env: Envelope,
        message: &[u8],
        dest: Dest,
        parent: &QueueId,
    ) -> io::Result<Arc<Envelope>> {
        self.spool.store(&env, message).await?;
        let env = self.insert(env, dest);
        self.tell(|f| f.accepted(&env, message, Some(parent)));
        Ok(env)
    }

    /// Writes a new message to disk (synced) without making it deliverable: see [`Prepared`].
    pub async fn prepare(&self, env: Envelope, message: &[u8], dest: Dest) -> io::Result<Prepared> {
        self.spool.store(&env, message).await?;
        Ok(Prepared {
            store: self.clone(),
            env: Some(env),
            dest,
        })
    }

    /// Takes in a message another engine accepted (its copy, adopted after that engine was
    /// lost), with the progress it had there. On disk first, then in the index; the follower
    /// hears of it.
    pub async fn adopt(
        &self,
        env: Envelope,
        message: &[u8],
        progress: Progress,
        dest: Dest,
    ) -> io::Result<Arc<Envelope>> {
        self.spool.store(&env, message).await?;
        if progress != Progress::initial(&env)
            && let Err(e) = self.spool.write_state(&env.id, &progress).await
        {
            let _ = self.spool.remove(&env.id).await;
            return Err(e);
        }
        let env = Arc::new(env);
        self.index.insert(env.clone(), progress, dest);
        self.tell(|f| f.accepted(&env, message, None));
        Ok(env)
    }

    /// Into the index, as written: `queued` or `quarantined` by its envelope.
    fn insert(&self, env: Envelope, dest: Dest) -> Arc<Envelope> {
        let env = Arc::new(env);
        let progress = Progress::initial(&env);
        self.index.insert(env.clone(), progress, dest);
        env
    }

    /// Sets who hears every durable change from now on, for as long as it lives (once; a
    /// second call is ignored).
    pub fn follow(&self, follower: &Arc<dyn Follower>) {
        let _ = self.follower.set(Arc::downgrade(follower));
    }

    fn tell(&self, f: impl FnOnce(&dyn Follower)) {
        if let Some(x) = self.follower.get().and_then(std::sync::Weak::upgrade) {
            f(x.as_ref());
        }
    }

    /// This spool's identity (written once when the spool is made).
    pub fn identity(&self) -> &str {
        self.spool.identity()
    }

    /// A message's bytes (after the envelope).
    pub async fn read(&self, id: &QueueId) -> io::Result<Vec<u8>> {
        self.spool.read_message(id).await
    }

    /// Every message, oldest first (a copy).
    pub fn list(&self) -> Vec<Listed> {
        self.index.list()
    }

    pub fn get(&self, id: &QueueId) -> Option<Listed> {
        self.index.get(id)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a change to a message, when the table allows it from the state it is in.
    /// Returns that state.
    pub async fn change(&self, id: &QueueId, change: Change) -> Result<State, ChangeError> {
        self.change_inner(id, None, change).await
    }

    /// [`Store::change`], only if the message is still in `from` (what the caller showed or
    /// checked), else [`ChangeError::Moved`].
    pub async fn change_from(
        &self,
        id: &QueueId,
        from: State,
        change: Change,
    ) -> Result<State, ChangeError> {
        self.change_inner(id, Some(from), change).await
    }

    async fn change_inner(
        &self,
        id: &QueueId,
        expect: Option<State>,
        change: Change,
    ) -> Result<State, ChangeError> {
        let claimed = self.index.begin_change(id, expect, change.event())?;
        let mut p = claimed.progress;
        let written = match claimed.next {
            Next::Gone => self.spool.remove(id).await.map(|()| None),
            Next::To(State::Suspended) => {
                p.status = Status::Suspended;
                self.spool.write_state(id, &p).await.map(|()| Some(p))
            }
            // Released: due now.
            Next::Waiting => {
                p.status = Status::Queued;
                p.next = 0;
                self.spool.write_state(id, &p).await.map(|()| Some(p))
            }
            // No change leads anywhere else (the table): refuse rather than write it.
            Next::To(other) => Err(io::Error::other(format!("no change leads to {other}"))),
        };
        match written {
            Ok(w) => {
                self.tell(|f| f.changed(id, w.as_ref()));
                self.index.end_change(id, Ok(w));
                Ok(claimed.from)
            }
            Err(e) => {
                self.index.end_change(id, Err(()));
                Err(ChangeError::Io(e))
            }
        }
    }

    /// Releases some recipients of a quarantined message (`rcpts`: indexes into its envelope's
    /// recipients, those still pending): a copy of the message for them is accepted (synced,
    /// queued, due now) and they leave the original, which stays quarantined for the others —
    /// or leaves the store when nobody is left. Returns the copy's id.
    ///
    /// The copy is written before the original changes, so a crash or a failed write between
    /// the two can deliver the copy and leave the original as it was (the recipient may see it
    /// again: at least once, never lost); that case is logged.
    pub async fn release_some(
        &self,
        id: &QueueId,
        rcpts: &[usize],
    ) -> Result<QueueId, ChangeError> {
        let claimed = self
            .index
            .begin_change(id, Some(State::Quarantined), Event::ReleaseSome)?;
        let (Some(listed), mut p) = (self.index.get(id), claimed.progress) else {
            self.index.end_change(id, Err(()));
            return Err(ChangeError::NotFound);
        };
        let which: Vec<usize> = rcpts
            .iter()
            .copied()
            .filter(|&i| i < listed.env.rcpts.len() && p.rcpts.get(i).is_some_and(Option::is_none))
            .collect();
        if which.is_empty() {
            self.index.end_change(id, Err(()));
            return Err(ChangeError::NotPending);
        }
        let copy = match self.read(id).await {
            Ok(bytes) => {
                let env = Envelope {
                    id: QueueId::generate(),
                    rcpts: which.iter().map(|&i| listed.env.rcpts[i].clone()).collect(),
                    status: Status::Queued,
                    verdict: format!("{} released-from={id}", listed.env.verdict),
                    ..(*listed.env).clone()
                };
                // A follower (shadow copies) hears of the copy with the original, before the
                // original's new progress: the shadow holds the copy before it learns that
                // these recipients left the original.
                self.accept_child(env, &bytes, listed.dest.clone(), id)
                    .await
            }
            Err(e) => Err(e),
        };
        let copy = match copy {
            Ok(env) => env.id.clone(),
            Err(e) => {
                self.index.end_change(id, Err(()));
                return Err(ChangeError::Io(e));
            }
        };
        for &i in &which {
            p.rcpts[i] = Some(RcptOutcome::Released { copy: copy.clone() });
        }
        let written = if p.pending().next().is_none() {
            self.spool.remove(id).await.map(|()| None)
        } else {
            self.spool.write_state(id, &p).await.map(|()| Some(p))
        };
        match written {
            Ok(w) => {
                self.tell(|f| f.changed(id, w.as_ref()));
                self.index.end_change(id, Ok(w));
            }
            Err(e) => {
                tracing::error!(id = %id, copy = %copy, error = %e, "released a copy of a quarantined message, but cannot record it on the original: its recipients may see it again");
                self.index.end_change(id, Err(()));
            }
        }
        Ok(copy)
    }

    /// Makes waiting messages due now (all, or one; all also un-marks down destinations).
    /// Changes no state on disk. Returns how many.
    pub fn flush(&self, only: Option<&QueueId>) -> usize {
        self.index.flush(only)
    }

    // Delivery scheduling: in memory only (nothing of it is persisted).

    /// Destinations that want a new connection now (see `Index::plan`), and the earliest due
    /// time of the rest.
    pub fn plan(&self, per_dest: &dyn Fn(&Dest) -> u32, budget: u32) -> (Vec<Dest>, Option<u64>) {
        self.index.plan(per_dest, budget)
    }

    /// Resolves when something may be ready for delivery (a message arrived, was released, a
    /// destination came back, a connection ended).
    pub async fn changed(&self) {
        self.index.wake.notified().await
    }

    /// The next ready message of `dest`, now `delivering` and held by the caller.
    pub fn take(&self, dest: &Dest) -> Option<InFlight> {
        let (env, progress) = self.index.take(dest)?;
        Some(InFlight {
            store: self.clone(),
            env,
            progress,
            done: false,
        })
    }

    /// A worker's connection to `dest` ended.
    pub fn released(&self, dest: &Dest) {
        self.index.released(dest)
    }

    /// A connection to `dest` failed; true when this marks it down (its mail becomes `held`).
    pub fn connect_failed(&self, dest: &Dest, dead_after: u32) -> bool {
        self.index.connect_failed(dest, dead_after)
    }

    pub fn connect_ok(&self, dest: &Dest) {
        self.index.connect_ok(dest)
    }

    /// Claims the probe of a down destination (one prober at a time).
    pub fn claim_probe(&self, dest: &Dest) -> bool {
        self.index.claim_probe(dest)
    }

    /// A probe succeeded: all of `dest`'s mail is ready now. Returns how many messages.
    pub fn dest_up(&self, dest: &Dest) -> usize {
        self.index.dest_up(dest)
    }

    /// Whether delivery has marked `dest` down: its mail is held until a probe finds it back.
    pub fn dest_down(&self, dest: &Dest) -> bool {
        self.index.dest_down(dest)
    }

    /// Destinations, whether each is up, and since when it is down (unix seconds).
    pub fn destinations(&self) -> Vec<(Dest, bool, u64)> {
        self.index.destinations()
    }

    /// Writes `progress` (a delivery outcome) until the disk takes it or the store is stopping.
    async fn write_outcome(&self, id: &QueueId, progress: Option<&Progress>) -> io::Result<()> {
        let mut pause = Duration::from_millis(100);
        loop {
            let r = match progress {
                Some(p) => self.spool.write_state(id, p).await,
                None => match self.spool.retire(id).await {
                    // Gone already (an earlier try got that far): retired.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    r => r,
                },
            };
            let e = match r {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            tracing::error!(id = %id, error = %e, retry_in = ?pause, "cannot write a delivery outcome; keeping the message until it is written");
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.stopping.cancelled() => return Err(e),
            }
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}

/// A message a delivery worker has taken (`delivering`): nobody else can change it until this
/// value settles it, sets it aside or gives it back (dropping it gives it back).
#[derive(Debug)]
pub struct InFlight {
    store: Store,
    env: Arc<Envelope>,
    progress: Progress,
    done: bool,
}

impl InFlight {
    pub fn envelope(&self) -> &Arc<Envelope> {
        &self.env
    }

    /// Its progress when it was taken.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Records an attempt: with recipients still pending it waits for `progress.next`
    /// (`deferred`), else it is complete and leaves the store (its file recycled). Returns once
    /// the outcome is on disk and in the index; when the store stops first, nothing changed.
    pub async fn settle(mut self, progress: Progress) -> io::Result<()> {
        let event = if progress.pending().next().is_none() {
            Event::Complete
        } else {
            Event::Defer
        };
        self.finish(event, progress).await
    }

    /// Sets the message aside for an operator (`suspended`), with `why` as its last error.
    pub async fn set_aside(mut self, mut progress: Progress, why: String) -> io::Result<()> {
        progress.status = Status::Suspended;
        progress.error = why;
        self.finish(Event::Fault, progress).await
    }

    /// Lets the message go untried (its connection ended before it was sent).
    pub fn give_back(self) {
        // Drop does it.
    }

    async fn finish(&mut self, event: Event, progress: Progress) -> io::Result<()> {
        // Only the table decides: an InFlight is `delivering` by construction.
        let next = State::Delivering.next(event).map_err(io::Error::other)?;
        let keep = (next != Next::Gone).then_some(progress);
        let id = &self.env.id;
        self.store.write_outcome(id, keep.as_ref()).await?;
        self.store.tell(|f| f.changed(id, keep.as_ref()));
        self.store.index.settle(id, keep);
        self.done = true;
        Ok(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.store.index.give_back(&self.env.id);
        }
    }
}

#[cfg(test)]
mod tests;
