//! The call-ahead cache: what tenants' servers said about recipients, and when. Sans-I/O: time
//! comes in as an [`Instant`], so the lifetimes are tested without waiting.
//!
//! Two sets, each bounded by `engine.verify.cache_size` and evicting its least recently used
//! entry when full: known recipients (the answers that let mail be held while a tenant's server
//! is down) and unknown ones. Kept apart, a flood of made-up addresses (a dictionary attack, a
//! spam run) fills only the second set and never pushes a known recipient out.
//!
//! Keys are the tenant id and the address in lower case: local parts are case-sensitive in
//! RFC 5321, but no server we deliver to treats `Bob@` and `bob@` as two people, and one entry
//! for both keeps a sender's capitalisation from costing a probe.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How long answers are believed (from `[engine.verify]`).
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    /// A known recipient is believed this long (also while its server is down).
    pub positive: Duration,
    /// After this long a known recipient is asked again (the answer stands until then).
    pub refresh: Duration,
    /// An unknown recipient is believed this long.
    pub negative: Duration,
}

/// What the cache says about one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    /// Accepted less than `refresh` ago: take it.
    Known,
    /// Accepted more than `refresh` but less than `positive` ago: ask again, and take it if the
    /// server does not answer.
    KnownStale,
    /// Refused less than `negative` ago.
    Unknown,
    /// Nothing, or only an answer past its lifetime.
    Nothing,
}

/// One set of answers: when each was given, least recently used evicted first.
#[derive(Debug)]
struct Lru {
    cap: usize,
    /// Key -> (when answered, last use).
    map: HashMap<String, (Instant, u64)>,
    /// Last use -> key: the oldest first.
    order: BTreeMap<u64, String>,
    tick: u64,
}

impl Lru {
    fn new(cap: usize) -> Lru {
        Lru {
            cap: cap.max(1),
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
        }
    }

    /// When `key` was answered; counts as a use.
    fn get(&mut self, key: &str) -> Option<Instant> {
        self.tick += 1;
        let tick = self.tick;
        let (at, used) = self.map.get_mut(key)?;
        let old = std::mem::replace(used, tick);
        let at = *at;
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(tick, k);
        }
        Some(at)
    }

    /// Remembers `key` answered at `at`; returns how many entries were evicted for it.
    fn insert(&mut self, key: String, at: Instant) -> usize {
        self.tick += 1;
        if let Some((old_at, used)) = self.map.get_mut(&key) {
            *old_at = at;
            let old = std::mem::replace(used, self.tick);
            self.order.remove(&old);
            self.order.insert(self.tick, key);
            return 0;
        }
        let mut evicted = 0;
        while self.map.len() >= self.cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&oldest);
            evicted += 1;
        }
        self.map.insert(key.clone(), (at, self.tick));
        self.order.insert(self.tick, key);
        evicted
    }

    /// A new bound; the least recently used go first. Returns how many went.
    fn resize(&mut self, cap: usize) -> usize {
        self.cap = cap.max(1);
        let mut evicted = 0;
        while self.map.len() > self.cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&oldest);
            evicted += 1;
        }
        evicted
    }

    fn remove(&mut self, key: &str) {
        if let Some((_, used)) = self.map.remove(key) {
            self.order.remove(&used);
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Known and unknown recipients of every tenant, each set at most `cap` entries.
#[derive(Debug)]
pub struct Cache {
    known: Lru,
    unknown: Lru,
}

fn key(tenant: &str, address: &str) -> String {
    let mut k = String::with_capacity(tenant.len() + 1 + address.len());
    k.push_str(tenant);
    k.push('\n');
    k.extend(address.chars().map(|c| c.to_ascii_lowercase()));
    k
}

impl Cache {
    pub fn new(cap: usize) -> Cache {
        Cache {
            known: Lru::new(cap),
            unknown: Lru::new(cap),
        }
    }

    /// What is known about `address` of `tenant` at `now`. Answers past their lifetime are
    /// dropped on the way.
    pub fn lookup(&mut self, tenant: &str, address: &str, now: Instant, ttl: &Ttls) -> Cached {
        let k = key(tenant, address);
        if let Some(at) = self.known.get(&k) {
            let age = now.saturating_duration_since(at);
            if age < ttl.refresh {
                return Cached::Known;
            }
            if age < ttl.positive {
                return Cached::KnownStale;
            }
            self.known.remove(&k);
        }
        if let Some(at) = self.unknown.get(&k) {
            if now.saturating_duration_since(at) < ttl.negative {
                return Cached::Unknown;
            }
            self.unknown.remove(&k);
        }
        Cached::Nothing
    }

    /// Records the server's answer at `now` (replacing any other); returns how many entries
    /// were evicted to make room.
    pub fn record(&mut self, tenant: &str, address: &str, known: bool, now: Instant) -> usize {
        let k = key(tenant, address);
        if known {
            self.unknown.remove(&k);
            self.known.insert(k, now)
        } else {
            self.known.remove(&k);
            self.unknown.insert(k, now)
        }
    }

    /// A new bound for each set (`engine.verify.cache_size` changed by a reload); returns how
    /// many entries were evicted.
    pub fn resize(&mut self, cap: usize) -> usize {
        if cap.max(1) == self.known.cap {
            return 0;
        }
        self.known.resize(cap) + self.unknown.resize(cap)
    }

    /// Entries held: (known, unknown).
    pub fn len(&self) -> (usize, usize) {
        (self.known.len(), self.unknown.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Ttls = Ttls {
        positive: Duration::from_secs(31 * 86_400),
        refresh: Duration::from_secs(7 * 86_400),
        negative: Duration::from_secs(3 * 3600),
    };
    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn answers_live_as_long_as_their_lifetimes() {
        let t0 = Instant::now();
        let mut c = Cache::new(10);
        c.record("acme", "Bob@Acme.Example", true, t0);
        c.record("acme", "nobody@acme.example", false, t0);
        assert_eq!(
            c.lookup("acme", "bob@acme.example", t0, &TTL),
            Cached::Known
        );
        assert_eq!(
            c.lookup("globex", "bob@acme.example", t0, &TTL),
            Cached::Nothing
        );
        assert_eq!(
            c.lookup("acme", "bob@acme.example", t0 + 6 * DAY, &TTL),
            Cached::Known
        );
        assert_eq!(
            c.lookup("acme", "bob@acme.example", t0 + 8 * DAY, &TTL),
            Cached::KnownStale,
            "asked again after the refresh time, kept until the ttl"
        );
        assert_eq!(
            c.lookup("acme", "bob@acme.example", t0 + 32 * DAY, &TTL),
            Cached::Nothing
        );
        assert_eq!(c.len().0, 0, "an expired answer is dropped");
        let two_hours = Duration::from_secs(7200);
        assert_eq!(
            c.lookup("acme", "nobody@acme.example", t0 + two_hours, &TTL),
            Cached::Unknown
        );
        assert_eq!(
            c.lookup("acme", "nobody@acme.example", t0 + 2 * two_hours, &TTL),
            Cached::Nothing
        );
    }

    #[test]
    fn a_new_answer_replaces_the_other_kind() {
        let t0 = Instant::now();
        let mut c = Cache::new(10);
        c.record("acme", "x@acme.example", false, t0);
        c.record("acme", "x@acme.example", true, t0);
        assert_eq!(c.lookup("acme", "x@acme.example", t0, &TTL), Cached::Known);
        c.record("acme", "x@acme.example", false, t0);
        assert_eq!(
            c.lookup("acme", "x@acme.example", t0, &TTL),
            Cached::Unknown
        );
        assert_eq!(c.len(), (0, 1));
    }

    #[test]
    fn each_set_keeps_its_bound_and_evicts_the_least_recently_used() {
        let t0 = Instant::now();
        let mut c = Cache::new(3);
        for a in ["a", "b", "c"] {
            assert_eq!(c.record("acme", a, true, t0), 0);
        }
        // `a` used again: `b` is now the least recently used.
        assert_eq!(c.lookup("acme", "a", t0, &TTL), Cached::Known);
        assert_eq!(c.record("acme", "d", true, t0), 1);
        assert_eq!(c.lookup("acme", "b", t0, &TTL), Cached::Nothing);
        for a in ["a", "c", "d"] {
            assert_eq!(c.lookup("acme", a, t0, &TTL), Cached::Known, "{a}");
        }
        // A flood of unknown addresses stays in its own set.
        let mut evicted = 0;
        for i in 0..1000 {
            evicted += c.record("acme", &format!("spam{i}"), false, t0);
        }
        assert_eq!(evicted, 997);
        assert_eq!(c.len(), (3, 3));
        for a in ["a", "c", "d"] {
            assert_eq!(c.lookup("acme", a, t0, &TTL), Cached::Known, "{a}");
        }
    }
}
