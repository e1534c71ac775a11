//! From findings to one action: pure, no I/O, table-tested.
//!
//! The decision is the strongest of: the block list's action; each finding's category action
//! (virus, unscannable, attachment, encrypted archive, macro, DMARC with `p=reject` or
//! `p=quarantine`); each rule's own action; the highest spam-score threshold reached; and 451
//! for a failed scanner whose policy says `tempfail`. Strength: deliver < tag < quarantine <
//! temp-fail < reject (a failed scanner cannot lower what another one proved).
//!
//! An allow-list match mutes everything that is about spam (thresholds, rules, DMARC); viruses,
//! blocked attachments and unscannable mail still decide. An allow match on a sender identity
//! (address or domain) does not count when SPF or DMARC failed: that sender was forged.

use super::lists::ListHit;
use crate::config::policy::{OnFailure, PolicyAction, PolicyConfig};
use crate::engine::policy::finding::{Category, Finding};

/// What happens to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Disposition {
    Deliver,
    Tag,
    Quarantine,
    TempFail,
    Reject,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Deliver => "deliver",
            Disposition::Tag => "tag",
            Disposition::Quarantine => "quarantine",
            Disposition::TempFail => "tempfail",
            Disposition::Reject => "reject",
        }
    }

    pub const ALL: [Disposition; 5] = [
        Disposition::Deliver,
        Disposition::Tag,
        Disposition::Quarantine,
        Disposition::TempFail,
        Disposition::Reject,
    ];
}

impl From<PolicyAction> for Disposition {
    fn from(a: PolicyAction) -> Self {
        match a {
            PolicyAction::Deliver => Disposition::Deliver,
            PolicyAction::Tag => Disposition::Tag,
            PolicyAction::Quarantine => Disposition::Quarantine,
            PolicyAction::Reject => Disposition::Reject,
        }
    }
}

/// Why the decision was taken, in the one word a sender may be told (the SMTP reply names it;
/// the full reason is for operators and users only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grounds {
    /// Nothing decided against the message.
    Clean,
    Virus,
    /// Over a spam-score threshold.
    Spam,
    /// A blocked attachment type, an encrypted archive, a macro document.
    Attachment,
    /// The message could not be scanned within its budget.
    Unscannable,
    /// A list, a rule or DMARC: the tenant's policy.
    Policy,
    /// A scanner failed and the policy says temp-fail.
    Failure,
}

/// A scanner that could not do its job, and what the policy said to do about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub scanner: &'static str,
    pub error: String,
    pub on_failure: OnFailure,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub disposition: Disposition,
    /// Sum of the findings' scores (after the policy's `scores`).
    pub score: f64,
    /// Why, for operators and users (the quarantine reason); may quote the message, clipped.
    pub reason: String,
    /// Why, in the one safe word the SMTP reply may carry.
    pub grounds: Grounds,
    /// Every finding, with the policy's scores.
    pub findings: Vec<Finding>,
    pub failures: Vec<Failure>,
    pub list: ListHit,
}

/// Decides for one policy. `findings` carry base scores; the policy's `scores` replace them.
pub fn decide(
    p: &PolicyConfig,
    mut findings: Vec<Finding>,
    failures: Vec<Failure>,
    mut list: ListHit,
) -> Decision {
    for f in &mut findings {
        if let Some(s) = p.scores.get(&f.name) {
            f.score = *s;
        }
    }
    let forged = findings
        .iter()
        .any(|f| f.name == "spf.fail" || f.name == "dmarc.fail");
    if let ListHit::Allow { entry, level } = &list
        && entry.by_sender()
        && forged
    {
        findings.push(Finding::configured(
            "policy",
            "list.allow_ignored".into(),
            0.0,
            None,
            format!("{level} allow list ({entry}) ignored: SPF or DMARC failed"),
        ));
        list = ListHit::None;
    }
    let allowed = matches!(list, ListHit::Allow { .. });
    let score: f64 = findings.iter().map(|f| f.score).sum();

    let mut best = (
        Disposition::Deliver,
        Grounds::Clean,
        format!("score {score:.1} below thresholds"),
    );
    let mut raise = |d: Disposition, short: Grounds, why: String| {
        if d > best.0 {
            best = (d, short, why);
        }
    };
    match &list {
        ListHit::Block { level, entry } => raise(
            p.actions.blocklist.into(),
            Grounds::Policy,
            format!("{level} block list: {entry}"),
        ),
        ListHit::Allow { level, entry } => findings.push(Finding {
            category: Category::Listed,
            ..Finding::configured(
                "policy",
                "list.allow".into(),
                0.0,
                None,
                format!("{level} allow list: {entry}"),
            )
        }),
        ListHit::None => {}
    }
    let a = &p.actions;
    let att = &p.attachments;
    for f in &findings {
        let category_action = match f.category {
            Category::Virus => Some((a.virus, Grounds::Virus, "virus")),
            Category::Unscannable => Some((a.unscannable, Grounds::Unscannable, "unscannable")),
            Category::Attachment => Some((att.action, Grounds::Attachment, "blocked attachment")),
            Category::EncryptedArchive => Some((
                att.encrypted_archives,
                Grounds::Attachment,
                "encrypted archive",
            )),
            Category::Macro => Some((att.macro_documents, Grounds::Attachment, "macro document")),
            Category::DmarcReject if !allowed => Some((a.dmarc_reject, Grounds::Policy, "DMARC")),
            Category::DmarcQuarantine if !allowed => {
                Some((a.dmarc_quarantine, Grounds::Policy, "DMARC"))
            }
            _ => None,
        };
        if let Some((action, short, label)) = category_action {
            raise(action.into(), short, format!("{label}: {}", f.detail));
        }
        if let Some(action) = f.action
            && !allowed
        {
            raise(
                action.into(),
                Grounds::Policy,
                format!("{}: {}", f.name, f.detail),
            );
        }
    }
    if !allowed {
        let t = &p.thresholds;
        for (limit, name, action) in [
            (t.reject, "reject", PolicyAction::Reject),
            (t.quarantine, "quarantine", PolicyAction::Quarantine),
            (t.tag, "tag", PolicyAction::Tag),
        ] {
            if score >= limit {
                raise(
                    action.into(),
                    Grounds::Spam,
                    format!("spam score {score:.1} >= {name} threshold {limit}"),
                );
                break;
            }
        }
    }
    for fail in &failures {
        if fail.on_failure == OnFailure::Tempfail {
            raise(
                Disposition::TempFail,
                Grounds::Failure,
                format!("{} failed: {}", fail.scanner, fail.error),
            );
        }
    }
    let (disposition, grounds, reason) = best;
    Decision {
        disposition,
        score,
        reason,
        grounds,
        findings,
        failures,
        list,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::policy::lists::Entry;

    fn f(name: &str, category: Category, score: f64) -> Finding {
        Finding {
            score,
            category,
            ..Finding::builtin("t", name, category, "d")
        }
    }

    fn run(findings: Vec<Finding>, failures: Vec<Failure>, list: ListHit) -> Disposition {
        decide(&PolicyConfig::default(), findings, failures, list).disposition
    }

    #[test]
    fn each_action_has_its_trigger() {
        use Disposition::*;
        let none = ListHit::None;
        type Case = (
            &'static str,
            Vec<Finding>,
            Vec<Failure>,
            ListHit,
            Disposition,
        );
        let cases: Vec<Case> = vec![
            (
                "clean",
                vec![f("spf.pass", Category::Spam, 0.0)],
                vec![],
                none.clone(),
                Deliver,
            ),
            (
                "tag",
                vec![f("x", Category::Spam, 6.0)],
                vec![],
                none.clone(),
                Tag,
            ),
            (
                "quarantine",
                vec![f("x", Category::Spam, 12.0)],
                vec![],
                none.clone(),
                Quarantine,
            ),
            (
                "reject",
                vec![f("gtube", Category::Spam, 1000.0)],
                vec![],
                none.clone(),
                Reject,
            ),
            (
                "virus",
                vec![f("virus.eicar", Category::Virus, 0.0)],
                vec![],
                none.clone(),
                Reject,
            ),
            (
                "unscannable",
                vec![f("unscannable.parts", Category::Unscannable, 0.0)],
                vec![],
                none.clone(),
                Quarantine,
            ),
            (
                "attachment",
                vec![f("attachment.blocked_type", Category::Attachment, 0.0)],
                vec![],
                none.clone(),
                Quarantine,
            ),
            (
                "dmarc",
                vec![f("dmarc.fail", Category::DmarcReject, 3.0)],
                vec![],
                none.clone(),
                Reject,
            ),
            (
                "tempfail",
                vec![f("x", Category::Spam, 12.0)],
                vec![Failure {
                    scanner: "clamd",
                    error: "down".into(),
                    on_failure: OnFailure::Tempfail,
                }],
                none.clone(),
                TempFail,
            ),
            (
                "reject beats tempfail",
                vec![f("virus.eicar", Category::Virus, 0.0)],
                vec![Failure {
                    scanner: "clamd",
                    error: "down".into(),
                    on_failure: OnFailure::Tempfail,
                }],
                none.clone(),
                Reject,
            ),
            (
                "fail open",
                vec![],
                vec![Failure {
                    scanner: "clamd",
                    error: "down".into(),
                    on_failure: OnFailure::Accept,
                }],
                none.clone(),
                Deliver,
            ),
            (
                "blocked",
                vec![],
                vec![],
                ListHit::Block {
                    level: "tenant",
                    entry: Entry::Domain("x.example".into()),
                },
                Reject,
            ),
            (
                "allowed mutes spam",
                vec![f("x", Category::Spam, 50.0)],
                vec![],
                ListHit::Allow {
                    level: "tenant",
                    entry: Entry::Domain("x.example".into()),
                },
                Deliver,
            ),
            (
                "allowed does not mute viruses",
                vec![f("virus.eicar", Category::Virus, 0.0)],
                vec![],
                ListHit::Allow {
                    level: "tenant",
                    entry: Entry::Domain("x.example".into()),
                },
                Reject,
            ),
            (
                "a forged allowed sender is not allowed",
                vec![
                    f("spf.fail", Category::Spam, 3.0),
                    f("x", Category::Spam, 20.0),
                ],
                vec![],
                ListHit::Allow {
                    level: "tenant",
                    entry: Entry::Domain("x.example".into()),
                },
                Reject,
            ),
        ];
        for (name, findings, failures, list, want) in cases {
            assert_eq!(run(findings, failures, list), want, "{name}");
        }
    }

    #[test]
    fn policy_scores_replace_base_scores() {
        let mut p = PolicyConfig::default();
        p.scores.insert("spf.fail".into(), 30.0);
        let d = decide(
            &p,
            vec![f("spf.fail", Category::Spam, 3.0)],
            vec![],
            ListHit::None,
        );
        assert_eq!(d.score, 30.0);
        assert_eq!(d.disposition, Disposition::Reject);
        assert_eq!(d.grounds, Grounds::Spam);
    }
}
