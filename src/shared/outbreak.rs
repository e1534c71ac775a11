//! Sightings of fingerprints: who received a fingerprint, at which tenants, from which
//! networks, within a sliding window — counted by the fleet (the store) and by this node alone
//! (its own sightings, what it decides with while the store is away).
//!
//! In the store, one fingerprint is one sorted set: who saw it (hashed recipients, tenants
//! and networks, each member typed by its first letter; score = when last seen, ms) and its
//! counts, kept in the same set as members `#r`, `#t`, `#n` (the three counts), `#f` (the
//! first sighting) and `#x` (when the set expires) with *negative* scores, so the window's trim (scores from 0 to a window
//! ago) never touches them. A message's sightings are one script call for all its
//! fingerprints (written in a batch, never on the message path; one call per fingerprint on a
//! Cluster, where a script's keys must share a slot): per fingerprint one `ZMSCORE` (the
//! counts, and which of the message's members are new), one `ZADD` (new and refreshed members
//! and the new counts: at most [`MEMBERS_CAP`] per kind — past a threshold nobody needs the
//! exact count), a `PEXPIRE` when less than a window is left, and the trim only once the fingerprint is older than the
//! window; it answers the counts, which is how this node learns them (`spread.rs`): the
//! message path never reads the store.

use std::collections::HashMap;
use std::sync::Mutex;

use redis::Value;

use super::keys::{Fingerprint, SightingKeys};
use super::{Call, Fleet, Then, Write};

/// Members kept per set in the store: thresholds are at most this (checked in config).
pub const MEMBERS_CAP: u32 = 200;
/// How long the first node to find an outbreak marks it for everyone (a delayed message is
/// looked at again against the marker; verdicts within this time cite it).
pub const MARKER_TTL_MS: u64 = 86_400_000;
/// Members kept per set in this node's own window (local knowledge saturates here).
pub const LOCAL_CAP: usize = 32;
/// Fingerprints this node remembers on its own; the least recently seen go first.
pub const LOCAL_MAX: usize = 20_000;

/// KEYS: one sorted set per fingerprint. ARGV: now (ms), window (ms), cap, then the members:
/// `t` and the tenant, `n` and the network, `r` and each recipient (hex). Answers, per
/// fingerprint, its counts after this sighting: recipients, tenants, networks, first and last
/// sighting (ms).
///
/// The counts are kept as members come and go (a member `ZMSCORE` does not know is new; a
/// member that slid out of the window is read before it is removed), so a sighting costs the
/// same whether a fingerprint was seen once or by thousands: three commands, and the trim
/// once the fingerprint is older than the window. The expiry is set with the first sighting
/// (the window) and then renewed only when less than a window is left, to 1.5 windows (kept
/// as member `#x`, the time the set expires): a fingerprint seen again and again costs two
/// commands a sighting, not three, and outlives its last sighting by 1 to 1.5 windows. A kind at the cap only refreshes the
/// members it has. A set without its counts (written by an older version) counts again from
/// this sighting: members it held before are not counted, and are dropped as they slide out.
pub const SIGHTING: &str = r"
local now, window, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local kinds = {r = 1, t = 2, n = 3}
local members, seen = {}, {}
for i = 4, #ARGV do
  if not seen[ARGV[i]] then
    seen[ARGV[i]] = true
    table.insert(members, ARGV[i])
  end
end
local out = {}
for _, z in ipairs(KEYS) do
  local got = redis.call('ZMSCORE', z, '#r', '#t', '#n', '#f', '#x', unpack(members))
  local first, expires = tonumber(got[4]), tonumber(got[5])
  local c = {0, 0, 0}
  if not first then
    first = now
    for j = 1, #members do got[5 + j] = false end
  else
    first = -first
    for i = 1, 3 do c[i] = -(tonumber(got[i]) or 0) end
    if first < now - window then
      local gone = redis.call('ZRANGEBYSCORE', z, 0, now - window)
      if #gone > 0 then
        for _, m in ipairs(gone) do
          local i = kinds[string.sub(m, 1, 1)]
          if i then c[i] = math.max(c[i] - 1, 0) end
        end
        redis.call('ZREMRANGEBYSCORE', z, 0, now - window)
      end
    end
  end
  local add = {}
  for j, m in ipairs(members) do
    local i = kinds[string.sub(m, 1, 1)]
    local known = got[5 + j] and tonumber(got[5 + j]) >= now - window
    if i and (known or c[i] < cap) then
      if not known then c[i] = c[i] + 1 end
      table.insert(add, now)
      table.insert(add, m)
    end
  end
  local meta = {-c[1], '#r', -c[2], '#t', -c[3], '#n', -first, '#f'}
  local ttl = 0
  if not expires then
    ttl = window
  elseif -expires < now + window then
    ttl = window + math.floor(window / 2)
  end
  if ttl > 0 then
    table.insert(meta, -(now + ttl))
    table.insert(meta, '#x')
  end
  for _, x in ipairs(add) do table.insert(meta, x) end
  redis.call('ZADD', z, unpack(meta))
  if ttl > 0 then redis.call('PEXPIRE', z, ttl) end
  for _, x in ipairs({c[1], c[2], c[3], first, now}) do table.insert(out, x) end
end
return out
";

fn sighting_sha() -> &'static str {
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHA.get_or_init(|| redis::Script::new(SIGHTING).get_hash().to_owned())
}

/// An `EVALSHA` call made an `EVAL` of `script` (after the server answered `NOSCRIPT`).
pub(crate) fn as_eval(call: &Call, script: &str) -> Call {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script);
    for a in call.cmd.args_iter().skip(2) {
        if let redis::Arg::Simple(b) = a {
            cmd.arg(b);
        }
    }
    Call {
        tag: call.tag.clone(),
        cmd,
    }
}

/// How far a fingerprint has spread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub recipients: u32,
    pub tenants: u32,
    pub networks: u32,
    /// First sighting anywhere (ms since the epoch), when known.
    pub first_ms: Option<u64>,
}

impl Counts {
    /// The larger of each count (the fleet's and this node's own), the earlier first sighting.
    pub fn max(self, o: Counts) -> Counts {
        Counts {
            recipients: self.recipients.max(o.recipients),
            tenants: self.tenants.max(o.tenants),
            networks: self.networks.max(o.networks),
            first_ms: match (self.first_ms, o.first_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// One sighting: a fingerprint received by these (hashed) recipients of a tenant from a
/// network, at `now_ms`, counted over `window_ms`.
#[derive(Debug, Clone)]
pub struct Sighting<'a> {
    pub tenant: u64,
    pub network: u64,
    pub recipients: &'a [u64],
    pub now_ms: u64,
    pub window_ms: u64,
}

#[derive(Debug, Default)]
struct Entry {
    recipients: Vec<(u64, u64)>,
    tenants: Vec<(u64, u64)>,
    networks: Vec<(u64, u64)>,
    first: u64,
    last: u64,
}

fn add(set: &mut Vec<(u64, u64)>, member: u64, now: u64, from: u64) {
    set.retain(|(_, t)| *t >= from);
    if let Some(e) = set.iter_mut().find(|(m, _)| *m == member) {
        e.1 = now;
    } else if set.len() < LOCAL_CAP {
        set.push((member, now));
    }
}

fn live(set: &[(u64, u64)], from: u64) -> u32 {
    set.iter().filter(|(_, t)| *t >= from).count() as u32
}

/// This node's own sightings (bounded: [`LOCAL_MAX`] fingerprints, [`LOCAL_CAP`] members).
#[derive(Debug, Default)]
pub struct Local {
    map: Mutex<HashMap<Fingerprint, Entry>>,
    /// Fingerprints this node found over a policy's thresholds (bounded like the map).
    marked: Mutex<std::collections::HashSet<Fingerprint>>,
}

impl Local {
    /// Whether this node found `fp` an outbreak (what it knows without the store's marker).
    pub fn is_marked(&self, fp: &Fingerprint) -> bool {
        self.marked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(fp)
    }

    fn mark(&self, fp: &Fingerprint) {
        let mut m = self.marked.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= LOCAL_MAX {
            m.clear();
        }
        m.insert(*fp);
    }

    /// Records one message's sighting of each of `fps` (one lock for them all).
    pub fn record(&self, fps: &[Fingerprint], s: &Sighting<'_>) {
        let from = s.now_ms.saturating_sub(s.window_ms);
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for fp in fps {
            if m.len() >= LOCAL_MAX && !m.contains_key(fp) {
                evict(&mut m, from);
            }
            let e = m.entry(*fp).or_insert_with(|| Entry {
                first: s.now_ms,
                ..Entry::default()
            });
            if e.last < from {
                *e = Entry {
                    first: s.now_ms,
                    ..Entry::default()
                };
            }
            e.last = s.now_ms;
            add(&mut e.tenants, s.tenant, s.now_ms, from);
            add(&mut e.networks, s.network, s.now_ms, from);
            for r in s.recipients {
                add(&mut e.recipients, *r, s.now_ms, from);
            }
        }
    }

    /// This node's own counts of each of `fps` within the window (one lock for them all).
    pub fn counts(&self, fps: &[Fingerprint], now_ms: u64, window_ms: u64) -> Vec<Counts> {
        let from = now_ms.saturating_sub(window_ms);
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        fps.iter()
            .map(|fp| match m.get(fp) {
                Some(e) if e.last >= from => Counts {
                    recipients: live(&e.recipients, from),
                    tenants: live(&e.tenants, from),
                    networks: live(&e.networks, from),
                    first_ms: Some(e.first),
                },
                _ => Counts::default(),
            })
            .collect()
    }
}

/// Forgets fingerprints not seen in the window, else the least recently seen eighth.
fn evict(m: &mut HashMap<Fingerprint, Entry>, from: u64) {
    m.retain(|_, e| e.last >= from);
    if m.len() < LOCAL_MAX {
        return;
    }
    let mut lasts: Vec<u64> = m.values().map(|e| e.last).collect();
    let n = LOCAL_MAX / 8;
    lasts.select_nth_unstable(n);
    let cut = lasts[n];
    m.retain(|_, e| e.last > cut);
}

impl Fleet {
    /// How far each of `fps` has spread within `window_ms`: the larger of each count the fleet
    /// answered or told this node (`spread.rs`) and this node's own sightings. Never waits.
    pub fn counts(&self, fps: &[Fingerprint], now_ms: u64, window_ms: u64) -> Vec<Counts> {
        let fleet = self.spread.counts(fps, now_ms, window_ms);
        self.outbreaks
            .counts(fps, now_ms, window_ms)
            .into_iter()
            .zip(fleet)
            .map(|(local, fleet)| fleet.map_or(local, |f| f.max(local)))
            .collect()
    }

    /// Which of `fps` the fleet marked as outbreaks (a delayed message's second look).
    pub async fn marked(&self, fps: &[Fingerprint]) -> Option<Vec<bool>> {
        if !self.enabled() || fps.is_empty() {
            return None;
        }
        let answers = self
            .read_each(fps, |k| {
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(&k.marker);
                cmd
            })
            .await?;
        Some(answers.iter().map(|v| matches!(v, Value::Int(1))).collect())
    }

    /// One command per fingerprint (made from its keys), one pipeline to the near store.
    async fn read_each(
        &self,
        fps: &[Fingerprint],
        cmd: impl Fn(&SightingKeys) -> redis::Cmd,
    ) -> Option<Vec<Value>> {
        let calls: Vec<Call> = fps
            .iter()
            .map(|fp| {
                let k = self.keys.sightings(fp);
                Call {
                    cmd: cmd(&k),
                    tag: k.tag,
                }
            })
            .collect();
        self.read(&calls).await
    }

    /// Records a message's sightings of `fps` here at once, and in the store with the next
    /// batch: one script call for them all (one per fingerprint on a Cluster).
    pub fn sighted(&self, fps: &[Fingerprint], s: &Sighting<'_>) {
        self.outbreaks.record(fps, s);
        if !self.enabled() || fps.is_empty() {
            return;
        }
        let groups: Vec<&[Fingerprint]> = if self.cfg.cluster {
            fps.chunks(1).collect()
        } else {
            vec![fps]
        };
        for group in groups {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sighting_sha()).arg(group.len());
            let mut tag = String::new();
            for fp in group {
                let k = self.keys.sightings(fp);
                cmd.arg(&k.members);
                tag = k.tag;
            }
            cmd.arg(s.now_ms)
                .arg(s.window_ms)
                .arg(MEMBERS_CAP)
                .arg(format!("t{:x}", s.tenant))
                .arg(format!("n{:x}", s.network));
            for r in s.recipients.iter().take(MEMBERS_CAP as usize) {
                cmd.arg(format!("r{r:x}"));
            }
            self.write(Write {
                call: Call { tag, cmd },
                script: Some(SIGHTING),
                then: Then::Counted(group.to_vec()),
            });
        }
    }

    /// Marks `fp` an outbreak for the whole fleet (the first node to do so counts it).
    pub fn mark(&self, fp: &Fingerprint, now_ms: u64) {
        self.outbreaks.mark(fp);
        if !self.enabled() {
            return;
        }
        let k = self.keys.sightings(fp);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&k.marker)
            .arg(now_ms)
            .arg("NX")
            .arg("PX")
            .arg(MARKER_TTL_MS);
        self.write(Write {
            call: Call { tag: k.tag, cmd },
            script: None,
            then: Then::Marker,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::outbreak::FingerprintKind;

    #[test]
    fn local_counts_slide_and_saturate() {
        let l = Local::default();
        let fp = Fingerprint {
            kind: FingerprintKind::Text,
            digest: 1,
        };
        let s = |tenant, network, rcpts: &'static [u64], now_ms| Sighting {
            tenant,
            network,
            recipients: rcpts,
            now_ms,
            window_ms: 1000,
        };
        l.record(&[fp], &s(1, 10, &[100, 101], 0));
        l.record(&[fp], &s(2, 11, &[102], 500));
        l.record(&[fp], &s(2, 11, &[102], 600));
        let c = l.counts(&[fp], 700, 1000)[0];
        assert_eq!((c.recipients, c.tenants, c.networks), (3, 2, 2));
        assert_eq!(c.first_ms, Some(0));
        let c = l.counts(&[fp], 1550, 1000)[0];
        assert_eq!(
            (c.recipients, c.tenants, c.networks),
            (1, 1, 1),
            "the first slid out"
        );
        let many: Vec<u64> = (0..100).collect();
        l.record(
            &[fp],
            &Sighting {
                recipients: &many,
                ..s(3, 12, &[], 1600)
            },
        );
        assert_eq!(
            l.counts(&[fp], 1600, 1000)[0].recipients as usize,
            LOCAL_CAP
        );
    }

    #[test]
    fn counts_merge_by_the_larger_and_the_earlier() {
        let c = Counts {
            recipients: 12,
            tenants: 3,
            networks: 2,
            first_ms: Some(1_700_000_000_000),
        };
        let local = Counts {
            recipients: 20,
            tenants: 1,
            networks: 1,
            first_ms: Some(1_600_000_000_000),
        };
        let m = c.max(local);
        assert_eq!(
            (m.recipients, m.tenants, m.first_ms),
            (20, 3, Some(1_600_000_000_000))
        );
    }
}
