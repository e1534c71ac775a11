//! Scan metrics, per tenant. One [`ScanMetrics`] lives as long as the process (it outlives
//! config snapshots): the engine creates it once, registers it (it is a prometheus
//! `Collector`: `metrics.register(Box::new(scan_metrics.clone()))`), and hands a clone to every
//! `Scanner` it builds with `Scanner::with_metrics`.
//!
//! Names (the registry adds the `maildistiller_` prefix and the `role`/`silo` labels):
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `scan_verdicts_total` | tenant, action | live verdicts (deliver, tag, quarantine, tempfail, reject) |
//! | `scan_shadow_verdicts_total` | tenant, policy, action | what shadow policies would have done |
//! | `scan_findings_total` | tenant, category | findings by category (spam, virus, attachment…) |
//! | `scan_unscannable_total` | tenant, limit | budget refusals by limit |
//! | `scan_scanner_failures_total` | scanner | external scanners down, timing out, answering nonsense |
//! | `scan_checks_total` | check, result | each live policy's checks, once per message: `done`, `failed`, `timeout` (the message's time budget ran out first) or `not_run` (a block list decided first). Shows that no check is skipped to keep up |
//! | `scan_duration_seconds` | | wall time of one message's scan (all policies) |
//! | `scan_bytes_total` | | raw bytes scanned |
//!
//! Label values are bounded by configuration: tenants and policies are config entries,
//! actions, categories, limits and scanners are fixed sets.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

use crate::engine::policy::{Decision, Disposition};

#[derive(Debug, Clone)]
pub struct ScanMetrics {
    verdicts: IntCounterVec,
    shadow: IntCounterVec,
    findings: IntCounterVec,
    unscannable: IntCounterVec,
    failures: IntCounterVec,
    checks: IntCounterVec,
    duration: Histogram,
    bytes: IntCounter,
}

impl Default for ScanMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ScanMetrics {
    pub fn new() -> ScanMetrics {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        ScanMetrics {
            verdicts: vec(
                "scan_verdicts_total",
                "Live scan verdicts by tenant and action.",
                &["tenant", "action"],
            ),
            shadow: vec(
                "scan_shadow_verdicts_total",
                "Shadow policy verdicts (never acted on) by tenant, policy and action.",
                &["tenant", "policy", "action"],
            ),
            findings: vec(
                "scan_findings_total",
                "Findings of live policies by tenant and category.",
                &["tenant", "category"],
            ),
            unscannable: vec(
                "scan_unscannable_total",
                "Messages whose scan budget ran out, by tenant and limit.",
                &["tenant", "limit"],
            ),
            failures: vec(
                "scan_scanner_failures_total",
                "External scanner failures (down, timeout, bad answer) by scanner.",
                &["scanner"],
            ),
            checks: vec(
                "scan_checks_total",
                "Checks of live policies by check and result (done, failed, timeout, not_run), once per message.",
                &["check", "result"],
            ),
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "scan_duration_seconds",
                    "Wall time to scan one message under every policy that applies.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
            )
            .expect("valid metric"),
            bytes: IntCounter::new("scan_bytes_total", "Raw message bytes scanned.")
                .expect("valid metric"),
        }
    }

    pub(crate) fn observe(
        &self,
        tenant: &str,
        live: &Decision,
        shadows: &[(String, Decision)],
        seconds: f64,
        bytes: usize,
    ) {
        self.verdicts
            .with_label_values(&[tenant, live.disposition.as_str()])
            .inc();
        for (policy, d) in shadows {
            let name = policy.split('@').next().unwrap_or(policy);
            self.shadow
                .with_label_values(&[tenant, name, d.disposition.as_str()])
                .inc();
        }
        for f in &live.findings {
            self.findings
                .with_label_values(&[tenant, f.category.as_str()])
                .inc();
            if let Some(limit) = f.name.strip_prefix("unscannable.") {
                self.unscannable.with_label_values(&[tenant, limit]).inc();
            }
        }
        for fail in &live.failures {
            self.failures.with_label_values(&[fail.scanner]).inc();
        }
        self.duration.observe(seconds);
        self.bytes.inc_by(bytes as u64);
    }

    /// Counts one message's live checks: `(check name, result)` each.
    pub(crate) fn observe_checks<'a>(&self, checks: impl Iterator<Item = (&'a str, &'a str)>) {
        for (check, result) in checks {
            self.checks.with_label_values(&[check, result]).inc();
        }
    }

    /// The current count of live verdicts of one action for a tenant (for tests and `/status`).
    pub fn verdicts(&self, tenant: &str, action: Disposition) -> u64 {
        self.verdicts
            .with_label_values(&[tenant, action.as_str()])
            .get()
    }
}

impl Collector for ScanMetrics {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = Vec::new();
        for v in [
            &self.verdicts,
            &self.shadow,
            &self.findings,
            &self.unscannable,
            &self.failures,
            &self.checks,
        ] {
            d.extend(v.desc());
        }
        d.extend(self.duration.desc());
        d.extend(self.bytes.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut m = Vec::new();
        for v in [
            &self.verdicts,
            &self.shadow,
            &self.findings,
            &self.unscannable,
            &self.failures,
            &self.checks,
        ] {
            m.extend(v.collect());
        }
        m.extend(self.duration.collect());
        m.extend(self.bytes.collect());
        m
    }
}
