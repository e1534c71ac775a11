//! `[shared]`: the Redis/Valkey deployment every engine and edge of the fleet shares for what
//! one node sees and all must know (outbreak fingerprints, greylisting triplets, fleet-wide
//! sender rates, the operator's intelligence feed). Absent or empty: every node keeps to its
//! own local knowledge, as before. What is stored, how big it gets and how long it lives is in
//! `src/shared/mod.rs`.

use serde::{Deserialize, Serialize};

use super::units::Dur;
use super::validate::Checker;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharedConfig {
    /// Where writes go: `redis://[user:password@]host:port[/db]` of a standalone server (one
    /// address), or the seed nodes of a Redis Cluster (with `cluster = true`). Redis >= 7 or
    /// Valkey. Empty (the default): local knowledge only.
    pub redis: Vec<String>,
    /// The servers in `redis` are seed nodes of a Redis Cluster (keys carry hash tags, so
    /// every multi-key call stays in one slot); reads go to replicas when `read` is set to
    /// `["replicas"]`. Default false.
    pub cluster: bool,
    /// The name Redis Sentinel knows the primary by (its `sentinel monitor NAME …`). When set,
    /// the addresses in `redis` are Sentinels (`redis://host:26379`): the primary is asked of
    /// them at start and again whenever it stops answering or answers `READONLY` (a failover),
    /// and writes follow it. The user, password and database in the first address are the
    /// primary's; the Sentinels themselves are asked without credentials. Empty (the
    /// default): `redis` is the server itself.
    pub sentinel: String,
    /// Where the message path reads from: a replica or per-silo instance near this node
    /// (`redis://…`), so no `250` waits on a round trip across regions. Default: `redis`.
    pub read: Vec<String>,
    /// Prefix of every key we write (so one Redis can serve rspamd and us side by side).
    /// Default `md`.
    pub prefix: String,
    /// Deadline of one read on the message path (a greylisting triplet) and of each read of
    /// the spreading stream (off the message path). Past it the message is decided with local
    /// knowledge only. Default 50 ms.
    pub timeout: Dur,
    /// Sightings, triplets and rate increments are written in one batch this often (never on
    /// the message path), and engines read what is new on the spreading stream (outbreak
    /// counts other nodes saw grow) as often. Default 100 ms.
    pub flush_interval: Dur,
    /// How often each node refreshes the intelligence feed and the fleet's sender rates, and,
    /// while the store is down, tries it again. Default 1 s.
    pub sync_interval: Dur,
    /// Writes waiting for the next batch, at most; beyond it they are dropped and counted
    /// (`maildistiller_shared_writes_dropped_total`). Default 50 000.
    pub max_pending: u32,
}

impl Default for SharedConfig {
    fn default() -> Self {
        SharedConfig {
            redis: Vec::new(),
            cluster: false,
            sentinel: String::new(),
            read: Vec::new(),
            prefix: "md".into(),
            timeout: Dur::millis(50),
            flush_interval: Dur::millis(100),
            sync_interval: Dur::secs(1),
            max_pending: 50_000,
        }
    }
}

impl SharedConfig {
    /// Whether a shared store is configured at all.
    pub fn enabled(&self) -> bool {
        !self.redis.is_empty()
    }

    pub fn check(&self, k: &mut Checker) {
        for (list, urls) in [("shared.redis", &self.redis), ("shared.read", &self.read)] {
            for (i, u) in urls.iter().enumerate() {
                let replicas = list == "shared.read" && u == "replicas";
                if !replicas && !u.starts_with("redis://") {
                    k.err(
                        format!("{list}[{i}]"),
                        format!("{u:?}: expected redis://host:port (TLS to Redis is not built)"),
                    );
                }
            }
        }
        if !self.sentinel.is_empty() && self.cluster {
            k.err(
                "shared.sentinel",
                "a Cluster finds its own primaries: set either shared.cluster or shared.sentinel",
            );
        }
        if !self.sentinel.is_empty() && self.read == ["replicas"] {
            k.err(
                "shared.read",
                "\"replicas\" is for a Cluster: give a replica's address (or none: reads go to the primary)",
            );
        }
        if !self.sentinel.is_empty()
            && self
                .sentinel
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            k.err(
                "shared.sentinel",
                "the primary's name as Sentinel knows it: no spaces",
            );
        }
        if !self.cluster && self.sentinel.is_empty() && self.redis.len() > 1 {
            k.err(
                "shared.redis",
                "one address for a standalone server (several are the seed nodes of a Redis \
                 Cluster, set shared.cluster = true, or Sentinels, set shared.sentinel)",
            );
        }
        if self.read == ["replicas"] && !self.cluster {
            k.err(
                "shared.read",
                "\"replicas\" reads from a Cluster's replicas: give a replica's address instead",
            );
        }
        if !self.cluster && self.read.len() > 1 {
            k.err("shared.read", "one address (a replica near this node)");
        }
        if !self.read.is_empty() && self.redis.is_empty() {
            k.err("shared.read", "needs shared.redis (where writes go)");
        }
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= 32
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !prefix_ok {
            k.err(
                "shared.prefix",
                "1 to 32 letters, digits, '-', '_' or '.' (no braces: they are hash tags)",
            );
        }
        k.dur("shared.timeout", self.timeout, 1, 10);
        k.dur("shared.flush_interval", self.flush_interval, 5, 10);
        k.dur("shared.sync_interval", self.sync_interval, 50, 60);
        k.range(
            "shared.max_pending",
            self.max_pending.into(),
            100,
            10_000_000,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let c: SharedConfig = toml::from_str(text).unwrap();
        let mut k = Checker::default();
        c.check(&mut k);
        k.errors().iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn addresses_and_modes_are_checked() {
        assert!(errors(r#"redis = ["redis://127.0.0.1:6379"]"#).is_empty());
        let e = errors(r#"redis = ["127.0.0.1:6379", "redis://b:1"]"#);
        assert!(e.iter().any(|e| e.starts_with("shared.redis[0]")), "{e:?}");
        assert!(e.iter().any(|e| e.contains("cluster = true")), "{e:?}");
        assert!(
            errors(
                r#"redis = ["redis://a:1", "redis://b:1"]
                      cluster = true
                      read = ["replicas"]"#
            )
            .is_empty()
        );
        let e = errors(r#"read = ["redis://a:1"]"#);
        assert!(e.iter().any(|e| e.contains("needs shared.redis")), "{e:?}");
        assert!(
            errors(
                r#"redis = ["redis://a:26379", "redis://b:26379"]
                      sentinel = "mymaster""#
            )
            .is_empty()
        );
        let e = errors(
            r#"redis = ["redis://a:1"]
                  sentinel = "mymaster"
                  cluster = true"#,
        );
        assert!(e.iter().any(|e| e.starts_with("shared.sentinel")), "{e:?}");
        let e = errors(r#"prefix = "{md}""#);
        assert!(e.iter().any(|e| e.starts_with("shared.prefix")), "{e:?}");
        let e = errors(r#"timeout = "30s""#);
        assert!(e.iter().any(|e| e.starts_with("shared.timeout")), "{e:?}");
    }
}
