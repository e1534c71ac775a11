//! Cluster redundancy: `engine.redundancy`, `engine.on_shadow_failure`, `engine.takeover_after`
//! and `[engine.shadow]` (the engines' replication channel). What the keys mean in operation is
//! the failure model in `src/shadow/mod.rs`; this file says what may be written and checks it
//! before anything is bound.
//!
//! The channel is never open to the internet: its listener must be a loopback or private
//! address (RFC 1918, RFC 4193, link-local), never a wildcard, and the peer must prove the
//! cluster's secret before anything else is read.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::model::Config;
use super::units::Dur;
use super::validate::{Checker, RoleSet};

/// `engine.redundancy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Redundancy {
    /// One copy: a message lives on the disk of the engine that said 250, and nowhere else.
    #[default]
    None,
    /// Two copies: 250 only once the message is also fsynced on another engine of the cluster.
    Shadow,
}

impl Redundancy {
    pub fn as_str(self) -> &'static str {
        match self {
            Redundancy::None => "none",
            Redundancy::Shadow => "shadow",
        }
    }
}

/// `engine.on_shadow_failure`: what the sender hears when no shadow fsyncs its copy in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnShadowFailure {
    /// `451 4.3.0`: the sender retries (often at another engine); never a silent single copy.
    #[default]
    Tempfail,
    /// `250` with one copy, counted (`maildistiller_engine_shadow_unshadowed_total`) and
    /// shadowed as soon as a peer answers again.
    Accept,
}

impl OnShadowFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnShadowFailure::Tempfail => "tempfail",
            OnShadowFailure::Accept => "accept",
        }
    }
}

/// `[engine.shadow]`: the replication channel between the engines of one cluster.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowConfig {
    /// Where this engine takes copies from its peers: this engine's `[[silo.cluster.engine]]
    /// shadow` address (that is how an engine knows which entry of the fleet it is). Loopback or
    /// private addresses only, never `0.0.0.0`. Default none (required with `redundancy =
    /// "shadow"`).
    pub listen: Vec<SocketAddr>,
    /// The cluster's shared secret (at least 32 characters, the same on every engine of the
    /// cluster). Both ends prove they know it (HMAC-SHA256 challenge and response) before any
    /// copy is read, and every frame after that carries a tag under a key derived from it (so
    /// a frame changed or injected on the path closes the link); it never crosses the wire.
    /// Required with `redundancy = "shadow"`.
    pub secret: Option<String>,
    /// The longest a `250` waits for a shadow's fsync of the copy, retries on another peer
    /// included; then `on_shadow_failure` decides. Default 5 s.
    pub timeout: Dur,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            listen: Vec::new(),
            secret: None,
            timeout: Dur::secs(5),
        }
    }
}

/// Default `engine.takeover_after`: a primary unreachable this long (and agreed down by the
/// cluster) has its copies delivered by its shadows. Five minutes: longer than a restart or an
/// upgrade (which must not cause duplicates), short next to the hours a lost engine's mail
/// would otherwise wait.
pub const DEFAULT_TAKEOVER_AFTER: Dur = Dur::secs(300);

/// Whether `ip` may carry the replication channel: loopback, RFC 1918 / RFC 4193 private, or
/// link-local. Never a wildcard, never a globally routed address.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback() || a.is_private() || a.is_link_local(),
        IpAddr::V6(a) => {
            a.is_loopback()
                || (a.segments()[0] & 0xfe00) == 0xfc00
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

impl ShadowConfig {
    pub fn check(&self, k: &mut Checker) {
        for (i, a) in self.listen.iter().enumerate() {
            if a.ip().is_unspecified() || !is_internal(a.ip()) {
                k.err(
                    format!("engine.shadow.listen[{i}]"),
                    format!(
                        "{a}: the replication channel is never open to the internet; bind the \
                         engine's loopback or private (cluster-internal) address"
                    ),
                );
            }
        }
        if let Some(s) = &self.secret
            && s.len() < 32
        {
            k.err(
                "engine.shadow.secret",
                "at least 32 characters (e.g. `openssl rand -hex 32`)",
            );
        }
        k.dur("engine.shadow.timeout", self.timeout, 100, 600);
    }
}

/// Checks that need the whole file: with `redundancy = "shadow"` this process must be an engine
/// of the fleet (found by its shadow listener), with at least one peer in its cluster.
pub fn check_redundancy(c: &Config, roles: RoleSet, k: &mut Checker) {
    let e = &c.engine;
    k.dur("engine.takeover_after", e.takeover_after, 1000, 7 * 86_400);
    for s in &c.silos {
        for cl in &s.clusters {
            for (i, en) in cl.engines.iter().enumerate() {
                if let Some(a) = en.shadow
                    && (a.ip().is_unspecified() || !is_internal(a.ip()))
                {
                    k.err(
                        format!("silo[{}].cluster[{}].engine[{i}].shadow", s.name, cl.name),
                        format!("{a} is not a loopback or private address"),
                    );
                }
            }
        }
    }
    if e.redundancy == Redundancy::None || !roles.engine {
        return;
    }
    if e.shadow.secret.is_none() {
        k.err(
            "engine.shadow.secret",
            "required with engine.redundancy = \"shadow\": the same secret on every engine of \
             the cluster",
        );
    }
    if e.shadow.listen.is_empty() {
        k.err(
            "engine.shadow.listen",
            "required with engine.redundancy = \"shadow\": this engine's \
             [[silo.cluster.engine]] shadow address",
        );
        return;
    }
    let me = c.silos.iter().flat_map(|s| &s.clusters).find(|cl| {
        cl.engines
            .iter()
            .any(|en| en.shadow.is_some_and(|a| e.shadow.listen.contains(&a)))
    });
    match me {
        None => k.err(
            "engine.shadow.listen",
            "no [[silo.cluster.engine]] has one of these addresses as its `shadow`: the fleet \
             must say which engine this is",
        ),
        Some(cl) if cl.engines.iter().filter(|x| x.shadow.is_some()).count() < 2 => k.err(
            "engine.redundancy",
            format!(
                "cluster {:?} has no other engine with a `shadow` address: a copy needs a \
                 second engine",
                cl.name
            ),
        ),
        Some(_) => {}
    }
}
