//! `outbreak`: what the fleet has seen of this message. Its fingerprints
//! (`scan::fingerprint`) are looked up in the operator's intelligence feed (local, refreshed
//! every `shared.sync_interval`) and counted: what this node knows of the fleet's counts
//! (`shared::spread`: no round trip on the message path) and its own sightings, the larger of
//! each deciding against `[policy.NAME.outbreak]`. The message's own sightings are recorded
//! here and queued for the store (one write for them all, whose answer tells this node the
//! fleet's counts). It never fails or waits: without the store it decides on local knowledge.
//!
//! Findings: `intel.block` (the policy's `actions.blocklist`), `intel.allow` (score 0: no
//! outbreak finding follows), `outbreak.<kind>` (the fingerprint that reached every threshold,
//! its counts; `outbreak.score` added, the action's minimum), `outbreak.delay` (a suspect held
//! for a second look: the engine reads the fingerprints and the time from its detail).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::config::outbreak::{OutbreakAction, OutbreakConfig};
use crate::config::policy::PolicyAction;
use crate::engine::policy::finding::{CheckError, Finding, Outcome};
use crate::shared::intel::{self, Verb};
use crate::shared::outbreak::{Counts, Sighting};
use crate::shared::{Fingerprint, Fleet, limits, now_ms};

use super::super::fingerprint;
use super::{Check, Subject};

/// Fingerprints this node acted on already (for the first-action latency metric), at most.
const ACTED_MAX: usize = 10_000;

#[derive(Debug)]
pub struct OutbreakCheck {
    cfg: OutbreakConfig,
    blocklist: PolicyAction,
    fleet: Arc<Fleet>,
    acted: Mutex<HashSet<Fingerprint>>,
}

/// How far the worst fingerprint of a message got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Every threshold reached.
    Outbreak,
    /// `delay_tenants` reached (only with `action = "delay"`).
    Suspect,
}

/// Which fingerprint (index) decides, and how: pure, from the counts.
pub fn judge(cfg: &OutbreakConfig, counts: &[Counts]) -> Option<(usize, Level)> {
    let outbreak = |c: &Counts| {
        c.recipients >= cfg.recipients && c.tenants >= cfg.tenants && c.networks >= cfg.networks
    };
    if let Some(i) = counts.iter().position(outbreak) {
        return Some((i, Level::Outbreak));
    }
    if cfg.action == OutbreakAction::Delay {
        return counts
            .iter()
            .position(|c| c.tenants >= cfg.delay_tenants)
            .map(|i| (i, Level::Suspect));
    }
    None
}

/// The fingerprint ids and due time of a held suspect, read back from its quarantine reason.
pub fn parse_delay(reason: &str) -> Option<(Vec<Fingerprint>, u64)> {
    let rest = reason.strip_prefix("outbreak.delay: suspect ")?;
    let (ids, due) = rest.split_once(", second look at ")?;
    let due = due.split_whitespace().next()?.parse().ok()?;
    let fps = ids
        .split(' ')
        .filter_map(Fingerprint::parse)
        .collect::<Vec<_>>();
    (!fps.is_empty()).then_some((fps, due))
}

impl OutbreakCheck {
    pub fn new(cfg: &OutbreakConfig, blocklist: PolicyAction, fleet: Arc<Fleet>) -> OutbreakCheck {
        // The suspects of `delay` are judged on tenants alone, at their own threshold.
        let tenants = match cfg.action {
            OutbreakAction::Delay => cfg.tenants.max(cfg.delay_tenants),
            _ => cfg.tenants,
        };
        fleet.follow_spread(
            Counts {
                recipients: cfg.recipients,
                tenants,
                networks: cfg.networks,
                first_ms: None,
            },
            cfg.window.get().as_millis() as u64,
        );
        OutbreakCheck {
            cfg: cfg.clone(),
            blocklist,
            fleet,
            acted: Mutex::new(HashSet::new()),
        }
    }

    /// The first time this node acts on `fp`: how long since the fleet first saw it.
    fn first_action(&self, fp: &Fingerprint, c: &Counts, now: u64) {
        let mut acted = self.acted.lock().unwrap_or_else(|e| e.into_inner());
        if acted.len() >= ACTED_MAX {
            acted.clear();
        }
        if acted.insert(*fp)
            && let Some(first) = c.first_ms
        {
            let secs = now.saturating_sub(first) as f64 / 1000.0;
            self.fleet.metrics.action_delay.observe(secs);
            tracing::info!(fingerprint = %fp.id(), after_s = secs, "first action on an outbreak at this node");
        }
    }
}

#[async_trait::async_trait]
impl Check for OutbreakCheck {
    fn name(&self) -> &'static str {
        "outbreak"
    }

    async fn check(&self, s: &Subject<'_>) -> Result<Outcome, CheckError> {
        use crate::config::outbreak::FingerprintKind::*;
        let env = s.envelope;
        let now = now_ms();
        let all = fingerprint::of(s.decoded, s.urls, &[Text, Fuzzy, Attachment, Url]);
        let mut out = Outcome::default();

        // The intelligence feed first: an operator's word beats any count.
        let mut senders = Vec::new();
        if !env.mail_from.is_empty() {
            senders.push(env.mail_from.to_ascii_lowercase());
        }
        senders.extend(s.decoded.from.iter().cloned());
        let domains = intel::dedup(
            s.urls
                .iter()
                .map(|u| u.host.trim_end_matches('.').to_ascii_lowercase())
                .chain(
                    senders
                        .iter()
                        .filter_map(|a| Some(a.rsplit_once('@')?.1.to_owned())),
                ),
        );
        let feed = self.fleet.intel.load();
        let hit = feed.lookup(
            &intel::Subject {
                fingerprints: &all,
                senders: &senders,
                domains: &domains,
                client: Some(env.client_ip),
            },
            now,
        );
        let allowed = hit.is_some_and(|e| e.verb == Verb::Allow);
        if let Some(e) = hit {
            self.fleet
                .metrics
                .intel_hits
                .with_label_values(&[e.verb.as_str()])
                .inc();
            let (name, action) = match e.verb {
                Verb::Block => ("intel.block", Some(self.blocklist)),
                Verb::Allow => ("intel.allow", None),
            };
            out.findings.push(Finding::configured(
                "outbreak",
                name.into(),
                0.0,
                action,
                format!("operator intelligence: {}", e.cite()),
            ));
        }

        // Counts: what this node knows of the fleet's, and its own sightings (this one too).
        let fps: Vec<Fingerprint> = all
            .into_iter()
            .filter(|f| self.cfg.fingerprints.contains(&f.kind))
            .collect();
        if fps.is_empty() {
            return Ok(out);
        }
        let window = self.cfg.window.get().as_millis() as u64;
        let rcpts: Vec<u64> = env
            .rcpts
            .iter()
            .map(|r| crate::hash::fnv1a(r.to_ascii_lowercase().as_bytes()))
            .collect();
        let sighting = Sighting {
            tenant: crate::hash::fnv1a(env.tenant.id.0.as_bytes()),
            network: crate::hash::fnv1a(limits::network(env.client_ip).as_bytes()),
            recipients: &rcpts,
            now_ms: now,
            window_ms: window,
        };
        self.fleet.sighted(&fps, &sighting);
        let counts: Vec<Counts> = self.fleet.counts(&fps, now, window);
        if allowed {
            return Ok(out);
        }
        let Some((i, level)) = judge(&self.cfg, &counts) else {
            return Ok(out);
        };
        let (fp, c) = (fps[i], counts[i]);
        let seen = format!(
            "{} recipients, {} tenants, {} networks within {}",
            c.recipients, c.tenants, c.networks, self.cfg.window
        );
        let finding = match level {
            Level::Outbreak => {
                self.fleet.mark(&fp, now);
                self.first_action(&fp, &c, now);
                let action = match self.cfg.action {
                    OutbreakAction::Score => None,
                    OutbreakAction::Quarantine | OutbreakAction::Delay => {
                        Some(PolicyAction::Quarantine)
                    }
                    OutbreakAction::Reject => Some(PolicyAction::Reject),
                };
                self.fleet
                    .metrics
                    .matched
                    .with_label_values(&[self.cfg.action.as_str()])
                    .inc();
                Finding::configured(
                    "outbreak",
                    format!("outbreak.{}", fp.kind.as_str()),
                    self.cfg.score,
                    action,
                    format!("fingerprint {} seen by {seen}", fp.id()),
                )
            }
            Level::Suspect => {
                let suspects: Vec<String> = fps
                    .iter()
                    .zip(&counts)
                    .filter(|(_, c)| c.tenants >= self.cfg.delay_tenants)
                    .map(|(f, _)| f.id())
                    .collect();
                let due = now + self.cfg.delay.get().as_millis() as u64;
                self.fleet
                    .metrics
                    .matched
                    .with_label_values(&["delay"])
                    .inc();
                Finding::configured(
                    "outbreak",
                    "outbreak.delay".into(),
                    0.0,
                    Some(PolicyAction::Quarantine),
                    format!(
                        "suspect {}, second look at {due} ({seen})",
                        suspects.join(" ")
                    ),
                )
            }
        };
        out.findings.push(finding);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(recipients: u32, tenants: u32, networks: u32) -> Counts {
        Counts {
            recipients,
            tenants,
            networks,
            first_ms: None,
        }
    }

    #[test]
    fn every_threshold_must_be_reached() {
        let cfg: OutbreakConfig =
            toml::from_str("recipients = 5\ntenants = 3\nnetworks = 2").unwrap();
        // A newsletter: many recipients, one tenant, one network.
        assert_eq!(judge(&cfg, &[c(500, 1, 1)]), None);
        assert_eq!(judge(&cfg, &[c(5, 2, 2)]), None, "two tenants");
        assert_eq!(judge(&cfg, &[c(5, 3, 1)]), None, "one network");
        assert_eq!(judge(&cfg, &[c(4, 3, 2)]), None, "four recipients");
        assert_eq!(
            judge(&cfg, &[c(0, 0, 0), c(5, 3, 2)]),
            Some((1, Level::Outbreak))
        );
        let low: OutbreakConfig =
            toml::from_str("recipients = 2\ntenants = 2\nnetworks = 1").unwrap();
        assert_eq!(judge(&low, &[c(2, 2, 1)]), Some((0, Level::Outbreak)));
    }

    #[test]
    fn delay_holds_suspects_and_reads_back() {
        let cfg: OutbreakConfig =
            toml::from_str("action = \"delay\"\ndelay_tenants = 2\ntenants = 3").unwrap();
        assert_eq!(judge(&cfg, &[c(3, 2, 1)]), Some((0, Level::Suspect)));
        assert_eq!(judge(&cfg, &[c(3, 1, 1)]), None);
        let quarantine: OutbreakConfig = toml::from_str("delay_tenants = 2").unwrap();
        assert_eq!(
            judge(&quarantine, &[c(3, 2, 1)]),
            None,
            "only with action delay"
        );
        let reason = "outbreak.delay: suspect f00000000000000ab t0000000000000001, second look at 1234 (3 recipients)";
        let (fps, due) = parse_delay(reason).unwrap();
        assert_eq!(due, 1234);
        assert_eq!(fps.len(), 2);
        assert_eq!(parse_delay("spam score 12"), None);
    }
}
