//! Admission before the banner: deny/allow lists, the node's connection cap, per-address and
//! per-prefix (/24, /64) concurrency and connection rate (except for `edge.exempt` networks,
//! which only the lists and the node's cap apply to). Each refusal has a reason (a metric label
//! and a log field) and the reply the client gets.
//!
//! Engines that are busy (an engine answers a recipient `451 4.3.2` when as many messages wait
//! to be scanned as are being scanned: `src/engine/smtp/processing.rs`) make the edge refuse
//! the next [`REFUSALS_PER_BUSY`] new connections at once with `421 4.3.2`: the excess of an
//! overload is turned away at the cheapest moment (one write on a fresh socket), before it
//! costs a session on the edge and another on an engine. A recipient that finds every engine
//! of its route at its connection limit (the topology's `max_connections`: the edge itself is
//! then the bottleneck, `front.rs`) counts as a busy answer too. Each busy answer buys that
//! many refusals and nothing else does, so the edge sheds in proportion to what the engines
//! cannot take; refusals still owed [`BUSY_MEMORY`] after the last busy answer are forgotten,
//! so a quiet period after an overload admits everyone.
//!
//! Bounds: the tracking map holds at most `max_tracked_addresses` entries; when full, idle
//! entries (no live connection) are forgotten, least recently used first, so a flood from many
//! sources costs a fixed amount of memory. Entries with live connections are never evicted (their
//! number is bounded by `max_connections`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ratelimit::Ratelimiter;

/// New connections refused at once for each recipient an engine refused as busy. With twice
/// the load the engines can take, about one admitted transaction in ten still meets a busy
/// engine (at RCPT, before its body) and the other excess sessions are refused at connect.
pub const REFUSALS_PER_BUSY: u32 = 8;
/// At most this many refusals owed at once: a burst of busy answers turns away at most this
/// many senders before the edge looks again.
pub const MAX_BUSY_REFUSALS: u32 = 256;
/// Refusals still owed this long after the last busy answer are forgotten.
pub const BUSY_MEMORY: std::time::Duration = std::time::Duration::from_millis(500);

use crate::config::EdgeConfig;
use crate::smtp::{Reply, replies};

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Denied,
    NotAllowed,
    Overloaded,
    /// Engines answered recently that they are busy ([`REFUSALS_PER_BUSY`]).
    EnginesBusy,
    IpConcurrency,
    PrefixConcurrency,
    IpRate,
    PrefixRate,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Denied => "deny_list",
            Refusal::NotAllowed => "not_allowed",
            Refusal::Overloaded => "overloaded",
            Refusal::EnginesBusy => "engines_busy",
            Refusal::IpConcurrency => "ip_concurrency",
            Refusal::PrefixConcurrency => "prefix_concurrency",
            Refusal::IpRate => "ip_rate",
            Refusal::PrefixRate => "prefix_rate",
        }
    }

    pub fn reply(self) -> Reply {
        match self {
            Refusal::Denied | Refusal::NotAllowed => replies::ACCESS_DENIED,
            Refusal::Overloaded | Refusal::EnginesBusy => replies::SERVICE_BUSY,
            Refusal::IpConcurrency | Refusal::PrefixConcurrency => replies::NETWORK_CONCURRENCY,
            Refusal::IpRate | Refusal::PrefixRate => replies::CONNECTION_RATE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    /// /24 of a v4 address or /64 of a v6 address.
    Prefix(u128),
}

fn prefix_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4) & 0xFFFF_FF00),
        IpAddr::V6(v6) => (u128::from(v6) & !((1u128 << 64) - 1)) | 1, // |1: never equal to a v4 key
    }
}

struct Slot {
    conns: u32,
    bucket: Ratelimiter,
    last: Instant,
}

/// Limits in force (copied from the config snapshot when it changes).
#[derive(Debug, Clone, Copy)]
struct AdmissionLimits {
    global: u32,
    per_ip: u32,
    per_prefix: u32,
    rate_ip: u32,
    rate_prefix: u32,
    tracked: usize,
}

pub struct Admission {
    live: AtomicU32,
    map: Mutex<HashMap<Key, Slot>>,
    /// New connections still to refuse because engines said they were busy.
    busy_refusals: AtomicU32,
    /// When the last busy answer came, in ms since `epoch`.
    busy_at: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish()
    }
}

/// A live, admitted connection; dropping it releases its counts.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
    /// From an `edge.exempt` network: counted in the node's total only.
    exempt: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.live.fetch_sub(1, Ordering::AcqRel);
        if self.exempt {
            return;
        }
        let mut m = self.admission.map.lock().unwrap_or_else(|e| e.into_inner());
        for k in [Key::Ip(self.ip), Key::Prefix(prefix_of(self.ip))] {
            if let Some(s) = m.get_mut(&k) {
                s.conns = s.conns.saturating_sub(1);
            }
        }
    }
}

fn bucket(rate: u32) -> Ratelimiter {
    let r = u64::from(rate.max(1));
    Ratelimiter::builder(r)
        .max_tokens(r)
        .initial_available(r)
        .build()
        .unwrap_or_else(|_| Ratelimiter::new(r))
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            live: AtomicU32::new(0),
            map: Mutex::new(HashMap::new()),
            busy_refusals: AtomicU32::new(0),
            busy_at: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Admission {
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }

    pub fn tracked(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// An engine refused a recipient as busy: refuse the next [`REFUSALS_PER_BUSY`] new
    /// connections (up to [`MAX_BUSY_REFUSALS`] owed).
    pub fn engine_busy(&self) {
        self.engine_busy_at(self.now_ms());
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn engine_busy_at(&self, now_ms: u64) {
        self.busy_at.store(now_ms, Ordering::Release);
        let _ = self
            .busy_refusals
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(REFUSALS_PER_BUSY).min(MAX_BUSY_REFUSALS))
            });
    }

    /// Takes one owed busy refusal, unless none is owed or the last busy answer is older
    /// than [`BUSY_MEMORY`] (then the rest are forgotten).
    fn owes_busy_refusal(&self, now_ms: u64) -> bool {
        if self.busy_refusals.load(Ordering::Acquire) == 0 {
            return false;
        }
        let since = now_ms.saturating_sub(self.busy_at.load(Ordering::Acquire));
        if since > BUSY_MEMORY.as_millis() as u64 {
            self.busy_refusals.store(0, Ordering::Release);
            return false;
        }
        self.busy_refusals
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Decides for a new connection from `ip`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, cfg: &EdgeConfig) -> Result<Permit, Refusal> {
        let ip = ip.to_canonical();
        if cfg.deny.iter().any(|n| n.contains(ip)) {
            return Err(Refusal::Denied);
        }
        if !cfg.allow.is_empty() && !cfg.allow.iter().any(|n| n.contains(ip)) {
            return Err(Refusal::NotAllowed);
        }
        let l = AdmissionLimits {
            global: cfg.max_connections,
            per_ip: cfg.max_connections_per_ip,
            per_prefix: cfg.max_connections_per_prefix,
            rate_ip: cfg.connect_rate_per_ip,
            rate_prefix: cfg.connect_rate_per_prefix,
            tracked: cfg.max_tracked_addresses as usize,
        };
        if self.owes_busy_refusal(self.now_ms()) {
            return Err(Refusal::EnginesBusy);
        }
        if self.live.fetch_add(1, Ordering::AcqRel) >= l.global {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Overloaded);
        }
        if cfg.exempt.iter().any(|n| n.contains(ip)) {
            return Ok(Permit {
                admission: self.clone(),
                ip,
                exempt: true,
            });
        }
        let now = Instant::now();
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() + 2 > l.tracked {
            evict(&mut m, l.tracked);
        }
        let kp = Key::Prefix(prefix_of(ip));
        let ki = Key::Ip(ip);
        let check = |m: &mut HashMap<Key, Slot>,
                     k: Key,
                     max: u32,
                     rate: u32,
                     conc: Refusal,
                     rated: Refusal|
         -> Result<(), Refusal> {
            let s = m.entry(k).or_insert_with(|| Slot {
                conns: 0,
                bucket: bucket(rate),
                last: now,
            });
            s.last = now;
            if s.conns >= max {
                return Err(conc);
            }
            if s.bucket.try_wait().is_err() {
                return Err(rated);
            }
            Ok(())
        };
        let r = check(
            &mut m,
            kp,
            l.per_prefix,
            l.rate_prefix,
            Refusal::PrefixConcurrency,
            Refusal::PrefixRate,
        )
        .and_then(|_| {
            check(
                &mut m,
                ki,
                l.per_ip,
                l.rate_ip,
                Refusal::IpConcurrency,
                Refusal::IpRate,
            )
        });
        if let Err(e) = r {
            drop(m);
            self.live.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        for k in [ki, kp] {
            if let Some(s) = m.get_mut(&k) {
                s.conns += 1;
            }
        }
        Ok(Permit {
            admission: self.clone(),
            ip,
            exempt: false,
        })
    }
}

/// Forgets the least recently used idle entries until the map is at 7/8 of its bound.
fn evict(m: &mut HashMap<Key, Slot>, bound: usize) {
    let target = bound - bound / 8;
    let mut idle: Vec<(Instant, Key)> = m
        .iter()
        .filter(|(_, s)| s.conns == 0)
        .map(|(k, s)| (s.last, *k))
        .collect();
    if m.len() <= target || idle.is_empty() {
        return;
    }
    let n = (m.len() - target).min(idle.len());
    idle.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
    for (_, k) in idle.into_iter().take(n) {
        m.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EdgeConfig {
        EdgeConfig {
            max_connections: 5,
            max_connections_per_ip: 2,
            max_connections_per_prefix: 3,
            connect_rate_per_ip: 100,
            connect_rate_per_prefix: 100,
            max_tracked_addresses: 1000,
            ..EdgeConfig::default()
        }
    }

    #[test]
    fn concurrency_caps_per_ip_prefix_and_node() {
        let a = Arc::new(Admission::default());
        let c = cfg();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p1 = a.admit(ip("192.0.2.1"), &c).unwrap();
        let _p2 = a.admit(ip("192.0.2.1"), &c).unwrap();
        assert_eq!(
            a.admit(ip("192.0.2.1"), &c).unwrap_err(),
            Refusal::IpConcurrency
        );
        let _p3 = a.admit(ip("192.0.2.2"), &c).unwrap();
        assert_eq!(
            a.admit(ip("192.0.2.3"), &c).unwrap_err(),
            Refusal::PrefixConcurrency
        );
        let _p4 = a.admit(ip("198.51.100.1"), &c).unwrap();
        let _p5 = a.admit(ip("203.0.113.1"), &c).unwrap();
        assert_eq!(
            a.admit(ip("203.0.113.2"), &c).unwrap_err(),
            Refusal::Overloaded
        );
        drop(p1);
        assert!(
            a.admit(ip("192.0.2.1"), &c).is_ok(),
            "a closed connection frees its slot"
        );
        // v6 prefixes are /64.
        let c6 = EdgeConfig {
            max_connections: 100,
            ..cfg()
        };
        let _x: Vec<_> = (1..=3)
            .map(|i| a.admit(ip(&format!("2001:db8::{i}")), &c6).unwrap())
            .collect();
        assert_eq!(
            a.admit(ip("2001:db8::99"), &c6).unwrap_err(),
            Refusal::PrefixConcurrency
        );
        assert!(a.admit(ip("2001:db8:0:1::1"), &c6).is_ok());
    }

    #[test]
    fn rates_and_lists() {
        let a = Arc::new(Admission::default());
        let c = EdgeConfig {
            connect_rate_per_ip: 3,
            connect_rate_per_prefix: 10,
            max_connections_per_ip: 100,
            max_connections_per_prefix: 100,
            deny: vec!["192.0.2.66/32".parse().unwrap()],
            ..cfg()
        };
        let c = EdgeConfig {
            max_connections: 1000,
            ..c
        };
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            drop(a.admit(ip, &c).unwrap());
        }
        assert_eq!(a.admit(ip, &c).unwrap_err(), Refusal::IpRate);
        assert_eq!(
            a.admit("192.0.2.66".parse().unwrap(), &c).unwrap_err(),
            Refusal::Denied
        );
        let allow_only = EdgeConfig {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            ..c.clone()
        };
        assert_eq!(
            a.admit("192.0.2.8".parse().unwrap(), &allow_only)
                .unwrap_err(),
            Refusal::NotAllowed
        );
        assert_eq!(a.live(), 0, "refusals hold nothing");
    }

    #[test]
    fn exempt_networks_skip_the_per_address_limits_only() {
        let a = Arc::new(Admission::default());
        let c = EdgeConfig {
            max_connections: 7,
            max_connections_per_ip: 1,
            max_connections_per_prefix: 1,
            connect_rate_per_ip: 1,
            connect_rate_per_prefix: 1,
            exempt: vec!["192.0.2.0/24".parse().unwrap()],
            deny: vec!["192.0.2.66/32".parse().unwrap()],
            ..cfg()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut partner: Vec<_> = (0..5)
            .map(|_| a.admit(ip("192.0.2.1"), &c).unwrap())
            .collect();
        assert_eq!(a.tracked(), 0, "exempt addresses are not tracked");
        let _other = a.admit(ip("198.51.100.1"), &c).unwrap();
        assert_eq!(
            a.admit(ip("198.51.100.1"), &c).unwrap_err(),
            Refusal::PrefixConcurrency,
            "everyone else keeps the limits"
        );
        partner.push(a.admit(ip("192.0.2.1"), &c).unwrap());
        assert_eq!(
            a.admit(ip("192.0.2.1"), &c).unwrap_err(),
            Refusal::Overloaded,
            "the node's cap still counts exempt connections"
        );
        drop(partner);
        assert_eq!(
            a.admit(ip("192.0.2.66"), &c).unwrap_err(),
            Refusal::Denied,
            "deny beats exempt"
        );
        assert_eq!(a.live(), 1);
    }

    #[test]
    fn each_busy_engine_answer_refuses_the_next_connections_then_admission_resumes() {
        let a = Arc::new(Admission::default());
        let c = EdgeConfig {
            max_connections: 1000,
            exempt: vec!["192.0.2.0/24".parse().unwrap()],
            ..cfg()
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        drop(a.admit(ip, &c).unwrap());
        a.engine_busy();
        for _ in 0..REFUSALS_PER_BUSY {
            assert_eq!(a.admit(ip, &c).unwrap_err(), Refusal::EnginesBusy);
        }
        assert!(
            a.admit(ip, &c).is_ok(),
            "owed refusals used up: admitted again"
        );
        for _ in 0..10_000 {
            a.engine_busy();
        }
        let refused = (0..2 * MAX_BUSY_REFUSALS)
            .filter(|_| a.admit(ip, &c).is_err())
            .count();
        assert_eq!(
            refused, MAX_BUSY_REFUSALS as usize,
            "a burst owes at most the cap"
        );
        let quiet = BUSY_MEMORY.as_millis() as u64 + 1;
        a.engine_busy_at(1_000_000);
        assert!(a.owes_busy_refusal(1_000_000));
        assert!(
            !a.owes_busy_refusal(1_000_000 + quiet),
            "owed refusals are forgotten after a quiet period"
        );
        assert_eq!(a.busy_refusals.load(Ordering::Acquire), 0);
        assert_eq!(
            Refusal::EnginesBusy.reply().to_string(),
            "421 4.3.2 Service busy, try again later"
        );
    }

    #[test]
    fn a_flood_of_sources_cannot_grow_the_map() {
        let a = Arc::new(Admission::default());
        let c = EdgeConfig {
            max_connections: 1_000_000,
            max_tracked_addresses: 1000,
            ..cfg()
        };
        for i in 0..50_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i * 256));
            drop(a.admit(ip, &c));
        }
        assert!(a.tracked() <= 1000, "{}", a.tracked());
    }
}
