//! Fleet-wide sender rates for the edges: connections and messages per client network per
//! minute, summed over every edge of every silo.
//!
//! No connection waits for the store. Each edge counts locally what it admits; once per
//! `shared.sync_interval` it adds its counts to the network's counter of the current minute in
//! the store (`INCRBY`, which answers the fleet's total) and reads the previous minute's, so
//! it knows every network's fleet rate as of the last sync (as Momentum buffers replicated
//! counts). Admission compares the sliding-minute estimate (previous minute weighted by what
//! is left of it, plus the current one, plus what this edge admitted since the sync) with the
//! limit.
//!
//! How far over a limit a sender can get: what the other edges admit between two syncs is
//! unknown to each edge, so with E edges receiving from one network at once the fleet admits
//! at most the limit plus (E − 1) × what one edge admits from it in one `sync_interval` — and
//! each edge's local per-prefix rate (`edge.connect_rate_per_prefix`, 50/s by default) bounds
//! that. With the store down, each edge holds the network to the limit on its own counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use redis::Value;

use super::{Call, Fleet};
use crate::config::edge::FleetLimits;

/// Networks tracked per edge; idle ones beyond it are forgotten.
pub const MAX_NETWORKS: usize = 100_000;
/// A network's minute counters live this long in the store.
const COUNTER_TTL_MS: u64 = 120_000;

/// The client's network as text: its /24 (v4) or /64 (v6).
pub fn network(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum What {
    Connection,
    Message,
}

impl What {
    fn letter(self) -> char {
        match self {
            What::Connection => 'c',
            What::Message => 'm',
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counter {
    /// The minute the counts below are of.
    minute: u64,
    /// The fleet's count of `minute` as of the last sync, and of the minute before.
    fleet_now: u64,
    fleet_prev: u64,
    /// Admitted here and not yet added to the store.
    pending: u64,
    /// Admitted here in `minute` and in the minute before (the store-down fallback).
    own_now: u64,
    own_prev: u64,
}

impl Counter {
    fn roll(&mut self, minute: u64) {
        if minute == self.minute {
            return;
        }
        let next = minute == self.minute + 1;
        self.fleet_prev = if next { self.fleet_now } else { 0 };
        self.own_prev = if next { self.own_now } else { 0 };
        self.fleet_now = 0;
        self.own_now = 0;
        // Counts of a minute gone are not added to the new one (an undercount of at most
        // one sync interval, after an outage).
        self.pending = 0;
        self.minute = minute;
    }

    /// The sliding-minute estimate at `frac` of the current minute.
    fn estimate(&self, frac: f64) -> f64 {
        let fleet = self.fleet_prev as f64 * (1.0 - frac) + (self.fleet_now + self.pending) as f64;
        let own = self.own_prev as f64 * (1.0 - frac) + self.own_now as f64;
        fleet.max(own)
    }
}

/// This edge's counters, per (network, what).
#[derive(Debug, Default)]
pub struct Rates {
    map: Mutex<HashMap<(String, What), Counter>>,
}

impl Rates {
    /// Whether one more connection or message from `ip` stays within `limit` per minute (0:
    /// no limit); counts it when it does.
    pub fn admit(&self, ip: IpAddr, what: What, limit: u32, now_ms: u64) -> bool {
        if limit == 0 {
            return true;
        }
        let minute = now_ms / 60_000;
        let frac = (now_ms % 60_000) as f64 / 60_000.0;
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_NETWORKS {
            m.retain(|_, c| c.minute + 1 >= minute && (c.own_now > 0 || c.pending > 0));
        }
        let c = m.entry((network(ip), what)).or_default();
        c.roll(minute);
        if c.estimate(frac) + 1.0 > f64::from(limit) {
            return false;
        }
        c.pending += 1;
        c.own_now += 1;
        true
    }
}

/// Adds every network's pending counts to the store and learns the fleet's totals: one
/// pipeline per sync, two commands per active network.
pub async fn sync(fleet: &Fleet, limits: &FleetLimits) {
    if limits.connections_per_minute == 0 && limits.messages_per_minute == 0 {
        return;
    }
    let now = super::now_ms();
    let minute = now / 60_000;
    let work: Vec<((String, What), u64)> = {
        let mut m = fleet.rates.map.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, c| c.minute + 1 >= minute);
        m.iter_mut()
            .map(|(k, c)| {
                c.roll(minute);
                let p = std::mem::take(&mut c.pending);
                (k.clone(), p)
            })
            .collect()
    };
    if work.is_empty() {
        return;
    }
    let mut calls = Vec::with_capacity(work.len() * 3);
    for ((net, what), pending) in &work {
        let id = crate::hash::fnv1a(net.as_bytes());
        let (tag, now_key) = fleet.keys.rate(id, what.letter(), minute);
        let (_, prev_key) = fleet.keys.rate(id, what.letter(), minute - 1);
        let mut incr = redis::cmd("INCRBY");
        incr.arg(&now_key).arg(*pending);
        let mut exp = redis::cmd("PEXPIRE");
        exp.arg(&now_key).arg(COUNTER_TTL_MS);
        let mut prev = redis::cmd("GET");
        prev.arg(&prev_key);
        for cmd in [incr, exp, prev] {
            calls.push(Call {
                tag: tag.clone(),
                cmd,
            });
        }
    }
    let answers = match fleet.command(&calls).await {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, "fleet rates not synced");
            // Give the counts back: they are added with the next sync.
            let mut m = fleet.rates.map.lock().unwrap_or_else(|e| e.into_inner());
            for (k, p) in work {
                if let Some(c) = m.get_mut(&k) {
                    c.pending += p;
                }
            }
            return;
        }
    };
    let int = |v: &Value| -> u64 {
        match v {
            Value::Int(n) => u64::try_from(*n).unwrap_or(0),
            Value::BulkString(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            _ => 0,
        }
    };
    let mut m = fleet.rates.map.lock().unwrap_or_else(|e| e.into_inner());
    for ((k, _), a) in work.into_iter().zip(answers.chunks(3)) {
        if let Some(c) = m.get_mut(&k)
            && c.minute == minute
        {
            // The store's total already holds this edge's synced counts; `pending` holds
            // only what came since.
            c.fleet_now = int(&a[0]);
            c.fleet_prev = int(&a[2]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_counts_hold_the_line_without_the_store() {
        let r = Rates::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.99".parse().unwrap();
        let t0 = 60_000 * 1000;
        for i in 0..5 {
            assert!(r.admit(ip, What::Connection, 5, t0 + i), "{i}");
        }
        assert!(!r.admit(other, What::Connection, 5, t0 + 10), "same /24");
        assert!(
            r.admit(ip, What::Message, 5, t0 + 10),
            "messages count apart"
        );
        assert!(r.admit(ip, What::Connection, 0, t0), "0 = no limit");
        // Half a minute into the next one, half of the previous minute still counts.
        assert!(r.admit(ip, What::Connection, 5, t0 + 90_000));
        assert!(r.admit(ip, What::Connection, 5, t0 + 90_000));
        assert!(
            !r.admit(ip, What::Connection, 5, t0 + 90_000),
            "2.5 + 2 + 1 > 5"
        );
    }

    #[test]
    fn the_fleets_count_is_what_limits() {
        let r = Rates::default();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let t0 = 60_000 * 1000;
        assert!(r.admit(ip, What::Message, 10, t0));
        {
            let mut m = r.map.lock().unwrap();
            let c = m.get_mut(&(network(ip), What::Message)).unwrap();
            c.pending = 0;
            c.fleet_now = 10; // the other edges sent 9 more this minute
        }
        assert!(!r.admit(ip, What::Message, 10, t0 + 1));
        assert_eq!(network(ip), "2001:db8:0:0::/64");
    }
}
