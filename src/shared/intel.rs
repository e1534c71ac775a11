//! The operator's intelligence feed: block or allow a fingerprint, a URL or sender domain, a
//! sender address or a client network, fleet-wide, with a reason and an expiry
//! (`maildistiller intel block|allow|list|expire`). One hash in the store (field `kind:value`,
//! value `action TAB expires_ms TAB added_ms TAB reason`); every node reads it whole once per
//! `shared.sync_interval` and looks entries up locally, so no message waits for it. Every
//! verdict an entry decided cites it (`intel.block: domain evil.example (phishing kit, until
//! …)`).
//!
//! What an entry does, in the outbreak scanner: `block` gives the policy's `actions.blocklist`
//! (reject by default); `allow` says the mail is known good: it is never counted an outbreak
//! and a block of a less specific entry does not apply. Lookup order, most specific first:
//! fingerprint, sender, domain, network; at one level `allow` wins.
//!
//! The API (ops listener, operator credential): `GET /intel` lists, `POST
//! /intel/{block|allow}?kind=K&value=V&reason=R&expire=7d` adds or replaces, `POST
//! /intel/expire?kind=K&value=V` removes.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use ipnetwork::IpNetwork;
use redis::Value;

use super::keys::Fingerprint;
use super::{Call, Fleet};

/// Entries at most: the API refuses more.
pub const MAX_ENTRIES: usize = 100_000;
/// Longest expiry an entry may have.
pub const MAX_EXPIRY_MS: u64 = 365 * 86_400_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Fingerprint,
    Sender,
    Domain,
    Network,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Fingerprint => "fingerprint",
            Kind::Sender => "sender",
            Kind::Domain => "domain",
            Kind::Network => "network",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Fingerprint, Kind::Sender, Kind::Domain, Kind::Network]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    /// The value in its one spelling (lower case, a network in CIDR form), or why not.
    pub fn normalise(self, v: &str) -> Result<String, String> {
        let v = v.trim().to_ascii_lowercase();
        let ok = match self {
            Kind::Fingerprint => Fingerprint::parse(&v).is_some(),
            Kind::Sender => v.contains('@') && !v.contains(char::is_whitespace),
            Kind::Domain => crate::config::validate::is_domain(&v),
            Kind::Network => {
                return v
                    .parse::<IpNetwork>()
                    .map(|n| n.to_string())
                    .map_err(|_| format!("{v:?} is not a network (CIDR)"));
            }
        };
        if ok && v.len() <= 320 {
            Ok(v)
        } else {
            Err(format!("{v:?} is not a {}", self.as_str()))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Block,
    Allow,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Block => "block",
            Verb::Allow => "allow",
        }
    }
}

/// One entry of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub value: String,
    pub verb: Verb,
    pub reason: String,
    pub expires_ms: u64,
    pub added_ms: u64,
}

impl Entry {
    fn field(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.value)
    }

    fn encode(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}",
            self.verb.as_str(),
            self.expires_ms,
            self.added_ms,
            self.reason
        )
    }

    fn decode(field: &str, value: &str) -> Option<Entry> {
        let (kind, v) = field.split_once(':')?;
        let mut parts = value.splitn(4, '\t');
        let verb = match parts.next()? {
            "block" => Verb::Block,
            "allow" => Verb::Allow,
            _ => return None,
        };
        Some(Entry {
            kind: Kind::parse(kind)?,
            value: v.to_owned(),
            verb,
            expires_ms: parts.next()?.parse().ok()?,
            added_ms: parts.next()?.parse().ok()?,
            reason: parts.next().unwrap_or_default().to_owned(),
        })
    }

    /// How a verdict cites it.
    pub fn cite(&self) -> String {
        format!(
            "{} {} ({}, until {})",
            self.kind.as_str(),
            self.value,
            self.reason,
            crate::smtp::date::rfc5322(self.expires_ms / 1000)
        )
    }
}

/// The feed as last read, indexed for lookups.
#[derive(Debug, Default)]
pub struct Feed {
    pub entries: Vec<Entry>,
    exact: HashMap<(Kind, String), Vec<usize>>,
    networks: Vec<(IpNetwork, usize)>,
}

/// What a message is looked up by.
#[derive(Debug, Default)]
pub struct Subject<'a> {
    pub fingerprints: &'a [Fingerprint],
    /// Envelope sender and header From addresses, lower case.
    pub senders: &'a [String],
    /// URL hosts and sender domains, lower case.
    pub domains: &'a [String],
    pub client: Option<IpAddr>,
}

impl Feed {
    pub fn new(entries: Vec<Entry>) -> Feed {
        let mut f = Feed::default();
        for (i, e) in entries.iter().enumerate() {
            match e.kind {
                Kind::Network => {
                    if let Ok(n) = e.value.parse() {
                        f.networks.push((n, i));
                    }
                }
                k => f.exact.entry((k, e.value.clone())).or_default().push(i),
            }
        }
        f.entries = entries;
        f
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry that decides for `s` at `now_ms`, if any (see the module docs for the order).
    pub fn lookup(&self, s: &Subject<'_>, now_ms: u64) -> Option<&Entry> {
        let live = |i: &usize| Some(&self.entries[*i]).filter(|e| e.expires_ms > now_ms);
        fn pick(found: Vec<&Entry>) -> Option<&Entry> {
            found
                .iter()
                .find(|e| e.verb == Verb::Allow)
                .or(found.first())
                .copied()
        }
        let exact = |kind: Kind, values: &mut dyn Iterator<Item = String>| -> Vec<&Entry> {
            let mut out = Vec::new();
            for v in values {
                if let Some(ix) = self.exact.get(&(kind, v)) {
                    out.extend(ix.iter().filter_map(live));
                }
            }
            out
        };
        let domains = s.domains.iter().flat_map(|d| parents(d));
        let levels = [
            exact(
                Kind::Fingerprint,
                &mut s.fingerprints.iter().map(|f| f.id()),
            ),
            exact(Kind::Sender, &mut s.senders.iter().cloned()),
            exact(Kind::Domain, &mut domains.map(str::to_owned)),
            s.client
                .map(|ip| {
                    self.networks
                        .iter()
                        .filter(|(n, _)| n.contains(ip.to_canonical()))
                        .filter_map(|(_, i)| live(i))
                        .collect()
                })
                .unwrap_or_default(),
        ];
        levels.into_iter().find_map(pick)
    }
}

/// `a.b.example`, `b.example`, `example`: a domain entry covers its subdomains.
fn parents(d: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(d), |d| d.split_once('.').map(|(_, rest)| rest))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn entries_of(v: &Value) -> Vec<Entry> {
    let pairs: Vec<(String, String)> = match v {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|p| Some((text(p.first()?)?, text(p.get(1)?)?)))
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        _ => Vec::new(),
    };
    pairs
        .iter()
        .filter_map(|(f, v)| Entry::decode(f, v))
        .collect()
}

/// Reads the feed from the near store (the sync loop, once per `sync_interval`).
pub async fn refresh(fleet: &Fleet) {
    let (tag, key) = fleet.keys.intel();
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(&key);
    let Some(conn) = fleet.read.load_full() else {
        return;
    };
    let Some(answers) = fleet
        .call("sync", &conn, &[Call { tag, cmd }], super::WRITE_DEADLINE)
        .await
    else {
        return;
    };
    let entries = answers.first().map(entries_of).unwrap_or_default();
    fleet.metrics.intel_entries.set(entries.len() as i64);
    let fresh = Feed::new(entries);
    if fresh.entries != fleet.intel.load().entries {
        fleet.intel.store(Arc::new(fresh));
    }
}

/// `/intel…` on the ops listener (behind the operator credential).
pub fn routes(fleet: Arc<Fleet>) -> Router {
    Router::new()
        .route("/intel", get(list))
        .route("/intel/{verb}", post(change))
        .with_state(fleet)
}

type Answer = Result<String, (StatusCode, String)>;

fn bad(m: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, format!("{}\n", m.into()))
}

fn unavailable(e: impl std::fmt::Display) -> (StatusCode, String) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the shared store did not answer: {e}\n"),
    )
}

async fn read_all(fleet: &Fleet) -> Result<Vec<Entry>, (StatusCode, String)> {
    let (tag, key) = fleet.keys.intel();
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(&key);
    let a = fleet
        .command(&[Call { tag, cmd }])
        .await
        .map_err(unavailable)?;
    Ok(a.first().map(entries_of).unwrap_or_default())
}

async fn list(State(fleet): State<Arc<Fleet>>) -> Answer {
    let now = super::now_ms();
    let mut entries = read_all(&fleet).await?;
    let expired: Vec<String> = entries
        .iter()
        .filter(|e| e.expires_ms <= now)
        .map(Entry::field)
        .collect();
    if !expired.is_empty() {
        let (tag, key) = fleet.keys.intel();
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(&key).arg(&expired);
        fleet
            .command(&[Call { tag, cmd }])
            .await
            .map_err(unavailable)?;
    }
    entries.retain(|e| e.expires_ms > now);
    entries.sort_by(|a, b| (a.kind, &a.value).cmp(&(b.kind, &b.value)));
    let mut out = String::new();
    for e in &entries {
        let _ = writeln!(
            out,
            "{:<6} {:<11} {:<40} until {}  {}",
            e.verb.as_str(),
            e.kind.as_str(),
            e.value,
            crate::smtp::date::rfc5322(e.expires_ms / 1000),
            e.reason
        );
    }
    if entries.is_empty() {
        out.push_str("no entries\n");
    }
    Ok(out)
}

async fn change(
    State(fleet): State<Arc<Fleet>>,
    Path(verb): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let verb = match verb.as_str() {
        "block" => Some(Verb::Block),
        "allow" => Some(Verb::Allow),
        "expire" => None,
        other => {
            return Err(bad(format!(
                "unknown action {other:?}: block, allow or expire"
            )));
        }
    };
    let kind = q
        .get("kind")
        .and_then(|k| Kind::parse(k))
        .ok_or_else(|| bad("kind: one of fingerprint, sender, domain, network"))?;
    let value = kind
        .normalise(q.get("value").map(String::as_str).unwrap_or_default())
        .map_err(bad)?;
    let (tag, key) = fleet.keys.intel();
    let field = format!("{}:{value}", kind.as_str());
    let Some(verb) = verb else {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(&key).arg(&field);
        let a = fleet
            .command(&[Call { tag, cmd }])
            .await
            .map_err(unavailable)?;
        return match a.first() {
            Some(Value::Int(1)) => Ok(format!("expired {} {value}\n", kind.as_str())),
            _ => Err((
                StatusCode::NOT_FOUND,
                format!("no entry for {} {value}\n", kind.as_str()),
            )),
        };
    };
    let reason: String = q
        .get("reason")
        .map(|r| r.chars().filter(|c| !c.is_control()).take(200).collect())
        .unwrap_or_default();
    if reason.trim().is_empty() {
        return Err(bad("reason: say why (it is cited in every verdict)"));
    }
    let expire = q.get("expire").map(String::as_str).unwrap_or("7d");
    let ttl = crate::config::units::parse_duration(expire)
        .map_err(bad)?
        .as_millis() as u64;
    if ttl == 0 || ttl > MAX_EXPIRY_MS {
        return Err(bad("expire: from 1s to 365d"));
    }
    let now = super::now_ms();
    let entry = Entry {
        kind,
        value,
        verb,
        reason,
        expires_ms: now + ttl,
        added_ms: now,
    };
    let mut len = redis::cmd("HLEN");
    len.arg(&key);
    let n = fleet
        .command(&[Call {
            tag: tag.clone(),
            cmd: len,
        }])
        .await
        .map_err(unavailable)?;
    if matches!(n.first(), Some(Value::Int(n)) if *n as usize >= MAX_ENTRIES) {
        return Err(bad(format!(
            "the feed holds {MAX_ENTRIES} entries already: expire some"
        )));
    }
    let mut cmd = redis::cmd("HSET");
    cmd.arg(&key).arg(entry.field()).arg(entry.encode());
    fleet
        .command(&[Call { tag, cmd }])
        .await
        .map_err(unavailable)?;
    Ok(format!("{} {}\n", entry.verb.as_str(), entry.cite()))
}

/// Distinct values, keeping order (URL hosts repeat).
pub fn dedup(v: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    v.into_iter().filter(|x| seen.insert(x.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(kind: Kind, value: &str, verb: Verb, expires_ms: u64) -> Entry {
        Entry {
            kind,
            value: value.into(),
            verb,
            reason: "r".into(),
            expires_ms,
            added_ms: 0,
        }
    }

    #[test]
    fn the_most_specific_live_entry_decides() {
        let feed = Feed::new(vec![
            e(Kind::Domain, "evil.example", Verb::Block, 100),
            e(Kind::Network, "192.0.2.0/24", Verb::Block, 100),
            e(Kind::Sender, "friend@evil.example", Verb::Allow, 100),
            e(Kind::Domain, "old.example", Verb::Block, 10),
        ]);
        let domains = vec!["www.evil.example".to_owned()];
        let s = Subject {
            domains: &domains,
            ..Subject::default()
        };
        assert_eq!(
            feed.lookup(&s, 50).map(|e| e.verb),
            Some(Verb::Block),
            "subdomain"
        );
        let senders = vec!["friend@evil.example".to_owned()];
        let s2 = Subject {
            domains: &domains,
            senders: &senders,
            ..Subject::default()
        };
        assert_eq!(
            feed.lookup(&s2, 50).map(|e| e.verb),
            Some(Verb::Allow),
            "sender beats domain"
        );
        let s3 = Subject {
            client: Some("192.0.2.9".parse().unwrap()),
            ..Subject::default()
        };
        assert!(feed.lookup(&s3, 50).is_some());
        assert!(feed.lookup(&s3, 100).is_none(), "expired");
        let old = vec!["old.example".to_owned()];
        let s4 = Subject {
            domains: &old,
            ..Subject::default()
        };
        assert!(
            feed.lookup(&s4, 50).is_none(),
            "expired entries are ignored"
        );
    }

    #[test]
    fn entries_round_trip_and_values_are_normalised() {
        let x = e(Kind::Sender, "a@b.example", Verb::Allow, 5);
        assert_eq!(Entry::decode(&x.field(), &x.encode()), Some(x));
        assert_eq!(
            Kind::Network.normalise("192.0.2.0/24").unwrap(),
            "192.0.2.0/24"
        );
        assert!(Kind::Domain.normalise("not a domain").is_err());
        assert_eq!(
            Kind::Domain.normalise("Evil.Example").unwrap(),
            "evil.example"
        );
        assert!(Kind::Fingerprint.normalise("f0123").is_err());
    }
}
