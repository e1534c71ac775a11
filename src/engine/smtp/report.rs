//! The tenant's report address: mail to `learning.report_address@` one of the tenant's domains
//! is a user's "this is spam", not mail to deliver.
//!
//! The engine recognises it after DATA, before scanning: it takes the original out of the
//! report (`engine::learn::original`), teaches it as spam, and answers `250` only once rspamd
//! has learnt it and the lesson is in the audit log — so an acknowledged report is never lost;
//! the classifier down or the user over the hourly limit is `451` (the user's server retries).
//! The report is never delivered onward, never quarantined, never spooled. A transaction with
//! other recipients beside the report address goes on for them as usual.
//!
//! Who may report: an envelope sender of the tenant's own domains (anyone else gets
//! `550 5.7.1`), from a client in `learning.report_networks` when that is set.

use std::net::IpAddr;

use crate::engine::learn::{self, LearnError, Teller, original};
use crate::engine::scan::check::LearnAs;
use crate::smtp::{Reply, domain_of, replies};
use crate::snapshot::Snapshot;
use crate::topology::Tenant;

/// What to do with a message after looking for the report address among its recipients.
pub enum Report {
    /// Not a report: scan and spool for these recipients as usual.
    Deliver(Vec<String>),
    /// Only report recipients: answer this.
    Answer(Reply),
}

/// Whether `rcpt` is the report address of `tenant` under `local`.
fn is_report_address(local: &str, rcpt: &str, tenant: &Tenant) -> bool {
    let Some((l, d)) = rcpt.rsplit_once('@') else {
        return false;
    };
    l.eq_ignore_ascii_case(local) && tenant.domains.iter().any(|t| d.eq_ignore_ascii_case(t))
}

/// Learns the report among `rcpts`, if any; returns what is left to do.
pub async fn handle(
    snap: &Snapshot,
    scanner: &crate::engine::scan::Scanner,
    tenant: &Tenant,
    client: IpAddr,
    mail_from: &str,
    rcpts: Vec<String>,
    body: &[u8],
) -> Report {
    let live = scanner.policies().live(&tenant.id.0, &tenant.policy);
    let cfg = &live.config.learning;
    if !cfg.enabled() || cfg.report_address.is_empty() {
        return Report::Deliver(rcpts);
    }
    let (reports, rest): (Vec<String>, Vec<String>) = rcpts
        .into_iter()
        .partition(|r| is_report_address(&cfg.report_address, r, tenant));
    if reports.is_empty() {
        return Report::Deliver(rest);
    }
    let own_sender = domain_of(mail_from).is_some_and(|d| {
        snap.topology
            .tenant_for_domain(&d)
            .is_some_and(|t| t.id == tenant.id)
    });
    let from_network =
        cfg.report_networks.is_empty() || cfg.report_networks.iter().any(|n| n.contains(client));
    let tid = tenant.id.0.as_str();
    let reply = if !own_sender || !from_network {
        tracing::info!(tenant = tid, client = %client, from = mail_from, own_sender, from_network, "report refused: not from the tenant's users");
        replies::REPORT_REFUSED
    } else {
        let message = original::extract(body);
        let who = Teller {
            source: "report",
            user: mail_from.to_ascii_lowercase(),
            tenant: tid.to_owned(),
            bulk: false,
        };
        let teacher = learn::teacher(&snap.config.engine.spool_dir);
        match teacher.teach(cfg, &who, LearnAs::Spam, &message).await {
            Ok(t) => {
                tracing::info!(tenant = tid, user = %who.user, outcome = t.as_str(), "report learnt as spam");
                replies::REPORT_TAKEN
            }
            Err(e @ LearnError::RateLimited(..)) => {
                tracing::info!(tenant = tid, error = %e, "report refused for now");
                replies::REPORT_LATER
            }
            Err(e) => {
                tracing::warn!(tenant = tid, error = %e, "report not learnt");
                if e.transient() {
                    replies::REPORT_LATER
                } else {
                    replies::LOCAL_ERROR
                }
            }
        }
    };
    if rest.is_empty() || reply.code >= 400 {
        // A refused report refuses the transaction: its other recipients get the same answer
        // (one DATA, one reply), and the sender's server retries or bounces them together.
        Report::Answer(reply)
    } else {
        Report::Deliver(rest)
    }
}
