//! Findings: what a scanner says about a message, before any policy judges it.
//!
//! A finding has a stable dotted name (`spf.fail`, `virus.eicar`, `rule.money-subject`), a
//! category that says which of the policy's actions it can trigger, a base score (the policy's
//! `scores` table may replace it for built-in names), an optional minimum action (rules carry
//! their own), and a one-line detail for people. Findings never carry message bytes unquoted:
//! details are clipped and free of control characters, so they are safe in logs and headers.

use std::time::Duration;

use crate::config::policy::PolicyAction;
use crate::config::webmail::FindingKind;

/// Which of the policy's actions a finding can trigger (besides adding its score).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// Adds to the spam score only.
    Spam,
    /// `actions.virus`.
    Virus,
    /// A blocked type or extension: `attachments.action`.
    Attachment,
    /// `attachments.encrypted_archives`.
    EncryptedArchive,
    /// `attachments.macro_documents`.
    Macro,
    /// The budget ran out: `actions.unscannable`.
    Unscannable,
    /// DMARC failed, domain asks `p=reject`: `actions.dmarc_reject`.
    DmarcReject,
    /// DMARC failed, domain asks `p=quarantine`: `actions.dmarc_quarantine`.
    DmarcQuarantine,
    /// On an allow or block list (recorded by the policy, not by scanners).
    Listed,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Spam => "spam",
            Category::Virus => "virus",
            Category::Attachment => "attachment",
            Category::EncryptedArchive => "encrypted",
            Category::Macro => "macro",
            Category::Unscannable => "unscannable",
            Category::DmarcReject | Category::DmarcQuarantine => "dmarc",
            Category::Listed => "listed",
        }
    }

    /// The kind a quarantined message records for this category (release rights are given by
    /// kind: `engine.webmail.admin_release_only`).
    pub fn kind(self) -> FindingKind {
        match self {
            Category::Spam => FindingKind::Spam,
            Category::Virus => FindingKind::Virus,
            Category::Attachment => FindingKind::Attachment,
            Category::EncryptedArchive => FindingKind::Encrypted,
            Category::Macro => FindingKind::Macro,
            Category::Unscannable => FindingKind::Unscannable,
            Category::DmarcReject | Category::DmarcQuarantine => FindingKind::Dmarc,
            Category::Listed => FindingKind::Listed,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The scanner that made it (`auth`, `content`, `clamd`…).
    pub scanner: &'static str,
    pub name: String,
    pub category: Category,
    /// Base score; see [`Finding::builtin`].
    pub score: f64,
    /// At least this action (rules and size rules).
    pub action: Option<PolicyAction>,
    /// For people: where and what, clipped, one line.
    pub detail: String,
}

impl Finding {
    /// A finding with a built-in name: its base score comes from [`BUILTIN_SCORES`].
    pub fn builtin(
        scanner: &'static str,
        name: &str,
        category: Category,
        detail: impl Into<String>,
    ) -> Finding {
        Finding {
            scanner,
            name: name.to_owned(),
            category,
            score: default_score(name).unwrap_or(0.0),
            action: None,
            detail: one_line(detail.into()),
        }
    }

    /// A finding whose name and score come from configuration (rules, DNS lists).
    pub fn configured(
        scanner: &'static str,
        name: String,
        score: f64,
        action: Option<PolicyAction>,
        detail: impl Into<String>,
    ) -> Finding {
        Finding {
            scanner,
            name,
            category: Category::Spam,
            score,
            action,
            detail: one_line(detail.into()),
        }
    }
}

fn one_line(s: String) -> String {
    if s.chars().any(char::is_control) || s.len() > 300 {
        clip(&s, 300)
    } else {
        s
    }
}

/// At most `n` characters, for details that quote the message.
pub fn clip(s: &str, n: usize) -> String {
    let mut out: String = s
        .chars()
        .take(n)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > n {
        out.push('…');
    }
    out
}

/// Built-in finding names and their default scores (a policy's `scores` table replaces them).
pub const BUILTIN_SCORES: &[(&str, f64)] = &[
    ("spf.pass", 0.0),
    ("spf.fail", 3.0),
    ("spf.softfail", 1.0),
    ("spf.neutral", 0.0),
    ("spf.none", 0.5),
    ("spf.temperror", 0.0),
    ("spf.permerror", 0.5),
    ("dkim.pass", -0.5),
    ("dkim.fail", 3.0),
    ("dkim.neutral", 0.5),
    ("dkim.none", 0.0),
    ("dkim.temperror", 0.0),
    ("dkim.permerror", 1.0),
    ("dmarc.pass", -1.0),
    ("dmarc.fail", 3.0),
    ("dmarc.none", 0.0),
    ("dmarc.temperror", 0.0),
    ("dmarc.permerror", 0.5),
    ("auth.unparseable", 1.0),
    ("gtube", 1000.0),
    ("url.blocked", 10.0),
    ("heuristic.missing_date", 0.5),
    ("heuristic.missing_message_id", 0.5),
    ("heuristic.subject_all_caps", 1.0),
    ("heuristic.html_only", 0.5),
    ("heuristic.url_ip_host", 1.5),
    ("malformed.mime", 1.0),
    ("attachment.blocked_type", 0.0),
    ("attachment.blocked_extension", 0.0),
    ("attachment.name_mismatch", 3.0),
    ("attachment.encrypted", 0.0),
    ("attachment.macro", 0.0),
    ("attachment.unscanned_archive", 0.5),
    ("virus.eicar", 0.0),
    ("virus.clamd", 0.0),
    ("unscannable.bytes", 0.0),
    ("unscannable.parts", 0.0),
    ("unscannable.depth", 0.0),
    ("unscannable.header_lines", 0.0),
    ("unscannable.archive_entries", 0.0),
    ("unscannable.archive_ratio", 0.0),
    ("unscannable.time", 0.0),
];

pub fn default_score(name: &str) -> Option<f64> {
    BUILTIN_SCORES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}

/// What one scanner returns.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub findings: Vec<Finding>,
    /// Header fields (each ending in CRLF) the scanner adds, e.g. `Authentication-Results`.
    pub headers: Vec<String>,
}

/// A scanner that could not do its job. The policy's `on_failure` for that scanner decides
/// between deciding without it and answering 451.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("message of {0} bytes is over the scanner's size limit")]
    TooLarge(u64),
}
