//! Allow and block lists at three levels: the policy, the tenant (`[policy.NAME.tenant.ID]`)
//! and the user (`[policy.NAME.tenant.ID.user."ADDRESS"]`).
//!
//! The most specific level with a match decides; within a level, block beats allow. A message
//! has one verdict for all its recipients, so a user-level list decides only when **every**
//! recipient's own list agrees (all block, or all allow); otherwise the tenant level decides.
//! Senders match the envelope sender and the header From; domains match themselves and their
//! subdomains; networks match the real client address.
//!
//! Below all three, users' own lists ("allow this sender" in webmail, `store::allow`) are asked
//! when the configured lists say nothing ([`users_allow`]): with the same rule, every recipient
//! must allow the sender. They only allow (a user cannot block for the tenant), and an
//! operator's block always wins.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::config::policy::{ListConfig, TenantOverride};
use crate::store::allow::AllowStore;

/// The level verdicts name for users' own allow lists (`listed=webmail allow sender a@b`).
pub const USERS_ALLOW: &str = "webmail";

/// The entry of users' own allow lists that allows `senders` (envelope sender, header From)
/// for a message to `rcpts` of `tenant`: only when **every** recipient's list allows one of
/// them (a message has one verdict for all its recipients).
pub fn users_allow(
    lists: &AllowStore,
    tenant: &str,
    rcpts: &[String],
    senders: &[String],
) -> Option<Entry> {
    let mut first = None;
    for r in rcpts {
        let e = lists.allowed(tenant, r, senders)?;
        first.get_or_insert(e);
    }
    let e = first?;
    Some(match e.strip_prefix('@') {
        Some(domain) => Entry::Domain(domain.to_owned()),
        None => Entry::Sender(e),
    })
}

#[derive(Debug, Clone, Default)]
pub struct List {
    senders: Vec<String>,
    domains: Vec<String>,
    networks: Vec<IpNetwork>,
}

impl List {
    pub fn new(c: &ListConfig) -> List {
        List {
            senders: c
                .senders
                .iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect(),
            domains: c
                .domains
                .iter()
                .map(|d| d.trim().trim_matches('.').to_ascii_lowercase())
                .collect(),
            networks: c.networks.clone(),
        }
    }

    /// The entry that matches, as written for the verdict (`sender a@b`, `domain b`, `network n`).
    pub fn matches(&self, senders: &[String], ip: IpAddr) -> Option<Entry> {
        for s in senders {
            if self.senders.iter().any(|x| x == s) {
                return Some(Entry::Sender(s.clone()));
            }
            let Some((_, dom)) = s.rsplit_once('@') else {
                continue;
            };
            if let Some(d) = self
                .domains
                .iter()
                .find(|d| dom == d.as_str() || dom.ends_with(&format!(".{d}")))
            {
                return Some(Entry::Domain(d.clone()));
            }
        }
        self.networks
            .iter()
            .find(|n| n.contains(ip))
            .map(|n| Entry::Network(*n))
    }
}

/// What matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Sender(String),
    Domain(String),
    Network(IpNetwork),
}

impl Entry {
    /// Whether the match rests on a sender identity (which can be forged) rather than the
    /// client address.
    pub fn by_sender(&self) -> bool {
        !matches!(self, Entry::Network(_))
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Sender(s) => write!(f, "sender {s}"),
            Entry::Domain(d) => write!(f, "domain {d}"),
            Entry::Network(n) => write!(f, "network {n}"),
        }
    }
}

/// The lists' verdict on a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListHit {
    None,
    Allow { level: &'static str, entry: Entry },
    Block { level: &'static str, entry: Entry },
}

#[derive(Debug, Clone, Default)]
struct Pair {
    allow: List,
    block: List,
}

/// Every list a (policy, tenant) pair applies.
#[derive(Debug, Clone, Default)]
pub struct Lists {
    policy: Pair,
    tenant: Pair,
    users: HashMap<String, Pair>,
}

impl Lists {
    pub fn new(
        policy_allow: &ListConfig,
        policy_block: &ListConfig,
        t: Option<&TenantOverride>,
    ) -> Lists {
        let mut l = Lists {
            policy: Pair {
                allow: List::new(policy_allow),
                block: List::new(policy_block),
            },
            ..Lists::default()
        };
        if let Some(t) = t {
            l.tenant = Pair {
                allow: List::new(&t.allow),
                block: List::new(&t.block),
            };
            for (addr, u) in &t.user {
                l.users.insert(
                    addr.trim().to_ascii_lowercase(),
                    Pair {
                        allow: List::new(&u.allow),
                        block: List::new(&u.block),
                    },
                );
            }
        }
        l
    }

    /// `senders`: the envelope sender and the header From addresses, lower case.
    pub fn check(&self, senders: &[String], ip: IpAddr, rcpts: &[String]) -> ListHit {
        if !self.users.is_empty() && !rcpts.is_empty() {
            let mut blocks = Vec::new();
            let mut allows = Vec::new();
            for r in rcpts {
                let Some(p) = self.users.get(&r.to_ascii_lowercase()) else {
                    break;
                };
                if let Some(e) = p.block.matches(senders, ip) {
                    blocks.push(e);
                } else if let Some(e) = p.allow.matches(senders, ip) {
                    allows.push(e);
                }
            }
            if blocks.len() == rcpts.len() {
                return ListHit::Block {
                    level: "user",
                    entry: blocks.swap_remove(0),
                };
            }
            if allows.len() == rcpts.len() {
                return ListHit::Allow {
                    level: "user",
                    entry: allows.swap_remove(0),
                };
            }
        }
        for (level, pair) in [("tenant", &self.tenant), ("policy", &self.policy)] {
            if let Some(entry) = pair.block.matches(senders, ip) {
                return ListHit::Block { level, entry };
            }
            if let Some(entry) = pair.allow.matches(senders, ip) {
                return ListHit::Allow { level, entry };
            }
        }
        ListHit::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::UserLists;

    fn lc(senders: &[&str], domains: &[&str], nets: &[&str]) -> ListConfig {
        ListConfig {
            senders: senders.iter().map(|s| s.to_string()).collect(),
            domains: domains.iter().map(|s| s.to_string()).collect(),
            networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn users_own_lists_allow_only_when_every_recipient_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = AllowStore::new(dir.path());
        crate::store::allow::change(
            dir.path(),
            "acme",
            "bob@acme.example",
            "@partner.example",
            true,
        )
        .unwrap();
        crate::store::allow::change(
            dir.path(),
            "acme",
            "amy@acme.example",
            "a@partner.example",
            true,
        )
        .unwrap();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let from = s(&["a@partner.example"]);
        assert_eq!(
            users_allow(&store, "acme", &s(&["bob@acme.example"]), &from),
            Some(Entry::Domain("partner.example".into()))
        );
        assert_eq!(
            users_allow(
                &store,
                "acme",
                &s(&["amy@acme.example", "bob@acme.example"]),
                &from
            ),
            Some(Entry::Sender("a@partner.example".into()))
        );
        assert_eq!(
            users_allow(
                &store,
                "acme",
                &s(&["bob@acme.example", "eve@acme.example"]),
                &from
            ),
            None,
            "eve did not allow it"
        );
        assert_eq!(
            users_allow(&store, "globex", &s(&["bob@acme.example"]), &from),
            None
        );
        assert_eq!(users_allow(&store, "acme", &[], &from), None);
    }

    #[test]
    fn most_specific_level_wins_and_users_must_agree() {
        let mut t = TenantOverride {
            allow: lc(&[], &["partner.example"], &[]),
            ..TenantOverride::default()
        };
        t.user.insert(
            "Bob@acme.example".into(),
            UserLists {
                block: lc(&["boss@partner.example"], &[], &[]),
                ..UserLists::default()
            },
        );
        let l = Lists::new(
            &lc(&[], &[], &["192.0.2.0/24"]),
            &lc(&[], &["partner.example"], &[]),
            Some(&t),
        );
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let boss = vec!["boss@partner.example".to_owned()];
        let bob = vec!["bob@acme.example".to_owned()];
        let both = vec!["bob@acme.example".to_owned(), "eve@acme.example".to_owned()];
        assert!(matches!(
            l.check(&boss, ip, &bob),
            ListHit::Block { level: "user", .. }
        ));
        assert!(
            matches!(
                l.check(&boss, ip, &both),
                ListHit::Allow {
                    level: "tenant",
                    ..
                }
            ),
            "eve has no list: the tenant level decides"
        );
        let other = vec!["x@sub.partner.example".to_owned()];
        assert!(matches!(
            l.check(&other, ip, &bob),
            ListHit::Allow {
                level: "tenant",
                ..
            }
        ));
        let nobody = vec!["x@else.example".to_owned()];
        assert!(matches!(
            l.check(&nobody, "192.0.2.7".parse().unwrap(), &bob),
            ListHit::Allow {
                level: "policy",
                entry: Entry::Network(_)
            }
        ));
        assert_eq!(l.check(&nobody, ip, &bob), ListHit::None);
    }
}
