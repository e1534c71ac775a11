//! The seam between "message received" and "message queued": decode, unpack and scan a message,
//! apply the tenant's policy, and return a [`Verdict`] while the sender is still connected.
//!
//! The engine calls exactly this API (see `src/engine/smtp/`): build a [`Scanner`] per config
//! snapshot with [`Scanner::new`], then for every message [`Scanner::scan`], act on
//! [`Verdict::action`], store [`Verdict::summary`] with the message, and spool
//! [`Verdict::apply`]'s output.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | `budget` | the per-message budget: bytes, parts, depth, header lines, archive entries and ratio, wall time |
//! | `decode` | pre-flight, mail-parser, the MIME walk, nested messages, archives queued as attachments |
//! | `archive` | zip unpacking under the budget (the only file naming `zip`) |
//! | `magic` | file types by content, extension promises, macros |
//! | `compile` | policies compiled once per snapshot: checks to run, lists, versions |
//! | `check/` | the scanners, one module each behind the `Check` trait |
//! | `fingerprint` | text digests, fuzzy shingle bands, attachment digests, URL domains |
//! | `dns` | the resolver for SPF/DKIM/DMARC/DNS lists (the only file naming hickory) |
//! | `verdict` | replies, summary, headers, rewriting the header block |
//! | `metrics` | per-tenant counters |
//!
//! # One message
//!
//! 1. The tenant's live policy (with its tenant override) and its shadow policies are looked up.
//! 2. For each policy: a [`budget::Budget`] starts at the scan's start; the message is decoded
//!    under it (shared between policies with equal limits); the lists are consulted (a block
//!    stops here); the policy's checks run concurrently until the deadline (a check shared by
//!    two policies — same resolver, same clamd — runs once per message); [`decide`] turns the
//!    findings into a decision.
//! 3. The live decision becomes the verdict; shadow decisions are logged and counted, never
//!    acted on.
//!
//! # Bounds
//!
//! One message: its policy's `limits` (decoded bytes, parts, depth, header lines, archive
//! entries and ratio, wall time). All messages: [`SCAN_MEMORY_MIB`] of estimated working
//! memory, shared by every scan in flight (a scan waits for its share before it starts; its
//! time budget starts once it has it). A shadow policy with other limits decodes the message
//! again under its own budget.

pub mod archive;
pub mod budget;
pub mod check;
pub mod compile;
pub mod decode;
pub(crate) mod dns;
pub mod fingerprint;
pub mod magic;
pub mod metrics;
pub mod verdict;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ConfigErrors;
use crate::config::policy::ScanLimits;
use crate::engine::policy::finding::{Category, CheckError, Finding, Outcome, clip};
use crate::engine::policy::{
    Decision, Disposition, Failure, ListHit, USERS_ALLOW, decide, users_allow,
};
use crate::smtp::Reply;
use crate::snapshot::Snapshot;
use crate::store::allow::AllowStore;
use crate::topology::Tenant;
use budget::{Budget, Stats};
use check::{Subject, Url};
use compile::{CompiledPolicy, Policies};
use decode::Decoded;
pub use metrics::ScanMetrics;

/// Messages larger than this are decoded with `block_in_place` on a multi-threaded runtime,
/// so one big message does not stall the other sessions of its worker thread.
const INLINE_DECODE: usize = 256 << 10;

/// Working memory of all scans in flight, in MiB, by estimate (see [`weight`]): a scan waits
/// for its share before it decodes and holds it to the end, so however many sessions deliver
/// at once, scanning takes at most about this much memory. A 4 KiB message weighs 1 MiB; a
/// 25 MiB one under the default limits about 90.
pub const SCAN_MEMORY_MIB: u32 = 1024;
static SCAN_MEMORY: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(SCAN_MEMORY_MIB as usize);

/// Worst-case memory of one scan, in MiB: the raw message, mail-parser's decoded copy (at most
/// three times the raw size), and archive inflation (at most the ratio times the raw size),
/// the last two together no more than the decoded-bytes budget.
fn weight(raw: usize, limits: &ScanLimits) -> u32 {
    let raw = raw as u64;
    let decoded = raw
        .saturating_mul(3 + u64::from(limits.max_archive_ratio))
        .min(limits.max_decoded_bytes.0);
    let mib = (raw + decoded).div_ceil(1 << 20).max(1);
    mib.min(u64::from(SCAN_MEMORY_MIB)) as u32
}

/// How a message arrived: what the engine knows about it when it is complete (client, HELO,
/// envelope addresses, tenant, TLS). Not the spooled envelope (`store::Envelope`).
#[derive(Debug, Clone)]
pub struct Arrival<'a> {
    /// Same id on the edge and the engine for one connection.
    pub session_id: &'a str,
    /// Queue id the message will get if accepted (for reference ids in replies).
    pub queue_id: &'a str,
    /// The real client (from PROXY when the edge sent one).
    pub client_ip: IpAddr,
    /// Client country as the edge placed it (PROXY TLV), if known.
    pub client_country: Option<&'a str>,
    pub helo: &'a str,
    /// Reverse path without brackets; empty for the null sender.
    pub mail_from: &'a str,
    pub rcpts: &'a [String],
    pub tenant: &'a Tenant,
    /// Whether the client used TLS (to the edge or to us).
    pub tls: bool,
}

/// What to do with the message.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue for delivery (possibly with added headers / subject tag).
    Deliver,
    /// Keep in the spool, not delivered; `reason` is shown to users and operators.
    Quarantine { reason: String },
    /// Refuse in-session with this reply (e.g. `550 5.7.1 Message rejected (ref ID)`):
    /// no backscatter.
    Reject { reply: Reply },
    /// A scanner failed and the policy says temp-fail: answer this 4xx reply.
    TempFail { reply: Reply },
}

/// A decision with everything needed to explain it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub action: Action,
    /// One line for logs and `maildistiller queue show`: findings, scores, policy + version.
    pub summary: String,
    /// Header lines (each ending in CRLF) to prepend to the message when delivered or quarantined.
    pub headers: String,
    /// Put before the `Subject` when the policy tags (see [`Verdict::apply`]).
    pub subject_prefix: Option<String>,
    /// Our authserv-id: incoming `Authentication-Results` claiming it are removed (RFC 8601 §5).
    pub authserv_id: Option<String>,
    /// The decisions behind the verdict (live and shadow), for tests, tools and metrics.
    pub report: Option<Arc<Report>>,
}

impl Default for Verdict {
    /// Deliver, unscanned, nothing added (for engine tests that need a verdict).
    fn default() -> Self {
        Verdict {
            action: Action::Deliver,
            summary: "not scanned".into(),
            headers: String::new(),
            subject_prefix: None,
            authserv_id: None,
            report: None,
        }
    }
}

/// Everything a verdict was decided from.
#[derive(Debug, Clone)]
pub struct Report {
    /// The reference id given to the sender (the queue id).
    pub reference: String,
    pub tenant: String,
    /// `name@version` of the live policy.
    pub policy: String,
    pub decision: Decision,
    /// `name@version` and decision of each shadow policy.
    pub shadows: Vec<(String, Decision)>,
    pub stats: Stats,
    pub elapsed: Duration,
}

impl Verdict {
    /// The message as it is to be spooled: `message` (which already starts with our
    /// `Received:`) with the verdict's headers added, forged copies of our own headers
    /// removed, and the subject prefixed when the policy tags.
    pub fn apply(&self, message: Vec<u8>) -> Vec<u8> {
        if self.headers.is_empty() && self.subject_prefix.is_none() && self.authserv_id.is_none() {
            return message;
        }
        verdict::rewrite(
            message,
            &self.headers,
            self.subject_prefix.as_deref(),
            self.authserv_id.as_deref(),
        )
    }

    /// The live decision's disposition (tag is visible here; [`Action`] folds it into deliver).
    pub fn disposition(&self) -> Option<Disposition> {
        self.report.as_ref().map(|r| r.decision.disposition)
    }
}

/// Scanners and compiled policies for one config snapshot.
#[derive(Debug)]
pub struct Scanner {
    policies: Policies,
    metrics: Option<ScanMetrics>,
    /// Users' own allow lists ("allow this sender" in webmail), when the engine gives them.
    allow: Option<Arc<AllowStore>>,
}

impl Scanner {
    /// Compiles every policy of the snapshot (rules, lists, scanners, resolvers). Fails with
    /// every problem, each with its config path; no sockets are opened.
    pub fn new(snapshot: &Snapshot) -> Result<Scanner, ConfigErrors> {
        Self::new_in(snapshot, crate::shared::Fleet::local())
    }

    /// [`Scanner::new`] with the process's fleet client: the `outbreak` scanner counts and
    /// reads fleet-wide, and consults the intelligence feed.
    pub fn new_in(
        snapshot: &Snapshot,
        fleet: Arc<crate::shared::Fleet>,
    ) -> Result<Scanner, ConfigErrors> {
        // The engine's host name (as in its Received: headers), else the local silo's.
        let authserv = snapshot
            .config
            .engine
            .hostname
            .clone()
            .or_else(|| {
                let silo = snapshot.topology.silos.get(snapshot.local_silo.0)?;
                Some(silo.hostname.clone())
            })
            .unwrap_or_else(|| "localhost".into());
        let policies = Policies::build_in(
            &snapshot.config,
            &authserv,
            check::Interner::with_fleet(fleet),
        )
        .map_err(ConfigErrors)?;
        Ok(Scanner {
            policies,
            metrics: None,
            allow: None,
        })
    }

    /// Consults users' own allow lists (`store::allow`): a message whose every recipient allows
    /// its sender is decided as the policy's allow lists decide (spam actions muted, never the
    /// virus ones), when the policy's own lists say nothing about it.
    pub fn with_allow(mut self, allow: Arc<AllowStore>) -> Scanner {
        self.allow = Some(allow);
        self
    }

    /// Counts verdicts in `metrics` (created once per process, see `metrics.rs`).
    pub fn with_metrics(mut self, metrics: ScanMetrics) -> Scanner {
        self.metrics = Some(metrics);
        self
    }

    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// Scans one complete message (header + body, CRLF line ends, dot-unstuffed).
    pub async fn scan(&self, envelope: &Arrival<'_>, message: &[u8]) -> Verdict {
        let tenant = envelope.tenant.id.0.as_str();
        let live = self.policies.live(tenant, &envelope.tenant.policy);
        let shadows = self.policies.shadows(tenant, &envelope.tenant.policy);
        // The semaphore is never closed; without a permit we would only lose the bound.
        let _permit = SCAN_MEMORY
            .acquire_many(weight(message.len(), &live.config.limits))
            .await
            .ok();
        let start = Instant::now();
        let mut memo = Memo::default();
        let allow = self.allow.as_deref();
        let (decision, headers, stats) =
            evaluate(&live, envelope, message, start, &mut memo, allow).await;
        if let Some(m) = &self.metrics {
            m.observe_checks(live.checks.iter().map(|c| {
                let result = match memo.outcomes.get(&check::identity(c)) {
                    Some(Ok(_)) => "done",
                    Some(Err(CheckError::Timeout(_))) => "timeout",
                    Some(Err(_)) => "failed",
                    None => "not_run",
                };
                (c.name(), result)
            }));
        }
        let mut shadow_decisions = Vec::with_capacity(shadows.len());
        for s in &shadows {
            let (d, _, _) = evaluate(s, envelope, message, start, &mut memo, allow).await;
            shadow_decisions.push((s.label(), d));
        }
        let elapsed = start.elapsed();
        let verdict = build_verdict(
            &live,
            envelope,
            decision,
            headers,
            shadow_decisions,
            stats,
            elapsed,
        );
        if let (Some(m), Some(r)) = (&self.metrics, &verdict.report) {
            m.observe(
                tenant,
                &r.decision,
                &r.shadows,
                elapsed.as_secs_f64(),
                message.len(),
            );
        }
        log(envelope, &verdict);
        verdict
    }
}

/// The live verdict at debug (the engine logs it with the message's fate); shadow verdicts at
/// info, since nothing else reports them.
fn log(env: &Arrival<'_>, v: &Verdict) {
    tracing::debug!(
        target: "maildistiller::scan",
        session = env.session_id,
        queue_id = env.queue_id,
        "verdict {}",
        v.summary
    );
    if let Some(r) = &v.report {
        for (label, d) in &r.shadows {
            tracing::info!(
                target: "maildistiller::scan",
                session = env.session_id,
                queue_id = env.queue_id,
                shadow = label.as_str(),
                live = r.decision.disposition.as_str(),
                "shadow verdict action={} score={:.1} reason=\"{}\"",
                d.disposition.as_str(),
                d.score,
                clip(&d.reason, 200)
            );
        }
    }
}

/// What one message's evaluations share: decodings by limits, answers of shared checks.
#[derive(Default)]
struct Memo<'a> {
    decoded: Vec<(ScanLimits, Arc<Decoded<'a>>, Arc<Vec<Url>>)>,
    outcomes: HashMap<usize, Result<Outcome, CheckError>>,
}

/// Decides `message` under one policy.
async fn evaluate<'a>(
    policy: &CompiledPolicy,
    env: &Arrival<'_>,
    message: &'a [u8],
    start: Instant,
    memo: &mut Memo<'a>,
    allow: Option<&AllowStore>,
) -> (Decision, Vec<String>, Stats) {
    let limits = &policy.config.limits;
    let budget = Budget::new(limits, start);
    let deadline = budget.deadline();
    let (decoded, urls) = match memo.decoded.iter().find(|(l, _, _)| l == limits) {
        Some((_, d, u)) => (d.clone(), u.clone()),
        None => {
            let d = Arc::new(decode_message(message, budget, limits));
            let u = Arc::new(check::extract_urls(&d.text, &d.html));
            memo.decoded.push((limits.clone(), d.clone(), u.clone()));
            (d, u)
        }
    };
    let mut findings = Vec::new();
    if let Some(e) = decoded.exceeded {
        findings.push(unscannable(e));
    }
    let mut senders = Vec::with_capacity(1 + decoded.from.len());
    if !env.mail_from.is_empty() {
        senders.push(env.mail_from.to_ascii_lowercase());
    }
    senders.extend(decoded.from.iter().cloned());
    let mut list = policy.lists.check(&senders, env.client_ip, env.rcpts);
    if list == ListHit::None
        && let Some(entry) =
            allow.and_then(|a| users_allow(a, &env.tenant.id.0, env.rcpts, &senders))
    {
        list = ListHit::Allow {
            level: USERS_ALLOW,
            entry,
        };
    }
    let mut headers = Vec::new();
    let mut failures = Vec::new();
    if !matches!(list, ListHit::Block { .. }) {
        let subject = Subject {
            envelope: env,
            raw: message,
            decoded: &decoded,
            urls: &urls,
            deadline,
        };
        run_checks(policy, &subject, memo).await;
        for c in &policy.checks {
            match memo.outcomes.get(&check::identity(c)) {
                Some(Ok(o)) => {
                    findings.extend(o.findings.iter().cloned());
                    headers.extend(o.headers.iter().cloned());
                }
                Some(Err(e)) => failures.push(Failure {
                    scanner: c.name(),
                    error: e.to_string(),
                    on_failure: c.on_failure(),
                }),
                None => {}
            }
        }
        if Instant::now() >= deadline && !findings.iter().any(|f| f.name == "unscannable.time") {
            findings.push(unscannable(budget::Exceeded::Time(limits.max_time.get())));
        }
    }
    let stats = decoded.stats;
    (
        decide(&policy.config, findings, failures, list),
        headers,
        stats,
    )
}

fn decode_message<'a>(message: &'a [u8], mut budget: Budget, limits: &ScanLimits) -> Decoded<'a> {
    let max_text = limits.max_text_bytes.0 as usize;
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if message.len() > INLINE_DECODE && multi {
        tokio::task::block_in_place(|| decode::decode(message, &mut budget, max_text))
    } else {
        decode::decode(message, &mut budget, max_text)
    }
}

fn unscannable(e: budget::Exceeded) -> Finding {
    Finding::builtin(
        "decode",
        &format!("unscannable.{}", e.name()),
        Category::Unscannable,
        e.to_string(),
    )
}

/// Runs the policy's checks that have no answer for this message yet, concurrently, each
/// bounded by the message's deadline.
async fn run_checks(policy: &CompiledPolicy, s: &Subject<'_>, memo: &mut Memo<'_>) {
    let pending: Vec<&Arc<dyn check::Check>> = policy
        .checks
        .iter()
        .filter(|c| !memo.outcomes.contains_key(&check::identity(c)))
        .collect();
    if pending.is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::from_std(s.deadline);
    let left = s.deadline.saturating_duration_since(Instant::now());
    let futs = pending
        .iter()
        .map(|c| {
            Box::pin(async move {
                tokio::time::timeout_at(deadline, c.check(s))
                    .await
                    .unwrap_or(Err(CheckError::Timeout(left)))
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>>
        })
        .collect();
    let results = check::join_all(futs).await;
    for (c, r) in pending.iter().zip(results) {
        memo.outcomes.insert(check::identity(c), r);
    }
}

fn build_verdict(
    live: &CompiledPolicy,
    env: &Arrival<'_>,
    decision: Decision,
    auth_headers: Vec<String>,
    shadows: Vec<(String, Decision)>,
    stats: Stats,
    elapsed: Duration,
) -> Verdict {
    let reference = env.queue_id;
    let label = live.label();
    let tenant = env.tenant.id.0.as_str();
    let disposition = decision.disposition;
    let action = match disposition {
        Disposition::Deliver | Disposition::Tag => Action::Deliver,
        Disposition::Quarantine => Action::Quarantine {
            reason: clip(&decision.reason, 200),
        },
        Disposition::Reject => Action::Reject {
            reply: verdict::reject_reply(decision.grounds, reference),
        },
        Disposition::TempFail => Action::TempFail {
            reply: verdict::tempfail_reply(reference),
        },
    };
    let mut headers = String::new();
    let mut subject_prefix = None;
    if matches!(
        disposition,
        Disposition::Deliver | Disposition::Tag | Disposition::Quarantine
    ) {
        for h in &auth_headers {
            headers.push_str(h);
        }
        headers.push_str(&verdict::verdict_header(
            disposition.as_str(),
            &decision,
            &label,
            reference,
        ));
        if disposition == Disposition::Tag {
            let tag = &live.config.tag;
            if tag.headers {
                headers.push_str(&format!(
                    "X-Spam-Flag: YES\r\nX-Spam-Score: {:.1}\r\n",
                    decision.score
                ));
            }
            subject_prefix.clone_from(&tag.subject_prefix);
        }
    }
    let extra = format!(
        "parts={} bytes={} depth={} entries={} took={}ms",
        stats.parts,
        stats.bytes,
        stats.depth,
        stats.entries,
        elapsed.as_millis()
    );
    let summary = verdict::summary(
        disposition.as_str(),
        &decision,
        &label,
        tenant,
        reference,
        &shadows,
        &extra,
    );
    let authserv_id = live.authserv_id.clone();
    Verdict {
        action,
        summary,
        headers,
        subject_prefix,
        authserv_id,
        report: Some(Arc::new(Report {
            reference: reference.to_owned(),
            tenant: tenant.to_owned(),
            policy: label,
            decision,
            shadows,
            stats,
            elapsed,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_memory_weights() {
        let l = ScanLimits::default();
        assert_eq!(weight(4096, &l), 1);
        assert_eq!(weight(25 << 20, &l), 25 + 64, "raw + the decoded budget");
        assert_eq!(
            weight(usize::MAX / 2, &l),
            SCAN_MEMORY_MIB,
            "never more than the pool"
        );
        let zip_heavy = weight(200 << 10, &l);
        assert!(zip_heavy > 1 && zip_heavy <= 21, "{zip_heavy}");
    }
}
