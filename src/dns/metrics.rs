//! GeoDNS metrics. Workers count into a [`LocalStats`] (plain integers, no shared cache lines)
//! and flush it into the registry every few thousand queries, every 250 ms, and when idle, so
//! the hot path touches no atomics for metrics. `/metrics` therefore lags by at most 250 ms
//! under load.
//!
//! | metric | labels |
//! |---|---|
//! | `maildistiller_dns_queries_total` | `qtype` (A, AAAA, MX, …, other), `rcode` (NOERROR, …, dropped) |
//! | `maildistiller_dns_answers_total` | `answered`: first silo of geo answers |
//! | `maildistiller_dns_ecs_total` | `present` (yes, no) |
//! | `maildistiller_dns_truncated_total` | — |
//! | `maildistiller_dns_answer_seconds` | `transport` (udp, tcp): receive to send, histogram |
//! | `maildistiller_dns_plan_rebuilds_total` | `reason` (config, health) |
//! | `maildistiller_dns_silo_in_answers` | `answered` (a silo): 1 when it may answer, 0 when down or drained |
//! | `maildistiller_dns_fail_open` | `set` (a candidate set, e.g. `all` or a tenant's regions): 1 while none of its silos is up and it answers with all of them |
//!
//! (`silo` is taken: every metric carries this process's own silo.)
//!
//! Health transitions of silo edges are `maildistiller_dns_health_*` (see `health::Prober`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::core::{AtomicU64 as PromU64, GenericCounter};
use prometheus::local::LocalHistogram;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};

use super::answer::Outcome;
use super::state::{Plan, SiloState};
use super::zone::{Zone, rtype};
use crate::ops::Metrics;

const QTYPES: [(&str, u16); 9] = [
    ("A", rtype::A),
    ("AAAA", rtype::AAAA),
    ("MX", rtype::MX),
    ("TXT", rtype::TXT),
    ("NS", rtype::NS),
    ("SOA", rtype::SOA),
    ("CAA", rtype::CAA),
    ("ANY", rtype::ANY),
    ("other", 0),
];
const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "dropped",
];
const DROPPED: usize = 7;

fn qtype_index(t: u16) -> usize {
    QTYPES
        .iter()
        .position(|(_, v)| *v == t && t != 0)
        .unwrap_or(QTYPES.len() - 1)
}

fn rcode_index(rc: u8) -> usize {
    match rc {
        0..=5 => usize::from(rc),
        16 => 6,
        _ => 2,
    }
}

type Counter = GenericCounter<PromU64>;

/// The registered metrics; cloned handles are cheap.
#[derive(Debug, Clone)]
pub(crate) struct DnsMetrics {
    queries: Vec<Counter>,
    answers: IntCounterVec,
    ecs: [IntCounter; 2],
    truncated: IntCounter,
    latency: HistogramVec,
    rebuilds: IntCounterVec,
    in_answers: IntGaugeVec,
    fail_open: IntGaugeVec,
}

impl DnsMetrics {
    pub fn new(m: &Metrics) -> DnsMetrics {
        let queries_vec = IntCounterVec::new(
            Opts::new(
                "dns_queries_total",
                "DNS queries by query type and response code.",
            ),
            &["qtype", "rcode"],
        )
        .expect("valid metric");
        let answers = IntCounterVec::new(
            Opts::new(
                "dns_answers_total",
                "Geo answers by the first silo answered.",
            ),
            &["answered"],
        )
        .expect("valid metric");
        let ecs = IntCounterVec::new(
            Opts::new(
                "dns_ecs_total",
                "Queries with and without an EDNS Client Subnet option.",
            ),
            &["present"],
        )
        .expect("valid metric");
        let truncated = IntCounter::new(
            "dns_truncated_total",
            "UDP answers sent with TC set (the client retries over TCP).",
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "dns_answer_seconds",
                "Time from receiving a query to sending its answer.",
            )
            .buckets(vec![
                2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1,
            ]),
            &["transport"],
        )
        .expect("valid metric");
        let rebuilds = IntCounterVec::new(
            Opts::new(
                "dns_plan_rebuilds_total",
                "Answer plans rebuilt, by reason (config, health).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let in_answers = IntGaugeVec::new(
            Opts::new(
                "dns_silo_in_answers",
                "1 when the silo may be answered (up, not drained), else 0.",
            ),
            &["answered"],
        )
        .expect("valid metric");
        m.register(Box::new(queries_vec.clone()));
        m.register(Box::new(answers.clone()));
        m.register(Box::new(ecs.clone()));
        m.register(Box::new(truncated.clone()));
        m.register(Box::new(latency.clone()));
        m.register(Box::new(rebuilds.clone()));
        let fail_open = IntGaugeVec::new(
            Opts::new(
                "dns_fail_open",
                "1 while no silo of the set is up (or all are drained) and answers name all of them.",
            ),
            &["set"],
        )
        .expect("valid metric");
        m.register(Box::new(in_answers.clone()));
        m.register(Box::new(fail_open.clone()));
        let mut queries = Vec::with_capacity(QTYPES.len() * RCODES.len());
        for (q, _) in QTYPES {
            for r in RCODES {
                queries.push(queries_vec.with_label_values(&[q, r]));
            }
        }
        for r in ["config", "health"] {
            rebuilds.with_label_values(&[r]);
        }
        DnsMetrics {
            queries,
            answers,
            ecs: [
                ecs.with_label_values(&["no"]),
                ecs.with_label_values(&["yes"]),
            ],
            truncated,
            latency,
            rebuilds,
            in_answers,
            fail_open,
        }
    }

    pub fn rebuilt(&self, reason: &str) {
        self.rebuilds.with_label_values(&[reason]).inc();
    }

    pub fn silo_states(&self, plan: &Plan) {
        self.in_answers.reset();
        for (s, state) in plan.zone.silos.iter().zip(&plan.silo_state) {
            self.in_answers
                .with_label_values(&[&s.name])
                .set(i64::from(*state == SiloState::Up));
        }
        self.fail_open.reset();
        for (set, e) in plan.zone.sets.iter().zip(&plan.eligible) {
            self.fail_open
                .with_label_values(&[&set.label])
                .set(i64::from(e.fail_open.is_some()));
        }
    }

    pub fn local(&self, transport: &str) -> LocalStats {
        LocalStats {
            metrics: self.clone(),
            latency: self.latency.with_label_values(&[transport]).local(),
            queries: vec![0; QTYPES.len() * RCODES.len()],
            silos: Vec::new(),
            zone: None,
            ecs: [0; 2],
            truncated: 0,
            pending: 0,
            last_flush: Instant::now(),
        }
    }
}

/// One worker's counts since its last flush.
pub(crate) struct LocalStats {
    metrics: DnsMetrics,
    latency: LocalHistogram,
    queries: Vec<u64>,
    /// Geo answers per silo index of `zone`.
    silos: Vec<u64>,
    /// The zone the silo indexes refer to.
    zone: Option<Arc<Zone>>,
    ecs: [u64; 2],
    truncated: u64,
    pending: u32,
    last_flush: Instant,
}

/// Queries between flushes under load.
const FLUSH_EVERY: u32 = 4096;
/// Longest time between flushes under load.
const FLUSH_AFTER: Duration = Duration::from_millis(250);

impl LocalStats {
    /// Counts one answered query (`None`: dropped) that took `elapsed`.
    pub fn record(
        &mut self,
        plan: &Plan,
        outcome: Option<Outcome>,
        elapsed: Duration,
        now: Instant,
    ) {
        if !self
            .zone
            .as_ref()
            .is_some_and(|z| Arc::ptr_eq(z, &plan.zone))
        {
            self.flush(now);
            self.zone = Some(plan.zone.clone());
        }
        match outcome {
            None => self.queries[(QTYPES.len() - 1) * RCODES.len() + DROPPED] += 1,
            Some(o) => {
                self.queries[qtype_index(o.qtype) * RCODES.len() + rcode_index(o.rcode)] += 1;
                self.ecs[usize::from(o.ecs)] += 1;
                self.truncated += u64::from(o.truncated);
                if let Some(s) = o.silo {
                    let s = usize::from(s);
                    if self.silos.len() <= s {
                        self.silos.resize(s + 1, 0);
                    }
                    self.silos[s] += 1;
                }
                self.latency.observe(elapsed.as_secs_f64());
            }
        }
        self.pending += 1;
        if self.pending >= FLUSH_EVERY || now.duration_since(self.last_flush) >= FLUSH_AFTER {
            self.flush(now);
        }
    }

    /// Moves the counts into the registry.
    pub fn flush(&mut self, now: Instant) {
        self.last_flush = now;
        if self.pending == 0 {
            return;
        }
        self.pending = 0;
        for (i, n) in self.queries.iter_mut().enumerate() {
            if *n > 0 {
                self.metrics.queries[i].inc_by(*n);
                *n = 0;
            }
        }
        for (i, n) in self.silos.iter_mut().enumerate() {
            if *n > 0 {
                if let Some(s) = self.zone.as_ref().and_then(|z| z.silos.get(i)) {
                    self.metrics
                        .answers
                        .with_label_values(&[&s.name])
                        .inc_by(*n);
                }
                *n = 0;
            }
        }
        for (i, n) in self.ecs.iter_mut().enumerate() {
            self.metrics.ecs[i].inc_by(*n);
            *n = 0;
        }
        self.metrics.truncated.inc_by(self.truncated);
        self.truncated = 0;
        self.latency.flush();
    }
}
