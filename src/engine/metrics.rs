//! `maildistiller_engine_*` metrics. Tenant labels are bounded by the configured tenants (plus
//! DSN destinations, which are counted under the original tenant).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::ops::Metrics;
use crate::store::Dest;

#[derive(Debug, Clone)]
pub struct EngineMetrics {
    received: IntCounterVec,
    queued: IntCounterVec,
    rejected: IntCounterVec,
    quarantine_expired: IntCounterVec,
    delivered: IntCounterVec,
    deferred: IntCounterVec,
    bounced: IntCounterVec,
    pub sessions: IntGauge,
    pub queue_depth: IntGaugeVec,
    pub held: IntGaugeVec,
    pub oldest_held: IntGaugeVec,
    latency: HistogramVec,
    dest_up: IntGaugeVec,
    delivery_tls: IntCounterVec,
    mta_sts: IntCounterVec,
}

/// A counter family, registered (also for `verify::metrics`).
pub(super) fn counter(m: &Metrics, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    m.register(Box::new(c.clone()));
    c
}

/// A gauge family, registered.
pub(super) fn gauge(m: &Metrics, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    m.register(Box::new(g.clone()));
    g
}

impl EngineMetrics {
    pub fn new(m: &Metrics) -> EngineMetrics {
        let sessions =
            IntGauge::new("engine_sessions", "Open SMTP sessions.").expect("valid metric");
        m.register(Box::new(sessions.clone()));
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "engine_delivery_seconds",
                "Time from acceptance to delivery.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                14_400.0, 86_400.0,
            ]),
            &["tenant"],
        )
        .expect("valid metric");
        m.register(Box::new(latency.clone()));
        EngineMetrics {
            received: counter(
                m,
                "engine_messages_received_total",
                "Messages whose DATA completed.",
                &["tenant"],
            ),
            queued: counter(
                m,
                "engine_messages_queued_total",
                "Messages accepted into the spool (250 sent).",
                &["tenant", "status"],
            ),
            rejected: counter(
                m,
                "engine_messages_rejected_total",
                "Messages refused after DATA, by reason.",
                &["tenant", "reason"],
            ),
            quarantine_expired: counter(
                m,
                "engine_quarantine_expired_total",
                "Quarantined messages deleted after engine.quarantine_lifetime.",
                &["tenant"],
            ),
            delivered: counter(
                m,
                "engine_recipients_delivered_total",
                "Recipients delivered to the tenant's server.",
                &["tenant"],
            ),
            deferred: counter(
                m,
                "engine_delivery_deferred_total",
                "Delivery attempts that left recipients pending.",
                &["tenant"],
            ),
            bounced: counter(
                m,
                "engine_recipients_bounced_total",
                "Recipients failed permanently (DSN sent).",
                &["tenant"],
            ),
            sessions,
            queue_depth: gauge(
                m,
                "engine_queue_messages",
                "Messages in the spool by tenant and state.",
                &["tenant", "state"],
            ),
            held: gauge(
                m,
                "engine_held_messages",
                "Messages held because the destination is down.",
                &["tenant"],
            ),
            oldest_held: gauge(
                m,
                "engine_oldest_held_seconds",
                "Age of the oldest held message.",
                &["tenant"],
            ),
            latency,
            dest_up: gauge(
                m,
                "engine_destination_up",
                "1 when the destination answers, 0 when marked down.",
                &["destination"],
            ),
            delivery_tls: counter(
                m,
                "engine_delivery_tls_total",
                "Messages sent by the TLS of their connection (verified, unverified, pinned, plain), or deferred because no connection met the tenant's TLS policy (failed_required).",
                &["tenant", "result"],
            ),
            mta_sts: counter(
                m,
                "engine_delivery_mta_sts_total",
                "MTA-STS outcomes for mail sent by MX: enforce/failed (deferred), testing/would_fail (reported only).",
                &["mode", "result"],
            ),
        }
    }

    pub fn received(&self, tenant: &str) {
        self.received.with_label_values(&[tenant]).inc();
    }
    pub fn queued(&self, tenant: &str, status: &str) {
        self.queued.with_label_values(&[tenant, status]).inc();
    }
    pub fn quarantine_expired(&self, tenant: &str) {
        self.quarantine_expired.with_label_values(&[tenant]).inc();
    }
    pub fn rejected(&self, tenant: &str, reason: &str) {
        self.rejected.with_label_values(&[tenant, reason]).inc();
    }
    pub fn delivered(&self, tenant: &str, n: usize, age_secs: u64) {
        self.delivered.with_label_values(&[tenant]).inc_by(n as u64);
        self.latency
            .with_label_values(&[tenant])
            .observe(age_secs as f64);
    }
    pub fn deferred(&self, tenant: &str) {
        self.deferred.with_label_values(&[tenant]).inc();
    }
    pub fn bounced(&self, tenant: &str, n: usize) {
        self.bounced.with_label_values(&[tenant]).inc_by(n as u64);
    }
    /// One message sent over a connection (`verified`, `unverified`, `pinned`, `plain`), or
    /// deferred because no connection met its TLS policy (`failed_required`).
    pub fn delivery_tls(&self, tenant: &str, result: &str) {
        self.delivery_tls.with_label_values(&[tenant, result]).inc();
    }

    /// MTA-STS outcomes: `enforce`/`failed` (mail deferred), `testing`/`would_fail` (reported).
    pub fn mta_sts(&self, mode: &str, result: &str) {
        self.mta_sts.with_label_values(&[mode, result]).inc();
    }

    pub fn destination_up(&self, d: &Dest, up: bool) {
        self.dest_up
            .with_label_values(&[&d.to_string()])
            .set(i64::from(up));
    }
}
