//! `maildistiller_engine_rcpt_verify_*` and `maildistiller_engine_recipients_file_*`: what
//! recipient verification answered, how often the cache answered, what the probes cost, and
//! whether recipient files read. Tenant labels are bounded by the configured tenants; the other
//! labels are fixed words.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec};

use crate::engine::metrics::{counter, gauge};
use crate::ops::Metrics;

/// Values of the `result` label of `engine_rcpt_verify_total`.
pub mod result {
    /// In `recipients` or `recipients_file`: 250.
    pub const LISTED: &str = "listed";
    /// In neither, and the tenant does not call ahead: 550 5.1.1.
    pub const UNLISTED: &str = "unlisted";
    /// The tenant's server accepted it (now, or cached): 250.
    pub const ACCEPTED: &str = "accepted";
    /// The tenant's server refused it (now, or cached): 550 5.1.1.
    pub const REJECTED: &str = "rejected";
    /// The server is down or did not answer, and it is a known recipient from the cache: 250,
    /// the message is held.
    pub const ACCEPTED_WHILE_DOWN: &str = "accepted_while_down";
    /// No answer and nothing known (or no recipient file read yet): 451 4.4.3.
    pub const TEMPFAIL: &str = "tempfail";
}

#[derive(Debug, Clone)]
pub struct VerifyMetrics {
    verify: IntCounterVec,
    cache: IntCounterVec,
    pub cache_entries: IntGaugeVec,
    pub cache_evictions: IntCounter,
    probe_seconds: HistogramVec,
    file_reload: IntCounterVec,
    pub file_entries: IntGaugeVec,
}

impl VerifyMetrics {
    pub fn new(m: &Metrics) -> VerifyMetrics {
        let cache_evictions = IntCounter::new(
            "engine_rcpt_verify_cache_evictions_total",
            "Call-ahead answers evicted to keep the cache within engine.verify.cache_size.",
        )
        .expect("valid metric");
        m.register(Box::new(cache_evictions.clone()));
        let probe_seconds = HistogramVec::new(
            HistogramOpts::new(
                "engine_rcpt_probe_seconds",
                "Time a call-ahead probe took, by outcome (accepted, refused, unanswered).",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["outcome"],
        )
        .expect("valid metric");
        m.register(Box::new(probe_seconds.clone()));
        VerifyMetrics {
            verify: counter(
                m,
                "engine_rcpt_verify_total",
                "Recipients judged by recipient verification (tenants with recipients_file or call-ahead), by result.",
                &["tenant", "result"],
            ),
            cache: counter(
                m,
                "engine_rcpt_verify_cache_total",
                "Call-ahead cache lookups: hit (the answer stood), refresh (known, asked again), miss.",
                &["tenant", "result"],
            ),
            cache_entries: gauge(
                m,
                "engine_rcpt_verify_cache_entries",
                "Call-ahead answers held, by answer (known, unknown); each set at most engine.verify.cache_size.",
                &["answer"],
            ),
            cache_evictions,
            probe_seconds,
            file_reload: counter(
                m,
                "engine_recipients_file_reload_total",
                "Recipient files read after a change, by result (ok, error: the previous list stays).",
                &["tenant", "result"],
            ),
            file_entries: gauge(
                m,
                "engine_recipients_file_entries",
                "Entries (addresses and @domain catch-alls) of the recipient list in force.",
                &["tenant"],
            ),
        }
    }

    pub fn verified(&self, tenant: &str, result: &str) {
        self.verify.with_label_values(&[tenant, result]).inc();
    }

    pub fn cache(&self, tenant: &str, result: &str) {
        self.cache.with_label_values(&[tenant, result]).inc();
    }

    pub fn probe(&self, outcome: &str, seconds: f64) {
        self.probe_seconds
            .with_label_values(&[outcome])
            .observe(seconds);
    }

    pub fn file_reload(&self, tenant: &str, result: &str) {
        self.file_reload.with_label_values(&[tenant, result]).inc();
    }
}
