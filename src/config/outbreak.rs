//! `[policy.NAME.outbreak]` and `[policy.NAME.greylist]`: the two parts of a policy that live
//! on what the whole fleet has seen (through `[shared]`, or this node alone without it).
//!
//! Outbreak detection counts each fingerprint of a scanned message (of the kinds named in
//! `fingerprints`: fuzzy shingles, attachment digests, text digest, URL domains) fleet-wide in a sliding window: distinct
//! recipients, distinct tenants, distinct sending networks (/24, /64). A fingerprint that
//! reaches every threshold is an outbreak, and mail carrying it gets the section's `action`.
//! Greylisting answers `451 4.7.1` at RCPT to a (client network, sender, recipient) triplet
//! seen for the first time, and lets its retry in after `delay`, at any silo.

use serde::{Deserialize, Serialize};

use super::units::Dur;

/// What happens to mail that carries an outbreak's fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutbreakAction {
    /// Add `score` to the spam score; the thresholds decide.
    Score,
    Quarantine,
    /// Refuse in-session (550, no backscatter).
    Reject,
    /// Quarantine at once when the outbreak is known; hold a suspect (seen at `delay_tenants`
    /// tenants, not yet an outbreak) for `delay`, then look again: quarantined if it became
    /// one meanwhile, delivered otherwise.
    Delay,
}

impl OutbreakAction {
    pub fn as_str(self) -> &'static str {
        match self {
            OutbreakAction::Score => "score",
            OutbreakAction::Quarantine => "quarantine",
            OutbreakAction::Reject => "reject",
            OutbreakAction::Delay => "delay",
        }
    }
}

/// A kind of fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FingerprintKind {
    /// A digest of the normalised text of the body parts (case, spacing, digits folded).
    Text,
    /// Word 3-gram shingles of the text, min-hashed into 5 bands: a copy with a changed
    /// greeting, name or paragraph order still shares bands with the others.
    Fuzzy,
    /// A digest of each attachment (decoded content).
    Attachment,
    /// Each URL's domain. Popular domains appear in mail of every tenant from every network:
    /// count them only with high thresholds, or block them through the intelligence feed.
    Url,
}

impl FingerprintKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FingerprintKind::Text => "text",
            FingerprintKind::Fuzzy => "fuzzy",
            FingerprintKind::Attachment => "attachment",
            FingerprintKind::Url => "url",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutbreakConfig {
    /// The sliding window sightings are counted in. Default 1 h.
    pub window: Dur,
    /// Distinct recipients a fingerprint must reach. Default 10.
    pub recipients: u32,
    /// Distinct tenants it must reach: a newsletter to many users of one tenant is not an
    /// outbreak. Default 3.
    pub tenants: u32,
    /// Distinct sending networks (/24, /64) it must come from. Default 2.
    pub networks: u32,
    /// What happens to matching mail. Default `quarantine`.
    pub action: OutbreakAction,
    /// Added to the spam score of matching mail (with every action). Default 5.
    pub score: f64,
    /// With `action = "delay"`: how long a suspect is held before it is looked at again.
    /// Default 5 m.
    pub delay: Dur,
    /// With `action = "delay"`: a fingerprint seen at this many tenants makes mail a suspect.
    /// Default 2.
    pub delay_tenants: u32,
    /// Which fingerprints count. Default fuzzy and attachment: `text` (the digest of the
    /// whole normalised text) counts only exact copies, and every exact copy also matches
    /// each fuzzy band, so beside `fuzzy` it adds a sighting to write and nothing to find;
    /// list it alone to count exact copies only. Every kind is still looked up in the
    /// intelligence feed, counted or not.
    pub fingerprints: Vec<FingerprintKind>,
}

impl Default for OutbreakConfig {
    fn default() -> Self {
        OutbreakConfig {
            window: Dur::secs(3600),
            recipients: 10,
            tenants: 3,
            networks: 2,
            action: OutbreakAction::Quarantine,
            score: 5.0,
            delay: Dur::secs(300),
            delay_tenants: 2,
            fingerprints: vec![FingerprintKind::Fuzzy, FingerprintKind::Attachment],
        }
    }
}

/// Greylisting at RCPT, as the field does it (postgrey, rspamd): the first attempt of a
/// (client network, sender, recipient) triplet gets `451 4.7.1`; a retry after `delay` and
/// within `retry_window` passes, and the triplet then passes at once for `allow_for`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GreylistConfig {
    /// Default false (set it per tenant: `[policy.NAME.tenant.ID] greylist.enabled = true`).
    pub enabled: bool,
    /// A retry sooner than this is refused again. Default 5 m.
    pub delay: Dur,
    /// A retry later than this counts as a new first attempt. Default 2 d.
    pub retry_window: Dur,
    /// After a passed retry the triplet passes at once this long. Default 36 d.
    pub allow_for: Dur,
}

impl Default for GreylistConfig {
    fn default() -> Self {
        GreylistConfig {
            enabled: false,
            delay: Dur::secs(300),
            retry_window: Dur::secs(2 * 86_400),
            allow_for: Dur::secs(36 * 86_400),
        }
    }
}

/// Problems of both sections in one policy (paths relative to the policy).
pub fn errors(o: &OutbreakConfig, g: &GreylistConfig, errors: &mut Vec<(String, String)>) {
    let mut err = |p: &str, m: String| errors.push((p.to_owned(), m));
    let ms = |d: Dur| d.get().as_millis() as u64;
    if !(1000..=7 * 86_400_000).contains(&ms(o.window)) {
        err(
            "outbreak.window",
            format!("{} is out of range (1s..=7d)", o.window),
        );
    }
    for (name, v) in [
        ("recipients", o.recipients),
        ("tenants", o.tenants),
        ("networks", o.networks),
        ("delay_tenants", o.delay_tenants),
    ] {
        // The store keeps at most 200 members per count (`shared::outbreak::MEMBERS_CAP`).
        if !(1..=200).contains(&v) {
            err(
                &format!("outbreak.{name}"),
                format!("{v} is out of range (1..=200)"),
            );
        }
    }
    if o.delay_tenants > o.tenants {
        err(
            "outbreak.delay_tenants",
            format!("must not exceed outbreak.tenants ({})", o.tenants),
        );
    }
    if !o.score.is_finite() {
        err("outbreak.score", "must be a finite number".into());
    }
    if !(1000..=86_400_000).contains(&ms(o.delay)) {
        err(
            "outbreak.delay",
            format!("{} is out of range (1s..=1d)", o.delay),
        );
    }
    if o.fingerprints.is_empty() {
        err("outbreak.fingerprints", "name at least one kind".into());
    }
    if !(1000..=86_400_000).contains(&ms(g.delay)) {
        err(
            "greylist.delay",
            format!("{} is out of range (1s..=1d)", g.delay),
        );
    }
    if ms(g.retry_window) <= ms(g.delay) || ms(g.retry_window) > 30 * 86_400_000 {
        err(
            "greylist.retry_window",
            format!(
                "{} must be longer than greylist.delay, at most 30d",
                g.retry_window
            ),
        );
    }
    if !(60_000..=365 * 86_400_000).contains(&ms(g.allow_for)) {
        err(
            "greylist.allow_for",
            format!("{} is out of range (1m..=365d)", g.allow_for),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_reported_with_paths() {
        let o: OutbreakConfig =
            toml::from_str("tenants = 0\ndelay_tenants = 5\nfingerprints = []").unwrap();
        let g: GreylistConfig = toml::from_str("delay = \"1h\"\nretry_window = \"30m\"").unwrap();
        let mut out = Vec::new();
        errors(&o, &g, &mut out);
        for want in [
            "outbreak.tenants",
            "outbreak.delay_tenants",
            "outbreak.fingerprints",
            "greylist.retry_window",
        ] {
            assert!(out.iter().any(|(p, _)| p == want), "{want} in {out:#?}");
        }
        let mut none = Vec::new();
        errors(
            &OutbreakConfig::default(),
            &GreylistConfig::default(),
            &mut none,
        );
        assert!(none.is_empty(), "{none:?}");
    }
}
