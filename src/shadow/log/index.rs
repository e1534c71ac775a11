//! What the copy log holds, in memory: every live copy (and every taken-over marker) with where
//! its records are, and per segment how much of it is still live and which older segments it
//! must outlive. Pure bookkeeping, the same code for appends and for recovery (which replays the
//! segments in order), so the two cannot disagree.
//!
//! # Why a segment must sometimes outlive its live data
//!
//! A key's state is the effect of its records in log order; the last one wins. A record that
//! ends or replaces an older record of its key (a `GONE` after a `COPY`, a `TAKEN` after a
//! `COPY`, a second `COPY` of the same key) is *needed* for as long as the older record's segment
//! exists: if its own segment were deleted first, a replay would bring the older record back (a
//! discarded copy reborn, to be delivered twice). So such a record makes its segment depend on
//! the older one's ([`Seg::deps`]), and a segment is deleted only when nothing in it is live and
//! every segment it depends on is gone. Progress records are never needed that way: one whose
//! copy is gone is ignored by the replay.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::store::{Progress, QueueId};

/// A copy's key: the primary that sent it (its engine id) and the message's queue id.
pub type Key = (Arc<str>, QueueId);

/// Where a record is: segment number, offset of its header, whole length (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub seg: u64,
    pub off: u64,
    pub len: u32,
}

/// A live key.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A copy held for its primary.
    Held(Held),
    /// A copy this engine adopted and delivers itself (kept so a returning primary learns it).
    Taken { at: Loc, when: u64 },
}

#[derive(Debug, Clone)]
pub struct Held {
    /// The primary's spool identity when it sent the copy.
    pub spool: Arc<str>,
    /// The `COPY` record.
    pub at: Loc,
    /// The latest progress the primary reported (or the one the copy carried).
    pub progress: Option<Progress>,
    /// The `PROGRESS` record that carried it, when newer than the copy.
    pub progress_at: Option<Loc>,
    /// Message bytes (for metrics).
    pub size: u64,
}

impl Entry {
    /// The record that says what the key is (the copy, or the taken marker).
    pub fn main(&self) -> Loc {
        match self {
            Entry::Held(h) => h.at,
            Entry::Taken { at, .. } => *at,
        }
    }
}

/// One segment file's bookkeeping.
#[derive(Debug, Default, Clone)]
pub struct Seg {
    /// Bytes written to it.
    pub bytes: u64,
    /// Live records in it, and their bytes.
    pub live: u32,
    pub live_bytes: u64,
    /// (older segment, key): a record here ends or replaces that key's record there, so this
    /// segment must outlive that one.
    pub deps: Vec<(u64, Key)>,
}

/// What a record does to the index (the log's records, decoded).
#[derive(Debug, Clone)]
pub enum Op {
    Copy {
        key: Key,
        spool: Arc<str>,
        progress: Option<Progress>,
        size: u64,
    },
    Progress {
        key: Key,
        progress: Progress,
    },
    Taken {
        key: Key,
        when: u64,
    },
    Gone {
        key: Key,
    },
}

#[derive(Debug, Default)]
pub struct Index {
    pub entries: HashMap<Key, Entry>,
    pub segs: BTreeMap<u64, Seg>,
}

impl Index {
    fn live(&mut self, at: Loc) {
        let s = self.segs.entry(at.seg).or_default();
        s.live += 1;
        s.live_bytes += u64::from(at.len);
    }

    fn dead(&mut self, at: Loc) {
        if let Some(s) = self.segs.get_mut(&at.seg) {
            s.live = s.live.saturating_sub(1);
            s.live_bytes = s.live_bytes.saturating_sub(u64::from(at.len));
        }
    }

    fn depend(&mut self, seg: u64, on: u64, key: &Key) {
        if seg != on && self.segs.contains_key(&on) {
            self.segs
                .entry(seg)
                .or_default()
                .deps
                .push((on, key.clone()));
        }
    }

    /// Ends a key's entry (its records dead); the record at `seg` that ended it depends on the
    /// entry's main record's segment.
    fn end(&mut self, key: &Key, seg: u64) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.dead(e.main());
        if let Entry::Held(h) = &e
            && let Some(p) = h.progress_at
        {
            self.dead(p);
        }
        self.depend(seg, e.main().seg, key);
        Some(e)
    }

    /// Applies one record written (or read back) at `at`.
    pub fn apply(&mut self, op: Op, at: Loc) {
        self.segs.entry(at.seg).or_default();
        match op {
            Op::Copy {
                key,
                spool,
                progress,
                size,
            } => {
                self.end(&key, at.seg);
                self.live(at);
                self.entries.insert(
                    key,
                    Entry::Held(Held {
                        spool,
                        at,
                        progress,
                        progress_at: None,
                        size,
                    }),
                );
            }
            Op::Progress { key, progress } => {
                let old = match self.entries.get_mut(&key) {
                    Some(Entry::Held(h)) => {
                        h.progress = Some(progress);
                        h.progress_at.replace(at)
                    }
                    // Its copy is gone or adopted: the record is dead at once.
                    _ => return,
                };
                if let Some(old) = old {
                    self.dead(old);
                }
                self.live(at);
            }
            Op::Taken { key, when } => {
                self.end(&key, at.seg);
                self.live(at);
                self.entries.insert(key, Entry::Taken { at, when });
            }
            Op::Gone { key } => {
                self.end(&key, at.seg);
            }
        }
    }

    /// Whether segment `n` may be deleted (see the module docs). The active segment never is.
    pub fn deletable(&self, n: u64, active: u64) -> bool {
        n != active
            && self.segs.get(&n).is_some_and(|s| {
                s.live == 0
                    && s.deps
                        .iter()
                        .all(|(on, _)| *on == n || !self.segs.contains_key(on))
            })
    }

    /// Segments that may be deleted now.
    pub fn deletable_now(&self, active: u64) -> Vec<u64> {
        self.segs
            .keys()
            .copied()
            .filter(|&n| self.deletable(n, active))
            .collect()
    }

    /// Forgets a deleted segment.
    pub fn remove_seg(&mut self, n: u64) {
        self.segs.remove(&n);
    }

    /// A sealed segment worth compacting, the oldest first: less than half of it live, or
    /// nothing live but tombstones still needed (they move on, small, and the segment goes).
    pub fn to_compact(&self, active: u64, segment_bytes: u64) -> Option<u64> {
        self.segs
            .iter()
            .find(|(n, s)| {
                let needed = s
                    .deps
                    .iter()
                    .any(|(on, _)| on != *n && self.segs.contains_key(on));
                **n != active
                    && ((s.live > 0 && s.live_bytes * 2 < segment_bytes) || (s.live == 0 && needed))
            })
            .map(|(n, _)| *n)
    }

    /// What compacting segment `n` must write again: its live keys (whose copy, progress or
    /// marker is there), and the keys whose dependencies must move with them (dead keys get a
    /// `GONE` again; live ones carry the dependency to wherever their main record ends up).
    pub fn compaction_plan(&self, n: u64) -> (Vec<Key>, Vec<(u64, Key)>) {
        let live: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| match e {
                Entry::Held(h) => h.at.seg == n || h.progress_at.is_some_and(|p| p.seg == n),
                Entry::Taken { at, .. } => at.seg == n,
            })
            .map(|(k, _)| k.clone())
            .collect();
        let deps = self
            .segs
            .get(&n)
            .map(|s| {
                s.deps
                    .iter()
                    .filter(|(on, _)| *on != n && self.segs.contains_key(on))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        (live, deps)
    }

    /// After a compaction rewrote a live key, its dependency on `on` moves to the segment of its
    /// main record now.
    pub fn carry_dep(&mut self, key: &Key, on: u64) {
        if let Some(seg) = self.entries.get(key).map(|e| e.main().seg) {
            self.depend(seg, on, key);
        }
    }

    /// Drops the dependencies of segment `n` (it was compacted: they moved on).
    pub fn clear_deps(&mut self, n: u64) {
        if let Some(s) = self.segs.get_mut(&n) {
            s.deps.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        (
            Arc::from("10.0.0.1:25"),
            QueueId::parse(&format!("{:024X}", n)).unwrap(),
        )
    }

    fn copy(n: u8) -> Op {
        Op::Copy {
            key: key(n),
            spool: Arc::from("s"),
            progress: None,
            size: 10,
        }
    }

    fn at(seg: u64, off: u64) -> Loc {
        Loc { seg, off, len: 100 }
    }

    /// A `GONE` in a later segment keeps that segment alive while the copy's segment exists;
    /// once the copy's segment is gone, both may go.
    #[test]
    fn a_tombstone_outlives_the_copy_it_ends() {
        let mut i = Index::default();
        i.apply(copy(1), at(1, 0));
        i.apply(copy(2), at(1, 100));
        i.apply(Op::Gone { key: key(1) }, at(2, 0));
        i.apply(copy(3), at(3, 0));
        // Segment 1 still holds copy 2; segment 2 holds only the tombstone of copy 1.
        assert!(!i.deletable(1, 3));
        assert!(
            !i.deletable(2, 3),
            "its tombstone is needed while segment 1 exists"
        );
        i.apply(Op::Gone { key: key(2) }, at(3, 100));
        assert_eq!(i.deletable_now(3), vec![1]);
        i.remove_seg(1);
        assert_eq!(i.deletable_now(3), vec![2]);
    }

    /// A taken marker replaces the copy and is live itself; forgetting it later makes the
    /// forgetting record depend on the marker's segment, which depends on the copy's.
    #[test]
    fn taken_markers_chain_their_dependencies() {
        let mut i = Index::default();
        i.apply(copy(1), at(1, 0));
        i.apply(copy(2), at(1, 100));
        i.apply(
            Op::Taken {
                key: key(1),
                when: 5,
            },
            at(2, 0),
        );
        assert!(matches!(i.entries.get(&key(1)), Some(Entry::Taken { .. })));
        i.apply(Op::Gone { key: key(1) }, at(3, 0));
        i.apply(copy(4), at(4, 0));
        assert!(
            !i.deletable(2, 4) && !i.deletable(3, 4),
            "segment 1 still exists"
        );
        i.apply(Op::Gone { key: key(2) }, at(4, 100));
        assert_eq!(i.deletable_now(4), vec![1]);
        i.remove_seg(1);
        assert_eq!(i.deletable_now(4), vec![2]);
        i.remove_seg(2);
        assert_eq!(i.deletable_now(4), vec![3]);
    }

    /// Progress of a copy that is gone is ignored; progress replacing progress frees the old.
    #[test]
    fn progress_follows_its_copy() {
        let mut i = Index::default();
        let p = crate::store::Progress {
            status: crate::store::Status::Queued,
            attempts: 1,
            next: 0,
            error: String::new(),
            rcpts: vec![None],
        };
        i.apply(
            Op::Progress {
                key: key(9),
                progress: p.clone(),
            },
            at(1, 0),
        );
        assert!(i.entries.is_empty() && i.segs[&1].live == 0);
        i.apply(copy(1), at(1, 100));
        i.apply(
            Op::Progress {
                key: key(1),
                progress: p.clone(),
            },
            at(2, 0),
        );
        i.apply(
            Op::Progress {
                key: key(1),
                progress: p,
            },
            at(3, 0),
        );
        assert_eq!((i.segs[&2].live, i.segs[&3].live), (0, 1));
        assert_eq!(i.to_compact(3, 1000), Some(1));
        let (live, deps) = i.compaction_plan(1);
        assert_eq!(live, vec![key(1)]);
        assert!(deps.is_empty());
    }
}
