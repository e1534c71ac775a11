//! What the shared store and the knowledge built on it show (the registry adds the
//! `maildistiller_` prefix and the `role`/`silo` labels). One set per process, registered once
//! by [`super::Fleet::for_process`].
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `shared_store_up` | | 1 while the store answers; 0: local knowledge only (alert `MaildistillerSharedStoreDown`) |
//! | `shared_calls_total` | op, result | reads on the message path, batched writes, reads of the spreading stream (`spread`), syncs: ok, error, timeout, skipped (store down) |
//! | `shared_call_seconds` | op | latency of answered calls |
//! | `shared_writes_dropped_total` | | writes lost: queue full, or their batch failed |
//! | `outbreak_detected_total` | | fingerprints this node found first over a policy's thresholds |
//! | `outbreak_matched_total` | action | messages acted on for an outbreak (score, quarantine, reject, delay, released after a delay) |
//! | `outbreak_updates_total` | source | changes to what this node knows of a fingerprint's fleet counts: `answer` (to its own sighting), `fleet` (another node's, from the spreading stream) |
//! | `outbreak_action_delay_seconds` | | from a fingerprint's first sighting anywhere to the first message this node acted on |
//! | `greylist_total` | outcome | RCPTs of greylisted tenants: first, early, passed, allowed, unavailable |
//! | `intel_entries` | | entries of the operator's feed in force here |
//! | `intel_hits_total` | action | messages an intel entry decided (block, allow) |
//! | `shared_lessons_total` | outcome | users' lessons: `published` (taught here), `learnt` / `known` (another node's, new to this model / already in it), `invalid`, `missed` (trimmed from the stream before this node read them) |

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
};

use crate::ops::Metrics;

#[derive(Debug, Clone)]
pub struct SharedMetrics {
    pub up: IntGauge,
    pub calls: IntCounterVec,
    pub latency: HistogramVec,
    pub dropped: IntCounter,
    pub detected: IntCounter,
    pub matched: IntCounterVec,
    pub action_delay: Histogram,
    pub updates: IntCounterVec,
    pub greylist: IntCounterVec,
    pub intel_entries: IntGauge,
    pub intel_hits: IntCounterVec,
    pub lessons: IntCounterVec,
}

impl SharedMetrics {
    pub fn new() -> SharedMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        SharedMetrics {
            up: IntGauge::new(
                "shared_store_up",
                "1 while the shared store (Redis/Valkey) answers; 0 while this node decides on \
                 local knowledge only.",
            )
            .expect("valid metric"),
            calls: counter(
                "shared_calls_total",
                "Calls to the shared store by operation (read, write, sync, intel) and result \
                 (ok, error, timeout, skipped).",
                &["op", "result"],
            ),
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "shared_call_seconds",
                    "Latency of answered calls to the shared store, by operation.",
                )
                .buckets(vec![
                    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
                &["op"],
            )
            .expect("valid metric"),
            dropped: IntCounter::new(
                "shared_writes_dropped_total",
                "Writes to the shared store lost: the queue was full, or their batch failed.",
            )
            .expect("valid metric"),
            detected: IntCounter::new(
                "outbreak_detected_total",
                "Fingerprints this node was the first in the fleet to find over a policy's \
                 outbreak thresholds.",
            )
            .expect("valid metric"),
            matched: counter(
                "outbreak_matched_total",
                "Messages acted on because they carry an outbreak's fingerprint, by action.",
                &["action"],
            ),
            action_delay: Histogram::with_opts(
                HistogramOpts::new(
                    "outbreak_action_delay_seconds",
                    "From a fingerprint's first sighting anywhere in the fleet to the first \
                     message this node acted on for it.",
                )
                .buckets(vec![
                    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
                ]),
            )
            .expect("valid metric"),
            updates: counter(
                "outbreak_updates_total",
                "Changes to what this node knows of a fingerprint's fleet counts, by source: answer (the store's \
                 answer to this node's sighting), fleet (another node's, from the spreading \
                 stream).",
                &["source"],
            ),
            greylist: counter(
                "greylist_total",
                "Greylisting decisions at RCPT by outcome (first, early, passed, allowed, \
                 unavailable).",
                &["outcome"],
            ),
            intel_entries: IntGauge::new(
                "intel_entries",
                "Entries of the operator's intelligence feed in force on this node.",
            )
            .expect("valid metric"),
            intel_hits: counter(
                "intel_hits_total",
                "Messages an intelligence feed entry decided, by action (block, allow).",
                &["action"],
            ),
            lessons: counter(
                "shared_lessons_total",
                "Users' lessons shared through the fleet, by outcome: published (taught here), \
                 learnt or known (another node's: new to this model, or already in it), \
                 invalid, missed (trimmed from the stream before this node read them).",
                &["outcome"],
            ),
        }
    }

    /// Registers every metric (once per process) and gives the label sets their zeroes.
    pub fn register(&self, m: &Metrics) {
        m.register(Box::new(self.up.clone()));
        m.register(Box::new(self.calls.clone()));
        m.register(Box::new(self.latency.clone()));
        m.register(Box::new(self.dropped.clone()));
        m.register(Box::new(self.detected.clone()));
        m.register(Box::new(self.matched.clone()));
        m.register(Box::new(self.action_delay.clone()));
        m.register(Box::new(self.updates.clone()));
        m.register(Box::new(self.greylist.clone()));
        m.register(Box::new(self.intel_entries.clone()));
        m.register(Box::new(self.intel_hits.clone()));
        m.register(Box::new(self.lessons.clone()));
        for o in ["published", "learnt", "known", "invalid", "missed"] {
            self.lessons.with_label_values(&[o]);
        }
        for s in ["answer", "fleet"] {
            self.updates.with_label_values(&[s]);
        }
        for op in ["read", "write", "spread", "lessons", "sync"] {
            for r in ["ok", "error", "timeout", "skipped"] {
                self.calls.with_label_values(&[op, r]);
            }
        }
        for o in ["first", "early", "passed", "allowed", "unavailable"] {
            self.greylist.with_label_values(&[o]);
        }
    }
}

impl Default for SharedMetrics {
    fn default() -> Self {
        Self::new()
    }
}
