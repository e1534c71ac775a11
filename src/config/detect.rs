//! `[policy.NAME.rspamd]`, `[policy.NAME.gateway]` and `[policy.NAME.learning]`: the content
//! engine we ask (rspamd), how its score combines with ours, our own gateway signals, and how
//! users and operators teach the classifier. Part of a policy, so each tenant's override can
//! change any of it (`[policy.default.tenant.acme] learning.report_address = "junk"`).
//!
//! # How the scores combine
//!
//! The message's score is the sum of our findings (content rules, heuristics, the gateway's
//! signals, SPF/DKIM/DMARC…) and one finding `rspamd`: rspamd's own score times
//! `rspamd.weight`, clipped to `rspamd.min_score ..= rspamd.max_score`. The clip keeps one
//! engine from deciding alone where the policy says it should not: with `max_score` below the
//! reject threshold, rspamd alone can quarantine but only our own findings added to it reject;
//! `min_score` bounds how far rspamd's negative symbols (a known-good list, Bayes ham) can pull
//! a message that our first line found bad. The thresholds then apply to the sum. The verdict
//! line shows both parts (`ours 2.5 + rspamd 7.2 (x1, clip -5..15) = 9.7`).

use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::policy::OnFailure;
use super::units::{Bytes, Dur};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RspamdConfig {
    /// `HOST:PORT` of rspamd's normal worker. Default `127.0.0.1:11333`.
    pub address: String,
    /// For the whole exchange. Default 10 s.
    pub timeout: Dur,
    /// When rspamd is down or times out. Default `accept`.
    pub on_failure: OnFailure,
    /// rspamd's score times this is added to ours. Default 1.
    pub weight: f64,
    /// rspamd's weighted score counts at most this much (see the module doc). Default 15.
    pub max_score: f64,
    /// …and at least this much. Default -5.
    pub min_score: f64,
    /// Larger messages are not sent (counts as a failure). Default 25 MiB.
    pub max_size: Bytes,
}

impl Default for RspamdConfig {
    fn default() -> Self {
        RspamdConfig {
            address: "127.0.0.1:11333".to_owned(),
            timeout: Dur::secs(10),
            on_failure: OnFailure::Accept,
            weight: 1.0,
            max_score: 15.0,
            min_score: -5.0,
            max_size: Bytes(25 << 20),
        }
    }
}

/// Our own first line: what a gateway sees that a content filter does not (the `gateway`
/// scanner). Each signal is a finding with a built-in name whose score the policy's `scores`
/// table may change; these keys say which signals run.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Forward-confirmed reverse DNS of the client (PTR, then its A/AAAA back to the client),
    /// through the policy's resolver (`dns`), cached by the resolver. Default true; off when
    /// the engine has no DNS (the signal would then be "no PTR" for every client). Not run when
    /// the policy's `scanners.rspamd` is on: rspamd checks the client's reverse DNS itself, and
    /// one fact counts once in the combined score. A resolver that cannot answer adds nothing.
    pub fcrdns: bool,
    /// Sender domains seen by this engine, remembered (at most this many, oldest forgotten) so
    /// that a never-seen domain can count — only together with another signal. Default 100 000;
    /// 0 turns the signal off.
    pub remember_domains: u32,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            fcrdns: true,
            remember_domains: 100_000,
        }
    }
}

/// Our own classifier, learnt from users' and operators' lessons (`scanners.learnt`; the model
/// is `engine/learn/model.rs`): the message's chi-square probability `p` of being spam. At
/// `p >= spam_cutoff` the finding `learnt.spam` adds `spam_score`; at `p <= ham_cutoff` the
/// finding `learnt.ham` adds `ham_score` (negative: it pulls down what other scanners added);
/// in between (unsure) or before any lesson, nothing. The verdict line shows `p`, the band and
/// the points (`learnt p=0.998 (spam >= 0.9) +6 from 150 clues, 2.4k lessons`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearntConfig {
    /// From this probability up, the message is spam for the model. Default 0.9 (SpamBayes'
    /// spam cutoff).
    pub spam_cutoff: f64,
    /// Up to this probability, ham. Default 0.2 (SpamBayes' ham cutoff).
    pub ham_cutoff: f64,
    /// Points added when the model says spam. Default 6 (alone: tag, not quarantine).
    pub spam_score: f64,
    /// Points added when it says ham. Default -4.
    pub ham_score: f64,
}

impl Default for LearntConfig {
    fn default() -> Self {
        LearntConfig {
            spam_cutoff: 0.9,
            ham_cutoff: 0.2,
            spam_score: 6.0,
            ham_score: -4.0,
        }
    }
}

/// What the schema alone can judge of `[learnt]`.
pub fn check_learnt(l: &LearntConfig, mut err: impl FnMut(&str, String)) {
    for (p, v) in [
        ("learnt.spam_score", l.spam_score),
        ("learnt.ham_score", l.ham_score),
    ] {
        if !v.is_finite() {
            err(p, "must be a finite number".into());
        }
    }
    if !(0.0..=1.0).contains(&l.spam_cutoff) || !(0.0..=1.0).contains(&l.ham_cutoff) {
        err(
            "learnt.spam_cutoff",
            "cutoffs are probabilities (0..=1)".into(),
        );
    } else if l.ham_cutoff >= l.spam_cutoff {
        err(
            "learnt.ham_cutoff",
            format!(
                "{} is not below learnt.spam_cutoff {}",
                l.ham_cutoff, l.spam_cutoff
            ),
        );
    }
}

/// Learning from users and operators: rspamd's controller (Bayes `learn_spam`/`learn_ham`,
/// fuzzy `fuzzy_add`/`fuzzy_del`), the per-tenant report address, limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearningConfig {
    /// `HOST:PORT` of rspamd's controller worker. Empty (the default): learning is off — the
    /// report address is not recognised and webmail shows no "spam"/"not spam" buttons.
    pub controller: String,
    /// A file whose first line is the controller's password (sent as `Password`). Default
    /// none (the controller lets us in by its `secure_ip`). Read at each call, so replacing the
    /// file rotates it.
    pub password_file: Option<PathBuf>,
    /// Local part of the report address: mail to `LOCAL@` any of the tenant's domains is a
    /// report ("this is spam"): the engine takes the original message out of it (an attached
    /// `message/rfc822`, else the forwarded text), learns it, and delivers nothing onward.
    /// Default `report-spam`; empty: no report address.
    pub report_address: String,
    /// Clients that may send reports. Empty (the default): any client, as long as the envelope
    /// sender is an address of the tenant's domains (and the per-user limit holds). Set it to
    /// the tenant's outbound servers where senders can be forged.
    pub report_networks: Vec<IpNetwork>,
    /// Messages one user (an address) may teach per hour; more are refused (451 for reports,
    /// an error page in webmail). Operators' bulk learning is not limited. Default 100.
    pub per_user_hourly: u32,
    /// The `flag` of the fuzzy_check rule's `fuzzy_map` entry for learnt spam (rspamd's
    /// `fuzzy_add` marks the message's hashes with it). Default 11; 0: no fuzzy hashes.
    pub fuzzy_flag: u32,
    /// Weight of each added fuzzy hash. Default 10.
    pub fuzzy_weight: u32,
    /// Each call to the controller. Default 10 s.
    pub timeout: Dur,
}

impl Default for LearningConfig {
    fn default() -> Self {
        LearningConfig {
            controller: String::new(),
            password_file: None,
            report_address: "report-spam".to_owned(),
            report_networks: Vec::new(),
            per_user_hourly: 100,
            fuzzy_flag: 11,
            fuzzy_weight: 10,
            timeout: Dur::secs(10),
        }
    }
}

impl LearningConfig {
    pub fn enabled(&self) -> bool {
        !self.controller.is_empty()
    }
}

/// What the schema alone can judge of these sections (addresses are checked by the scanner).
pub fn check(rspamd: &RspamdConfig, learning: &LearningConfig, mut err: impl FnMut(&str, String)) {
    for (p, v) in [
        ("rspamd.weight", rspamd.weight),
        ("rspamd.max_score", rspamd.max_score),
        ("rspamd.min_score", rspamd.min_score),
    ] {
        if !v.is_finite() {
            err(p, "must be a finite number".into());
        }
    }
    if rspamd.min_score > rspamd.max_score {
        err(
            "rspamd.min_score",
            format!(
                "{} is above rspamd.max_score {}",
                rspamd.min_score, rspamd.max_score
            ),
        );
    }
    let local = &learning.report_address;
    if local.contains('@')
        || local.len() > 64
        || local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
    {
        err(
            "learning.report_address",
            format!("{local:?} is not a local part (the domains are the tenant's)"),
        );
    }
    if learning.per_user_hourly > 100_000 {
        err("learning.per_user_hourly", "at most 100000".into());
    }
    let ms = learning.timeout.get().as_millis();
    if !(10..=600_000).contains(&ms) {
        err(
            "learning.timeout",
            format!("{} is out of range (10ms..=600s)", learning.timeout),
        );
    }
}

/// The password from `password_file`, when one is configured.
pub fn read_password(learning: &LearningConfig) -> Result<Option<String>, ConfigError> {
    let Some(path) = &learning.password_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new("learning.password_file", format!("{}: {e}", path.display()))
    })?;
    Ok(Some(
        text.lines().next().unwrap_or_default().trim().to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(r: &RspamdConfig, l: &LearningConfig) -> Vec<String> {
        let mut out = Vec::new();
        check(r, l, |p, m| out.push(format!("{p}: {m}")));
        out
    }

    #[test]
    fn defaults_are_valid_and_learning_is_off() {
        assert!(errors(&RspamdConfig::default(), &LearningConfig::default()).is_empty());
        assert!(!LearningConfig::default().enabled());
    }

    #[test]
    fn the_unsure_band_must_be_a_band() {
        let mut out = Vec::new();
        let l = LearntConfig {
            ham_cutoff: 0.95,
            ..LearntConfig::default()
        };
        check_learnt(&l, |p, m| out.push(format!("{p}: {m}")));
        assert!(out[0].starts_with("learnt.ham_cutoff"), "{out:?}");
        out.clear();
        check_learnt(&LearntConfig::default(), |p, m| {
            out.push(format!("{p}: {m}"))
        });
        assert!(out.is_empty());
    }

    #[test]
    fn bad_values_are_named() {
        let r = RspamdConfig {
            min_score: 20.0,
            ..RspamdConfig::default()
        };
        let l = LearningConfig {
            report_address: "spam@acme.example".into(),
            ..LearningConfig::default()
        };
        let e = errors(&r, &l);
        assert!(e.iter().any(|e| e.starts_with("rspamd.min_score")), "{e:?}");
        assert!(
            e.iter().any(|e| e.starts_with("learning.report_address")),
            "{e:?}"
        );
    }
}
