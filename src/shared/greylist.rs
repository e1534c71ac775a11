//! Greylisting triplets: (client network /24 or /64, sender, recipient), hashed. The store
//! holds `f:MS` (first attempt at MS) for `retry_window`, then `p:MS` (passed at MS) for
//! `allow_for`; every node of every silo reads the same key, so a retry that lands at another
//! silo passes. This node also remembers what it saw itself ([`LOCAL_MAX`] triplets): while
//! the store is down it decides with that, and a triplet it never saw passes (fail open,
//! counted `unavailable`): an outage must not turn into a delay for every new sender.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use redis::Value;

use super::{Call, Fleet, Then, Write};
use crate::config::outbreak::GreylistConfig;

/// Triplets this node remembers on its own; beyond it the oldest are forgotten.
pub const LOCAL_MAX: usize = 100_000;

/// What greylisting says about one RCPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Never seen (or its retry window passed): `451 4.7.1`.
    First,
    /// A retry sooner than `delay`: `451 4.7.1` again.
    Early,
    /// A retry after `delay`: passes, and the triplet is allowed from now on.
    Passed,
    /// Passed before, within `allow_for`: passes.
    Allowed,
    /// Unknown here and the store did not answer: passes (fail open).
    Unavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::First => "first",
            Outcome::Early => "early",
            Outcome::Passed => "passed",
            Outcome::Allowed => "allowed",
            Outcome::Unavailable => "unavailable",
        }
    }

    /// The RCPT may go on.
    pub fn passes(self) -> bool {
        !matches!(self, Outcome::First | Outcome::Early)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    First(u64),
    Passed(u64),
}

fn parse(v: &str) -> Option<Seen> {
    let (k, ms) = v.split_once(':')?;
    let ms = ms.parse().ok()?;
    match k {
        "f" => Some(Seen::First(ms)),
        "p" => Some(Seen::Passed(ms)),
        _ => None,
    }
}

/// The digest of a triplet (the network is the client's /24 or /64).
pub fn triplet(client: IpAddr, sender: &str, rcpt: &str) -> u64 {
    let mut text = format!("{}|", super::limits::network(client));
    text.push_str(&sender.to_ascii_lowercase());
    text.push('|');
    text.push_str(&rcpt.to_ascii_lowercase());
    crate::hash::fnv1a(text.as_bytes())
}

/// The decision, pure: what was seen (if anything) and now.
fn decide(seen: Option<Seen>, now: u64, cfg: &GreylistConfig) -> Outcome {
    let ms = |d: crate::config::Dur| d.get().as_millis() as u64;
    match seen {
        None => Outcome::First,
        Some(Seen::Passed(t)) if now.saturating_sub(t) <= ms(cfg.allow_for) => Outcome::Allowed,
        Some(Seen::Passed(_)) => Outcome::First,
        Some(Seen::First(t)) if now.saturating_sub(t) > ms(cfg.retry_window) => Outcome::First,
        Some(Seen::First(t)) if now.saturating_sub(t) < ms(cfg.delay) => Outcome::Early,
        Some(Seen::First(_)) => Outcome::Passed,
    }
}

/// Triplets this node saw itself.
#[derive(Debug, Default)]
pub struct Local {
    map: Mutex<HashMap<u64, Seen>>,
}

impl Local {
    fn get(&self, t: u64) -> Option<Seen> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&t)
            .copied()
    }

    fn set(&self, t: u64, s: Seen) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= LOCAL_MAX && !m.contains_key(&t) {
            // The oldest eighth goes (by the time in the entry).
            let mut times: Vec<u64> = m
                .values()
                .map(|s| match s {
                    Seen::First(t) | Seen::Passed(t) => *t,
                })
                .collect();
            let n = LOCAL_MAX / 8;
            times.select_nth_unstable(n);
            let cut = times[n];
            m.retain(|_, s| matches!(s, Seen::First(t) | Seen::Passed(t) if *t > cut));
        }
        m.insert(t, s);
    }
}

impl Fleet {
    /// Greylists one RCPT: reads the triplet from the near store (within `shared.timeout`),
    /// decides, and records the outcome here and — in the next batch — in the store.
    pub async fn greylist(
        &self,
        cfg: &GreylistConfig,
        client: IpAddr,
        sender: &str,
        rcpt: &str,
        now_ms: u64,
    ) -> Outcome {
        let t = triplet(client, sender, rcpt);
        let (tag, key) = self.keys.greylist(t);
        let local = self.greylist.get(t);
        let fleet = if self.enabled() {
            let mut cmd = redis::cmd("GET");
            cmd.arg(&key);
            self.read(&[Call {
                tag: tag.clone(),
                cmd,
            }])
            .await
            .map(|v| match v.first() {
                Some(Value::BulkString(b)) => std::str::from_utf8(b).ok().and_then(parse),
                _ => None,
            })
        } else {
            Some(local)
        };
        let outcome = match fleet {
            // The store knows it, or this node does (its write may still be in flight).
            Some(seen) => decide(seen.or(local), now_ms, cfg),
            None if local.is_some() => decide(local, now_ms, cfg),
            None => Outcome::Unavailable,
        };
        let ms = |d: crate::config::Dur| d.get().as_millis() as u64;
        let record = match outcome {
            Outcome::First => Some((Seen::First(now_ms), ms(cfg.retry_window))),
            Outcome::Passed | Outcome::Allowed => Some((Seen::Passed(now_ms), ms(cfg.allow_for))),
            Outcome::Early | Outcome::Unavailable => None,
        };
        if let Some((seen, ttl)) = record {
            self.greylist.set(t, seen);
            if self.enabled() {
                let value = match seen {
                    Seen::First(ms) => format!("f:{ms}"),
                    Seen::Passed(ms) => format!("p:{ms}"),
                };
                let mut cmd = redis::cmd("SET");
                cmd.arg(&key).arg(value).arg("PX").arg(ttl);
                self.write(Write {
                    call: Call { tag, cmd },
                    script: None,
                    then: Then::Nothing,
                });
            }
        }
        self.metrics
            .greylist
            .with_label_values(&[outcome.as_str()])
            .inc();
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_triplet_life() {
        let cfg: GreylistConfig =
            toml::from_str("delay = \"5m\"\nretry_window = \"2d\"\nallow_for = \"36d\"").unwrap();
        let m = 60_000;
        assert_eq!(decide(None, 0, &cfg), Outcome::First);
        assert_eq!(decide(Some(Seen::First(0)), 4 * m, &cfg), Outcome::Early);
        assert_eq!(decide(Some(Seen::First(0)), 6 * m, &cfg), Outcome::Passed);
        assert_eq!(
            decide(Some(Seen::First(0)), 3 * 1440 * m, &cfg),
            Outcome::First
        );
        assert_eq!(
            decide(Some(Seen::Passed(0)), 30 * 1440 * m, &cfg),
            Outcome::Allowed
        );
        assert_eq!(
            decide(Some(Seen::Passed(0)), 37 * 1440 * m, &cfg),
            Outcome::First
        );
        let short: GreylistConfig = toml::from_str("delay = \"1s\"").unwrap();
        assert_eq!(
            decide(Some(Seen::First(0)), 2000, &short),
            Outcome::Passed,
            "delay is read"
        );
    }

    #[test]
    fn networks_not_addresses() {
        let a = triplet("192.0.2.1".parse().unwrap(), "A@x.example", "b@y.example");
        let b = triplet("192.0.2.200".parse().unwrap(), "a@x.example", "B@y.example");
        let c = triplet("192.0.3.1".parse().unwrap(), "a@x.example", "b@y.example");
        assert_eq!(a, b, "same /24, case folded");
        assert_ne!(a, c);
    }
}
