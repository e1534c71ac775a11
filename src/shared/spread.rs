//! How far fingerprints have spread across the fleet, known here without asking: the view the
//! message path decides with, so no message waits on a round trip to the store.
//!
//! Two ways in, both off the message path (on the writer's thread):
//!
//! 1. **Answers.** The sighting script answers each fingerprint's counts after counting the
//!    message (everyone's sightings so far, this one's included): a node knows what the fleet
//!    has seen of every fingerprint it has seen itself, one batch after its own sighting.
//! 2. **The spreading stream** (`P:{spread}`, one Redis stream). A node whose answer shows a
//!    fingerprint seen at two tenants or from two networks or more — what may become an
//!    outbreak; a newsletter of one tenant from one network never does — and changed since
//!    what it knew *in a way a policy can notice*, appends the new counts ([`STREAM_MAX`]
//!    entries kept): a count that moved below the highest threshold of the node's outbreak
//!    policies (or out from under it) may have crossed one; moves above it cannot, and are
//!    told only once a quarter of the policies' shortest window has passed since the
//!    fingerprint was last told (so the other nodes keep it within their window while it is
//!    seen; their counts of it are then as of that entry, and a verdict citing it says "seen
//!    by" that many, which the thresholds are all under). Every node reads the
//!    stream from its near store each `shared.flush_interval` (one `XREAD`, from where it left
//!    off; from the start after a restart, so it catches up on what is spreading): a fingerprint
//!    spreading elsewhere is known here before its first copy arrives.
//!
//! A count reaches another silo in: the writer's batch (≤ `flush_interval`) + the round trip to
//! the primary + the next batch's append (≤ `flush_interval`) + replication to the silo's
//! replica + its next read (≤ `flush_interval`): ~0.4 s with the defaults and 100 ms between
//! regions (the goal: ≤ 2 s).
//!
//! # What is exact, what is not
//!
//! The view is as of the last answer or entry, so a count is behind by what the fleet saw since
//! (at most a few batches); the node's own sightings since are in [`super::outbreak::Local`],
//! and the message path takes the larger of each count. Members that slid out of the window
//! are taken off when the next answer or entry for the fingerprint arrives; until then the view
//! may count them still (an entry is forgotten once its last sighting is a window old). A
//! fingerprint of one tenant and one network is known fleet-wide only at the nodes that saw it:
//! a policy whose thresholds are one tenant and one network acts at each node one batch after
//! that node's first copy.
//!
//! # Bounds
//!
//! [`VIEW_MAX`] fingerprints in the view (the least recently seen go first); the stream keeps
//! [`STREAM_MAX`] entries (~80 B each: ~0.8 MB in the store); one read takes at most
//! [`READ_COUNT`] entries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use redis::Value;

use super::keys::Fingerprint;
use super::outbreak::Counts;
use super::{Call, Fleet};

/// Fingerprints this node knows the fleet's counts of; the least recently seen go first.
pub const VIEW_MAX: usize = 20_000;
/// Entries the spreading stream keeps (approximately: `MAXLEN ~`).
pub const STREAM_MAX: usize = 10_000;
/// Entries one read of the stream takes at most (the rest: the next read).
pub const READ_COUNT: usize = 1_000;

/// The fleet's counts of one fingerprint, as last answered, and when it was last seen (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub counts: Counts,
    pub last_ms: u64,
}

impl Known {
    /// Seen at two tenants or from two networks: worth telling every node.
    pub fn spreading(&self) -> bool {
        self.counts.tenants >= 2 || self.counts.networks >= 2
    }

    /// As a stream entry's value: `r t n first last`.
    fn encode(&self) -> String {
        let c = &self.counts;
        format!(
            "{} {} {} {} {}",
            c.recipients,
            c.tenants,
            c.networks,
            c.first_ms.unwrap_or(self.last_ms),
            self.last_ms
        )
    }

    fn decode(s: &str) -> Option<Known> {
        let mut it = s.split(' ').map(|x| x.parse::<u64>().ok());
        let mut next = || it.next().flatten();
        let (r, t, n, first, last) = (next()?, next()?, next()?, next()?, next()?);
        let small = |x: u64| u32::try_from(x).ok();
        Some(Known {
            counts: Counts {
                recipients: small(r)?,
                tenants: small(t)?,
                networks: small(n)?,
                first_ms: Some(first),
            },
            last_ms: last,
        })
    }
}

/// What this node knows of the fleet's counts.
#[derive(Debug)]
pub struct View {
    map: Mutex<HashMap<Fingerprint, Entry>>,
    care: Care,
}

impl Default for View {
    fn default() -> View {
        View {
            map: Mutex::default(),
            care: Care {
                recipients: AtomicU32::new(0),
                tenants: AtomicU32::new(0),
                networks: AtomicU32::new(0),
                window_ms: AtomicU64::new(u64::MAX),
            },
        }
    }
}

/// A fingerprint in the view: the fleet's counts, and the last sighting the stream has told.
#[derive(Debug, Clone, Copy)]
struct Entry {
    known: Known,
    told_ms: u64,
}

/// The highest thresholds of this node's outbreak policies (0: none registered, every change
/// counts) and their shortest window: what makes a change worth telling.
#[derive(Debug)]
struct Care {
    recipients: AtomicU32,
    tenants: AtomicU32,
    networks: AtomicU32,
    window_ms: AtomicU64,
}

impl Care {
    /// Whether going from `old` to `new` may cross a threshold: some count changed below the
    /// highest threshold of its kind (before or after the change).
    fn noticeable(&self, old: &Counts, new: &Counts) -> bool {
        let moved = |limit: &AtomicU32, a: u32, b: u32| {
            let limit = match limit.load(Ordering::Relaxed) {
                0 => u32::MAX,
                l => l,
            };
            a != b && a.min(b) < limit
        };
        moved(&self.recipients, old.recipients, new.recipients)
            || moved(&self.tenants, old.tenants, new.tenants)
            || moved(&self.networks, old.networks, new.networks)
    }

    /// How long a fingerprint still seen may go untold: a quarter of the shortest window.
    fn retell_ms(&self) -> u64 {
        self.window_ms.load(Ordering::Relaxed) / 4
    }
}

impl View {
    /// The fleet's counts of each of `fps` whose last sighting is within `window_ms` of
    /// `now_ms` (one lock for a message's fingerprints).
    pub fn counts(&self, fps: &[Fingerprint], now_ms: u64, window_ms: u64) -> Vec<Option<Counts>> {
        let from = now_ms.saturating_sub(window_ms);
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        fps.iter()
            .map(|fp| {
                m.get(fp)
                    .filter(|e| e.known.last_ms >= from)
                    .map(|e| e.known.counts)
            })
            .collect()
    }

    /// Every fingerprint known, with its counts (the `intel`-style listing and the tests).
    pub fn known(&self) -> Vec<(Fingerprint, Known)> {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(f, e)| (*f, e.known)).collect()
    }

    /// Registers an outbreak policy's thresholds and window: changes are told up to the
    /// highest thresholds registered, and retold each quarter of the shortest window.
    pub fn care(&self, thresholds: Counts, window_ms: u64) {
        let c = &self.care;
        c.recipients
            .fetch_max(thresholds.recipients, Ordering::Relaxed);
        c.tenants.fetch_max(thresholds.tenants, Ordering::Relaxed);
        c.networks.fetch_max(thresholds.networks, Ordering::Relaxed);
        c.window_ms.fetch_min(window_ms.max(1), Ordering::Relaxed);
    }

    /// Takes `k` (from the stream: it has been told) unless what is known is newer; true when
    /// the counts changed.
    pub fn learn(&self, fp: Fingerprint, k: Known) -> bool {
        self.take(fp, k, true).0
    }

    /// Takes `k` (the store's answer to this node's sighting) unless what is known is newer;
    /// answers whether the counts changed and whether to tell the fleet (see the module doc).
    pub fn answered(&self, fp: Fingerprint, k: Known) -> (bool, bool) {
        self.take(fp, k, false)
    }

    fn take(&self, fp: Fingerprint, k: Known, told: bool) -> (bool, bool) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (old, told_ms) = match m.get(&fp) {
            Some(e) if e.known.last_ms > k.last_ms => return (false, false),
            Some(e) => (e.known.counts, e.told_ms),
            None => {
                if m.len() >= VIEW_MAX {
                    evict(&mut m);
                }
                (Counts::default(), 0)
            }
        };
        let new = &k.counts;
        let changed = old.recipients != new.recipients
            || old.tenants != new.tenants
            || old.networks != new.networks;
        let tell = !told
            && k.spreading()
            && (self.care.noticeable(&old, new)
                || k.last_ms >= told_ms.saturating_add(self.care.retell_ms()));
        let told_ms = if told || tell { k.last_ms } else { told_ms };
        m.insert(fp, Entry { known: k, told_ms });
        (changed, tell)
    }
}

/// Forgets the least recently seen eighth.
fn evict(m: &mut HashMap<Fingerprint, Entry>) {
    let mut lasts: Vec<u64> = m.values().map(|e| e.known.last_ms).collect();
    let n = VIEW_MAX / 8;
    if lasts.len() <= n {
        return;
    }
    lasts.select_nth_unstable(n);
    let cut = lasts[n];
    m.retain(|_, e| e.known.last_ms > cut);
}

/// The sighting script's answer for one call: `r, t, n, first, last` per fingerprint.
pub(crate) fn parse_answer(v: &Value) -> Vec<Known> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    let num = |v: &Value| -> Option<u64> {
        match v {
            Value::Int(n) => u64::try_from(*n).ok(),
            Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    };
    items
        .chunks_exact(5)
        .map(|c| {
            let n: Vec<u64> = c.iter().map(|v| num(v).unwrap_or(0)).collect();
            Known {
                counts: Counts {
                    recipients: n[0] as u32,
                    tenants: n[1] as u32,
                    networks: n[2] as u32,
                    first_ms: Some(n[3]),
                },
                last_ms: n[4],
            }
        })
        .collect()
}

impl Fleet {
    /// Takes the counts a batch's sighting scripts answered; what spread further than this
    /// node knew goes on the stream (returned as the calls to append it).
    pub(crate) fn answered(&self, fps: &[Fingerprint], answer: &Value) -> Vec<Call> {
        let mut tell = Vec::new();
        for (fp, k) in fps.iter().zip(parse_answer(answer)) {
            let (changed, told) = self.spread.answered(*fp, k);
            if changed {
                self.metrics.updates.with_label_values(&["answer"]).inc();
            }
            if told {
                tell.push((*fp, k));
            }
        }
        tell.into_iter()
            .map(|(fp, k)| self.append(&fp, &k))
            .collect()
    }

    fn append(&self, fp: &Fingerprint, k: &Known) -> Call {
        let (tag, key) = self.keys.spread();
        let mut cmd = super::xadd_capped(&key, STREAM_MAX);
        cmd.arg(fp.id()).arg(k.encode());
        Call { tag, cmd }
    }

    /// Reads the stream from `after` (an entry id; `0` the first time) on the near store and
    /// takes what it says; returns where to go on from (unchanged when nothing was read).
    pub(crate) async fn read_spread(&self, after: String) -> String {
        let Some(conn) = self.read.load_full() else {
            return after;
        };
        if !self.is_up() {
            return after;
        }
        let (tag, key) = self.keys.spread();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("STREAMS")
            .arg(&key)
            .arg(&after);
        let Some(answer) = self
            .call(
                "spread",
                &conn,
                &[Call { tag, cmd }],
                self.cfg.timeout.get(),
            )
            .await
        else {
            return after;
        };
        let entries = answer.first().map(stream_entries).unwrap_or_default();
        let mut last = after;
        for (id, fields) in entries {
            for (f, v) in fields {
                if let (Some(fp), Some(k)) = (Fingerprint::parse(&f), Known::decode(&v))
                    && self.spread.learn(fp, k)
                {
                    self.metrics.updates.with_label_values(&["fleet"]).inc();
                }
            }
            last = id;
        }
        last
    }
}

/// `XREAD`'s answer for one stream: its entries, each an id and its field/value pairs (RESP2
/// arrays or RESP3 maps alike; nil when nothing is new).
pub(crate) fn stream_entries(v: &Value) -> Vec<(String, Vec<(String, String)>)> {
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn pairs(v: &Value) -> Vec<(String, String)> {
        match v {
            Value::Array(a) => a
                .chunks_exact(2)
                .filter_map(|p| Some((text(&p[0])?, text(&p[1])?)))
                .collect(),
            Value::Map(m) => m
                .iter()
                .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
                .collect(),
            _ => Vec::new(),
        }
    }
    // One stream: [[key, entries]] (RESP2) or {key: entries} (RESP3).
    let entries = match v {
        Value::Array(streams) => streams.first().and_then(|s| match s {
            Value::Array(kv) => kv.get(1),
            _ => None,
        }),
        Value::Map(m) => m.first().map(|(_, e)| e),
        _ => None,
    };
    let Some(Value::Array(entries)) = entries else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| match e {
            Value::Array(p) if p.len() == 2 => Some((text(&p[0])?, pairs(&p[1]))),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::outbreak::FingerprintKind;

    fn k(r: u32, t: u32, n: u32, last_ms: u64) -> Known {
        Known {
            counts: Counts {
                recipients: r,
                tenants: t,
                networks: n,
                first_ms: Some(1),
            },
            last_ms,
        }
    }

    #[test]
    fn the_view_keeps_the_newest_and_forgets_what_left_the_window() {
        let v = View::default();
        let fp = Fingerprint {
            kind: FingerprintKind::Fuzzy,
            digest: 7,
        };
        assert!(v.learn(fp, k(2, 2, 1, 1000)), "new");
        assert!(!v.learn(fp, k(2, 2, 1, 1100)), "same counts, later");
        assert!(!v.learn(fp, k(9, 9, 9, 900)), "an older answer loses");
        assert!(v.learn(fp, k(3, 2, 2, 1200)));
        assert_eq!(
            v.counts(&[fp], 1500, 1000)[0].map(|c| c.recipients),
            Some(3)
        );
        assert_eq!(
            v.counts(&[fp], 2300, 1000),
            [None],
            "a window after its last sighting"
        );
        for d in 0..VIEW_MAX as u64 + 10 {
            let f = Fingerprint {
                kind: FingerprintKind::Text,
                digest: d,
            };
            v.learn(f, k(1, 1, 1, 5000 + d));
        }
        assert!(v.known().len() <= VIEW_MAX, "bounded");
    }

    #[test]
    fn only_changes_a_policy_can_notice_are_told() {
        let v = View::default();
        // Highest thresholds 10 recipients, 3 tenants, 2 networks; shortest window 4 s.
        let care = |r, t, n| Counts {
            recipients: r,
            tenants: t,
            networks: n,
            first_ms: None,
        };
        v.care(care(10, 2, 2), 8000);
        v.care(care(5, 3, 1), 4000);
        let fp = Fingerprint {
            kind: FingerprintKind::Fuzzy,
            digest: 9,
        };
        assert_eq!(
            v.answered(fp, k(1, 1, 1, 1000)),
            (true, false),
            "not spreading"
        );
        assert_eq!(v.answered(fp, k(2, 1, 2, 1100)), (true, true), "spreading");
        assert_eq!(
            v.answered(fp, k(2, 1, 2, 1200)),
            (false, false),
            "unchanged"
        );
        assert_eq!(
            v.answered(fp, k(2, 1, 3, 1300)),
            (true, false),
            "only networks moved, past their highest threshold"
        );
        assert_eq!(
            v.answered(fp, k(10, 3, 4, 1500)),
            (true, true),
            "recipients and tenants reach theirs"
        );
        assert_eq!(
            v.answered(fp, k(11, 4, 5, 1600)),
            (true, false),
            "past every threshold"
        );
        assert_eq!(v.answered(fp, k(12, 4, 5, 2400)), (true, false));
        assert_eq!(
            v.answered(fp, k(12, 4, 5, 2500)),
            (false, true),
            "a quarter of the shortest window since it was last told (1500)"
        );
        assert_eq!(
            v.answered(fp, k(9, 4, 5, 2600)),
            (true, true),
            "back under a threshold"
        );
        // What the stream said counts as told.
        let other = Fingerprint {
            kind: FingerprintKind::Fuzzy,
            digest: 10,
        };
        assert!(v.learn(other, k(5, 2, 2, 100)));
        assert_eq!(v.answered(other, k(5, 2, 2, 150)), (false, false));
        // No policy registered: every change is told.
        let all = View::default();
        assert_eq!(all.answered(fp, k(150, 1, 150, 1)), (true, true));
        assert_eq!(all.answered(fp, k(151, 1, 150, 2)), (true, true));
    }

    #[test]
    fn answers_and_entries_parse() {
        let int = Value::Int;
        let a = Value::Array(vec![
            int(3),
            int(2),
            int(2),
            int(100),
            int(200),
            int(1),
            int(1),
            int(1),
            int(150),
            int(150),
        ]);
        let got = parse_answer(&a);
        assert_eq!(
            got,
            vec![
                k(3, 2, 2, 200).with_first(100),
                k(1, 1, 1, 150).with_first(150)
            ]
        );
        assert!(
            parse_answer(&Value::Int(2)).is_empty(),
            "an old script's answer"
        );
        let e = k(5, 3, 2, 99);
        assert_eq!(Known::decode(&e.encode()), Some(e));
        assert_eq!(Known::decode("1 2 x 4 5"), None);
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("p:{spread}"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("f0000000000000007"), bulk("5 3 2 1 99")]),
            ])]),
        ])]);
        let got = stream_entries(&resp2);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "1-0");
        assert_eq!(got[0].1[0].1, "5 3 2 1 99");
        assert!(stream_entries(&Value::Nil).is_empty(), "nothing new");
    }

    impl Known {
        fn with_first(mut self, first: u64) -> Known {
            self.counts.first_ms = Some(first);
            self
        }
    }
}
