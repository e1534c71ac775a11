//! Signed-in sessions and the sign-in limiter, both in memory (a restart signs everyone out,
//! which is acceptable for a page used during outages).
//!
//! Session lifecycle: created at a successful sign-in (random 256-bit token in a `__Host-`
//! cookie, its own random CSRF token) -> touched by every request -> ends at logout, after
//! `session_idle` without a request, `session_lifetime` after sign-in, when the user is removed
//! or their password changes (checked on every request against the config in force), or when
//! the store is full and it is the least recently used.
//!
//! Message ids: a session hands out a random 128-bit token per message it has shown and keeps
//! the map (token -> where the message is); queue ids never reach the browser. Tokens are
//! per session, so one user's links mean nothing in another session, and authorisation is
//! checked again on every request regardless.
//!
//! Bounds: `max_sessions` sessions; `MAX_TOKENS` message tokens per session (oldest forgotten
//! first); the limiter tracks at most `MAX_TRACKED` addresses and as many networks.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::secret::{ct_eq, token};
use crate::store::QueueId;

/// Message tokens one session remembers.
pub const MAX_TOKENS: usize = 20_000;
/// Addresses (and networks) the sign-in limiter tracks.
pub const MAX_TRACKED: usize = 100_000;

/// Where a message lives: this engine, or a cluster peer (its ops address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MsgRef {
    pub peer: Option<SocketAddr>,
    pub id: QueueId,
}

/// Who is signed in.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub tenant: String,
    /// Lower case.
    pub address: String,
    pub admin: bool,
}

#[derive(Debug)]
struct Session {
    viewer: Viewer,
    /// The password hash at sign-in: a changed or removed user ends the session.
    hash: String,
    csrf: String,
    created: Instant,
    last: Instant,
    tokens: HashMap<String, MsgRef>,
    by_ref: HashMap<MsgRef, String>,
    order: VecDeque<String>,
}

/// What a request gets from its session.
#[derive(Debug, Clone)]
pub struct Current {
    pub token: String,
    pub viewer: Viewer,
    pub csrf: String,
}

#[derive(Debug)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
    max: usize,
}

impl Sessions {
    pub fn new(max: usize) -> Sessions {
        Sessions {
            inner: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session; returns its token.
    pub fn create(&self, viewer: Viewer, hash: String) -> String {
        let t = token(32);
        let now = Instant::now();
        let mut g = self.lock();
        if g.len() >= self.max
            && let Some(oldest) = g.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| k.clone())
        {
            g.remove(&oldest);
        }
        g.insert(
            t.clone(),
            Session {
                viewer,
                hash,
                csrf: token(16),
                created: now,
                last: now,
                tokens: HashMap::new(),
                by_ref: HashMap::new(),
                order: VecDeque::new(),
            },
        );
        t
    }

    /// The live session of a cookie value. `still_valid(viewer, hash)` asks the config in force
    /// whether the user still exists with the same password hash.
    pub fn get(
        &self,
        token: &str,
        idle: Duration,
        lifetime: Duration,
        still_valid: impl Fn(&Viewer, &str) -> Option<bool>,
    ) -> Option<Current> {
        let now = Instant::now();
        let mut g = self.lock();
        let s = g.get_mut(token)?;
        let expired = now.duration_since(s.last) > idle || now.duration_since(s.created) > lifetime;
        match still_valid(&s.viewer, &s.hash) {
            Some(admin) if !expired => {
                s.viewer.admin = admin;
                s.last = now;
                Some(Current {
                    token: token.to_owned(),
                    viewer: s.viewer.clone(),
                    csrf: s.csrf.clone(),
                })
            }
            _ => {
                g.remove(token);
                None
            }
        }
    }

    pub fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    /// The token of a message in this session (the same one each time it is shown).
    pub fn msg_token(&self, session: &str, r: &MsgRef) -> String {
        let mut g = self.lock();
        let Some(s) = g.get_mut(session) else {
            return String::new();
        };
        if let Some(t) = s.by_ref.get(r) {
            return t.clone();
        }
        if s.order.len() >= MAX_TOKENS
            && let Some(old) = s.order.pop_front()
            && let Some(old_ref) = s.tokens.remove(&old)
        {
            s.by_ref.remove(&old_ref);
        }
        let t = token(16);
        s.tokens.insert(t.clone(), r.clone());
        s.by_ref.insert(r.clone(), t.clone());
        s.order.push_back(t.clone());
        t
    }

    /// The message a token stands for in this session.
    pub fn resolve(&self, session: &str, msg_token: &str) -> Option<MsgRef> {
        self.lock().get(session)?.tokens.get(msg_token).cloned()
    }

    pub fn check_csrf(&self, current: &Current, sent: &str) -> bool {
        ct_eq(current.csrf.as_bytes(), sent.as_bytes())
    }

    /// Drops expired sessions; returns how many remain.
    pub fn sweep(&self, idle: Duration, lifetime: Duration) -> usize {
        let now = Instant::now();
        let mut g = self.lock();
        g.retain(|_, s| {
            now.duration_since(s.last) <= idle && now.duration_since(s.created) <= lifetime
        });
        g.len()
    }
}

/// Why a sign-in is refused before the password is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    Account(Duration),
    Network(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

/// Failed sign-ins per address and per network, with lockout.
#[derive(Debug)]
pub struct Limiter {
    inner: Mutex<(HashMap<String, Failures>, HashMap<IpAddr, Failures>)>,
}

/// The key of a client address: IPv4 as is, IPv6 by its /64 (one customer's network).
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

/// What the limiter is told: the limits in force (they follow config reloads).
#[derive(Debug, Clone, Copy)]
pub struct SignInLimits {
    pub per_account: u32,
    pub per_network: u32,
    pub window: Duration,
    pub lockout: Duration,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            inner: Mutex::new((HashMap::new(), HashMap::new())),
        }
    }
}

fn locked(map_entry: Option<&Failures>, now: Instant) -> Option<Duration> {
    map_entry
        .and_then(|f| f.locked_until)
        .filter(|u| *u > now)
        .map(|u| u - now)
}

fn fail<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Failures>,
    key: &K,
    max: u32,
    l: &SignInLimits,
    now: Instant,
) {
    if !map.contains_key(key) && map.len() >= MAX_TRACKED {
        map.retain(|_, f| {
            now.duration_since(f.since) <= l.window || f.locked_until.is_some_and(|u| u > now)
        });
        if map.len() >= MAX_TRACKED
            && let Some(k) = map
                .iter()
                .min_by_key(|(_, f)| f.since)
                .map(|(k, _)| k.clone())
        {
            map.remove(&k);
        }
    }
    let f = map.entry(key.clone()).or_insert(Failures {
        count: 0,
        since: now,
        locked_until: None,
    });
    if now.duration_since(f.since) > l.window {
        *f = Failures {
            count: 0,
            since: now,
            locked_until: None,
        };
    }
    f.count += 1;
    if f.count >= max {
        f.locked_until = Some(now + l.lockout);
        f.count = 0;
        f.since = now;
    }
}

impl Limiter {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, (HashMap<String, Failures>, HashMap<IpAddr, Failures>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a sign-in for `account` from `ip` may be tried now.
    pub fn check(&self, account: &str, ip: IpAddr) -> Result<(), Locked> {
        let now = Instant::now();
        let g = self.lock();
        if let Some(d) = locked(g.1.get(&network_of(ip)), now) {
            return Err(Locked::Network(d));
        }
        if let Some(d) = locked(g.0.get(account), now) {
            return Err(Locked::Account(d));
        }
        Ok(())
    }

    pub fn failed(&self, account: &str, ip: IpAddr, l: &SignInLimits) {
        let now = Instant::now();
        let mut g = self.lock();
        fail(&mut g.0, &account.to_owned(), l.per_account, l, now);
        fail(&mut g.1, &network_of(ip), l.per_network, l, now);
    }

    /// A successful sign-in clears the account's failures (not the network's).
    pub fn succeeded(&self, account: &str) {
        self.lock().0.remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer() -> Viewer {
        Viewer {
            tenant: "acme".into(),
            address: "bob@acme.example".into(),
            admin: false,
        }
    }

    #[test]
    fn sessions_expire_end_on_password_change_and_map_tokens_per_session() {
        let s = Sessions::new(2);
        let long = Duration::from_secs(3600);
        let a = s.create(viewer(), "h1".into());
        let ok = |_: &Viewer, h: &str| (h == "h1").then_some(false);
        assert!(s.get(&a, long, long, ok).is_some());
        assert!(s.get("nope", long, long, ok).is_none());
        let id = QueueId::parse("0123456789AB0123456789AB").unwrap();
        let r = MsgRef { peer: None, id };
        let t1 = s.msg_token(&a, &r);
        assert_eq!(s.msg_token(&a, &r), t1, "stable within a session");
        assert_eq!(s.resolve(&a, &t1), Some(r.clone()));
        let b = s.create(viewer(), "h1".into());
        assert_eq!(s.resolve(&b, &t1), None, "tokens are per session");
        assert_ne!(s.msg_token(&b, &r), t1);
        // The password changed: the session ends.
        assert!(s.get(&a, long, long, |_, _| None).is_none());
        assert!(s.get(&a, long, long, ok).is_none());
        // Full: the least recently used goes.
        let c = s.create(viewer(), "h1".into());
        let d = s.create(viewer(), "h1".into());
        let e = s.create(viewer(), "h1".into());
        assert!(s.get(&c, long, long, ok).is_none());
        assert!(s.get(&d, long, long, ok).is_some() && s.get(&e, long, long, ok).is_some());
    }

    #[test]
    fn limiter_locks_accounts_and_networks_and_success_clears_the_account() {
        let l = Limiter::default();
        let lim = SignInLimits {
            per_account: 3,
            per_network: 8,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(60),
        };
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let same_net: IpAddr = "2001:db8::2".parse().unwrap();
        l.failed("a@x", ip, &lim);
        l.failed("a@x", ip, &lim);
        l.succeeded("a@x");
        l.failed("a@x", ip, &lim);
        l.failed("a@x", ip, &lim);
        assert!(l.check("a@x", ip).is_ok());
        l.failed("a@x", ip, &lim);
        assert!(matches!(l.check("a@x", ip), Err(Locked::Account(_))));
        assert!(l.check("b@x", ip).is_ok());
        // Eight failures from one /64 lock the network for every account.
        for _ in 0..3 {
            l.failed("c@x", same_net, &lim);
        }
        assert!(matches!(l.check("d@x", ip), Err(Locked::Network(_))));
        assert!(l.check("d@x", "192.0.2.1".parse().unwrap()).is_ok());
    }
}
