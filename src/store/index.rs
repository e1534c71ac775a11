//! The in-memory index of the spool: which messages wait for which destination, when they are
//! due, which destinations are down (their mail is *held*), and what is in flight. The spool on
//! disk is the truth; this index is rebuilt from it at start.
//!
//! Bounds: one small entry per spooled message (envelope in an `Arc`, no message bodies), so
//! memory follows the spool size; destinations are tenants plus remote domains of DSNs.
//!
//! Lifecycle of a message: `insert` (ready, or waiting until `next`) -> `take` by a delivery
//! worker (in flight) -> `finish`: done (removed), or back to waiting with a new `next`. When a
//! destination is down, its messages stay where they are and are not taken; when a probe
//! succeeds, everything of that destination becomes ready at once (the fast drain).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::spool::{Envelope, QueueId, State, Status};

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

#[derive(Debug)]
pub struct Entry {
    pub env: Arc<Envelope>,
    pub state: State,
    pub dest: Dest,
    pub in_flight: bool,
}

#[derive(Debug, Default)]
pub struct DestState {
    ready: VecDeque<QueueId>,
    /// (due unix seconds, id)
    waiting: BTreeSet<(u64, QueueId)>,
    pub down: bool,
    /// Unix seconds when it went down.
    pub down_since: u64,
    failures: u32,
    /// No new connection before this (unix ms), after a connection failure.
    backoff_until_ms: u64,
    pub active: u32,
    /// A probe task is watching it.
    pub probing: bool,
}

#[derive(Debug, Default)]
struct Inner {
    msgs: HashMap<QueueId, Entry>,
    dests: HashMap<Dest, DestState>,
    /// Rotates the order `plan` visits destinations in.
    round: usize,
}

/// A row of `queue list`.
#[derive(Debug, Clone)]
pub struct Listed {
    pub env: Arc<Envelope>,
    pub state: State,
    pub dest: Dest,
    /// `queued`, `deferred`, `held` (destination down), `delivering`, `hold`, `quarantined`.
    pub display: &'static str,
}

#[derive(Debug, Default)]
pub struct Queue {
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

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a spooled message.
    pub fn insert(&self, env: Arc<Envelope>, state: State, dest: Dest) {
        let id = env.id.clone();
        let mut g = self.lock();
        let queued = state.status == Status::Queued;
        let next = state.next;
        g.msgs.insert(
            id.clone(),
            Entry {
                env,
                state,
                dest: dest.clone(),
                in_flight: false,
            },
        );
        let d = g.dests.entry(dest).or_default();
        if queued {
            if next <= now_secs() {
                d.ready.push_back(id);
            } else {
                d.waiting.insert((next, id));
            }
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

    /// The next ready message of `dest`, marked in flight.
    pub fn take(&self, dest: &Dest) -> Option<(Arc<Envelope>, State)> {
        let mut g = self.lock();
        let Inner { msgs, dests, .. } = &mut *g;
        let d = dests.get_mut(dest)?;
        if d.down {
            return None;
        }
        while let Some(id) = d.ready.pop_front() {
            if let Some(e) = msgs.get_mut(&id)
                && !e.in_flight
                && e.state.status == Status::Queued
            {
                e.in_flight = true;
                return Some((e.env.clone(), e.state.clone()));
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

    /// A delivery attempt ended: `state` is the new state, `done` removes the entry.
    pub fn finish(&self, id: &QueueId, state: State, done: bool) {
        let mut g = self.lock();
        if done {
            g.msgs.remove(id);
            return;
        }
        let Some(e) = g.msgs.get_mut(id) else { return };
        e.in_flight = false;
        e.state = state;
        let (next, dest, queued) = (
            e.state.next,
            e.dest.clone(),
            e.state.status == Status::Queued,
        );
        if queued && let Some(d) = g.dests.get_mut(&dest) {
            d.waiting.insert((next, id.clone()));
        }
    }

    /// The message went back without an attempt (connection lost before it was tried).
    pub fn requeue(&self, id: &QueueId) {
        let mut g = self.lock();
        let Inner { msgs, dests, .. } = &mut *g;
        if let Some(e) = msgs.get_mut(id) {
            e.in_flight = false;
            if let Some(d) = dests.get_mut(&e.dest) {
                d.ready.push_front(id.clone());
            }
        }
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

    pub fn is_down(&self, dest: &Dest) -> bool {
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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn display(e: &Entry, dests: &HashMap<Dest, DestState>) -> &'static str {
        match &e.state.status {
            Status::Hold => "hold",
            Status::Quarantined { .. } => "quarantined",
            Status::Queued if e.in_flight => "delivering",
            Status::Queued if dests.get(&e.dest).is_some_and(|d| d.down) => "held",
            Status::Queued if e.state.attempts > 0 => "deferred",
            Status::Queued => "queued",
        }
    }

    /// Every message, oldest first.
    pub fn list(&self) -> Vec<Listed> {
        let g = self.lock();
        let mut v: Vec<Listed> = g
            .msgs
            .values()
            .map(|e| Listed {
                env: e.env.clone(),
                state: e.state.clone(),
                dest: e.dest.clone(),
                display: Self::display(e, &g.dests),
            })
            .collect();
        // The snapshot is ours: sort it without holding up SMTP and delivery.
        drop(g);
        v.sort_by(|a, b| a.env.id.cmp(&b.env.id));
        v
    }

    pub fn get(&self, id: &QueueId) -> Option<Listed> {
        let g = self.lock();
        g.msgs.get(id).map(|e| Listed {
            env: e.env.clone(),
            state: e.state.clone(),
            dest: e.dest.clone(),
            display: Self::display(e, &g.dests),
        })
    }

    /// Changes a message's status (hold / release / quarantine release). Returns the new state
    /// for the caller to persist, or an error text.
    pub fn set_status(&self, id: &QueueId, status: Status) -> Result<State, String> {
        let mut g = self.lock();
        let Inner { msgs, dests, .. } = &mut *g;
        let e = msgs.get_mut(id).ok_or("no such message")?;
        if e.in_flight {
            return Err("message is being delivered right now; try again".into());
        }
        let was_queued = e.state.status == Status::Queued;
        e.state.status = status;
        let d = dests.entry(e.dest.clone()).or_default();
        if was_queued {
            d.ready.retain(|x| x != id);
            d.waiting.retain(|(_, x)| x != id);
        }
        if e.state.status == Status::Queued {
            e.state.next = 0;
            d.ready.push_back(id.clone());
        }
        let s = e.state.clone();
        drop(g);
        self.wake.notify_one();
        Ok(s)
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

    /// Removes a message from the index (the caller removes it from disk).
    pub fn remove(&self, id: &QueueId) -> Result<(), String> {
        let mut g = self.lock();
        let e = g.msgs.get(id).ok_or("no such message")?;
        if e.in_flight {
            return Err("message is being delivered right now; try again".into());
        }
        g.msgs.remove(id);
        Ok(())
    }
}
