//! The in-memory index of the spool: which messages wait for which destination, when they are
//! due, which destinations are down (their mail is *held*), and which message is claimed (by a
//! delivery worker, or by a change being written). Private to the store: only [`super::Store`]
//! calls it, after (or instead of) the matching write to the spool, so the two cannot disagree.
//! Rebuilt from the spool at start.
//!
//! Bounds: one small entry per spooled message (envelope in an `Arc`, no message bodies), so
//! memory follows the spool size; destinations are tenants plus remote domains of DSNs.
//!
//! Lifecycle of a message: `insert` (ready, or waiting until `next`) -> `take` by a delivery
//! worker (claimed) -> `settle`: gone, or back to waiting with a new `next` -> ... When a
//! destination is down, its messages stay where they are and are not taken; when a probe
//! succeeds, everything of that destination becomes ready at once (the fast drain). A change
//! (suspend, release, delete, expire) claims the message with `begin_change`, the store writes
//! it, and `end_change` applies it or puts everything back as it was.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::ChangeError;
use super::spool::{Envelope, Progress, QueueId};
use super::state::{Event, Next, State, Status};

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dest {
    /// A tenant's own servers.
    Tenant(String),
    /// A remote domain (DSNs to senders), via the relay or MX.
    Domain(String),
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Tenant(t) => write!(f, "tenant:{t}"),
            Dest::Domain(d) => write!(f, "domain:{d}"),
        }
    }
}

/// Who has a message claimed: nobody else may take or change it meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// A delivery worker (the message is `delivering`).
    Delivery,
    /// A change being written to the spool (the message shows its state before the change).
    Change,
}

#[derive(Debug)]
struct Entry {
    env: Arc<Envelope>,
    progress: Progress,
    dest: Dest,
    claim: Option<Claim>,
}

impl Entry {
    fn state(&self, dests: &HashMap<Dest, DestState>) -> State {
        State::of(
            &self.progress.status,
            self.claim == Some(Claim::Delivery),
            dests.get(&self.dest).is_some_and(|d| d.down),
            self.progress.attempts,
        )
    }

    fn listed(&self, dests: &HashMap<Dest, DestState>) -> Listed {
        Listed {
            env: self.env.clone(),
            progress: self.progress.clone(),
            dest: self.dest.clone(),
            state: self.state(dests),
            dest_down: dests.get(&self.dest).is_some_and(|d| d.down),
        }
    }
}

#[derive(Debug, Default)]
struct DestState {
    ready: VecDeque<QueueId>,
    /// (due unix seconds, id)
    waiting: BTreeSet<(u64, QueueId)>,
    down: bool,
    /// Unix seconds when it went down.
    down_since: u64,
    failures: u32,
    /// No new connection before this (unix ms), after a connection failure.
    backoff_until_ms: u64,
    active: u32,
    /// A probe task is watching it.
    probing: bool,
}

impl DestState {
    /// Puts a waiting message where it belongs: ready when due, else waiting until `next`.
    fn enqueue(&mut self, id: QueueId, next: u64, now: u64) {
        if next <= now {
            self.ready.push_back(id);
        } else {
            self.waiting.insert((next, id));
        }
    }

    fn unqueue(&mut self, id: &QueueId) {
        self.ready.retain(|x| x != id);
        self.waiting.retain(|(_, x)| x != id);
    }
}

#[derive(Debug, Default)]
struct Inner {
    msgs: HashMap<QueueId, Entry>,
    dests: HashMap<Dest, DestState>,
    /// Rotates the order `plan` visits destinations in.
    round: usize,
}

/// One message as the store shows it (a copy: taking it holds nothing up).
#[derive(Debug, Clone)]
pub struct Listed {
    pub env: Arc<Envelope>,
    pub progress: Progress,
    pub dest: Dest,
    pub state: State,
    /// Its destination is marked down (also true while a worker still has it: `delivering`).
    pub dest_down: bool,
}

/// A message claimed for a change: what it was, and where the change leads.
#[derive(Debug)]
pub struct Claimed {
    pub progress: Progress,
    pub from: State,
    pub next: Next,
}

#[derive(Debug, Default)]
pub struct Index {
    inner: Mutex<Inner>,
    pub wake: tokio::sync::Notify,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Index {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a spooled message.
    pub fn insert(&self, env: Arc<Envelope>, progress: Progress, dest: Dest) {
        let id = env.id.clone();
        let mut g = self.lock();
        let queued = progress.status == Status::Queued;
        let next = progress.next;
        g.msgs.insert(
            id.clone(),
            Entry {
                env,
                progress,
                dest: dest.clone(),
                claim: None,
            },
        );
        if queued {
            g.dests
                .entry(dest)
                .or_default()
                .enqueue(id, next, now_secs());
        } else {
            g.dests.entry(dest).or_default();
        }
        drop(g);
        self.wake.notify_one();
    }

    /// Moves due waiting messages to ready; returns destinations that want a new connection
    /// (not down, not backing off, under their cap `per_dest(dest)`), counting the connection as
    /// active. `budget` is how many connections may start now; destinations are visited from a
    /// rotating start so that, when the budget is short, one tenant's backlog cannot starve the
    /// others. Also returns the earliest future due time.
    pub fn plan(
        &self,
        per_dest: &dyn Fn(&Dest) -> u32,
        mut budget: u32,
    ) -> (Vec<Dest>, Option<u64>) {
        let now = now_secs();
        let now_ms = now_ms();
        let mut g = self.lock();
        let round = g.round;
        g.round = g.round.wrapping_add(1);
        let mut start = Vec::new();
        let mut earliest: Option<u64> = None;
        let n = g.dests.len().max(1);
        let mut dests: Vec<(&Dest, &mut DestState)> = g.dests.iter_mut().collect();
        dests.rotate_left(round % n);
        for (dest, d) in dests {
            while let Some((due, _)) = d.waiting.first() {
                if *due > now {
                    earliest = Some(earliest.map_or(*due, |e: u64| e.min(*due)));
                    break;
                }
                let (_, id) = d.waiting.pop_first().expect("checked non-empty");
                d.ready.push_back(id);
            }
            if d.down || d.backoff_until_ms > now_ms {
                if !d.down && !d.ready.is_empty() {
                    earliest = Some(earliest.map_or(now + 1, |e| e.min(now + 1)));
                }
                continue;
            }
            // One connection per few ready messages, up to the cap.
            let want = (d.ready.len() as u32).div_ceil(4).min(per_dest(dest));
            while d.active < want && budget > 0 {
                d.active += 1;
                budget -= 1;
                start.push(dest.clone());
            }
        }
        (start, earliest)
    }

    /// The next ready message of `dest`, claimed by a delivery worker (`delivering`).
    pub fn take(&self, dest: &Dest) -> Option<(Arc<Envelope>, Progress)> {
        let mut g = self.lock();
        let Inner { msgs, dests, .. } = &mut *g;
        let d = dests.get_mut(dest)?;
        if d.down {
            return None;
        }
        while let Some(id) = d.ready.pop_front() {
            if let Some(e) = msgs.get_mut(&id)
                && e.claim.is_none()
                && State::of(&e.progress.status, false, false, e.progress.attempts)
                    .next(Event::Take)
                    .is_ok()
            {
                e.claim = Some(Claim::Delivery);
                return Some((e.env.clone(), e.progress.clone()));
            }
        }
        None
    }

    /// A worker's connection ended.
    pub fn released(&self, dest: &Dest) {
        if let Some(d) = self.lock().dests.get_mut(dest) {
            d.active = d.active.saturating_sub(1);
        }
        self.wake.notify_one();
    }

    /// A delivery worker's message, its outcome on disk: `Some` is its new progress (waiting
    /// again, or suspended), `None` removes it.
    pub fn settle(&self, id: &QueueId, progress: Option<Progress>) {
        let mut g = self.lock();
        let Some(progress) = progress else {
            g.msgs.remove(id);
            return;
        };
        let Some(e) = g.msgs.get_mut(id) else { return };
        e.claim = None;
        e.progress = progress;
        let (next, dest, queued) = (
            e.progress.next,
            e.dest.clone(),
            e.progress.status == Status::Queued,
        );
        if queued && let Some(d) = g.dests.get_mut(&dest) {
            d.waiting.insert((next, id.clone()));
        }
    }

    /// A delivery worker lets its message go untried (its connection ended first).
    pub fn give_back(&self, id: &QueueId) {
        let mut g = self.lock();
        let Inner { msgs, dests, .. } = &mut *g;
        if let Some(e) = msgs.get_mut(id)
            && e.claim == Some(Claim::Delivery)
        {
            e.claim = None;
            if let Some(d) = dests.get_mut(&e.dest) {
                d.ready.push_front(id.clone());
            }
        }
        drop(g);
        self.wake.notify_one();
    }

    /// A connection to `dest` failed. Returns true when this marks it down.
    pub fn connect_failed(&self, dest: &Dest, dead_after: u32) -> bool {
        let mut g = self.lock();
        let d = g.dests.entry(dest.clone()).or_default();
        d.failures += 1;
        d.backoff_until_ms = now_ms() + 500 * u64::from(d.failures.min(10));
        if !d.down && d.failures >= dead_after {
            d.down = true;
            d.down_since = now_secs();
            return true;
        }
        false
    }

    pub fn connect_ok(&self, dest: &Dest) {
        if let Some(d) = self.lock().dests.get_mut(dest) {
            d.failures = 0;
            d.backoff_until_ms = 0;
        }
    }

    /// Claims the probe of a down destination (only one prober at a time).
    pub fn claim_probe(&self, dest: &Dest) -> bool {
        let mut g = self.lock();
        match g.dests.get_mut(dest) {
            Some(d) if d.down && !d.probing => {
                d.probing = true;
                true
            }
            _ => false,
        }
    }

    /// A probe succeeded: everything of `dest` is ready now.
    pub fn dest_up(&self, dest: &Dest) -> usize {
        let mut g = self.lock();
        let Some(d) = g.dests.get_mut(dest) else {
            return 0;
        };
        d.down = false;
        d.probing = false;
        d.failures = 0;
        d.backoff_until_ms = 0;
        let waiting = std::mem::take(&mut d.waiting);
        let n = waiting.len() + d.ready.len();
        d.ready.extend(waiting.into_iter().map(|(_, id)| id));
        drop(g);
        self.wake.notify_one();
        n
    }

    /// Whether delivery has marked `dest` down (its mail is held).
    pub fn dest_down(&self, dest: &Dest) -> bool {
        self.lock().dests.get(dest).is_some_and(|d| d.down)
    }

    /// Destinations and whether they are up, for metrics.
    pub fn destinations(&self) -> Vec<(Dest, bool, u64)> {
        self.lock()
            .dests
            .iter()
            .map(|(k, d)| (k.clone(), !d.down, d.down_since))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().msgs.len()
    }

    /// Every message, oldest first.
    pub fn list(&self) -> Vec<Listed> {
        let g = self.lock();
        let mut v: Vec<Listed> = g.msgs.values().map(|e| e.listed(&g.dests)).collect();
        // The copy is ours: sort it without holding up SMTP and delivery.
        drop(g);
        v.sort_by(|a, b| a.env.id.cmp(&b.env.id));
        v
    }

    pub fn get(&self, id: &QueueId) -> Option<Listed> {
        let g = self.lock();
        g.msgs.get(id).map(|e| e.listed(&g.dests))
    }

    /// Claims a message for `event` when the table allows it (and it is still in `expect`, when
    /// given): nobody takes or changes it until [`Index::end_change`]. A waiting message leaves
    /// its destination's lists meanwhile.
    pub fn begin_change(
        &self,
        id: &QueueId,
        expect: Option<State>,
        event: Event,
    ) -> Result<Claimed, ChangeError> {
        let mut g = self.lock();
        let Inner { msgs, dests, .. } = &mut *g;
        let e = msgs.get_mut(id).ok_or(ChangeError::NotFound)?;
        if e.claim == Some(Claim::Change) {
            return Err(ChangeError::Busy);
        }
        let from = e.state(dests);
        if let Some(want) = expect
            && want != from
        {
            return Err(ChangeError::Moved { want, now: from });
        }
        let next = from.next(event)?;
        e.claim = Some(Claim::Change);
        if e.progress.status == Status::Queued
            && let Some(d) = dests.get_mut(&e.dest)
        {
            d.unqueue(id);
        }
        Ok(Claimed {
            progress: e.progress.clone(),
            from,
            next,
        })
    }

    /// Ends a change begun with [`Index::begin_change`]: `Ok(Some(progress))` is on disk now,
    /// `Ok(None)` the message is gone from disk; `Err(())` nothing was written, so everything
    /// goes back as it was.
    pub fn end_change(&self, id: &QueueId, written: Result<Option<Progress>, ()>) {
        let mut g = self.lock();
        let Inner { msgs, dests, .. } = &mut *g;
        match written {
            Ok(None) => {
                msgs.remove(id);
            }
            written => {
                let Some(e) = msgs.get_mut(id) else { return };
                e.claim = None;
                if let Ok(Some(progress)) = written {
                    e.progress = progress;
                }
                if e.progress.status == Status::Queued {
                    dests.entry(e.dest.clone()).or_default().enqueue(
                        id.clone(),
                        e.progress.next,
                        now_secs(),
                    );
                }
            }
        }
        drop(g);
        self.wake.notify_one();
    }

    /// Makes deferred messages due now (all, or one). Returns how many.
    pub fn flush(&self, only: Option<&QueueId>) -> usize {
        let mut g = self.lock();
        let mut n = 0;
        for d in g.dests.values_mut() {
            d.backoff_until_ms = 0;
            let keep: BTreeSet<(u64, QueueId)> = std::mem::take(&mut d.waiting);
            for (due, id) in keep {
                if only.is_none_or(|o| *o == id) {
                    d.ready.push_back(id);
                    n += 1;
                } else {
                    d.waiting.insert((due, id));
                }
            }
            if only.is_none() && d.down {
                d.down = false;
                d.failures = 0;
            }
        }
        drop(g);
        self.wake.notify_one();
        n
    }
}
