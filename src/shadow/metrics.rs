//! `maildistiller_engine_shadow_*`: what cluster redundancy is doing. The `peer` and `from`
//! labels are engine ids of this engine's cluster (bounded by the fleet file).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use crate::ops::Metrics;

#[derive(Debug, Clone)]
pub struct ShadowMetrics {
    /// Copies this engine holds for each primary.
    pub held: IntGaugeVec,
    /// This engine's messages whose copy each peer holds.
    pub placed: IntGaugeVec,
    /// 1 while the link to a peer is up.
    pub peer_up: IntGaugeVec,
    /// From sending a copy to its acknowledgement (the peer's fsync included).
    pub latency: Histogram,
    /// How much longer the 250 waited for the shadow than for the local fsync.
    pub added: Histogram,
    pub copies: IntCounterVec,
    pub unshadowed_total: IntCounter,
    pub unshadowed_now: IntGauge,
    pub takeovers: IntCounterVec,
    pub taken_over: IntCounterVec,
    pub duplicates_avoided: IntCounter,
    pub duplicates_delivered: IntCounter,
    pub log_bytes: IntGauge,
    /// The copy log's group commits, and the records they carried.
    pub log_commits: IntCounter,
    pub log_records: IntCounter,
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

impl ShadowMetrics {
    pub fn new(m: &Metrics) -> ShadowMetrics {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            m.register(Box::new(g.clone()));
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            m.register(Box::new(c.clone()));
            c
        };
        let one = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            m.register(Box::new(c.clone()));
            c
        };
        let hist = |name: &str, help: &str| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric");
            m.register(Box::new(h.clone()));
            h
        };
        let unshadowed_now = IntGauge::new(
            "engine_shadow_unshadowed_messages",
            "Messages in this engine's store with no live shadow copy right now.",
        )
        .expect("valid metric");
        m.register(Box::new(unshadowed_now.clone()));
        let log_bytes = IntGauge::new(
            "engine_shadow_log_bytes",
            "Bytes of the copy log (copies held for other engines) on disk.",
        )
        .expect("valid metric");
        m.register(Box::new(log_bytes.clone()));
        let copies = counter(
            "engine_shadow_copies_total",
            "Copies sent to a peer, by result: ok, full (its disk), error, timeout, no_peer.",
            &["result"],
        );
        for r in ["ok", "full", "error", "timeout", "no_peer"] {
            copies.with_label_values(&[r]);
        }
        ShadowMetrics {
            held: gauge(
                "engine_shadow_copies_held",
                "Shadow copies this engine holds for each primary engine.",
                &["peer"],
            ),
            placed: gauge(
                "engine_shadow_copies_placed",
                "This engine's messages whose shadow copy each peer holds.",
                &["peer"],
            ),
            peer_up: gauge(
                "engine_shadow_peer_up",
                "1 while the replication link to a peer engine is up, 0 when it is not.",
                &["peer"],
            ),
            latency: hist(
                "engine_shadow_copy_seconds",
                "Replication latency: from sending a copy to the peer's acknowledgement (fsync included).",
            ),
            added: hist(
                "engine_shadow_wait_seconds",
                "Latency the shadow added to the 250: how much longer than the local fsync it waited.",
            ),
            copies,
            unshadowed_total: one(
                "engine_shadow_unshadowed_total",
                "Messages answered 250 with a single copy (on_shadow_failure = accept, no shadow in time).",
            ),
            unshadowed_now,
            takeovers: counter(
                "engine_shadow_takeovers_total",
                "Takeovers of a primary's copies, by why: agreed (unreachable for takeover_after, \
                 the cluster agreeing), operator, spool-lost (it came back with a new spool).",
                &["from", "by"],
            ),
            taken_over: counter(
                "engine_shadow_taken_over_messages_total",
                "Messages adopted from a primary's copies and delivered by this engine.",
                &["from"],
            ),
            duplicates_avoided: one(
                "engine_shadow_duplicates_avoided_total",
                "Messages this engine dropped on its return because a shadow had taken them over.",
            ),
            duplicates_delivered: one(
                "engine_shadow_duplicates_delivered_total",
                "Messages both this engine and the shadow that took them over delivered (a partition, or taken over mid-delivery).",
            ),
            log_bytes,
            log_commits: one(
                "engine_shadow_log_commits_total",
                "Group commits of the copy log (one write and one fdatasync each).",
            ),
            log_records: one(
                "engine_shadow_log_records_total",
                "Records (copies, progress, discards) the copy log committed; over commits: how many share an fsync.",
            ),
        }
    }
}
